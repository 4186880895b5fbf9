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

    let revoked = store
        .set_device_status(
            &d.device_id,
            DeviceChange::Revoke,
            T0 + 2,
            &audit("device.revoke", Some(&d.device_id)),
        )
        .await
        .unwrap()
        .unwrap();
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
    store
        .update_device_usage(Arc::new(d.clone()))
        .await
        .unwrap();
    assert_eq!(
        store.get_device(&d.device_id).await.unwrap(),
        Some(d.clone())
    );

    // Not history: name, status and approval are left alone.
    let mut renamed = d.clone();
    renamed.name = Some("other".into());
    renamed.status = DeviceStatus::Revoked;
    renamed.approved = true;
    store.update_device_usage(Arc::new(renamed)).await.unwrap();
    assert_eq!(store.get_device(&d.device_id).await.unwrap(), Some(d));
}
