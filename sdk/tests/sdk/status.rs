//! Token status lists (contract section 10), the per-key replay quota and JWKS refreshes that
//! never hold a request: a fake issuer serves a feed, status lists and a JWKS, each of which
//! the test can change or take down.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::routing::get;
use keybound_sdk::{DeviceKey, Ed25519DeviceKey, ErrorKind, InvalidTokenReason, Verifier};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::*;

const SETTLE: Duration = Duration::from_secs(15);

struct Issuer {
    signer: TestIssuer,
    rogue: TestIssuer,
    /// Statuses of list 1, one per device index.
    statuses: Mutex<Vec<u8>>,
    list_ttl: AtomicU64,
    list_up: AtomicBool,
    list_forged: AtomicBool,
    /// Serve list 1 with the `sub` of list 2.
    list_mixed_up: AtomicBool,
    list_fetches: AtomicUsize,
    feed_up: AtomicBool,
    /// JWKS answers hang (never complete) while set.
    jwks_hangs: AtomicBool,
    jwks_fetches: AtomicUsize,
}

impl Issuer {
    fn list_uri(&self, n: u32) -> String {
        format!("{}/v1/status-lists/{n}", self.signer.issuer)
    }

    fn set_status(&self, idx: usize, status: u8) {
        self.statuses.lock().unwrap()[idx] = status;
    }

    /// A token for `device` naming entry `idx` of list `uri`.
    fn token(&self, device: &dyn DeviceKey, uri: &str, idx: u64) -> String {
        let mut claims = self.signer.claims(device);
        claims["status"] = json!({"status_list": {"idx": idx, "uri": uri}});
        self.signer.access_token(&claims)
    }
}

async fn status_list(
    State(issuer): State<Arc<Issuer>>,
    Path(n): Path<u32>,
) -> Result<([(header::HeaderName, &'static str); 1], String), StatusCode> {
    issuer.list_fetches.fetch_add(1, Ordering::SeqCst);
    if n != 1 {
        return Err(StatusCode::NOT_FOUND);
    }
    if !issuer.list_up.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let sub = if issuer.list_mixed_up.load(Ordering::SeqCst) {
        issuer.list_uri(2)
    } else {
        issuer.list_uri(1)
    };
    let signer = if issuer.list_forged.load(Ordering::SeqCst) {
        &issuer.rogue
    } else {
        &issuer.signer
    };
    let statuses = issuer.statuses.lock().unwrap().clone();
    let jwt = signer.status_list(&sub, &statuses, issuer.list_ttl.load(Ordering::SeqCst));
    Ok(([(header::CONTENT_TYPE, "application/statuslist+jwt")], jwt))
}

async fn feed(State(issuer): State<Arc<Issuer>>) -> Result<String, StatusCode> {
    if !issuer.feed_up.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    Ok(issuer.signer.feed(&[], "c0"))
}

async fn jwks(
    State(issuer): State<Arc<Issuer>>,
) -> ([(header::HeaderName, &'static str); 1], axum::Json<Value>) {
    issuer.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    while issuer.jwks_hangs.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // max-age=0: stale at once (the verifier still waits its refresh interval between fetches).
    (
        [(header::CACHE_CONTROL, "max-age=0")],
        axum::Json(issuer.signer.jwks()),
    )
}

async fn issuer() -> Arc<Issuer> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let issuer = Arc::new(Issuer {
        signer: TestIssuer::new(&base),
        rogue: TestIssuer::new(&base),
        statuses: Mutex::new(vec![0; 64]),
        list_ttl: AtomicU64::new(60),
        list_up: AtomicBool::new(true),
        list_forged: AtomicBool::new(false),
        list_mixed_up: AtomicBool::new(false),
        list_fetches: AtomicUsize::new(0),
        feed_up: AtomicBool::new(true),
        jwks_hangs: AtomicBool::new(false),
        jwks_fetches: AtomicUsize::new(0),
    });
    let meta = json!({
        "issuer": base,
        "token_endpoint": format!("{base}/v1/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
    });
    let router = Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(move || async move { axum::Json(meta) }),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .route("/v1/revocations", get(feed))
        .route("/v1/status-lists/{n}", get(status_list))
        .with_state(issuer.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    issuer
}

/// A verifier with the issuer's JWKS fixed and its feed polled every 100 ms.
async fn verifier(issuer: &Issuer) -> Verifier {
    Verifier::builder(&issuer.signer.issuer)
        .audience(AUDIENCE)
        .jwks(issuer.signer.jwks())
        .revocation_poll_interval(Duration::from_millis(100))
        .build()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_revoked_device_is_refused_through_the_status_list_with_the_feed_unreachable() {
    // Arrange: the list may be cached for 1 s; a valid token at index 7.
    let issuer = issuer().await;
    issuer.list_ttl.store(1, Ordering::SeqCst);
    let verifier = verifier(&issuer).await;
    let device = Ed25519DeviceKey::generate();
    let token = issuer.token(&device, &issuer.list_uri(1), 7);
    call(&verifier, &device, &token).await.unwrap();

    // Act: the feed goes down, then the device is revoked (the feed could not tell anyone).
    issuer.feed_up.store(false, Ordering::SeqCst);
    issuer.set_status(7, 1);

    // Assert: refused once the list is refetched, within its ttl; a token at another index
    // (another device) still passes.
    let refused = eventually(SETTLE, async || {
        call(&verifier, &device, &token)
            .await
            .is_err_and(|e| e.kind() == &ErrorKind::Revoked)
    })
    .await;
    assert!(refused, "the revoked device is still accepted");
    let other = Ed25519DeviceKey::generate();
    call(
        &verifier,
        &other,
        &issuer.token(&other, &issuer.list_uri(1), 8),
    )
    .await
    .unwrap();
    assert!(!verifier.feed_healthy());
}

#[tokio::test]
async fn a_suspended_key_is_refused_and_accepted_again_on_resume() {
    let issuer = issuer().await;
    issuer.list_ttl.store(1, Ordering::SeqCst);
    let verifier = verifier(&issuer).await;
    let device = Ed25519DeviceKey::generate();
    let token = issuer.token(&device, &issuer.list_uri(1), 3);

    // The first request sees the list as it is when fetched: suspended (2).
    issuer.set_status(3, 2);
    let err = call(&verifier, &device, &token).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Revoked);
    assert_eq!(issuer.list_fetches.load(Ordering::SeqCst), 1);

    // Resumed (0): accepted again once the list is refetched.
    issuer.set_status(3, 0);
    let accepted = eventually(SETTLE, async || {
        call(&verifier, &device, &token).await.is_ok()
    })
    .await;
    assert!(accepted);
}

#[tokio::test]
async fn lists_are_fetched_once_and_refreshed_in_the_background() {
    let issuer = issuer().await;
    let verifier = verifier(&issuer).await;
    let device = Ed25519DeviceKey::generate();
    for _ in 0..20 {
        let token = issuer.token(&device, &issuer.list_uri(1), 1);
        call(&verifier, &device, &token).await.unwrap();
    }
    assert_eq!(
        issuer.list_fetches.load(Ordering::SeqCst),
        1,
        "cached for its ttl"
    );
}

#[tokio::test]
async fn lists_the_issuer_did_not_sign_for_that_uri_are_not_believed() {
    // Each list below says index 2 is revoked, but must not be believed; the token is judged
    // on the (healthy) feed instead and accepted.
    let forge: fn(&Issuer) = |i| i.list_forged.store(true, Ordering::SeqCst);
    let mix_up: fn(&Issuer) = |i| i.list_mixed_up.store(true, Ordering::SeqCst);
    for (name, break_it) in [
        ("signed by another key", forge),
        ("served for another uri", mix_up),
    ] {
        let issuer = issuer().await;
        let verifier = verifier(&issuer).await;
        issuer.set_status(2, 1);
        break_it(&issuer);
        let device = Ed25519DeviceKey::generate();
        let token = issuer.token(&device, &issuer.list_uri(1), 2);
        call(&verifier, &device, &token)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[tokio::test]
async fn a_status_list_outside_the_issuer_or_index_outside_the_list_is_refused() {
    let issuer = issuer().await;
    let verifier = verifier(&issuer).await;
    let device = Ed25519DeviceKey::generate();
    for (uri, idx, why) in [
        (
            "https://elsewhere.example/v1/status-lists/1".to_owned(),
            1,
            "another host",
        ),
        (
            format!("{}/v1/other/1", issuer.signer.issuer),
            1,
            "another path",
        ),
        (issuer.list_uri(1), 10_000, "index past the end"),
    ] {
        let token = issuer.token(&device, &uri, idx);
        let err = call(&verifier, &device, &token).await.unwrap_err();
        assert_eq!(
            err.kind(),
            &ErrorKind::InvalidToken(InvalidTokenReason::Malformed),
            "{why}"
        );
    }
    assert_eq!(
        issuer.list_fetches.load(Ordering::SeqCst),
        1,
        "only list 1, once"
    );
}

#[tokio::test]
async fn with_neither_feed_nor_list_fresh_tokens_are_refused_as_unavailable() {
    let issuer = issuer().await;
    issuer.list_ttl.store(1, Ordering::SeqCst);
    let verifier = Verifier::builder(&issuer.signer.issuer)
        .audience(AUDIENCE)
        .jwks(issuer.signer.jwks())
        .revocation_poll_interval(Duration::from_millis(100))
        .max_staleness(Duration::from_secs(3))
        .build()
        .await
        .unwrap();
    let device = Ed25519DeviceKey::generate();
    let token = issuer.token(&device, &issuer.list_uri(1), 4);
    call(&verifier, &device, &token).await.unwrap();

    // The feed alone going down changes nothing while the list stays fresh (refetched every
    // second, its ttl)...
    issuer.feed_up.store(false, Ordering::SeqCst);
    for _ in 0..25 {
        call(&verifier, &device, &token).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // ...but with the list down too, the verifier refuses once both are older than 3 s.
    issuer.list_up.store(false, Ordering::SeqCst);
    let refused = eventually(SETTLE, async || {
        call(&verifier, &device, &token)
            .await
            .is_err_and(|e| e.kind() == &ErrorKind::Unavailable)
    })
    .await;
    assert!(refused, "tokens accepted on stale revocation state");

    // Either coming back is enough.
    issuer.list_up.store(true, Ordering::SeqCst);
    let accepted = eventually(SETTLE, async || {
        call(&verifier, &device, &token).await.is_ok()
    })
    .await;
    assert!(accepted);
}

#[tokio::test]
async fn one_client_flooding_the_replay_cache_does_not_lock_out_another() {
    // Arrange: a cache of 50 proofs of which one device key may hold 10.
    let issuer = issuer().await;
    let verifier = Verifier::builder(&issuer.signer.issuer)
        .audience(AUDIENCE)
        .jwks(issuer.signer.jwks())
        .danger_disable_revocation_feed()
        .replay_cache_capacity(50)
        .replay_quota_per_key(10)
        .build()
        .await
        .unwrap();
    let flooder = Ed25519DeviceKey::generate();
    let flood_token = issuer.signer.access_token(&issuer.signer.claims(&flooder));

    // Act: the flooder sends 100 valid requests, each with a fresh proof.
    let mut refused = 0;
    for _ in 0..100 {
        match call(&verifier, &flooder, &flood_token).await {
            Ok(()) => {}
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        ErrorKind::RateLimited {
                            retry_after: Some(_)
                        }
                    ),
                    "{e}"
                );
                refused += 1;
            }
        }
    }

    // Assert: it got its 10, and another client's valid requests still pass.
    assert_eq!(refused, 90);
    let honest = Ed25519DeviceKey::generate();
    let honest_token = issuer.signer.access_token(&issuer.signer.claims(&honest));
    for _ in 0..10 {
        call(&verifier, &honest, &honest_token).await.unwrap();
    }
}

#[tokio::test]
async fn no_request_waits_on_a_jwks_refetch() {
    // Arrange: keys discovered from a JWKS that is stale at once (max-age=0), refetched at
    // most every 100 ms.
    let issuer = issuer().await;
    let verifier = Verifier::builder(&issuer.signer.issuer)
        .audience(AUDIENCE)
        .jwks_refresh_interval(Duration::from_millis(100))
        .danger_disable_revocation_feed()
        .build()
        .await
        .unwrap();
    let device = Ed25519DeviceKey::generate();
    let token = issuer.signer.access_token(&issuer.signer.claims(&device));
    assert_eq!(issuer.jwks_fetches.load(Ordering::SeqCst), 1);

    // Act: the JWKS endpoint stops answering, and the cached set goes stale.
    issuer.jwks_hangs.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Assert: requests are answered from the stale set (a hanging fetch would never let them
    // finish; the timeout only bounds the test), while a refetch was started in the background.
    for _ in 0..5 {
        tokio::time::timeout(Duration::from_secs(5), call(&verifier, &device, &token))
            .await
            .expect("a request waited on the JWKS refetch")
            .unwrap();
    }
    assert!(
        eventually(SETTLE, async || issuer.jwks_fetches.load(Ordering::SeqCst)
            == 2)
        .await,
        "the stale set was refetched in the background"
    );
    assert_eq!(
        issuer.jwks_fetches.load(Ordering::SeqCst),
        2,
        "one background refetch, not one per request"
    );
    issuer.jwks_hangs.store(false, Ordering::SeqCst);
}
