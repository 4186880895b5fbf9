//! A smoke test of the load generator, so that it cannot rot: every phase of one tiny run
//! against a server in this process reports answers and no errors. Not a timing test: how
//! fast anything is gets measured by `keybound bench` itself (docs/benchmarks.md).

use std::sync::Arc;

use clap::Parser;

use super::devices::SimDevice;
use super::load::Outcome;
use super::target::Target;
use crate::args::BenchArgs;

/// The bench's options, parsed as its binary would.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn args(extra: &[&str]) -> BenchArgs {
    let base = [
        "keybound-bench",
        "--duration",
        "1",
        "--connections",
        "4",
        "--devices",
        "8",
        "--keys",
        "2",
        "--seed-keys",
        "3",
    ];
    Cli::parse_from(base.iter().chain(extra)).bench
}

fn assert_clean(name: &str, o: &Outcome) {
    assert!(o.ok > 0, "{name}: no successful answer");
    assert_eq!(o.ok, o.done, "{name}: {:?}", o.errors);
    assert!(o.errors.is_empty(), "{name}: errors {:?}", o.errors);
    assert!(o.ok_rate() > 0.0, "{name}: no rate");
    assert!(o.ms(0.99) > 0.0, "{name}: no latency recorded");
    assert!(o.cpu_us().is_some(), "{name}: no server CPU reading");
}

/// One run with `args` against a server in this process, as `keybound bench` makes it.
async fn run(args: &BenchArgs) -> super::Report {
    let devices: Arc<Vec<SimDevice>> = Arc::new(
        (0..args.devices)
            .map(|i| SimDevice::new(i, i % args.keys))
            .collect(),
    );
    let target = Target::start(args, None, &devices).await.expect("server");
    let report = super::measure(args, &target, devices).await;
    target.stop().await;
    report.expect("the run completes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_phase_of_a_short_run_answers_without_errors() {
    let args = args(&["--rate", "auto"]);
    let report = run(&args).await;

    assert_eq!(
        report.warmup.ok, 8,
        "one exchange per device: {:?}",
        report.warmup.errors
    );
    for (name, o) in [
        ("healthz", report.healthz.as_ref()),
        ("sign-only", report.sign.as_ref()),
        ("verify-sign", report.verify_sign.as_ref()),
        ("exchange", Some(&report.exchange)),
        ("refresh", report.refresh.as_ref()),
    ] {
        assert_clean(name, o.unwrap_or_else(|| panic!("{name}: phase missing")));
    }
    assert_eq!(
        report.open_loop.len(),
        2,
        "--rate auto runs at 50 % and 80 %"
    );
    for (o, f) in report.open_loop.iter().zip([0.5, 0.8]) {
        assert_eq!(o.fraction, Some(f));
        assert!(
            o.rate >= 1.0 && o.scheduled > 0 && o.sent > 0,
            "{}",
            o.name()
        );
        assert_clean(&o.name(), &o.outcome);
    }
    let json = report.json(&args, None);
    for ratio in ["exchange_over_sign_only", "refresh_over_sign_only"] {
        assert!(
            json[ratio].as_f64().unwrap_or(0.0) > 0.0,
            "{ratio}: {}",
            json[ratio]
        );
    }
    assert_eq!(json["open_loop"].as_array().map(Vec::len), Some(2));
    // In process, server and generator are one process: one CPU figure, the server's.
    assert!(json["exchange"]["server_cpu_us_per_request"].is_f64());
    assert!(json["exchange"]["generator_cpu_us_per_request"].is_null());
    assert!(json["server_cpu_sign_only_over_exchange"].is_f64());
}

#[test]
fn cpu_marks_split_server_and_generator_only_across_processes() {
    use super::target::CpuMark;
    let own = Some(std::process::id());
    let (server, generator) = CpuMark::now(own).since(own);
    assert!(
        server.is_some() && generator.is_none(),
        "in process: one figure"
    );

    // A child that spins (a shell loop of builtins: its own CPU, no subprocesses) stands for
    // a spawned server. CPU time counts in 10 ms ticks, so the reading is repeated, for up to
    // 10 s on a loaded machine, until the child has been charged one.
    let mut child = std::process::Command::new("sh")
        .args(["-c", "while :; do :; done"])
        .spawn()
        .expect("sh");
    let pid = Some(child.id());
    let mark = CpuMark::now(pid);
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (server, generator) = loop {
        let spun = std::time::Instant::now() + std::time::Duration::from_millis(100);
        while std::time::Instant::now() < spun {
            std::hint::spin_loop();
        }
        let (server, generator) = mark.since(pid);
        let charged = server.is_some_and(|s| s > 0.0) && generator.is_some_and(|g| g > 0.0);
        if charged || std::time::Instant::now() > give_up {
            break (server, generator);
        }
    };
    child.kill().expect("the spinning child stops");
    child.wait().expect("child ends");
    assert!(
        server.is_some_and(|s| s > 0.0),
        "the child's CPU: {server:?}"
    );
    assert!(
        generator.is_some_and(|g| g > 0.0),
        "this process spun too: {generator:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_rate_phase_sends_its_schedule() {
    let mut args = args(&["--rate", "50", "--no-ceiling", "--no-refresh"]);
    args.duration = 2;
    let report = run(&args).await;

    assert!(report.healthz.is_none() && report.refresh.is_none());
    let [o] = &report.open_loop[..] else {
        panic!("one open-loop phase");
    };
    assert_eq!((o.rate, o.fraction, o.scheduled), (50.0, None, 100));
    assert_eq!(o.sent, 100, "every scheduled request is sent");
    assert_clean(&o.name(), &o.outcome);
    // Requests 50..100 are due from the phase's second second on.
    assert_eq!(o.settled.len(), 50, "the answers after the first second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_rounds_pool_their_answers_and_keep_their_own_figures() {
    let mut args = args(&[
        "--rounds",
        "2",
        "--rate",
        "50",
        "--no-ceiling",
        "--no-refresh",
    ]);
    args.duration = 2;
    let report = run(&args).await;

    let [o] = &report.open_loop[..] else {
        panic!("one open-loop phase, pooled over the rounds");
    };
    assert_eq!(o.rounds.len(), 2, "one entry a round");
    assert_eq!((o.rate, o.scheduled, o.sent), (50.0, 200, 200));
    assert_clean(&o.name(), &o.outcome);
    assert_eq!(o.outcome.done, 200, "both rounds' answers are pooled");
    // Each round's second second, counted from that round's own start.
    assert_eq!(o.settled.len(), 100);
    for r in &o.rounds {
        assert_eq!((r.rate, r.errors), (50.0, 0));
        assert!(r.p50_ms > 0.0 && r.p99_ms >= r.p50_ms && r.p999_ms >= r.p99_ms);
    }
    assert_eq!(o.rounds_met(), None, "a fixed rate has no target");
    let json = report.json(&args, None);
    let g = &json["open_loop"][0]["generator"];
    assert_eq!(g["rounds"].as_array().map(Vec::len), Some(2));
    assert!(g["rounds"][1]["steal_ms"].is_f64(), "{}", g["rounds"][1]);
    let mut p99: Vec<f64> = o.rounds.iter().map(|r| r.p99_ms).collect();
    p99.sort_by(f64::total_cmp);
    assert_eq!(
        g["median_of_rounds_p99_ms"].as_f64(),
        Some((p99[0] + p99[1]) / 2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_rounds_report_each_rounds_ratios_and_their_median() {
    let args = args(&["--rounds", "3"]);
    let report = run(&args).await;

    assert_eq!(report.rounds.len(), 3);
    for (i, r) in report.rounds.iter().enumerate() {
        for (name, v) in [
            ("exchange / sign-only", r.exchange_over_sign_only),
            ("exchange / verify-sign", r.exchange_over_verify_sign),
            ("refresh / sign-only", r.refresh_over_sign_only),
        ] {
            assert!(v.is_some_and(|v| v > 0.0), "round {i}: {name} {v:?}");
        }
    }
    // The phases pool every round's answers; /healthz runs once.
    for (name, o) in [
        ("sign-only", report.sign.as_ref()),
        ("exchange", Some(&report.exchange)),
        ("refresh", report.refresh.as_ref()),
    ] {
        let o = o.unwrap_or_else(|| panic!("{name}: phase missing"));
        assert_clean(name, o);
        assert!(o.elapsed.as_secs_f64() >= 2.5, "{name}: {:?}", o.elapsed);
    }
    assert!(report.healthz.as_ref().unwrap().elapsed.as_secs_f64() < 2.5);
    let json = report.json(&args, None);
    assert_eq!(json["rounds"].as_array().map(Vec::len), Some(3));
    let mut values: Vec<f64> = report
        .rounds
        .iter()
        .map(|r| r.exchange_over_sign_only.unwrap())
        .collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(
        json["median_of_rounds"]["exchange_over_sign_only"].as_f64(),
        Some(values[1])
    );
}
