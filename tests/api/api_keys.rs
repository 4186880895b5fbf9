//! The key lifecycle through the admin API: create, list (paginated), show, patch, suspend,
//! resume, revoke, rotate and the rotation grace period.

use keybound::keys::ApiKey;
use keybound::store::AlertRecord;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestDb, expect_error, expect_json, key_body, now, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    create_answers_the_plaintext_once_with_the_metadata,
    invalid_create_bodies_are_refused,
    list_is_paginated_by_key_id,
    show_and_patch,
    suspend_resume_revoke,
    rotation_keeps_settings_and_sets_the_grace_period,
    admin_changes_are_audited_as_admin_api_with_the_client_ip,
    alerts_are_filtered_newest_first,
);

async fn create_answers_the_plaintext_once_with_the_metadata(db: TestDb) {
    let app = spawn_app(&db).await;
    let body = json!({
        "name": "billing backend",
        "description": "nightly jobs",
        "scopes": ["read:users", "write:orders"],
        "env": "prod",
        "expires_in_days": 30,
        "rate_limit_per_minute": 120,
        "allowed_ips": ["10.0.0.0/8", "192.168.1.7"],
        "allowed_origins": ["https://App.example.com/"],
        "max_devices": 3,
        "limited_scopes": ["read:users"],
        "trust_on_enroll": true,
    });

    let res = app.admin_post("/keys", body).await;

    assert_eq!(res.headers()["cache-control"], "no-store");
    let v = expect_json(res, StatusCode::CREATED).await;
    let key = ApiKey::parse(v["key"].as_str().expect("key")).expect("a valid key");
    assert_eq!(v["key_id"], key.id().as_str());
    assert!(v["key_id"].as_str().unwrap().starts_with("ak_prod_"));
    assert_eq!(v["name"], "billing backend");
    assert_eq!(v["description"], "nightly jobs");
    assert_eq!(v["scopes"], json!(["read:users", "write:orders"]));
    assert_eq!(v["limited_scopes"], json!(["read:users"]));
    assert_eq!(v["rate_limit_per_minute"], 120);
    assert_eq!(v["allowed_ips"], json!(["10.0.0.0/8", "192.168.1.7/32"]));
    assert_eq!(v["allowed_origins"], json!(["https://app.example.com"]));
    assert_eq!(v["max_devices"], 3);
    assert_eq!(v["trust_on_enroll"], true);
    assert_eq!(v["status"], "active");
    let created = v["created_at"].as_i64().unwrap();
    assert!((now() - created).abs() < 10);
    assert_eq!(v["expires_at"].as_i64().unwrap(), created + 30 * 86_400);

    // Defaults: 90 days, 600/min, 5 devices, prod.
    let d = app
        .create_key(json!({"name": "defaults", "scopes": ["read:x"]}))
        .await;
    assert!(d["key"].as_str().unwrap().starts_with("sk_prod_"));
    assert_eq!(
        d["expires_at"].as_i64().unwrap() - d["created_at"].as_i64().unwrap(),
        90 * 86_400
    );
    assert_eq!(d["rate_limit_per_minute"], 600);
    assert_eq!(d["max_devices"], 5);
    assert_eq!(d["limited_scopes"], Value::Null);
    // `expires_in_days: 0` never expires.
    let n = app
        .create_key(json!({"name": "forever", "scopes": ["a"], "expires_in_days": 0}))
        .await;
    assert_eq!(n["expires_at"], Value::Null);
}

async fn invalid_create_bodies_are_refused(db: TestDb) {
    let app = spawn_app(&db).await;
    let cases = [
        (json!({"scopes": ["a"]}), "missing name"),
        (json!({"name": "x"}), "missing scopes"),
        (json!({"name": "x", "scopes": []}), "empty scopes"),
        (json!({"name": "", "scopes": ["a"]}), "empty name"),
        (
            json!({"name": "x", "scopes": ["a b"]}),
            "scope with a space",
        ),
        (
            json!({"name": "x", "scopes": ["a"], "env": "live"}),
            "unknown env",
        ),
        (
            json!({"name": "x", "scopes": ["a"], "allowed_ips": ["10.0.0.300/8"]}),
            "bad CIDR",
        ),
        (
            json!({"name": "x", "scopes": ["a"], "allowed_origins": ["ftp://x"]}),
            "bad origin",
        ),
        (
            json!({"name": "x", "scopes": ["a"], "max_devices": 0}),
            "zero devices",
        ),
        (
            json!({"name": "x", "scopes": ["a"], "rate_limit_per_minute": -1}),
            "negative rate",
        ),
        (
            json!({"name": "x", "scopes": ["a"], "expires_in_days": -1}),
            "negative expiry",
        ),
        (json!({"name": "x", "scopes": "a"}), "scopes not an array"),
        (
            json!({"name": "x", "scopes": ["a"], "secret": "s"}),
            "unknown field",
        ),
        (json!([1, 2]), "not an object"),
    ];
    for (body, why) in cases {
        let res = app.admin_post("/keys", body).await;
        expect_error(res, StatusCode::BAD_REQUEST, "INVALID_REQUEST", why).await;
    }
    let list = expect_json(app.admin_get("/keys").await, StatusCode::OK).await;
    assert_eq!(list["keys"], json!([]), "nothing was created");
}

async fn list_is_paginated_by_key_id(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let v = app.create_key(key_body(&format!("k{i}"))).await;
        ids.push(v["key_id"].as_str().unwrap().to_owned());
    }
    ids.sort();

    let all = expect_json(app.admin_get("/keys").await, StatusCode::OK).await;
    let listed: Vec<&str> = all["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ids, "default page holds all five, ordered by id");
    assert_eq!(all["next"], Value::Null);

    let mut seen = Vec::new();
    let mut pages = 0;
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/keys?limit=2&after={a}"),
            None => "/keys?limit=2".into(),
        };
        let page = expect_json(app.admin_get(&path).await, StatusCode::OK).await;
        pages += 1;
        let keys = page["keys"].as_array().unwrap();
        assert!(keys.len() <= 2);
        seen.extend(
            keys.iter()
                .map(|k| k["key_id"].as_str().unwrap().to_owned()),
        );
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    assert_eq!(pages, 3, "2 + 2 + 1");

    // An exactly full last page does not announce another one.
    let page = expect_json(app.admin_get("/keys?limit=5").await, StatusCode::OK).await;
    assert_eq!(page["next"], Value::Null);

    let bad = [
        ("/keys?limit=0", "zero"),
        ("/keys?limit=1001", "above the maximum"),
        ("/keys?limit=ten", "not a number"),
        ("/keys?after=nonsense", "cursor that is not a key id"),
        ("/keys?colour=blue", "unknown parameter"),
    ];
    for (path, why) in bad {
        expect_error(
            app.admin_get(path).await,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            why,
        )
        .await;
    }
    let max = expect_json(app.admin_get("/keys?limit=1000").await, StatusCode::OK).await;
    assert_eq!(max["keys"].as_array().unwrap().len(), 5);
}

async fn show_and_patch(db: TestDb) {
    let app = spawn_app(&db).await;
    let v = app.create_key(key_body("before")).await;
    let id = v["key_id"].as_str().unwrap();

    let shown = app.get_key(id).await;
    assert_eq!(shown["name"], "before");
    assert!(
        shown.get("key").is_none(),
        "show never carries the plaintext"
    );

    let res = app
        .admin_patch(
            &format!("/keys/{id}"),
            json!({
                "name": "after",
                "description": "now described",
                "scopes": ["read:users"],
                "allowed_ips": ["127.0.0.1"],
                "max_devices": 9,
                "expires_at": null,
            }),
        )
        .await;
    let patched = expect_json(res, StatusCode::OK).await;
    assert_eq!(patched["name"], "after");
    assert_eq!(patched["description"], "now described");
    assert_eq!(patched["scopes"], json!(["read:users"]));
    assert_eq!(patched["allowed_ips"], json!(["127.0.0.1/32"]));
    assert_eq!(patched["max_devices"], 9);
    assert_eq!(patched["expires_at"], Value::Null);
    assert_eq!(app.get_key(id).await, patched, "the patch is stored");

    let res = app
        .admin_patch(&format!("/keys/{id}"), json!({"description": null}))
        .await;
    assert_eq!(
        expect_json(res, StatusCode::OK).await["description"],
        Value::Null
    );

    let bad = [
        (json!({"scopes": []}), "empty scopes"),
        (json!({"allowed_ips": ["nope"]}), "bad CIDR"),
        (
            json!({"key_id": "ak_test_AAAAAAAAAAAA"}),
            "the id is not patchable",
        ),
        (
            json!({"status": "active"}),
            "status changes have their own routes",
        ),
    ];
    for (body, why) in bad {
        let res = app.admin_patch(&format!("/keys/{id}"), body).await;
        expect_error(res, StatusCode::BAD_REQUEST, "INVALID_REQUEST", why).await;
    }
    let res = app
        .admin_patch("/keys/ak_test_AAAAAAAAAAAA", json!({"name": "x"}))
        .await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND", "patch unknown key").await;
    expect_error(
        app.admin_get("/keys/ak_test_AAAAAAAAAAAA").await,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "show unknown key",
    )
    .await;
}

async fn suspend_resume_revoke(db: TestDb) {
    let app = spawn_app(&db).await;
    let v = app.create_key(key_body("k")).await;
    let id = v["key_id"].as_str().unwrap();
    let post = |action: &str, body: Value| app.admin_post(&format!("/keys/{id}/{action}"), body);

    let s = expect_json(post("suspend", json!({})).await, StatusCode::OK).await;
    assert_eq!(s["status"], "suspended");
    // An empty body (no content type at all) is fine where the body is optional.
    let res = app
        .admin(reqwest::Method::POST, &format!("/keys/{id}/resume"))
        .send()
        .await
        .unwrap();
    let r = expect_json(res, StatusCode::OK).await;
    assert_eq!(r["status"], "active");
    let s = expect_json(
        post("suspend", json!({"reason": "investigating"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(s["status_reason"], "investigating");

    expect_error(
        post("revoke", json!({})).await,
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        "revoke needs a reason",
    )
    .await;
    let rv = expect_json(
        post("revoke", json!({"reason": "leaked in a log"})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(rv["status"], "revoked");
    assert_eq!(rv["status_reason"], "leaked in a log");
    assert!(rv["status_changed_at"].as_i64().is_some());

    for action in ["resume", "suspend"] {
        expect_error(
            post(action, json!({})).await,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            &format!("{action} after revoke: revocation is final"),
        )
        .await;
    }
    expect_error(
        post("rotate", json!({})).await,
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        "rotating a revoked key",
    )
    .await;
    assert_eq!(app.get_key(id).await["status"], "revoked");

    for (action, body) in [
        ("suspend", json!({})),
        ("resume", json!({})),
        ("revoke", json!({"reason": "x"})),
        ("rotate", json!({})),
    ] {
        let res = app
            .admin_post(&format!("/keys/ak_test_AAAAAAAAAAAA/{action}"), body)
            .await;
        expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND", action).await;
    }
}

async fn rotation_keeps_settings_and_sets_the_grace_period(db: TestDb) {
    let app = spawn_app(&db).await;
    let old = app
        .create_key(json!({
            "name": "rotating", "scopes": ["read:a", "write:b"], "env": "dev",
            "max_devices": 2, "allowed_ips": ["10.1.0.0/16"], "trust_on_enroll": true,
        }))
        .await;
    let old_id = old["key_id"].as_str().unwrap();

    let before = now();
    let res = app
        .admin_post(
            &format!("/keys/{old_id}/rotate"),
            json!({"grace_seconds": 600}),
        )
        .await;
    assert_eq!(res.headers()["cache-control"], "no-store");
    let new = expect_json(res, StatusCode::CREATED).await;

    let new_key = ApiKey::parse(new["key"].as_str().unwrap()).expect("valid new key");
    assert_eq!(new["key_id"], new_key.id().as_str());
    assert_ne!(new["key_id"], old["key_id"]);
    assert_ne!(new["key"], old["key"]);
    assert!(new_key.expose().starts_with("sk_dev_"), "same env");
    for field in [
        "name",
        "scopes",
        "max_devices",
        "allowed_ips",
        "trust_on_enroll",
        "env",
    ] {
        assert_eq!(new[field], old[field], "{field} carried over");
    }
    assert_eq!(new["rotated_from"], old["key_id"]);
    assert_eq!(new["status"], "active");

    let old_now = app.get_key(old_id).await;
    assert_eq!(old_now["rotated_to"], new["key_id"]);
    assert_eq!(
        old_now["status"], "active",
        "still usable during the grace period"
    );
    let old_expiry = old_now["expires_at"].as_i64().unwrap();
    assert!(
        (before + 600..=now() + 600).contains(&old_expiry),
        "old key expires after the grace: {old_expiry}"
    );
    assert_eq!(new["old_key_expires_at"], old_expiry);

    let again = app
        .admin_post(&format!("/keys/{old_id}/rotate"), json!({}))
        .await;
    expect_error(
        again,
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        "an already rotated key cannot be rotated again",
    )
    .await;

    // Default grace: 24 hours.
    let other = app.create_key(key_body("default grace")).await;
    let other_id = other["key_id"].as_str().unwrap();
    let before = now();
    let res = app
        .admin(reqwest::Method::POST, &format!("/keys/{other_id}/rotate"))
        .send()
        .await
        .unwrap();
    expect_json(res, StatusCode::CREATED).await;
    let e = app.get_key(other_id).await["expires_at"].as_i64().unwrap();
    assert!((before + 86_400..=now() + 86_400).contains(&e), "{e}");

    for (grace, why) in [(json!(-1), "negative"), (json!("soon"), "not a number")] {
        let k = app.create_key(key_body("bad grace")).await;
        let res = app
            .admin_post(
                &format!("/keys/{}/rotate", k["key_id"].as_str().unwrap()),
                json!({ "grace_seconds": grace }),
            )
            .await;
        expect_error(res, StatusCode::BAD_REQUEST, "INVALID_REQUEST", why).await;
    }
}

async fn admin_changes_are_audited_as_admin_api_with_the_client_ip(db: TestDb) {
    let app = spawn_app(&db).await;
    let v = app.create_key(key_body("audited")).await;
    let id = v["key_id"].as_str().unwrap();
    expect_json(
        app.admin_post(&format!("/keys/{id}/suspend"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    expect_json(
        app.admin_post(&format!("/keys/{id}/revoke"), json!({"reason": "done"}))
            .await,
        StatusCode::OK,
    )
    .await;

    let log = expect_json(app.admin_get("/audit").await, StatusCode::OK).await;
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(
        entries[0]["action"], "integrity.enable",
        "the first start's row"
    );
    let entries = &entries[1..];
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["key.create", "key.suspend", "key.revoke"]);
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"], i as i64 + 2);
        assert_eq!(e["actor"], "admin-api");
        assert_eq!(e["ip"], "127.0.0.1");
        assert_eq!(e["target"], id);
        assert_eq!(e["hash"].as_str().unwrap().len(), 64, "hex SHA-256");
    }
    assert_eq!(entries[1]["prev_hash"], entries[0]["hash"], "chained");
    assert_eq!(entries[2]["details"]["reason"], "done");
    assert_eq!(log["next"], Value::Null);

    let page = expect_json(app.admin_get("/audit?limit=2").await, StatusCode::OK).await;
    assert_eq!(page["entries"].as_array().unwrap().len(), 2);
    assert_eq!(page["next"], 2);
    let rest = expect_json(app.admin_get("/audit?after=2").await, StatusCode::OK).await;
    assert_eq!(rest["entries"][0]["seq"], 3);
    assert_eq!(rest["next"], Value::Null);

    let alerts = expect_json(app.admin_get("/alerts").await, StatusCode::OK).await;
    assert_eq!(alerts["alerts"], json!([]));
}

async fn alerts_are_filtered_newest_first(db: TestDb) {
    let app = spawn_app(&db).await;
    let alert = |id: &str, at: i64, kind: &str, key: Option<&str>| AlertRecord {
        id: id.into(),
        at,
        kind: kind.into(),
        severity: "warning".into(),
        key_id: key.map(Into::into),
        device_id: None,
        ip: Some("127.0.0.1".into()),
        details: json!({"why": id}),
    };
    // Recent times: alerts older than `--alert-retention-days` are purged by the server.
    let t0 = now() - 10_000;
    let k1 = "ak_test_AAAAAAAAAAAA";
    let k2 = "ak_test_BBBBBBBBBBBB";
    for a in [
        alert("a1", t0 + 1_000, "NEW_DEVICE", Some(k1)),
        alert("a2", t0 + 2_000, "DPOP_REPLAY", Some(k1)),
        alert("a3", t0 + 3_000, "NEW_DEVICE", Some(k2)),
        alert("a4", t0 + 4_000, "KEY_IN_URL", None),
    ] {
        app.store.insert_alert(&a).await.unwrap();
    }
    let ids = |v: Value| -> Vec<String> {
        v["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let cases = [
        ("/alerts", vec!["a4", "a3", "a2", "a1"], "all, newest first"),
        ("/alerts?kind=NEW_DEVICE", vec!["a3", "a1"], "by kind"),
        (&*format!("/alerts?key_id={k1}"), vec!["a2", "a1"], "by key"),
        (
            &*format!("/alerts?since={}", t0 + 2_000),
            vec!["a4", "a3", "a2"],
            "since, inclusive",
        ),
        ("/alerts?limit=1", vec!["a4"], "limited"),
        (
            &*format!("/alerts?kind=NEW_DEVICE&key_id={k2}&since=0"),
            vec!["a3"],
            "combined",
        ),
    ];
    for (path, want, why) in cases {
        let v = expect_json(app.admin_get(path).await, StatusCode::OK).await;
        assert_eq!(ids(v), want, "{why}");
    }
    expect_error(
        app.admin_get("/alerts?since=yesterday").await,
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        "since must be unix seconds",
    )
    .await;
}
