//! The application state shared by every handler: one struct of `Arc`s, built once at start.

use std::sync::Arc;

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::config::{Profile, ServeArgs};
use crate::store::Store;

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
    /// Refresh token lifetime.
    pub refresh_ttl_secs: i64,
    /// Whether proofs must carry a server nonce.
    pub require_dpop_nonce: bool,
    /// DPoP `iat` window either side of now.
    pub dpop_iat_window_secs: i64,
    /// Failed authentications per minute per IP.
    pub ip_failure_budget: u32,
    /// Deployment profile.
    pub profile: Profile,
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
            require_dpop_nonce: args.require_dpop_nonce,
            dpop_iat_window_secs: args.dpop_iat_window_seconds,
            ip_failure_budget: args.ip_failure_budget,
            profile: args.profile,
        }
    }
}

/// Everything a handler may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Immutable settings.
    pub settings: Arc<Settings>,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// SHA-256 of the admin token; `None` turns the admin API off (404).
    pub admin_token_hash: Option<[u8; 32]>,
}

impl AppState {
    /// Builds the state from arguments and an opened store.
    pub fn new(args: &ServeArgs, store: Arc<dyn Store>) -> AppState {
        AppState {
            settings: Arc::new(Settings::from_args(args)),
            store,
            admin_token_hash: args.admin_token.as_ref().map(hash_token),
        }
    }
}

fn hash_token(t: &SecretString) -> [u8; 32] {
    Sha256::digest(t.expose_secret().as_bytes()).into()
}

/// Current unix time in seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
