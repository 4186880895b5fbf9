//! The revocation feed: a tiny axum issuer serves a signed, incremental feed; the verifier
//! polls it and refuses revoked keys and devices within its poll interval.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use keybound_sdk::{DeviceKey, Ed25519DeviceKey, ErrorKind, Verifier};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
    /// The `since_time` of each request that had one.
    since_times: Mutex<Vec<u64>>,
    /// Entries per page; 0 for all at once.
    page_size: AtomicUsize,
}

impl FeedServer {
    fn revoke(&self, kind: &str, id: &str) {
        self.revoke_at(kind, id, now());
    }

    fn revoke_at(&self, kind: &str, id: &str, at: u64) {
        self.entries
            .lock()
            .unwrap()
            .push(json!({"kind": kind, "id": id, "at": at}));
    }

    fn requests(&self) -> usize {
        self.cursors.lock().unwrap().len()
    }
}

/// The feed as keybound serves it: entries after the cursor `c<n>` (or, without one, from the
/// first entry at or after `since_time`), a page at a time, the next cursor and `more`.
async fn feed(
    State(server): State<Arc<FeedServer>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<String, StatusCode> {
    let since = query.get("since").cloned();
    server.cursors.lock().unwrap().push(since.clone());
    if !server.up.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    let entries = server.entries.lock().unwrap().clone();
    let since_time = query.get("since_time").and_then(|t| t.parse::<u64>().ok());
    if let Some(t) = since_time {
        server.since_times.lock().unwrap().push(t);
    }
    let start: usize = match (since, since_time) {
        (Some(cursor), _) => cursor.trim_start_matches('c').parse().unwrap_or(0),
        (None, Some(t)) => entries
            .iter()
            .position(|e| e["at"].as_u64().unwrap() >= t)
            .unwrap_or(entries.len()),
        (None, None) => 0,
    };
    let start = start.min(entries.len());
    let end = match server.page_size.load(Ordering::SeqCst) {
        0 => entries.len(),
        size => (start + size).min(entries.len()),
    };
    let signer = if server.forge.load(Ordering::SeqCst) {
        &server.rogue
    } else {
        &server.issuer
    };
    Ok(signer.feed_page(
        &entries[start..end],
        &format!("c{end}"),
        end < entries.len(),
    ))
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
        since_times: Mutex::default(),
        page_size: AtomicUsize::new(0),
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

/// A feed of `n` revocations of other keys, issued just now, then the suspension of the test
/// key; served 1 000 entries a page, as keybound does.
async fn long_feed(n: usize) -> Arc<FeedServer> {
    let server = feed_server().await;
    server.page_size.store(1_000, Ordering::SeqCst);
    for i in 0..n {
        server.revoke("key", &format!("ak_test_other{i:07}"));
    }
    server.revoke("key", KEY_ID);
    server
}

#[tokio::test]
async fn a_feed_of_5000_entries_is_caught_up_in_one_poll() {
    // Arrange: 5 000 revocations and then the test key's suspension, at the end of page 6.
    let server = long_feed(5_000).await;
    let device = Ed25519DeviceKey::generate();
    let token = server.issuer.access_token(&server.issuer.claims(&device));

    // Act: building the verifier is its first poll.
    let verifier = Verifier::builder(&server.issuer.issuer)
        .audience(AUDIENCE)
        .jwks(server.issuer.jwks())
        .revocation_poll_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();

    // Assert: every page was read in that one poll, so the suspension at the very end of the
    // feed already applies, and the feed counts as healthy.
    assert_eq!(server.requests(), 6, "5 001 entries in pages of 1 000");
    let err = call(&verifier, &device, &token).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Revoked);
    assert!(verifier.feed_healthy());
}

#[tokio::test]
async fn the_first_poll_starts_at_the_revocation_horizon() {
    // Arrange: 3 000 revocations from two hours ago (they can only name expired tokens), and
    // then a suspension of the test key just now.
    let server = feed_server().await;
    server.page_size.store(1_000, Ordering::SeqCst);
    let long_ago = now() - 7_200;
    for i in 0..3_000 {
        server.revoke_at("key", &format!("ak_test_old{i:07}"), long_ago);
    }
    server.revoke("key", KEY_ID);
    let device = Ed25519DeviceKey::generate();
    let token = server.issuer.access_token(&server.issuer.claims(&device));

    // Act
    let verifier = polling_verifier(&server).await;

    // Assert: the first request asked to start an hour (the longest token lifetime) plus the
    // margins back, so it skipped the old pages and the suspension applied at once.
    let since_time = server.since_times.lock().unwrap()[0];
    let horizon = now() - 3_600;
    assert!(
        (horizon - 60..=horizon).contains(&since_time),
        "since_time {since_time}, horizon {horizon}"
    );
    assert_eq!(server.cursors.lock().unwrap()[0], None);
    let err = call(&verifier, &device, &token).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Revoked);
}

#[tokio::test]
async fn a_feed_longer_than_one_poll_reports_unhealthy_until_caught_up() {
    // 25 000 entries: more than the 20 pages one poll reads.
    let server = long_feed(25_000).await;
    let device = Ed25519DeviceKey::generate();
    let token = server.issuer.access_token(&server.issuer.claims(&device));
    let verifier = Verifier::builder(&server.issuer.issuer)
        .audience(AUDIENCE)
        .jwks(server.issuer.jwks())
        .revocation_poll_interval(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    assert_eq!(server.requests(), 20, "one poll stops at 20 pages");
    assert!(
        !verifier.feed_healthy(),
        "healthy while 5 001 entries are unread"
    );

    assert!(eventually(SETTLE, async || verifier.feed_healthy()).await);
    let err = call(&verifier, &device, &token).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Revoked);
}

#[tokio::test]
async fn tokens_are_refused_once_the_feed_is_older_than_max_staleness() {
    // Arrange: a verifier that tolerates 300 ms without a feed read, and a valid token.
    let server = feed_server().await;
    let verifier = Verifier::builder(&server.issuer.issuer)
        .audience(AUDIENCE)
        .jwks(server.issuer.jwks())
        .revocation_poll_interval(Duration::from_millis(100))
        .max_staleness(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let device = Ed25519DeviceKey::generate();
    let token = server.issuer.access_token(&server.issuer.claims(&device));
    call(&verifier, &device, &token).await.unwrap();

    // Act: the feed goes down.
    server.up.store(false, Ordering::SeqCst);

    // Assert: refused as Unavailable (fail closed), and accepted again once the feed is back.
    let refused = eventually(SETTLE, async || {
        call(&verifier, &device, &token)
            .await
            .is_err_and(|e| e.kind() == &ErrorKind::Unavailable)
    })
    .await;
    assert!(
        refused,
        "a token is still accepted on stale revocation state"
    );
    server.up.store(true, Ordering::SeqCst);
    let accepted = eventually(SETTLE, async || {
        call(&verifier, &device, &token).await.is_ok()
    })
    .await;
    assert!(accepted);
}
