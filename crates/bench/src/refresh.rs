//! The refresh phase: `POST /v1/token/refresh` in a closed loop, each request with a fresh
//! DPoP proof (built before the phase, like the exchange's) and its device's current refresh
//! token.
//!
//! Refresh tokens rotate: each answer carries the token the device must present next, so one
//! device's refreshes are a chain that must be sent one after another (a token sent twice is
//! reuse, and revokes the family). Each connection therefore owns a fixed share of the
//! devices (device `d` belongs to connection `d mod connections`) and goes round robin over
//! them, one request at a time: a chain is never sent out of order, and every connection
//! stays busy as long as there are at least as many devices as connections. Before the
//! phase, each device gets its first refresh token from one exchange (not timed).
//!
//! A device whose chain broke (a lost answer, a refused token) is left out for the rest of
//! its batch, and given a new family before the next one; every such error is reported.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderValue, header};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use secrecy::{ExposeSecret, SecretString};

use super::devices::{SimDevice, build_proofs};
use super::load::{Outcome, Sender, Trip, error_code, round_trip};
use super::target::Target;
use super::{IAT_AHEAD, MAX_BATCH_SECS, MAX_PROOFS};

/// Proofs built per expected refresh: the phase ends early when a device's run out, so
/// build for a rate somewhat above the one expected.
const HEADROOM: f64 = 1.5;

/// Runs the refresh phase for `secs` seconds over `connections` connections, with proofs
/// for `expected_rate` refreshes a second (plus headroom).
pub async fn run(
    t: &Target,
    devices: &Arc<Vec<SimDevice>>,
    connections: usize,
    secs: u64,
    expected_rate: f64,
) -> Outcome {
    if devices.len() < connections {
        eprintln!(
            "refresh: note: {} devices for {connections} connections: at most {} refreshes \
             in flight (each device's refreshes are sent one at a time)",
            devices.len(),
            devices.len()
        );
    }
    let refresh_url = refresh_url(&t.token_url);
    let mut tokens: Vec<Option<SecretString>> = (0..devices.len()).map(|_| None).collect();
    let mut total: Option<Outcome> = None;
    let mut left = secs.max(1);
    while left > 0 {
        let secs = left.min(MAX_BATCH_SECS);
        left -= secs;
        // Every device without a live family gets one from an exchange (untimed).
        let missing: Vec<usize> = (0..devices.len())
            .filter(|&d| tokens[d].is_none())
            .collect();
        if !missing.is_empty() {
            eprintln!(
                "refresh: one exchange for each of {} devices (their first refresh tokens)…",
                missing.len()
            );
            let proofs = build_proofs(devices, &t.token_url, iat(), 0, devices.len());
            let mut lanes = Vec::with_capacity(missing.len());
            let mut proofs: Vec<Option<HeaderValue>> =
                proofs.into_iter().map(|p| Some(p.proof)).collect();
            for d in missing {
                lanes.push(Lane {
                    device: d,
                    token: None,
                    proofs: proofs[d].take().into_iter().collect(),
                });
            }
            let (o, lanes) = drive_lanes(t, devices, connections, lanes, Kind::Exchange, 60).await;
            if o.ok < o.done || !o.errors.is_empty() {
                eprintln!(
                    "warning: first exchanges for the refresh phase: {:?}",
                    o.errors
                );
            }
            for l in lanes {
                tokens[l.device] = l.token;
            }
        }
        let per_device = ((expected_rate * HEADROOM * secs as f64) as usize)
            .min(MAX_PROOFS)
            .div_ceil(devices.len())
            .max(1);
        let n = per_device * devices.len();
        eprintln!("refresh: building {n} proofs for {secs} s…");
        let mut lanes: Vec<Lane> = (0..devices.len())
            .map(|d| Lane {
                device: d,
                token: tokens[d].take(),
                proofs: Vec::with_capacity(per_device),
            })
            .collect();
        for (i, p) in build_proofs(devices, &refresh_url, iat(), 0, n)
            .into_iter()
            .enumerate()
        {
            lanes[i % devices.len()].proofs.push(p.proof);
        }
        eprintln!("refresh: running {secs} s…");
        let (o, lanes) = drive_lanes(t, devices, connections, lanes, Kind::Refresh, secs).await;
        for l in lanes {
            tokens[l.device] = l.token;
        }
        match &mut total {
            Some(total) => total.merge(o),
            None => total = Some(o),
        }
    }
    let total = total.expect("at least one batch ran");
    if total.errors.contains_key("RATE_LIMITED") {
        eprintln!(
            "refresh: note: RATE_LIMITED answers: a --url server needs a high \
             --refresh-rate-per-device (the bench's own server runs with {})",
            super::target::REFRESH_RATE_PER_DEVICE
        );
    }
    total
}

fn iat() -> i64 {
    keybound::state::now() + IAT_AHEAD
}

/// The refresh endpoint's URL (the proofs' `htu`): contract 3.2 puts it under the token
/// endpoint's.
pub fn refresh_url(token_url: &str) -> String {
    format!("{}/refresh", token_url.trim_end_matches('/'))
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// One exchange per lane, for its first refresh token.
    Exchange,
    /// Refreshes, each with the token the previous answer gave.
    Refresh,
}

/// One device's chain: its current refresh token and the proofs left for it.
struct Lane {
    device: usize,
    token: Option<SecretString>,
    /// Taken from the end.
    proofs: Vec<HeaderValue>,
}

impl Lane {
    fn ready(&self, kind: Kind) -> bool {
        !self.proofs.is_empty() && (self.token.is_some() == (kind == Kind::Refresh))
    }
}

/// Runs `lanes` over `connections` connections for at most `secs` seconds; gives the lanes
/// back with their tokens.
async fn drive_lanes(
    t: &Target,
    devices: &Arc<Vec<SimDevice>>,
    connections: usize,
    lanes: Vec<Lane>,
    kind: Kind,
    secs: u64,
) -> (Outcome, Vec<Lane>) {
    let mut shares: Vec<Vec<Lane>> = (0..connections).map(|_| Vec::new()).collect();
    for l in lanes {
        shares[l.device % connections].push(l);
    }
    let ctx = Arc::new(Ctx {
        addr: t.addr,
        host: t.host.clone(),
        api_keys: t.api_keys.clone(),
        devices: devices.clone(),
        kind,
    });
    let cpu = super::target::CpuMark::now(t.pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let tasks: Vec<_> = shares
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(|s| tokio::spawn(connection(ctx.clone(), deadline, s)))
        .collect();
    let mut total = Outcome::empty();
    let mut back = Vec::new();
    for task in tasks {
        if let Ok((o, lanes)) = task.await {
            total.merge(o);
            back.extend(lanes);
        }
    }
    total.elapsed = started.elapsed();
    total.set_cpu(cpu, t.pid);
    (total, back)
}

struct Ctx {
    addr: SocketAddr,
    host: HeaderValue,
    api_keys: Vec<HeaderValue>,
    devices: Arc<Vec<SimDevice>>,
    kind: Kind,
}

impl Ctx {
    fn request(&self, lane: &Lane, proof: HeaderValue) -> Option<Request<Full<Bytes>>> {
        let d = &self.devices[lane.device];
        let b = Request::post(match self.kind {
            Kind::Exchange => keybound::exchange::TOKEN_PATH,
            Kind::Refresh => keybound::exchange::REFRESH_PATH,
        })
        .header(header::HOST, self.host.clone())
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .header("dpop", proof);
        match self.kind {
            Kind::Exchange => b
                .header("x-api-key", self.api_keys[d.key_index].clone())
                .body(Full::new(d.body.clone())),
            Kind::Refresh => {
                let token = lane.token.as_ref()?.expose_secret();
                let body = serde_json::json!({ "refresh_token": token }).to_string();
                b.body(Full::new(Bytes::from(body)))
            }
        }
        .ok()
    }
}

/// The part of a token answer the next refresh needs.
#[derive(serde::Deserialize)]
struct Answer {
    refresh_token: SecretString,
}

/// One connection's closed loop, round robin over its own devices.
async fn connection(
    ctx: Arc<Ctx>,
    deadline: Instant,
    mut lanes: Vec<Lane>,
) -> (Outcome, Vec<Lane>) {
    let mut out = Outcome::empty();
    let mut sender: Option<Sender> = None;
    let mut at = 0;
    while Instant::now() < deadline {
        // The next lane with work, if any.
        let Some(i) = (0..lanes.len())
            .map(|k| (at + k) % lanes.len())
            .find(|&i| lanes[i].ready(ctx.kind))
        else {
            break;
        };
        at = i + 1;
        let lane = &mut lanes[i];
        let proof = lane.proofs.pop().expect("a ready lane has a proof");
        let Some(req) = ctx.request(lane, proof) else {
            break;
        };
        match round_trip(&mut sender, ctx.addr, req, &mut out).await {
            // Not sent: the lane's token is still good.
            Trip::NotSent => {}
            Trip::Answered(status, body) => {
                if status.is_success() {
                    match serde_json::from_slice::<Answer>(&body) {
                        Ok(a) => {
                            out.ok += 1;
                            lane.token = Some(a.refresh_token);
                        }
                        Err(_) => {
                            *out.errors.entry("NO_REFRESH_TOKEN".into()).or_default() += 1;
                            lane.token = None;
                            lane.proofs.clear();
                        }
                    }
                } else {
                    *out.errors.entry(error_code(status, &body)).or_default() += 1;
                    // A refusal that spent nothing (a rate limit, a busy server) leaves the
                    // token good; any other ends this device's chain for the batch.
                    if !matches!(status.as_u16(), 429 | 503) {
                        lane.token = None;
                        lane.proofs.clear();
                    }
                }
            }
            Trip::Lost => {
                // The answer is lost: the token may or may not be spent, so the chain ends.
                lane.token = None;
                lane.proofs.clear();
            }
        }
    }
    (out, lanes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_url_is_the_token_endpoints_with_the_refresh_path() {
        assert_eq!(
            refresh_url("http://127.0.0.1:8080/v1/token"),
            "http://127.0.0.1:8080/v1/token/refresh"
        );
        assert_eq!(
            refresh_url("https://auth.example/v1/token"),
            "https://auth.example/v1/token/refresh"
        );
    }
}
