//! The admin token: every admin route refuses a missing or wrong token with 401
//! `INVALID_ADMIN_TOKEN`, and the whole admin API is absent (404) when no token is configured.

use reqwest::{Method, StatusCode};

use crate::helpers::{
    ADMIN_TOKEN, TestDb, expect_error, expect_json, spawn_app, spawn_app_args, spawn_app_with,
};

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
    // 120 wrong tokens from one address: a budget large enough that every one gets its 401.
    let app = spawn_app_args(&db, |a| a.admin_failure_budget = 1000).await;
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

/// A request to `GET /admin/v1/keys` from `client_ip` (the server trusts loopback as a proxy)
/// with `token`.
async fn admin_list_from(
    app: &crate::helpers::TestApp,
    client_ip: &str,
    token: &str,
) -> reqwest::Response {
    app.client
        .get(app.url("/admin/v1/keys"))
        .header("x-forwarded-for", client_ip)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn wrong_tokens_spend_a_per_ip_budget_and_raise_one_alert() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| {
        a.admin_failure_budget = 3;
        a.trusted_proxy = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let attacker = "203.0.113.7";
    let wrong = "wrong-admin-token-but-long-enough-0123456789";
    // Guesses are answered 401 until the budget is spent, then 429, whatever they carry.
    let mut refused_at = None;
    for i in 1..=6 {
        let res = admin_list_from(&app, attacker, wrong).await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            refused_at = Some(i);
            expect_error(res, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", "spent").await;
            break;
        }
        expect_error(
            res,
            StatusCode::UNAUTHORIZED,
            "INVALID_ADMIN_TOKEN",
            "guess",
        )
        .await;
    }
    let refused_at = refused_at.expect("the budget of 3 is enforced");
    assert!(refused_at <= 5, "refused after {refused_at} guesses");
    // Past the budget even the right token is refused from that address: a lucky guess
    // gets no answer.
    let res = admin_list_from(&app, attacker, ADMIN_TOKEN).await;
    expect_error(
        res,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "right token, spent",
    )
    .await;
    // Another address is unaffected, and sees one alert naming the attacker, not the token.
    let res = admin_list_from(&app, "198.51.100.9", ADMIN_TOKEN).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut alerts = serde_json::Value::Null;
    for _ in 0..50 {
        let res = app
            .client
            .get(app.url("/admin/v1/alerts"))
            .header("x-forwarded-for", "198.51.100.9")
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        alerts = expect_json(res, StatusCode::OK).await;
        if !alerts["alerts"].as_array().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let list = alerts["alerts"].as_array().unwrap();
    let bursts: Vec<_> = list
        .iter()
        .filter(|a| a["kind"] == "FAILURE_BURST" && a["ip"] == attacker)
        .collect();
    assert_eq!(bursts.len(), 1, "{alerts}");
    assert_eq!(bursts[0]["details"]["credential"], "admin_token");
    assert!(!alerts.to_string().contains(wrong), "no token in an alert");
}

#[tokio::test]
async fn with_admin_listen_the_admin_api_lives_only_on_its_own_address() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| {
        a.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin = app.admin_addr.expect("an admin address");
    assert_ne!(admin, app.addr);
    // The public listener has no admin API, with or without the token...
    let res = app.admin_get("/keys").await;
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND", "public /admin").await;
    // ...and still serves everything else.
    let res = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The admin address serves the admin API, with the token...
    let admin_url = |p: &str| format!("http://{admin}/admin/v1{p}");
    let res = app
        .client
        .get(admin_url("/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    expect_json(res, StatusCode::OK).await;
    let res = app.client.get(admin_url("/keys")).send().await.unwrap();
    expect_error(
        res,
        StatusCode::UNAUTHORIZED,
        "INVALID_ADMIN_TOKEN",
        "no token",
    )
    .await;
    // ...and nothing public.
    let res = app
        .client
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::NOT_FOUND, "NOT_FOUND", "admin /healthz").await;
}

#[tokio::test]
async fn a_short_admin_token_stops_the_server_from_starting() {
    let db = TestDb::sqlite().await;
    let store = keybound::store::open(&db.url).await.unwrap();
    for token in ["", "short-but-not-empty-token"] {
        let mut args = keybound::config::ServeArgs::for_tests();
        args.admin_token = Some(token.to_owned().into());
        let err = keybound::server::start(args, store.clone())
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), "INVALID_REQUEST");
        assert!(err.to_string().contains("at least 32"), "{err}");
    }
}
