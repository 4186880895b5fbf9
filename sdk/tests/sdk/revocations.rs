//! The revocation feed: a tiny axum issuer serves a signed, incremental feed; the verifier
//! polls it and refuses revoked keys and devices within its poll interval.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use keybound_sdk::{DeviceKey, Ed25519DeviceKey, ErrorKind, Verifier};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::*;

const POLL: Duration = Duration::from_millis(100);
/// How long a test waits for what should happen within a few polls. Generous, because the
/// machines are shared and a busy one delays the poller; a passing check returns at once.
const SETTLE: Duration = Duration::from_secs(10);

struct FeedServer {
    issuer: TestIssuer,
    /// Signs with a key outside the JWKS when `forge` is set.
    rogue: TestIssuer,
    entries: Mutex<Vec<Value>>,
    up: AtomicBool,
    forge: AtomicBool,
    cursors: Mutex<Vec<Option<String>>>,
}

impl FeedServer {
    fn revoke(&self, kind: &str, id: &str) {
        self.entries
            .lock()
            .unwrap()
            .push(json!({"kind": kind, "id": id, "at": now()}));
    }
}

/// The feed as keybound serves it: entries after the cursor `c<n>`, and the next cursor.
async fn feed(
    State(server): State<Arc<FeedServer>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<String, StatusCode> {
    let since = query.get("since").cloned();
    server.cursors.lock().unwrap().push(since.clone());
    if !server.up.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let start: usize = since
        .and_then(|c| c.trim_start_matches('c').parse().ok())
        .unwrap_or(0);
    let entries = server.entries.lock().unwrap().clone();
    let page = &entries[start.min(entries.len())..];
    let signer = if server.forge.load(Ordering::SeqCst) {
        &server.rogue
    } else {
        &server.issuer
    };
    Ok(signer.feed(page, &format!("c{}", entries.len())))
}

async fn feed_server() -> Arc<FeedServer> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = Arc::new(FeedServer {
        issuer: TestIssuer::new(&base),
        rogue: TestIssuer::new(&base),
        entries: Mutex::default(),
        up: AtomicBool::new(true),
        forge: AtomicBool::new(false),
        cursors: Mutex::default(),
    });
    let router = Router::new()
        .route("/v1/revocations", get(feed))
        .with_state(server.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    server
}

async fn polling_verifier(server: &FeedServer) -> Verifier {
    Verifier::builder(&server.issuer.issuer)
        .audience(AUDIENCE)
        .jwks(server.issuer.jwks())
        .revocation_poll_interval(POLL)
        .build()
        .await
        .unwrap()
}

/// One request with `token` and a fresh proof by `device`.
async fn call(
    verifier: &Verifier,
    device: &dyn DeviceKey,
    token: &str,
) -> keybound_sdk::Result<()> {
    let proof = proof(device, "GET", RESOURCE, token);
    verifier
        .verify_request(
            "GET",
            RESOURCE,
            Some(&format!("DPoP {token}")),
            Some(&proof),
        )
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_revoked_key_is_refused_within_the_poll_interval() {
    // Arrange: a valid token, accepted.
    let server = feed_server().await;
    let verifier = polling_verifier(&server).await;
    let device = Ed25519DeviceKey::generate();
    let token = server.issuer.access_token(&server.issuer.claims(&device));
    call(&verifier, &device, &token).await.unwrap();
    assert!(verifier.feed_healthy());

    // Act: the key is revoked at the issuer.
    server.revoke("key", KEY_ID);

    // Assert: refused once the next poll lands (a few intervals; SETTLE allows a busy machine).
    let refused = eventually(SETTLE, async || {
        call(&verifier, &device, &token)
            .await
            .is_err_and(|e| e.kind() == &ErrorKind::Revoked)
    })
    .await;
    assert!(refused, "the revoked key's token is still accepted");
    // Polls after the first carry the cursor.
    let cursors = server.cursors.lock().unwrap().clone();
    assert_eq!(cursors[0], None);
    assert!(cursors.iter().skip(1).all(|c| c.is_some()), "{cursors:?}");
}

#[tokio::test]
async fn a_revoked_device_is_refused_but_other_devices_are_not() {
    let server = feed_server().await;
    let verifier = polling_verifier(&server).await;
    let revoked = Ed25519DeviceKey::generate();
    let other = Ed25519DeviceKey::generate();
    let revoked_token = server.issuer.access_token(&server.issuer.claims(&revoked));
    let other_token = server.issuer.access_token(&server.issuer.claims(&other));

    server.revoke("device", &revoked.thumbprint().unwrap());
    server.revoke("refresh_family", "fam_123");

    let refused = eventually(SETTLE, async || {
        call(&verifier, &revoked, &revoked_token)
            .await
            .is_err_and(|e| e.kind() == &ErrorKind::Revoked)
    })
    .await;
    assert!(refused);
    call(&verifier, &other, &other_token).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_feed_keeps_the_last_state_and_reports_unhealthy() {
    let server = feed_server().await;
    let verifier = polling_verifier(&server).await;
    let device = Ed25519DeviceKey::generate();
    let token = server.issuer.access_token(&server.issuer.claims(&device));
    server.revoke("key", KEY_ID);
    assert!(
        eventually(SETTLE, async || call(&verifier, &device, &token)
            .await
            .is_err())
        .await
    );
    let last_success = verifier.feed_last_success().unwrap();

    server.up.store(false, Ordering::SeqCst);

    assert!(
        eventually(SETTLE, async || !verifier.feed_healthy()).await,
        "still healthy"
    );
    assert_eq!(
        verifier.feed_last_success(),
        Some(last_success),
        "no success while down"
    );
    let err = call(&verifier, &device, &token).await.unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::Revoked,
        "revocations are kept while the feed is down"
    );

    server.up.store(true, Ordering::SeqCst);
    assert!(
        eventually(SETTLE, async || verifier.feed_healthy()).await,
        "recovers"
    );
}

#[tokio::test]
async fn a_feed_signed_by_another_key_is_ignored() {
    let server = feed_server().await;
    let verifier = polling_verifier(&server).await;
    let device = Ed25519DeviceKey::generate();
    let token = server.issuer.access_token(&server.issuer.claims(&device));

    server.forge.store(true, Ordering::SeqCst);
    server.revoke("key", KEY_ID);
    tokio::time::sleep(5 * POLL).await;

    call(&verifier, &device, &token).await.unwrap();
    assert!(eventually(SETTLE, async || !verifier.feed_healthy()).await);
}

#[tokio::test]
async fn the_verifier_does_not_start_without_the_feed() {
    let server = feed_server().await;
    server.up.store(false, Ordering::SeqCst);
    let err = Verifier::builder(&server.issuer.issuer)
        .audience(AUDIENCE)
        .jwks(server.issuer.jwks())
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::UnexpectedResponse { status: 503 });
}
