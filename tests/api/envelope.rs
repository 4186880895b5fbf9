//! The error envelope at the HTTP edge: unknown routes, wrong methods, oversized, non-JSON
//! and malformed bodies all answer `{"error": {"code", "message"}}` with the contract status.

use reqwest::StatusCode;

use crate::helpers::{ADMIN_TOKEN, TestDb, expect_error, spawn_app};

#[tokio::test]
async fn edge_errors_use_the_envelope() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let keys = app.url("/admin/v1/keys");
    let big = format!(
        r#"{{"name": "{}", "scopes": ["a"]}}"#,
        "x".repeat(17 * 1024)
    );
    let cases: Vec<(reqwest::RequestBuilder, StatusCode, &str, &str)> = vec![
        (
            app.client.get(app.url("/nope")),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "unknown route",
        ),
        (
            app.client.get(app.url("/admin/v2/keys")),
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "unknown version",
        ),
        (
            app.client.post(app.url("/healthz")),
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "POST /healthz",
        ),
        (
            app.client.delete(app.url("/readyz")),
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "DELETE /readyz",
        ),
        (
            app.client
                .post(&keys)
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(big),
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            "17 KiB body",
        ),
        (
            app.client
                .post(&keys)
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "text/plain")
                .body(r#"{"name":"x","scopes":["a"]}"#),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "text/plain",
        ),
        (
            app.client
                .post(&keys)
                .bearer_auth(ADMIN_TOKEN)
                .body(r#"{"name":"x","scopes":["a"]}"#),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "no content type",
        ),
        (
            app.client
                .post(&keys)
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body(r#"{"name": "x", "scopes": ["#),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "truncated JSON",
        ),
        (
            app.client
                .post(&keys)
                .bearer_auth(ADMIN_TOKEN)
                .header("content-type", "application/json")
                .body("name=x"),
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "not JSON at all",
        ),
    ];
    for (req, status, code, why) in cases {
        let res = req.send().await.unwrap();
        assert!(
            res.headers().contains_key("x-request-id"),
            "{why}: request id"
        );
        expect_error(res, status, code, why).await;
    }
    assert!(app.store.list_keys(None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn error_messages_do_not_echo_submitted_values() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let planted = keybound::keys::ApiKey::generate(keybound::keys::KeyEnv::Prod);
    let bodies = [
        serde_json::json!({"name": "x", "scopes": planted.expose()}),
        serde_json::json!({"name": "x", "scopes": ["a"], "env": planted.expose()}),
        serde_json::json!({"name": "x", "scopes": ["a"], planted.expose(): 1}),
        serde_json::json!({"name": "x", "scopes": [format!("{} x", planted.expose())]}),
        serde_json::json!({"name": "x", "scopes": ["a"], "allowed_ips": [planted.expose()]}),
        serde_json::json!({"name": "x", "scopes": ["a"], "allowed_origins": [planted.expose()]}),
        serde_json::json!({"name": "x", "scopes": ["a"], "max_devices": planted.expose()}),
    ];
    for body in bodies {
        let res = app.admin_post("/keys", body.clone()).await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{body}");
        let text = res.text().await.unwrap();
        assert!(!text.contains(planted.expose()), "echoed: {text}");
        assert!(
            !text.contains(&planted.expose()[20..50]),
            "echoed in part: {text}"
        );
    }
    let res = app
        .admin_get(&format!("/keys?limit={}", planted.expose()))
        .await;
    let text = res.text().await.unwrap();
    assert!(
        !text.contains(planted.expose()),
        "query value echoed: {text}"
    );
}

#[tokio::test]
async fn json_content_types_with_parameters_are_accepted() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
    ] {
        let res = app
            .client
            .post(app.url("/admin/v1/keys"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", ct)
            .body(r#"{"name":"x","scopes":["a"]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED, "{ct}");
    }
}

/// A client's `x-request-id` is kept only when it is a UUID of at most 64 characters;
/// anything else (it lands in every log line) is replaced by a generated UUID.
#[tokio::test]
async fn only_uuid_request_ids_are_kept() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let id_of = |sent: Option<String>| {
        let mut req = app.client.get(app.url("/healthz"));
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        async move {
            let res = req.send().await.unwrap();
            res.headers()["x-request-id"].to_str().unwrap().to_owned()
        }
    };
    let uuid = "0b6c6f0e-3a8e-4c4b-9f5e-2f1d2c3b4a59";
    assert_eq!(id_of(Some(uuid.into())).await, uuid, "a UUID is kept");
    for foreign in [
        "hello".to_owned(),
        "user=admin action=login status=ok".to_owned(),
        format!("{uuid}{}", "0".repeat(40)),
        "a".repeat(65),
    ] {
        let got = id_of(Some(foreign.clone())).await;
        assert_ne!(got, foreign);
        assert!(uuid::Uuid::try_parse(&got).is_ok(), "{foreign:?} -> {got}");
    }
    assert!(
        uuid::Uuid::try_parse(&id_of(None).await).is_ok(),
        "none sent"
    );
}
