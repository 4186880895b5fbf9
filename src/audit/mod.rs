//! The tamper-evident audit log.
//!
//! Every row carries `hash = SHA-256(prev_hash || canonical(row))`, where `canonical` is the
//! row's sequence number and content as JSON with sorted keys and no whitespace. Editing a
//! row breaks its own hash; deleting one breaks the sequence and the next row's `prev_hash`;
//! [`verify`] walks the chain and names the first row that does not fit.
//!
//! What a chain cannot show on its own: someone who can write the database may delete the
//! newest rows, or rewrite a row and every row after it. `keybound audit verify` prints the
//! head (last sequence number and hash); an operator who records it elsewhere (a ticket, a
//! log shipper) can later prove the log was not truncated or rewritten before that point.

use crate::error::Result;
use crate::store::{AuditRow, Store};

/// The chain's format lives with the rows it links ([`crate::store::chain`]): the store
/// computes each hash inside the transaction that appends the row.
pub use crate::store::chain::{GENESIS, chain_hash};

/// The result of walking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every row fits; `rows` were checked, the last one has `head_hash` (hex).
    Intact {
        /// Rows checked.
        rows: i64,
        /// Hex hash of the last row (the genesis hash when empty).
        head_hash: String,
    },
    /// The first row that does not fit, and why.
    Broken {
        /// Sequence number of the first bad row (or where a missing row should be).
        seq: i64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Walks the whole audit log in order and checks every link.
pub async fn verify(store: &dyn Store) -> Result<Verdict> {
    const PAGE: i64 = 1000;
    let mut prev = GENESIS.to_vec();
    let mut expected_seq = 1;
    loop {
        let rows = store.list_audit(expected_seq - 1, PAGE).await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            if let Some(v) = check_row(row, expected_seq, &prev) {
                return Ok(v);
            }
            prev.clone_from(&row.hash);
            expected_seq += 1;
        }
    }
    Ok(Verdict::Intact {
        rows: expected_seq - 1,
        head_hash: to_hex(&prev),
    })
}

fn check_row(row: &AuditRow, expected_seq: i64, prev: &[u8]) -> Option<Verdict> {
    if row.seq != expected_seq {
        return Some(Verdict::Broken {
            seq: expected_seq,
            reason: format!("row {expected_seq} is missing (next row is {})", row.seq),
        });
    }
    if row.prev_hash != prev {
        return Some(Verdict::Broken {
            seq: row.seq,
            reason: "prev_hash does not match the previous row's hash".into(),
        });
    }
    if row.hash != chain_hash(prev, row.seq, &row.entry) {
        return Some(Verdict::Broken {
            seq: row.seq,
            reason: "content does not match its hash (the row was edited)".into(),
        });
    }
    None
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AuditEntry;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            at: 1_700_000_000,
            actor: "cli".into(),
            action: action.into(),
            target: Some("ak_test_AAAAAAAAAAAA".into()),
            ip: None,
            details: serde_json::json!({"b": 1, "a": [1, 2]}),
        }
    }

    fn chain(n: i64) -> Vec<AuditRow> {
        let mut prev = GENESIS.to_vec();
        (1..=n)
            .map(|seq| {
                let e = entry(&format!("a{seq}"));
                let hash = chain_hash(&prev, seq, &e).to_vec();
                let row = AuditRow {
                    seq,
                    entry: e,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                row
            })
            .collect()
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        let rows = chain(3);
        let mut prev = GENESIS.to_vec();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(check_row(r, i as i64 + 1, &prev), None);
            prev.clone_from(&r.hash);
        }
        let mut edited = rows[1].clone();
        edited.entry.actor = "someone-else".into();
        assert!(matches!(
            check_row(&edited, 2, &rows[0].hash),
            Some(Verdict::Broken { seq: 2, .. })
        ));
        // Deleting row 2: row 3 arrives where 2 was expected.
        assert!(matches!(
            check_row(&rows[2], 2, &rows[0].hash),
            Some(Verdict::Broken { seq: 2, .. })
        ));
    }

    #[test]
    fn hash_is_canonical_over_key_order() {
        let mut a = entry("x");
        let mut b = entry("x");
        a.details = serde_json::json!({"z": 1, "a": 2});
        b.details = serde_json::from_str(r#"{"a":2,"z":1}"#).unwrap();
        assert_eq!(chain_hash(&GENESIS, 1, &a), chain_hash(&GENESIS, 1, &b));
    }
}
