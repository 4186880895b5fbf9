//! Conformance tests: every test function runs against SQLite (a temporary file) and against
//! PostgreSQL (a fresh database per test on the server named by `KEYBOUND_TEST_POSTGRES_URL`),
//! so both backends are held to the same behaviour.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use sqlx::Connection as _;

use super::testing::{drop_postgres_database, fresh_postgres_url, postgres_test_url};
use super::writer::{Answer, Batch as _, BatchError, WriteOp};
use super::*;
use crate::audit::{self, Verdict};
use crate::error::Error;

mod devices;
mod keys;
mod logs;
mod tokens;

use devices::*;
use keys::*;
use logs::*;
use tokens::*;

// ---- harness ----

/// How many PostgreSQL tests run at once. Each store's pool may open 10 connections and some
/// tests open two stores; on a many-core CI runner, unbounded parallel tests would exceed the
/// server's default `max_connections` (100). Tokio's semaphore works across the tests' runtimes.
static POSTGRES_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);

/// One test's database: its URL and an open store on it.
struct TestDb {
    url: String,
    store: Arc<dyn Store>,
    /// Holds the SQLite file's directory until the test ends.
    _dir: Option<tempfile::TempDir>,
    /// Holds a PostgreSQL test's slot until the test ends.
    _slot: Option<tokio::sync::SemaphorePermit<'static>>,
}

impl TestDb {
    async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("keybound.db").display());
        let store = open(&url).await.unwrap();
        TestDb {
            url,
            store,
            _dir: Some(dir),
            _slot: None,
        }
    }

    async fn postgres() -> Option<Self> {
        let Some(base) = postgres_test_url() else {
            println!("skipped: KEYBOUND_TEST_POSTGRES_URL not set");
            return None;
        };
        let slot = POSTGRES_SLOTS.acquire().await.unwrap();
        let url = fresh_postgres_url(&base).await;
        let store = open(&url).await.unwrap();
        Some(TestDb {
            url,
            store,
            _dir: None,
            _slot: Some(slot),
        })
    }

    /// A second, independent store on the same database, as another process would have.
    async fn other_process(&self) -> Arc<dyn Store> {
        open(&self.url).await.unwrap()
    }

    /// Closes the store and opens the database again.
    async fn reopen(&mut self) {
        self.store = open(&self.url).await.unwrap();
    }

    /// Runs raw SQL outside the store, as someone with database access could.
    async fn tamper(&self, sql: &str) {
        if self.store.backend() == "sqlite" {
            let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        } else {
            let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }

    /// Runs `ops` as one group-commit transaction on a connection pool of the store's
    /// database, bypassing the writer's queue, so they are sure to share it.
    async fn run_batch(&self, ops: &[WriteOp]) -> Vec<Answer> {
        self.try_batch(ops)
            .await
            .unwrap_or_else(|e| panic!("batch failed: {e:?}"))
    }

    /// [`run_batch`](Self::run_batch), answering how the batch failed.
    async fn try_batch(&self, ops: &[WriteOp]) -> Result<Vec<Answer>, BatchError> {
        if self.store.backend() == "sqlite" {
            let pool = sqlx::SqlitePool::connect(&self.url).await.unwrap();
            pool.run(ops).await
        } else {
            let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
            pool.run(ops).await
        }
    }

    /// Drops a PostgreSQL test database (only reached when the test passed, so a failed
    /// test's database stays for inspection).
    async fn finish(self) {
        let TestDb { url, store, .. } = self;
        let backend = store.backend();
        drop(store);
        if backend == "postgres" {
            drop_postgres_database(&url).await;
        }
    }
}

/// Declares each test function once per backend: `store::tests::sqlite::NAME` and
/// `store::tests::postgres::NAME`.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let mut db = super::TestDb::sqlite().await;
                    super::$test(&mut db).await;
                    db.finish().await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    let Some(mut db) = super::TestDb::postgres().await else { return };
                    super::$test(&mut db).await;
                    db.finish().await;
                }
            )*
        }
    };
}

conformance!(
    keys_round_trip_and_page_in_id_order,
    key_updates_are_audited,
    status_changes_are_audited_and_fed_to_verifiers,
    rotation_links_keys_and_never_extends_the_old_one,
    purge_takes_devices_along_and_leaves_families_to_their_expiry,
    touch_only_moves_last_use_forward,
    touches_of_many_keys_are_each_written_once,
    key_touches_keep_cached_keys_current,
    older_touch_answers_do_not_replace_newer_keys,
    a_row_that_does_not_decode_is_a_storage_error,
    enrollment_new_existing_and_limit,
    concurrent_enrollments_respect_the_limit,
    concurrent_enrollments_get_distinct_status_indexes,
    device_revoke_and_approve,
    device_usage_is_saved,
    history_writes_keep_cached_devices_current,
    older_history_answers_do_not_replace_newer_entries,
    history_queued_before_an_approval_keeps_its_fingerprint,
    approvals_behind_the_cache_are_not_undone,
    refresh_families_advance_once,
    expired_refresh_families_are_purged,
    concurrent_first_refreshes_have_one_winner,
    revoked_families_do_not_advance,
    concurrent_rotations_have_one_winner,
    family_revocation_is_fed_once,
    a_batch_answers_each_family_write_as_if_alone,
    batches_of_family_writes_alone_answer_each,
    one_bad_write_fails_only_its_caller,
    usage_batches_share_the_token_writes,
    signing_key_insert_retires_the_previous,
    concurrent_audit_appends_stay_chained,
    edited_audit_row_is_detected,
    deleted_audit_row_is_detected,
    integrity_upgrade_wraps_old_key_hashes_once,
    rewritten_and_truncated_audit_is_detected,
    a_deleted_integrity_root_is_not_replaced,
    alerts_filter_newest_first,
    alert_batches_are_stored_together_and_purged_by_age,
    revocation_feed_pages_by_cursor,
    data_survives_reopen,
);

// ---- integrity ----

/// The master key of every store in these tests (fixed, so two stores of one database agree).
fn test_master() -> crate::tokens::signing::MasterKey {
    use base64::Engine as _;
    crate::tokens::signing::MasterKey::from_base64(
        &base64::engine::general_purpose::STANDARD.encode([0x42u8; 32]),
    )
    .unwrap()
}

/// Installs the database's integrity keys into `store` (enabling them on first use), as a
/// server start does.
async fn protect(store: &dyn Store) -> Arc<crate::integrity::Integrity> {
    crate::integrity::load_or_enable(store, &test_master(), T0)
        .await
        .unwrap()
}

// ---- records ----

const T0: i64 = 1_700_000_000;

/// A key id with a 12-character body made of `c`.
fn key_id(c: char) -> String {
    format!("ak_test_{}", c.to_string().repeat(12))
}

/// Scopes from literals.
fn scopes(list: &[&str]) -> Vec<crate::ids::Scope> {
    list.iter()
        .map(|s| crate::ids::Scope::parse(s).expect("a scope"))
        .collect()
}

/// A valid thumbprint (base64url SHA-256) made from `seed`, different for every seed.
fn thumbprint(seed: &str) -> crate::ids::Thumbprint {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(seed.as_bytes());
    crate::ids::Thumbprint::parse(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest))
        .expect("43 base64url characters")
}

/// A key record with every field set (a limited set, an allow list of each kind); other
/// modules' unit tests start from it too.
pub(crate) fn key(id: &str) -> KeyRecord {
    KeyRecord {
        key_id: crate::ids::KeyId::parse(id).expect("a key id"),
        env: crate::ids::KeyEnv::Test,
        name: format!("key {id}"),
        description: Some("for the tests".into()),
        secret_hash: vec![7; 32],
        scopes: scopes(&["read:users", "write:orders"]),
        limited_scopes: Some(scopes(&["read:users"])),
        rate_limit_per_minute: 600,
        allowed_ips: vec!["10.0.0.0/8".parse().unwrap()],
        allowed_origins: vec![crate::ids::Origin::parse("https://app.example.com").unwrap()],
        max_devices: 5,
        trust_on_enroll: false,
        attestation: crate::store::AttestationPolicy::Preferred,
        status: KeyStatus::Active,
        status_reason: None,
        status_changed_at: None,
        created_at: T0,
        expires_at: Some(T0 + 90 * 86_400),
        last_used_at: None,
        rotated_from: None,
        rotated_to: None,
    }
}

fn device(key_id: &str, n: u32) -> DeviceRecord {
    DeviceRecord {
        device_id: format!("dev_{key_id}_{n}"),
        key_id: crate::ids::KeyId::parse(key_id).expect("a key id"),
        jkt: thumbprint(&format!("jkt-{key_id}-{n}")),
        name: Some(format!("phone {n}")),
        attributes: Arc::new(BTreeMap::from([
            ("platform".into(), "ios".into()),
            ("model".into(), "iPhone15,2".into()),
        ])),
        status: DeviceStatus::Active,
        approved: false,
        baseline: 0,
        created_at: T0 + i64::from(n),
        last_seen_at: T0 + i64::from(n),
        exchange_count: 1,
        mismatch_count: 0,
        mismatch_fingerprint: None,
        networks: vec!["203.0.113.0/24".into()],
        trust_score: 0.17302078100154195,
        trust_level: crate::devices::TrustLevel::Limited,
        trust_factors: crate::store::JsonText::of(&json!({"attributes": 1.0, "history": 0.1})),
        revoked_at: None,
        status_idx: 0,
        attestation: None,
    }
}

fn family(d: &DeviceRecord, family: &str, generation: i64) -> FamilyRecord {
    FamilyRecord {
        family_id: family.to_owned(),
        key_id: d.key_id.clone(),
        device_id: d.device_id.clone(),
        jkt: d.jkt.clone(),
        generation,
        created_at: T0,
        rotated_at: T0,
        expires_at: T0 + 86_400,
        revoked_at: None,
        grace_token: None,
        grace_until: None,
    }
}

fn audit(action: &str, target: Option<&str>) -> AuditEntry {
    AuditEntry {
        at: T0,
        actor: "cli".into(),
        action: action.into(),
        target: target.map(str::to_owned),
        ip: Some("127.0.0.1".into()),
        // A float that serde_json only reads back exactly with `float_roundtrip`.
        details: json!({"reason": "test", "score": 0.17302078100154195, "n": [1, 2]}),
    }
}

/// A key with one enrolled device.
async fn key_with_device(store: &dyn Store, c: char) -> (KeyRecord, DeviceRecord) {
    let k = key(&key_id(c));
    store
        .create_key(&k, &audit("key.create", Some(&k.key_id)))
        .await
        .unwrap();
    let d = enrolled(
        store
            .enroll_device(&device(&k.key_id, 1), EnrollLimits::max_devices(5))
            .await
            .unwrap(),
    );
    (k, d)
}

/// The stored record of an enrollment that must have enrolled.
/// The device of a new enrollment that replaced nothing, next to no trusted device.
fn enrolled(e: Enrollment) -> DeviceRecord {
    match e {
        Enrollment::Enrolled {
            device,
            replaced: None,
            key_had_trusted: false,
        } => *device,
        other => panic!("expected a new enrollment, got {other:?}"),
    }
}

async fn audit_actions(store: &dyn Store) -> Vec<String> {
    all_audit(store)
        .await
        .into_iter()
        .map(|r| r.entry.action)
        .collect()
}

async fn all_audit(store: &dyn Store) -> Vec<AuditRow> {
    store.list_audit(0, 10_000).await.unwrap()
}

async fn all_revocations(store: &dyn Store) -> Vec<(String, String, i64)> {
    let feed = store.list_revocations(0, 10_000).await.unwrap();
    feed.into_iter().map(|r| (r.kind, r.id, r.at)).collect()
}

// ---- backend specifics ----

#[tokio::test]
async fn sqlite_creates_the_file_and_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/data/keybound.db");
    let store = open(&format!("sqlite://{}", path.display())).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    store.ping().await.unwrap();
    assert!(path.exists());
}

#[tokio::test]
async fn postgres_creates_a_missing_database() {
    let Some(base) = postgres_test_url() else {
        println!("skipped: KEYBOUND_TEST_POSTGRES_URL not set");
        return;
    };
    let url = fresh_postgres_url(&base).await;
    drop_postgres_database(&url).await;
    let store = open(&url).await.unwrap();
    assert_eq!(store.backend(), "postgres");
    store.ping().await.unwrap();
    drop(store);
    drop_postgres_database(&url).await;
}

#[tokio::test]
async fn an_unknown_url_scheme_is_refused() {
    let err = open("mysql://localhost/x").await.err().unwrap();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
}

// ---- the usage migration (20261205000100) ----

/// The migrator of `all` up to (not including) `version`.
fn migrations_before(all: &sqlx::migrate::Migrator, version: i64) -> sqlx::migrate::Migrator {
    let mut before = sqlx::migrate::Migrator {
        migrations: all
            .migrations
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.set_locking(false);
    before
}

/// Usage events as the old table held them: (key, at, status, latency µs).
const OLD_EVENTS: [(&str, i64, i64, i64); 5] = [
    ("ak_test_a", 120, 200, 10),
    ("ak_test_a", 179, 429, 30),
    ("ak_test_a", 180, 200, 5),
    ("ak_test_b", 125, 200, 7),
    ("ak_test_b", 126, 500, 9),
];

/// What `usage_minutes` must hold after the migration: (key, minute, requests, errors,
/// latency sum, latency max).
fn folded() -> Vec<(String, i64, i64, i64, i64, i64)> {
    [
        ("ak_test_a", 120, 2, 1, 40, 30),
        ("ak_test_a", 180, 1, 0, 5, 5),
        ("ak_test_b", 120, 2, 1, 16, 9),
    ]
    .into_iter()
    .map(|(k, m, r, e, s, x)| (k.to_owned(), m, r, e, s, x))
    .collect()
}

const FOLDED: &str = "SELECT key_id, minute, requests, errors, latency_sum_us, latency_max_us \
                      FROM usage_minutes ORDER BY key_id, minute";
const INSERT_EVENT: &str = "INSERT INTO usage_events (key_id, at, endpoint, method, status, \
                            latency_us, ip, user_agent) \
                            VALUES ($1, $2, '/v1/token', 'POST', $3, $4, '127.0.0.1', 'app/1')";

/// A usage report as comparable tuples: (start, requests, errors, mean and max latency).
fn bucket_rows(buckets: &[UsageBucket]) -> Vec<(i64, i64, i64, f64, i64)> {
    buckets
        .iter()
        .map(|b| {
            (
                b.start,
                b.requests,
                b.errors,
                b.mean_latency_us,
                b.max_latency_us,
            )
        })
        .collect()
}

/// Migrates `$pool` up to the usage migration, inserts [`OLD_EVENTS`], runs the rest of
/// `$all` and answers what `usage_minutes` holds (one body for both pool types).
macro_rules! migrate_old_events {
    ($pool:expr, $all:expr) => {{
        migrations_before(&$all, 20261205000100)
            .run($pool)
            .await
            .unwrap();
        for (key, at, status, latency) in OLD_EVENTS {
            sqlx::query(INSERT_EVENT)
                .bind(key)
                .bind(at)
                .bind(status)
                .bind(latency)
                .execute($pool)
                .await
                .unwrap();
        }
        $all.run($pool).await.unwrap();
        let rows: Vec<(String, i64, i64, i64, i64, i64)> =
            sqlx::query_as(FOLDED).fetch_all($pool).await.unwrap();
        rows
    }};
}

#[tokio::test]
async fn the_usage_migration_folds_old_events_into_their_minutes_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let rows = migrate_old_events!(&pool, sqlx::migrate!("migrations/sqlite"));
    assert_eq!(rows, folded());
    assert!(
        sqlx::query("SELECT 1 FROM usage_events")
            .fetch_all(&pool)
            .await
            .is_err(),
        "the per-request table is gone"
    );
    pool.close().await;
    // The store reads the folded minutes as the report always showed them.
    let store = open(&format!("sqlite://{}", dir.path().join("old.db").display()))
        .await
        .unwrap();
    let buckets = store.usage_summary("ak_test_a", 60, 0).await.unwrap();
    assert_eq!(
        bucket_rows(&buckets),
        vec![(120, 2, 1, 20.0, 30), (180, 1, 0, 5.0, 5)]
    );
}

#[tokio::test]
async fn the_usage_migration_folds_old_events_into_their_minutes_postgres() {
    let Some(base) = postgres_test_url() else {
        println!("skipped: KEYBOUND_TEST_POSTGRES_URL not set");
        return;
    };
    let _slot = POSTGRES_SLOTS.acquire().await.unwrap();
    let url = fresh_postgres_url(&base).await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let rows = migrate_old_events!(&pool, sqlx::migrate!("migrations/postgres"));
    assert_eq!(rows, folded());
    pool.close().await;
    let store = open(&url).await.unwrap();
    let buckets = store.usage_summary("ak_test_b", 3_600, 0).await.unwrap();
    assert_eq!(bucket_rows(&buckets), vec![(0, 2, 1, 8.0, 9)]);
    drop(store);
    drop_postgres_database(&url).await;
}

#[test]
fn trust_factors_encoded_when_read_are_the_text_encoded_at_once() {
    use crate::devices::TrustFactor;
    let factors = vec![
        TrustFactor {
            name: "history".into(),
            contribution: 0.3125,
            detail: format!("{} earlier exchanges, enrolled {} s ago", 12, 3600).into(),
        },
        TrustFactor {
            name: "network".into(),
            contribution: -0.05,
            detail: "a \"new\" network".into(),
        },
    ];
    let at_once = JsonText::of(&factors);
    let deferred = JsonText::factors(factors.clone());
    assert_eq!(deferred.get(), at_once.get());
    assert_eq!(deferred, at_once);
    // Clones share the factors and encode the same text; serde writes the text itself.
    let copy = JsonText::factors(factors).clone();
    assert_eq!(
        serde_json::to_value(&copy).unwrap(),
        serde_json::to_value(&at_once).unwrap()
    );
    let back: JsonText = serde_json::from_str(at_once.get()).unwrap();
    assert_eq!(back.get(), at_once.get());
    assert_eq!(JsonText::factors(vec![]).get(), "[]");
    assert_eq!(JsonText::empty_list().get(), "[]");
}

/// The queue of unwritten device histories is written a part at a time (`jobs`): the parts
/// split it with nothing left out and nothing twice, each device always in the same part,
/// and enough devices spread over every part.
#[tokio::test]
async fn pending_device_histories_are_split_into_disjoint_parts() {
    use crate::store::cached::{CachedStore, PENDING_PARTS};
    let dir = tempfile::tempdir().unwrap();
    let inner = open(&format!("sqlite://{}", dir.path().join("k.db").display()))
        .await
        .unwrap();
    let cache = CachedStore::new(inner, 100);
    let k = key(&key_id('p'));
    for n in 0..200 {
        cache
            .remember_device_usage(Arc::new(device(&k.key_id, n)))
            .await;
    }
    // A second history of a device replaces its first, in the same part.
    let mut again = device(&k.key_id, 7);
    again.exchange_count = 2;
    cache.remember_device_usage(Arc::new(again)).await;

    let parts: Vec<Vec<String>> = (0..PENDING_PARTS)
        .map(|p| {
            let mut ids: Vec<_> = cache
                .pending_part(p)
                .iter()
                .map(|d| d.device_id.clone())
                .collect();
            ids.sort();
            ids
        })
        .collect();
    assert!(parts.iter().all(|p| !p.is_empty()), "{parts:?}");
    let mut all: Vec<String> = parts.concat();
    all.sort();
    let mut expected: Vec<String> = (0..200).map(|n| device(&k.key_id, n).device_id).collect();
    expected.sort();
    assert_eq!(all, expected, "every device once, in one part");
    let mut pending: Vec<_> = cache
        .pending()
        .iter()
        .map(|d| d.device_id.clone())
        .collect();
    pending.sort();
    assert_eq!(pending, expected);
    let seven = cache.pending();
    let seven = seven
        .iter()
        .find(|d| d.device_id == device(&k.key_id, 7).device_id)
        .unwrap();
    assert_eq!(
        seven.exchange_count, 2,
        "the newer history replaced the older"
    );

    // Written, a part leaves the queue; the other parts stay.
    let first = cache.pending_part(0);
    cache.written(&first);
    assert!(cache.pending_part(0).is_empty());
    assert_eq!(cache.pending().len(), 200 - first.len());
}
