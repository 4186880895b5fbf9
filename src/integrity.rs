//! Integrity against a database writer (issue 15 item 8; `docs/design.md`, "Integrity against a
//! database writer").
//!
//! Someone who can write the database but does not hold the master key must not be able to
//! mint an API key (insert a row whose hash they computed from a secret they chose) or rewrite
//! the audit log unseen. Three keys that only a holder of the master key has stop that:
//!
//! * **key hashes**: storage keeps `0x01 || HMAC-SHA256(k_hash, key_id || 0x00 ||
//!   SHA-256(secret))`, not the bare SHA-256, so a writer cannot compute a valid value for a
//!   secret of their choice, and a valid value copied onto another key id does not verify;
//! * **the audit chain**: from the `integrity.enable` row on, every row carries
//!   `HMAC-SHA256(k_audit, prev_hash || canonical(row))` instead of a plain SHA-256, so a
//!   writer who edits a row cannot recompute the chain after it;
//! * **checkpoints**: `keybound audit checkpoint` writes the chain's head authenticated under
//!   `k_checkpoint`, and `audit verify --checkpoint` refuses a log that ends before it or
//!   differs at its row: truncation, which no chain can show by itself.
//!
//! The three keys are derived (HMAC-SHA256 with a purpose label) from a random 32-byte
//! *integrity root* kept in the database sealed under the master key, rather than from the
//! master key itself: a master key rotation (`signing-keys reseal`) then only re-seals the root,
//! where keys derived from the master key would have invalidated every API key (their hashes
//! cannot be recomputed without the secrets) and every past audit MAC.

use std::sync::Arc;

use rand::RngCore as _;
use rand::rngs::OsRng;
use serde_json::json;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::store::{AuditEntry, Store};
use crate::tokens::signing::MasterKey;

/// Associated data of the sealed root: a purpose label, so no other sealed blob opens as it.
const ROOT_AAD: &[u8] = b"keybound/integrity-root/v1";

pub use crate::store::integrity::{
    ENABLE_ACTION, Integrity, WRAPPED_HASH_LEN, WRAPPED_HASH_VERSION,
};

impl Integrity {
    /// A fresh random root: the keys and the root sealed under `master` (what storage keeps).
    pub fn generate(master: &MasterKey) -> (Integrity, Vec<u8>) {
        let mut root = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(root.as_mut());
        (
            Integrity::from_root(&root),
            master.seal(&root[..], ROOT_AAD),
        )
    }

    /// Opens a sealed root. Fails (without saying more) when `master` is not the key that
    /// sealed it or the blob was altered.
    pub fn open(master: &MasterKey, sealed: &[u8]) -> Result<Integrity> {
        let root = open_root(master, sealed)?;
        Ok(Integrity::from_root(&root))
    }
}

fn open_root(master: &MasterKey, sealed: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
    let wrong = || {
        Error::InvalidRequest(
            "the master key differs from the one that protects this database (its integrity \
             key does not open): use the master key the database was set up with"
                .into(),
        )
    };
    let plain = master.open(sealed, ROOT_AAD).map_err(|_| wrong())?;
    let root: [u8; 32] = plain.as_slice().try_into().map_err(|_| wrong())?;
    Ok(Zeroizing::new(root))
}

/// Re-seals the database's integrity root (if it has one) under `new`: part of a master key
/// rotation. `None` when the database has none yet.
pub fn reseal_root(current: &MasterKey, new: &MasterKey, sealed: &[u8]) -> Result<Vec<u8>> {
    let root = open_root(current, sealed)?;
    Ok(new.seal(&root[..], ROOT_AAD))
}

/// The integrity keys of the database behind `store`, installed into it (its audit rows are
/// MAC'd from then on) and returned.
///
/// On the first start with this version there is no root yet: one is generated and, in one
/// transaction ([`Store::enable_integrity`]), stored, every old key hash wrapped and the
/// [`ENABLE_ACTION`] audit row appended. From then on only wrapped hashes verify, so an
/// old-format row inserted later by a database writer is refused instead of being upgraded.
/// Two processes starting at once agree: one enables, the other reads its root.
pub async fn load_or_enable(
    store: &dyn Store,
    master: &MasterKey,
    now: i64,
) -> Result<Arc<Integrity>> {
    for _ in 0..2 {
        if let Some(sealed) = store.integrity_root().await? {
            let keys = Arc::new(Integrity::open(master, &sealed)?);
            store.set_integrity(keys.clone());
            return Ok(keys);
        }
        let (keys, sealed) = Integrity::generate(master);
        let audit = AuditEntry {
            at: now,
            actor: "system".into(),
            action: ENABLE_ACTION.into(),
            target: None,
            ip: None,
            details: json!({}),
        };
        if store.enable_integrity(&sealed, &keys, &audit).await? {
            let keys = Arc::new(keys);
            store.set_integrity(keys.clone());
            return Ok(keys);
        }
        // Another process enabled it between our read and our transaction: read theirs.
    }
    Err(Error::internal("the integrity root could not be read back"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_hash_is_bound_to_its_root_and_key_id() {
        let sha = [7u8; 32];
        let a = Integrity::from_root(&[1; 32]);
        let b = Integrity::from_root(&[2; 32]);
        let w = a.wrap_key_hash("ak_test_AAAAAAAAAAAA", &sha);
        assert_eq!(w[0], WRAPPED_HASH_VERSION);
        assert!(bool::from(a.key_hash_matches(
            "ak_test_AAAAAAAAAAAA",
            &sha,
            &w
        )));
        assert!(
            !bool::from(a.key_hash_matches("ak_test_BBBBBBBBBBBB", &sha, &w)),
            "other id"
        );
        assert!(
            !bool::from(b.key_hash_matches("ak_test_AAAAAAAAAAAA", &sha, &w)),
            "other root"
        );
        assert!(
            !bool::from(a.key_hash_matches("ak_test_AAAAAAAAAAAA", &sha, &sha)),
            "bare SHA-256"
        );
    }

    #[test]
    fn the_root_opens_only_under_its_master_key() {
        let master = MasterKey::generate();
        let (keys, sealed) = Integrity::generate(&master);
        let opened = Integrity::open(&master, &sealed).unwrap();
        let sha = [9u8; 32];
        assert_eq!(
            keys.wrap_key_hash("id", &sha),
            opened.wrap_key_hash("id", &sha)
        );
        let err = Integrity::open(&MasterKey::generate(), &sealed).unwrap_err();
        assert!(!format!("{err} {err:?}").contains(&audit_hex(&sealed)));
        let new = MasterKey::generate();
        let resealed = reseal_root(&master, &new, &sealed).unwrap();
        let moved = Integrity::open(&new, &resealed).unwrap();
        assert_eq!(
            keys.wrap_key_hash("id", &sha),
            moved.wrap_key_hash("id", &sha)
        );
        assert_eq!(format!("{keys:?}"), "Integrity([REDACTED])");
    }

    fn audit_hex(b: &[u8]) -> String {
        crate::audit::to_hex(b)
    }
}
