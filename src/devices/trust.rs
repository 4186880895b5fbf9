//! The device trust score (contract section 6).
//!
//! A device is its DPoP key. Each exchange compares the fingerprint attributes the device
//! presents with those recorded for it, and weighs them with the device's history and network
//! signals into a score in `0..=1`. The score decides the level: [`TrustLevel::Trusted`] at or
//! above [`TRUSTED_THRESHOLD`], [`TrustLevel::Denied`] below [`DENY_THRESHOLD`], and
//! [`TrustLevel::Limited`] in between. `docs/trust.md` explains the same formula for operators.
//!
//! # The formula
//!
//! **1. Weighted base.** `base = 0.5·A + 0.3·H + 0.2·N − P`, clamped to `0..=1`, where:
//!
//! * **A, attribute agreement** (`0..=1`) is the weighted mean of a credit per attribute,
//!   over the attributes present on at least one side (values compared after trimming and
//!   ASCII lower-casing; an empty value counts as absent; other attribute names are ignored):
//!
//!   | attribute | class | weight | same | changed | withheld | newly presented |
//!   |---|---|---|---|---|---|---|
//!   | `install_id` | stable | 4 | 1 | 0 | 0.25 | 0.5 |
//!   | `platform`, `model` | stable | 3 | 1 | 0 | 0.25 | 0.5 |
//!   | `locale`, `timezone` | medium | 1 | 1 | 0.5 | 0.5 | 0.5 |
//!   | `os_version`, `app_version` | version | 0.5 | 1 | 0.75 (1 if upgraded) | 0.5 | 0.5 |
//!
//!   "Withheld" means recorded before but not presented now: stable attributes are not
//!   neutral when withheld, or a stolen key could dodge the mismatch check by sending nothing.
//!   With no attribute on either side, `A = 0.5`. For a **new** device nothing is recorded
//!   yet, so every presented attribute counts as agreeing (it is being enrolled).
//!
//! * **H, history** (`0..=1`) `= 0.5·min(exchanges / 5, 1) + 0.5·min(age / 24 h, 1)`, where
//!   `exchanges` counts the device's earlier successful exchanges (token exchanges only:
//!   refreshes carry no attributes and do not count). It is 0 for a new device, and 1 when an
//!   operator vouched for the device (`approved`), its platform attested it, or its key has
//!   `trust_on_enroll`: the vouching replaces the history the device has not had time to build.
//!
//! * **N, network** (`0..=1`) `= (1 if this network was seen before for the device, else 0.5)
//!   − 0.15·max(0, distinct_networks_recent − 3)`, floored at 0. Phones move between home,
//!   work and mobile networks, so three are free; a device key seen from many networks at
//!   once looks copied.
//!
//! * **P, past mismatches** `= min(0.15·previous_mismatches, 0.45)`: a device that has already
//!   changed stable attributes earns trust back more slowly.
//!
//! **2. Rules**, applied in this order, each as a cap or floor on the score:
//!
//! 1. *New device*: with `trust_on_enroll`, floored at [`TRUSTED_THRESHOLD`] (trusted);
//!    otherwise clamped to `[DENY_THRESHOLD, LIMITED_CAP]` (always limited). No other rule
//!    applies, since nothing is recorded to disagree with.
//! 2. *Stable attribute changed* (`stable_mismatch`): capped at [`DENY_CAP`] (denied) when
//!    `platform` changed or two or more stable attributes changed — the key is being used on
//!    another device; otherwise at [`MISMATCH_CAP`] (limited) — e.g. a reinstall that kept the
//!    key but got a new `install_id`. Approval does not lift this.
//! 3. *Stable attribute withheld* (also `stable_mismatch`): capped at [`LIMITED_CAP`].
//! 4. *Approved* by an operator, or else *attested* (a valid platform attestation of the device
//!    key, contract section 8, under a key whose policy is not `off`): floored at
//!    [`TRUSTED_THRESHOLD`]. A new attested device is trusted at once (it takes rule 1's
//!    place).
//! 5. *Earning trust*: a device neither approved nor enrolled under `trust_on_enroll` is capped
//!    at [`LIMITED_CAP`] until it has at least [`EARN_MIN_EXCHANGES`] earlier successful
//!    exchanges over at least [`EARN_MIN_AGE_SECONDS`].
//!
//! 6. *Attested floor*: an attested device is never below [`DENY_THRESHOLD`] (limited): rules
//!    2 and 3 still cap it, but its key provably never left the hardware it was attested on.
//!
//! **3. Rounding.** The score is rounded to two decimals, and the level is read from the
//! rounded score, so the score and level a client sees always agree.
//!
//! Version bumps cannot demote a device: an upgrade of `os_version` or `app_version` (dotted
//! numeric versions, compared component by component) gets full credit. Any other change of
//! a version, such as a downgrade, costs at most `0.5 · (2·0.5·0.25) / 13 ≈ 0.01`.
//!
//! Every step is recorded as a [`TrustFactor`]; the contributions add up to the score (within
//! rounding), so a stored decision explains itself. The function is pure: the same inputs
//! always give the same decision.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A device's fingerprint attributes: a flat string map (contract section 3.1).
pub type Attributes = BTreeMap<String, String>;

/// Scores at or above this are `trusted`.
pub const TRUSTED_THRESHOLD: f64 = 0.7;
/// Scores below this are denied (403 `DEVICE_UNTRUSTED`).
pub const DENY_THRESHOLD: f64 = 0.3;
/// The highest score a device can have while a rule holds it at `limited`.
pub const LIMITED_CAP: f64 = 0.69;
/// Cap after one stable attribute (not `platform`) changed: well inside `limited`.
pub const MISMATCH_CAP: f64 = 0.5;
/// Cap after `platform` or several stable attributes changed: denied.
pub const DENY_CAP: f64 = 0.2;

/// Earlier successful exchanges a device needs before it can earn `trusted` by itself.
pub const EARN_MIN_EXCHANGES: u64 = 5;
/// Age (since enrollment) a device needs before it can earn `trusted` by itself: one day, so
/// trust is earned across separate sessions, not by a burst of requests.
pub const EARN_MIN_AGE_SECONDS: u64 = 24 * 60 * 60;

const WEIGHT_ATTRIBUTES: f64 = 0.5;
const WEIGHT_HISTORY: f64 = 0.3;
const WEIGHT_NETWORK: f64 = 0.2;

/// Network score for a network not seen before for this device: a new network is common for a
/// phone, so it costs only half the network weight.
const NEW_NETWORK_SCORE: f64 = 0.5;
/// Distinct recent networks that cost nothing (home, work, mobile).
const FREE_NETWORKS: u32 = 3;
/// Network score lost per distinct recent network beyond [`FREE_NETWORKS`].
const PER_EXTRA_NETWORK: f64 = 0.15;

/// Penalty per earlier stable-attribute mismatch, and its maximum.
const PER_PREVIOUS_MISMATCH: f64 = 0.15;
const MAX_PREVIOUS_MISMATCH_PENALTY: f64 = 0.45;

/// How an attribute is weighed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Identifies the physical install; a change means another device.
    Stable,
    /// Changes with travel or settings.
    Medium,
    /// Changes with every update.
    Version,
}

/// The attributes the score looks at, with their weights and factor names, in the order
/// factors are listed.
const ATTRIBUTES: [(&str, Class, f64, &str); 7] = [
    ("platform", Class::Stable, 3.0, "attribute:platform"),
    ("model", Class::Stable, 3.0, "attribute:model"),
    ("install_id", Class::Stable, 4.0, "attribute:install_id"),
    ("os_version", Class::Version, 0.5, "attribute:os_version"),
    ("app_version", Class::Version, 0.5, "attribute:app_version"),
    ("locale", Class::Medium, 1.0, "attribute:locale"),
    ("timezone", Class::Medium, 1.0, "attribute:timezone"),
];

/// The device's track record, as storage knows it before this exchange.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceHistory {
    /// Successful token exchanges before this one (refreshes do not count).
    pub successful_exchanges: u64,
    /// Seconds since the device enrolled.
    pub age_seconds: u64,
    /// Earlier exchanges that had a stable-attribute mismatch.
    pub previous_mismatches: u32,
}

impl DeviceHistory {
    /// The history as stored on a device record (counts are never negative in practice; a
    /// negative one counts as zero).
    pub fn of(exchange_count: i64, created_at: i64, mismatch_count: i64, now: i64) -> Self {
        DeviceHistory {
            successful_exchanges: exchange_count.max(0) as u64,
            age_seconds: (now - created_at).max(0) as u64,
            previous_mismatches: mismatch_count.clamp(0, u32::MAX as i64) as u32,
        }
    }
}

/// Where the request comes from, relative to the device's past.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSignals {
    /// This network (e.g. the client IP's /24 or /64 prefix) was seen before for this device.
    pub network_seen_before: bool,
    /// Distinct networks this device used recently, this one included.
    pub distinct_networks_recent: u32,
}

impl NetworkSignals {
    /// The signals for a request from `network` by a device that used `known` before. A new
    /// device's first network counts as seen: there is no past to differ from.
    pub fn of(known: &[String], network: &str, is_new: bool) -> Self {
        let seen = known.iter().any(|n| n == network);
        NetworkSignals {
            network_seen_before: seen || is_new,
            distinct_networks_recent: known.len() as u32 + u32::from(!seen),
        }
    }
}

/// Everything the score depends on.
#[derive(Debug, Clone, Copy)]
pub struct TrustInputs<'a> {
    /// Attributes recorded for the device (empty for a new device).
    pub stored: &'a Attributes,
    /// Attributes presented with this exchange.
    pub presented: &'a Attributes,
    /// The device's history.
    pub history: DeviceHistory,
    /// Network signals.
    pub network: NetworkSignals,
    /// The API key has `trust_on_enroll`.
    pub trust_on_enroll: bool,
    /// An operator approved the device.
    pub approved: bool,
    /// The device key is attested (contract section 8) under a key whose policy counts it.
    pub attested: bool,
    /// This exchange enrolls the device.
    pub is_new: bool,
}

/// The trust level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrustLevel {
    /// Full scopes and TTL.
    Trusted,
    /// Scopes cut to the key's limited set, TTL at most 60 s.
    Limited,
    /// No token: 403 `DEVICE_UNTRUSTED`.
    Denied,
}

impl TrustLevel {
    /// The level a score falls in.
    pub fn from_score(score: f64) -> Self {
        if score >= TRUSTED_THRESHOLD {
            Self::Trusted
        } else if score >= DENY_THRESHOLD {
            Self::Limited
        } else {
            Self::Denied
        }
    }

    /// `"trusted"`, `"limited"` or `"denied"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trusted => "trusted",
            Self::Limited => "limited",
            Self::Denied => "denied",
        }
    }

    /// The level named by [`TrustLevel::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "trusted" => Some(Self::Trusted),
            "limited" => Some(Self::Limited),
            "denied" => Some(Self::Denied),
            _ => None,
        }
    }
}

/// One step of the score: a weighted component, a penalty or a rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustFactor {
    /// e.g. `attribute:platform`, `history`, `network`, `rule:approved`.
    pub name: Cow<'static, str>,
    /// What this step added to (or, negative, took from) the score, to four decimals.
    pub contribution: f64,
    /// Why, for an operator. Never contains attribute values.
    pub detail: Cow<'static, str>,
}

/// The outcome: store it with the exchange, alert on `stable_mismatch`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustDecision {
    /// `0..=1`, two decimals.
    pub score: f64,
    /// The level the score falls in.
    pub level: TrustLevel,
    /// A recorded stable attribute changed or was withheld: the server raises a fingerprint
    /// mismatch alert.
    pub stable_mismatch: bool,
    /// Names of the stable attributes that changed or were withheld.
    pub mismatched: Vec<String>,
    /// With `stable_mismatch`: a digest of the stable attributes as presented, so that the same
    /// changed fingerprint presented again can be told from a new one
    /// ([`is_new_mismatch`](Self::is_new_mismatch)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch_fingerprint: Option<String>,
    /// The steps that produced the score, in order.
    pub factors: Vec<TrustFactor>,
}

/// How one attribute compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comparison {
    Same,
    /// A version attribute moved to a higher version: routine, full credit.
    Upgraded,
    Changed,
    Withheld,
    NewlyPresented,
    Enrolled,
}

/// An attribute's value as compared: trimmed, absent when empty, and compared ASCII
/// case-insensitively (so nothing is copied on the exchange path).
fn normalized<'a>(attributes: &'a Attributes, name: &str) -> Option<&'a str> {
    attributes
        .get(name)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
}

fn compare(inputs: &TrustInputs<'_>, name: &str, class: Class) -> Option<Comparison> {
    let presented = normalized(inputs.presented, name);
    if inputs.is_new {
        return presented.map(|_| Comparison::Enrolled);
    }
    match (normalized(inputs.stored, name), presented) {
        (None, None) => None,
        (Some(s), Some(p)) if s.eq_ignore_ascii_case(p) => Some(Comparison::Same),
        (Some(s), Some(p)) if class == Class::Version && is_upgrade(s, p) => {
            Some(Comparison::Upgraded)
        }
        (Some(_), Some(_)) => Some(Comparison::Changed),
        (Some(_), None) => Some(Comparison::Withheld),
        (None, Some(_)) => Some(Comparison::NewlyPresented),
    }
}

/// Dotted version components (`"17.1.2"`, `"v17.1.2"` or `"V17.1.2"` → `[17, 1, 2]`), reading each
/// component's leading digits (`"3-beta"` → 3); `None` when a component has none, so odd
/// schemes never compare.
fn version_components(version: &str) -> Option<Vec<u64>> {
    version
        .strip_prefix(['v', 'V'])
        .unwrap_or(version)
        .split('.')
        .map(|part| {
            let digits = part.bytes().take_while(u8::is_ascii_digit).count();
            part[..digits].parse().ok()
        })
        .collect()
}

/// `new` is a strictly higher version than `old`, missing components counting as 0.
fn is_upgrade(old: &str, new: &str) -> bool {
    let (Some(old), Some(new)) = (version_components(old), version_components(new)) else {
        return false;
    };
    let len = old.len().max(new.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    (0..len)
        .map(|i| at(&new, i).cmp(&at(&old, i)))
        .find(|o| o.is_ne())
        == Some(std::cmp::Ordering::Greater)
}

fn credit(class: Class, comparison: Comparison) -> f64 {
    match (comparison, class) {
        (Comparison::Same | Comparison::Upgraded | Comparison::Enrolled, _) => 1.0,
        (Comparison::Changed, Class::Stable) => 0.0,
        (Comparison::Changed, Class::Medium) => 0.5,
        (Comparison::Changed, Class::Version) => 0.75,
        (Comparison::Withheld, Class::Stable) => 0.25,
        (Comparison::Withheld | Comparison::NewlyPresented, _) => 0.5,
    }
}

fn describe(comparison: Comparison) -> &'static str {
    match comparison {
        Comparison::Same => "same as recorded",
        Comparison::Upgraded => "upgraded since recorded",
        Comparison::Changed => "changed since recorded",
        Comparison::Withheld => "recorded before, not presented now",
        Comparison::NewlyPresented => "presented for the first time",
        Comparison::Enrolled => "recorded at enrollment",
    }
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// Accumulates the score and its explanation.
struct Ledger {
    score: f64,
    factors: Vec<TrustFactor>,
}

impl Ledger {
    fn add(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        contribution: f64,
        detail: impl Into<Cow<'static, str>>,
    ) {
        self.score += contribution;
        self.factors.push(TrustFactor {
            name: name.into(),
            contribution: round_to(contribution, 4),
            detail: detail.into(),
        });
    }

    /// Moves the score into `low..=high`, recording the move (even when it is zero, so the
    /// explanation names every rule that applied).
    fn bound(
        &mut self,
        name: &'static str,
        low: f64,
        high: f64,
        detail: impl Into<Cow<'static, str>>,
    ) {
        let bounded = self.score.clamp(low, high);
        let delta = bounded - self.score;
        self.add(name, delta, detail);
        // Assign exactly, so float error in `score + delta` cannot leave it a hair outside.
        self.score = bounded;
    }
}

/// Scores a device. Pure and deterministic.
pub fn evaluate(inputs: &TrustInputs<'_>) -> TrustDecision {
    let mut ledger = Ledger {
        score: 0.0,
        factors: Vec::with_capacity(ATTRIBUTES.len() + 8),
    };

    // A: attribute agreement.
    let compared: Vec<(&str, Class, f64, Comparison, &'static str)> = ATTRIBUTES
        .iter()
        .filter_map(|&(name, class, weight, factor)| {
            compare(inputs, name, class).map(|c| (name, class, weight, c, factor))
        })
        .collect();
    let total_weight: f64 = compared.iter().map(|&(_, _, w, ..)| w).sum();
    if compared.is_empty() {
        ledger.add(
            "attributes",
            WEIGHT_ATTRIBUTES * 0.5,
            "no known attributes on either side: neutral",
        );
    }
    for &(_, class, weight, comparison, factor) in &compared {
        let contribution = WEIGHT_ATTRIBUTES * weight * credit(class, comparison) / total_weight;
        ledger.add(factor, contribution, describe(comparison));
    }
    let changed: Vec<&str> = compared
        .iter()
        .filter(|&&(_, class, _, c, _)| class == Class::Stable && c == Comparison::Changed)
        .map(|&(name, ..)| name)
        .collect();
    let withheld: Vec<&str> = compared
        .iter()
        .filter(|&&(_, class, _, c, _)| class == Class::Stable && c == Comparison::Withheld)
        .map(|&(name, ..)| name)
        .collect();

    // H: history.
    let history = inputs.history;
    let vouched = inputs.approved || inputs.attested || inputs.trust_on_enroll;
    let (h, h_detail) = if vouched {
        (
            1.0,
            Cow::Borrowed("vouched for (approved, attested or trust_on_enroll)"),
        )
    } else if inputs.is_new {
        (0.0, Cow::Borrowed("new device: no history"))
    } else {
        let usage = (history.successful_exchanges as f64 / EARN_MIN_EXCHANGES as f64).min(1.0);
        let tenure = (history.age_seconds as f64 / EARN_MIN_AGE_SECONDS as f64).min(1.0);
        (
            0.5 * usage + 0.5 * tenure,
            Cow::Owned(format!(
                "{} earlier exchanges, enrolled {} s ago",
                history.successful_exchanges, history.age_seconds
            )),
        )
    };
    ledger.add("history", WEIGHT_HISTORY * h, h_detail);

    // N: network.
    let network = inputs.network;
    let extra = network
        .distinct_networks_recent
        .saturating_sub(FREE_NETWORKS);
    let base_n = if network.network_seen_before {
        1.0
    } else {
        NEW_NETWORK_SCORE
    };
    let n = (base_n - PER_EXTRA_NETWORK * f64::from(extra)).max(0.0);
    ledger.add(
        "network",
        WEIGHT_NETWORK * n,
        format!(
            "{} network, {} distinct recently",
            if network.network_seen_before {
                "known"
            } else {
                "new"
            },
            network.distinct_networks_recent
        ),
    );

    // P: earlier mismatches.
    if history.previous_mismatches > 0 {
        let penalty = (PER_PREVIOUS_MISMATCH * f64::from(history.previous_mismatches))
            .min(MAX_PREVIOUS_MISMATCH_PENALTY);
        ledger.add(
            "previous_mismatches",
            -penalty,
            format!(
                "{} earlier stable-attribute mismatches",
                history.previous_mismatches
            ),
        );
    }
    if !(0.0..=1.0).contains(&ledger.score) {
        ledger.bound("clamp", 0.0, 1.0, "kept within 0..=1");
    }

    // Rules.
    if inputs.is_new {
        if inputs.attested {
            ledger.bound(
                "rule:attested",
                TRUSTED_THRESHOLD,
                1.0,
                "new device with a valid platform attestation: trusted, as if approved",
            );
        } else if inputs.trust_on_enroll {
            ledger.bound(
                "rule:trust_on_enroll",
                TRUSTED_THRESHOLD,
                1.0,
                "new device enrolled under a key with trust_on_enroll: trusted",
            );
        } else {
            ledger.bound(
                "rule:new_device",
                DENY_THRESHOLD,
                LIMITED_CAP,
                "newly enrolled device: limited until it earns trust",
            );
        }
    } else if !changed.is_empty() {
        let severe = changed.contains(&"platform") || changed.len() >= 2;
        let (cap, what) = if severe {
            (DENY_CAP, "denied")
        } else {
            (MISMATCH_CAP, "limited")
        };
        ledger.bound(
            "rule:stable_mismatch",
            0.0,
            cap,
            format!(
                "stable attributes changed for the same device key ({}): {what}",
                changed.join(", ")
            ),
        );
    } else if !withheld.is_empty() {
        ledger.bound(
            "rule:stable_withheld",
            0.0,
            LIMITED_CAP,
            format!(
                "recorded stable attributes not presented ({}): at most limited",
                withheld.join(", ")
            ),
        );
    } else if inputs.approved {
        ledger.bound(
            "rule:approved",
            TRUSTED_THRESHOLD,
            1.0,
            "approved by an operator: trusted",
        );
    } else if inputs.attested {
        ledger.bound(
            "rule:attested",
            TRUSTED_THRESHOLD,
            1.0,
            "device key attested by its platform: trusted, as if approved",
        );
    } else if !inputs.trust_on_enroll
        && (history.successful_exchanges < EARN_MIN_EXCHANGES
            || history.age_seconds < EARN_MIN_AGE_SECONDS)
    {
        ledger.bound(
            "rule:earning_trust",
            0.0,
            LIMITED_CAP,
            format!(
                "trusted needs {EARN_MIN_EXCHANGES} earlier exchanges over {} h: at most limited",
                EARN_MIN_AGE_SECONDS / 3600
            ),
        );
    }

    // Rule 6: the hardware vouches that this key never left the device it was attested on,
    // so whatever its attributes say, it is that device: never denied, though still scored.
    if inputs.attested && ledger.score < DENY_THRESHOLD {
        ledger.bound(
            "rule:attested_floor",
            DENY_THRESHOLD,
            1.0,
            "attested device key: never below limited",
        );
    }

    let score = round_to(ledger.score, 2);
    let mismatched: Vec<String> = changed
        .iter()
        .chain(withheld.iter())
        .map(|s| (*s).to_owned())
        .collect();
    TrustDecision {
        score,
        level: TrustLevel::from_score(score),
        stable_mismatch: !mismatched.is_empty(),
        mismatch_fingerprint: (!mismatched.is_empty())
            .then(|| stable_fingerprint(inputs.presented)),
        mismatched,
        factors: ledger.factors,
    }
}

impl TrustDecision {
    /// A stable mismatch whose fingerprint is not `last`, the one last counted for the device.
    ///
    /// Only such a mismatch is counted in the device's history (the penalty P) and alerted.
    /// The recorded attributes are not replaced after a mismatch (one limited exchange must not
    /// make a copied key's fingerprint the reference), so a phone reinstalled with its key kept
    /// presents the same new `install_id` at every exchange; counting each one walked it from
    /// `limited` to `denied` within a few exchanges, with an alert every time (lab P: 2 % of
    /// phones locked out). A different fingerprint still counts, each time it changes.
    pub fn is_new_mismatch(&self, last: Option<&str>) -> bool {
        self.mismatch_fingerprint
            .as_deref()
            .is_some_and(|f| Some(f) != last)
    }

    /// Records this decision in a device's mismatch history (`count`, and `last`, the
    /// fingerprint last counted): a new mismatch is counted and becomes `last`. Returns whether
    /// it was new, i.e. whether to alert. The exchange and the lab's population study both
    /// record through here.
    pub fn count_mismatch(&self, count: &mut i64, last: &mut Option<String>) -> bool {
        let new = self.is_new_mismatch(last.as_deref());
        if new {
            *count += 1;
            last.clone_from(&self.mismatch_fingerprint);
        }
        new
    }
}

/// Digest of the stable attributes in `presented`, normalized as they are compared (base64url
/// of 16 bytes of SHA-256; absent and present-but-empty are the same).
fn stable_fingerprint(presented: &Attributes) -> String {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (name, class, ..) in ATTRIBUTES {
        if class == Class::Stable {
            h.update(name.as_bytes());
            match normalized(presented, name).map(str::to_ascii_lowercase) {
                Some(v) => {
                    h.update([1]);
                    h.update((v.len() as u64).to_be_bytes());
                    h.update(v.as_bytes());
                }
                None => h.update([0]),
            }
        }
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&h.finalize()[..16])
}

/// Whether one of a key's scopes is in its default `limited_scopes`: the `read:` scopes
/// (contract section 6).
pub fn is_default_limited(scope: &str) -> bool {
    scope.starts_with("read:")
}

/// The default `limited_scopes` of a key: its scopes that start with `read:` (contract
/// section 6), in the key's order.
pub fn limited_scopes_default<S: AsRef<str>>(key_scopes: &[S]) -> Vec<String> {
    key_scopes
        .iter()
        .map(AsRef::as_ref)
        .filter(|scope| is_default_limited(scope))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR: u64 = 3600;
    const DAY: u64 = 24 * HOUR;

    fn phone() -> Attributes {
        [
            ("platform", "ios"),
            ("model", "iPhone15,2"),
            ("install_id", "5f0c2a9e-6b1d-4d8e-9a57-3c1e0b7f2d44"),
            ("os_version", "17.1"),
            ("app_version", "2.3.0"),
            ("locale", "ja-JP"),
            ("timezone", "Asia/Tokyo"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// `phone()` with some attributes replaced (`Some`) or removed (`None`).
    fn phone_with(changes: &[(&str, Option<&str>)]) -> Attributes {
        let mut attributes = phone();
        for &(name, value) in changes {
            match value {
                Some(v) => attributes.insert(name.to_owned(), v.to_owned()),
                None => attributes.remove(name),
            };
        }
        attributes
    }

    const ESTABLISHED: DeviceHistory = DeviceHistory {
        successful_exchanges: 40,
        age_seconds: 14 * DAY,
        previous_mismatches: 0,
    };
    const YOUNG: DeviceHistory = DeviceHistory {
        successful_exchanges: 1,
        age_seconds: 60,
        previous_mismatches: 0,
    };
    const KNOWN_NETWORK: NetworkSignals = NetworkSignals {
        network_seen_before: true,
        distinct_networks_recent: 2,
    };
    const NEW_NETWORK: NetworkSignals = NetworkSignals {
        network_seen_before: false,
        distinct_networks_recent: 3,
    };

    struct Case {
        name: &'static str,
        stored: Attributes,
        presented: Attributes,
        history: DeviceHistory,
        network: NetworkSignals,
        trust_on_enroll: bool,
        approved: bool,
        is_new: bool,
        level: TrustLevel,
        stable_mismatch: bool,
    }

    /// An established device presenting `presented`, expected at `level`.
    fn established(
        name: &'static str,
        presented: Attributes,
        level: TrustLevel,
        stable_mismatch: bool,
    ) -> Case {
        Case {
            name,
            stored: phone(),
            presented,
            history: ESTABLISHED,
            network: KNOWN_NETWORK,
            trust_on_enroll: false,
            approved: false,
            is_new: false,
            level,
            stable_mismatch,
        }
    }

    fn run(case: &Case) -> TrustDecision {
        evaluate(&TrustInputs {
            stored: &case.stored,
            presented: &case.presented,
            history: case.history,
            network: case.network,
            trust_on_enroll: case.trust_on_enroll,
            approved: case.approved,
            attested: false,
            is_new: case.is_new,
        })
    }

    fn cases() -> Vec<Case> {
        use TrustLevel::{Denied, Limited, Trusted};
        let empty = Attributes::new;
        vec![
            // Rule: a new device is limited, or trusted under trust_on_enroll.
            Case {
                name: "new device with full attributes is limited",
                stored: empty(),
                presented: phone(),
                history: DeviceHistory::default(),
                network: NEW_NETWORK,
                trust_on_enroll: false,
                approved: false,
                is_new: true,
                level: Limited,
                stable_mismatch: false,
            },
            Case {
                name: "new device on a known network with perfect signals is still limited",
                stored: phone(),
                presented: phone(),
                history: ESTABLISHED,
                network: KNOWN_NETWORK,
                trust_on_enroll: false,
                approved: false,
                is_new: true,
                level: Limited,
                stable_mismatch: false,
            },
            Case {
                name: "new device without attributes is limited, not denied",
                stored: empty(),
                presented: empty(),
                history: DeviceHistory::default(),
                network: NetworkSignals::default(),
                trust_on_enroll: false,
                approved: false,
                is_new: true,
                level: Limited,
                stable_mismatch: false,
            },
            Case {
                name: "new device under trust_on_enroll is trusted",
                stored: empty(),
                presented: phone(),
                history: DeviceHistory::default(),
                network: NEW_NETWORK,
                trust_on_enroll: true,
                approved: false,
                is_new: true,
                level: Trusted,
                stable_mismatch: false,
            },
            Case {
                name: "new device under trust_on_enroll without attributes is trusted",
                stored: empty(),
                presented: empty(),
                history: DeviceHistory::default(),
                network: NetworkSignals::default(),
                trust_on_enroll: true,
                approved: false,
                is_new: true,
                level: Trusted,
                stable_mismatch: false,
            },
            Case {
                name: "trust_on_enroll device stays trusted on its second exchange from a new network",
                history: YOUNG,
                network: NEW_NETWORK,
                trust_on_enroll: true,
                ..established("", phone(), Trusted, false)
            },
            // Rule: trust is earned by consistent use over time.
            Case {
                name: "young device with consistent attributes is limited",
                history: YOUNG,
                ..established("", phone(), Limited, false)
            },
            Case {
                name: "enough exchanges but under a day old is limited",
                history: DeviceHistory {
                    successful_exchanges: 50,
                    age_seconds: 23 * HOUR,
                    previous_mismatches: 0,
                },
                ..established("", phone(), Limited, false)
            },
            Case {
                name: "old enough but too few exchanges is limited",
                history: DeviceHistory {
                    successful_exchanges: EARN_MIN_EXCHANGES - 1,
                    age_seconds: 30 * DAY,
                    previous_mismatches: 0,
                },
                ..established("", phone(), Limited, false)
            },
            Case {
                name: "exactly the earning thresholds is trusted",
                history: DeviceHistory {
                    successful_exchanges: EARN_MIN_EXCHANGES,
                    age_seconds: EARN_MIN_AGE_SECONDS,
                    previous_mismatches: 0,
                },
                ..established("", phone(), Trusted, false)
            },
            established(
                "established consistent device is trusted",
                phone(),
                Trusted,
                false,
            ),
            Case {
                name: "established device on a new network is trusted",
                network: NEW_NETWORK,
                ..established("", phone(), Trusted, false)
            },
            // Rule: version bumps alone never demote.
            established(
                "os and app upgrades keep a trusted device trusted",
                phone_with(&[
                    ("os_version", Some("17.2.1")),
                    ("app_version", Some("2.10.0")),
                ]),
                Trusted,
                false,
            ),
            established(
                "a version downgrade costs little and keeps trusted",
                phone_with(&[("os_version", Some("16.0")), ("app_version", Some("beta"))]),
                Trusted,
                false,
            ),
            Case {
                name: "travel (locale, timezone, new network) keeps an established device trusted",
                network: NEW_NETWORK,
                ..established(
                    "",
                    phone_with(&[
                        ("locale", Some("en-US")),
                        ("timezone", Some("America/New_York")),
                        ("os_version", Some("17.2")),
                    ]),
                    Trusted,
                    false,
                )
            },
            established(
                "case and surrounding spaces are not a change",
                phone_with(&[("platform", Some(" iOS ")), ("model", Some("IPHONE15,2"))]),
                Trusted,
                false,
            ),
            established(
                "unknown attributes are ignored",
                phone_with(&[("color", Some("blue"))]),
                Trusted,
                false,
            ),
            // Rule: different stable attributes for the same key drop below trusted.
            established(
                "a new install_id (reinstall keeping the key) is limited",
                phone_with(&[("install_id", Some("0000"))]),
                Limited,
                true,
            ),
            established(
                "another model is limited",
                phone_with(&[("model", Some("iPhone16,1"))]),
                Limited,
                true,
            ),
            established(
                "another platform is denied",
                phone_with(&[("platform", Some("android"))]),
                Denied,
                true,
            ),
            established(
                "two stable attributes changed is denied",
                phone_with(&[("model", Some("Pixel 8")), ("install_id", Some("0000"))]),
                Denied,
                true,
            ),
            established(
                "withholding a recorded install_id is limited",
                phone_with(&[("install_id", None)]),
                Limited,
                true,
            ),
            established(
                "withholding every attribute is limited",
                Attributes::new(),
                Limited,
                true,
            ),
            Case {
                name: "trust_on_enroll does not excuse a stable change",
                trust_on_enroll: true,
                ..established(
                    "",
                    phone_with(&[("install_id", Some("0000"))]),
                    Limited,
                    true,
                )
            },
            // Rule: an approved device is trusted unless stable attributes now disagree.
            Case {
                name: "approved young device is trusted",
                history: YOUNG,
                approved: true,
                ..established("", phone(), Trusted, false)
            },
            Case {
                name: "approved device with past mismatches on many networks is trusted",
                history: DeviceHistory {
                    previous_mismatches: 5,
                    ..YOUNG
                },
                network: NetworkSignals {
                    network_seen_before: false,
                    distinct_networks_recent: 12,
                },
                approved: true,
                ..established("", phone(), Trusted, false)
            },
            Case {
                name: "approved device with a changed install_id is limited",
                approved: true,
                ..established(
                    "",
                    phone_with(&[("install_id", Some("0000"))]),
                    Limited,
                    true,
                )
            },
            Case {
                name: "approved device on another platform is denied",
                approved: true,
                ..established(
                    "",
                    phone_with(&[("platform", Some("android"))]),
                    Denied,
                    true,
                )
            },
            Case {
                name: "approved device withholding its model is limited",
                approved: true,
                ..established("", phone_with(&[("model", None)]), Limited, true)
            },
            // History and network signals.
            Case {
                name: "one earlier mismatch still allows trusted",
                history: DeviceHistory {
                    previous_mismatches: 1,
                    ..ESTABLISHED
                },
                ..established("", phone(), Trusted, false)
            },
            Case {
                name: "three earlier mismatches keep an unapproved device limited",
                history: DeviceHistory {
                    previous_mismatches: 3,
                    ..ESTABLISHED
                },
                ..established("", phone(), Limited, false)
            },
            Case {
                name: "many networks plus an earlier mismatch is limited",
                history: DeviceHistory {
                    previous_mismatches: 1,
                    ..ESTABLISHED
                },
                network: NetworkSignals {
                    network_seen_before: false,
                    distinct_networks_recent: 8,
                },
                ..established("", phone(), Limited, false)
            },
            Case {
                name: "attributes presented for the first time by an established device",
                stored: Attributes::new(),
                ..established("", phone(), Trusted, false)
            },
        ]
    }

    #[test]
    fn table_of_rules() {
        for case in cases() {
            let decision = run(&case);
            assert_eq!(
                decision.level, case.level,
                "{}: got {decision:#?}",
                case.name
            );
            assert_eq!(
                decision.stable_mismatch, case.stable_mismatch,
                "{}: stable_mismatch in {decision:#?}",
                case.name
            );
            assert_eq!(
                run(&case),
                decision,
                "{}: same inputs, same decision",
                case.name
            );
        }
    }

    #[test]
    fn the_mismatch_fingerprint_tells_a_repeated_fingerprint_from_a_new_one() {
        let stored = phone();
        let decide = |presented: &Attributes| {
            evaluate(&TrustInputs {
                stored: &stored,
                presented,
                history: ESTABLISHED,
                network: KNOWN_NETWORK,
                trust_on_enroll: false,
                approved: false,
                attested: false,
                is_new: false,
            })
        };
        assert_eq!(decide(&stored).mismatch_fingerprint, None, "no mismatch");
        let reinstall = phone_with(&[("install_id", Some("b"))]);
        let first = decide(&reinstall);
        assert!(first.is_new_mismatch(None));
        let seen = first.mismatch_fingerprint.clone();
        // Compared as the score compares: case, spaces and other attributes do not matter.
        let again = phone_with(&[
            ("platform", Some(" IOS")),
            ("model", Some("iphone15,2 ")),
            ("install_id", Some("B")),
            ("locale", Some("fr-FR")),
        ]);
        let second = decide(&again);
        assert_eq!(second.mismatch_fingerprint, seen);
        assert!(!second.is_new_mismatch(seen.as_deref()));
        assert!(decide(&phone_with(&[("install_id", Some("c"))])).is_new_mismatch(seen.as_deref()));
        // Withholding is a fingerprint too (absent), distinct from any value.
        let withheld = phone_with(&[("install_id", None)]);
        let w = decide(&withheld);
        assert!(w.stable_mismatch && w.is_new_mismatch(seen.as_deref()));
        assert!(!decide(&withheld).is_new_mismatch(w.mismatch_fingerprint.as_deref()));
    }

    #[test]
    fn mismatched_names_the_attributes_but_never_their_values() {
        let case = established(
            "",
            phone_with(&[("install_id", Some("fresh-secretish-id")), ("model", None)]),
            TrustLevel::Limited,
            true,
        );
        let decision = run(&case);
        assert_eq!(decision.mismatched, vec!["install_id", "model"]);
        let json = serde_json::to_string(&decision).unwrap();
        for value in phone()
            .values()
            .chain(["fresh-secretish-id".to_owned()].iter())
        {
            assert!(!json.contains(value.as_str()), "{value} leaked into {json}");
        }
    }

    #[test]
    fn a_version_upgrade_changes_nothing_for_an_established_device() {
        let same = run(&established("", phone(), TrustLevel::Trusted, false));
        let upgraded = run(&established(
            "",
            phone_with(&[("os_version", Some("18.0")), ("app_version", Some("2.3.1"))]),
            TrustLevel::Trusted,
            false,
        ));
        assert_eq!(upgraded.score, same.score);
        assert_eq!(upgraded.level, TrustLevel::Trusted);
    }

    #[test]
    fn decision_serializes_for_storage() {
        let decision = run(&established("", phone(), TrustLevel::Trusted, false));
        let json = serde_json::to_value(&decision).unwrap();
        assert_eq!(json["level"], "trusted");
        assert_eq!(json["score"], 1.0);
        assert!(
            json["factors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["name"] == "history")
        );
        let back: TrustDecision = serde_json::from_value(json).unwrap();
        assert_eq!(back, decision);
    }

    #[test]
    fn levels_follow_the_thresholds() {
        use TrustLevel::*;
        for (score, level) in [
            (1.0, Trusted),
            (TRUSTED_THRESHOLD, Trusted),
            (LIMITED_CAP, Limited),
            (MISMATCH_CAP, Limited),
            (DENY_THRESHOLD, Limited),
            (0.29, Denied),
            (DENY_CAP, Denied),
            (0.0, Denied),
        ] {
            assert_eq!(TrustLevel::from_score(score), level, "score {score}");
        }
    }

    #[test]
    fn attribute_factors_are_named_after_their_attribute() {
        for (name, _, _, factor) in ATTRIBUTES {
            assert_eq!(factor, format!("attribute:{name}"));
        }
    }

    #[test]
    fn values_compare_trimmed_and_ascii_case_insensitively() {
        let mut presented = phone();
        for v in presented.values_mut() {
            *v = format!("  {}\t", v.to_ascii_uppercase());
        }
        let d = run(&established(
            "shouted",
            presented,
            TrustLevel::Trusted,
            false,
        ));
        assert!(!d.stable_mismatch, "{d:?}");
        assert!(
            d.factors
                .iter()
                .filter(|f| f.name.starts_with("attribute:"))
                .all(|f| f.detail == "same as recorded"),
            "{d:?}"
        );
    }

    #[test]
    fn version_comparison() {
        for (old, new, upgrade) in [
            ("17.1", "17.2", true),
            ("17.1", "17.1.1", true),
            ("2.9.0", "2.10.0", true),
            ("1.0", "2", true),
            ("v2.3.0", "v2.4.0", true),
            ("17.1", "17.1.0", false),
            ("17.2", "17.1", false),
            ("2.3.0", "2.3.0-beta", false),
            ("2.3.0", "beta", false),
            ("", "1", false),
            ("1", "99999999999999999999999", false),
        ] {
            assert_eq!(is_upgrade(old, new), upgrade, "{old} -> {new}");
        }
    }

    #[test]
    fn limited_scopes_default_keeps_read_scopes_in_order() {
        assert_eq!(
            limited_scopes_default(&["write:orders", "read:users", "admin", "read:orders"]),
            vec!["read:users", "read:orders"]
        );
        assert!(limited_scopes_default(&["write:x", "reader"]).is_empty());
        assert!(limited_scopes_default::<String>(&[]).is_empty());
    }

    fn attributes_strategy() -> impl Strategy<Value = Attributes> {
        let name = prop_oneof![
            Just("platform"),
            Just("model"),
            Just("install_id"),
            Just("os_version"),
            Just("app_version"),
            Just("locale"),
            Just("timezone"),
            Just("other"),
        ];
        let value = prop_oneof![
            Just("a"),
            Just("A "),
            Just("b"),
            Just(""),
            Just("1.2"),
            Just("1.10"),
        ];
        proptest::collection::btree_map(
            name.prop_map(str::to_owned),
            value.prop_map(str::to_owned),
            0..8,
        )
    }

    prop_compose! {
        fn history_strategy()(
            successful_exchanges in prop_oneof![0..20u64, Just(u64::MAX)],
            age_seconds in prop_oneof![0..(3 * DAY), Just(u64::MAX)],
            previous_mismatches in prop_oneof![0..6u32, Just(u32::MAX)],
        ) -> DeviceHistory {
            DeviceHistory { successful_exchanges, age_seconds, previous_mismatches }
        }
    }

    prop_compose! {
        fn network_strategy()(
            network_seen_before in any::<bool>(),
            distinct_networks_recent in prop_oneof![0..12u32, Just(u32::MAX)],
        ) -> NetworkSignals {
            NetworkSignals { network_seen_before, distinct_networks_recent }
        }
    }

    #[test]
    fn an_attested_device_is_trusted_at_once_and_never_denied_but_still_scored() {
        let stored = phone();
        let other_platform =
            phone_with(&[("platform", Some("android")), ("model", Some("Pixel 8"))]);
        let reinstall = phone_with(&[("install_id", Some("new"))]);
        let empty = Attributes::new();
        let decide = |stored: &Attributes, presented: &Attributes, is_new: bool, attested: bool| {
            evaluate(&TrustInputs {
                stored,
                presented,
                history: if is_new {
                    DeviceHistory::default()
                } else {
                    YOUNG
                },
                network: KNOWN_NETWORK,
                trust_on_enroll: false,
                approved: false,
                attested,
                is_new,
            })
        };
        // Enrolled with a valid attestation: trusted at once, as if approved.
        assert_eq!(
            decide(&empty, &stored, true, true).level,
            TrustLevel::Trusted
        );
        assert_eq!(
            decide(&empty, &stored, true, false).level,
            TrustLevel::Limited
        );
        // A young attested device needs no earned history.
        assert_eq!(
            decide(&stored, &stored, false, true).level,
            TrustLevel::Trusted
        );
        assert_eq!(
            decide(&stored, &stored, false, false).level,
            TrustLevel::Limited
        );
        // Still fingerprint-scored: a changed install_id limits it, like any device...
        let d = decide(&stored, &reinstall, false, true);
        assert_eq!(d.level, TrustLevel::Limited);
        assert!(d.stable_mismatch);
        // ...and another platform, which denies an unattested device, only limits it.
        assert_eq!(
            decide(&stored, &other_platform, false, false).level,
            TrustLevel::Denied
        );
        let d = decide(&stored, &other_platform, false, true);
        assert_eq!(d.level, TrustLevel::Limited);
        assert!(d.stable_mismatch, "still alerted");
        assert!(d.factors.iter().any(|f| f.name == "rule:attested_floor"));
    }

    proptest! {
        #[test]
        fn score_is_bounded_rounded_consistent_and_deterministic(
            stored in attributes_strategy(),
            presented in attributes_strategy(),
            history in history_strategy(),
            network in network_strategy(),
            trust_on_enroll in any::<bool>(),
            approved in any::<bool>(),
            attested in any::<bool>(),
            is_new in any::<bool>(),
        ) {
            let inputs = TrustInputs {
                stored: &stored, presented: &presented, history, network,
                trust_on_enroll, approved, attested, is_new,
            };
            let decision = evaluate(&inputs);
            prop_assert!((0.0..=1.0).contains(&decision.score), "score {}", decision.score);
            prop_assert_eq!(decision.score, round_to(decision.score, 2));
            prop_assert_eq!(decision.level, TrustLevel::from_score(decision.score));
            prop_assert_eq!(&evaluate(&inputs), &decision);

            let sum: f64 = decision.factors.iter().map(|f| f.contribution).sum();
            prop_assert!((sum - decision.score).abs() <= 0.01, "factors sum {} vs {}", sum, decision.score);

            if is_new {
                let expected = if trust_on_enroll || attested { TrustLevel::Trusted } else { TrustLevel::Limited };
                prop_assert_eq!(decision.level, expected);
                prop_assert!(!decision.stable_mismatch);
            } else if decision.stable_mismatch {
                prop_assert_ne!(decision.level, TrustLevel::Trusted);
            } else if approved || attested {
                prop_assert_eq!(decision.level, TrustLevel::Trusted);
            }
            if attested {
                prop_assert_ne!(decision.level, TrustLevel::Denied, "an attested device is never denied");
            }
        }

        #[test]
        fn version_upgrades_never_lower_the_score(
            history in history_strategy(),
            network in network_strategy(),
            trust_on_enroll in any::<bool>(),
            approved in any::<bool>(),
            os_minor in 0..50u32,
            app_patch in 0..50u32,
        ) {
            let stored = phone();
            let upgraded = phone_with(&[
                ("os_version", Some(&format!("17.{}", 2 + os_minor))),
                ("app_version", Some(&format!("2.3.{}", 1 + app_patch))),
            ]);
            let inputs = |presented| TrustInputs {
                stored: &stored, presented, history, network,
                trust_on_enroll, approved, attested: false, is_new: false,
            };
            let same = evaluate(&inputs(&stored));
            let bumped = evaluate(&inputs(&upgraded));
            prop_assert_eq!(bumped.score, same.score);
            prop_assert_eq!(bumped.level, same.level);
        }
    }
}
