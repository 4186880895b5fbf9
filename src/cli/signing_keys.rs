//! `keybound signing-keys list|rotate`: the Ed25519 keys that sign access tokens.
//!
//! Listing shows public facts only (kid, state, times); no command prints key material.
//! Rotation makes a new active key; the previous one keeps being published in the JWKS until
//! every token it signed has expired. Running servers pick the new key up on their next
//! key-ring reload (every few seconds).

use std::process::ExitCode;

use serde_json::json;

use super::output;
use crate::config::{SigningKeyArgs, SigningKeysCommand};
use crate::error::{Error, Result};
use crate::state::now;
use crate::store::{AuditEntry, SigningKeyRecord, Store};
use crate::tokens::keyring::{self, KeyRing, PUBLISH_AFTER_RETIREMENT};
use crate::tokens::signing::MasterKey;

/// Runs one `signing-keys` subcommand.
pub async fn run(store: &dyn Store, cmd: SigningKeysCommand) -> Result<ExitCode> {
    match cmd {
        SigningKeysCommand::List(args) => list(store, args.out.json).await?,
        SigningKeysCommand::Rotate(args) => rotate(store, &args).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(store: &dyn Store, json: bool) -> Result<()> {
    let mut keys = store.list_signing_keys().await?;
    // The active key first, then newest first (keys made within one second tie on time).
    keys.sort_by_key(|k| (k.retired_at.is_some(), std::cmp::Reverse(k.created_at)));
    if json {
        let keys: Vec<_> = keys.iter().map(view).collect();
        return output::json(&json!({ "signing_keys": keys }));
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.kid.clone(),
                if k.retired_at.is_none() {
                    "active"
                } else {
                    "retired"
                }
                .into(),
                output::time(Some(k.created_at)),
                output::time(k.retired_at),
                output::time(published_until(k)),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &["KID", "STATE", "CREATED", "RETIRED", "PUBLISHED_UNTIL"],
            &rows
        )
    );
    Ok(())
}

/// The public facts about a signing key; never the sealed private half.
fn view(k: &SigningKeyRecord) -> serde_json::Value {
    json!({
        "kid": k.kid,
        "active": k.retired_at.is_none(),
        "created_at": k.created_at,
        "retired_at": k.retired_at,
        "published_until": published_until(k),
    })
}

/// When a retired key leaves the JWKS; `None` while it is active.
fn published_until(k: &SigningKeyRecord) -> Option<i64> {
    k.retired_at.map(|t| t + PUBLISH_AFTER_RETIREMENT)
}

async fn rotate(store: &dyn Store, args: &SigningKeyArgs) -> Result<()> {
    let now = now();
    let before = store.list_signing_keys().await?;
    let previous = before.iter().find(|k| k.retired_at.is_none());
    if previous.is_some() {
        // Sealing the new key with a different master key than the servers' would leave them
        // unable to open it: prove this one opens the current active key first.
        KeyRing::load(store, master_key(args)?, now).await?;
    }
    let record = keyring::create(store, &master_key(args)?, now).await?;
    let retired = previous.map(|k| k.kid.clone());
    store
        .append_audit(&AuditEntry {
            at: now,
            actor: "cli".into(),
            action: "signing_key.rotate".into(),
            target: Some(record.kid.clone()),
            ip: None,
            details: json!({ "retired_kid": retired }),
        })
        .await?;
    if args.out.json {
        return output::json(&view(&record));
    }
    match &retired {
        Some(old) => println!(
            "Rotated signing keys: {} is active; {old} stays published until {}.",
            record.kid,
            output::time(Some(now + PUBLISH_AFTER_RETIREMENT))
        ),
        None => println!("Created signing key {}.", record.kid),
    }
    Ok(())
}

/// The servers' master key: `--master-key` (`KEYBOUND_MASTER_KEY`), else the dev key file.
/// Unlike `serve`, never creates the file: a key sealed with a brand-new master key would be
/// unreadable by the servers.
fn master_key(args: &SigningKeyArgs) -> Result<MasterKey> {
    if args.master_key.is_none() && !args.master_key_file.exists() {
        return Err(Error::InvalidRequest(format!(
            "no master key: pass --master-key (or KEYBOUND_MASTER_KEY), or run where the server's {} is",
            args.master_key_file.display()
        )));
    }
    keyring::master_key(args.master_key.as_ref(), &args.master_key_file, false)
}
