//! The audit log's hash chain (see [`crate::audit`]): the canonical bytes of a row and the
//! plain hash rule. Here because the store appends rows and computes their hashes (or MACs,
//! [`super::integrity`]) in the same transaction; [`crate::audit::verify`] walks the chain with
//! the same functions.

use sha2::{Digest, Sha256};

use super::AuditEntry;

/// The `prev_hash` of the first row.
pub const GENESIS: [u8; 32] = [0; 32];

/// The canonical bytes of row `seq`: what its hash or MAC covers after `prev_hash`.
pub fn canonical(seq: i64, entry: &AuditEntry) -> Vec<u8> {
    // serde_json's `Value` keeps object keys sorted (no `preserve_order` feature), which makes
    // this serialization canonical, nested `details` included.
    let canonical = serde_json::json!({
        "seq": seq,
        "at": entry.at,
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "ip": entry.ip,
        "details": entry.details,
    });
    serde_json::to_vec(&canonical).expect("a JSON value always serializes")
}

/// The plain chain hash (the rule before integrity protection) of a row with sequence number
/// `seq` following a row whose hash is `prev`. Only a database that has no integrity root yet
/// (see [`crate::integrity::load_or_enable`]) still appends rows with it.
pub fn chain_hash(prev: &[u8], seq: i64, entry: &AuditEntry) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical(seq, entry));
    h.finalize().into()
}
