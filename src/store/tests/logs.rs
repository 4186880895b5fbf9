//! The audit chain, alerts, the revocation feed, and durability across a reopen.

use super::*;

pub(super) async fn concurrent_audit_appends_stay_chained(db: &mut TestDb) {
    let keys = protect(&*db.store).await;
    let other_process = db.other_process().await;
    protect(&*other_process).await;
    let appends = (0..50).map(|i| {
        let store = if i % 2 == 0 {
            db.store.clone()
        } else {
            other_process.clone()
        };
        tokio::spawn(async move { store.append_audit(&audit(&format!("test.{i}"), None)).await })
    });
    let mut seqs = Vec::new();
    for a in appends.collect::<Vec<_>>() {
        seqs.push(a.await.unwrap().unwrap().seq);
    }
    seqs.sort();
    assert_eq!(
        seqs,
        (2..=51).collect::<Vec<_>>(),
        "every append got its own seq after the integrity.enable row, no gaps"
    );

    let rows = all_audit(&*db.store).await;
    assert_eq!(rows[1..].iter().map(|r| r.seq).collect::<Vec<_>>(), seqs);
    assert_eq!(rows[0].prev_hash, audit::GENESIS);
    assert_eq!(rows[0].entry.action, crate::integrity::ENABLE_ACTION);
    let verdict = audit::verify(&*db.store, &keys).await.unwrap();
    assert!(
        matches!(verdict, Verdict::Intact { rows: 51, .. }),
        "{verdict:?}"
    );
    assert_eq!(db.store.list_audit(49, 10).await.unwrap().len(), 2);
}

/// The enable row and five more: six rows, the last one's MAC returned.
async fn append_five(store: &dyn Store) -> (Arc<crate::integrity::Integrity>, Vec<u8>) {
    let keys = protect(store).await;
    let mut last = Vec::new();
    for i in 1..=5 {
        last = store
            .append_audit(&audit(&format!("test.{i}"), Some("ak_test_x")))
            .await
            .unwrap()
            .hash;
    }
    let verdict = audit::verify(store, &keys).await.unwrap();
    assert!(
        matches!(verdict, Verdict::Intact { rows: 6, .. }),
        "{verdict:?}"
    );
    (keys, last)
}

pub(super) async fn edited_audit_row_is_detected(db: &mut TestDb) {
    let (keys, _) = append_five(&*db.store).await;
    db.tamper("UPDATE audit_log SET actor = 'someone-else' WHERE seq = 3")
        .await;
    let verdict = audit::verify(&*db.store, &keys).await.unwrap();
    assert!(
        matches!(verdict, Verdict::Broken { seq: 3, .. }),
        "{verdict:?}"
    );
}

pub(super) async fn deleted_audit_row_is_detected(db: &mut TestDb) {
    let (keys, _) = append_five(&*db.store).await;
    db.tamper("DELETE FROM audit_log WHERE seq = 3").await;
    let verdict = audit::verify(&*db.store, &keys).await.unwrap();
    assert!(
        matches!(verdict, Verdict::Broken { seq: 3, .. }),
        "{verdict:?}"
    );
}

/// A byte string as a literal of the test's database.
fn bytes_literal(db: &TestDb, bytes: &[u8]) -> String {
    let hex = audit::to_hex(bytes);
    if db.store.backend() == "sqlite" {
        format!("X'{hex}'")
    } else {
        format!("decode('{hex}', 'hex')")
    }
}

pub(super) async fn integrity_upgrade_wraps_old_key_hashes_once(db: &mut TestDb) {
    // A database from before integrity protection: a bare SHA-256 and a plain-hash audit row.
    let old = key(&key_id('u'));
    db.store
        .create_key(&old, &audit("key.create", Some(&old.key_id)))
        .await
        .unwrap();

    let keys = protect(&*db.store).await;
    let upgraded = db.store.get_key(&old.key_id).await.unwrap().unwrap();
    assert_eq!(
        upgraded.secret_hash,
        keys.wrap_key_hash(&old.key_id, &old.secret_hash).to_vec(),
        "the old row was wrapped in place"
    );
    let rows = all_audit(&*db.store).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].entry.action, crate::integrity::ENABLE_ACTION);
    assert_eq!(rows[1].entry.details["wrapped_key_hashes"], 1);
    let verdict = audit::verify(&*db.store, &keys).await.unwrap();
    assert!(
        matches!(verdict, Verdict::Intact { rows: 2, .. }),
        "the plain row verifies under the old rule: {verdict:?}"
    );

    // Later, a database writer adds a row in the old format: it is never upgraded.
    let planted = key_id('v');
    db.tamper(&format!(
        "INSERT INTO api_keys (key_id, env, name, secret_hash, scopes, rate_limit_per_minute, \
         allowed_ips, allowed_origins, max_devices, trust_on_enroll, status, created_at) \
         SELECT '{planted}', env, name, {}, scopes, rate_limit_per_minute, allowed_ips, \
         allowed_origins, max_devices, trust_on_enroll, status, created_at FROM api_keys \
         WHERE key_id = '{}'",
        bytes_literal(db, &[7; 32]),
        old.key_id
    ))
    .await;
    let restarted = db.other_process().await;
    protect(&*restarted).await;
    let row = restarted.get_key(&planted).await.unwrap().unwrap();
    assert_eq!(
        row.secret_hash,
        vec![7; 32],
        "left bare, so it never verifies"
    );
    assert_eq!(all_audit(&*db.store).await.len(), 2, "no second upgrade");

    // A store without the keys cannot extend the MAC'd chain.
    let without_keys = db.other_process().await;
    let refused = without_keys.append_audit(&audit("test.x", None)).await;
    assert!(
        matches!(refused, Err(Error::InvalidRequest(_))),
        "{refused:?}"
    );
}

pub(super) async fn rewritten_and_truncated_audit_is_detected(db: &mut TestDb) {
    let (keys, head) = append_five(&*db.store).await;
    let checkpoint = audit::Checkpoint::new(&keys, 6, &head, T0);
    let (seq, cp_head) = checkpoint.check(&keys).unwrap();
    assert_eq!((seq, &cp_head), (6, &head));

    // A checkpoint from another master key (another root), or edited, is refused.
    let other = crate::integrity::Integrity::from_root(&[9; 32]);
    let foreign = audit::Checkpoint::new(&other, 6, &head, T0);
    assert!(matches!(
        foreign.check(&keys),
        Err(Error::InvalidRequest(_))
    ));
    let mut edited = checkpoint.clone();
    edited.seq = 4;
    assert!(matches!(edited.check(&keys), Err(Error::InvalidRequest(_))));

    // Rewriting the newest row with a recomputed plain hash (all a writer can compute).
    let rows = all_audit(&*db.store).await;
    let mut forged = rows[5].entry.clone();
    forged.actor = "someone-else".into();
    let hash = audit::chain_hash(&rows[5].prev_hash, 6, &forged);
    db.tamper(&format!(
        "UPDATE audit_log SET actor = 'someone-else', hash = {} WHERE seq = 6",
        bytes_literal(db, &hash)
    ))
    .await;
    let verdict = audit::verify(&*db.store, &keys).await.unwrap();
    assert!(
        matches!(verdict, Verdict::Broken { seq: 6, .. }),
        "{verdict:?}"
    );

    // Truncation: the shorter chain is consistent; only the checkpoint shows it.
    db.tamper("DELETE FROM audit_log WHERE seq >= 5").await;
    let plain = audit::verify(&*db.store, &keys).await.unwrap();
    assert!(
        matches!(plain, Verdict::Intact { rows: 4, .. }),
        "{plain:?}"
    );
    let verdict = audit::verify_against(&*db.store, &keys, Some((seq, &cp_head)))
        .await
        .unwrap();
    assert!(
        matches!(verdict, Verdict::Broken { seq: 5, .. }),
        "{verdict:?}"
    );

    // Truncated to before the enable row: the chain alone says so.
    db.tamper("DELETE FROM audit_log").await;
    let verdict = audit::verify(&*db.store, &keys).await.unwrap();
    assert!(
        matches!(verdict, Verdict::Broken { seq: 1, .. }),
        "{verdict:?}"
    );
}

pub(super) async fn a_deleted_integrity_root_is_not_replaced(db: &mut TestDb) {
    let k = key(&key_id('r'));
    db.store
        .create_key(&k, &audit("key.create", Some(&k.key_id)))
        .await
        .unwrap();
    protect(&*db.store).await;
    db.tamper("DELETE FROM integrity_keys").await;
    let restarted = db.other_process().await;
    let refused = crate::integrity::load_or_enable(&*restarted, &test_master(), T0).await;
    assert!(
        matches!(refused, Err(Error::InvalidRequest(_))),
        "{refused:?}"
    );
    assert!(
        restarted.integrity_root().await.unwrap().is_none(),
        "nothing written"
    );
}

// ---- alerts ----

pub(super) async fn alert_batches_are_stored_together_and_purged_by_age(db: &mut TestDb) {
    let store = &*db.store;
    let alert = |id: &str, at: i64| AlertRecord {
        id: id.into(),
        at,
        kind: "KEY_IN_URL".into(),
        severity: "critical".into(),
        key_id: None,
        device_id: None,
        ip: Some("192.0.2.1".into()),
        details: json!({"secret_verified": false}),
    };
    let batch: Vec<AlertRecord> = (0..5).map(|i| alert(&format!("al{i}"), T0 + i)).collect();
    store.insert_alerts(&batch).await.unwrap();
    store.insert_alerts(&[]).await.unwrap();
    let filter = AlertFilter {
        limit: 100,
        ..AlertFilter::default()
    };
    let all = || store.list_alerts(&filter);
    assert_eq!(all().await.unwrap().len(), 5);
    assert_eq!(store.purge_alerts(T0 + 3).await.unwrap(), 3, "al0..al2");
    assert_eq!(all().await.unwrap().len(), 2);
    assert_eq!(store.purge_alerts(T0).await.unwrap(), 0);

    // A batch with a bad row (a duplicate id) stores nothing: one transaction.
    let bad = vec![alert("al9", T0 + 9), alert("al3", T0 + 9)];
    assert!(store.insert_alerts(&bad).await.is_err());
    assert_eq!(all().await.unwrap().len(), 2, "rolled back");
}

pub(super) async fn alerts_filter_newest_first(db: &mut TestDb) {
    let store = &*db.store;
    let (a, b) = (key_id('a'), key_id('b'));
    let alert = |id: &str, at: i64, kind: &str, key: &str| AlertRecord {
        id: id.into(),
        at,
        kind: kind.into(),
        severity: "warning".into(),
        key_id: Some(key.to_owned()),
        device_id: None,
        ip: Some("203.0.113.9".into()),
        details: json!({"score": 0.17302078100154195}),
    };
    let alerts = [
        alert("al1", T0, "NEW_DEVICE", &a),
        alert("al2", T0 + 1, "DPOP_REPLAY", &a),
        alert("al3", T0 + 2, "NEW_DEVICE", &b),
        alert("al4", T0 + 3, "NEW_DEVICE", &a),
    ];
    for al in &alerts {
        store.insert_alert(al).await.unwrap();
    }
    let ids = |found: Vec<AlertRecord>| found.into_iter().map(|a| a.id).collect::<Vec<_>>();
    let cases = [
        (
            AlertFilter {
                limit: 10,
                ..AlertFilter::default()
            },
            vec!["al4", "al3", "al2", "al1"],
        ),
        (
            AlertFilter {
                limit: 2,
                ..AlertFilter::default()
            },
            vec!["al4", "al3"],
        ),
        (
            AlertFilter {
                kind: Some("NEW_DEVICE".into()),
                limit: 10,
                ..AlertFilter::default()
            },
            vec!["al4", "al3", "al1"],
        ),
        (
            AlertFilter {
                key_id: Some(a.clone()),
                limit: 10,
                ..AlertFilter::default()
            },
            vec!["al4", "al2", "al1"],
        ),
        (
            AlertFilter {
                since: Some(T0 + 2),
                limit: 10,
                ..AlertFilter::default()
            },
            vec!["al4", "al3"],
        ),
        (
            AlertFilter {
                kind: Some("NEW_DEVICE".into()),
                key_id: Some(a.clone()),
                since: Some(T0 + 1),
                limit: 10,
                after: None,
            },
            vec!["al4"],
        ),
        (
            AlertFilter {
                after: Some("al3".into()),
                limit: 10,
                ..AlertFilter::default()
            },
            vec!["al2", "al1"],
        ),
        (
            AlertFilter {
                kind: Some("NEW_DEVICE".into()),
                after: Some("al4".into()),
                limit: 1,
                ..AlertFilter::default()
            },
            vec!["al3"],
        ),
    ];
    for (filter, want) in cases {
        assert_eq!(
            ids(store.list_alerts(&filter).await.unwrap()),
            want,
            "{filter:?}"
        );
    }
    let all = store
        .list_alerts(&AlertFilter {
            limit: 10,
            ..AlertFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(all.last(), Some(&alerts[0]), "round trip");
}

// ---- revocation feed ----

pub(super) async fn revocation_feed_pages_by_cursor(db: &mut TestDb) {
    let store = &*db.store;
    for i in 0..5 {
        store
            .append_revocation("device", &format!("jkt-{i}"), T0 + i)
            .await
            .unwrap();
    }
    let first = store.list_revocations(0, 2).await.unwrap();
    let ids: Vec<_> = first.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["jkt-0", "jkt-1"]);
    let rest = store.list_revocations(first[1].seq, 10).await.unwrap();
    let ids: Vec<_> = rest.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["jkt-2", "jkt-3", "jkt-4"]);
    assert_eq!(rest[2].kind, "device");
    assert_eq!(rest[2].at, T0 + 4);
    assert!(
        store
            .list_revocations(rest[2].seq, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

// ---- durability ----

pub(super) async fn data_survives_reopen(db: &mut TestDb) {
    let (k, d) = key_with_device(&*db.store, 'p').await;
    let f = family(&d, "fam-p", 1);
    assert!(db.store.advance_refresh_family(0, &f).await.unwrap());
    db.store
        .append_revocation("key", &k.key_id, T0)
        .await
        .unwrap();

    db.reopen().await;
    let store = &*db.store;
    assert_eq!(store.get_key(&k.key_id).await.unwrap(), Some(k));
    assert_eq!(store.get_device(&d.device_id).await.unwrap(), Some(d));
    assert_eq!(store.get_refresh_family("fam-p").await.unwrap(), Some(f));
    assert_eq!(store.list_revocations(0, 10).await.unwrap().len(), 1);
    let keys = protect(store).await;
    let verdict = audit::verify(store, &keys).await.unwrap();
    assert!(
        matches!(verdict, Verdict::Intact { rows: 2, .. }),
        "the plain row and the enable row: {verdict:?}"
    );
}
