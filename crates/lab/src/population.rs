//! P the population study: what device trust costs legitimate users, next to what it catches.
//!
//! Simulates a population of phones for a number of days with realistic fingerprint drift
//! (OS and app updates, locale changes, travel across time zones, home-network renumbering,
//! mobile networks behind carrier NAT, reinstalls, new phones) and runs every exchange and
//! refresh through the real [`trust::evaluate`], keeping each device's record the way
//! `src/exchange` does: earlier successful exchanges, age, stable-attribute mismatches, the
//! last 16 networks, and the presented attributes becoming the baseline after accepted drift
//! (but not after a stable mismatch). Then it plays attackers who cloned a device key (and
//! hold the API key) and use them from their own phones.
//!
//! The random stream is ChaCha8 seeded with `--seed`: the same seed gives the same figures on
//! every machine.

use std::collections::BTreeMap;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::report::{Outcome, Section, pct, thousands};
use keybound::devices::trust::{
    self, Attributes, DeviceHistory, NetworkSignals, TrustDecision, TrustInputs, TrustLevel,
};

/// Sizes and seed.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Phones (one API key each, as an app that gives every account its own key).
    pub devices: usize,
    /// Days simulated.
    pub days: u32,
    /// Clone attempts per attacker kind.
    pub clones: usize,
    /// Seed of the random stream.
    pub seed: u64,
    /// Share of phones whose app attests its device key at enrollment (contract section 8;
    /// the key's policy `preferred`).
    pub attested_share: f64,
}

/// The drift model: chance per device per day of each event. They are assumptions, stated in
/// the report so a reader can disagree with them.
pub const DRIFT: [(Drift, f64); 9] = [
    (Drift::OsUpdate, 1.0 / 40.0),
    (Drift::AppUpdate, 1.0 / 10.0),
    (Drift::LocaleChange, 0.0005),
    (Drift::TravelStart, 0.003),
    (Drift::HomeRenumbered, 1.0 / 60.0),
    (Drift::ReinstallKeepKey, 0.0007),
    (Drift::ReinstallNewKey, 0.0007),
    (Drift::NewPhoneRestored, 0.0004),
    (Drift::NewPhoneFresh, 0.0004),
];

/// A kind of fingerprint or network drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Drift {
    /// `os_version` goes up.
    OsUpdate,
    /// `app_version` goes up.
    AppUpdate,
    /// The user switches the phone's language.
    LocaleChange,
    /// A trip of 2–10 days: another time zone, hotel and roaming networks.
    TravelStart,
    /// The ISP gives the home connection an address in another /24.
    HomeRenumbered,
    /// App reinstalled; the device key survives in the platform keychain (iOS) but the app
    /// generates a new `install_id`.
    ReinstallKeepKey,
    /// App reinstalled; the device key was lost with the app data (Android): a new device.
    ReinstallNewKey,
    /// A new phone restored from a backup that carried the device key: new `model` and
    /// `install_id` under the old key.
    NewPhoneRestored,
    /// A new phone set up fresh: a new device key, a new device.
    NewPhoneFresh,
}

impl Drift {
    fn describe(self) -> &'static str {
        match self {
            Drift::OsUpdate => "OS update (os_version up)",
            Drift::AppUpdate => "app update (app_version up)",
            Drift::LocaleChange => "locale changed",
            Drift::TravelStart => "travel 2–10 days (time zone, hotel/roaming networks)",
            Drift::HomeRenumbered => "home network renumbered (new /24)",
            Drift::ReinstallKeepKey => "reinstall, key kept in keychain (new install_id)",
            Drift::ReinstallNewKey => "reinstall, key lost (new device)",
            Drift::NewPhoneRestored => {
                "new phone restored from backup with the key (new model + install_id)"
            }
            Drift::NewPhoneFresh => "new phone set up fresh (new device)",
        }
    }
}

const IOS_MODELS: [&str; 6] = [
    "iPhone12,1",
    "iPhone13,2",
    "iPhone14,5",
    "iPhone15,2",
    "iPhone15,4",
    "iPhone16,1",
];
const ANDROID_MODELS: [&str; 6] = [
    "Pixel 7", "Pixel 8", "SM-S911B", "SM-A546B", "moto g84", "CPH2451",
];
const PLACES: [(&str, &str); 8] = [
    ("en-US", "America/New_York"),
    ("en-GB", "Europe/London"),
    ("ja-JP", "Asia/Tokyo"),
    ("de-DE", "Europe/Berlin"),
    ("fr-FR", "Europe/Paris"),
    ("es-ES", "Europe/Madrid"),
    ("pt-BR", "America/Sao_Paulo"),
    ("hi-IN", "Asia/Kolkata"),
];
/// Mobile carriers' NAT pools: /24s a phone's mobile address is drawn from.
const CARRIER_POOL: u64 = 64;
/// The server remembers this many networks per device (`MAX_NETWORKS` in `src/exchange`).
const MAX_NETWORKS: usize = 16;
const DAY: i64 = 86_400;

/// What the server keeps for one device key (the fields `trust::evaluate` reads).
#[derive(Debug, Clone)]
struct Record {
    attributes: Attributes,
    created_at: i64,
    exchange_count: i64,
    mismatch_count: i64,
    mismatch_fingerprint: Option<String>,
    networks: Vec<String>,
    /// The device key was attested at enrollment.
    attested: bool,
    /// The level of its last decision (the server's stored `trust_level`).
    last_level: TrustLevel,
}

impl Record {
    fn new(attributes: &Attributes, now: i64, attested: bool) -> Record {
        Record {
            attributes: attributes.clone(),
            created_at: now,
            exchange_count: 0,
            mismatch_count: 0,
            mismatch_fingerprint: None,
            networks: Vec::new(),
            attested,
            last_level: TrustLevel::Limited,
        }
    }

    /// One exchange, recorded the way `exchange::score_and_record` records it.
    fn score_and_record(
        &mut self,
        presented: &Attributes,
        network: &str,
        now: i64,
        is_new: bool,
    ) -> (TrustDecision, bool) {
        self.score(presented, network, now, is_new, false)
    }

    /// One refresh: the stored attributes, and not counted towards earned trust.
    fn refresh(&mut self, network: &str, now: i64) -> (TrustDecision, bool) {
        let stored = self.attributes.clone();
        self.score(&stored, network, now, false, true)
    }

    fn score(
        &mut self,
        presented: &Attributes,
        network: &str,
        now: i64,
        is_new: bool,
        refresh: bool,
    ) -> (TrustDecision, bool) {
        let seen = self.networks.iter().any(|n| n == network);
        let decision = trust::evaluate(&TrustInputs {
            stored: &self.attributes,
            presented,
            history: DeviceHistory::of(
                self.exchange_count,
                self.created_at,
                self.mismatch_count,
                now,
            ),
            network: NetworkSignals::of(&self.networks, network, is_new),
            trust_on_enroll: false,
            approved: false,
            attested: self.attested,
            is_new,
        });
        let alerted =
            decision.count_mismatch(&mut self.mismatch_count, &mut self.mismatch_fingerprint);
        if !decision.stable_mismatch {
            self.attributes
                .extend(presented.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        if !seen {
            self.networks.push(network.to_owned());
            if self.networks.len() > MAX_NETWORKS {
                self.networks.remove(0);
            }
        }
        self.last_level = decision.level;
        if decision.level != TrustLevel::Denied && !refresh {
            self.exchange_count += 1;
        }
        (decision, alerted)
    }

    /// Past the earning period (rule 5): limited from here on is not by design.
    fn established(&self, now: i64) -> bool {
        self.exchange_count >= trust::EARN_MIN_EXCHANGES as i64
            && (now - self.created_at) >= trust::EARN_MIN_AGE_SECONDS as i64
    }
}

/// A simulated phone and its user.
struct Phone {
    platform: &'static str,
    model: &'static str,
    install_id: u64,
    os: (u32, u32),
    app: (u32, u32),
    /// Index into [`PLACES`] of the phone's language.
    locale: usize,
    /// Index into [`PLACES`] of its home time zone.
    zone: usize,
    home: u64,
    work: Option<u64>,
    sessions_per_day: f64,
    /// The device key's server record; a new key replaces it.
    record: Option<Record>,
    /// Devices enrolled under this phone's API key (max 5 by default).
    enrolled: u32,
    travel: Option<(u32, usize)>,
    /// Drift events this phone went through, with the first day each happened.
    events: BTreeMap<Drift, u32>,
    /// Its app attests device keys (App Attest, Android Key Attestation).
    attests: bool,
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    *xs.choose(rng).expect("non-empty")
}

impl Phone {
    fn new(rng: &mut ChaCha8Rng) -> Phone {
        Phone::with_attestation(rng, 0.0)
    }

    fn with_attestation(rng: &mut ChaCha8Rng, attested_share: f64) -> Phone {
        let attests = rng.gen_bool(attested_share);
        let ios = rng.gen_bool(0.45);
        let place = rng.gen_range(0..PLACES.len());
        let mut phone = Phone {
            platform: if ios { "ios" } else { "android" },
            model: pick(rng, if ios { &IOS_MODELS } else { &ANDROID_MODELS }),
            install_id: rng.r#gen(),
            os: if ios {
                (17, rng.gen_range(0..6))
            } else {
                (14, rng.gen_range(0..3))
            },
            app: (rng.gen_range(0..4), rng.gen_range(0..10)),
            locale: 0,
            zone: 0,
            home: rng.r#gen(),
            work: rng.gen_bool(0.6).then(|| rng.r#gen()),
            sessions_per_day: pick(rng, &[0.5, 0.5, 0.5, 3.0, 3.0, 3.0, 3.0, 3.0, 10.0, 10.0]),
            record: None,
            enrolled: 0,
            travel: None,
            events: BTreeMap::new(),
            attests,
        };
        phone.locale = place;
        phone.zone = place;
        phone
    }

    fn attributes(&self, day: u32) -> Attributes {
        let locale = PLACES[self.locale].0;
        let tz = match self.travel {
            Some((until, place)) if day < until => PLACES[place].1,
            _ => PLACES[self.zone].1,
        };
        [
            ("platform", self.platform.to_owned()),
            ("model", self.model.to_owned()),
            ("install_id", format!("{:016x}", self.install_id)),
            ("os_version", format!("{}.{}", self.os.0, self.os.1)),
            ("app_version", format!("2.{}.{}", self.app.0, self.app.1)),
            ("locale", locale.to_owned()),
            ("timezone", tz.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn network(&self, rng: &mut ChaCha8Rng, day: u32) -> String {
        if matches!(self.travel, Some((until, _)) if day < until) {
            // Hotel Wi-Fi or roaming: somewhere new every day.
            return format!("travel-{day}-{}", rng.gen_range(0..3));
        }
        let r: f64 = rng.r#gen();
        match (r, self.work) {
            (r, _) if r < 0.55 => format!("home-{:x}", self.home),
            (r, Some(w)) if r < 0.8 => format!("work-{w:x}"),
            _ => format!("mobile-{}", rng.gen_range(0..CARRIER_POOL)),
        }
    }

    fn apply(&mut self, rng: &mut ChaCha8Rng, drift: Drift, day: u32) {
        self.events.entry(drift).or_insert(day);
        match drift {
            Drift::OsUpdate => self.os.1 += 1,
            Drift::AppUpdate => {
                if rng.gen_bool(0.3) {
                    self.app = (self.app.0 + 1, 0);
                } else {
                    self.app.1 += 1;
                }
            }
            Drift::LocaleChange => {
                self.locale = (self.locale + rng.gen_range(1..PLACES.len())) % PLACES.len();
            }
            Drift::TravelStart => {
                if self.travel.is_none() {
                    let dest = (self.zone + rng.gen_range(1..PLACES.len())) % PLACES.len();
                    self.travel = Some((day + rng.gen_range(2..=10), dest));
                }
            }
            Drift::HomeRenumbered => self.home = rng.r#gen(),
            Drift::ReinstallKeepKey => self.install_id = rng.r#gen(),
            Drift::ReinstallNewKey | Drift::NewPhoneFresh => {
                self.install_id = rng.r#gen();
                self.record = None;
            }
            Drift::NewPhoneRestored => {
                let models = if self.platform == "ios" {
                    &IOS_MODELS[..]
                } else {
                    &ANDROID_MODELS[..]
                };
                let current = self.model;
                let others: Vec<&'static str> =
                    models.iter().copied().filter(|m| *m != current).collect();
                self.model = pick(rng, &others);
                if self.attests {
                    // A hardware-bound key is not in any backup: the restored app makes (and
                    // attests) a new one.
                    self.record = None;
                }
                self.install_id = rng.r#gen();
            }
        }
    }
}

/// Tallies of legitimate traffic.
#[derive(Debug, Clone, Default)]
pub struct Legit {
    /// Exchanges and refreshes simulated.
    pub events: u64,
    /// Of those, by established devices (past the earning period).
    pub established_events: u64,
    /// Established events answered `limited`.
    pub false_limited: u64,
    /// Events answered `DEVICE_UNTRUSTED`.
    pub false_denied: u64,
    /// Events answered `DEVICE_LIMIT_REACHED` (a new device beyond `max_devices`).
    pub device_limit: u64,
    /// Events by new devices still earning trust, answered `limited` (by design).
    pub earning_limited: u64,
    /// `FINGERPRINT_MISMATCH` alerts raised by legitimate devices.
    pub mismatch_alerts: u64,
    /// Phones simulated.
    pub phones: u64,
    /// Phones with at least one false limit.
    pub phones_false_limited: u64,
    /// Phones with at least one false denial.
    pub phones_false_denied: u64,
    /// Phones that went through each drift kind.
    pub by_drift: BTreeMap<Drift, u64>,
    /// Per cause of a false limit or denial: (limited events, denied events, phones).
    pub by_cause: BTreeMap<&'static str, (u64, u64, u64)>,
    /// The headline figures for unattested (`[0]`) and attested (`[1]`) phones.
    pub groups: [Group; 2],
}

/// The headline tallies of one group of phones (attested or not).
#[derive(Debug, Clone, Copy, Default)]
pub struct Group {
    /// Phones.
    pub phones: u64,
    /// Exchanges and refreshes.
    pub events: u64,
    /// Of those, by established devices.
    pub established_events: u64,
    /// Established events answered `limited`.
    pub false_limited: u64,
    /// Events answered `DEVICE_UNTRUSTED` or `DEVICE_LIMIT_REACHED`.
    pub false_denied: u64,
    /// Phones with at least one false limit.
    pub phones_false_limited: u64,
    /// Phones with at least one false denial.
    pub phones_false_denied: u64,
}

/// Why an established legitimate device was limited or denied, read from the decision.
fn cause(d: &TrustDecision, earlier_mismatches: i64) -> &'static str {
    if d.stable_mismatch {
        let m = &d.mismatched;
        if m.iter().any(|x| x == "platform") || m.len() >= 2 {
            "platform or two stable attributes changed (a new phone restored with the key)"
        } else if m.iter().any(|x| x == "install_id") {
            "install_id changed (a reinstall that kept the device key)"
        } else {
            "model changed or a stable attribute withheld"
        }
    } else if earlier_mismatches > 0 {
        "earlier mismatches (penalty P), attributes now matching"
    } else {
        "drift and network churn alone (low score)"
    }
}

/// What one kind of clone attacker achieved.
#[derive(Debug, Clone, Default)]
pub struct CloneResult {
    /// The attacker kind.
    pub kind: &'static str,
    /// The victims are attested phones.
    pub attested_victims: bool,
    /// Attempts.
    pub attempts: u64,
    /// Attempts that raised `FINGERPRINT_MISMATCH` (critical).
    pub alerted: u64,
    /// Denied.
    pub denied: u64,
    /// Limited.
    pub limited: u64,
    /// Trusted (full scopes and TTL).
    pub trusted: u64,
}

impl CloneResult {
    /// Attempts held below `trusted`.
    pub fn held(&self) -> u64 {
        self.denied + self.limited
    }
}

/// The study's results.
#[derive(Debug, Clone)]
pub struct Population {
    /// The parameters.
    pub params: Params,
    /// Legitimate traffic.
    pub legit: Legit,
    /// Clone attackers, one entry per kind.
    pub clones: Vec<CloneResult>,
}

/// Runs the study.
pub fn study(p: &Params) -> Population {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let mut legit = Legit::default();
    let mut finals: Vec<(Phone, u32)> = Vec::with_capacity(p.devices);
    for _ in 0..p.devices {
        let mut phone = Phone::with_attestation(&mut rng, p.attested_share);
        let before = legit.clone();
        let mut false_limited_on: Option<u32> = None;
        let mut false_denied_on: Option<u32> = None;
        let mut causes: std::collections::BTreeSet<&'static str> = Default::default();
        for day in 0..p.days {
            if matches!(phone.travel, Some((until, _)) if day >= until) {
                phone.travel = None;
            }
            for (drift, chance) in DRIFT {
                if day > 0 && rng.gen_bool(chance) {
                    phone.apply(&mut rng, drift, day);
                    if matches!(drift, Drift::ReinstallNewKey | Drift::NewPhoneFresh) {
                        phone.record = None;
                    }
                }
            }
            // Sessions: Poisson number of app launches (each a full exchange, as the SDK
            // keeps tokens in memory), each followed by refreshes while the app is open.
            let sessions = poisson(&mut rng, phone.sessions_per_day);
            let mut starts: Vec<i64> = (0..sessions).map(|_| rng.gen_range(0..DAY)).collect();
            starts.sort_unstable();
            for start in starts {
                let now = i64::from(day) * DAY + start;
                let presented = phone.attributes(day);
                let network = phone.network(&mut rng, day);
                let is_new = phone.record.is_none();
                if is_new {
                    if phone.enrolled >= 5 {
                        legit.events += 1;
                        legit.device_limit += 1;
                        false_denied_on.get_or_insert(day);
                        let c = "DEVICE_LIMIT_REACHED (five devices enrolled)";
                        legit.by_cause.entry(c).or_default().1 += 1;
                        causes.insert(c);
                        continue;
                    }
                    phone.enrolled += 1;
                    phone.record = Some(Record::new(&presented, now, phone.attests));
                }
                let record = phone.record.as_mut().expect("set above");
                let minutes: f64 = -15.0 * (1.0 - rng.r#gen::<f64>()).ln();
                let mut t = now;
                let mut first = true;
                loop {
                    let established = record.established(t);
                    let earlier = record.mismatch_count;
                    let (decision, alerted) = if first {
                        record.score_and_record(&presented, &network, t, is_new)
                    } else {
                        record.refresh(&network, t)
                    };
                    legit.events += 1;
                    legit.mismatch_alerts += u64::from(alerted);
                    match decision.level {
                        TrustLevel::Denied => {
                            legit.false_denied += 1;
                            false_denied_on.get_or_insert(day);
                            let c = cause(&decision, earlier);
                            legit.by_cause.entry(c).or_default().1 += 1;
                            causes.insert(c);
                            break;
                        }
                        TrustLevel::Limited if established => {
                            legit.established_events += 1;
                            legit.false_limited += 1;
                            false_limited_on.get_or_insert(day);
                            let c = cause(&decision, earlier);
                            legit.by_cause.entry(c).or_default().0 += 1;
                            causes.insert(c);
                        }
                        TrustLevel::Limited => legit.earning_limited += 1,
                        TrustLevel::Trusted => {
                            legit.established_events += u64::from(established);
                        }
                    }
                    // Tokens are renewed before they run out: 300 s when trusted, 60 s when
                    // limited.
                    let ttl = if decision.level == TrustLevel::Trusted {
                        300
                    } else {
                        60
                    };
                    t += ttl;
                    first = false;
                    if (t - now) as f64 > minutes * 60.0 {
                        break;
                    }
                }
            }
        }
        legit.phones += 1;
        legit.phones_false_limited += u64::from(false_limited_on.is_some());
        legit.phones_false_denied += u64::from(false_denied_on.is_some());
        for drift in phone.events.keys() {
            *legit.by_drift.entry(*drift).or_default() += 1;
        }
        for c in causes {
            legit.by_cause.entry(c).or_default().2 += 1;
        }
        let g = &mut legit.groups[usize::from(phone.attests)];
        g.phones += 1;
        g.events += legit.events - before.events;
        g.established_events += legit.established_events - before.established_events;
        g.false_limited += legit.false_limited - before.false_limited;
        g.false_denied +=
            (legit.false_denied + legit.device_limit) - (before.false_denied + before.device_limit);
        g.phones_false_limited += u64::from(false_limited_on.is_some());
        g.phones_false_denied += u64::from(false_denied_on.is_some());
        finals.push((phone, p.days));
    }

    let clones = clone_attacks(&mut rng, &finals, p);
    Population {
        params: *p,
        legit,
        clones,
    }
}

fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> u32 {
    // Knuth's method: fine for the small means used here.
    let limit = (-mean).exp();
    let mut k = 0;
    let mut prod: f64 = rng.r#gen();
    while prod > limit {
        k += 1;
        prod *= rng.r#gen::<f64>();
    }
    k
}

/// Attackers who copied a device key (and hold the API key) use it from their own phones,
/// against the victim's record as it stands at the end of the simulation.
fn clone_attacks(rng: &mut ChaCha8Rng, finals: &[(Phone, u32)], p: &Params) -> Vec<CloneResult> {
    let victims: Vec<&(Phone, u32)> = finals
        .iter()
        .filter(|(ph, _)| ph.record.as_ref().is_some_and(|r| !r.attested))
        .collect();
    let kinds: [&'static str; 4] = [
        "own phone (its own attributes)",
        "own phone claiming the victim's platform and model",
        "no attributes sent",
        "the victim's attributes copied exactly (app data cloned)",
    ];
    let mut out = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        let mut r = CloneResult {
            kind,
            ..CloneResult::default()
        };
        if victims.is_empty() {
            out.push(r);
            continue;
        }
        for _ in 0..p.clones {
            let (victim, days) = victims[rng.gen_range(0..victims.len())];
            let mut record = victim.record.clone().expect("filtered");
            let now = i64::from(*days) * DAY;
            let attacker = Phone::new(rng);
            let presented = match k {
                0 => attacker.attributes(0),
                1 => {
                    let mut a = attacker.attributes(0);
                    a.insert("platform".into(), victim.platform.into());
                    a.insert("model".into(), victim.model.into());
                    a
                }
                2 => Attributes::new(),
                _ => record.attributes.clone(),
            };
            let network = format!("attacker-{}", rng.r#gen::<u32>());
            let (d, alerted) = record.score_and_record(&presented, &network, now, false);
            r.attempts += 1;
            r.alerted += u64::from(alerted);
            match d.level {
                TrustLevel::Denied => r.denied += 1,
                TrustLevel::Limited => r.limited += 1,
                TrustLevel::Trusted => r.trusted += 1,
            }
        }
        out.push(r);
    }
    out.push(attested_clones(rng, finals, p));
    out
}

/// Clones of attested phones. The attested DPoP key lives in the Secure Enclave or the
/// Keystore and is in no backup or copy of the app's data: a clone has the victim's attributes
/// (install id included) but must sign with a key of its own, which enrolls as a new,
/// unattested device. Under `preferred` it is `limited` and raises `NEW_DEVICE`, as a warning
/// when the victim's device is trusted (counted as detected); under `required` it gets
/// nothing at all.
fn attested_clones(rng: &mut ChaCha8Rng, finals: &[(Phone, u32)], p: &Params) -> CloneResult {
    let victims: Vec<&(Phone, u32)> = finals
        .iter()
        .filter(|(ph, _)| ph.record.as_ref().is_some_and(|r| r.attested))
        .collect();
    let mut r = CloneResult {
        kind: "the victim's app data copied exactly, on an attested phone (its key stays in the hardware)",
        attested_victims: true,
        ..CloneResult::default()
    };
    if victims.is_empty() {
        return r;
    }
    for _ in 0..p.clones {
        let (victim, days) = victims[rng.gen_range(0..victims.len())];
        let victim_record = victim.record.as_ref().expect("filtered");
        let now = i64::from(*days) * DAY;
        let mut clone = Record::new(&victim_record.attributes, now, false);
        let network = format!("attacker-{}", rng.r#gen::<u32>());
        let (d, _) = clone.score_and_record(&victim_record.attributes, &network, now, true);
        r.attempts += 1;
        r.alerted += u64::from(victim_record.last_level == TrustLevel::Trusted);
        match d.level {
            TrustLevel::Denied => r.denied += 1,
            TrustLevel::Limited => r.limited += 1,
            TrustLevel::Trusted => r.trusted += 1,
        }
    }
    r
}

impl Population {
    /// False-limit rate over established devices' exchanges and refreshes.
    pub fn false_limit_rate(&self) -> f64 {
        self.legit.false_limited as f64 / self.legit.established_events.max(1) as f64
    }

    /// False-deny rate (untrusted or device limit) over all legitimate events.
    pub fn false_deny_rate(&self) -> f64 {
        (self.legit.false_denied + self.legit.device_limit) as f64 / self.legit.events.max(1) as f64
    }

    /// The report section.
    pub fn section(&self) -> Section {
        let l = &self.legit;
        let p = &self.params;
        let mut s = Section::new("P population study");
        s.row(
            format!(
                "{} legitimate phones × {} days: {} exchanges and refreshes",
                thousands(l.phones),
                p.days,
                thousands(l.events)
            ),
            "trust score tolerates version bumps, travel and network churn",
            Outcome::Limited,
            format!(
                "false-limit rate {} of established-device events ({} of phones)",
                pct(l.false_limited, l.established_events),
                pct(l.phones_false_limited, l.phones)
            ),
        );
        s.row(
            "… denials of legitimate phones",
            "deny only when the platform or two stable attributes change",
            Outcome::Limited,
            format!(
                "false-deny rate {} of events ({} of phones); {} DEVICE_UNTRUSTED + {} DEVICE_LIMIT_REACHED",
                pct(l.false_denied + l.device_limit, l.events),
                pct(l.phones_false_denied, l.phones),
                thousands(l.false_denied),
                thousands(l.device_limit)
            ),
        );
        for (g, what) in [(&l.groups[1], "attested"), (&l.groups[0], "unattested")] {
            s.row(
                format!(
                    "… {what} phones ({} of {})",
                    thousands(g.phones),
                    thousands(l.phones)
                ),
                if what == "attested" {
                    "attested at enrollment: trusted at once, never denied (contract 8)"
                } else {
                    "section 6 trust only"
                },
                Outcome::Limited,
                format!(
                    "false-limit {} of established-device events ({} of phones); false-deny {} of events ({} of phones)",
                    pct(g.false_limited, g.established_events),
                    pct(g.phones_false_limited, g.phones),
                    pct(g.false_denied, g.events),
                    pct(g.phones_false_denied, g.phones)
                ),
            );
        }
        for c in &self.clones {
            let outcome = if c.attempts == 0 {
                Outcome::Skipped
            } else if c.trusted == c.attempts {
                Outcome::NotBlocked
            } else if c.alerted == c.attempts {
                Outcome::Detected
            } else {
                Outcome::Limited
            };
            if c.attested_victims {
                s.row(
                    format!("clone of {}", c.kind),
                    "the clone needs a new device key: enrolled unattested and limited, NEW_DEVICE (warning next to a trusted device); under `required` refused",
                    outcome,
                    format!(
                        "detected (NEW_DEVICE warning) {}; denied {}, limited {}, trusted {} of {} under `preferred`; 0 tokens under `required`",
                        pct(c.alerted, c.attempts),
                        pct(c.denied, c.attempts),
                        pct(c.limited, c.attempts),
                        pct(c.trusted, c.attempts),
                        thousands(c.attempts)
                    ),
                );
                continue;
            }
            s.row(
                format!(
                    "cloned device key of an unattested phone used from {}",
                    c.kind
                ),
                "fingerprint comparison (stable attributes) → FINGERPRINT_MISMATCH",
                outcome,
                format!(
                    "detected (alert) {}; denied {}, limited {}, trusted {} of {}",
                    pct(c.alerted, c.attempts),
                    pct(c.denied, c.attempts),
                    pct(c.limited, c.attempts),
                    pct(c.trusted, c.attempts),
                    thousands(c.attempts)
                ),
            );
        }
        let mut table = String::from(
            "| drift event (assumed) | chance per phone per day | phones that had it |\n|---|---|---|\n",
        );
        for (drift, chance) in DRIFT {
            let n = l.by_drift.get(&drift).copied().unwrap_or_default();
            table.push_str(&format!(
                "| {} | {chance:.4} | {} ({}) |\n",
                drift.describe(),
                thousands(n),
                pct(n, l.phones)
            ));
        }
        let mut causes = String::from(
            "| why a legitimate, established device was refused full trust | limited events | denied events | phones |\n|---|---|---|---|\n",
        );
        for (c, (lim, den, phones)) in &l.by_cause {
            causes.push_str(&format!(
                "| {c} | {} | {} | {} ({}) |\n",
                thousands(*lim),
                thousands(*den),
                thousands(*phones),
                pct(*phones, l.phones)
            ));
        }
        s.note(format!(
            "Model (seed {}): each phone is one API key; {:.0} % of phones run an app that \
             attests its device key at enrollment (key policy `preferred`), re-attesting each \
             new key (a hardware-bound key is in no backup, so a new phone restored from one \
             enrolls a new key); 45 % iOS; 0.5, 3 or 10 app launches a \
             day (30/50/20 %), each a full exchange (the SDK keeps tokens in memory) followed by \
             refreshes every 300 s (60 s while limited; refreshes do not count towards earned \
             trust) for an exponentially distributed session \
             (mean 15 min). Networks: home 55 %, work 25 % (60 % of users), otherwise a mobile \
             carrier's NAT pool of {CARRIER_POOL} /24s; while travelling, a new network every \
             day. Drift events and their assumed daily chances below; the figures move with \
             them. Earning-period limits (a new device for its first day and 5 exchanges) are \
             by design and counted apart: {} events. Legitimate FINGERPRINT_MISMATCH alerts \
             (operator noise): {}.",
            p.seed,
            p.attested_share * 100.0,
            thousands(l.earning_limited),
            thousands(l.mismatch_alerts)
        ));
        s.note(table);
        s.note(causes);
        s.note(
            "Clones: an attacker holding a copy of an established device's key (and the API \
             key) exchanges from their own phone on their own network, against the victim's \
             record at the end of the simulation. Detection is the FINGERPRINT_MISMATCH alert \
             (critical). A clone that copies every attribute (install_id included) is the \
             device as far as any fingerprint can tell: only network signals (a NEW_NETWORK \
             alert, info) and the key's device and network spread remain."
                .to_owned(),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_figures() {
        let p = Params {
            devices: 40,
            days: 5,
            clones: 20,
            seed: 9,
            attested_share: 0.5,
        };
        let a = study(&p);
        let b = study(&p);
        assert_eq!(a.legit.events, b.legit.events);
        assert_eq!(a.legit.false_limited, b.legit.false_limited);
        assert_eq!(a.clones[0].alerted, b.clones[0].alerted);
    }

    #[test]
    fn records_update_like_the_exchange() {
        let mut phone_rng = ChaCha8Rng::seed_from_u64(1);
        let phone = Phone::new(&mut phone_rng);
        let attrs = phone.attributes(0);
        let mut r = Record::new(&attrs, 0, false);
        let (d, _) = r.score_and_record(&attrs, "home", 0, true);
        assert_eq!(d.level, TrustLevel::Limited, "a new device starts limited");
        for i in 1..=5 {
            r.score_and_record(&attrs, "home", i * 3600, false);
        }
        let (d, _) = r.score_and_record(&attrs, "home", DAY + 1, false);
        assert_eq!(
            d.level,
            TrustLevel::Trusted,
            "earned after a day and 5 exchanges"
        );
        let mut other = attrs.clone();
        other.insert("install_id".into(), "new".into());
        let (d, alerted) = r.score_and_record(&other, "home", DAY + 2, false);
        assert!(d.stable_mismatch && alerted);
        assert_eq!(
            r.attributes["install_id"], attrs["install_id"],
            "baseline kept"
        );
        assert_eq!(r.mismatch_count, 1);
        // The reinstalled app presents its new install_id every time: counted once, held at
        // limited, never walked down to denied.
        for i in 3..10 {
            let (d, alerted) = r.score_and_record(&other, "carrier", DAY + i, false);
            assert_eq!(d.level, TrustLevel::Limited, "{d:?}");
            assert!(d.stable_mismatch && !alerted);
        }
        assert_eq!(r.mismatch_count, 1);
        // A third fingerprint is news again.
        other.insert("install_id".into(), "newer".into());
        let (_, alerted) = r.score_and_record(&other, "home", DAY + 20, false);
        assert!(alerted);
        assert_eq!(r.mismatch_count, 2);
    }
}
