//! Usage tracking: per key and minute, how many token requests a key made, how many were
//! refused, and their latency (sum and maximum) — everything `GET
//! /admin/v1/keys/{key_id}/usage` reports. A request adds to a total in memory; a background
//! job ([`crate::jobs`]) adds the totals to storage every [`FLUSH_INTERVAL`] and at shutdown, in
//! one of the token path's group-commit transactions (`Store::add_usage`). The request path
//! takes a lock for a few additions and never allocates for a key and minute already counted.
//!
//! Memory is bounded: at most [`MAX_PENDING`] key-minutes wait for the next write; beyond that
//! (a store down for long) requests go uncounted, and `keybound_usage_dropped_total` says how
//! many. Only requests that got as far as a valid key are recorded, so a flood of made-up keys
//! cannot fill the table.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::store::{Store, UsageMinute};

/// Longest a request's usage waits in memory before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// Key-minutes waiting to be written before requests go uncounted.
pub const MAX_PENDING: usize = 65_536;

/// One key's requests in one minute, not yet written.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    requests: i64,
    errors: i64,
    latency_sum_us: i64,
    latency_max_us: i64,
}

impl Tally {
    fn add(&mut self, requests: i64, errors: i64, latency_sum_us: i64, latency_max_us: i64) {
        self.requests += requests;
        self.errors += errors;
        self.latency_sum_us += latency_sum_us;
        self.latency_max_us = self.latency_max_us.max(latency_max_us);
    }
}

/// Key-minutes waiting for the next write: minute start → key id → tally.
type Pending = HashMap<i64, HashMap<String, Tally>>;

/// The tally of `key_id` in `minute`, made when absent unless [`MAX_PENDING`] key-minutes
/// already wait (`None`). A key already counted that minute costs no allocation.
fn tally<'a>(pending: &'a mut Pending, minute: i64, key_id: &str) -> Option<&'a mut Tally> {
    if !pending
        .get(&minute)
        .is_some_and(|keys| keys.contains_key(key_id))
    {
        if pending.values().map(HashMap::len).sum::<usize>() >= MAX_PENDING {
            return None;
        }
        pending
            .entry(minute)
            .or_default()
            .insert(key_id.to_owned(), Tally::default());
    }
    pending.get_mut(&minute)?.get_mut(key_id)
}

/// Counts each key's requests per minute in memory, for the usage job to write.
#[derive(Debug, Default)]
pub struct UsageRecorder {
    pending: Mutex<Pending>,
}

impl UsageRecorder {
    /// Counts one request by `key_id` at `at` (unix seconds).
    pub fn record(&self, key_id: &str, at: i64, error: bool, latency_us: i64) {
        let mut pending = self.pending.lock().expect("not poisoned");
        match tally(&mut pending, at.div_euclid(60) * 60, key_id) {
            Some(t) => t.add(1, i64::from(error), latency_us, latency_us),
            None => {
                drop(pending);
                metrics::counter!("keybound_usage_dropped_total").increment(1);
            }
        }
    }

    /// Adds what is counted to `store`. What could not be written is counted again for the
    /// next flush (a failed commit whose outcome is unknown may then be counted twice; usage
    /// is a report, and losing a minute of it would be worse).
    pub async fn flush(&self, store: &dyn Store) {
        let minutes: Vec<UsageMinute> = {
            let mut pending = self.pending.lock().expect("not poisoned");
            pending
                .drain()
                .flat_map(|(minute, keys)| {
                    keys.into_iter().map(move |(key_id, t)| UsageMinute {
                        key_id,
                        minute,
                        requests: t.requests,
                        errors: t.errors,
                        latency_sum_us: t.latency_sum_us,
                        latency_max_us: t.latency_max_us,
                    })
                })
                .collect()
        };
        if minutes.is_empty() {
            return;
        }
        let count = minutes.len();
        if let Err(e) = store.add_usage(minutes.clone()).await {
            tracing::warn!(error = %e, minutes = count, "could not store usage; kept for the next flush");
            self.put_back(minutes);
        }
    }

    /// Counts `minutes` again (after a failed write), as far as there is room.
    fn put_back(&self, minutes: Vec<UsageMinute>) {
        let mut pending = self.pending.lock().expect("not poisoned");
        for m in minutes {
            match tally(&mut pending, m.minute, &m.key_id) {
                Some(t) => t.add(m.requests, m.errors, m.latency_sum_us, m.latency_max_us),
                None => metrics::counter!("keybound_usage_dropped_total")
                    .increment(m.requests.unsigned_abs()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(r: &UsageRecorder) -> Vec<(i64, String, i64, i64, i64, i64)> {
        let pending = r.pending.lock().unwrap();
        let mut rows: Vec<_> = pending
            .iter()
            .flat_map(|(m, keys)| {
                keys.iter().map(|(k, t)| {
                    (
                        *m,
                        k.clone(),
                        t.requests,
                        t.errors,
                        t.latency_sum_us,
                        t.latency_max_us,
                    )
                })
            })
            .collect();
        rows.sort();
        rows
    }

    #[test]
    fn requests_add_up_per_key_and_minute() {
        let r = UsageRecorder::default();
        r.record("ak_a", 120, false, 10);
        r.record("ak_a", 179, true, 30);
        r.record("ak_a", 180, false, 5);
        r.record("ak_b", 125, false, 7);
        assert_eq!(
            pending(&r),
            vec![
                (120, "ak_a".into(), 2, 1, 40, 30),
                (120, "ak_b".into(), 1, 0, 7, 7),
                (180, "ak_a".into(), 1, 0, 5, 5),
            ]
        );
    }

    #[test]
    fn a_full_recorder_drops_new_key_minutes_but_still_counts_known_ones() {
        let r = UsageRecorder::default();
        for i in 0..MAX_PENDING {
            r.record(&format!("ak_{i}"), 60, false, 1);
        }
        r.record("ak_new", 60, false, 1);
        r.record("ak_0", 60, false, 1);
        let rows = pending(&r);
        assert_eq!(rows.len(), MAX_PENDING);
        assert!(!rows.iter().any(|row| row.1 == "ak_new"));
        assert!(rows.contains(&(60, "ak_0".into(), 2, 0, 2, 1)));
    }

    #[test]
    fn what_could_not_be_written_is_counted_again() {
        let r = UsageRecorder::default();
        r.record("ak_a", 60, false, 10);
        r.put_back(vec![UsageMinute {
            key_id: "ak_a".into(),
            minute: 60,
            requests: 3,
            errors: 1,
            latency_sum_us: 30,
            latency_max_us: 20,
        }]);
        assert_eq!(pending(&r), vec![(60, "ak_a".into(), 4, 1, 40, 20)]);
    }
}
