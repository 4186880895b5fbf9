//! The OpenAPI document: served at `/openapi.json`, committed as `docs/openapi.json`, and the
//! two never differ. After changing an endpoint, regenerate the file with
//! `KEYBOUND_WRITE_OPENAPI=1 cargo test --test api openapi`.

use reqwest::StatusCode;

use crate::helpers::{TestDb, expect_json, spawn_app};

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");

#[tokio::test]
async fn the_committed_document_is_what_the_code_generates() {
    let generated = keybound::http::openapi::pretty();
    if std::env::var("KEYBOUND_WRITE_OPENAPI").is_ok_and(|v| v == "1") {
        std::fs::write(COMMITTED, &generated).expect("write docs/openapi.json");
    }
    let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/openapi.json is stale: regenerate it with \
         KEYBOUND_WRITE_OPENAPI=1 cargo test --test api openapi"
    );
}

#[tokio::test]
async fn the_server_serves_the_same_document() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let res = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    let served = expect_json(res, StatusCode::OK).await;
    let generated: serde_json::Value =
        serde_json::from_str(&keybound::http::openapi::pretty()).unwrap();
    assert_eq!(served, generated);
    assert_eq!(served["openapi"], "3.1.0");
}

/// What the schemathesis run (`scripts/schemathesis.sh`) found, kept as regression tests.
#[tokio::test]
async fn schemathesis_findings_stay_fixed() {
    use serde_json::json;
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let key = app.create_key(crate::helpers::key_body("st")).await;
    let id = key["key_id"].as_str().unwrap();

    // serde reads a struct from an array: `[]` was accepted as an empty body.
    let res = app
        .admin(reqwest::Method::POST, &format!("/keys/{id}/suspend"))
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    crate::helpers::expect_error(res, StatusCode::BAD_REQUEST, "INVALID_REQUEST", "[] body").await;

    // JSON Schema counts 5.0 as an integer; so does the API now. 5.5 is still refused.
    let res = app
        .admin_patch(&format!("/keys/{id}"), json!({"max_devices": 7.0}))
        .await;
    assert_eq!(expect_json(res, StatusCode::OK).await["max_devices"], 7);
    let res = app
        .admin_patch(&format!("/keys/{id}"), json!({"max_devices": 7.5}))
        .await;
    crate::helpers::expect_error(res, StatusCode::BAD_REQUEST, "INVALID_REQUEST", "7.5").await;

    // Origins: a real host or a bracketed IPv6 address, an optional port, ASCII only.
    for (origin, ok) in [
        ("https://app.example.com", true),
        ("http://[::1]:8080/", true),
        ("http://[", false),
        ("http://[de.ad]", false),
        ("https://exämple.com", false),
        ("https://a:123456", false),
    ] {
        let res = app
            .admin_patch(&format!("/keys/{id}"), json!({"allowed_origins": [origin]}))
            .await;
        let want = if ok {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        assert_eq!(res.status(), want, "{origin}");
    }

    // A malformed query on the revocation feed is answered in the envelope, not in plain text.
    let res = app
        .client
        .get(app.url("/v1/revocations?since=1&since=2"))
        .send()
        .await
        .unwrap();
    crate::helpers::expect_error(
        res,
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        "since twice",
    )
    .await;
}
