//! Refresh families (advance, revocation, purge, group commit) and signing keys.

use super::*;

pub(super) async fn refresh_families_advance_once(db: &mut TestDb) {
    let store = &*db.store;
    let (_, d) = key_with_device(store, 'k').await;
    assert_eq!(store.get_refresh_family("fam-1").await.unwrap(), None);
    // Generation 0 is spent by writing the row (at generation 1); once only.
    let first = family(&d, "fam-1", 1);
    assert!(store.advance_refresh_family(0, &first).await.unwrap());
    assert_eq!(
        store.get_refresh_family("fam-1").await.unwrap(),
        Some(first.clone())
    );
    let again = FamilyRecord {
        rotated_at: T0 + 6,
        ..first.clone()
    };
    assert!(!store.advance_refresh_family(0, &again).await.unwrap());
    assert_eq!(
        store.get_refresh_family("fam-1").await.unwrap(),
        Some(first.clone()),
        "a refused spend changes nothing"
    );
    // Then each generation once.
    let second = FamilyRecord {
        rotated_at: T0 + 10,
        expires_at: T0 + 10 + 86_400,
        grace_token: Some(vec![7; 40]),
        grace_until: Some(T0 + 20),
        ..family(&d, "fam-1", 2)
    };
    assert!(store.advance_refresh_family(1, &second).await.unwrap());
    assert!(!store.advance_refresh_family(1, &second).await.unwrap());
    assert!(
        !store
            .advance_refresh_family(3, &family(&d, "fam-1", 4))
            .await
            .unwrap(),
        "not the live generation"
    );
    assert_eq!(
        store.get_refresh_family("fam-1").await.unwrap(),
        Some(second)
    );
    // The sealed successor is forgotten when its window ends, not before.
    assert_eq!(store.clear_refresh_grace(T0 + 20).await.unwrap(), 0);
    assert_eq!(store.clear_refresh_grace(T0 + 21).await.unwrap(), 1);
    let cleared = store.get_refresh_family("fam-1").await.unwrap().unwrap();
    assert_eq!((cleared.grace_token, cleared.grace_until), (None, None));
    assert!(
        !store
            .advance_refresh_family(1, &family(&d, "fam-unknown", 2))
            .await
            .unwrap(),
        "an unknown family past generation 0 is not advanced"
    );
    assert_eq!(store.get_refresh_family("fam-unknown").await.unwrap(), None);
}

pub(super) async fn expired_refresh_families_are_purged(db: &mut TestDb) {
    let store = &*db.store;
    let (_, d) = key_with_device(store, 'x').await;
    // More than one purge statement's worth, half of them expired.
    let families: Vec<FamilyRecord> = (0..12_000u32)
        .map(|i| FamilyRecord {
            expires_at: T0 + i64::from(i % 2) * 1_000,
            revoked_at: (i % 3 == 0).then_some(T0 - 10),
            ..family(&d, &format!("fam-x{i}"), 1)
        })
        .collect();
    let writes = families.iter().map(|f| store.advance_refresh_family(0, f));
    for w in futures::future::join_all(writes).await {
        assert!(w.unwrap());
    }
    assert_eq!(
        store.purge_expired_refresh(T0).await.unwrap(),
        0,
        "none yet"
    );
    assert_eq!(store.purge_expired_refresh(T0 + 1).await.unwrap(), 6_000);
    for f in &families {
        let kept = store
            .get_refresh_family(&f.family_id)
            .await
            .unwrap()
            .is_some();
        assert_eq!(kept, f.expires_at > T0, "{f:?}");
    }
    assert_eq!(store.purge_expired_refresh(T0 + 1).await.unwrap(), 0);
}

pub(super) async fn concurrent_first_refreshes_have_one_winner(db: &mut TestDb) {
    let (_, d) = key_with_device(&*db.store, 'w').await;
    let spends = (0..10).map(|i| {
        let store = db.store.clone();
        let next = FamilyRecord {
            rotated_at: T0 + i,
            ..family(&d, "fam-w", 1)
        };
        tokio::spawn(async move { store.advance_refresh_family(0, &next).await })
    });
    let mut wins = 0;
    for s in spends.collect::<Vec<_>>() {
        wins += usize::from(s.await.unwrap().unwrap());
    }
    assert_eq!(wins, 1);
}

pub(super) async fn revoked_families_do_not_advance(db: &mut TestDb) {
    let store = &*db.store;
    let (_, d) = key_with_device(store, 'g').await;
    assert!(
        store
            .advance_refresh_family(0, &family(&d, "fam-g", 1))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .revoke_refresh_family(&family(&d, "fam-g", 1), T0 + 12)
            .await
            .unwrap(),
        1
    );
    assert!(
        !store
            .advance_refresh_family(1, &family(&d, "fam-g", 2))
            .await
            .unwrap()
    );
    let row = store.get_refresh_family("fam-g").await.unwrap().unwrap();
    assert_eq!((row.generation, row.revoked_at), (1, Some(T0 + 12)));

    // A family revoked before its first refresh gets its row, revoked: its first token (of
    // generation 0) cannot be spent afterwards.
    let unrefreshed = FamilyRecord {
        generation: 0,
        ..family(&d, "fam-h", 0)
    };
    assert_eq!(
        store
            .revoke_refresh_family(&unrefreshed, T0 + 13)
            .await
            .unwrap(),
        1
    );
    assert!(
        !store
            .advance_refresh_family(0, &family(&d, "fam-h", 1))
            .await
            .unwrap()
    );
    let row = store.get_refresh_family("fam-h").await.unwrap().unwrap();
    assert_eq!((row.generation, row.revoked_at), (0, Some(T0 + 13)));
}

pub(super) async fn concurrent_rotations_have_one_winner(db: &mut TestDb) {
    let (_, d) = key_with_device(&*db.store, 'y').await;
    assert!(
        db.store
            .advance_refresh_family(0, &family(&d, "fam-y", 1))
            .await
            .unwrap()
    );
    let rotations = (0..10i64).map(|i| {
        let store = db.store.clone();
        let next = FamilyRecord {
            rotated_at: T0 + 100 + i,
            ..family(&d, "fam-y", 2)
        };
        tokio::spawn(async move { store.advance_refresh_family(1, &next).await })
    });
    let mut wins = 0;
    for r in rotations.collect::<Vec<_>>() {
        wins += usize::from(r.await.unwrap().unwrap());
    }
    assert_eq!(wins, 1);
    let row = db.store.get_refresh_family("fam-y").await.unwrap().unwrap();
    assert_eq!(row.generation, 2, "advanced once");
}

pub(super) async fn family_revocation_is_fed_once(db: &mut TestDb) {
    let store = &*db.store;
    let (_, d) = key_with_device(store, 'm').await;
    for f in ["fam-m", "fam-other"] {
        assert!(
            store
                .advance_refresh_family(0, &family(&d, f, 1))
                .await
                .unwrap()
        );
    }
    assert_eq!(
        store
            .revoke_refresh_family(&family(&d, "fam-m", 1), T0 + 7)
            .await
            .unwrap(),
        1
    );
    let revoked_at = |f: &'static str| async move {
        store
            .get_refresh_family(f)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
    };
    assert_eq!(revoked_at("fam-m").await, Some(T0 + 7));
    assert_eq!(revoked_at("fam-other").await, None);
    assert_eq!(
        store
            .revoke_refresh_family(&family(&d, "fam-m", 1), T0 + 8)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        revoked_at("fam-m").await,
        Some(T0 + 7),
        "the first revocation stays"
    );
    assert_eq!(
        all_revocations(store).await,
        [("refresh_family".into(), "fam-m".into(), T0 + 7)]
    );
}

/// One group-commit transaction holding every kind of refresh-family write, run directly on
/// the backend (through the writer, how ops share a transaction depends on timing): each op
/// is answered, and leaves the row, as it would alone and in queue order, including two
/// spends of one generation in the same batch.
pub(super) async fn a_batch_answers_each_family_write_as_if_alone(db: &mut TestDb) {
    let store = &*db.store;
    let (_, d) = key_with_device(store, 'b').await;
    let f = |id: &str, generation: i64, rotated: i64| FamilyRecord {
        rotated_at: T0 + rotated,
        expires_at: T0 + rotated + 86_400,
        ..family(&d, id, generation)
    };
    // Before: live at generation 1 (b-live, b-stale, b-spent), revoked after its first refresh
    // (b-revoked) and before it (b-revoked0), absent (the rest).
    for id in ["b-live", "b-stale", "b-spent", "b-revoked"] {
        assert!(store.advance_refresh_family(0, &f(id, 1, 0)).await.unwrap());
    }
    assert!(
        store
            .advance_refresh_family(1, &f("b-stale", 2, 1))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .revoke_refresh_family(&f("b-revoked", 1, 0), T0 + 2)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .revoke_refresh_family(&f("b-revoked0", 0, 0), T0 + 2)
            .await
            .unwrap(),
        1
    );
    let mut untouched = Vec::new();
    for id in ["b-stale", "b-spent", "b-revoked", "b-revoked0"] {
        untouched.push((id, store.get_refresh_family(id).await.unwrap()));
    }

    let advanced = FamilyRecord {
        grace_token: Some(vec![9; 40]),
        grace_until: Some(T0 + 13),
        ..f("b-live", 2, 3)
    };
    let cases: Vec<(i64, FamilyRecord, bool, &str)> = vec![
        (0, f("b-new", 1, 3), true, "a first refresh writes the row"),
        (1, advanced.clone(), true, "the live generation advances"),
        (1, f("b-stale", 2, 3), false, "a spent generation does not"),
        (
            0,
            f("b-spent", 1, 3),
            false,
            "generation 0 of an existing row is spent",
        ),
        (
            1,
            f("b-revoked", 2, 3),
            false,
            "a revoked family does not advance",
        ),
        (
            0,
            f("b-revoked0", 1, 3),
            false,
            "nor is a revoked family's first token spent",
        ),
        (
            1,
            f("b-unknown", 2, 3),
            false,
            "an unknown family past generation 0",
        ),
        (
            0,
            f("b-twice", 1, 3),
            true,
            "of two first refreshes, the first wins",
        ),
        (
            1,
            FamilyRecord {
                rotated_at: T0 + 4,
                ..advanced.clone()
            },
            false,
            "a second spend loses",
        ),
        (
            0,
            f("b-twice", 1, 4),
            false,
            "and the second first refresh loses",
        ),
        (
            1,
            f("b-new", 2, 4),
            true,
            "a generation written earlier in the batch advances",
        ),
        (2, f("b-new", 3, 5), true, "and again"),
        (2, f("b-new", 3, 6), false, "but once"),
    ];
    let mut ops: Vec<WriteOp> = cases
        .iter()
        .map(|(from, next, _, _)| WriteOp::AdvanceFamily {
            from: *from,
            next: next.clone(),
        })
        .collect();
    // The other kinds of op ride along, as in the server's batches.
    ops.insert(3, WriteOp::UpdateDeviceUsage(Arc::new(d.clone())));
    ops.push(WriteOp::TouchKeys(vec![(d.key_id.to_string(), T0 + 3)]));
    let mut answers = db.run_batch(&ops).await;
    assert_eq!(answers.len(), ops.len());
    let Some(Answer::Keys(touched)) = answers.pop() else {
        panic!("the touch answers the keys as stored");
    };
    assert_eq!(
        touched.iter().map(|k| &k.key_id).collect::<Vec<_>>(),
        [&d.key_id]
    );
    let Answer::Device(Some(lifecycle)) = answers.remove(3) else {
        panic!("the device write answers the device as stored");
    };
    assert_eq!(
        (lifecycle.device_id, lifecycle.status, lifecycle.approved),
        (d.device_id.clone(), DeviceStatus::Active, false)
    );
    for ((from, next, want, why), got) in cases.iter().zip(answers) {
        assert_eq!(
            got,
            Answer::Done(*want),
            "{why}: {} from {from}",
            next.family_id
        );
    }

    let stored = |id: &'static str| store.get_refresh_family(id);
    assert_eq!(stored("b-live").await.unwrap(), Some(advanced));
    assert_eq!(stored("b-new").await.unwrap(), Some(f("b-new", 3, 5)));
    assert_eq!(stored("b-twice").await.unwrap(), Some(f("b-twice", 1, 3)));
    assert_eq!(stored("b-unknown").await.unwrap(), None);
    for (id, row) in untouched {
        assert_eq!(stored(id).await.unwrap(), row, "{id} is unchanged");
    }
}

/// The refresh path's usual batch, family writes and nothing else (run outside a
/// transaction, as one statement): batches of spends only and of first refreshes only, of
/// sizes that pad to the next power of two (3 to 4, 5 to 8) and of exact ones, each answered
/// as it would be alone; a batch breaking a constraint fails before writing anything, so that
/// the writer can run its ops again one by one.
pub(super) async fn batches_of_family_writes_alone_answer_each(db: &mut TestDb) {
    let store = &*db.store;
    let (_, d) = key_with_device(store, 'p').await;
    let at = |id: String, generation: i64, rotated: i64| FamilyRecord {
        rotated_at: T0 + rotated,
        expires_at: T0 + rotated + 86_400,
        ..family(&d, &id, generation)
    };
    let advance = |from: i64, next: &FamilyRecord| WriteOp::AdvanceFamily {
        from,
        next: next.clone(),
    };
    assert!(
        store
            .advance_refresh_family(0, &at("p-taken".into(), 1, 0))
            .await
            .unwrap()
    );
    for size in [1usize, 3, 4, 5] {
        // First refreshes: `p-taken`'s generation 0 is spent already, the others are new.
        let firsts: Vec<FamilyRecord> = (0..size)
            .map(|i| at(format!("p{size}-{i}"), 1, 1))
            .chain(std::iter::once(at("p-taken".into(), 1, 1)))
            .collect();
        let ops: Vec<_> = firsts.iter().map(|f| advance(0, f)).collect();
        let mut want = vec![Answer::Done(true); size];
        want.push(Answer::Done(false));
        assert_eq!(db.run_batch(&ops).await, want, "{size} first refreshes");
        for f in &firsts[..size] {
            assert_eq!(
                store
                    .get_refresh_family(&f.family_id)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(f)
            );
        }
        // Spends of those: the live generation advances, a spent one, an unknown family's and
        // a revoked family's do not.
        store
            .revoke_refresh_family(&firsts[0], T0 + 2)
            .await
            .unwrap();
        let cases: Vec<(i64, FamilyRecord, bool)> = (0..size)
            .map(|i| (1, at(format!("p{size}-{i}"), 2, 3), i > 0))
            .chain([
                (5, at(format!("p{size}-unknown"), 6, 3), false),
                (2, at("p-taken".into(), 3, 3), false),
            ])
            .collect();
        let ops: Vec<_> = cases.iter().map(|(from, f, _)| advance(*from, f)).collect();
        let want: Vec<_> = cases.iter().map(|c| Answer::Done(c.2)).collect();
        assert_eq!(db.run_batch(&ops).await, want, "{size} spends");
        for (_, f, won) in &cases {
            let stored = store.get_refresh_family(&f.family_id).await.unwrap();
            assert_eq!(
                stored.as_ref().map(|s| s.generation),
                match f.family_id.as_str() {
                    "p-taken" => Some(1),
                    id if id.ends_with("unknown") => None,
                    _ => Some(if *won { 2 } else { 1 }),
                },
                "{}",
                f.family_id
            );
        }
    }
    // A constraint broken in the statement: nothing of the batch is written, and the failure
    // is the statement's (run again op by op), not an unknown outcome.
    let ops = [
        advance(0, &at("p-ok".into(), 1, 4)),
        advance(0, &bad_family(&d, "p-bad")),
    ];
    let failed = db.try_batch(&ops).await;
    assert!(
        matches!(failed, Err(BatchError::Statement(_))),
        "{failed:?}"
    );
    assert_eq!(store.get_refresh_family("p-ok").await.unwrap(), None);
}

/// A family write that breaks a constraint (a negative generation) among concurrent ones.
fn bad_family(d: &DeviceRecord, id: &str) -> FamilyRecord {
    FamilyRecord {
        generation: -1,
        ..family(d, id, 1)
    }
}

pub(super) async fn one_bad_write_fails_only_its_caller(db: &mut TestDb) {
    let (_, d) = key_with_device(&*db.store, 'j').await;
    // 40 concurrent first refreshes, most likely sharing transactions; the 17th breaks a
    // constraint.
    let writes = (0..40u8).map(|n| {
        let store = db.store.clone();
        let f = if n == 17 {
            bad_family(&d, &format!("fam-j{n}"))
        } else {
            family(&d, &format!("fam-j{n}"), 1)
        };
        tokio::spawn(async move { store.advance_refresh_family(0, &f).await })
    });
    for (n, w) in writes.collect::<Vec<_>>().into_iter().enumerate() {
        let result = w.await.unwrap();
        assert_eq!(result.is_err(), n == 17, "write {n}: {result:?}");
        let stored = db
            .store
            .get_refresh_family(&format!("fam-j{n}"))
            .await
            .unwrap();
        assert_eq!(
            stored.is_some(),
            n != 17,
            "write {n}: acknowledged means stored, refused means unchanged"
        );
    }
}

/// Usage totals written next to concurrent family writes (through the same group commit) come
/// out whole, with sizes that cross the writer's statement chunks: totals for the same key and
/// minute add up (within one batch and across batches, the maximum latency the larger), and a
/// bad family write in their transaction neither loses nor fails them.
pub(super) async fn usage_batches_share_the_token_writes(db: &mut TestDb) {
    let (k, d) = key_with_device(&*db.store, 'u').await;
    let (first, second) = (T0 / 60 * 60, (T0 + 60) / 60 * 60);
    // Row `i` of a batch: minute `first` or `second`, or another key's minute (to cross the
    // statement chunks).
    let row = |batch: i64, i: i64| UsageMinute {
        key_id: match i {
            0 => k.key_id.to_string(),
            1 => k.key_id.to_string(),
            i => format!("ak_test_other{i}"),
        },
        minute: if i == 1 { second } else { first },
        requests: 10 + batch,
        errors: batch,
        latency_sum_us: 1_000 * (batch + 1),
        latency_max_us: 100 * (batch + 1) + i,
    };
    let mut writes = Vec::new();
    for (batch, size) in [(0, 300), (1, 2), (2, 131)] {
        let store = db.store.clone();
        let rows: Vec<_> = (0..size).map(|i| row(batch, i)).collect();
        writes.push(tokio::spawn(async move { store.add_usage(rows).await }));
        for n in 0..14u8 {
            let store = db.store.clone();
            let n = batch as u8 * 14 + n;
            let f = if n == 17 {
                bad_family(&d, &format!("fam-u{n}"))
            } else {
                family(&d, &format!("fam-u{n}"), 1)
            };
            writes.push(tokio::spawn(async move {
                store.advance_refresh_family(0, &f).await.map(drop)
            }));
        }
    }
    for (i, w) in writes.into_iter().enumerate() {
        let result = w.await.unwrap();
        // Write 19 is the bad family write, number 17 (usage at 0, tokens 0..=13 at 1..=14, usage at
        // 15, tokens 14.. from 16).
        assert_eq!(result.is_err(), i == 19, "write {i}: {result:?}");
    }
    // The same key and minute twice in one call adds up too.
    db.store
        .add_usage(vec![row(3, 0), row(4, 0)])
        .await
        .unwrap();

    let buckets = db
        .store
        .usage_summary(&k.key_id, 60, T0 - 60)
        .await
        .unwrap();
    let got = bucket_rows(&buckets);
    // Minute `first`: batches 0..=4 (requests 10..=14, errors 0..=4, latency sums 1..=5 ms).
    // Minute `second`: batches 0..=2 (row 1).
    assert_eq!(
        got,
        vec![
            (first, 60, 10, 15_000.0 / 60.0, 500),
            (second, 33, 3, 6_000.0 / 33.0, 301),
        ]
    );
    // An hour bucket sums its minutes; the other keys' rows stay theirs.
    let hour = db
        .store
        .usage_summary(&k.key_id, 3_600, T0 - 3_600)
        .await
        .unwrap();
    assert_eq!(hour.len(), (first / 3_600 != second / 3_600) as usize + 1);
    assert_eq!(hour.iter().map(|b| b.requests).sum::<i64>(), 93);
    let other = db
        .store
        .usage_summary("ak_test_other130", 60, T0 - 60)
        .await
        .unwrap();
    assert_eq!(
        other
            .iter()
            .map(|b| (b.start, b.requests))
            .collect::<Vec<_>>(),
        vec![(first, 10 + 12)]
    );
    // The purge takes whole minutes that started before its bound: `first` of this key and of
    // the others (`other2` to `other299`).
    assert_eq!(db.store.purge_usage(second).await.unwrap(), 1 + 298);
    let left = db
        .store
        .usage_summary(&k.key_id, 60, T0 - 60)
        .await
        .unwrap();
    assert_eq!(
        left.iter().map(|b| b.start).collect::<Vec<_>>(),
        vec![second]
    );
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
