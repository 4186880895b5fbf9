//! Background jobs: the bookkeeping the request path hands off so it never waits on a write,
//! and the timers that keep storage tidy.
//!
//! * [`LastUsed`] — `last_used_at` of keys, batched: an exchange notes the time in memory,
//!   a job writes the batch every [`KEY_TOUCH_INTERVAL`]; its answer keeps the keys' cache
//!   entries current ([`CachedStore`]'s `touch_keys`).
//! * Device history (counters, last seen, networks, trust) waits in the validation cache
//!   ([`CachedStore::remember_device_usage`]); a job writes it once every
//!   [`DEVICE_FLUSH_INTERVAL`], one of its [`PENDING_PARTS`] parts at a time
//!   ([`flush_device_part`]); [`flush_devices`] writes all of it (shutdown, enrollment).
//! * Usage totals per key and minute wait in the [`UsageRecorder`]; a job adds them to storage
//!   every [`usage::FLUSH_INTERVAL`](crate::usage::FLUSH_INTERVAL).
//! * [`StorageHealth`] — a probe every [`STORAGE_PROBE_INTERVAL`], so a cached exchange fails
//!   closed while storage is down (contract 5).
//! * Housekeeping — signing-key reload, ended refresh grace windows, and hourly purges of
//!   old usage minutes, alerts, expired keys, revocation feed entries and refresh families,
//!   each with the retention its owner defines.
//!
//! Nothing here knows the HTTP layer or the application state: [`spawn`] takes the pieces.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::now;
use crate::store::cached::{CachedStore, PENDING_PARTS};
use crate::store::{DeviceRecord, Store};
use crate::tokens::keyring::KeyRing;
use crate::usage::UsageRecorder;

/// How often storage is probed (see [`StorageHealth::up`]).
pub const STORAGE_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Longest a device's history waits in memory before it is written: the bound (1 s),
/// as for usage totals. Each part of the queue is written once an interval, with every
/// device of that part seen since its last write, so a device in steady use costs one row
/// update a second (`docs/benchmarks.md`, twelfth session); a crash loses at most this window
/// of history (`docs/design.md`).
pub const DEVICE_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How often the `last_used_at` batch is written: once a second, like device histories, so
/// that its answer (each key in use as stored) restarts the key's validation-cache entry
/// before the entry's 4-5 s run out, and a key in use is never read again.
pub const KEY_TOUCH_INTERVAL: Duration = Duration::from_secs(1);

/// How often signing keys are reloaded and ended grace windows cleared.
pub const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);

/// How often the purges run.
const PURGE_INTERVAL_SECS: i64 = 3600;

/// `last_used_at` updates waiting for the next batch.
#[derive(Debug, Default)]
pub struct LastUsed {
    touched: Mutex<HashMap<String, i64>>,
}

impl LastUsed {
    /// Notes that a key was used at `at`.
    pub fn touch(&self, key_id: &str, at: i64) {
        let mut t = self.touched.lock().expect("not poisoned");
        // Allocate the key only the first time it is used in a batch.
        match t.get_mut(key_id) {
            Some(last) => *last = at,
            None => {
                t.insert(key_id.to_owned(), at);
            }
        }
    }

    /// Writes the pending batch.
    pub async fn flush(&self, store: &dyn Store) {
        let batch: Vec<(String, i64)> = {
            let mut t = self.touched.lock().expect("not poisoned");
            t.drain().collect()
        };
        if !batch.is_empty()
            && let Err(e) = store.touch_keys(&batch).await
        {
            tracing::warn!(error = %e, "could not record key usage");
        }
    }
}

/// Whether storage answered the last probes. An exchange writes nothing, so with its key and
/// device cached it would not notice an outage by itself; contract 5 wants it to fail closed
/// (503) all the same.
#[derive(Debug)]
pub struct StorageHealth {
    up: AtomicBool,
}

impl Default for StorageHealth {
    fn default() -> Self {
        StorageHealth {
            up: AtomicBool::new(true),
        }
    }
}

impl StorageHealth {
    /// Whether storage is reachable, as the last probe found.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Records a probe's verdict.
    pub fn set(&self, up: bool) {
        if self.up.swap(up, Ordering::Relaxed) != up {
            tracing::warn!(up, "storage reachability changed");
        }
    }
}

/// Runs `job` every `period`, a run at a time (a late one delays the next rather than
/// bunching them up).
fn every<F, Fut>(period: Duration, mut job: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            job().await;
        }
    });
}

/// Writes the queued device histories (one group-commit batch).
pub async fn flush_devices(cache: &CachedStore) {
    write_devices(cache, cache.pending()).await;
}

/// Writes the queued device histories of one part of the queue (of [`PENDING_PARTS`]).
pub async fn flush_device_part(cache: &CachedStore, part: usize) {
    write_devices(cache, cache.pending_part(part)).await;
}

async fn write_devices(cache: &CachedStore, batch: Vec<Arc<DeviceRecord>>) {
    if batch.is_empty() {
        return;
    }
    let (started, generation) = (std::time::Instant::now(), cache.generation());
    // Queued together, the writes share one group-commit transaction.
    let store = cache.inner_store();
    let writes = batch.iter().map(|d| store.update_device_usage(d.clone()));
    let results = futures::future::join_all(writes).await;
    let mut failed = None;
    let stored: Vec<_> = batch
        .into_iter()
        .zip(results)
        .filter_map(|(d, r)| match r {
            Ok(lifecycle) => Some((d, lifecycle)),
            Err(e) => {
                failed.get_or_insert(e);
                None
            }
        })
        .collect();
    // Only what is stored leaves the queue: until then a read from storage still gets it
    // laid over (a refresh right after its exchange must see the device's network).
    cache.written(stored.iter().map(|(d, _)| d));
    // Each write answered the device's lifecycle as stored: as good as a read, so the cached
    // entries of devices in use start their TTL again instead of being read once it ends.
    cache.refreshed(started, generation, &stored).await;
    if let Some(e) = failed {
        tracing::warn!(error = %e, "could not record device usage");
    }
}

/// How long the purges keep things (from the `serve` settings; the rest of the retentions
/// are the owners' constants).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Days usage is kept.
    pub usage_days: i64,
    /// Days alerts are kept.
    pub alert_days: i64,
    /// Whether refresh grace windows are on (then ended ones are cleared).
    pub refresh_grace: bool,
}

/// What the background jobs work on.
pub struct Jobs {
    /// Storage, through the validation cache.
    pub store: Arc<dyn Store>,
    /// The validation cache, which queues device histories.
    pub cache: Arc<CachedStore>,
    /// Signing keys, reloaded so keys added by another instance are used and published.
    pub keyring: Arc<KeyRing>,
    /// The `last_used_at` batch.
    pub last_used: Arc<LastUsed>,
    /// Usage totals waiting to be written.
    pub usage: Arc<UsageRecorder>,
    /// The storage probe's verdict.
    pub health: Arc<StorageHealth>,
    /// Retention settings.
    pub retention: Retention,
}

/// Starts the jobs on the current runtime; they run until the process ends.
pub fn spawn(jobs: Jobs) {
    let jobs = Arc::new(jobs);
    // Storage probe: a round trip every 100 ms, answered within a second. Two failures in
    // a row count as down (one slow answer on a loaded machine is not an outage), so a
    // cached exchange fails closed within ~200 ms of storage refusing connections and
    // within ~2 s of it going silent.
    let j = jobs.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(STORAGE_PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        loop {
            tick.tick().await;
            let probe = tokio::time::timeout(Duration::from_secs(1), j.store.ping()).await;
            failures = if matches!(probe, Ok(Ok(()))) {
                0
            } else {
                failures + 1
            };
            j.health.set(failures < 2);
        }
    });
    // Device history: each part of the queue written once every DEVICE_FLUSH_INTERVAL, so a
    // crash loses at most that much of it. One part a tick: writing the whole queue at once
    // took a core for milliseconds every second, and every request arriving meanwhile waited
    // (the open-loop p99, `docs/benchmarks.md`, fourteenth session).
    let j = jobs.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(DEVICE_FLUSH_INTERVAL / PENDING_PARTS as u32);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for part in (0..PENDING_PARTS).cycle() {
            tick.tick().await;
            flush_device_part(&j.cache, part).await;
        }
    });
    // Usage totals: a crash loses at most this much of the usage report.
    let j = jobs.clone();
    every(crate::usage::FLUSH_INTERVAL, move || {
        let j = j.clone();
        async move { j.usage.flush(&*j.store).await }
    });
    let j = jobs.clone();
    every(KEY_TOUCH_INTERVAL, move || {
        let j = j.clone();
        async move { j.last_used.flush(&*j.store).await }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
        let mut last_purge = 0;
        loop {
            tick.tick().await;
            if jobs.retention.refresh_grace {
                // Contract 9.2: a sealed successor is kept for its window only.
                if let Err(e) = jobs.store.clear_refresh_grace(now()).await {
                    tracing::warn!(error = %e, "could not clear ended grace windows");
                }
            }
            if let Err(e) = jobs.keyring.reload(&*jobs.store).await {
                tracing::warn!(error = %e, "could not reload signing keys");
            }
            let t = now();
            if t - last_purge >= PURGE_INTERVAL_SECS {
                last_purge = t;
                purge(&*jobs.store, jobs.retention, t).await;
            }
        }
    });
}

/// The hourly purges, each logged and none stopping the others.
async fn purge(store: &dyn Store, retention: Retention, t: i64) {
    match store.purge_usage(t - retention.usage_days * 86_400).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(minutes = n, "purged old usage"),
        Err(e) => tracing::warn!(error = %e, "could not purge usage"),
    }
    match store.purge_alerts(t - retention.alert_days * 86_400).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(alerts = n, "purged old alerts"),
        Err(e) => tracing::warn!(error = %e, "could not purge alerts"),
    }
    let keys_before = t - crate::keys::service::PURGE_AFTER_EXPIRY;
    match store.purge_expired_keys(keys_before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(keys = n, "purged expired keys"),
        Err(e) => tracing::warn!(error = %e, "could not purge expired keys"),
    }
    let feed_before = t - crate::tokens::access::REVOCATION_FEED_RETENTION;
    match store.prune_revocations(feed_before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(entries = n, "pruned old revocation feed entries"),
        Err(e) => tracing::warn!(error = %e, "could not prune the revocation feed"),
    }
    let families_before = t - crate::tokens::refresh::REFRESH_PURGE_AFTER_EXPIRY;
    match store.purge_expired_refresh(families_before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(families = n, "purged expired refresh families"),
        Err(e) => tracing::warn!(error = %e, "could not purge expired refresh families"),
    }
}
