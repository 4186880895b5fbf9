//! The load generator's server: its ceiling routes and switches do what `keybound bench`
//! relies on, exist only in the server this crate starts (never in `keybound serve`), and that
//! server only runs on loopback and never as `--profile prod`. Moved from the server's
//! tests/api/abuse.rs, where they ran against `keybound serve --bench-routes` (issue 16).

use std::sync::Arc;

use keybound::config::{Profile, ServeArgs};
use keybound::server::Running;
use keybound::store::Store;
use keybound_sdk::{DpopProofBuilder, Ed25519DeviceKey};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

#[path = "../../lab/tests/support/keybound_binary.rs"]
mod keybound_binary;

const ADMIN_TOKEN: &str = "bench-test-admin-token-0123456789abcdef";

/// A server on a fresh SQLite database: the bench's own (`bench: true`, with the ceiling
/// routes) or a plain `keybound serve` one.
struct App {
    running: Option<Running>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
    let url = format!("sqlite://{}", dir.path().join("keybound.db").display());
    keybound::store::open(&url).await.expect("store opens")
}

fn args() -> ServeArgs {
    let mut args = ServeArgs::for_tests();
    args.admin_token = Some(SecretString::from(ADMIN_TOKEN));
    args
}

async fn spawn(bench: bool) -> App {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let running = if bench {
        keybound_bench::server::start(args(), store).await
    } else {
        keybound::server::start(args(), store).await
    }
    .expect("server starts");
    App {
        running: Some(running),
        client: reqwest::Client::new(),
        _dir: dir,
    }
}

impl App {
    fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running().addr)
    }

    async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// A key with `extra` over the defaults; its plaintext and id.
    async fn new_key(&self, extra: Value) -> (String, String) {
        let mut body = json!({"name": "bench test", "scopes": ["read:users"], "env": "test"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let created = expect_json(
            self.client
                .post(self.url("/admin/v1/keys"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap(),
            StatusCode::CREATED,
        )
        .await;
        (
            created["key"].as_str().unwrap().to_owned(),
            created["key_id"].as_str().unwrap().to_owned(),
        )
    }

    async fn exchange(&self, key: &str, dev: &Ed25519DeviceKey) -> reqwest::Response {
        let url = self.url("/v1/token");
        self.client
            .post(&url)
            .header("X-API-Key", key)
            .header("DPoP", proof(dev, &url))
            .json(&json!({}))
            .send()
            .await
            .unwrap()
    }

    async fn refresh(&self, dev: &Ed25519DeviceKey, token: &str) -> reqwest::Response {
        let url = self.url("/v1/token/refresh");
        self.client
            .post(&url)
            .header("DPoP", proof(dev, &url))
            .json(&json!({"refresh_token": token}))
            .send()
            .await
            .unwrap()
    }

    async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(&format!("/admin/v1{path}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
    }

    /// `PUT /bench/switches` with `body`, which must be accepted.
    async fn set_switches(&self, body: Value) {
        let res = self
            .client
            .put(self.url("/bench/switches"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
}

fn proof(dev: &Ed25519DeviceKey, url: &str) -> String {
    DpopProofBuilder::new(dev, "POST", url)
        .sign()
        .expect("an in-memory key signs")
}

async fn expect_json(res: reqwest::Response, status: StatusCode) -> Value {
    let got = res.status();
    let text = res.text().await.unwrap();
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn expect_error(res: reqwest::Response, status: StatusCode, code: &str, why: &str) {
    let body = expect_json(res, status).await;
    assert_eq!(body["error"]["code"], code, "{why}: {body}");
}

/// `keybound bench --overhead` measures rate limiting and usage tracking by turning them off
/// through `PUT /bench/switches`; the figures mean something only if the switches really do
/// that, and the route must not exist on a `keybound serve` server.
#[tokio::test]
async fn bench_switches_turn_rate_limits_and_usage_off_and_on_and_exist_only_on_bench_servers() {
    let normal = spawn(false).await;
    let res = normal
        .client
        .put(normal.url("/bench/switches"))
        .json(&json!({"rate_limits": false, "usage": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    normal.stop().await;

    let app = spawn(true).await;
    let switch = |rate_limits: bool, usage: bool| {
        app.set_switches(json!({"rate_limits": rate_limits, "usage": usage}))
    };
    let (key, key_id) = app.new_key(json!({"rate_limit_per_minute": 5})).await;
    let dev = Ed25519DeviceKey::generate();
    switch(false, false).await;
    for i in 0..8 {
        let res = app.exchange(&key, &dev).await;
        assert_eq!(res.status(), StatusCode::OK, "exchange {i} with limits off");
    }
    // Usage is written within ~200 ms of a request; give it well over that.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let requests = |usage: Value| -> i64 {
        usage["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["requests"].as_i64().unwrap())
            .sum()
    };
    let usage_path = format!("/keys/{key_id}/usage?bucket=minute");
    let usage = expect_json(app.admin_get(&usage_path).await, StatusCode::OK).await;
    assert_eq!(requests(usage), 0, "usage tracking was off");

    switch(true, true).await;
    // Exchanges with limits off spent nothing: the key gets its 5 a minute, then 429.
    for i in 0..5 {
        let res = app.exchange(&key, &dev).await;
        assert_eq!(res.status(), StatusCode::OK, "exchange {i} with limits on");
    }
    expect_error(
        app.exchange(&key, &dev).await,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "6th over 5/min with limits on again",
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let usage = expect_json(app.admin_get(&usage_path).await, StatusCode::OK).await;
        if requests(usage.clone()) == 6 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "usage tracking on again records all 6: {usage}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.stop().await;
}

/// `keybound bench --overhead`'s floor turns off the token path's durable writes: a refresh
/// then does not advance its family, so the token it spent is still live (no reuse is
/// detected), and with writes on again a second presentation is reuse. Only the bench's route
/// can do that (the route's absence elsewhere is checked above).
#[tokio::test]
async fn bench_writes_switch_skips_the_refresh_token_write_and_only_while_off() {
    let app = spawn(true).await;
    let switch = |writes: bool| {
        app.set_switches(json!({"rate_limits": true, "usage": true, "writes": writes}))
    };
    let (key, _) = app.new_key(json!({})).await;
    let dev = Ed25519DeviceKey::generate();
    let token_of = |body: Value| body["refresh_token"].as_str().unwrap().to_owned();

    switch(false).await;
    let unstored = token_of(expect_json(app.exchange(&key, &dev).await, StatusCode::OK).await);
    expect_json(app.refresh(&dev, &unstored).await, StatusCode::OK).await;
    expect_json(app.refresh(&dev, &unstored).await, StatusCode::OK).await;

    switch(true).await;
    let stored = token_of(expect_json(app.exchange(&key, &dev).await, StatusCode::OK).await);
    expect_json(app.refresh(&dev, &stored).await, StatusCode::OK).await;
    expect_error(
        app.refresh(&dev, &stored).await,
        StatusCode::UNAUTHORIZED,
        "REFRESH_TOKEN_REUSED",
        "with writes on, a refresh is durable and its token spent",
    )
    .await;
    app.stop().await;
}

/// The load generator's ceiling routes answer with a token really signed by the server's key
/// (else the ceiling would measure less than an exchange does), and exist only on bench
/// servers.
#[tokio::test]
async fn bench_ceiling_routes_sign_real_tokens_and_exist_only_on_bench_servers() {
    let paths = ["/bench/sign", "/bench/verify-sign"];
    let normal = spawn(false).await;
    for path in paths {
        let res = normal.client.post(normal.url(path)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
    }
    normal.stop().await;

    let app = spawn(true).await;
    let jwks: jsonwebtoken::jwk::JwkSet = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The signature is what matters here; the claims are the bench's fixed ones.
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.validate_aud = false;
    for path in paths {
        let res = app.client.post(app.url(path)).send().await.unwrap();
        let body = expect_json(res, StatusCode::OK).await;
        let token = body["access_token"].as_str().unwrap();
        let header = jsonwebtoken::decode_header(token).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA, "{path}");
        let jwk = jwks
            .find(header.kid.as_deref().unwrap())
            .expect("kid in JWKS");
        jsonwebtoken::decode::<Value>(
            token,
            &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
            &validation,
        )
        .unwrap_or_else(|e| panic!("{path}: the token verifies with the JWKS: {e}"));
    }
    app.stop().await;
}

/// The bench's server is a benchmark target only: it refuses a non-loopback address and the
/// `prod` profile (contract section 7: a production server has no bench route or switch).
#[tokio::test]
async fn the_bench_server_refuses_prod_and_non_loopback_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let mut public = args();
    public.listen = "0.0.0.0:0".parse().unwrap();
    let mut admin_public = args();
    admin_public.admin_listen = Some("0.0.0.0:0".parse().unwrap());
    let mut prod = args();
    prod.profile = Profile::Prod;
    prod.trusted_proxy = vec!["127.0.0.1/32".parse().unwrap()];
    for (what, a) in [
        ("public listen", public),
        ("public admin listen", admin_public),
        ("prod", prod),
    ] {
        let err = keybound_bench::server::start(a, store(&dir).await)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: refused"));
        assert_eq!(err.code(), "INVALID_REQUEST", "{what}: {err}");
    }
}

/// A whole run, small: the in-process server has the ceiling routes (so the ceiling phases
/// measure something) and every exchange succeeds.
#[test]
fn a_small_run_measures_the_ceiling_and_the_exchange() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keybound-bench"))
        .args([
            "--devices",
            "4",
            "--keys",
            "2",
            "--connections",
            "2",
            "--duration",
            "1",
            "--requests",
            "40",
            "--json",
        ])
        .env_remove("KEYBOUND_DATABASE_URL")
        .output()
        .expect("keybound-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(report["mode"], "in process");
    assert_eq!(report["exchange"]["ok"], 40, "{report}");
    for phase in ["healthz", "sign_only", "verify_sign"] {
        assert!(
            report[phase]["ok"].as_u64().is_some_and(|n| n > 0),
            "{phase}: {report}"
        );
    }
}

/// `keybound bench …` runs this binary with the same arguments: `--help` is the bench's own.
#[test]
fn keybound_bench_runs_this_binary_with_the_same_arguments() {
    // Both are built into target/<profile>/: the dispatcher finds this one next to itself.
    let out = std::process::Command::new(keybound_binary::keybound_binary())
        .args(["bench", "--help"])
        .output()
        .expect("keybound runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("Usage: keybound bench"), "{stdout}");
    for option in ["--overhead", "--no-ceiling", "--spawn", "--database-url"] {
        assert!(stdout.contains(option), "{option}: {stdout}");
    }
    assert!(
        !stdout.contains("Commands:"),
        "serve-target is hidden: {stdout}"
    );
}
