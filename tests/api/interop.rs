//! Interoperability with a stock OAuth client nobody here wrote (contract 9.1): panva's
//! `openid-client` discovers keybound through its RFC 8414 metadata, exchanges an API key with
//! DPoP (RFC 8693), refreshes (RFC 6749), retries its own nonce challenges, and `jose` verifies
//! the access tokens from the JWKS. The client is `tests/interop/run.mjs`, with its own
//! `package.json` and lock file.
//!
//! Needs `node` (20 or later) and `npm`: skipped without them, except under `CI=true`, where
//! a missing Node fails the run rather than hide it. The packages are installed with `npm ci`
//! when `tests/interop/node_modules` lacks them (that needs the npm registry once).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::{TestDb, spawn_app_args};
use crate::token::new_key;

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop")
}

/// Whether Node is here; under `CI=true` its absence is a failure.
fn node_available() -> bool {
    let found = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "node is required under CI=true for the openid-client interop test"
        );
        eprintln!("skipped: node is not installed (the openid-client interop test needs it)");
    }
    found
}

/// `npm ci` in tests/interop unless the locked packages are already installed.
fn install_packages() {
    let dir = interop_dir();
    let installed = ["openid-client", "jose"].iter().all(|p| {
        dir.join("node_modules")
            .join(p)
            .join("package.json")
            .exists()
    });
    if installed {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run npm (needed to install openid-client and jose): {e}")
        });
    assert!(
        out.status.success(),
        "`npm ci` in tests/interop failed (is the npm registry reachable?):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the client against `issuer` with `key`, returning its one-line report.
async fn run_client(issuer: &str, key: &str, alg: &str) -> Value {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("run.mjs")
        .current_dir(interop_dir())
        .env("KEYBOUND_ISSUER", issuer)
        .env("KEYBOUND_API_KEY", key)
        .env("KEYBOUND_SCOPE", "read:users")
        .env("KEYBOUND_DPOP_ALG", alg)
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("the client finishes within a minute")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openid-client ({alg}) failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("report is not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_client_obtains_and_refreshes_tokens() {
    if !node_available() {
        return;
    }
    install_packages();
    for require_nonce in [false, true] {
        let db = TestDb::sqlite().await;
        let app = spawn_app_args(&db, |args| args.require_dpop_nonce = require_nonce).await;
        let (key, key_id) = new_key(&app, json!({"trust_on_enroll": true})).await;
        // ES256 is openid-client's default DPoP key; EdDSA is keybound's own algorithm.
        for alg in ["ES256", "EdDSA"] {
            let report = run_client(&app.url(""), &key, alg).await;
            let why = format!("{alg}, nonce required: {require_nonce}: {report}");
            for step in ["exchange", "refresh"] {
                assert_eq!(report[step]["sub"], key_id, "{why}");
                assert_eq!(report[step]["scope"], "read:users", "{why}");
                assert_eq!(report[step]["expires_in"], 300, "{why}");
            }
            // What the token endpoint answered: with nonces required, the library met the
            // RFC 9449 challenge once and retried by itself; the refresh then used the nonce
            // the exchange's success handed out.
            let want = if require_nonce {
                json!([400, 200, 200])
            } else {
                json!([200, 200])
            };
            assert_eq!(report["statuses"], want, "{why}");
        }
    }
}
