//! The SQL both backends share, written once.
//!
//! SQLite and PostgreSQL accept the same SQL for everything keybound does (`$n` placeholders,
//! `RETURNING`, partial indexes, `CASE`), so every statement is written once, in the
//! [`sql_store!`] macro, and the macro is expanded in each backend module for that backend's
//! concrete sqlx types. A macro rather than generic functions: sqlx's generic executor bounds
//! (`for<'c> &'c mut DB::Connection: Executor<'c>`, `Encode + Type` for every bound value, …)
//! would outweigh the SQL itself.
//!
//! What differs between the backends is the [`Backend`] trait: how a writing transaction
//! starts, how writers that need a total order take turns across processes, and how
//! enrollments under one key are serialized.
//!
//! Rows decode into records by column name ([`rows`](super::rows)), so statements read whole
//! records with `SELECT *` and `RETURNING *`.

use super::FamilyRecord;
use crate::error::Result;

/// What the shared SQL needs from a backend.
pub(super) trait Backend {
    /// The sqlx database type.
    type Db: sqlx::Database;

    /// `Store::backend`'s answer.
    const NAME: &'static str;

    /// What an `UPDATE api_keys … FROM v` returns to answer the keys it wrote: every column
    /// of `api_keys` and none of `v`'s (SQLite's `*` is the updated table's alone, and it
    /// refuses `table.*` there; PostgreSQL's `*` takes `v`'s columns too).
    const RETURNING_KEY_ROWS: &'static str;

    /// Starts a transaction that will write.
    async fn begin_write(
        pool: &sqlx::Pool<Self::Db>,
    ) -> Result<sqlx::Transaction<'static, Self::Db>>;

    /// Called first in a writing transaction whose writes need one order across every process
    /// using the database: audit rows (`seq = last + 1`), revocation feed entries (a poller's
    /// cursor must never pass an entry that commits later) and signing key rotation. Held
    /// until the transaction ends.
    async fn lock_write_order(conn: &mut <Self::Db as sqlx::Database>::Connection) -> Result<()>;

    /// Called first in an enrollment: enrollments under `key_id` take turns, so counting the
    /// key's devices and inserting one cannot interleave.
    async fn lock_key(
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        key_id: &str,
    ) -> Result<()>;

    /// Takes `n` new status list indexes (contract section 10), never handed out before and
    /// never again, whatever runs concurrently. Inside the caller's transaction.
    async fn allocate_status_indexes(
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        n: i64,
    ) -> Result<Vec<i64>>;

    /// A group-commit batch's refresh-family writes in as few statements as the backend can:
    /// each `(from, next)` answered as `Store::advance_refresh_family` would answer it alone,
    /// in order. The family ids are distinct.
    async fn advance_families(
        conn: &mut <Self::Db as sqlx::Database>::Connection,
        families: &[(i64, &FamilyRecord)],
    ) -> Result<Vec<bool>>;

    /// Whether [`advance_families`](Self::advance_families) writes `families` (distinct) in
    /// one statement, which the database can then commit on its own.
    fn one_family_statement(families: &[(i64, &FamilyRecord)]) -> bool;
}

/// `rows` in chunks of a power of two rows up to `max` (a power of two), largest first: the
/// few sizes a multi-row statement then comes in each stay prepared.
pub(super) fn power_of_two_chunks<T>(mut rows: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        if rows.is_empty() {
            return None;
        }
        let n = (1usize << rows.len().ilog2()).min(max);
        let (chunk, rest) = rows.split_at(n);
        rows = rest;
        Some(chunk)
    })
}

/// Whether `e` is a statement refused for breaking a constraint (unique, foreign key, not
/// null, check), which the database aborts before writing anything.
pub(super) fn broke_a_constraint(e: &crate::error::Error) -> bool {
    use crate::error::Error;
    let (Error::Internal(cause) | Error::Unavailable(cause)) = e else {
        return false;
    };
    cause
        .downcast_ref::<sqlx::Error>()
        .and_then(sqlx::Error::as_database_error)
        .is_some_and(|d| {
            use sqlx::error::ErrorKind::*;
            matches!(
                d.kind(),
                UniqueViolation | ForeignKeyViolation | NotNullViolation | CheckViolation
            )
        })
}

/// Whether `e` is a unique-constraint violation, by the database's error kind (never by its
/// message text, which varies with version and locale).
pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// Implements [`Store`](super::Store) for `$Store`, which implements [`Backend`] and has the
/// fields `pool: sqlx::Pool<Db>` and `writer: GroupWriter`, and the group-commit
/// [`Batch`](super::writer::Batch) for its pool. Expands to a private module; the records'
/// `FromRow` impls come from [`decode_rows!`](super::rows::decode_rows).
macro_rules! sql_store {
    ($Store:ident) => {
        mod shared_sql {
            use async_trait::async_trait;

            use super::$Store;
            use $crate::store::chain::{GENESIS, chain_hash};
            use $crate::store::integrity::{ENABLE_ACTION, Integrity};
            use $crate::error::{Error, Result};
            use $crate::store::rows::to_json;
            use $crate::store::sql::{Backend, is_unique_violation};
            use $crate::store::writer::{Answer, Batch, BatchError, WriteOp};
            use $crate::store::{
                AlertFilter, AlertRecord, AuditEntry, AuditRow, DeviceAttestation, DeviceChange,
                DeviceLifecycle, DeviceRecord, EnrollLimits, Enrollment, FamilyRecord, KeyRecord,
                KeyStatus, RevocationRecord, SigningKeyRecord, StatusSnapshot, Store, UsageBucket,
                UsageMinute,
            };

            type Db = <$Store as Backend>::Db;
            type Conn = <Db as sqlx::Database>::Connection;
            type Tx = sqlx::Transaction<'static, Db>;

            // ---- statements: API keys ----

            async fn insert_key(conn: &mut Conn, k: &KeyRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO api_keys (key_id, env, name, description, secret_hash, scopes, \
                     limited_scopes, rate_limit_per_minute, allowed_ips, allowed_origins, \
                     max_devices, trust_on_enroll, status, status_reason, status_changed_at, \
                     created_at, expires_at, last_used_at, rotated_from, rotated_to, attestation) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                     $16, $17, $18, $19, $20, $21)",
                )
                .bind(k.key_id.as_str())
                .bind(k.env.as_str())
                .bind(&k.name)
                .bind(&k.description)
                .bind(&k.secret_hash)
                .bind(to_json(&k.scopes))
                .bind(k.limited_scopes.as_ref().map(to_json))
                .bind(k.rate_limit_per_minute)
                .bind(to_json(&k.allowed_ips))
                .bind(to_json(&k.allowed_origins))
                .bind(k.max_devices)
                .bind(k.trust_on_enroll)
                .bind(k.status.as_str())
                .bind(&k.status_reason)
                .bind(k.status_changed_at)
                .bind(k.created_at)
                .bind(k.expires_at)
                .bind(k.last_used_at)
                .bind(k.rotated_from.as_deref())
                .bind(k.rotated_to.as_deref())
                .bind(k.attestation.as_str())
                .execute(conn)
                .await?;
                Ok(())
            }

            async fn select_key<'c>(
                ex: impl sqlx::Executor<'c, Database = Db>,
                key_id: &str,
            ) -> Result<Option<KeyRecord>> {
                Ok(sqlx::query_as("SELECT * FROM api_keys WHERE key_id = $1")
                    .bind(key_id)
                    .fetch_optional(ex)
                    .await?)
            }

            async fn select_keys_after(
                pool: &sqlx::Pool<Db>,
                after: &str,
                limit: i64,
            ) -> Result<Vec<KeyRecord>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM api_keys WHERE key_id > $1 ORDER BY key_id LIMIT $2",
                )
                .bind(after)
                .bind(limit.max(0))
                .fetch_all(pool)
                .await?)
            }

            /// `false` when the key does not exist.
            async fn update_key_metadata(conn: &mut Conn, k: &KeyRecord) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE api_keys SET name = $2, description = $3, scopes = $4, \
                     limited_scopes = $5, rate_limit_per_minute = $6, allowed_ips = $7, \
                     allowed_origins = $8, max_devices = $9, trust_on_enroll = $10, \
                     expires_at = $11, attestation = $12 WHERE key_id = $1",
                )
                .bind(k.key_id.as_str())
                .bind(&k.name)
                .bind(&k.description)
                .bind(to_json(&k.scopes))
                .bind(k.limited_scopes.as_ref().map(to_json))
                .bind(k.rate_limit_per_minute)
                .bind(to_json(&k.allowed_ips))
                .bind(to_json(&k.allowed_origins))
                .bind(k.max_devices)
                .bind(k.trust_on_enroll)
                .bind(k.expires_at)
                .bind(k.attestation.as_str())
                .execute(conn)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn update_key_status(
                conn: &mut Conn,
                key_id: &str,
                status: KeyStatus,
                reason: Option<&str>,
                at: i64,
            ) -> Result<Option<KeyRecord>> {
                Ok(sqlx::query_as(
                    "UPDATE api_keys SET status = $2, status_reason = $3, status_changed_at = $4 \
                     WHERE key_id = $1 RETURNING *",
                )
                .bind(key_id)
                .bind(status.as_str())
                .bind(reason)
                .bind(at)
                .fetch_optional(conn)
                .await?)
            }

            /// Links the old key of a rotation to its successor and shortens its life to the
            /// grace period. Never lengthens it: a key due to expire before the grace period
            /// ends keeps its own expiry. `false` when the key does not exist.
            async fn mark_key_rotated(
                conn: &mut Conn,
                old_id: &str,
                new_id: &str,
                expires_at: i64,
            ) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE api_keys SET rotated_to = $2, expires_at = CASE \
                     WHEN expires_at IS NULL OR expires_at > $3 THEN $3 ELSE expires_at END \
                     WHERE key_id = $1",
                )
                .bind(old_id)
                .bind(new_id)
                .bind(expires_at)
                .execute(conn)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            /// Moves each key's `last_used_at` forward only, so batches applied out of order
            /// never move it back, in one statement for the rows (the new times in a `VALUES`
            /// list named by a CTE, joined by key id, as [`update_devices_bulk`]), and answers
            /// each key found as stored (`RETURNING`, so the statement always writes the row).
            /// A key not stored, or whose row does not decode, is left out of the answer (a
            /// read reports that; a touch is bookkeeping and does not fail for it).
            async fn touch_keys_bulk(
                conn: &mut Conn,
                rows: &[(&str, i64)],
            ) -> Result<Vec<KeyRecord>> {
                let mut q =
                    sqlx::QueryBuilder::<Db>::new("WITH v (key_id, last_used_at) AS (");
                q.push_values(rows, |mut b, &(key_id, at)| {
                    b.push_bind(key_id).push_bind(at);
                });
                q.push(
                    ") UPDATE api_keys SET last_used_at = CASE \
                     WHEN api_keys.last_used_at IS NULL \
                       OR api_keys.last_used_at < v.last_used_at THEN v.last_used_at \
                     ELSE api_keys.last_used_at END \
                     FROM v WHERE api_keys.key_id = v.key_id RETURNING ",
                );
                q.push(<$Store as Backend>::RETURNING_KEY_ROWS);
                // Kept prepared: called with the few sizes of `prepared_chunks` only.
                let rows = q.build().fetch_all(conn).await?;
                Ok(rows
                    .iter()
                    .filter_map(|r| <KeyRecord as sqlx::FromRow<_>>::from_row(r).ok())
                    .collect())
            }

            /// Devices go with their key by `ON DELETE CASCADE`.
            async fn delete_keys_expired_before(pool: &sqlx::Pool<Db>, before: i64) -> Result<u64> {
                let done = sqlx::query("DELETE FROM api_keys WHERE expires_at < $1")
                    .bind(before)
                    .execute(pool)
                    .await?;
                Ok(done.rows_affected())
            }

            // ---- statements: devices ----

            async fn insert_device(conn: &mut Conn, d: &DeviceRecord) -> sqlx::Result<()> {
                let a = d.attestation.as_ref();
                sqlx::query(
                    "INSERT INTO devices (device_id, key_id, jkt, name, attributes, status, \
                     approved, created_at, last_seen_at, exchange_count, mismatch_count, \
                     networks, trust_score, trust_level, trust_factors, revoked_at, \
                     mismatch_fingerprint, status_idx, attestation_format, attested_at, \
                     attestation_security_level, attestation_public_key, attestation_key_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
                     $16, $17, $18, $19, $20, $21, $22, $23)",
                )
                .bind(&d.device_id)
                .bind(d.key_id.as_str())
                .bind(d.jkt.as_str())
                .bind(&d.name)
                .bind(to_json(&d.attributes))
                .bind(d.status.as_str())
                .bind(d.approved)
                .bind(d.created_at)
                .bind(d.last_seen_at)
                .bind(d.exchange_count)
                .bind(d.mismatch_count)
                .bind(to_json(&d.networks))
                .bind(d.trust_score)
                .bind(d.trust_level.as_str())
                .bind(d.trust_factors.get())
                .bind(d.revoked_at)
                .bind(&d.mismatch_fingerprint)
                .bind(d.status_idx)
                .bind(a.map(|a| a.format.as_str()))
                .bind(a.map(|a| a.attested_at))
                .bind(a.and_then(|a| a.security_level.as_deref()))
                .bind(a.and_then(|a| a.public_key.as_deref()))
                .bind(a.and_then(|a| a.key_id.as_deref()))
                .execute(conn)
                .await?;
                Ok(())
            }

            /// Only a device not attested yet: an attestation is recorded once, for life.
            async fn update_device_attestation(
                conn: &mut Conn,
                device_id: &str,
                a: &DeviceAttestation,
            ) -> Result<()> {
                sqlx::query(
                    "UPDATE devices SET attestation_format = $2, attested_at = $3, \
                     attestation_security_level = $4, attestation_public_key = $5, \
                     attestation_key_id = $6 \
                     WHERE device_id = $1 AND attestation_format IS NULL",
                )
                .bind(device_id)
                .bind(&a.format)
                .bind(a.attested_at)
                .bind(&a.security_level)
                .bind(a.public_key.as_deref())
                .bind(a.key_id.as_deref())
                .execute(conn)
                .await?;
                Ok(())
            }

            /// Devices enrolled under a key since `since`, revoked ones included.
            async fn count_enrolled_since(conn: &mut Conn, key_id: &str, since: i64) -> Result<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT COUNT(*) FROM devices WHERE key_id = $1 AND created_at > $2",
                )
                .bind(key_id)
                .bind(since)
                .fetch_one(conn)
                .await?)
            }

            /// Whether the key has an active device last scored `trusted`.
            async fn has_trusted_device(conn: &mut Conn, key_id: &str) -> Result<bool> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM devices WHERE key_id = $1 AND status = 'active' \
                     AND trust_level = 'trusted'",
                )
                .bind(key_id)
                .fetch_one(conn)
                .await?;
                Ok(n > 0)
            }

            /// The device a new one may replace at `max_devices`: the one unused the longest
            /// among the active devices nobody vouched for (not approved, not attested) that
            /// stayed `limited` and were last seen before `before`.
            async fn select_stale_device(
                conn: &mut Conn,
                key_id: &str,
                before: i64,
            ) -> Result<Option<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT device_id FROM devices WHERE key_id = $1 AND status = 'active' \
                     AND trust_level = 'limited' AND NOT approved \
                     AND attestation_format IS NULL AND last_seen_at < $2 \
                     ORDER BY last_seen_at, created_at, device_id LIMIT 1",
                )
                .bind(key_id)
                .bind(before)
                .fetch_optional(conn)
                .await?)
            }

            async fn select_device<'c>(
                ex: impl sqlx::Executor<'c, Database = Db>,
                device_id: &str,
            ) -> Result<Option<DeviceRecord>> {
                Ok(sqlx::query_as("SELECT * FROM devices WHERE device_id = $1")
                    .bind(device_id)
                    .fetch_optional(ex)
                    .await?)
            }

            async fn select_device_by_jkt<'c>(
                ex: impl sqlx::Executor<'c, Database = Db>,
                key_id: &str,
                jkt: &str,
            ) -> Result<Option<DeviceRecord>> {
                Ok(sqlx::query_as("SELECT * FROM devices WHERE key_id = $1 AND jkt = $2")
                    .bind(key_id)
                    .bind(jkt)
                    .fetch_optional(ex)
                    .await?)
            }

            async fn select_devices_of_key(
                pool: &sqlx::Pool<Db>,
                key_id: &str,
            ) -> Result<Vec<DeviceRecord>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM devices WHERE key_id = $1 ORDER BY created_at, device_id",
                )
                .bind(key_id)
                .fetch_all(pool)
                .await?)
            }

            async fn count_active_devices(conn: &mut Conn, key_id: &str) -> Result<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT COUNT(*) FROM devices WHERE key_id = $1 AND status = 'active'",
                )
                .bind(key_id)
                .fetch_one(conn)
                .await?)
            }

            /// A second revocation keeps the first `revoked_at`.
            async fn revoke_device(
                conn: &mut Conn,
                device_id: &str,
                at: i64,
            ) -> Result<Option<DeviceRecord>> {
                Ok(sqlx::query_as(
                    "UPDATE devices SET status = 'revoked', revoked_at = COALESCE(revoked_at, $2) \
                     WHERE device_id = $1 RETURNING *",
                )
                .bind(device_id)
                .bind(at)
                .fetch_optional(conn)
                .await?)
            }

            async fn approve_device(
                conn: &mut Conn,
                device_id: &str,
            ) -> Result<Option<DeviceRecord>> {
                // Approval re-baselines the fingerprint: an operator vouching for a device
                // (say, after a reinstall changed its install_id) makes the attributes it
                // presents next the new reference, and forgives earlier mismatches. A new
                // baseline number keeps histories scored before it from writing the old
                // fingerprint back (`update_devices_bulk`).
                Ok(sqlx::query_as(
                    "UPDATE devices SET approved = TRUE, attributes = '{}', mismatch_count = 0, \
                     mismatch_fingerprint = NULL, baseline = baseline + 1 \
                     WHERE device_id = $1 RETURNING *",
                )
                .bind(device_id)
                .fetch_optional(conn)
                .await?)
            }

            // ---- statements: refresh families ----

            /// The family's first refresh: the row appears at generation 1. An existing row
            /// means generation 0 was spent already (or the family revoked): nothing inserted.
            async fn insert_family_if_absent(conn: &mut Conn, f: &FamilyRecord) -> Result<bool> {
                let done = sqlx::query(
                    "INSERT INTO refresh_families (family_id, key_id, device_id, jkt, generation, \
                     created_at, rotated_at, expires_at, revoked_at, grace_token, grace_until) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (family_id) DO NOTHING",
                )
                .bind(&f.family_id)
                .bind(f.key_id.as_str())
                .bind(&f.device_id)
                .bind(f.jkt.as_str())
                .bind(f.generation)
                .bind(f.created_at)
                .bind(f.rotated_at)
                .bind(f.expires_at)
                .bind(f.revoked_at)
                .bind(&f.grace_token)
                .bind(f.grace_until)
                .execute(conn)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            /// One conditional update, so of concurrent refreshes of one generation exactly one
            /// sees a row change: the database, not a read-then-write in our code, decides the
            /// winner.
            async fn advance_family(conn: &mut Conn, from: i64, f: &FamilyRecord) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE refresh_families SET generation = $3, rotated_at = $4, \
                     expires_at = $5, grace_token = $6, grace_until = $7 \
                     WHERE family_id = $1 AND generation = $2 AND revoked_at IS NULL",
                )
                .bind(&f.family_id)
                .bind(from)
                .bind(f.generation)
                .bind(f.rotated_at)
                .bind(f.expires_at)
                .bind(&f.grace_token)
                .bind(f.grace_until)
                .execute(conn)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn select_family(
                pool: &sqlx::Pool<Db>,
                family_id: &str,
            ) -> Result<Option<FamilyRecord>> {
                Ok(sqlx::query_as("SELECT * FROM refresh_families WHERE family_id = $1")
                    .bind(family_id)
                    .fetch_optional(pool)
                    .await?)
            }

            /// Revokes a family, inserting its row (revoked) when its first token was never
            /// refreshed. Counts 1 only when this statement revoked it.
            async fn upsert_family_revoked(
                conn: &mut Conn,
                f: &FamilyRecord,
                at: i64,
            ) -> Result<u64> {
                let done = sqlx::query(
                    "INSERT INTO refresh_families (family_id, key_id, device_id, jkt, generation, \
                     created_at, rotated_at, expires_at, revoked_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (family_id) DO UPDATE SET revoked_at = excluded.revoked_at, \
                     grace_token = NULL, grace_until = NULL, \
                     expires_at = CASE WHEN refresh_families.expires_at < excluded.expires_at \
                     THEN excluded.expires_at ELSE refresh_families.expires_at END \
                     WHERE refresh_families.revoked_at IS NULL",
                )
                .bind(&f.family_id)
                .bind(f.key_id.as_str())
                .bind(&f.device_id)
                .bind(f.jkt.as_str())
                .bind(f.generation)
                .bind(f.created_at)
                .bind(f.rotated_at)
                .bind(f.expires_at)
                .bind(at)
                .execute(conn)
                .await?;
                Ok(done.rows_affected())
            }

            // ---- statements: signing keys ----

            async fn select_signing_keys(pool: &sqlx::Pool<Db>) -> Result<Vec<SigningKeyRecord>> {
                Ok(sqlx::query_as("SELECT * FROM signing_keys ORDER BY created_at DESC, kid DESC")
                    .fetch_all(pool)
                    .await?)
            }

            async fn retire_signing_keys(conn: &mut Conn, at: i64) -> Result<()> {
                sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
                    .bind(at)
                    .execute(conn)
                    .await?;
                Ok(())
            }

            async fn insert_signing_key_row(conn: &mut Conn, k: &SigningKeyRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO signing_keys (kid, public_key, sealed_private, created_at, \
                     retired_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&k.kid)
                .bind(&k.public_key)
                .bind(&k.sealed_private)
                .bind(k.created_at)
                .bind(k.retired_at)
                .execute(conn)
                .await?;
                Ok(())
            }

            async fn update_signing_key_seal(conn: &mut Conn, kid: &str, sealed: &[u8]) -> Result<u64> {
                Ok(sqlx::query("UPDATE signing_keys SET sealed_private = $1 WHERE kid = $2")
                    .bind(sealed)
                    .bind(kid)
                    .execute(conn)
                    .await?
                    .rows_affected())
            }

            // ---- statements: integrity root ----

            async fn select_integrity_root<'c>(
                ex: impl sqlx::Executor<'c, Database = Db>,
            ) -> Result<Option<Vec<u8>>> {
                Ok(sqlx::query_scalar("SELECT sealed FROM integrity_keys WHERE id = 0")
                    .fetch_optional(ex)
                    .await?)
            }

            async fn insert_integrity_root(conn: &mut Conn, sealed: &[u8], at: i64) -> Result<()> {
                sqlx::query("INSERT INTO integrity_keys (id, sealed, created_at) VALUES (0, $1, $2)")
                    .bind(sealed)
                    .bind(at)
                    .execute(conn)
                    .await?;
                Ok(())
            }

            async fn update_integrity_root(conn: &mut Conn, sealed: &[u8]) -> Result<u64> {
                Ok(sqlx::query("UPDATE integrity_keys SET sealed = $1 WHERE id = 0")
                    .bind(sealed)
                    .execute(conn)
                    .await?
                    .rows_affected())
            }

            /// Rows only an enabled integrity root can have made: wrapped key hashes (any
            /// length but a bare SHA-256's 32 bytes) and enable rows of the audit log.
            async fn count_integrity_rows(conn: &mut Conn) -> Result<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT (SELECT COUNT(*) FROM api_keys WHERE length(secret_hash) <> 32) \
                     + (SELECT COUNT(*) FROM audit_log WHERE action = $1)",
                )
                .bind(ENABLE_ACTION)
                .fetch_one(conn)
                .await?)
            }

            async fn select_bare_key_hashes(conn: &mut Conn) -> Result<Vec<(String, Vec<u8>)>> {
                Ok(sqlx::query_as(
                    "SELECT key_id, secret_hash FROM api_keys WHERE length(secret_hash) = 32",
                )
                .fetch_all(conn)
                .await?)
            }

            async fn update_key_hash(conn: &mut Conn, key_id: &str, hash: &[u8]) -> Result<()> {
                sqlx::query("UPDATE api_keys SET secret_hash = $1 WHERE key_id = $2")
                    .bind(hash)
                    .bind(key_id)
                    .execute(conn)
                    .await?;
                Ok(())
            }

            // ---- statements: audit log ----

            async fn select_audit_head(conn: &mut Conn) -> Result<Option<(i64, Vec<u8>)>> {
                Ok(sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
                    .fetch_optional(conn)
                    .await?)
            }

            async fn insert_audit_row(conn: &mut Conn, row: &AuditRow) -> Result<()> {
                let e = &row.entry;
                sqlx::query(
                    "INSERT INTO audit_log (seq, at, actor, action, target, ip, details, \
                     prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(row.seq)
                .bind(e.at)
                .bind(&e.actor)
                .bind(&e.action)
                .bind(&e.target)
                .bind(&e.ip)
                .bind(to_json(&e.details))
                .bind(&row.prev_hash)
                .bind(&row.hash)
                .execute(conn)
                .await?;
                Ok(())
            }

            async fn select_audit_after(
                pool: &sqlx::Pool<Db>,
                after: i64,
                limit: i64,
            ) -> Result<Vec<AuditRow>> {
                Ok(sqlx::query_as("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2")
                    .bind(after)
                    .bind(limit.max(0))
                    .fetch_all(pool)
                    .await?)
            }

            /// Chains `entry` after the newest row, MAC'd under `keys`. The caller holds the
            /// write-order lock ([`Backend::lock_write_order`]), so no other appender reads the
            /// same head. Without keys, only a database that has no integrity root yet gets a
            /// row (chained with the plain SHA-256 rule, which the upgrade row then covers).
            async fn chain_audit(
                conn: &mut Conn,
                keys: Option<&Integrity>,
                entry: &AuditEntry,
            ) -> Result<AuditRow> {
                let (seq, prev_hash) = match select_audit_head(conn).await? {
                    Some((seq, hash)) => (seq + 1, hash),
                    None => (1, GENESIS.to_vec()),
                };
                let hash = match keys {
                    Some(k) => k.audit_mac(&prev_hash, seq, entry).to_vec(),
                    None if select_integrity_root(&mut *conn).await?.is_some() => {
                        return Err(Error::InvalidRequest(
                            "this database's audit log is protected by its integrity key: \
                             the command needs the master key (--master-key, \
                             KEYBOUND_MASTER_KEY or --master-key-file)"
                                .into(),
                        ));
                    }
                    None => chain_hash(&prev_hash, seq, entry).to_vec(),
                };
                let row = AuditRow { seq, entry: entry.clone(), prev_hash, hash };
                insert_audit_row(conn, &row).await?;
                Ok(row)
            }

            // ---- statements: alerts ----

            async fn insert_alert_row(conn: &mut Conn, a: &AlertRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO alerts (id, at, kind, severity, key_id, device_id, ip, details) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&a.id)
                .bind(a.at)
                .bind(&a.kind)
                .bind(&a.severity)
                .bind(&a.key_id)
                .bind(&a.device_id)
                .bind(&a.ip)
                .bind(to_json(&a.details))
                .execute(conn)
                .await?;
                Ok(())
            }

            async fn delete_alerts_before(pool: &sqlx::Pool<Db>, before: i64) -> Result<u64> {
                Ok(sqlx::query("DELETE FROM alerts WHERE at < $1")
                    .bind(before)
                    .execute(pool)
                    .await?
                    .rows_affected())
            }

            async fn select_alerts(
                pool: &sqlx::Pool<Db>,
                f: &AlertFilter,
            ) -> Result<Vec<AlertRecord>> {
                Ok(sqlx::query_as(
                    "SELECT * FROM alerts WHERE ($1 IS NULL OR kind = $1) \
                     AND ($2 IS NULL OR key_id = $2) AND at >= $3 \
                     AND ($5 IS NULL OR at < (SELECT at FROM alerts WHERE id = $5) \
                          OR (at = (SELECT at FROM alerts WHERE id = $5) AND id < $5)) \
                     ORDER BY at DESC, id DESC LIMIT $4",
                )
                .bind(&f.kind)
                .bind(&f.key_id)
                .bind(f.since.unwrap_or(i64::MIN))
                .bind(f.limit.max(0))
                .bind(&f.after)
                .fetch_all(pool)
                .await?)
            }

            // ---- statements: usage ----

            /// Usage minutes in one multi-row upsert, each added to its stored minute: a
            /// statement per row would be a round trip each (for SQLite, to sqlx's worker
            /// thread) inside the group commit's transaction, which holds the write lock. The
            /// rows must name distinct minutes ([`merge_usage`](crate::store::merge_usage)).
            async fn upsert_usage_rows(conn: &mut Conn, rows: &[UsageMinute]) -> Result<()> {
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "INSERT INTO usage_minutes (key_id, minute, requests, errors, \
                     latency_sum_us, latency_max_us) ",
                );
                q.push_values(rows, |mut b, u| {
                    b.push_bind(u.key_id.as_str())
                        .push_bind(u.minute)
                        .push_bind(u.requests)
                        .push_bind(u.errors)
                        .push_bind(u.latency_sum_us)
                        .push_bind(u.latency_max_us);
                });
                q.push(
                    " ON CONFLICT (key_id, minute) DO UPDATE SET \
                     requests = usage_minutes.requests + excluded.requests, \
                     errors = usage_minutes.errors + excluded.errors, \
                     latency_sum_us = usage_minutes.latency_sum_us + excluded.latency_sum_us, \
                     latency_max_us = CASE WHEN excluded.latency_max_us > \
                     usage_minutes.latency_max_us THEN excluded.latency_max_us \
                     ELSE usage_minutes.latency_max_us END",
                );
                // Kept prepared: called with the few sizes of `prepared_chunks` only.
                q.build().execute(conn).await?;
                Ok(())
            }

            async fn select_usage_buckets(
                pool: &sqlx::Pool<Db>,
                key_id: &str,
                bucket_secs: i64,
                since: i64,
            ) -> Result<Vec<UsageBucket>> {
                let rows: Vec<(i64, i64, i64, f64, i64)> = sqlx::query_as(
                    "SELECT (minute / $2) * $2 AS start, CAST(SUM(requests) AS BIGINT), \
                     CAST(SUM(errors) AS BIGINT), \
                     CAST(SUM(latency_sum_us) AS DOUBLE PRECISION) \
                     / CAST(SUM(requests) AS DOUBLE PRECISION) AS mean_latency_us, \
                     MAX(latency_max_us) AS max_latency_us \
                     FROM usage_minutes WHERE key_id = $1 AND minute >= $3 \
                     GROUP BY (minute / $2) * $2 ORDER BY start",
                )
                .bind(key_id)
                .bind(bucket_secs.max(60) / 60 * 60)
                .bind(since.div_euclid(60) * 60)
                .fetch_all(pool)
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(start, requests, errors, mean_latency_us, max_latency_us)| UsageBucket {
                        start,
                        requests,
                        errors,
                        mean_latency_us,
                        max_latency_us,
                    })
                    .collect())
            }

            async fn delete_usage_before(pool: &sqlx::Pool<Db>, before: i64) -> Result<u64> {
                Ok(sqlx::query("DELETE FROM usage_minutes WHERE minute < $1")
                    .bind(before)
                    .execute(pool)
                    .await?
                    .rows_affected())
            }

            /// Rows per purge statement: a short write lock each (group commit goes on in
            /// between), and few statements for a day's worth of tokens.
            const PURGE_ROWS: i64 = 5_000;

            async fn delete_refresh_expired_before(
                pool: &sqlx::Pool<Db>,
                before: i64,
            ) -> Result<u64> {
                let mut total = 0;
                loop {
                    let n = sqlx::query(
                        "DELETE FROM refresh_families WHERE family_id IN \
                         (SELECT family_id FROM refresh_families WHERE expires_at < $1 LIMIT $2)",
                    )
                    .bind(before)
                    .bind(PURGE_ROWS)
                    .execute(pool)
                    .await?
                    .rows_affected();
                    total += n;
                    if n < PURGE_ROWS as u64 {
                        return Ok(total);
                    }
                }
            }

            async fn clear_grace_before(pool: &sqlx::Pool<Db>, before: i64) -> Result<u64> {
                Ok(sqlx::query(
                    "UPDATE refresh_families SET grace_token = NULL, grace_until = NULL \
                     WHERE grace_until < $1",
                )
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected())
            }

            // ---- statements: revocation feed ----

            /// The caller holds the write-order lock ([`Backend::lock_write_order`]).
            async fn insert_revocation(
                conn: &mut Conn,
                kind: &str,
                id: &str,
                at: i64,
            ) -> Result<()> {
                sqlx::query("INSERT INTO revocations (kind, subject, at) VALUES ($1, $2, $3)")
                    .bind(kind)
                    .bind(id)
                    .bind(at)
                    .execute(conn)
                    .await?;
                Ok(())
            }

            async fn select_revocations_after(
                pool: &sqlx::Pool<Db>,
                after: i64,
                limit: i64,
            ) -> Result<Vec<RevocationRecord>> {
                Ok(sqlx::query_as(
                    "SELECT seq, kind, subject, at FROM revocations WHERE seq > $1 \
                     ORDER BY seq LIMIT $2",
                )
                .bind(after)
                .bind(limit.max(0))
                .fetch_all(pool)
                .await?)
            }

            async fn select_revocation_cursor_at(pool: &sqlx::Pool<Db>, at: i64) -> Result<i64> {
                Ok(sqlx::query_scalar(
                    "SELECT COALESCE((SELECT MIN(seq) - 1 FROM revocations WHERE at >= $1), \
                     (SELECT MAX(seq) FROM revocations), 0)",
                )
                .bind(at)
                .fetch_one(pool)
                .await?)
            }

            async fn delete_revocations_before(pool: &sqlx::Pool<Db>, before: i64) -> Result<u64> {
                let done = sqlx::query("DELETE FROM revocations WHERE at < $1")
                    .bind(before)
                    .execute(pool)
                    .await?;
                Ok(done.rows_affected())
            }

            // ---- statements: token status lists ----

            /// Status list indexes in `start..end` of revoked devices (value 1).
            async fn select_revoked_device_indexes(
                pool: &sqlx::Pool<Db>,
                start: i64,
                end: i64,
            ) -> Result<Vec<i64>> {
                Ok(sqlx::query_scalar(
                    "SELECT status_idx FROM devices \
                     WHERE status = 'revoked' AND status_idx >= $1 AND status_idx < $2",
                )
                .bind(start)
                .bind(end)
                .fetch_all(pool)
                .await?)
            }

            /// Status list indexes in `start..end` of devices whose key is suspended, revoked
            /// or expired at `now`, with that key's status and expiry. Starts from the keys
            /// (few are not active), then their devices by the `(key_id, jkt)` index.
            async fn select_indexes_under_unusable_keys(
                pool: &sqlx::Pool<Db>,
                start: i64,
                end: i64,
                now: i64,
            ) -> Result<Vec<(i64, String, Option<i64>)>> {
                Ok(sqlx::query_as(
                    "SELECT d.status_idx, k.status, k.expires_at \
                     FROM api_keys k JOIN devices d ON d.key_id = k.key_id \
                     WHERE (k.status <> 'active' OR k.expires_at <= $3) \
                     AND d.status_idx >= $1 AND d.status_idx < $2",
                )
                .bind(start)
                .bind(end)
                .bind(now)
                .fetch_all(pool)
                .await?)
            }

            /// The next time a key expires after `now`: a list built now changes then.
            async fn select_next_key_expiry(pool: &sqlx::Pool<Db>, now: i64) -> Result<Option<i64>> {
                Ok(sqlx::query_scalar("SELECT MIN(expires_at) FROM api_keys WHERE expires_at > $1")
                    .bind(now)
                    .fetch_one(pool)
                    .await?)
            }

            /// The highest status list index in use, `None` without devices.
            async fn select_max_status_idx(pool: &sqlx::Pool<Db>) -> Result<Option<i64>> {
                Ok(sqlx::query_scalar("SELECT MAX(status_idx) FROM devices")
                    .fetch_one(pool)
                    .await?)
            }

            // ---- transactions ----

            impl $Store {
                /// A writing transaction holding the write-order lock.
                /// The installed integrity keys that MAC audit rows.
                fn audit_keys(&self) -> Option<&Integrity> {
                    self.integrity.get().map(|k| &**k)
                }

                async fn begin_ordered(&self) -> Result<Tx> {
                    let mut tx = <$Store as Backend>::begin_write(&self.pool).await?;
                    <$Store as Backend>::lock_write_order(&mut tx).await?;
                    Ok(tx)
                }

                /// Bulk loading for benchmarks ([`seed`]($crate::store::seed)): keys, then
                /// devices, in multi-row INSERTs, one transaction per
                /// [`SEED_ROWS_PER_TX`]($crate::store::SEED_ROWS_PER_TX) rows. No audit rows:
                /// this fills a scratch database, it is not an operator action.
                pub async fn bulk_insert(
                    &self,
                    keys: &[KeyRecord],
                    devices: &[DeviceRecord],
                ) -> Result<()> {
                    for chunk in keys.chunks($crate::store::SEED_ROWS_PER_TX) {
                        let mut tx = <$Store as Backend>::begin_write(&self.pool).await?;
                        for rows in chunk.chunks(SEED_ROWS_PER_STATEMENT) {
                            insert_keys_bulk(&mut tx, rows).await?;
                        }
                        tx.commit().await?;
                    }
                    for chunk in devices.chunks($crate::store::SEED_ROWS_PER_TX) {
                        let mut tx = <$Store as Backend>::begin_write(&self.pool).await?;
                        for rows in chunk.chunks(SEED_ROWS_PER_STATEMENT) {
                            let indexes = <$Store as Backend>::allocate_status_indexes(
                                &mut tx,
                                rows.len() as i64,
                            )
                            .await?;
                            insert_devices_bulk(&mut tx, rows, &indexes).await?;
                        }
                        tx.commit().await?;
                    }
                    Ok(())
                }
            }

            // ---- statements: bulk loading (benchmarks) ----

            /// Rows per multi-row INSERT: 20 binds a key row, so 500 rows stay far below both
            /// databases' bind limits (SQLite 32 766, PostgreSQL 65 535).
            const SEED_ROWS_PER_STATEMENT: usize = 500;

            /// `INSERT INTO api_keys (…) VALUES (…), (…), …`. The statement text depends only
            /// on the number of rows; every value is a bind.
            async fn insert_keys_bulk(conn: &mut Conn, rows: &[KeyRecord]) -> Result<()> {
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "INSERT INTO api_keys (key_id, env, name, description, secret_hash, scopes, \
                     limited_scopes, rate_limit_per_minute, allowed_ips, allowed_origins, \
                     max_devices, trust_on_enroll, status, status_reason, status_changed_at, \
                     created_at, expires_at, last_used_at, rotated_from, rotated_to, \
                     attestation) ",
                );
                q.push_values(rows, |mut b, k| {
                    b.push_bind(k.key_id.as_str().to_owned())
                        .push_bind(k.env.as_str())
                        .push_bind(k.name.clone())
                        .push_bind(k.description.clone())
                        .push_bind(k.secret_hash.clone())
                        .push_bind(to_json(&k.scopes))
                        .push_bind(k.limited_scopes.as_ref().map(to_json))
                        .push_bind(k.rate_limit_per_minute)
                        .push_bind(to_json(&k.allowed_ips))
                        .push_bind(to_json(&k.allowed_origins))
                        .push_bind(k.max_devices)
                        .push_bind(k.trust_on_enroll)
                        .push_bind(k.status.as_str())
                        .push_bind(k.status_reason.clone())
                        .push_bind(k.status_changed_at)
                        .push_bind(k.created_at)
                        .push_bind(k.expires_at)
                        .push_bind(k.last_used_at)
                        .push_bind(k.rotated_from.as_deref().map(str::to_owned))
                        .push_bind(k.rotated_to.as_deref().map(str::to_owned))
                        .push_bind(k.attestation.as_str());
                });
                q.build().persistent(false).execute(conn).await?;
                Ok(())
            }

            /// `INSERT INTO devices (…) VALUES (…), (…), …`, like [`insert_keys_bulk`].
            /// Each row gets the status list index at its position in `indexes`.
            async fn insert_devices_bulk(
                conn: &mut Conn,
                rows: &[DeviceRecord],
                indexes: &[i64],
            ) -> Result<()> {
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "INSERT INTO devices (device_id, key_id, jkt, name, attributes, status, \
                     approved, created_at, last_seen_at, exchange_count, mismatch_count, \
                     networks, trust_score, trust_level, trust_factors, revoked_at, \
                     mismatch_fingerprint, status_idx) ",
                );
                q.push_values(rows.iter().zip(indexes), |mut b, (d, idx)| {
                    b.push_bind(d.device_id.clone())
                        .push_bind(d.key_id.as_str().to_owned())
                        .push_bind(d.jkt.as_str().to_owned())
                        .push_bind(d.name.clone())
                        .push_bind(to_json(&d.attributes))
                        .push_bind(d.status.as_str())
                        .push_bind(d.approved)
                        .push_bind(d.created_at)
                        .push_bind(d.last_seen_at)
                        .push_bind(d.exchange_count)
                        .push_bind(d.mismatch_count)
                        .push_bind(to_json(&d.networks))
                        .push_bind(d.trust_score)
                        .push_bind(d.trust_level.as_str())
                        .push_bind(d.trust_factors.get())
                        .push_bind(d.revoked_at)
                        .push_bind(d.mismatch_fingerprint.as_deref())
                        .push_bind(*idx);
                });
                q.build().persistent(false).execute(conn).await?;
                Ok(())
            }

            // The token path's statements (key and device reads, refresh families, device
            // history) get debug-level spans: at the default info level they cost nothing,
            // where an info span per statement was a measurable share of an exchange.
            #[async_trait]
            impl Store for $Store {
                async fn ping(&self) -> Result<()> {
                    sqlx::query("SELECT 1").execute(&self.pool).await?;
                    Ok(())
                }

                fn backend(&self) -> &'static str {
                    <$Store as Backend>::NAME
                }

                #[tracing::instrument(skip_all, fields(key_id = %key.key_id))]
                async fn create_key(&self, key: &KeyRecord, audit: &AuditEntry) -> Result<()> {
                    let mut tx = self.begin_ordered().await?;
                    insert_key(&mut tx, key).await?;
                    chain_audit(&mut tx, self.audit_keys(), audit).await?;
                    Ok(tx.commit().await?)
                }

                #[tracing::instrument(level = "debug", skip_all, fields(key_id = %key_id))]
                async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>> {
                    select_key(&self.pool, key_id).await
                }

                #[tracing::instrument(skip_all, fields(limit = limit))]
                async fn list_keys(
                    &self,
                    after: Option<&str>,
                    limit: i64,
                ) -> Result<Vec<KeyRecord>> {
                    // Every key id sorts after "" (ids are `ak_…`).
                    select_keys_after(&self.pool, after.unwrap_or(""), limit).await
                }

                #[tracing::instrument(skip_all, fields(key_id = %key.key_id))]
                async fn update_key(&self, key: &KeyRecord, audit: &AuditEntry) -> Result<()> {
                    let mut tx = self.begin_ordered().await?;
                    if !update_key_metadata(&mut tx, key).await? {
                        return Err(Error::NotFound);
                    }
                    chain_audit(&mut tx, self.audit_keys(), audit).await?;
                    Ok(tx.commit().await?)
                }

                #[tracing::instrument(
                    skip_all,
                    fields(key_id = %key_id, status = status.as_str())
                )]
                async fn set_key_status(
                    &self,
                    key_id: &str,
                    status: KeyStatus,
                    reason: Option<&str>,
                    at: i64,
                    audit: &AuditEntry,
                ) -> Result<Option<KeyRecord>> {
                    let mut tx = self.begin_ordered().await?;
                    let Some(key) = update_key_status(&mut tx, key_id, status, reason, at).await?
                    else {
                        return Ok(None);
                    };
                    if status != KeyStatus::Active {
                        insert_revocation(&mut tx, "key", key_id, at).await?;
                    }
                    chain_audit(&mut tx, self.audit_keys(), audit).await?;
                    tx.commit().await?;
                    Ok(Some(key))
                }

                #[tracing::instrument(skip_all, fields(old_id = %old_id, new_id = %new.key_id))]
                async fn rotate_key(
                    &self,
                    old_id: &str,
                    old_expires_at: i64,
                    new: &KeyRecord,
                    audit: &AuditEntry,
                ) -> Result<()> {
                    let mut tx = self.begin_ordered().await?;
                    if !mark_key_rotated(&mut tx, old_id, &new.key_id, old_expires_at).await? {
                        return Err(Error::NotFound);
                    }
                    insert_key(&mut tx, new).await?;
                    chain_audit(&mut tx, self.audit_keys(), audit).await?;
                    Ok(tx.commit().await?)
                }

                #[tracing::instrument(level = "debug", skip_all, fields(keys = used.len()))]
                async fn touch_keys(&self, used: &[(String, i64)]) -> Result<Vec<KeyRecord>> {
                    if used.is_empty() {
                        return Ok(Vec::new());
                    }
                    match self.writer.submit(WriteOp::TouchKeys(used.to_vec())).await? {
                        Answer::Keys(stored) => Ok(stored),
                        _ => Err(Error::internal("a key touch answered no keys")),
                    }
                }

                #[tracing::instrument(skip_all, fields(before = before))]
                async fn purge_expired_keys(&self, before: i64) -> Result<u64> {
                    delete_keys_expired_before(&self.pool, before).await
                }

                #[tracing::instrument(level = "debug", skip_all, fields(key_id = %key_id))]
                async fn get_device_by_jkt(
                    &self,
                    key_id: &str,
                    jkt: &str,
                ) -> Result<Option<DeviceRecord>> {
                    select_device_by_jkt(&self.pool, key_id, jkt).await
                }

                #[tracing::instrument(skip_all, fields(device_id = %device_id))]
                async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>> {
                    select_device(&self.pool, device_id).await
                }

                #[tracing::instrument(skip_all, fields(key_id = %key_id))]
                async fn list_devices(&self, key_id: &str) -> Result<Vec<DeviceRecord>> {
                    select_devices_of_key(&self.pool, key_id).await
                }

                #[tracing::instrument(
                    skip_all,
                    fields(key_id = %device.key_id, device_id = %device.device_id)
                )]
                async fn enroll_device(
                    &self,
                    device: &DeviceRecord,
                    limits: EnrollLimits,
                ) -> Result<Enrollment> {
                    let key_id = &device.key_id;
                    // A replacement writes the revocation feed, which needs the write-order
                    // lock, taken first (as every ordered writer does) to keep one lock order:
                    // so the rare enrollment that replaces starts over in an ordered
                    // transaction.
                    let mut ordered = false;
                    let (mut tx, replaced) = loop {
                        let mut tx = if ordered {
                            self.begin_ordered().await?
                        } else {
                            <$Store as Backend>::begin_write(&self.pool).await?
                        };
                        <$Store as Backend>::lock_key(&mut tx, key_id).await?;
                        if let Some(existing) =
                            select_device_by_jkt(&mut *tx, key_id, &device.jkt).await?
                        {
                            return Ok(Enrollment::Exists(Box::new(existing)));
                        }
                        let stale = if count_active_devices(&mut tx, key_id).await?
                            < limits.max_devices
                        {
                            None
                        } else {
                            match select_stale_device(&mut tx, key_id, limits.stale_before)
                                .await?
                            {
                                Some(stale) => Some(stale),
                                None => return Ok(Enrollment::LimitReached),
                            }
                        };
                        // The hourly budget counts every enrollment, revoked and replaced
                        // devices included: freeing slots must not buy new enrollments.
                        if limits.per_hour < i64::MAX
                            && count_enrolled_since(&mut tx, key_id, limits.now - 3600).await?
                                >= limits.per_hour
                        {
                            return Ok(Enrollment::BudgetSpent);
                        }
                        let Some(stale) = stale else {
                            break (tx, None);
                        };
                        if !ordered {
                            tx.rollback().await?;
                            ordered = true;
                            continue;
                        }
                        // Revoked like an operator's revocation (and in the feed), in the
                        // transaction of the enrollment that takes its slot.
                        let old = revoke_device(&mut tx, &stale, limits.now).await?;
                        if let Some(old) = &old {
                            insert_revocation(&mut tx, "device", &old.jkt, limits.now).await?;
                        }
                        break (tx, old.map(Box::new));
                    };
                    let key_had_trusted = has_trusted_device(&mut tx, key_id).await?;
                    // In the enrollment's transaction: a device exists with its status list
                    // index or not at all.
                    let mut device = device.clone();
                    device.status_idx = <$Store as Backend>::allocate_status_indexes(&mut tx, 1)
                        .await?
                        .first()
                        .copied()
                        .ok_or_else(|| Error::internal("no status list index allocated"))?;
                    match insert_device(&mut tx, &device).await {
                        Ok(()) => {
                            tx.commit().await?;
                            Ok(Enrollment::Enrolled {
                                device: Box::new(device),
                                replaced,
                                key_had_trusted,
                            })
                        }
                        // The lock above makes this unreachable for one key and thumbprint;
                        // should it happen anyway, the device that won is the answer.
                        Err(e) if is_unique_violation(&e) => {
                            tx.rollback().await?;
                            select_device_by_jkt(&self.pool, &device.key_id, &device.jkt)
                                .await?
                                .map(|d| Enrollment::Exists(Box::new(d)))
                                .ok_or_else(|| Error::internal(e))
                        }
                        Err(e) => Err(e.into()),
                    }
                }

                #[tracing::instrument(skip_all, fields(device_id = %device.device_id))]
                async fn record_attestation(
                    &self,
                    device: &DeviceRecord,
                    attestation: &DeviceAttestation,
                ) -> Result<()> {
                    let mut tx = <$Store as Backend>::begin_write(&self.pool).await?;
                    update_device_attestation(&mut tx, &device.device_id, attestation).await?;
                    tx.commit().await?;
                    Ok(())
                }

                #[tracing::instrument(level = "debug", skip_all, fields(device_id = %device.device_id))]
                async fn update_device_usage(
                    &self,
                    device: std::sync::Arc<DeviceRecord>,
                ) -> Result<Option<DeviceLifecycle>> {
                    match self.writer.submit(WriteOp::UpdateDeviceUsage(device)).await? {
                        Answer::Device(stored) => Ok(stored),
                        _ => Err(Error::internal("a device write answered no device")),
                    }
                }

                #[tracing::instrument(skip_all, fields(device_id = %device_id, change = ?change))]
                async fn set_device_status(
                    &self,
                    device_id: &str,
                    change: DeviceChange,
                    at: i64,
                    audit: &AuditEntry,
                ) -> Result<Option<DeviceRecord>> {
                    let mut tx = self.begin_ordered().await?;
                    let device = match change {
                        DeviceChange::Revoke => revoke_device(&mut tx, device_id, at).await?,
                        DeviceChange::Approve => approve_device(&mut tx, device_id).await?,
                    };
                    let Some(device) = device else {
                        return Ok(None);
                    };
                    if change == DeviceChange::Revoke {
                        insert_revocation(&mut tx, "device", &device.jkt, at).await?;
                    }
                    chain_audit(&mut tx, self.audit_keys(), audit).await?;
                    tx.commit().await?;
                    Ok(Some(device))
                }

                #[tracing::instrument(level = "debug", skip_all, fields(family_id = %next.family_id))]
                async fn advance_refresh_family(
                    &self,
                    from: i64,
                    next: &FamilyRecord,
                ) -> Result<bool> {
                    let op = WriteOp::AdvanceFamily { from, next: next.clone() };
                    match self.writer.submit(op).await? {
                        Answer::Done(won) => Ok(won),
                        _ => Err(Error::internal("a family write answered no verdict")),
                    }
                }

                #[tracing::instrument(level = "debug", skip_all, fields(family_id = %family_id))]
                async fn get_refresh_family(&self, family_id: &str) -> Result<Option<FamilyRecord>> {
                    select_family(&self.pool, family_id).await
                }

                #[tracing::instrument(skip_all, fields(family_id = %family.family_id))]
                async fn revoke_refresh_family(&self, family: &FamilyRecord, at: i64) -> Result<u64> {
                    let mut tx = self.begin_ordered().await?;
                    let revoked = upsert_family_revoked(&mut tx, family, at).await?;
                    // A family revoked before (a second reuse) is already in the feed.
                    if revoked > 0 {
                        insert_revocation(&mut tx, "refresh_family", &family.family_id, at).await?;
                    }
                    tx.commit().await?;
                    Ok(revoked)
                }

                #[tracing::instrument(skip_all)]
                async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>> {
                    select_signing_keys(&self.pool).await
                }

                #[tracing::instrument(skip_all, fields(kid = %key.kid))]
                async fn insert_signing_key(&self, key: &SigningKeyRecord, at: i64) -> Result<()> {
                    // Ordered, so two instances rotating at once leave one active key, not two.
                    let mut tx = self.begin_ordered().await?;
                    retire_signing_keys(&mut tx, at).await?;
                    insert_signing_key_row(&mut tx, key).await?;
                    Ok(tx.commit().await?)
                }

                async fn reseal_signing_keys(
                    &self,
                    sealed: &[(String, Vec<u8>)],
                    integrity_root: Option<&[u8]>,
                    audit: &AuditEntry,
                ) -> Result<()> {
                    // Ordered like a rotation, so a rotation and a reseal never interleave.
                    let mut tx = self.begin_ordered().await?;
                    for (kid, blob) in sealed {
                        if update_signing_key_seal(&mut tx, kid, blob).await? != 1 {
                            return Err(crate::Error::NotFound);
                        }
                    }
                    if let Some(root) = integrity_root
                        && update_integrity_root(&mut tx, root).await? != 1
                    {
                        return Err(crate::Error::NotFound);
                    }
                    chain_audit(&mut tx, self.audit_keys(), audit).await?;
                    Ok(tx.commit().await?)
                }

                async fn integrity_root(&self) -> Result<Option<Vec<u8>>> {
                    select_integrity_root(&self.pool).await
                }

                #[tracing::instrument(skip_all)]
                async fn enable_integrity(
                    &self,
                    sealed_root: &[u8],
                    keys: &Integrity,
                    audit: &AuditEntry,
                ) -> Result<bool> {
                    let mut tx = self.begin_ordered().await?;
                    if select_integrity_root(&mut *tx).await?.is_some() {
                        return Ok(false);
                    }
                    if count_integrity_rows(&mut tx).await? > 0 {
                        return Err(Error::InvalidRequest(
                            "this database holds key hashes or audit rows protected by an \
                             integrity key, but the key's row (integrity_keys) is gone: restore \
                             it from a backup; refusing to create a new one"
                                .into(),
                        ));
                    }
                    insert_integrity_root(&mut tx, sealed_root, audit.at).await?;
                    let bare = select_bare_key_hashes(&mut tx).await?;
                    for (key_id, hash) in &bare {
                        update_key_hash(&mut tx, key_id, &keys.wrap_key_hash(key_id, hash))
                            .await?;
                    }
                    let mut entry = audit.clone();
                    entry.details = serde_json::json!({ "wrapped_key_hashes": bare.len() });
                    chain_audit(&mut tx, Some(keys), &entry).await?;
                    tx.commit().await?;
                    tracing::info!(
                        wrapped_key_hashes = bare.len(),
                        "integrity protection enabled: key hashes and the audit chain are MAC'd"
                    );
                    Ok(true)
                }

                fn set_integrity(&self, keys: std::sync::Arc<Integrity>) {
                    // First call wins; a second install of the same root changes nothing.
                    let _ = self.integrity.set(keys);
                }

                fn integrity(&self) -> Option<std::sync::Arc<Integrity>> {
                    self.integrity.get().cloned()
                }

                #[tracing::instrument(skip_all, fields(action = %entry.action))]
                async fn append_audit(&self, entry: &AuditEntry) -> Result<AuditRow> {
                    let mut tx = self.begin_ordered().await?;
                    let row = chain_audit(&mut tx, self.audit_keys(), entry).await?;
                    tx.commit().await?;
                    Ok(row)
                }

                #[tracing::instrument(skip_all, fields(after = after, limit = limit))]
                async fn list_audit(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>> {
                    select_audit_after(&self.pool, after, limit).await
                }

                #[tracing::instrument(skip_all, fields(alerts = alerts.len()))]
                async fn insert_alerts(&self, alerts: &[AlertRecord]) -> Result<()> {
                    if alerts.is_empty() {
                        return Ok(());
                    }
                    let mut tx = <$Store as Backend>::begin_write(&self.pool).await?;
                    for a in alerts {
                        insert_alert_row(&mut tx, a).await?;
                    }
                    Ok(tx.commit().await?)
                }

                #[tracing::instrument(skip_all)]
                async fn purge_alerts(&self, before: i64) -> Result<u64> {
                    delete_alerts_before(&self.pool, before).await
                }

                #[tracing::instrument(skip_all)]
                async fn list_alerts(&self, filter: &AlertFilter) -> Result<Vec<AlertRecord>> {
                    select_alerts(&self.pool, filter).await
                }

                /// Through the group-commit writer, like the token path's writes. A transaction
                /// of its own took the write lock from the writer for a commit and a flush ten
                /// times a second; SQLite's writer then slept in its busy handler (1 ms, 2, 5,
                /// …), and each usage commit emptied the writer connection's page cache
                /// (`docs/benchmarks.md`, change 20).
                #[tracing::instrument(skip_all, fields(minutes = minutes.len()))]
                async fn add_usage(&self, minutes: Vec<UsageMinute>) -> Result<()> {
                    if minutes.is_empty() {
                        return Ok(());
                    }
                    self.writer.submit(WriteOp::AddUsage(minutes)).await?;
                    Ok(())
                }

                #[tracing::instrument(skip_all, fields(bucket_secs = bucket_secs))]
                async fn usage_summary(
                    &self,
                    key_id: &str,
                    bucket_secs: i64,
                    since: i64,
                ) -> Result<Vec<UsageBucket>> {
                    select_usage_buckets(&self.pool, key_id, bucket_secs, since).await
                }

                #[tracing::instrument(skip_all)]
                async fn purge_usage(&self, before: i64) -> Result<u64> {
                    delete_usage_before(&self.pool, before).await
                }

                #[tracing::instrument(skip_all)]
                async fn purge_expired_refresh(&self, before: i64) -> Result<u64> {
                    delete_refresh_expired_before(&self.pool, before).await
                }

                #[tracing::instrument(skip_all)]
                async fn clear_refresh_grace(&self, before: i64) -> Result<u64> {
                    clear_grace_before(&self.pool, before).await
                }

                #[tracing::instrument(skip_all, fields(kind = %kind))]
                async fn append_revocation(&self, kind: &str, id: &str, at: i64) -> Result<()> {
                    let mut tx = self.begin_ordered().await?;
                    insert_revocation(&mut tx, kind, id, at).await?;
                    Ok(tx.commit().await?)
                }

                #[tracing::instrument(skip_all, fields(after = after, limit = limit))]
                async fn list_revocations(
                    &self,
                    after: i64,
                    limit: i64,
                ) -> Result<Vec<RevocationRecord>> {
                    select_revocations_after(&self.pool, after, limit).await
                }

                #[tracing::instrument(skip_all, fields(at = at))]
                async fn revocation_cursor_at(&self, at: i64) -> Result<i64> {
                    select_revocation_cursor_at(&self.pool, at).await
                }

                #[tracing::instrument(skip_all, fields(before = before))]
                async fn prune_revocations(&self, before: i64) -> Result<u64> {
                    delete_revocations_before(&self.pool, before).await
                }

                #[tracing::instrument(skip_all, fields(start = start))]
                async fn status_snapshot(
                    &self,
                    start: i64,
                    end: i64,
                    now: i64,
                ) -> Result<Option<StatusSnapshot>> {
                    // List 0 always exists; a later one once a device has an index in it.
                    if start > 0
                        && select_max_status_idx(&self.pool)
                            .await?
                            .is_none_or(|max| max < start)
                    {
                        return Ok(None);
                    }
                    let mut snapshot = StatusSnapshot {
                        next_expiry: select_next_key_expiry(&self.pool, now).await?,
                        ..StatusSnapshot::default()
                    };
                    for idx in select_revoked_device_indexes(&self.pool, start, end).await? {
                        snapshot.set(idx, $crate::store::StatusValue::Invalid);
                    }
                    for (idx, status, expires_at) in
                        select_indexes_under_unusable_keys(&self.pool, start, end, now).await?
                    {
                        let expired = expires_at.is_some_and(|e| e <= now);
                        let value = if status == KeyStatus::Suspended.as_str() && !expired {
                            $crate::store::StatusValue::Suspended
                        } else {
                            $crate::store::StatusValue::Invalid
                        };
                        snapshot.set(idx, value);
                    }
                    Ok(Some(snapshot))
                }
            }

            // ---- group commit ----

            /// The group-commit writer's transactions (see [`writer`]($crate::store::writer)).
            ///
            /// The device histories and usage minutes go in one multi-row statement each for the
            /// whole batch rather than a statement per op: each statement is a round trip to the database (for SQLite, to sqlx's worker
            /// thread), and at thousands of exchanges a second those round trips, not the rows,
            /// were what a batch spent its time on. A device used several times in one batch is
            /// written once, with the last state queued. The refresh-family writes, which need
            /// an answer each, go in one statement too where the backend has one
            /// ([`advance_families`]). The other ops are rare and run one by one, in order,
            /// first.
            #[async_trait]
            impl Batch for sqlx::Pool<Db> {
                async fn run(&self, ops: &[WriteOp]) -> Result<Vec<Answer>, BatchError> {
                    if let Some(families) = lone_family_statement(ops) {
                        let mut conn = self
                            .acquire()
                            .await
                            .map_err(|e| BatchError::Transaction(e.into()))?;
                        // The database commits a statement outside a transaction on its own,
                        // as durably as a `COMMIT`. A broken constraint aborts the statement
                        // before anything is written, so its ops can run again one by one; any
                        // other failure may come after the commit reached the disk, as a failed
                        // `COMMIT` may: the outcome is unknown, and the ops are not run again
                        // (a spent generation would look like a reuse).
                        return match <$Store as Backend>::advance_families(&mut *conn, &families).await {
                            Ok(won) => Ok(won.into_iter().map(Answer::Done).collect()),
                            Err(e) if $crate::store::sql::broke_a_constraint(&e) => {
                                Err(BatchError::Statement(e))
                            }
                            Err(e) => Err(BatchError::Transaction(e)),
                        };
                    }
                    let mut tx = <$Store as Backend>::begin_write(self)
                        .await
                        .map_err(BatchError::Transaction)?;
                    let mut answers = vec![Answer::Done(true); ops.len()];
                    let written = async {
                        let mut usage = Vec::new();
                        let mut minutes = Vec::new();
                        let mut families = Vec::new();
                        for (i, op) in ops.iter().enumerate() {
                            match op {
                                WriteOp::UpdateDeviceUsage(d) => usage.push(&**d),
                                WriteOp::AddUsage(m) => minutes.extend(m),
                                WriteOp::AdvanceFamily { from, next } => {
                                    families.push((i, *from, next))
                                }
                                WriteOp::TouchKeys(used) => {
                                    let mut stored = Vec::with_capacity(used.len());
                                    for rows in prepared_chunks(&last_per_key(used)) {
                                        stored.extend(touch_keys_bulk(&mut tx, rows).await?);
                                    }
                                    answers[i] = Answer::Keys(stored);
                                }
                            }
                        }
                        advance_families(&mut tx, &families, &mut answers).await?;
                        let usage = last_per_device(usage);
                        let mut stored = std::collections::HashMap::with_capacity(usage.len());
                        for rows in prepared_chunks(&usage) {
                            for l in update_devices_bulk(&mut tx, rows).await? {
                                stored.insert(l.device_id.clone(), l);
                            }
                        }
                        for (op, answer) in ops.iter().zip(answers.iter_mut()) {
                            if let WriteOp::UpdateDeviceUsage(d) = op {
                                *answer = Answer::Device(stored.get(&d.device_id).cloned());
                            }
                        }
                        let minutes = crate::store::merge_usage(minutes);
                        for rows in prepared_chunks(&minutes) {
                            upsert_usage_rows(&mut tx, rows).await?;
                        }
                        Ok::<(), Error>(())
                    }
                    .await;
                    if let Err(e) = written {
                        // Release the write lock now, not when the connection is next used.
                        let _ = tx.rollback().await;
                        return Err(BatchError::Statement(e));
                    }
                    tx.commit().await.map_err(|e| BatchError::Transaction(e.into()))?;
                    Ok(answers)
                }
            }

            /// A batch of refresh-family writes and nothing else, each family once, that the
            /// backend writes in one statement: the refresh path's usual batch. Run outside a
            /// transaction, it is one round trip to the database where `BEGIN`, the statement
            /// and `COMMIT` were three (for SQLite, each a message to sqlx's SQLite thread and a
            /// wake-up both ways, while the write lock is held).
            fn lone_family_statement(ops: &[WriteOp]) -> Option<Vec<(i64, &FamilyRecord)>> {
                let mut seen = std::collections::HashSet::with_capacity(ops.len());
                let families = ops
                    .iter()
                    .map(|op| match op {
                        WriteOp::AdvanceFamily { from, next }
                            if seen.insert(next.family_id.as_str()) =>
                        {
                            Some((*from, next))
                        }
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?;
                <$Store as Backend>::one_family_statement(&families).then_some(families)
            }

            /// Largest chunk of [`prepared_chunks`]: at most 11 binds a row, far below both
            /// databases' bind limits.
            const PREPARED_ROWS: usize = 128;

            /// Splits a batch's rows into chunks of 128, 64, …, 2 or 1 rows, largest first, so
            /// its multi-row statements come in eight shapes per kind, which stay prepared on
            /// the writer's connection. A statement of any other size was parsed and planned
            /// anew every batch: for SQLite that was 3 % of the server's CPU at full load, more
            /// than the one to seven statements a batch now runs instead of one cost in round
            /// trips.
            fn prepared_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
                $crate::store::sql::power_of_two_chunks(rows, PREPARED_ROWS)
            }

            /// Each key once, at its latest time: no statement updates a row twice (which
            /// PostgreSQL does with one of the matches, unspecified which).
            fn last_per_key(used: &[(String, i64)]) -> Vec<(&str, i64)> {
                let mut latest = std::collections::HashMap::with_capacity(used.len());
                for (key_id, at) in used {
                    let t = latest.entry(key_id.as_str()).or_insert(*at);
                    *t = (*t).max(*at);
                }
                latest.into_iter().collect()
            }

            /// The last queued history of each device, in queue order.
            fn last_per_device(usage: Vec<&DeviceRecord>) -> Vec<&DeviceRecord> {
                let mut seen = std::collections::HashSet::with_capacity(usage.len());
                let mut last: Vec<&DeviceRecord> = usage
                    .into_iter()
                    .rev()
                    .filter(|d| seen.insert(d.device_id.as_str()))
                    .collect();
                last.reverse();
                last
            }

            /// Writes the history fields of many devices in one statement: the new values in
            /// a `VALUES` list named by a CTE, joined by device id (`UPDATE … FROM`, which
            /// both databases accept in this form). Answers the lifecycle fields of each
            /// device it found, as it found them (`RETURNING`): what the validation cache
            /// would otherwise read again.
            async fn update_devices_bulk(
                conn: &mut Conn,
                rows: &[&DeviceRecord],
            ) -> Result<Vec<DeviceLifecycle>> {
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "WITH v (device_id, last_seen_at, exchange_count, mismatch_count, networks, \
                     trust_score, trust_level, trust_factors, attributes, mismatch_fingerprint, \
                     baseline) AS (",
                );
                q.push_values(rows, |mut b, d| {
                    b.push_bind(d.device_id.as_str())
                        .push_bind(d.last_seen_at)
                        .push_bind(d.exchange_count)
                        .push_bind(d.mismatch_count)
                        .push_bind(to_json(&d.networks))
                        .push_bind(d.trust_score)
                        .push_bind(d.trust_level.as_str())
                        .push_bind(d.trust_factors.get())
                        .push_bind(to_json(&d.attributes))
                        .push_bind(d.mismatch_fingerprint.as_deref())
                        .push_bind(d.baseline);
                });
                // The fingerprint fields only from a history scored against the stored
                // baseline: one queued before an approval (CLI, another instance) leaves the
                // approval's blank fingerprint and forgiven mismatches alone.
                q.push(
                    ") UPDATE devices SET last_seen_at = v.last_seen_at, \
                     exchange_count = v.exchange_count, networks = v.networks, \
                     trust_score = v.trust_score, trust_level = v.trust_level, \
                     trust_factors = v.trust_factors, \
                     attributes = CASE WHEN devices.baseline = v.baseline \
                       THEN v.attributes ELSE devices.attributes END, \
                     mismatch_count = CASE WHEN devices.baseline = v.baseline \
                       THEN v.mismatch_count ELSE devices.mismatch_count END, \
                     mismatch_fingerprint = CASE WHEN devices.baseline = v.baseline \
                       THEN v.mismatch_fingerprint ELSE devices.mismatch_fingerprint END \
                     FROM v WHERE devices.device_id = v.device_id \
                     RETURNING devices.device_id, status, approved, revoked_at, name, \
                     devices.baseline",
                );
                // Kept prepared: called with the few sizes of `prepared_chunks` only.
                Ok(q.build_query_as().fetch_all(conn).await?)
            }

            /// A batch's refresh-family writes: `(index in the batch, from, next)` in queue
            /// order, each answer put at its index.
            ///
            /// The first write of each family goes into the backend's one statement for the
            /// batch. A later write for a family already in it (two presenters of one token, a
            /// retry) runs alone afterwards, in queue order, and so sees the first one's
            /// outcome exactly as it would have one by one: of two spends of one generation one
            /// wins. No statement then touches a row twice, which PostgreSQL refuses.
            /// Families are independent of each other, so apart from that, order does not
            /// matter.
            async fn advance_families(
                conn: &mut Conn,
                families: &[(usize, i64, &FamilyRecord)],
                answers: &mut [Answer],
            ) -> Result<()> {
                if families.is_empty() {
                    return Ok(());
                }
                let mut seen = std::collections::HashSet::with_capacity(families.len());
                let (firsts, repeats): (Vec<_>, Vec<_>) = families
                    .iter()
                    .partition(|(_, _, f)| seen.insert(f.family_id.as_str()));
                let bulk: Vec<_> = firsts.iter().map(|&&(_, from, f)| (from, f)).collect();
                let won = <$Store as Backend>::advance_families(conn, &bulk).await?;
                for (&&(i, _, _), won) in firsts.iter().zip(won) {
                    answers[i] = Answer::Done(won);
                }
                for &&(i, from, f) in &repeats {
                    answers[i] = Answer::Done(advance_family_alone(conn, from, f).await?);
                }
                Ok(())
            }

            /// `Store::advance_refresh_family` as its own statement.
            async fn advance_family_alone(
                conn: &mut Conn,
                from: i64,
                next: &FamilyRecord,
            ) -> Result<bool> {
                if from == 0 {
                    insert_family_if_absent(conn, next).await
                } else {
                    advance_family(conn, from, next).await
                }
            }
        }
    };
}

pub(super) use sql_store;

/// A failed migration as the server's error: a database error keeps its class (unreachable →
/// 503); anything else (a missing or edited migration) is a bug or a broken install.
pub(super) fn migrate_error(e: sqlx::migrate::MigrateError) -> crate::Error {
    use sqlx::migrate::MigrateError;
    match e {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => e.into(),
        other => crate::Error::internal(other),
    }
}

/// An unparsable database URL. sqlx's parse errors name the problem, not the URL, so no
/// password can end up in the message.
pub(super) fn invalid_url(e: sqlx::Error) -> crate::Error {
    crate::Error::InvalidRequest(format!("invalid database URL: {e}"))
}
