//! Test harness: a fresh database per test (SQLite file, or a new PostgreSQL database when
//! `KEYBOUND_TEST_POSTGRES_URL` is set), the server in-process on a loopback port chosen by
//! the OS, typed request helpers, and the real `keybound` binary for CLI tests.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;

use keybound::config::ServeArgs;
use keybound::server::Running;
use keybound::store::{Store, testing};
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::Value;
use tempfile::TempDir;

/// The admin token every `spawn_app` server is configured with.
pub const ADMIN_TOKEN: &str = "test-admin-token-with-enough-entropy-0123456789";

/// Generates, for each listed `async fn name(db: TestDb)`, a module `name` holding one test
/// per backend: `name::sqlite` always, `name::postgres` when PostgreSQL is configured.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::helpers::TestDb::sqlite().await).await
            }

            #[tokio::test]
            async fn postgres() {
                if let Some(db) = $crate::helpers::TestDb::postgres().await {
                    super::$name(db).await
                }
            }
        }
    )*};
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test; a PostgreSQL one is dropped when this is dropped.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    /// Holds the SQLite file (and is a scratch directory for any test).
    pub dir: TempDir,
    /// The master key sealing this database's signing keys: every server started on the
    /// database must use the same one, as in production.
    master_key: String,
    /// A PostgreSQL test's slot, held until the test ends.
    _slot: Option<tokio::sync::SemaphorePermit<'static>>,
}

/// How many PostgreSQL tests run at once. A test may hold a server's pool (up to 10
/// connections), a second store and CLI processes; unbounded parallel tests on a many-core CI
/// runner would exceed PostgreSQL's default `max_connections` (100). A tokio semaphore works
/// across the tests' separate runtimes.
static POSTGRES_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

impl TestDb {
    /// A new SQLite database file in a temporary directory (created by the first open).
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("keybound.db").display());
        TestDb {
            url,
            backend: Backend::Sqlite,
            dir,
            master_key: random_master_key(),
            _slot: None,
        }
    }

    /// A new, uniquely named PostgreSQL database on the server named by
    /// `KEYBOUND_TEST_POSTGRES_URL`. `None` (the test is skipped) when that is unset, except
    /// under `CI=true`, where a missing PostgreSQL must fail the run rather than hide it.
    pub async fn postgres() -> Option<TestDb> {
        let Some(base) = testing::postgres_test_url() else {
            eprintln!("skipped: set KEYBOUND_TEST_POSTGRES_URL to run the PostgreSQL tests");
            return None;
        };
        let slot = POSTGRES_SLOTS
            .acquire()
            .await
            .expect("semaphore never closed");
        Some(TestDb {
            url: testing::fresh_postgres_url(&base).await,
            backend: Backend::Postgres,
            dir: tempfile::tempdir().expect("temp dir"),
            master_key: random_master_key(),
            _slot: Some(slot),
        })
    }

    /// The master key the servers of this database use (base64).
    pub fn master_key(&self) -> &str {
        &self.master_key
    }

    /// Opens the store the way every subcommand does (creating and migrating).
    pub async fn store(&self) -> Arc<dyn Store> {
        keybound::store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("open {:?} store: {e}", self.backend))
    }

    /// [`store`](Self::store) with the database's integrity keys installed, as a server or a
    /// CLI command with the master key has them: it can write audit rows.
    pub async fn protected_store(&self) -> Arc<dyn Store> {
        let store = self.store().await;
        let master = keybound::tokens::signing::MasterKey::from_base64(&self.master_key)
            .expect("a valid master key");
        keybound::integrity::load_or_enable(&*store, &master, now())
            .await
            .expect("the integrity keys load");
        store
    }

    /// A byte string as an SQL literal of this database (for [`execute`](Self::execute)).
    pub fn bytes_literal(&self, bytes: &[u8]) -> String {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        match self.backend {
            Backend::Sqlite => format!("X'{hex}'"),
            Backend::Postgres => format!("decode('{hex}', 'hex')"),
        }
    }

    /// Runs one raw SQL statement on the database, behind keybound's back (to tamper with it).
    pub async fn execute(&self, sql: &str) -> u64 {
        use sqlx::Connection;
        match self.backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect to sqlite");
                sqlx::query(sql)
                    .execute(&mut c)
                    .await
                    .expect(sql)
                    .rows_affected()
            }
            Backend::Postgres => {
                let mut c = pg_connect(&self.url).await;
                sqlx::query(sql)
                    .execute(&mut c)
                    .await
                    .expect(sql)
                    .rows_affected()
            }
        }
    }

    /// Drops the PostgreSQL database now, terminating every connection to it.
    pub async fn drop_postgres_database(&self) {
        assert_eq!(self.backend, Backend::Postgres);
        force_drop(&self.url).await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.backend != Backend::Postgres {
            return;
        }
        let url = self.url.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on; a short-lived
        // runtime on its own thread can.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(force_drop(&url));
        })
        .join();
    }
}

/// `DROP DATABASE … WITH (FORCE)` (PostgreSQL 13+): terminating the connections and dropping
/// in one statement. Doing it in two (what sqlx's `force_drop_database` does) races with a
/// running server's background tasks, which reconnect in between.
async fn force_drop(url: &str) {
    let base = testing::postgres_test_url().expect("a PostgreSQL test database has a server");
    let name = url
        .rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .expect("a database name");
    let mut admin = pg_connect(&base).await;
    sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
        .execute(&mut admin)
        .await
        .expect("drop test database");
}

fn random_master_key() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut k = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut k);
    base64::engine::general_purpose::STANDARD.encode(k)
}

async fn pg_connect(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at KEYBOUND_TEST_POSTGRES_URL: {e}"))
}

// ---- the server ----

/// A server running in-process on its own database.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The admin API's own address, when started with `--admin-listen`.
    pub admin_addr: Option<SocketAddr>,
    pub client: reqwest::Client,
    /// The server's store, for arranging what the API cannot (devices) and for checks.
    pub store: Arc<dyn Store>,
    running: Option<Running>,
}

/// Starts a server on `db` with [`ADMIN_TOKEN`].
pub async fn spawn_app(db: &TestDb) -> TestApp {
    spawn_app_with(db, Some(ADMIN_TOKEN)).await
}

/// Starts a server on `db`; `admin_token: None` leaves the admin API off.
pub async fn spawn_app_with(db: &TestDb, admin_token: Option<&str>) -> TestApp {
    let mut args = test_args(db);
    args.admin_token = admin_token.map(SecretString::from);
    start_with(db, args).await
}

/// Starts a server on `db` with [`ADMIN_TOKEN`] and the settings `configure` makes.
pub async fn spawn_app_args(db: &TestDb, configure: impl FnOnce(&mut ServeArgs)) -> TestApp {
    let mut args = test_args(db);
    args.admin_token = Some(SecretString::from(ADMIN_TOKEN));
    configure(&mut args);
    start_with(db, args).await
}

/// The Redis for tests, from `KEYBOUND_TEST_REDIS_URL`; `None` (skip) when unset, except
/// under `CI=true`, where a missing Redis fails the run.
pub fn redis_test_url() -> Option<String> {
    keybound::store::testing::redis_test_url()
}

/// Test defaults, with the database's own master key: every server started on a database
/// uses the same one, as in production, so a restarted server can unseal its signing key.
fn test_args(db: &TestDb) -> ServeArgs {
    let mut args = ServeArgs::for_tests();
    args.master_key = Some(SecretString::from(db.master_key.clone()));
    args
}

async fn start_with(db: &TestDb, args: ServeArgs) -> TestApp {
    spawn_app_on(db.store().await, args).await
}

/// Starts a server with `args` on a store the test opened itself (through a proxy it
/// controls, say).
pub async fn spawn_app_on(store: Arc<dyn Store>, args: ServeArgs) -> TestApp {
    let running = keybound::server::start(args, store.clone())
        .await
        .expect("server starts");
    assert!(running.addr.ip().is_loopback());
    TestApp {
        addr: running.addr,
        admin_addr: running.admin_addr,
        client: reqwest::Client::new(),
        store,
        running: Some(running),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A request with the admin token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(&format!("/admin/v1{path}")))
            .bearer_auth(ADMIN_TOKEN)
    }

    // These build the request before returning the future, so the future borrows `self`
    // only, not `path`: a caller can pass a `&format!(…)` temporary from a closure.
    pub fn admin_get(&self, path: &str) -> impl Future<Output = reqwest::Response> + use<'_> {
        send(self.admin(reqwest::Method::GET, path))
    }

    pub fn admin_post(
        &self,
        path: &str,
        body: Value,
    ) -> impl Future<Output = reqwest::Response> + use<'_> {
        send(self.admin(reqwest::Method::POST, path).json(&body))
    }

    pub fn admin_patch(
        &self,
        path: &str,
        body: Value,
    ) -> impl Future<Output = reqwest::Response> + use<'_> {
        send(self.admin(reqwest::Method::PATCH, path).json(&body))
    }

    /// Creates a key through the API and returns the 201 body (`key`, `key_id`, metadata).
    pub async fn create_key(&self, body: Value) -> Value {
        let res = self.admin_post("/keys", body).await;
        expect_json(res, StatusCode::CREATED).await
    }

    /// `GET /admin/v1/keys/{id}`, expecting 200.
    pub async fn get_key(&self, key_id: &str) -> Value {
        expect_json(
            self.admin_get(&format!("/keys/{key_id}")).await,
            StatusCode::OK,
        )
        .await
    }

    /// The running server's state (its refresh sealer, settings, store).
    pub fn state(&self) -> &keybound::state::AppState {
        &self.running.as_ref().expect("running").state
    }

    /// Stops the server gracefully (the database stays).
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }
}

async fn send(req: reqwest::RequestBuilder) -> reqwest::Response {
    req.send().await.expect("request")
}

/// Asserts the status and returns the JSON body.
pub async fn expect_json(res: reqwest::Response, status: StatusCode) -> Value {
    let got = res.status();
    let url = res.url().clone();
    let text = res.text().await.expect("body");
    assert_eq!(got, status, "{url}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {text}"))
}

/// Asserts the contract's error envelope with `status` and `code`.
pub async fn expect_error(res: reqwest::Response, status: StatusCode, code: &str, why: &str) {
    let got = res.status();
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let text = res.text().await.expect("body");
    assert_eq!(got, status, "{why}: {text}");
    assert_eq!(ct.as_deref(), Some("application/json"), "{why}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{why}: {e}: {text}"));
    assert_eq!(v["error"]["code"], code, "{why}: {text}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{why}: message missing: {text}"
    );
}

/// A minimal valid create body.
pub fn key_body(name: &str) -> Value {
    serde_json::json!({"name": name, "scopes": ["read:users", "write:orders"], "env": "test"})
}

/// Current unix time.
pub fn now() -> i64 {
    keybound::clock::now()
}

// ---- the command line ----

/// What a run of the `keybound` binary printed.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Asserts exit 0 and returns self.
    #[track_caller]
    pub fn ok(self) -> CliOutput {
        assert_eq!(self.code, 0, "expected success: {self:?}");
        self
    }

    /// stdout as the one JSON object it must be.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {self:?}"))
    }

    /// Everything printed.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `keybound --database-url <db> ARGS…` in the test's scratch directory, with the
/// database's master key (as an operator's shell would have `KEYBOUND_MASTER_KEY`).
pub async fn cli(db: &TestDb, args: &[&str]) -> CliOutput {
    cli_with_master_key(db, Some(&db.master_key), args).await
}

/// [`cli`] with another master key, or none at all.
pub async fn cli_with_master_key(
    db: &TestDb,
    master_key: Option<&str>,
    args: &[&str],
) -> CliOutput {
    let mut full = vec!["--database-url", db.url.as_str()];
    full.extend_from_slice(args);
    let mut env = Vec::new();
    if let Some(k) = master_key {
        env.push(("KEYBOUND_MASTER_KEY", k));
    }
    run_binary_env(db.dir.path(), &full, None, &env).await
}

/// Runs the `keybound` binary in `cwd` with no database settings from the environment,
/// optionally feeding `stdin`.
pub async fn run_binary(cwd: &std::path::Path, args: &[&str], stdin: Option<&[u8]>) -> CliOutput {
    run_binary_env(cwd, args, stdin, &[]).await
}

/// [`run_binary`] with extra environment variables (and no inherited master key).
pub async fn run_binary_env(
    cwd: &std::path::Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    env: &[(&str, &str)],
) -> CliOutput {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keybound"))
        .args(args)
        .env_remove("KEYBOUND_MASTER_KEY")
        .env_remove("KEYBOUND_MASTER_KEY_FILE")
        .envs(env.iter().copied())
        .current_dir(cwd)
        .env_remove("KEYBOUND_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run keybound");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(input).await.expect("write stdin");
        drop(pipe);
    }
    let out = child.wait_with_output().await.expect("keybound exits");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
