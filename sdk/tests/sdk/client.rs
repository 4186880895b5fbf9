//! The Client against a small fake keybound (axum on 127.0.0.1:0) that counts requests, checks
//! the client's proofs and answers from a script when told to.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use keybound_sdk::{
    Client, ClientBuilder, DeviceKey, Ed25519DeviceKey, ErrorKind, RetryPolicy, TrustLevel,
    Verifier, jwk_thumbprint,
};
use serde_json::{Value, json};
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;

pub fn api_key() -> String {
    format!("sk_test_{}", "A".repeat(61))
}

/// An answer the fake gives instead of issuing a token.
#[derive(Clone)]
pub struct Scripted {
    status: StatusCode,
    code: &'static str,
    retry_after: Option<&'static str>,
}

pub fn scripted(status: u16, code: &'static str) -> Scripted {
    Scripted {
        status: StatusCode::from_u16(status).unwrap(),
        code,
        retry_after: None,
    }
}

#[derive(Default)]
pub struct Fake {
    pub base: String,
    pub signer: Option<TestIssuer>,
    /// Requests that reached each endpoint, whatever the answer.
    pub exchanges: AtomicUsize,
    pub refreshes: AtomicUsize,
    pub arrivals: Mutex<Vec<Instant>>,
    /// Answers to give, in order, before behaving normally.
    pub exchange_script: Mutex<VecDeque<Scripted>>,
    pub refresh_script: Mutex<VecDeque<Scripted>>,
    pub expires_in: AtomicU64,
    /// Slows every exchange down, so concurrent callers overlap.
    pub delay_ms: AtomicU64,
    pub require_nonce: AtomicBool,
    pub nonce_demands: AtomicUsize,
    pub live_refresh_tokens: Mutex<HashSet<String>>,
    pub refresh_bodies: Mutex<Vec<Value>>,
    pub exchange_bodies: Mutex<Vec<Value>>,
    pub issued: AtomicUsize,
    /// What the fake answers as `trust.attested`.
    pub attested: Mutex<Option<&'static str>>,
    pub challenges: AtomicUsize,
    /// `(body, proof claims)` of each `POST /v1/token/revoke`.
    pub revocations: Mutex<Vec<(Value, Value)>>,
}

const NONCE: &str = "server-nonce-1";

fn error(s: &Scripted) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(retry_after) = s.retry_after {
        headers.insert("retry-after", HeaderValue::from_static(retry_after));
    }
    let body = json!({"error": {"code": s.code, "message": "scripted"}});
    (s.status, headers, Json(body)).into_response()
}

impl Fake {
    /// Checks the proof like the server would (shape, htm, htu, nonce) and returns the
    /// thumbprint of its key, or the error answer to give.
    fn check_proof(&self, headers: &HeaderMap, path: &str) -> Result<String, Scripted> {
        self.check_proof_claims(headers, path).map(|(jkt, _)| jkt)
    }

    /// As `check_proof`, also returning the proof's claims.
    fn check_proof_claims(
        &self,
        headers: &HeaderMap,
        path: &str,
    ) -> Result<(String, Value), Scripted> {
        let proof = headers
            .get("dpop")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| scripted(401, "INVALID_DPOP_PROOF"))?;
        let parts: Vec<&str> = proof.split('.').collect();
        let decode = |s: &str| -> Value {
            serde_json::from_slice(
                &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s)
                    .unwrap(),
            )
            .unwrap()
        };
        let (header, claims) = (decode(parts[0]), decode(parts[1]));
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], format!("{}{path}", self.base));
        assert!(claims.get("ath").is_none(), "no ath at the token endpoint");
        if self.require_nonce.load(Ordering::SeqCst) && claims["nonce"] != NONCE {
            self.nonce_demands.fetch_add(1, Ordering::SeqCst);
            return Err(scripted(400, "USE_DPOP_NONCE"));
        }
        Ok((jwk_thumbprint(&header["jwk"]).unwrap(), claims))
    }

    fn issue(&self, jkt: &str) -> Response {
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let expires_in = self.expires_in.load(Ordering::SeqCst);
        let signer = self.signer.as_ref().unwrap();
        let now = now();
        let token = signer.access_token(&json!({
            "iss": signer.issuer, "sub": KEY_ID, "client_id": KEY_ID, "aud": AUDIENCE,
            "iat": now, "nbf": now, "exp": now + expires_in, "jti": format!("jti-{n}"),
            "scope": "read:users", "cnf": {"jkt": jkt}, "did": "dev_1", "trust": "limited",
        }));
        let refresh_token = format!("rt-{n}");
        self.live_refresh_tokens
            .lock()
            .unwrap()
            .insert(refresh_token.clone());
        let body = json!({
            "access_token": token, "token_type": "DPoP", "expires_in": expires_in,
            "scope": "read:users", "refresh_token": refresh_token, "refresh_expires_in": 86400,
            "device_id": "dev_1",
            "trust": {"score": 0.62, "level": "limited", "attested": *self.attested.lock().unwrap()},
        });
        ([("cache-control", "no-store")], Json(body)).into_response()
    }
}

fn with_nonce(fake: &Fake, mut response: Response) -> Response {
    if fake.require_nonce.load(Ordering::SeqCst) {
        response
            .headers_mut()
            .insert("dpop-nonce", HeaderValue::from_static(NONCE));
    }
    response
}

async fn exchange(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    fake.exchanges.fetch_add(1, Ordering::SeqCst);
    fake.arrivals.lock().unwrap().push(Instant::now());
    fake.exchange_bodies.lock().unwrap().push(body);
    let delay = fake.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let next = fake.exchange_script.lock().unwrap().pop_front();
    let response = if let Some(s) = next {
        error(&s)
    } else if headers.get("x-api-key").and_then(|v| v.to_str().ok()) != Some(api_key().as_str()) {
        error(&scripted(401, "INVALID_API_KEY"))
    } else {
        match fake.check_proof(&headers, "/v1/token") {
            Ok(jkt) => fake.issue(&jkt),
            Err(s) => error(&s),
        }
    };
    with_nonce(&fake, response)
}

async fn refresh(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    fake.refreshes.fetch_add(1, Ordering::SeqCst);
    fake.refresh_bodies.lock().unwrap().push(body.clone());
    assert!(headers.get("x-api-key").is_none(), "no API key on refresh");
    let next = fake.refresh_script.lock().unwrap().pop_front();
    let response = if let Some(s) = next {
        error(&s)
    } else {
        match fake.check_proof(&headers, "/v1/token/refresh") {
            Ok(jkt) => {
                let presented = body["refresh_token"].as_str().unwrap_or_default();
                if fake.live_refresh_tokens.lock().unwrap().remove(presented) {
                    fake.issue(&jkt)
                } else {
                    error(&scripted(401, "REFRESH_TOKEN_REUSED"))
                }
            }
            Err(s) => error(&s),
        }
    };
    with_nonce(&fake, response)
}

async fn challenge(State(fake): State<Arc<Fake>>, body: axum::body::Bytes) -> Response {
    assert!(body.is_empty(), "the challenge request has no body");
    let n = fake.challenges.fetch_add(1, Ordering::SeqCst) + 1;
    Json(json!({"challenge": format!("challenge-{n}"), "expires_in": 300})).into_response()
}

async fn revoke(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let response = match fake.check_proof_claims(&headers, "/v1/token/revoke") {
        Ok((_, claims)) => {
            fake.revocations
                .lock()
                .unwrap()
                .push((body.clone(), claims));
            if let Some(token) = body["token"].as_str() {
                fake.live_refresh_tokens.lock().unwrap().remove(token);
            }
            Json(json!({})).into_response()
        }
        Err(s) => error(&s),
    };
    with_nonce(&fake, response)
}

pub async fn fake_keybound() -> Arc<Fake> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let fake = Arc::new(Fake {
        signer: Some(TestIssuer::new(&base)),
        base,
        expires_in: AtomicU64::new(300),
        ..Fake::default()
    });
    let router = Router::new()
        .route("/v1/token", post(exchange))
        .route("/v1/token/refresh", post(refresh))
        .route("/v1/token/revoke", post(revoke))
        .route("/v1/attestation/challenge", post(challenge))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    fake
}

pub fn fast_retries() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(4)
        .initial_backoff(Duration::from_millis(20))
        .max_backoff(Duration::from_millis(100))
}

pub fn client(fake: &Fake, device: Arc<dyn DeviceKey>) -> Client {
    builder(fake, device).build().unwrap()
}

pub fn builder(fake: &Fake, device: Arc<dyn DeviceKey>) -> ClientBuilder {
    Client::builder(&fake.base)
        .api_key(api_key().into())
        .device_key(device)
        .device_name("test runner")
        .device_attributes([("platform", "linux"), ("install_id", "i-1")])
        .scope("read:users")
        .retry_policy(fast_retries())
}

pub fn device() -> Arc<dyn DeviceKey> {
    Arc::new(Ed25519DeviceKey::generate())
}

#[tokio::test]
async fn the_exchange_sends_the_contract_request_and_caches_the_token() {
    let fake = fake_keybound().await;
    let client = builder(&fake, device())
        .default_device_attributes(false)
        .build()
        .unwrap();

    let first = client.token().await.unwrap();
    let second = client.token().await.unwrap();

    assert_eq!(
        fake.exchanges.load(Ordering::SeqCst),
        1,
        "served from memory"
    );
    assert_eq!(first.expose_secret(), second.expose_secret());
    assert_eq!(first.scope(), "read:users");
    assert_eq!(first.device_id(), "dev_1");
    assert_eq!(first.trust_level(), TrustLevel::Limited);
    assert!(
        !format!("{first:?}").contains(first.expose_secret()),
        "Debug redacts"
    );
    let body = fake.exchange_bodies.lock().unwrap()[0].clone();
    assert_eq!(
        body,
        json!({"scope": "read:users", "device": {"name": "test runner",
            "attributes": {"platform": "linux", "install_id": "i-1"}}})
    );
}

#[tokio::test]
async fn a_hundred_concurrent_callers_cause_one_exchange() {
    let fake = fake_keybound().await;
    fake.delay_ms.store(100, Ordering::SeqCst);
    let client = client(&fake, device());

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.token().await.map(|t| t.expose_secret().to_owned()) })
        })
        .collect();
    let mut tokens = HashSet::new();
    for task in tasks {
        tokens.insert(task.await.unwrap().unwrap());
    }

    assert_eq!(fake.exchanges.load(Ordering::SeqCst), 1);
    assert_eq!(tokens.len(), 1, "everyone got the same token");
}

#[tokio::test]
async fn concurrent_callers_share_a_failure_too() {
    let fake = fake_keybound().await;
    fake.delay_ms.store(100, Ordering::SeqCst);
    fake.exchange_script
        .lock()
        .unwrap()
        .push_back(scripted(401, "INVALID_API_KEY"));
    let client = client(&fake, device());

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.token().await.map(|_| ()) })
        })
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidApiKey);
    }

    assert_eq!(
        fake.exchanges.load(Ordering::SeqCst),
        1,
        "one failed authentication, not a hundred"
    );
    // A later call tries again.
    client.token().await.unwrap();
    assert_eq!(fake.exchanges.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_token_is_refreshed_when_less_than_20_percent_is_left() {
    // Arrange: 2 s tokens, so renewal is due after 1.6 s.
    let fake = fake_keybound().await;
    fake.expires_in.store(2, Ordering::SeqCst);
    let client = client(&fake, device());
    let first = client.token().await.unwrap();

    // Act + Assert: still cached at 1 s ...
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        client.token().await.unwrap().expose_secret(),
        first.expose_secret()
    );
    assert_eq!(fake.refreshes.load(Ordering::SeqCst), 0);

    // ... refreshed (not re-exchanged) at 1.7 s, before it expires.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = client.token().await.unwrap();
    assert_ne!(second.expose_secret(), first.expose_secret());
    assert_eq!(fake.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(fake.exchanges.load(Ordering::SeqCst), 1);
    assert_eq!(
        fake.refresh_bodies.lock().unwrap()[0],
        json!({"refresh_token": "rt-1"})
    );
}

#[tokio::test]
async fn a_refused_refresh_token_falls_back_to_a_full_exchange() {
    let fake = fake_keybound().await;
    fake.expires_in.store(1, Ordering::SeqCst);
    fake.refresh_script
        .lock()
        .unwrap()
        .push_back(scripted(401, "REFRESH_TOKEN_REUSED"));
    let client = client(&fake, device());
    client.token().await.unwrap();

    tokio::time::sleep(Duration::from_millis(900)).await;
    client.token().await.unwrap();

    assert_eq!(fake.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(fake.exchanges.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_refused_refresh_token_is_not_presented_again() {
    let fake = fake_keybound().await;
    fake.expires_in.store(1, Ordering::SeqCst);
    let client = client(&fake, device());
    client.token().await.unwrap();
    fake.refresh_script
        .lock()
        .unwrap()
        .push_back(scripted(401, "INVALID_REFRESH_TOKEN"));
    fake.exchange_script
        .lock()
        .unwrap()
        .push_back(scripted(403, "DEVICE_UNTRUSTED"));
    tokio::time::sleep(Duration::from_millis(900)).await;

    let err = client.token().await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::DeviceUntrusted);
    client.token().await.unwrap();

    assert_eq!(
        fake.refreshes.load(Ordering::SeqCst),
        1,
        "the dead refresh token was dropped"
    );
    assert_eq!(fake.exchanges.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_503_is_retried_with_backoff_then_succeeds() {
    let fake = fake_keybound().await;
    for _ in 0..2 {
        fake.exchange_script
            .lock()
            .unwrap()
            .push_back(scripted(503, "UNAVAILABLE"));
    }
    let client = client(&fake, device());

    client.token().await.unwrap();

    assert_eq!(fake.exchanges.load(Ordering::SeqCst), 3);
    let arrivals = fake.arrivals.lock().unwrap().clone();
    // Equal jitter: the n-th wait is at least half of 20 ms * 2^(n-1).
    assert!(arrivals[1] - arrivals[0] >= Duration::from_millis(10));
    assert!(arrivals[2] - arrivals[1] >= Duration::from_millis(20));
}

#[tokio::test]
async fn retries_are_bounded() {
    let fake = fake_keybound().await;
    for _ in 0..10 {
        fake.exchange_script
            .lock()
            .unwrap()
            .push_back(scripted(503, "UNAVAILABLE"));
    }
    let client = client(&fake, device());

    let err = client.token().await.unwrap_err();

    assert_eq!(err.kind(), &ErrorKind::Unavailable);
    assert_eq!(err.status(), Some(503));
    assert_eq!(fake.exchanges.load(Ordering::SeqCst), 4, "max_attempts");
}

#[tokio::test]
async fn a_429_waits_for_retry_after() {
    let fake = fake_keybound().await;
    fake.exchange_script.lock().unwrap().push_back(Scripted {
        retry_after: Some("1"),
        ..scripted(429, "RATE_LIMITED")
    });
    let client = client(&fake, device());

    client.token().await.unwrap();

    let arrivals = fake.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 2);
    assert!(
        arrivals[1] - arrivals[0] >= Duration::from_secs(1),
        "Retry-After honoured"
    );
}

#[tokio::test]
async fn a_long_retry_after_is_handed_to_the_app() {
    let fake = fake_keybound().await;
    fake.exchange_script.lock().unwrap().push_back(Scripted {
        retry_after: Some("120"),
        ..scripted(429, "RATE_LIMITED")
    });
    let client = client(&fake, device());

    let err = client.token().await.unwrap_err();

    assert_eq!(
        err.kind(),
        &ErrorKind::RateLimited {
            retry_after: Some(Duration::from_secs(120))
        }
    );
    assert_eq!(fake.exchanges.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn auth_errors_have_their_own_kind_and_are_not_retried() {
    let cases = [
        ("INVALID_API_KEY", 401, ErrorKind::InvalidApiKey),
        ("DEVICE_LIMIT_REACHED", 403, ErrorKind::DeviceLimitReached),
        ("DEVICE_REVOKED", 403, ErrorKind::DeviceRevoked),
        ("IP_NOT_ALLOWED", 403, ErrorKind::IpNotAllowed),
        ("INSUFFICIENT_SCOPE", 403, ErrorKind::InsufficientScope),
    ];
    for (code, status, kind) in cases {
        let fake = fake_keybound().await;
        fake.exchange_script
            .lock()
            .unwrap()
            .push_back(scripted(status, code));
        let client = client(&fake, device());

        let err = client.token().await.unwrap_err();

        assert_eq!(err.kind(), &kind, "{code}");
        assert_eq!(fake.exchanges.load(Ordering::SeqCst), 1, "{code} retried");
    }
}

#[tokio::test]
async fn a_revoked_key_surfaces_as_invalid_api_key_on_refresh_too() {
    let fake = fake_keybound().await;
    fake.expires_in.store(1, Ordering::SeqCst);
    fake.refresh_script
        .lock()
        .unwrap()
        .push_back(scripted(401, "INVALID_API_KEY"));
    let client = client(&fake, device());
    client.token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;

    let err = client.token().await.unwrap_err();

    assert_eq!(err.kind(), &ErrorKind::InvalidApiKey);
    assert_eq!(
        fake.exchanges.load(Ordering::SeqCst),
        1,
        "no pointless exchange"
    );
}

#[tokio::test]
async fn a_nonce_demand_is_retried_once_and_the_nonce_remembered() {
    let fake = fake_keybound().await;
    fake.require_nonce.store(true, Ordering::SeqCst);
    fake.expires_in.store(1, Ordering::SeqCst);
    let client = client(&fake, device());

    client.token().await.unwrap();
    assert_eq!(
        fake.exchanges.load(Ordering::SeqCst),
        2,
        "one retry with the nonce"
    );
    assert_eq!(fake.nonce_demands.load(Ordering::SeqCst), 1);

    // The refresh carries the remembered nonce straight away.
    tokio::time::sleep(Duration::from_millis(900)).await;
    client.token().await.unwrap();
    assert_eq!(fake.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(fake.nonce_demands.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unreachable_server_is_a_network_error() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = Client::builder(base)
        .api_key(api_key().into())
        .device_key(device())
        .retry_policy(fast_retries().max_attempts(2))
        .build()
        .unwrap();

    let err = client.token().await.unwrap_err();

    assert_eq!(err.kind(), &ErrorKind::Network);
}

#[tokio::test]
async fn authorize_builds_headers_the_verifier_accepts() {
    // The fake issues real tokens bound to the proof's key; the Verifier checks the headers.
    let fake = fake_keybound().await;
    let device = device();
    let client = client(&fake, device.clone());
    let signer = fake.signer.as_ref().unwrap();
    let verifier = Verifier::builder(&signer.issuer)
        .audience(AUDIENCE)
        .jwks(signer.jwks())
        .danger_disable_revocation_feed()
        .build()
        .await
        .unwrap();

    let headers = client.authorize("GET", RESOURCE).await.unwrap();

    assert!(
        !format!("{headers:?}").contains("DPoP ey"),
        "values are marked sensitive"
    );
    let authorization = headers["authorization"].to_str().unwrap();
    let dpop = headers["dpop"].to_str().unwrap();
    assert!(authorization.starts_with("DPoP "));
    let verified = verifier
        .verify_request("GET", RESOURCE, Some(authorization), Some(dpop))
        .await
        .unwrap();
    assert_eq!(verified.thumbprint(), device.thumbprint().unwrap());
    // A second call gives a new proof for the same token.
    let again = client.authorize("GET", RESOURCE).await.unwrap();
    assert_eq!(again["authorization"], headers["authorization"]);
    assert_ne!(again["dpop"], headers["dpop"]);
}

#[test]
fn the_builder_refuses_unsafe_or_incomplete_configurations() {
    let key = || -> secrecy::SecretString { api_key().into() };
    let cases: Vec<(&str, keybound_sdk::Result<Client>)> = vec![
        (
            "plain http to a remote host",
            Client::builder("http://auth.example.com")
                .api_key(key())
                .device_key(device())
                .build(),
        ),
        (
            "no API key",
            Client::builder("https://auth.example.com")
                .device_key(device())
                .build(),
        ),
        (
            "no device key",
            Client::builder("https://auth.example.com")
                .api_key(key())
                .build(),
        ),
        (
            "a key id instead of the key",
            Client::builder("https://auth.example.com")
                .api_key("ak_test_AAAAAAAAAAAA".to_owned().into())
                .device_key(device())
                .build(),
        ),
    ];
    for (name, result) in cases {
        assert_eq!(result.unwrap_err().kind(), &ErrorKind::Config, "{name}");
    }
}
