//! Rate limits: a per-key request rate, and budgets of failed authentications per client IP
//! and per key id. All are GCRA: a bucket may spend its whole minute's allowance in one burst
//! (as the contract says for keys), then gets one unit back every `60 / rate` seconds.
//!
//! One instance uses `governor` in-process. Several instances share Redis, where the same
//! algorithm runs as a Lua script ([`redis_gcra`]), so three instances together allow the
//! limit, not three times it.

mod redis_gcra;

use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use moka::sync::Cache;

use crate::error::{Error, Result};
pub use redis_gcra::RedisGcra;

/// A governor cell that also says how much of its burst is left after a take.
type CountingLimiter =
    RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

/// Where buckets live.
#[derive(Clone)]
pub enum Backend {
    /// In this process (one instance).
    Local,
    /// In Redis, shared by every instance.
    Redis(RedisGcra),
}

/// GCRA buckets of `per_minute` (burst = `per_minute`), one per subject.
struct Buckets<K: Hash + Eq + Send + Sync + 'static> {
    local: Cache<(K, u32), Arc<CountingLimiter>>,
    backend: Backend,
    prefix: &'static str,
}

impl<K: Hash + Eq + Clone + Send + Sync + std::fmt::Display + 'static> Buckets<K> {
    fn new(backend: Backend, prefix: &'static str, capacity: u64) -> Self {
        Buckets {
            // An idle limiter is full again after a minute, so dropping it changes nothing.
            local: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(Duration::from_secs(120))
                .build(),
            backend,
            prefix,
        }
    }

    /// Takes one unit from `key`'s bucket: `Ok(Ok(remaining))` (how many more takes it allows
    /// now), or `Ok(Err(retry_after_secs))` when the bucket is empty.
    async fn take(&self, key: &K, per_minute: u32) -> Result<std::result::Result<u64, u64>> {
        let per_minute = per_minute.max(1);
        match &self.backend {
            Backend::Local => {
                let n = NonZeroU32::new(per_minute).expect("max(1) is non-zero");
                let limiter = self.local.get_with((key.clone(), per_minute), || {
                    Arc::new(
                        RateLimiter::direct(Quota::per_minute(n))
                            .with_middleware::<StateInformationMiddleware>(),
                    )
                });
                Ok(limiter
                    .check()
                    .map(|s| u64::from(s.remaining_burst_capacity()))
                    .map_err(|not_until| {
                        retry_after(not_until.wait_time_from(DefaultClock::default().now()))
                    }))
            }
            Backend::Redis(r) => {
                let (wait_ms, remaining) = r
                    .take_counting(&format!("{}:{key}", self.prefix), per_minute)
                    .await
                    .map_err(Error::unavailable)?;
                Ok(if wait_ms == 0 {
                    Ok(remaining)
                } else {
                    Err(retry_after(Duration::from_millis(wait_ms)))
                })
            }
        }
    }
}

/// Per-key request rates (`rate_limit_per_minute`).
pub struct KeyLimits {
    buckets: Buckets<String>,
}

impl KeyLimits {
    /// Limits kept in `backend`, for up to `capacity` keys in process.
    pub fn new(backend: Backend, capacity: u64) -> KeyLimits {
        KeyLimits::with_prefix(backend, "keybound:rate:key", capacity)
    }

    /// Limits for another kind of subject (e.g. devices), kept under `prefix` in Redis.
    pub fn with_prefix(backend: Backend, prefix: &'static str, capacity: u64) -> KeyLimits {
        KeyLimits {
            buckets: Buckets::new(backend, prefix, capacity),
        }
    }

    /// Takes one request from `key_id`'s allowance; `RATE_LIMITED` when it is spent.
    pub async fn check(&self, key_id: &str, per_minute: i64) -> Result<()> {
        let per_minute = per_minute.clamp(1, u32::MAX as i64) as u32;
        self.buckets
            .take(&key_id.to_owned(), per_minute)
            .await?
            .map(|_| ())
            .map_err(|retry_after_secs| Error::RateLimited { retry_after_secs })
    }
}

/// A budget of failed authentications per subject. Failures spend it; once a subject has
/// spent it (N failures within a minute for a budget of N: the contract's
/// `--ip-failure-budget`), its next request is refused with 429 until the budget has room
/// again, which is at most one emission interval (60 s / N) later.
pub struct FailureBudget<K: Hash + Eq + Send + Sync + 'static> {
    per_minute: u32,
    buckets: Buckets<K>,
    /// Subjects refused until the given instant (local view; with Redis the block is also
    /// written there, so every instance sees it).
    blocked: Cache<K, Instant>,
}

impl<K: Hash + Eq + Clone + Send + Sync + std::fmt::Display + 'static> FailureBudget<K> {
    /// `per_minute` failures per subject, kept in `backend`.
    pub fn new(backend: Backend, prefix: &'static str, per_minute: u32, capacity: u64) -> Self {
        FailureBudget {
            per_minute: per_minute.max(1),
            buckets: Buckets::new(backend, prefix, capacity),
            blocked: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(120))
                .build(),
        }
    }

    /// `RATE_LIMITED` while `subject` has spent its budget.
    pub async fn check(&self, subject: &K) -> Result<()> {
        if let Some(until) = self.blocked.get(subject) {
            let now = Instant::now();
            if until > now {
                return Err(Error::RateLimited {
                    retry_after_secs: retry_after(until - now),
                });
            }
            self.blocked.invalidate(subject);
        }
        if let Backend::Redis(r) = &self.buckets.backend {
            let ttl = r
                .blocked_for(&format!("{}:blocked:{subject}", self.buckets.prefix))
                .await
                .map_err(Error::unavailable)?;
            if ttl > 0 {
                let wait = Duration::from_millis(ttl);
                self.blocked.insert(subject.clone(), Instant::now() + wait);
                return Err(Error::RateLimited {
                    retry_after_secs: retry_after(wait),
                });
            }
        }
        Ok(())
    }

    /// Records a failure by `subject`; true when this failure spent the budget (the moment
    /// to raise a failure-burst alert): from then on [`check`](Self::check) refuses it.
    pub async fn record_failure(&self, subject: &K) -> Result<bool> {
        let wait = match self.buckets.take(subject, self.per_minute).await? {
            Ok(remaining) if remaining > 0 => return Ok(false),
            // The N-th failure took the last unit: blocked until one comes back, within one
            // emission interval.
            Ok(_) => Duration::from_millis(60_000 / u64::from(self.per_minute)),
            // Already empty (failures racing past `check`): until the bucket has room.
            Err(retry_after_secs) => Duration::from_secs(retry_after_secs),
        };
        self.blocked.insert(subject.clone(), Instant::now() + wait);
        if let Backend::Redis(r) = &self.buckets.backend {
            r.block(&format!("{}:blocked:{subject}", self.buckets.prefix), wait)
                .await
                .map_err(Error::unavailable)?;
        }
        Ok(true)
    }

    /// Failures allowed per minute.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }
}

/// Wrong secrets per key id, from all addresses together.
///
/// Key ids are hashed onto a fixed table of [`KEY_ID_SLOTS`] buckets made at start, so a
/// made-up id and a real one cost exactly the same (a per-id table would allocate for every
/// new id and tell an attacker, by timing, which ids already had an entry). Two ids sharing a
/// slot share a budget; since only wrong secrets are ever refused, that costs nobody access.
pub struct KeyIdFailures {
    per_minute: u32,
    local: Vec<DefaultDirectRateLimiter>,
    backend: Backend,
}

/// Buckets in the key-id failure table.
pub const KEY_ID_SLOTS: usize = 16_384;

/// Default wrong secrets per minute for one key id, from all IPs together, before a
/// failure-burst alert (`--key-failure-budget`). Only wrong secrets are refused once it is
/// spent: refusing the right secret too would let anyone who knows a key id (it is every
/// token's `sub`) lock its owner out.
pub const KEY_FAILURE_BUDGET: u32 = 10;

impl KeyIdFailures {
    /// `per_minute` wrong secrets per key id, kept in `backend`.
    pub fn new(backend: Backend, per_minute: u32) -> KeyIdFailures {
        let per_minute = per_minute.max(1);
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).expect("max(1) is non-zero"));
        let local = match backend {
            Backend::Local => (0..KEY_ID_SLOTS)
                .map(|_| RateLimiter::direct(quota))
                .collect(),
            Backend::Redis(_) => Vec::new(),
        };
        KeyIdFailures {
            per_minute,
            local,
            backend,
        }
    }

    /// The bucket `key_id` is counted in. A fixed-key hasher: the slot of an id is the same
    /// on every instance (and for `keybound lab`, which keeps its probes within the budget).
    pub fn slot_of(key_id: &str) -> usize {
        use std::hash::BuildHasher;
        std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(key_id) as usize
            % KEY_ID_SLOTS
    }

    /// Wrong secrets allowed per minute for one id.
    pub fn per_minute(&self) -> u32 {
        self.per_minute
    }

    /// The `Retry-After` of a refusal by a spent budget: one emission interval, when the id's
    /// bucket has room for one more wrong secret.
    pub fn retry_after_secs(&self) -> u64 {
        (60 / u64::from(self.per_minute)).max(1)
    }

    /// Records a wrong secret for `key_id`: `Ok(true)` within the budget, `Ok(false)` once it
    /// is spent (the caller answers 429 and may alert).
    pub async fn record(&self, key_id: &str) -> Result<bool> {
        let slot = Self::slot_of(key_id);
        match &self.backend {
            Backend::Local => Ok(self.local[slot].check().is_ok()),
            Backend::Redis(r) => Ok(r
                .take(&format!("keybound:fail:keyslot:{slot}"), self.per_minute)
                .await
                .map_err(Error::unavailable)?
                == 0),
        }
    }
}

/// A failure budget per client address (contract: `--ip-failure-budget`), reusable for any
/// per-IP budget (each with its own Redis `prefix`).
///
/// Addresses are counted by bucket ([`crate::net::budget_bucket`]): an IPv4 address (an
/// IPv4-mapped IPv6 address is its IPv4 address) alone, an IPv6 address by its `/v6_prefix`
/// (default /64, what one ordinary host or site gets), or one host would have 2^64 fresh
/// budgets.
pub struct IpFailures {
    budget: FailureBudget<IpNet>,
    v6_prefix: u8,
}

impl IpFailures {
    /// `per_minute` failures per address bucket, kept in `backend` under `prefix`.
    pub fn new(
        backend: Backend,
        prefix: &'static str,
        per_minute: u32,
        capacity: u64,
        v6_prefix: u8,
    ) -> IpFailures {
        IpFailures {
            budget: FailureBudget::new(backend, prefix, per_minute, capacity),
            v6_prefix,
        }
    }

    /// The bucket `ip` is counted in.
    pub fn bucket(&self, ip: IpAddr) -> IpNet {
        crate::net::budget_bucket(ip, self.v6_prefix)
    }

    /// `RATE_LIMITED` (with its `Retry-After`) while `ip`'s bucket has spent its budget.
    pub async fn check(&self, ip: IpAddr) -> Result<()> {
        self.budget.check(&self.bucket(ip)).await
    }

    /// Records a failure from `ip`; true when it spent the budget (see
    /// [`FailureBudget::record_failure`]).
    pub async fn record_failure(&self, ip: IpAddr) -> Result<bool> {
        self.budget.record_failure(&self.bucket(ip)).await
    }

    /// Failures allowed per minute.
    pub fn per_minute(&self) -> u32 {
        self.budget.per_minute()
    }
}

/// Whole seconds to wait, rounded up, at least 1 (a `Retry-After` of 0 invites a tight loop).
fn retry_after(wait: Duration) -> u64 {
    (wait.as_millis().div_ceil(1000) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_may_burst_its_minute_then_is_refused() {
        let limits = KeyLimits::new(Backend::Local, 100);
        for i in 0..5 {
            assert!(
                limits.check("ak_test_x", 5).await.is_ok(),
                "request {i} within the burst"
            );
        }
        match limits.check("ak_test_x", 5).await {
            Err(Error::RateLimited { retry_after_secs }) => {
                assert!(
                    (1..=12).contains(&retry_after_secs),
                    "one slot is 12 s, got {retry_after_secs}"
                )
            }
            other => panic!("6th request over 5/min: {other:?}"),
        }
        assert!(
            limits.check("ak_test_y", 5).await.is_ok(),
            "other keys are unaffected"
        );
    }

    #[tokio::test]
    async fn key_id_budget_refuses_once_spent_and_spares_other_ids() {
        let f = KeyIdFailures::new(Backend::Local, 3);
        for i in 0..3 {
            assert!(
                f.record("ak_test_AAAAAAAAAAAA").await.unwrap(),
                "failure {i} within budget"
            );
        }
        assert!(
            !f.record("ak_test_AAAAAAAAAAAA").await.unwrap(),
            "the fourth is over"
        );
        assert!(
            f.record("ak_test_BBBBBBBBBBBB").await.unwrap(),
            "another id has its own budget"
        );
    }

    /// The contract: once an IP has N failures within a minute, its next request gets 429.
    #[tokio::test]
    async fn n_failures_block_the_next_request_of_one_ip_not_another() {
        let budget = IpFailures::new(Backend::Local, "t", 3, 100, 64);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for i in 0..2 {
            assert!(!budget.record_failure(a).await.unwrap(), "failure {i}");
            assert!(budget.check(a).await.is_ok(), "after failure {i}");
        }
        assert!(
            budget.record_failure(a).await.unwrap(),
            "the third spends it"
        );
        match budget.check(a).await {
            Err(Error::RateLimited { retry_after_secs }) => {
                assert!((1..=20).contains(&retry_after_secs), "{retry_after_secs}")
            }
            other => panic!("the request after 3 failures: {other:?}"),
        }
        assert!(budget.check(b).await.is_ok());
    }

    #[tokio::test]
    async fn ipv6_addresses_share_their_prefix_and_mapped_addresses_their_ipv4() {
        let budget = IpFailures::new(Backend::Local, "t", 2, 100, 64);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        budget.record_failure(ip("2001:db8:1:2::1")).await.unwrap();
        budget
            .record_failure(ip("2001:db8:1:2:ffff::9"))
            .await
            .unwrap();
        assert!(
            budget.check(ip("2001:db8:1:2::77")).await.is_err(),
            "the same /64"
        );
        assert!(
            budget.check(ip("2001:db8:1:3::1")).await.is_ok(),
            "the next /64"
        );
        budget.record_failure(ip("::ffff:192.0.2.1")).await.unwrap();
        budget.record_failure(ip("192.0.2.1")).await.unwrap();
        assert!(
            budget.check(ip("192.0.2.1")).await.is_err(),
            "mapped and plain IPv4 are one address"
        );
        assert!(budget.check(ip("192.0.2.2")).await.is_ok());

        let narrow = IpFailures::new(Backend::Local, "t", 1, 100, 128);
        narrow.record_failure(ip("2001:db8::1")).await.unwrap();
        assert!(narrow.check(ip("2001:db8::1")).await.is_err());
        assert!(
            narrow.check(ip("2001:db8::2")).await.is_ok(),
            "/128: per address"
        );
    }
}
