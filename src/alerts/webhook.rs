//! The alert webhook: every alert is POSTed as JSON to `--alert-webhook`, signed so the
//! receiver can tell it came from keybound and was not replayed.
//!
//! # What the receiver gets
//!
//! ```text
//! POST <url>
//! Content-Type: application/json
//! X-Keybound-Alert-Id: al_…                   (the same on every retry: dedupe on it)
//! X-Keybound-Timestamp: 1767225600            (unix seconds of this attempt)
//! X-Keybound-Signature: sha256=<64 hex digits>
//!
//! {"id": "al_…", "at": …, "kind": "KEY_LEAKED", "severity": "critical",
//!  "key_id": "ak_…", "device_id": null, "ip": "…", "details": {…}}
//! ```
//!
//! The signature is `HMAC-SHA256(secret, "<timestamp>.<body>")` in lowercase hex, where
//! `<timestamp>` is the `X-Keybound-Timestamp` value and `<body>` the exact bytes received.
//! A receiver recomputes it over the raw body, compares in constant time, and refuses a
//! timestamp more than a few minutes from its clock: binding the timestamp into the MAC is
//! what stops an old, validly signed delivery from being replayed later.
//!
//! # Delivery
//!
//! [`Webhook::send`] never waits: it puts the alert in a bounded queue that one background
//! task drains in order. A network error, a timeout, a 5xx, 408 or 429 is retried with
//! exponential backoff (with jitter) up to [`WebhookConfig::max_attempts`]; any other
//! non-2xx answer is final. An alert is dropped, and counted in
//! `keybound_webhook_dropped_total{reason}`, when the queue is full (`queue_full`), its
//! attempts run out (`attempts_exhausted`) or the receiver refuses it (`rejected`). Alerts are
//! stored in the database independently of delivery, so a drop loses a notification,
//! never the alert. Redirects are not followed (a signed POST should not wander). The body passes
//! the log redaction filter first, since details can hold text a client chose.

use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::store::AlertRecord;

/// Header carrying `sha256=<hex HMAC>`.
pub const SIGNATURE_HEADER: &str = "x-keybound-signature";
/// Header carrying the unix seconds included in the MAC.
pub const TIMESTAMP_HEADER: &str = "x-keybound-timestamp";
/// Header carrying the alert id, for receivers that deduplicate retries.
pub const ALERT_ID_HEADER: &str = "x-keybound-alert-id";

/// Where and how alerts are delivered. [`WebhookConfig::new`] gives the defaults.
pub struct WebhookConfig {
    /// The receiver (`http` or `https`). It may embed a credential, so it is never logged.
    pub url: reqwest::Url,
    /// The HMAC key; without one, deliveries carry no signature (refused by `--profile prod`).
    pub secret: Option<SecretString>,
    /// Alerts waiting for delivery before new ones are dropped. Default 1024.
    pub queue_capacity: usize,
    /// Tries per alert, the first included. Default 5.
    pub max_attempts: u32,
    /// Wait before the first retry; doubles each time (0.5 s, 1 s, 2 s, 4 s by default).
    pub first_backoff: Duration,
    /// Time limit of one attempt, connection included. Default 10 s.
    pub timeout: Duration,
}

impl WebhookConfig {
    /// The defaults for `url`; refuses anything but an absolute `http(s)` URL.
    pub fn new(url: &str, secret: Option<SecretString>) -> Result<WebhookConfig, String> {
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or("--alert-webhook must be an absolute http:// or https:// URL")?;
        Ok(WebhookConfig {
            url,
            secret,
            queue_capacity: 1024,
            max_attempts: 5,
            first_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
        })
    }
}

/// The sending side of the delivery queue. Cheap to clone.
#[derive(Clone)]
pub struct Webhook {
    tx: mpsc::Sender<AlertRecord>,
}

impl Webhook {
    /// Starts the delivery task (on the current Tokio runtime).
    pub fn start(config: WebhookConfig) -> Result<Webhook, String> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("keybound/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("alert webhook client: {e}"))?;
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        tokio::spawn(run(rx, client, config));
        Ok(Webhook { tx })
    }

    /// Queues `alert` for delivery; drops (and counts) it when the queue is full.
    pub fn send(&self, alert: &AlertRecord) {
        if self.tx.try_send(alert.clone()).is_err() {
            dropped("queue_full", alert);
        }
    }
}

/// `sha256=<lowercase hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn dropped(reason: &'static str, alert: &AlertRecord) {
    metrics::counter!("keybound_webhook_dropped_total", "reason" => reason).increment(1);
    tracing::warn!(reason, alert_id = %alert.id, kind = %alert.kind, "alert webhook delivery dropped");
}

/// How one alert's delivery ended.
enum Outcome {
    Delivered,
    Rejected(StatusCode),
    Exhausted,
}

async fn run(mut rx: mpsc::Receiver<AlertRecord>, client: reqwest::Client, config: WebhookConfig) {
    while let Some(alert) = rx.recv().await {
        match deliver(&client, &config, &alert).await {
            Outcome::Delivered => {
                metrics::counter!("keybound_webhook_delivered_total").increment(1);
            }
            Outcome::Rejected(status) => {
                tracing::warn!(status = status.as_u16(), "alert webhook refused a delivery");
                dropped("rejected", &alert);
            }
            Outcome::Exhausted => dropped("attempts_exhausted", &alert),
        }
    }
}

async fn deliver(client: &reqwest::Client, config: &WebhookConfig, alert: &AlertRecord) -> Outcome {
    let body = body_of(alert);
    let mut backoff = config.first_backoff;
    for attempt in 1..=config.max_attempts.max(1) {
        // A fresh timestamp per attempt, so a retry is not refused as stale by the receiver.
        let ts = crate::state::now();
        let mut req = client
            .post(config.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(ALERT_ID_HEADER, &alert.id)
            .body(body.clone());
        if let Some(secret) = &config.secret {
            req = req.header(
                SIGNATURE_HEADER,
                signature(secret.expose_secret().as_bytes(), ts, &body),
            );
        }
        match req.send().await {
            Ok(res) if res.status().is_success() => return Outcome::Delivered,
            Ok(res) if retryable(res.status()) => {
                tracing::debug!(
                    attempt,
                    status = res.status().as_u16(),
                    "alert webhook: will retry"
                );
            }
            Ok(res) => return Outcome::Rejected(res.status()),
            // `without_url`: the URL may carry a credential of the receiver's.
            Err(e) => {
                tracing::debug!(attempt, error = %e.without_url(), "alert webhook: will retry")
            }
        }
        if attempt < config.max_attempts {
            // Jitter (50–100 % of the step), so instances behind one outage do not retry in step.
            let factor = 0.5 + rand::random::<f64>() * 0.5;
            tokio::time::sleep(backoff.mul_f64(factor)).await;
            backoff = backoff.saturating_mul(2);
        }
    }
    Outcome::Exhausted
}

/// The JSON body. Alert details can hold text a client chose (a leak report's `source`), so the
/// log filter's masking applies here too: the body leaves the process.
fn body_of(alert: &AlertRecord) -> Vec<u8> {
    let json = serde_json::to_vec(alert).expect("an alert always serializes");
    crate::telemetry::redact::redact(&json).into_owned()
}

/// Answers that say "try again later" rather than "no".
fn retryable(status: StatusCode) -> bool {
    status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_over_timestamp_dot_body() {
        let expected = {
            let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
            mac.update(b"1700000000.{\"a\":1}");
            format!("sha256={}", hex(&mac.finalize().into_bytes()))
        };
        assert_eq!(signature(b"Jefe", 1_700_000_000, b"{\"a\":1}"), expected);
        assert_ne!(
            signature(b"Jefe", 1_700_000_000, b"x"),
            signature(b"Jefe", 1_700_000_001, b"x"),
            "the timestamp is part of the MAC"
        );
    }

    #[test]
    fn rfc_4231_vector() {
        // The primitive itself, against RFC 4231 test case 2.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn secret_shapes_in_details_are_masked() {
        let key = format!("sk_prod_{}", "a".repeat(61));
        let alert = AlertRecord {
            id: "al_1".into(),
            at: 0,
            kind: "KEY_LEAKED".into(),
            severity: "critical".into(),
            key_id: None,
            device_id: None,
            ip: None,
            details: serde_json::json!({"source": format!("found {key} in a gist")}),
        };
        let body = body_of(&alert);
        let v: serde_json::Value = serde_json::from_slice(&body).expect("still JSON");
        assert_eq!(v["details"]["source"], "found sk_prod_[REDACTED] in a gist");
    }

    #[test]
    fn only_http_urls_are_accepted() {
        for (url, ok) in [
            ("https://hooks.example.com/keybound", true),
            ("http://127.0.0.1:9000/", true),
            ("ftp://example.com/", false),
            ("/relative", false),
            ("not a url", false),
        ] {
            assert_eq!(WebhookConfig::new(url, None).is_ok(), ok, "{url}");
        }
    }

    #[test]
    fn retries_only_transient_answers() {
        for (status, retry) in [
            (500, true),
            (503, true),
            (429, true),
            (408, true),
            (400, false),
            (404, false),
            (301, false),
        ] {
            assert_eq!(
                retryable(StatusCode::from_u16(status).unwrap()),
                retry,
                "{status}"
            );
        }
    }
}
