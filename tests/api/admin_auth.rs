//! The admin token: every admin route refuses a missing or wrong token with 401
//! `INVALID_ADMIN_TOKEN`, and the whole admin API is absent (404) when no token is configured.

use reqwest::{Method, StatusCode};

use crate::helpers::{ADMIN_TOKEN, TestDb, expect_error, expect_json, spawn_app, spawn_app_with};

/// Every admin route, with a method it answers.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/keys"),
    ("GET", "/keys"),
    ("GET", "/keys/ak_test_AAAAAAAAAAAA"),
    ("PATCH", "/keys/ak_test_AAAAAAAAAAAA"),
    ("POST", "/keys/ak_test_AAAAAAAAAAAA/revoke"),
    ("POST", "/keys/ak_test_AAAAAAAAAAAA/suspend"),
    ("POST", "/keys/ak_test_AAAAAAAAAAAA/resume"),
    ("POST", "/keys/ak_test_AAAAAAAAAAAA/rotate"),
    ("GET", "/keys/ak_test_AAAAAAAAAAAA/devices"),
    ("GET", "/keys/ak_test_AAAAAAAAAAAA/usage"),
    ("POST", "/devices/dev_x/revoke"),
    ("POST", "/devices/dev_x/approve"),
    ("GET", "/audit"),
    ("GET", "/alerts"),
    // A wrong method must not reveal more than a right one.
    ("DELETE", "/keys"),
];

fn method(m: &str) -> Method {
    m.parse().unwrap()
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_on_every_route() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let suffixed = format!("Bearer {ADMIN_TOKEN}x");
    let truncated = format!("Bearer {}", &ADMIN_TOKEN[1..]);
    let basic = format!("Basic {ADMIN_TOKEN}");
    let wrong_tokens: &[(Option<&str>, &str)] = &[
        (None, "no Authorization header"),
        (Some("Bearer"), "scheme only"),
        (Some("Bearer "), "empty token"),
        (Some("Bearer wrong-token"), "wrong token"),
        (Some(&suffixed), "token with a suffix"),
        (Some(&truncated), "token without its first char"),
        (Some(&basic), "wrong scheme"),
        (Some(ADMIN_TOKEN), "no scheme"),
    ];
    for (m, path) in ROUTES {
        for (header, why) in wrong_tokens {
            let mut req = app
                .client
                .request(method(m), app.url(&format!("/admin/v1{path}")))
                .header("content-type", "application/json")
                .body(r#"{"name":"x","scopes":["a"],"reason":"r"}"#);
            if let Some(h) = header {
                req = req.header("authorization", *h);
            }
            let res = req.send().await.unwrap();
            expect_error(
                res,
                StatusCode::UNAUTHORIZED,
                "INVALID_ADMIN_TOKEN",
                &format!("{m} {path}, {why}"),
            )
            .await;
        }
    }
    let list = expect_json(app.admin_get("/keys").await, StatusCode::OK).await;
    assert_eq!(
        list["keys"],
        serde_json::json!([]),
        "no refused request created a key"
    );
}

#[tokio::test]
async fn the_right_token_is_accepted_and_a_wrong_method_is_405() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    for scheme in ["Bearer", "bearer"] {
        let res = app
            .client
            .get(app.url("/admin/v1/keys"))
            .header("authorization", format!("{scheme} {ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{scheme}");
    }
    let res = app.admin(Method::DELETE, "/keys").send().await.unwrap();
    expect_error(
        res,
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "DELETE /keys",
    )
    .await;
    let res = app
        .admin(Method::PUT, "/keys/ak_test_AAAAAAAAAAAA")
        .send()
        .await
        .unwrap();
    expect_error(
        res,
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "PUT a key",
    )
    .await;
    let res = app
        .admin(Method::GET, "/nothing-here")
        .send()
        .await
        .unwrap();
    expect_error(
        res,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "unknown admin route",
    )
    .await;
}

#[tokio::test]
async fn without_a_configured_token_the_admin_api_does_not_exist() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_with(&db, None).await;
    for (m, path) in ROUTES {
        for header in [
            None,
            Some(format!("Bearer {ADMIN_TOKEN}")),
            Some("Bearer ".into()),
        ] {
            let mut req = app
                .client
                .request(method(m), app.url(&format!("/admin/v1{path}")))
                .json(&serde_json::json!({"name": "x", "scopes": ["a"]}));
            if let Some(h) = &header {
                req = req.header("authorization", h);
            }
            let res = req.send().await.unwrap();
            expect_error(
                res,
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("{m} {path} with {header:?}"),
            )
            .await;
        }
    }
    assert!(app.store.list_keys(None, 10).await.unwrap().is_empty());
    // The rest of the server is unaffected.
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}
