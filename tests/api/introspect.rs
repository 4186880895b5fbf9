//! Contract 9.4: `POST /v1/token/introspect` (RFC 7662) for resource servers that cannot
//! verify offline: active while signature, lifetime, key and device are good; inactive as soon
//! as the key is revoked or suspended or the device revoked; only for the right bearer.

use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, TestApp, TestDb, expect_error, expect_json, spawn_app_args};
use crate::on_both_backends;
use crate::proofs::Device;
use crate::token::{exchange, new_key};

const RS_TOKEN: &str = "resource-server-token-0123456789abcdef";
const RS_TOKEN_2: &str = "second-resource-server-token-0123456789";

async fn introspect(app: &TestApp, bearer: &str, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/token/introspect"))
        .bearer_auth(bearer)
        .form(&[("token", token), ("token_type_hint", "access_token")])
        .send()
        .await
        .expect("request")
}

async fn is_active(app: &TestApp, token: &str) -> bool {
    let v = expect_json(introspect(app, RS_TOKEN, token).await, StatusCode::OK).await;
    v["active"].as_bool().expect("active is a boolean")
}

/// Waits at most the contract's 1 s for `token` to turn inactive.
async fn turns_inactive(app: &TestApp, token: &str, why: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        if !is_active(app, token).await {
            let v = expect_json(introspect(app, RS_TOKEN, token).await, StatusCode::OK).await;
            assert_eq!(v, json!({"active": false}), "{why}: nothing but active");
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{why}: still active after 1 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn app_with_tokens(db: &TestDb) -> TestApp {
    spawn_app_args(db, |args| {
        args.introspection_tokens =
            vec![SecretString::from(RS_TOKEN), SecretString::from(RS_TOKEN_2)];
    })
    .await
}

/// A fresh key, a device's token from it, and the exchange's answer.
async fn issued(app: &TestApp) -> (String, Value, Device) {
    let (key, key_id) = new_key(app, json!({"trust_on_enroll": true})).await;
    let dev = Device::new();
    let body = expect_json(exchange(app, &key, &dev, json!({})).await, StatusCode::OK).await;
    (key_id, body, dev)
}

async fn active_tokens_carry_their_claims(db: TestDb) {
    let app = app_with_tokens(&db).await;
    let (key_id, body, dev) = issued(&app).await;
    let token = body["access_token"].as_str().unwrap();

    for bearer in [RS_TOKEN, RS_TOKEN_2, ADMIN_TOKEN] {
        let res = introspect(&app, bearer, token).await;
        assert_eq!(res.headers()["cache-control"], "no-store");
        let v = expect_json(res, StatusCode::OK).await;
        assert_eq!(v["active"], true, "{v}");
        assert_eq!(v["sub"], key_id);
        assert_eq!(v["client_id"], key_id);
        assert_eq!(v["iss"], app.url(""));
        assert_eq!(v["aud"], app.url(""));
        assert_eq!(v["scope"], "read:users write:orders");
        assert_eq!(v["token_type"], "DPoP");
        assert_eq!(v["cnf"]["jkt"], dev.jkt);
        assert_eq!(v["did"], body["device_id"]);
        assert_eq!(v["trust"], "trusted");
        let claims = crate::token::claims_of(token);
        for member in ["exp", "iat", "jti"] {
            assert_eq!(v[member], claims[member], "{member}");
        }
    }
    // JSON bodies are read too; other types are refused in the envelope.
    let res = app
        .client
        .post(app.url("/v1/token/introspect"))
        .bearer_auth(RS_TOKEN)
        .json(&json!({"token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_json(res, StatusCode::OK).await["active"], true);
    let res = app
        .client
        .post(app.url("/v1/token/introspect"))
        .bearer_auth(RS_TOKEN)
        .header("content-type", "text/plain")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap();
    expect_error(
        res,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
        "text",
    )
    .await;
    let res = app
        .client
        .post(app.url("/v1/token/introspect"))
        .bearer_auth(RS_TOKEN)
        .form(&[("token_type_hint", "access_token")])
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::BAD_REQUEST, "INVALID_REQUEST", "no token").await;

    // Not ours, or tampered with: inactive, with nothing else said.
    let mut parts: Vec<&str> = token.split('.').collect();
    let other_claims = {
        use base64::Engine;
        let mut c = crate::token::claims_of(token);
        c["scope"] = json!("admin");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string())
    };
    parts[1] = &other_claims;
    for (t, why) in [
        (parts.join("."), "tampered claims"),
        ("garbage".to_owned(), "not a JWT"),
        (
            body["refresh_token"].as_str().unwrap().to_owned(),
            "a refresh token",
        ),
    ] {
        let v = expect_json(introspect(&app, RS_TOKEN, &t).await, StatusCode::OK).await;
        assert_eq!(v, json!({"active": false}), "{why}");
    }
}

async fn wrong_bearers_are_refused(db: TestDb) {
    let app = app_with_tokens(&db).await;
    let (_, body, _) = issued(&app).await;
    let token = body["access_token"].as_str().unwrap();
    for bearer in ["wrong", "resource-server-token-0123456789abcdeX", ""] {
        expect_error(
            introspect(&app, bearer, token).await,
            StatusCode::UNAUTHORIZED,
            "INVALID_ADMIN_TOKEN",
            bearer,
        )
        .await;
    }
    let res = app
        .client
        .post(app.url("/v1/token/introspect"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    expect_error(
        res,
        StatusCode::UNAUTHORIZED,
        "INVALID_ADMIN_TOKEN",
        "no bearer",
    )
    .await;
    // The API key that minted the token is no introspection credential either.
    let (key, _) = new_key(&app, json!({})).await;
    expect_error(
        introspect(&app, &key, token).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_ADMIN_TOKEN",
        "API key",
    )
    .await;
}

async fn revocations_make_tokens_inactive_at_once(db: TestDb) {
    let app = app_with_tokens(&db).await;

    // Key suspended: inactive; resumed: active again (the token itself never changed).
    let (key_id, body, _) = issued(&app).await;
    let token = body["access_token"].as_str().unwrap();
    assert!(is_active(&app, token).await);
    expect_json(
        app.admin_post(&format!("/keys/{key_id}/suspend"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    turns_inactive(&app, token, "key suspended").await;
    expect_json(
        app.admin_post(&format!("/keys/{key_id}/resume"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(is_active(&app, token).await, "key resumed");

    // Key revoked.
    expect_json(
        app.admin_post(&format!("/keys/{key_id}/revoke"), json!({"reason": "test"}))
            .await,
        StatusCode::OK,
    )
    .await;
    turns_inactive(&app, token, "key revoked").await;

    // Device revoked: its token is inactive, another device's token of the same key is not.
    let (key, _) = new_key(&app, json!({"trust_on_enroll": true})).await;
    let (a, b) = (Device::new(), Device::new());
    let ta = expect_json(exchange(&app, &key, &a, json!({})).await, StatusCode::OK).await;
    let tb = expect_json(exchange(&app, &key, &b, json!({})).await, StatusCode::OK).await;
    let device_id = ta["device_id"].as_str().unwrap();
    expect_json(
        app.admin_post(&format!("/devices/{device_id}/revoke"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    turns_inactive(&app, ta["access_token"].as_str().unwrap(), "device revoked").await;
    assert!(
        is_active(&app, tb["access_token"].as_str().unwrap()).await,
        "the other device"
    );
}

on_both_backends!(
    active_tokens_carry_their_claims,
    wrong_bearers_are_refused,
    revocations_make_tokens_inactive_at_once
);
