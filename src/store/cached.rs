//! The validation cache: a [`Store`] decorator that keeps key and device records in memory.
//!
//! The token path reads a key record and a device record on every exchange; both change
//! rarely. Reads are served from moka caches for at most [`TTL`] (the contract's bound for
//! changes made by another process, such as the CLI). Changes made through this store evict
//! the affected entries at once, and are announced on the [`Invalidations`] channel so other
//! instances (through Redis) evict theirs too. Unknown key ids are cached as absent, so a flood
//! of made-up ids does not reach the database. A key or device in use is not read again at
//! all: the write of its `last_used_at` or history, once a second, answers it as stored, and
//! that answer starts its entry's [`TTL`] again ([`CachedStore::refreshed`],
//! [`CachedStore::refreshed_keys`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::future::Cache;
use moka::ops::compute::Op;
use tokio::sync::broadcast;

use super::*;

/// How long a cached record may be served without re-reading storage.
pub const TTL: Duration = Duration::from_secs(5);

/// The queue of unwritten device histories is kept in this many parts, by a hash of the
/// device id, and written one part at a time (`crate::jobs`): each device is still written
/// once a flush interval, but the work of a flush is spread over the interval instead of
/// landing at once.
pub const PENDING_PARTS: usize = 10;

/// One part of the queue of unwritten device histories, by device id.
type PendingPart = Mutex<HashMap<String, Arc<DeviceRecord>>>;

/// How long the two caches keep an entry: [`TTL`] less up to a fifth, by a hash of its key,
/// counted from its insert (as moka's `time_to_live`, which restarts at every insert).
///
/// Not the same span for every entry: entries loaded together (a warm-up, the first second of
/// traffic) would expire together too, and every one of them would be read from storage again
/// in the same few milliseconds, every 5 s, while requests queued behind the reads (the
/// open-loop p99, `docs/benchmarks.md`, fourteenth session). Staggered, they expire over a
/// second and drift apart. No entry lives longer than [`TTL`], the contract's bound.
struct Staggered;

impl Staggered {
    fn span(key: &impl std::hash::Hash) -> Duration {
        TTL - TTL.mul_f64((fixed_hash(key) % 1024) as f64 / 1024.0 / 5.0)
    }
}

/// A hash with a fixed key, the same for a value every time: an entry's span and a device's
/// queue part never move.
fn fixed_hash(x: &impl std::hash::Hash) -> u64 {
    use std::hash::BuildHasher;
    std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(x)
}

impl<K: std::hash::Hash, V> moka::Expiry<K, V> for Staggered {
    fn expire_after_create(&self, key: &K, _: &V, _: std::time::Instant) -> Option<Duration> {
        Some(Self::span(key))
    }

    fn expire_after_update(
        &self,
        key: &K,
        _: &V,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(Self::span(key))
    }
}

/// Locks a queue part; a panic while it was held left a map that is still whole.
fn lock_part(part: &PendingPart) -> std::sync::MutexGuard<'_, HashMap<String, Arc<DeviceRecord>>> {
    part.lock().unwrap_or_else(|e| e.into_inner())
}

/// An eviction to apply on every instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "lowercase")]
pub enum Invalidation {
    /// A key record changed.
    Key(String),
    /// A device record changed (by key id and thumbprint).
    Device(String, String),
    /// Drop everything (e.g. after a lost connection to the broadcast channel).
    All,
}

/// Fan-out of local changes, for a broadcaster (Redis pub/sub) to forward.
pub type Invalidations = broadcast::Sender<Invalidation>;

/// Caching decorator around any [`Store`].
pub struct CachedStore {
    inner: Arc<dyn Store>,
    keys: KeyCache,
    devices: DeviceCache,
    changes: Invalidations,
    /// Bumped by every eviction applied here (local, from another instance, or the second
    /// eviction of [`apply`](Self::apply)): what was derived from records before a bump (the
    /// token status lists) is out of date after it.
    generation: Arc<AtomicU64>,
    /// Device histories remembered but not yet written, in [`PENDING_PARTS`] parts (see
    /// [`remember_device_usage`](Self::remember_device_usage)).
    pending: Box<[PendingPart]>,
}

impl CachedStore {
    /// The store behind the cache (writes that need no cache update).
    pub fn inner_store(&self) -> &Arc<dyn Store> {
        &self.inner
    }

    /// Puts a device's new history into the cached record, so this instance serves it before
    /// it is written (`AppState::record_device`) — but never the lifecycle fields: `device` was
    /// read before this exchange, and an operator may have revoked (or approved) the device
    /// since. So only an entry that is still cached is updated (a revocation evicts it), and
    /// its status, approval and revocation time are kept from the cached record, which a
    /// revocation re-read from storage.
    ///
    /// The history also waits in a queue ([`pending`](Self::pending)) until it is written; a device
    /// read from storage before it is written gets it laid over the stored history, so an
    /// eviction (enrollment, a revocation elsewhere, the TTL) loses none of it.
    pub async fn remember_device_usage(&self, device: Arc<DeviceRecord>) {
        self.pending_lock(&device.device_id)
            .insert(device.device_id.clone(), device.clone());
        let key = (
            device.key_id.as_str().to_owned(),
            device.jkt.as_str().to_owned(),
        );
        let Some(Some(slot)) = self.devices.get(&key).await else {
            return;
        };
        let mut cached = slot.lock();
        cached.record = if (
            cached.record.status,
            cached.record.approved,
            cached.record.revoked_at,
            cached.record.baseline,
        ) == (
            device.status,
            device.approved,
            device.revoked_at,
            device.baseline,
        ) {
            device
        } else {
            let mut d = (*device).clone();
            d.status = cached.record.status;
            d.approved = cached.record.approved;
            d.revoked_at = cached.record.revoked_at;
            // Scored against a fingerprint an approval has replaced since: the approval's
            // stays.
            d.keep_baseline_of(&cached.record);
            Arc::new(d)
        };
    }

    /// Takes what history writes found in storage ([`Store::update_device_usage`]'s answers)
    /// as a fresh read of each device: its cached entry gets the stored lifecycle fields and
    /// starts its [`TTL`] again, so a device in use (written once a
    /// [`DEVICE_FLUSH_INTERVAL`](crate::jobs::DEVICE_FLUSH_INTERVAL)) is never read again,
    /// and a change the CLI makes in storage reaches it at its next write (within about a
    /// second) instead of at its entry's expiry. A device no longer stored is evicted.
    ///
    /// `started` is when the writes were sent and `generation` the [`generation`](Self::generation)
    /// then. Nothing here can make an entry older than it was: an entry whose record was read
    /// (or refreshed) after `started` may hold a later change, and is left alone; after any
    /// eviction since `started` (one may have removed an entry these answers predate) all of
    /// them are left alone. The entry is replaced only if it is still there, so an eviction
    /// before this is not undone; one racing it is repeated after [`REEVICT_AFTER`], as for a
    /// lookup's own read.
    pub async fn refreshed(
        &self,
        started: Instant,
        generation: u64,
        written: &[(Arc<DeviceRecord>, Option<DeviceLifecycle>)],
    ) {
        for (device, stored) in written {
            if self.generation() != generation {
                return;
            }
            let key = (
                device.key_id.as_str().to_owned(),
                device.jkt.as_str().to_owned(),
            );
            let Some(stored) = stored else {
                self.devices.invalidate(&key).await;
                continue;
            };
            self.devices
                .entry(key)
                .and_compute_with(|entry| async move {
                    match entry.and_then(|e| e.into_value()) {
                        Some(slot) => match slot.refresh(started, stored) {
                            Refresh::Taken => {
                                metrics::counter!("keybound_cache_refreshes_total").increment(1);
                                Op::Put(Some(slot))
                            }
                            // Approved since it was read: its fingerprint is read again.
                            Refresh::Rebaselined => Op::Remove,
                            Refresh::Left => Op::Nop,
                        },
                        None => Op::Nop,
                    }
                })
                .await;
        }
    }

    /// [`refreshed`](Self::refreshed) for keys: the `last_used_at` batch (once a second,
    /// `crate::jobs`) answers each key in use as stored, and that answer replaces the key's
    /// cached record and starts its [`TTL`] again, so a key in use is not read again either.
    /// An entry is replaced only if it still holds `before` (what it held when the write was
    /// sent: not read again since), and none after an eviction since then; a key the write did
    /// not find is evicted.
    pub(crate) async fn refreshed_keys(
        &self,
        generation: u64,
        used: &[(String, i64)],
        before: Vec<Option<Arc<KeyRecord>>>,
        stored: &[KeyRecord],
    ) {
        let stored: HashMap<&str, &KeyRecord> =
            stored.iter().map(|k| (k.key_id.as_str(), k)).collect();
        for ((key_id, _), before) in used.iter().zip(before) {
            if self.generation() != generation {
                return;
            }
            let Some(before) = before else { continue };
            let Some(&record) = stored.get(key_id.as_str()) else {
                self.keys.invalidate(key_id).await;
                continue;
            };
            self.keys
                .entry_by_ref(key_id.as_str())
                .and_compute_with(|entry| async move {
                    match entry.and_then(|e| e.into_value()) {
                        Some(current) if Arc::ptr_eq(&current, &before) => {
                            metrics::counter!("keybound_cache_refreshes_total").increment(1);
                            Op::Put(Some(Arc::new(record.clone())))
                        }
                        _ => Op::Nop,
                    }
                })
                .await;
        }
    }

    /// The queue part that holds `device_id`'s history.
    fn pending_lock(
        &self,
        device_id: &str,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<DeviceRecord>>> {
        lock_part(&self.pending[fixed_hash(&device_id) as usize % PENDING_PARTS])
    }

    /// The remembered device histories not written yet. They stay queued (and laid over
    /// storage reads) until [`written`](Self::written) says they are stored, so a read between
    /// the flush's start and its commit still sees them.
    pub fn pending(&self) -> Vec<Arc<DeviceRecord>> {
        (0..PENDING_PARTS)
            .flat_map(|p| self.pending_part(p))
            .collect()
    }

    /// Those of [`pending`](Self::pending) in part `part` (of [`PENDING_PARTS`]).
    pub fn pending_part(&self, part: usize) -> Vec<Arc<DeviceRecord>> {
        lock_part(&self.pending[part % PENDING_PARTS])
            .values()
            .cloned()
            .collect()
    }

    /// Drops from the queue the histories in `stored`, unless a newer one replaced them
    /// meanwhile (that one waits for the next flush).
    pub fn written<'a>(&self, stored: impl IntoIterator<Item = &'a Arc<DeviceRecord>>) {
        for d in stored {
            let mut pending = self.pending_lock(&d.device_id);
            if pending
                .get(&d.device_id)
                .is_some_and(|queued| Arc::ptr_eq(queued, d))
            {
                pending.remove(&d.device_id);
            }
        }
    }

    /// Forgets a device's unwritten history (after an operator changed the device).
    pub fn forget_pending(&self, device_id: &str) {
        self.pending_lock(device_id).remove(device_id);
    }

    /// `stored` with the history this instance remembered for it and has not written yet;
    /// its lifecycle fields (status, approval, revocation) stay as stored, and so does its
    /// fingerprint when an approval re-baselined it after that history was scored.
    fn with_pending(&self, stored: DeviceRecord) -> DeviceRecord {
        match self.pending_lock(&stored.device_id).get(&stored.device_id) {
            Some(p) => {
                let mut history = (**p).clone();
                history.keep_baseline_of(&stored);
                DeviceRecord {
                    status: stored.status,
                    approved: stored.approved,
                    revoked_at: stored.revoked_at,
                    name: stored.name,
                    ..history
                }
            }
            None => stored,
        }
    }

    /// Wraps `inner` with caches of `capacity` entries each.
    pub fn new(inner: Arc<dyn Store>, capacity: u64) -> CachedStore {
        let (changes, _) = broadcast::channel(1024);
        CachedStore {
            inner,
            keys: Cache::builder()
                .max_capacity(capacity)
                .expire_after(Staggered)
                .build(),
            devices: Cache::builder()
                .max_capacity(capacity)
                .expire_after(Staggered)
                .build(),
            changes,
            generation: Arc::default(),
            pending: (0..PENDING_PARTS).map(|_| Mutex::default()).collect(),
        }
    }

    /// How many evictions have been applied so far (see the field's doc). Read it before
    /// reading storage: a result read after an eviction that raced the read is then still
    /// recognised as stale.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Subscribes to local changes (to forward them to other instances).
    pub fn changes(&self) -> broadcast::Receiver<Invalidation> {
        self.changes.subscribe()
    }

    /// Applies an eviction that came from another instance (or from here), now and once more
    /// after [`REEVICT_AFTER`].
    ///
    /// Why twice: a lookup that read storage just before the change committed may still be in
    /// flight when the eviction arrives, and would then cache the old record (say, an active
    /// key that was just revoked) for a whole [`TTL`]. moka cannot cancel a load in flight, so
    /// the second eviction, after any such read has finished, removes what it cached.
    pub async fn apply(&self, inv: &Invalidation) {
        evict(&self.keys, &self.devices, inv).await;
        self.generation.fetch_add(1, Ordering::AcqRel);
        let (keys, devices, inv) = (self.keys.clone(), self.devices.clone(), inv.clone());
        let generation = self.generation.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REEVICT_AFTER).await;
            evict(&keys, &devices, &inv).await;
            generation.fetch_add(1, Ordering::AcqRel);
        });
    }

    async fn changed(&self, inv: Invalidation) {
        self.apply(&inv).await;
        let _ = self.changes.send(inv);
    }

    /// Cached key lookup (also used directly by the token path, with `Arc` to avoid copies).
    pub async fn key(&self, key_id: &str) -> Result<Option<Arc<KeyRecord>>> {
        let inner = &self.inner;
        self.keys
            .try_get_with_by_ref(key_id, async move {
                count_read("key");
                inner.get_key(key_id).await.map(|k| k.map(Arc::new))
            })
            .await
            .map_err(unshare)
    }

    /// Like [`key`](Self::key), also saying whether the answer came from the cache (`true`) or
    /// from a storage read made by this call (`false`).
    pub async fn key_and_source(&self, key_id: &str) -> Result<(Option<Arc<KeyRecord>>, bool)> {
        let inner = &self.inner;
        let entry = self
            .keys
            .entry_by_ref(key_id)
            .or_try_insert_with(async move {
                count_read("key");
                inner.get_key(key_id).await.map(|k| k.map(Arc::new))
            })
            .await
            .map_err(unshare)?;
        let cached = !entry.is_fresh();
        Ok((entry.into_value(), cached))
    }

    /// Makes a refusal cost what refusing an unknown id costs. A made-up id misses the cache
    /// and costs a storage read that finds nothing; a real id with a wrong secret is usually
    /// cached and was answered ~20 µs sooner, which told an attacker the id exists
    /// (`keybound lab`, scenario G: |t| ≈ 110). So a refusal whose key lookup was answered
    /// from the cache (`key_and_source`) pays the same read, of an id that cannot exist.
    /// Successes stay cache-only.
    pub async fn pay_for_refusal(&self, answered_from_cache: bool) {
        if answered_from_cache {
            let _ = self.inner.get_key(ABSENT_KEY_ID).await;
        }
    }

    /// Cached device lookup.
    pub async fn device(&self, key_id: &str, jkt: &str) -> Result<Option<Arc<DeviceRecord>>> {
        let inner = &self.inner;
        let slot = self
            .devices
            .try_get_with((key_id.to_owned(), jkt.to_owned()), async move {
                count_read("device");
                inner
                    .get_device_by_jkt(key_id, jkt)
                    .await
                    .map(|d| d.map(|d| DeviceSlot::new(self.with_pending(d))))
            })
            .await
            .map_err(unshare)?;
        Ok(slot.map(|s| s.current()))
    }

    /// Entries in the key cache, for metrics.
    pub fn key_entries(&self) -> u64 {
        self.keys.entry_count()
    }
}

/// Counts a lookup the cache could not answer, which reads storage (`cache`: `key`, `device`).
fn count_read(cache: &'static str) {
    metrics::counter!("keybound_cache_reads_total", "cache" => cache).increment(1);
}

/// A key id no key can have (`none` is not an environment), read by [`CachedStore::pay_for_refusal`].
const ABSENT_KEY_ID: &str = "ak_none_000000000000";

/// When an eviction is applied the second time (see [`CachedStore::apply`]): longer than a
/// storage read takes, well inside the 1 s in which a revocation must be in force everywhere.
pub const REEVICT_AFTER: Duration = Duration::from_millis(250);

type KeyCache = Cache<String, Option<Arc<KeyRecord>>>;
type DeviceCache = Cache<(String, String), Option<Arc<DeviceSlot>>>;

/// A cached device: the record as last read or written through. Written in place, so the
/// write-through of every exchange is a lock and a pointer swap rather than a cache insert
/// (moka's per-key lock, write log and housekeeping: ~4 % of an exchange's CPU). An eviction
/// drops the slot from the cache; a write into a slot already dropped reaches no reader.
///
/// Writing in place also keeps [`TTL`] counting from the storage read. The entry's expiry
/// ([`Staggered`], as moka's `time_to_live` before it) restarts at every insert, and when the
/// write-through replaced the entry, a device that exchanged at least every 5 s was never read
/// again, so a revocation made directly in the database (the CLI) never reached it
/// (`lifecycle::cli_device_revocation_is_in_force_while_the_device_keeps_exchanging`). The
/// entry is inserted again only with lifecycle fields fresh from storage
/// ([`CachedStore::refreshed`]).
struct DeviceSlot(Mutex<Current>);

/// What a [`DeviceSlot`] holds.
struct Current {
    record: Arc<DeviceRecord>,
    /// When its lifecycle fields were last read from storage (a time after the read).
    read_at: Instant,
}

impl DeviceSlot {
    fn new(record: DeviceRecord) -> Arc<DeviceSlot> {
        Arc::new(DeviceSlot(Mutex::new(Current {
            record: Arc::new(record),
            read_at: Instant::now(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Current> {
        // Only whole records are stored; a panic elsewhere cannot leave one half-written.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> Arc<DeviceRecord> {
        self.lock().record.clone()
    }

    /// Takes `stored`, found in storage after `started`, unless the slot's own read came
    /// after `started` (it may then be the newer one), or an approval re-baselined the
    /// device's fingerprint since the slot's record was read (the answer does not carry the
    /// new fingerprint: the entry must be read again).
    fn refresh(&self, started: Instant, stored: &DeviceLifecycle) -> Refresh {
        let mut current = self.lock();
        if current.read_at >= started {
            return Refresh::Left;
        }
        if stored.baseline > current.record.baseline {
            return Refresh::Rebaselined;
        }
        let r = &current.record;
        if (r.status, r.approved, r.revoked_at, &r.name)
            != (
                stored.status,
                stored.approved,
                stored.revoked_at,
                &stored.name,
            )
        {
            let mut d = (**r).clone();
            d.status = stored.status;
            d.approved = stored.approved;
            d.revoked_at = stored.revoked_at;
            d.name.clone_from(&stored.name);
            current.record = Arc::new(d);
        }
        current.read_at = Instant::now();
        Refresh::Taken
    }
}

/// What [`DeviceSlot::refresh`] did with a history write's answer.
enum Refresh {
    /// Took it as a fresh read.
    Taken,
    /// Left the slot alone: it was read after the write was sent.
    Left,
    /// The device was approved since the slot's record was read: evict it.
    Rebaselined,
}

async fn evict(keys: &KeyCache, devices: &DeviceCache, inv: &Invalidation) {
    match inv {
        Invalidation::Key(id) => keys.invalidate(id).await,
        Invalidation::Device(key_id, jkt) => {
            devices.invalidate(&(key_id.clone(), jkt.clone())).await
        }
        Invalidation::All => {
            keys.invalidate_all();
            devices.invalidate_all();
        }
    }
}

/// moka shares one loader error between concurrent waiters; turn it back into ours.
fn unshare(e: Arc<crate::Error>) -> crate::Error {
    match Arc::try_unwrap(e) {
        Ok(e) => e,
        Err(shared) => match &*shared {
            crate::Error::Unavailable(c) => crate::Error::unavailable(c.to_string()),
            other => crate::Error::internal(other.to_string()),
        },
    }
}

#[async_trait]
impl Store for CachedStore {
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn create_key(&self, key: &KeyRecord, audit: &AuditEntry) -> Result<()> {
        self.inner.create_key(key, audit).await?;
        // Evict a negative entry someone may have cached for this id.
        self.changed(Invalidation::Key(key.key_id.as_str().to_owned()))
            .await;
        Ok(())
    }
    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>> {
        // Reads through the trait come from the admin API's read-modify-write operations
        // (show, patch, status changes, rotation). They must see what the CLI or another
        // instance wrote a moment ago, not a record up to TTL old: a patch built on a stale
        // record would write it back. The token path reads through `key()`.
        self.inner.get_key(key_id).await
    }
    async fn list_keys(&self, after: Option<&str>, limit: i64) -> Result<Vec<KeyRecord>> {
        self.inner.list_keys(after, limit).await
    }
    async fn update_key(&self, key: &KeyRecord, audit: &AuditEntry) -> Result<()> {
        self.inner.update_key(key, audit).await?;
        self.changed(Invalidation::Key(key.key_id.as_str().to_owned()))
            .await;
        Ok(())
    }
    async fn set_key_status(
        &self,
        key_id: &str,
        status: KeyStatus,
        reason: Option<&str>,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<Option<KeyRecord>> {
        let r = self
            .inner
            .set_key_status(key_id, status, reason, at, audit)
            .await?;
        self.changed(Invalidation::Key(key_id.to_owned())).await;
        Ok(r)
    }
    async fn rotate_key(
        &self,
        old_id: &str,
        old_expires_at: i64,
        new: &KeyRecord,
        audit: &AuditEntry,
    ) -> Result<()> {
        self.inner
            .rotate_key(old_id, old_expires_at, new, audit)
            .await?;
        self.changed(Invalidation::Key(old_id.to_owned())).await;
        self.changed(Invalidation::Key(new.key_id.as_str().to_owned()))
            .await;
        Ok(())
    }
    async fn touch_keys(&self, used: &[(String, i64)]) -> Result<Vec<KeyRecord>> {
        // What each key's entry held before the write: only those are replaced by the answer
        // (an entry read since may hold a later change).
        let generation = self.generation();
        let mut before = Vec::with_capacity(used.len());
        for (key_id, _) in used {
            before.push(self.keys.get(key_id).await.flatten());
        }
        let stored = self.inner.touch_keys(used).await?;
        self.refreshed_keys(generation, used, before, &stored).await;
        Ok(stored)
    }
    async fn purge_expired_keys(&self, before: i64) -> Result<u64> {
        let n = self.inner.purge_expired_keys(before).await?;
        if n > 0 {
            self.changed(Invalidation::All).await;
        }
        Ok(n)
    }
    async fn get_device_by_jkt(&self, key_id: &str, jkt: &str) -> Result<Option<DeviceRecord>> {
        Ok(self.device(key_id, jkt).await?.map(|d| (*d).clone()))
    }
    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>> {
        self.inner.get_device(device_id).await
    }
    async fn list_devices(&self, key_id: &str) -> Result<Vec<DeviceRecord>> {
        self.inner.list_devices(key_id).await
    }
    async fn enroll_device(
        &self,
        device: &DeviceRecord,
        limits: EnrollLimits,
    ) -> Result<Enrollment> {
        let r = self.inner.enroll_device(device, limits).await?;
        self.devices
            .invalidate(&(
                device.key_id.as_str().to_owned(),
                device.jkt.as_str().to_owned(),
            ))
            .await;
        if let Enrollment::Enrolled {
            replaced: Some(old),
            ..
        } = &r
        {
            // The replaced device is revoked: in force on every instance, like a revocation.
            self.changed(Invalidation::Device(
                old.key_id.as_str().to_owned(),
                old.jkt.as_str().to_owned(),
            ))
            .await;
        }
        Ok(r)
    }
    async fn record_attestation(
        &self,
        device: &DeviceRecord,
        attestation: &DeviceAttestation,
    ) -> Result<()> {
        self.inner.record_attestation(device, attestation).await?;
        // Every instance reads the attested record from storage next.
        self.changed(Invalidation::Device(
            device.key_id.as_str().to_owned(),
            device.jkt.as_str().to_owned(),
        ))
        .await;
        Ok(())
    }
    async fn update_device_usage(
        &self,
        device: Arc<DeviceRecord>,
    ) -> Result<Option<DeviceLifecycle>> {
        let (started, generation) = (Instant::now(), self.generation());
        let stored = self.inner.update_device_usage(device.clone()).await?;
        self.remember_device_usage(device.clone()).await;
        self.refreshed(started, generation, &[(device, stored.clone())])
            .await;
        Ok(stored)
    }
    async fn set_device_status(
        &self,
        device_id: &str,
        change: DeviceChange,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<Option<DeviceRecord>> {
        let r = self
            .inner
            .set_device_status(device_id, change, at, audit)
            .await?;
        if let Some(d) = &r {
            self.changed(Invalidation::Device(
                d.key_id.as_str().to_owned(),
                d.jkt.as_str().to_owned(),
            ))
            .await;
        }
        Ok(r)
    }
    async fn advance_refresh_family(&self, from: i64, next: &FamilyRecord) -> Result<bool> {
        self.inner.advance_refresh_family(from, next).await
    }
    async fn get_refresh_family(&self, family_id: &str) -> Result<Option<FamilyRecord>> {
        self.inner.get_refresh_family(family_id).await
    }
    async fn revoke_refresh_family(&self, family: &FamilyRecord, at: i64) -> Result<u64> {
        self.inner.revoke_refresh_family(family, at).await
    }
    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
        self.inner.list_signing_keys().await
    }
    async fn insert_signing_key(&self, key: &SigningKeyRecord, at: i64) -> Result<()> {
        self.inner.insert_signing_key(key, at).await
    }
    async fn reseal_signing_keys(
        &self,
        sealed: &[(String, Vec<u8>)],
        integrity_root: Option<&[u8]>,
        audit: &AuditEntry,
    ) -> Result<()> {
        self.inner
            .reseal_signing_keys(sealed, integrity_root, audit)
            .await
    }
    async fn integrity_root(&self) -> Result<Option<Vec<u8>>> {
        self.inner.integrity_root().await
    }
    async fn enable_integrity(
        &self,
        sealed_root: &[u8],
        keys: &crate::store::integrity::Integrity,
        audit: &AuditEntry,
    ) -> Result<bool> {
        let enabled = self
            .inner
            .enable_integrity(sealed_root, keys, audit)
            .await?;
        // Every key hash may have changed: drop what the cache holds.
        self.keys.invalidate_all();
        Ok(enabled)
    }
    fn set_integrity(&self, keys: Arc<crate::store::integrity::Integrity>) {
        self.inner.set_integrity(keys);
    }
    fn integrity(&self) -> Option<Arc<crate::store::integrity::Integrity>> {
        self.inner.integrity()
    }
    async fn append_audit(&self, entry: &AuditEntry) -> Result<AuditRow> {
        self.inner.append_audit(entry).await
    }
    async fn list_audit(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>> {
        self.inner.list_audit(after, limit).await
    }
    async fn insert_alerts(&self, alerts: &[AlertRecord]) -> Result<()> {
        self.inner.insert_alerts(alerts).await
    }
    async fn purge_alerts(&self, before: i64) -> Result<u64> {
        self.inner.purge_alerts(before).await
    }
    async fn list_alerts(&self, filter: &AlertFilter) -> Result<Vec<AlertRecord>> {
        self.inner.list_alerts(filter).await
    }
    async fn add_usage(&self, minutes: Vec<UsageMinute>) -> Result<()> {
        self.inner.add_usage(minutes).await
    }
    async fn usage_summary(
        &self,
        key_id: &str,
        bucket_secs: i64,
        since: i64,
    ) -> Result<Vec<UsageBucket>> {
        self.inner.usage_summary(key_id, bucket_secs, since).await
    }
    async fn purge_usage(&self, before: i64) -> Result<u64> {
        self.inner.purge_usage(before).await
    }
    async fn purge_expired_refresh(&self, before: i64) -> Result<u64> {
        self.inner.purge_expired_refresh(before).await
    }
    async fn clear_refresh_grace(&self, before: i64) -> Result<u64> {
        self.inner.clear_refresh_grace(before).await
    }
    async fn append_revocation(&self, kind: &str, id: &str, at: i64) -> Result<()> {
        self.inner.append_revocation(kind, id, at).await
    }
    async fn list_revocations(&self, after: i64, limit: i64) -> Result<Vec<RevocationRecord>> {
        self.inner.list_revocations(after, limit).await
    }
    async fn revocation_cursor_at(&self, at: i64) -> Result<i64> {
        self.inner.revocation_cursor_at(at).await
    }
    async fn prune_revocations(&self, before: i64) -> Result<u64> {
        self.inner.prune_revocations(before).await
    }
    async fn status_snapshot(
        &self,
        start: i64,
        end: i64,
        now: i64,
    ) -> Result<Option<StatusSnapshot>> {
        self.inner.status_snapshot(start, end, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No entry outlives the contract's bound, and entries spread over the last fifth of it.
    #[test]
    fn cache_entries_expire_within_the_ttl_and_not_all_at_once() {
        let spans: Vec<Duration> = (0..1000)
            .map(|n| Staggered::span(&format!("dev_{n}")))
            .collect();
        let (least, most) = (spans.iter().min().unwrap(), spans.iter().max().unwrap());
        assert!(*most <= TTL, "{most:?}");
        assert!(*least >= TTL - TTL / 5, "{least:?}");
        assert!(
            *most - *least >= TTL / 6,
            "spread over {:?} only",
            *most - *least
        );
        // The same key always gets the same span (a reload keeps its place).
        assert_eq!(Staggered::span(&"dev_1"), Staggered::span(&"dev_1"));
    }
}
