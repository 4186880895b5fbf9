//! `keybound audit verify`: walks the hash chain (see [`crate::audit`]).
//!
//! Exit 0 when intact, printing the rows checked and the head hash (record the head
//! elsewhere to detect a later truncation); exit 1 naming the first bad row otherwise.

use std::process::ExitCode;

use serde_json::json;

use super::output;
use crate::audit::{self, Verdict};
use crate::config::AuditCommand;
use crate::error::Result;
use crate::store::Store;

/// Runs one `audit` subcommand.
pub async fn run(store: &dyn Store, cmd: AuditCommand) -> Result<ExitCode> {
    let AuditCommand::Verify(out) = cmd;
    match audit::verify(store).await? {
        Verdict::Intact { rows, head_hash } => {
            if out.json {
                output::json(&json!({"intact": true, "rows": rows, "head_hash": head_hash}))?;
            } else {
                println!("audit log intact: {rows} rows checked, head seq {rows} hash {head_hash}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Verdict::Broken { seq, reason } => {
            if out.json {
                output::json(&json!({"intact": false, "seq": seq, "reason": reason}))?;
            } else {
                eprintln!("audit log BROKEN at seq {seq}: {reason}");
            }
            Ok(ExitCode::from(1))
        }
    }
}
