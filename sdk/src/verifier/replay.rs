//! A bounded memory of DPoP proof `jti`s, so that a captured proof cannot be sent twice
//! (RFC 9449 section 11.1).
//!
//! The memory is shared by every client of the resource server, so it is also something a
//! client can try to fill: one caller with a valid token can sign proofs as fast as it likes,
//! and once every slot holds a live proof the verifier must refuse everyone (forgetting a live
//! proof would open a replay window). So each device key (`jkt`) may hold at most a quota of
//! the slots: a flooding client runs into its own quota and is refused, while other clients'
//! proofs still find room.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReplayError {
    /// The proof was seen before.
    Replayed,
    /// This device key already holds its quota of live proofs; the earliest of them is
    /// forgotten at the given Unix time.
    QuotaExceeded { until: u64 },
    /// Every slot holds a proof that could still be replayed. Forgetting one would open a
    /// replay window, so the request is refused instead (fail closed).
    Full,
}

pub(crate) struct ReplayCache {
    capacity: usize,
    per_key: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seen: HashSet<(String, String)>,
    /// Live entries per device key.
    per_key: HashMap<String, KeyUsage>,
    /// Entries in insertion order with their expiry; expiries grow with insertion time, so
    /// pruning pops from the front.
    order: VecDeque<(u64, String, String)>,
}

struct KeyUsage {
    live: usize,
    /// Expiries of this key's live entries, oldest first (to say when room comes back).
    expiries: VecDeque<u64>,
}

impl ReplayCache {
    /// A cache of `capacity` proofs in all, of which one device key may hold `per_key`.
    pub(crate) fn new(capacity: usize, per_key: usize) -> Self {
        Self {
            capacity,
            per_key: per_key.clamp(1, capacity.max(1)),
            inner: Mutex::default(),
        }
    }

    /// Records the proof `jti` of device key `jkt`, remembered until `expires_at` (Unix
    /// seconds), unless it was seen before or there is no room for it.
    pub(crate) fn insert(
        &self,
        jkt: &str,
        jti: &str,
        expires_at: u64,
        now: u64,
    ) -> Result<(), ReplayError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while inner.order.front().is_some_and(|(exp, _, _)| *exp < now) {
            let (_, key, id) = inner.order.pop_front().expect("front exists");
            if let Some(usage) = inner.per_key.get_mut(&key) {
                usage.live -= 1;
                usage.expiries.pop_front();
                if usage.live == 0 {
                    inner.per_key.remove(&key);
                }
            }
            inner.seen.remove(&(key, id));
        }
        let entry = (jkt.to_owned(), jti.to_owned());
        if inner.seen.contains(&entry) {
            return Err(ReplayError::Replayed);
        }
        if let Some(usage) = inner.per_key.get(jkt)
            && usage.live >= self.per_key
        {
            let until = usage.expiries.front().copied().unwrap_or(now) + 1;
            return Err(ReplayError::QuotaExceeded { until });
        }
        if inner.seen.len() >= self.capacity {
            return Err(ReplayError::Full);
        }
        let usage = inner
            .per_key
            .entry(entry.0.clone())
            .or_insert_with(|| KeyUsage {
                live: 0,
                expiries: VecDeque::new(),
            });
        usage.live += 1;
        usage.expiries.push_back(expires_at);
        inner
            .order
            .push_back((expires_at, entry.0.clone(), entry.1.clone()));
        inner.seen.insert(entry);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_second_use_until_expiry() {
        let cache = ReplayCache::new(10, 10);
        assert!(cache.insert("k", "a", 100, 0).is_ok());
        assert_eq!(cache.insert("k", "a", 100, 50), Err(ReplayError::Replayed));
        // The same jti from another key is another proof.
        assert!(cache.insert("other", "a", 100, 50).is_ok());
        // After its expiry the entry is forgotten: the proof's iat window has closed by then.
        assert!(cache.insert("k", "a", 200, 101).is_ok());
    }

    #[test]
    fn fails_closed_when_full_of_live_entries() {
        let cache = ReplayCache::new(2, 2);
        assert!(cache.insert("k1", "a", 100, 0).is_ok());
        assert!(cache.insert("k2", "b", 100, 0).is_ok());
        assert_eq!(cache.insert("k3", "c", 100, 0), Err(ReplayError::Full));
        assert!(
            cache.insert("k3", "c", 300, 101).is_ok(),
            "room once entries expire"
        );
    }

    #[test]
    fn one_key_cannot_take_more_than_its_quota() {
        let cache = ReplayCache::new(100, 3);
        for (i, jti) in ["a", "b", "c"].into_iter().enumerate() {
            assert!(cache.insert("flood", jti, 100 + i as u64, 0).is_ok());
        }
        assert_eq!(
            cache.insert("flood", "d", 110, 0),
            Err(ReplayError::QuotaExceeded { until: 101 })
        );
        // Another key still finds room, and the flooding key gets room back as its entries
        // expire.
        assert!(cache.insert("honest", "a", 110, 0).is_ok());
        assert!(cache.insert("flood", "d", 200, 101).is_ok());
        assert_eq!(
            cache.insert("flood", "e", 200, 101),
            Err(ReplayError::QuotaExceeded { until: 102 })
        );
    }

    #[test]
    fn the_quota_never_exceeds_the_capacity() {
        let cache = ReplayCache::new(2, 1_000);
        assert!(cache.insert("k", "a", 100, 0).is_ok());
        assert!(cache.insert("k", "b", 100, 0).is_ok());
        assert!(matches!(
            cache.insert("k", "c", 100, 0),
            Err(ReplayError::QuotaExceeded { .. })
        ));
    }
}
