//! Contract section 11: browsers. Preflights to the token endpoints, CORS headers on their
//! answers (errors and nonce challenges too) except when the key refuses the origin, `*` on
//! the public documents, and nothing on the admin API.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::json;

use crate::helpers::{TestApp, TestDb, expect_error, expect_json, spawn_app, spawn_app_args};
use crate::proofs::Device;
use crate::token::new_key;

const ORIGIN: &str = "https://app.example.com";

fn assert_no_cors(h: &HeaderMap, why: &str) {
    let names: Vec<&str> = h
        .keys()
        .map(|n| n.as_str())
        .filter(|n| n.starts_with("access-control-"))
        .collect();
    assert!(names.is_empty(), "{why}: CORS headers {names:?}");
}

fn list(h: &HeaderMap, name: &str) -> Vec<String> {
    h.get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

/// The answer to a request from `origin` allows it, and lets the page read what it needs.
fn assert_cors(h: &HeaderMap, origin: &str, why: &str) {
    assert_eq!(h["access-control-allow-origin"], origin, "{why}");
    assert!(
        list(h, "vary").contains(&"origin".to_owned()),
        "{why}: Vary"
    );
    let exposed = list(h, "access-control-expose-headers");
    for name in ["dpop-nonce", "retry-after", "www-authenticate"] {
        assert!(
            exposed.contains(&name.to_owned()),
            "{why}: {name} not exposed: {exposed:?}"
        );
    }
    assert!(
        h.get("access-control-allow-credentials").is_none(),
        "{why}: no credentials"
    );
}

async fn exchange_from(app: &TestApp, origin: &str, key: &str, dev: &Device) -> reqwest::Response {
    app.client
        .post(app.url("/v1/token"))
        .header("Origin", origin)
        .header("X-API-Key", key)
        .header("DPoP", dev.proof("POST", &app.url("/v1/token")))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn token_endpoints_answer_preflights_for_any_origin() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    for path in [
        "/v1/token",
        "/v1/token/refresh",
        "/v1/token/revoke",
        "/v1/attestation/challenge",
    ] {
        for origin in [ORIGIN, "http://localhost:3000"] {
            let res = app
                .client
                .request(reqwest::Method::OPTIONS, app.url(path))
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "POST")
                .header(
                    "Access-Control-Request-Headers",
                    "dpop, content-type, x-api-key",
                )
                .send()
                .await
                .unwrap();
            let why = format!("preflight {path} from {origin}");
            assert_eq!(res.status(), StatusCode::NO_CONTENT, "{why}");
            let h = res.headers();
            assert_eq!(h["access-control-allow-origin"], origin, "{why}");
            assert_eq!(list(h, "access-control-allow-methods"), ["post"], "{why}");
            let allowed = list(h, "access-control-allow-headers");
            for name in ["authorization", "x-api-key", "dpop", "content-type"] {
                assert!(
                    allowed.contains(&name.to_owned()),
                    "{why}: {name}: {allowed:?}"
                );
            }
            assert!(h.contains_key("access-control-max-age"), "{why}");
        }
    }
}

#[tokio::test]
async fn answers_allow_the_origin_unless_the_key_refuses_it() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let dev = Device::new();

    // A key that admits the origin: the token comes with CORS headers.
    let (key, _) = new_key(
        &app,
        json!({"allowed_origins": [ORIGIN], "trust_on_enroll": true}),
    )
    .await;
    let res = exchange_from(&app, ORIGIN, &key, &dev).await;
    assert_cors(res.headers(), ORIGIN, "allowed origin");
    let body = expect_json(res, StatusCode::OK).await;

    // The refresh endpoint too.
    let res = app
        .client
        .post(app.url("/v1/token/refresh"))
        .header("Origin", ORIGIN)
        .header("DPoP", dev.proof("POST", &app.url("/v1/token/refresh")))
        .json(&json!({"refresh_token": body["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_cors(res.headers(), ORIGIN, "refresh");
    expect_json(res, StatusCode::OK).await;

    // An empty list refuses no origin.
    let (open, _) = new_key(&app, json!({})).await;
    let res = exchange_from(&app, "https://any.example", &open, &Device::new()).await;
    assert_cors(
        res.headers(),
        "https://any.example",
        "key without an origin list",
    );
    expect_json(res, StatusCode::OK).await;

    // Errors are readable too (a wrong key, a bad proof).
    let res = exchange_from(&app, ORIGIN, "sk_test_nope", &dev).await;
    assert_cors(res.headers(), ORIGIN, "invalid key");
    expect_error(
        res,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
        "invalid key",
    )
    .await;

    // The key refuses the origin: the refusal carries no CORS header, and no token.
    let res = exchange_from(&app, "https://evil.example", &key, &dev).await;
    assert_no_cors(res.headers(), "refused origin");
    expect_error(
        res,
        StatusCode::FORBIDDEN,
        "ORIGIN_NOT_ALLOWED",
        "refused origin",
    )
    .await;
}

#[tokio::test]
async fn nonce_challenges_are_readable_cross_origin() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |args| args.require_dpop_nonce = true).await;
    let (key, _) = new_key(&app, json!({"allowed_origins": [ORIGIN]})).await;
    let res = exchange_from(&app, ORIGIN, &key, &Device::new()).await;
    assert_cors(res.headers(), ORIGIN, "nonce challenge");
    assert!(res.headers().contains_key("dpop-nonce"));
    expect_error(
        res,
        StatusCode::BAD_REQUEST,
        "USE_DPOP_NONCE",
        "nonce challenge",
    )
    .await;
}

#[tokio::test]
async fn public_documents_are_readable_from_anywhere_and_admin_never() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    // One device, so that status list 0 exists.
    let (key, _) = new_key(&app, json!({})).await;
    expect_json(
        exchange_from(&app, ORIGIN, &key, &Device::new()).await,
        StatusCode::OK,
    )
    .await;
    for path in [
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
        "/v1/revocations",
        "/v1/status-lists/0",
    ] {
        let res = app
            .client
            .get(app.url(path))
            .header("Origin", ORIGIN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(res.headers()["access-control-allow-origin"], "*", "{path}");
    }

    let res = app
        .admin(reqwest::Method::GET, "/keys")
        .header("Origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_no_cors(res.headers(), "admin GET");
    expect_json(res, StatusCode::OK).await;
    let res = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/admin/v1/keys"))
        .header("Origin", ORIGIN)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "authorization")
        .send()
        .await
        .unwrap();
    assert_no_cors(res.headers(), "admin preflight");
    assert_ne!(
        res.status(),
        StatusCode::NO_CONTENT,
        "admin preflight is not answered"
    );
}
