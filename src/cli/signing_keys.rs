//! `keybound signing-keys list|rotate|reseal`: the Ed25519 keys that sign access tokens.
//!
//! Listing shows public facts only (kid, state, times); no command prints key material.
//! Rotation makes a new active key; the previous one keeps being published in the JWKS until
//! every token it signed has expired. Running servers pick the new key up on their next
//! key-ring reload (every few seconds).

use std::process::ExitCode;

use serde_json::json;

use super::output;
use crate::clock::now;
use crate::config::{ResealArgs, RotateSigningKeyArgs, SigningKeyArgs, SigningKeysCommand};
use crate::error::{Error, Result};
use crate::store::{AuditEntry, SigningKeyRecord, Store};
use crate::tokens::keyring::{self, KeyRing, PUBLISH_AFTER_RETIREMENT};
use crate::tokens::signing::MasterKey;

/// Runs one `signing-keys` subcommand.
pub async fn run(store: &dyn Store, cmd: SigningKeysCommand) -> Result<ExitCode> {
    match cmd {
        SigningKeysCommand::List(args) => list(store, args.out.json).await?,
        SigningKeysCommand::Rotate(args) => rotate(store, &args).await?,
        SigningKeysCommand::Reseal(args) => reseal(store, &args).await?,
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

async fn rotate(store: &dyn Store, rotate: &RotateSigningKeyArgs) -> Result<()> {
    let args = &rotate.common;
    let now = now();
    // The rotation's audit row is MAC'd like every other (crate::integrity).
    crate::integrity::load_or_enable(store, &master_key(args)?, now).await?;
    let before = store.list_signing_keys().await?;
    let previous = before.iter().find(|k| k.retired_at.is_none());
    if previous.is_some() {
        // Sealing the new key with a different master key than the servers' would leave them
        // unable to open it: prove this one opens the current active key first.
        KeyRing::load(store, master_key(args)?, now).await?;
    }
    // A revoked key is retired with a retirement time far enough back that its publication
    // window is already over: it leaves the JWKS at once, on every server's next reload.
    let retired_at = if rotate.revoke_previous {
        now - PUBLISH_AFTER_RETIREMENT
    } else {
        now
    };
    let record = keyring::create_retiring_at(store, &master_key(args)?, now, retired_at).await?;
    let retired = previous.map(|k| k.kid.clone());
    store
        .append_audit(&AuditEntry {
            at: now,
            actor: "cli".into(),
            action: if rotate.revoke_previous {
                "signing_key.rotate_revoke".into()
            } else {
                "signing_key.rotate".into()
            },
            target: Some(record.kid.clone()),
            ip: None,
            details: json!({ "retired_kid": retired, "revoked": rotate.revoke_previous }),
        })
        .await?;
    if args.out.json {
        let mut v = view(&record);
        v["revoked_kid"] = json!(retired.as_ref().filter(|_| rotate.revoke_previous));
        return output::json(&v);
    }
    match &retired {
        Some(old) if rotate.revoke_previous => println!(
            "Rotated signing keys: {} is active; {old} is revoked and leaves the JWKS on every \
             server's next reload (within 5 s). Tokens it signed no longer verify.",
            record.kid,
        ),
        Some(old) => println!(
            "Rotated signing keys: {} is active; {old} stays published until {}.",
            record.kid,
            output::time(Some(now + PUBLISH_AFTER_RETIREMENT))
        ),
        None => println!("Created signing key {}.", record.kid),
    }
    Ok(())
}

/// Master key rotation: opens every signing key and the integrity root with the current master
/// key and seals them again under the new one, in one transaction with its audit row. Nothing is written unless every
/// key opens, so a wrong current key changes nothing. The keys themselves (and their kids, the
/// JWKS, every issued token) stay the same; only their sealing changes.
async fn reseal(store: &dyn Store, args: &ResealArgs) -> Result<()> {
    use secrecy::ExposeSecret;
    let current = master_key(&args.current)?;
    let new = MasterKey::from_base64(args.new_master_key.expose_secret().trim()).map_err(|_| {
        Error::InvalidRequest("the new master key must be 32 bytes in base64".into())
    })?;
    // The integrity root moves to the new master key with the signing keys, in the same
    // transaction: the key hashes and the audit chain it protects stay valid as they are.
    crate::integrity::load_or_enable(store, &current, now())
        .await
        .map_err(|e| match e {
            Error::InvalidRequest(why) => {
                Error::InvalidRequest(format!("{why}; nothing was changed"))
            }
            other => other,
        })?;
    let root = match store.integrity_root().await? {
        Some(sealed) => Some(crate::integrity::reseal_root(&current, &new, &sealed)?),
        None => None,
    };
    let records = store.list_signing_keys().await?;
    let mut sealed = Vec::with_capacity(records.len());
    for r in &records {
        let key = crate::tokens::SigningKey::open_sealed(
            &current,
            &r.kid,
            &r.sealed_private,
            r.created_at.max(0) as u64,
        )
        .map_err(|_| {
            Error::InvalidRequest(format!(
                "signing key {} does not open with the current master key; nothing was changed",
                r.kid
            ))
        })?;
        sealed.push((r.kid.clone(), key.seal(&new)));
    }
    let kids: Vec<&str> = records.iter().map(|r| r.kid.as_str()).collect();
    let audit = AuditEntry {
        at: now(),
        actor: "cli".into(),
        action: "signing_key.reseal".into(),
        target: None,
        ip: None,
        details: json!({ "kids": kids }),
    };
    store
        .reseal_signing_keys(&sealed, root.as_deref(), &audit)
        .await?;
    if !records.is_empty() {
        // Prove the servers will open the active key with the new master key.
        KeyRing::load(store, new, now()).await?;
    }
    if args.current.out.json {
        return output::json(&json!({ "resealed": kids }));
    }
    println!(
        "Re-sealed {} signing key(s) under the new master key. Restart every server with it now.",
        kids.len()
    );
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
