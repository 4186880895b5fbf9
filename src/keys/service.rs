//! Key lifecycle operations shared by the CLI and the admin API: create, update, status
//! changes and rotation. Each writes its audit row in the same transaction as the change
//! (see [`Store`]), and returns records that never contain a secret or a hash.

use ipnet::IpNet;
use serde::Deserialize;

use super::format::{ApiKey, KeyEnv};
use crate::error::{Error, Result};
use crate::store::{AuditEntry, DeviceChange, DeviceRecord, KeyRecord, KeyStatus, Store};

/// Default lifetime of a new key.
pub const DEFAULT_EXPIRES_IN_DAYS: i64 = 90;
/// Default `rate_limit_per_minute` (contract 3.1).
pub const DEFAULT_RATE_LIMIT_PER_MINUTE: i64 = 600;
/// Default `max_devices` (contract 3.4).
pub const DEFAULT_MAX_DEVICES: i64 = 5;
/// Default rotation grace period (contract 3.4).
pub const DEFAULT_GRACE_SECONDS: i64 = 86_400;

/// Longest name, description, scope or origin we accept, so one key cannot bloat every row.
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

/// Settings of a new key (admin API body, CLI flags). Unknown fields are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Human name.
    pub name: String,
    /// Scopes the key may be granted.
    pub scopes: Vec<String>,
    /// `prod` (default), `test` or `dev`.
    #[serde(default)]
    pub env: Option<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Days until expiry (default 90; 0 never expires).
    #[serde(default)]
    pub expires_in_days: Option<i64>,
    /// Token requests per minute (default 600).
    #[serde(default)]
    pub rate_limit_per_minute: Option<i64>,
    /// CIDR allow list.
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    /// Origin allow list.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Most devices (default 5).
    #[serde(default)]
    pub max_devices: Option<i64>,
    /// Scopes for limited devices (default: the `read:` scopes).
    #[serde(default)]
    pub limited_scopes: Option<Vec<String>>,
    /// New devices start trusted.
    #[serde(default)]
    pub trust_on_enroll: bool,
}

/// A metadata update (admin `PATCH`): every field optional; `null` clears optional ones.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    #[serde(default, deserialize_with = "present")]
    pub description: Option<Option<String>>,
    /// New scopes.
    pub scopes: Option<Vec<String>>,
    /// New limited scopes (`null`: back to the default).
    #[serde(default, deserialize_with = "present")]
    pub limited_scopes: Option<Option<Vec<String>>>,
    /// New rate limit.
    pub rate_limit_per_minute: Option<i64>,
    /// New CIDR allow list.
    pub allowed_ips: Option<Vec<String>>,
    /// New origin allow list.
    pub allowed_origins: Option<Vec<String>>,
    /// New device limit.
    pub max_devices: Option<i64>,
    /// New trust-on-enroll flag.
    pub trust_on_enroll: Option<bool>,
    /// New expiry (unix seconds; `null`: never).
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<i64>>,
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

fn text(field: &str, s: &str) -> Result<()> {
    if s.is_empty() || s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(bad(format!(
            "{field} must be 1 to {MAX_TEXT} printable characters"
        )));
    }
    Ok(())
}

/// Checks scope syntax (RFC 6749 section 3.3: printable ASCII without space, `"` or `\`).
pub fn validate_scopes(field: &str, scopes: &[String]) -> Result<()> {
    if scopes.len() > MAX_LIST {
        return Err(bad(format!("{field}: at most {MAX_LIST} scopes")));
    }
    for (i, s) in scopes.iter().enumerate() {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
        if !ok {
            // Name the position, not the value: a misplaced secret must not come back in
            // an error message (or land in a log that records them).
            return Err(bad(format!(
                "{field}[{i}] is not a scope (1 to 128 printable ASCII characters, no space, quote or backslash)"
            )));
        }
    }
    Ok(())
}

/// Parses and normalises CIDRs (a bare address becomes a /32 or /128).
pub fn parse_cidrs(list: &[String]) -> Result<Vec<String>> {
    if list.len() > MAX_LIST {
        return Err(bad(format!("allowed_ips: at most {MAX_LIST} entries")));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc().to_string())
                .map_err(|_| bad(format!("allowed_ips[{i}] is not a CIDR or an IP address")))
        })
        .collect()
}

/// Normalises origins to `scheme://host[:port]`, lowercase, no path.
pub fn parse_origins(list: &[String]) -> Result<Vec<String>> {
    if list.len() > MAX_LIST {
        return Err(bad(format!("allowed_origins: at most {MAX_LIST} entries")));
    }
    list.iter()
        .enumerate()
        .map(|(i, o)| {
            let lower = o.trim_end_matches('/').to_ascii_lowercase();
            let valid = (lower.starts_with("https://") || lower.starts_with("http://"))
                && !lower
                    .split_once("://")
                    .is_some_and(|(_, h)| h.is_empty() || h.contains('/'))
                && lower.len() <= MAX_TEXT;
            if valid {
                Ok(lower)
            } else {
                Err(bad(format!(
                    "allowed_origins[{i}] is not an origin (http(s)://host[:port], no path)"
                )))
            }
        })
        .collect()
}

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
    validate_scopes("scopes", &new.scopes)?;
    if let Some(ls) = &new.limited_scopes {
        validate_scopes("limited_scopes", ls)?;
    }
    let env: KeyEnv = new
        .env
        .as_deref()
        .unwrap_or("prod")
        .parse()
        .map_err(|_| bad("env must be prod, test or dev"))?;
    let days = new.expires_in_days.unwrap_or(DEFAULT_EXPIRES_IN_DAYS);
    if !(0..=36_500).contains(&days) {
        return Err(bad("expires_in_days must be 0 (never) to 36500"));
    }
    let key = ApiKey::generate(env);
    let record = KeyRecord {
        key_id: key.id().to_string(),
        env: env.as_str().into(),
        name: new.name,
        description: new.description,
        secret_hash: key.secret_hash().to_vec(),
        scopes: new.scopes,
        limited_scopes: new.limited_scopes,
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
        validate_scopes("scopes", &s)?;
        r.scopes = s;
    }
    if let Some(ls) = patch.limited_scopes {
        if let Some(ls) = &ls {
            validate_scopes("limited_scopes", ls)?;
        }
        r.limited_scopes = ls;
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
/// for `grace_seconds` (never longer than it would have anyway).
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
    if !old.usable_at(now) {
        return Err(bad("only an active, unexpired key can be rotated"));
    }
    if old.rotated_to.is_some() {
        return Err(bad("this key was already rotated"));
    }
    let env: KeyEnv = old.env.parse().map_err(bad)?;
    let key = ApiKey::generate(env);
    // The new key gets the old key's full lifetime again, counted from now.
    let lifetime = old.expires_at.map(|e| e - old.created_at);
    let new = KeyRecord {
        key_id: key.id().to_string(),
        secret_hash: key.secret_hash().to_vec(),
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
            validate_scopes("scopes", std::slice::from_ref(&format!("{planted} x"))),
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
