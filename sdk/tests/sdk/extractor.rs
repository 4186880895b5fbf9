//! The axum extractor and error responses (feature `axum`), through a real server on
//! 127.0.0.1:0.

use axum::Router;
use axum::routing::get;
use keybound_sdk::{Ed25519DeviceKey, VerifiedToken, Verifier};
use reqwest::StatusCode;
use serde_json::Value;
use std::sync::Arc;

use crate::helpers::*;

const ISSUER: &str = "https://auth.example.com";

async fn list_users(token: VerifiedToken) -> Result<String, keybound_sdk::Error> {
    token.require_scope("read:users")?;
    Ok(format!("hello {}", token.subject()))
}

async fn admin(token: VerifiedToken) -> Result<String, keybound_sdk::Error> {
    token.require_scope("admin")?;
    Ok("admin".into())
}

/// Two extractions in one request: the second must reuse the first, not replay the proof.
async fn twice(a: VerifiedToken, b: VerifiedToken) -> String {
    assert_eq!(a.thumbprint(), b.thumbprint());
    "ok".into()
}

struct Api {
    base: String,
    issuer: TestIssuer,
}

async fn api() -> Api {
    api_with_replay_quota(1_000).await
}

async fn api_with_replay_quota(quota: usize) -> Api {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let issuer = TestIssuer::new(ISSUER);
    let verifier = Verifier::builder(ISSUER)
        .audience(AUDIENCE)
        .jwks(issuer.jwks())
        .danger_disable_revocation_feed()
        .replay_quota_per_key(quota)
        .resource_url(&base)
        .build()
        .await
        .unwrap();
    let routes = Router::new()
        .route("/v1/users", get(list_users))
        .route("/v1/admin", get(admin))
        .route("/v1/twice", get(twice));
    let router = Router::new()
        .merge(routes.clone())
        .nest("/api", routes)
        .with_state(Arc::new(verifier));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Api { base, issuer }
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    retry_after: Option<String>,
    body: String,
}

async fn get_with(url: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = reqwest::Client::new().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status(),
        challenge: response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned()),
        retry_after: response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: response.text().await.unwrap(),
    }
}

#[tokio::test]
async fn a_valid_request_reaches_the_handler() {
    let api = api().await;
    let device = Ed25519DeviceKey::generate();
    let token = api.issuer.access_token(&api.issuer.claims(&device));
    for path in ["/v1/users", "/api/v1/users", "/v1/twice"] {
        let url = format!("{}{path}", api.base);
        let auth = format!("DPoP {token}");
        let proof = proof(&device, "GET", &url, &token);

        let answer = get_with(&url, &[("authorization", &auth), ("dpop", &proof)]).await;

        assert_eq!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
    }
}

#[tokio::test]
async fn refusals_carry_the_rfc_challenges() {
    let api = api().await;
    let device = Ed25519DeviceKey::generate();
    let token = api.issuer.access_token(&api.issuer.claims(&device));
    let users = format!("{}/v1/users", api.base);
    let admin = format!("{}/v1/admin", api.base);
    let auth = format!("DPoP {token}");
    let mut expired = api.issuer.claims(&device);
    expired["exp"] = (now() - 600).into();
    let expired = format!("DPoP {}", api.issuer.access_token(&expired));

    let cases: Vec<(&str, Answer, StatusCode, &str)> = vec![
        (
            "no credentials",
            get_with(&users, &[]).await,
            StatusCode::UNAUTHORIZED,
            r#"DPoP algs="EdDSA Ed25519 ES256""#,
        ),
        (
            "token without proof",
            get_with(&users, &[("authorization", &auth)]).await,
            StatusCode::UNAUTHORIZED,
            r#"DPoP error="invalid_dpop_proof", algs="EdDSA Ed25519 ES256""#,
        ),
        (
            "two proofs",
            get_with(
                &users,
                &[
                    ("authorization", &auth),
                    ("dpop", &proof(&device, "GET", &users, &token)),
                    ("dpop", &proof(&device, "GET", &users, &token)),
                ],
            )
            .await,
            StatusCode::UNAUTHORIZED,
            r#"DPoP error="invalid_dpop_proof", algs="EdDSA Ed25519 ES256""#,
        ),
        (
            "expired token",
            get_with(
                &users,
                &[
                    ("authorization", &expired),
                    (
                        "dpop",
                        &proof(&device, "GET", &users, expired.trim_start_matches("DPoP ")),
                    ),
                ],
            )
            .await,
            StatusCode::UNAUTHORIZED,
            r#"DPoP error="invalid_token", algs="EdDSA Ed25519 ES256""#,
        ),
        (
            "missing scope",
            get_with(
                &admin,
                &[
                    ("authorization", &auth),
                    ("dpop", &proof(&device, "GET", &admin, &token)),
                ],
            )
            .await,
            StatusCode::FORBIDDEN,
            r#"DPoP error="insufficient_scope", algs="EdDSA Ed25519 ES256""#,
        ),
    ];
    for (name, answer, status, challenge) in cases {
        assert_eq!(answer.status, status, "{name}");
        assert_eq!(answer.challenge.as_deref(), Some(challenge), "{name}");
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        assert!(body["error"]["code"].is_string(), "{name}: {body}");
    }
}

#[tokio::test]
async fn a_client_past_its_replay_quota_gets_429_with_retry_after() {
    // Arrange: each device key may hold 3 live proofs.
    let api = api_with_replay_quota(3).await;
    let device = Ed25519DeviceKey::generate();
    let token = api.issuer.access_token(&api.issuer.claims(&device));
    let users = format!("{}/v1/users", api.base);
    let auth = format!("DPoP {token}");
    let mut answers = Vec::new();

    // Act: four requests, each with a fresh proof.
    for _ in 0..4 {
        let proof = proof(&device, "GET", &users, &token);
        answers.push(get_with(&users, &[("authorization", &auth), ("dpop", &proof)]).await);
    }

    // Assert
    let statuses: Vec<StatusCode> = answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let refused = &answers[3];
    let wait: u64 = refused.retry_after.as_deref().unwrap().parse().unwrap();
    // Proofs are remembered for twice the 60 s window plus a second; room comes back the
    // second after.
    assert!((1..=122).contains(&wait), "Retry-After {wait}");
    let body: Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(body["error"]["code"], "RATE_LIMITED");
}
