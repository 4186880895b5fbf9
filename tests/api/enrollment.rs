//! Trust a leaked key cannot earn (issue 17): the hourly enrollment budget, the replacement of
//! stale devices at `max_devices`, refreshes that no longer earn trust, `NEW_DEVICE` as a
//! warning next to a trusted device, and (issue 15 item 15) the fingerprint an approval
//! re-baselines taken only from a network the device used before.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::alerts::wait_for_alert;
use crate::helpers::{TestApp, TestDb, expect_error, expect_json, now, spawn_app, spawn_app_args};
use crate::on_both_backends;
use crate::proofs::Device;
use crate::token::{exchange, ios, new_key, refresh};

on_both_backends!(
    revoke_and_re_enroll_stops_at_the_hourly_budget,
    a_stale_limited_device_is_replaced_at_max_devices,
    refreshes_do_not_earn_trust,
    a_new_device_next_to_a_trusted_one_is_a_warning,
    after_approval_the_baseline_comes_only_from_a_known_network,
);

async fn devices(app: &TestApp, key_id: &str) -> Vec<Value> {
    let list = expect_json(
        app.admin_get(&format!("/keys/{key_id}/devices")).await,
        StatusCode::OK,
    )
    .await;
    list["devices"].as_array().unwrap().clone()
}

async fn revoke_device(app: &TestApp, device_id: &str) {
    expect_json(
        app.admin_post(&format!("/devices/{device_id}/revoke"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
}

/// A leaked key's holder revokes nothing, but an operator revoking the attacker's devices
/// used to free their slots at once: the next device key enrolled, forever. Now the key
/// enrolls at most `max_devices` new devices an hour (revoked ones count).
async fn revoke_and_re_enroll_stops_at_the_hourly_budget(db: TestDb) {
    let app = spawn_app(&db).await;
    let (key, key_id) = new_key(&app, json!({"max_devices": 2})).await;
    for _ in 0..2 {
        let dev = Device::new();
        let t = expect_json(exchange(&app, &key, &dev, json!({})).await, StatusCode::OK).await;
        revoke_device(&app, t["device_id"].as_str().unwrap()).await;
    }
    // Both slots are free again, but the hour's budget (max_devices = 2) is spent.
    let third = Device::new();
    let res = exchange(&app, &key, &third, json!({})).await;
    assert!(res.headers().contains_key("retry-after"));
    expect_error(
        res,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "a third enrollment within the hour",
    )
    .await;
    let alert = wait_for_alert(&app, "ENROLLMENT_BURST").await;
    assert_eq!(alert["key_id"], key_id.as_str());
    assert_eq!(alert["severity"], "warning");
    assert_eq!(devices(&app, &key_id).await.len(), 2, "nothing enrolled");

    // An hour later the budget is back (the enrollments are aged in storage).
    db.execute(&format!(
        "UPDATE devices SET created_at = {} WHERE key_id = '{key_id}'",
        now() - 3601
    ))
    .await;
    expect_json(
        exchange(&app, &key, &third, json!({})).await,
        StatusCode::OK,
    )
    .await;
}

/// At `max_devices`, a new device takes the place of the one that stayed limited and unused
/// the longest beyond the idle time, instead of `DEVICE_LIMIT_REACHED`; a recent, an approved
/// or a trusted device is never replaced.
async fn a_stale_limited_device_is_replaced_at_max_devices(db: TestDb) {
    let app = spawn_app(&db).await;
    let (key, key_id) = new_key(&app, json!({"max_devices": 2})).await;
    let (old, recent) = (Device::new(), Device::new());
    let mut ids = vec![];
    for dev in [&old, &recent] {
        let t = expect_json(
            exchange(&app, &key, dev, json!({"device": ios("i")})).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(t["trust"]["level"], "limited");
        ids.push(t["device_id"].as_str().unwrap().to_owned());
    }
    // Full, nothing stale: refused as before.
    let newcomer = Device::new();
    expect_error(
        exchange(&app, &key, &newcomer, json!({})).await,
        StatusCode::FORBIDDEN,
        "DEVICE_LIMIT_REACHED",
        "no device idle for 7 days",
    )
    .await;

    // The first device enrolled 30 days ago and was last used 8 days ago (default idle: 7).
    db.execute(&format!(
        "UPDATE devices SET created_at = {}, last_seen_at = {} WHERE device_id = '{}'",
        now() - 30 * 86_400,
        now() - 8 * 86_400,
        ids[0]
    ))
    .await;
    let t = expect_json(
        exchange(&app, &key, &newcomer, json!({})).await,
        StatusCode::OK,
    )
    .await;
    let alert = new_device_alert(&app, &t["device_id"]).await;
    assert_eq!(alert["details"]["replaced_device_id"], ids[0].as_str());
    let listed = devices(&app, &key_id).await;
    let status = |id: &str| {
        listed
            .iter()
            .find(|d| d["device_id"] == id)
            .map(|d| d["status"].clone())
            .unwrap()
    };
    assert_eq!(status(&ids[0]), "revoked", "the stale device was replaced");
    assert_eq!(status(&ids[1]), "active");
    // The replaced device is revoked for good, on this instance's cache too.
    expect_error(
        exchange(&app, &key, &old, json!({"device": ios("i")})).await,
        StatusCode::FORBIDDEN,
        "DEVICE_REVOKED",
        "the replaced device",
    )
    .await;

    // An approved device is never replaced, however idle.
    expect_json(
        app.admin_post(&format!("/devices/{}/approve", ids[1]), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    db.execute(&format!(
        "UPDATE devices SET created_at = {0}, last_seen_at = {0} WHERE key_id = '{key_id}'",
        now() - 30 * 86_400,
    ))
    .await;
    // Now the newcomer is the idle limited device: it is the one replaced.
    let fourth = Device::new();
    expect_json(
        exchange(&app, &key, &fourth, json!({})).await,
        StatusCode::OK,
    )
    .await;
    let listed = devices(&app, &key_id).await;
    let approved = listed.iter().find(|d| d["device_id"] == ids[1]).unwrap();
    assert_eq!(approved["status"], "active", "approved devices stay");
    let replaced = listed
        .iter()
        .find(|d| d["device_id"] == t["device_id"])
        .unwrap();
    assert_eq!(replaced["status"], "revoked", "the idle limited one went");
}

/// A device that only refreshes proves nothing new (a refresh carries no attributes): it no
/// longer counts towards the 5 exchanges that earn `trusted`.
async fn refreshes_do_not_earn_trust(db: TestDb) {
    let app = spawn_app(&db).await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let dev = Device::new();
    let t = expect_json(
        exchange(&app, &key, &dev, json!({"device": ios("i")})).await,
        StatusCode::OK,
    )
    .await;
    let mut token = t["refresh_token"].as_str().unwrap().to_owned();
    // A day old, so only the exchange count stands between it and `trusted`.
    db.execute(&format!(
        "UPDATE devices SET created_at = {} WHERE key_id = '{key_id}'",
        now() - 2 * 86_400
    ))
    .await;
    for i in 0..6 {
        let r = expect_json(refresh(&app, &dev, &token).await, StatusCode::OK).await;
        assert_eq!(r["trust"]["level"], "limited", "refresh {i}");
        token = r["refresh_token"].as_str().unwrap().to_owned();
    }
    let listed = devices(&app, &key_id).await;
    assert_eq!(listed[0]["exchange_count"], 1, "refreshes are not counted");
}

/// `NEW_DEVICE` is news for a key's first device, and a warning once the key already has a
/// trusted device: the key may be in a second pair of hands.
async fn a_new_device_next_to_a_trusted_one_is_a_warning(db: TestDb) {
    let app = spawn_app(&db).await;
    // trust_on_enroll: the first device is trusted from its first exchange.
    let (key, _) = new_key(&app, json!({"trust_on_enroll": true})).await;
    let first = expect_json(
        exchange(&app, &key, &Device::new(), json!({})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(first["trust"]["level"], "trusted");
    let alert = new_device_alert(&app, &first["device_id"]).await;
    assert_eq!(alert["severity"], "info", "no trusted device before it");

    let second = expect_json(
        exchange(&app, &key, &Device::new(), json!({})).await,
        StatusCode::OK,
    )
    .await;
    let alert = new_device_alert(&app, &second["device_id"]).await;
    assert_eq!(
        alert["severity"], "warning",
        "the key already had a trusted device"
    );
}

/// The `NEW_DEVICE` alert of `device_id`, waiting up to 1 s for it.
async fn new_device_alert(app: &TestApp, device_id: &Value) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let list = expect_json(
            app.admin_get("/alerts?kind=NEW_DEVICE").await,
            StatusCode::OK,
        )
        .await;
        if let Some(a) = list["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| &a["device_id"] == device_id)
        {
            return a.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no NEW_DEVICE alert for {device_id}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn exchange_from(app: &TestApp, ip: &str, key: &str, dev: &Device, body: Value) -> Value {
    let res = app
        .client
        .post(app.url("/v1/token"))
        .header("X-API-Key", key)
        .header("DPoP", dev.proof("POST", &app.url("/v1/token")))
        .header("X-Forwarded-For", ip)
        .json(&body)
        .send()
        .await
        .unwrap();
    expect_json(res, StatusCode::OK).await
}

/// After `approve` the fingerprint is blank and the next presenter's attributes become the
/// reference: only from a network the device used before, so a copied key presenting from
/// elsewhere cannot make its own fingerprint the baseline.
async fn after_approval_the_baseline_comes_only_from_a_known_network(db: TestDb) {
    let app = spawn_app_args(&db, |a| {
        a.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let dev = Device::new();
    let t = exchange_from(&app, "203.0.113.5", &key, &dev, json!({"device": ios("a")})).await;
    let device_id = t["device_id"].as_str().unwrap();
    expect_json(
        app.admin_post(&format!("/devices/{device_id}/approve"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;

    // From a network this device never used: served (approved), but not the new reference.
    exchange_from(
        &app,
        "198.51.100.7",
        &key,
        &dev,
        json!({"device": ios("b")}),
    )
    .await;
    let d = &devices(&app, &key_id).await[0];
    assert_eq!(d["attributes"], json!({}), "no baseline from a new network");

    // From a network it used before: the baseline.
    exchange_from(&app, "203.0.113.9", &key, &dev, json!({"device": ios("c")})).await;
    let d = &devices(&app, &key_id).await[0];
    assert_eq!(d["attributes"]["install_id"], "c");
}
