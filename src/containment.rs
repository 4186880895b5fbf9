//! Automatic containment (`--auto-suspend-on KIND,…`): when an alert of a chosen kind is
//! raised, keybound acts at once instead of waiting for an operator.
//!
//! # The rule
//!
//! * **Device-scoped kinds** — `FINGERPRINT_MISMATCH`, `REFRESH_TOKEN_REUSED` and
//!   `DPOP_REPLAY` — say that one device key is in the wrong hands (a refresh needs a proof
//!   from the bound device key, so a reused refresh token came with that key; a mismatch or a
//!   replayed proof names its device key too). When the alert names an enrolled device (for
//!   `DPOP_REPLAY`: the proof's thumbprint is enrolled under the key), that **device is
//!   revoked** and the key keeps serving its other devices. When no device is known, the key
//!   is suspended instead.
//! * **Key-scoped kinds** — `KEY_LEAKED`, `KEY_IN_URL`, `USAGE_SPIKE`,
//!   `MANY_DEVICES_OR_NETWORKS` — say the key itself is exposed or abused: the **key is
//!   suspended** (reason `auto-suspended: <KIND>`), and an operator resumes it after rotating or
//!   investigating.
//! * `NEW_DEVICE` and `NEW_NETWORK` (normal events) and `FAILURE_BURST` (about an IP, not a key)
//!   cannot be chosen: `--auto-suspend-on` refuses them.
//!
//! Only keys and devices that are still active are touched, so a repeated alert does not
//! write a second audit row. Every action goes through the same service code as an
//! operator's, with actor `system`, so it is in the audit log (and the revocation feed).
//!
//! `KEY_IN_URL` is raised for any checksum-valid key in a URL, and a checksum is no secret:
//! anyone who knows a key id can forge one. So it contains only when the URL carried the real
//! secret (the alert's `details.secret_verified`), otherwise a stranger could suspend any key.
//!
//! Containment trades availability for safety: with `DPOP_REPLAY` or `REFRESH_TOKEN_REUSED`
//! chosen, a client that retries a request with the same proof, or races two refreshes,
//! loses its device. Choose kinds knowing your clients.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::json;

use crate::alerts::{AlertKind, Reaction};
use crate::error::Result;
use crate::keys::service::{self, Actor};
use crate::store::{AlertRecord, AuditEntry, DeviceChange, DeviceStatus, KeyStatus, Store};

/// Parses one `--auto-suspend-on` entry, refusing kinds that cannot be contained.
pub fn parse_kind(s: &str) -> std::result::Result<AlertKind, String> {
    let kind: AlertKind = s.parse()?;
    if can_contain(kind) {
        return Ok(kind);
    }
    let choices: Vec<_> = AlertKind::ALL
        .into_iter()
        .filter(|k| can_contain(*k))
        .map(AlertKind::as_str)
        .collect();
    Err(format!(
        "{} cannot trigger containment (choose among {})",
        kind.as_str(),
        choices.join(", ")
    ))
}

/// Normal events and alerts about an IP have no key or device to contain.
fn can_contain(kind: AlertKind) -> bool {
    !matches!(
        kind,
        AlertKind::NewDevice | AlertKind::NewNetwork | AlertKind::FailureBurst
    )
}

/// Whether `kind` revokes the device (when one is known) rather than suspending the key.
pub fn is_device_scoped(kind: AlertKind) -> bool {
    matches!(
        kind,
        AlertKind::FingerprintMismatch | AlertKind::RefreshTokenReused | AlertKind::DpopReplay
    )
}

/// What containment did about one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The key was suspended.
    SuspendedKey(String),
    /// The device was revoked.
    RevokedDevice(String),
    /// Nothing: no subject, already contained, or not trustworthy enough to act on.
    Nothing,
}

/// The policy: which kinds contain, and the store to act on.
pub struct Containment {
    kinds: HashSet<AlertKind>,
    store: Arc<dyn Store>,
}

impl Containment {
    /// A policy for `kinds`; `None` when the list is empty (containment off).
    pub fn new(store: Arc<dyn Store>, kinds: &[AlertKind]) -> Option<Containment> {
        (!kinds.is_empty()).then(|| Containment {
            kinds: kinds.iter().copied().collect(),
            store,
        })
    }
}

impl Reaction for Containment {
    /// Called by [`Alerts::raise`](crate::alerts::Alerts::raise): contains in a background
    /// task, so the request that raised the alert is not held up.
    fn on_alert(&self, kind: AlertKind, alert: &AlertRecord) {
        if !self.kinds.contains(&kind) {
            return;
        }
        let store = self.store.clone();
        let alert = alert.clone();
        tokio::spawn(async move {
            match contain(&*store, kind, &alert, crate::clock::now()).await {
                Ok(Action::Nothing) => {}
                Ok(action) => tracing::warn!(
                    target: "keybound::alert",
                    alert = %alert.kind,
                    alert_id = %alert.id,
                    ?action,
                    "containment applied"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    alert = %alert.kind,
                    alert_id = %alert.id,
                    "containment failed"
                ),
            }
        });
    }
}

/// Applies the rule in the module docs to one alert of a containing kind.
pub async fn contain(
    store: &dyn Store,
    kind: AlertKind,
    alert: &AlertRecord,
    now: i64,
) -> Result<Action> {
    if kind == AlertKind::KeyInUrl && alert.details["secret_verified"] != json!(true) {
        return Ok(Action::Nothing);
    }
    if is_device_scoped(kind)
        && let Some(device_id) = known_device(store, kind, alert).await?
    {
        return revoke_device(store, kind, alert, &device_id, now).await;
    }
    match &alert.key_id {
        Some(key_id) => suspend_key(store, kind, key_id, now).await,
        None => Ok(Action::Nothing),
    }
}

/// The device an alert is about: named by it, or (for a replayed proof) its thumbprint
/// enrolled under the alert's key.
async fn known_device(
    store: &dyn Store,
    kind: AlertKind,
    alert: &AlertRecord,
) -> Result<Option<String>> {
    if let Some(id) = &alert.device_id {
        return Ok(Some(id.clone()));
    }
    match (kind, &alert.key_id, alert.details["jkt"].as_str()) {
        (AlertKind::DpopReplay, Some(key_id), Some(jkt)) => Ok(store
            .get_device_by_jkt(key_id, jkt)
            .await?
            .map(|d| d.device_id)),
        _ => Ok(None),
    }
}

async fn suspend_key(store: &dyn Store, kind: AlertKind, key_id: &str, now: i64) -> Result<Action> {
    match store.get_key(key_id).await? {
        Some(k) if k.status == KeyStatus::Active => {}
        // Unknown, already suspended or revoked: nothing to do, and no second audit row.
        _ => return Ok(Action::Nothing),
    }
    let reason = format!("auto-suspended: {}", kind.as_str());
    service::set_status(
        store,
        key_id,
        KeyStatus::Suspended,
        Some(&reason),
        &Actor::system(),
        now,
    )
    .await?;
    Ok(Action::SuspendedKey(key_id.to_owned()))
}

async fn revoke_device(
    store: &dyn Store,
    kind: AlertKind,
    alert: &AlertRecord,
    device_id: &str,
    now: i64,
) -> Result<Action> {
    let Some(device) = store.get_device(device_id).await? else {
        return Ok(Action::Nothing);
    };
    if device.status != DeviceStatus::Active {
        return Ok(Action::Nothing);
    }
    let audit = AuditEntry {
        at: now,
        actor: Actor::system().name,
        action: "device.revoke".into(),
        target: Some(device_id.to_owned()),
        ip: None,
        details: json!({
            "key_id": device.key_id,
            "jkt": device.jkt,
            "reason": format!("auto-revoked: {}", kind.as_str()),
            "alert_id": alert.id,
        }),
    };
    store
        .set_device_status(device_id, DeviceChange::Revoke, now, &audit)
        .await?;
    Ok(Action::RevokedDevice(device_id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_containable_kinds_parse() {
        for kind in AlertKind::ALL {
            let ok = parse_kind(kind.as_str()).is_ok();
            let expected = !matches!(
                kind,
                AlertKind::NewDevice | AlertKind::NewNetwork | AlertKind::FailureBurst
            );
            assert_eq!(ok, expected, "{}", kind.as_str());
        }
        assert_eq!(parse_kind("key_leaked"), Ok(AlertKind::KeyLeaked));
        assert!(parse_kind("NO_SUCH_KIND").is_err());
        let err = parse_kind("NEW_DEVICE").unwrap_err();
        assert!(
            err.contains("KEY_LEAKED"),
            "the error lists the choices: {err}"
        );
    }

    #[test]
    fn device_scoped_kinds() {
        let scoped: Vec<_> = AlertKind::ALL
            .into_iter()
            .filter(|k| is_device_scoped(*k))
            .map(AlertKind::as_str)
            .collect();
        assert_eq!(
            scoped,
            [
                "DPOP_REPLAY",
                "REFRESH_TOKEN_REUSED",
                "FINGERPRINT_MISMATCH"
            ]
        );
    }
}
