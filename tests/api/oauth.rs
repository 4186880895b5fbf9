//! Contract 9.1: form-encoded `POST /v1/token` (RFC 8693 token exchange, RFC 6749 refresh),
//! answered like the JSON requests but with RFC 6749 section 5.2 errors, by every row of the
//! mapping table; and the metadata a stock OAuth client discovers it through.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDb, expect_error, expect_json, spawn_app, spawn_app_args};
use crate::on_both_backends;
use crate::proofs::Device;
use crate::token::{claims_of, ios, new_key, verify_with_jwks};

pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const API_KEY_TYPE: &str = "urn:keybound:params:oauth:token-type:api-key";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// POSTs `pairs` form-encoded to `/v1/token` with `proof` (when given) as the DPoP header.
pub async fn form_post(
    app: &TestApp,
    proof: Option<&str>,
    pairs: &[(&str, &str)],
) -> reqwest::Response {
    let mut req = app.client.post(app.url("/v1/token")).form(pairs);
    if let Some(p) = proof {
        req = req.header("DPoP", p);
    }
    req.send().await.expect("request")
}

/// A token exchange for `key` by `dev`, with `extra` parameters.
pub async fn form_exchange(
    app: &TestApp,
    dev: &Device,
    key: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let mut pairs = vec![
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", key),
        ("subject_token_type", API_KEY_TYPE),
    ];
    pairs.extend_from_slice(extra);
    form_post(app, Some(&dev.proof("POST", &app.url("/v1/token"))), &pairs).await
}

/// A refresh grant at `/v1/token` (the proof's `htu` is `/v1/token`).
pub async fn form_refresh(app: &TestApp, dev: &Device, refresh_token: &str) -> reqwest::Response {
    let proof = dev.proof("POST", &app.url("/v1/token"));
    form_post(
        app,
        Some(&proof),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

/// Asserts an RFC 6749 section 5.2 error: `status`, `{"error": error, "error_description"}`
/// and nothing of the contract's envelope. Returns the headers.
pub async fn expect_oauth_error(
    res: reqwest::Response,
    status: StatusCode,
    error: &str,
    why: &str,
) -> reqwest::header::HeaderMap {
    let headers = res.headers().clone();
    let got = res.status();
    let text = res.text().await.expect("body");
    assert_eq!(got, status, "{why}: {text}");
    assert_eq!(
        headers.get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "{why}"
    );
    assert_eq!(headers["cache-control"], "no-store", "{why}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{why}: {e}: {text}"));
    assert_eq!(v["error"], error, "{why}: {text}");
    assert!(
        v["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{why}: error_description missing: {text}"
    );
    assert_eq!(
        v.as_object().unwrap().len(),
        2,
        "{why}: only the two members: {text}"
    );
    headers
}

async fn token_exchange_and_refresh_by_form(db: TestDb) {
    let app = spawn_app(&db).await;
    let (key, key_id) = new_key(&app, json!({"trust_on_enroll": true})).await;
    let dev = Device::new();
    let device = ios("i-form").to_string();

    let res = form_exchange(
        &app,
        &dev,
        &key,
        &[
            ("scope", "read:users"),
            ("requested_token_type", ACCESS_TOKEN_TYPE),
            ("client_id", "ignored"),
            ("device", &device),
        ],
    )
    .await;
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body = expect_json(res, StatusCode::OK).await;
    assert_eq!(body["issued_token_type"], ACCESS_TOKEN_TYPE);
    assert_eq!(body["token_type"], "DPoP");
    assert_eq!(body["scope"], "read:users");
    assert_eq!(body["trust"]["level"], "trusted");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&[app.url("")]);
    validation.set_issuer(&[app.url("")]);
    let (_, c) = verify_with_jwks(&app, body["access_token"].as_str().unwrap(), &validation).await;
    assert_eq!(c["sub"], key_id);
    assert_eq!(c["cnf"]["jkt"], dev.jkt);
    // The same device record as a JSON exchange would make: the `device` parameter was read.
    let devices = expect_json(
        app.admin_get(&format!("/keys/{key_id}/devices")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(devices["devices"][0]["name"], "Taro's iPhone", "{devices}");
    assert_eq!(
        devices["devices"][0]["attributes"]["install_id"], "i-form",
        "{devices}"
    );

    // The RFC 6749 refresh grant at /v1/token: rotates like /v1/token/refresh.
    let rt1 = body["refresh_token"].as_str().unwrap();
    let refreshed = expect_json(form_refresh(&app, &dev, rt1).await, StatusCode::OK).await;
    assert!(refreshed.get("issued_token_type").is_none(), "{refreshed}");
    assert_eq!(refreshed["device_id"], body["device_id"]);
    assert_eq!(refreshed["scope"], "read:users");
    let rt2 = refreshed["refresh_token"].as_str().unwrap();
    assert_ne!(rt1, rt2);
    // …and the JSON refresh accepts the form's successor (one use case, two request forms).
    let json_refreshed =
        expect_json(crate::token::refresh(&app, &dev, rt2).await, StatusCode::OK).await;
    assert_eq!(json_refreshed["device_id"], body["device_id"]);

    // With a charset parameter, and `resource` for the audience (RFC 8707).
    let res = app
        .client
        .post(app.url("/v1/token"))
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=UTF-8",
        )
        .header("DPoP", dev.proof("POST", &app.url("/v1/token")))
        .body(
            serde_urlencoded::to_string([
                ("grant_type", TOKEN_EXCHANGE),
                ("subject_token", &key),
                ("subject_token_type", API_KEY_TYPE),
                ("resource", &app.url("")),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let body = expect_json(res, StatusCode::OK).await;
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["aud"],
        app.url("")
    );
}

/// Every row of contract 9.1's table, each reached for its real cause.
async fn form_errors_follow_the_mapping_table(db: TestDb) {
    let app = spawn_app(&db).await;
    let (key, _) = new_key(&app, json!({"trust_on_enroll": true})).await;
    let dev = Device::new();
    let bad = StatusCode::BAD_REQUEST;

    // INVALID_REQUEST, MISSING_API_KEY, INVALID_API_KEY → invalid_request 400.
    let long_scope = "s ".repeat(65);
    let invalid: [(&[(&str, &str)], &str); 3] = [
        (
            &[("device", "{\"name\": 5}")],
            "INVALID_REQUEST: device of the wrong type",
        ),
        (&[("scope", &long_scope)], "INVALID_REQUEST: over 64 scopes"),
        (
            &[("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")],
            "subject_token_type",
        ),
    ];
    for (extra, why) in invalid {
        // The later duplicate of subject_token_type is the case itself: send it alone.
        let mut pairs = vec![
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", key.as_str()),
        ];
        if !extra.iter().any(|(k, _)| *k == "subject_token_type") {
            pairs.push(("subject_token_type", API_KEY_TYPE));
        }
        pairs.extend_from_slice(extra);
        let res = form_post(
            &app,
            Some(&dev.proof("POST", &app.url("/v1/token"))),
            &pairs,
        )
        .await;
        expect_oauth_error(res, bad, "invalid_request", why).await;
    }
    let res = form_post(
        &app,
        Some(&dev.proof("POST", &app.url("/v1/token"))),
        &[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token_type", API_KEY_TYPE),
        ],
    )
    .await;
    expect_oauth_error(res, bad, "invalid_request", "MISSING_API_KEY").await;
    // The key in a header does not stand in for the subject token.
    let res = app
        .client
        .post(app.url("/v1/token"))
        .header("X-API-Key", &key)
        .header("DPoP", dev.proof("POST", &app.url("/v1/token")))
        .form(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token_type", API_KEY_TYPE),
        ])
        .send()
        .await
        .unwrap();
    expect_oauth_error(res, bad, "invalid_request", "header key, no subject_token").await;
    let bad_checksum = {
        let mut chars: Vec<char> = key.chars().collect();
        let i = chars.len() - 10;
        chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
        chars.into_iter().collect::<String>()
    };
    let (revoked, revoked_id) = new_key(&app, json!({})).await;
    let res = app
        .admin_post(
            &format!("/keys/{revoked_id}/revoke"),
            json!({"reason": "test"}),
        )
        .await;
    expect_json(res, StatusCode::OK).await;
    for (subject, why) in [
        (bad_checksum.as_str(), "INVALID_API_KEY: bad checksum"),
        ("sk_test_nope", "INVALID_API_KEY: malformed"),
        (revoked.as_str(), "INVALID_API_KEY: revoked"),
    ] {
        let res = form_exchange(&app, &dev, subject, &[]).await;
        expect_oauth_error(res, bad, "invalid_request", why).await;
    }

    // Unknown grant types → unsupported_grant_type.
    for grant in ["password", "urn:keybound:params:oauth:grant-type:api-key"] {
        let res = form_post(
            &app,
            Some(&dev.proof("POST", &app.url("/v1/token"))),
            &[("grant_type", grant)],
        )
        .await;
        expect_oauth_error(res, bad, "unsupported_grant_type", grant).await;
    }

    // INVALID_REFRESH_TOKEN, REFRESH_TOKEN_REUSED → invalid_grant.
    let first = expect_json(form_exchange(&app, &dev, &key, &[]).await, StatusCode::OK).await;
    let rt1 = first["refresh_token"].as_str().unwrap();
    expect_oauth_error(
        form_refresh(&app, &dev, "rt_unknown").await,
        bad,
        "invalid_grant",
        "INVALID_REFRESH_TOKEN",
    )
    .await;
    expect_json(form_refresh(&app, &dev, rt1).await, StatusCode::OK).await;
    expect_oauth_error(
        form_refresh(&app, &dev, rt1).await,
        bad,
        "invalid_grant",
        "REFRESH_TOKEN_REUSED",
    )
    .await;

    // INSUFFICIENT_SCOPE → invalid_scope.
    let res = form_exchange(&app, &dev, &key, &[("scope", "admin:everything")]).await;
    expect_oauth_error(res, bad, "invalid_scope", "INSUFFICIENT_SCOPE").await;

    // INVALID_AUDIENCE → invalid_target, by either name.
    for name in ["audience", "resource"] {
        let res = form_exchange(&app, &dev, &key, &[(name, "https://elsewhere.example")]).await;
        expect_oauth_error(res, bad, "invalid_target", name).await;
    }

    // INVALID_DPOP_PROOF, DPOP_REPLAY → invalid_dpop_proof.
    let no_proof = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", key.as_str()),
        ("subject_token_type", API_KEY_TYPE),
    ];
    expect_oauth_error(
        form_post(&app, None, &no_proof).await,
        bad,
        "invalid_dpop_proof",
        "no proof",
    )
    .await;
    // A refresh grant at /v1/token needs a proof for /v1/token, not for /v1/token/refresh.
    let second = expect_json(form_exchange(&app, &dev, &key, &[]).await, StatusCode::OK).await;
    let res = form_post(
        &app,
        Some(&dev.proof("POST", &app.url("/v1/token/refresh"))),
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", second["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    expect_oauth_error(
        res,
        bad,
        "invalid_dpop_proof",
        "htu of the JSON refresh endpoint",
    )
    .await;
    let proof = dev.proof("POST", &app.url("/v1/token"));
    expect_json(
        form_post(&app, Some(&proof), &no_proof).await,
        StatusCode::OK,
    )
    .await;
    expect_oauth_error(
        form_post(&app, Some(&proof), &no_proof).await,
        bad,
        "invalid_dpop_proof",
        "DPOP_REPLAY",
    )
    .await;

    // PAYLOAD_TOO_LARGE → invalid_request 413.
    let big = "x".repeat(17 * 1024);
    let res = form_exchange(&app, &dev, &key, &[("device", &big)]).await;
    expect_oauth_error(
        res,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
        "over 16 KiB",
    )
    .await;

    // Any other code: lower case, with the contract's status (and its headers).
    let origin_key = new_key(
        &app,
        json!({"allowed_origins": ["https://app.example.com"]}),
    )
    .await
    .0;
    let res = app
        .client
        .post(app.url("/v1/token"))
        .header("Origin", "https://evil.example")
        .header("DPoP", dev.proof("POST", &app.url("/v1/token")))
        .form(&[
            ("grant_type", TOKEN_EXCHANGE),
            ("subject_token", origin_key.as_str()),
            ("subject_token_type", API_KEY_TYPE),
        ])
        .send()
        .await
        .unwrap();
    let h = expect_oauth_error(
        res,
        StatusCode::FORBIDDEN,
        "origin_not_allowed",
        "ORIGIN_NOT_ALLOWED",
    )
    .await;
    assert!(
        h.get("access-control-allow-origin").is_none(),
        "no CORS on a refused origin"
    );
    let ip_key = new_key(&app, json!({"allowed_ips": ["10.0.0.0/8"]}))
        .await
        .0;
    expect_oauth_error(
        form_exchange(&app, &dev, &ip_key, &[]).await,
        StatusCode::FORBIDDEN,
        "ip_not_allowed",
        "IP_NOT_ALLOWED",
    )
    .await;
    let device_id = first["device_id"].as_str().unwrap();
    expect_json(
        app.admin_post(&format!("/devices/{device_id}/revoke"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    expect_oauth_error(
        form_exchange(&app, &dev, &key, &[]).await,
        StatusCode::FORBIDDEN,
        "device_revoked",
        "DEVICE_REVOKED",
    )
    .await;
    let slow_key = new_key(&app, json!({"rate_limit_per_minute": 1})).await.0;
    let other = Device::new();
    expect_json(
        form_exchange(&app, &other, &slow_key, &[]).await,
        StatusCode::OK,
    )
    .await;
    let h = expect_oauth_error(
        form_exchange(&app, &other, &slow_key, &[]).await,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "RATE_LIMITED",
    )
    .await;
    assert!(h.contains_key("retry-after"));

    // JSON requests keep the envelope; other content types are still 415 in the envelope.
    expect_error(
        crate::token::exchange(&app, "sk_test_nope", &dev, json!({})).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
        "JSON exchange",
    )
    .await;
    let res = app
        .client
        .post(app.url("/v1/token"))
        .header("content-type", "text/plain")
        .header("DPoP", dev.proof("POST", &app.url("/v1/token")))
        .body("grant_type=refresh_token")
        .send()
        .await
        .unwrap();
    expect_error(
        res,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UNSUPPORTED_MEDIA_TYPE",
        "text/plain",
    )
    .await;
}

on_both_backends!(
    token_exchange_and_refresh_by_form,
    form_errors_follow_the_mapping_table
);

/// USE_DPOP_NONCE → use_dpop_nonce with the nonce and RFC 9449 section 8's challenge; the
/// retry with that nonce succeeds (what a stock client does).
#[tokio::test]
async fn a_nonce_challenge_is_rfc_9449_shaped() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |args| args.require_dpop_nonce = true).await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::new();
    let h = expect_oauth_error(
        form_exchange(&app, &dev, &key, &[]).await,
        StatusCode::BAD_REQUEST,
        "use_dpop_nonce",
        "no nonce",
    )
    .await;
    assert_eq!(h["www-authenticate"], "DPoP error=\"use_dpop_nonce\"");
    let nonce = h["dpop-nonce"].to_str().unwrap();
    let proof = dev.proof_with_nonce("POST", &app.url("/v1/token"), nonce);
    let pairs = [
        ("grant_type", TOKEN_EXCHANGE),
        ("subject_token", key.as_str()),
        ("subject_token_type", API_KEY_TYPE),
    ];
    let res = form_post(&app, Some(&proof), &pairs).await;
    assert!(res.headers().contains_key("dpop-nonce"), "the next nonce");
    expect_json(res, StatusCode::OK).await;
}

/// An API key in the URL of a form request is refused in the form's error shape.
#[tokio::test]
async fn a_key_in_the_url_of_a_form_request_is_an_oauth_error() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, _) = new_key(&app, json!({})).await;
    let res = app
        .client
        .post(app.url(&format!("/v1/token?subject_token={key}")))
        .form(&[("grant_type", TOKEN_EXCHANGE)])
        .send()
        .await
        .unwrap();
    expect_oauth_error(res, StatusCode::BAD_REQUEST, "api_key_in_url", "key in URL").await;
}

/// INTERNAL → server_error 500 (a table the exchange writes is gone: a bug, not an outage).
#[tokio::test]
async fn a_broken_database_is_server_error() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::new();
    db.execute("DROP TABLE devices").await;
    expect_oauth_error(
        form_exchange(&app, &dev, &key, &[]).await,
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "INTERNAL",
    )
    .await;
}

/// UNAVAILABLE → temporarily_unavailable 503 (the PostgreSQL database went away).
#[tokio::test]
async fn unreachable_storage_is_temporarily_unavailable() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let app = spawn_app(&db).await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::new();
    db.drop_postgres_database().await;
    expect_oauth_error(
        form_exchange(&app, &dev, &key, &[]).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "UNAVAILABLE",
    )
    .await;
}

#[tokio::test]
async fn the_metadata_names_the_oauth_endpoints() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let res = app
        .client
        .get(app.url("/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap();
    let m = expect_json(res, StatusCode::OK).await;
    let iss = app.url("");
    assert_eq!(m["issuer"], iss);
    assert_eq!(m["token_endpoint"], format!("{iss}/v1/token"));
    assert_eq!(m["revocation_endpoint"], format!("{iss}/v1/token/revoke"));
    assert_eq!(
        m["introspection_endpoint"],
        format!("{iss}/v1/token/introspect")
    );
    assert_eq!(
        m["attestation_challenge_endpoint"],
        format!("{iss}/v1/attestation/challenge")
    );
    assert_eq!(
        m["grant_types_supported"],
        json!([TOKEN_EXCHANGE, "refresh_token"])
    );
    assert_eq!(m["token_endpoint_auth_methods_supported"], json!(["none"]));
    assert_eq!(
        m["dpop_signing_alg_values_supported"],
        json!(["EdDSA", "Ed25519", "ES256"])
    );
}
