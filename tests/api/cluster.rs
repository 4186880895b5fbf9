//! Cluster mode with real processes: several `keybound serve` children on loopback ports,
//! sharing one fresh PostgreSQL database and the test Redis, as behind a load balancer (one
//! issuer name for all). Then the failures: Redis and PostgreSQL cut mid-run through proxies
//! the test controls (the machine's services are never stopped), and an instance killed with
//! SIGKILL under load.
//!
//! Every test here needs both `KEYBOUND_TEST_POSTGRES_URL` and `KEYBOUND_TEST_REDIS_URL`, and
//! is skipped without them (outside CI).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::helpers::{ADMIN_TOKEN, TestDb, cli, expect_error, expect_json, redis_test_url};
use crate::proofs::Device;

// ---- the harness ----

/// What every instance of a test cluster shares.
struct Cluster {
    db: TestDb,
    redis_url: String,
    /// The public name of the cluster: instance 0's URL, as a load balancer's name would be.
    issuer: String,
    instances: Vec<Instance>,
    client: reqwest::Client,
    /// Extra environment (settings) for every instance.
    env: Vec<(&'static str, String)>,
}

/// One `keybound serve` child, killed when dropped.
struct Instance {
    addr: SocketAddr,
    child: Child,
    log: std::path::PathBuf,
}

/// A free loopback port: bind port 0, read it, let it go. (Another process could take it in
/// between; on a test machine that does not happen in practice.)
async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

impl Cluster {
    /// The services, or `None` (skip) when the environment has none.
    async fn services() -> Option<(TestDb, String)> {
        let redis = redis_test_url()?;
        let db = TestDb::postgres().await?;
        Some((db, redis))
    }

    /// Starts `n` instances on `db` and `redis_url`, waiting until each is ready. With
    /// `n == 0` the cluster's name is the port of the first instance [`spawn`](Self::spawn)
    /// will start, [`Cluster::first_port`].
    async fn start(db: TestDb, redis_url: String, n: usize) -> Cluster {
        Cluster::start_with_env(db, redis_url, n, vec![]).await
    }

    /// Like [`start`](Self::start), every instance with the settings in `env`.
    async fn start_with_env(
        db: TestDb,
        redis_url: String,
        n: usize,
        env: Vec<(&'static str, String)>,
    ) -> Cluster {
        let mut ports = Vec::new();
        for _ in 0..n.max(1) {
            ports.push(free_port().await);
        }
        let issuer = format!("http://127.0.0.1:{}", ports[0]);
        ports.truncate(n);
        let mut c = Cluster {
            db,
            redis_url,
            issuer,
            instances: Vec::new(),
            client: reqwest::Client::new(),
            env,
        };
        for port in ports {
            let (db_url, redis_url) = (c.db.url.clone(), c.redis_url.clone());
            let i = c.spawn(port, &db_url, &redis_url).await;
            c.instances.push(i);
        }
        c
    }

    /// Starts one more instance on `port` with the given dependency URLs (a test passes a
    /// proxy's address to cut a dependency of this instance alone), and waits for `/readyz`.
    async fn spawn(&self, port: u16, db_url: &str, redis_url: &str) -> Instance {
        let log = self.db.dir.path().join(format!("instance-{port}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_keybound"))
            .args([
                "--database-url",
                db_url,
                "serve",
                "--listen",
                &addr.to_string(),
            ])
            .args(["--issuer", &self.issuer, "--redis-url", redis_url])
            .args([
                "--master-key",
                self.db.master_key(),
                "--admin-token",
                ADMIN_TOKEN,
            ])
            // Tests share 127.0.0.1 and the Redis that keeps its failure budget: the refusals
            // these tests provoke on purpose must not lock out another test.
            .args(["--ip-failure-budget", "1000000"])
            .current_dir(self.db.dir.path())
            .env_remove("KEYBOUND_DATABASE_URL")
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("start keybound serve");
        let mut instance = Instance { addr, child, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.client.get(instance.url("/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                return instance;
            }
            if let Ok(Some(status)) = instance.child.try_wait() {
                panic!("instance on {addr} exited ({status}): {}", instance.logs());
            }
            assert!(
                Instant::now() < deadline,
                "instance on {addr} not ready within 30 s: {}",
                instance.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The port in the cluster's name (the issuer).
    fn first_port(&self) -> u16 {
        self.issuer.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn at(&self, i: usize) -> &Instance {
        &self.instances[i]
    }

    /// Creates a key through instance `i`; returns (plaintext, key id).
    async fn create_key(&self, i: usize, extra: Value) -> (String, String) {
        let mut body = json!({"name": "cluster", "scopes": ["read:users"], "env": "test",
                              "trust_on_enroll": true});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let res = self
            .admin(i, reqwest::Method::POST, "/keys")
            .json(&body)
            .send()
            .await;
        let created = expect_json(res.expect("create"), StatusCode::CREATED).await;
        (
            created["key"].as_str().unwrap().to_owned(),
            created["key_id"].as_str().unwrap().to_owned(),
        )
    }

    fn admin(&self, i: usize, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.at(i).url(&format!("/admin/v1{path}")))
            .bearer_auth(ADMIN_TOKEN)
    }

    /// A fresh proof for the token endpoint under the cluster's public name.
    fn proof(&self, dev: &Device) -> String {
        dev.proof("POST", &format!("{}/v1/token", self.issuer))
    }

    /// `POST /v1/token` on instance `i`.
    async fn exchange(&self, i: usize, key: &str, proof: &str) -> reqwest::Response {
        self.client
            .post(self.at(i).url("/v1/token"))
            .header("X-API-Key", key)
            .header("DPoP", proof)
            .json(&json!({}))
            .send()
            .await
            .expect("exchange request")
    }
}

impl Instance {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A loopback TCP proxy to a real service, which the test can cut and restore: while down it
/// closes every open connection and every new one at once, like a service that went away.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn to(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let (flag, gen_tx) = (up.clone(), generation.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = gen_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            up,
            generation,
            task,
        }
    }

    /// The service goes away: open connections are closed, new ones closed on accept.
    fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// The service is back.
    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.task.abort();
    }
}

/// `host:port` of a `scheme://[user@]host:port/…` URL.
fn service_addr(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("scheme").1;
    let authority = rest.split(['/', '?']).next().unwrap();
    let hostport = authority.rsplit('@').next().unwrap();
    let hostport = hostport.replace("localhost", "127.0.0.1");
    if hostport.contains(':') {
        hostport.parse().expect("host:port")
    } else {
        let port = if url.starts_with("redis") { 6379 } else { 5432 };
        format!("{hostport}:{port}").parse().expect("host")
    }
}

/// `url` with its `host:port` replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!("{scheme}://{}{addr}{tail}", userinfo.unwrap_or_default())
}

// ---- three instances sharing PostgreSQL and Redis ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_share_keys_replay_revocation_and_rate_limits() {
    let Some((db, redis)) = Cluster::services().await else {
        return;
    };
    let c = Cluster::start(db, redis, 3).await;

    // A key created on one instance is usable on the others at once.
    let (key, _) = c.create_key(0, json!({})).await;
    let dev = Device::new();
    for i in [1, 2] {
        let res = c.exchange(i, &key, &c.proof(&dev)).await;
        expect_json(res, StatusCode::OK).await;
    }

    // A proof accepted by one instance is a replay on every other.
    let proof = c.proof(&dev);
    expect_json(c.exchange(1, &key, &proof).await, StatusCode::OK).await;
    for i in [0, 2] {
        let res = c.exchange(i, &key, &proof).await;
        let why = format!("proof used on instance 1, replayed on {i}");
        expect_error(res, StatusCode::UNAUTHORIZED, "DPOP_REPLAY", &why).await;
    }

    // A revocation through one instance is in force on all within 1 s, even where the key
    // record was cached a moment before.
    let (victim, victim_id) = c.create_key(0, json!({})).await;
    // Past the second eviction that follows the creation, so the records cached next stay
    // until a message evicts them.
    tokio::time::sleep(keybound::store::cached::REEVICT_AFTER * 2).await;
    for i in 0..3 {
        expect_json(c.exchange(i, &victim, &c.proof(&dev)).await, StatusCode::OK).await;
    }
    let res = c
        .admin(
            0,
            reqwest::Method::POST,
            &format!("/keys/{victim_id}/revoke"),
        )
        .json(&json!({"reason": "cluster test"}))
        .send()
        .await
        .unwrap();
    expect_json(res, StatusCode::OK).await;
    let revoked_at = Instant::now();
    for i in [1, 2] {
        loop {
            let res = c.exchange(i, &victim, &c.proof(&dev)).await;
            if res.status() == StatusCode::UNAUTHORIZED {
                expect_error(res, StatusCode::UNAUTHORIZED, "INVALID_API_KEY", "revoked").await;
                break;
            }
            assert!(
                revoked_at.elapsed() < Duration::from_secs(1),
                "instance {i} still accepts the key 1 s after its revocation"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(revoked_at.elapsed() < Duration::from_secs(1));

    // A per-key rate limit holds across instances: 90 requests spread over three instances
    // against 30/min get the 30 of the burst (give or take the ~1 unit that refills while
    // they run), not 90.
    let (limited, _) = c.create_key(0, json!({"rate_limit_per_minute": 30})).await;
    let c = Arc::new(c);
    let dev = Arc::new(dev);
    let tasks: Vec<_> = (0..90)
        .map(|n| {
            let (c, dev, key) = (c.clone(), dev.clone(), limited.clone());
            tokio::spawn(async move { c.exchange(n % 3, &key, &c.proof(&dev)).await.status() })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let accepted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited_n = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!(accepted + limited_n, 90, "only 200 or 429: {statuses:?}");
    assert!(
        (27..=33).contains(&accepted),
        "30/min across three instances accepted {accepted} of 90"
    );
}

// ---- dependencies failing under a running instance ----

/// Waits until instance `i` issues a token again; returns how long that took.
async fn until_issuing(
    c: &Cluster,
    i: usize,
    key: &str,
    dev: &Device,
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let res = c.exchange(i, key, &c.proof(dev)).await;
        match res.status() {
            StatusCode::OK => return started.elapsed(),
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("while recovering: {other} {}", res.text().await.unwrap()),
        }
        assert!(
            started.elapsed() < within,
            "no recovery within {within:?}: {}",
            c.at(i).logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(c: &Cluster, i: usize) -> (StatusCode, Value) {
    let res = c.client.get(c.at(i).url("/readyz")).send().await.unwrap();
    let status = res.status();
    (status, res.json().await.expect("readyz is JSON"))
}

/// Which dependency a fault test cuts.
#[derive(Clone, Copy)]
enum Cut {
    Redis,
    Postgres,
}

/// One instance whose `cut` dependency goes through a proxy the test controls (the other is
/// reached directly), a key, and a device that has exchanged once, so the key and device
/// records are in the instance's cache when the dependency goes.
async fn behind_proxy(cut: Cut) -> Option<(Cluster, Proxy, String, Device)> {
    let (db, redis) = Cluster::services().await?;
    let proxied = match cut {
        Cut::Redis => &redis,
        Cut::Postgres => &db.url,
    };
    let proxy = Proxy::to(service_addr(proxied)).await;
    let (db_url, redis_url) = match cut {
        Cut::Redis => (db.url.clone(), through(&redis, proxy.addr)),
        Cut::Postgres => (through(&db.url, proxy.addr), redis.clone()),
    };
    let mut c = Cluster::start(db, redis, 0).await;
    let instance = c.spawn(c.first_port(), &db_url, &redis_url).await;
    c.instances.push(instance);
    let (key, _) = c.create_key(0, json!({})).await;
    let dev = Device::new();
    expect_json(c.exchange(0, &key, &c.proof(&dev)).await, StatusCode::OK).await;
    Some((c, proxy, key, dev))
}

/// `/readyz` names `down` as unavailable and `up` as fine. (That nothing was issued during the
/// outage is each exchange's 503: an exchange stores nothing that could be counted.)
async fn assert_outage(c: &Cluster, down: &str, up: &str) {
    let (status, body) = readyz(c, 0).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "UNAVAILABLE", "{body}");
    assert_eq!(body["checks"][down], "unavailable", "{body}");
    assert_eq!(body["checks"][up], "ok", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_is_503_and_the_instance_recovers_without_restart() {
    let Some((c, proxy, key, dev)) = behind_proxy(Cut::Redis).await else {
        return;
    };
    proxy.down();
    for n in 0..5 {
        let res = c.exchange(0, &key, &c.proof(&dev)).await;
        let why = format!("exchange {n} while Redis is away");
        expect_error(res, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", &why).await;
    }
    assert_outage(&c, "redis", "storage").await;

    proxy.restore();
    let took = until_issuing(&c, 0, &key, &dev, Duration::from_secs(5)).await;
    eprintln!("issuing again {took:?} after Redis came back");
    assert_eq!(readyz(&c, 0).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_going_away_is_503_and_the_instance_recovers_without_restart() {
    let Some((c, proxy, key, dev)) = behind_proxy(Cut::Postgres).await else {
        return;
    };
    proxy.down();
    // The key and device come from the cache and an exchange writes nothing: what stops these
    // is the instance's storage probe (every 100 ms, a second's timeout), which fails it
    // closed. Wait for it, then nothing at all is issued.
    let started = Instant::now();
    loop {
        let res = c.exchange(0, &key, &c.proof(&dev)).await;
        if res.status() == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "still issuing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "failing closed {:?} after PostgreSQL went",
        started.elapsed()
    );
    let proofs: Vec<String> = (0..3).map(|_| c.proof(&dev)).collect();
    let attempts = proofs.iter().map(|p| c.exchange(0, &key, p));
    for (n, res) in futures::future::join_all(attempts)
        .await
        .into_iter()
        .enumerate()
    {
        let why = format!("exchange {n} while PostgreSQL is away");
        expect_error(res, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", &why).await;
    }
    let res = c
        .admin(0, reqwest::Method::GET, "/keys")
        .send()
        .await
        .unwrap();
    expect_error(
        res,
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "admin list",
    )
    .await;
    assert_outage(&c, "storage", "redis").await;

    proxy.restore();
    let took = until_issuing(&c, 0, &key, &dev, Duration::from_secs(15)).await;
    eprintln!("issuing again {took:?} after PostgreSQL came back");
    assert_eq!(readyz(&c, 0).await.0, StatusCode::OK);
}

/// An instance cut off from Redis cannot announce its changes; it owes the others an "evict
/// everything" and sends it as soon as Redis answers, so they do not keep serving a revoked
/// key for the rest of their cache TTL (5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_during_a_redis_outage_reaches_the_others_when_it_ends() {
    let Some((db, redis)) = Cluster::services().await else {
        return;
    };
    let proxy = Proxy::to(service_addr(&redis)).await;
    let mut c = Cluster::start(db, redis.clone(), 1).await;
    let db_url = c.db.url.clone();
    let cut_off = c
        .spawn(free_port().await, &db_url, &through(&redis, proxy.addr))
        .await;
    c.instances.push(cut_off);
    let (key, key_id) = c.create_key(0, json!({})).await;
    let dev = Device::new();
    // Instance 0 caches the key record, good for 5 s (after the second eviction that followed
    // the key's creation, `REEVICT_AFTER`, so nothing but a message can evict it now).
    tokio::time::sleep(keybound::store::cached::REEVICT_AFTER * 2).await;
    expect_json(c.exchange(0, &key, &c.proof(&dev)).await, StatusCode::OK).await;

    proxy.down();
    let revoked_at = Instant::now();
    let res = c
        .admin(1, reqwest::Method::POST, &format!("/keys/{key_id}/revoke"))
        .json(&json!({"reason": "revoked while cut off from Redis"}))
        .send()
        .await
        .unwrap();
    expect_json(res, StatusCode::OK).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();

    loop {
        let res = c.exchange(0, &key, &c.proof(&dev)).await;
        if res.status() == StatusCode::UNAUTHORIZED {
            break;
        }
        assert_eq!(res.status(), StatusCode::OK);
        assert!(
            revoked_at.elapsed() < Duration::from_millis(2500),
            "instance 0 still accepts the key {:?} after its revocation",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "refused everywhere {:?} after the revocation",
        revoked_at.elapsed()
    );
}

// ---- a crash under load ----

/// What the load acknowledged: key ids whose creation got a 201, and those whose revocation
/// got a 200.
#[derive(Default)]
struct Acked {
    created: Vec<String>,
    revoked: Vec<String>,
}

/// Creates and revokes keys on instance `i` until a request fails (the instance died) or
/// `stop` is set.
async fn churn(c: Arc<Cluster>, i: usize, stop: Arc<AtomicBool>) -> Acked {
    let mut acked = Acked::default();
    let body = json!({"name": "churn", "scopes": ["read:users"], "env": "test"});
    while !stop.load(Ordering::SeqCst) {
        let Ok(res) = c
            .admin(i, reqwest::Method::POST, "/keys")
            .json(&body)
            .send()
            .await
        else {
            break;
        };
        if res.status() != StatusCode::CREATED {
            break;
        }
        let Ok(v) = res.json::<Value>().await else {
            break;
        };
        let id = v["key_id"].as_str().unwrap().to_owned();
        acked.created.push(id.clone());
        if acked.created.len() % 2 == 0 {
            let res = c
                .admin(i, reqwest::Method::POST, &format!("/keys/{id}/revoke"))
                .json(&json!({"reason": "churn"}))
                .send()
                .await;
            match res {
                Ok(r) if r.status() == StatusCode::OK => acked.revoked.push(id),
                _ => break,
            }
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_acknowledged_write() {
    let Some((db, redis)) = Cluster::services().await else {
        return;
    };
    let c = Cluster::start(db, redis, 2).await;
    // Instance 0 is killed; instance 1 writes to the same audit chain all along.
    let victim_pid = c.at(0).child.id().expect("running");
    let c = Arc::new(c);
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for i in [0, 0, 0, 1, 1] {
        workers.push(tokio::spawn(churn(c.clone(), i, stop.clone())));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &victim_pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = Acked::default();
    for w in workers {
        let a = w.await.unwrap();
        acked.created.extend(a.created);
        acked.revoked.extend(a.revoked);
    }
    assert!(
        acked.created.len() >= 10,
        "the load did too little to mean anything: {} keys",
        acked.created.len()
    );

    // Everything acknowledged is there, on the surviving instance and in the audit log.
    let store = c.db.store().await;
    for id in &acked.created {
        let key = store.get_key(id).await.unwrap();
        assert!(key.is_some(), "acknowledged key {id} lost");
    }
    for id in &acked.revoked {
        let key = store.get_key(id).await.unwrap().unwrap();
        assert_eq!(
            key.status.as_str(),
            "revoked",
            "acknowledged revocation of {id} lost"
        );
        let res = c
            .admin(1, reqwest::Method::GET, &format!("/keys/{id}"))
            .send()
            .await;
        assert_eq!(
            expect_json(res.unwrap(), StatusCode::OK).await["status"],
            "revoked"
        );
    }
    let mut audited = std::collections::HashSet::new();
    let mut after = 0;
    loop {
        let rows = store.list_audit(after, 1000).await.unwrap();
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for r in rows {
            audited.insert((
                r.entry.action.clone(),
                r.entry.target.clone().unwrap_or_default(),
            ));
        }
    }
    for id in &acked.created {
        assert!(
            audited.contains(&("key.create".to_owned(), id.clone())),
            "create of {id} not audited"
        );
    }
    for id in &acked.revoked {
        assert!(
            audited.contains(&("key.revoke".to_owned(), id.clone())),
            "revoke of {id} not audited"
        );
    }
    let out = cli(&c.db, &["audit", "verify"]).await;
    assert_eq!(out.code, 0, "audit verify after SIGKILL: {out:?}");
}

// ---- start-up ----

/// Redis down at start: `serve` does not come up half-configured; it exits quickly with an
/// error that names Redis (and never the URL, which may carry a password).
#[tokio::test]
async fn serve_refuses_to_start_without_redis() {
    let Some((db, _)) = Cluster::services().await else {
        return;
    };
    let closed = format!("redis://:hunter2@127.0.0.1:{}/", free_port().await);
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_keybound"))
        .args([
            "--database-url",
            &db.url,
            "serve",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--redis-url", &closed, "--master-key", db.master_key()])
        .current_dir(db.dir.path())
        .env_remove("KEYBOUND_DATABASE_URL")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run keybound serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("redis"), "names the dependency: {stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Contract 7 with shared windows: a usage spike spread over three instances, each below the
/// threshold on its own, raises exactly one `USAGE_SPIKE` for the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usage_spike_spread_over_three_instances_raises_one_alert() {
    let Some((db, redis)) = Cluster::services().await else {
        return;
    };
    let env = vec![("KEYBOUND_USAGE_SPIKE_PER_MINUTE", "5".to_owned())];
    let c = Cluster::start_with_env(db, redis, 3, env).await;
    let (key, key_id) = c
        .create_key(0, json!({"rate_limit_per_minute": 1000}))
        .await;
    let dev = Device::new();
    // All nine exchanges in one minute window.
    if crate::helpers::now() % 60 > 45 {
        tokio::time::sleep(Duration::from_secs(
            (61 - crate::helpers::now() % 60) as u64,
        ))
        .await;
    }
    for round in 0..3 {
        for i in 0..3 {
            let res = c.exchange(i, &key, &c.proof(&dev)).await;
            assert_eq!(
                res.status(),
                StatusCode::OK,
                "round {round} on instance {i}"
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let alerts = expect_json(
        c.admin(
            1,
            reqwest::Method::GET,
            &format!("/alerts?kind=USAGE_SPIKE&key_id={key_id}"),
        )
        .send()
        .await
        .unwrap(),
        StatusCode::OK,
    )
    .await;
    let alerts = alerts["alerts"].as_array().unwrap();
    assert_eq!(
        alerts.len(),
        1,
        "one alert for the cluster, each instance saw 3 of 9: {alerts:?}"
    );
    assert_eq!(alerts[0]["details"]["threshold"], 5);
    assert_eq!(
        alerts[0]["details"]["exchanges_this_minute"], 6,
        "raised by the first over"
    );
}

/// The status list value of `idx` as instance `i` serves it now.
async fn list_value(c: &Cluster, i: usize, uri: &str, idx: u64) -> u8 {
    let path = uri
        .strip_prefix(&c.issuer)
        .expect("the list is under the issuer");
    let res = c.client.get(c.at(i).url(path)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let claims = crate::token::claims_of(&res.text().await.unwrap());
    crate::status_lists::values_by_python(&claims, &[idx]).map_or_else(
        || crate::status_lists::keybound_decode(&claims, idx),
        |v| v[0],
    )
}

/// Contract 10: a change made through one instance is in the list every other instance serves
/// within 1 s (each had the list cached before the change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_list_changes_reach_every_instance_within_a_second() {
    let Some((db, redis)) = Cluster::services().await else {
        return;
    };
    let c = Cluster::start(db, redis, 3).await;
    let (key, key_id) = c.create_key(0, json!({})).await;
    let (phone, tablet) = (Device::new(), Device::new());
    let mut entries = Vec::new();
    for dev in [&phone, &tablet] {
        let body = expect_json(c.exchange(0, &key, &c.proof(dev)).await, StatusCode::OK).await;
        let claims = crate::token::claims_of(body["access_token"].as_str().unwrap());
        let sl = &claims["status"]["status_list"];
        entries.push((
            sl["uri"].as_str().unwrap().to_owned(),
            sl["idx"].as_u64().unwrap(),
        ));
    }
    let devices = expect_json(
        c.admin(0, reqwest::Method::GET, &format!("/keys/{key_id}/devices"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    let phone_id = devices["devices"][0]["device_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // (change, made through instance, then the values of (phone, tablet) everywhere)
    let steps = [
        (format!("/keys/{key_id}/suspend"), 0, [2, 2]),
        (format!("/devices/{phone_id}/revoke"), 1, [1, 2]),
        (format!("/keys/{key_id}/resume"), 2, [1, 0]),
        (format!("/keys/{key_id}/revoke"), 0, [1, 1]),
    ];
    for (path, via, want) in steps {
        // Every instance has the current list cached before the change.
        for i in 0..3 {
            for (uri, idx) in &entries {
                list_value(&c, i, uri, *idx).await;
            }
        }
        let res = c
            .admin(via, reqwest::Method::POST, &path)
            .json(&json!({"reason": "test"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        let changed = Instant::now();
        for i in 0..3 {
            loop {
                let got = [
                    list_value(&c, i, &entries[0].0, entries[0].1).await,
                    list_value(&c, i, &entries[1].0, entries[1].1).await,
                ];
                if got == want {
                    break;
                }
                assert!(
                    changed.elapsed() < Duration::from_secs(1),
                    "after {path} via {via}: instance {i} still serves {got:?}, not {want:?}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
