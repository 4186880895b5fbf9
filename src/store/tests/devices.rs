//! Devices: enrollment and its limit, status changes, usage history.

use super::*;

pub(super) async fn enrollment_new_existing_and_limit(db: &mut TestDb) {
    let store = &*db.store;
    let k = key(&key_id('d'));
    store
        .create_key(&k, &audit("key.create", None))
        .await
        .unwrap();

    let first = enrolled(
        store
            .enroll_device(&device(&k.key_id, 1), EnrollLimits::max_devices(2))
            .await
            .unwrap(),
    );
    assert_eq!(
        first.status_idx, 0,
        "the first device gets the first status index"
    );
    assert_eq!(
        store.get_device(&first.device_id).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store
            .get_device_by_jkt(&k.key_id, &first.jkt)
            .await
            .unwrap(),
        Some(first.clone())
    );
    assert_eq!(
        store
            .get_device_by_jkt(&key_id('z'), &first.jkt)
            .await
            .unwrap(),
        None
    );

    // The same thumbprint again, even under a new device id, is the enrolled device.
    let mut again = device(&k.key_id, 1);
    again.device_id = "dev_other".into();
    assert_eq!(
        store
            .enroll_device(&again, EnrollLimits::max_devices(2))
            .await
            .unwrap(),
        Enrollment::Exists(Box::new(first.clone()))
    );

    let second = enrolled(
        store
            .enroll_device(&device(&k.key_id, 2), EnrollLimits::max_devices(2))
            .await
            .unwrap(),
    );
    assert_eq!(second.status_idx, 1, "the next index");
    let third = device(&k.key_id, 3);
    assert_eq!(
        store
            .enroll_device(&third, EnrollLimits::max_devices(2))
            .await
            .unwrap(),
        Enrollment::LimitReached
    );
    // An existing device is found even at the limit.
    assert_eq!(
        store
            .enroll_device(&second, EnrollLimits::max_devices(2))
            .await
            .unwrap(),
        Enrollment::Exists(Box::new(second.clone()))
    );

    // A revoked device frees its place.
    store
        .set_device_status(
            &first.device_id,
            DeviceChange::Revoke,
            T0,
            &audit("device.revoke", None),
        )
        .await
        .unwrap();
    let third = enrolled(
        store
            .enroll_device(&third, EnrollLimits::max_devices(2))
            .await
            .unwrap(),
    );
    assert_eq!(third.status_idx, 2, "refused enrollments take no index");

    let listed: Vec<_> = store
        .list_devices(&k.key_id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device_id)
        .collect();
    assert_eq!(
        listed,
        [first.device_id, second.device_id, third.device_id],
        "oldest first"
    );
}

pub(super) async fn concurrent_enrollments_respect_the_limit(db: &mut TestDb) {
    let k = key(&key_id('c'));
    db.store
        .create_key(&k, &audit("key.create", None))
        .await
        .unwrap();
    let other_process = db.other_process().await;

    let attempts = (0..10).map(|n| {
        // Half through a second store, as a second instance would.
        let store = if n % 2 == 0 {
            db.store.clone()
        } else {
            other_process.clone()
        };
        let d = device(&k.key_id, n);
        tokio::spawn(async move { store.enroll_device(&d, EnrollLimits::max_devices(3)).await })
    });
    let mut enrolled = 0;
    for a in attempts.collect::<Vec<_>>() {
        match a.await.unwrap().unwrap() {
            Enrollment::Enrolled { .. } => enrolled += 1,
            Enrollment::LimitReached => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(enrolled, 3);
    assert_eq!(db.store.list_devices(&k.key_id).await.unwrap().len(), 3);
}

/// Status list indexes (contract section 10) are unique across keys and processes: concurrent
/// enrollments under different keys, through two pools, never share one.
pub(super) async fn concurrent_enrollments_get_distinct_status_indexes(db: &mut TestDb) {
    let other_process = db.other_process().await;
    let mut keys = Vec::new();
    for c in ['p', 'q', 'r', 's'] {
        let k = key(&key_id(c));
        db.store
            .create_key(&k, &audit("key.create", None))
            .await
            .unwrap();
        keys.push(k.key_id);
    }
    let attempts: Vec<_> = (0..40u32)
        .map(|n| {
            let store = if n % 2 == 0 {
                db.store.clone()
            } else {
                other_process.clone()
            };
            let d = device(&keys[n as usize % keys.len()], n);
            tokio::spawn(async move {
                store
                    .enroll_device(&d, EnrollLimits::max_devices(100))
                    .await
            })
        })
        .collect();
    let mut indexes = Vec::new();
    for a in attempts {
        indexes.push(enrolled(a.await.unwrap().unwrap()).status_idx);
    }
    let mut stored = Vec::new();
    for k in &keys {
        stored.extend(
            db.store
                .list_devices(k)
                .await
                .unwrap()
                .into_iter()
                .map(|d| d.status_idx),
        );
    }
    indexes.sort_unstable();
    stored.sort_unstable();
    assert_eq!(indexes, stored, "the answers name the stored indexes");
    indexes.dedup();
    assert_eq!(indexes.len(), 40, "no index handed out twice: {indexes:?}");
}

/// Approves a device as an operator would (audited).
async fn approve(store: &dyn Store, device_id: &str, at: i64) -> DeviceRecord {
    change(store, device_id, DeviceChange::Approve, at)
        .await
        .expect("stored")
}

/// Revokes a device as an operator would (audited, fed to verifiers).
async fn revoke(store: &dyn Store, device_id: &str, at: i64) -> Option<DeviceRecord> {
    change(store, device_id, DeviceChange::Revoke, at).await
}

/// `set_device_status` with the audit row an operator's change writes.
async fn change(
    store: &dyn Store,
    device_id: &str,
    what: DeviceChange,
    at: i64,
) -> Option<DeviceRecord> {
    let action = match what {
        DeviceChange::Approve => "device.approve",
        DeviceChange::Revoke => "device.revoke",
    };
    store
        .set_device_status(device_id, what, at, &audit(action, Some(device_id)))
        .await
        .unwrap()
}

pub(super) async fn device_revoke_and_approve(db: &mut TestDb) {
    let store = &*db.store;
    let (k, d) = key_with_device(store, 'r').await;

    let approved = store
        .set_device_status(
            &d.device_id,
            DeviceChange::Approve,
            T0 + 1,
            &audit("device.approve", Some(&d.device_id)),
        )
        .await
        .unwrap()
        .unwrap();
    assert!(approved.approved);
    assert_eq!(approved.status, DeviceStatus::Active);

    let revoked = revoke(store, &d.device_id, T0 + 2).await.unwrap();
    assert_eq!(revoked.status, DeviceStatus::Revoked);
    assert_eq!(revoked.revoked_at, Some(T0 + 2));
    assert_eq!(store.get_device(&d.device_id).await.unwrap(), Some(revoked));

    let again = store
        .set_device_status(
            &d.device_id,
            DeviceChange::Revoke,
            T0 + 3,
            &audit("device.revoke", None),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.revoked_at,
        Some(T0 + 2),
        "the first revocation time stays"
    );

    let unknown = store
        .set_device_status(
            "dev_nope",
            DeviceChange::Revoke,
            T0,
            &audit("device.revoke", None),
        )
        .await
        .unwrap();
    assert_eq!(unknown, None);

    let actions = audit_actions(store).await;
    assert_eq!(
        actions,
        [
            "key.create",
            "device.approve",
            "device.revoke",
            "device.revoke"
        ]
    );
    let feed = all_revocations(store).await;
    assert_eq!(
        feed[0],
        ("device".into(), d.jkt.to_string(), T0 + 2),
        "the feed names the thumbprint"
    );
    assert!(
        feed.iter()
            .all(|(kind, id, _)| kind == "device" && *id == d.jkt),
        "{feed:?} ({})",
        k.key_id
    );
}

pub(super) async fn device_usage_is_saved(db: &mut TestDb) {
    let store = &*db.store;
    let (_, mut d) = key_with_device(store, 'h').await;
    d.last_seen_at = T0 + 500;
    d.exchange_count = 42;
    d.mismatch_count = 3;
    d.networks.push("198.51.100.0/24".into());
    d.trust_score = 0.8125;
    d.trust_level = crate::devices::TrustLevel::Trusted;
    d.trust_factors = crate::store::JsonText::of(&json!({"history": 0.9, "drift": []}));
    Arc::make_mut(&mut d.attributes).insert("os_version".into(), "17.2".into());
    let lifecycle = |d: &DeviceRecord| DeviceLifecycle {
        device_id: d.device_id.clone(),
        status: d.status,
        approved: d.approved,
        revoked_at: d.revoked_at,
        name: d.name.clone(),
        baseline: d.baseline,
    };
    let answer = store
        .update_device_usage(Arc::new(d.clone()))
        .await
        .unwrap();
    assert_eq!(answer, Some(lifecycle(&d)));
    assert_eq!(
        store.get_device(&d.device_id).await.unwrap(),
        Some(d.clone())
    );

    // Not history: name, status and approval are left alone, and the answer is what storage
    // holds, not what the caller sent.
    let mut renamed = d.clone();
    renamed.name = Some("other".into());
    renamed.status = DeviceStatus::Revoked;
    renamed.approved = true;
    let answer = store.update_device_usage(Arc::new(renamed)).await.unwrap();
    assert_eq!(answer, Some(lifecycle(&d)));
    assert_eq!(
        store.get_device(&d.device_id).await.unwrap(),
        Some(d.clone())
    );

    // A change made meanwhile (an operator's revocation) is in the next write's answer.
    let revoked = revoke(store, &d.device_id, T0 + 600).await.unwrap();
    let answer = store
        .update_device_usage(Arc::new(d.clone()))
        .await
        .unwrap();
    assert_eq!(answer, Some(lifecycle(&revoked)));
    assert_eq!(answer.unwrap().revoked_at, Some(T0 + 600));

    // A device no longer stored: nothing written, and the answer says so.
    let gone = DeviceRecord {
        device_id: "dev_not_stored".into(),
        ..d
    };
    assert_eq!(
        store.update_device_usage(Arc::new(gone)).await.unwrap(),
        None
    );
}

/// A device in use is kept current by its history writes, not by reads: each flush's answer
/// puts the lifecycle fields storage holds into the cached entry and starts its TTL again. A
/// revocation made behind the cache (as the CLI makes it) is in force after the next flush,
/// long before the entry would have expired; the entry is never read again while the device
/// keeps being written (a field changed in storage that the flush does not answer stays as
/// first read, past the TTL); a device no longer stored is evicted.
pub(super) async fn history_writes_keep_cached_devices_current(db: &mut TestDb) {
    use crate::store::cached::{CachedStore, TTL};
    use std::time::{Duration, Instant};
    let (k, d) = key_with_device(&*db.store, 'q').await;
    let cache = CachedStore::new(db.store.clone(), 100);
    let cached = async || cache.device(&k.key_id, &d.jkt).await.unwrap().unwrap();
    let read_at = Instant::now();
    let first = cached().await;
    assert_eq!(first.status, DeviceStatus::Active);

    // Behind the cache: a revocation, and a field no flush answers (only a read would see it).
    revoke(&*db.store, &d.device_id, T0 + 5).await;
    db.tamper(&format!(
        "UPDATE devices SET created_at = created_at + 1000 WHERE device_id = '{}'",
        d.device_id
    ))
    .await;
    assert_eq!(cached().await.status, DeviceStatus::Active, "cached");

    // The device keeps exchanging; its history is written once a second.
    let mut n = 0;
    while read_at.elapsed() < TTL + Duration::from_secs(1) {
        n += 1;
        let mut used = (*cached().await).clone();
        used.exchange_count = n;
        cache.remember_device_usage(Arc::new(used)).await;
        crate::jobs::flush_devices(&cache).await;
        let now = cached().await;
        assert_eq!(now.status, DeviceStatus::Revoked, "in force after a flush");
        assert_eq!(now.revoked_at, Some(T0 + 5));
        assert_eq!(now.exchange_count, n, "the history is the cache's own");
        assert_eq!(now.created_at, first.created_at, "not read again");
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    assert!(n >= 6, "{n} flushes");

    // A flush that finds the device gone evicts it; the next lookup reads storage.
    let written = [(cached().await, None)];
    cache
        .refreshed(Instant::now(), cache.generation(), &written)
        .await;
    assert_eq!(
        cached().await.created_at,
        first.created_at + 1000,
        "read again"
    );
}

/// What a flush found is not taken where it may be older than the entry: an entry read after
/// the flush started, or any entry after an eviction since then.
pub(super) async fn older_history_answers_do_not_replace_newer_entries(db: &mut TestDb) {
    use crate::store::cached::{CachedStore, Invalidation};
    use std::time::Instant;
    let (k, d) = key_with_device(&*db.store, 'r').await;
    let cache = CachedStore::new(db.store.clone(), 100);
    let cached = async || cache.device(&k.key_id, &d.jkt).await.unwrap().unwrap();
    let (started, generation) = (Instant::now(), cache.generation());
    let stale = DeviceLifecycle {
        device_id: d.device_id.clone(),
        status: DeviceStatus::Revoked,
        approved: true,
        revoked_at: Some(T0),
        name: Some("stale".into()),
        baseline: d.baseline,
    };
    // Read after `started`: left alone.
    let entry = cached().await;
    let written = [(entry.clone(), Some(stale.clone()))];
    cache.refreshed(started, generation, &written).await;
    assert_eq!(cached().await, entry);

    // Read before `started`, but an eviction came since: left alone.
    let (started, generation) = (Instant::now(), cache.generation());
    cache.apply(&Invalidation::Key(k.key_id.to_string())).await;
    cache.refreshed(started, generation, &written).await;
    assert_eq!(cached().await, entry);

    // Read before `started`, nothing evicted since: taken.
    let (started, generation) = (Instant::now(), cache.generation());
    cache.refreshed(started, generation, &written).await;
    let now = cached().await;
    assert_eq!(
        (
            now.status,
            now.approved,
            now.revoked_at,
            now.name.as_deref()
        ),
        (DeviceStatus::Revoked, true, Some(T0), Some("stale"))
    );
    assert_eq!(now.exchange_count, entry.exchange_count);
}

/// An approval re-baselines the fingerprint (blank attributes, mismatches forgiven) and starts
/// a new baseline. A history scored before it (queued on a server when the CLI or another
/// instance approved) still writes its counters, last use and networks, but leaves the
/// approval's fingerprint alone; one scored against the new baseline writes its own.
pub(super) async fn history_queued_before_an_approval_keeps_its_fingerprint(db: &mut TestDb) {
    let store = &*db.store;
    let (_, d) = key_with_device(store, 's').await;
    assert_eq!(d.baseline, 0);
    let mut stale = d.clone();
    stale.exchange_count = 7;
    stale.last_seen_at = T0 + 70;
    stale.mismatch_count = 2;
    stale.mismatch_fingerprint = Some("fp-old".into());
    Arc::make_mut(&mut stale.attributes).insert("install_id".into(), "old".into());

    let approved = approve(store, &d.device_id, T0 + 60).await;
    assert_eq!(approved.baseline, 1);
    assert!(approved.attributes.is_empty());
    let answer = store
        .update_device_usage(Arc::new(stale.clone()))
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(
        (answer.baseline, answer.approved),
        (1, true),
        "the stored baseline"
    );
    let stored = store.get_device(&d.device_id).await.unwrap().unwrap();
    assert_eq!(
        (stored.exchange_count, stored.last_seen_at),
        (7, T0 + 70),
        "history written"
    );
    assert!(stored.attributes.is_empty(), "{:?}", stored.attributes);
    assert_eq!(
        (
            stored.mismatch_count,
            stored.mismatch_fingerprint.as_deref()
        ),
        (0, None),
        "the approval's fingerprint stays"
    );

    // Scored against the new baseline: its fingerprint is the device's.
    let mut current = stored.clone();
    current.exchange_count = 8;
    Arc::make_mut(&mut current.attributes).insert("install_id".into(), "new".into());
    store
        .update_device_usage(Arc::new(current.clone()))
        .await
        .unwrap();
    assert_eq!(store.get_device(&d.device_id).await.unwrap(), Some(current));

    // Approving again starts another baseline.
    assert_eq!(approve(store, &d.device_id, T0 + 80).await.baseline, 2);
}

/// The same through a server's validation cache, with the approval made behind it (the CLI):
/// the history the device goes on queuing against its old fingerprint is written without
/// that fingerprint, and the cached entry is read again once a write finds the new baseline.
/// A record scored against the old baseline that is laid over the new one (queued history
/// merged into a read, an exchange that read before the approval ending after it) keeps the
/// new fingerprint too.
pub(super) async fn approvals_behind_the_cache_are_not_undone(db: &mut TestDb) {
    use crate::store::cached::{CachedStore, Invalidation};
    let (k, d) = key_with_device(&*db.store, 't').await;
    let cache = CachedStore::new(db.store.clone(), 100);
    let cached = async || cache.device(&k.key_id, &d.jkt).await.unwrap().unwrap();
    let old = |n: i64| {
        let mut used = d.clone();
        used.exchange_count = n;
        used.mismatch_count = 1;
        Arc::make_mut(&mut used.attributes).insert("install_id".into(), "old".into());
        Arc::new(used)
    };
    assert_eq!(cached().await.baseline, 0);
    cache.remember_device_usage(old(1)).await;
    approve(&*db.store, &d.device_id, T0 + 5).await;

    // Evicted (say, by another instance's invalidation) before the history is written: the
    // read lays the queued history over the stored record, but not its fingerprint.
    cache
        .apply(&Invalidation::Device(
            k.key_id.to_string(),
            d.jkt.as_str().to_owned(),
        ))
        .await;
    let read = cached().await;
    assert_eq!(
        (read.exchange_count, read.baseline, read.approved),
        (1, 1, true)
    );
    assert!(
        read.attributes.is_empty() && read.mismatch_count == 0,
        "{read:?}"
    );

    // An exchange that read the old record finishes now: its history goes into the entry
    // without its fingerprint.
    cache.remember_device_usage(old(2)).await;
    let now = cached().await;
    assert_eq!((now.exchange_count, now.baseline), (2, 1));
    assert!(
        now.attributes.is_empty() && now.mismatch_count == 0,
        "{now:?}"
    );
    crate::jobs::flush_devices(&cache).await;
    let stored = db.store.get_device(&d.device_id).await.unwrap().unwrap();
    assert_eq!(stored.exchange_count, 2);
    assert!(
        stored.attributes.is_empty() && stored.mismatch_count == 0,
        "{stored:?}"
    );

    // Cached, then approved again behind the cache: the next write's answer evicts the entry
    // (it does not carry the fingerprint), and the lookup after it reads the new one.
    let before = cached().await;
    let mut used = (*before).clone();
    used.exchange_count = 3;
    Arc::make_mut(&mut used.attributes).insert("install_id".into(), "b".into());
    cache.remember_device_usage(Arc::new(used)).await;
    approve(&*db.store, &d.device_id, T0 + 9).await;
    assert_eq!(cached().await.baseline, 1, "cached");
    crate::jobs::flush_devices(&cache).await;
    let now = cached().await;
    assert_eq!((now.baseline, now.exchange_count), (2, 3));
    assert!(now.attributes.is_empty(), "{now:?}");
    let stored = db.store.get_device(&d.device_id).await.unwrap().unwrap();
    assert!(stored.attributes.is_empty(), "{stored:?}");
}
