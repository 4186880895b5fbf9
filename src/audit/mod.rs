//! The tamper-evident audit log.
//!
//! Every row carries `hash = MAC(prev_hash || canonical(row))`, where `canonical` is the row's
//! sequence number and content as JSON with sorted keys and no whitespace, and `MAC` is
//! HMAC-SHA256 under a key only the master key's holder has ([`crate::integrity`]). Editing a
//! row breaks its own MAC, and without the key nobody can compute a new one; deleting a row
//! breaks the sequence and the next row's `prev_hash`. [`verify`] walks the chain and names the
//! first row that does not fit.
//!
//! Rows written before integrity protection existed (an upgraded database) carry a plain
//! SHA-256 instead; the `integrity.enable` row that the upgrade appended is the first MAC'd
//! row, and since its MAC covers the last plain row's hash, the older rows are protected too.
//!
//! What a chain cannot show on its own: someone who can write the database may delete the
//! newest rows. `keybound audit checkpoint` writes the head (sequence number and MAC)
//! authenticated under the integrity key; `audit verify --checkpoint FILE` then fails when the
//! log ends before the checkpoint's row or that row changed ([`Checkpoint`]).

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::integrity::{ENABLE_ACTION, Integrity};
use crate::store::{AuditRow, Store};

/// The chain's format lives with the rows it links ([`crate::store::chain`]): the store
/// computes each hash or MAC inside the transaction that appends the row.
pub use crate::store::chain::{GENESIS, canonical, chain_hash};

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

/// Walks the whole audit log in order and checks every link, MACs under `keys`.
pub async fn verify(store: &dyn Store, keys: &Integrity) -> Result<Verdict> {
    verify_against(store, keys, None).await
}

/// [`verify`], and also that the log still reaches `checkpoint`'s row with the same MAC
/// there (the checkpoint itself must already be [`Checkpoint::check`]ed).
pub async fn verify_against(
    store: &dyn Store,
    keys: &Integrity,
    checkpoint: Option<(i64, &[u8])>,
) -> Result<Verdict> {
    const PAGE: i64 = 1000;
    let mut prev = GENESIS.to_vec();
    let mut expected_seq = 1;
    // Plain SHA-256 rows until the upgrade row; MAC'd from it on (see the module docs).
    let mut macd = false;
    loop {
        let rows = store.list_audit(expected_seq - 1, PAGE).await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            macd |= row.entry.action == ENABLE_ACTION;
            if let Some(v) = check_row(row, expected_seq, &prev, macd.then_some(keys)) {
                return Ok(v);
            }
            if let Some((seq, head)) = checkpoint
                && seq == row.seq
                && !bool::from(row.hash[..].ct_eq(head))
            {
                return Ok(Verdict::Broken {
                    seq,
                    reason: "the row differs from the checkpoint's (the log was rewritten)".into(),
                });
            }
            prev.clone_from(&row.hash);
            expected_seq += 1;
        }
    }
    let rows = expected_seq - 1;
    if !macd {
        // The integrity root exists (the caller holds its keys), so the upgrade row was
        // written: a log without it was cut back to before it, or replaced.
        return Ok(Verdict::Broken {
            seq: expected_seq,
            reason: format!(
                "the log ends at seq {rows} without its {ENABLE_ACTION} row (rows were removed)"
            ),
        });
    }
    if let Some((seq, _)) = checkpoint
        && rows < seq
    {
        return Ok(Verdict::Broken {
            seq: expected_seq,
            reason: format!(
                "the log ends at seq {rows}, before the checkpoint's seq {seq} (rows were removed)"
            ),
        });
    }
    Ok(Verdict::Intact {
        rows,
        head_hash: to_hex(&prev),
    })
}

fn check_row(
    row: &AuditRow,
    expected_seq: i64,
    prev: &[u8],
    mac: Option<&Integrity>,
) -> Option<Verdict> {
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
    let fits = match mac {
        Some(keys) => keys.audit_mac_matches(prev, row.seq, &row.entry, &row.hash),
        None => row.hash == chain_hash(prev, row.seq, &row.entry),
    };
    if !fits {
        return Some(Verdict::Broken {
            seq: row.seq,
            reason: "content does not match its MAC (the row was edited, or written without \
                     the master key)"
                .into(),
        });
    }
    None
}

/// The head of the audit chain at one moment, authenticated under the integrity key: what
/// `keybound audit checkpoint` writes, kept by the operator outside the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version, 1.
    pub version: u32,
    /// Sequence number of the last row.
    pub seq: i64,
    /// That row's MAC, hex.
    pub head: String,
    /// When the checkpoint was taken (unix seconds).
    pub at: i64,
    /// HMAC-SHA256 under the checkpoint key of the fields above, hex.
    pub mac: String,
}

impl Checkpoint {
    fn canonical(version: u32, seq: i64, head: &str, at: i64) -> Vec<u8> {
        let v = serde_json::json!({"version": version, "seq": seq, "head": head, "at": at});
        serde_json::to_vec(&v).expect("a JSON value always serializes")
    }

    /// The checkpoint of a chain whose last row is `seq` with MAC `head`.
    pub fn new(keys: &Integrity, seq: i64, head: &[u8], at: i64) -> Checkpoint {
        let head = to_hex(head);
        let mac = to_hex(&keys.checkpoint_mac(&Self::canonical(1, seq, &head, at)));
        Checkpoint {
            version: 1,
            seq,
            head,
            at,
            mac,
        }
    }

    /// The checkpoint's `(seq, head MAC)` when it was written under `keys`; an error when it
    /// comes from another database or master key, or was edited.
    pub fn check(&self, keys: &Integrity) -> Result<(i64, Vec<u8>)> {
        let refused = || {
            Error::InvalidRequest(
                "the checkpoint was not written with this database's integrity key (another \
                 database or master key, or an edited file)"
                    .into(),
            )
        };
        let expected = keys.checkpoint_mac(&Self::canonical(
            self.version,
            self.seq,
            &self.head,
            self.at,
        ));
        let given = from_hex(&self.mac).ok_or_else(refused)?;
        if self.version != 1 || !bool::from(expected[..].ct_eq(&given)) {
            return Err(refused());
        }
        Ok((self.seq, from_hex(&self.head).ok_or_else(refused)?))
    }
}

/// Decodes lowercase or uppercase hex; `None` when it is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
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
            assert_eq!(check_row(r, i as i64 + 1, &prev, None), None);
            prev.clone_from(&r.hash);
        }
        let mut edited = rows[1].clone();
        edited.entry.actor = "someone-else".into();
        assert!(matches!(
            check_row(&edited, 2, &rows[0].hash, None),
            Some(Verdict::Broken { seq: 2, .. })
        ));
        // Deleting row 2: row 3 arrives where 2 was expected.
        assert!(matches!(
            check_row(&rows[2], 2, &rows[0].hash, None),
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
