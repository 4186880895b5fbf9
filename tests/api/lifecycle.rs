//! Key lifecycle as the token endpoint sees it: a rotated key works until its grace period
//! ends; suspension and revocation through the API are in force at once, through the CLI
//! (another process, behind the validation cache) within 5 s; a key made by the CLI works at
//! once.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDb, cli, expect_json, key_body, spawn_app, spawn_app_args};
use crate::on_both_backends;
use crate::proofs::Device;
use crate::token::exchange;

on_both_backends!(rotation_grace_period, status_changes_are_in_force);

/// What the token endpoint made of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Accepted,
    /// `INVALID_API_KEY`; or `RATE_LIMITED` once the refusals have spent the key id's failure
    /// budget (which never refuses the right secret of a usable key).
    Refused,
}
use Outcome::{Accepted, Refused};

/// Exchanges `key` for a token (a fresh proof each time).
async fn exchange_outcome(app: &TestApp, key: &str, dev: &Device) -> Outcome {
    let res = exchange(app, key, dev, json!({})).await;
    let status = res.status();
    if status == StatusCode::OK {
        return Accepted;
    }
    let body: Value = res.json().await.unwrap();
    let code = body["error"]["code"].as_str().unwrap_or_default();
    assert!(
        matches!(
            (status, code),
            (StatusCode::UNAUTHORIZED, "INVALID_API_KEY")
                | (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED")
        ),
        "{status}: {body}"
    );
    Refused
}

/// Waits until exchanges with `key` come out as `want`; the validation cache serves a record
/// for at most 5 s.
async fn eventually(app: &TestApp, key: &str, dev: &Device, want: Outcome, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(7);
    loop {
        let got = exchange_outcome(app, key, dev).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "{why}: still {got:?} after 7 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
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
    assert_eq!(exchange_outcome(&app, a_key, &dev).await, Accepted);
    let a2 = rotate(&app, a["key_id"].as_str().unwrap(), 0).await;
    assert_eq!(
        exchange_outcome(&app, a_key, &dev).await,
        Refused,
        "no grace"
    );
    assert_eq!(
        exchange_outcome(&app, a2["key"].as_str().unwrap(), &dev).await,
        Accepted
    );

    // Grace 2 s: both work, then only the new one.
    let b = app.create_key(key_body("short grace")).await;
    let (b_key, b_id) = (b["key"].as_str().unwrap(), b["key_id"].as_str().unwrap());
    let b2 = rotate(&app, b_id, 2).await;
    let b2_key = b2["key"].as_str().unwrap();
    assert_eq!(
        exchange_outcome(&app, b_key, &dev).await,
        Accepted,
        "old key in its grace"
    );
    assert_eq!(
        exchange_outcome(&app, b2_key, &dev).await,
        Accepted,
        "new key"
    );
    let old = app.get_key(b_id).await;
    assert!(old["expires_at"].as_i64().unwrap() > crate::helpers::now() - 1);

    tokio::time::sleep(Duration::from_millis(3100)).await;

    assert_eq!(
        exchange_outcome(&app, b_key, &dev).await,
        Refused,
        "grace over"
    );
    assert_eq!(
        exchange_outcome(&app, b2_key, &dev).await,
        Accepted,
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
        exchange_outcome(&app, key, &dev).await,
        Accepted,
        "CLI key usable at once"
    );

    // Through the API: at once.
    let post = |action: &str, body: Value| app.admin_post(&format!("/keys/{id}/{action}"), body);
    expect_json(post("suspend", json!({})).await, StatusCode::OK).await;
    assert_eq!(
        exchange_outcome(&app, key, &dev).await,
        Refused,
        "suspended"
    );
    expect_json(post("resume", json!({})).await, StatusCode::OK).await;
    assert_eq!(exchange_outcome(&app, key, &dev).await, Accepted, "resumed");

    // Through the CLI: within the validation cache's lifetime.
    cli(&db, &["keys", "suspend", id]).await.ok();
    eventually(&app, key, &dev, Refused, "CLI suspend").await;
    cli(&db, &["keys", "resume", id]).await.ok();
    eventually(&app, key, &dev, Accepted, "CLI resume").await;

    expect_json(
        post("revoke", json!({"reason": "done"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(exchange_outcome(&app, key, &dev).await, Refused, "revoked");

    let other = app.create_key(key_body("revoked by CLI")).await;
    let other_key = other["key"].as_str().unwrap();
    assert_eq!(exchange_outcome(&app, other_key, &dev).await, Accepted);
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
    eventually(&app, other_key, &dev, Refused, "CLI revoke").await;
}
