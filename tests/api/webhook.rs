//! The alert webhook (contract section 12, Standard Webhooks): a receiver on loopback checks
//! every delivery's signatures, with a check written from the specification and with the
//! independent `standardwebhooks` npm package (installed by the test into a scratch
//! directory), under each of two secrets; it answers 500 first and 200 after, and sees the
//! retry carry the same `webhook-id`; a refused delivery is dropped and counted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::Sha256;

use crate::helpers::{TestApp, TestDb, expect_json, now, spawn_app_args};
use crate::token::new_key;

/// Two secrets, as during a rotation (Standard Webhooks format).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const SECRET_2: &str = "whsec_dGVzdC1zZWNvbmQtc2VjcmV0LWZvci1yb3RhdGlvbg==";

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

/// The receiver's check, written from the Standard Webhooks specification, not from
/// keybound's code: any `v1,` signature in `webhook-signature` must be the base64 HMAC-SHA256,
/// under the base64-decoded part of the `whsec_` secret, of `<id>.<timestamp>.<body>`.
fn verify(d: &Delivery, secret: &str) -> Result<Value, String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let header = |name: &str| {
        d.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(format!("missing {name}"))
    };
    let (id, ts, sigs) = (
        header("webhook-id")?,
        header("webhook-timestamp")?,
        header("webhook-signature")?,
    );
    let key = b64.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let ok = sigs.split(' ').any(|sig| {
        let Some(given) = sig.strip_prefix("v1,").and_then(|s| b64.decode(s).ok()) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{id}.{ts}.").as_bytes());
        mac.update(&d.body);
        mac.verify_slice(&given).is_ok()
    });
    if !ok {
        return Err("bad signature".into());
    }
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
        a.alert_webhook_secret = vec![SecretString::from(SECRET), SecretString::from(SECRET_2)];
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

    for secret in [SECRET, SECRET_2] {
        verify(&seen[0], secret).expect("first attempt is signed under each secret");
        verify(&seen[1], secret).expect("the retry is signed under each secret");
    }
    let first = verify(&seen[0], SECRET).unwrap();
    let second = verify(&seen[1], SECRET).unwrap();
    assert_eq!(first, second, "a retry carries the same alert");
    assert_eq!(second["type"], "alert.key_leaked");
    let data = &second["data"];
    assert_eq!(data["kind"], "KEY_LEAKED");
    assert_eq!(data["severity"], "critical");
    assert_eq!(data["key_id"], key_id);
    let at = data["at"].as_i64().unwrap();
    let at_rfc3339 = time::OffsetDateTime::from_unix_timestamp(at)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(
        second["timestamp"], at_rfc3339,
        "timestamp is the alert's time, RFC 3339"
    );
    let id = |d: &Delivery| d.headers["webhook-id"].to_str().unwrap().to_owned();
    assert_eq!(
        id(&seen[0]),
        id(&seen[1]),
        "a retry carries the same webhook-id"
    );
    assert_eq!(
        id(&seen[1]),
        data["id"].as_str().unwrap(),
        "webhook-id is the alert id"
    );
    assert_eq!(
        seen[1].headers["webhook-signature"]
            .to_str()
            .unwrap()
            .split(' ')
            .count(),
        2,
        "one signature per secret"
    );
    // The alert as the admin API shows it.
    let listed = expect_json(
        app.admin_get(&format!("/alerts?kind=KEY_LEAKED&key_id={key_id}"))
            .await,
        reqwest::StatusCode::OK,
    )
    .await;
    assert_eq!(&listed["alerts"][0], data);
    assert_eq!(seen[1].headers["content-type"], "application/json");
    let body = String::from_utf8(seen[1].body.clone()).unwrap();
    assert!(
        !body.contains(&key),
        "the webhook body never carries the key"
    );

    // A wrong secret or a tampered body, id or timestamp fails the receiver's check.
    assert!(verify(&seen[1], "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").is_err());
    let mut tampered = seen[1].clone();
    tampered.body.push(b' ');
    assert!(verify(&tampered, SECRET).is_err());
    for name in ["webhook-timestamp", "webhook-id"] {
        let mut shifted = seen[1].clone();
        let v = format!("{}1", shifted.headers[name].to_str().unwrap());
        shifted.headers.insert(name, v.parse().unwrap());
        assert!(verify(&shifted, SECRET).is_err(), "{name} is in the MAC");
    }

    // The independent implementation accepts both deliveries under each secret, refuses a
    // wrong one.
    if let Some(verdicts) = standardwebhooks_verify(
        &seen,
        &[SECRET, SECRET_2, "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"],
    ) {
        assert_eq!(
            verdicts,
            [["ok", "ok", "refused"], ["ok", "ok", "refused"]],
            "standardwebhooks (npm) verdicts per delivery and secret"
        );
    }

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

/// Verifies each delivery under each secret with the `standardwebhooks` npm package (the
/// reference implementation's JavaScript library), installed into a scratch directory;
/// returns `"ok"` or `"refused"` per delivery and secret. `None` (skip) without node and npm,
/// except under `CI=true`.
fn standardwebhooks_verify(deliveries: &[Delivery], secrets: &[&str]) -> Option<Vec<Vec<String>>> {
    use std::process::{Command, Stdio};
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let have = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !have("node") || !have("npm") {
        assert!(!ci, "node and npm are needed under CI");
        eprintln!("skipped: no node/npm");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let installed = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(dir.path())
        .arg("standardwebhooks@1")
        .status()
        .expect("npm runs");
    assert!(installed.success(), "npm install standardwebhooks");
    let input = json!({
        "secrets": secrets,
        "deliveries": deliveries.iter().map(|d| json!({
            "body": String::from_utf8(d.body.clone()).unwrap(),
            "headers": d.headers.iter()
                .map(|(k, v)| (k.as_str().to_owned(), Value::from(v.to_str().unwrap())))
                .collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
    });
    const SCRIPT: &str = r#"
const { Webhook } = require(process.argv[1] + "/node_modules/standardwebhooks");
const input = JSON.parse(require("fs").readFileSync(0, "utf8"));
const out = input.deliveries.map((d) => input.secrets.map((s) => {
  try { new Webhook(s).verify(d.body, d.headers); return "ok"; } catch (e) { return "refused"; }
}));
console.log(JSON.stringify(out));
"#;
    let mut child = Command::new("node")
        .arg("-e")
        .arg(SCRIPT)
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "node verifier ran");
    Some(serde_json::from_slice(&out.stdout).expect("verdicts"))
}
