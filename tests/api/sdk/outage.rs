//! The client's backoff on 503: the server's PostgreSQL connection runs through a TCP link
//! the test cuts and restores, so keybound really loses its database (and answers 503, failing
//! closed) and really gets it back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keybound::config::ServeArgs;
use keybound_sdk::{Ed25519DeviceKey, ErrorKind, RetryPolicy};
use reqwest::Url;
use secrecy::SecretString;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::{client_for, create_key, requests_total};
use crate::helpers::{ADMIN_TOKEN, TestDb, spawn_app_on};

/// A TCP relay to PostgreSQL. Cut, it drops every open connection and closes new ones as soon
/// as they are accepted, like a database host that went away; restored, it relays again.
#[derive(Clone)]
struct DbLink {
    up: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<AbortHandle>>>,
}

impl DbLink {
    /// Starts relaying to the server `url` names; returns the link and `url` pointed at it.
    async fn start(url: &str) -> (DbLink, String) {
        let mut url = Url::parse(url).expect("a PostgreSQL URL");
        let upstream: SocketAddr = tokio::net::lookup_host((
            url.host_str().expect("a host").to_owned(),
            url.port().unwrap_or(5432),
        ))
        .await
        .expect("resolve PostgreSQL")
        .next()
        .expect("an address");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(local.port())).unwrap();

        let link = DbLink {
            up: Arc::new(AtomicBool::new(true)),
            open: Arc::default(),
        };
        let relay = link.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !relay.up.load(Ordering::SeqCst) {
                    continue; // dropped: closed at once
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                relay.open.lock().unwrap().push(task.abort_handle());
            }
        });
        (link, url.into())
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for connection in self.open.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// An outage of about a second is ridden out with backoff: the token comes once the database
/// is back. A lasting outage ends after `max_attempts`, spaced by the backoff, as
/// `ErrorKind::Unavailable`. Attempts are counted by the server (503s on `/v1/token`; no
/// other test makes those).
#[tokio::test]
async fn token_requests_back_off_through_a_database_outage() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let (link, url) = DbLink::start(&db.url).await;
    let store = keybound::store::open(&url)
        .await
        .expect("store through the link");
    let mut args = ServeArgs::for_tests();
    args.admin_token = Some(SecretString::from(ADMIN_TOKEN));
    let app = spawn_app_on(store, args).await;
    let key = create_key(&app, json!({})).await;

    // A one-second outage.
    let failed_before = requests_total(&app, "/v1/token", 503).await;
    link.cut();
    let restorer = link.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        restorer.restore();
    });
    let patient = RetryPolicy::default()
        .max_attempts(10)
        .initial_backoff(Duration::from_millis(100))
        .max_backoff(Duration::from_millis(400));
    let client = client_for(&app, &key, Arc::new(Ed25519DeviceKey::generate()))
        .retry_policy(patient)
        .build()
        .unwrap();
    let started = Instant::now();
    client
        .token()
        .await
        .expect("a token once the database is back");
    let waited = started.elapsed();
    let failed = requests_total(&app, "/v1/token", 503).await - failed_before;
    assert!(
        waited >= Duration::from_secs(1),
        "got a token after {waited:?}, during the outage"
    );
    assert!(
        failed >= 2,
        "{failed} attempts were refused with 503 before the one that worked"
    );

    // An outage that lasts.
    let failed_before = requests_total(&app, "/v1/token", 503).await;
    link.cut();
    let client = client_for(&app, &key, Arc::new(Ed25519DeviceKey::generate()))
        .retry_policy(
            RetryPolicy::default()
                .max_attempts(3)
                .initial_backoff(Duration::from_millis(200)),
        )
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client.token().await.unwrap_err();
    let waited = started.elapsed();
    let failed = requests_total(&app, "/v1/token", 503).await - failed_before;
    link.restore();

    assert_eq!(err.kind(), &ErrorKind::Unavailable, "{err}");
    assert_eq!(err.status(), Some(503));
    assert_eq!(failed, 3, "three attempts, then the client gives up");
    // Equal jitter: at least half of each wait, 100 ms then 200 ms.
    assert!(
        waited >= Duration::from_millis(300),
        "three attempts within {waited:?}: no backoff"
    );
}
