//! Key lifecycle as the token endpoint sees it: a rotated key works until its grace period
//! ends; suspension and revocation through the API are in force at once, through the CLI
//! (another process, behind the validation cache) within 5 s; a key made by the CLI works at
//! once; a device revoked by the CLI is refused within 5 s even while it keeps exchanging, and
//! one approved by the CLI is trusted, its fingerprint re-baselined, however busy it is.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDb, cli, expect_json, key_body, spawn_app, spawn_app_args};
use crate::on_both_backends;
use crate::proofs::Device;
use crate::token::{exchange, ios};

on_both_backends!(
    rotation_grace_period,
    status_changes_are_in_force,
    cli_device_revocation_is_in_force_while_the_device_keeps_exchanging,
    cli_approval_of_a_device_in_use_is_kept
);

/// The status of a token exchange with `key` (a fresh proof each time).
async fn exchange_status(app: &TestApp, key: &str, dev: &Device) -> StatusCode {
    let res = exchange(app, key, dev, json!({})).await;
    let status = res.status();
    if status != StatusCode::OK {
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "INVALID_API_KEY", "{body}");
    }
    status
}

/// Waits until an exchange with `key` answers `want`; the validation cache serves a record
/// for at most 5 s.
async fn eventually(app: &TestApp, key: &str, dev: &Device, want: StatusCode, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(7);
    loop {
        let got = exchange_status(app, key, dev).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{why}: still {got} after 7 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn rotate(app: &TestApp, key_id: &str, grace: i64) -> Value {
    let res = app
        .admin_post(
            &format!("/keys/{key_id}/rotate"),
            json!({"grace_seconds": grace}),
        )
        .await;
    expect_json(res, StatusCode::CREATED).await
}

async fn rotation_grace_period(db: TestDb) {
    let app = spawn_app(&db).await;
    let dev = Device::new();

    // Grace 0: the old key stops at once, the new one works.
    let a = app.create_key(key_body("zero grace")).await;
    let a_key = a["key"].as_str().unwrap();
    assert_eq!(exchange_status(&app, a_key, &dev).await, StatusCode::OK);
    let a2 = rotate(&app, a["key_id"].as_str().unwrap(), 0).await;
    assert_eq!(
        exchange_status(&app, a_key, &dev).await,
        StatusCode::UNAUTHORIZED,
        "no grace"
    );
    assert_eq!(
        exchange_status(&app, a2["key"].as_str().unwrap(), &dev).await,
        StatusCode::OK
    );

    // Grace 2 s: both work, then only the new one.
    let b = app.create_key(key_body("short grace")).await;
    let (b_key, b_id) = (b["key"].as_str().unwrap(), b["key_id"].as_str().unwrap());
    let b2 = rotate(&app, b_id, 2).await;
    let b2_key = b2["key"].as_str().unwrap();
    assert_eq!(
        exchange_status(&app, b_key, &dev).await,
        StatusCode::OK,
        "old key in its grace"
    );
    assert_eq!(
        exchange_status(&app, b2_key, &dev).await,
        StatusCode::OK,
        "new key"
    );
    let old = app.get_key(b_id).await;
    assert!(old["expires_at"].as_i64().unwrap() > crate::helpers::now() - 1);

    tokio::time::sleep(Duration::from_millis(3100)).await;

    assert_eq!(
        exchange_status(&app, b_key, &dev).await,
        StatusCode::UNAUTHORIZED,
        "grace over"
    );
    assert_eq!(
        exchange_status(&app, b2_key, &dev).await,
        StatusCode::OK,
        "new key still"
    );
    let record = app.store.get_key(b_id).await.unwrap().unwrap();
    assert!(!record.usable_at(crate::helpers::now()));
}

async fn status_changes_are_in_force(db: TestDb) {
    // Polling a refused key spends the per-IP failure budget (20 a minute by default).
    let app = spawn_app_args(&db, |args| args.ip_failure_budget = 1000).await;
    let dev = Device::new();

    // Made by another process, usable at once.
    let made = cli(
        &db,
        &[
            "keys",
            "create",
            "--name",
            "cli",
            "--scopes",
            "read:users",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let (key, id) = (
        made["key"].as_str().unwrap(),
        made["key_id"].as_str().unwrap(),
    );
    assert_eq!(
        exchange_status(&app, key, &dev).await,
        StatusCode::OK,
        "CLI key usable at once"
    );

    // Through the API: at once.
    let post = |action: &str, body: Value| app.admin_post(&format!("/keys/{id}/{action}"), body);
    expect_json(post("suspend", json!({})).await, StatusCode::OK).await;
    assert_eq!(
        exchange_status(&app, key, &dev).await,
        StatusCode::UNAUTHORIZED,
        "suspended"
    );
    expect_json(post("resume", json!({})).await, StatusCode::OK).await;
    assert_eq!(
        exchange_status(&app, key, &dev).await,
        StatusCode::OK,
        "resumed"
    );

    // Through the CLI: within the validation cache's lifetime.
    cli(&db, &["keys", "suspend", id]).await.ok();
    eventually(&app, key, &dev, StatusCode::UNAUTHORIZED, "CLI suspend").await;
    cli(&db, &["keys", "resume", id]).await.ok();
    eventually(&app, key, &dev, StatusCode::OK, "CLI resume").await;

    expect_json(
        post("revoke", json!({"reason": "done"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        exchange_status(&app, key, &dev).await,
        StatusCode::UNAUTHORIZED,
        "revoked"
    );

    let other = app.create_key(key_body("revoked by CLI")).await;
    let other_key = other["key"].as_str().unwrap();
    assert_eq!(exchange_status(&app, other_key, &dev).await, StatusCode::OK);
    cli(
        &db,
        &[
            "keys",
            "revoke",
            other["key_id"].as_str().unwrap(),
            "--reason",
            "r",
        ],
    )
    .await
    .ok();
    eventually(
        &app,
        other_key,
        &dev,
        StatusCode::UNAUTHORIZED,
        "CLI revoke",
    )
    .await;
}

/// A device revoked by the CLI, directly in the database, is refused within the validation
/// cache's lifetime even while it keeps exchanging: its own exchanges, which write its history
/// through the cache, must not keep its cached record (still active) alive. A thief with a
/// cloned device key and the leaked API key would otherwise stay in by exchanging every few
/// seconds.
async fn cli_device_revocation_is_in_force_while_the_device_keeps_exchanging(db: TestDb) {
    let app = spawn_app(&db).await;
    let created = app.create_key(key_body("device revoked by the CLI")).await;
    let key = created["key"].as_str().unwrap();
    let dev = Device::new();
    let first = expect_json(exchange(&app, key, &dev, json!({})).await, StatusCode::OK).await;
    let device_id = first["device_id"].as_str().unwrap().to_owned();
    // Enrollment leaves nothing cached; the next exchange caches the record.
    for _ in 0..2 {
        expect_json(exchange(&app, key, &dev, json!({})).await, StatusCode::OK).await;
    }

    cli(&db, &["devices", "revoke", &device_id]).await.ok();
    let revoked = Instant::now();
    loop {
        let res = exchange(&app, key, &dev, json!({})).await;
        if res.status() != StatusCode::OK {
            let body: Value = res.json().await.unwrap();
            assert_eq!(body["error"]["code"], "DEVICE_REVOKED", "{body}");
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(7),
            "the revoked device still gets tokens 7 s after the CLI revoked it"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A device approved by the CLI while it keeps exchanging gets what approval promises: it is
/// trusted, and the fingerprint it presents next is its new reference. The server still holds
/// the history it scored against the old fingerprint (in its validation cache, and queued for
/// its next write): neither may undo the approval, by writing the old fingerprint back or by
/// scoring against it.
async fn cli_approval_of_a_device_in_use_is_kept(db: TestDb) {
    let app = spawn_app(&db).await;
    let created = app.create_key(key_body("device approved by the CLI")).await;
    let (key, key_id) = (
        created["key"].as_str().unwrap(),
        created["key_id"].as_str().unwrap(),
    );
    let dev = Device::new();
    let level = async |install_id: &str| -> Value {
        let res = exchange(&app, key, &dev, json!({"device": ios(install_id)})).await;
        expect_json(res, StatusCode::OK).await["trust"]["level"].clone()
    };
    assert_eq!(level("a").await, "limited", "a new device");
    // Reinstalled: its install id changed, a stable-attribute mismatch.
    assert_eq!(level("b").await, "limited");
    let listed = cli(&db, &["devices", "list", key_id, "--json"])
        .await
        .ok()
        .json();
    let device_id = listed["devices"][0]["device_id"]
        .as_str()
        .unwrap()
        .to_owned();

    cli(&db, &["devices", "approve", &device_id]).await.ok();
    let approved = Instant::now();
    while level("b").await != "trusted" {
        assert!(
            approved.elapsed() < Duration::from_secs(7),
            "the approved device is still scored against its old fingerprint 7 s later"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Past the server's next history writes (about a second): the device stays trusted, and
    // storage holds the new reference, not the old one, with the mismatch forgiven.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(level("b").await, "trusted");
    let deadline = Instant::now() + Duration::from_secs(7);
    loop {
        let listed = cli(&db, &["devices", "list", key_id, "--json"])
            .await
            .ok()
            .json();
        let d = listed["devices"][0].clone();
        assert_eq!(d["approved"], true, "{d}");
        if d["attributes"]["install_id"] == "b"
            && d["mismatch_count"] == 0
            && d["trust_level"] == "trusted"
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "storage does not hold the approved device's new reference: {d}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
