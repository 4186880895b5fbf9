//! `--auto-suspend-on` (issue 5): each containing alert kind, raised by its real scenario,
//! suspends the key or revokes the device, and the audit log says the system did it.

use std::time::Duration;

use keybound::alerts::AlertKind;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDb, expect_error, expect_json, spawn_app_args};
use crate::proofs::Device;
use crate::token::{exchange, exchange_with_proof, ios, new_key, refresh};

async fn app_containing(db: &TestDb, kinds: &[AlertKind]) -> TestApp {
    let kinds = kinds.to_vec();
    spawn_app_args(db, move |a| a.auto_suspend_on = kinds).await
}

/// Polls `check` for up to 2 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "{what} within 2 s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn key_status(app: &TestApp, key_id: &str) -> String {
    app.get_key(key_id).await["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn devices(app: &TestApp, key_id: &str) -> Vec<Value> {
    let body = expect_json(
        app.admin_get(&format!("/keys/{key_id}/devices")).await,
        StatusCode::OK,
    )
    .await;
    body["devices"].as_array().unwrap().clone()
}

/// The audit rows written by the system.
async fn system_audit(app: &TestApp) -> Vec<Value> {
    let body = expect_json(app.admin_get("/audit?limit=1000").await, StatusCode::OK).await;
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "system" && e["action"] != "integrity.enable")
        .cloned()
        .collect()
}

async fn get(app: &TestApp, path_and_query: &str) -> reqwest::Response {
    app.client
        .get(app.url(path_and_query))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_in_a_url_suspends_the_key_with_an_audit_row() {
    let db = TestDb::sqlite().await;
    let app = app_containing(&db, &[AlertKind::KeyInUrl]).await;
    let (key, key_id) = new_key(&app, json!({})).await;

    expect_error(
        get(&app, &format!("/healthz?api_key={key}")).await,
        StatusCode::BAD_REQUEST,
        "API_KEY_IN_URL",
        "key in URL",
    )
    .await;
    eventually("key suspended", || async {
        key_status(&app, &key_id).await == "suspended"
    })
    .await;
    assert_eq!(
        app.get_key(&key_id).await["status_reason"],
        "auto-suspended: KEY_IN_URL"
    );
    let rows = system_audit(&app).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["action"], "key.suspend");
    assert_eq!(rows[0]["target"], key_id);
    assert_eq!(rows[0]["details"]["reason"], "auto-suspended: KEY_IN_URL");

    // The key is refused from now on.
    expect_error(
        exchange(&app, &key, &Device::new(), json!({})).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
        "suspended key",
    )
    .await;

    // The same alert again: already contained, no second audit row.
    let _ = get(&app, &format!("/healthz?api_key={key}")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(system_audit(&app).await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_forged_lookalike_in_a_url_does_not_suspend_the_key() {
    let db = TestDb::sqlite().await;
    let app = app_containing(&db, &[AlertKind::KeyInUrl]).await;
    let (key, key_id) = new_key(&app, json!({})).await;
    // Right id, wrong secret, valid checksum: what anyone knowing the key id can make.
    let prefix = "sk_test_";
    let id = &key[prefix.len()..prefix.len() + 12];
    let head = format!("{prefix}{id}{}", "A".repeat(43));
    let forged = format!(
        "{head}{}",
        keybound::keys::format::checksum(head.as_bytes())
    );
    assert!(keybound::keys::ApiKey::parse(&forged).is_ok());

    let res = get(&app, &format!("/healthz?k={forged}")).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let alert = crate::alerts::wait_for_alert(&app, "KEY_IN_URL").await;
    assert_eq!(alert["details"]["secret_verified"], false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(key_status(&app, &key_id).await, "active");
    assert!(system_audit(&app).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn kinds_not_chosen_do_not_contain() {
    let db = TestDb::sqlite().await;
    let app = app_containing(&db, &[AlertKind::UsageSpike]).await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let _ = get(&app, &format!("/healthz?api_key={key}")).await;
    crate::alerts::wait_for_alert(&app, "KEY_IN_URL").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(key_status(&app, &key_id).await, "active");
    app.stop().await;
}

/// Scenarios of device-scoped kinds: each leaves the key active and revokes the device.
#[tokio::test]
async fn device_scoped_kinds_revoke_the_device_and_keep_the_key() {
    for kind in [
        AlertKind::FingerprintMismatch,
        AlertKind::DpopReplay,
        AlertKind::RefreshTokenReused,
    ] {
        let db = TestDb::sqlite().await;
        let app = app_containing(&db, &[kind]).await;
        let (key, key_id) = new_key(&app, json!({"trust_on_enroll": true})).await;
        let dev = Device::new();
        let proof = dev.proof("POST", &app.url("/v1/token"));
        let first = expect_json(
            exchange_with_proof(&app, &key, &proof, json!({"device": ios("i-1")})).await,
            StatusCode::OK,
        )
        .await;
        let device_id = first["device_id"].as_str().unwrap().to_owned();

        match kind {
            AlertKind::FingerprintMismatch => {
                let mut other = ios("i-1");
                other["attributes"]["platform"] = json!("android");
                other["attributes"]["model"] = json!("Pixel 8");
                other["attributes"]["install_id"] = json!("i-2");
                let _ = exchange(&app, &key, &dev, json!({"device": other})).await;
            }
            AlertKind::DpopReplay => {
                let res = exchange_with_proof(&app, &key, &proof, json!({})).await;
                expect_error(res, StatusCode::UNAUTHORIZED, "DPOP_REPLAY", "replay").await;
            }
            AlertKind::RefreshTokenReused => {
                let rt = first["refresh_token"].as_str().unwrap();
                assert_eq!(refresh(&app, &dev, rt).await.status(), StatusCode::OK);
                let res = refresh(&app, &dev, rt).await;
                expect_error(
                    res,
                    StatusCode::UNAUTHORIZED,
                    "REFRESH_TOKEN_REUSED",
                    "reuse",
                )
                .await;
            }
            _ => unreachable!(),
        }
        crate::alerts::wait_for_alert(&app, kind.as_str()).await;
        eventually(&format!("{}: device revoked", kind.as_str()), || async {
            devices(&app, &key_id).await[0]["status"] == "revoked"
        })
        .await;
        assert_eq!(
            key_status(&app, &key_id).await,
            "active",
            "{}",
            kind.as_str()
        );
        let rows = system_audit(&app).await;
        assert_eq!(rows.len(), 1, "{}: {rows:?}", kind.as_str());
        assert_eq!(rows[0]["action"], "device.revoke");
        assert_eq!(rows[0]["target"], device_id);
        assert_eq!(
            rows[0]["details"]["reason"],
            format!("auto-revoked: {}", kind.as_str())
        );
        // Refused from now on, even though the revocation landed mid-exchange (see below).
        expect_error(
            exchange(&app, &key, &dev, json!({"device": ios("i-1")})).await,
            StatusCode::FORBIDDEN,
            "DEVICE_REVOKED",
            kind.as_str(),
        )
        .await;
        // Another device of the same key still works.
        expect_json(
            exchange(&app, &key, &Device::new(), json!({})).await,
            StatusCode::OK,
        )
        .await;
        app.stop().await;
    }
}

/// A device revoked while one of its exchanges is in flight must stay revoked (contract 3.4:
/// in force within 1 s). The exchange's write-through of device usage
/// (`CachedStore::update_device_usage`) used to put the record it read before the
/// revocation, still active, back into the cache; it now keeps the lifecycle fields of the
/// cached record and never re-creates an evicted one. Containment of FINGERPRINT_MISMATCH
/// always hits this race (the alert is raised mid-exchange).
#[tokio::test]
async fn a_device_revoked_during_an_exchange_stays_revoked_in_the_cache() {
    use keybound::store::{AuditEntry, DeviceChange, DeviceStatus, Store};
    let db = TestDb::sqlite().await;
    let app = app_containing(&db, &[]).await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let dev = Device::new();
    expect_json(exchange(&app, &key, &dev, json!({})).await, StatusCode::OK).await;
    let cache = keybound::store::cached::CachedStore::new(db.protected_store().await, 100);

    // An exchange reads the device (active)…
    let read = cache.device(&key_id, &dev.jkt).await.unwrap().unwrap();
    // …an operator (or containment) revokes it…
    let audit = AuditEntry {
        at: 0,
        actor: "test".into(),
        action: "device.revoke".into(),
        target: Some(read.device_id.clone()),
        ip: None,
        details: json!({}),
    };
    cache
        .set_device_status(&read.device_id, DeviceChange::Revoke, 0, &audit)
        .await
        .unwrap();
    // …and the exchange then records its usage.
    cache.update_device_usage(read.clone()).await.unwrap();

    let now = cache.device(&key_id, &dev.jkt).await.unwrap().unwrap();
    assert_eq!(
        now.status,
        DeviceStatus::Revoked,
        "the cache resurrected the device"
    );

    // The same, with the revoked record read back into the cache before the exchange writes
    // its usage: the write keeps its history, but not the stale status.
    let dev2 = Device::new();
    expect_json(exchange(&app, &key, &dev2, json!({})).await, StatusCode::OK).await;
    let read = cache.device(&key_id, &dev2.jkt).await.unwrap().unwrap();
    let audit = AuditEntry {
        target: Some(read.device_id.clone()),
        ..audit
    };
    cache
        .set_device_status(&read.device_id, DeviceChange::Revoke, 0, &audit)
        .await
        .unwrap();
    let reread = cache.device(&key_id, &dev2.jkt).await.unwrap().unwrap();
    assert_eq!(reread.status, DeviceStatus::Revoked);
    let mut used = (*read).clone();
    used.exchange_count += 1;
    cache
        .update_device_usage(std::sync::Arc::new(used))
        .await
        .unwrap();
    let now = cache.device(&key_id, &dev2.jkt).await.unwrap().unwrap();
    assert_eq!(
        (now.status, now.revoked_at.is_some(), now.exchange_count),
        (DeviceStatus::Revoked, true, read.exchange_count + 1),
        "the write-through keeps the history and the revocation"
    );
    app.stop().await;
}
