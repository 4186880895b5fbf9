//! The server under attack: keybound started in-process on a fresh SQLite database, a
//! running server named by `--url`, or the real binary spawned as a child process (for the
//! scenarios that read its logs or its memory). Only loopback addresses are ever contacted.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keybound_sdk::{DeviceKey, DpopProofBuilder, Ed25519DeviceKey};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use tempfile::TempDir;

use keybound::config::ServeArgs;
use keybound::error::{Error, Result};
use keybound::server::Running;

/// Where the lab sends its requests, and how it administers the server.
pub struct Target {
    base: String,
    admin_token: SecretString,
    client: reqwest::Client,
    /// Whether the server believes our `X-Forwarded-For`, so scenarios can act from distinct
    /// client addresses (victim and attacker networks, one address per failure budget).
    pub forwarded_for: bool,
    /// The database, when the lab owns the server (insider scenarios tamper with it).
    pub database_url: Option<String>,
    /// The master key of the server the lab owns (the insider scenario checks the audit log
    /// with it, as the operator would).
    master_key: Option<SecretString>,
    running: Option<Running>,
    _dir: Option<TempDir>,
}

/// One HTTP answer: status, the error code if it is an error envelope, and the body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    /// The body as text.
    pub text: String,
}

impl Reply {
    /// The contract's error code, if any.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// 2xx.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// `"200"` or `"401 DPOP_REPLAY"`, for reports.
    pub fn summary(&self) -> String {
        if self.ok() {
            self.status.to_string()
        } else {
            format!("{} {}", self.status, self.code())
        }
    }
}

/// A fresh random master key (base64) for servers the lab spawns.
pub fn random_master_key() -> SecretString {
    let mut k = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
    SecretString::from(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        k,
    ))
}

/// A fresh random admin token for servers the lab owns.
fn random_token(prefix: &str) -> SecretString {
    use rand::Rng;
    let s: String = (0..40)
        .map(|_| keybound::keys::format::BASE62[rand::rngs::OsRng.gen_range(0..62)] as char)
        .collect();
    SecretString::from(format!("{prefix}{s}"))
}

/// Refuses anything but a loopback target: the lab attacks, and it must never attack a host
/// it was not meant for.
pub fn ensure_loopback(url: &str) -> Result<reqwest::Url> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::InvalidRequest(format!("--url: not a URL ({e})")))?;
    let host = parsed.host_str().unwrap_or("");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match bare.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    if !loopback || !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::InvalidRequest(format!(
            "--url {url}: the lab only targets loopback addresses (127.0.0.0/8, [::1], localhost)"
        )));
    }
    Ok(parsed)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        // Below the server's idle limit (`--header-read-timeout-seconds`, 10 s): a pooled
        // connection is never reused just as the server closes it, e.g. after a pause to
        // read the server's memory.
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("a plain HTTP client builds")
}

impl Target {
    /// Starts keybound in this process on a fresh SQLite database in a temporary directory,
    /// with default settings except: an admin token, and `127.0.0.1` as a trusted proxy so
    /// the lab can play clients on different networks through `X-Forwarded-For`.
    pub async fn in_process() -> Result<Target> {
        Self::in_process_with(|_| {}).await
    }

    /// Like [`in_process`](Self::in_process), with settings changed by `configure`.
    pub async fn in_process_with(configure: impl FnOnce(&mut ServeArgs)) -> Result<Target> {
        let dir = tempfile::tempdir().map_err(Error::internal)?;
        let url = format!("sqlite://{}", dir.path().join("lab.db").display());
        let store = keybound::store::open(&url).await?;
        let admin_token = random_token("lab-admin-");
        let mut args = ServeArgs::for_tests();
        args.admin_token = Some(admin_token.clone());
        args.trusted_proxy = vec!["127.0.0.1/32".parse().expect("a valid CIDR")];
        configure(&mut args);
        let master_key = args.master_key.clone();
        let running = keybound::server::start(args, store).await?;
        Ok(Target {
            base: format!("http://{}", running.addr),
            admin_token,
            client: client(),
            forwarded_for: true,
            database_url: Some(url),
            master_key,
            running: Some(running),
            _dir: Some(dir),
        })
    }

    /// A server that is already running at `url` (loopback only), administered with
    /// `admin_token`. Whether it trusts our `X-Forwarded-For` is found out, not assumed.
    pub async fn remote(url: &str, admin_token: SecretString) -> Result<Target> {
        let parsed = ensure_loopback(url)?;
        let mut target = Target {
            base: parsed.as_str().trim_end_matches('/').to_owned(),
            admin_token,
            client: client(),
            forwarded_for: false,
            database_url: None,
            master_key: None,
            running: None,
            _dir: None,
        };
        let probe = target.admin_get("/keys?limit=1").await?;
        if !probe.ok() {
            return Err(Error::InvalidRequest(format!(
                "{url}: the admin API answered {} (check --admin-token)",
                probe.summary()
            )));
        }
        target.forwarded_for = target.detect_forwarded_for().await?;
        Ok(target)
    }

    /// Sends a leak report for a made-up key from a made-up client address and looks for the
    /// address in the audit log. Nothing is suspended: the key does not exist.
    async fn detect_forwarded_for(&self) -> Result<bool> {
        // A key-in-URL alert records the client IP the server believed.
        let ip: IpAddr = Ipv4Addr::new(127, 0, 253, 1).into();
        let fake = keybound::keys::ApiKey::generate(keybound::keys::KeyEnv::Test);
        let _ = self
            .client
            .get(self.url(&format!("/healthz?k={}", fake.expose())))
            .header("x-forwarded-for", ip.to_string())
            .send()
            .await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let alerts = self.alerts("KEY_IN_URL", Some(fake.id().as_str())).await?;
            if let Some(a) = alerts.first() {
                return Ok(a["ip"] == ip.to_string());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(false)
    }

    /// The server's base URL (also its issuer when the lab started it).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The HTTP client.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The running in-process server, if the lab started one.
    pub fn running(&self) -> Option<&Running> {
        self.running.as_ref()
    }

    /// The master key of the server the lab started (none for `--url` targets).
    pub fn master_key(&self) -> Option<&SecretString> {
        self.master_key.as_ref()
    }

    /// The admin token (the insider scenario lists what it can read with it).
    pub fn admin_token(&self) -> &SecretString {
        &self.admin_token
    }

    /// A client address in `127.<a>.<b>.<c>`: scenarios act from their own addresses so one
    /// scenario's failures do not spend another's per-IP budget, and networks (the /24) can
    /// be told apart. Without `X-Forwarded-For` trust every request comes from 127.0.0.1.
    pub fn client_ip(a: u8, b: u8, c: u8) -> IpAddr {
        Ipv4Addr::new(127, a, b, c).into()
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        from: Option<IpAddr>,
    ) -> reqwest::RequestBuilder {
        let mut req = self.client.request(method, self.url(path));
        if let (Some(ip), true) = (from, self.forwarded_for) {
            req = req.header("x-forwarded-for", ip.to_string());
        }
        req
    }

    /// Sends a request and reads its reply.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<Reply> {
        let res = req.send().await.map_err(Error::internal)?;
        let status = res.status().as_u16();
        let text = res.text().await.map_err(Error::internal)?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, body, text })
    }

    /// An admin API `GET`.
    pub async fn admin_get(&self, path: &str) -> Result<Reply> {
        self.send(
            self.request(reqwest::Method::GET, &format!("/admin/v1{path}"), None)
                .bearer_auth(self.admin_token.expose_secret()),
        )
        .await
    }

    /// An admin API `POST` with a JSON body.
    pub async fn admin_post(&self, path: &str, body: &Value) -> Result<Reply> {
        self.send(
            self.request(reqwest::Method::POST, &format!("/admin/v1{path}"), None)
                .bearer_auth(self.admin_token.expose_secret())
                .json(body),
        )
        .await
    }

    /// Creates an API key (`extra` merged over a two-scope test key) and returns its
    /// plaintext and id.
    pub async fn create_key(&self, extra: Value) -> Result<(SecretString, String)> {
        let mut body = json!({"name": "lab", "scopes": ["read:users", "write:orders"],
                              "env": "test"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let reply = self.admin_post("/keys", &body).await?;
        match (reply.body["key"].as_str(), reply.body["key_id"].as_str()) {
            (Some(key), Some(id)) if reply.status == 201 => {
                Ok((SecretString::from(key), id.to_owned()))
            }
            _ => Err(Error::internal(format!(
                "creating a key failed: {}",
                reply.summary()
            ))),
        }
    }

    /// `POST /v1/token` with `key` and `proof` from `from`.
    pub async fn exchange_with(
        &self,
        key: &str,
        proof: &str,
        body: &Value,
        from: IpAddr,
    ) -> Result<Reply> {
        self.send(
            self.request(reqwest::Method::POST, "/v1/token", Some(from))
                .header("x-api-key", key)
                .header("dpop", proof)
                .json(body),
        )
        .await
    }

    /// `POST /v1/token` with a fresh proof by `device`.
    pub async fn exchange(
        &self,
        key: &str,
        device: &LabDevice,
        body: &Value,
        from: IpAddr,
    ) -> Result<Reply> {
        let proof = device.proof("POST", &self.url("/v1/token"));
        self.exchange_with(key, &proof, body, from).await
    }

    /// `POST /v1/token/refresh` with `proof`.
    pub async fn refresh_with(
        &self,
        refresh_token: &str,
        proof: &str,
        from: IpAddr,
    ) -> Result<Reply> {
        self.send(
            self.request(reqwest::Method::POST, "/v1/token/refresh", Some(from))
                .header("dpop", proof)
                .json(&json!({"refresh_token": refresh_token})),
        )
        .await
    }

    /// `POST /v1/token/refresh` with a fresh proof by `device`.
    pub async fn refresh(
        &self,
        refresh_token: &str,
        device: &LabDevice,
        from: IpAddr,
    ) -> Result<Reply> {
        let proof = device.proof("POST", &self.url("/v1/token/refresh"));
        self.refresh_with(refresh_token, &proof, from).await
    }

    /// Alerts of `kind` (for `key_id`), newest first as the admin API lists them.
    pub async fn alerts(&self, kind: &str, key_id: Option<&str>) -> Result<Vec<Value>> {
        let mut path = format!("/alerts?kind={kind}&limit=100");
        if let Some(k) = key_id {
            path.push_str(&format!("&key_id={k}"));
        }
        let reply = self.admin_get(&path).await?;
        Ok(reply.body["alerts"].as_array().cloned().unwrap_or_default())
    }

    /// Polls the admin API until an alert of `kind` for `key_id` is visible; the time from
    /// `since` until it was seen (at most `timeout`, else `None`).
    pub async fn wait_for_alert(
        &self,
        kind: &str,
        key_id: &str,
        since: Instant,
        timeout: Duration,
    ) -> Result<Option<Duration>> {
        while since.elapsed() < timeout {
            if !self.alerts(kind, Some(key_id)).await?.is_empty() {
                return Ok(Some(since.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(None)
    }

    /// Stops the in-process server, if any.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

/// A device of the lab: an Ed25519 key whose proofs the SDK builds (an implementation
/// independent of the server's verifier).
pub struct LabDevice {
    key: Ed25519DeviceKey,
}

impl Default for LabDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl LabDevice {
    /// A new device key.
    pub fn new() -> LabDevice {
        LabDevice {
            key: Ed25519DeviceKey::generate(),
        }
    }

    /// A fresh proof for `method url`.
    pub fn proof(&self, method: &str, url: &str) -> String {
        DpopProofBuilder::new(&self.key, method, url)
            .sign()
            .expect("an in-memory Ed25519 key signs")
    }

    /// A fresh proof for a resource request carrying `access_token` (`ath`).
    pub fn proof_for_token(&self, method: &str, url: &str, access_token: &str) -> String {
        DpopProofBuilder::new(&self.key, method, url)
            .access_token(access_token)
            .sign()
            .expect("an in-memory Ed25519 key signs")
    }

    /// The key's RFC 7638 thumbprint.
    pub fn jkt(&self) -> String {
        self.key
            .thumbprint()
            .expect("an Ed25519 JWK has a thumbprint")
    }
}

/// An exchange body with a phone's fingerprint attributes, as an app would send them.
pub fn phone(platform: &str, model: &str, install_id: &str, locale: &str, tz: &str) -> Value {
    json!({"device": {"name": "lab phone", "attributes": {
        "platform": platform, "model": model, "os_version": "17.1", "app_version": "2.3.0",
        "install_id": install_id, "locale": locale, "timezone": tz}}})
}

/// The real `keybound` binary serving on a loopback port of its own, on a fresh database, its
/// stderr (the logs) going to a file. Killed (by its pid) when dropped.
pub struct SpawnedServer {
    child: Child,
    /// The server's base URL.
    pub base: String,
    /// The file that receives its stderr.
    pub log_path: PathBuf,
    /// Its database.
    pub database_url: String,
    /// Its admin token.
    pub admin_token: SecretString,
    /// Its master key (a secret the log scan looks for too).
    pub master_key: SecretString,
    dir: TempDir,
}

impl SpawnedServer {
    /// Runs `binary serve` with `RUST_LOG=rust_log` and `--log-format log_format`; waits for
    /// the "listening" line. `before` runs first with the database URL (e.g. a CLI command).
    pub fn start(binary: &Path, rust_log: &str, log_format: &str) -> Result<SpawnedServer> {
        let dir = tempfile::tempdir().map_err(Error::internal)?;
        let database_url = format!("sqlite://{}", dir.path().join("lab.db").display());
        Self::start_in(
            binary,
            rust_log,
            log_format,
            dir,
            database_url,
            random_master_key(),
        )
    }

    /// Like [`start`](Self::start), in an existing directory and database, with the master
    /// key the database was set up with (a CLI command run before needs the same one).
    pub fn start_in(
        binary: &Path,
        rust_log: &str,
        log_format: &str,
        dir: TempDir,
        database_url: String,
        master_key: SecretString,
    ) -> Result<SpawnedServer> {
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path).map_err(Error::internal)?;
        let admin_token = random_token("lab-admin-");
        let child = Command::new(binary)
            .arg("serve")
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_LOG", rust_log)
            .env("KEYBOUND_LOG_FORMAT", log_format)
            .env("KEYBOUND_LISTEN", "127.0.0.1:0")
            .env("KEYBOUND_DATABASE_URL", &database_url)
            .env("KEYBOUND_ADMIN_TOKEN", admin_token.expose_secret())
            .env("KEYBOUND_MASTER_KEY", master_key.expose_secret())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::internal(format!("cannot run {}: {e}", binary.display())))?;
        let mut server = SpawnedServer {
            child,
            base: String::new(),
            log_path,
            database_url,
            admin_token,
            master_key,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let logs = std::fs::read_to_string(&server.log_path).unwrap_or_default();
            if let Some(addr) = listening_addr(&logs) {
                server.base = format!("http://{addr}");
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(Error::internal(format!(
                    "keybound serve exited ({status}): {logs}"
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::internal("keybound serve did not start within 20 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A [`Target`] for it (no `X-Forwarded-For` trust: it runs with default settings).
    pub fn target(&self) -> Target {
        Target {
            base: self.base.clone(),
            admin_token: self.admin_token.clone(),
            client: client(),
            forwarded_for: false,
            database_url: Some(self.database_url.clone()),
            master_key: Some(self.master_key.clone()),
            running: None,
            _dir: None,
        }
    }

    /// Everything it has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        // Our own child, by its handle: nothing else is touched.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in the "keybound listening" line (text: `addr=127.0.0.1:PORT`; JSON:
/// `"addr":"127.0.0.1:PORT"`).
fn listening_addr(logs: &str) -> Option<String> {
    let line = logs.lines().find(|l| l.contains("keybound listening"))?;
    let start = line.find("127.0.0.1:")?;
    let rest = &line[start..];
    let end = rest
        .char_indices()
        .skip("127.0.0.1:".len())
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or(rest.len(), |(i, _)| i);
    Some(rest[..end].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.5.6.7",
            "http://localhost:1",
            "https://[::1]:8443/",
        ] {
            assert!(ensure_loopback(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1",
            "http://192.168.1.1:8080",
            "https://example.com",
            "http://127.0.0.1.example.com",
            "ftp://127.0.0.1",
            "not a url",
        ] {
            assert!(ensure_loopback(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn listening_address_from_text_and_json_logs() {
        let text = "2025 INFO keybound::server: keybound listening addr=127.0.0.1:41234 issuer=x";
        assert_eq!(listening_addr(text).as_deref(), Some("127.0.0.1:41234"));
        let json = r#"{"message":"keybound listening","addr":"127.0.0.1:5555","issuer":"h"}"#;
        assert_eq!(listening_addr(json).as_deref(), Some("127.0.0.1:5555"));
    }
}
