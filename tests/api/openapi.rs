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
