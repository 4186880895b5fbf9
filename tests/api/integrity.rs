//! Integrity against a database writer (issue 15 item 8): a key row written straight into the
//! database is refused with INVALID_API_KEY, an old-format row is upgraded at startup and
//! keeps working, and the audit log's truncation past a checkpoint is detected, with a
//! checkpoint from another master key refused.

use keybound::keys::{ApiKey, KeyEnv};
use keybound::store::{AuditEntry, KeyRecord, KeyStatus};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestDb, cli, cli_with_master_key, expect_error, expect_json, now, spawn_app};
use crate::on_both_backends;
use crate::proofs::Device;
use crate::token::{exchange, new_key};

on_both_backends!(
    a_key_row_written_into_the_database_is_refused,
    an_old_format_row_is_upgraded_at_startup_and_keeps_working,
    truncation_past_a_checkpoint_is_detected,
    a_checkpoint_from_another_master_key_is_refused,
    the_cli_needs_the_master_key_to_create_a_key,
);

/// Copies key `template`'s row under `new_id` with `hash` (the template's own when `None`).
fn copy_row(db: &TestDb, template: &str, new_id: &str, hash: Option<&[u8]>) -> String {
    let hash = hash.map_or_else(|| "secret_hash".to_owned(), |h| db.bytes_literal(h));
    format!(
        "INSERT INTO api_keys (key_id, env, name, secret_hash, scopes, rate_limit_per_minute, \
         allowed_ips, allowed_origins, max_devices, trust_on_enroll, status, created_at, \
         expires_at) SELECT '{new_id}', env, 'minted', {hash}, scopes, rate_limit_per_minute, \
         allowed_ips, allowed_origins, max_devices, trust_on_enroll, status, created_at, \
         expires_at FROM api_keys WHERE key_id = '{template}'"
    )
}

async fn a_key_row_written_into_the_database_is_refused(db: TestDb) {
    let app = spawn_app(&db).await;
    let (real, real_id) = new_key(&app, json!({"trust_on_enroll": true})).await;

    // A secret of the writer's choosing, stored as its SHA-256 (all they can compute).
    let chosen = ApiKey::generate(KeyEnv::Test);
    let sql = copy_row(
        &db,
        &real_id,
        chosen.id().as_str(),
        Some(&chosen.secret_hash()),
    );
    assert_eq!(db.execute(&sql).await, 1);
    expect_error(
        exchange(&app, chosen.expose(), &Device::new(), json!({})).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
        "a row with a bare SHA-256 never verifies",
    )
    .await;

    // A real key's stored value copied under another id, presented with the real secret.
    let fresh = ApiKey::generate(KeyEnv::Test);
    let body = format!(
        "sk_test_{}{}",
        &fresh.id().as_str()["ak_test_".len()..],
        &real[real.len() - 49..real.len() - 6]
    );
    let copied = format!(
        "{body}{}",
        keybound::keys::format::checksum(body.as_bytes())
    );
    assert!(ApiKey::parse(&copied).is_ok());
    assert_eq!(
        db.execute(&copy_row(&db, &real_id, fresh.id().as_str(), None))
            .await,
        1
    );
    expect_error(
        exchange(&app, &copied, &Device::new(), json!({})).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
        "the stored MAC is bound to its key id",
    )
    .await;

    // The real key still works.
    expect_json(
        exchange(&app, &real, &Device::new(), json!({})).await,
        StatusCode::OK,
    )
    .await;
    app.stop().await;
}

async fn an_old_format_row_is_upgraded_at_startup_and_keeps_working(db: TestDb) {
    // The database as a version before integrity protection left it: a bare SHA-256 and a
    // plain-hash audit row (a store without integrity keys on a database without a root).
    let key = ApiKey::generate(KeyEnv::Test);
    let at = now();
    let record = KeyRecord {
        key_id: key.id().clone(),
        env: KeyEnv::Test,
        name: "old".into(),
        description: None,
        secret_hash: key.secret_hash().to_vec(),
        scopes: vec!["read:users".parse().unwrap()],
        limited_scopes: None,
        rate_limit_per_minute: 600,
        allowed_ips: vec![],
        allowed_origins: vec![],
        max_devices: 5,
        trust_on_enroll: true,
        attestation: Default::default(),
        status: KeyStatus::Active,
        status_reason: None,
        status_changed_at: None,
        created_at: at,
        expires_at: None,
        last_used_at: None,
        rotated_from: None,
        rotated_to: None,
    };
    let audit = AuditEntry {
        at,
        actor: "cli".into(),
        action: "key.create".into(),
        target: Some(record.key_id.to_string()),
        ip: None,
        details: json!({}),
    };
    db.store().await.create_key(&record, &audit).await.unwrap();

    let app = spawn_app(&db).await;
    expect_json(
        exchange(&app, key.expose(), &Device::new(), json!({})).await,
        StatusCode::OK,
    )
    .await;
    let log = expect_json(app.admin_get("/audit").await, StatusCode::OK).await;
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{log}");
    assert_eq!(entries[1]["action"], "integrity.enable");
    assert_eq!(entries[1]["details"]["wrapped_key_hashes"], 1);
    app.stop().await;

    // Restarted: no second upgrade, the key still works, the chain verifies across the switch.
    let app = spawn_app(&db).await;
    expect_json(
        exchange(&app, key.expose(), &Device::new(), json!({})).await,
        StatusCode::OK,
    )
    .await;
    app.stop().await;
    let v = cli(&db, &["audit", "verify", "--json"]).await.ok().json();
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["rows"], 2, "{v}");
}

async fn truncation_past_a_checkpoint_is_detected(db: TestDb) {
    let app = spawn_app(&db).await;
    for name in ["a", "b", "c"] {
        new_key(&app, json!({"name": name})).await;
    }
    app.stop().await;
    let file = db.dir.path().join("checkpoint.json");
    let file = file.to_str().unwrap();
    let out = cli(&db, &["audit", "checkpoint", "--out", file]).await.ok();
    assert!(out.stderr.contains("seq 4"), "{out:?}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    assert_eq!(written["seq"], 4);
    let v = cli(&db, &["audit", "verify", "--checkpoint", file, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(v["intact"], true, "{v}");
    assert_eq!(v["checkpoint_seq"], 4, "{v}");

    // A rewritten row: named by the MAC chain, with or without the checkpoint.
    db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
        .await;
    let out = cli(&db, &["audit", "verify", "--checkpoint", file]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("seq 3:"), "{out:?}");
    db.execute("UPDATE audit_log SET actor = 'admin-api' WHERE seq = 3")
        .await;

    // The newest row removed: the shorter chain is consistent, the checkpoint says otherwise.
    db.execute("DELETE FROM audit_log WHERE seq = 4").await;
    let plain = cli(&db, &["audit", "verify", "--json"]).await.ok().json();
    assert_eq!(plain["rows"], 3, "{plain}");
    let out = cli(&db, &["audit", "verify", "--checkpoint", file]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("before the checkpoint's seq 4"),
        "{out:?}"
    );
}

async fn a_checkpoint_from_another_master_key_is_refused(db: TestDb) {
    let app = spawn_app(&db).await;
    new_key(&app, json!({})).await;
    app.stop().await;
    let file = db.dir.path().join("checkpoint.json");
    let file = file.to_str().unwrap();
    cli(&db, &["audit", "checkpoint", "--out", file]).await.ok();

    // The same head, authenticated under another database's integrity key.
    let written: keybound::audit::Checkpoint =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let other = keybound::integrity::Integrity::from_root(&rand::random::<[u8; 32]>());
    let head = keybound::audit::from_hex(&written.head).unwrap();
    let foreign = keybound::audit::Checkpoint::new(&other, written.seq, &head, written.at);
    let foreign_file = db.dir.path().join("foreign.json");
    let foreign_path = foreign_file.to_str().unwrap();
    std::fs::write(&foreign_file, serde_json::to_vec(&foreign).unwrap()).unwrap();
    let out = cli(&db, &["audit", "verify", "--checkpoint", foreign_path]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("not written with this database's integrity key"),
        "{out:?}"
    );

    // An edited one (a smaller seq, to hide a truncation) is refused the same way.
    let mut edited = written.clone();
    edited.seq -= 1;
    std::fs::write(&foreign_file, serde_json::to_vec(&edited).unwrap()).unwrap();
    let out = cli(&db, &["audit", "verify", "--checkpoint", foreign_path]).await;
    assert_eq!(out.code, 2, "{out:?}");

    // Another master key does not open this database's integrity key at all.
    let wrong = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>())
    };
    let out = cli_with_master_key(&db, Some(&wrong), &["audit", "verify"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("does not open"), "{out:?}");
    assert!(
        !out.all().contains(&wrong) && !out.all().contains(db.master_key()),
        "no key in the error: {out:?}"
    );
}

async fn the_cli_needs_the_master_key_to_create_a_key(db: TestDb) {
    spawn_app(&db).await.stop().await;
    let args = ["keys", "create", "--name", "x", "--scopes", "read:users"];
    let out = cli_with_master_key(&db, None, &args).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("needs the master key"), "{out:?}");
    // Reading needs no master key; writing an audit row does.
    let listed = cli_with_master_key(&db, None, &["keys", "list", "--json"]).await;
    assert_eq!(listed.code, 0, "{listed:?}");
    let out = cli_with_master_key(&db, None, &["audit", "verify"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("needs the master key"), "{out:?}");
    // With it, the same command works.
    cli(&db, &args).await.ok();
}
