//! The token exchange (contract 3.1) and refresh rotation (contract 3.2), independent of HTTP.
//!
//! The order of checks is deliberate: cheap, storage-free refusals first (key format and
//! checksum, proof signature), then the key record (cached), then the replay store, and
//! device work last, so an attacker without a valid key and a valid proof costs us almost
//! nothing and learns nothing.

mod request;

use std::net::IpAddr;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq;

pub use request::{DeviceInfo, RefreshRequest, RevokeRequest, TokenRequest};

use crate::alerts::{AlertKind, network_of};
use crate::devices::trust::{
    self, DeviceHistory, NetworkSignals, TrustDecision, TrustInputs, TrustLevel,
};
use crate::dpop::{self, VerifiedProof};
use crate::error::{Error, Result};
use crate::keys::ApiKey;
use crate::state::AppState;
use crate::store::{DeviceRecord, DeviceStatus, Enrollment, FamilyRecord, JsonText, KeyRecord};
use crate::tokens::refresh::RefreshClaims;
use crate::tokens::{AccessClaims, AccessGrant, GrantedTrust};

/// Path of the exchange endpoint (part of every proof's `htu`).
pub const TOKEN_PATH: &str = "/v1/token";
/// Path of the refresh endpoint.
pub const REFRESH_PATH: &str = "/v1/token/refresh";
/// Path of the sign-out endpoint (contract 9.3).
pub const REVOKE_PATH: &str = "/v1/token/revoke";
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
    // Fail closed (contract 5): nothing is issued while storage is unreachable, even though
    // an exchange with a cached key and device would not touch it.
    if !state.storage_up() {
        return Err(Error::unavailable("storage is unreachable"));
    }
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
    let trust = GrantedTrust::try_from(decision.level).map_err(|_| Error::DeviceUntrusted)?;
    // The family's first token is self-contained (generation 0): nothing is stored for it
    // until its first refresh. Family ids are time-ordered (v7), so the rows written then
    // append to the families' index instead of landing on a random page of it.
    let claims = RefreshClaims {
        family_id: format!("rf_{}", uuid::Uuid::now_v7().simple()),
        generation: 0,
        key_id: key.key_id.clone(),
        device_id: device.device_id.clone(),
        jkt: proof.jkt.clone(),
        scope: granted.join(" "),
        audience,
        family_created_at: now,
        issued_at: now,
        expires_at: refresh_expiry(state, now, now),
    };
    let token = state.refresh_sealer.seal(&claims);
    let device = Arc::new(device);
    // History is bookkeeping, flushed in batches off the answer path (docs/design.md).
    state.record_device(device.clone()).await;
    Ok(answer(
        state, &key, &device, &claims, token, &decision, trust, now,
    ))
}

/// `POST /v1/token/refresh`: a plain function of the parsed request, so every request form
/// (the JSON body here, the form-encoded grant of contract 9.1) shares one implementation.
///
/// Order (issue 15, item 7): the proof's signature and the token's seal are checked, and the
/// token's device key compared with the proof's, before anything is stored: a request without
/// this device's key fills neither the replay store nor the alert table. Then the nonce, the
/// replay store, the family's age, the device's refresh rate, the key and device state, and
/// last the one durable write that spends the token.
pub async fn refresh(
    state: &AppState,
    p: Presented<'_>,
    body: RefreshRequest,
) -> Result<TokenResponse> {
    let now = crate::state::now();
    let proof = parse_proof(state, p.proof, p.path, now)?;
    let claims = state
        .refresh_sealer
        .open(&body.refresh_token)
        .ok_or(Error::InvalidRefreshToken)?;
    // A token bound to another device key is useless to whoever stole it: refuse it as
    // unknown, and do not let the thief burn the family (the owner keeps their session) —
    // except inside a grace window, where a just-spent token in other hands is reuse (9.2).
    if !bool::from(claims.jkt.as_bytes().ct_eq(proof.jkt.as_bytes())) {
        return Err(foreign_presentation(state, &claims, p.ip, now).await);
    }
    check_proof(state, &proof, now, Some(&claims.key_id), p.ip).await?;
    if claims.expires_at <= now
        || claims.family_created_at + state.settings.refresh_family_max_age_secs <= now
    {
        return Err(Error::InvalidRefreshToken);
    }
    if state.switches.rate_limits() {
        state
            .device_limits
            .check(
                &claims.device_id,
                i64::from(state.settings.refresh_rate_per_device),
            )
            .await?;
    }
    let key = state
        .cache
        .key(&claims.key_id)
        .await?
        .ok_or(Error::InvalidApiKey)?;
    let _ = p.key_seen.set(key.key_id.clone());
    if !key.usable_at(now) {
        return Err(Error::InvalidApiKey);
    }
    check_allow_lists(&key, p.ip, p.origin)?;
    // Issue 15, item 3: the key's settings now, not at the exchange. An audience taken off
    // the allowed list is refused; scopes the key lost are not granted again.
    if !state.settings.audiences.contains(&claims.audience) {
        return Err(Error::InvalidAudience);
    }
    let device = state
        .cache
        .device(&claims.key_id, &claims.jkt)
        .await?
        .filter(|d| d.device_id == claims.device_id)
        .ok_or(Error::InvalidRefreshToken)?;
    if device.status == DeviceStatus::Revoked {
        return Err(Error::DeviceRevoked);
    }
    // The fingerprint was checked at the exchange; a refresh re-scores history and network.
    let stored = device.attributes.clone();
    let (device, decision) =
        score_and_record(state, &key, (*device).clone(), &stored, false, p.ip, now)?;
    let scope: Vec<String> = claims
        .scope
        .split_whitespace()
        .filter(|s| key.scopes.iter().any(|k| k == s))
        .map(str::to_owned)
        .collect();
    let granted = grant_scopes(&key, &scope, decision.level);
    let trust = GrantedTrust::try_from(decision.level).map_err(|_| Error::DeviceUntrusted)?;
    let successor = RefreshClaims {
        generation: claims.generation + 1,
        scope: granted.join(" "),
        issued_at: now,
        expires_at: refresh_expiry(state, claims.family_created_at, now),
        ..claims.clone()
    };
    let token = state.refresh_sealer.seal(&successor);
    let grace = state.settings.refresh_reuse_grace_secs;
    let next = FamilyRecord {
        family_id: claims.family_id.clone(),
        key_id: claims.key_id.clone(),
        device_id: claims.device_id.clone(),
        jkt: claims.jkt.clone(),
        generation: successor.generation,
        created_at: claims.family_created_at,
        rotated_at: now,
        expires_at: successor.expires_at,
        revoked_at: None,
        grace_token: (grace > 0).then(|| {
            state
                .refresh_sealer
                .seal_successor(&claims.family_id, token.expose_secret())
        }),
        grace_until: (grace > 0).then_some(now + grace),
    };
    // The one durable write of a refresh, before the answer. `keybound bench --overhead`
    // alone turns it off, to measure what durability costs.
    let advanced = !state.switches.writes()
        || state
            .store
            .advance_refresh_family(claims.generation, &next)
            .await?;
    let device = Arc::new(device);
    if !advanced {
        // Spent already (or its family revoked): a retry within the grace window gets the
        // same successor again; anything else is reuse.
        let successor = spent_presentation(state, &claims, p.ip, now).await?;
        let kept = state
            .refresh_sealer
            .open(successor.expose_secret())
            .ok_or_else(|| Error::internal("a kept successor does not open"))?;
        state.record_device(device.clone()).await;
        return Ok(answer(
            state, &key, &device, &kept, successor, &decision, trust, now,
        ));
    }
    state.record_device(device.clone()).await;
    Ok(answer(
        state, &key, &device, &successor, token, &decision, trust, now,
    ))
}

/// A token whose generation was spent, presented by its own device key: within the grace
/// window of contract 9.2 the successor issued then (sealed for the window), else reuse.
async fn spent_presentation(
    state: &AppState,
    claims: &RefreshClaims,
    ip: IpAddr,
    now: i64,
) -> Result<SecretString> {
    let family = state.store.get_refresh_family(&claims.family_id).await?;
    let Some(family) = family else {
        // Purged: every token of the family has expired.
        return Err(Error::InvalidRefreshToken);
    };
    if family.revoked_at.is_some() || family.generation <= claims.generation {
        return Err(Error::InvalidRefreshToken);
    }
    if let Some(kept) = in_grace(&family, claims, now)
        && let Some(successor) = state.refresh_sealer.open_successor(&family.family_id, kept)
    {
        return Ok(successor);
    }
    Err(reuse_detected(state, &family, ip, now).await)
}

/// The sealed successor when `claims`' token is the one spent last (a successor that was
/// itself used ends the grace) and the window is still open.
fn in_grace<'f>(family: &'f FamilyRecord, claims: &RefreshClaims, now: i64) -> Option<&'f [u8]> {
    let open = family.generation == claims.generation + 1
        && family.grace_until.is_some_and(|until| now <= until);
    family.grace_token.as_deref().filter(|_| open)
}

/// A token presented with another device's proof. Refused as unknown, without touching
/// storage, unless a grace window is configured: then a token spent within the window is
/// reuse (contract 9.2: "presented by any other key … it is reuse"), which revokes the family.
async fn foreign_presentation(
    state: &AppState,
    claims: &RefreshClaims,
    ip: IpAddr,
    now: i64,
) -> Error {
    if state.settings.refresh_reuse_grace_secs == 0 {
        return Error::InvalidRefreshToken;
    }
    match state.store.get_refresh_family(&claims.family_id).await {
        Ok(Some(family))
            if family.revoked_at.is_none() && in_grace(&family, claims, now).is_some() =>
        {
            reuse_detected(state, &family, ip, now).await
        }
        Ok(_) => Error::InvalidRefreshToken,
        Err(e) => e,
    }
}

/// Expiry of a token issued at `now` in a family begun at `created_at`: the idle lifetime,
/// capped by the family's absolute one.
fn refresh_expiry(state: &AppState, created_at: i64, now: i64) -> i64 {
    (now + state.settings.refresh_ttl_secs)
        .min(created_at + state.settings.refresh_family_max_age_secs)
}

/// Spent token presented again: the family is compromised (RFC 9700 section 4.14.2).
async fn reuse_detected(state: &AppState, family: &FamilyRecord, ip: IpAddr, now: i64) -> Error {
    if let Err(e) = state.store.revoke_refresh_family(family, now).await {
        return e;
    }
    state.alerts.raise(
        AlertKind::RefreshTokenReused,
        Some(&family.key_id),
        Some(&family.device_id),
        Some(ip),
        json!({"family_id": family.family_id}),
    );
    Error::RefreshTokenReused
}

/// `POST /v1/token/revoke` (contract 9.3, RFC 7009): signs a device out of one session by
/// revoking the refresh family of `token`. Only a proof by the token's own device key revokes
/// anything; every token answer is the same (`Ok`), whether the token was live, spent,
/// expired, unknown or another device's, so the endpoint tells nobody anything about a token.
pub async fn revoke(state: &AppState, p: Presented<'_>, token: &str) -> Result<()> {
    let now = crate::state::now();
    let proof = parse_proof(state, p.proof, p.path, now)?;
    let Some(claims) = state.refresh_sealer.open(token) else {
        return Ok(());
    };
    if !bool::from(claims.jkt.as_bytes().ct_eq(proof.jkt.as_bytes())) {
        return Ok(());
    }
    check_proof(state, &proof, now, Some(&claims.key_id), p.ip).await?;
    let _ = p.key_seen.set(claims.key_id.clone());
    if claims.expires_at <= now {
        return Ok(());
    }
    // A spent token of the family signs its device out too: only that device's key could
    // present it, and it asks to end the session.
    let family = FamilyRecord {
        family_id: claims.family_id.clone(),
        key_id: claims.key_id.clone(),
        device_id: claims.device_id.clone(),
        jkt: claims.jkt.clone(),
        generation: claims.generation,
        created_at: claims.family_created_at,
        rotated_at: claims.issued_at,
        // The row outlives every token of the family (at most the family's age).
        expires_at: claims.family_created_at + state.settings.refresh_family_max_age_secs,
        revoked_at: None,
        grace_token: None,
        grace_until: None,
    };
    state.store.revoke_refresh_family(&family, now).await?;
    Ok(())
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
    let verified = parse_proof(state, proof, path, now)?;
    check_proof(state, &verified, now, key_id, ip).await?;
    Ok(verified)
}

/// The proof's own checks (RFC 9449 section 4.3: header, signature, `htm`, `htu`, `iat`), with
/// no state touched.
fn parse_proof(
    state: &AppState,
    proof: std::result::Result<Option<&str>, ()>,
    path: &str,
    now: i64,
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
    dpop::verify_proof(proof, "POST", &htu, now, &state.dpop_options)
        .map_err(|e| Error::InvalidDpopProof(e.to_string()))
}

/// The nonce when required, then the replay store: the proof's `jti` must be new.
async fn check_proof(
    state: &AppState,
    verified: &VerifiedProof,
    now: i64,
    key_id: Option<&str>,
    ip: IpAddr,
) -> Result<()> {
    if state.settings.require_dpop_nonce
        && !verified
            .nonce
            .as_deref()
            .is_some_and(|n| state.nonces.is_valid(n, now))
    {
        // A nonce challenge is protocol, not a failure, so it does not spend the failure
        // budget; an endless stream of them from one address spends this softer one.
        if state.switches.rate_limits() && state.nonce_challenges.record_failure(&ip).await? {
            state.nonce_challenges.check(&ip).await?;
        }
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
        let details = json!({"jkt": verified.jkt});
        match key_id {
            Some(_) => state
                .alerts
                .raise(AlertKind::DpopReplay, key_id, None, Some(ip), details),
            // No key context: at most one alert per address per quiet period (a minute), so
            // replays without a credential cannot flood the alert table.
            None => state.alerts.raise_once(
                AlertKind::DpopReplay,
                &format!("ip:{ip}"),
                None,
                Some(ip),
                details,
            ),
        }
        return Err(Error::DpopReplay);
    }
    Ok(())
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
        let state = state.clone();
        tokio::spawn(async move { state.record_device(Arc::new(device)).await });
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

/// Signs the access token and builds the answer around the refresh token `refresh` (whose
/// claims are `claims`).
#[allow(clippy::too_many_arguments)]
fn answer(
    state: &AppState,
    key: &KeyRecord,
    device: &DeviceRecord,
    claims: &RefreshClaims,
    refresh: SecretString,
    decision: &TrustDecision,
    trust: GrantedTrust,
    now: i64,
) -> TokenResponse {
    let access = AccessClaims::new(
        &AccessGrant {
            issuer: &state.settings.issuer,
            key_id: &key.key_id,
            audience: &claims.audience,
            scope: &claims.scope,
            jkt: &claims.jkt,
            device_id: &device.device_id,
            trust,
            ttl_seconds: state.settings.access_ttl_secs as u64,
        },
        now as u64,
    );
    TokenResponse {
        access_token: access.sign(&state.keyring.active()),
        token_type: "DPoP",
        expires_in: access.expires_in(),
        scope: claims.scope.clone(),
        refresh_token: refresh.expose_secret().to_owned(),
        refresh_expires_in: (claims.expires_at - now).max(0),
        device_id: device.device_id.clone(),
        trust: TrustSummary {
            score: decision.score,
            level: trust,
        },
    }
}
