//! Storage: one [`Store`] trait, a SQLite implementation (the embedded default) and a
//! PostgreSQL one (for several instances). Both run the same migrations' shape and must behave
//! the same; `tests/api` runs every storage test against both.
//!
//! Times are unix seconds (`i64`) everywhere, so both databases store plain integers and no
//! timezone handling can differ between them. Lists (scopes, CIDRs, origins, attributes) are
//! stored as JSON text.
//!
//! Records are typed: ids, environments, scopes, CIDRs, origins, thumbprints and trust levels
//! are decoded once, when a row is read (`store/rows.rs`), into the types of [`crate::ids`] and their
//! peers, and written back as the same strings; a stored value that does not decode is a
//! storage error naming its column.

pub mod broadcast;
pub mod cached;
pub mod chain;
pub mod integrity;
mod postgres;
mod rows;
mod sql;
mod sqlite;
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
pub(crate) mod tests;
mod writer;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::error::Result;
use crate::ids::{KeyEnv, KeyId, Origin, Scope, Thumbprint};

/// Opens the database named by `url` (`sqlite://…` or `postgres://…`), creating it when
/// needed, and applies the embedded migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        PostgresStore::connect(url).await
    } else if url.starts_with("sqlite:") {
        SqliteStore::connect(url).await
    } else {
        Err(crate::Error::InvalidRequest(
            "the database URL must start with sqlite:// or postgres://".into(),
        ))
    }
}

/// For a SQLite database: its directory and files that group or others may access, each as
/// `path (mode)` (empty for PostgreSQL).
pub fn loose_permissions(url: &str) -> Vec<String> {
    if url.starts_with("sqlite:") {
        sqlite::loose_permissions(url)
    } else {
        Vec::new()
    }
}

/// Rows per transaction when [`seed`] loads a database in bulk: large enough that commits
/// (each one a disk flush) cost little, small enough that one transaction's undo and WAL stay
/// small.
pub const SEED_ROWS_PER_TX: usize = 5_000;

/// Loads `keys` and then `devices` into the database at `url` in bulk (multi-row INSERTs, a
/// transaction per [`SEED_ROWS_PER_TX`] rows), without audit rows. For `keybound bench`'s
/// growth runs only; an operator creates keys with `keybound keys create`.
pub async fn seed(url: &str, keys: &[KeyRecord], devices: &[DeviceRecord]) -> Result<()> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        PostgresStore::open(url)
            .await?
            .bulk_insert(keys, devices)
            .await
    } else {
        SqliteStore::open(url)
            .await?
            .bulk_insert(keys, devices)
            .await
    }
}

/// Lifecycle status of an API key. Expiry is not a status: it is `expires_at` in the past.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Temporarily refused; `resume` makes it active again.
    Suspended,
    /// Permanently refused.
    Revoked,
}

impl KeyStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Suspended => "suspended",
            KeyStatus::Revoked => "revoked",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(KeyStatus::Active),
            "suspended" => Some(KeyStatus::Suspended),
            "revoked" => Some(KeyStatus::Revoked),
            _ => None,
        }
    }
}

/// A key's platform-attestation policy (contract section 8).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttestationPolicy {
    /// Attestations are ignored: not verified, not recorded.
    Off,
    /// A valid attestation makes the device `trusted` at once; without one, normal trust.
    #[default]
    Preferred,
    /// Nothing is issued to a device without a valid attestation on record.
    Required,
}

impl AttestationPolicy {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttestationPolicy::Off => "off",
            AttestationPolicy::Preferred => "preferred",
            AttestationPolicy::Required => "required",
        }
    }

    /// Parses the stored (and CLI) name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(AttestationPolicy::Off),
            "preferred" => Some(AttestationPolicy::Preferred),
            "required" => Some(AttestationPolicy::Required),
            _ => None,
        }
    }
}

impl std::str::FromStr for AttestationPolicy {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        AttestationPolicy::parse(s).ok_or_else(|| "expected off, preferred or required".into())
    }
}

/// What a device proved with its platform attestation (contract section 8), recorded once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeviceAttestation {
    /// `apple-appattest` or `android-key`.
    pub format: String,
    /// When it verified.
    pub attested_at: i64,
    /// Android: the attestation security level (`TrustedEnvironment` or `StrongBox`).
    pub security_level: Option<String>,
    /// App Attest: the credential's public key (base64url), for assertion-based step-up.
    #[serde(serialize_with = "b64_opt")]
    #[schema(value_type = Option<String>)]
    pub public_key: Option<Vec<u8>>,
    /// App Attest: the key identifier (base64url).
    #[serde(serialize_with = "b64_opt")]
    #[schema(value_type = Option<String>)]
    pub key_id: Option<Vec<u8>>,
}

fn b64_opt<S: serde::Serializer>(
    bytes: &Option<Vec<u8>>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    use base64::Engine as _;
    match bytes {
        Some(b) => s.serialize_some(&base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)),
        None => s.serialize_none(),
    }
}

/// An API key's stored record. Holds the secret's hash, never the secret; the hash is
/// `#[serde(skip)]` so no response or audit row can carry it by accident.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct KeyRecord {
    /// `ak_<env>_<id>`.
    pub key_id: KeyId,
    /// `prod`, `test` or `dev`.
    pub env: KeyEnv,
    /// Human name.
    pub name: String,
    /// Optional description.
    pub description: Option<String>,
    /// The secret's hash as stored: `0x01 || HMAC-SHA256(k, key_id || 0x00 ||
    /// SHA-256(secret))` ([`crate::store::integrity::Integrity::wrap_key_hash`]).
    #[serde(skip)]
    pub secret_hash: Vec<u8>,
    /// Scopes the key may be granted.
    pub scopes: Vec<Scope>,
    /// Scopes for `limited` devices; `None` means the default (the `read:` scopes).
    pub limited_scopes: Option<Vec<Scope>>,
    /// Token requests per minute.
    pub rate_limit_per_minute: i64,
    // Normalised (host bits cleared) and decoded once, when the row is read: the exchange
    // compares addresses without parsing anything.
    /// CIDR allow list; empty allows every address.
    #[schema(value_type = Vec<String>)]
    pub allowed_ips: Vec<ipnet::IpNet>,
    /// Origin allow list (normalised: lowercase, no trailing `/`); empty allows every origin.
    pub allowed_origins: Vec<Origin>,
    /// Most devices the key may enroll.
    pub max_devices: i64,
    /// Newly enrolled devices start `trusted` instead of `limited`.
    pub trust_on_enroll: bool,
    /// Platform-attestation policy (contract section 8).
    pub attestation: AttestationPolicy,
    /// Lifecycle status.
    pub status: KeyStatus,
    /// Why the status last changed (revoke reason, leak report, …).
    pub status_reason: Option<String>,
    /// When the status last changed.
    pub status_changed_at: Option<i64>,
    /// Creation time.
    pub created_at: i64,
    /// Expiry time; `None` never expires.
    pub expires_at: Option<i64>,
    /// Last successful use (batched, approximate).
    pub last_used_at: Option<i64>,
    /// The key this one replaced by rotation.
    pub rotated_from: Option<KeyId>,
    /// The key that replaced this one by rotation.
    pub rotated_to: Option<KeyId>,
}

impl KeyRecord {
    /// Whether the key may be used at `now` (active and not expired).
    pub fn usable_at(&self, now: i64) -> bool {
        self.status == KeyStatus::Active && self.expires_at.is_none_or(|e| now < e)
    }
}

/// Lifecycle status of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Enrolled and usable.
    Active,
    /// Refused for good.
    Revoked,
}

impl DeviceStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceStatus::Active => "active",
            DeviceStatus::Revoked => "revoked",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(DeviceStatus::Active),
            "revoked" => Some(DeviceStatus::Revoked),
            _ => None,
        }
    }
}

/// A device's lifecycle fields as storage held them when its history was written: the answer
/// of [`Store::update_device_usage`]. These are what an operator changes (the admin API or the
/// CLI, which may write behind a running server's back); the history fields are the server's
/// own. The validation cache takes them as a fresh read of the device
/// ([`cached::CachedStore::refreshed`]), so a device in use is never read again for them.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceLifecycle {
    /// The device.
    pub device_id: String,
    /// Its stored status.
    pub status: DeviceStatus,
    /// Whether an operator approved it.
    pub approved: bool,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// Its stored name.
    pub name: Option<String>,
    /// Its stored fingerprint baseline ([`DeviceRecord::baseline`]).
    pub baseline: i64,
}

/// A device: one DPoP public key (by its RFC 7638 thumbprint) enrolled under one API key.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeviceRecord {
    /// Device id (`dev_…`), shown to operators and put in the `did` claim.
    pub device_id: String,
    /// The API key it is enrolled under.
    pub key_id: KeyId,
    /// RFC 7638 thumbprint of the device's public key.
    pub jkt: Thumbprint,
    /// Name the app gave it.
    pub name: Option<String>,
    // Shared, not copied, when the record is cloned: each exchange clones the cached record
    // to update its history, and the attributes rarely change (copied then, `Arc::make_mut`).
    /// Fingerprint attributes as first enrolled (and updated on accepted drift).
    #[schema(value_type = BTreeMap<String, String>)]
    pub attributes: Arc<BTreeMap<String, String>>,
    /// Lifecycle status.
    pub status: DeviceStatus,
    /// An operator approved it: `trusted` unless its stable attributes change.
    pub approved: bool,
    /// How many times an operator re-baselined its fingerprint (approved it, which blanks
    /// `attributes` and forgives mismatches). A history is written with the baseline it was
    /// scored against, and one scored against an earlier baseline leaves the fingerprint
    /// fields (`attributes`, `mismatch_count`, `mismatch_fingerprint`) as stored: a history
    /// queued before an approval cannot undo it. Internal, not shown.
    #[serde(skip)]
    pub baseline: i64,
    /// Enrollment time.
    pub created_at: i64,
    /// Last successful exchange or refresh.
    pub last_seen_at: i64,
    /// Successful exchanges so far.
    pub exchange_count: i64,
    /// Stable-attribute mismatches counted (each new mismatching fingerprint once).
    pub mismatch_count: i64,
    /// The fingerprint of the last mismatch counted (`TrustDecision::mismatch_fingerprint`):
    /// the same one presented again is not counted again. Internal, not shown.
    #[serde(skip)]
    pub mismatch_fingerprint: Option<String>,
    /// Network prefixes seen (most recent last, bounded).
    pub networks: Vec<String>,
    /// Last trust score (0..1).
    pub trust_score: f64,
    /// Last trust level (`trusted`, `limited`, `denied`).
    pub trust_level: crate::devices::TrustLevel,
    /// The factors behind the last score, so an operator can see why.
    #[schema(value_type = Value)]
    pub trust_factors: JsonText,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// Its index in the token status lists (contract section 10), across all lists: list
    /// `status_idx / STATUS_LIST_SIZE`, entry `status_idx % STATUS_LIST_SIZE`. Allocated by
    /// the store at enrollment (whatever the record passed to
    /// [`Store::enroll_device`] holds), never reused.
    pub status_idx: i64,
    /// Its platform attestation, when one verified (contract section 8).
    pub attestation: Option<DeviceAttestation>,
}

impl DeviceRecord {
    /// Takes `other`'s fingerprint (attributes, mismatch count and fingerprint) with its
    /// baseline, when `other` holds a later baseline: what an approval set stays, whatever a
    /// history scored against the earlier baseline says ([`DeviceRecord::baseline`]).
    pub fn keep_baseline_of(&mut self, other: &DeviceRecord) {
        if other.baseline > self.baseline {
            self.baseline = other.baseline;
            self.attributes = other.attributes.clone();
            self.mismatch_count = other.mismatch_count;
            self.mismatch_fingerprint
                .clone_from(&other.mismatch_fingerprint);
        }
    }
}

/// A JSON value kept as its text (a device's trust factors).
///
/// Every exchange replaces a device's factors, the record is cloned into the cache, and the
/// history is written within a second: as a tree of `serde_json::Value`s that was a map per
/// factor to build, copy, encode and free each time; as text it is one string. The factors an
/// exchange scores are kept as the scoring made them ([`JsonText::factors`]) and encoded when
/// first read ([`JsonText::get`]: the history flush, the admin API), so a device in steady use
/// has them encoded about once a second rather than on every exchange. Compared by text.
#[derive(Clone)]
pub struct JsonText {
    text: std::sync::OnceLock<Box<serde_json::value::RawValue>>,
    /// What `text` encodes, when it was made from trust factors and not encoded yet.
    factors: Option<Arc<Vec<crate::devices::TrustFactor>>>,
}

impl JsonText {
    /// Encodes `value`.
    pub fn of<T: Serialize + ?Sized>(value: &T) -> JsonText {
        JsonText {
            text: encode(value).into(),
            factors: None,
        }
    }

    /// `factors`, encoded when first read.
    pub fn factors(factors: Vec<crate::devices::TrustFactor>) -> JsonText {
        JsonText {
            text: std::sync::OnceLock::new(),
            factors: Some(Arc::new(factors)),
        }
    }

    /// `[]`.
    pub fn empty_list() -> JsonText {
        JsonText::of(&[(); 0])
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.raw().get()
    }

    fn raw(&self) -> &serde_json::value::RawValue {
        self.text
            .get_or_init(|| encode(self.factors.as_deref().map_or(&[][..], Vec::as_slice)))
    }
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(value).expect("trust factors and JSON values always serialize")
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        self.raw().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<JsonText, D::Error> {
        Ok(JsonText {
            text: Box::<serde_json::value::RawValue>::deserialize(deserializer)?.into(),
            factors: None,
        })
    }
}

impl std::fmt::Debug for JsonText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("JsonText").field(&self.get()).finish()
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &JsonText) -> bool {
        self.get() == other.get()
    }
}

/// The limits [`Store::enroll_device`] enforces, under the key's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnrollLimits {
    /// The key's `max_devices`: active devices at most.
    pub max_devices: i64,
    /// Devices enrolled in the last hour (whatever happened to them since) at most, so
    /// revoke-and-re-enroll cannot cycle.
    pub per_hour: i64,
    /// At `max_devices`, the oldest active device that is neither approved nor attested, still
    /// `limited`, and last seen before this time is replaced (revoked) instead of refusing.
    pub stale_before: i64,
    /// The enrollment time (for the hourly window and a replacement's revocation).
    pub now: i64,
}

impl EnrollLimits {
    /// Only `max_devices` (no hourly budget, no replacement): tests and seeding.
    pub fn max_devices(max_devices: i64) -> EnrollLimits {
        EnrollLimits {
            max_devices,
            per_hour: i64::MAX,
            stale_before: i64::MIN,
            now: 0,
        }
    }
}

/// Outcome of [`Store::enroll_device`].
#[derive(Debug, Clone, PartialEq)]
pub enum Enrollment {
    /// The device was new and is now enrolled.
    Enrolled {
        /// The stored record, with its status list index.
        device: Box<DeviceRecord>,
        /// The stale device it replaced (now revoked), if the key was at `max_devices`.
        replaced: Option<Box<DeviceRecord>>,
        /// The key already had an active `trusted` device.
        key_had_trusted: bool,
    },
    /// A device with this thumbprint already exists under the key.
    Exists(Box<DeviceRecord>),
    /// The key already has `max_devices` active devices, none of them stale.
    LimitReached,
    /// The key enrolled its hourly budget of devices already.
    BudgetSpent,
}

/// A refresh family's stored row (contract 3.2; `docs/design.md`, "Refresh tokens"). Written at
/// the family's first refresh: until then its one token (generation 0) is self-contained. No
/// token is stored, only which generation is live.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyRecord {
    /// `rf_…`: every token descending from one exchange.
    pub family_id: String,
    /// Key the family was issued under.
    pub key_id: KeyId,
    /// Device it was issued to.
    pub device_id: String,
    /// Thumbprint of the device key it is bound to.
    pub jkt: Thumbprint,
    /// The generation whose token is live; every other generation is spent.
    pub generation: i64,
    /// When the family began (its exchange).
    pub created_at: i64,
    /// When the live generation was issued, i.e. the one before it spent.
    pub rotated_at: i64,
    /// The latest expiry of any token of the family: once past, the row cannot matter.
    pub expires_at: i64,
    /// When the family was revoked (reuse or sign-out).
    pub revoked_at: Option<i64>,
    /// Contract 9.2: the live token, sealed under a master-derived key, kept only for the
    /// grace window so a lost answer can be answered again.
    pub grace_token: Option<Vec<u8>>,
    /// End of the grace window.
    pub grace_until: Option<i64>,
}

/// A JWT signing key: the public half in the clear, the private half sealed by the master key.
#[derive(Debug, Clone, PartialEq)]
pub struct SigningKeyRecord {
    /// Key id (`kid` header), stable across restarts.
    pub kid: String,
    /// Raw 32-byte Ed25519 public key.
    pub public_key: Vec<u8>,
    /// The private key sealed with the master key (AEAD, kid as associated data).
    pub sealed_private: Vec<u8>,
    /// Creation time.
    pub created_at: i64,
    /// When it stopped signing; still published until its last token expires.
    pub retired_at: Option<i64>,
}

/// One audit event, before it is chained.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// When it happened.
    pub at: i64,
    /// Who did it: `admin-api`, `cli`, `system`, `client:<key id>`.
    pub actor: String,
    /// What was done, e.g. `key.create`, `key.revoke`, `device.approve`.
    pub action: String,
    /// The object acted on (key id, device id).
    pub target: Option<String>,
    /// Client IP, when the action came over HTTP.
    pub ip: Option<String>,
    /// Details without secrets.
    pub details: serde_json::Value,
}

/// A stored audit row: the entry, its position and its place in the hash chain.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditRow {
    /// Position in the log, from 1, without gaps.
    pub seq: i64,
    /// The event.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// `hash` of the previous row (32 zero bytes for the first), hex in JSON.
    #[serde(serialize_with = "hex")]
    #[schema(value_type = String)]
    pub prev_hash: Vec<u8>,
    /// HMAC-SHA256 under the database's audit key over `prev_hash` and this row's canonical
    /// content (a plain SHA-256 for rows before the `integrity.enable` row), hex in JSON.
    #[serde(serialize_with = "hex")]
    #[schema(value_type = String)]
    pub hash: Vec<u8>,
}

fn hex<S: serde::Serializer>(bytes: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// An anomaly alert.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AlertRecord {
    /// Alert id.
    pub id: String,
    /// When it was raised.
    pub at: i64,
    /// Kind, e.g. `NEW_DEVICE`, `DPOP_REPLAY`, `REFRESH_TOKEN_REUSED`, `KEY_LEAKED`.
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// Key concerned, if any.
    pub key_id: Option<String>,
    /// Device concerned, if any.
    pub device_id: Option<String>,
    /// Client IP, if any.
    pub ip: Option<String>,
    /// Details without secrets.
    pub details: serde_json::Value,
}

/// Filter for [`Store::list_alerts`].
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this key.
    pub key_id: Option<String>,
    /// Only alerts at or after this time.
    pub since: Option<i64>,
    /// At most this many, newest first.
    pub limit: i64,
    /// Only alerts after (older than) this alert id in the listing order: the page cursor.
    pub after: Option<String>,
}

/// One entry of the revocation feed (contract 3.3).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RevocationRecord {
    /// Position in the feed; the cursor.
    #[serde(skip)]
    pub seq: i64,
    /// `key`, `device` or `refresh_family`.
    pub kind: String,
    /// Key id, device thumbprint or family id.
    pub id: String,
    /// Unix seconds.
    pub at: i64,
}

/// Devices per token status list (contract section 10): 2^20 = 1 048 576, so one list holds
/// at least a million devices. At two bits each a list is 256 KiB before compression; almost
/// all entries are 0, so it compresses to a few KiB plus a few bytes per non-zero entry
/// (docs/benchmarks.md).
pub const STATUS_LIST_SIZE: i64 = 1 << 20;

/// A status list entry's value (contract section 10; the IETF draft's `VALID`, `INVALID` and
/// `SUSPENDED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum StatusValue {
    /// Usable.
    Valid = 0,
    /// For good: the device or its key revoked, or the key expired.
    Invalid = 1,
    /// For now: the key suspended; back to valid when it is resumed.
    Suspended = 2,
}

/// The non-zero entries of one status list as storage has them at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusSnapshot {
    /// Global index → value, for every entry that is not [`StatusValue::Valid`].
    pub entries: BTreeMap<i64, StatusValue>,
    /// The next time a key expires: the list changes then without any write.
    pub next_expiry: Option<i64>,
}

impl StatusSnapshot {
    /// Records `value` for `idx`; when an index is named twice (a revoked device under a
    /// suspended key), invalid wins: it is final, a suspension is not.
    pub fn set(&mut self, idx: i64, value: StatusValue) {
        let v = self.entries.entry(idx).or_insert(value);
        if *v != StatusValue::Invalid {
            *v = value;
        }
    }
}

/// Everything keybound keeps. Every mutation an operator makes takes the [`AuditEntry`] that
/// records it and writes both in one transaction, so no change exists without its audit row.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<()>;
    /// `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    // ---- API keys ----
    /// Inserts a new key and its audit row.
    async fn create_key(&self, key: &KeyRecord, audit: &AuditEntry) -> Result<()>;
    /// One key by id.
    async fn get_key(&self, key_id: &str) -> Result<Option<KeyRecord>>;
    /// Keys ordered by id, after `after` (keyset pagination), at most `limit`.
    async fn list_keys(&self, after: Option<&str>, limit: i64) -> Result<Vec<KeyRecord>>;
    /// Replaces a key's mutable metadata (name, description, scopes, limits, lists, expiry).
    async fn update_key(&self, key: &KeyRecord, audit: &AuditEntry) -> Result<()>;
    /// Sets a key's status; a move to suspended or revoked also appends a `key` entry to the
    /// revocation feed. Returns the updated record, `None` if the key does not exist.
    async fn set_key_status(
        &self,
        key_id: &str,
        status: crate::store::KeyStatus,
        reason: Option<&str>,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<Option<KeyRecord>>;
    /// Inserts `new` and marks `old_id` as rotated to it, expiring at `old_expires_at`.
    async fn rotate_key(
        &self,
        old_id: &str,
        old_expires_at: i64,
        new: &KeyRecord,
        audit: &AuditEntry,
    ) -> Result<()>;
    /// Records last use for many keys at once (batched bookkeeping). Answers the keys as the
    /// same statements found them (a key not stored, or whose row does not decode, is left
    /// out): as fresh as a read made then, at no extra read.
    async fn touch_keys(&self, used: &[(String, i64)]) -> Result<Vec<KeyRecord>>;
    /// Deletes keys expired before `before` together with their devices and refresh tokens;
    /// returns how many keys went.
    async fn purge_expired_keys(&self, before: i64) -> Result<u64>;

    // ---- devices ----
    /// The device with thumbprint `jkt` under `key_id`.
    async fn get_device_by_jkt(&self, key_id: &str, jkt: &str) -> Result<Option<DeviceRecord>>;
    /// One device by id.
    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>>;
    /// Devices of a key, oldest first.
    async fn list_devices(&self, key_id: &str) -> Result<Vec<DeviceRecord>>;
    /// Enrolls `device` unless its thumbprint already exists under the key, the key spent its
    /// hourly enrollment budget, or it has `max_devices` active devices and none is stale
    /// enough to replace (see [`EnrollLimits`]); atomic against concurrent enrollments. The
    /// device's `attestation`, if set, is inserted with it.
    async fn enroll_device(
        &self,
        device: &DeviceRecord,
        limits: EnrollLimits,
    ) -> Result<Enrollment>;
    /// Records a device's verified attestation, unless one is recorded already (a device
    /// attests once, for its life).
    async fn record_attestation(
        &self,
        device: &DeviceRecord,
        attestation: &DeviceAttestation,
    ) -> Result<()>;
    /// Saves the history fields of a device after an exchange (last seen, counts, networks,
    /// trust score/level/factors, attributes). Shared, not borrowed: the write queue and the
    /// validation cache keep the same record instead of a copy each.
    ///
    /// Answers the device's lifecycle fields as the same statement found them (`None` when no
    /// such device is stored any more): as fresh as a read made then, at no extra read.
    async fn update_device_usage(
        &self,
        device: Arc<DeviceRecord>,
    ) -> Result<Option<DeviceLifecycle>>;
    /// Revokes a device (and appends its thumbprint to the revocation feed) or approves it.
    /// Returns the updated record, `None` if unknown.
    async fn set_device_status(
        &self,
        device_id: &str,
        change: DeviceChange,
        at: i64,
        audit: &AuditEntry,
    ) -> Result<Option<DeviceRecord>>;

    // ---- refresh families ----
    /// Makes `next` (generation `from + 1`) the family's live generation, durable before it
    /// returns: from generation 0 by inserting the row if absent, later by one conditional
    /// update that needs generation `from` live and the family not revoked. `true` when this
    /// call advanced it (exactly one concurrent caller wins); `false` means the token of
    /// generation `from` was already spent, or its family revoked.
    async fn advance_refresh_family(&self, from: i64, next: &FamilyRecord) -> Result<bool>;
    /// One family row.
    async fn get_refresh_family(&self, family_id: &str) -> Result<Option<FamilyRecord>>;
    /// Revokes a family (inserting its row, revoked, when it has none yet) and appends it to
    /// the revocation feed; returns 1 when this call revoked it, 0 when it already was.
    async fn revoke_refresh_family(&self, family: &FamilyRecord, at: i64) -> Result<u64>;
    // ---- signing keys ----
    /// All signing keys, newest first.
    async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRecord>>;
    /// Inserts a new active signing key and retires every other active one at `at`.
    async fn insert_signing_key(&self, key: &SigningKeyRecord, at: i64) -> Result<()>;
    /// Replaces the sealed private halves of signing keys (`(kid, sealed)` pairs: a master key
    /// rotation re-seals each under the new master key) and the sealed integrity root (when
    /// given), and writes the audit row, all in one transaction: either everything is
    /// re-sealed or nothing.
    async fn reseal_signing_keys(
        &self,
        sealed: &[(String, Vec<u8>)],
        integrity_root: Option<&[u8]>,
        audit: &AuditEntry,
    ) -> Result<()>;

    // ---- integrity (crate::integrity) ----
    /// The integrity root sealed under the master key, if the database has one yet.
    async fn integrity_root(&self) -> Result<Option<Vec<u8>>>;
    /// Starts integrity protection, in one ordered transaction: unless the database already
    /// has an integrity root (then `false`, nothing changes), stores `sealed_root`, wraps every
    /// bare SHA-256 key hash with `keys`, and appends `audit` (completed with how many hashes
    /// were wrapped) as the first MAC'd audit row. Refuses (an error, nothing changes) when
    /// the database has no root but already holds wrapped hashes or an enable row: the root
    /// was deleted, and a new one would re-open the minting hole it closed.
    async fn enable_integrity(
        &self,
        sealed_root: &[u8],
        keys: &crate::store::integrity::Integrity,
        audit: &AuditEntry,
    ) -> Result<bool>;
    /// Installs the integrity keys: every audit row appended from now on is MAC'd with them.
    /// The first call wins. Until then, a store whose database has a root refuses to append
    /// audit rows, rather than chain them with the old rule.
    fn set_integrity(&self, keys: Arc<crate::store::integrity::Integrity>);
    /// The installed integrity keys, if any.
    fn integrity(&self) -> Option<Arc<crate::store::integrity::Integrity>>;

    // ---- audit ----
    /// Appends an audit row outside any other change (e.g. a refused admin call).
    async fn append_audit(&self, entry: &AuditEntry) -> Result<AuditRow>;
    /// Rows with `seq > after`, in order, at most `limit`.
    async fn list_audit(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>>;

    // ---- alerts ----
    /// Stores a batch of alerts in one transaction.
    async fn insert_alerts(&self, alerts: &[AlertRecord]) -> Result<()>;
    /// Stores one alert.
    async fn insert_alert(&self, alert: &AlertRecord) -> Result<()> {
        self.insert_alerts(std::slice::from_ref(alert)).await
    }
    /// Deletes alerts raised before `before` (`--alert-retention-days`); how many.
    async fn purge_alerts(&self, before: i64) -> Result<u64>;
    /// Alerts matching the filter, newest first.
    async fn list_alerts(&self, filter: &AlertFilter) -> Result<Vec<AlertRecord>>;

    // ---- usage ----
    /// Adds per-minute usage totals to what is stored for those keys and minutes, in one
    /// transaction (the SQL stores: in a group-commit transaction of the token path, so usage
    /// never holds the write lock on its own).
    async fn add_usage(&self, minutes: Vec<UsageMinute>) -> Result<()>;
    /// A key's usage since `since` (from the start of the minute it falls in), in buckets of
    /// `bucket_secs` (a multiple of 60), oldest first.
    async fn usage_summary(
        &self,
        key_id: &str,
        bucket_secs: i64,
        since: i64,
    ) -> Result<Vec<UsageBucket>>;
    /// Deletes usage minutes that started before `before`; returns how many went.
    async fn purge_usage(&self, before: i64) -> Result<u64>;
    /// Deletes refresh families whose every token expired before `before` (revoked or not), a
    /// bounded number per statement so the write lock is never held for long; returns how
    /// many went.
    async fn purge_expired_refresh(&self, before: i64) -> Result<u64>;
    /// Forgets the sealed successors whose grace window ended before `before`.
    async fn clear_refresh_grace(&self, before: i64) -> Result<u64>;

    // ---- revocation feed ----
    /// Appends an entry to the revocation feed (used for things without their own method).
    async fn append_revocation(&self, kind: &str, id: &str, at: i64) -> Result<()>;
    /// Feed entries with `seq > after`, oldest first, at most `limit`.
    async fn list_revocations(&self, after: i64, limit: i64) -> Result<Vec<RevocationRecord>>;
    /// The cursor from which the feed reads the first entry made at or after `at` (and every
    /// later one); past every entry when there is none.
    async fn revocation_cursor_at(&self, at: i64) -> Result<i64>;
    /// Deletes feed entries made before `before`; returns how many went. Cursors stay valid:
    /// entry positions are never reused, so a cursor from before the pruned range reads on
    /// from the oldest entry kept.
    async fn prune_revocations(&self, before: i64) -> Result<u64>;

    // ---- token status lists ----
    /// The non-valid entries with a global index in `start..end` at `now`; `None` when no
    /// list starts at `start` (no device has an index that far, and `start > 0`).
    async fn status_snapshot(
        &self,
        start: i64,
        end: i64,
        now: i64,
    ) -> Result<Option<StatusSnapshot>>;
}

/// A key's token requests in one minute: what the usage recorder adds to storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageMinute {
    /// The key.
    pub key_id: String,
    /// Start of the minute, unix seconds (a multiple of 60).
    pub minute: i64,
    /// Requests answered.
    pub requests: i64,
    /// Of which answered with a 4xx or 5xx status.
    pub errors: i64,
    /// Sum of their latencies, in microseconds.
    pub latency_sum_us: i64,
    /// The slowest, in microseconds.
    pub latency_max_us: i64,
}

impl UsageMinute {
    /// Adds `other` (the same key and minute) to this one.
    pub fn add(&mut self, other: &UsageMinute) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency_sum_us += other.latency_sum_us;
        self.latency_max_us = self.latency_max_us.max(other.latency_max_us);
    }
}

/// `minutes` with the rows of the same key and minute added into one, in first-seen order (one
/// multi-row upsert must not name the same row twice).
pub(crate) fn merge_usage<'a>(
    minutes: impl IntoIterator<Item = &'a UsageMinute>,
) -> Vec<UsageMinute> {
    let mut at = std::collections::HashMap::<(&str, i64), usize>::new();
    let mut merged: Vec<UsageMinute> = Vec::new();
    for m in minutes {
        match at.entry((m.key_id.as_str(), m.minute)) {
            std::collections::hash_map::Entry::Occupied(i) => merged[*i.get()].add(m),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(merged.len());
                merged.push(m.clone());
            }
        }
    }
    merged
}

/// Usage of one key in one time bucket.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct UsageBucket {
    /// Start of the bucket, unix seconds.
    pub start: i64,
    /// Requests in the bucket.
    pub requests: i64,
    /// Of which answered with a 4xx or 5xx status.
    pub errors: i64,
    /// Mean latency in microseconds.
    pub mean_latency_us: f64,
    /// Slowest request in microseconds.
    pub max_latency_us: i64,
}

/// A change to a device's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChange {
    /// Refuse the device for good.
    Revoke,
    /// Make the device `trusted`.
    Approve,
}
