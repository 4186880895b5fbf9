//! The token exchange (contract 3.1) and refresh rotation (contract 3.2), independent of HTTP.
//!
//! The order of checks is deliberate: cheap, storage-free refusals first (key format and
//! checksum, proof signature), then the key record (cached), then the replay store, and
//! device work last, so an attacker without a valid key and a valid proof costs us almost
//! nothing and learns nothing.

mod request;

use std::net::IpAddr;
use std::sync::Arc;

use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq;

pub use request::{DeviceInfo, RefreshRequest, TokenRequest};

use crate::alerts::{AlertKind, network_of};
use crate::devices::trust::{
    self, DeviceHistory, NetworkSignals, TrustDecision, TrustInputs, TrustLevel,
};
use crate::dpop::{self, VerifiedProof};
use crate::error::{Error, Result};
use crate::keys::ApiKey;
use crate::state::AppState;
use crate::store::{DeviceRecord, DeviceStatus, Enrollment, JsonText, KeyRecord, RefreshRecord};
use crate::tokens::{self, AccessClaims, AccessGrant, GrantedTrust};

/// Path of the exchange endpoint (part of every proof's `htu`).
pub const TOKEN_PATH: &str = "/v1/token";
/// Path of the refresh endpoint.
pub const REFRESH_PATH: &str = "/v1/token/refresh";
/// Networks remembered per device.
const MAX_NETWORKS: usize = 16;

/// What the client presented, as the HTTP layer extracted it.
pub struct Presented<'a> {
    /// The API key header value, if any.
    pub api_key: Option<&'a str>,
    /// The `DPoP` header, if exactly one was sent (`Err` if several).
    pub proof: std::result::Result<Option<&'a str>, ()>,
    /// The `Origin` header, if any.
    pub origin: Option<&'a str>,
    /// The client IP (after trusted-proxy resolution).
    pub ip: IpAddr,
    /// Set to the key id once the request is known to come from a valid key (for usage).
    pub key_seen: &'a std::sync::OnceLock<String>,
    /// The path the request was sent to, which the proof's `htu` must name: a refresh comes
    /// to [`REFRESH_PATH`] as JSON (3.2) or to [`TOKEN_PATH`] as an RFC 6749 form (9.1).
    pub path: &'static str,
}

/// The successful answer of both endpoints (contract 3.1).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// The signed access token.
    pub access_token: String,
    /// Always `DPoP`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Granted scopes.
    pub scope: String,
    /// The new refresh token.
    pub refresh_token: String,
    /// Seconds until the refresh token expires.
    pub refresh_expires_in: i64,
    /// The device id.
    pub device_id: String,
    /// The trust decision.
    pub trust: TrustSummary,
}

/// Score and level, as returned to the client.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrustSummary {
    /// 0..1.
    pub score: f64,
    /// `trusted` or `limited`.
    pub level: GrantedTrust,
}

/// `POST /v1/token`.
pub async fn exchange(
    state: &AppState,
    p: Presented<'_>,
    body: TokenRequest,
) -> Result<TokenResponse> {
    let now = crate::state::now();
    body.validate()?;
    let key = authenticate_key(state, p.api_key, now).await?;
    let _ = p.key_seen.set(key.key_id.clone());
    check_allow_lists(&key, p.ip, p.origin)?;
    let proof = verify_proof(state, p.proof, TOKEN_PATH, now, Some(&key.key_id), p.ip).await?;
    // After the proof: a nonce challenge (or a bad proof) must not spend the key's allowance,
    // or a key limited to one exchange a minute could never get a token in nonce mode.
    if state.switches.rate_limits() {
        state
            .key_limits
            .check(&key.key_id, key.rate_limit_per_minute)
            .await?;
    }

    let requested = match &body.scope {
        Some(s) => s.split_whitespace().map(str::to_owned).collect::<Vec<_>>(),
        None => key.scopes.clone(),
    };
    if requested.iter().any(|s| !key.scopes.contains(s)) {
        return Err(Error::InsufficientScope);
    }
    let audience = match &body.audience {
        Some(a) if state.settings.audiences.contains(a) => a.clone(),
        Some(_) => return Err(Error::InvalidAudience),
        None => state.settings.audiences[0].clone(),
    };

    let DeviceInfo {
        name: device_name,
        attributes: presented,
    } = body.device.unwrap_or_default();
    let (device, decision) =
        device_and_trust(state, &key, &proof, presented, device_name, p.ip, now).await?;
    let granted = grant_scopes(&key, &requested, decision.level);
    let device = Arc::new(device);
    // Time-ordered (v7): new families append to the family index instead of landing on a
    // random page of it.
    let family = format!("rf_{}", uuid::Uuid::now_v7().simple());
    issue(
        state, &key, &device, &proof.jkt, &granted, &audience, &decision, family, None, p.ip, now,
    )
    .await
}

/// `POST /v1/token/refresh`.
pub async fn refresh(
    state: &AppState,
    p: Presented<'_>,
    body: RefreshRequest,
) -> Result<TokenResponse> {
    let now = crate::state::now();
    let proof = verify_proof(state, p.proof, p.path, now, None, p.ip).await?;
    if !tokens::is_well_formed_refresh_token(&body.refresh_token) {
        return Err(Error::InvalidRefreshToken);
    }
    let hash = tokens::hash_refresh_token(&body.refresh_token);
    let old = state
        .store
        .get_refresh(&hash)
        .await?
        .ok_or(Error::InvalidRefreshToken)?;
    // A token bound to another device key is useless to whoever stole it: refuse it as
    // unknown, and do not let the thief burn the family (the owner keeps their session).
    if !bool::from(old.jkt.as_bytes().ct_eq(proof.jkt.as_bytes())) || old.revoked_at.is_some() {
        return Err(Error::InvalidRefreshToken);
    }
    if old.spent_at.is_some() {
        return Err(reuse_detected(state, &old, p.ip, now).await);
    }
    if old.expires_at <= now {
        return Err(Error::InvalidRefreshToken);
    }
    let key = state
        .cache
        .key(&old.key_id)
        .await?
        .ok_or(Error::InvalidApiKey)?;
    if !key.usable_at(now) {
        return Err(Error::InvalidApiKey);
    }
    check_allow_lists(&key, p.ip, p.origin)?;
    let device = state
        .cache
        .device(&old.key_id, &old.jkt)
        .await?
        .ok_or(Error::InvalidRefreshToken)?;
    if device.status == DeviceStatus::Revoked {
        return Err(Error::DeviceRevoked);
    }
    // The fingerprint was checked at the exchange; a refresh re-scores history and network.
    let stored = device.attributes.clone();
    let (device, decision) =
        score_and_record(state, &key, (*device).clone(), &stored, false, p.ip, now)?;
    let scope: Vec<String> = old.scope.split_whitespace().map(str::to_owned).collect();
    let granted = grant_scopes(&key, &scope, decision.level);
    let device = Arc::new(device);
    issue(
        state,
        &key,
        &device,
        &proof.jkt,
        &granted,
        &old.audience,
        &decision,
        old.family_id.clone(),
        Some(&old),
        p.ip,
        now,
    )
    .await
}

/// Spent token presented again: the family is compromised (RFC 9700 section 4.14.2).
async fn reuse_detected(state: &AppState, old: &RefreshRecord, ip: IpAddr, now: i64) -> Error {
    if let Err(e) = state.store.revoke_refresh_family(&old.family_id, now).await {
        return e;
    }
    state.alerts.raise(
        AlertKind::RefreshTokenReused,
        Some(&old.key_id),
        Some(&old.device_id),
        Some(ip),
        json!({"family_id": old.family_id}),
    );
    Error::RefreshTokenReused
}

/// Parses and checks the API key. Unknown ids and wrong secrets do the same work: a hash
/// compared in constant time (against a fixed dummy for unknown ids), one cache lookup, and
/// one storage read.
async fn authenticate_key(
    state: &AppState,
    presented: Option<&str>,
    now: i64,
) -> Result<Arc<KeyRecord>> {
    let presented = presented.ok_or(Error::MissingApiKey)?;
    let key = ApiKey::parse(presented.trim()).map_err(|_| Error::InvalidApiKey)?;
    let (record, cached) = state.cache.key_and_source(key.id().as_str()).await?;
    let hash = key.secret_hash();
    const DUMMY: [u8; 32] = [0x5a; 32];
    let stored: &[u8] = record.as_deref().map_or(&DUMMY[..], |r| &r.secret_hash[..]);
    let matches = bool::from(hash.ct_eq(stored)) & record.is_some();
    match record {
        Some(r) if matches && r.usable_at(now) => {
            state.touch_key(&r.key_id, now);
            Ok(r)
        }
        // The right secret of a suspended, revoked or expired key: not a guess.
        Some(_) if matches => Err(Error::InvalidApiKey),
        _ => {
            state.cache.pay_for_refusal(cached).await;
            // Wrong secrets for one id from anywhere (a botnet spreads over IPs) spend its
            // budget, at the same fixed cost for unknown and real ids (see KeyIdFailures).
            let id = key.id().as_str();
            if !state.key_failures.record(id).await? {
                if let Some(r) = &record {
                    // Alert for real keys only: made-up ids are noise, not a target.
                    state.alerts.raise_once(
                        AlertKind::FailureBurst,
                        &r.key_id,
                        Some(&r.key_id),
                        None,
                        json!({"scope": "key_id", "budget_per_minute": state.settings.key_failure_budget}),
                    );
                }
                let budget = u64::from(state.settings.key_failure_budget.max(1));
                return Err(Error::KeyIdBudgetSpent {
                    retry_after_secs: (60 / budget).max(1),
                });
            }
            Err(Error::InvalidApiKey)
        }
    }
}

fn check_allow_lists(key: &KeyRecord, ip: IpAddr, origin: Option<&str>) -> Result<()> {
    if !key.allowed_ips.is_empty()
        && !key
            .allowed_ips
            .iter()
            .filter_map(|c| c.parse::<ipnet::IpNet>().ok())
            .any(|n| n.contains(&ip))
    {
        return Err(Error::IpNotAllowed);
    }
    // No Origin header: not a browser, and the origin list restricts browsers only.
    if let Some(origin) = origin
        && !key.allowed_origins.is_empty()
    {
        let o = origin.trim_end_matches('/').to_ascii_lowercase();
        if !key.allowed_origins.contains(&o) {
            return Err(Error::OriginNotAllowed);
        }
    }
    Ok(())
}

/// Verifies the proof, the nonce when required, and that its `jti` is new.
async fn verify_proof(
    state: &AppState,
    proof: std::result::Result<Option<&str>, ()>,
    path: &str,
    now: i64,
    key_id: Option<&str>,
    ip: IpAddr,
) -> Result<VerifiedProof> {
    let proof = match proof {
        Ok(Some(p)) => p,
        Ok(None) => return Err(Error::InvalidDpopProof("the DPoP header is missing".into())),
        Err(()) => {
            return Err(Error::InvalidDpopProof(
                "exactly one DPoP header is allowed".into(),
            ));
        }
    };
    let htu = format!("{}{}", state.settings.issuer, path);
    let verified = dpop::verify_proof(proof, "POST", &htu, now, &state.dpop_options)
        .map_err(|e| Error::InvalidDpopProof(e.to_string()))?;
    if state.settings.require_dpop_nonce
        && !verified
            .nonce
            .as_deref()
            .is_some_and(|n| state.nonces.is_valid(n, now))
    {
        return Err(Error::UseDpopNonce {
            nonce: state.nonces.issue(now),
        });
    }
    let fresh = state
        .replay
        .first_seen(&verified.replay_key(), state.dpop_options.replay_ttl())
        .await
        .map_err(Error::unavailable)?;
    if !fresh {
        state.alerts.raise(
            AlertKind::DpopReplay,
            key_id,
            None,
            Some(ip),
            json!({"jkt": verified.jkt}),
        );
        return Err(Error::DpopReplay);
    }
    Ok(verified)
}

/// Finds or enrolls the device, scores it and records the exchange in its history.
async fn device_and_trust(
    state: &AppState,
    key: &KeyRecord,
    proof: &VerifiedProof,
    presented: trust::Attributes,
    name: Option<String>,
    ip: IpAddr,
    now: i64,
) -> Result<(DeviceRecord, TrustDecision)> {
    let (device, is_new) = match state.cache.device(&key.key_id, &proof.jkt).await? {
        Some(d) => ((*d).clone(), false),
        None => {
            let d = DeviceRecord {
                device_id: format!("dev_{}", uuid::Uuid::now_v7().simple()),
                key_id: key.key_id.clone(),
                jkt: proof.jkt.clone(),
                name,
                attributes: presented.clone(),
                status: DeviceStatus::Active,
                approved: false,
                created_at: now,
                last_seen_at: now,
                exchange_count: 0,
                mismatch_count: 0,
                mismatch_fingerprint: None,
                networks: vec![],
                trust_score: 0.0,
                trust_level: "limited".into(),
                trust_factors: JsonText::empty_list(),
                revoked_at: None,
            };
            match state.store.enroll_device(&d, key.max_devices).await? {
                Enrollment::Enrolled => {
                    state.alerts.raise(
                        AlertKind::NewDevice,
                        Some(&key.key_id),
                        Some(&d.device_id),
                        Some(ip),
                        json!({"jkt": d.jkt, "attributes": d.attributes}),
                    );
                    (d, true)
                }
                Enrollment::Exists(existing) => (*existing, false),
                Enrollment::LimitReached => return Err(Error::DeviceLimitReached),
            }
        }
    };
    if device.status == DeviceStatus::Revoked {
        return Err(Error::DeviceRevoked);
    }
    score_and_record(state, key, device, &presented, is_new, ip, now)
}

/// Scores a device, remembers the outcome (batched write) and raises the alerts it calls for.
fn score_and_record(
    state: &AppState,
    key: &KeyRecord,
    mut device: DeviceRecord,
    presented: &trust::Attributes,
    is_new: bool,
    ip: IpAddr,
    now: i64,
) -> Result<(DeviceRecord, TrustDecision)> {
    let network = network_of(ip);
    let seen = device.networks.contains(&network);
    let decision = trust::evaluate(&TrustInputs {
        stored: &device.attributes,
        presented,
        history: DeviceHistory::of(
            device.exchange_count,
            device.created_at,
            device.mismatch_count,
            now,
        ),
        network: NetworkSignals::of(&device.networks, &network, is_new),
        trust_on_enroll: key.trust_on_enroll,
        approved: device.approved,
        is_new,
    });
    if decision.stable_mismatch {
        // Counted and alerted once per mismatching fingerprint (see `is_new_mismatch`); the
        // recorded attributes stay the reference either way.
        if decision.count_mismatch(&mut device.mismatch_count, &mut device.mismatch_fingerprint) {
            state.alerts.raise(
                AlertKind::FingerprintMismatch,
                Some(&key.key_id),
                Some(&device.device_id),
                Some(ip),
                json!({"mismatched": decision.mismatched, "score": decision.score}),
            );
        }
    } else if presented
        .iter()
        .any(|(k, v)| device.attributes.get(k) != Some(v))
    {
        // Accepted drift (an OS or app update) becomes the new baseline. (Checked first: on
        // almost every exchange nothing changed, and rebuilding the map is not free.)
        device
            .attributes
            .extend(presented.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if !seen {
        if !is_new && !device.networks.is_empty() {
            state.alerts.raise(
                AlertKind::NewNetwork,
                Some(&key.key_id),
                Some(&device.device_id),
                Some(ip),
                json!({"network": network}),
            );
        }
        device.networks.push(network.clone());
        if device.networks.len() > MAX_NETWORKS {
            device.networks.remove(0);
        }
    }
    device.trust_score = decision.score;
    device.trust_level = decision.level.as_str().into();
    device.trust_factors = JsonText::of(&decision.factors);
    device.last_seen_at = now;
    if decision.level == TrustLevel::Denied {
        state.record_device(device);
        return Err(Error::DeviceUntrusted);
    }
    device.exchange_count += 1;
    state
        .alerts
        .observe_exchange(&key.key_id, &device.device_id, &network, now);
    Ok((device, decision))
}

/// The scopes a device gets: all requested ones when trusted; when limited, only those in
/// the key's limited set (default: its `read:` scopes).
fn grant_scopes(key: &KeyRecord, requested: &[String], level: TrustLevel) -> Vec<String> {
    match level {
        TrustLevel::Trusted => requested.to_vec(),
        _ => {
            let allowed = key
                .limited_scopes
                .clone()
                .unwrap_or_else(|| trust::limited_scopes_default(&key.scopes));
            requested
                .iter()
                .filter(|s| allowed.contains(s))
                .cloned()
                .collect()
        }
    }
}

/// Signs the access token and makes the refresh token durable before answering.
#[allow(clippy::too_many_arguments)]
async fn issue(
    state: &AppState,
    key: &KeyRecord,
    device: &Arc<DeviceRecord>,
    jkt: &str,
    scopes: &[String],
    audience: &str,
    decision: &TrustDecision,
    family_id: String,
    spent: Option<&RefreshRecord>,
    ip: IpAddr,
    now: i64,
) -> Result<TokenResponse> {
    let granted = GrantedTrust::try_from(decision.level).map_err(|_| Error::DeviceUntrusted)?;
    let scope = scopes.join(" ");
    let claims = AccessClaims::new(
        &AccessGrant {
            issuer: &state.settings.issuer,
            key_id: &key.key_id,
            audience,
            scope: &scope,
            jkt,
            device_id: &device.device_id,
            trust: granted,
            ttl_seconds: state.settings.access_ttl_secs as u64,
        },
        now as u64,
    );
    let access_token = claims.sign(&state.keyring.active());
    let (refresh_plain, refresh_hash) = tokens::new_refresh_token();
    let record = RefreshRecord {
        token_hash: refresh_hash.to_vec(),
        family_id,
        key_id: key.key_id.clone(),
        device_id: device.device_id.clone(),
        jkt: jkt.to_owned(),
        scope: scope.clone(),
        audience: audience.to_owned(),
        issued_at: now,
        expires_at: now + state.settings.refresh_ttl_secs,
        spent_at: None,
        revoked_at: None,
    };
    // The refresh token and the device's history are written together (the store batches
    // concurrent writes into one transaction) and are durable before we answer.
    let write_refresh = async {
        match spent {
            None => state.store.insert_refresh(&record).await.map(|()| true),
            Some(old) => {
                state
                    .store
                    .rotate_refresh(&old.token_hash, &record, now)
                    .await
            }
        }
    };
    let rotated = if state.switches.writes() {
        tokio::try_join!(
            write_refresh,
            state.store.update_device_usage(device.clone())
        )?
        .0
    } else {
        // `keybound bench --overhead` only: what the exchange costs without durability.
        true
    };
    if let (false, Some(old)) = (rotated, spent) {
        // Lost a race with another presentation of the same token: that is reuse.
        return Err(reuse_detected(state, old, ip, now).await);
    }
    Ok(TokenResponse {
        access_token,
        token_type: "DPoP",
        expires_in: claims.expires_in(),
        scope,
        refresh_token: refresh_plain.expose_secret().to_owned(),
        refresh_expires_in: state.settings.refresh_ttl_secs,
        device_id: device.device_id.clone(),
        trust: TrustSummary {
            score: decision.score,
            level: granted,
        },
    })
}
