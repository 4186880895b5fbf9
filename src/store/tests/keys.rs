//! API keys: records, pagination, updates, status changes, rotation, purge, last use.

use super::*;

pub(super) async fn keys_round_trip_and_page_in_id_order(db: &mut TestDb) {
    let store = &*db.store;
    // Upper case sorts before lower case in byte order, whatever the database's locale.
    let ids: Vec<String> = ['b', 'A', 'z', 'C', '0'].into_iter().map(key_id).collect();
    for (i, id) in ids.iter().enumerate() {
        let mut k = key(id);
        if i % 2 == 1 {
            // Every optional field empty on some keys.
            k.description = None;
            k.limited_scopes = None;
            k.expires_at = None;
            k.allowed_ips = vec![];
            k.trust_on_enroll = true;
        }
        store
            .create_key(&k, &audit("key.create", Some(id)))
            .await
            .unwrap();
        assert_eq!(
            store.get_key(id).await.unwrap(),
            Some(k),
            "round trip of {id}"
        );
    }
    assert_eq!(store.get_key(&key_id('x')).await.unwrap(), None);

    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.list_keys(after.as_deref(), 2).await.unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.key_id.to_string());
        paged.extend(page.into_iter().map(|k| k.key_id.to_string()));
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(
        paged, sorted,
        "keyset pagination visits every key once, in byte order"
    );

    let log = all_audit(store).await;
    assert_eq!(log.len(), ids.len(), "one audit row per created key");
    assert!(log.iter().all(|r| r.entry.action == "key.create"));
}

pub(super) async fn key_updates_are_audited(db: &mut TestDb) {
    let store = &*db.store;
    let mut k = key(&key_id('u'));
    store
        .create_key(&k, &audit("key.create", Some(&k.key_id)))
        .await
        .unwrap();

    k.name = "renamed".into();
    k.description = None;
    k.scopes = scopes(&["read:users"]);
    k.limited_scopes = None;
    k.rate_limit_per_minute = 60;
    k.allowed_ips = vec![];
    k.allowed_origins = vec!["https://other.example.com".parse().unwrap()];
    k.max_devices = 2;
    k.trust_on_enroll = true;
    k.expires_at = None;
    store
        .update_key(&k, &audit("key.update", Some(&k.key_id)))
        .await
        .unwrap();
    assert_eq!(store.get_key(&k.key_id).await.unwrap(), Some(k.clone()));

    let unknown = key(&key_id('v'));
    let err = store
        .update_key(&unknown, &audit("key.update", None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound), "{err:?}");

    let actions = audit_actions(store).await;
    assert_eq!(
        actions,
        ["key.create", "key.update"],
        "a failed update leaves no audit row"
    );
}

pub(super) async fn status_changes_are_audited_and_fed_to_verifiers(db: &mut TestDb) {
    let store = &*db.store;
    let k = key(&key_id('s'));
    store
        .create_key(&k, &audit("key.create", Some(&k.key_id)))
        .await
        .unwrap();

    let changes = [
        (KeyStatus::Suspended, Some("leak reported"), "key.suspend"),
        (KeyStatus::Active, None, "key.resume"),
        (KeyStatus::Revoked, Some("offboarding"), "key.revoke"),
    ];
    for (i, (status, reason, action)) in changes.into_iter().enumerate() {
        let at = T0 + 10 * (i as i64 + 1);
        let updated = store
            .set_key_status(
                &k.key_id,
                status,
                reason,
                at,
                &audit(action, Some(&k.key_id)),
            )
            .await
            .unwrap()
            .expect("the key exists");
        assert_eq!(updated.status, status, "{action}");
        assert_eq!(updated.status_reason.as_deref(), reason, "{action}");
        assert_eq!(updated.status_changed_at, Some(at), "{action}");
        assert_eq!(
            store.get_key(&k.key_id).await.unwrap(),
            Some(updated),
            "{action}"
        );
    }

    let unknown = store
        .set_key_status(
            &key_id('t'),
            KeyStatus::Revoked,
            None,
            T0,
            &audit("key.revoke", None),
        )
        .await
        .unwrap();
    assert_eq!(unknown, None);

    let actions = audit_actions(store).await;
    assert_eq!(
        actions,
        ["key.create", "key.suspend", "key.resume", "key.revoke"]
    );
    assert_eq!(
        all_revocations(store).await,
        [
            ("key".into(), k.key_id.to_string(), T0 + 10),
            ("key".into(), k.key_id.to_string(), T0 + 30)
        ],
        "suspension and revocation are fed, resumption is not"
    );
}

pub(super) async fn rotation_links_keys_and_never_extends_the_old_one(db: &mut TestDb) {
    let store = &*db.store;
    let old = key(&key_id('o'));
    store
        .create_key(&old, &audit("key.create", Some(&old.key_id)))
        .await
        .unwrap();

    let mut new = key(&key_id('n'));
    new.rotated_from = Some(old.key_id.clone());
    let grace_end = T0 + 86_400;
    store
        .rotate_key(
            &old.key_id,
            grace_end,
            &new,
            &audit("key.rotate", Some(&old.key_id)),
        )
        .await
        .unwrap();

    let old_now = store.get_key(&old.key_id).await.unwrap().unwrap();
    assert_eq!(old_now.rotated_to.as_deref(), Some(new.key_id.as_str()));
    assert_eq!(old_now.expires_at, Some(grace_end));
    assert_eq!(store.get_key(&new.key_id).await.unwrap(), Some(new.clone()));

    // Rotating again with a longer grace does not give the old key more time.
    let newer = key(&key_id('N'));
    store
        .rotate_key(
            &old.key_id,
            grace_end + 1_000,
            &newer,
            &audit("key.rotate", None),
        )
        .await
        .unwrap();
    assert_eq!(
        store
            .get_key(&old.key_id)
            .await
            .unwrap()
            .unwrap()
            .expires_at,
        Some(grace_end)
    );

    // An unknown old key: nothing inserted, nothing audited.
    let orphan = key(&key_id('p'));
    let err = store
        .rotate_key(&key_id('q'), grace_end, &orphan, &audit("key.rotate", None))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound), "{err:?}");
    assert_eq!(store.get_key(&orphan.key_id).await.unwrap(), None);
    assert_eq!(all_audit(store).await.len(), 3);
}

/// A purged key takes its devices along; its refresh families, unusable without the key, are
/// not looked for (that needs an index by key) and go with the purge of expired families.
pub(super) async fn purge_takes_devices_along_and_leaves_families_to_their_expiry(db: &mut TestDb) {
    let store = &*db.store;
    let (mut expired, d) = key_with_device(store, 'e').await;
    assert!(
        store
            .advance_refresh_family(0, &family(&d, "fam-e", 1))
            .await
            .unwrap()
    );
    expired.expires_at = Some(T0 + 100);
    store
        .update_key(&expired, &audit("key.update", None))
        .await
        .unwrap();

    let (_, live_device) = key_with_device(store, 'l').await;
    let mut live_family = family(&live_device, "fam-l", 1);
    live_family.expires_at = T0 + 2 * 86_400;
    assert!(store.advance_refresh_family(0, &live_family).await.unwrap());
    let mut forever = key(&key_id('f'));
    forever.expires_at = None;
    store
        .create_key(&forever, &audit("key.create", None))
        .await
        .unwrap();

    assert_eq!(
        store.purge_expired_keys(T0 + 100).await.unwrap(),
        0,
        "expiry is exclusive"
    );
    assert_eq!(store.purge_expired_keys(T0 + 101).await.unwrap(), 1);
    assert_eq!(store.get_key(&expired.key_id).await.unwrap(), None);
    assert_eq!(store.get_device(&d.device_id).await.unwrap(), None);
    assert!(
        store.get_refresh_family("fam-e").await.unwrap().is_some(),
        "the purged key's family waits for its own expiry"
    );

    assert!(store.get_key(&forever.key_id).await.unwrap().is_some());
    assert!(
        store
            .get_device(&live_device.device_id)
            .await
            .unwrap()
            .is_some()
    );
    assert!(store.get_refresh_family("fam-l").await.unwrap().is_some());

    // The expiry purge takes the orphaned family (expired at T0 + 86 400), not the live one.
    assert_eq!(store.purge_expired_refresh(T0 + 86_401).await.unwrap(), 1);
    assert_eq!(store.get_refresh_family("fam-e").await.unwrap(), None);
    assert!(store.get_refresh_family("fam-l").await.unwrap().is_some());
}

pub(super) async fn touch_only_moves_last_use_forward(db: &mut TestDb) {
    let store = &*db.store;
    let (a, b) = (key(&key_id('a')), key(&key_id('b')));
    for k in [&a, &b] {
        store
            .create_key(k, &audit("key.create", None))
            .await
            .unwrap();
    }
    store.touch_keys(&[]).await.unwrap();
    store
        .touch_keys(&[
            (a.key_id.to_string(), T0 + 50),
            (b.key_id.to_string(), T0 + 60),
        ])
        .await
        .unwrap();
    let touched = store
        .touch_keys(&[(a.key_id.to_string(), T0 + 40), (key_id('x'), T0)])
        .await
        .unwrap();
    // The answer: each key as stored (its later time kept), an unknown id left out.
    assert_eq!(
        touched
            .iter()
            .map(|k| (k.key_id.to_string(), k.last_used_at))
            .collect::<Vec<_>>(),
        [(a.key_id.to_string(), Some(T0 + 50))]
    );
    assert_eq!(
        store
            .get_key(&a.key_id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(T0 + 50)
    );
    assert_eq!(
        store
            .get_key(&b.key_id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(T0 + 60)
    );

    // Many concurrent touches (one group-commit batch or a few): the latest time wins.
    let touches = (0..50).map(|i| {
        let (store, id) = (db.store.clone(), a.key_id.to_string());
        tokio::spawn(async move { store.touch_keys(&[(id, T0 + 100 + i)]).await })
    });
    for t in touches.collect::<Vec<_>>() {
        t.await.unwrap().unwrap();
    }
    assert_eq!(
        db.store
            .get_key(&a.key_id)
            .await
            .unwrap()
            .unwrap()
            .last_used_at,
        Some(T0 + 149)
    );
}

pub(super) async fn a_row_that_does_not_decode_is_a_storage_error(db: &mut TestDb) {
    // Typed fields are decoded once, when the row is read: a value no code could have written
    // (a hand-edited row, a bad migration) is an error naming its column, not a panic and
    // not a silently empty allow list.
    let id = key_id('t');
    let k = key(&id);
    let d = device(&id, 1);
    db.store
        .create_key(&k, &audit("key.create", Some(&id)))
        .await
        .unwrap();
    let enrolled = match db
        .store
        .enroll_device(&d, EnrollLimits::max_devices(2))
        .await
        .unwrap()
    {
        Enrollment::Enrolled { device, .. } => device,
        other => panic!("{other:?}"),
    };
    db.tamper(&format!(
        "UPDATE api_keys SET allowed_ips = '[\"not a network\"]' WHERE key_id = '{id}'"
    ))
    .await;
    db.tamper(&format!(
        "UPDATE devices SET trust_level = 'sort of' WHERE device_id = '{}'",
        enrolled.device_id
    ))
    .await;

    let key_err = db.store.get_key(&id).await.expect_err("a bad CIDR");
    let device_err = db
        .store
        .get_device(&enrolled.device_id)
        .await
        .expect_err("a bad trust level");

    for (err, column) in [(key_err, "allowed_ips"), (device_err, "trust_level")] {
        assert_eq!(err.code(), "INTERNAL", "{err:?}");
        assert!(format!("{err:?}").contains(column), "{err:?}");
    }

    // The same for every value type of the records (`crate::ids`), one bad column per row.
    let mut errors = Vec::new();
    for (c, column, value) in [
        ('e', "env", "'staging'"),
        ('s', "scopes", "'read:a'"),
        ('o', "allowed_origins", "'{}'"),
        ('r', "rotated_from", "'ak_nope'"),
    ] {
        let id = key_id(c);
        db.store
            .create_key(&key(&id), &audit("key.create", Some(&id)))
            .await
            .unwrap();
        db.tamper(&format!(
            "UPDATE api_keys SET {column} = {value} WHERE key_id = '{id}'"
        ))
        .await;
        errors.push((db.store.get_key(&id).await.expect_err(column), column));
    }
    let d = device(&key_id('e'), 2);
    let Enrollment::Enrolled { device: d, .. } = db
        .store
        .enroll_device(&d, EnrollLimits::max_devices(2))
        .await
        .unwrap()
    else {
        panic!("enrolled");
    };
    db.tamper(&format!(
        "UPDATE devices SET jkt = 'not-a-thumbprint' WHERE device_id = '{}'",
        d.device_id
    ))
    .await;
    errors.push((
        db.store.get_device(&d.device_id).await.expect_err("jkt"),
        "jkt",
    ));
    for (err, column) in errors {
        assert_eq!(err.code(), "INTERNAL", "{column}: {err:?}");
        assert!(format!("{err:?}").contains(column), "{err:?}");
    }

    // Scopes and origins a key was created with under older, looser checks load as stored
    // (`Scope::from_stored`, `Origin::from_stored`): the key keeps working as it did, and its
    // origin list stays as restrictive as it was.
    let id = key_id('g');
    db.store
        .create_key(&key(&id), &audit("key.create", Some(&id)))
        .await
        .unwrap();
    db.tamper(&format!(
        "UPDATE api_keys SET scopes = '[\"read:a\", \"caf\u{e9}\"]', \
         limited_scopes = '[\"caf\u{e9}\"]', \
         allowed_origins = '[\"https://b\u{fc}cher.example\"]' WHERE key_id = '{id}'"
    ))
    .await;
    let legacy = db
        .store
        .get_key(&id)
        .await
        .expect("an old key still loads")
        .unwrap();
    let scopes: Vec<&str> = legacy.scopes.iter().map(|s| s.as_str()).collect();
    assert_eq!(scopes, ["read:a", "caf\u{e9}"]);
    assert_eq!(legacy.limited_scopes.as_ref().map(Vec::len), Some(1));
    assert_eq!(legacy.allowed_origins.len(), 1);
    assert!(legacy.allowed_origins[0].matches("https://B\u{fc}cher.example"));
    assert!(!legacy.allowed_origins[0].matches("https://example.com"));
}

/// A key with id [`key_id`]`(c)`, created in `store`.
async fn stored_key(store: &dyn Store, c: char) -> KeyRecord {
    let k = key(&key_id(c));
    store
        .create_key(&k, &audit("key.create", Some(&k.key_id)))
        .await
        .unwrap();
    k
}

/// A key in use is kept current by its `last_used_at` writes, not by reads: each touch's
/// answer replaces the cached record and starts its TTL again. A suspension made behind the
/// cache (as the CLI makes it) is in force after the next touch, the entry is answered from
/// the cache past its TTL, and a key the touch no longer finds is evicted.
pub(super) async fn key_touches_keep_cached_keys_current(db: &mut TestDb) {
    use crate::store::cached::{CachedStore, TTL};
    use std::time::{Duration, Instant};
    let k = stored_key(&*db.store, 'k').await;
    let cache = CachedStore::new(db.store.clone(), 100);
    let read_at = Instant::now();
    let (first, from_cache) = cache.key_and_source(&k.key_id).await.unwrap();
    assert_eq!(
        (first.unwrap().status, from_cache),
        (KeyStatus::Active, false)
    );
    db.store
        .set_key_status(
            &k.key_id,
            KeyStatus::Suspended,
            Some("test"),
            T0,
            &audit("key.suspend", Some(&k.key_id)),
        )
        .await
        .unwrap();
    let status = cache.key(&k.key_id).await.unwrap().unwrap().status;
    assert_eq!(status, KeyStatus::Active, "cached");

    let mut n = 0;
    while read_at.elapsed() < TTL + Duration::from_secs(1) {
        n += 1;
        let touched = cache
            .touch_keys(&[(k.key_id.to_string(), T0 + n)])
            .await
            .unwrap();
        assert_eq!(touched.len(), 1);
        let (now, from_cache) = cache.key_and_source(&k.key_id).await.unwrap();
        let now = now.unwrap();
        assert!(from_cache, "not read again");
        assert_eq!(now.status, KeyStatus::Suspended, "in force after a touch");
        assert_eq!(now.last_used_at, Some(T0 + n));
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    assert!(n >= 6, "{n} touches");

    db.tamper(&format!(
        "DELETE FROM api_keys WHERE key_id = '{}'",
        k.key_id
    ))
    .await;
    let touched = cache
        .touch_keys(&[(k.key_id.to_string(), T0 + 100)])
        .await
        .unwrap();
    assert!(touched.is_empty());
    let (gone, from_cache) = cache.key_and_source(&k.key_id).await.unwrap();
    assert_eq!((gone, from_cache), (None, false), "evicted, read again");
}

/// What a touch found is not taken where it may be older than the entry: an entry read again
/// since the touch was sent, or any entry after an eviction since then.
pub(super) async fn older_touch_answers_do_not_replace_newer_keys(db: &mut TestDb) {
    use crate::store::cached::{CachedStore, Invalidation};
    let k = stored_key(&*db.store, 'l').await;
    let cache = CachedStore::new(db.store.clone(), 100);
    let used = [(k.key_id.to_string(), T0)];
    let stale = KeyRecord {
        status: KeyStatus::Revoked,
        ..k.clone()
    };
    let cached = async || cache.key(&k.key_id).await.unwrap().unwrap();

    // Read again after the touch was sent: left alone.
    let before = cached().await;
    cache.apply(&Invalidation::Key(k.key_id.to_string())).await;
    let generation = cache.generation();
    let reread = cached().await;
    let answer = std::slice::from_ref(&stale);
    cache
        .refreshed_keys(generation, &used, vec![Some(before)], answer)
        .await;
    assert!(Arc::ptr_eq(&cached().await, &reread));

    // The same entry, but an eviction since the touch was sent: left alone.
    let generation = cache.generation();
    cache
        .apply(&Invalidation::Device("x".into(), "y".into()))
        .await;
    cache
        .refreshed_keys(generation, &used, vec![Some(reread.clone())], answer)
        .await;
    assert!(Arc::ptr_eq(&cached().await, &reread));

    // The same entry, nothing evicted since: taken.
    let generation = cache.generation();
    cache
        .refreshed_keys(generation, &used, vec![Some(reread)], answer)
        .await;
    assert_eq!(cached().await.status, KeyStatus::Revoked);
}

/// A touch of more keys than one statement holds (chunks of 128, 64, …), with a key named
/// twice: every key written and answered once, at its latest time.
pub(super) async fn touches_of_many_keys_are_each_written_once(db: &mut TestDb) {
    let store = &*db.store;
    let ids: Vec<String> = (0..200).map(|i| format!("ak_test_k{i:011}")).collect();
    for id in &ids {
        store
            .create_key(&key(id), &audit("key.create", None))
            .await
            .unwrap();
    }
    let mut used: Vec<(String, i64)> = (0..200).map(|i| (ids[i].clone(), T0 + i as i64)).collect();
    used.push((ids[0].clone(), T0 + 500));
    used.push((ids[1].clone(), T0 - 500));
    let touched = store.touch_keys(&used).await.unwrap();
    let mut answered: Vec<(String, Option<i64>)> = touched
        .iter()
        .map(|k| (k.key_id.to_string(), k.last_used_at))
        .collect();
    answered.sort();
    let mut want: Vec<(String, Option<i64>)> = (0..200)
        .map(|i| {
            (
                ids[i].clone(),
                Some(T0 + if i == 0 { 500 } else { i as i64 }),
            )
        })
        .collect();
    want.sort();
    assert_eq!(answered, want);
    for (id, at) in &want {
        let stored = store.get_key(id).await.unwrap().unwrap();
        assert_eq!(&stored.last_used_at, at, "{id}");
    }
}
