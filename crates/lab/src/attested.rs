//! M: trust a leaked key cannot earn (issue 17). A leaked API key against `attestation:
//! required`, a clone of an attested app's data, a leaked key refreshing under `preferred`,
//! and the revoke-and-re-enroll cycle against the hourly enrollment budget.
//!
//! Needs its own in-process server: the victim's App Attest attestation is generated under a
//! lab root given to that server as `--attestation-root` (the generator is the one the tests
//! use, `src/attestation/testing.rs`), as an iPhone would produce it under Apple's root.

use std::io::Write as _;

use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::report::{Outcome, Section};
use super::target::{LabDevice, Reply, Target, phone};
use keybound::devices::trust::{self, DeviceHistory, NetworkSignals, TrustInputs};
use keybound::error::{Error, Result};

#[path = "../../../src/attestation/testing.rs"]
#[allow(clippy::all, missing_docs, unreachable_pub)]
mod generator;

/// Scenario M's measurements.
#[derive(Debug, Clone)]
pub struct Attested {
    /// Answers to a re-implemented client holding the leaked key (no attestation), key
    /// `required`: exchanges, then the same with a phone's full fingerprint.
    pub reimplemented_answers: Vec<String>,
    /// Tokens it obtained.
    pub reimplemented_tokens: usize,
    /// The attested victim's exchange (`required`): trust level and `attested`.
    pub victim: String,
    /// The clone's answers: with the victim's attributes and no attestation; replaying the
    /// victim's attestation; with the victim's refresh token.
    pub clone_answers: Vec<String>,
    /// Whether any clone request got a trusted token.
    pub clone_trusted: bool,
    /// The leaked key's device under `preferred`: refreshes made, the exchange count the server
    /// recorded after them, and its level at the last refresh.
    pub refreshes: usize,
    /// The server's `exchange_count` for that device after the refreshes.
    pub exchange_count_after_refreshes: i64,
    /// The level the server answered at the last refresh.
    pub level_after_refreshes: String,
    /// The level the pure trust function gives that device a day later with that history.
    pub level_a_day_later: String,
    /// Revoke-and-re-enroll: enrollments that succeeded before the cycle stopped.
    pub cycle_enrollments: usize,
    /// The key's `max_devices` (and so its hourly budget).
    pub cycle_budget: usize,
    /// The answer that stopped the cycle.
    pub cycle_stopped_by: String,
    /// An `ENROLLMENT_BURST` alert was raised.
    pub cycle_alerted: bool,
}

/// Runs scenario M on a server of its own.
pub async fn attested() -> Result<Attested> {
    let root = generator::TestRoot::new();
    let mut pem = tempfile::NamedTempFile::new().map_err(Error::internal)?;
    pem.write_all(root.root_pem().as_bytes())
        .map_err(Error::internal)?;
    let root_path = pem.path().to_owned();
    let t = Target::in_process_with(|a| {
        a.attestation_roots = vec![root_path];
        a.apple_app_ids = vec![generator::TEST_APP_ID.into()];
    })
    .await?;
    let result = run(&t, &root).await;
    t.stop().await;
    result
}

async fn run(t: &Target, root: &generator::TestRoot) -> Result<Attested> {
    let victim_net = Target::client_ip(10, 7, 5);
    let attacker_net = Target::client_ip(66, 7, 7);
    let victim_attrs = phone("ios", "iPhone15,2", "victim-install", "ja-JP", "Asia/Tokyo");

    // 1. The leaked key from a re-implemented client, key `required`.
    let (key, _) = t.create_key(json!({"attestation": "required"})).await?;
    let key = key.expose_secret().to_owned();
    let attacker = LabDevice::new();
    let mut reimplemented_answers = vec![];
    let mut reimplemented_tokens = 0;
    for body in [json!({}), victim_attrs.clone()] {
        let r = t.exchange(&key, &attacker, &body, attacker_net).await?;
        reimplemented_tokens += usize::from(r.ok());
        reimplemented_answers.push(r.summary());
    }

    // 2. A genuine, attested iPhone; then a clone of its app data on another device. The DPoP
    // key of an attested app lives in the Secure Enclave or the Keystore: a copy of the app's
    // data carries its attributes, install id, refresh token and even the attestation it sent,
    // but not that key, so the clone signs with a key of its own.
    let victim = LabDevice::new();
    let challenge = challenge(t).await?;
    let client_data = format!("{challenge}.{}", victim.jkt());
    let attestation = generator::apple_attestation(
        root,
        &challenge,
        client_data.as_bytes(),
        generator::TEST_APP_ID,
        &generator::AppleOpts::default(),
    );
    let mut victim_body = victim_attrs.clone();
    victim_body["device"]["attestation"] = attestation.clone();
    let v = t.exchange(&key, &victim, &victim_body, victim_net).await?;
    if !v.ok() {
        return Err(Error::internal(format!("victim exchange: {}", v.summary())));
    }
    let victim_summary = format!(
        "{} {}, attested {}",
        v.summary(),
        v.body["trust"]["level"].as_str().unwrap_or("-"),
        v.body["trust"]["attested"]
    );
    let stolen_refresh = v.body["refresh_token"].as_str().unwrap_or("").to_owned();
    let clone = LabDevice::new();
    let mut clone_answers = vec![];
    let mut clone_trusted = false;
    let mut note = |r: &Reply, what: &str| {
        clone_trusted |= r.ok() && r.body["trust"]["level"] == "trusted";
        clone_answers.push(format!("{what}: {}", r.summary()));
    };
    let r = t
        .exchange(&key, &clone, &victim_attrs, attacker_net)
        .await?;
    note(&r, "copied attributes");
    let r = t.exchange(&key, &clone, &victim_body, attacker_net).await?;
    note(&r, "copied attributes and attestation");
    let r = t.refresh(&stolen_refresh, &clone, attacker_net).await?;
    note(&r, "copied refresh token");

    // 3. The leaked key under `preferred` (the default) from the attacker's own phone, which
    // then only refreshes: refreshes no longer count towards earned trust.
    let (pkey, pkey_id) = t.create_key(json!({})).await?;
    let attacker_attrs = phone("android", "Pixel 8", "attacker-install", "en-US", "UTC");
    let r = t
        .exchange(
            pkey.expose_secret(),
            &attacker,
            &attacker_attrs,
            attacker_net,
        )
        .await?;
    let mut refresh_token = r.body["refresh_token"].as_str().unwrap_or("").to_owned();
    let refreshes = 10;
    let mut level_after_refreshes = String::new();
    for _ in 0..refreshes {
        let r = t.refresh(&refresh_token, &attacker, attacker_net).await?;
        level_after_refreshes = r.body["trust"]["level"].as_str().unwrap_or("-").into();
        refresh_token = r.body["refresh_token"].as_str().unwrap_or("").to_owned();
    }
    let devices = t.admin_get(&format!("/keys/{pkey_id}/devices")).await?;
    let exchange_count_after_refreshes = devices.body["devices"][0]["exchange_count"]
        .as_i64()
        .unwrap_or(-1);
    let stored: trust::Attributes = attributes(&attacker_attrs);
    let later = trust::evaluate(&TrustInputs {
        stored: &stored,
        presented: &stored,
        history: DeviceHistory::of(exchange_count_after_refreshes, 0, 0, 2 * 86_400),
        network: NetworkSignals {
            network_seen_before: true,
            distinct_networks_recent: 1,
        },
        trust_on_enroll: false,
        approved: false,
        attested: false,
        is_new: false,
    });

    // 4. Revoke and re-enroll: the operator revokes each device the attacker enrolls; the
    // attacker makes a new device key each time.
    let budget = 3;
    let (ckey, ckey_id) = t.create_key(json!({"max_devices": budget})).await?;
    let mut cycle_enrollments = 0;
    let mut cycle_stopped_by = String::from("never stopped");
    for _ in 0..(budget * 4) {
        let d = LabDevice::new();
        let r = t
            .exchange(ckey.expose_secret(), &d, &attacker_attrs, attacker_net)
            .await?;
        if !r.ok() {
            cycle_stopped_by = r.summary();
            break;
        }
        cycle_enrollments += 1;
        let id = r.body["device_id"].as_str().unwrap_or("");
        t.admin_post(&format!("/devices/{id}/revoke"), &json!({}))
            .await?;
    }
    let cycle_alerted = t
        .wait_for_alert(
            "ENROLLMENT_BURST",
            &ckey_id,
            std::time::Instant::now(),
            std::time::Duration::from_secs(2),
        )
        .await?
        .is_some();

    Ok(Attested {
        reimplemented_answers,
        reimplemented_tokens,
        victim: victim_summary,
        clone_answers,
        clone_trusted,
        refreshes,
        exchange_count_after_refreshes,
        level_after_refreshes,
        level_a_day_later: later.level.as_str().into(),
        cycle_enrollments,
        cycle_budget: budget as usize,
        cycle_stopped_by,
        cycle_alerted,
    })
}

async fn challenge(t: &Target) -> Result<String> {
    let r = t
        .send(t.client().post(t.url("/v1/attestation/challenge")))
        .await?;
    r.body["challenge"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::internal(format!("challenge: {}", r.summary())))
}

fn attributes(body: &Value) -> trust::Attributes {
    body["device"]["attributes"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

impl Attested {
    /// The re-implemented client got nothing, refused for the right reason.
    pub fn reimplemented_blocked(&self) -> bool {
        self.reimplemented_tokens == 0
            && self
                .reimplemented_answers
                .iter()
                .all(|a| a == "403 ATTESTATION_REQUIRED")
    }

    /// The cycle stopped at the budget with 429 and an alert.
    pub fn cycle_stopped(&self) -> bool {
        self.cycle_enrollments == self.cycle_budget
            && self.cycle_stopped_by == "429 RATE_LIMITED"
            && self.cycle_alerted
    }

    /// The report section.
    pub fn section(&self) -> Section {
        let mut s = Section::new("M attested devices");
        let blocked = self.reimplemented_blocked();
        s.row(
            "leaked key from a re-implemented client (no attestation), key `attestation: required`",
            "contract 8: no valid attestation on record, nothing issued",
            if blocked {
                Outcome::Blocked
            } else {
                Outcome::NotBlocked
            },
            format!(
                "{} tokens; answers: {}",
                self.reimplemented_tokens,
                self.reimplemented_answers.join(", ")
            ),
        );
        s.check(
            blocked,
            "a re-implemented client got a token under required",
        );
        s.row(
            "clone of an attested phone's app data (attributes, install id, refresh token, its attestation) on another device, key `required`",
            "the attested DPoP key never leaves the hardware; attestations are bound to the key and single use; refresh tokens to the key",
            if self.clone_trusted {
                Outcome::NotBlocked
            } else {
                Outcome::Blocked
            },
            format!(
                "victim {}; clone: {}",
                self.victim,
                self.clone_answers.join("; ")
            ),
        );
        s.check(!self.clone_trusted, "a clone of the app data was trusted");
        let not_earned = self.exchange_count_after_refreshes == 1
            && self.level_after_refreshes == "limited"
            && self.level_a_day_later == "limited";
        s.row(
            "leaked key under `preferred` (default), the attacker's device only refreshing",
            "refreshes no longer count towards earned trust",
            if not_earned {
                Outcome::Limited
            } else {
                Outcome::NotBlocked
            },
            format!(
                "after {} refreshes: exchange count {}, level {}; a day later with that history: {}",
                self.refreshes,
                self.exchange_count_after_refreshes,
                self.level_after_refreshes,
                self.level_a_day_later
            ),
        );
        s.check(not_earned, "refreshing earned trust");
        let stopped = self.cycle_stopped();
        s.row(
            "revoke-and-re-enroll cycle (the operator revokes each device, the attacker makes a new key)",
            "hourly enrollment budget (default max_devices, revoked devices count)",
            if stopped {
                Outcome::Limited
            } else {
                Outcome::NotBlocked
            },
            format!(
                "{} enrollments with max_devices {}, then {}{}",
                self.cycle_enrollments,
                self.cycle_budget,
                self.cycle_stopped_by,
                if self.cycle_alerted {
                    " and ENROLLMENT_BURST"
                } else {
                    ", no alert"
                }
            ),
        );
        s.check(stopped, "the cycle did not stop at the budget");
        s.note(
            "A leaked API key is contained by suspending or rotating it, or prevented from \
             being useful by `attestation: required`; revoking a device contains a copied \
             device key, not a leaked API key (docs/trust.md).",
        );
        s
    }
}
