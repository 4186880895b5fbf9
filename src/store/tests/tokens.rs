//! Refresh tokens (spend, rotate, family revocation, group commit) and signing keys.

use super::*;

pub(super) async fn refresh_tokens_spend_once(db: &mut TestDb) {
    let store = &*db.store;
    let (_, d) = key_with_device(store, 'k').await;
    let t = refresh(&d, "fam-1", 1);
    store.insert_refresh(&t).await.unwrap();
    assert_eq!(
        store.get_refresh(&t.token_hash).await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(store.get_refresh(&[9; 32]).await.unwrap(), None);

    assert!(store.spend_refresh(&t.token_hash, T0 + 5).await.unwrap());
    assert!(!store.spend_refresh(&t.token_hash, T0 + 6).await.unwrap());
    assert_eq!(
        store
            .get_refresh(&t.token_hash)
            .await
            .unwrap()
            .unwrap()
            .spent_at,
        Some(T0 + 5)
    );
    assert!(
        !store.spend_refresh(&[9; 32], T0).await.unwrap(),
        "unknown tokens are not spent"
    );
}

pub(super) async fn expired_refresh_tokens_are_purged(db: &mut TestDb) {
    let store = &*db.store;
    let (_, d) = key_with_device(store, 'x').await;
    // More than one purge statement's worth, half of them expired.
    let tokens: Vec<RefreshRecord> = (0..12_000u32)
        .map(|i| RefreshRecord {
            token_hash: <sha2::Sha256 as sha2::Digest>::digest(i.to_be_bytes()).to_vec(),
            expires_at: T0 + i64::from(i % 2) * 1_000,
            spent_at: (i % 3 == 0).then_some(T0 - 10),
            ..refresh(&d, &format!("fam-x{i}"), 0)
        })
        .collect();
    let writes = tokens.iter().map(|t| store.insert_refresh(t));
    for w in futures::future::join_all(writes).await {
        w.unwrap();
    }
    assert_eq!(
        store.purge_expired_refresh(T0).await.unwrap(),
        0,
        "none yet"
    );
    assert_eq!(store.purge_expired_refresh(T0 + 1).await.unwrap(), 6_000);
    for t in &tokens {
        let kept = store.get_refresh(&t.token_hash).await.unwrap().is_some();
        assert_eq!(kept, t.expires_at > T0, "{t:?}");
    }
    assert_eq!(store.purge_expired_refresh(T0 + 1).await.unwrap(), 0);
}

pub(super) async fn concurrent_spends_have_one_winner(db: &mut TestDb) {
    let (_, d) = key_with_device(&*db.store, 'w').await;
    let t = refresh(&d, "fam-w", 1);
    db.store.insert_refresh(&t).await.unwrap();
    let spends = (0..10).map(|i| {
        let store = db.store.clone();
        tokio::spawn(async move { store.spend_refresh(&[1; 32], T0 + i).await })
    });
    let mut wins = 0;
    for s in spends.collect::<Vec<_>>() {
        wins += usize::from(s.await.unwrap().unwrap());
    }
    assert_eq!(wins, 1);
}

pub(super) async fn rotation_spends_once_and_inserts_the_successor(db: &mut TestDb) {
    let store = &*db.store;
    let (_, d) = key_with_device(store, 'g').await;
    let first = refresh(&d, "fam-g", 1);
    store.insert_refresh(&first).await.unwrap();

    let second = refresh(&d, "fam-g", 2);
    assert!(
        store
            .rotate_refresh(&first.token_hash, &second, T0 + 10)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .get_refresh(&first.token_hash)
            .await
            .unwrap()
            .unwrap()
            .spent_at,
        Some(T0 + 10)
    );
    assert_eq!(
        store.get_refresh(&second.token_hash).await.unwrap(),
        Some(second.clone())
    );

    // The spent token cannot be rotated again, and its would-be successor is not stored.
    let stray = refresh(&d, "fam-g", 3);
    assert!(
        !store
            .rotate_refresh(&first.token_hash, &stray, T0 + 11)
            .await
            .unwrap()
    );
    assert_eq!(store.get_refresh(&stray.token_hash).await.unwrap(), None);

    // Nor can a revoked one.
    store.revoke_refresh_family("fam-g", T0 + 12).await.unwrap();
    assert!(
        !store
            .rotate_refresh(&second.token_hash, &stray, T0 + 13)
            .await
            .unwrap()
    );
    assert_eq!(store.get_refresh(&stray.token_hash).await.unwrap(), None);
}

pub(super) async fn concurrent_rotations_have_one_winner(db: &mut TestDb) {
    let (_, d) = key_with_device(&*db.store, 'y').await;
    db.store
        .insert_refresh(&refresh(&d, "fam-y", 1))
        .await
        .unwrap();
    let rotations = (0..10u8).map(|i| {
        let (store, next) = (db.store.clone(), refresh(&d, "fam-y", 10 + i));
        tokio::spawn(async move { store.rotate_refresh(&[1; 32], &next, T0).await })
    });
    let mut wins = 0;
    for r in rotations.collect::<Vec<_>>() {
        wins += usize::from(r.await.unwrap().unwrap());
    }
    assert_eq!(wins, 1);
    let mut successors = 0;
    for i in 0..10u8 {
        successors += usize::from(db.store.get_refresh(&[10 + i; 32]).await.unwrap().is_some());
    }
    assert_eq!(successors, 1, "only the winner's successor is stored");
}

pub(super) async fn family_revocation_is_fed_once(db: &mut TestDb) {
    let store = &*db.store;
    let (_, d) = key_with_device(store, 'm').await;
    for n in 1..=3 {
        store
            .insert_refresh(&refresh(&d, "fam-m", n))
            .await
            .unwrap();
    }
    store
        .insert_refresh(&refresh(&d, "fam-other", 4))
        .await
        .unwrap();

    assert_eq!(
        store.revoke_refresh_family("fam-m", T0 + 7).await.unwrap(),
        3
    );
    assert_eq!(
        store
            .get_refresh(&[2; 32])
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(T0 + 7)
    );
    assert_eq!(
        store
            .get_refresh(&[4; 32])
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        None
    );
    assert_eq!(
        store.revoke_refresh_family("fam-m", T0 + 8).await.unwrap(),
        0
    );
    assert_eq!(
        all_revocations(store).await,
        [("refresh_family".into(), "fam-m".into(), T0 + 7)]
    );
}

pub(super) async fn one_bad_write_fails_only_its_caller(db: &mut TestDb) {
    let (_, d) = key_with_device(&*db.store, 'j').await;
    // Token 17 exists already, in another family.
    db.store
        .insert_refresh(&refresh(&d, "fam-before", 17))
        .await
        .unwrap();
    // 40 concurrent inserts, most likely sharing transactions; the 17th repeats a primary key.
    let inserts = (0..40u8).map(|n| {
        let store = db.store.clone();
        let t = refresh(&d, "fam-j", n);
        tokio::spawn(async move { store.insert_refresh(&t).await })
    });
    for (n, i) in inserts.collect::<Vec<_>>().into_iter().enumerate() {
        let result = i.await.unwrap();
        assert_eq!(result.is_err(), n == 17, "insert {n}: {result:?}");
        let stored = db.store.get_refresh(&[n as u8; 32]).await.unwrap();
        let family = stored.map(|t| t.family_id);
        let expected = if n == 17 { "fam-before" } else { "fam-j" };
        assert_eq!(
            family.as_deref(),
            Some(expected),
            "insert {n}: acknowledged means stored, refused means unchanged"
        );
    }
}

/// Usage batches written next to concurrent token writes (through the same group commit) come
/// out whole, with sizes that cross the writer's statement chunks, and a bad token write in
/// their transaction neither loses nor fails them.
pub(super) async fn usage_batches_share_the_token_writes(db: &mut TestDb) {
    let (k, d) = key_with_device(&*db.store, 'u').await;
    db.store
        .insert_refresh(&refresh(&d, "fam-before", 17))
        .await
        .unwrap();
    let event = |i: usize| UsageEvent {
        key_id: k.key_id.clone(),
        // Two minutes: T0 (bucket start) and T0 + 60.
        at: T0 + if i.is_multiple_of(3) { 60 } else { 5 },
        endpoint: "/v1/token".into(),
        method: "POST".into(),
        status: if i.is_multiple_of(10) { 429 } else { 200 },
        latency_us: 100 + i as i64,
        ip: Some("127.0.0.1".into()),
        user_agent: None,
    };
    let mut writes = Vec::new();
    for (batch, size) in [(0, 300), (1, 1), (2, 131)] {
        let store = db.store.clone();
        let events: Vec<_> = (0..size).map(|i| event(batch * 1000 + i)).collect();
        writes.push(tokio::spawn(
            async move { store.insert_usage(events).await },
        ));
        for n in 0..14u8 {
            let store = db.store.clone();
            let t = refresh(&d, "fam-u", batch as u8 * 14 + n);
            writes.push(tokio::spawn(async move { store.insert_refresh(&t).await }));
        }
    }
    for (i, w) in writes.into_iter().enumerate() {
        let result = w.await.unwrap();
        // Write 19 is the token with hash 17 (usage at 0, tokens 0..=13 at 1..=14, usage at
        // 15, tokens 14.. from 16).
        assert_eq!(result.is_err(), i == 19, "write {i}: {result:?}");
    }

    let events: Vec<_> = [
        (0..300).collect::<Vec<_>>(),
        vec![1000],
        (2000..2131).collect(),
    ]
    .concat()
    .into_iter()
    .map(event)
    .collect();
    let expect = |minute: i64| {
        let e: Vec<_> = events.iter().filter(|e| e.at / 60 * 60 == minute).collect();
        (
            e.len() as i64,
            e.iter().filter(|e| e.status >= 400).count() as i64,
            e.iter().map(|e| e.latency_us).max().unwrap(),
        )
    };
    let buckets = db
        .store
        .usage_summary(&k.key_id, 60, T0 - 60)
        .await
        .unwrap();
    let got: Vec<_> = buckets
        .iter()
        .map(|b| (b.start, (b.requests, b.errors, b.max_latency_us)))
        .collect();
    let (first, second) = (T0 / 60 * 60, (T0 + 60) / 60 * 60);
    assert_eq!(got, vec![(first, expect(first)), (second, expect(second))]);
    assert_eq!(got.iter().map(|(_, (n, _, _))| n).sum::<i64>(), 432);
}

// ---- signing keys ----

pub(super) async fn signing_key_insert_retires_the_previous(db: &mut TestDb) {
    let store = &*db.store;
    let signing = |kid: &str, at: i64| SigningKeyRecord {
        kid: kid.into(),
        public_key: vec![1; 32],
        sealed_private: vec![2; 60],
        created_at: at,
        retired_at: None,
    };
    store
        .insert_signing_key(&signing("k1", T0), T0)
        .await
        .unwrap();
    store
        .insert_signing_key(&signing("k2", T0 + 100), T0 + 100)
        .await
        .unwrap();

    let listed = store.list_signing_keys().await.unwrap();
    let summary: Vec<_> = listed
        .iter()
        .map(|k| (k.kid.as_str(), k.retired_at))
        .collect();
    assert_eq!(
        summary,
        [("k2", None), ("k1", Some(T0 + 100))],
        "newest first, old one retired"
    );
    assert_eq!(listed[0], signing("k2", T0 + 100));
}
