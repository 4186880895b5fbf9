//! Key lifecycle operations shared by the CLI and the admin API: create, update, status
//! changes and rotation. Each writes its audit row in the same transaction as the change
//! (see [`Store`]), and returns records that never contain a secret or a hash.

use ipnet::IpNet;
use serde::Deserialize;

use super::format::{ApiKey, KeyEnv};
use crate::error::{Error, Result};
use crate::ids::{Origin, Scope};
use crate::store::{
    AttestationPolicy, AuditEntry, DeviceChange, DeviceRecord, KeyRecord, KeyStatus, Store,
};

/// Default lifetime of a new key.
pub const DEFAULT_EXPIRES_IN_DAYS: i64 = 90;
/// Default `rate_limit_per_minute` (contract 3.1).
pub const DEFAULT_RATE_LIMIT_PER_MINUTE: i64 = 600;
/// Default `max_devices` (contract 3.4).
pub const DEFAULT_MAX_DEVICES: i64 = 5;
/// Default rotation grace period (contract 3.4).
pub const DEFAULT_GRACE_SECONDS: i64 = 86_400;

/// Expired keys are kept this long (for the audit trail and support questions), then purged
/// by the hourly job ([`crate::state::jobs`]).
pub const PURGE_AFTER_EXPIRY: i64 = 30 * 86_400;

/// Longest name, description or reason we accept, so one key cannot bloat every row.
const MAX_TEXT: usize = 256;
const MAX_LIST: usize = 64;

/// Who is acting and from where, for the audit row.
#[derive(Debug, Clone)]
pub struct Actor {
    /// `cli`, `admin-api`, `system`.
    pub name: String,
    /// Client IP for HTTP callers.
    pub ip: Option<String>,
}

impl Actor {
    /// The command line.
    pub fn cli() -> Actor {
        Actor {
            name: "cli".into(),
            ip: None,
        }
    }

    /// keybound itself (periodic tasks, containment).
    pub fn system() -> Actor {
        Actor {
            name: "system".into(),
            ip: None,
        }
    }

    /// The admin API, from `ip`.
    pub fn admin(ip: Option<String>) -> Actor {
        Actor {
            name: "admin-api".into(),
            ip,
        }
    }

    fn entry(&self, at: i64, action: &str, target: &str, details: serde_json::Value) -> AuditEntry {
        AuditEntry {
            at,
            actor: self.name.clone(),
            action: action.into(),
            target: Some(target.into()),
            ip: self.ip.clone(),
            details,
        }
    }
}

// The fields are what the client sent: `create` parses them into the record's types (a
// `Scope`, an `Origin`, a `KeyEnv`, CIDRs), so that a bad value is refused with the contract's
// message naming the field and position rather than serde's. Each field's schema is the type
// it becomes, or states the check it gets (`text`, `cidr_list`). (Plain comments: doc comments
// here are the document's descriptions.)
/// Settings of a new key (admin API body, CLI flags). Unknown fields are refused.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Human name.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: String,
    /// Scopes the key may be granted.
    #[schema(value_type = Vec<Scope>, min_items = 1, max_items = 64)]
    pub scopes: Vec<String>,
    /// `prod` (default), `test` or `dev`.
    #[serde(default)]
    #[schema(value_type = Option<KeyEnv>)]
    pub env: Option<String>,
    /// Description.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub description: Option<String>,
    /// Days until expiry (default 90; 0 never expires).
    #[serde(default, deserialize_with = "integer::opt")]
    #[schema(minimum = 0, maximum = 36500)]
    pub expires_in_days: Option<i64>,
    /// Token requests per minute (default 600).
    #[serde(default, deserialize_with = "integer::opt")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_limit_per_minute: Option<i64>,
    /// CIDR allow list.
    #[serde(default)]
    #[schema(schema_with = cidr_list)]
    pub allowed_ips: Vec<String>,
    /// Origin allow list.
    #[serde(default)]
    #[schema(value_type = Vec<Origin>, max_items = 64)]
    pub allowed_origins: Vec<String>,
    /// Most devices (default 5).
    #[serde(default, deserialize_with = "integer::opt")]
    #[schema(minimum = 1, maximum = 100000)]
    pub max_devices: Option<i64>,
    /// Scopes for limited devices (default: the `read:` scopes).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Scope>>, max_items = 64)]
    pub limited_scopes: Option<Vec<String>>,
    /// New devices start trusted.
    #[serde(default)]
    pub trust_on_enroll: bool,
    /// Platform attestation policy: `off`, `preferred` (default) or `required` (contract
    /// section 8).
    #[serde(default)]
    pub attestation: Option<AttestationPolicy>,
}

// As in `NewKey`, the fields are what the client sent, parsed by `update`.
/// A metadata update (admin `PATCH`): every field optional; `null` clears optional ones.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    /// New name.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub name: Option<String>,
    /// New description.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$"
    )]
    pub description: Option<Option<String>>,
    /// New scopes.
    #[schema(value_type = Option<Vec<Scope>>, min_items = 1, max_items = 64)]
    pub scopes: Option<Vec<String>>,
    /// New limited scopes (`null`: back to the default).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<Scope>>, max_items = 64)]
    pub limited_scopes: Option<Option<Vec<String>>>,
    /// New rate limit.
    #[serde(default, deserialize_with = "integer::opt")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub rate_limit_per_minute: Option<i64>,
    /// New CIDR allow list.
    #[schema(schema_with = cidr_list_or_null)]
    pub allowed_ips: Option<Vec<String>>,
    /// New origin allow list.
    #[schema(value_type = Option<Vec<Origin>>, max_items = 64)]
    pub allowed_origins: Option<Vec<String>>,
    /// New device limit.
    #[serde(default, deserialize_with = "integer::opt")]
    #[schema(minimum = 1, maximum = 100000)]
    pub max_devices: Option<i64>,
    /// New trust-on-enroll flag.
    pub trust_on_enroll: Option<bool>,
    /// New attestation policy (`off`, `preferred` or `required`).
    pub attestation: Option<AttestationPolicy>,
    /// New expiry (unix seconds; `null`: never).
    #[serde(default, deserialize_with = "integer::present")]
    pub expires_at: Option<Option<i64>>,
}

/// JSON integers as JSON Schema counts them: `5.0` is the integer 5 (JSON Schema validation,
/// section 6.1.1), so a client that writes every number with a fraction (as JavaScript's
/// `JSON.stringify` never does, but other serializers may) is not refused. `5.5` still is.
pub mod integer {
    use serde::{Deserialize, Deserializer};

    fn whole<E: serde::de::Error>(n: serde_json::Number) -> Result<i64, E> {
        if let Some(i) = n.as_i64() {
            return Ok(i);
        }
        match n.as_f64() {
            // Strictly inside ±2^63: a number just outside the range rounds to ±2^63 as a
            // float, and must not become i64::MIN. (i64::MIN itself parses as an integer above.)
            Some(f) if f.fract() == 0.0 && f > i64::MIN as f64 && f < i64::MAX as f64 => {
                Ok(f as i64)
            }
            _ => Err(E::custom("expected an integer")),
        }
    }

    /// An optional integer (absent or `null`: `None`).
    pub fn opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?
            .map(whole)
            .transpose()
    }

    /// A patch field: present (`Some`), even when `null` (`Some(None)`).
    pub fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
        opt(d).map(Some)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn whole_floats_are_integers_and_fractions_are_not() {
            #[derive(serde::Deserialize)]
            struct T {
                #[serde(default, deserialize_with = "super::opt")]
                n: Option<i64>,
            }
            let n = |json: &str| serde_json::from_str::<T>(json).map(|t| t.n);
            assert_eq!(n(r#"{"n": 5}"#).unwrap(), Some(5));
            assert_eq!(n(r#"{"n": -288.0}"#).unwrap(), Some(-288));
            assert_eq!(n(r#"{"n": null}"#).unwrap(), None);
            assert_eq!(n("{}").unwrap(), None);
            assert!(n(r#"{"n": 5.5}"#).is_err());
            assert!(n(r#"{"n": "5"}"#).is_err());
            assert!(n(r#"{"n": 1e300}"#).is_err());
            assert!(n(r#"{"n": -9223372036854775809}"#).is_err());
            assert_eq!(n(r#"{"n": -9223372036854775808}"#).unwrap(), Some(i64::MIN));
        }
    }
}

/// For `Option<Option<T>>` patch fields: a present field is `Some`, even when it is `null`.
/// (serde alone reads `null` as an absent field, so `null` could never clear anything.)
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A key just created or rotated: the plaintext (to show once) and the record.
pub struct Created {
    /// The plaintext key. Show it once, never store or log it.
    pub key: ApiKey,
    /// The stored record.
    pub record: KeyRecord,
}

impl Created {
    /// The record's fields plus `key`, the plaintext: the answer to a create or a rotate, and
    /// the only serialization anywhere that carries a secret. Callers print or send it once.
    pub fn reveal(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.record).expect("a KeyRecord always serializes");
        if let Some(map) = v.as_object_mut() {
            map.insert("key".into(), self.key.expose().into());
        }
        v
    }
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidRequest(msg.into())
}

/// Checks a name, description or reason: 1 to 256 characters, none of them a control
/// character. The fields it checks state the same rule in their schema (`min_length`,
/// `max_length` and a `pattern` excluding the C0 and C1 controls and DEL).
fn text(field: &str, s: &str) -> Result<()> {
    // Characters, not bytes: the limit is the one the OpenAPI document states (JSON Schema
    // `maxLength` counts characters).
    if s.is_empty() || s.chars().count() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(bad(format!(
            "{field} must be 1 to {MAX_TEXT} printable characters"
        )));
    }
    Ok(())
}

/// Parses scopes ([`Scope`]: RFC 6749 section 3.3, printable ASCII without space, `"` or
/// `\`), at most 64; a refusal names `field` and the position.
pub fn parse_scopes(field: &str, scopes: &[String]) -> Result<Vec<Scope>> {
    if scopes.len() > MAX_LIST {
        return Err(bad(format!("{field}: at most {MAX_LIST} scopes")));
    }
    scopes
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // Name the position, not the value: a misplaced secret must not come back in
            // an error message (or land in a log that records them).
            Scope::parse(s).ok_or_else(|| {
                bad(format!(
                    "{field}[{i}] is not a scope (1 to 128 printable ASCII characters, no space, quote or backslash)"
                ))
            })
        })
        .collect()
}

/// Parses and normalises CIDRs (a bare address becomes a /32 or /128).
pub fn parse_cidrs(list: &[String]) -> Result<Vec<IpNet>> {
    if list.len() > MAX_LIST {
        return Err(bad(format!("allowed_ips: at most {MAX_LIST} entries")));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| bad(format!("allowed_ips[{i}] is not a CIDR or an IP address")))
        })
        .collect()
}

/// Parses origins ([`Origin`]: normalised to `scheme://host[:port]`, lowercase, no path).
pub fn parse_origins(list: &[String]) -> Result<Vec<Origin>> {
    if list.len() > MAX_LIST {
        return Err(bad(format!("allowed_origins: at most {MAX_LIST} entries")));
    }
    list.iter()
        .enumerate()
        .map(|(i, o)| {
            Origin::parse(o).ok_or_else(|| {
                bad(format!(
                    "allowed_origins[{i}] is not an origin (http(s)://host[:port], no path)"
                ))
            })
        })
        .collect()
}

/// The schema of a CIDR allow list as [`parse_cidrs`] reads it: at most 64 IPv4 or IPv6
/// addresses or networks in CIDR notation. (The record keeps `ipnet::IpNet`s, a type of
/// another crate, so the rule is stated here, next to its parser.)
fn cidr_list() -> utoipa::openapi::Array {
    cidrs("CIDR allow list.")
}

/// [`cidr_list`] for a patch field, which may also be `null`.
fn cidr_list_or_null() -> utoipa::openapi::Array {
    let mut list = cidrs("New CIDR allow list.");
    list.schema_type = utoipa::openapi::schema::SchemaType::from_iter([
        utoipa::openapi::Type::Array,
        utoipa::openapi::Type::Null,
    ]);
    list
}

fn cidrs(description: &str) -> utoipa::openapi::Array {
    use utoipa::openapi::{ArrayBuilder, ObjectBuilder, Type};
    let cidr = ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(
            "An IPv4 or IPv6 address, or a network in CIDR notation (`parse_cidrs`).",
        ))
        .pattern(Some(CIDR_PATTERN));
    ArrayBuilder::new()
        .description(Some(description))
        .items(cidr)
        .max_items(Some(MAX_LIST))
        .build()
}

/// An IPv4 address or an IPv6 address in any RFC 4291 form, each with an optional prefix length.
const CIDR_PATTERN: &str = "^((25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}(/(3[0-2]|[12]?[0-9]))?|(([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,7}:|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}|:((:[0-9a-fA-F]{1,4}){1,7}|:))(/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)$";

fn positive(field: &str, v: i64, max: i64) -> Result<i64> {
    if (1..=max).contains(&v) {
        Ok(v)
    } else {
        Err(bad(format!("{field} must be 1 to {max}")))
    }
}

/// Creates a key. The returned plaintext is the only copy that will ever exist.
pub async fn create(store: &dyn Store, new: NewKey, actor: &Actor, now: i64) -> Result<Created> {
    text("name", &new.name)?;
    if let Some(d) = &new.description {
        text("description", d)?;
    }
    if new.scopes.is_empty() {
        return Err(bad("scopes must not be empty"));
    }
    let scopes = parse_scopes("scopes", &new.scopes)?;
    let limited_scopes = new
        .limited_scopes
        .as_deref()
        .map(|ls| parse_scopes("limited_scopes", ls))
        .transpose()?;
    let env = KeyEnv::parse(new.env.as_deref().unwrap_or("prod"))
        .ok_or_else(|| bad("env must be prod, test or dev"))?;
    let days = new.expires_in_days.unwrap_or(DEFAULT_EXPIRES_IN_DAYS);
    if !(0..=36_500).contains(&days) {
        return Err(bad("expires_in_days must be 0 (never) to 36500"));
    }
    let key = ApiKey::generate(env);
    let record = KeyRecord {
        key_id: key.id().clone(),
        env,
        name: new.name,
        description: new.description,
        secret_hash: stored_hash(store, &key)?,
        scopes,
        limited_scopes,
        rate_limit_per_minute: positive(
            "rate_limit_per_minute",
            new.rate_limit_per_minute
                .unwrap_or(DEFAULT_RATE_LIMIT_PER_MINUTE),
            1_000_000,
        )?,
        allowed_ips: parse_cidrs(&new.allowed_ips)?,
        allowed_origins: parse_origins(&new.allowed_origins)?,
        max_devices: positive(
            "max_devices",
            new.max_devices.unwrap_or(DEFAULT_MAX_DEVICES),
            100_000,
        )?,
        trust_on_enroll: new.trust_on_enroll,
        attestation: new.attestation.unwrap_or_default(),
        status: KeyStatus::Active,
        status_reason: None,
        status_changed_at: None,
        created_at: now,
        expires_at: (days > 0).then(|| now + days * 86_400),
        last_used_at: None,
        rotated_from: None,
        rotated_to: None,
    };
    let audit = actor.entry(now, "key.create", &record.key_id, settings_json(&record));
    store.create_key(&record, &audit).await?;
    Ok(Created { key, record })
}

/// The hash storage keeps for `key`: wrapped under the database's integrity key
/// ([`crate::integrity`]), so only a holder of the master key can make a row that verifies.
fn stored_hash(store: &dyn Store, key: &ApiKey) -> Result<Vec<u8>> {
    let integrity = store.integrity().ok_or_else(|| {
        Error::InvalidRequest(
            "creating a key needs the master key (--master-key, KEYBOUND_MASTER_KEY or \
             --master-key-file)"
                .into(),
        )
    })?;
    Ok(integrity
        .wrap_key_hash(key.id().as_str(), &key.secret_hash())
        .to_vec())
}

/// The key's settings for audit details: everything but secrets and hashes.
fn settings_json(r: &KeyRecord) -> serde_json::Value {
    serde_json::json!({
        "name": r.name,
        "env": r.env,
        "scopes": r.scopes,
        "limited_scopes": r.limited_scopes,
        "rate_limit_per_minute": r.rate_limit_per_minute,
        "allowed_ips": r.allowed_ips,
        "allowed_origins": r.allowed_origins,
        "max_devices": r.max_devices,
        "trust_on_enroll": r.trust_on_enroll,
        "attestation": r.attestation,
        "expires_at": r.expires_at,
    })
}

/// Loads a key or answers `NOT_FOUND`.
pub async fn get(store: &dyn Store, key_id: &str) -> Result<KeyRecord> {
    store.get_key(key_id).await?.ok_or(Error::NotFound)
}

/// Applies a metadata patch.
pub async fn update(
    store: &dyn Store,
    key_id: &str,
    patch: KeyPatch,
    actor: &Actor,
    now: i64,
) -> Result<KeyRecord> {
    let mut r = get(store, key_id).await?;
    if let Some(n) = patch.name {
        text("name", &n)?;
        r.name = n;
    }
    if let Some(d) = patch.description {
        if let Some(d) = &d {
            text("description", d)?;
        }
        r.description = d;
    }
    if let Some(s) = patch.scopes {
        if s.is_empty() {
            return Err(bad("scopes must not be empty"));
        }
        r.scopes = parse_scopes("scopes", &s)?;
    }
    if let Some(ls) = patch.limited_scopes {
        r.limited_scopes = ls
            .as_deref()
            .map(|ls| parse_scopes("limited_scopes", ls))
            .transpose()?;
    }
    if let Some(v) = patch.rate_limit_per_minute {
        r.rate_limit_per_minute = positive("rate_limit_per_minute", v, 1_000_000)?;
    }
    if let Some(v) = patch.allowed_ips {
        r.allowed_ips = parse_cidrs(&v)?;
    }
    if let Some(v) = patch.allowed_origins {
        r.allowed_origins = parse_origins(&v)?;
    }
    if let Some(v) = patch.max_devices {
        r.max_devices = positive("max_devices", v, 100_000)?;
    }
    if let Some(v) = patch.trust_on_enroll {
        r.trust_on_enroll = v;
    }
    if let Some(v) = patch.attestation {
        r.attestation = v;
    }
    if let Some(v) = patch.expires_at {
        r.expires_at = v;
    }
    let audit = actor.entry(now, "key.update", key_id, settings_json(&r));
    store.update_key(&r, &audit).await?;
    Ok(r)
}

/// Moves a key to `status`. Resuming a revoked key is refused: revocation is final.
pub async fn set_status(
    store: &dyn Store,
    key_id: &str,
    status: KeyStatus,
    reason: Option<&str>,
    actor: &Actor,
    now: i64,
) -> Result<KeyRecord> {
    if let Some(r) = reason {
        text("reason", r)?;
    }
    let current = get(store, key_id).await?;
    if current.status == KeyStatus::Revoked && status != KeyStatus::Revoked {
        return Err(bad("a revoked key cannot be suspended or resumed"));
    }
    let action = match status {
        KeyStatus::Active => "key.resume",
        KeyStatus::Suspended => "key.suspend",
        KeyStatus::Revoked => "key.revoke",
    };
    let audit = actor.entry(now, action, key_id, serde_json::json!({ "reason": reason }));
    store
        .set_key_status(key_id, status, reason, now, &audit)
        .await?
        .ok_or(Error::NotFound)
}

/// Rotates a key: a new key with a new id and the same settings; the old one keeps working
/// for `grace_seconds` (never longer than it would have anyway). A suspended key can be
/// rotated too; it stays suspended.
pub async fn rotate(
    store: &dyn Store,
    key_id: &str,
    grace_seconds: i64,
    actor: &Actor,
    now: i64,
) -> Result<Created> {
    if !(0..=365 * 86_400).contains(&grace_seconds) {
        return Err(bad("grace_seconds must be 0 to 31536000"));
    }
    let old = get(store, key_id).await?;
    // A suspended key can be rotated: that is how its owner recovers from a leak (a report or
    // containment suspends it). The new key is active; the old one stays suspended, so the
    // grace period gives it nothing back.
    let rotatable = matches!(old.status, KeyStatus::Active | KeyStatus::Suspended)
        && old.expires_at.is_none_or(|e| now < e);
    if !rotatable {
        return Err(bad(
            "only an active or suspended, unexpired key can be rotated",
        ));
    }
    if old.rotated_to.is_some() {
        return Err(bad("this key was already rotated"));
    }
    let key = ApiKey::generate(old.env);
    // The new key gets the old key's full lifetime again, counted from now.
    let lifetime = old.expires_at.map(|e| e - old.created_at);
    let new = KeyRecord {
        key_id: key.id().clone(),
        secret_hash: stored_hash(store, &key)?,
        created_at: now,
        expires_at: lifetime.map(|l| now + l),
        last_used_at: None,
        status: KeyStatus::Active,
        status_reason: None,
        status_changed_at: None,
        rotated_from: Some(old.key_id.clone()),
        rotated_to: None,
        ..old.clone()
    };
    let old_expires = old
        .expires_at
        .map_or(now + grace_seconds, |e| e.min(now + grace_seconds));
    let audit = actor.entry(
        now,
        "key.rotate",
        key_id,
        serde_json::json!({ "new_key_id": new.key_id, "old_expires_at": old_expires }),
    );
    store.rotate_key(key_id, old_expires, &new, &audit).await?;
    Ok(Created { key, record: new })
}

/// A key's devices, oldest first; `NOT_FOUND` when the key does not exist (rather than an
/// empty list that would hide a typo in the id).
pub async fn list_devices(store: &dyn Store, key_id: &str) -> Result<Vec<DeviceRecord>> {
    get(store, key_id).await?;
    store.list_devices(key_id).await
}

/// Revokes a device (final) or approves it (it becomes `trusted`). Approving a revoked
/// device is refused, like resuming a revoked key.
pub async fn set_device_status(
    store: &dyn Store,
    device_id: &str,
    change: DeviceChange,
    actor: &Actor,
    now: i64,
) -> Result<DeviceRecord> {
    let device = store.get_device(device_id).await?.ok_or(Error::NotFound)?;
    let action = match change {
        DeviceChange::Revoke => "device.revoke",
        DeviceChange::Approve => {
            if device.status == crate::store::DeviceStatus::Revoked {
                return Err(bad("a revoked device cannot be approved"));
            }
            "device.approve"
        }
    };
    let audit = actor.entry(
        now,
        action,
        device_id,
        serde_json::json!({ "key_id": device.key_id, "jkt": device.jkt }),
    );
    store
        .set_device_status(device_id, change, now, &audit)
        .await?
        .ok_or(Error::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_tells_null_from_absent() {
        let p: KeyPatch =
            serde_json::from_str(r#"{"description": null, "expires_at": 5}"#).expect("valid patch");
        assert_eq!(p.description, Some(None), "null clears");
        assert_eq!(p.expires_at, Some(Some(5)));
        assert_eq!(p.limited_scopes, None, "absent leaves alone");
        assert_eq!(p.name, None);
    }

    #[test]
    fn validation_messages_do_not_echo_values() {
        let planted = "sk_prod_planted_secret_value".to_owned();
        let errors = [
            parse_scopes("scopes", std::slice::from_ref(&format!("{planted} x"))).map(|_| ()),
            parse_cidrs(std::slice::from_ref(&planted)).map(|_| ()),
            parse_origins(std::slice::from_ref(&planted)).map(|_| ()),
        ];
        for e in errors {
            let msg = e.expect_err("invalid").to_string();
            assert!(!msg.contains("planted"), "{msg}");
            assert!(msg.contains("[0]"), "names the position: {msg}");
        }
    }
}
