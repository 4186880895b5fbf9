//! No secret in any log line (contract section 7, issue 5).
//!
//! Both run the real binary (its own process, so no other test's logging interferes):
//! request logging at `RUST_LOG=trace` records no credential header or token body even when
//! the values have no secret's shape (the structural guarantee), and at `RUST_LOG=debug`, in
//! both log formats, a full session leaks none of its secrets (keys, tokens, proofs, admin
//! token, master key) to stderr.

use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use keybound::config::LogFormat;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::helpers::{TestDb, expect_json};
use crate::proofs::Device;
use crate::tls::{free_port, send_signal, wait_until_up};

/// The real binary serving on a free loopback port, its stderr drained as it comes (so a
/// full pipe never blocks it).
struct Server {
    base: String,
    admin_token: String,
    master_key: String,
    child: tokio::process::Child,
    stderr: tokio::task::JoinHandle<Vec<u8>>,
    _db: TestDb,
}

impl Server {
    async fn start(format: LogFormat, rust_log: &str) -> Server {
        let db = TestDb::sqlite().await;
        let port = free_port();
        let mut master = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut master);
        let master_key = base64::engine::general_purpose::STANDARD.encode(master);
        let admin_token = format!("admin-{}", uuid::Uuid::new_v4().simple());
        let format = if format == LogFormat::Json {
            "json"
        } else {
            "text"
        };
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybound"))
            .args(["--database-url", &db.url, "serve"])
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--log-format",
                format,
            ])
            .env("RUST_LOG", rust_log)
            .env("KEYBOUND_ADMIN_TOKEN", &admin_token)
            .env("KEYBOUND_MASTER_KEY", &master_key)
            .current_dir(db.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("keybound serve");
        let mut pipe = child.stderr.take().unwrap();
        let stderr = tokio::spawn(async move {
            let mut all = Vec::new();
            pipe.read_to_end(&mut all).await.unwrap();
            all
        });
        let base = format!("http://127.0.0.1:{port}");
        wait_until_up(&reqwest::Client::new(), &format!("{base}/healthz")).await;
        Server {
            base,
            admin_token,
            master_key,
            child,
            stderr,
            _db: db,
        }
    }

    /// Stops the server with SIGTERM and returns everything it logged.
    async fn stop(mut self) -> String {
        // Alerts and batched writes land within milliseconds; let them log before stopping.
        tokio::time::sleep(Duration::from_millis(200)).await;
        send_signal(&self.child, "TERM");
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("stops on SIGTERM")
            .unwrap();
        String::from_utf8(self.stderr.await.unwrap()).expect("UTF-8 logs")
    }
}

/// Request logging, at TRACE, records none of the credential headers or token bodies. The
/// markers have no secret's shape, so the redaction filter would not mask them: this checks
/// the structural guarantee (spans record method, route and request id only), not the filter.
#[tokio::test]
async fn request_logging_records_no_credential_headers_or_bodies() {
    let server = Server::start(LogFormat::Text, "trace").await;
    let client = reqwest::Client::new();
    let markers = [
        ("Authorization", "authorization-marker-b81f"),
        ("X-API-Key", "x-api-key-marker-5e02"),
        ("DPoP", "dpop-marker-a9c3"),
        ("Cookie", "cookie-marker-3f9a1c"),
    ];
    let body_marker = "body-marker-7d2e";
    for path in [
        "/v1/token",
        "/v1/token/refresh",
        "/admin/v1/keys",
        "/healthz",
    ] {
        let mut req = client.post(format!("{}{path}", server.base));
        for (header, marker) in markers {
            req = req.header(header, marker);
        }
        req.json(&json!({"scope": body_marker, "refresh_token": body_marker}))
            .send()
            .await
            .unwrap();
    }
    let logs = server.stop().await;

    assert!(
        logs.contains("request{") && logs.contains("route=\"/v1/token/refresh\""),
        "request spans are logged with their route:\n{logs}"
    );
    for (what, marker) in markers
        .into_iter()
        .chain([("token endpoint body", body_marker)])
    {
        assert!(!logs.contains(marker), "{what} logged");
    }
}

/// Every secret of a session, with what it is.
#[derive(Default)]
struct Secrets(Vec<(String, String)>);

impl Secrets {
    fn add(&mut self, what: &str, secret: &str) {
        assert!(!secret.is_empty(), "{what} is empty");
        self.0.push((what.to_owned(), secret.to_owned()));
        // The distinctive part alone must not leak either.
        if let Some(rest) = secret.strip_prefix("rt_") {
            self.0.push((format!("{what} (body)"), rest.to_owned()));
        } else if secret.starts_with("sk_") {
            let n = secret.len();
            self.0.push((
                format!("{what} (secret part)"),
                secret[n - 49..n - 6].to_owned(),
            ));
        } else if secret.starts_with("eyJ") {
            let sig = secret.rsplit('.').next().unwrap();
            self.0.push((format!("{what} (signature)"), sig.to_owned()));
        }
    }

    fn add_json(&mut self, what: &str, body: &Value, field: &str) {
        self.add(&format!("{what} {field}"), body[field].as_str().unwrap());
    }
}

/// Runs a full session against the real binary at debug level and returns its stderr and the
/// secrets it used.
async fn session(format: LogFormat) -> (String, Secrets) {
    let server = Server::start(format, "debug").await;
    let base = server.base.clone();
    let admin_token = server.admin_token.clone();
    let mut secrets = Secrets::default();
    secrets.add("admin token", &admin_token);
    secrets.add("master key", &server.master_key);

    let client = reqwest::Client::new();
    let admin = |m: reqwest::Method, path: &str| {
        client
            .request(m, format!("{base}/admin/v1{path}"))
            .bearer_auth(&admin_token)
    };
    let send = |r: reqwest::RequestBuilder| async move { r.send().await.unwrap() };

    // Admin calls.
    let created = expect_json(
        send(admin(reqwest::Method::POST, "/keys").json(&json!({
            "name": "app", "scopes": ["read:users", "write:orders"], "env": "test",
            "trust_on_enroll": true})))
        .await,
        StatusCode::CREATED,
    )
    .await;
    secrets.add_json("created", &created, "key");
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["key_id"].as_str().unwrap().to_owned();
    for path in ["/keys", &format!("/keys/{key_id}"), "/audit", "/alerts"] {
        send(admin(reqwest::Method::GET, path)).await;
    }
    send(admin(reqwest::Method::PATCH, &format!("/keys/{key_id}")).json(&json!({"name": "b"})))
        .await;
    let wrong_admin = client
        .get(format!("{base}/admin/v1/keys"))
        .bearer_auth("wrong-admin-token-7c1e")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_admin.status(), StatusCode::UNAUTHORIZED);

    // Exchanges (both header forms), refreshes, and the refusals around them.
    let dev = Device::new();
    let token_url = format!("{base}/v1/token");
    let refresh_url = format!("{base}/v1/token/refresh");
    let proof = |url: &str, secrets: &mut Secrets| {
        let p = dev.proof("POST", url);
        secrets.add("DPoP proof", &p);
        p
    };
    let p1 = proof(&token_url, &mut secrets);
    let first = expect_json(
        send(
            client
                .post(&token_url)
                .header("X-API-Key", &key)
                .header("DPoP", &p1)
                .json(&json!({})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    secrets.add_json("exchange", &first, "access_token");
    secrets.add_json("exchange", &first, "refresh_token");
    let p2 = proof(&token_url, &mut secrets);
    let second = expect_json(
        send(
            client
                .post(&token_url)
                .bearer_auth(&key)
                .header("DPoP", &p2)
                .json(&json!({})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    secrets.add_json("exchange (Bearer)", &second, "access_token");
    secrets.add_json("exchange (Bearer)", &second, "refresh_token");
    // A replayed proof.
    let replay = send(
        client
            .post(&token_url)
            .header("X-API-Key", &key)
            .header("DPoP", &p2)
            .json(&json!({})),
    )
    .await;
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);

    let mut rt = first["refresh_token"].as_str().unwrap().to_owned();
    let spent = rt.clone();
    for _ in 0..2 {
        let p = proof(&refresh_url, &mut secrets);
        let r = expect_json(
            send(
                client
                    .post(&refresh_url)
                    .header("DPoP", p)
                    .json(&json!({"refresh_token": rt})),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        secrets.add_json("refresh", &r, "access_token");
        secrets.add_json("refresh", &r, "refresh_token");
        rt = r["refresh_token"].as_str().unwrap().to_owned();
    }
    let p = proof(&refresh_url, &mut secrets);
    let reuse = send(
        client
            .post(&refresh_url)
            .header("DPoP", p)
            .json(&json!({"refresh_token": spent})),
    )
    .await;
    assert_eq!(reuse.status(), StatusCode::UNAUTHORIZED, "reuse refused");

    // A well-formed key with the wrong secret, and a key in a URL.
    let n = key.len();
    let wrong_head = format!("{}{}", &key[..n - 49], "B".repeat(43));
    let wrong = format!(
        "{wrong_head}{}",
        keybound::keys::format::checksum(wrong_head.as_bytes())
    );
    secrets.add("wrong-secret key", &wrong);
    let p = proof(&token_url, &mut secrets);
    let bad = send(
        client
            .post(&token_url)
            .header("X-API-Key", &wrong)
            .header("DPoP", p),
    )
    .await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    let in_url = send(client.get(format!("{base}/healthz?api_key={key}"))).await;
    assert_eq!(in_url.status(), StatusCode::BAD_REQUEST);

    // Rotation prints a new key once; it works, then is reported leaked.
    let rotated = expect_json(
        send(admin(reqwest::Method::POST, &format!("/keys/{key_id}/rotate")).json(&json!({})))
            .await,
        StatusCode::CREATED,
    )
    .await;
    secrets.add_json("rotated", &rotated, "key");
    let new_key = rotated["key"].as_str().unwrap();
    let p = proof(&token_url, &mut secrets);
    let third = expect_json(
        send(
            client
                .post(&token_url)
                .header("X-API-Key", new_key)
                .header("DPoP", p)
                .json(&json!({})),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    secrets.add_json("exchange (rotated)", &third, "access_token");
    secrets.add_json("exchange (rotated)", &third, "refresh_token");
    let leak = send(
        client
            .post(format!("{base}/v1/leaks"))
            .json(&json!({"key": new_key})),
    )
    .await;
    assert_eq!(leak.status(), StatusCode::ACCEPTED);
    send(admin(reqwest::Method::POST, &format!("/keys/{key_id}/suspend")).json(&json!({}))).await;

    (server.stop().await, secrets)
}

async fn no_secret_in_logs(format: LogFormat) {
    let (logs, secrets) = session(format).await;
    // The run really logged at debug level, requests included.
    assert!(
        logs.lines().count() > 20,
        "{format:?}: too little output:\n{logs}"
    );
    assert!(logs.contains("DEBUG"), "{format:?}: no debug lines");
    assert!(
        logs.contains("/v1/token/refresh"),
        "{format:?}: no request spans"
    );
    if format == LogFormat::Json {
        for line in logs.lines() {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        }
    }
    let leaked: Vec<&str> = secrets
        .0
        .iter()
        .filter(|(_, s)| logs.contains(s.as_str()))
        .map(|(what, _)| what.as_str())
        .collect();
    assert!(
        leaked.is_empty(),
        "{format:?}: secrets in the log: {leaked:?}"
    );
}

#[tokio::test]
async fn no_secret_reaches_text_logs_at_debug() {
    no_secret_in_logs(LogFormat::Text).await;
}

#[tokio::test]
async fn no_secret_reaches_json_logs_at_debug() {
    no_secret_in_logs(LogFormat::Json).await;
}
