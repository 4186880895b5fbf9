//! Open-loop load (`--rate`): exchanges sent at a fixed arrival rate whatever the server's
//! answers do, the way clients that do not wait for each other arrive.
//!
//! A closed loop (the other phases) sends the next request only when an answer came back, so
//! a server that stalls is sent less while it stalls, and the requests that would have arrived
//! during the stall are never timed: "coordinated omission". Here every request has an
//! intended send time fixed before the phase starts (request `i` at `start + i / rate`), and
//! its latency is measured from that time to the end of its answer, as wrk2 does: a request
//! that had to wait for a free connection, or behind a stall, is charged for the wait.
//!
//! The schedule is kept by one OS thread that sleeps until the next request is due, but at
//! least a millisecond ([`TICK`], the resolution of wrk2's timer), and then releases every
//! request due by then: one wake-up a millisecond instead of one a request, each request sent
//! up to a tick after its intended time, and timed from that time all the same. Released
//! requests are taken in order by whichever of the `--connections` keep-alive connections is
//! free. The connections run on a current-thread runtime of their own and speak HTTP/1.1
//! through [`Wire`], one task a connection, so that the generator costs no more CPU an
//! exchange here than in the closed loop whose rate the phase is a fraction of
//! (`docs/benchmarks.md`, seventeenth session). The report says whether the generator kept
//! up: how late the schedule thread released requests, how many were in flight at most (all
//! connections busy means requests waited for a connection inside the generator, which their
//! latency includes), and the rate actually sent.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

use super::load::{MakeRequest, Outcome, error_code, ms};
use super::target::Target;
use super::wire::Wire;

/// `--rate`: a fixed arrival rate, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rate {
    /// Two phases, at 50 % and 80 % of the closed-loop exchange rate measured in the same run.
    Auto,
    /// Exchanges a second.
    Fixed(f64),
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Rate::Auto);
        }
        match s.parse::<f64>() {
            Ok(r) if (1.0..=10_000_000.0).contains(&r) => Ok(Rate::Fixed(r)),
            _ => Err("expected requests per second (1 to 10 000 000) or `auto`".into()),
        }
    }
}

/// The fractions of the closed-loop exchange rate `--rate auto` runs at.
pub const AUTO_FRACTIONS: [f64; 2] = [0.5, 0.8];

/// Answers still outstanding this long after the last intended send time are counted as
/// `TIMEOUT` and the phase ends.
const DRAIN: Duration = Duration::from_secs(30);
/// The schedule thread sleeps at least this long between two releases, as wrk2's 1 ms timer
/// does: at thousands of requests a second, waking it (and a runtime worker) for every request
/// cost the generator two thread wake-ups a request, ~60 µs of CPU per exchange on the two
/// cores it shares with the server. A request waits up to a tick longer to be sent, and its
/// latency, timed from its intended send time, includes that wait.
const TICK: Duration = Duration::from_millis(1);

/// Time given to the connections to open before the first request is due.
const CONNECT_AHEAD: Duration = Duration::from_millis(200);

/// The phases `rate` asks for, as (rate, fraction of `saturation` or `None` for a fixed rate).
pub fn rates(rate: Option<Rate>, saturation: f64) -> Vec<(f64, Option<f64>)> {
    match rate {
        None => vec![],
        Some(Rate::Fixed(r)) => vec![(r, None)],
        Some(Rate::Auto) => AUTO_FRACTIONS
            .iter()
            .map(|&f| ((saturation * f).max(1.0), Some(f)))
            .collect(),
    }
}

/// What one open-loop phase measured.
pub struct OpenOutcome {
    /// The arrival rate asked for.
    pub rate: f64,
    /// The fraction of the closed-loop rate it is (`--rate auto`).
    pub fraction: Option<f64>,
    /// Answers, errors and latency measured from the intended send times; `elapsed` runs
    /// from the first intended send time to the last answer.
    pub outcome: Outcome,
    /// Requests scheduled.
    pub scheduled: u64,
    /// Requests actually sent (the rest were still waiting when the phase ended).
    pub sent: u64,
    /// From the first intended send time to the last actual send.
    pub send_span: Duration,
    /// How late the schedule thread released each request, in microseconds (the generator's
    /// own lag; a connection's wait is not in it).
    pub release_lag: Histogram<u64>,
    /// From the intended send time to the moment the request was handed to its connection,
    /// in microseconds: release lag plus any wait for a free connection.
    pub send_lag: Histogram<u64>,
    /// Most requests in flight at once.
    pub peak_in_flight: usize,
    /// Connections available.
    pub connections: usize,
    /// Where the slow answers were: see [`Stalls`].
    pub stalls: Stalls,
    /// Latency (µs) of the answers to requests due [`SETTLE`] or more after the phase's
    /// start: the phase without its step from idle.
    pub settled: Histogram<u64>,
    /// With `--rounds`, each round's phase at this fraction on its own (one entry without);
    /// the fields above pool them.
    pub rounds: Vec<RoundFigures>,
}

/// One round's open-loop phase at one fraction, on its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundFigures {
    /// The arrival rate asked for.
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Its errors (answers that were not 2xx, and requests never answered or never sent).
    pub errors: u64,
    pub kept_up: bool,
    /// CPU time the hypervisor gave to others during it, ms (see [`Stalls`]).
    pub steal_ms: f64,
}

impl RoundFigures {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({"rate_asked": self.rate, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
                           "p999_ms": self.p999_ms, "errors": self.errors, "kept_up": self.kept_up,
                           "steal_ms": self.steal_ms})
    }
}

/// Issue 18's latency target at `fraction` of the closed-loop rate: the most p99 and p99.9
/// may be, in ms (`None`: no bound).
fn target(fraction: Option<f64>) -> Option<(f64, Option<f64>)> {
    match fraction? {
        f if f <= 0.5 => Some((5.0, Some(15.0))),
        _ => Some((15.0, None)),
    }
}

/// Whether `p99` and `p999` meet `target`.
fn meets(target: (f64, Option<f64>), p99: f64, p999: f64) -> bool {
    p99 <= target.0 && target.1.is_none_or(|t| p999 <= t)
}

impl OpenOutcome {
    /// Requests sent a second.
    pub fn sent_rate(&self) -> f64 {
        self.sent as f64 / self.send_span.as_secs_f64().max(1e-9)
    }

    /// Whether the generator kept to the schedule: nearly every request sent, at the asked
    /// rate, released on time and never short of a connection.
    pub fn kept_up(&self) -> bool {
        self.shortfall().is_empty()
    }

    /// Why the generator did not keep up, for the report (empty when it did).
    pub fn shortfall(&self) -> Vec<String> {
        let mut why = Vec::new();
        if self.peak_in_flight >= self.connections {
            why.push(format!(
                "all {} connections were busy at times (requests waited for one; their \
                 latency includes the wait; raise --connections)",
                self.connections
            ));
        }
        let lag = ms(&self.release_lag, 0.99);
        // A release up to a TICK late is the schedule's own; a millisecond beyond it is not.
        if lag > TICK.as_secs_f64() * 1000.0 + 1.0 {
            why.push(format!(
                "the schedule thread released requests late (p99 {lag:.2} ms): the machine \
                 is short of CPU for the generator"
            ));
        }
        if (self.sent as f64) < self.scheduled as f64 * 0.999 || self.sent_rate() < self.rate * 0.98
        {
            why.push(format!(
                "sent {} of {} requests at {:.0}/s against {:.0}/s asked",
                self.sent,
                self.scheduled,
                self.sent_rate(),
                self.rate
            ));
        }
        why
    }

    /// The median over the rounds of their p99 and p99.9, ms.
    pub fn median_of_rounds(&self) -> (f64, f64) {
        let median =
            |f: fn(&RoundFigures) -> f64| super::median_value(self.rounds.iter().map(f).collect());
        (median(|r| r.p99_ms), median(|r| r.p999_ms))
    }

    /// In how many rounds the phase met its target on its own, with no errors (`None`: no
    /// target).
    pub fn rounds_met(&self) -> Option<usize> {
        let t = target(self.fraction)?;
        Some(
            self.rounds
                .iter()
                .filter(|r| r.errors == 0 && meets(t, r.p99_ms, r.p999_ms))
                .count(),
        )
    }

    /// This phase's figures as one round of a series.
    fn figures(&self) -> RoundFigures {
        let o = &self.outcome;
        RoundFigures {
            rate: self.rate,
            p50_ms: o.ms(0.5),
            p99_ms: o.ms(0.99),
            p999_ms: o.ms(0.999),
            errors: o.errors.values().sum(),
            kept_up: self.kept_up(),
            steal_ms: self.stalls.total_steal().as_secs_f64() * 1000.0,
        }
    }

    /// The phase's name in the report.
    pub fn name(&self) -> String {
        match self.fraction {
            Some(f) => format!("open {:.0}% {:.0}/s", f * 100.0, self.rate),
            None => format!("open {:.0}/s", self.rate),
        }
    }

    /// The report's lines for this phase, below the table.
    pub fn print(&self) {
        let o = &self.outcome;
        let target = match target(self.fraction) {
            Some((p99, Some(p999))) => format!("  (target p99 ≤ {p99} ms, p99.9 ≤ {p999} ms)"),
            Some((p99, None)) => format!("  (target p99 ≤ {p99} ms)"),
            None => String::new(),
        };
        let rounds = self.rounds.len();
        println!(
            "{:<24} {:.0}/s asked{}, {:.0}/s answered ok; p50 {:.2} / p99 {:.2} / p99.9 {:.2} \
             ms from the intended send times{target}",
            format!("{}:", self.name()),
            self.rate,
            if rounds > 1 {
                format!(" (mean of {rounds} rounds; every answer of them pooled)")
            } else {
                String::new()
            },
            o.ok_rate(),
            o.ms(0.5),
            o.ms(0.99),
            o.ms(0.999),
        );
        if rounds > 1 {
            let each: Vec<String> = self
                .rounds
                .iter()
                .map(|r| {
                    format!(
                        "{:.0}/s {:.2}/{:.2} ({:.0} ms)",
                        r.rate, r.p99_ms, r.p999_ms, r.steal_ms
                    )
                })
                .collect();
            let (p99, p999) = self.median_of_rounds();
            let met = match self.rounds_met() {
                Some(n) => format!("; the target met in {n} of {rounds}"),
                None => String::new(),
            };
            println!(
                "{:<24} each round, asked, p99/p99.9 ms (hypervisor steal): {}; median p99 \
                 {p99:.2}, p99.9 {p999:.2}{met}",
                "",
                each.join(", ")
            );
        }
        let why = self.shortfall();
        let lag = |h: &Histogram<u64>| ms(h, 0.99);
        println!(
            "{:<24} {}: sent {:.0}/s, release lag p99 {:.2} ms, send lag p99 {:.2} ms, \
             peak {} in flight of {} connections",
            "",
            if why.is_empty() {
                "generator kept up"
            } else {
                "generator DID NOT keep up"
            },
            self.sent_rate(),
            lag(&self.release_lag),
            lag(&self.send_lag),
            self.peak_in_flight,
            self.connections
        );
        for w in why {
            println!("{:<24} - {w}", "");
        }
        if !self.settled.is_empty() {
            println!(
                "{:<24} without its first {} s (the step from idle; wrk2 leaves out its first \
                 10 s): p99 {:.2} / p99.9 {:.2} ms, {} answers; the target is the figure above",
                "",
                SETTLE.as_secs(),
                ms(&self.settled, 0.99),
                ms(&self.settled, 0.999),
                self.settled.len()
            );
        }
        self.stalls.print();
    }

    /// The generator's side of the phase, for `--json`.
    pub fn json(&self) -> serde_json::Value {
        let (median_p99, median_p999) = self.median_of_rounds();
        serde_json::json!({
            "rate_asked": self.rate,
            "fraction_of_closed_loop": self.fraction,
            "scheduled": self.scheduled,
            "sent": self.sent,
            "sent_per_second": self.sent_rate(),
            "release_lag_p99_ms": ms(&self.release_lag, 0.99),
            "release_lag_max_ms": self.release_lag.max() as f64 / 1000.0,
            "send_lag_p50_ms": ms(&self.send_lag, 0.5),
            "send_lag_p99_ms": ms(&self.send_lag, 0.99),
            "peak_in_flight": self.peak_in_flight,
            "connections": self.connections,
            "kept_up": self.kept_up(),
            "shortfall": self.shortfall(),
            "stalls": self.stalls.json(),
            "settled_after_s": SETTLE.as_secs(),
            "settled_answers": self.settled.len(),
            "settled_p99_ms": ms(&self.settled, 0.99),
            "settled_p999_ms": ms(&self.settled, 0.999),
            "rounds": self.rounds.iter().map(RoundFigures::json).collect::<Vec<_>>(),
            "median_of_rounds_p99_ms": median_p99,
            "median_of_rounds_p999_ms": median_p999,
            "rounds_met": self.rounds_met(),
        })
    }

    /// Folds a later batch of the same phase into this one.
    pub fn merge(&mut self, other: OpenOutcome) {
        self.outcome.merge(other.outcome);
        self.scheduled += other.scheduled;
        self.sent += other.sent;
        self.send_span += other.send_span;
        self.release_lag
            .add(&other.release_lag)
            .expect("same bounds");
        self.send_lag.add(&other.send_lag).expect("same bounds");
        self.peak_in_flight = self.peak_in_flight.max(other.peak_in_flight);
        self.stalls.merge(other.stalls);
        self.settled.add(&other.settled).expect("same bounds");
    }

    /// Pools a later round's phase at the same fraction into this one: its answers join
    /// the pooled figures, its own figures the rounds, and the rate becomes the rounds' mean.
    pub fn merge_round(&mut self, mut other: OpenOutcome) {
        self.rounds.append(&mut other.rounds);
        self.stalls.merge_round(std::mem::take(&mut other.stalls));
        self.merge(other);
        self.rate = self.rounds.iter().map(|r| r.rate).sum::<f64>() / self.rounds.len() as f64;
    }
}

/// An answer slower than this is part of a stall.
const SLOW: Duration = Duration::from_millis(10);
/// The report also gives the latency of the answers due this long after a phase's start or
/// later ([`OpenOutcome::settled`]): a phase starts from an idle server (its proofs are built
/// between phases), and the step to the phase's rate is part of the phase's own figures.
const SETTLE: Duration = Duration::from_secs(1);
/// Slow answers whose intended send times are closer than this belong to one stall.
const STALL_GAP: Duration = Duration::from_millis(20);
/// The schedule thread woke this much later than it asked: a hiccup of the machine (the
/// thread sleeps, so only a CPU it could not get delays it).
const HICCUP: Duration = Duration::from_millis(2);
/// How often the schedule thread reads the machine's stolen time.
const STEAL_EVERY: Duration = Duration::from_millis(100);

/// Where a phase's slow answers were, and what the machine did meanwhile: the schedule
/// thread's late wake-ups (it sleeps on its own OS thread, outside both runtimes: when it
/// wakes late, the machine, not the server, held everything up) and the time the hypervisor
/// gave this machine's CPUs to others (`steal` in `/proc/stat`). A stall the server caused
/// shows neither.
#[derive(Debug, Clone, Default)]
pub struct Stalls {
    /// (intended send time, latency) of every answer slower than [`SLOW`].
    slow: Vec<(Instant, Duration)>,
    /// (when, how late) of every wake-up of the schedule thread later than [`HICCUP`].
    hiccups: Vec<(Instant, Duration)>,
    /// (when, stolen CPU time so far) every [`STEAL_EVERY`].
    steal: Vec<(Instant, Duration)>,
    /// The first intended send time, and the same on the wall clock (to find a stall in a
    /// trace or a log): one for each round pooled ([`OpenOutcome::merge_round`]).
    starts: Vec<(Instant, std::time::SystemTime)>,
}

/// One stall: slow answers whose intended send times are close together.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    /// The round it was in (1 without `--rounds`).
    pub round: usize,
    /// Seconds from its round's first intended send time.
    pub at: f64,
    /// The same, on the wall clock (Unix time, seconds).
    pub at_unix: f64,
    /// From the first to the last slow answer's intended send time, ms.
    pub span_ms: f64,
    pub answers: usize,
    pub worst_ms: f64,
    /// The schedule thread's latest wake-up within the stall (from 100 ms before), ms.
    pub hiccup_ms: f64,
    /// CPU time stolen by the hypervisor around the stall (samples 100 ms apart), ms.
    pub steal_ms: f64,
}

impl Stalls {
    fn merge(&mut self, other: Stalls) {
        self.slow.extend(other.slow);
        self.hiccups.extend(other.hiccups);
        self.steal.extend(other.steal);
        // A phase starts with its first batch.
        if self.starts.is_empty() {
            self.starts = other.starts;
        }
    }

    /// Pools a later round's stalls: the round keeps its own start.
    fn merge_round(&mut self, mut other: Stalls) {
        let starts = std::mem::take(&mut other.starts);
        self.merge(other);
        self.starts.extend(starts);
    }

    /// Stolen CPU time between the last sample at or before `from` and the first at or after
    /// `to`.
    fn steal_between(&self, from: Instant, to: Instant) -> Duration {
        let before = self.steal.iter().rev().find(|(t, _)| *t <= from);
        let after = self.steal.iter().find(|(t, _)| *t >= to);
        match (before, after) {
            (Some((_, a)), Some((_, b))) => b.saturating_sub(*a),
            _ => Duration::ZERO,
        }
    }

    /// The stalls, in order.
    pub fn stalls(&self) -> Vec<Stall> {
        if self.starts.is_empty() {
            return vec![];
        }
        let mut slow = self.slow.clone();
        slow.sort_by_key(|(t, _)| *t);
        let mut groups: Vec<Vec<(Instant, Duration)>> = vec![];
        for s in slow {
            match groups.last_mut() {
                Some(g) if s.0.saturating_duration_since(g[g.len() - 1].0) < STALL_GAP => g.push(s),
                _ => groups.push(vec![s]),
            }
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        groups
            .iter()
            .map(|g| {
                let (first, last) = (g[0].0, g[g.len() - 1].0);
                let worst = g.iter().map(|s| s.1).max().unwrap_or_default();
                let end = last + worst;
                let from = first.checked_sub(STEAL_EVERY).unwrap_or(first);
                // The round it belongs to: the last to start at or before it.
                let round = self.starts.iter().rposition(|s| s.0 <= first).unwrap_or(0);
                let (start, wall) = self.starts[round];
                let wall = wall
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                Stall {
                    round: round + 1,
                    at: first.saturating_duration_since(start).as_secs_f64(),
                    at_unix: (wall + first.saturating_duration_since(start)).as_secs_f64(),
                    span_ms: ms(last - first),
                    answers: g.len(),
                    worst_ms: ms(worst),
                    hiccup_ms: ms(self
                        .hiccups
                        .iter()
                        .filter(|(t, _)| *t >= from && *t <= end)
                        .map(|h| h.1)
                        .max()
                        .unwrap_or_default()),
                    steal_ms: ms(self.steal_between(first, end)),
                }
            })
            .collect()
    }

    /// Stolen CPU time over the phase: its batches and rounds, not the time between them
    /// (samples more than a second apart straddle such a gap).
    fn total_steal(&self) -> Duration {
        self.steal
            .windows(2)
            .filter(|w| w[1].0.saturating_duration_since(w[0].0) <= Duration::from_secs(1))
            .map(|w| w[1].1.saturating_sub(w[0].1))
            .sum()
    }

    /// The report's lines: the stalls with the slowest answers, at most five.
    fn print(&self) {
        let stalls = self.stalls();
        let answers: usize = stalls.iter().map(|s| s.answers).sum();
        let found = match stalls.len() {
            0 => "none".to_owned(),
            n => format!("{n} with {answers} answers"),
        };
        println!(
            "{:<24} stalls (answers over {} ms): {found}; schedule thread late > {} ms {} \
             times; hypervisor steal {:.0} ms over the phase",
            "",
            SLOW.as_millis(),
            HICCUP.as_millis(),
            self.hiccups.len(),
            self.total_steal().as_secs_f64() * 1000.0,
        );
        let mut worst = stalls;
        worst.sort_by(|a, b| b.worst_ms.total_cmp(&a.worst_ms));
        for s in worst.iter().take(5) {
            let round = if self.starts.len() > 1 {
                format!("round {}, ", s.round)
            } else {
                String::new()
            };
            println!(
                "{:<24}   {round}at {:.2} s: {:.0} ms of sends, {} answers, worst {:.1} ms; \
                 schedule thread {:.1} ms late, steal {:.0} ms",
                "", s.at, s.span_ms, s.answers, s.worst_ms, s.hiccup_ms, s.steal_ms
            );
        }
    }

    fn json(&self) -> serde_json::Value {
        let stalls: Vec<_> = self
            .stalls()
            .iter()
            .map(|s| {
                serde_json::json!({
                    "at_s": s.at, "at_unix_s": s.at_unix, "span_ms": s.span_ms, "answers": s.answers,
                    "worst_ms": s.worst_ms, "schedule_late_ms": s.hiccup_ms, "steal_ms": s.steal_ms,
                })
            })
            .collect();
        serde_json::json!({
            "slow_over_ms": SLOW.as_millis() as u64,
            "schedule_late_count": self.hiccups.len(),
            "steal_ms": self.total_steal().as_secs_f64() * 1000.0,
            "stalls": stalls,
        })
    }
}

/// CPU time the hypervisor gave to others, all CPUs together (`steal` in `/proc/stat`);
/// `None` where that is not readable.
fn stolen() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    // user nice system idle iowait irq softirq steal, in clock ticks (100 a second).
    let ticks: u64 = cpu.split_whitespace().nth(7)?.parse().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

/// Shared between the connections of one phase.
struct Schedule {
    /// Released requests not yet taken (one permit each).
    due: Semaphore,
    /// The next request index to take.
    next: AtomicUsize,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    start: Instant,
    /// Nanoseconds between two intended send times.
    interval_ns: f64,
    count: usize,
    /// Past this, nothing more is sent and outstanding answers are abandoned.
    deadline: Instant,
}

impl Schedule {
    /// `count` requests at `rate` a second from `start`; nothing is sent past `deadline`.
    fn new(start: Instant, rate: f64, count: usize, deadline: Instant) -> Schedule {
        Schedule {
            due: Semaphore::new(0),
            next: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            start,
            interval_ns: 1e9 / rate,
            count,
            deadline,
        }
    }

    fn intended(&self, i: usize) -> Instant {
        self.start + Duration::from_nanos((i as f64 * self.interval_ns) as u64)
    }
}

/// One open-loop phase of `secs` seconds at `rate`, in batches of at most
/// [`MAX_BATCH_SECS`](super::MAX_BATCH_SECS) (a batch's proofs expire); `batch(n)` builds the
/// requests of a batch of `n`.
pub async fn phase(
    t: &Target,
    connections: usize,
    rate: f64,
    secs: u64,
    batch: impl Fn(usize) -> Arc<MakeRequest>,
) -> OpenOutcome {
    let mut total: Option<OpenOutcome> = None;
    // Shorter batches above the rate whose batch would hold more than MAX_PROOFS.
    let most = ((super::MAX_PROOFS as f64 / rate) as u64).clamp(1, super::MAX_BATCH_SECS);
    let mut left = secs.max(1);
    while left > 0 {
        let secs = left.min(most);
        left -= secs;
        let n = (rate * secs as f64).ceil() as usize;
        eprintln!("open loop: building {n} proofs for {rate:.0}/s over {secs} s…");
        let make = batch(n);
        eprintln!("open loop: {rate:.0} exchanges/s for {secs} s…");
        // On a runtime of its own, one thread: see `wire`.
        let (addr, pid) = (t.addr, t.pid);
        let driver = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the open loop");
            let secs = Duration::from_secs(secs);
            rt.block_on(drive_at_rate(addr, connections, rate, secs, make, pid))
        });
        let o = tokio::task::spawn_blocking(move || driver.join())
            .await
            .ok()
            .and_then(Result::ok)
            .expect("the open loop's driver thread ran");
        match &mut total {
            Some(t) => t.merge(o),
            None => total = Some(o),
        }
    }
    let mut total = total.expect("at least one batch ran");
    total.rounds = vec![total.figures()];
    total
}

/// Sends `make(0)`, `make(1)`, … `make(count - 1)` at `rate` a second over `connections`
/// connections to `addr`; `count` is `rate × duration`.
async fn drive_at_rate(
    addr: SocketAddr,
    connections: usize,
    rate: f64,
    duration: Duration,
    make: Arc<MakeRequest>,
    pid: Option<u32>,
) -> OpenOutcome {
    let count = ((rate * duration.as_secs_f64()).round() as usize).max(1);
    let start = Instant::now() + CONNECT_AHEAD;
    let wall_start = std::time::SystemTime::now() + CONNECT_AHEAD;
    let s = Arc::new(Schedule::new(start, rate, count, start + duration + DRAIN));
    let cpu = super::target::CpuMark::now(pid);
    let tasks: Vec<_> = (0..connections)
        .map(|_| tokio::spawn(connection(addr, s.clone(), make.clone())))
        .collect();
    let releaser = {
        let s = s.clone();
        std::thread::spawn(move || release(&s, connections))
    };
    let mut total = Outcome::empty();
    let mut send_lag = histogram();
    let mut settled = histogram();
    let mut sent = 0u64;
    let mut last_send = start;
    let mut slow = vec![];
    for t in tasks {
        if let Ok(c) = t.await {
            total.merge(c.outcome);
            send_lag.add(&c.send_lag).expect("same bounds");
            settled.add(&c.settled).expect("same bounds");
            slow.extend(c.slow);
            sent += c.sent;
            last_send = last_send.max(c.last_send);
        }
    }
    let released = releaser.join().unwrap_or_else(|_| Released {
        lag: histogram(),
        hiccups: vec![],
        steal: vec![],
    });
    total.elapsed = Instant::now().saturating_duration_since(start);
    total.set_cpu(cpu, pid);
    let unsent = count as u64 - sent.min(count as u64);
    if unsent > 0 {
        *total.errors.entry("UNSENT".into()).or_default() += unsent;
    }
    OpenOutcome {
        rate,
        fraction: None,
        outcome: total,
        scheduled: count as u64,
        sent,
        send_span: last_send.saturating_duration_since(start),
        release_lag: released.lag,
        send_lag,
        peak_in_flight: s.peak_in_flight.load(Ordering::Relaxed),
        connections,
        settled,
        rounds: vec![],
        stalls: Stalls {
            slow,
            hiccups: released.hiccups,
            steal: released.steal,
            starts: vec![(start, wall_start)],
        },
    }
}

/// What the schedule thread saw: how late it released each request (µs), and the machine's
/// hiccups and stolen time ([`Stalls`]).
struct Released {
    lag: Histogram<u64>,
    hiccups: Vec<(Instant, Duration)>,
    steal: Vec<(Instant, Duration)>,
}

/// The schedule thread: releases each request at its intended time, or up to a [`TICK`] later
/// (every request already due at once when it wakes), then one permit per connection to let
/// them all stop.
fn release(s: &Schedule, connections: usize) -> Released {
    let mut r = Released {
        lag: histogram(),
        hiccups: vec![],
        steal: vec![],
    };
    let mut released = 0;
    let mut next_steal = Instant::now();
    while released < s.count {
        let now = Instant::now();
        if now >= next_steal {
            r.steal.extend(stolen().map(|d| (now, d)));
            next_steal = now + STEAL_EVERY;
        }
        if now > s.deadline {
            break;
        }
        let due = s.intended(released);
        if due > now {
            // At most one wake-up a TICK, however high the rate: see TICK.
            let asked = now + (due - now).max(TICK);
            std::thread::sleep(asked - now);
            let late = Instant::now().saturating_duration_since(asked);
            if late > HICCUP {
                r.hiccups.push((asked, late));
            }
            continue;
        }
        let mut n = 0;
        while released < s.count && s.intended(released) <= now {
            let late = now.saturating_duration_since(s.intended(released));
            let _ = r.lag.record(late.as_micros().max(1) as u64);
            released += 1;
            n += 1;
        }
        s.due.add_permits(n);
    }
    r.steal.extend(stolen().map(|d| (Instant::now(), d)));
    // Requests past `count` make the connections stop.
    s.due.add_permits(connections);
    r
}

struct Connection {
    outcome: Outcome,
    send_lag: Histogram<u64>,
    /// See [`OpenOutcome::settled`].
    settled: Histogram<u64>,
    /// (intended send time, latency) of the answers slower than [`SLOW`].
    slow: Vec<(Instant, Duration)>,
    sent: u64,
    last_send: Instant,
}

/// One connection: takes the next released request when free, sends it, times it from its
/// intended send time.
async fn connection(addr: SocketAddr, s: Arc<Schedule>, make: Arc<MakeRequest>) -> Connection {
    let mut c = Connection {
        outcome: Outcome::empty(),
        send_lag: histogram(),
        settled: histogram(),
        slow: vec![],
        sent: 0,
        last_send: s.start,
    };
    let mut sender: Option<Wire> = Wire::connect(addr).await.ok();
    loop {
        let Ok(permit) = s.due.acquire().await else {
            break;
        };
        permit.forget();
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= s.count || Instant::now() > s.deadline {
            break;
        }
        let intended = s.intended(i);
        let Some(req) = make(i) else {
            break;
        };
        let x = match &mut sender {
            Some(x) => x,
            None => match Wire::connect(addr).await {
                Ok(x) => sender.insert(x),
                Err(_) => {
                    // Counted as answered with an error: it was sent as far as the schedule
                    // goes, and the next free connection takes the next request.
                    c.sent += 1;
                    *c.outcome.errors.entry("IO".into()).or_default() += 1;
                    continue;
                }
            },
        };
        let now = Instant::now();
        let _ = c
            .send_lag
            .record(now.saturating_duration_since(intended).as_micros().max(1) as u64);
        c.sent += 1;
        c.last_send = c.last_send.max(now);
        let flying = s.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        s.peak_in_flight.fetch_max(flying, Ordering::Relaxed);
        let answer = tokio::time::timeout_at(s.deadline.into(), x.exchange(req)).await;
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        let took = Instant::now().saturating_duration_since(intended);
        if took > SLOW {
            c.slow.push((intended, took));
        }
        let micros = took.as_micros().max(1) as u64;
        match answer {
            Ok(Ok((status, body))) => {
                c.outcome.done += 1;
                let _ = c.outcome.latency.record(micros);
                if intended >= s.start + SETTLE {
                    let _ = c.settled.record(micros);
                }
                if status.is_success() {
                    c.outcome.ok += 1;
                } else {
                    *c.outcome
                        .errors
                        .entry(error_code(status, &body))
                        .or_default() += 1;
                }
            }
            Ok(Err(_)) => {
                *c.outcome.errors.entry("IO".into()).or_default() += 1;
                sender = None;
            }
            Err(_) => {
                *c.outcome.errors.entry("TIMEOUT".into()).or_default() += 1;
                break;
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_parses_auto_and_numbers_only() {
        assert_eq!("auto".parse::<Rate>(), Ok(Rate::Auto));
        assert_eq!("2500".parse::<Rate>(), Ok(Rate::Fixed(2500.0)));
        assert_eq!("12.5".parse::<Rate>(), Ok(Rate::Fixed(12.5)));
        for bad in ["", "0", "-5", "0.5", "nan", "inf", "fast"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn auto_runs_at_half_and_four_fifths_of_saturation() {
        assert_eq!(
            rates(Some(Rate::Auto), 10_000.0),
            vec![(5_000.0, Some(0.5)), (8_000.0, Some(0.8))]
        );
        assert_eq!(
            rates(Some(Rate::Fixed(300.0)), 10_000.0),
            vec![(300.0, None)]
        );
        assert!(rates(None, 10_000.0).is_empty());
    }

    /// The schedule thread releases every request once, then one permit per connection to stop
    /// them; it releases them in ticks, not one wake-up a request.
    #[test]
    fn the_schedule_releases_every_request_once_in_ticks() {
        let count = 400;
        let start = Instant::now() + Duration::from_millis(5);
        let s = Schedule::new(start, 20_000.0, count, start + Duration::from_secs(30));
        let lag = release(&s, 3).lag;
        assert_eq!(lag.len(), count as u64, "one release lag per request");
        assert_eq!(s.due.available_permits(), count + 3);
        // 400 requests over 20 ms, in ticks of 1 ms: a request waits for the next tick, half
        // a millisecond in the middle (released one by one, a request waited tens of µs).
        assert!(
            lag.value_at_quantile(0.5) >= 200,
            "median release lag {} µs: released one by one, not in ticks",
            lag.value_at_quantile(0.5)
        );
    }

    /// Slow answers close together make one stall; the schedule thread's hiccups and the
    /// stolen time are charged to the stall they fall in, not to the others.
    #[test]
    fn slow_answers_close_together_make_one_stall() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let d = Duration::from_millis;
        let s = Stalls {
            // One stall at 1.000-1.015 s, another at 3.000 s.
            slow: vec![
                (at(1_010), d(30)),
                (at(3_000), d(12)),
                (at(1_000), d(25)),
                (at(1_015), d(18)),
            ],
            hiccups: vec![(at(1_005), d(22)), (at(2_000), d(9))],
            steal: (0..40u64)
                .map(|i| (at(i * 100), d(if i > 10 { 40 } else { 0 })))
                .collect(),
            starts: vec![(t0, std::time::UNIX_EPOCH)],
        };
        let stalls = s.stalls();
        assert_eq!(stalls.len(), 2, "{stalls:?}");
        let (a, b) = (&stalls[0], &stalls[1]);
        assert_eq!((a.answers, b.answers), (3, 1));
        assert!((a.at - 1.0).abs() < 1e-9 && (b.at - 3.0).abs() < 1e-9);
        assert!((a.span_ms - 15.0).abs() < 1e-6 && (a.worst_ms - 30.0).abs() < 1e-6);
        assert!(
            (a.hiccup_ms - 22.0).abs() < 1e-6,
            "the hiccup at 1.005 s is the first's"
        );
        assert_eq!(b.hiccup_ms, 0.0, "the hiccup at 2 s is neither's");
        assert!(
            (a.steal_ms - 40.0).abs() < 1e-6,
            "40 ms stolen between 1.0 and 1.1 s"
        );
        assert_eq!(b.steal_ms, 0.0);
        assert_eq!(s.total_steal(), d(40));
    }

    /// Pooled rounds: a stall is placed in its own round, timed from that round's start, and
    /// the time stolen between two rounds is not the phase's.
    #[test]
    fn a_stall_is_timed_from_its_own_rounds_start() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let d = Duration::from_millis;
        let wall = std::time::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut first = Stalls {
            slow: vec![(at(500), d(11))],
            steal: vec![(at(0), d(0)), (at(100), d(10)), (at(200), d(10))],
            starts: vec![(t0, wall)],
            ..Stalls::default()
        };
        // The second round starts 20 s later; 500 ms were stolen in between.
        let second = Stalls {
            slow: vec![(at(20_250), d(13))],
            steal: vec![(at(20_000), d(510)), (at(20_100), d(530))],
            starts: vec![(at(20_000), wall + d(20_000))],
            ..Stalls::default()
        };
        first.merge_round(second);
        let stalls = first.stalls();
        assert_eq!(stalls.len(), 2, "{stalls:?}");
        assert_eq!((stalls[0].round, stalls[1].round), (1, 2));
        assert!((stalls[0].at - 0.5).abs() < 1e-9);
        assert!((stalls[1].at - 0.25).abs() < 1e-9, "{}", stalls[1].at);
        assert!((stalls[1].at_unix - 1_020.25).abs() < 1e-6);
        assert_eq!(
            first.total_steal(),
            d(30),
            "10 + 20 ms, not the 500 between"
        );
    }

    #[test]
    fn each_fraction_has_its_target_and_rounds_count_against_it() {
        assert_eq!(target(Some(0.5)), Some((5.0, Some(15.0))));
        assert_eq!(target(Some(0.8)), Some((15.0, None)));
        assert_eq!(target(None), None);
        let t = target(Some(0.5)).unwrap();
        assert!(meets(t, 5.0, 15.0));
        assert!(!meets(t, 5.1, 6.0), "p99 over");
        assert!(!meets(t, 3.0, 15.1), "p99.9 over");
        assert!(
            meets(target(Some(0.8)).unwrap(), 14.9, 90.0),
            "no p99.9 bound at 80 %"
        );
    }
}
