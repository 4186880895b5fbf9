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
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::sync::Cache;

use crate::error::{Error, Result};
pub use redis_gcra::RedisGcra;

/// Where buckets live.
#[derive(Clone)]
pub enum Backend {
    /// In this process (one instance).
    Local,
    /// In Redis, shared by every instance.
    Redis(RedisGcra),
}

/// Takes one unit from a GCRA bucket of `per_minute` (burst = `per_minute`).
/// `Ok(Err(retry_after_secs))` when the bucket is empty.
struct Buckets<K: Hash + Eq + Send + Sync + 'static> {
    local: Cache<(K, u32), Arc<DefaultDirectRateLimiter>>,
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

    async fn take(&self, key: &K, per_minute: u32) -> Result<std::result::Result<(), u64>> {
        let per_minute = per_minute.max(1);
        match &self.backend {
            Backend::Local => {
                let n = NonZeroU32::new(per_minute).expect("max(1) is non-zero");
                let limiter = self.local.get_with((key.clone(), per_minute), || {
                    Arc::new(RateLimiter::direct(Quota::per_minute(n)))
                });
                Ok(limiter.check().map_err(|not_until| {
                    retry_after(not_until.wait_time_from(DefaultClock::default().now()))
                }))
            }
            Backend::Redis(r) => {
                let wait_ms = r
                    .take(&format!("{}:{key}", self.prefix), per_minute)
                    .await
                    .map_err(Error::unavailable)?;
                Ok(if wait_ms == 0 {
                    Ok(())
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
            .map_err(|retry_after_secs| Error::RateLimited { retry_after_secs })
    }
}

/// A budget of failed authentications per subject (client IP, or key id). Failures spend it;
/// once it is spent the subject is refused with 429 until the budget has room again.
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
    /// to raise a failure-burst alert).
    pub async fn record_failure(&self, subject: &K) -> Result<bool> {
        match self.buckets.take(subject, self.per_minute).await? {
            Ok(()) => Ok(false),
            Err(retry_after_secs) => {
                let wait = Duration::from_secs(retry_after_secs);
                self.blocked.insert(subject.clone(), Instant::now() + wait);
                if let Backend::Redis(r) = &self.buckets.backend {
                    r.block(&format!("{}:blocked:{subject}", self.buckets.prefix), wait)
                        .await
                        .map_err(Error::unavailable)?;
                }
                Ok(true)
            }
        }
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

/// Per-IP budget (contract: `--ip-failure-budget`).
pub type IpFailures = FailureBudget<IpAddr>;

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

    #[tokio::test]
    async fn failures_block_one_ip_not_another() {
        let budget = IpFailures::new(Backend::Local, "t", 3, 100);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..3 {
            assert!(!budget.record_failure(&a).await.unwrap());
        }
        assert!(
            budget.check(&a).await.is_ok(),
            "three failures are within the budget"
        );
        assert!(
            budget.record_failure(&a).await.unwrap(),
            "the fourth spends it"
        );
        assert!(matches!(
            budget.check(&a).await,
            Err(Error::RateLimited { .. })
        ));
        assert!(budget.check(&b).await.is_ok());
    }
}
