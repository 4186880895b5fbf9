//! Captured tokens and proofs: D sniffed token, E malicious proxy, J replay.
//!
//! The resource server is real: an axum app on a loopback port whose handlers take the SDK's
//! `VerifiedToken` extractor, so a request goes through the same URL reconstruction, header
//! checks and [`keybound_sdk::Verifier`] a deployment would use.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keybound_sdk::{VerifiedToken, Verifier};
use serde_json::json;

use super::report::{Outcome, Section};
use super::target::{LabDevice, Reply, Target, phone};
use keybound::error::{Error, Result};

/// A resource server protected by the SDK's verifier, on its own loopback port.
pub struct ResourceServer {
    /// Its base URL, e.g. `http://127.0.0.1:40001`.
    pub base: String,
    client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone)]
struct RsState {
    verifier: Arc<Verifier>,
}

impl FromRef<RsState> for Arc<Verifier> {
    fn from_ref(s: &RsState) -> Self {
        s.verifier.clone()
    }
}

/// The handler answers 200 `accepted` or the SDK's refusal, and names the check that refused
/// in `x-lab-reason` so the report can say which defense stopped the attack.
async fn protected(token: std::result::Result<VerifiedToken, keybound_sdk::Error>) -> Response {
    match token {
        Ok(t) => (
            [("x-lab-reason", HeaderValue::from_static("accepted"))],
            axum::Json(json!({"sub": t.subject(), "scope": t.scopes()})),
        )
            .into_response(),
        Err(e) => {
            let reason = format!("{:?}", e.kind());
            let mut res = e.into_response();
            if let Ok(v) = HeaderValue::from_str(&reason) {
                res.headers_mut().insert("x-lab-reason", v);
            }
            res
        }
    }
}

impl ResourceServer {
    /// Starts a resource server for tokens from `issuer`, polling the revocation feed every
    /// `poll` (the SDK's default is 5 s).
    pub async fn start(issuer: &str, poll: Duration) -> Result<ResourceServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::internal)?;
        let base = format!("http://{}", listener.local_addr().map_err(Error::internal)?);
        let verifier = Verifier::builder(issuer)
            .resource_url(base.clone())
            .revocation_poll_interval(poll)
            .build()
            .await
            .map_err(|e| Error::internal(format!("the SDK verifier did not start: {e}")))?;
        let app = Router::new()
            .route("/v1/orders", get(protected).post(protected))
            .route("/v1/users", get(protected))
            .with_state(RsState {
                verifier: Arc::new(verifier),
            });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(ResourceServer {
            base,
            client: reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(Error::internal)?,
            shutdown: Some(tx),
        })
    }

    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `method url` with the given `Authorization` and `DPoP` headers; returns the
    /// status and the verifier's reason (`accepted` on success).
    pub async fn call(
        &self,
        method: &str,
        url: &str,
        authorization: Option<&str>,
        dpop: Option<&str>,
    ) -> Result<(u16, String)> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(Error::internal)?;
        let mut req = self.client.request(method, url);
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        if let Some(p) = dpop {
            req = req.header("dpop", p);
        }
        let res = req.send().await.map_err(Error::internal)?;
        let status = res.status().as_u16();
        let reason = res
            .headers()
            .get("x-lab-reason")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        Ok((status, reason))
    }
}

impl Drop for ResourceServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// One attack attempt and how it ended.
#[derive(Debug, Clone)]
pub struct Attempt {
    /// What was tried.
    pub attack: String,
    /// Whether the server or verifier accepted it.
    pub accepted: bool,
    /// The refusal (status and check), or `accepted`.
    pub answer: String,
}

impl Attempt {
    fn resource(attack: &str, (status, reason): (u16, String)) -> Attempt {
        Attempt {
            attack: attack.into(),
            accepted: status == 200,
            answer: format!("{status} {reason}"),
        }
    }

    fn token(attack: &str, reply: &Reply) -> Attempt {
        Attempt {
            attack: attack.into(),
            accepted: reply.ok(),
            answer: reply.summary(),
        }
    }
}

/// Attempts, with the legitimate control request that shows the setup works.
#[derive(Debug, Clone)]
pub struct Attempts {
    /// The scenario, e.g. `D sniffed token`.
    pub title: &'static str,
    /// The defense under test.
    pub defense: &'static str,
    /// The owner's own request (must be accepted, or the attacks prove nothing).
    pub control: Attempt,
    /// The attacks that must all be refused.
    pub attacks: Vec<Attempt>,
    /// Attacks that succeed by design (known limits), reported as such.
    pub known_limits: Vec<Attempt>,
    /// Extra facts for the report.
    pub facts: Vec<String>,
}

impl Attempts {
    /// Attacks accepted (must be 0).
    pub fn accepted(&self) -> usize {
        self.attacks.iter().filter(|a| a.accepted).count()
    }

    /// The report section.
    pub fn section(&self) -> Section {
        let (title, defense) = (self.title, self.defense);
        let mut s = Section::new(title);
        for a in &self.attacks {
            s.row(
                a.attack.clone(),
                defense,
                if a.accepted {
                    Outcome::NotBlocked
                } else {
                    Outcome::Blocked
                },
                format!("accepted {}/1 ({})", u8::from(a.accepted), a.answer),
            );
        }
        for a in &self.known_limits {
            s.row(
                a.attack.clone(),
                "none (by design, see notes)",
                if a.accepted {
                    Outcome::NotBlocked
                } else {
                    Outcome::Blocked
                },
                format!("accepted {}/1 ({})", u8::from(a.accepted), a.answer),
            );
        }
        s.note(format!(
            "Control: the owner's own request — {} ({}). Attacks accepted: **{} of {}**.",
            self.control.attack,
            self.control.answer,
            self.accepted(),
            self.attacks.len()
        ));
        for f in &self.facts {
            s.note(f.clone());
        }
        s.check(
            self.control.accepted,
            "the control request was refused, so the attacks prove nothing",
        );
        s.check(self.accepted() == 0, "an attack was accepted");
        s
    }
}

/// A device that exchanged a key for a full-scope token (a `trust_on_enroll` key, so the
/// victim is trusted from the start).
struct Victim {
    device: LabDevice,
    access_token: String,
    refresh_token: String,
}

async fn victim(t: &Target, net: u8) -> Result<(Victim, String)> {
    let (key, _) = t.create_key(json!({"trust_on_enroll": true})).await?;
    let device = LabDevice::new();
    let from = Target::client_ip(net, 0, 10);
    let reply = t
        .exchange(
            secrecy::ExposeSecret::expose_secret(&key),
            &device,
            &phone("ios", "iPhone15,2", "victim-install", "ja-JP", "Asia/Tokyo"),
            from,
        )
        .await?;
    if !reply.ok() {
        return Err(Error::internal(format!(
            "the victim's exchange failed: {}",
            reply.summary()
        )));
    }
    let s = |k: &str| reply.body[k].as_str().unwrap_or_default().to_owned();
    Ok((
        Victim {
            device,
            access_token: s("access_token"),
            refresh_token: s("refresh_token"),
        },
        secrecy::ExposeSecret::expose_secret(&key).to_owned(),
    ))
}

/// D: a token (and a proof) captured on the wire, replayed by someone without the device key.
pub async fn sniffed_token(t: &Target) -> Result<Attempts> {
    let rs = ResourceServer::start(t.base(), Duration::from_secs(5)).await?;
    let (v, _) = victim(t, 41).await?;
    let url = rs.url("/v1/orders");
    let dpop = format!("DPoP {}", v.access_token);
    let proof = v.device.proof_for_token("GET", &url, &v.access_token);
    let control = Attempt::resource(
        "GET /v1/orders with the token and a fresh proof by the device key",
        rs.call("GET", &url, Some(&dpop), Some(&proof)).await?,
    );
    let thief = LabDevice::new();
    let mut attacks = vec![
        Attempt::resource(
            "captured token sent as a Bearer token, no proof",
            rs.call(
                "GET",
                &url,
                Some(&format!("Bearer {}", v.access_token)),
                None,
            )
            .await?,
        ),
        Attempt::resource(
            "captured token under the DPoP scheme, no proof",
            rs.call("GET", &url, Some(&dpop), None).await?,
        ),
        Attempt::resource(
            "captured token with a proof signed by the thief's own key",
            rs.call(
                "GET",
                &url,
                Some(&dpop),
                Some(&thief.proof_for_token("GET", &url, &v.access_token)),
            )
            .await?,
        ),
        Attempt::resource(
            "captured token with the captured proof, replayed",
            rs.call("GET", &url, Some(&dpop), Some(&proof)).await?,
        ),
    ];
    // A sniffed refresh token is bound to the device key as well.
    let reply = t
        .refresh(&v.refresh_token, &thief, Target::client_ip(42, 0, 1))
        .await?;
    attacks.push(Attempt::token(
        "captured refresh token redeemed with the thief's own key",
        &reply,
    ));
    Ok(Attempts {
        title: "D sniffed token",
        defense: "DPoP binding: the SDK Verifier checks the proof's key against cnf.jkt, its htm/htu/ath, and its replay cache",
        control,
        attacks,
        known_limits: vec![],
        facts: vec![
            "The resource server is an axum app using the SDK's `VerifiedToken` extractor \
             (`keybound_sdk::Verifier`, JWKS and revocation feed from the lab's server); the \
             check that refused each attempt is in parentheses."
                .into(),
        ],
    })
}

/// E: a proxy on the path withholds a request and reuses its token and proof elsewhere.
pub async fn malicious_proxy(t: &Target) -> Result<Attempts> {
    let rs = ResourceServer::start(t.base(), Duration::from_secs(5)).await?;
    let other = ResourceServer::start(t.base(), Duration::from_secs(5)).await?;
    let (v, _) = victim(t, 43).await?;
    let dpop = format!("DPoP {}", v.access_token);
    let url = rs.url("/v1/orders");
    let captured = |m: &str, u: &str| v.device.proof_for_token(m, u, &v.access_token);

    // Each attack withholds a fresh request (GET /v1/orders) and sends its headers elsewhere,
    // so the replay cache never sees the original: only htm/htu can stop it.
    let mut attacks = Vec::new();
    let p = captured("GET", &url);
    attacks.push(Attempt::resource(
        "GET /v1/orders headers sent as POST /v1/orders",
        rs.call("POST", &url, Some(&dpop), Some(&p)).await?,
    ));
    let p = captured("GET", &url);
    attacks.push(Attempt::resource(
        "GET /v1/orders headers sent to GET /v1/users",
        rs.call("GET", &rs.url("/v1/users"), Some(&dpop), Some(&p))
            .await?,
    ));
    let p = captured("GET", &url);
    attacks.push(Attempt::resource(
        "GET /v1/orders headers sent to another resource server (same issuer)",
        other
            .call("GET", &other.url("/v1/orders"), Some(&dpop), Some(&p))
            .await?,
    ));
    // At the token endpoint: a captured exchange proof reused for a refresh.
    let exchange_proof = v.device.proof("POST", &t.url("/v1/token"));
    let reply = t
        .refresh_with(
            &v.refresh_token,
            &exchange_proof,
            Target::client_ip(44, 0, 1),
        )
        .await?;
    attacks.push(Attempt::token(
        "a captured /v1/token proof used at /v1/token/refresh",
        &reply,
    ));
    let control = Attempt::resource(
        "GET /v1/orders delivered as sent",
        rs.call("GET", &url, Some(&dpop), Some(&captured("GET", &url)))
            .await?,
    );
    // RFC 9449 section 4.2: htu leaves out the query and fragment, and nothing covers the
    // body. A proxy that withholds a request can change those; it is stated, not hidden.
    let p = captured("GET", &url);
    let known_limits = vec![Attempt::resource(
        "GET /v1/orders headers sent to GET /v1/orders?owner=attacker (query changed)",
        rs.call(
            "GET",
            &format!("{url}?owner=attacker"),
            Some(&dpop),
            Some(&p),
        )
        .await?,
    )];
    Ok(Attempts {
        title: "E malicious proxy",
        defense: "the proof's htm and htu (scheme, host, port, path) must match the request",
        control,
        attacks,
        known_limits,
        facts: vec![
            "Each attack uses a fresh request that the proxy withholds, so the replay cache \
             never sees the original: only the proof's `htm`, `htu` and key binding stand in \
             the way."
                .into(),
            "Known limit (RFC 9449 §4.2): `htu` excludes the query string and nothing signs \
             the body, so a proxy that withholds a request can alter its query or body and \
             forward it once, within the proof's 60 s window. TLS between client and resource \
             server is what stops a proxy from reading the headers in the first place; a proxy \
             that terminates TLS also sees the API key at the exchange, which is scenario A."
                .into(),
        ],
    })
}

/// J: replayed exchanges, proofs and refresh tokens, also concurrently.
pub async fn replay(t: &Target) -> Result<Attempts> {
    let (key, _) = t.create_key(json!({"trust_on_enroll": true})).await?;
    let key = secrecy::ExposeSecret::expose_secret(&key).to_owned();
    let device = LabDevice::new();
    let from = Target::client_ip(45, 0, 1);
    let body = json!({});
    let proof = device.proof("POST", &t.url("/v1/token"));
    let first = t.exchange_with(&key, &proof, &body, from).await?;
    let control = Attempt::token("exchange with a fresh proof", &first);
    let mut attacks = vec![Attempt::token(
        "the same exchange request (key + proof) sent again",
        &t.exchange_with(&key, &proof, &body, from).await?,
    )];

    // The same fresh proof raced 16 times: exactly one may win.
    let raced = device.proof("POST", &t.url("/v1/token"));
    let replies =
        futures::future::join_all((0..16).map(|_| t.exchange_with(&key, &raced, &body, from)))
            .await;
    let wins = replies
        .iter()
        .filter(|r| r.as_ref().is_ok_and(Reply::ok))
        .count();
    attacks.push(Attempt {
        attack: "one fresh exchange proof sent 16 times concurrently (15 replays)".into(),
        accepted: wins > 1,
        answer: format!("{wins} of 16 accepted"),
    });

    // Refresh: a replayed refresh proof, then a reused refresh token.
    let rt1 = first.body["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let refresh_proof = device.proof("POST", &t.url("/v1/token/refresh"));
    let second = t.refresh_with(&rt1, &refresh_proof, from).await?;
    let rt2 = second.body["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    attacks.push(Attempt::token(
        "a refresh proof replayed (with the new refresh token)",
        &t.refresh_with(&rt2, &refresh_proof, from).await?,
    ));
    let reuse = t.refresh(&rt1, &device, from).await?;
    attacks.push(Attempt::token(
        "a spent refresh token presented again",
        &reuse,
    ));
    let descendant = t.refresh(&rt2, &device, from).await?;
    attacks.push(Attempt::token(
        "the spent token's successor after the reuse (family revoked)",
        &descendant,
    ));

    // A fresh family raced by 8 concurrent refreshes with distinct proofs.
    let fresh = t.exchange(&key, &device, &body, from).await?;
    let rt = fresh.body["refresh_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let replies = futures::future::join_all((0..8).map(|_| t.refresh(&rt, &device, from))).await;
    let wins = replies
        .iter()
        .filter(|r| r.as_ref().is_ok_and(Reply::ok))
        .count();
    let codes: Vec<String> = replies
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter(|r| !r.ok())
        .map(|r| r.code().to_owned())
        .collect();
    attacks.push(Attempt {
        attack: "one refresh token redeemed 8 times concurrently (7 reuses)".into(),
        accepted: wins > 1,
        answer: format!("{wins} of 8 accepted; refused: {}", summarize_codes(&codes)),
    });
    let mut facts = vec![format!(
        "Sequence: exchange {} → refresh {} → replayed refresh proof {} → spent token again \
         {} → its successor {}.",
        first.summary(),
        second.summary(),
        attacks[2].answer,
        reuse.summary(),
        descendant.summary()
    )];
    let reused_alerts = t.alerts("REFRESH_TOKEN_REUSED", None).await?.len();
    let replay_alerts = t.alerts("DPOP_REPLAY", None).await?.len();
    facts.push(format!(
        "Alerts raised: {replay_alerts} `DPOP_REPLAY`, {reused_alerts} `REFRESH_TOKEN_REUSED`."
    ));
    Ok(Attempts {
        title: "J replay",
        defense: "jti replay store (atomic first-seen), refresh rotation with family revocation",
        control,
        attacks,
        known_limits: vec![],
        facts,
    })
}

fn summarize_codes(codes: &[String]) -> String {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in codes {
        *counts.entry(c.as_str()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(c, n)| format!("{n}× {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}
