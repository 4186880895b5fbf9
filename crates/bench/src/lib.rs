//! `keybound bench`: how fast the token exchange is on this machine, next to this machine's
//! ceiling measured in the same run. The `keybound-bench` binary; `keybound bench …` runs it
//! with the same arguments.
//!
//! A run has five phases, all over the same `--connections` keep-alive connections:
//! 1. warm-up: one exchange per simulated device (enrolls the devices not seeded, fills the
//!    validation cache), then a short calibration run that sizes the proof batches;
//! 2. `GET /healthz`: what the HTTP stack and the load generator cost, with no work;
//! 3. `POST /bench/sign`: one access token signed per request, no checks, no storage (the
//!    route exists only in a server this crate starts: [`server`]);
//! 4. `POST /bench/verify-sign`: the same, after a SHA-256 and one Ed25519 `verify_strict` (the
//!    two signature operations no exchange can do without; the same);
//! 5. `POST /v1/token`: the full exchange, each request with a fresh DPoP proof built before
//!    the phase started;
//! 6. `POST /v1/token/refresh`: refresh-token rotation, closed loop ([`refresh`]; skipped with
//!    `--no-refresh`);
//! 7. with `--rate`: the exchange open loop, at a fixed arrival rate ([`open_loop`]; `auto`:
//!    at 50 % and 80 % of phase 5's rate).
//!
//! With `--rounds N`, phases 3 to 6 run N times, interleaved, and each ratio is also reported
//! per round and as the median of the rounds; then phase 7 runs N times, each of its phases
//! pooling the rounds' answers and reporting each round's percentiles and their median.
//!
//! The server and the load generator share the machine's cores, so every figure is a
//! figure for both together; the ratios between phases are what carries over to another
//! machine. The server's peak RSS is read from `/proc/<pid>/status` (`VmHWM`).

pub mod args;
mod devices;
mod load;
/// Open-loop phases (`--rate`): a fixed arrival rate, latency from intended send times.
mod open_loop;
/// The refresh phase: each device's refresh-token chain, in order.
mod refresh;
pub mod routes;
pub mod server;
mod target;
#[cfg(test)]
mod tests;
mod wire;

pub use open_loop::Rate;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderValue, Method, header};
use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use serde_json::json;

use crate::args::BenchArgs;
use devices::{Prepared, SimDevice, build_proofs};
use keybound::error::{Error, Result};
use load::{MakeRequest, Outcome, drive};
use open_loop::OpenOutcome;
use target::{Target, peak_rss};

/// A proof is accepted while its `iat` is within 60 s of the server's clock. Proofs are
/// issued [`IAT_AHEAD`] seconds after their batch starts being built, so they are good from 30
/// s before the batch is built until 90 s after: a batch is built and sent within that.
const IAT_AHEAD: i64 = 30;
/// Longest exchange batch; longer runs build proofs batch by batch.
const MAX_BATCH_SECS: u64 = 45;
/// Most proofs held at once (about 450 bytes each).
const MAX_PROOFS: usize = 1_500_000;

/// Proofs for the calibration run (it ends early when they run out). The smoke test's
/// debug build signs them ~50× slower, and needs only a few.
const CALIBRATION_PROOFS: usize = if cfg!(test) { 2_000 } else { 60_000 };

/// `--overhead` rounds; each case's figure is the median over them.
const OVERHEAD_ROUNDS: usize = 3;
/// `--overhead` cases, (rate limits, usage tracking, writes), in the order each round runs
/// them. The last one leaves only the exchange's own checks and signatures: no limits, no
/// usage, no refresh family write and no device history.
const OVERHEAD_CASES: [(bool, bool, bool); 5] = [
    (true, true, true),
    (false, true, true),
    (true, false, true),
    (false, false, true),
    (false, false, false),
];

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

/// Median of `f` over `outcomes`.
fn median(outcomes: &[Outcome], f: impl Fn(&Outcome) -> f64) -> f64 {
    median_value(outcomes.iter().map(f).collect())
}

/// Median of `v` (NaN when empty).
fn median_value(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs the benchmark and prints its report.
pub async fn run(args: BenchArgs, database_url: Option<String>) -> Result<ExitCode> {
    if args.connections == 0 || args.devices == 0 || args.keys == 0 {
        return Err(Error::InvalidRequest(
            "--connections, --devices and --keys must be at least 1".into(),
        ));
    }
    if args.keys > args.devices {
        return Err(Error::InvalidRequest(
            "--keys must not exceed --devices (every key gets a device)".into(),
        ));
    }
    eprintln!("making {} device keys…", args.devices);
    let devices: Arc<Vec<SimDevice>> = Arc::new(
        (0..args.devices)
            .map(|i| SimDevice::new(i, i % args.keys))
            .collect(),
    );
    let target = Target::start(&args, database_url, &devices).await?;
    let report = measure(&args, &target, devices).await;
    let rss = target.pid.and_then(peak_rss);
    let pid_note = match target.mode {
        "in process" => "this process: server and load generator together",
        "child process" => "the server process alone",
        _ => "the --server-pid process",
    };
    target.stop().await;
    let report = report?;
    if args.json {
        println!("{}", report.json(&args, rss));
    } else {
        report.print(&args, rss, pid_note);
    }
    Ok(ExitCode::SUCCESS)
}

/// Everything one run measured.
struct Report {
    date: String,
    mode: &'static str,
    backend: &'static str,
    warmup: Outcome,
    healthz: Option<Outcome>,
    sign: Option<Outcome>,
    verify_sign: Option<Outcome>,
    exchange: Outcome,
    /// `--rate`: the open-loop exchange phases.
    open_loop: Vec<OpenOutcome>,
    /// `POST /v1/token/refresh` (not with `--no-refresh`).
    refresh: Option<Outcome>,
    /// `--overhead`: per (rate limits, usage tracking, writes) case, one outcome per round.
    overhead: Vec<((bool, bool, bool), Vec<Outcome>)>,
    /// `--rounds`: each round's ratios (one entry without it).
    rounds: Vec<Ratios>,
}

/// The target ratios of one round.
#[derive(Debug, Clone, Copy)]
struct Ratios {
    exchange_over_sign_only: Option<f64>,
    exchange_over_verify_sign: Option<f64>,
    refresh_over_sign_only: Option<f64>,
}

impl Ratios {
    fn of(
        sign: Option<&Outcome>,
        verify_sign: Option<&Outcome>,
        exchange: &Outcome,
        refresh: Option<&Outcome>,
    ) -> Ratios {
        let over = |a: f64, b: Option<&Outcome>| b.map(|b| a / b.rate().max(1e-9));
        Ratios {
            exchange_over_sign_only: over(exchange.ok_rate(), sign),
            exchange_over_verify_sign: over(exchange.ok_rate(), verify_sign),
            refresh_over_sign_only: refresh.and_then(|r| over(r.ok_rate(), sign)),
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({"exchange_over_sign_only": self.exchange_over_sign_only,
               "exchange_over_verify_sign": self.exchange_over_verify_sign,
               "refresh_over_sign_only": self.refresh_over_sign_only})
    }
}

/// One of the ratios of [`Ratios`].
type RatioOf = fn(&Ratios) -> Option<f64>;

/// Median of the values `f` has over `rounds`, and the values in round order.
fn median_of(rounds: &[Ratios], f: impl Fn(&Ratios) -> Option<f64>) -> Option<(f64, Vec<f64>)> {
    let values: Vec<f64> = rounds.iter().filter_map(&f).collect();
    if values.is_empty() {
        return None;
    }
    Some((median_value(values.clone()), values))
}

/// Folds `o` into `into`.
fn pool(into: &mut Option<Outcome>, o: Outcome) {
    match into {
        Some(p) => p.merge(o),
        None => *into = Some(o),
    }
}

async fn measure(args: &BenchArgs, t: &Target, devices: Arc<Vec<SimDevice>>) -> Result<Report> {
    let date = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let conns = args.connections;
    let phase = Duration::from_secs(args.duration.max(1));
    let token_path: Arc<str> = reqwest::Url::parse(&t.token_url)
        .map(|u| u.path().to_owned())
        .map_err(|_| Error::InvalidRequest("the server's token_endpoint is not a URL".into()))?
        .into();
    let keys = Arc::new(t.api_keys.clone());
    let exchange_batch = |proofs: Vec<Prepared>| -> Arc<MakeRequest> {
        let proofs = Arc::new(proofs);
        let (devices, keys, path, host) = (
            devices.clone(),
            keys.clone(),
            token_path.clone(),
            t.host.clone(),
        );
        Arc::new(move |i| {
            let p = proofs.get(i)?;
            let d = &devices[p.device as usize];
            Request::post(&*path)
                .header(header::HOST, host.clone())
                .header(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )
                .header("x-api-key", keys[d.key_index].clone())
                .header("dpop", p.proof.clone())
                .body(Full::new(d.body.clone()))
                .ok()
        })
    };
    let iat = || keybound::state::now() + IAT_AHEAD;

    eprintln!("warm-up: one exchange per device…");
    let proofs = build_proofs(&devices, &t.token_url, iat(), 0, devices.len());
    let warmup = drive(
        t.addr,
        conns,
        Duration::from_secs(80),
        exchange_batch(proofs),
        t.pid,
    )
    .await;
    if warmup.ok < devices.len() as u64 {
        eprintln!(
            "warning: {} of {} warm-up exchanges failed: {:?}",
            devices.len() as u64 - warmup.ok,
            devices.len(),
            warmup.errors
        );
    }
    // A short exchange run sizes the proof batches (and warms the server further).
    let calibration = Duration::from_secs(2);
    let proofs = build_proofs(&devices, &t.token_url, iat(), 0, CALIBRATION_PROOFS);
    let calibrated = drive(t.addr, conns, calibration, exchange_batch(proofs), t.pid).await;
    let expected_rate = calibrated.rate().max(1000.0);

    let mut next_device = 0;
    let mut run_exchange = async |secs: u64| -> Outcome {
        let mut exchange: Option<Outcome> = None;
        let mut left = secs.max(1);
        while left > 0 {
            let secs = left.min(MAX_BATCH_SECS);
            left -= secs;
            let n = ((expected_rate * 1.3 * secs as f64) as usize).min(MAX_PROOFS);
            eprintln!("exchange: building {n} proofs for {secs} s…");
            let proofs = build_proofs(&devices, &t.token_url, iat(), next_device, n);
            next_device = (next_device + n) % devices.len();
            eprintln!("exchange: running {secs} s…");
            let o = drive(
                t.addr,
                conns,
                Duration::from_secs(secs),
                exchange_batch(proofs),
                t.pid,
            )
            .await;
            pool(&mut exchange, o);
        }
        exchange.expect("at least one batch ran")
    };
    let (mut healthz, mut sign, mut verify_sign) = (None, None, None);
    let (mut exchange, mut refresh) = (None, None);
    let mut ratios = Vec::new();
    let mut has_sign_route = !args.no_ceiling;
    for round in 1..=args.rounds {
        if args.rounds > 1 {
            eprintln!("round {round} of {}", args.rounds);
        }
        let (mut s, mut vs) = (None, None);
        if has_sign_route {
            if round == 1 {
                eprintln!("ceiling: GET /healthz for {} s…", phase.as_secs());
                let h = drive(
                    t.addr,
                    conns,
                    phase,
                    simple(Method::GET, "/healthz", &t.host),
                    t.pid,
                )
                .await;
                healthz = Some(h);
            }
            eprintln!("ceiling: POST /bench/sign for {} s…", phase.as_secs());
            let o = drive(
                t.addr,
                conns,
                phase,
                simple(Method::POST, crate::routes::SIGN_PATH, &t.host),
                t.pid,
            )
            .await;
            if o.ok == 0 {
                eprintln!(
                    "note: no sign-only route (a plain `keybound serve` has none; --no-ceiling \
                     skips these phases)"
                );
                has_sign_route = false;
            } else {
                let path = crate::routes::VERIFY_SIGN_PATH;
                eprintln!("ceiling: POST {path} for {} s…", phase.as_secs());
                let v = drive(
                    t.addr,
                    conns,
                    phase,
                    simple(Method::POST, path, &t.host),
                    t.pid,
                )
                .await;
                s = Some(o);
                vs = (v.ok > 0).then_some(v);
            }
        }
        let e = match args.requests {
            Some(n) => {
                eprintln!("exchange: building {n} proofs…");
                let proofs = build_proofs(&devices, &t.token_url, iat(), 0, n);
                eprintln!("exchange: sending {n}…");
                drive(
                    t.addr,
                    conns,
                    Duration::from_secs(90),
                    exchange_batch(proofs),
                    t.pid,
                )
                .await
            }
            None => run_exchange(phase.as_secs()).await,
        };
        let r = if args.no_refresh {
            None
        } else {
            Some(
                refresh::run(
                    t,
                    &devices,
                    conns,
                    phase.as_secs(),
                    expected_rate.max(e.ok_rate()),
                )
                .await,
            )
        };
        ratios.push(Ratios::of(s.as_ref(), vs.as_ref(), &e, r.as_ref()));
        if let Some(s) = s {
            pool(&mut sign, s);
        }
        if let Some(vs) = vs {
            pool(&mut verify_sign, vs);
        }
        pool(&mut exchange, e);
        if let Some(r) = r {
            pool(&mut refresh, r);
        }
    }
    let exchange = exchange.expect("at least one round ran");
    // The open loop at fractions of the closed-loop rate pooled over every round (a 5 s
    // phase alone can catch the machine 20 % faster or slower than its minute), one phase
    // of each fraction a round, pooled in turn.
    let mut open: Vec<OpenOutcome> = Vec::new();
    let rates = open_loop::rates(args.rate, exchange.ok_rate());
    for round in 1..=args.rounds {
        for (i, &(rate, fraction)) in rates.iter().enumerate() {
            if args.rounds > 1 && i == 0 {
                eprintln!("open loop: round {round} of {}", args.rounds);
            }
            let batch = |n| exchange_batch(build_proofs(&devices, &t.token_url, iat(), 0, n));
            let mut o = open_loop::phase(t, conns, rate, phase.as_secs(), batch).await;
            o.fraction = fraction;
            match open.get_mut(i) {
                Some(pooled) => pooled.merge_round(o),
                None => open.push(o),
            }
        }
    }
    let mut overhead = Vec::new();
    if args.overhead {
        for round in 1..=OVERHEAD_ROUNDS {
            for (i, &case) in OVERHEAD_CASES.iter().enumerate() {
                let (limits, usage, writes) = case;
                eprintln!(
                    "overhead round {round}: rate limits {}, usage tracking {}, writes {}",
                    on_off(limits),
                    on_off(usage),
                    on_off(writes)
                );
                t.set_switches(limits, usage, writes).await?;
                let o = run_exchange(phase.as_secs()).await;
                if round == 1 {
                    overhead.push((case, vec![o]));
                } else {
                    overhead[i].1.push(o);
                }
            }
        }
        t.set_switches(true, true, true).await?;
    }
    Ok(Report {
        date,
        mode: t.mode,
        backend: t.backend,
        warmup,
        healthz,
        sign,
        verify_sign,
        exchange,
        open_loop: open,
        refresh,
        overhead,
        rounds: ratios,
    })
}

/// The same bodiless request every time.
fn simple(method: Method, path: &'static str, host: &HeaderValue) -> Arc<MakeRequest> {
    let host = host.clone();
    Arc::new(move |_| {
        Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, host.clone())
            .body(Full::new(Bytes::new()))
            .ok()
    })
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{cores} cores ({model}) shared by the server and the load generator; loopback; \
         keep-alive HTTP/1.1"
    )
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Report {
    fn ratio(&self, of: Option<&Outcome>) -> Option<f64> {
        of.map(|o| self.exchange.ok_rate() / o.rate().max(1e-9))
    }

    /// Sign-only's server CPU per request ÷ `of`'s: what `of ÷ sign-only` would be if only the
    /// server's CPU bounded both (the generator on other cores).
    fn cpu_ratio(&self, of: Option<&Outcome>) -> Option<f64> {
        Some(self.sign.as_ref()?.cpu_us()? / of?.cpu_us()?.max(1e-9))
    }

    /// Refreshes answered ÷ sign-only (issue 18's refresh target).
    fn refresh_ratio(&self) -> Option<f64> {
        let (r, s) = (self.refresh.as_ref()?, self.sign.as_ref()?);
        Some(r.ok_rate() / s.rate().max(1e-9))
    }

    fn print(&self, args: &BenchArgs, rss: Option<u64>, pid_note: &str) {
        println!("keybound bench — {}", self.date);
        println!("machine:  {}", machine());
        println!(
            "server:   {} ({}), {} connections, {} s per phase",
            self.backend, self.mode, args.connections, args.duration
        );
        println!(
            "load:     {} devices over {} keys; database seeded to {} keys and {} devices",
            args.devices,
            args.keys,
            args.seed_keys.max(args.keys),
            args.seed_devices
        );
        println!();
        println!(
            "{:<22} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  errors",
            "phase", "requests", "ok/s", "p50 ms", "p99 ms", "p99.9", "max ms", "cpu µs", "gen µs"
        );
        let row = |name: &str, o: &Outcome| {
            let errors = if o.errors.is_empty() {
                "-".to_owned()
            } else {
                o.errors
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let us = |c: Option<f64>| c.map_or("-".to_owned(), |c| format!("{c:.0}"));
            println!(
                "{:<22} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8} {:>8}  {}",
                name,
                o.done,
                o.ok_rate(),
                o.ms(0.5),
                o.ms(0.99),
                o.ms(0.999),
                o.latency.max() as f64 / 1000.0,
                us(o.cpu_us()),
                us(o.generator_cpu_us()),
                errors
            );
        };
        row("warm-up (1/device)", &self.warmup);
        if let Some(h) = &self.healthz {
            row("GET /healthz", h);
        }
        if let Some(s) = &self.sign {
            row("POST /bench/sign", s);
        }
        if let Some(s) = &self.verify_sign {
            row("POST /bench/verify-sign", s);
        }
        row("POST /v1/token", &self.exchange);
        for o in &self.open_loop {
            row(&o.name(), &o.outcome);
        }
        if let Some(r) = &self.refresh {
            row("POST /v1/token/refresh", r);
        }
        println!();
        let over = |a: Option<&Outcome>, b: Option<&Outcome>| Some(a?.rate() / b?.rate().max(1e-9));
        let (sign, verify_sign, healthz) = (
            self.sign.as_ref(),
            self.verify_sign.as_ref(),
            self.healthz.as_ref(),
        );
        let ratios = [
            (
                "exchange / sign-only",
                self.ratio(sign),
                "  (target ≥ 0.40)",
            ),
            ("exchange / verify-sign", self.ratio(verify_sign), ""),
            (
                "refresh / sign-only",
                self.refresh_ratio(),
                "  (target ≥ 0.30)",
            ),
            (
                "verify-sign / sign-only",
                over(verify_sign, sign),
                "  (the most any exchange could reach)",
            ),
            ("exchange / healthz", self.ratio(healthz), ""),
            ("sign-only / healthz", over(sign, healthz), ""),
        ];
        for (name, ratio, note) in ratios {
            if let Some(r) = ratio {
                println!("{:<24} {r:.2}{note}", format!("{name}:"));
            }
        }
        if let Some(e) = self.cpu_ratio(Some(&self.exchange)) {
            // Without a refresh phase (`--no-refresh`), the exchange's ratio alone.
            let refresh = self
                .cpu_ratio(self.refresh.as_ref())
                .map(|r| format!(", ÷ refresh {r:.2}"))
                .unwrap_or_default();
            println!(
                "server CPU per request, sign-only ÷ exchange {e:.2}{refresh}: the ratios a load \
                 generator on cores of its own would measure (the server alone CPU-bound); the \
                 generator's own CPU (gen µs) on the shared cores raises the ratios above"
            );
        }
        if self.rounds.len() > 1 {
            println!(
                "{} interleaved rounds; the ratios above pool them. Each ratio's median over the \
                 rounds:",
                self.rounds.len()
            );
            let medians: [(&str, RatioOf); 3] = [
                ("exchange / sign-only", |r| r.exchange_over_sign_only),
                ("exchange / verify-sign", |r| r.exchange_over_verify_sign),
                ("refresh / sign-only", |r| r.refresh_over_sign_only),
            ];
            for (name, f) in medians {
                if let Some((m, values)) = median_of(&self.rounds, f) {
                    let each: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
                    println!(
                        "  {:<24} median {m:.3}  (rounds: {})",
                        format!("{name}:"),
                        each.join(" ")
                    );
                }
            }
        }
        println!(
            "exchange p99:            {:.2} ms at {} connections (target < 10 ms)",
            self.exchange.ms(0.99),
            args.connections
        );
        for o in &self.open_loop {
            o.print();
        }
        if !self.overhead.is_empty() {
            self.print_overhead();
        }
        println!(
            "cpu µs:                  server process CPU time per request ({pid_note}); the \
             load generator shares the same {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        match rss {
            Some(b) => println!("peak RSS (VmHWM):        {:.1} MiB ({pid_note})", mib(b)),
            None => println!("peak RSS:                unknown (give --server-pid)"),
        }
    }

    /// Median rate, latency and CPU per case, and each against both on.
    fn overhead_rows(&self) -> Vec<serde_json::Value> {
        let base = self
            .overhead
            .iter()
            .find(|(case, _)| *case == (true, true, true))
            .map(|(_, o)| median(o, Outcome::ok_rate));
        self.overhead
            .iter()
            .map(|&((limits, usage, writes), ref o)| {
                let rate = median(o, Outcome::ok_rate);
                json!({"rate_limits": limits, "usage_tracking": usage, "writes": writes,
                       "ok_per_second_median": rate,
                       "ok_per_second_rounds": o.iter().map(Outcome::ok_rate).collect::<Vec<_>>(),
                       "p50_ms_median": median(o, |o| o.ms(0.5)),
                       "p99_ms_median": median(o, |o| o.ms(0.99)),
                       "server_cpu_us_median": median(o, |o| o.cpu_us().unwrap_or(f64::NAN)),
                       "errors": o.iter().map(|o| o.done - o.ok).sum::<u64>(),
                       "rate_over_both_on": base.map(|b| rate / b.max(1e-9))})
            })
            .collect()
    }

    fn print_overhead(&self) {
        println!();
        println!("overhead ({OVERHEAD_ROUNDS} interleaved rounds; medians):");
        println!(
            "{:<12} {:<15} {:<7} {:>10} {:>8} {:>8} {:>8} {:>10} {:>7}",
            "rate limits",
            "usage tracking",
            "writes",
            "ok/s",
            "p50 ms",
            "p99 ms",
            "cpu µs",
            "vs both on",
            "errors"
        );
        for row in self.overhead_rows() {
            let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
            let b = |k: &str| on_off(row[k].as_bool().unwrap_or(true));
            println!(
                "{:<12} {:<15} {:<7} {:>10.0} {:>8.2} {:>8.2} {:>8.0} {:>10.3} {:>7}",
                b("rate_limits"),
                b("usage_tracking"),
                b("writes"),
                f("ok_per_second_median"),
                f("p50_ms_median"),
                f("p99_ms_median"),
                f("server_cpu_us_median"),
                f("rate_over_both_on"),
                row["errors"]
            );
        }
        println!();
    }

    fn json(&self, args: &BenchArgs, rss: Option<u64>) -> serde_json::Value {
        let phase = |o: &Outcome| {
            json!({"requests": o.done, "ok": o.ok, "seconds": o.elapsed.as_secs_f64(),
                   "ok_per_second": o.ok_rate(), "p50_ms": o.ms(0.5), "p99_ms": o.ms(0.99),
                   "p999_ms": o.ms(0.999), "max_ms": o.latency.max() as f64 / 1000.0,
                   "server_cpu_us_per_request": o.cpu_us(),
                   "generator_cpu_us_per_request": o.generator_cpu_us(),
                   "errors": o.errors.iter().collect::<BTreeMap<_, _>>()})
        };
        json!({
            "date": self.date,
            "machine": machine(),
            "backend": self.backend,
            "mode": self.mode,
            "connections": args.connections,
            "devices": args.devices,
            "keys": args.keys,
            "seed_keys": args.seed_keys,
            "seed_devices": args.seed_devices,
            "warmup": phase(&self.warmup),
            "healthz": self.healthz.as_ref().map(phase),
            "sign_only": self.sign.as_ref().map(phase),
            "verify_sign": self.verify_sign.as_ref().map(phase),
            "exchange": phase(&self.exchange),
            "exchange_over_sign_only": self.ratio(self.sign.as_ref()),
            "exchange_over_verify_sign": self.ratio(self.verify_sign.as_ref()),
            "exchange_over_healthz": self.ratio(self.healthz.as_ref()),
            "open_loop": self.open_loop.iter().map(|o| {
                let mut v = phase(&o.outcome);
                v["generator"] = o.json();
                v
            }).collect::<Vec<_>>(),
            "refresh": self.refresh.as_ref().map(phase),
            "refresh_over_sign_only": self.refresh_ratio(),
            "server_cpu_sign_only_over_exchange": self.cpu_ratio(Some(&self.exchange)),
            "server_cpu_sign_only_over_refresh": self.cpu_ratio(self.refresh.as_ref()),
            "overhead": self.overhead_rows(),
            "rounds": self.rounds.iter().map(Ratios::json).collect::<Vec<_>>(),
            "median_of_rounds": {
                "exchange_over_sign_only": median_of(&self.rounds, |r| r.exchange_over_sign_only).map(|m| m.0),
                "exchange_over_verify_sign": median_of(&self.rounds, |r| r.exchange_over_verify_sign).map(|m| m.0),
                "refresh_over_sign_only": median_of(&self.rounds, |r| r.refresh_over_sign_only).map(|m| m.0),
            },
            "peak_rss_bytes": rss,
        })
    }
}
