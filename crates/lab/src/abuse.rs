//! L rate limiting: how much abuse the per-IP failure budget and the per-key rate stop, and
//! what they cost legitimate users (collateral refusals) and every request (latency).

use std::hint::black_box;
use std::time::Instant;

use secrecy::ExposeSecret;
use serde_json::json;

use super::report::{Outcome, Section, pct};
use super::stats::median;
use super::target::{LabDevice, Reply, Target};
use keybound::error::Result;
use keybound::limits::{IpFailures, KeyLimits};

/// Scenario L's measurements.
#[derive(Debug, Clone)]
pub struct RateLimits {
    /// Guesses sent from one address in a burst.
    pub guesses: usize,
    /// Of those, evaluated (401) rather than refused up front (429).
    pub guesses_evaluated: usize,
    /// Guesses at one key id, each from its own address, that were evaluated (not 429).
    pub botnet_evaluated: usize,
    /// The key's owner right after that botnet: its answer.
    pub owner_after_botnet: String,
    /// `Retry-After` on the first 429.
    pub guess_retry_after: Option<u64>,
    /// A legitimate client at the attacker's address (one NAT) right after: its answer.
    pub same_ip_legit: String,
    /// A legitimate client at another address: its answer.
    pub other_ip_legit: String,
    /// The per-key rate of the abused key.
    pub key_rate: u32,
    /// Exchanges the abuser (holding a leaked key) attempted in a burst, and how many got
    /// through.
    pub abuse_sent: usize,
    /// Accepted of those.
    pub abuse_accepted: usize,
    /// The key's owner right after: its answer.
    pub owner_after_abuse: String,
    /// Median time of a full exchange on this server, µs.
    pub exchange_median_us: f64,
    /// Time of the two checks every token request pays (budget check + key rate), ns.
    pub limiter_ns: f64,
    /// Whether the server believed our client addresses (in-process: yes).
    pub distinct_ips: bool,
}

fn retry_after(r: &reqwest::Response) -> Option<u64> {
    r.headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// One guess: the status and `Retry-After`.
async fn guess_once(
    t: &Target,
    presented: &str,
    from: std::net::IpAddr,
) -> Result<(u16, Option<u64>)> {
    let res = t
        .client()
        .post(t.url("/v1/token"))
        .header("x-api-key", presented)
        .header("x-forwarded-for", from.to_string())
        .json(&json!({}))
        .send()
        .await
        .map_err(keybound::Error::internal)?;
    Ok((res.status().as_u16(), retry_after(&res)))
}

/// L: guessing bursts from one address and from a botnet, a leaked key used in a burst, and
/// what the limits cost.
pub async fn rate_limits(t: &Target) -> Result<RateLimits> {
    // Online guessing from one address: well-formed keys with random ids and secrets, so
    // only the per-IP budget stands in the way.
    let (key, _) = t.create_key(json!({"trust_on_enroll": true})).await?;
    let key = key.expose_secret().to_owned();
    let attacker = Target::client_ip(50, 0, 66);
    let guesses = 200;
    let mut evaluated = 0;
    let mut first_retry = None;
    for _ in 0..guesses {
        let guess = keybound::keys::ApiKey::generate(keybound::keys::KeyEnv::Test);
        let (status, retry) = guess_once(t, guess.expose(), attacker).await?;
        if status == 429 {
            first_retry = first_retry.or(retry);
        } else {
            evaluated += 1;
        }
    }
    let legit = LabDevice::new();
    let same_ip = t.exchange(&key, &legit, &json!({}), attacker).await?;
    let other_ip = t
        .exchange(&key, &legit, &json!({}), Target::client_ip(50, 1, 1))
        .await?;

    // A botnet: guesses at one real key id, each from its own address, so the per-IP budget
    // never trips; the per-key-id budget does. The key's owner still gets in.
    let mut botnet_evaluated = 0;
    for i in 0..guesses {
        let forged = super::leaks::forge_same_id(&key);
        let from = Target::client_ip(54, (i / 250) as u8, (i % 250) as u8);
        if guess_once(t, &forged, from).await?.0 != 429 {
            botnet_evaluated += 1;
        }
    }
    let owner_after_botnet = t
        .exchange(&key, &legit, &json!({}), Target::client_ip(50, 2, 1))
        .await?;

    // A leaked key used in a burst: the per-key rate caps it, for the owner too.
    let key_rate = 30;
    let (abused, _) = t
        .create_key(json!({"trust_on_enroll": true, "rate_limit_per_minute": key_rate}))
        .await?;
    let abused = abused.expose_secret().to_owned();
    let abuser = LabDevice::new();
    let abuse_sent = 2 * key_rate as usize;
    let mut accepted = 0;
    for i in 0..abuse_sent {
        let r = t
            .exchange(
                &abused,
                &abuser,
                &json!({}),
                Target::client_ip(51, 0, i as u8),
            )
            .await?;
        accepted += usize::from(r.ok());
    }
    let owner = t
        .exchange(
            &abused,
            &LabDevice::new(),
            &json!({}),
            Target::client_ip(52, 0, 1),
        )
        .await?;

    // The latency cost: a full exchange, and the two limiter checks alone.
    let device = LabDevice::new();
    let from = Target::client_ip(53, 0, 1);
    let mut times = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        let r: Reply = t.exchange(&key, &device, &json!({}), from).await?;
        if r.ok() {
            times.push(started.elapsed().as_nanos() as f64 / 1e3);
        }
    }
    let limiter_ns = limiter_cost().await;
    Ok(RateLimits {
        guesses,
        guesses_evaluated: evaluated,
        botnet_evaluated,
        owner_after_botnet: owner_after_botnet.summary(),
        guess_retry_after: first_retry,
        same_ip_legit: same_ip.summary(),
        other_ip_legit: other_ip.summary(),
        key_rate,
        abuse_sent,
        abuse_accepted: accepted,
        owner_after_abuse: owner.summary(),
        exchange_median_us: median(&times),
        limiter_ns,
        distinct_ips: t.forwarded_for,
    })
}

/// Nanoseconds for what every token request pays: the per-IP budget check and one take from
/// the key's rate (the failure record is paid by failures only).
async fn limiter_cost() -> f64 {
    use keybound::limits::Backend;
    let keys = KeyLimits::new(Backend::Local, 1000);
    let budget = IpFailures::new(Backend::Local, "lab", 20, 1000, 64);
    let ip: std::net::IpAddr = [127, 0, 0, 1].into();
    let n = 200_000u32;
    let started = Instant::now();
    for _ in 0..n {
        black_box(budget.check(black_box(ip)).await.is_ok());
        black_box(
            keys.check(black_box("ak_test_AAAAAAAAAAAA"), i64::from(u32::MAX))
                .await
                .is_ok(),
        );
    }
    started.elapsed().as_nanos() as f64 / f64::from(n)
}

impl RateLimits {
    /// The budget and the key rate both cut the bursts.
    pub fn holds(&self) -> bool {
        (!self.distinct_ips || (self.guesses_evaluated <= 20 && self.botnet_evaluated <= 11))
            && self.abuse_accepted <= self.key_rate as usize + 1
    }

    /// The report section.
    pub fn section(&self) -> Section {
        let mut s = Section::new("L rate limiting");
        let stopped = self.guesses - self.guesses_evaluated;
        s.row(
            format!("{} guesses at random key ids in a burst from one address", self.guesses),
            "per-IP failure budget (20 failures/min, then 429 before any work)",
            Outcome::Limited,
            format!(
                "{} evaluated, {} refused with 429 ({} stopped); Retry-After {} s; sustained: 20 guesses/min/IP",
                self.guesses_evaluated,
                stopped,
                pct(stopped as u64, self.guesses as u64),
                self.guess_retry_after.map_or("-".into(), |r| r.to_string())
            ),
        );
        s.row(
            format!(
                "{} guesses at one key id, each from its own address (a botnet)",
                self.guesses
            ),
            "per-key-id failure budget (10 wrong secrets/min for an id, from anywhere)",
            Outcome::Limited,
            format!(
                "{} evaluated, {} refused with 429 ({} stopped); the key's owner right after: {}",
                self.botnet_evaluated,
                self.guesses - self.botnet_evaluated,
                pct(
                    (self.guesses - self.botnet_evaluated) as u64,
                    self.guesses as u64
                ),
                self.owner_after_botnet
            ),
        );
        s.row(
            "cost: a legitimate client behind the attacker's address (one NAT)",
            "the budget is per address",
            Outcome::Limited,
            format!(
                "same address: {}; another address: {}",
                self.same_ip_legit, self.other_ip_legit
            ),
        );
        s.row(
            format!(
                "a leaked key used in a burst ({} exchanges, key rate {}/min)",
                self.abuse_sent, self.key_rate
            ),
            "per-key rate (GCRA: the minute's allowance as a burst, then rate/60 per second)",
            Outcome::Limited,
            format!(
                "{} accepted, {} refused ({} stopped)",
                self.abuse_accepted,
                self.abuse_sent - self.abuse_accepted,
                pct(
                    (self.abuse_sent - self.abuse_accepted) as u64,
                    self.abuse_sent as u64
                )
            ),
        );
        s.row(
            "cost: the key's owner right after the abuse",
            "the rate is per key, shared by every device",
            Outcome::Limited,
            format!("owner's exchange: {}", self.owner_after_abuse),
        );
        s.row(
            "cost: latency every token request pays",
            "in-memory GCRA cells (governor) in moka caches",
            Outcome::Limited,
            format!(
                "{:.0} ns for both checks vs {:.0} µs median exchange ({:.3} %)",
                self.limiter_ns,
                self.exchange_median_us,
                100.0 * self.limiter_ns / 1e3 / self.exchange_median_us.max(1e-9)
            ),
        );
        if !self.distinct_ips {
            s.note(
                "The target does not believe the lab's X-Forwarded-For, so every request came \
                 from one address and earlier scenarios' failures share the budget."
                    .to_owned(),
            );
        }
        s.note(
            "The failure budget does not make guessing harder than the 256-bit secret already \
             does (scenario F); what it stops is cheap load: a refused address costs the server \
             a cache lookup instead of a key check, and a FAILURE_BURST alert names it. Its \
             cost lands on whoever shares the address. The per-key-id budget caps guesses at one \
             id however many addresses send them, and costs the owner nothing: it is spent and \
             checked only by wrong secrets. The per-key rate bounds what a leaked \
             key can be used for per minute, and its cost lands on the key's own devices: a \
             rate-limited owner is also a signal that the key is being abused."
                .to_owned(),
        );
        s.check(self.holds(), "a burst was not cut by the limits");
        s
    }
}
