//! The application state shared by every handler: one struct of `Arc`s, built once at start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::alerts::containment::Containment;
use crate::alerts::webhook::{Webhook, WebhookConfig};
use crate::alerts::{Alerts, Thresholds};
use crate::cluster::RedisLink;
use crate::config::{Profile, ServeArgs};
use crate::dpop::{NonceIssuer, VerifyOptions};
use crate::error::{Error, Result};
use crate::limits::{Backend, FailureBudget, IpFailures, KeyIdFailures, KeyLimits, RedisGcra};
use crate::replay::{MemoryReplayStore, RedisReplayStore, ReplayStore};
use crate::store::cached::CachedStore;
use crate::store::{DeviceRecord, Store};
use crate::tokens::keyring::{self, KeyRing};
use crate::usage::UsageRecorder;

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
    /// Wrong secrets per minute per key id.
    pub key_failure_budget: u32,
    /// Deployment profile.
    pub profile: Profile,
    /// Days usage events are kept.
    pub usage_retention_days: i64,
    /// Serve the benchmark-only routes (`--bench-routes`).
    pub bench_routes: bool,
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
            key_failure_budget: args.key_failure_budget,
            profile: args.profile,
            usage_retention_days: args.usage_retention_days,
            bench_routes: args.bench_routes,
        }
    }
}

/// Everything a handler may need: one `Arc`, so the clone axum makes for every request is
/// one reference count, not one per service. Its fields are [`Services`]'.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What [`AppState`] holds.
pub struct Services {
    /// Immutable settings.
    pub settings: Arc<Settings>,
    /// Storage, through the validation cache (the same object as `cache`).
    pub store: Arc<dyn Store>,
    /// The validation cache, for `Arc` reads on the token path.
    pub cache: Arc<CachedStore>,
    /// SHA-256 of the admin token; `None` turns the admin API off (404).
    pub admin_token_hash: Option<[u8; 32]>,
    /// SHA-256 of each `--introspection-token` (contract 9.4).
    pub introspection_token_hashes: Vec<[u8; 32]>,
    /// Signing keys.
    pub keyring: Arc<KeyRing>,
    /// Seen DPoP proofs.
    pub replay: Arc<dyn ReplayStore>,
    /// The shared Redis connection in cluster mode (`--redis-url`), for `/readyz`.
    pub redis: Option<Arc<RedisLink>>,
    /// Server nonces (RFC 9449 section 8).
    pub nonces: Arc<NonceIssuer>,
    /// DPoP proof checks.
    pub dpop_options: Arc<VerifyOptions>,
    /// Per-key request rates.
    pub key_limits: Arc<KeyLimits>,
    /// Per-IP failure budgets.
    pub failures: Arc<IpFailures>,
    /// Per-key-id failure budgets (wrong secrets for one id, from anywhere).
    pub key_failures: Arc<KeyIdFailures>,
    /// Anomaly alerts.
    pub alerts: Arc<Alerts>,
    /// Usage events, written in batches.
    pub usage: UsageRecorder,
    /// `last_used_at` updates waiting for the next batch.
    touched: Arc<Mutex<HashMap<String, i64>>>,
    /// Benchmark switches; only the `--bench-routes` route turns anything off.
    pub switches: Switches,
}

/// What `keybound bench --overhead` turns off to measure its cost, through the bench-only
/// route `PUT /bench/switches` (so only on a server started with `--bench-routes`). All are
/// on in every other server, and nothing else can change them.
#[derive(Debug)]
pub struct Switches {
    rate_limits: AtomicBool,
    usage: AtomicBool,
    writes: AtomicBool,
}

impl Default for Switches {
    fn default() -> Self {
        Switches {
            rate_limits: AtomicBool::new(true),
            usage: AtomicBool::new(true),
            writes: AtomicBool::new(true),
        }
    }
}

impl Switches {
    /// Whether the per-key rate and the per-IP failure budget are checked.
    pub fn rate_limits(&self) -> bool {
        self.rate_limits.load(Ordering::Relaxed)
    }

    /// Whether usage events are recorded.
    pub fn usage(&self) -> bool {
        self.usage.load(Ordering::Relaxed)
    }

    /// Whether an exchange or refresh writes its refresh token and the device's history
    /// before answering. Off, the answer's refresh token is never stored (so it cannot be
    /// refreshed): only `--overhead` turns it off, to measure what durability costs.
    pub fn writes(&self) -> bool {
        self.writes.load(Ordering::Relaxed)
    }

    /// Sets all three (bench route only).
    pub fn set(&self, rate_limits: bool, usage: bool, writes: bool) {
        self.rate_limits.store(rate_limits, Ordering::Relaxed);
        self.usage.store(usage, Ordering::Relaxed);
        self.writes.store(writes, Ordering::Relaxed);
    }
}

impl AppState {
    /// Builds the state from arguments and an opened store: loads (or creates) the signing
    /// key, connects the replay store, and starts the background bookkeeping tasks.
    pub async fn build(args: &ServeArgs, store: Arc<dyn Store>) -> Result<AppState> {
        let settings = Arc::new(Settings::from_args(args));
        let cache = Arc::new(CachedStore::new(store, args.cache_capacity));
        let store: Arc<dyn Store> = cache.clone();
        let master = keyring::master_key(
            args.master_key.as_ref(),
            &args.master_key_file,
            args.profile == Profile::Prod,
        )?;
        let keyring = Arc::new(KeyRing::load(&*store, master, now()).await?);
        let redis = match &args.redis_url {
            Some(url) => Some(Arc::new(
                RedisLink::connect(url).await.map_err(Error::unavailable)?,
            )),
            None => None,
        };
        let (replay, limits): (Arc<dyn ReplayStore>, Backend) = match &redis {
            Some(link) => {
                crate::store::broadcast::spawn_on(cache.clone(), link);
                (
                    Arc::new(RedisReplayStore::from_manager(link.manager())),
                    Backend::Redis(RedisGcra::from_manager(link.manager())),
                )
            }
            None => (Arc::new(MemoryReplayStore::new()), Backend::Local),
        };
        // Derived from the master key, so a nonce issued by one instance is valid on all.
        let nonce_secret = keyring.derive("keybound/dpop-nonce/v1");
        let usage = UsageRecorder::start(store.clone());
        let state = AppState(Arc::new(Services {
            dpop_options: Arc::new(VerifyOptions {
                iat_leeway_secs: settings.dpop_iat_window_secs,
                ..VerifyOptions::default()
            }),
            key_limits: Arc::new(KeyLimits::new(limits.clone(), args.cache_capacity)),
            failures: Arc::new(FailureBudget::new(
                limits.clone(),
                "keybound:fail:ip",
                settings.ip_failure_budget,
                args.cache_capacity,
            )),
            key_failures: Arc::new(KeyIdFailures::new(limits, settings.key_failure_budget)),
            alerts: Arc::new(
                Alerts::new(
                    store.clone(),
                    Thresholds {
                        usage_spike_per_minute: args.usage_spike_per_minute,
                        many_per_hour: args.many_per_hour,
                    },
                )
                .with_webhook(webhook(args)?)
                .with_containment(Containment::new(store.clone(), &args.auto_suspend_on)),
            ),
            nonces: Arc::new(NonceIssuer::new(&nonce_secret)),
            settings,
            store,
            cache,
            admin_token_hash: args.admin_token.as_ref().map(hash_token),
            introspection_token_hashes: args.introspection_tokens.iter().map(hash_token).collect(),
            keyring,
            replay,
            redis,
            usage,
            touched: Arc::default(),
            switches: Switches::default(),
        }));
        state.spawn_background();
        Ok(state)
    }

    /// Notes that a key was used; written in batches by a background task.
    pub fn touch_key(&self, key_id: &str, at: i64) {
        let mut t = self.touched.lock().expect("not poisoned");
        // Allocate the key only the first time it is used in a batch.
        match t.get_mut(key_id) {
            Some(last) => *last = at,
            None => {
                t.insert(key_id.to_owned(), at);
            }
        }
    }

    /// Saves a device's history without holding up the response (used on refusals, where
    /// nothing is issued; successful exchanges write it before answering).
    pub fn record_device(&self, device: DeviceRecord) {
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.update_device_usage(Arc::new(device)).await {
                tracing::warn!(error = %e, "could not record device usage");
            }
        });
    }

    fn spawn_background(&self) {
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            let mut last_purge = 0;
            loop {
                tick.tick().await;
                state.flush_touched().await;
                if let Err(e) = state.keyring.reload(&*state.store).await {
                    tracing::warn!(error = %e, "could not reload signing keys");
                }
                let t = now();
                if t - last_purge >= 3600 {
                    last_purge = t;
                    let retention = state.settings.usage_retention_days * 86_400;
                    match state.store.purge_usage(t - retention).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(events = n, "purged old usage events"),
                        Err(e) => tracing::warn!(error = %e, "could not purge usage events"),
                    }
                    match state.store.purge_expired_keys(t - PURGE_AFTER_EXPIRY).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(keys = n, "purged expired keys"),
                        Err(e) => tracing::warn!(error = %e, "could not purge expired keys"),
                    }
                    match state
                        .store
                        .purge_expired_refresh(t - REFRESH_PURGE_AFTER_EXPIRY)
                        .await
                    {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(tokens = n, "purged expired refresh tokens"),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not purge expired refresh tokens")
                        }
                    }
                }
            }
        });
    }

    /// Writes the pending `last_used_at` batch.
    pub async fn flush_touched(&self) {
        let batch: Vec<(String, i64)> = {
            let mut t = self.touched.lock().expect("not poisoned");
            t.drain().collect()
        };
        if !batch.is_empty()
            && let Err(e) = self.store.touch_keys(&batch).await
        {
            tracing::warn!(error = %e, "could not record key usage");
        }
    }
}

/// Default wrong secrets per minute for one key id, from all IPs together, before a
/// failure-burst alert (`--key-failure-budget`). Only wrong secrets are refused once it is spent: refusing the right secret too would
/// let anyone who knows a key id (it is every token's `sub`) lock its owner out.
pub const KEY_FAILURE_BUDGET: u32 = 10;

/// Expired keys are kept this long (for the audit trail and support questions), then purged.
pub const PURGE_AFTER_EXPIRY: i64 = 30 * 86_400;

/// Expired refresh tokens are kept this long, then purged (hourly). Until then a spent one
/// presented again is still recognised as reuse and revokes its family; after that it is just
/// unknown (`INVALID_REFRESH_TOKEN`), which refuses it all the same.
pub const REFRESH_PURGE_AFTER_EXPIRY: i64 = 7 * 86_400;

/// Starts the alert webhook when `--alert-webhook` is set.
fn webhook(args: &ServeArgs) -> Result<Option<Webhook>> {
    let Some(url) = &args.alert_webhook else {
        return Ok(None);
    };
    if args.alert_webhook_secret.is_none() {
        tracing::warn!("--alert-webhook without a secret: deliveries are not signed");
    }
    WebhookConfig::new(url, args.alert_webhook_secret.clone())
        .and_then(Webhook::start)
        .map(Some)
        .map_err(Error::InvalidRequest)
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
