//! `keybound lab`: attacks keybound's own defenses and measures how well they hold (issue 6).
//! The `keybound-lab` binary; `keybound lab …` runs it with the same arguments.
//!
//! The lab starts keybound in-process on a fresh SQLite database (or targets a running
//! server on a loopback address with `--url` and `--admin-token`), runs the scenarios below,
//! prints a table and, with `--report FILE.md`, writes it as Markdown. Nothing here is on the
//! request path: the lab is a client of the server like any other, plus, where a scenario
//! needs it, a reader of the server's logs, memory or database.
//!
//! | file | scenarios |
//! |---|---|
//! | [`leaks`] | A source leak, B log leak, C memory dump |
//! | [`tokens`] | D sniffed token, E malicious proxy, J replay |
//! | [`keyspace`] | F reverse engineering, I guessing by learning, K checksum |
//! | [`timing`] | G timing side channel |
//! | [`insider`] | H insider |
//! | [`abuse`] | L rate limiting |
//! | [`attested`] | M attested devices (a leaked key against attestation and the enrollment budget) |
//! | [`population`] | P the population study (false limits and denials, clone detection) |
//!
//! Each scenario returns a typed result (what the integration tests assert on) that renders
//! itself as a report [`Section`].

pub mod abuse;
pub mod args;
pub mod attested;
pub mod insider;
pub mod keyspace;
pub mod leaks;
pub mod population;
pub mod report;
pub mod stats;
pub mod target;
pub mod timing;
pub mod tokens;

use std::path::PathBuf;
use std::process::ExitCode;

pub use report::{Finding, Outcome, Report, Section};
pub use target::{LabDevice, Reply, SpawnedServer, Target};

use crate::args::LabArgs;
use keybound::error::{Error, Result};

/// Every scenario letter, in report order.
pub const SCENARIOS: &[&str] = &[
    "A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L", "M", "P",
];

/// Runs the lab as `keybound lab` does: exit 0 when every scenario held, 1 when one did not.
/// `binary` is the `keybound` executable scenarios B, C and H spawn (skipped without).
pub async fn run(args: LabArgs, binary: Option<PathBuf>) -> Result<ExitCode> {
    let report = run_scenarios(&args, binary).await?;
    print!("{}", report.to_text());
    if let Some(path) = &args.report {
        std::fs::write(path, report.to_markdown())
            .map_err(|e| Error::internal(format!("cannot write {}: {e}", path.display())))?;
        println!("\nreport written to {}", path.display());
    }
    let failed: Vec<&str> = report
        .sections
        .iter()
        .filter(|s| !s.holds)
        .map(|s| s.title.as_str())
        .collect();
    if failed.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("defenses that did not hold: {}", failed.join(", "));
        Ok(ExitCode::from(1))
    }
}

/// Runs the selected scenarios. `binary` is the `keybound` executable for the scenarios that
/// need a server process of their own (B, C, and the CLI half of H); they are skipped without.
pub async fn run_scenarios(args: &LabArgs, binary: Option<PathBuf>) -> Result<Report> {
    let wanted =
        |s: &str| args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(s));
    let needs_target = ["A", "D", "E", "G", "H", "J", "K", "L"]
        .iter()
        .any(|s| wanted(s));
    let target = match (&args.url, needs_target) {
        (_, false) => None,
        (Some(url), true) => {
            let token = args
                .admin_token
                .clone()
                .ok_or_else(|| Error::InvalidRequest("--url needs --admin-token".into()))?;
            Some(Target::remote(url, token).await?)
        }
        (None, true) => Some(Target::in_process().await?),
    };
    let mut report = Report {
        header: vec![
            format!(
                "target: {}",
                match (&args.url, &target) {
                    (Some(u), _) => format!("{u} (running server)"),
                    (None, Some(t)) => format!(
                        "keybound {} in-process at {} on a fresh SQLite database",
                        env!("CARGO_PKG_VERSION"),
                        t.base()
                    ),
                    (None, None) => "none needed (offline scenarios only)".into(),
                }
            ),
            format!(
                "machine: {} CPUs, {}; run at unix time {}",
                std::thread::available_parallelism().map_or(0, |n| n.get()),
                std::env::consts::OS,
                keybound::state::now()
            ),
            format!(
                "sizes: C {} exchanges; G {} HTTP samples and {} comparison batches per class; F {} verifications; I {} keys; K {} keys; P {} devices × {} days ({:.0} % attested), {} clones per attacker kind, seed {}",
                args.exchanges,
                args.timing_samples,
                args.compare_samples,
                args.verify_iterations,
                args.keys,
                args.typo_keys,
                args.devices,
                args.days,
                args.attested_share * 100.0,
                args.clones,
                args.seed
            ),
        ],
        sections: Vec::new(),
    };
    let skipped = |title: &str, why: &str| {
        let mut s = Section::new(title);
        s.row("—", "—", Outcome::Skipped, why);
        s
    };
    for letter in SCENARIOS.iter().copied().filter(|s| wanted(s)) {
        eprintln!("lab: running scenario {letter}");
        let section = match (letter, &target, &binary) {
            ("A", Some(t), _) => leaks::source_leak(t).await?.section(),
            ("B", _, Some(bin)) => leaks::log_leak(bin).await?.section(),
            ("B", _, None) => skip_binary(&skipped, "B log leak"),
            ("C", _, Some(bin)) => leaks::memory_dump(bin, args.exchanges).await?.section(),
            ("C", _, None) => skip_binary(&skipped, "C memory dump"),
            ("D", Some(t), _) => tokens::sniffed_token(t).await?.section(),
            ("E", Some(t), _) => tokens::malicious_proxy(t).await?.section(),
            ("F", _, _) => keyspace::reverse_engineering(args.verify_iterations).section(),
            ("G", Some(t), _) => timing::timing(t, args.timing_samples, args.compare_samples)
                .await?
                .section(),
            ("H", Some(t), bin) => insider::insider(t, bin.as_deref()).await?.section(),
            ("I", _, _) => keyspace::learning(args.keys).section(),
            ("J", Some(t), _) => tokens::replay(t).await?.section(),
            ("K", t, _) => keyspace::checksum(args.typo_keys, t.as_ref())
                .await?
                .section(),
            ("L", Some(t), _) => abuse::rate_limits(t).await?.section(),
            // Needs a server configured with the lab's attestation root: always its own.
            ("M", _, _) if args.url.is_none() => attested::attested().await?.section(),
            ("M", _, _) => skipped(
                "M attested devices",
                "needs an in-process server (it configures a lab attestation root)",
            ),
            ("P", _, _) => population::study(&population::Params {
                devices: args.devices,
                days: args.days,
                clones: args.clones,
                seed: args.seed,
                attested_share: args.attested_share,
            })
            .section(),
            (other, _, _) => skipped(other, "no target"),
        };
        report.sections.push(section);
    }
    if let Some(t) = target {
        t.stop().await;
    }
    Ok(report)
}

fn skip_binary(skipped: &impl Fn(&str, &str) -> Section, title: &str) -> Section {
    skipped(
        title,
        "needs the keybound binary (next to keybound-lab, or --keybound-binary)",
    )
}
