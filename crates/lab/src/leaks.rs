//! Secrets that escape: A source leak (a leaked key used from the attacker's own device),
//! B log leak (every log line scanned for every secret), C memory dump (the server's memory
//! read through `/proc/<pid>/mem`).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use super::report::{Outcome, Section, thousands};
use super::target::{LabDevice, Reply, SpawnedServer, Target, phone};
use super::tokens::ResourceServer;
use keybound::devices::trust::{self, DeviceHistory, NetworkSignals, TrustInputs};
use keybound::error::{Error, Result};
use keybound::keys::ApiKey;

// ---- A: source leak ----

/// What an attacker holding a leaked key gets from their own device.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The exchange's answer.
    pub status: String,
    /// `trusted` / `limited`.
    pub level: String,
    /// Trust score.
    pub score: f64,
    /// Granted scopes.
    pub scope: String,
    /// Access token lifetime, seconds.
    pub expires_in: u64,
}

impl Grant {
    fn of(reply: &Reply) -> Grant {
        Grant {
            status: reply.summary(),
            level: reply.body["trust"]["level"].as_str().unwrap_or("-").into(),
            score: reply.body["trust"]["score"].as_f64().unwrap_or(0.0),
            scope: reply.body["scope"].as_str().unwrap_or("").into(),
            expires_in: reply.body["expires_in"].as_u64().unwrap_or(0),
        }
    }
}

/// Scenario A's measurements.
#[derive(Debug, Clone)]
pub struct SourceLeak {
    /// The key's scopes.
    pub key_scopes: String,
    /// The server's configured access-token lifetime (what a trusted device gets).
    pub configured_ttl: u64,
    /// The attacker's grant with a default key.
    pub default_key: Grant,
    /// The attacker's grant when the key has `trust_on_enroll`.
    pub trust_on_enroll: Grant,
    /// First use by the attacker → `NEW_DEVICE` alert visible in the admin API.
    pub alert_after: Option<Duration>,
    /// Whether the attacker's device would earn `trusted` after 5 exchanges over 24 h.
    pub earns_trust_unless_contained: bool,
    /// Leak report → the attacker's next exchange refused.
    pub contained_exchange_after: Option<Duration>,
    /// The attacker's exchange after containment.
    pub exchange_after_containment: String,
    /// The attacker's refresh after containment.
    pub refresh_after_containment: String,
    /// Leak report → the resource server (SDK Verifier polling the feed every second)
    /// refuses the attacker's unexpired access token.
    pub verifier_refuses_after: Option<Duration>,
    /// The resource server's poll interval in the lab.
    pub verifier_poll: Duration,
    /// The attacker's read request accepted at the resource server before containment.
    pub read_before: bool,
    /// With `--auto-suspend-on FINGERPRINT_MISMATCH`: a copied device key used with the
    /// attacker's own fingerprint → the device revoked (the copy's next exchange answers
    /// `DEVICE_REVOKED`). `None` when not measured (a `--url` target).
    pub auto_contained_clone: Option<(Option<Duration>, String)>,
}

/// A: the attacker found a key in a public repository and uses it from their own phone, on
/// their own network. The victim uses the same key from an iPhone on another network.
pub async fn source_leak(t: &Target) -> Result<SourceLeak> {
    let poll = Duration::from_secs(1);
    let rs = ResourceServer::start(t.base(), poll).await?;
    let victim_net = Target::client_ip(10, 0, 5);
    let attacker_net = Target::client_ip(66, 0, 7);
    let victim_attrs = phone("ios", "iPhone15,2", "victim-install", "ja-JP", "Asia/Tokyo");
    let attacker_attrs = phone("android", "Pixel 8", "attacker-install", "en-US", "UTC");

    let (key, key_id) = t.create_key(json!({})).await?;
    let key = key.expose_secret().to_owned();
    let victim = LabDevice::new();
    let r = t.exchange(&key, &victim, &victim_attrs, victim_net).await?;
    if !r.ok() {
        return Err(Error::internal(format!("victim exchange: {}", r.summary())));
    }

    // The attack: first use of the leaked key by a new device key.
    let attacker = LabDevice::new();
    let first_use = Instant::now();
    let reply = t
        .exchange(&key, &attacker, &attacker_attrs, attacker_net)
        .await?;
    let default_key = Grant::of(&reply);
    let attacker_device = reply.body["device_id"].as_str().unwrap_or("").to_owned();
    let alert_after = wait_for_device_alert(t, &key_id, &attacker_device, first_use).await?;
    let access = reply.body["access_token"].as_str().unwrap_or("").to_owned();
    let refresh = reply.body["refresh_token"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let url = rs.url("/v1/users");
    let read_before =
        rs.call(
            "GET",
            &url,
            Some(&format!("DPoP {access}")),
            Some(&attacker.proof_for_token("GET", &url, &access)),
        )
        .await?
        .0 == 200;

    // Containment: a secret scanner reports the key (POST /v1/leaks), which suspends it.
    let reported = Instant::now();
    let leak = t
        .send(
            t.client()
                .post(t.url("/v1/leaks"))
                .json(&json!({"key": key, "source": "lab: public repository"})),
        )
        .await?;
    if leak.status != 202 {
        return Err(Error::internal(format!("leak report: {}", leak.summary())));
    }
    let mut contained_exchange_after = None;
    let mut exchange_after = String::new();
    while reported.elapsed() < Duration::from_secs(10) {
        let r = t
            .exchange(&key, &attacker, &attacker_attrs, attacker_net)
            .await?;
        exchange_after = r.summary();
        if !r.ok() {
            contained_exchange_after = Some(reported.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let refresh_after = t
        .refresh(&refresh, &attacker, attacker_net)
        .await?
        .summary();
    let mut verifier_refuses_after = None;
    while reported.elapsed() < poll * 10 {
        let (status, _) = rs
            .call(
                "GET",
                &url,
                Some(&format!("DPoP {access}")),
                Some(&attacker.proof_for_token("GET", &url, &access)),
            )
            .await?;
        if status != 200 {
            verifier_refuses_after = Some(reported.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The same leak with a key created with trust_on_enroll.
    let (tkey, _) = t.create_key(json!({"trust_on_enroll": true})).await?;
    let r = t
        .exchange(
            tkey.expose_secret(),
            &LabDevice::new(),
            &attacker_attrs,
            attacker_net,
        )
        .await?;
    let trust_on_enroll = Grant::of(&r);

    // Left alone, does the attacker's device earn trust? The same pure function the server
    // runs, with the history the attacker would build: 5 exchanges over a day, same phone.
    let stored: trust::Attributes = attacker_attrs["device"]["attributes"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default();
    let later = trust::evaluate(&TrustInputs {
        stored: &stored,
        presented: &stored,
        history: DeviceHistory {
            successful_exchanges: trust::EARN_MIN_EXCHANGES,
            age_seconds: trust::EARN_MIN_AGE_SECONDS,
            previous_mismatches: 0,
        },
        network: NetworkSignals {
            network_seen_before: true,
            distinct_networks_recent: 1,
        },
        trust_on_enroll: false,
        approved: false,
        attested: false,
        is_new: false,
    });

    let auto_contained_clone = if t.running().is_some() {
        Some(auto_contained_clone(&victim_attrs, &attacker_attrs).await?)
    } else {
        None
    };

    Ok(SourceLeak {
        auto_contained_clone,
        key_scopes: "read:users write:orders".into(),
        configured_ttl: t
            .running()
            .map_or(300, |r| r.state.settings.access_ttl_secs as u64),
        default_key,
        trust_on_enroll,
        alert_after,
        earns_trust_unless_contained: later.level == trust::TrustLevel::Trusted,
        contained_exchange_after,
        exchange_after_containment: exchange_after,
        refresh_after_containment: refresh_after,
        verifier_refuses_after,
        verifier_poll: poll,
        read_before,
    })
}

/// A server with `--auto-suspend-on FINGERPRINT_MISMATCH`: the victim's device key is copied
/// along with the API key and used with the attacker's fingerprint. Time from that first use
/// until the device is revoked (the copy's next exchange answers `DEVICE_REVOKED`).
async fn auto_contained_clone(
    victim_attrs: &Value,
    attacker_attrs: &Value,
) -> Result<(Option<Duration>, String)> {
    let t = Target::in_process_with(|a| {
        a.auto_suspend_on = vec![keybound::alerts::AlertKind::FingerprintMismatch];
    })
    .await?;
    let (key, _) = t.create_key(json!({})).await?;
    let key = key.expose_secret().to_owned();
    let shared_device_key = LabDevice::new();
    let victim_net = Target::client_ip(10, 1, 5);
    let attacker_net = Target::client_ip(66, 1, 7);
    t.exchange(&key, &shared_device_key, victim_attrs, victim_net)
        .await?;
    let first_use = Instant::now();
    let first = t
        .exchange(&key, &shared_device_key, attacker_attrs, attacker_net)
        .await?;
    let mut contained = None;
    let mut last = first.summary();
    while first_use.elapsed() < Duration::from_secs(5) {
        let r = t
            .exchange(&key, &shared_device_key, attacker_attrs, attacker_net)
            .await?;
        last = r.summary();
        if r.code() == "DEVICE_REVOKED" {
            contained = Some(first_use.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.stop().await;
    Ok((
        contained,
        format!("first use {}; then {last}", first.summary()),
    ))
}

async fn wait_for_device_alert(
    t: &Target,
    key_id: &str,
    device_id: &str,
    since: Instant,
) -> Result<Option<Duration>> {
    while since.elapsed() < Duration::from_secs(5) {
        let alerts = t.alerts("NEW_DEVICE", Some(key_id)).await?;
        if alerts.iter().any(|a| a["device_id"] == device_id) {
            return Ok(Some(since.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(None)
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("not seen".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    })
}

impl SourceLeak {
    /// The attacker was held to `limited`, read scopes and a short lifetime.
    pub fn limited(&self) -> bool {
        self.default_key.level == "limited"
            && !self.default_key.scope.contains("write:")
            && self.default_key.expires_in <= 60
    }

    /// The report section.
    pub fn section(&self) -> Section {
        let mut s = Section::new("A source leak");
        let g = &self.default_key;
        s.row(
            "leaked key used from the attacker's own device and network",
            "device binding: a new device key is enrolled `limited` (read scopes, TTL ≤ 60 s)",
            if self.limited() {
                Outcome::Limited
            } else {
                Outcome::NotBlocked
            },
            format!(
                "{} {} (score {:.2}), scopes \"{}\" of \"{}\", TTL {} s (trusted devices: {} s)",
                g.status,
                g.level,
                g.score,
                g.scope,
                self.key_scopes,
                g.expires_in,
                self.configured_ttl
            ),
        );
        s.row(
            "first use of the leaked key",
            "NEW_DEVICE alert",
            if self.alert_after.is_some() {
                Outcome::Detected
            } else {
                Outcome::NotBlocked
            },
            format!(
                "alert visible in GET /admin/v1/alerts {} after first use",
                ms(self.alert_after)
            ),
        );
        s.row(
            "keep using the key after a scanner reports it (POST /v1/leaks)",
            "leak report suspends the key; revocation feed for resource servers",
            if self.contained_exchange_after.is_some() && self.verifier_refuses_after.is_some() {
                Outcome::Blocked
            } else {
                Outcome::NotBlocked
            },
            format!(
                "exchange refused {} after the report ({}), refresh {}; the attacker's unexpired token refused by the SDK verifier {} after (feed polled every {} s; SDK default 5 s)",
                ms(self.contained_exchange_after),
                self.exchange_after_containment,
                self.refresh_after_containment,
                ms(self.verifier_refuses_after),
                self.verifier_poll.as_secs()
            ),
        );
        if let Some((after, answers)) = &self.auto_contained_clone {
            s.row(
                "the leaked key together with a copy of the victim's device key, used with the attacker's fingerprint",
                "FINGERPRINT_MISMATCH + --auto-suspend-on FINGERPRINT_MISMATCH (revokes the device)",
                if after.is_some() { Outcome::Blocked } else { Outcome::NotBlocked },
                format!("device revoked {} after first use ({answers})", ms(*after)),
            );
        }
        let t = &self.trust_on_enroll;
        s.row(
            "the same leak, key created with trust_on_enroll",
            "none: the key's owner chose to trust new devices",
            if t.level == "trusted" {
                Outcome::NotBlocked
            } else {
                Outcome::Limited
            },
            format!(
                "{} {}, scopes \"{}\", TTL {} s — known limit of trust_on_enroll",
                t.status, t.level, t.scope, t.expires_in
            ),
        );
        s.note(format!(
            "Before containment the attacker's read request at the resource server was {}. \
             Left alone, the attacker's device {} `trusted` after {} exchanges over {} h with a \
             consistent fingerprint (the same `trust::evaluate` the server runs): device binding \
             limits a leaked key and raises an alert, it does not stop it; containment does.",
            if self.read_before {
                "accepted (read scopes only)"
            } else {
                "refused"
            },
            if self.earns_trust_unless_contained {
                "earns"
            } else {
                "does not earn"
            },
            trust::EARN_MIN_EXCHANGES,
            trust::EARN_MIN_AGE_SECONDS / 3600
        ));
        s.note(
            "Automatic containment (`--auto-suspend-on`) cannot act on this leak by design: the \
             attacker's new device key raises only `NEW_DEVICE`, which every legitimate new \
             phone raises too and which `--auto-suspend-on` refuses. What contains a leaked key \
             is a leak report (a secret scanner calling POST /v1/leaks: suspension at once, \
             measured above), an operator's suspension, or `USAGE_SPIKE` / \
             `MANY_DEVICES_OR_NETWORKS` when the abuse is loud. What auto-containment does stop \
             at once is a copied device key used with another fingerprint (the row above). \
             Tokens already issued stay usable at resource servers until their verifiers read \
             the revocation feed (one poll interval) — a limited attacker's token lives 60 s at \
             most anyway."
                .to_owned(),
        );
        s.check(
            self.limited(),
            "the attacker's device was not held to limited",
        );
        s.check(self.alert_after.is_some(), "no NEW_DEVICE alert within 5 s");
        s.check(
            self.contained_exchange_after.is_some(),
            "the leak report did not stop the attacker's exchanges",
        );
        s.check(
            self.verifier_refuses_after.is_some(),
            "the resource server kept accepting the attacker's token after the leak report",
        );
        if let Some((after, _)) = &self.auto_contained_clone {
            s.check(
                after.is_some(),
                "auto-containment did not revoke the copied device",
            );
        }
        s
    }
}

// ---- B: log leak ----

/// Every secret the traffic used, in every form a log could show it.
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn new() -> Secrets {
        Secrets(Vec::new())
    }

    fn add(&mut self, what: &str, value: &str) {
        if value.len() >= 16 {
            self.0.push((what.to_owned(), value.to_owned()));
        }
    }

    /// A key: the plaintext, its secret part and its stored hash in hex and base64.
    fn add_key(&mut self, plaintext: &str) {
        self.add("API key", plaintext);
        if let Ok(k) = ApiKey::parse(plaintext) {
            let secret = &plaintext[plaintext.len() - 49..plaintext.len() - 6];
            self.add("API key secret part", secret);
            let h = k.secret_hash();
            self.add("API key hash (hex)", &keybound::audit::to_hex(&h));
            self.add(
                "API key hash (base64url)",
                &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h),
            );
            self.add(
                "API key hash (base64)",
                &base64::engine::general_purpose::STANDARD.encode(h),
            );
        }
    }

    /// A JWT: the whole, and its signature (unique to it).
    fn add_jwt(&mut self, what: &str, jwt: &str) {
        self.add(what, jwt);
        if let Some(sig) = jwt.rsplit('.').next() {
            self.add(&format!("{what} signature"), sig);
        }
    }

    fn add_reply(&mut self, reply: &Reply) {
        if let Some(t) = reply.body["access_token"].as_str() {
            self.add_jwt("access token", t);
        }
        if let Some(t) = reply.body["refresh_token"].as_str() {
            self.add("refresh token", t);
        }
        if let Some(k) = reply.body["key"].as_str() {
            self.add_key(k);
        }
    }
}

/// One run of the server at a log level and format.
#[derive(Debug, Clone)]
pub struct LogRun {
    /// `RUST_LOG`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
    /// Lines logged.
    pub lines: usize,
    /// Distinct secrets looked for.
    pub secrets: usize,
    /// Requests sent.
    pub requests: usize,
    /// (secret kind, line number) of every hit.
    pub hits: Vec<(String, usize)>,
}

/// Scenario B's measurements.
#[derive(Debug, Clone)]
pub struct LogLeak {
    /// One run per level and format.
    pub runs: Vec<LogRun>,
}

/// B: runs the real binary at `debug` (and `trace`) in both log formats, drives every kind
/// of request through it (successes, each refusal, a key in a URL, a leak report, admin calls
/// with a wrong token), then scans every line for every secret used.
pub async fn log_leak(binary: &Path) -> Result<LogLeak> {
    let mut runs = Vec::new();
    for (level, format) in [("debug", "text"), ("debug", "json"), ("trace", "text")] {
        let server = SpawnedServer::start(binary, level, format)?;
        let (secrets, requests) = drive_traffic(&server).await?;
        // Let background writes (alerts, touched keys) log too.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let logs = server.logs();
        drop(server);
        let mut hits = Vec::new();
        for (n, line) in logs.lines().enumerate() {
            for (what, value) in &secrets.0 {
                if line.contains(value.as_str()) {
                    hits.push((what.clone(), n + 1));
                }
            }
        }
        runs.push(LogRun {
            level: level.into(),
            format: format.into(),
            lines: logs.lines().count(),
            secrets: secrets.0.len(),
            requests,
            hits,
        });
    }
    Ok(LogLeak { runs })
}

async fn drive_traffic(server: &SpawnedServer) -> Result<(Secrets, usize)> {
    let t = server.target();
    let ip = Target::client_ip(0, 0, 1);
    let mut secrets = Secrets::new();
    secrets.add("admin token", server.admin_token.expose_secret());
    secrets.add("master key", server.master_key.expose_secret());
    let mut n = 0;
    let mut track = |r: &Reply, s: &mut Secrets| {
        s.add_reply(r);
        n += 1;
    };

    let created = t
        .admin_post(
            "/keys",
            &json!({"name": "b", "scopes": ["read:users", "write:x"], "env": "test"}),
        )
        .await?;
    track(&created, &mut secrets);
    let key = created.body["key"].as_str().unwrap_or("").to_owned();
    let key_id = created.body["key_id"].as_str().unwrap_or("").to_owned();
    let device = LabDevice::new();
    let attrs = phone("ios", "iPhone15,2", "b-install", "ja-JP", "Asia/Tokyo");

    let mut proof = device.proof("POST", &t.url("/v1/token"));
    secrets.add_jwt("DPoP proof", &proof);
    let ok = t.exchange_with(&key, &proof, &attrs, ip).await?;
    track(&ok, &mut secrets);
    // The same proof again: DPOP_REPLAY.
    let r = t.exchange_with(&key, &proof, &attrs, ip).await?;
    track(&r, &mut secrets);
    // Authorization: Bearer, and a fingerprint mismatch from the same device key.
    proof = device.proof("POST", &t.url("/v1/token"));
    secrets.add_jwt("DPoP proof", &proof);
    let r = t
        .send(
            t.client()
                .post(t.url("/v1/token"))
                .bearer_auth(&key)
                .header("dpop", &proof)
                .json(&phone("android", "Pixel 8", "other", "en-US", "UTC")),
        )
        .await?;
    track(&r, &mut secrets);
    // Refresh, then reuse.
    let rt = ok.body["refresh_token"].as_str().unwrap_or("").to_owned();
    let p = device.proof("POST", &t.url("/v1/token/refresh"));
    secrets.add_jwt("DPoP proof", &p);
    let r = t.refresh_with(&rt, &p, ip).await?;
    track(&r, &mut secrets);
    let p = device.proof("POST", &t.url("/v1/token/refresh"));
    secrets.add_jwt("DPoP proof", &p);
    let r = t.refresh_with(&rt, &p, ip).await?;
    track(&r, &mut secrets);
    // Wrong secret for a real id, a malformed key, a garbage proof.
    let forged = forge_same_id(&key);
    secrets.add_key(&forged);
    let p = device.proof("POST", &t.url("/v1/token"));
    secrets.add_jwt("DPoP proof", &p);
    let r = t.exchange_with(&forged, &p, &json!({}), ip).await?;
    track(&r, &mut secrets);
    let malformed = format!("{}x", &key[..key.len() - 1]);
    secrets.add("malformed key", &malformed);
    let r = t
        .exchange_with(&malformed, "not.a.proof", &json!({}), ip)
        .await?;
    track(&r, &mut secrets);
    let r = t
        .exchange_with(
            &key,
            "eyJhbGciOiJub25lIn0.eyJ4IjoxfQ.c2lnbmF0dXJlLXNlY3JldA",
            &json!({}),
            ip,
        )
        .await?;
    track(&r, &mut secrets);
    // A key in a URL.
    let r = t
        .send(t.client().get(t.url(&format!("/healthz?api_key={key}"))))
        .await?;
    track(&r, &mut secrets);
    // Admin: a wrong token, a rotation (new plaintext), reading everything.
    let wrong_admin = "wrong-admin-token-0123456789abcdef";
    secrets.add("wrong admin token", wrong_admin);
    let r = t
        .send(
            t.client()
                .get(t.url("/admin/v1/keys"))
                .bearer_auth(wrong_admin),
        )
        .await?;
    track(&r, &mut secrets);
    let rotated = t
        .admin_post(
            &format!("/keys/{key_id}/rotate"),
            &json!({"grace_seconds": 60}),
        )
        .await?;
    track(&rotated, &mut secrets);
    for path in ["/keys", &format!("/keys/{key_id}"), "/audit", "/alerts"] {
        let r = t.admin_get(path).await?;
        track(&r, &mut secrets);
    }
    for path in ["/v1/revocations", "/metrics", "/.well-known/jwks.json"] {
        let r = t.send(t.client().get(t.url(path))).await?;
        track(&r, &mut secrets);
    }
    // A scanner reports the rotated key.
    let new_key = rotated.body["key"].as_str().unwrap_or("").to_owned();
    let r = t
        .send(
            t.client()
                .post(t.url("/v1/leaks"))
                .json(&json!({"key": new_key, "source": "lab"})),
        )
        .await?;
    track(&r, &mut secrets);
    Ok((secrets, n))
}

/// The same key id with a different (random) secret and a correct checksum.
pub fn forge_same_id(key: &str) -> String {
    let other = ApiKey::generate(keybound::keys::KeyEnv::Test);
    let o = other.expose();
    let prefix_len = key.len() - 6 - 43;
    let body = format!("{}{}", &key[..prefix_len], &o[o.len() - 49..o.len() - 6]);
    let sum = keybound::keys::format::checksum(body.as_bytes());
    format!("{body}{sum}")
}

impl LogLeak {
    /// Secrets found in any log line.
    pub fn hits(&self) -> usize {
        self.runs.iter().map(|r| r.hits.len()).sum()
    }

    /// The report section.
    pub fn section(&self) -> Section {
        let mut s = Section::new("B log leak");
        for r in &self.runs {
            s.row(
                format!(
                    "{} requests of every kind, RUST_LOG={}, --log-format {}",
                    r.requests, r.level, r.format
                ),
                "secret types (SecretString, ApiKey), spans without headers or bodies",
                if r.hits.is_empty() {
                    Outcome::Blocked
                } else {
                    Outcome::NotBlocked
                },
                format!(
                    "{} secrets found in {} log lines ({} distinct secrets looked for)",
                    r.hits.len(),
                    thousands(r.lines as u64),
                    r.secrets
                ),
            );
            for (what, line) in r.hits.iter().take(10) {
                s.note(format!(
                    "RUST_LOG={} {}: {what} on line {line}",
                    r.level, r.format
                ));
            }
        }
        s.note(
            "Traffic: key creation, a successful exchange, a replayed proof, a Bearer-header \
             exchange with a mismatched fingerprint, a refresh and a refresh-token reuse, a \
             wrong secret, a malformed key, garbage proofs, a key in a URL, a wrong admin \
             token, a rotation, every admin list, the feed, /metrics and a leak report. Secrets \
             looked for: every API key (plaintext, secret part, hash in hex and base64), access \
             tokens and proofs (whole and signature), refresh tokens, the admin token, the wrong \
             admin token and the master key."
                .to_owned(),
        );
        s.check(self.hits() == 0, "a secret appeared in the logs");
        s
    }
}

// ---- C: memory dump ----

/// Copies found in one scan of the server's memory.
#[derive(Debug, Clone, Default)]
pub struct MemoryScan {
    /// Copies of the 43-character secret part (the full key included).
    pub secret_copies: usize,
    /// Copies of the whole key.
    pub key_copies: usize,
    /// Copies of the stored hash (the validation cache keeps it: expected).
    pub hash_copies: usize,
    /// Where the secret copies are (`[heap]`, `anonymous`, …) with counts.
    pub regions: Vec<(String, usize)>,
    /// Bytes read.
    pub bytes: u64,
    /// Whether the validation cache must still have held the key's record during the scan:
    /// the record is read at the key's first exchange or later and kept for
    /// [`keybound::store::cached::TTL`] from its last read, and an expired entry is dropped
    /// only when the cache is used again, so it is surely held if the last request before the
    /// scan came within that TTL of the first exchange. Otherwise (a slow, loaded machine) the
    /// scan may rightly find no hash: the entry expired and its memory was reused.
    pub key_cached: bool,
}

/// Scenario C's measurements.
#[derive(Debug, Clone)]
pub struct MemoryDump {
    /// Exchanges made with the key.
    pub exchanges: usize,
    /// After the exchanges, the connection still open.
    pub after_exchanges: MemoryScan,
    /// After as many requests by another key on the same connection.
    pub after_other_traffic: MemoryScan,
    /// After the connections closed.
    pub after_close: MemoryScan,
    /// Why the scan could not run, if it could not.
    pub unavailable: Option<String>,
}

/// C: creates a key with the CLI (so the server never saw it before), starts the real binary,
/// makes `exchanges` exchanges with the key over one keep-alive connection, then reads the
/// server's whole memory through `/proc/<pid>/mem` and counts copies of the secret: once
/// then, again after the same number of requests by another key, and after the client closed
/// its connections.
pub async fn memory_dump(binary: &Path, exchanges: usize) -> Result<MemoryDump> {
    let dir = tempfile::tempdir().map_err(Error::internal)?;
    let db = format!("sqlite://{}", dir.path().join("lab.db").display());
    // The CLI and the server share the master key: creating a key wraps its hash under it.
    let master_key = super::target::random_master_key();
    let create = |name: &str| -> Result<String> {
        let out = std::process::Command::new(binary)
            .args([
                "--database-url",
                &db,
                "keys",
                "create",
                "--name",
                name,
                "--scopes",
                "read:users",
                "--env",
                "test",
                "--trust-on-enroll",
                "--json",
            ])
            .env("KEYBOUND_MASTER_KEY", master_key.expose_secret())
            .current_dir(dir.path())
            .output()
            .map_err(Error::internal)?;
        let v: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            Error::internal(format!(
                "keys create: {e}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        })?;
        Ok(v["key"].as_str().unwrap_or("").to_owned())
    };
    let key = SecretString::from(create("memory")?);
    let other = SecretString::from(create("churn")?);
    let server = SpawnedServer::start_in(binary, "info", "text", dir, db.clone(), master_key)?;
    let pid = server.pid();
    let key_str = key.expose_secret().to_owned();
    let secret = key_str[key_str.len() - 49..key_str.len() - 6].to_owned();
    let key_id = ApiKey::parse(&key_str)
        .map_err(|_| Error::internal("the CLI printed an invalid key"))?
        .id()
        .to_string();
    // What the validation cache holds: the stored value (the HMAC of the secret's hash).
    let hash = keybound::store::open(&db)
        .await?
        .get_key(&key_id)
        .await?
        .ok_or_else(|| Error::internal("the CLI's key is not in the database"))?
        .secret_hash;
    let needles = Needles {
        secret: secret.as_bytes(),
        key: key_str.as_bytes(),
        hash: &hash,
    };

    let t = server.target();
    let device = LabDevice::new();
    let ip = Target::client_ip(0, 0, 1);
    // The cache drops an expired entry only when it is used again: the record is surely still
    // held if no request came after its TTL ran out (counted from the key's first exchange,
    // its earliest possible read).
    let first_use = std::time::Instant::now();
    let scan = |needles: &Needles<'_>, last_request: std::time::Instant| {
        scan_memory(pid, needles).map(|mut s| {
            s.key_cached = last_request - first_use < keybound::store::cached::TTL;
            s
        })
    };
    for _ in 0..exchanges {
        let r = t.exchange(&key_str, &device, &json!({}), ip).await?;
        if !r.ok() {
            return Err(Error::internal(format!("exchange: {}", r.summary())));
        }
    }
    let mut last_request = std::time::Instant::now();
    let after_exchanges = match scan(&needles, last_request) {
        Ok(s) => s,
        Err(why) => {
            return Ok(MemoryDump {
                exchanges,
                after_exchanges: MemoryScan::default(),
                after_other_traffic: MemoryScan::default(),
                after_close: MemoryScan::default(),
                unavailable: Some(why),
            });
        }
    };
    let other_device = LabDevice::new();
    for _ in 0..exchanges {
        t.exchange(other.expose_secret(), &other_device, &json!({}), ip)
            .await?;
    }
    // The first scan worked, so a failure now is an error, not an empty scan that would pass
    // for "no copies".
    last_request = std::time::Instant::now();
    let after_other_traffic = scan(&needles, last_request).map_err(Error::internal)?;
    drop(t);
    // Let the server notice the closed connection and free its buffers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_close = scan(&needles, last_request).map_err(Error::internal)?;
    drop(server);
    Ok(MemoryDump {
        exchanges,
        after_exchanges,
        after_other_traffic,
        after_close,
        unavailable: None,
    })
}

struct Needles<'a> {
    secret: &'a [u8],
    key: &'a [u8],
    hash: &'a [u8],
}

/// Reads every readable mapping of `pid` and counts the needles. `Err` when the kernel does
/// not let us read the memory (no ptrace permission).
fn scan_memory(pid: u32, needles: &Needles<'_>) -> std::result::Result<MemoryScan, String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("cannot read /proc/{pid}/maps: {e}"))?;
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem"))
        .map_err(|e| format!("cannot open /proc/{pid}/mem: {e}"))?;
    let mut scan = MemoryScan::default();
    let mut regions: std::collections::BTreeMap<String, usize> = Default::default();
    let mut readable_any = false;
    for line in maps.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        let name = parts.nth(3).unwrap_or("").to_owned();
        if !perms.starts_with('r')
            || name == "[vvar]"
            || name == "[vsyscall]"
            || name == "[vvar_vclock]"
        {
            continue;
        }
        // Code and read-only data of the binary cannot hold a runtime secret.
        if !perms.contains('w') && !name.is_empty() {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut buf = vec![0u8; (end - start) as usize];
        if mem.seek(SeekFrom::Start(start)).is_err() || mem.read_exact(&mut buf).is_err() {
            continue;
        }
        readable_any = true;
        scan.bytes += buf.len() as u64;
        let found = count(&buf, needles.secret);
        scan.secret_copies += found;
        scan.key_copies += count(&buf, needles.key);
        scan.hash_copies += count(&buf, needles.hash);
        if found > 0 {
            let kind = if name.is_empty() {
                "anonymous".to_owned()
            } else {
                name
            };
            *regions.entry(kind).or_default() += found;
        }
    }
    if !readable_any {
        return Err(format!(
            "no mapping of pid {pid} was readable (ptrace not permitted?)"
        ));
    }
    scan.regions = regions.into_iter().collect();
    Ok(scan)
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    if needle.is_empty() || hay.len() < needle.len() {
        return 0;
    }
    let first = needle[0];
    let mut n = 0;
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..hay.len() - needle.len() + 1]
            .iter()
            .position(|&b| b == first)
        {
            None => break,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    n += 1;
                    i += needle.len();
                } else {
                    i += 1;
                }
            }
        }
    }
    n
}

impl MemoryDump {
    /// The report section.
    pub fn section(&self) -> Section {
        let mut s = Section::new("C memory dump");
        if let Some(why) = &self.unavailable {
            s.row("read /proc/<pid>/mem", "—", Outcome::Skipped, why.clone());
            return s;
        }
        let line = |m: &MemoryScan| {
            let where_: Vec<String> = m
                .regions
                .iter()
                .map(|(r, n)| format!("{n} in {r}"))
                .collect();
            format!(
                "{} copies of the secret ({} whole keys){}; hash {} (cache); {} MiB read",
                m.secret_copies,
                m.key_copies,
                if where_.is_empty() {
                    String::new()
                } else {
                    format!(" — {}", where_.join(", "))
                },
                m.hash_copies,
                m.bytes / (1 << 20)
            )
        };
        let outcome = |m: &MemoryScan| {
            if m.secret_copies == 0 {
                Outcome::Blocked
            } else {
                Outcome::Limited
            }
        };
        s.row(
            format!(
                "read the server's memory after {} exchanges (connection open)",
                self.exchanges
            ),
            "key cache holds only stored hashes (HMACs); parsed keys are SecretString (zeroized on drop)",
            outcome(&self.after_exchanges),
            line(&self.after_exchanges),
        );
        s.row(
            format!(
                "… after {} more requests by another key, same connection",
                self.exchanges
            ),
            "freed read buffers are cleared by the allocator (keybound::alloc, ≥ 4 KiB blocks)",
            outcome(&self.after_other_traffic),
            line(&self.after_other_traffic),
        );
        s.row(
            "… after the client closed its connections",
            "the same: a closed connection's buffers are cleared when freed",
            outcome(&self.after_close),
            line(&self.after_close),
        );
        s.note(
            "What remains, and why. keybound never stores the plaintext: the validation cache \
             holds the stored HMAC of the secret's hash (the hash copies counted), and `ApiKey` keeps the \
             presented key in a `SecretString` that is zeroized when the request ends. The key \
             arrives in an HTTP header, though: hyper reads each request into a \
             per-connection buffer, and the header map axum hands to keybound is made of \
             slices of it. keybound does not own those buffers, so the binary's allocator \
             clears every block of 4 KiB or more when it is freed (`keybound::alloc`): a read \
             buffer whose requests are done holds no key afterwards. (With mimalloc alone, ~30 \
             whole keys stayed in freed buffers after 200 exchanges, closed connection or not.) \
             What can remain is the buffer a connection is reading into right now, and only \
             whole keys, request bytes, never the secret part on its own. An attacker who can \
             read the server's memory (root, or ptrace as the same user) can also read the \
             signing keys and the master key, which the process must hold to work at all. \
             Mitigations are operational: no core dumps (`ulimit -c 0`, `LimitCORE=0`), no \
             ptrace (`kernel.yama.ptrace_scope` ≥ 1), a dedicated user."
                .to_owned(),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counting_needles() {
        assert_eq!(count(b"abcabcab", b"abc"), 2);
        assert_eq!(count(b"aaaa", b"aa"), 2);
        assert_eq!(count(b"ab", b"abc"), 0);
        assert_eq!(count(b"xxabc", b"abc"), 1);
    }

    #[test]
    fn forged_keys_keep_the_id_and_pass_the_checksum() {
        let k = ApiKey::generate(keybound::keys::KeyEnv::Test);
        let f = forge_same_id(k.expose());
        let parsed = ApiKey::parse(&f).expect("checksum recomputed");
        assert_eq!(parsed.id(), k.id());
        assert_ne!(parsed.secret_hash(), k.secret_hash());
    }
}
