//! The application state shared by every handler: one struct of `Arc`s, built once at start.
//!
//! What used to live here has moved next to its owner: the clock to [`crate::clock`], the
//! background jobs (storage probe, device-history and `last_used_at` batches, purges) to
//! [`crate::jobs`], retention and budget constants to the modules whose data they govern,
//! the benchmark switches to [`crate::switches`]. This module builds everything once
//! ([`AppState::build`]) and hands each use case the narrow set it needs (the exchange gets
//! an [`exchange::Deps`]).

mod settings;

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::alerts::webhook::{Webhook, WebhookConfig, WebhookSecret};
use crate::alerts::{Alerts, Thresholds};
use crate::cluster::RedisLink;
use crate::config::{Profile, ServeArgs};
use crate::containment::Containment;
use crate::dpop::{NonceIssuer, VerifyOptions};
use crate::error::{Error, Result};
use crate::exchange::{self, challenge::Challenges};
use crate::jobs::{self, Jobs, LastUsed, Retention, StorageHealth};
use crate::limits::{Backend, IpFailures, KeyIdFailures, KeyLimits, RedisGcra};
use crate::replay::{MemoryReplayStore, RedisReplayStore, ReplayStore};
use crate::store::Store;
use crate::store::cached::CachedStore;
use crate::tokens::keyring::{self, KeyRing};
use crate::tokens::refresh::RefreshSealer;
use crate::tokens::status_list::StatusLists;
use crate::usage::UsageRecorder;

/// The clock, re-exported under the path older code (the lab, the load generator) uses; new
/// code imports [`crate::clock`].
pub use crate::clock::now;
/// Re-exported for the lab's timing study; new code imports it from [`crate::limits`].
pub use crate::limits::KEY_FAILURE_BUDGET;
pub use crate::switches::Switches;
pub use settings::Settings;

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
    /// Seals and opens refresh tokens (a key derived from the master key).
    pub refresh_sealer: Arc<RefreshSealer>,
    /// Per-IP failure budgets.
    pub failures: Arc<IpFailures>,
    /// Per-IP budgets of wrong admin tokens.
    pub admin_failures: Arc<IpFailures>,
    /// Anomaly alerts.
    pub alerts: Arc<Alerts>,
    /// Per-minute usage totals, written in batches.
    pub usage: Arc<UsageRecorder>,
    /// Benchmark switches: all on, except in a server `keybound-bench` starts itself.
    pub switches: Arc<Switches>,
    /// The token status lists (contract section 10).
    pub status_lists: Arc<StatusLists>,
    /// Platform attestation checks (contract section 8), with their roots parsed once.
    pub verifier: Arc<crate::attestation::Verifier>,
    /// Attestation challenges (the exchange's, shared with `POST /v1/attestation/challenge`).
    pub challenges: Arc<Challenges>,
    /// What the token exchange, refresh and revocation use (the same objects as above).
    pub exchange: Arc<exchange::Deps>,
    /// `last_used_at` updates waiting for the next batch.
    last_used: Arc<LastUsed>,
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
        let usage = Arc::new(UsageRecorder::default());
        let last_used = Arc::new(LastUsed::default());
        let health = Arc::new(StorageHealth::default());
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
        let refresh_sealer = Arc::new(RefreshSealer::new(
            &keyring.derive(crate::tokens::refresh::REFRESH_KEY_LABEL),
            &keyring.derive(crate::tokens::refresh::GRACE_KEY_LABEL),
        ));
        let alerts = Arc::new(
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
            .with_containment(
                Containment::new(store.clone(), &args.auto_suspend_on)
                    .map(|c| Box::new(c) as Box<dyn crate::alerts::Reaction>),
            ),
        );
        let nonces = Arc::new(NonceIssuer::new(&nonce_secret));
        let switches = Arc::new(Switches::default());
        let challenges = Arc::new(challenges);
        let exchange = Arc::new(exchange::Deps {
            policy: exchange::Policy::from(&*settings),
            store: store.clone(),
            cache: cache.clone(),
            health: health.clone(),
            last_used: last_used.clone(),
            switches: switches.clone(),
            key_limits: Arc::new(KeyLimits::new(limits.clone(), args.cache_capacity)),
            device_limits: Arc::new(KeyLimits::with_prefix(
                limits.clone(),
                "keybound:rate:device",
                args.cache_capacity,
            )),
            key_failures: Arc::new(KeyIdFailures::new(
                limits.clone(),
                settings.key_failure_budget,
            )),
            nonce_challenges: Arc::new(IpFailures::new(
                limits.clone(),
                "keybound:nonce:ip",
                settings.nonce_challenge_budget,
                args.cache_capacity,
                settings.ipv6_budget_prefix,
            )),
            refresh_sealer: refresh_sealer.clone(),
            dpop_options: Arc::new(VerifyOptions {
                iat_leeway_secs: settings.dpop_iat_window_secs,
                ..VerifyOptions::default()
            }),
            proof_keys: Arc::default(),
            proof_signatures: Arc::default(),
            nonces: nonces.clone(),
            replay: replay.clone(),
            alerts: alerts.clone(),
            verifier: verifier.clone(),
            challenges: challenges.clone(),
            keyring: keyring.clone(),
        });
        jobs::spawn(Jobs {
            store: store.clone(),
            cache: cache.clone(),
            keyring: keyring.clone(),
            last_used: last_used.clone(),
            usage: usage.clone(),
            health,
            retention: Retention {
                usage_days: settings.usage_retention_days,
                alert_days: settings.alert_retention_days,
                refresh_grace: settings.refresh_reuse_grace_secs > 0,
            },
        });
        Ok(AppState(Arc::new(Services {
            failures: Arc::new(IpFailures::new(
                limits,
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
            settings,
            store,
            cache,
            admin_token_hash: args.admin_token.as_ref().map(hash_token),
            introspection_token_hashes: args.introspection_tokens.iter().map(hash_token).collect(),
            keyring,
            replay,
            redis,
            nonces,
            refresh_sealer,
            alerts,
            usage,
            switches,
            status_lists,
            verifier,
            challenges,
            exchange,
            last_used,
        })))
    }

    /// The API key check ([`crate::keys::auth`]), with this server's cache and budgets.
    pub fn key_auth(&self) -> crate::keys::KeyAuth<'_> {
        self.exchange.key_auth()
    }

    /// Writes the queued device histories (one group-commit batch).
    pub async fn flush_devices(&self) {
        jobs::flush_devices(&self.cache).await;
    }

    /// Drops a device's queued history (after an operator changed the device).
    pub fn forget_device_history(&self, device_id: &str) {
        self.cache.forget_pending(device_id);
    }

    /// What a graceful shutdown writes before the process ends: queued device histories,
    /// key last-use times and usage totals.
    pub async fn flush_bookkeeping(&self) {
        self.flush_devices().await;
        self.usage.flush(&*self.store).await;
        self.last_used.flush(&*self.store).await;
    }
}

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
