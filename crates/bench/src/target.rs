//! The server under load: started in this process, started as a child process, or an existing
//! one on a loopback address; and the keys and devices it is given before the run.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use rand::Rng;
use secrecy::ExposeSecret;
use serde_json::json;

use super::devices::SimDevice;
use crate::args::BenchArgs;
use keybound::config::ServeArgs;
use keybound::error::{Error, Result};
use keybound::ids::{KeyId, Scope, Thumbprint};
use keybound::keys::{ApiKey, KeyEnv};
use keybound::server::Running;
use keybound::store::{self, DeviceRecord, DeviceStatus, KeyRecord, KeyStatus};

/// Scopes of the benchmark's keys.
const SCOPES: [&str; 2] = ["read:bench", "write:bench"];
/// The benchmark's keys must not be what limits it (the admin API's upper bound).
const RATE_LIMIT: i64 = 1_000_000;
/// The same for the refresh phase's devices (`serve --refresh-rate-per-device`).
pub const REFRESH_RATE_PER_DEVICE: u32 = 1_000_000;

/// How the server runs.
enum Server {
    InProcess(Box<Running>),
    Child(Child),
    External,
}

/// A server ready for load.
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// The `htu` of exchanges (the server's `token_endpoint`).
    pub token_url: String,
    /// The `Host` header value.
    pub host: HeaderValue,
    /// The benchmark's API keys, as `X-API-Key` values.
    pub api_keys: Vec<HeaderValue>,
    /// The server's process, for its peak RSS (`None`: unknown).
    pub pid: Option<u32>,
    /// How it runs, for the report.
    pub mode: &'static str,
    /// `sqlite` or `postgres` (`unknown` for `--url` without `--database-url`).
    pub backend: &'static str,
    server: Server,
    /// Keeps the temporary database (and the child's log) until the run ends.
    _dir: Option<tempfile::TempDir>,
}

impl Target {
    /// Turns rate limiting, usage tracking and the token path's writes on or off
    /// (`PUT /bench/switches`; only a server this run started has it).
    pub async fn set_switches(&self, rate_limits: bool, usage: bool, writes: bool) -> Result<()> {
        let body = crate::routes::SwitchesBody {
            rate_limits,
            usage,
            writes,
        };
        let res = reqwest::Client::new()
            .put(format!(
                "http://{}{}",
                self.addr,
                crate::routes::SWITCHES_PATH
            ))
            .json(&body)
            .send()
            .await
            .map_err(Error::unavailable)?;
        if !res.status().is_success() {
            return Err(Error::InvalidRequest(format!(
                "--overhead needs a server this command starts, not --url (PUT {} answered {})",
                crate::routes::SWITCHES_PATH,
                res.status()
            )));
        }
        Ok(())
    }

    /// Prepares the database and starts (or finds) the server.
    pub async fn start(
        args: &BenchArgs,
        database_url: Option<String>,
        devices: &[SimDevice],
    ) -> Result<Target> {
        match &args.url {
            Some(url) => external(args, url, database_url, devices).await,
            None => local(args, database_url, devices).await,
        }
    }

    /// Stops a server this run started.
    pub async fn stop(self) {
        match self.server {
            Server::InProcess(r) => r.stop().await,
            Server::Child(mut c) => {
                if let Ok(Some(status)) = c.try_wait() {
                    // It died during the run: say so, with the end of its log.
                    eprintln!("error: the server process exited during the run ({status})");
                    if let Some(dir) = &self._dir
                        && let Ok(log) = std::fs::read_to_string(dir.path().join("server.log"))
                    {
                        let lines: Vec<&str> = log.lines().collect();
                        for l in &lines[lines.len().saturating_sub(30)..] {
                            eprintln!("  {l}");
                        }
                    }
                }
                let _ = c.kill();
                let _ = c.wait();
            }
            Server::External => {}
        }
    }
}

/// Peak resident set size (`VmHWM`) of `pid`, in bytes.
pub fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time used so far by the server and by this process, the load generator, taken around
/// a phase. The generator's figure is kept only when the server is another process (`--spawn`,
/// `--url` with `--server-pid`): in process, the two are one figure.
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    server: Option<f64>,
    generator: Option<f64>,
}

impl CpuMark {
    /// The CPU seconds used so far by `server` (its pid, when known) and by the generator.
    pub fn now(server: Option<u32>) -> CpuMark {
        let own = std::process::id();
        CpuMark {
            server: server.and_then(cpu_seconds),
            generator: server
                .filter(|&pid| pid != own)
                .and_then(|_| cpu_seconds(own)),
        }
    }

    /// CPU seconds (server, generator) used since `self`.
    pub fn since(self, server: Option<u32>) -> (Option<f64>, Option<f64>) {
        let now = CpuMark::now(server);
        let spent = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| b - a);
        (
            spent(self.server, now.server),
            spent(self.generator, now.generator),
        )
    }
}

/// CPU time (user + system) `pid` has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and
    // stime are fields 14 and 15, in clock ticks (100 a second on Linux).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidRequest(msg.into())
}

/// The server starts here (in process or as a child) on a fresh database.
async fn local(
    args: &BenchArgs,
    database_url: Option<String>,
    devices: &[SimDevice],
) -> Result<Target> {
    let dir = tempfile::tempdir().map_err(Error::internal)?;
    let url = match database_url {
        Some(u) => u,
        None => format!("sqlite://{}", dir.path().join("bench.db").display()),
    };
    let backend = if url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    let now = keybound::state::now();
    let mut serve = ServeArgs::for_tests();
    // The refresh phase refreshes each device far more often than a real one: its per-device
    // limit stays checked, but must not be what stops it.
    serve.refresh_rate_per_device = REFRESH_RATE_PER_DEVICE;
    let integrity = {
        // Opening migrates. The run fills the database: refuse one that holds anything.
        let store = store::open(&url).await?;
        if !store.list_keys(None, 1).await?.is_empty() {
            return Err(bad(
                "the benchmark needs an empty database (it adds keys, devices and tokens)",
            ));
        }
        // Seeded keys skip the key service, so they are wrapped here as it would (the server
        // accepts wrapped hashes only: keybound::integrity), under the server's master key.
        let master = serve.master_key.as_ref().expect("for_tests sets one");
        let master = keybound::tokens::signing::MasterKey::from_base64(master.expose_secret())
            .map_err(Error::internal)?;
        keybound::integrity::load_or_enable(&*store, &master, now).await?
    };
    let (records, plaintexts) = bench_keys(args.keys, now, &integrity);
    let key_ids: Vec<String> = records.iter().map(|k| k.key_id.to_string()).collect();
    let (keys, seeded) = seed_rows(args, records, &key_ids, devices, now);
    if !keys.is_empty() || !seeded.is_empty() {
        let started = std::time::Instant::now();
        store::seed(&url, &keys, &seeded).await.map_err(|e| {
            // The error's Display hides internals (it is made for HTTP answers).
            eprintln!("seeding failed: {e:?}");
            e
        })?;
        eprintln!(
            "seeded {} keys and {} devices in {:.1} s",
            keys.len(),
            seeded.len(),
            started.elapsed().as_secs_f64()
        );
    }
    drop(keys);
    drop(seeded);

    let (addr, server, pid, mode) = if args.spawn {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(Error::internal)?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::fs::File::create(dir.path().join("server.log")).map_err(Error::internal)?;
        let master = serve.master_key.as_ref().expect("for_tests sets one");
        let child = Command::new(std::env::current_exe().map_err(Error::internal)?)
            .args([crate::server::SUBCOMMAND, "--listen", &addr.to_string()])
            .arg("--refresh-rate-per-device")
            .arg(REFRESH_RATE_PER_DEVICE.to_string())
            .arg("--database-url")
            .arg(&url)
            .env("KEYBOUND_MASTER_KEY", master.expose_secret())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(Error::internal)?;
        let pid = child.id();
        wait_ready(addr).await?;
        (addr, Server::Child(child), Some(pid), "child process")
    } else {
        keybound::telemetry::init(serve.log_format);
        let running = crate::server::start(serve, store::open(&url).await?).await?;
        (
            running.addr,
            Server::InProcess(Box::new(running)),
            Some(std::process::id()),
            "in process",
        )
    };
    finish(addr, plaintexts, pid, mode, backend, server, Some(dir)).await
}

/// An existing server on a loopback address; keys created through its admin API.
async fn external(
    args: &BenchArgs,
    url: &str,
    database_url: Option<String>,
    devices: &[SimDevice],
) -> Result<Target> {
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(format!("--url: {e}")))?;
    let host = parsed.host_str().unwrap_or("");
    let ip: IpAddr = match host.trim_start_matches('[').trim_end_matches(']') {
        "localhost" => IpAddr::from([127, 0, 0, 1]),
        h => h
            .parse()
            .map_err(|_| bad("--url must name a loopback address"))?,
    };
    if !ip.is_loopback() || parsed.scheme() != "http" {
        return Err(bad(
            "--url must be http:// on a loopback address (127.0.0.0/8, ::1, localhost)",
        ));
    }
    let addr = SocketAddr::new(ip, parsed.port_or_known_default().unwrap_or(80));
    let token = args
        .admin_token
        .as_ref()
        .ok_or_else(|| bad("--url needs --admin-token to create the benchmark's keys"))?;
    let client = reqwest::Client::new();
    let mut plaintexts = Vec::with_capacity(args.keys);
    let mut key_ids = Vec::with_capacity(args.keys);
    for i in 0..args.keys {
        let res = client
            .post(format!("http://{addr}/admin/v1/keys"))
            .bearer_auth(token.expose_secret())
            .json(&json!({"name": format!("bench {i}"), "scopes": SCOPES,
                          "rate_limit_per_minute": RATE_LIMIT, "max_devices": 100_000,
                          "expires_in_days": 1}))
            .send()
            .await
            .map_err(Error::unavailable)?;
        if !res.status().is_success() {
            return Err(bad(format!("creating a key answered {}", res.status())));
        }
        let v: serde_json::Value = res.json().await.map_err(Error::unavailable)?;
        let (Some(key), Some(id)) = (v["key"].as_str(), v["key_id"].as_str()) else {
            return Err(bad("creating a key answered without key and key_id"));
        };
        plaintexts.push(header(key));
        key_ids.push(id.to_owned());
    }
    let mut backend = "unknown";
    if let Some(db) = database_url {
        backend = if db.starts_with("postgres") {
            "postgres"
        } else {
            "sqlite"
        };
        let now = keybound::state::now();
        let (keys, seeded) = seed_rows(args, vec![], &key_ids, devices, now);
        store::seed(&db, &keys, &seeded).await?;
    }
    finish(
        addr,
        plaintexts,
        args.server_pid,
        "external",
        backend,
        Server::External,
        None,
    )
    .await
}

async fn finish(
    addr: SocketAddr,
    api_keys: Vec<HeaderValue>,
    pid: Option<u32>,
    mode: &'static str,
    backend: &'static str,
    server: Server,
    dir: Option<tempfile::TempDir>,
) -> Result<Target> {
    let base = format!("http://{addr}");
    let meta: serde_json::Value =
        reqwest::get(format!("{base}/.well-known/oauth-authorization-server"))
            .await
            .map_err(Error::unavailable)?
            .json()
            .await
            .map_err(Error::unavailable)?;
    let token_url = meta["token_endpoint"]
        .as_str()
        .ok_or_else(|| bad("the server's metadata has no token_endpoint"))?
        .to_owned();
    Ok(Target {
        host: header(&addr.to_string()),
        addr,
        token_url,
        api_keys,
        pid,
        mode,
        backend,
        server,
        _dir: dir,
    })
}

fn header(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("keys and addresses are valid header values")
}

async fn wait_ready(addr: SocketAddr) -> Result<()> {
    for _ in 0..300 {
        if let Ok(r) = reqwest::get(format!("http://{addr}/healthz")).await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(Error::unavailable("the benchmark's server did not start"))
}

/// `n` usable keys for the benchmark, with their plaintexts as header values.
fn bench_keys(
    n: usize,
    now: i64,
    integrity: &keybound::integrity::Integrity,
) -> (Vec<KeyRecord>, Vec<HeaderValue>) {
    (0..n)
        .map(|i| {
            let key = ApiKey::generate(KeyEnv::Test);
            let record = key_record(
                key.id().to_string(),
                integrity
                    .wrap_key_hash(key.id().as_str(), &key.secret_hash())
                    .to_vec(),
                format!("bench {i}"),
                now,
            );
            (record, header(key.expose()))
        })
        .unzip()
}

fn key_record(key_id: String, secret_hash: Vec<u8>, name: String, now: i64) -> KeyRecord {
    KeyRecord {
        key_id: KeyId::parse(&key_id).expect("bench key ids are well-formed"),
        env: KeyEnv::Test,
        name,
        description: None,
        secret_hash,
        scopes: SCOPES
            .map(|s| Scope::parse(s).expect("bench scopes are scopes"))
            .to_vec(),
        limited_scopes: None,
        rate_limit_per_minute: RATE_LIMIT,
        allowed_ips: vec![],
        allowed_origins: vec![],
        max_devices: 100_000,
        trust_on_enroll: false,
        attestation: keybound::store::AttestationPolicy::Preferred,
        status: KeyStatus::Active,
        status_reason: None,
        status_changed_at: None,
        created_at: now,
        expires_at: Some(now + 86_400),
        last_used_at: None,
        rotated_from: None,
        rotated_to: None,
    }
}

/// The rows `--seed-keys` and `--seed-devices` add: `bench` (the usable keys, when this run
/// creates them) plus filler keys up to `--seed-keys`; the simulated devices (enrolled with a
/// week of consistent history, so they are `trusted`) plus filler devices up to
/// `--seed-devices`, spread over every key.
fn seed_rows(
    args: &BenchArgs,
    bench: Vec<KeyRecord>,
    bench_ids: &[String],
    devices: &[SimDevice],
    now: i64,
) -> (Vec<KeyRecord>, Vec<DeviceRecord>) {
    let mut rng = rand::thread_rng();
    let mut keys = bench;
    let fillers = args.seed_keys.saturating_sub(bench_ids.len());
    keys.reserve(fillers);
    let mut all_ids: Vec<Arc<str>> = bench_ids.iter().map(|s| Arc::from(s.as_str())).collect();
    for i in 0..fillers {
        let id = format!("ak_test_{}", base62(&mut rng, 12));
        let mut hash = vec![0u8; keybound::integrity::WRAPPED_HASH_LEN];
        rng.fill(&mut hash[..]);
        all_ids.push(Arc::from(id.as_str()));
        keys.push(key_record(id, hash, format!("filler {i}"), now));
    }
    let mut rows = Vec::with_capacity(args.seed_devices);
    if args.seed_devices > 0 {
        let week = 7 * 86_400;
        for (i, d) in devices.iter().take(args.seed_devices).enumerate() {
            rows.push(device_row(
                format!("dev_bench{i:08}"),
                bench_ids[d.key_index].clone(),
                d.jkt.clone(),
                d.attributes.clone(),
                now - week,
            ));
        }
        let filler_attrs = devices
            .first()
            .map(|d| d.attributes.clone())
            .unwrap_or_default();
        for i in rows.len()..args.seed_devices {
            let mut jkt = [0u8; 32];
            rng.fill(&mut jkt);
            let key = &all_ids[i % all_ids.len()];
            rows.push(device_row(
                format!("dev_filler{i:08}"),
                key.to_string(),
                base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, jkt),
                filler_attrs.clone(),
                now - week,
            ));
        }
    }
    (keys, rows)
}

fn device_row(
    device_id: String,
    key_id: String,
    jkt: String,
    attributes: std::collections::BTreeMap<String, String>,
    created_at: i64,
) -> DeviceRecord {
    DeviceRecord {
        device_id,
        key_id: KeyId::parse(&key_id).expect("bench key ids are well-formed"),
        jkt: Thumbprint::parse(&jkt).expect("bench thumbprints are base64url SHA-256"),
        name: None,
        attributes: attributes.into(),
        status: DeviceStatus::Active,
        approved: false,
        baseline: 0,
        created_at,
        last_seen_at: created_at,
        exchange_count: 50,
        mismatch_count: 0,
        mismatch_fingerprint: None,
        networks: vec!["127.0.0.0/24".into()],
        trust_score: 0.9,
        trust_level: keybound::devices::TrustLevel::Trusted,
        trust_factors: keybound::store::JsonText::empty_list(),
        revoked_at: None,
        // The store allocates it.
        status_idx: 0,
        attestation: None,
    }
}

fn base62(rng: &mut impl Rng, n: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    (0..n)
        .map(|_| ALPHABET[rng.gen_range(0..62)] as char)
        .collect()
}
