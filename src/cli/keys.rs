//! `keybound keys …`: the key lifecycle from the command line, through the same
//! [`service`] the admin API uses, so both write the same audit rows.
//!
//! Create and rotate print the plaintext exactly once; no other command can print it, because
//! no other command holds it: storage only has the hash, and [`KeyRecord`] does not serialize
//! even that.

use std::process::ExitCode;

use serde_json::json;

use super::output;
use crate::clock::now;
use crate::config::{CreateKeyArgs, KeysCommand};
use crate::error::Result;
use crate::keys::service::{self, Actor, Created, NewKey};
use crate::store::{AttestationPolicy, KeyRecord, KeyStatus, Store};

/// Page size when listing every key.
const PAGE: i64 = 1000;

/// Runs one `keys` subcommand.
pub async fn run(store: &dyn Store, cmd: KeysCommand) -> Result<ExitCode> {
    let actor = Actor::cli();
    match cmd {
        KeysCommand::Create(args) => {
            let json = args.out.json;
            let created = service::create(store, new_key(args), &actor, now()).await?;
            if json {
                output::json(&created.reveal())?;
            } else {
                print!(
                    "Created API key {} ({}).\n{}{}",
                    created.record.key_id,
                    created.record.name,
                    output::secret_block(created.key.expose()),
                    output::key_fields(&created.record, now()),
                );
            }
        }
        KeysCommand::List(out) => {
            let keys = all_keys(store).await?;
            if out.json {
                output::json(&json!({ "keys": keys }))?;
            } else {
                print!("{}", key_table(&keys, now()));
            }
        }
        KeysCommand::Show { id, out } => {
            let record = service::get(store, &id).await?;
            show(&record, out.json, None)?;
        }
        KeysCommand::Revoke { id, reason, out } => {
            let r =
                service::set_status(store, &id, KeyStatus::Revoked, Some(&reason), &actor, now())
                    .await?;
            show(&r, out.json, Some(&format!("Revoked {id}.")))?;
        }
        KeysCommand::Suspend { id, out } => {
            let r =
                service::set_status(store, &id, KeyStatus::Suspended, None, &actor, now()).await?;
            show(&r, out.json, Some(&format!("Suspended {id}.")))?;
        }
        KeysCommand::Resume { id, out } => {
            let r = service::set_status(store, &id, KeyStatus::Active, None, &actor, now()).await?;
            show(&r, out.json, Some(&format!("Resumed {id}.")))?;
        }
        KeysCommand::Rotate {
            id,
            grace_seconds,
            out,
        } => {
            let created = service::rotate(store, &id, grace_seconds, &actor, now()).await?;
            let old = service::get(store, &id).await?;
            print_rotated(&created, &old, out.json)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The flags as the service's [`NewKey`]; the service validates them like an API body.
fn new_key(a: CreateKeyArgs) -> NewKey {
    NewKey {
        name: a.name,
        scopes: words(&a.scopes),
        env: Some(a.env),
        description: a.description,
        expires_in_days: Some(a.expires_in_days),
        rate_limit_per_minute: Some(a.rate_limit_per_minute),
        allowed_ips: a.allowed_ips.iter().map(ToString::to_string).collect(),
        allowed_origins: a.allowed_origins,
        max_devices: Some(a.max_devices),
        limited_scopes: a.limited_scopes.as_deref().map(words),
        trust_on_enroll: a.trust_on_enroll,
        attestation: AttestationPolicy::parse(&a.attestation),
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// Every key, following the store's keyset pagination.
async fn all_keys(store: &dyn Store) -> Result<Vec<KeyRecord>> {
    let mut keys: Vec<KeyRecord> = Vec::new();
    loop {
        let after = keys.last().map(|k| k.key_id.clone());
        let page = store.list_keys(after.as_deref(), PAGE).await?;
        let done = (page.len() as i64) < PAGE;
        keys.extend(page);
        if done {
            return Ok(keys);
        }
    }
}

fn key_table(keys: &[KeyRecord], now: i64) -> String {
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            vec![
                k.key_id.to_string(),
                k.name.clone(),
                output::key_status(k, now).into(),
                k.scopes.join(" "),
                output::time(Some(k.created_at)),
                k.expires_at
                    .map_or_else(|| "never".into(), |t| output::time(Some(t))),
                output::time(k.last_used_at),
            ]
        })
        .collect();
    output::table(
        &[
            "KEY_ID",
            "NAME",
            "STATUS",
            "SCOPES",
            "CREATED",
            "EXPIRES",
            "LAST_USED",
        ],
        &rows,
    )
}

fn show(r: &KeyRecord, json: bool, headline: Option<&str>) -> Result<()> {
    if json {
        return output::json(r);
    }
    if let Some(h) = headline {
        println!("{h}");
    }
    print!("{}", output::key_fields(r, now()));
    Ok(())
}

fn print_rotated(created: &Created, old: &KeyRecord, json: bool) -> Result<()> {
    if json {
        let mut v = created.reveal();
        if let Some(map) = v.as_object_mut() {
            map.insert("old_key_expires_at".into(), json!(old.expires_at));
        }
        return output::json(&v);
    }
    print!(
        "Rotated {} to {}. The old key keeps working until {}.\n{}{}",
        old.key_id,
        created.record.key_id,
        output::time(old.expires_at),
        output::secret_block(created.key.expose()),
        output::key_fields(&created.record, now()),
    );
    Ok(())
}
