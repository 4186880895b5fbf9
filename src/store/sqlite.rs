//! SQLite implementation of [`Store`](super::Store): the embedded default.
//!
//! Durability: WAL journal with `synchronous=FULL`, so a commit returns only once it is on disk;
//! the group-commit writer ([`super::writer`]) keeps that affordable on the token hot path.
//! Every writing transaction starts with `BEGIN IMMEDIATE`, which takes SQLite's single write
//! lock at once: writers in this process and in others (the CLI next to a running server) wait
//! their turn on `busy_timeout` instead of failing.
//!
//! Checkpoints stay SQLite's automatic ones, run by the committing connection once the WAL
//! holds 1 000 pages: a checkpoint from another connection (tried: `PASSIVE` from a background
//! task) rarely finds a moment when no batch is appending, so the WAL is never restarted and
//! grows without bound (2.4 GB in a 3-minute benchmark). After a restart the WAL file is cut
//! back to [`WAL_SIZE_LIMIT`]. Statement journals stay in memory (`temp_store=MEMORY`): a
//! multi-row statement of the writer would otherwise write one to a temporary file.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::query_builder::Separated;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::sql::{Backend, invalid_url, migrate_error};
use super::writer::GroupWriter;
use super::{FamilyRecord, Store};
use crate::error::{Error, Result};

/// How long a writer waits for another one (in any process) to release the write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request waits for a pooled connection before failing with 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Size the WAL file is truncated back to after a checkpoint reset it (bytes).
const WAL_SIZE_LIMIT: &str = "67108864";

/// Page cache of the group-commit writer's connection (negative: KiB).
const WRITER_CACHE_KIB: &str = "-8192";

/// Connections for reads and the other writes. The token path reads through the validation
/// cache, so few reads reach SQLite; each connection costs a thread and a page cache (up to
/// 2 MiB), which is memory the server does not need to hold.
const READ_CONNECTIONS: u32 = 4;

/// SQLite-backed store.
pub struct SqliteStore {
    pool: SqlitePool,
    writer: GroupWriter,
    /// MACs the audit rows once installed ([`Store::set_integrity`]).
    integrity: std::sync::OnceLock<Arc<crate::store::integrity::Integrity>>,
}

impl SqliteStore {
    /// Opens (creating the file and its directory if needed) and migrates the database.
    pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(Self::open(url).await?))
    }

    /// [`connect`](Self::connect), returning the concrete type.
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(invalid_url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            .pragma("temp_store", "MEMORY")
            .pragma("journal_size_limit", WAL_SIZE_LIMIT);
        // SQLite creates the file but not its directory (`keybound-data/` by default). Both
        // are made private: the database holds key hashes, sealed signing keys and the audit
        // log. SQLite gives the -wal and -shm files the mode of the database file.
        let file = options.get_filename().to_owned();
        if let Some(dir) = file.parent()
            && !dir.as_os_str().is_empty()
        {
            create_private_dir(dir).map_err(Error::unavailable)?;
        }
        if file != std::path::Path::new(":memory:") {
            create_private_file(&file).map_err(Error::unavailable)?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A connection to a local file cannot go stale, so the default ping before every
            // acquire only adds a round trip to sqlx's worker thread to each statement (and to
            // each group-commit batch).
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("migrations/sqlite")
            .run(&pool)
            .await
            .map_err(migrate_error)?;
        // The group-commit writer gets a connection of its own. SQLite keeps a page cache per
        // connection and drops it when another connection changed the file, so a writer that
        // took any pooled connection would mostly find its B-tree pages gone and read them
        // again. Its cache is larger: it holds the pages every batch touches (the ends of the
        // refresh-token indexes, active devices).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .connect_with(options.pragma("cache_size", WRITER_CACHE_KIB))
            .await?;
        Ok(SqliteStore {
            writer: GroupWriter::spawn(writer),
            pool,
            integrity: std::sync::OnceLock::new(),
        })
    }
}

/// Creates `dir` and its missing parents with mode 0700 (an existing one is left alone).
fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates an empty database file with mode 0600 unless it exists, before SQLite would
/// create it with the process's default mode (usually 0644).
fn create_private_file(file: &std::path::Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(file) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// For a `sqlite://` URL: the database's directory and files that group or others may
/// access, each as `path (mode)`. `serve --profile prod` warns about each at start.
pub fn loose_permissions(url: &str) -> Vec<String> {
    let Ok(options) = SqliteConnectOptions::from_str(url) else {
        return Vec::new();
    };
    let file = options.get_filename().to_owned();
    let mut paths = Vec::new();
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        paths.push((dir.to_owned(), 0o077));
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut p = file.clone().into_os_string();
        p.push(suffix);
        paths.push((p.into(), 0o077));
    }
    let mut loose = Vec::new();
    #[cfg(unix)]
    for (path, mask) in paths {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(&path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & mask != 0 {
                loose.push(format!("{} ({mode:o})", path.display()));
            }
        }
    }
    loose
}

impl Backend for SqliteStore {
    type Db = Sqlite;
    const NAME: &'static str = "sqlite";
    const RETURNING_KEY_ROWS: &'static str = "*";

    async fn begin_write(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>> {
        // A plain (deferred) BEGIN takes the write lock only at the first write; if another
        // connection committed in between, that upgrade fails with SQLITE_BUSY at once,
        // without waiting on busy_timeout. IMMEDIATE takes the lock up front, waiting for it.
        Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn lock_write_order(_: &mut SqliteConnection) -> Result<()> {
        // BEGIN IMMEDIATE already holds the one write lock of the database file.
        Ok(())
    }

    async fn lock_key(_: &mut SqliteConnection, _: &str) -> Result<()> {
        // BEGIN IMMEDIATE already holds the one write lock of the database file.
        Ok(())
    }

    async fn allocate_status_indexes(conn: &mut SqliteConnection, n: i64) -> Result<Vec<i64>> {
        // Under the write lock BEGIN IMMEDIATE took: no other writer can take the same range.
        let first: i64 = sqlx::query_scalar(
            "UPDATE status_list_counter SET next_idx = next_idx + $1 WHERE id = 0 \
             RETURNING next_idx - $1",
        )
        .bind(n)
        .fetch_one(conn)
        .await?;
        Ok((first..first + n).collect())
    }

    /// One multi-row statement for the spent generations (a conditional `UPDATE … FROM` a
    /// `VALUES` list) and one for the first refreshes (an insert-if-absent), each answering
    /// with the ids it wrote. SQLite binds no arrays, so the rows are a `VALUES` list, padded
    /// with rows of `NULL`s (which match no family and insert nothing) to a power of two, so
    /// the statements come in a few sizes that stay prepared. One statement per op was a round
    /// trip each to sqlx's SQLite thread (a message and a wake-up both ways) inside the
    /// transaction that holds the write lock; slices of exact powers of two were up to eight.
    async fn advance_families(
        conn: &mut SqliteConnection,
        families: &[(i64, &FamilyRecord)],
    ) -> Result<Vec<bool>> {
        let (inserts, updates): (Vec<_>, Vec<_>) =
            families.iter().partition(|&&(from, _)| from == 0);
        let mut won = HashSet::with_capacity(families.len());
        for rows in updates.chunks(FAMILY_ROWS) {
            let ids = padded_statement(
                conn,
                rows,
                "WITH op (family_id, spent, generation, rotated_at, expires_at, grace_token, \
                 grace_until) AS (",
                |mut b, row| {
                    let f = row.map(|(_, f)| f);
                    b.push_bind(f.map(|f| f.family_id.as_str()))
                        .push_bind(row.map(|(from, _)| from))
                        .push_bind(f.map(|f| f.generation))
                        .push_bind(f.map(|f| f.rotated_at))
                        .push_bind(f.map(|f| f.expires_at))
                        .push_bind(f.and_then(|f| f.grace_token.as_deref()))
                        .push_bind(f.and_then(|f| f.grace_until));
                },
                ") UPDATE refresh_families SET generation = op.generation, \
                 rotated_at = op.rotated_at, expires_at = op.expires_at, \
                 grace_token = op.grace_token, grace_until = op.grace_until \
                 FROM op WHERE refresh_families.family_id = op.family_id \
                 AND refresh_families.generation = op.spent \
                 AND refresh_families.revoked_at IS NULL \
                 RETURNING refresh_families.family_id",
            )
            .await?;
            won.extend(ids);
        }
        for rows in inserts.chunks(FAMILY_ROWS) {
            let ids = padded_statement(
                conn,
                rows,
                "WITH op (family_id, key_id, device_id, jkt, generation, created_at, \
                 rotated_at, expires_at, revoked_at, grace_token, grace_until) AS (",
                |mut b, row| {
                    let f = row.map(|(_, f)| f);
                    b.push_bind(f.map(|f| f.family_id.as_str()))
                        .push_bind(f.map(|f| f.key_id.as_str()))
                        .push_bind(f.map(|f| f.device_id.as_str()))
                        .push_bind(f.map(|f| f.jkt.as_str()))
                        .push_bind(f.map(|f| f.generation))
                        .push_bind(f.map(|f| f.created_at))
                        .push_bind(f.map(|f| f.rotated_at))
                        .push_bind(f.map(|f| f.expires_at))
                        .push_bind(f.and_then(|f| f.revoked_at))
                        .push_bind(f.and_then(|f| f.grace_token.as_deref()))
                        .push_bind(f.and_then(|f| f.grace_until));
                },
                // The `WHERE` leaves the padding out, and is what SQLite needs to parse an
                // upsert after a `SELECT`.
                ") INSERT INTO refresh_families (family_id, key_id, device_id, jkt, generation, \
                 created_at, rotated_at, expires_at, revoked_at, grace_token, grace_until) \
                 SELECT * FROM op WHERE family_id IS NOT NULL \
                 ON CONFLICT (family_id) DO NOTHING RETURNING family_id",
            )
            .await?;
            won.extend(ids);
        }
        Ok(families
            .iter()
            .map(|(_, f)| won.contains(f.family_id.as_str()))
            .collect())
    }

    fn one_family_statement(families: &[(i64, &FamilyRecord)]) -> bool {
        // All updates or all inserts (a batch holds at most `FAMILY_ROWS`).
        families.len() <= FAMILY_ROWS
            && (families.iter().all(|&(from, _)| from == 0)
                || families.iter().all(|&(from, _)| from != 0))
    }
}

/// One statement of [`SqliteStore::advance_families`]: `head`, a `VALUES` list of `rows`
/// padded with rows of `NULL`s to the next power of two (`bind` binds one row, `None` for the
/// padding), then `tail`; answers the family ids the statement returns.
async fn padded_statement<'r>(
    conn: &mut SqliteConnection,
    rows: &[&(i64, &'r FamilyRecord)],
    head: &str,
    bind: impl FnMut(Separated<'_, 'r, Sqlite, &'static str>, Option<(i64, &'r FamilyRecord)>),
    tail: &str,
) -> Result<Vec<String>> {
    let padding = std::iter::repeat_n(None, rows.len().next_power_of_two() - rows.len());
    let mut q = sqlx::QueryBuilder::<Sqlite>::new(head);
    q.push_values(rows.iter().map(|&&row| Some(row)).chain(padding), bind);
    q.push(tail);
    Ok(q.build_query_scalar().fetch_all(conn).await?)
}

/// Most family writes in one statement (11 values each, far below SQLite's 32 766): as many
/// as a group-commit batch holds, so a batch's updates (or first refreshes) are one statement.
const FAMILY_ROWS: usize = super::writer::MAX_BATCH;

super::rows::decode_rows!(sqlx::sqlite::SqliteRow);
super::sql::sql_store!(SqliteStore);

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[tokio::test]
    async fn the_data_directory_and_database_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let db = data.join("kb.db");
        let url = format!("sqlite://{}", db.display());
        let store = SqliteStore::open(&url).await.unwrap();
        // Migrations have written, so the WAL and its index exist.
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700, "data directory");
        for suffix in ["", "-wal", "-shm"] {
            let p = data.join(format!("kb.db{suffix}"));
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        assert!(loose_permissions(&url).is_empty());
        drop(store);
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
        let loose = loose_permissions(&url);
        assert_eq!(loose.len(), 2, "{loose:?}");
        assert!(loose[0].ends_with("data (755)"), "{loose:?}");
        assert!(loose[1].ends_with("kb.db (644)"), "{loose:?}");
    }

    #[tokio::test]
    async fn every_connection_is_durable_and_waits_for_the_write_lock() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("kb.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let mut conn = store.pool.acquire().await.unwrap();
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(journal, "wal");
        let pragmas = [
            ("PRAGMA synchronous", 2), // FULL
            ("PRAGMA foreign_keys", 1),
            ("PRAGMA busy_timeout", 5000),
        ];
        for (pragma, want) in pragmas {
            let value: i64 = sqlx::query_scalar(pragma)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
            assert_eq!(value, want, "{pragma}");
        }
    }
}
