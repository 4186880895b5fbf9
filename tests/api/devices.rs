//! Device management through the admin API and the CLI. Devices are enrolled by token
//! exchanges; here they are arranged directly in the store.

use std::collections::BTreeMap;

use keybound::store::{AlertRecord, DeviceRecord, DeviceStatus, EnrollLimits};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{TestDb, cli, expect_error, expect_json, key_body, now, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    devices_via_api,
    devices_via_cli,
    usage_counts_devices_exchanges_and_alerts
);

fn device(key_id: &str, n: u32, created_at: i64) -> DeviceRecord {
    DeviceRecord {
        device_id: format!("dev_{}", uuid::Uuid::new_v4().simple()),
        key_id: key_id.parse().unwrap(),
        // 43 base64url characters, unique: the shape of a thumbprint.
        jkt: format!("{n:011}{}", uuid::Uuid::new_v4().simple())
            .parse()
            .unwrap(),
        name: Some(format!("phone {n}")),
        attributes: std::sync::Arc::new(BTreeMap::from([(
            "platform".to_owned(),
            "ios".to_owned(),
        )])),
        status: DeviceStatus::Active,
        approved: false,
        baseline: 0,
        created_at,
        last_seen_at: created_at,
        exchange_count: 1,
        mismatch_count: 0,
        mismatch_fingerprint: None,
        networks: vec!["127.0.0.0/24".into()],
        trust_score: 0.5,
        trust_level: keybound::devices::TrustLevel::Limited,
        trust_factors: keybound::store::JsonText::of(&json!({})),
        revoked_at: None,
        // The store allocates it.
        status_idx: 0,
        attestation: None,
    }
}

async fn devices_via_api(db: TestDb) {
    let app = spawn_app(&db).await;
    let k = app.create_key(key_body("with devices")).await;
    let key_id = k["key_id"].as_str().unwrap();
    let (d1, d2) = (device(key_id, 1, now() - 10), device(key_id, 2, now()));
    for d in [&d1, &d2] {
        app.store
            .enroll_device(d, EnrollLimits::max_devices(5))
            .await
            .unwrap();
    }

    let list = expect_json(
        app.admin_get(&format!("/keys/{key_id}/devices")).await,
        StatusCode::OK,
    )
    .await;
    let ids: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [d1.device_id.as_str(), d2.device_id.as_str()],
        "oldest first"
    );

    let approved = expect_json(
        app.admin_post(&format!("/devices/{}/approve", d1.device_id), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(approved["approved"], true);
    assert_eq!(approved["status"], "active");

    let revoked = expect_json(
        app.admin_post(&format!("/devices/{}/revoke", d2.device_id), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(revoked["status"], "revoked");
    assert!(revoked["revoked_at"].as_i64().is_some());
    expect_error(
        app.admin_post(&format!("/devices/{}/approve", d2.device_id), json!({}))
            .await,
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        "approving a revoked device",
    )
    .await;

    for (path, why) in [
        ("/devices/dev_unknown/revoke", "revoke unknown device"),
        ("/devices/dev_unknown/approve", "approve unknown device"),
    ] {
        expect_error(
            app.admin_post(path, json!({})).await,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            why,
        )
        .await;
    }
    expect_error(
        app.admin_get("/keys/ak_test_AAAAAAAAAAAA/devices").await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "devices of an unknown key",
    )
    .await;

    let log = expect_json(app.admin_get("/audit").await, StatusCode::OK).await;
    let rows: Vec<(String, String)> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] != "integrity.enable")
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        rows[1..],
        [
            ("device.approve".into(), d1.device_id.clone()),
            ("device.revoke".into(), d2.device_id.clone())
        ]
    );
}

async fn devices_via_cli(db: TestDb) {
    let key = cli(
        &db,
        &["keys", "create", "--name", "k", "--scopes", "s", "--json"],
    )
    .await
    .ok()
    .json();
    let key_id = key["key_id"].as_str().unwrap();
    let store = db.protected_store().await;
    let d = device(key_id, 1, now());
    store
        .enroll_device(&d, EnrollLimits::max_devices(5))
        .await
        .unwrap();

    let table = cli(&db, &["devices", "list", key_id]).await.ok();
    assert!(table.stdout.starts_with("DEVICE_ID"), "{table:?}");
    assert!(table.stdout.contains(&d.device_id) && table.stdout.contains("phone 1"));
    let list = cli(&db, &["devices", "list", key_id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(list["devices"][0]["device_id"], d.device_id.as_str());

    let approved = cli(&db, &["devices", "approve", &d.device_id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(approved["approved"], true);
    let revoked = cli(&db, &["devices", "revoke", &d.device_id]).await.ok();
    assert!(
        revoked
            .stdout
            .contains(&format!("Revoked device {}", d.device_id)),
        "{revoked:?}"
    );
    let after = cli(&db, &["devices", "list", key_id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(after["devices"][0]["status"], "revoked");

    let out = cli(&db, &["devices", "approve", "dev_nope"]).await;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("device dev_nope not found"), "{out:?}");

    let audit = store.list_audit(0, 100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|r| r.entry.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "integrity.enable",
            "key.create",
            "device.approve",
            "device.revoke"
        ]
    );
    assert!(audit[1..].iter().all(|r| r.entry.actor == "cli"));
}

async fn usage_counts_devices_exchanges_and_alerts(db: TestDb) {
    let app = spawn_app(&db).await;
    let k = app.create_key(key_body("used")).await;
    let key_id = k["key_id"].as_str().unwrap();
    let fresh = expect_json(
        app.admin_get(&format!("/keys/{key_id}/usage")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(fresh["devices"]["total"], 0);
    assert_eq!(fresh["exchanges"], 0);
    assert_eq!(fresh["last_device_seen_at"], serde_json::Value::Null);
    assert_eq!(fresh["alerts_last_24h"], json!({}));

    let t = now();
    let mut a = device(key_id, 1, t - 100);
    a.exchange_count = 3;
    a.trust_level = keybound::devices::TrustLevel::Trusted;
    let mut b = device(key_id, 2, t - 50);
    b.exchange_count = 4;
    for d in [&a, &b] {
        app.store
            .enroll_device(d, EnrollLimits::max_devices(5))
            .await
            .unwrap();
    }
    app.admin_post(&format!("/devices/{}/revoke", b.device_id), json!({}))
        .await;
    for (id, at, kind) in [
        ("x1", t - 10, "NEW_DEVICE"),
        ("x2", t - 5, "NEW_DEVICE"),
        ("x3", t - 3, "DPOP_REPLAY"),
        ("old", t - 90_000, "NEW_DEVICE"),
    ] {
        let alert = AlertRecord {
            id: id.into(),
            at,
            kind: kind.into(),
            severity: "warning".into(),
            key_id: Some(key_id.into()),
            device_id: None,
            ip: None,
            details: json!({}),
        };
        app.store.insert_alert(&alert).await.unwrap();
    }

    let usage = expect_json(
        app.admin_get(&format!("/keys/{key_id}/usage")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        usage["devices"],
        json!({"total": 2, "active": 1, "revoked": 1, "trusted": 1, "max": 5})
    );
    assert_eq!(usage["exchanges"], 7);
    assert_eq!(
        usage["alerts_last_24h"],
        json!({"NEW_DEVICE": 2, "DPOP_REPLAY": 1}),
        "older alerts not counted"
    );
    assert!(usage["last_device_seen_at"].as_i64().unwrap() >= t - 50);
    assert_eq!(usage["status"], "active");
    expect_error(
        app.admin_get("/keys/ak_test_AAAAAAAAAAAA/usage").await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "usage of an unknown key",
    )
    .await;
}
