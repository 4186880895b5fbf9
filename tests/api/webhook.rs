//! The alert webhook (issue 5): a receiver on loopback checks every delivery's signature
//! independently (HMAC-SHA256 over `<timestamp>.<body>`), answers 500 first and 200 after,
//! and sees the retry; a refused delivery is dropped and counted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{TestApp, TestDb, now, spawn_app_args};
use crate::token::new_key;

const SECRET: &str = "webhook-secret-for-tests";

/// One delivery as the receiver saw it.
#[derive(Debug, Clone)]
struct Delivery {
    headers: HeaderMap,
    body: Vec<u8>,
}

/// A loopback receiver answering `statuses` in turn (the last one from then on).
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Delivery>>>,
}

async fn receiver(statuses: Vec<StatusCode>) -> Receiver {
    let seen: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let log = log.clone();
            let statuses = statuses.clone();
            async move {
                let mut log = log.lock().unwrap();
                log.push(Delivery {
                    headers,
                    body: body.to_vec(),
                });
                statuses[(log.len() - 1).min(statuses.len() - 1)]
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, seen }
}

impl Receiver {
    /// Waits until `n` deliveries arrived (up to 10 s) and returns them.
    async fn wait_for(&self, n: usize) -> Vec<Delivery> {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = self.seen.lock().unwrap().clone();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} deliveries",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// The receiver's check, written from the documentation, not from keybound's code.
fn verify(d: &Delivery, secret: &str) -> Result<Value, String> {
    let header = |name: &str| {
        d.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(format!("missing {name}"))
    };
    let ts = header("x-keybound-timestamp")?;
    let sig = header("x-keybound-signature")?;
    let hex = sig.strip_prefix("sha256=").ok_or("no sha256= prefix")?;
    let given: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&d.body);
    mac.verify_slice(&given).map_err(|_| "bad signature")?;
    let ts: i64 = ts.parse().map_err(|_| "timestamp not a number")?;
    if (now() - ts).abs() > 300 {
        return Err("stale timestamp".into());
    }
    serde_json::from_slice(&d.body).map_err(|e| e.to_string())
}

async fn app_with_webhook(db: &TestDb, url: &str) -> TestApp {
    let url = url.to_owned();
    spawn_app_args(db, move |a| {
        a.alert_webhook = Some(url.into());
        a.alert_webhook_secret = Some(SecretString::from(SECRET));
    })
    .await
}

/// Reports `key` as leaked, which raises a `KEY_LEAKED` alert.
async fn report_leak(app: &TestApp, key: &str) {
    let res = app
        .client
        .post(app.url("/v1/leaks"))
        .json(&json!({"key": key, "source": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn delivers_signed_alerts_and_retries_after_a_5xx() {
    let rx = receiver(vec![StatusCode::INTERNAL_SERVER_ERROR, StatusCode::OK]).await;
    let db = TestDb::sqlite().await;
    let app = app_with_webhook(&db, &rx.url).await;
    let (key, key_id) = new_key(&app, json!({})).await;

    report_leak(&app, &key).await;
    let seen = rx.wait_for(2).await;

    let first = verify(&seen[0], SECRET).expect("first attempt is signed");
    let second = verify(&seen[1], SECRET).expect("the retry is signed");
    assert_eq!(first, second, "a retry carries the same alert");
    assert_eq!(second["kind"], "KEY_LEAKED");
    assert_eq!(second["severity"], "critical");
    assert_eq!(second["key_id"], key_id);
    assert_eq!(
        seen[1].headers["x-keybound-alert-id"].to_str().unwrap(),
        second["id"].as_str().unwrap()
    );
    assert_eq!(seen[1].headers["content-type"], "application/json");
    let body = String::from_utf8(seen[1].body.clone()).unwrap();
    assert!(
        !body.contains(&key),
        "the webhook body never carries the key"
    );

    // A wrong secret or a tampered body or timestamp fails the receiver's check.
    assert!(verify(&seen[1], "other-secret").is_err());
    let mut tampered = seen[1].clone();
    tampered.body.push(b' ');
    assert!(verify(&tampered, SECRET).is_err());
    let mut shifted = seen[1].clone();
    let ts: i64 = shifted.headers["x-keybound-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    shifted.headers.insert(
        "x-keybound-timestamp",
        (ts + 1).to_string().parse().unwrap(),
    );
    assert!(verify(&shifted, SECRET).is_err(), "timestamp is in the MAC");

    // Delivered: no more attempts.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.seen.lock().unwrap().len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_refused_delivery_is_dropped_and_counted() {
    let rx = receiver(vec![StatusCode::BAD_REQUEST]).await;
    let db = TestDb::sqlite().await;
    let app = app_with_webhook(&db, &rx.url).await;
    let (key, _) = new_key(&app, json!({})).await;

    report_leak(&app, &key).await;
    rx.wait_for(1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let metrics = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics
            .lines()
            .any(|l| l.starts_with("keybound_webhook_dropped_total{reason=\"rejected\"}"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 4xx is final: no retry.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(rx.seen.lock().unwrap().len(), 1);
    app.stop().await;
}
