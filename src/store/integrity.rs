//! The keys that protect storage from a writer without the master key: MAC'd API-key hashes
//! and the MAC'd audit chain ([`crate::integrity`] says why and how the root is kept). Here,
//! below everything that uses storage, because the store computes audit MACs in the
//! transaction that appends a row and checks key hashes it reads.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};
use zeroize::Zeroizing;

use super::AuditEntry;

type HmacSha256 = Hmac<Sha256>;

/// The action of the audit row written when integrity protection starts: it is the first row
/// chained with the HMAC rule; the rows before it (a database older than this feature) keep
/// the plain SHA-256 rule, and its MAC covers the last of them.
pub const ENABLE_ACTION: &str = "integrity.enable";

/// The first byte of a wrapped key hash: the stored value's format.
pub const WRAPPED_HASH_VERSION: u8 = 1;

/// Length of a wrapped key hash: the version byte and the 32-byte MAC. Older rows hold a bare
/// 32-byte SHA-256, which is never accepted once the database is upgraded.
pub const WRAPPED_HASH_LEN: usize = 33;

/// Label of the key that MACs API key hashes.
const KEY_HASH_LABEL: &str = "keybound/api-key-hash/v1";
/// Label of the key that chains the audit log.
const AUDIT_LABEL: &str = "keybound/audit-chain/v1";
/// Label of the key that authenticates audit checkpoints.
const CHECKPOINT_LABEL: &str = "keybound/audit-checkpoint/v1";

/// The keys derived from a database's integrity root. `Debug` shows nothing of them.
pub struct Integrity {
    key_hash: HmacSha256,
    audit: HmacSha256,
    checkpoint: HmacSha256,
}

impl fmt::Debug for Integrity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Integrity([REDACTED])")
    }
}

/// An HMAC-SHA256 instance keyed with `HMAC-SHA256(root, label)`. Kept keyed, so each MAC
/// only clones the prepared state instead of hashing the key again.
fn derive(root: &[u8; 32], label: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(root).expect("HMAC takes keys of any length");
    mac.update(label.as_bytes());
    let key = Zeroizing::new(<[u8; 32]>::from(mac.finalize().into_bytes()));
    HmacSha256::new_from_slice(&key[..]).expect("HMAC takes keys of any length")
}

impl Integrity {
    /// The keys of the integrity root `root`.
    pub fn from_root(root: &[u8; 32]) -> Integrity {
        Integrity {
            key_hash: derive(root, KEY_HASH_LABEL),
            audit: derive(root, AUDIT_LABEL),
            checkpoint: derive(root, CHECKPOINT_LABEL),
        }
    }

    /// The stored form of a key's secret hash: `0x01 || HMAC(k_hash, key_id || 0x00 ||
    /// SHA-256(secret))`. Binding the key id means a valid value copied onto another row does
    /// not verify there.
    pub fn wrap_key_hash(&self, key_id: &str, secret_sha256: &[u8]) -> [u8; WRAPPED_HASH_LEN] {
        let mut mac = self.key_hash.clone();
        mac.update(key_id.as_bytes());
        mac.update(&[0]);
        mac.update(secret_sha256);
        let mut out = [0u8; WRAPPED_HASH_LEN];
        out[0] = WRAPPED_HASH_VERSION;
        out[1..].copy_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Whether `stored` is the wrapped hash of `secret_sha256` under `key_id`, compared in
    /// constant time. A bare SHA-256 (the format before the upgrade) never matches.
    pub fn key_hash_matches(&self, key_id: &str, secret_sha256: &[u8], stored: &[u8]) -> Choice {
        self.wrap_key_hash(key_id, secret_sha256)[..].ct_eq(stored)
    }

    /// The MAC of audit row `seq` chained after a row whose MAC (or, for the first row of
    /// the HMAC chain, plain hash) is `prev`.
    pub fn audit_mac(&self, prev: &[u8], seq: i64, entry: &AuditEntry) -> [u8; 32] {
        let mut mac = self.audit.clone();
        mac.update(prev);
        mac.update(&super::chain::canonical(seq, entry));
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the MAC of audit row `seq` after `prev`, in constant time.
    pub fn audit_mac_matches(&self, prev: &[u8], seq: i64, entry: &AuditEntry, tag: &[u8]) -> bool {
        bool::from(self.audit_mac(prev, seq, entry)[..].ct_eq(tag))
    }

    /// The authenticator of a checkpoint's canonical text.
    pub fn checkpoint_mac(&self, canonical: &[u8]) -> [u8; 32] {
        let mut mac = self.checkpoint.clone();
        mac.update(canonical);
        mac.finalize().into_bytes().into()
    }
}
