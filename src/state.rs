//! The application state shared by every handler: one struct of `Arc`s, built once at start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::alerts::containment::Containment;
use crate::alerts::webhook::{Webhook, WebhookConfig, WebhookSecret};
use crate::alerts::{Alerts, Thresholds};
use crate::cluster::RedisLink;
use crate::config::{Profile, ServeArgs};
use crate::dpop::{NonceIssuer, VerifyOptions};
use crate::error::{Error, Result};
use crate::exchange::challenge::Challenges;
use crate::limits::{Backend, IpFailures, KeyIdFailures, KeyLimits, RedisGcra};
use crate::replay::{MemoryReplayStore, RedisReplayStore, ReplayStore};
use crate::store::cached::CachedStore;
use crate::store::{DeviceRecord, Store};
use crate::tokens::keyring::{self, KeyRing};
use crate::tokens::refresh::RefreshSealer;
use crate::tokens::status_list::StatusLists;
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
    /// Days usage events are kept.
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
    /// Per-device refresh rates (the same buckets, another namespace).
    pub device_limits: Arc<KeyLimits>,
    /// Per-IP budget of `USE_DPOP_NONCE` answers (issue 15, item 7).
    pub nonce_challenges: Arc<IpFailures>,
    /// Seals and opens refresh tokens (a key derived from the master key).
    pub refresh_sealer: Arc<RefreshSealer>,
    /// Per-IP failure budgets.
    pub failures: Arc<IpFailures>,
    /// Per-key-id failure budgets (wrong secrets for one id, from anywhere).
    pub key_failures: Arc<KeyIdFailures>,
    /// Per-IP budgets of wrong admin tokens.
    pub admin_failures: Arc<IpFailures>,
    /// Anomaly alerts.
    pub alerts: Arc<Alerts>,
    /// Usage events, written in batches.
    pub usage: UsageRecorder,
    /// `last_used_at` updates waiting for the next batch.
    touched: Arc<Mutex<HashMap<String, i64>>>,
    /// Whether storage answered the last probe (see [`STORAGE_PROBE_INTERVAL`]).
    storage_up: Arc<AtomicBool>,
    /// Benchmark switches: all on, except in a server `keybound-bench` starts itself.
    pub switches: Switches,
    /// The token status lists (contract section 10).
    pub status_lists: Arc<StatusLists>,
    /// Platform attestation checks (contract section 8), with their roots parsed once.
    pub verifier: Arc<crate::attestation::Verifier>,
    /// Attestation challenges.
    pub challenges: Challenges,
}

/// What `keybound bench --overhead` turns off to measure its cost, through `PUT
/// /bench/switches`, a route only the load generator's own loopback server has
/// (`keybound-bench`, which calls [`Switches::set`]). `keybound serve` has no route or flag
/// that reaches them: they stay on.
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

    /// Whether a refresh advances its family (durably, before answering) and the token path
    /// queues the device's history. Off, a refresh spends nothing (its token stays live): only
    /// `--overhead` turns it off, to measure what durability costs.
    pub fn writes(&self) -> bool {
        self.writes.load(Ordering::Relaxed)
    }

    /// Sets all three (the load generator's route only).
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
        // Before anything else touches keys or the audit log: on the first start with this
        // version this wraps every key hash and starts the MAC'd audit chain (crate::integrity).
        crate::integrity::load_or_enable(&*store, &master, now()).await?;
        let keyring = Arc::new(KeyRing::load(&*store, master, now()).await?);
        let redis = match &args.redis_url {
            Some(url) => Some(Arc::new(
                RedisLink::connect(url.as_str())
                    .await
                    .map_err(Error::unavailable)?,
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
        let status_lists = Arc::new(StatusLists::new(
            store.clone(),
            cache.clone(),
            keyring.clone(),
            settings.issuer.clone(),
            args.status_list_ttl_seconds,
        ));
        let verifier = Arc::new(attestation_verifier(args)?);
        // Derived from the master key too: any instance checks any instance's challenges.
        let challenges = Challenges::new(&keyring.derive("keybound/attestation-challenge/v1"));
        let state = AppState(Arc::new(Services {
            dpop_options: Arc::new(VerifyOptions {
                iat_leeway_secs: settings.dpop_iat_window_secs,
                ..VerifyOptions::default()
            }),
            key_limits: Arc::new(KeyLimits::new(limits.clone(), args.cache_capacity)),
            device_limits: Arc::new(KeyLimits::with_prefix(
                limits.clone(),
                "keybound:rate:device",
                args.cache_capacity,
            )),
            nonce_challenges: Arc::new(IpFailures::new(
                limits.clone(),
                "keybound:nonce:ip",
                settings.nonce_challenge_budget,
                args.cache_capacity,
                settings.ipv6_budget_prefix,
            )),
            refresh_sealer: Arc::new(RefreshSealer::new(
                &keyring.derive(crate::tokens::refresh::REFRESH_KEY_LABEL),
                &keyring.derive(crate::tokens::refresh::GRACE_KEY_LABEL),
            )),
            failures: Arc::new(IpFailures::new(
                limits.clone(),
                "keybound:fail:ip",
                settings.ip_failure_budget,
                args.cache_capacity,
                settings.ipv6_budget_prefix,
            )),
            // In process even in cluster mode: the admin API must keep working through a
            // Redis outage (that is when an operator may need to revoke something), so its
            // budget cannot depend on Redis. Each instance counts its own wrong tokens.
            admin_failures: Arc::new(IpFailures::new(
                Backend::Local,
                "keybound:fail:admin",
                settings.admin_failure_budget,
                args.cache_capacity,
                settings.ipv6_budget_prefix,
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
                .with_shared_windows(
                    redis
                        .as_ref()
                        .map(|link| crate::alerts::shared::SharedWindows::new(link.manager())),
                )
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
            storage_up: Arc::new(AtomicBool::new(true)),
            switches: Switches::default(),
            status_lists,
            verifier,
            challenges,
        }));
        state.spawn_background();
        Ok(state)
    }

    /// The API key check ([`crate::keys::auth`]), with this server's cache and budgets.
    pub fn key_auth(&self) -> crate::keys::KeyAuth<'_> {
        crate::keys::KeyAuth {
            cache: &self.cache,
            failures: &self.key_failures,
            alerts: &self.alerts,
        }
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

    /// Remembers a device's history (counters, last seen, networks, trust) without holding up
    /// the answer: this instance's validation cache sees it at once, storage within
    /// [`DEVICE_FLUSH_INTERVAL`] (and at a graceful shutdown). A crash loses at most that
    /// window of history, never anything a client holds (`docs/design.md`, "Device history").
    pub async fn record_device(&self, device: Arc<DeviceRecord>) {
        if !self.switches.writes() {
            // `keybound bench --overhead` only: what the exchange costs without the write.
            return;
        }
        self.cache.remember_device_usage(device).await;
    }

    /// Writes the queued device histories (one group-commit batch).
    pub async fn flush_devices(&self) {
        let batch = self.cache.take_pending();
        if batch.is_empty() {
            return;
        }
        // Queued together, the writes share one group-commit transaction.
        let store = self.cache.inner_store();
        let writes = batch.into_iter().map(|d| store.update_device_usage(d));
        if let Some(Err(e)) = futures::future::join_all(writes)
            .await
            .into_iter()
            .find(Result::is_err)
        {
            tracing::warn!(error = %e, "could not record device usage");
        }
    }

    /// Drops a device's queued history (after an operator changed the device).
    pub fn forget_device_history(&self, device_id: &str) {
        self.cache.forget_pending(device_id);
    }

    /// What a graceful shutdown writes before the process ends: queued device histories and
    /// key last-use times.
    pub async fn flush_bookkeeping(&self) {
        self.flush_devices().await;
        self.flush_touched().await;
    }

    /// Whether storage is reachable, as the last probe found. An exchange writes nothing, so
    /// with its key and device cached it would not notice an outage by itself; contract 5
    /// wants it to fail closed (503) all the same.
    pub fn storage_up(&self) -> bool {
        self.storage_up.load(Ordering::Relaxed)
    }

    fn spawn_background(&self) {
        // Storage probe: a round trip every 100 ms, answered within a second. Two failures in
        // a row count as down (one slow answer on a loaded machine is not an outage), so a
        // cached exchange fails closed within ~200 ms of storage refusing connections and
        // within ~2 s of it going silent.
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STORAGE_PROBE_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failures = 0u32;
            loop {
                tick.tick().await;
                let probe =
                    tokio::time::timeout(std::time::Duration::from_secs(1), state.store.ping())
                        .await;
                failures = if matches!(probe, Ok(Ok(()))) {
                    0
                } else {
                    failures + 1
                };
                let up = failures < 2;
                if state.storage_up.swap(up, Ordering::Relaxed) != up {
                    tracing::warn!(up, "storage reachability changed");
                }
            }
        });
        // Device history: flushed often, so a crash loses at most this much of it.
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(DEVICE_FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                state.flush_devices().await;
            }
        });
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
            let mut last_purge = 0;
            loop {
                tick.tick().await;
                state.flush_touched().await;
                if state.settings.refresh_reuse_grace_secs > 0 {
                    // Contract 9.2: a sealed successor is kept for its window only.
                    if let Err(e) = state.store.clear_refresh_grace(now()).await {
                        tracing::warn!(error = %e, "could not clear ended grace windows");
                    }
                }
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
                    let retention = state.settings.alert_retention_days * 86_400;
                    match state.store.purge_alerts(t - retention).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(alerts = n, "purged old alerts"),
                        Err(e) => tracing::warn!(error = %e, "could not purge alerts"),
                    }
                    match state.store.purge_expired_keys(t - PURGE_AFTER_EXPIRY).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(keys = n, "purged expired keys"),
                        Err(e) => tracing::warn!(error = %e, "could not purge expired keys"),
                    }
                    match state
                        .store
                        .prune_revocations(t - REVOCATION_FEED_RETENTION)
                        .await
                    {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(entries = n, "pruned old revocation feed entries"),
                        Err(e) => tracing::warn!(error = %e, "could not prune the revocation feed"),
                    }
                    match state
                        .store
                        .purge_expired_refresh(t - REFRESH_PURGE_AFTER_EXPIRY)
                        .await
                    {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(families = n, "purged expired refresh families"),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not purge expired refresh families")
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

/// Revocation feed entries are kept this long: the longest access token lifetime the contract
/// allows (whatever `--access-ttl-seconds` says now, since it may have been longer before a
/// restart) plus an hour of margin for clock skew and slow verifiers. An older entry concerns
/// only tokens that have all expired: a revoked, suspended or expired key gets no new tokens,
/// a revoked device neither. Verifiers that need the current state at once read the status
/// lists (contract section 10).
pub const REVOCATION_FEED_RETENTION: i64 =
    crate::tokens::access::MAX_ACCESS_TTL_SECONDS as i64 + 3600;

/// A refresh family's row is kept this long after its last token expired, then purged
/// (hourly). It cannot matter any more: every token of the family is refused as expired
/// before storage is asked (the row must outlive them, or a purged family's first token would
/// open as never refreshed; `expires_at` is the latest expiry of any of its tokens).
pub const REFRESH_PURGE_AFTER_EXPIRY: i64 = 7 * 86_400;

/// How often storage is probed (see [`AppState::storage_up`]).
pub const STORAGE_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Longest a device's history waits in memory before it is written.
pub const DEVICE_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// The attestation verifier from the `serve` settings; files that cannot be read or parsed
/// stop the start.
fn attestation_verifier(args: &ServeArgs) -> Result<crate::attestation::Verifier> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| Error::InvalidRequest(format!("cannot read {}: {e}", path.display())))
    };
    let extra_roots_pem = args
        .attestation_roots
        .iter()
        .map(|p| read(p))
        .collect::<Result<Vec<_>>>()?;
    let android_revoked_serials = match &args.android_attestation_revocations {
        Some(p) => crate::attestation::parse_android_revocations(&read(p)?).map_err(|e| {
            Error::InvalidRequest(format!(
                "--android-attestation-revocations {}: {e}",
                p.display()
            ))
        })?,
        None => Default::default(),
    };
    crate::attestation::Verifier::new(crate::attestation::Settings {
        apple_app_ids: args.apple_app_ids.clone(),
        allow_development: args.attestation_allow_development,
        android_packages: args.android_packages.clone(),
        android_signing_cert_sha256: args.android_signing_cert_sha256.clone(),
        extra_roots_pem,
        android_revoked_serials,
    })
    .map_err(|e| Error::InvalidRequest(format!("attestation settings: {e}")))
}

/// Starts the alert webhook when `--alert-webhook` is set.
fn webhook(args: &ServeArgs) -> Result<Option<Webhook>> {
    let Some(url) = &args.alert_webhook else {
        return Ok(None);
    };
    if args.alert_webhook_secret.is_empty() {
        tracing::warn!("--alert-webhook without a secret: deliveries are not signed");
    }
    let secrets = args
        .alert_webhook_secret
        .iter()
        .map(WebhookSecret::parse)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(Error::InvalidRequest)?;
    WebhookConfig::new(url.as_str(), secrets)
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
