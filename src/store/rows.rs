//! Rows as the databases return them, decoded into the record types.
//!
//! Rows decode by column name, so `SELECT *` and `RETURNING *` read a record whatever the
//! column order in the migrations. Lists, maps and JSON values are stored as JSON text (see
//! [`to_json`]); a value that does not decode is a `ColumnDecode` error naming the column.
//!
//! This is where stored strings become types, once per row read: key ids, environments,
//! scopes, CIDRs, origins, thumbprints, statuses and trust levels. Everything above the store
//! (the exchange on every request) compares them without parsing anything.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A list, string map or JSON value as stored JSON text.
pub(super) fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("lists, string maps and JSON values always serialize")
}

/// Stored JSON text back to its type; a decoding error names the column.
pub(super) fn from_json<T: DeserializeOwned>(column: &str, text: &str) -> sqlx::Result<T> {
    serde_json::from_str(text).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: e.into(),
    })
}

/// A stored name or id back to its type (`parse` is the type's parser); a decoding error
/// names the column.
pub(super) fn from_name<T>(
    column: &str,
    name: &str,
    parse: fn(&str) -> Option<T>,
) -> sqlx::Result<T> {
    parse(name).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: column.into(),
        source: format!("unknown value {name:?}").into(),
    })
}

/// Implements `sqlx::FromRow` for every record type, for one backend's row type. Expanded once
/// per backend with its concrete row type (`SqliteRow`, `PgRow`): written as
/// `<Db as Database>::Row`, the two expansions would look like overlapping impls to coherence.
macro_rules! decode_rows {
    ($Row:ty) => {
        const _: () = {
            use sqlx::Row as _;

            use $crate::devices::TrustLevel;
            use $crate::ids::{KeyEnv, KeyId, Origin, Scope, Thumbprint};
            use $crate::store::rows::{from_json, from_name};
            use $crate::store::{
                AlertRecord, AttestationPolicy, AuditEntry, AuditRow, DeviceAttestation,
                DeviceLifecycle, DeviceRecord, DeviceStatus, FamilyRecord, KeyRecord, KeyStatus,
                RevocationRecord, SigningKeyRecord,
            };

            type DbRow = $Row;

            fn json<T: serde::de::DeserializeOwned>(r: &DbRow, column: &str) -> sqlx::Result<T> {
                from_json(column, &r.try_get::<String, _>(column)?)
            }

            fn json_opt<T: serde::de::DeserializeOwned>(
                r: &DbRow,
                column: &str,
            ) -> sqlx::Result<Option<T>> {
                r.try_get::<Option<String>, _>(column)?
                    .map(|t| from_json(column, &t))
                    .transpose()
            }

            /// A column holding a name or id, parsed into its type.
            fn parsed<T>(r: &DbRow, column: &str, parse: fn(&str) -> Option<T>) -> sqlx::Result<T> {
                from_name(column, r.try_get(column)?, parse)
            }

            /// A nullable column holding a name or id, parsed into its type.
            fn parsed_opt<T>(
                r: &DbRow,
                column: &str,
                parse: fn(&str) -> Option<T>,
            ) -> sqlx::Result<Option<T>> {
                r.try_get::<Option<&str>, _>(column)?
                    .map(|v| from_name(column, v, parse))
                    .transpose()
            }

            /// A list of values checked when they were stored, under the rules of their day:
            /// each kept (see `Scope::from_stored`), none refused.
            fn stored<T>(values: Vec<String>, decode: fn(String) -> T) -> Vec<T> {
                values.into_iter().map(decode).collect()
            }

            // ---- rows ----

            impl sqlx::FromRow<'_, DbRow> for KeyRecord {
                fn from_row(r: &DbRow) -> sqlx::Result<Self> {
                    Ok(KeyRecord {
                        key_id: parsed(r, "key_id", KeyId::parse)?,
                        env: parsed(r, "env", KeyEnv::parse)?,
                        name: r.try_get("name")?,
                        description: r.try_get("description")?,
                        secret_hash: r.try_get("secret_hash")?,
                        scopes: stored(json(r, "scopes")?, Scope::from_stored),
                        limited_scopes: json_opt(r, "limited_scopes")?
                            .map(|l| stored(l, Scope::from_stored)),
                        rate_limit_per_minute: r.try_get("rate_limit_per_minute")?,
                        allowed_ips: json(r, "allowed_ips")?,
                        allowed_origins: stored(json(r, "allowed_origins")?, Origin::from_stored),
                        max_devices: r.try_get("max_devices")?,
                        trust_on_enroll: r.try_get("trust_on_enroll")?,
                        attestation: from_name(
                            "attestation",
                            r.try_get("attestation")?,
                            AttestationPolicy::parse,
                        )?,
                        status: from_name("status", r.try_get("status")?, KeyStatus::parse)?,
                        status_reason: r.try_get("status_reason")?,
                        status_changed_at: r.try_get("status_changed_at")?,
                        created_at: r.try_get("created_at")?,
                        expires_at: r.try_get("expires_at")?,
                        last_used_at: r.try_get("last_used_at")?,
                        rotated_from: parsed_opt(r, "rotated_from", KeyId::parse)?,
                        rotated_to: parsed_opt(r, "rotated_to", KeyId::parse)?,
                    })
                }
            }

            impl sqlx::FromRow<'_, DbRow> for DeviceRecord {
                fn from_row(r: &DbRow) -> sqlx::Result<Self> {
                    Ok(DeviceRecord {
                        device_id: r.try_get("device_id")?,
                        key_id: parsed(r, "key_id", KeyId::parse)?,
                        jkt: parsed(r, "jkt", Thumbprint::parse)?,
                        name: r.try_get("name")?,
                        attributes: json(r, "attributes")?,
                        status: from_name("status", r.try_get("status")?, DeviceStatus::parse)?,
                        approved: r.try_get("approved")?,
                        baseline: r.try_get("baseline")?,
                        created_at: r.try_get("created_at")?,
                        last_seen_at: r.try_get("last_seen_at")?,
                        exchange_count: r.try_get("exchange_count")?,
                        mismatch_count: r.try_get("mismatch_count")?,
                        mismatch_fingerprint: r.try_get("mismatch_fingerprint")?,
                        networks: json(r, "networks")?,
                        trust_score: r.try_get("trust_score")?,
                        trust_level: from_name(
                            "trust_level",
                            r.try_get("trust_level")?,
                            TrustLevel::parse,
                        )?,
                        trust_factors: json(r, "trust_factors")?,
                        revoked_at: r.try_get("revoked_at")?,
                        status_idx: r.try_get("status_idx")?,
                        attestation: match r.try_get::<Option<String>, _>("attestation_format")? {
                            None => None,
                            Some(format) => Some(DeviceAttestation {
                                format,
                                attested_at: r.try_get("attested_at")?,
                                security_level: r.try_get("attestation_security_level")?,
                                public_key: r.try_get("attestation_public_key")?,
                                key_id: r.try_get("attestation_key_id")?,
                            }),
                        },
                    })
                }
            }

            impl sqlx::FromRow<'_, DbRow> for DeviceLifecycle {
                fn from_row(r: &DbRow) -> sqlx::Result<Self> {
                    Ok(DeviceLifecycle {
                        device_id: r.try_get("device_id")?,
                        status: from_name("status", r.try_get("status")?, DeviceStatus::parse)?,
                        approved: r.try_get("approved")?,
                        revoked_at: r.try_get("revoked_at")?,
                        name: r.try_get("name")?,
                        baseline: r.try_get("baseline")?,
                    })
                }
            }

            impl sqlx::FromRow<'_, DbRow> for FamilyRecord {
                fn from_row(r: &DbRow) -> sqlx::Result<Self> {
                    Ok(FamilyRecord {
                        family_id: r.try_get("family_id")?,
                        key_id: parsed(r, "key_id", KeyId::parse)?,
                        device_id: r.try_get("device_id")?,
                        jkt: parsed(r, "jkt", Thumbprint::parse)?,
                        generation: r.try_get("generation")?,
                        created_at: r.try_get("created_at")?,
                        rotated_at: r.try_get("rotated_at")?,
                        expires_at: r.try_get("expires_at")?,
                        revoked_at: r.try_get("revoked_at")?,
                        grace_token: r.try_get("grace_token")?,
                        grace_until: r.try_get("grace_until")?,
                    })
                }
            }

            impl sqlx::FromRow<'_, DbRow> for SigningKeyRecord {
                fn from_row(r: &DbRow) -> sqlx::Result<Self> {
                    Ok(SigningKeyRecord {
                        kid: r.try_get("kid")?,
                        public_key: r.try_get("public_key")?,
                        sealed_private: r.try_get("sealed_private")?,
                        created_at: r.try_get("created_at")?,
                        retired_at: r.try_get("retired_at")?,
                    })
                }
            }

            impl sqlx::FromRow<'_, DbRow> for AuditRow {
                fn from_row(r: &DbRow) -> sqlx::Result<Self> {
                    Ok(AuditRow {
                        seq: r.try_get("seq")?,
                        entry: AuditEntry {
                            at: r.try_get("at")?,
                            actor: r.try_get("actor")?,
                            action: r.try_get("action")?,
                            target: r.try_get("target")?,
                            ip: r.try_get("ip")?,
                            details: json(r, "details")?,
                        },
                        prev_hash: r.try_get("prev_hash")?,
                        hash: r.try_get("hash")?,
                    })
                }
            }

            impl sqlx::FromRow<'_, DbRow> for AlertRecord {
                fn from_row(r: &DbRow) -> sqlx::Result<Self> {
                    Ok(AlertRecord {
                        id: r.try_get("id")?,
                        at: r.try_get("at")?,
                        kind: r.try_get("kind")?,
                        severity: r.try_get("severity")?,
                        key_id: r.try_get("key_id")?,
                        device_id: r.try_get("device_id")?,
                        ip: r.try_get("ip")?,
                        details: json(r, "details")?,
                    })
                }
            }

            impl sqlx::FromRow<'_, DbRow> for RevocationRecord {
                fn from_row(r: &DbRow) -> sqlx::Result<Self> {
                    Ok(RevocationRecord {
                        seq: r.try_get("seq")?,
                        kind: r.try_get("kind")?,
                        id: r.try_get("subject")?,
                        at: r.try_get("at")?,
                    })
                }
            }
        };
    };
}

pub(super) use decode_rows;
