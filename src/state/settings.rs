//! The `serve` settings the request path reads, derived once from the command line.

use ipnet::IpNet;

use crate::config::{Profile, ServeArgs};
use crate::exchange::Policy;

/// Settings derived from the command line, immutable while serving.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `iss` claim and base of every `htu`, without a trailing slash.
    pub issuer: String,
    /// Allowed audiences; the first is the default.
    pub audiences: Vec<String>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Access token lifetime for trusted devices.
    pub access_ttl_secs: i64,
    /// Refresh token lifetime (idle: each refresh starts it again).
    pub refresh_ttl_secs: i64,
    /// Absolute lifetime of a refresh family, from its exchange.
    pub refresh_family_max_age_secs: i64,
    /// Contract 9.2 grace window; 0 is off.
    pub refresh_reuse_grace_secs: i64,
    /// Refreshes per minute per device.
    pub refresh_rate_per_device: u32,
    /// `USE_DPOP_NONCE` answers per minute per IP.
    pub nonce_challenge_budget: u32,
    /// Whether proofs must carry a server nonce.
    pub require_dpop_nonce: bool,
    /// DPoP `iat` window either side of now.
    pub dpop_iat_window_secs: i64,
    /// Failed authentications per minute per IP.
    pub ip_failure_budget: u32,
    /// Prefix by which IPv6 clients share a per-IP budget.
    pub ipv6_budget_prefix: u8,
    /// Wrong secrets per minute per key id.
    pub key_failure_budget: u32,
    /// Wrong admin tokens per minute per IP.
    pub admin_failure_budget: u32,
    /// Deployment profile.
    pub profile: Profile,
    /// Days usage totals are kept.
    pub usage_retention_days: i64,
    /// Days alerts are kept.
    pub alert_retention_days: i64,
    /// How long a request body may take to arrive (in full, and between chunks).
    pub body_read_timeout: std::time::Duration,
    /// New devices per key per hour (`--enrollments-per-hour`); `None`: the key's
    /// `max_devices`.
    pub enrollments_per_hour: Option<i64>,
    /// How long a limited device must have been unused before a new one may replace it at
    /// `max_devices` (`--stale-device-days`).
    pub stale_device_secs: i64,
}

impl Settings {
    /// Settings from `serve` arguments.
    pub fn from_args(args: &ServeArgs) -> Settings {
        Settings {
            issuer: args.issuer(),
            audiences: args.audiences(),
            trusted_proxies: args.trusted_proxy.clone(),
            access_ttl_secs: args.access_ttl_seconds as i64,
            refresh_ttl_secs: args.refresh_ttl_seconds as i64,
            refresh_family_max_age_secs: args.refresh_family_max_age as i64,
            refresh_reuse_grace_secs: args.refresh_reuse_grace_seconds as i64,
            refresh_rate_per_device: args.refresh_rate_per_device,
            nonce_challenge_budget: args.nonce_challenge_budget,
            require_dpop_nonce: args.require_dpop_nonce,
            dpop_iat_window_secs: args.dpop_iat_window_seconds,
            ip_failure_budget: args.ip_failure_budget,
            ipv6_budget_prefix: args.ipv6_budget_prefix,
            key_failure_budget: args.key_failure_budget,
            admin_failure_budget: args.admin_failure_budget,
            profile: args.profile,
            usage_retention_days: args.usage_retention_days,
            alert_retention_days: args.alert_retention_days,
            body_read_timeout: std::time::Duration::from_secs(args.body_read_timeout_seconds),
            enrollments_per_hour: args.enrollments_per_hour,
            stale_device_secs: args.stale_device_days * 86_400,
        }
    }
}

/// The part the token use cases read.
impl From<&Settings> for Policy {
    fn from(s: &Settings) -> Policy {
        Policy {
            issuer: s.issuer.clone(),
            audiences: s.audiences.clone(),
            access_ttl_secs: s.access_ttl_secs,
            refresh_ttl_secs: s.refresh_ttl_secs,
            refresh_family_max_age_secs: s.refresh_family_max_age_secs,
            refresh_reuse_grace_secs: s.refresh_reuse_grace_secs,
            refresh_rate_per_device: s.refresh_rate_per_device,
            require_dpop_nonce: s.require_dpop_nonce,
            enrollments_per_hour: s.enrollments_per_hour,
            stale_device_secs: s.stale_device_secs,
        }
    }
}
