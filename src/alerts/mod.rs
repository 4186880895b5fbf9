//! Anomaly alerts (contract section 7): raised on the request path, stored for
//! `GET /admin/v1/alerts` and logged as structured events.
//!
//! Raising never blocks or fails a request: the alert is queued for [`writer`], which stores
//! alerts in batches (one transaction each, a bounded queue, drops counted) within
//! milliseconds (the contract allows 1 s). Alerts carry ids, kinds and IPs, never secrets.
//!
//! Two optional reactions hang off [`Alerts::raise`]:
//! * [`webhook`] — every alert POSTed, signed, to `--alert-webhook` from a bounded queue;
//! * [`crate::containment`] — chosen kinds (`--auto-suspend-on`) suspend the key or revoke
//!   the device at once, with an audit row. It acts through key and device lifecycle code, so
//!   it lives outside this module and hangs off [`Alerts`] as a [`Reaction`]: alerts depend on
//!   nothing that authenticates keys, and key authentication may raise alerts.

pub mod shared;
pub mod webhook;
pub mod writer;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moka::sync::Cache;
use serde_json::Value;

use crate::store::{AlertRecord, Store};
use webhook::Webhook;
use writer::AlertWriter;

/// The kinds of anomaly keybound reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// A device key enrolled for the first time.
    NewDevice,
    /// A known device appeared from a network it was not seen on before.
    NewNetwork,
    /// A key's request rate jumped over the spike threshold.
    UsageSpike,
    /// An IP spent its failed-authentication budget.
    FailureBurst,
    /// A DPoP proof was replayed.
    DpopReplay,
    /// A spent refresh token was presented again.
    RefreshTokenReused,
    /// A device key presented different stable fingerprint attributes.
    FingerprintMismatch,
    /// An API key was sent in a URL.
    KeyInUrl,
    /// A scanner reported the key as leaked.
    KeyLeaked,
    /// One key used from unusually many devices or networks.
    ManyDevicesOrNetworks,
    /// A presented platform attestation failed a check (contract section 8).
    AttestationFailed,
    /// A key spent its hourly budget of new device enrollments.
    EnrollmentBurst,
}

impl AlertKind {
    /// Every kind.
    pub const ALL: [AlertKind; 12] = [
        AlertKind::NewDevice,
        AlertKind::NewNetwork,
        AlertKind::UsageSpike,
        AlertKind::FailureBurst,
        AlertKind::DpopReplay,
        AlertKind::RefreshTokenReused,
        AlertKind::FingerprintMismatch,
        AlertKind::KeyInUrl,
        AlertKind::KeyLeaked,
        AlertKind::ManyDevicesOrNetworks,
        AlertKind::AttestationFailed,
        AlertKind::EnrollmentBurst,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::NewDevice => "NEW_DEVICE",
            AlertKind::NewNetwork => "NEW_NETWORK",
            AlertKind::UsageSpike => "USAGE_SPIKE",
            AlertKind::FailureBurst => "FAILURE_BURST",
            AlertKind::DpopReplay => "DPOP_REPLAY",
            AlertKind::RefreshTokenReused => "REFRESH_TOKEN_REUSED",
            AlertKind::FingerprintMismatch => "FINGERPRINT_MISMATCH",
            AlertKind::KeyInUrl => "KEY_IN_URL",
            AlertKind::KeyLeaked => "KEY_LEAKED",
            AlertKind::ManyDevicesOrNetworks => "MANY_DEVICES_OR_NETWORKS",
            AlertKind::AttestationFailed => "ATTESTATION_FAILED",
            AlertKind::EnrollmentBurst => "ENROLLMENT_BURST",
        }
    }

    /// How urgent it is.
    pub fn severity(self) -> &'static str {
        match self {
            AlertKind::NewDevice | AlertKind::NewNetwork => "info",
            AlertKind::UsageSpike
            | AlertKind::FailureBurst
            | AlertKind::ManyDevicesOrNetworks
            | AlertKind::EnrollmentBurst => "warning",
            AlertKind::DpopReplay
            | AlertKind::RefreshTokenReused
            | AlertKind::FingerprintMismatch
            | AlertKind::KeyInUrl
            | AlertKind::KeyLeaked
            | AlertKind::AttestationFailed => "critical",
        }
    }
}

impl std::str::FromStr for AlertKind {
    type Err = String;

    /// Parses a stored name, ignoring case (`KEY_LEAKED`, `key_leaked`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AlertKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown alert kind {s:?}"))
    }
}

/// Thresholds for the rate-based detectors.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Exchanges per minute per key that count as a spike.
    pub usage_spike_per_minute: u64,
    /// Distinct devices or networks per key within an hour that count as "many".
    pub many_per_hour: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            usage_spike_per_minute: 1000,
            many_per_hour: 20,
        }
    }
}

/// One key's in-process anomaly windows, kept together so an exchange looks its key up once.
#[derive(Debug, Default)]
struct Window {
    /// The minute being counted (Unix minutes) and its exchanges, for the spike detector.
    minute: i64,
    count: u64,
    /// When the hour of `devices` and `networks` began: at the key's first exchange after the
    /// last hour ended.
    hour_from: i64,
    /// Distinct device ids and networks seen for the key this hour.
    devices: HashSet<String>,
    networks: HashSet<String>,
}

impl Window {
    /// Counts one exchange at `now` (Unix seconds) by `device_id` from `network`: this minute's
    /// exchanges, and the distinct devices and networks of the hour, after it.
    fn observe(&mut self, device_id: &str, network: &str, now: i64) -> (u64, usize, usize) {
        let minute = now / 60;
        if self.minute != minute {
            (self.minute, self.count) = (minute, 0);
        }
        self.count += 1;
        if now - self.hour_from >= SPREAD_WINDOW_SECS {
            self.hour_from = now;
            self.devices.clear();
            self.networks.clear();
        }
        // Copy the ids only when new to the window: almost every exchange repeats them.
        if !self.devices.contains(device_id) {
            self.devices.insert(device_id.to_owned());
        }
        if !self.networks.contains(network) {
            self.networks.insert(network.to_owned());
        }
        (self.count, self.devices.len(), self.networks.len())
    }
}

/// How long the distinct devices and networks are counted before they start again.
const SPREAD_WINDOW_SECS: i64 = 3600;

/// What else happens when an alert is raised, after it is queued (automatic containment,
/// [`crate::containment::Containment`]). Called on the request path: it must not block.
pub trait Reaction: Send + Sync {
    /// Reacts to `alert` (of kind `kind`).
    fn on_alert(&self, kind: AlertKind, alert: &AlertRecord);
}

/// Raises alerts and runs the windowed detectors.
pub struct Alerts {
    /// Stores alerts in batches.
    writer: AlertWriter,
    thresholds: Thresholds,
    /// Per key: its spike count and the devices and networks of its hour.
    windows: Cache<String, Arc<Mutex<Window>>>,
    /// Kinds already raised for a subject within the quiet period (no alert storms).
    quiet: Cache<(AlertKind, String), ()>,
    /// Where alerts are POSTed, if configured.
    webhook: Option<Webhook>,
    /// The automatic containment policy, if configured.
    containment: Option<Box<dyn Reaction>>,
    /// With `--redis-url`: the windows kept in Redis for the whole cluster, replacing
    /// `windows`.
    shared: Option<shared::SharedWindows>,
}

impl Alerts {
    /// Alerts stored in `store` (starts the writer task: call inside a Tokio runtime).
    pub fn new(store: Arc<dyn Store>, thresholds: Thresholds) -> Alerts {
        Alerts {
            writer: AlertWriter::start(store),
            thresholds,
            // An idle key's windows would start again anyway: dropped after an idle hour.
            windows: Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(SPREAD_WINDOW_SECS as u64))
                .build(),
            quiet: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            webhook: None,
            containment: None,
            shared: None,
        }
    }

    /// Keeps the spike and many-devices/networks windows in Redis, shared by every instance
    /// (`--redis-url`), so the thresholds mean the same behind any number of instances.
    pub fn with_shared_windows(mut self, shared: Option<shared::SharedWindows>) -> Alerts {
        self.shared = shared;
        self
    }

    /// Also POSTs every alert to `webhook`.
    pub fn with_webhook(mut self, webhook: Option<Webhook>) -> Alerts {
        self.webhook = webhook;
        self
    }

    /// Also applies the containment policy to every alert.
    pub fn with_containment(mut self, containment: Option<Box<dyn Reaction>>) -> Alerts {
        self.containment = containment;
        self
    }

    /// Raises an alert: logged now, stored by a background task.
    pub fn raise(
        &self,
        kind: AlertKind,
        key_id: Option<&str>,
        device_id: Option<&str>,
        ip: Option<IpAddr>,
        details: Value,
    ) {
        self.raise_as(kind, kind.severity(), key_id, device_id, ip, details);
    }

    /// [`raise`](Self::raise) with another severity than the kind's usual one (a new device
    /// is news, unless the key already has a trusted one: then it is a warning).
    pub fn raise_as(
        &self,
        kind: AlertKind,
        severity: &'static str,
        key_id: Option<&str>,
        device_id: Option<&str>,
        ip: Option<IpAddr>,
        details: Value,
    ) {
        let alert = AlertRecord {
            id: format!("al_{}", uuid::Uuid::now_v7().simple()),
            at: crate::clock::now(),
            kind: kind.as_str().into(),
            severity: severity.into(),
            key_id: key_id.map(str::to_owned),
            device_id: device_id.map(str::to_owned),
            ip: ip.map(|i| i.to_string()),
            details,
        };
        tracing::warn!(
            target: "keybound::alert",
            alert = %alert.kind,
            severity = %alert.severity,
            key_id = alert.key_id.as_deref().unwrap_or("-"),
            device_id = alert.device_id.as_deref().unwrap_or("-"),
            ip = alert.ip.as_deref().unwrap_or("-"),
            "anomaly detected"
        );
        metrics::counter!("keybound_alerts_total", "kind" => kind.as_str()).increment(1);
        if let Some(webhook) = &self.webhook {
            webhook.send(&alert);
        }
        if let Some(containment) = &self.containment {
            containment.on_alert(kind, &alert);
        }
        self.writer.write(alert);
    }

    /// Waits until every alert raised so far is stored (on shutdown).
    pub async fn flush(&self) {
        self.writer.flush().await;
    }

    /// Raises `kind` for `subject` at most once per minute.
    pub fn raise_once(
        &self,
        kind: AlertKind,
        subject: &str,
        key_id: Option<&str>,
        ip: Option<IpAddr>,
        details: Value,
    ) {
        self.raise_once_with(kind, subject, key_id, ip, || details);
    }

    /// [`raise_once`](Self::raise_once), building the details only when the alert is raised:
    /// a key over its spike threshold passes here on every exchange of that minute.
    fn raise_once_with(
        &self,
        kind: AlertKind,
        subject: &str,
        key_id: Option<&str>,
        ip: Option<IpAddr>,
        details: impl FnOnce() -> Value,
    ) {
        let k = (kind, subject.to_owned());
        if self.quiet.contains_key(&k) {
            return;
        }
        self.quiet.insert(k, ());
        self.raise(kind, key_id, None, ip, details());
    }

    /// Feeds the windowed detectors with one successful exchange. With shared windows, one
    /// Redis round trip off the answer path (a task): the alert lands within milliseconds,
    /// inside the contract's 1 s; should Redis fail, the exchange is not affected and the
    /// windows miss one count.
    pub fn observe_exchange(
        self: &Arc<Self>,
        key_id: &str,
        device_id: &str,
        network: &str,
        now: i64,
    ) {
        if let Some(shared) = &self.shared {
            let (alerts, shared) = (self.clone(), shared.clone());
            let (key_id, device_id, network) =
                (key_id.to_owned(), device_id.to_owned(), network.to_owned());
            tokio::spawn(async move {
                match shared
                    .observe(&key_id, &device_id, &network, now, alerts.thresholds)
                    .await
                {
                    Ok(seen) => alerts.raise_crossed(&key_id, &seen),
                    Err(e) => tracing::warn!(error = %e, "shared anomaly windows unavailable"),
                }
            });
            return;
        }
        self.observe_locally(key_id, device_id, network, now);
    }

    /// Raises what the shared windows say this exchange was the first to cross.
    fn raise_crossed(&self, key_id: &str, seen: &shared::Seen) {
        if seen.spike_crossed {
            self.raise(
                AlertKind::UsageSpike,
                Some(key_id),
                None,
                None,
                serde_json::json!({"exchanges_this_minute": seen.this_minute,
                                   "threshold": self.thresholds.usage_spike_per_minute}),
            );
        }
        if seen.many_crossed {
            self.raise(
                AlertKind::ManyDevicesOrNetworks,
                Some(key_id),
                None,
                None,
                serde_json::json!({"devices_last_hour": seen.devices, "networks_last_hour": seen.networks,
                                   "threshold": self.thresholds.many_per_hour}),
            );
        }
    }

    /// A key's windows, looked up by `&str` first: the key's id is copied only when the entry
    /// is new.
    fn window(&self, key_id: &str) -> Arc<Mutex<Window>> {
        self.windows
            .get(key_id)
            .unwrap_or_else(|| self.windows.get_with(key_id.to_owned(), Default::default))
    }

    /// The in-process windows (no Redis).
    fn observe_locally(&self, key_id: &str, device_id: &str, network: &str, now: i64) {
        let (count, devices, networks) = self
            .window(key_id)
            .lock()
            .expect("no panics while held")
            .observe(device_id, network, now);
        if count > self.thresholds.usage_spike_per_minute {
            self.raise_once_with(AlertKind::UsageSpike, key_id, Some(key_id), None, || {
                serde_json::json!({"exchanges_this_minute": count,
                                   "threshold": self.thresholds.usage_spike_per_minute})
            });
        }
        if devices > self.thresholds.many_per_hour || networks > self.thresholds.many_per_hour {
            self.raise_once_with(
                AlertKind::ManyDevicesOrNetworks,
                key_id,
                Some(key_id),
                None,
                || {
                    serde_json::json!({"devices_last_hour": devices,
                                       "networks_last_hour": networks,
                                       "threshold": self.thresholds.many_per_hour})
                },
            );
        }
    }
}

/// The network an IP belongs to, for "new network" signals: its /24 (IPv4) or /64 (IPv6).
pub fn network_of(ip: IpAddr) -> String {
    let net = match ip {
        IpAddr::V4(_) => ipnet::IpNet::new(ip, 24),
        IpAddr::V6(_) => ipnet::IpNet::new(ip, 64),
    };
    net.map(|n| n.trunc().to_string())
        .unwrap_or_else(|_| ip.to_string())
}

#[cfg(test)]
mod tests {
    use super::Window;

    #[test]
    fn a_window_counts_the_minute_and_the_hour_and_starts_again_after_each() {
        let t0 = 1_800_000_000; // a minute boundary
        let mut w = Window::default();
        assert_eq!(w.observe("dev_a", "198.51.100.0/24", t0), (1, 1, 1));
        assert_eq!(w.observe("dev_a", "198.51.100.0/24", t0 + 10), (2, 1, 1));
        assert_eq!(w.observe("dev_b", "203.0.113.0/24", t0 + 59), (3, 2, 2));
        // A new minute: the spike count starts again, the hour's devices stay.
        assert_eq!(w.observe("dev_c", "203.0.113.0/24", t0 + 60), (1, 3, 2));
        assert_eq!(w.observe("dev_a", "198.51.100.0/24", t0 + 3599), (1, 3, 2));
        // An hour after the window began, devices and networks start again too.
        assert_eq!(w.observe("dev_d", "192.0.2.0/24", t0 + 3600), (1, 1, 1));
        assert_eq!(w.observe("dev_a", "192.0.2.0/24", t0 + 3601), (2, 2, 1));
    }
}
