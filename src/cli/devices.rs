//! `keybound devices …`: list a key's devices, revoke or approve one.

use std::process::ExitCode;

use serde_json::json;

use super::output;
use crate::clock::now;
use crate::config::DevicesCommand;
use crate::error::Result;
use crate::keys::service::{self, Actor};
use crate::store::{DeviceChange, DeviceRecord, Store};

/// Runs one `devices` subcommand.
pub async fn run(store: &dyn Store, cmd: DevicesCommand) -> Result<ExitCode> {
    let (device_id, change, out, verb) = match cmd {
        DevicesCommand::List { key_id, out } => {
            let devices = service::list_devices(store, &key_id).await?;
            if out.json {
                output::json(&json!({ "devices": devices }))?;
            } else {
                print!("{}", device_table(&devices));
            }
            return Ok(ExitCode::SUCCESS);
        }
        DevicesCommand::Revoke { device_id, out } => {
            (device_id, DeviceChange::Revoke, out, "Revoked")
        }
        DevicesCommand::Approve { device_id, out } => {
            (device_id, DeviceChange::Approve, out, "Approved")
        }
    };
    let d = service::set_device_status(store, &device_id, change, &Actor::cli(), now()).await?;
    if out.json {
        output::json(&d)?;
    } else {
        println!("{verb} device {} of {}.", d.device_id, d.key_id);
        print!("{}", device_table(std::slice::from_ref(&d)));
    }
    Ok(ExitCode::SUCCESS)
}

fn device_table(devices: &[DeviceRecord]) -> String {
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.device_id.clone(),
                d.name.clone().unwrap_or_else(|| "-".into()),
                d.status.as_str().into(),
                d.trust_level.as_str().to_owned(),
                format!("{:.2}", d.trust_score),
                if d.approved { "yes" } else { "no" }.into(),
                match &d.attestation {
                    Some(a) => match &a.security_level {
                        Some(level) => format!("{} ({level})", a.format),
                        None => a.format.clone(),
                    },
                    None => "-".into(),
                },
                output::time(Some(d.created_at)),
                output::time(Some(d.last_seen_at)),
            ]
        })
        .collect();
    output::table(
        &[
            "DEVICE_ID",
            "NAME",
            "STATUS",
            "TRUST",
            "SCORE",
            "APPROVED",
            "ATTESTED",
            "ENROLLED",
            "LAST_SEEN",
        ],
        &rows,
    )
}
