//! A bounded memory of DPoP proof `jti`s, so that a captured proof cannot be sent twice
//! (RFC 9449 section 11.1).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

pub(crate) enum ReplayError {
    /// The proof was seen before.
    Replayed,
    /// Every slot holds a proof that could still be replayed. Forgetting one would open a
    /// replay window, so the request is refused instead (fail closed).
    Full,
}

pub(crate) struct ReplayCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    seen: HashSet<String>,
    /// Entries in insertion order with their expiry; expiries grow with insertion time, so
    /// pruning pops from the front.
    order: VecDeque<(u64, String)>,
}

impl ReplayCache {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::default(),
        }
    }

    /// Records `id`, remembered until `expires_at` (Unix seconds), unless it was seen before.
    pub(crate) fn insert(&self, id: String, expires_at: u64, now: u64) -> Result<(), ReplayError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while inner.order.front().is_some_and(|(exp, _)| *exp < now) {
            let (_, old) = inner.order.pop_front().expect("front exists");
            inner.seen.remove(&old);
        }
        if inner.seen.contains(&id) {
            return Err(ReplayError::Replayed);
        }
        if inner.seen.len() >= self.capacity {
            return Err(ReplayError::Full);
        }
        inner.seen.insert(id.clone());
        inner.order.push_back((expires_at, id));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_second_use_until_expiry() {
        let cache = ReplayCache::new(10);
        assert!(cache.insert("a".into(), 100, 0).is_ok());
        assert!(matches!(
            cache.insert("a".into(), 100, 50),
            Err(ReplayError::Replayed)
        ));
        // After its expiry the entry is forgotten: the proof's iat window has closed by then.
        assert!(cache.insert("a".into(), 200, 101).is_ok());
    }

    #[test]
    fn fails_closed_when_full_of_live_entries() {
        let cache = ReplayCache::new(2);
        assert!(cache.insert("a".into(), 100, 0).is_ok());
        assert!(cache.insert("b".into(), 100, 0).is_ok());
        assert!(matches!(
            cache.insert("c".into(), 100, 0),
            Err(ReplayError::Full)
        ));
        assert!(
            cache.insert("c".into(), 300, 101).is_ok(),
            "room once entries expire"
        );
    }
}
