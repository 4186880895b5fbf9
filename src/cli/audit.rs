//! `keybound audit verify|checkpoint`: walks the MAC chain (see [`crate::audit`]).
//!
//! `verify` exits 0 when intact, printing the rows checked and the head MAC; 1 naming the
//! first bad row otherwise, or when the log no longer reaches the row of a `--checkpoint`
//! (truncation). `checkpoint` verifies first, then writes the head authenticated under the
//! database's integrity key, for the operator to keep outside the database. Both need the
//! master key: a checkpoint from another database or master key is an error (exit 2).

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;

use super::output;
use crate::audit::{self, Checkpoint, Verdict};
use crate::config::AuditCommand;
use crate::error::{Error, Result};
use crate::integrity::Integrity;
use crate::state::now;
use crate::store::Store;

/// Runs one `audit` subcommand with the database's integrity keys.
pub async fn run(store: &dyn Store, keys: &Integrity, cmd: AuditCommand) -> Result<ExitCode> {
    match cmd {
        AuditCommand::Verify(args) => {
            let checkpoint = match &args.checkpoint {
                Some(path) => Some(read_checkpoint(path)?.check(keys)?),
                None => None,
            };
            let verdict = audit::verify_against(
                store,
                keys,
                checkpoint.as_ref().map(|(seq, head)| (*seq, &head[..])),
            )
            .await?;
            let checkpoint_seq = checkpoint.as_ref().map(|(seq, _)| *seq);
            report(&verdict, args.out.json, checkpoint_seq)
        }
        AuditCommand::Checkpoint(args) => {
            let verdict = audit::verify(store, keys).await?;
            let Verdict::Intact { rows, head_hash } = &verdict else {
                // Never authenticate the head of a chain that is already broken.
                return report(&verdict, false, None);
            };
            let head = audit::from_hex(head_hash)
                .ok_or_else(|| Error::internal("the head MAC is not hex"))?;
            let checkpoint = Checkpoint::new(keys, *rows, &head, now());
            let text = serde_json::to_string_pretty(&checkpoint).map_err(Error::internal)?;
            match &args.out {
                Some(path) => {
                    std::fs::write(path, format!("{text}\n")).map_err(|e| {
                        Error::InvalidRequest(format!("checkpoint file {}: {e}", path.display()))
                    })?;
                    eprintln!(
                        "audit checkpoint at seq {rows} written to {}; keep it outside the \
                         database and pass it to `audit verify --checkpoint`",
                        path.display()
                    );
                }
                None => println!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_checkpoint(path: &Path) -> Result<Checkpoint> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidRequest(format!("checkpoint file {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|_| {
        Error::InvalidRequest(format!(
            "checkpoint file {} is not a keybound audit checkpoint",
            path.display()
        ))
    })
}

fn report(verdict: &Verdict, json: bool, checkpoint_seq: Option<i64>) -> Result<ExitCode> {
    match verdict {
        Verdict::Intact { rows, head_hash } => {
            if json {
                output::json(&json!({
                    "intact": true,
                    "rows": rows,
                    "head_hash": head_hash,
                    "checkpoint_seq": checkpoint_seq,
                }))?;
            } else {
                let reached = checkpoint_seq.map_or(String::new(), |s| {
                    format!("; reaches the checkpoint at seq {s}")
                });
                println!(
                    "audit log intact: {rows} rows checked, head seq {rows} MAC {head_hash}{reached}"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Verdict::Broken { seq, reason } => {
            if json {
                output::json(&json!({"intact": false, "seq": seq, "reason": reason}))?;
            } else {
                eprintln!("audit log BROKEN at seq {seq}: {reason}");
            }
            Ok(ExitCode::from(1))
        }
    }
}
