//! Rate limits: a per-key request rate and a per-IP budget of failed authentications, both
//! GCRA through `governor` (a key may spend its whole minute's allowance in one burst, as the
//! contract says, and then gets one request back every `60 / rate` seconds).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::sync::Cache;

/// Per-key rate limits. Each key gets its own limiter, rebuilt if its rate changes.
pub struct KeyLimits {
    limiters: Cache<(String, u32), Arc<DefaultDirectRateLimiter>>,
}

impl KeyLimits {
    /// Keeps limiters for up to `capacity` keys; idle ones are dropped after two minutes
    /// (by then a limiter is full again, so dropping it changes nothing).
    pub fn new(capacity: u64) -> KeyLimits {
        KeyLimits {
            limiters: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(Duration::from_secs(120))
                .build(),
        }
    }

    /// Takes one request from `key_id`'s allowance of `per_minute`; `Err(retry_after_secs)`
    /// when it is spent.
    pub fn check(&self, key_id: &str, per_minute: u32) -> Result<(), u64> {
        let per_minute = NonZeroU32::new(per_minute.max(1)).expect("max(1) is non-zero");
        let limiter = self
            .limiters
            .get_with((key_id.to_owned(), per_minute.get()), || {
                Arc::new(RateLimiter::direct(Quota::per_minute(per_minute)))
            });
        limiter.check().map_err(|not_until| {
            retry_after(not_until.wait_time_from(DefaultClock::default().now()))
        })
    }
}

/// Per-IP budget of failed authentications (brute force). Failures spend the budget; once it
/// is spent the IP is refused with 429 until the budget has room again, whatever it sends.
pub struct FailureBudget {
    per_minute: NonZeroU32,
    budgets: Cache<IpAddr, Arc<DefaultDirectRateLimiter>>,
    blocked: Cache<IpAddr, std::time::Instant>,
}

impl FailureBudget {
    /// `per_minute` failures per IP (0 disables the budget).
    pub fn new(per_minute: u32, capacity: u64) -> FailureBudget {
        FailureBudget {
            per_minute: NonZeroU32::new(per_minute.max(1)).expect("max(1) is non-zero"),
            budgets: Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(Duration::from_secs(120))
                .build(),
            blocked: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(120))
                .build(),
        }
    }

    /// `Err(retry_after_secs)` while `ip` has spent its budget.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        match self.blocked.get(&ip) {
            Some(until) => {
                let now = std::time::Instant::now();
                if until > now {
                    Err(retry_after(until - now))
                } else {
                    self.blocked.invalidate(&ip);
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Records a failed authentication from `ip`; returns true when this failure spent the
    /// budget (the moment to raise a failure-burst alert).
    pub fn record_failure(&self, ip: IpAddr) -> bool {
        let quota = Quota::per_minute(self.per_minute);
        let limiter = self
            .budgets
            .get_with(ip, || Arc::new(RateLimiter::direct(quota)));
        match limiter.check() {
            Ok(()) => false,
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                self.blocked.insert(ip, std::time::Instant::now() + wait);
                true
            }
        }
    }
}

/// Whole seconds to wait, rounded up, at least 1 (a `Retry-After` of 0 invites a tight loop).
fn retry_after(wait: Duration) -> u64 {
    (wait.as_millis().div_ceil(1000) as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_may_burst_its_minute_then_is_refused() {
        let limits = KeyLimits::new(100);
        for i in 0..5 {
            assert_eq!(
                limits.check("ak_test_x", 5),
                Ok(()),
                "request {i} within the burst"
            );
        }
        let retry = limits
            .check("ak_test_x", 5)
            .expect_err("6th request over 5/min");
        assert!(
            (1..=12).contains(&retry),
            "retry after {retry}s, one slot is 12 s"
        );
        assert_eq!(
            limits.check("ak_test_y", 5),
            Ok(()),
            "other keys are unaffected"
        );
    }

    #[test]
    fn failures_block_one_ip_not_another() {
        let budget = FailureBudget::new(3, 100);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(!budget.record_failure(a));
        assert!(!budget.record_failure(a));
        assert!(!budget.record_failure(a));
        assert!(
            budget.check(a).is_ok(),
            "three failures are within the budget"
        );
        assert!(budget.record_failure(a), "the fourth spends it");
        assert!(budget.check(a).is_err());
        assert!(budget.check(b).is_ok());
    }
}
