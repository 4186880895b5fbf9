//! In-process replay store: enough for a single instance, useless across several (each
//! instance would accept a proof once). Use [`RedisReplayStore`](super::RedisReplayStore) when
//! more than one instance serves the token endpoints.
//!
//! Memory is the point of its design. It holds every proof id for the replay ttl (126 s by
//! default), so at 10 000 exchanges a second it holds over a million. Each is a 64-bit keyed
//! fingerprint and an expiry in a plain hash map, 16 bytes a slot (about 20–40 bytes an id
//! with the map's spare room), where a general-purpose cache entry with its own expiry costs
//! several hundred.
//!
//! A fingerprint is SipHash-1-3 of the id under a random key drawn when the store is created,
//! so nobody can aim two ids at one fingerprint. Two different proofs could still share one by
//! chance: the later one would be refused as a replay (`DPOP_REPLAY`; the client retries with a
//! new proof), never the other way round. With n ids held that happens to a fresh proof with
//! probability n / 2^64, about 1 in 10^13 at a million ids.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{ReplayError, ReplayStore, effective_ttl};

/// Independent maps, so concurrent requests rarely wait on one lock, and so what one lock is
/// held for at once stays short: a sweep, or a map growing (a `HashMap` doubles its table and
/// moves every entry, under the shard's lock), covers 1/256 of the entries. With 16 shards a
/// store of a million ids (10 000 proofs a second over the 126 s ttl) grew each shard from
/// 57 k to 115 k entries within about a second, each taking its lock for milliseconds
/// (`docs/benchmarks.md`, seventeenth session).
const SHARD_BITS: u32 = 8;
const SHARDS: usize = 1 << SHARD_BITS;

/// A shard drops its expired entries at most this often (so an entry may stay up to this much
/// past its expiry: it is ignored then, not trusted).
const SWEEP_EVERY_MS: u64 = 5_000;

/// Replay store in process memory.
///
/// It is bounded, and when full it **refuses** new ids ([`ReplayError::Unavailable`]) rather
/// than evicting live ones: an evicted id could be replayed, so evicting under load would
/// turn a flood into a replay window. Size the capacity above the peak proof rate times the
/// replay ttl (the default, four million, covers 31 000 proofs a second with the default
/// 126 s ttl, at 20–40 bytes an entry).
pub struct MemoryReplayStore {
    shards: Box<[Mutex<Shard>]>,
    /// Keys the fingerprints.
    keyed: RandomState,
    /// Zero of the expiry clock (milliseconds since then).
    epoch: Instant,
    /// Entries held, expired ones included until their shard's next sweep.
    live: AtomicU64,
    capacity: u64,
}

#[derive(Default)]
struct Shard {
    /// Fingerprint → expiry (ms since `epoch`).
    seen: HashMap<u64, u64>,
    next_sweep: u64,
}

impl std::fmt::Debug for MemoryReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryReplayStore")
            .field("live", &self.live.load(Ordering::Relaxed))
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Default for MemoryReplayStore {
    fn default() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }
}

impl MemoryReplayStore {
    /// Default bound on the number of ids held.
    pub const DEFAULT_CAPACITY: u64 = 4_000_000;

    /// A store holding at most [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) ids.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding at most `capacity` ids.
    pub fn with_capacity(capacity: u64) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            keyed: RandomState::new(),
            epoch: Instant::now(),
            live: AtomicU64::new(0),
            capacity,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn fingerprint(&self, id: &str) -> u64 {
        self.keyed.hash_one(id)
    }

    fn shard(&self, fingerprint: u64) -> std::sync::MutexGuard<'_, Shard> {
        // The high bits pick the shard (the map hashes the whole fingerprint again).
        let i = (fingerprint >> (u64::BITS - SHARD_BITS)) as usize;
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the shard's expired entries.
    fn sweep(&self, shard: &mut Shard, now: u64) {
        let before = shard.seen.len();
        shard.seen.retain(|_, expiry| *expiry > now);
        let removed = (before - shard.seen.len()) as u64;
        self.live.fetch_sub(removed, Ordering::Relaxed);
        shard.next_sweep = now + SWEEP_EVERY_MS;
        if shard.seen.capacity() > 4 * shard.seen.len().max(1024) {
            // After a burst: give the memory back rather than keep the peak's table.
            shard.seen.shrink_to_fit();
        }
    }

    /// Sweeps every shard (when the store looks full).
    fn sweep_all(&self, now: u64) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            self.sweep(&mut shard, now);
        }
    }

    /// Whether the fingerprint of `id` is held and unexpired (tests).
    #[cfg(test)]
    fn holds(&self, id: &str) -> bool {
        let f = self.fingerprint(id);
        let now = self.now_ms();
        self.shard(f).seen.get(&f).is_some_and(|&e| e > now)
    }
}

#[async_trait::async_trait]
impl ReplayStore for MemoryReplayStore {
    async fn first_seen(&self, id: &str, ttl: Duration) -> Result<bool, ReplayError> {
        let f = self.fingerprint(id);
        let now = self.now_ms();
        let expiry = now + effective_ttl(ttl).as_millis() as u64;
        if self.live.load(Ordering::Relaxed) >= self.capacity {
            // Expired entries still count until their shard is swept: sweep, then look again.
            self.sweep_all(now);
        }
        let full = self.live.load(Ordering::Relaxed) >= self.capacity;
        // One lock covers the look-up and the insert, so of many concurrent callers with one
        // id exactly one sees it as new.
        let mut shard = self.shard(f);
        if now >= shard.next_sweep {
            self.sweep(&mut shard, now);
        }
        match shard.seen.get_mut(&f) {
            // Seen and still remembered: a replay. A replay does not extend the entry's life.
            Some(e) if *e > now => Ok(false),
            // Expired but not yet swept: new again, in the same slot.
            Some(e) => {
                *e = expiry;
                Ok(true)
            }
            // A replay of an id we hold is still answered correctly when full (above).
            None if full => Err(ReplayError::Unavailable(
                "memory replay store is full".to_owned(),
            )),
            None => {
                shard.seen.insert(f, expiry);
                self.live.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
        }
    }

    fn approx_len(&self) -> Option<u64> {
        Some(self.live.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

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
        store.sweep_all(store.now_ms());
        assert_eq!(
            store.approx_len(),
            Some(2),
            "the expired entry was reused, not counted twice"
        );
    }

    #[tokio::test]
    async fn a_sweep_drops_expired_entries_and_keeps_live_ones() {
        let store = MemoryReplayStore::new();
        for i in 0..100 {
            let ttl = Duration::from_secs(if i % 2 == 0 { 1 } else { 60 });
            assert_eq!(store.first_seen(&format!("id-{i}"), ttl).await, Ok(true));
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        store.sweep_all(store.now_ms());
        assert_eq!(store.approx_len(), Some(50));
        for i in 0..100 {
            let again = store
                .first_seen(&format!("id-{i}"), Duration::from_secs(60))
                .await;
            assert_eq!(again, Ok(i % 2 == 0), "id-{i}");
        }
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

    /// Every shard takes its share: the shard index covers all of them, so no shard grows
    /// (and holds its lock while it grows) for more than its 1/256 of the ids.
    #[tokio::test]
    async fn ids_spread_over_every_shard() {
        let store = MemoryReplayStore::new();
        let n = SHARDS * 64;
        for i in 0..n {
            let id = format!("jti-{i}");
            assert_eq!(
                store.first_seen(&id, Duration::from_secs(60)).await,
                Ok(true)
            );
        }
        let sizes: Vec<usize> = store
            .shards
            .iter()
            .map(|s| s.lock().unwrap().seen.len())
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), n);
        // 64 expected a shard: a shard with under 16 or over 160 would be a skewed index.
        assert!(sizes.iter().all(|&k| (16..=160).contains(&k)), "{sizes:?}");
    }

    #[tokio::test]
    async fn the_store_does_not_hold_the_raw_id() {
        let store = MemoryReplayStore::new();
        store
            .first_seen("secret-jti", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(store.holds("secret-jti"));
        assert!(!store.holds("another-jti"));
        assert!(!format!("{store:?}").contains("secret-jti"));
    }
}
