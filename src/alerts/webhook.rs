//! The alert webhook (contract section 12, Standard Webhooks): every alert is POSTed as JSON to
//! `--alert-webhook`, signed so a receiver built with the `standardwebhooks` libraries verifies
//! it as it comes.
//!
//! # What the receiver gets
//!
//! ```text
//! POST <url>
//! Content-Type: application/json
//! webhook-id: al_…                        (the alert id: the same on every retry, dedupe on it)
//! webhook-timestamp: 1767225600           (unix seconds of this attempt)
//! webhook-signature: v1,<base64> v1,<base64>   (one per configured secret)
//!
//! {"type": "alert.key_leaked", "timestamp": "2026-01-01T00:00:00Z",
//!  "data": {"id": "al_…", "at": …, "kind": "KEY_LEAKED", "severity": "critical", …}}
//! ```
//!
//! Each signature is `base64(HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>"))`,
//! where `key` is the base64-decoded part of a `whsec_<base64>` secret
//! (`--alert-webhook-secret`, repeatable: during a rotation both the old and the new secret
//! sign, so receivers switch without downtime). Binding the timestamp into the MAC is what
//! lets a receiver refuse an old, validly signed delivery replayed later.
//!
//! # Delivery
//!
//! [`Webhook::send`] never waits: it puts the alert in one of two bounded queues that one
//! background task drains, the **priority lane** first. `KEY_LEAKED`, `REFRESH_TOKEN_REUSED`
//! and `ATTESTATION_FAILED` go to the priority lane, so a flood of lower-severity alerts
//! (new devices, new networks) can fill only its own queue and never push them out or delay
//! them behind it. The same kind for the same subject (device, else key, else IP) within
//! [`DEDUP_WINDOW`] is delivered once: it is stored all the same, only the notification is
//! spared. A network error, a timeout, a 5xx, 408 or 429 is retried with exponential backoff
//! (with jitter) up to [`WebhookConfig::max_attempts`], with the same `webhook-id`; any other
//! non-2xx answer is final. An alert is dropped, and counted in
//! `keybound_webhook_dropped_total{reason}`, when its queue is full (`queue_full`), it repeats
//! one just queued (`duplicate`), its attempts run out (`attempts_exhausted`) or the receiver
//! refuses it (`rejected`). Alerts are stored in the database independently of delivery, so a
//! drop loses a notification, never the alert. Redirects are not followed (a signed POST
//! should not wander). The body passes the log redaction filter first, since details can hold
//! text a client chose.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use reqwest::header::CONTENT_TYPE;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::store::AlertRecord;

/// Header carrying the signatures (`v1,<base64>`, space separated).
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// Header carrying the unix seconds included in the MAC.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Header carrying the alert id (the message id), the same on every retry.
pub const ID_HEADER: &str = "webhook-id";

/// Alert kinds (by wire name) that take the priority lane: they call for action now, and a
/// flood of anything else must not crowd them out. `ATTESTATION_FAILED` is raised by the
/// attestation checks (contract section 8).
pub const PRIORITY_KINDS: [&str; 3] = ["KEY_LEAKED", "REFRESH_TOKEN_REUSED", "ATTESTATION_FAILED"];

/// How long an alert of one kind for one subject suppresses the same kind for the same subject.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(10);

/// A Standard Webhooks signing secret, `whsec_<standard base64>`; holds the decoded key only,
/// zeroized on drop, never printed.
#[derive(Clone)]
pub struct WebhookSecret(SecretSlice<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

impl WebhookSecret {
    /// Parses `whsec_<base64>` (standard alphabet, as the Standard Webhooks libraries write
    /// it). The error never repeats the secret.
    pub fn parse(s: &SecretString) -> Result<WebhookSecret, String> {
        let s = s.expose_secret().trim();
        let b64 = s
            .strip_prefix("whsec_")
            .ok_or("--alert-webhook-secret must look like whsec_<base64>")?;
        let key = STANDARD
            .decode(b64)
            .map_err(|_| "--alert-webhook-secret: the part after whsec_ is not standard base64")?;
        if key.len() < 16 {
            return Err("--alert-webhook-secret: the key must be at least 16 bytes".into());
        }
        Ok(WebhookSecret(key.into()))
    }

    fn key(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

/// Where and how alerts are delivered. [`WebhookConfig::new`] gives the defaults.
pub struct WebhookConfig {
    /// The receiver (`http` or `https`). It may embed a credential, so it is never logged.
    pub url: reqwest::Url,
    /// The signing keys; each adds a signature. Without any, deliveries carry none (refused by
    /// `--profile prod`).
    pub secrets: Vec<WebhookSecret>,
    /// Alerts waiting in each lane before new ones are dropped. Default 1024.
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
    pub fn new(url: &str, secrets: Vec<WebhookSecret>) -> Result<WebhookConfig, String> {
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or("--alert-webhook must be an absolute http:// or https:// URL")?;
        Ok(WebhookConfig {
            url,
            secrets,
            queue_capacity: 1024,
            max_attempts: 5,
            first_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
        })
    }
}

/// The sending side of the delivery queues. Cheap to clone.
#[derive(Clone)]
pub struct Webhook {
    priority: mpsc::Sender<AlertRecord>,
    normal: mpsc::Sender<AlertRecord>,
    recent: moka::sync::Cache<(String, String), ()>,
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
        let (priority, priority_rx) = mpsc::channel(config.queue_capacity.max(1));
        let (normal, normal_rx) = mpsc::channel(config.queue_capacity.max(1));
        tokio::spawn(run(priority_rx, normal_rx, client, config));
        Ok(Webhook {
            priority,
            normal,
            recent: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(DEDUP_WINDOW)
                .build(),
        })
    }

    /// Queues `alert` for delivery in its lane; drops (and counts) it when it repeats one
    /// queued within [`DEDUP_WINDOW`] or its lane is full.
    pub fn send(&self, alert: &AlertRecord) {
        let subject = alert
            .device_id
            .as_deref()
            .or(alert.key_id.as_deref())
            .or(alert.ip.as_deref())
            .unwrap_or("-");
        let entry = self
            .recent
            .entry((alert.kind.clone(), subject.to_owned()))
            .or_insert(());
        if !entry.is_fresh() {
            dropped("duplicate", alert);
            return;
        }
        let lane = if PRIORITY_KINDS.contains(&alert.kind.as_str()) {
            &self.priority
        } else {
            &self.normal
        };
        if lane.try_send(alert.clone()).is_err() {
            dropped("queue_full", alert);
        }
    }
}

/// `v1,<base64 of HMAC-SHA256(key, "<id>.<timestamp>.<body>")>` (Standard Webhooks).
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` value: one signature per secret, space separated.
pub fn signatures(secrets: &[WebhookSecret], id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|s| signature(s.key(), id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
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

async fn run(
    mut priority: mpsc::Receiver<AlertRecord>,
    mut normal: mpsc::Receiver<AlertRecord>,
    client: reqwest::Client,
    config: WebhookConfig,
) {
    loop {
        // `biased`: whenever the priority lane holds an alert, it goes next.
        let alert = tokio::select! {
            biased;
            Some(a) = priority.recv() => a,
            Some(a) = normal.recv() => a,
            else => return,
        };
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
        // A fresh timestamp per attempt, so a retry is not refused as stale by the receiver;
        // the same id, so the receiver can tell it is a retry.
        let ts = crate::clock::now();
        let mut req = client
            .post(config.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ID_HEADER, &alert.id)
            .header(TIMESTAMP_HEADER, ts.to_string())
            .body(body.clone());
        if !config.secrets.is_empty() {
            req = req.header(
                SIGNATURE_HEADER,
                signatures(&config.secrets, &alert.id, ts, &body),
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

/// The Standard Webhooks payload: `type`, `timestamp` (the alert's time, RFC 3339) and `data`
/// (the alert as `GET /admin/v1/alerts` shows it). Alert details can hold text a client chose
/// (a leak report's `source`), so the log filter's masking applies here too: the body leaves
/// the process.
fn body_of(alert: &AlertRecord) -> Vec<u8> {
    let timestamp = time::OffsetDateTime::from_unix_timestamp(alert.at)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .expect("a UTC time formats as RFC 3339");
    let json = serde_json::to_vec(&serde_json::json!({
        "type": format!("alert.{}", alert.kind.to_ascii_lowercase()),
        "timestamp": timestamp,
        "data": alert,
    }))
    .expect("an alert always serializes");
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

    fn secret(s: &str) -> WebhookSecret {
        WebhookSecret::parse(&SecretString::from(s)).unwrap()
    }

    fn alert(kind: &str, key_id: &str) -> AlertRecord {
        AlertRecord {
            id: format!("al_{kind}_{key_id}"),
            at: 1_767_225_600,
            kind: kind.into(),
            severity: "info".into(),
            key_id: Some(key_id.into()),
            device_id: None,
            ip: None,
            details: serde_json::json!({}),
        }
    }

    #[test]
    fn signature_matches_the_standard_webhooks_vector() {
        // The reference libraries' test vector (standard-webhooks, e.g. python/tests).
        let s = secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(
            signature(
                s.key(),
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                b"{\"test\": 2432232314}"
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn each_secret_adds_one_signature() {
        let a = secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let b = secret("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
        let both = signatures(&[a.clone(), b.clone()], "id", 1, b"x");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(
            parts,
            [
                signature(a.key(), "id", 1, b"x"),
                signature(b.key(), "id", 1, b"x")
            ]
        );
        assert_ne!(parts[0], parts[1]);
        assert_ne!(
            signature(a.key(), "id", 1, b"x"),
            signature(a.key(), "id", 2, b"x"),
            "the timestamp is in the MAC"
        );
        assert_ne!(
            signature(a.key(), "id", 1, b"x"),
            signature(a.key(), "other", 1, b"x"),
            "the id is in the MAC"
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64_and_never_echo() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not*base64!",
            "whsec_",
            "whsec_AAAA",
        ] {
            let err = WebhookSecret::parse(&SecretString::from(bad)).unwrap_err();
            assert!(
                !err.contains(bad.trim_start_matches("whsec_")) || bad == "whsec_",
                "{err}"
            );
        }
        let s = secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(format!("{s:?}"), "WebhookSecret([REDACTED])");
    }

    #[test]
    fn the_body_is_type_timestamp_and_the_alert() {
        let v: serde_json::Value =
            serde_json::from_slice(&body_of(&alert("KEY_LEAKED", "ak_1"))).unwrap();
        assert_eq!(v["type"], "alert.key_leaked");
        assert_eq!(v["timestamp"], "2026-01-01T00:00:00Z");
        assert_eq!(v["data"]["id"], "al_KEY_LEAKED_ak_1");
        assert_eq!(v["data"]["kind"], "KEY_LEAKED");
        assert_eq!(v.as_object().unwrap().len(), 3);
    }

    #[test]
    fn secret_shapes_in_details_are_masked() {
        let key = format!("sk_prod_{}", "a".repeat(61));
        let mut a = alert("KEY_LEAKED", "ak_1");
        a.details = serde_json::json!({"source": format!("found {key} in a gist")});
        let v: serde_json::Value = serde_json::from_slice(&body_of(&a)).expect("still JSON");
        assert_eq!(
            v["data"]["details"]["source"],
            "found sk_prod_[REDACTED] in a gist"
        );
    }

    #[tokio::test]
    async fn duplicates_are_spared_and_floods_cannot_crowd_out_the_priority_lane() {
        // No receiver: the delivery task is never started, so what is queued stays queued.
        let (priority, mut priority_rx) = mpsc::channel(2);
        let (normal, mut normal_rx) = mpsc::channel(2);
        let hook = Webhook {
            priority,
            normal,
            recent: moka::sync::Cache::builder()
                .time_to_live(DEDUP_WINDOW)
                .build(),
        };
        // A flood of low-severity alerts fills only the normal lane.
        for n in 0..50 {
            hook.send(&alert("NEW_DEVICE", &format!("ak_{n}")));
        }
        // The same kind for the same subject within the window: once.
        hook.send(&alert("KEY_LEAKED", "ak_x"));
        hook.send(&alert("KEY_LEAKED", "ak_x"));
        hook.send(&alert("REFRESH_TOKEN_REUSED", "ak_x"));
        let first = priority_rx.try_recv().unwrap();
        let second = priority_rx.try_recv().unwrap();
        assert_eq!(
            (first.kind.as_str(), second.kind.as_str()),
            ("KEY_LEAKED", "REFRESH_TOKEN_REUSED")
        );
        assert!(priority_rx.try_recv().is_err(), "the repeat was not queued");
        assert_eq!(
            normal_rx.try_recv().unwrap().key_id.as_deref(),
            Some("ak_0")
        );
        hook.send(&alert("ATTESTATION_FAILED", "ak_y"));
        assert_eq!(priority_rx.try_recv().unwrap().kind, "ATTESTATION_FAILED");
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
            assert_eq!(WebhookConfig::new(url, vec![]).is_ok(), ok, "{url}");
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
