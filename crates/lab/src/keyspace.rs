//! The key format under attack: F reverse engineering (how long guessing takes), I guessing
//! by learning (is there any pattern in generated keys), K the checksum (typos and tampering).

use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

use rand::Rng;
use rand::rngs::OsRng;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::report::{Outcome, Section, pct, sci, thousands};
use super::stats::{chi_square_uniform, serial_correlation};
use super::target::Target;
use keybound::error::Result;
use keybound::keys::format::{BASE62, CHECKSUM_LEN, ID_LEN, SECRET_LEN};
use keybound::keys::{ApiKey, KeyEnv};

const SECONDS_PER_YEAR: f64 = 365.25 * 86_400.0;

// ---- F: reverse engineering ----

/// Scenario F's figures.
#[derive(Debug, Clone)]
pub struct Entropy {
    /// log2(62^43).
    pub bits: f64,
    /// log2 of the expected number of guesses for one key (half the space).
    pub expected_guesses_log2: f64,
    /// Measured offline verifications per second on one core (parse + hash + compare).
    pub measured_rate: f64,
    /// Years at the measured rate.
    pub years_measured: f64,
    /// Years at 10^12 guesses per second.
    pub years_1e12: f64,
    /// Years online against the default per-IP failure budget (20/min), from a million IPs.
    pub years_online_million_ips: f64,
}

/// F: what the format gives away, and how long guessing a secret takes. The rate is
/// measured: exactly the work the server does per guess (format and checksum check, SHA-256
/// of the secret, constant-time compare with the stored hash), on this machine, one core.
pub fn reverse_engineering(iterations: u64) -> Entropy {
    let bits = SECRET_LEN as f64 * 62f64.log2();
    let victim = ApiKey::generate(KeyEnv::Prod);
    let stored = victim.secret_hash();
    // The attacker knows the id (it is public) and computes checksums: candidates are
    // well-formed keys with that id and random secrets, made before the clock starts.
    let candidates: Vec<String> = (0..1024)
        .map(|_| super::leaks::forge_same_id(victim.expose()))
        .collect();
    let started = Instant::now();
    let mut hits = 0u64;
    for i in 0..iterations.max(1) {
        let candidate = &candidates[(i % 1024) as usize];
        if let Ok(k) = ApiKey::parse(black_box(candidate)) {
            hits += u64::from(bool::from(k.secret_hash().ct_eq(&stored)));
        }
    }
    black_box(hits);
    let rate = iterations.max(1) as f64 / started.elapsed().as_secs_f64();
    let expected_log2 = bits - 1.0;
    let years = |per_second: f64| (expected_log2 * 2f64.ln()).exp() / per_second / SECONDS_PER_YEAR;
    Entropy {
        bits,
        expected_guesses_log2: expected_log2,
        measured_rate: rate,
        years_measured: years(rate),
        years_1e12: years(1e12),
        years_online_million_ips: years(20.0 / 60.0 * 1e6),
    }
}

impl Entropy {
    /// The report section.
    pub fn section(&self) -> Section {
        let mut s = Section::new("F reverse engineering");
        s.row(
            "from the format alone: the secret is 43 base62 characters",
            "≥ 256 bits from the OS CSPRNG; no structure besides the public id and checksum",
            Outcome::Blocked,
            format!(
                "{:.2} bits; expected guesses 2^{:.2} ≈ {}",
                self.bits,
                self.expected_guesses_log2,
                sci((self.expected_guesses_log2 * 2f64.ln()).exp())
            ),
        );
        s.row(
            "offline guessing at the measured verification rate",
            "the same: parse + SHA-256 + constant-time compare per guess",
            Outcome::Blocked,
            format!(
                "{} guesses/s on one core → {} years",
                thousands(self.measured_rate as u64),
                sci(self.years_measured)
            ),
        );
        s.row(
            "offline guessing at 10^12 guesses/s",
            "the same",
            Outcome::Blocked,
            format!("{} years", sci(self.years_1e12)),
        );
        s.row(
            "online guessing from a million IPs at the failure budget",
            "per-IP failure budget (20 failures/min, default)",
            Outcome::Blocked,
            format!("{} years", sci(self.years_online_million_ips)),
        );
        s.note(
            "The id (12 characters) is public — it is the token's `sub` — and the checksum is \
             CRC-32 of the rest, so neither helps: an attacker computes both. Only the 43-character \
             secret is unknown, and it is uniform (scenario I). The age of the universe is about \
             1.4e10 years."
                .to_owned(),
        );
        s
    }
}

// ---- I: guessing by learning ----

/// Scenario I's figures.
#[derive(Debug, Clone)]
pub struct Learning {
    /// Keys generated.
    pub keys: usize,
    /// Character frequencies of the secrets: (chi², df, p).
    pub secret_chi: (f64, f64, f64),
    /// The same for the ids.
    pub id_chi: (f64, f64, f64),
    /// The smallest per-position p-value over the 43 secret positions, Bonferroni-adjusted.
    pub worst_position_p: f64,
    /// Lag-1 serial correlation of successive secret characters, and its p-value.
    pub serial: (f64, f64),
    /// Two-character prefixes of the secrets: (chi², df, p).
    pub prefix_chi: (f64, f64, f64),
    /// DEFLATE (level 9) size / raw size, for the secrets.
    pub compress_keys: f64,
    /// The same for an equally long base62 string from another CSPRNG (ChaCha20).
    pub compress_reference: f64,
    /// log2(62)/8: the incompressible floor for base62 text.
    pub compress_floor: f64,
    /// Longest prefix two secrets share.
    pub longest_shared_prefix: usize,
    /// What chance predicts for it: log62(n²/2).
    pub expected_shared_prefix: f64,
    /// Duplicate secrets.
    pub duplicates: usize,
}

fn value(c: u8) -> usize {
    BASE62
        .iter()
        .position(|&b| b == c)
        .expect("a base62 character")
}

fn deflate_ratio(data: &[u8]) -> f64 {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("writing to memory");
    let out = e.finish().expect("finishing in memory");
    out.len() as f64 / data.len() as f64
}

/// I: generates `n` keys as the server does and looks for any pattern a learner could use.
pub fn learning(n: usize) -> Learning {
    let n = n.max(100);
    let mut secrets: Vec<Vec<u8>> = Vec::with_capacity(n);
    let mut id_counts = [0u64; 62];
    let mut counts = [0u64; 62];
    let mut by_position = vec![[0u64; 62]; SECRET_LEN];
    let mut prefixes = vec![0u64; 62 * 62];
    for _ in 0..n {
        let k = ApiKey::generate(KeyEnv::Test);
        let body = &k.expose().as_bytes()["sk_test_".len()..];
        for &c in &body[..ID_LEN] {
            id_counts[value(c)] += 1;
        }
        let secret = body[ID_LEN..ID_LEN + SECRET_LEN].to_vec();
        for (i, &c) in secret.iter().enumerate() {
            counts[value(c)] += 1;
            by_position[i][value(c)] += 1;
        }
        prefixes[value(secret[0]) * 62 + value(secret[1])] += 1;
        secrets.push(secret);
    }
    let worst = by_position
        .iter()
        .map(|c| chi_square_uniform(c).2)
        .fold(1.0, f64::min);
    let stream: Vec<f64> = secrets
        .iter()
        .flat_map(|s| s.iter().map(|&c| value(c) as f64))
        .collect();
    let raw: Vec<u8> = secrets.concat();
    let mut reference = vec![0u8; raw.len()];
    {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::from_rng(OsRng).expect("the OS CSPRNG works");
        for b in reference.iter_mut() {
            *b = BASE62[rng.gen_range(0..62)];
        }
    }
    secrets.sort_unstable();
    let mut longest = 0;
    let mut duplicates = 0;
    for w in secrets.windows(2) {
        let shared = w[0].iter().zip(&w[1]).take_while(|(a, b)| a == b).count();
        longest = longest.max(shared);
        duplicates += usize::from(w[0] == w[1]);
    }
    let nf = n as f64;
    Learning {
        keys: n,
        secret_chi: chi_square_uniform(&counts),
        id_chi: chi_square_uniform(&id_counts),
        worst_position_p: (worst * SECRET_LEN as f64).min(1.0),
        serial: serial_correlation(&stream),
        prefix_chi: chi_square_uniform(&prefixes),
        compress_keys: deflate_ratio(&raw),
        compress_reference: deflate_ratio(&reference),
        compress_floor: 62f64.log2() / 8.0,
        longest_shared_prefix: longest,
        expected_shared_prefix: (nf * nf / 2.0).ln() / 62f64.ln(),
        duplicates,
    }
}

/// p-values below this are a pattern (one in a million by chance, so reruns are not flaky).
pub const P_FLOOR: f64 = 1e-6;

impl Learning {
    /// No test found a pattern.
    pub fn no_pattern(&self) -> bool {
        [
            self.secret_chi.2,
            self.id_chi.2,
            self.worst_position_p,
            self.serial.1,
            self.prefix_chi.2,
        ]
        .iter()
        .all(|&p| p > P_FLOOR)
            && self.duplicates == 0
            && (self.compress_keys - self.compress_reference).abs() < 0.01
            && (self.longest_shared_prefix as f64) <= self.expected_shared_prefix + 3.0
    }

    /// The report section.
    pub fn section(&self) -> Section {
        let mut s = Section::new("I guessing by learning");
        let verdict = |p: f64| {
            if p > P_FLOOR {
                Outcome::Blocked
            } else {
                Outcome::NotBlocked
            }
        };
        let n = thousands(self.keys as u64);
        s.row(
            format!("character frequencies of {n} secrets"),
            "uniform draws (gen_range: rejection sampling, no modulo bias)",
            verdict(self.secret_chi.2),
            format!(
                "chi² = {:.1} (df {}), p = {:.3}",
                self.secret_chi.0, self.secret_chi.1, self.secret_chi.2
            ),
        );
        s.row(
            "… per position (43 positions)",
            "the same",
            verdict(self.worst_position_p),
            format!(
                "worst position p = {:.3} (Bonferroni-adjusted)",
                self.worst_position_p
            ),
        );
        s.row(
            format!("character frequencies of {n} ids"),
            "the same",
            verdict(self.id_chi.2),
            format!(
                "chi² = {:.1} (df {}), p = {:.3}",
                self.id_chi.0, self.id_chi.1, self.id_chi.2
            ),
        );
        s.row(
            "serial correlation of successive characters",
            "independent draws",
            verdict(self.serial.1),
            format!("r = {:+.5}, p = {:.3}", self.serial.0, self.serial.1),
        );
        s.row(
            "common two-character prefixes",
            "the same",
            verdict(self.prefix_chi.2),
            format!(
                "chi² = {:.1} (df {}), p = {:.3}",
                self.prefix_chi.0, self.prefix_chi.1, self.prefix_chi.2
            ),
        );
        s.row(
            "longest prefix shared by two secrets; duplicates",
            "256-bit secrets",
            if self.duplicates == 0
                && (self.longest_shared_prefix as f64) <= self.expected_shared_prefix + 3.0
            {
                Outcome::Blocked
            } else {
                Outcome::NotBlocked
            },
            format!(
                "{} characters (chance: {:.1}); {} duplicates",
                self.longest_shared_prefix, self.expected_shared_prefix, self.duplicates
            ),
        );
        s.row(
            "compress the secrets (DEFLATE, level 9)",
            "no redundancy beyond the base62 alphabet",
            if (self.compress_keys - self.compress_reference).abs() < 0.01 {
                Outcome::Blocked
            } else {
                Outcome::NotBlocked
            },
            format!(
                "ratio {:.4} vs {:.4} for ChaCha20 base62 text (floor {:.4})",
                self.compress_keys, self.compress_reference, self.compress_floor
            ),
        );
        s.note(format!(
            "A p-value is the chance of a deviation at least this large from truly uniform, \
             independent characters; a pattern would show as p < {P_FLOOR:e}. Beyond the \
             format (`sk_<env>_`), the only shared structure is the checksum, which is a \
             public function of the rest."
        ));
        s.check(self.no_pattern(), "a statistical test found a pattern");
        s
    }
}

// ---- K: the checksum ----

/// Scenario K's figures: (trials, caught) per kind of error.
#[derive(Debug, Clone)]
pub struct Checksum {
    /// One character replaced by another.
    pub substitution: (u64, u64),
    /// Two adjacent different characters swapped.
    pub transposition: (u64, u64),
    /// One character dropped or doubled (the length changes: refused as malformed).
    pub length: (u64, u64),
    /// 2–8 random characters replaced.
    pub random: (u64, u64),
    /// `sk_test_` ↔ `sk_prod_` with the body unchanged.
    pub env_swap: (u64, u64),
    /// Deliberate tampering: a new secret with a recomputed checksum. Passes the format check
    /// (the checksum is no MAC); (sent to the server, refused by it).
    pub tampered: (u64, u64),
    /// Typos refused by parse per second (no storage touched).
    pub refusals_per_second: f64,
}

fn caught(s: &str) -> bool {
    ApiKey::parse(s).is_err()
}

fn mutate(key: &str, f: impl FnOnce(&mut Vec<u8>, usize)) -> String {
    let mut b = key.as_bytes().to_vec();
    let body_start = key.len() - (ID_LEN + SECRET_LEN + CHECKSUM_LEN);
    f(&mut b, body_start);
    String::from_utf8(b).expect("ASCII stays ASCII")
}

fn other_char(rng: &mut impl Rng, c: u8) -> u8 {
    loop {
        let d = BASE62[rng.gen_range(0..62)];
        if d != c {
            return d;
        }
    }
}

/// K: mutates `n` generated keys the ways people and attackers do, and counts what the
/// checksum catches; tampered keys with a recomputed checksum go to the server (when there is
/// one) to show what stops them instead.
pub async fn checksum(n: usize, target: Option<&Target>) -> Result<Checksum> {
    let mut rng = OsRng;
    let mut sub = (0, 0);
    let mut tra = (0, 0);
    let mut len = (0, 0);
    let mut ran = (0, 0);
    let mut env = (0, 0);
    let mut typos = Vec::new();
    let body = ID_LEN + SECRET_LEN + CHECKSUM_LEN;
    for _ in 0..n.max(1) {
        let k = ApiKey::generate(KeyEnv::Test);
        let key = k.expose();
        for _ in 0..4 {
            let s = mutate(key, |b, at| {
                let i = at + rng.gen_range(0..body);
                b[i] = other_char(&mut rng, b[i]);
            });
            sub.0 += 1;
            sub.1 += u64::from(caught(&s));
            typos.push(s);
        }
        let s = mutate(key, |b, at| {
            let i = loop {
                let i = at + rng.gen_range(0..body - 1);
                if b[i] != b[i + 1] {
                    break i;
                }
            };
            b.swap(i, i + 1);
        });
        tra.0 += 1;
        tra.1 += u64::from(caught(&s));
        let s = mutate(key, |b, at| {
            let i = at + rng.gen_range(0..body);
            if rng.gen_bool(0.5) {
                b.remove(i);
            } else {
                b.insert(i, b[i]);
            }
        });
        len.0 += 1;
        len.1 += u64::from(caught(&s));
        for _ in 0..4 {
            let s = mutate(key, |b, at| {
                // Distinct positions: changing one twice could put the original back.
                let n = rng.gen_range(2..=8);
                for i in rand::seq::index::sample(&mut rng, body, n) {
                    b[at + i] = other_char(&mut rng, b[at + i]);
                }
            });
            ran.0 += 1;
            ran.1 += u64::from(caught(&s));
        }
        env.0 += 1;
        env.1 += u64::from(caught(&key.replacen("sk_test_", "sk_prod_", 1)));
    }
    let started = Instant::now();
    let mut refused = 0u64;
    for t in &typos {
        refused += u64::from(ApiKey::parse(black_box(t)).is_err());
    }
    let refusals_per_second = refused as f64 / started.elapsed().as_secs_f64();

    let mut tampered = (0, 0);
    if let Some(t) = target {
        let (key, _) = t.create_key(json!({})).await?;
        let device = super::target::LabDevice::new();
        for i in 0..10u8 {
            let forged = super::leaks::forge_same_id(secrecy::ExposeSecret::expose_secret(&key));
            if ApiKey::parse(&forged).is_ok() {
                let r = t
                    .exchange(&forged, &device, &json!({}), Target::client_ip(47, 0, i))
                    .await?;
                tampered.0 += 1;
                tampered.1 += u64::from(r.code() == "INVALID_API_KEY");
            }
        }
    }
    Ok(Checksum {
        substitution: sub,
        transposition: tra,
        length: len,
        random: ran,
        env_swap: env,
        tampered,
        refusals_per_second,
    })
}

impl Checksum {
    /// Every accidental error was caught, and every tampered key refused by the server.
    pub fn holds(&self) -> bool {
        [
            self.substitution,
            self.transposition,
            self.length,
            self.env_swap,
        ]
        .iter()
        .all(|(t, c)| t == c)
            && self.tampered.0 == self.tampered.1
    }

    /// The report section.
    pub fn section(&self) -> Section {
        let mut s = Section::new("K checksum");
        let mut row = |attack: &str, (t, c): (u64, u64), expected: &str| {
            s.row(
                format!("{attack} ({} keys)", thousands(t)),
                "CRC-32 checksum, checked before storage",
                if t == c {
                    Outcome::Blocked
                } else {
                    Outcome::Limited
                },
                format!(
                    "caught {} ({}/{}); {expected}",
                    pct(c, t),
                    thousands(c),
                    thousands(t)
                ),
            );
        };
        row(
            "typo: one character replaced",
            self.substitution,
            "CRC-32 catches every burst ≤ 32 bits",
        );
        row(
            "typo: two adjacent characters swapped",
            self.transposition,
            "a 16-bit burst: always caught",
        );
        row(
            "typo: a character dropped or doubled",
            self.length,
            "refused as malformed (length)",
        );
        row(
            "2–8 random characters changed",
            self.random,
            "undetected with probability 2^-32",
        );
        row(
            "environment prefix changed (sk_test_ → sk_prod_)",
            self.env_swap,
            "the prefix is covered",
        );
        s.row(
            format!(
                "tampering: new secret, recomputed checksum ({} sent)",
                self.tampered.0
            ),
            "not the checksum (no MAC, anyone computes it): the stored hash",
            if self.tampered.0 == self.tampered.1 {
                Outcome::Blocked
            } else {
                Outcome::NotBlocked
            },
            format!(
                "passes the format check; server refused {}/{} with INVALID_API_KEY",
                self.tampered.1, self.tampered.0
            ),
        );
        s.note(format!(
            "A mistyped key is refused by `ApiKey::parse` without touching storage, at {} \
             refusals per second on one core: typos cost the server almost nothing and never \
             reach the database or the cache. The checksum also lets `keybound scan` find keys \
             in files with no false positives.",
            thousands(self.refusals_per_second as u64)
        ));
        s.check(
            self.holds(),
            "an accidental error slipped through or a tampered key was accepted",
        );
        s
    }
}
