//! PostgreSQL implementation of [`Store`](super::Store), for several instances sharing one
//! database.
//!
//! Transactions run at READ COMMITTED. Where writers need one order across every process (the
//! audit chain, the revocation feed, signing key rotation), they take a transaction-scoped
//! advisory lock; enrollments under one key take turns on a row lock of that key.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::sql::{Backend, invalid_url, migrate_error};
use super::writer::GroupWriter;
use super::{FamilyRecord, Store};
use crate::error::Result;

/// How long a request waits for a pooled connection before failing with 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The advisory lock key of [`Backend::lock_write_order`]: "kbwrite\0" as a big-endian i64, so
/// it is unlikely to collide with another application's locks in a shared database.
const WRITE_ORDER_LOCK: i64 = i64::from_be_bytes(*b"kbwrite\0");

/// PostgreSQL-backed store.
pub struct PostgresStore {
    pool: PgPool,
    writer: GroupWriter,
    /// MACs the audit rows once installed ([`Store::set_integrity`]).
    integrity: std::sync::OnceLock<Arc<crate::store::integrity::Integrity>>,
}

impl PostgresStore {
    /// Opens (creating the database if it does not exist) and migrates the database.
    pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(Self::open(url).await?))
    }

    /// [`connect`](Self::connect), returning the concrete type.
    pub async fn open(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(invalid_url)?;
        let pool = match pool_options().connect_with(options.clone()).await {
            Err(e) if has_code(&e, "3D000") => {
                // invalid_catalog_name: the database does not exist yet. Another process may be
                // creating it at the same moment (duplicate_database), which is as good.
                match Postgres::create_database(url).await {
                    Err(e) if !has_code(&e, "42P04") => return Err(e.into()),
                    _ => pool_options().connect_with(options).await?,
                }
            }
            pool => pool?,
        };
        sqlx::migrate!("migrations/postgres")
            .run(&pool)
            .await
            .map_err(migrate_error)?;
        Ok(PostgresStore {
            writer: GroupWriter::spawn(pool.clone()),
            pool,
            integrity: std::sync::OnceLock::new(),
        })
    }
}

fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new().acquire_timeout(ACQUIRE_TIMEOUT)
}

/// Whether `e` is a database error with SQLSTATE `code`.
fn has_code(e: &sqlx::Error, code: &str) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == code)
}

impl Backend for PostgresStore {
    type Db = Postgres;
    const NAME: &'static str = "postgres";
    const RETURNING_KEY_ROWS: &'static str = "api_keys.*";

    async fn begin_write(pool: &PgPool) -> Result<Transaction<'static, Postgres>> {
        Ok(pool.begin().await?)
    }

    async fn lock_write_order(conn: &mut PgConnection) -> Result<()> {
        // Released at commit or rollback, after the transaction's rows became visible, so the
        // next holder's first statement (a new snapshot at READ COMMITTED) sees them.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_ORDER_LOCK)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn lock_key(conn: &mut PgConnection, key_id: &str) -> Result<()> {
        // NO KEY UPDATE conflicts with itself but not with the KEY SHARE locks that foreign key
        // checks take, so token writes under the key go on while enrollments take turns.
        sqlx::query("SELECT 1 FROM api_keys WHERE key_id = $1 FOR NO KEY UPDATE")
            .bind(key_id)
            .execute(conn)
            .await?;
        Ok(())
    }

    async fn allocate_status_indexes(conn: &mut PgConnection, n: i64) -> Result<Vec<i64>> {
        // A sequence: atomic across sessions, and never blocks (unlike a counter row, whose
        // lock every enrollment on every key would queue on until its transaction ends).
        Ok(sqlx::query_scalar(
            "SELECT nextval('device_status_idx') FROM generate_series(1, $1::BIGINT)",
        )
        .bind(n)
        .fetch_all(conn)
        .await?)
    }

    async fn advance_families(
        conn: &mut PgConnection,
        families: &[(i64, &FamilyRecord)],
    ) -> Result<Vec<bool>> {
        let spent: Vec<i64> = families.iter().map(|&(from, _)| from).collect();
        let won: Vec<String> = sqlx::query_scalar(ADVANCE_FAMILIES)
            .bind(spent)
            .bind(column(families, |f| f.family_id.as_str()))
            .bind(column(families, |f| f.key_id.as_str()))
            .bind(column(families, |f| f.device_id.as_str()))
            .bind(column(families, |f| f.jkt.as_str()))
            .bind(column(families, |f| f.generation))
            .bind(column(families, |f| f.created_at))
            .bind(column(families, |f| f.rotated_at))
            .bind(column(families, |f| f.expires_at))
            .bind(column(families, |f| f.revoked_at))
            .bind(column(families, |f| f.grace_token.as_deref()))
            .bind(column(families, |f| f.grace_until))
            .fetch_all(conn)
            .await?;
        let won: HashSet<&str> = won.iter().map(String::as_str).collect();
        Ok(families
            .iter()
            .map(|(_, f)| won.contains(f.family_id.as_str()))
            .collect())
    }

    fn one_family_statement(_: &[(i64, &FamilyRecord)]) -> bool {
        true
    }
}

/// One field of each family, as an array to bind.
fn column<'a, T>(
    families: &[(i64, &'a FamilyRecord)],
    field: impl Fn(&'a FamilyRecord) -> T,
) -> Vec<T> {
    families.iter().map(|&(_, f)| field(f)).collect()
}

/// [`Backend::advance_families`]: every refresh-family write of a group-commit batch in one
/// statement, which answers with the ids of the families it wrote.
///
/// One statement per op was a round trip each (parse, bind, execute) and PostgreSQL's own CPU
/// for each: at full load, more than the server's work per refresh. Here the ops come as one
/// array per column, so the text is the same for any batch size and stays prepared. Each op is
/// the statement it replaces, unchanged: generation 0 is spent by inserting the family's row
/// unless one exists (`insert_family_if_absent`), any other generation by the conditional
/// update of a live family at exactly that generation (`advance_family`). Both parts run
/// on one snapshot and never see each other's rows, which is why the family ids must be
/// distinct (the caller runs repeats alone, after).
const ADVANCE_FAMILIES: &str = "\
    WITH op AS (\
        SELECT * FROM UNNEST($1::BIGINT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], \
            $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], \
            $11::BYTEA[], $12::BIGINT[]) \
        AS op (spent, family_id, key_id, device_id, jkt, generation, created_at, rotated_at, \
            expires_at, revoked_at, grace_token, grace_until)\
    ), advanced AS (\
        UPDATE refresh_families SET generation = op.generation, rotated_at = op.rotated_at, \
            expires_at = op.expires_at, grace_token = op.grace_token, \
            grace_until = op.grace_until \
        FROM op \
        WHERE op.spent <> 0 AND refresh_families.family_id = op.family_id \
            AND refresh_families.generation = op.spent \
            AND refresh_families.revoked_at IS NULL \
        RETURNING refresh_families.family_id\
    ), inserted AS (\
        INSERT INTO refresh_families (family_id, key_id, device_id, jkt, generation, \
            created_at, rotated_at, expires_at, revoked_at, grace_token, grace_until) \
        SELECT family_id, key_id, device_id, jkt, generation, created_at, rotated_at, \
            expires_at, revoked_at, grace_token, grace_until \
        FROM op WHERE op.spent = 0 \
        ON CONFLICT (family_id) DO NOTHING \
        RETURNING family_id\
    ) \
    SELECT family_id FROM advanced UNION ALL SELECT family_id FROM inserted";

super::rows::decode_rows!(sqlx::postgres::PgRow);
super::sql::sql_store!(PostgresStore);
