//! The audit log's hash chain (see [`crate::audit`]): how one row's hash is computed from the
//! previous one. Here because the store appends rows and computes their hashes in the same
//! transaction; [`crate::audit::verify`] walks the chain with the same function.

use sha2::{Digest, Sha256};

use super::AuditEntry;

/// The `prev_hash` of the first row.
pub const GENESIS: [u8; 32] = [0; 32];

/// The chain hash of a row with sequence number `seq` following a row whose hash is `prev`.
pub fn chain_hash(prev: &[u8], seq: i64, entry: &AuditEntry) -> [u8; 32] {
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
    let mut h = Sha256::new();
    h.update(prev);
    h.update(serde_json::to_vec(&canonical).expect("a JSON value always serializes"));
    h.finalize().into()
}
