//! HTTPS (issue 5): a test certificate from rcgen, a client that trusts only it, HSTS on every
//! answer, plain HTTP refused on the TLS port, and a certificate reload without a restart —
//! in-process through `Running::reload_tls`, and through the real binary with SIGHUP.

use std::path::{Path, PathBuf};
use std::time::Duration;

use keybound::config::ServeArgs;
use keybound::server::Running;
use reqwest::StatusCode;

use crate::helpers::TestDb;

/// A self-signed certificate for 127.0.0.1 written as PEM files; returns (cert, key, cert PEM).
pub fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, String) {
    let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("rcgen");
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let pem = c.cert.pem();
    std::fs::write(&cert, &pem).unwrap();
    std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (cert, key, pem)
}

/// A client that trusts `pem` and nothing else, with no connection reuse (every request
/// makes a new handshake, so it sees the certificate served now).
pub fn client_trusting(pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

async fn start_tls(db: &TestDb, cert: &Path, key: &Path) -> Running {
    let mut args = ServeArgs::for_tests();
    args.tls_cert = Some(cert.to_owned());
    args.tls_key = Some(key.to_owned());
    keybound::server::start(args, db.store().await)
        .await
        .expect("HTTPS server starts")
}

#[tokio::test]
async fn https_works_with_hsts_and_plain_http_is_refused() {
    let db = TestDb::sqlite().await;
    let (cert, key, pem) = write_cert(db.dir.path(), "a");
    let server = start_tls(&db, &cert, &key).await;
    let base = format!("https://{}", server.addr);
    let client = client_trusting(&pem);

    for path in ["/healthz", "/.well-known/jwks.json", "/no-such-route"] {
        let res = client.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(
            res.headers()
                .get("strict-transport-security")
                .map(|v| v.to_str().unwrap()),
            Some("max-age=31536000"),
            "HSTS on {path} ({})",
            res.status()
        );
    }
    let meta: serde_json::Value = client
        .get(format!("{base}/.well-known/oauth-authorization-server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(meta["issuer"], base, "the default issuer is https with TLS");

    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", server.addr))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP on the TLS port: {plain:?}");

    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("{base}/healthz"))
        .send()
        .await;
    assert!(untrusting.is_err(), "a client not trusting the cert");
    server.stop().await;
}

#[tokio::test]
async fn plain_http_has_no_hsts() {
    let db = TestDb::sqlite().await;
    let server = keybound::server::start(ServeArgs::for_tests(), db.store().await)
        .await
        .unwrap();
    let res = reqwest::get(format!("http://{}/healthz", server.addr))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("strict-transport-security").is_none());
    server.stop().await;
}

#[tokio::test]
async fn reload_serves_the_new_certificate_on_the_same_listener() {
    let db = TestDb::sqlite().await;
    let (cert, key, pem_a) = write_cert(db.dir.path(), "live");
    let server = start_tls(&db, &cert, &key).await;
    let url = format!("https://{}/healthz", server.addr);
    let (cert_b, key_b, pem_b) = write_cert(db.dir.path(), "next");

    assert!(client_trusting(&pem_a).get(&url).send().await.is_ok());
    assert!(client_trusting(&pem_b).get(&url).send().await.is_err());

    // A broken file: the reload fails and the old certificate keeps serving.
    std::fs::write(&cert, "garbage").unwrap();
    assert!(server.reload_tls().is_err());
    assert!(client_trusting(&pem_a).get(&url).send().await.is_ok());

    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    server.reload_tls().expect("reload");
    let res = client_trusting(&pem_b).get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(client_trusting(&pem_a).get(&url).send().await.is_err());
    server.stop().await;
}

/// A port that was free a moment ago (the binary needs to be told one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `url` until it answers, for up to 10 s.
pub async fn wait_until_up(client: &reqwest::Client, url: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while client.get(url).send().await.is_err() {
        assert!(std::time::Instant::now() < deadline, "{url} never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends `signal` (e.g. `HUP`, `TERM`) to a child process.
pub fn send_signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("running").to_string();
    // The shell's built-in `kill`: present wherever `sh` is, unlike procps.
    let ok = std::process::Command::new("sh")
        .args(["-c", &format!("kill -{signal} {pid}")])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_certificate_of_the_real_binary() {
    let db = TestDb::sqlite().await;
    let (cert, key, pem_a) = write_cert(db.dir.path(), "live");
    let (cert_b, key_b, pem_b) = write_cert(db.dir.path(), "next");
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybound"))
        .args(["--database-url", &db.url, "serve", "--listen", &listen])
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .current_dir(db.dir.path())
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("keybound serve");
    let url = format!("https://{listen}/healthz");
    wait_until_up(&client_trusting(&pem_a), &url).await;

    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    send_signal(&child, "HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while client_trusting(&pem_b).get(&url).send().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "new certificate not served after SIGHUP"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGHUP killed the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(client_trusting(&pem_a).get(&url).send().await.is_err());

    send_signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}
