//! In-process replay store: enough for a single instance, useless across several (each
//! instance would accept a proof once). Use [`RedisReplayStore`](super::RedisReplayStore) when
//! more than one instance serves the token endpoints.

use moka::Expiry;
use moka::future::Cache;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{ReplayError, ReplayStore, effective_ttl, hash_id};

/// Replay store in process memory, built on a moka cache with a per-entry expiry.
///
/// It is bounded, and when full it **refuses** new ids ([`ReplayError::Unavailable`]) rather
/// than evicting live ones: an evicted id could be replayed, so evicting under load would
/// turn a flood into a replay window. Size the capacity above the peak proof rate times the
/// replay ttl (the default, one million, covers 7,900 proofs a second with the default
/// 126 s ttl, at roughly 100 bytes an entry).
#[derive(Clone)]
pub struct MemoryReplayStore {
    /// Key: SHA-256 of the id; value: its ttl, which [`TtlFromValue`] turns into the expiry.
    cache: Cache<[u8; 32], Duration>,
    /// Entries inserted and not yet removed, counted by us rather than read from
    /// `Cache::entry_count`, which only catches up when moka runs its housekeeping and so
    /// could let a burst far overshoot the bound.
    live: Arc<AtomicU64>,
    capacity: u64,
}

impl std::fmt::Debug for MemoryReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReplayStore")
            .field("live", &self.live.load(Ordering::Relaxed))
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// Each entry expires after the ttl it was stored with; reads and repeated sightings do not
/// extend it (the `Expiry` defaults keep the current expiry on read and update).
struct TtlFromValue;

impl Expiry<[u8; 32], Duration> for TtlFromValue {
    fn expire_after_create(&self, _: &[u8; 32], ttl: &Duration, _: Instant) -> Option<Duration> {
        Some(*ttl)
    }
}

impl Default for MemoryReplayStore {
    fn default() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }
}

impl MemoryReplayStore {
    /// Default bound on the number of ids held.
    pub const DEFAULT_CAPACITY: u64 = 1_000_000;

    /// A store holding at most [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) ids.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding at most `capacity` ids (approximately: concurrent inserts may pass
    /// the bound by the number of requests in flight).
    pub fn with_capacity(capacity: u64) -> Self {
        let live = Arc::new(AtomicU64::new(0));
        let on_removal = Arc::clone(&live);
        let cache = Cache::builder()
            // No moka max_capacity: size-based eviction is exactly what we must not do.
            .expire_after(TtlFromValue)
            // Called for every removal (expiry here; we never invalidate or replace a live
            // entry), so `live` tracks the entries still held.
            .eviction_listener(move |_, _, _| {
                // Saturating: never wrap below zero, whatever order events arrive in.
                let _ = on_removal.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
            })
            .build();
        Self {
            cache,
            live,
            capacity,
        }
    }
}

#[async_trait::async_trait]
impl ReplayStore for MemoryReplayStore {
    async fn first_seen(&self, id: &str, ttl: Duration) -> Result<bool, ReplayError> {
        let key = hash_id(id);
        let ttl = effective_ttl(ttl);

        if self.live.load(Ordering::Relaxed) >= self.capacity {
            // Expired entries still count until housekeeping removes them: run it, then look
            // again before refusing.
            self.cache.run_pending_tasks().await;
            if self.live.load(Ordering::Relaxed) >= self.capacity {
                // A replay of an id we hold is still answered correctly when full.
                if self.cache.contains_key(&key) {
                    return Ok(false);
                }
                return Err(ReplayError::Unavailable(
                    "memory replay store is full".to_owned(),
                ));
            }
        }

        // `entry().or_insert_with` is atomic per key: when many tasks race on one id, moka
        // runs one insert and the others wait for it, so exactly one caller sees a fresh
        // entry. (A separate get-then-insert would let two concurrent replays both pass.)
        let entry = self.cache.entry(key).or_insert_with(async { ttl }).await;
        if entry.is_fresh() {
            self.live.fetch_add(1, Ordering::Relaxed);
        }
        Ok(entry.is_fresh())
    }

    fn approx_len(&self) -> Option<u64> {
        Some(self.live.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn second_sighting_is_a_replay() {
        let store = MemoryReplayStore::new();
        let ttl = Duration::from_secs(60);
        assert_eq!(store.first_seen("a", ttl).await, Ok(true));
        assert_eq!(store.first_seen("a", ttl).await, Ok(false));
        assert_eq!(store.first_seen("b", ttl).await, Ok(true));
        assert_eq!(store.approx_len(), Some(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exactly_one_of_many_concurrent_callers_sees_new() {
        let store = Arc::new(MemoryReplayStore::new());
        let barrier = Arc::new(tokio::sync::Barrier::new(100));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let store = Arc::clone(&store);
                let barrier = Arc::clone(&barrier);
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.first_seen("same-jti", Duration::from_secs(60)).await
                })
            })
            .collect();
        let mut new = 0;
        for task in tasks {
            if task.await.unwrap().unwrap() {
                new += 1;
            }
        }
        assert_eq!(new, 1);
        assert_eq!(store.approx_len(), Some(1));
    }

    #[tokio::test]
    async fn entries_expire_after_their_own_ttl() {
        let store = MemoryReplayStore::new();
        assert_eq!(
            store.first_seen("short", Duration::from_secs(1)).await,
            Ok(true)
        );
        assert_eq!(
            store.first_seen("long", Duration::from_secs(60)).await,
            Ok(true)
        );
        // A replay does not extend the entry's life.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            store.first_seen("short", Duration::from_secs(60)).await,
            Ok(false)
        );
        tokio::time::sleep(Duration::from_millis(600)).await;

        assert_eq!(
            store.first_seen("short", Duration::from_secs(1)).await,
            Ok(true),
            "expired"
        );
        assert_eq!(
            store.first_seen("long", Duration::from_secs(60)).await,
            Ok(false),
            "still held"
        );
        store.cache.run_pending_tasks().await;
        assert_eq!(
            store.approx_len(),
            Some(2),
            "the expired entry was counted out, the new one in"
        );
    }

    #[tokio::test]
    async fn zero_ttl_is_floored() {
        let store = MemoryReplayStore::new();
        assert_eq!(store.first_seen("z", Duration::ZERO).await, Ok(true));
        assert_eq!(store.first_seen("z", Duration::ZERO).await, Ok(false));
    }

    #[tokio::test]
    async fn full_store_refuses_new_ids_but_still_detects_replays() {
        let store = MemoryReplayStore::with_capacity(3);
        let ttl = Duration::from_secs(60);
        for id in ["a", "b", "c"] {
            assert_eq!(store.first_seen(id, ttl).await, Ok(true));
        }
        assert!(matches!(
            store.first_seen("d", ttl).await,
            Err(ReplayError::Unavailable(_))
        ));
        assert_eq!(store.first_seen("a", ttl).await, Ok(false));
    }

    #[tokio::test]
    async fn full_store_makes_room_as_entries_expire() {
        let store = MemoryReplayStore::with_capacity(2);
        assert_eq!(
            store.first_seen("a", Duration::from_secs(1)).await,
            Ok(true)
        );
        assert_eq!(
            store.first_seen("b", Duration::from_secs(1)).await,
            Ok(true)
        );
        assert!(store.first_seen("c", Duration::from_secs(1)).await.is_err());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            store.first_seen("c", Duration::from_secs(1)).await,
            Ok(true)
        );
    }

    #[tokio::test]
    async fn the_store_does_not_hold_the_raw_id() {
        let store = MemoryReplayStore::new();
        store
            .first_seen("secret-jti", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(store.cache.contains_key(&hash_id("secret-jti")));
        assert!(!format!("{store:?}").contains("secret-jti"));
    }
}
