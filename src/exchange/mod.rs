//! The token exchange (contract 3.1) and refresh rotation (contract 3.2), independent of HTTP.
//!
//! The order of checks is deliberate: cheap, storage-free refusals first (key format and
//! checksum, proof signature), then the key record (cached), then the replay store, and
//! device work last, so an attacker without a valid key and a valid proof costs us almost
//! nothing and learns nothing.

pub mod challenge;
mod request;
#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::json;
use subtle::ConstantTimeEq;

pub use request::{DeviceInfo, RefreshRequest, RevokeRequest, TokenRequest};

use crate::alerts::{AlertKind, Alerts, network_of};
use crate::attestation::{Attestation, Verifier};
use crate::devices::trust::{
    self, DeviceHistory, NetworkSignals, TrustDecision, TrustInputs, TrustLevel,
};
use crate::dpop::{self, VerifiedProof};
use crate::dpop::{NonceIssuer, VerifyOptions};
use crate::error::{Error, Result};
use crate::ids::{KeyId, Thumbprint};
use crate::jobs::{LastUsed, StorageHealth};
use crate::limits::{IpFailures, KeyIdFailures, KeyLimits};
use crate::replay::ReplayStore;
use crate::store::Store;
use crate::store::cached::CachedStore;
use crate::store::{
    AttestationPolicy, DeviceAttestation, DeviceRecord, DeviceStatus, EnrollLimits, Enrollment,
    FamilyRecord, JsonText, KeyRecord,
};
use crate::switches::Switches;
use crate::tokens::keyring::KeyRing;
use crate::tokens::refresh::RefreshClaims;
use crate::tokens::refresh::RefreshSealer;
use crate::tokens::{AccessClaims, AccessGrant, GrantedTrust};

/// Path of the exchange endpoint (part of every proof's `htu`).
pub const TOKEN_PATH: &str = "/v1/token";
/// Path of the refresh endpoint.
pub const REFRESH_PATH: &str = "/v1/token/refresh";
/// Path of the sign-out endpoint (contract 9.3).
pub const REVOKE_PATH: &str = "/v1/token/revoke";
/// Networks remembered per device.
const MAX_NETWORKS: usize = 16;

/// What the exchange, the refresh and the revocation use, and nothing else: the server builds
/// one at start ([`crate::state::AppState::build`]); a test builds one around an in-memory
/// store (see the unit tests below).
pub struct Deps {
    /// The settings these use cases read.
    pub policy: Policy,
    /// Storage, through the validation cache (the same object as `cache`).
    pub store: Arc<dyn Store>,
    /// The validation cache (keys and devices), which also queues device histories.
    pub cache: Arc<CachedStore>,
    /// Whether storage answers (nothing is issued while it does not: contract 5).
    pub health: Arc<StorageHealth>,
    /// Keys' `last_used_at`, batched.
    pub last_used: Arc<LastUsed>,
    /// Benchmark switches (all on outside `keybound bench --overhead`).
    pub switches: Arc<Switches>,
    /// Per-key request rates.
    pub key_limits: Arc<KeyLimits>,
    /// Per-device refresh rates.
    pub device_limits: Arc<KeyLimits>,
    /// Per-key-id failure budgets (wrong secrets for one id, from anywhere).
    pub key_failures: Arc<KeyIdFailures>,
    /// Per-IP budget of `USE_DPOP_NONCE` answers (issue 15, item 7).
    pub nonce_challenges: Arc<IpFailures>,
    /// Seals and opens refresh tokens.
    pub refresh_sealer: Arc<RefreshSealer>,
    /// DPoP proof checks.
    pub dpop_options: Arc<VerifyOptions>,
    /// Decoded proof keys of recent proofs.
    pub proof_keys: Arc<dpop::ProofKeys>,
    /// Checks Ed25519 proof signatures in batches.
    pub proof_signatures: Arc<dpop::SignatureBatcher>,
    /// Server nonces (RFC 9449 section 8).
    pub nonces: Arc<NonceIssuer>,
    /// Seen DPoP proofs.
    pub replay: Arc<dyn ReplayStore>,
    /// Anomaly alerts.
    pub alerts: Arc<Alerts>,
    /// Platform attestation checks (contract section 8).
    pub verifier: Arc<Verifier>,
    /// Attestation challenges.
    pub challenges: Arc<challenge::Challenges>,
    /// Signing keys (the active one signs access tokens).
    pub keyring: Arc<KeyRing>,
}

impl Deps {
    /// The API key check ([`crate::keys::auth`]), with these budgets.
    pub fn key_auth(&self) -> crate::keys::KeyAuth<'_> {
        crate::keys::KeyAuth {
            cache: &self.cache,
            failures: &self.key_failures,
            alerts: &self.alerts,
        }
    }
}

/// The `serve` settings the token use cases read.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `iss` claim and base of every `htu`, without a trailing slash.
    pub issuer: String,
    /// Allowed audiences; the first is the default.
    pub audiences: Vec<String>,
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
    /// Whether proofs must carry a server nonce.
    pub require_dpop_nonce: bool,
    /// New devices per key per hour; `None`: the key's `max_devices`.
    pub enrollments_per_hour: Option<i64>,
    /// How long a limited device must have been unused before a new one may replace it.
    pub stale_device_secs: i64,
}

/// Remembers a device's history (counters, last seen, networks, trust) without holding up
/// the answer: this instance's validation cache sees it at once, storage within
/// [`crate::jobs::DEVICE_FLUSH_INTERVAL`] (and at a graceful shutdown). A crash loses at most
/// that window of history, never anything a client holds (`docs/design.md`, "Device
/// history").
async fn record_device(cache: &CachedStore, switches: &Switches, device: Arc<DeviceRecord>) {
    if !switches.writes() {
        // `keybound bench --overhead` only: what the exchange costs without the write.
        return;
    }
    cache.remember_device_usage(device).await;
}

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
    /// The path the request was sent to, which the proof's `htu` must name: a refresh comes
    /// to [`REFRESH_PATH`] as JSON (3.2) or to [`TOKEN_PATH`] as an RFC 6749 form (9.1).
    pub path: &'static str,
}

/// A use case's answer, with the key it was made for once the request got that far (a valid
/// key): usage is recorded for those requests only, successes and refusals alike, so a flood
/// of made-up keys cannot fill the usage table.
#[derive(Debug)]
pub struct Outcome {
    /// The authenticated key's id, if the request got past the key check.
    pub key_id: Option<String>,
    /// The answer.
    pub result: Result<TokenResponse>,
}

impl Outcome {
    /// A refusal before any key was identified.
    pub fn anonymous(result: Result<TokenResponse>) -> Outcome {
        Outcome {
            key_id: None,
            result,
        }
    }

    /// The key id and the answer, for callers that map the answer (the form-encoded requests
    /// write it in RFC 6749's shape).
    pub fn into_parts(self) -> (Option<String>, Result<TokenResponse>) {
        (self.key_id, self.result)
    }
}

/// The successful answer of both endpoints (contract 3.1). `Debug` leaves out both tokens.
#[derive(Serialize, utoipa::ToSchema)]
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

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"[REDACTED]")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .field("refresh_token", &"[REDACTED]")
            .field("refresh_expires_in", &self.refresh_expires_in)
            .field("device_id", &self.device_id)
            .field("trust", &self.trust)
            .finish()
    }
}

/// Score and level, as returned to the client.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrustSummary {
    /// 0..1.
    pub score: f64,
    /// `trusted` or `limited`.
    pub level: GrantedTrust,
    /// `apple-appattest` or `android-key` when the device is attested (and the key's policy
    /// is not `off`), else `null` (contract section 8).
    #[schema(value_type = Option<String>)]
    pub attested: Option<&'static str>,
}

/// `POST /v1/token`: the answer and, once the key verified, its id.
pub async fn exchange(deps: &Deps, p: Presented<'_>, body: TokenRequest) -> Outcome {
    let now = crate::clock::now();
    let key = match authenticate(deps, &p, &body, now).await {
        Ok(key) => key,
        Err(e) => return Outcome::anonymous(Err(e)),
    };
    Outcome {
        key_id: Some(key.key_id.as_str().to_owned()),
        result: exchange_as(deps, &key, p, body, now).await,
    }
}

/// The request's checks up to a usable key: the body's limits, then the key itself.
async fn authenticate(
    deps: &Deps,
    p: &Presented<'_>,
    body: &TokenRequest,
    now: i64,
) -> Result<Arc<KeyRecord>> {
    body.validate()?;
    // Fail closed (contract 5): nothing is issued while storage is unreachable, even though
    // an exchange with a cached key and device would not touch it.
    if !deps.health.up() {
        return Err(Error::unavailable("storage is unreachable"));
    }
    let presented = p.api_key.ok_or(Error::MissingApiKey)?;
    let key = deps
        .key_auth()
        .authenticate(presented, now)
        .await?
        .usable()?;
    deps.last_used.touch(&key.key_id, now);
    Ok(key)
}

/// The exchange for an authenticated `key`.
async fn exchange_as(
    deps: &Deps,
    key: &KeyRecord,
    p: Presented<'_>,
    body: TokenRequest,
    now: i64,
) -> Result<TokenResponse> {
    check_allow_lists(key, p.ip, p.origin)?;
    let proof = verify_proof(deps, p.proof, TOKEN_PATH, now, key.key_id.as_str(), p.ip).await?;
    // After the proof: a nonce challenge (or a bad proof) must not spend the key's allowance,
    // or a key limited to one exchange a minute could never get a token in nonce mode.
    if deps.switches.rate_limits() {
        deps.key_limits
            .check(&key.key_id, key.rate_limit_per_minute)
            .await?;
    }

    let requested = match &body.scope {
        Some(s) => s.split_whitespace().map(str::to_owned).collect::<Vec<_>>(),
        None => key.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
    };
    if requested.iter().any(|s| !key.scopes.iter().any(|k| k == s)) {
        return Err(Error::InsufficientScope);
    }
    let audience = match &body.audience {
        Some(a) if deps.policy.audiences.contains(a) => a.clone(),
        Some(_) => return Err(Error::InvalidAudience),
        None => deps.policy.audiences[0].clone(),
    };

    let DeviceInfo {
        name: device_name,
        attributes: presented,
        attestation,
    } = body.device.unwrap_or_default();
    let (device, decision) = device_and_trust(
        deps,
        key,
        &proof,
        Presentation {
            attributes: presented,
            name: device_name,
            attestation,
        },
        p.ip,
        now,
    )
    .await?;
    let granted = grant_scopes(key, &requested, decision.level);
    let trust = GrantedTrust::try_from(decision.level).map_err(|_| Error::DeviceUntrusted)?;
    // The family's first token is self-contained (generation 0): nothing is stored for it
    // until its first refresh. Family ids are time-ordered (v7), so the rows written then
    // append to the families' index instead of landing on a random page of it.
    let claims = RefreshClaims {
        family_id: format!("rf_{}", crate::ids::uuid_v7().simple()),
        generation: 0,
        key_id: key.key_id.as_str().to_owned(),
        device_id: device.device_id.clone(),
        jkt: proof.jkt.clone(),
        scope: granted.join(" "),
        audience,
        family_created_at: now,
        issued_at: now,
        expires_at: refresh_expiry(deps, now, now),
    };
    let token = deps.refresh_sealer.seal(&claims);
    let device = Arc::new(device);
    // History is bookkeeping, flushed in batches off the answer path (docs/design.md).
    record_device(&deps.cache, &deps.switches, device.clone()).await;
    Ok(answer(
        deps, key, &device, &claims, token, &decision, trust, now,
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
pub async fn refresh(deps: &Deps, p: Presented<'_>, body: RefreshRequest) -> Result<TokenResponse> {
    let now = crate::clock::now();
    let proof = parse_proof(deps, p.proof, p.path, now).await?;
    let claims = deps
        .refresh_sealer
        .open(body.refresh_token.expose_secret())
        .ok_or(Error::InvalidRefreshToken)?;
    // A token bound to another device key is useless to whoever stole it: refuse it as
    // unknown, and do not let the thief burn the family (the owner keeps their session) —
    // except inside a grace window, where a just-spent token in other hands is reuse (9.2).
    if !bound_to_proof_key(&claims, &proof) {
        return Err(foreign_presentation(deps, &claims, p.ip, now).await);
    }
    check_proof(deps, &proof, now, &claims.key_id, p.ip).await?;
    if claims.expires_at <= now
        || claims.family_created_at + deps.policy.refresh_family_max_age_secs <= now
    {
        return Err(Error::InvalidRefreshToken);
    }
    if deps.switches.rate_limits() {
        deps.device_limits
            .check(
                &claims.device_id,
                i64::from(deps.policy.refresh_rate_per_device),
            )
            .await?;
    }
    let key = deps
        .cache
        .key(&claims.key_id)
        .await?
        .ok_or(Error::InvalidApiKey)?;
    if !key.usable_at(now) {
        return Err(Error::InvalidApiKey);
    }
    check_allow_lists(&key, p.ip, p.origin)?;
    // Issue 15, item 3: the key's settings now, not at the exchange. An audience taken off
    // the allowed list is refused; scopes the key lost are not granted again.
    if !deps.policy.audiences.contains(&claims.audience) {
        return Err(Error::InvalidAudience);
    }
    let device = deps
        .cache
        .device(&claims.key_id, &claims.jkt)
        .await?
        .filter(|d| d.device_id == claims.device_id)
        .ok_or(Error::InvalidRefreshToken)?;
    if device.status == DeviceStatus::Revoked {
        return Err(Error::DeviceRevoked);
    }
    // The fingerprint was checked at the exchange; a refresh re-scores history and network.
    // Contract section 8: a key that requires attestation issues nothing to a device without
    // one on record, refreshes included (the policy may have changed since the exchange).
    if key.attestation == AttestationPolicy::Required && device.attestation.is_none() {
        return Err(Error::AttestationRequired);
    }
    // The fingerprint was checked at the exchange; a refresh re-scores history and network.
    // It does not count as an exchange: a refresh carries no attributes, so a device that
    // only refreshes proves nothing new and earns no trust by it.
    // Presented: the stored attributes themselves, borrowed from the cached record.
    let (device, decision) = score_and_record(
        deps,
        &key,
        (*device).clone(),
        &device.attributes,
        Scoring::Refresh,
        p.ip,
        now,
    )?;
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
        expires_at: refresh_expiry(deps, claims.family_created_at, now),
        ..claims.clone()
    };
    let token = deps.refresh_sealer.seal(&successor);
    let grace = deps.policy.refresh_reuse_grace_secs;
    // The key and device were read by the claims' key id and thumbprint: theirs are the same
    // values, already typed.
    let next = FamilyRecord {
        family_id: claims.family_id.clone(),
        key_id: key.key_id.clone(),
        device_id: claims.device_id.clone(),
        jkt: device.jkt.clone(),
        generation: successor.generation,
        created_at: claims.family_created_at,
        rotated_at: now,
        expires_at: successor.expires_at,
        revoked_at: None,
        grace_token: (grace > 0).then(|| {
            deps.refresh_sealer
                .seal_successor(&claims.family_id, token.expose_secret())
        }),
        grace_until: (grace > 0).then_some(now + grace),
    };
    // The one durable write of a refresh, before the answer. `keybound bench --overhead`
    // alone turns it off, to measure what durability costs.
    let advanced = !deps.switches.writes()
        || deps
            .store
            .advance_refresh_family(claims.generation, &next)
            .await?;
    let device = Arc::new(device);
    if !advanced {
        // Spent already (or its family revoked): a retry within the grace window gets the
        // same successor again; anything else is reuse.
        let successor = spent_presentation(deps, &claims, p.ip, now).await?;
        let kept = deps
            .refresh_sealer
            .open(successor.expose_secret())
            .ok_or_else(|| Error::internal("a kept successor does not open"))?;
        record_device(&deps.cache, &deps.switches, device.clone()).await;
        return Ok(answer(
            deps, &key, &device, &kept, successor, &decision, trust, now,
        ));
    }
    record_device(&deps.cache, &deps.switches, device.clone()).await;
    Ok(answer(
        deps, &key, &device, &successor, token, &decision, trust, now,
    ))
}

/// A token whose generation was spent, presented by its own device key: within the grace
/// window of contract 9.2 the successor issued then (sealed for the window), else reuse.
async fn spent_presentation(
    deps: &Deps,
    claims: &RefreshClaims,
    ip: IpAddr,
    now: i64,
) -> Result<SecretString> {
    let family = deps.store.get_refresh_family(&claims.family_id).await?;
    let Some(family) = family else {
        // Purged: every token of the family has expired.
        return Err(Error::InvalidRefreshToken);
    };
    if family.revoked_at.is_some() || family.generation <= claims.generation {
        return Err(Error::InvalidRefreshToken);
    }
    if let Some(kept) = in_grace(&family, claims, now)
        && let Some(successor) = deps.refresh_sealer.open_successor(&family.family_id, kept)
    {
        return Ok(successor);
    }
    Err(reuse_detected(deps, &family, ip, now).await)
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
async fn foreign_presentation(deps: &Deps, claims: &RefreshClaims, ip: IpAddr, now: i64) -> Error {
    if deps.policy.refresh_reuse_grace_secs == 0 {
        return Error::InvalidRefreshToken;
    }
    match deps.store.get_refresh_family(&claims.family_id).await {
        Ok(Some(family))
            if family.revoked_at.is_none() && in_grace(&family, claims, now).is_some() =>
        {
            reuse_detected(deps, &family, ip, now).await
        }
        Ok(_) => Error::InvalidRefreshToken,
        Err(e) => e,
    }
}

/// Expiry of a token issued at `now` in a family begun at `created_at`: the idle lifetime,
/// capped by the family's absolute one.
fn refresh_expiry(deps: &Deps, created_at: i64, now: i64) -> i64 {
    (now + deps.policy.refresh_ttl_secs).min(created_at + deps.policy.refresh_family_max_age_secs)
}

/// Spent token presented again: the family is compromised (RFC 9700 section 4.14.2).
async fn reuse_detected(deps: &Deps, family: &FamilyRecord, ip: IpAddr, now: i64) -> Error {
    if let Err(e) = deps.store.revoke_refresh_family(family, now).await {
        return e;
    }
    deps.alerts.raise(
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
pub async fn revoke(deps: &Deps, p: Presented<'_>, token: &str) -> Result<()> {
    let now = crate::clock::now();
    let proof = parse_proof(deps, p.proof, p.path, now).await?;
    let Some(claims) = deps.refresh_sealer.open(token) else {
        return Ok(());
    };
    if !bound_to_proof_key(&claims, &proof) {
        return Ok(());
    }
    check_proof(deps, &proof, now, &claims.key_id, p.ip).await?;
    if claims.expires_at <= now {
        return Ok(());
    }
    // A spent token of the family signs its device out too: only that device's key could
    // present it, and it asks to end the session.
    // The claims are ours (sealed by this server), so their id and thumbprint parse.
    let (Some(key_id), Some(jkt)) = (KeyId::parse(&claims.key_id), Thumbprint::parse(&claims.jkt))
    else {
        return Err(Error::internal(
            "a sealed refresh token holds a malformed key id or jkt",
        ));
    };
    let family = FamilyRecord {
        family_id: claims.family_id.clone(),
        key_id,
        device_id: claims.device_id.clone(),
        jkt,
        generation: claims.generation,
        created_at: claims.family_created_at,
        rotated_at: claims.issued_at,
        // The row outlives every token of the family (at most the family's age).
        expires_at: claims.family_created_at + deps.policy.refresh_family_max_age_secs,
        revoked_at: None,
        grace_token: None,
        grace_until: None,
    };
    deps.store.revoke_refresh_family(&family, now).await?;
    Ok(())
}

/// The key's allow lists. The address is compared in canonical form ([`crate::net`]:
/// `::ffff:10.0.0.5` is inside `10.0.0.0/8`) with CIDRs the store decoded once.
fn check_allow_lists(key: &KeyRecord, ip: IpAddr, origin: Option<&str>) -> Result<()> {
    if !key.allowed_ips.is_empty() && !crate::net::any_contains(&key.allowed_ips, ip) {
        return Err(Error::IpNotAllowed);
    }
    // No Origin header: not a browser, and the origin list restricts browsers only.
    if let Some(origin) = origin
        && !key.allowed_origins.is_empty()
        && !key.allowed_origins.iter().any(|o| o.matches(origin))
    {
        return Err(Error::OriginNotAllowed);
    }
    Ok(())
}

/// Whether a refresh token was issued to the proof's device key (its `jkt` is the proof
/// key's RFC 7638 thumbprint): the one binding check of a refresh and a revocation.
/// Compared in constant time, though a thumbprint is no secret, so no caller has to wonder.
fn bound_to_proof_key(claims: &RefreshClaims, proof: &VerifiedProof) -> bool {
    bool::from(claims.jkt.as_bytes().ct_eq(proof.jkt.as_bytes()))
}

/// Verifies the proof, the nonce when required, and that its `jti` is new.
async fn verify_proof(
    deps: &Deps,
    proof: std::result::Result<Option<&str>, ()>,
    path: &str,
    now: i64,
    key_id: &str,
    ip: IpAddr,
) -> Result<VerifiedProof> {
    let verified = parse_proof(deps, proof, path, now).await?;
    check_proof(deps, &verified, now, key_id, ip).await?;
    Ok(verified)
}

/// The proof's own checks (RFC 9449 section 4.3: header, signature, `htm`, `htu`, `iat`), with
/// no state touched.
async fn parse_proof(
    deps: &Deps,
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
    let htu = format!("{}{}", deps.policy.issuer, path);
    dpop::verify_proof_batched(
        proof,
        "POST",
        &htu,
        now,
        &deps.dpop_options,
        &deps.proof_keys,
        &deps.proof_signatures,
    )
    .await
    .map_err(|e| Error::InvalidDpopProof(e.to_string()))
}

/// The nonce when required, then the replay store: the proof's `jti` must be new. Every caller
/// knows the key the request is for (the exchange's API key, the refresh or sign-out token's
/// sealed key id), so a replay's alert names it.
async fn check_proof(
    deps: &Deps,
    verified: &VerifiedProof,
    now: i64,
    key_id: &str,
    ip: IpAddr,
) -> Result<()> {
    if deps.policy.require_dpop_nonce
        && !verified
            .nonce
            .as_deref()
            .is_some_and(|n| deps.nonces.is_valid(n, now))
    {
        // A nonce challenge is protocol, not a failure, so it does not spend the failure
        // budget; an endless stream of them from one address spends this softer one.
        // Refused once the address has had its budget's worth of challenges this minute.
        if deps.switches.rate_limits() {
            deps.nonce_challenges.check(ip).await?;
            deps.nonce_challenges.record_failure(ip).await?;
        }
        return Err(Error::UseDpopNonce {
            nonce: deps.nonces.issue(now),
        });
    }
    let fresh = deps
        .replay
        .first_seen(&verified.replay_key(), deps.dpop_options.replay_ttl())
        .await
        .map_err(Error::unavailable)?;
    if !fresh {
        deps.alerts.raise(
            AlertKind::DpopReplay,
            Some(key_id),
            None,
            Some(ip),
            json!({"jkt": verified.jkt}),
        );
        return Err(Error::DpopReplay);
    }
    Ok(())
}

/// What the exchange body says about the device.
struct Presentation {
    attributes: trust::Attributes,
    name: Option<String>,
    attestation: Option<Attestation>,
}

/// Whether a device is scored for a token exchange or for a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scoring {
    /// A token exchange (`true`: it enrolls the device).
    Exchange { is_new: bool },
    /// A refresh: no attributes, and it does not count towards earned trust.
    Refresh,
}

/// Finds or enrolls the device, applies the key's attestation policy (contract section 8),
/// scores it and records the exchange in its history.
async fn device_and_trust(
    deps: &Deps,
    key: &KeyRecord,
    proof: &VerifiedProof,
    mut presented: Presentation,
    ip: IpAddr,
    now: i64,
) -> Result<(DeviceRecord, TrustDecision)> {
    let existing = deps.cache.device(&key.key_id, &proof.jkt).await?;
    if existing
        .as_ref()
        .is_some_and(|d| d.status == DeviceStatus::Revoked)
    {
        return Err(Error::DeviceRevoked);
    }
    let on_record = existing.as_ref().is_some_and(|d| d.attestation.is_some());
    // Verified once: at enrollment, or on a later exchange of a device not attested yet. Under
    // `off` attestations are ignored (not verified, not recorded).
    let verified = match (key.attestation, presented.attestation.take()) {
        (AttestationPolicy::Off, _) | (_, None) => None,
        (_, Some(_)) if on_record => None,
        (_, Some(attestation)) => Some(
            verify_attestation(
                deps,
                key,
                existing.as_deref().map(|d| d.device_id.as_str()),
                proof,
                attestation,
                ip,
                now,
            )
            .await?,
        ),
    };
    if key.attestation == AttestationPolicy::Required && !on_record && verified.is_none() {
        return Err(Error::AttestationRequired);
    }

    let (mut device, is_new) = match existing {
        Some(d) => ((*d).clone(), false),
        None => match enroll(deps, key, proof, &presented, verified.clone(), ip, now).await? {
            Some(d) => (d, true),
            // Lost a race with another enrollment of the same key: that device is ours.
            None => match deps
                .store
                .get_device_by_jkt(&key.key_id, &proof.jkt)
                .await?
            {
                Some(d) => (d, false),
                None => return Err(Error::internal("enrolled device vanished")),
            },
        },
    };
    if device.status == DeviceStatus::Revoked {
        return Err(Error::DeviceRevoked);
    }
    if let Some(attestation) = verified
        && device.attestation.is_none()
    {
        // A device enrolled before it attested (or by a racing request) records it now.
        deps.store.record_attestation(&device, &attestation).await?;
        device.attestation = Some(attestation);
    }
    score_and_record(
        deps,
        key,
        device,
        &presented.attributes,
        Scoring::Exchange { is_new },
        ip,
        now,
    )
}

/// Enrolls a new device under the key's limits: `None` when another request enrolled the same
/// device key first.
async fn enroll(
    deps: &Deps,
    key: &KeyRecord,
    proof: &VerifiedProof,
    presented: &Presentation,
    attestation: Option<DeviceAttestation>,
    ip: IpAddr,
    now: i64,
) -> Result<Option<DeviceRecord>> {
    // The thumbprint `keybound_jose` computed: its shape always holds.
    let jkt = Thumbprint::parse(&proof.jkt)
        .ok_or_else(|| Error::internal("a proof key's thumbprint is malformed"))?;
    let d = DeviceRecord {
        device_id: format!("dev_{}", uuid::Uuid::now_v7().simple()),
        key_id: key.key_id.clone(),
        jkt,
        name: presented.name.clone(),
        attributes: Arc::new(presented.attributes.clone()),
        status: DeviceStatus::Active,
        approved: false,
        baseline: 0,
        created_at: now,
        last_seen_at: now,
        exchange_count: 0,
        mismatch_count: 0,
        mismatch_fingerprint: None,
        networks: vec![],
        trust_score: 0.0,
        trust_level: TrustLevel::Limited,
        trust_factors: JsonText::empty_list(),
        revoked_at: None,
        attestation,
        // The store allocates it.
        status_idx: 0,
    };
    let per_hour = deps.policy.enrollments_per_hour.unwrap_or(key.max_devices);
    let limits = EnrollLimits {
        max_devices: key.max_devices,
        per_hour,
        stale_before: now - deps.policy.stale_device_secs,
        now,
    };
    // The enrollment reads the key's other devices (is one trusted? which is stale?): their
    // batched history goes to storage first. Enrollments are rare, and synchronous anyway.
    crate::jobs::flush_devices(&deps.cache).await;
    match deps.store.enroll_device(&d, limits).await? {
        Enrollment::Enrolled {
            device,
            replaced,
            key_had_trusted,
        } => {
            // A new device next to a trusted one is worth a look: the key may be in a second
            // pair of hands.
            let severity = if key_had_trusted {
                "warning"
            } else {
                AlertKind::NewDevice.severity()
            };
            deps.alerts.raise_as(
                AlertKind::NewDevice,
                severity,
                Some(&key.key_id),
                Some(&d.device_id),
                Some(ip),
                json!({"jkt": d.jkt, "attributes": d.attributes,
                       "attested": d.attestation.as_ref().map(|a| &a.format),
                       "replaced_device_id": replaced.as_ref().map(|r| &r.device_id)}),
            );
            Ok(Some(*device))
        }
        Enrollment::Exists(_) => Ok(None),
        Enrollment::LimitReached => Err(Error::DeviceLimitReached),
        Enrollment::BudgetSpent => {
            deps.alerts.raise_once(
                AlertKind::EnrollmentBurst,
                &key.key_id,
                Some(&key.key_id),
                Some(ip),
                json!({"enrollments_per_hour": per_hour}),
            );
            Err(Error::RateLimited {
                retry_after_secs: 60,
            })
        }
    }
}

/// Verifies a presented attestation: the challenge (ours, unexpired), then the format's checks
/// off the async runtime (about a millisecond of signature checks), then spends the challenge.
/// A failure raises `ATTESTATION_FAILED` and answers `INVALID_ATTESTATION` naming the check.
async fn verify_attestation(
    deps: &Deps,
    key: &KeyRecord,
    device_id: Option<&str>,
    proof: &VerifiedProof,
    attestation: Attestation,
    ip: IpAddr,
    now: i64,
) -> Result<DeviceAttestation> {
    let format = attestation.format().as_str();
    let fail = |check: String| {
        deps.alerts.raise(
            AlertKind::AttestationFailed,
            Some(&key.key_id),
            device_id,
            Some(ip),
            json!({"format": format, "check": check, "jkt": proof.jkt}),
        );
        Error::InvalidAttestation(check)
    };
    let challenge = attestation.challenge().to_owned();
    let expires = deps
        .challenges
        .check(&challenge, now)
        .map_err(|e| fail(e.to_string()))?;
    // Contract section 8: the client data binds the attestation to this request's DPoP key.
    let client_data = format!("{challenge}.{}", proof.jkt);
    let verifier = deps.verifier.clone();
    // The proof's key is shared (an `Arc`): the blocking task takes it, not a copy of its JWK.
    let key = proof.key.clone();
    let attested = tokio::task::spawn_blocking(move || {
        verifier.verify(&attestation, client_data.as_bytes(), key.jwk(), now)
    })
    .await
    .map_err(Error::internal)?
    .map_err(|e| fail(e.to_string()))?;
    deps.challenges
        .spend(&*deps.replay, &challenge, expires, now)
        .await?
        .map_err(|e| fail(e.to_string()))?;
    Ok(DeviceAttestation {
        format: attested.format.as_str().to_owned(),
        attested_at: now,
        security_level: attested.security_level,
        public_key: attested.public_key,
        key_id: attested.key_id,
    })
}

/// Scores a device, remembers the outcome (batched write) and raises the alerts it calls for.
/// The decision's factors move into the device record (encoded when the history is written):
/// the returned decision has none.
fn score_and_record(
    deps: &Deps,
    key: &KeyRecord,
    mut device: DeviceRecord,
    presented: &trust::Attributes,
    scoring: Scoring,
    ip: IpAddr,
    now: i64,
) -> Result<(DeviceRecord, TrustDecision)> {
    let is_new = scoring == Scoring::Exchange { is_new: true };
    let network = network_of(ip);
    let seen = device.networks.contains(&network);
    let mut decision = trust::evaluate(&TrustInputs {
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
        attested: is_attested(key, &device),
        is_new,
    });
    if decision.stable_mismatch {
        // Counted and alerted once per mismatching fingerprint (see `is_new_mismatch`); the
        // recorded attributes stay the reference either way.
        if decision.count_mismatch(&mut device.mismatch_count, &mut device.mismatch_fingerprint) {
            deps.alerts.raise(
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
        // After `approve` the fingerprint is blank, and the next presenter's attributes become
        // the reference: only from a network the device used before, or a key copied
        // elsewhere could be first to present its own fingerprint (issue 15, item 15).
        && !(device.approved && device.attributes.is_empty() && !seen)
    {
        // Accepted drift (an OS or app update) becomes the new baseline. (Checked first: on
        // almost every exchange nothing changed, and rebuilding the map is not free.)
        Arc::make_mut(&mut device.attributes)
            .extend(presented.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    if !seen {
        if !is_new && !device.networks.is_empty() {
            deps.alerts.raise(
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
    device.trust_level = decision.level;
    // Encoded when the history is written (about once a second), not here.
    device.trust_factors = JsonText::factors(std::mem::take(&mut decision.factors));
    device.last_seen_at = now;
    if decision.level == TrustLevel::Denied {
        let (cache, switches) = (deps.cache.clone(), deps.switches.clone());
        tokio::spawn(async move { record_device(&cache, &switches, Arc::new(device)).await });
        return Err(Error::DeviceUntrusted);
    }
    // Only token exchanges count towards earned trust (history H and the earning rule).
    if let Scoring::Exchange { .. } = scoring {
        device.exchange_count += 1;
    }
    deps.alerts
        .observe_exchange(&key.key_id, &device.device_id, &network, now);
    Ok((device, decision))
}

/// Whether the device counts as attested for `key`: an attestation on record, and a policy
/// that does not ignore attestations.
fn is_attested(key: &KeyRecord, device: &DeviceRecord) -> bool {
    key.attestation != AttestationPolicy::Off && device.attestation.is_some()
}

/// The attestation format to report (`trust.attested`, the `att` claim).
fn attested_format(key: &KeyRecord, device: &DeviceRecord) -> Option<&'static str> {
    if !is_attested(key, device) {
        return None;
    }
    device
        .attestation
        .as_ref()
        .and_then(|a| match a.format.as_str() {
            "apple-appattest" => Some("apple-appattest"),
            "android-key" => Some("android-key"),
            _ => None,
        })
}

/// The scopes a device gets: all requested ones when trusted; when limited, only those in
/// the key's limited set (default: its `read:` scopes).
fn grant_scopes(key: &KeyRecord, requested: &[String], level: TrustLevel) -> Vec<String> {
    match level {
        TrustLevel::Trusted => requested.to_vec(),
        _ => requested
            .iter()
            .filter(|s| match &key.limited_scopes {
                Some(limited) => limited.iter().any(|l| l == *s),
                // The default limited set (`trust::limited_scopes_default`), tested in place.
                None => trust::is_default_limited(s) && key.scopes.iter().any(|k| k == *s),
            })
            .cloned()
            .collect(),
    }
}

/// Signs the access token and builds the answer around the refresh token `refresh` (whose
/// claims are `claims`).
#[allow(clippy::too_many_arguments)]
fn answer(
    deps: &Deps,
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
            issuer: &deps.policy.issuer,
            key_id: &key.key_id,
            audience: &claims.audience,
            scope: &claims.scope,
            jkt: &claims.jkt,
            device_id: &device.device_id,
            trust,
            att: attested_format(key, device),
            ttl_seconds: deps.policy.access_ttl_secs as u64,
            status_idx: device.status_idx,
        },
        now as u64,
    );
    TokenResponse {
        access_token: access.sign(&deps.keyring.active()),
        token_type: "DPoP",
        expires_in: access.expires_in(),
        scope: claims.scope.clone(),
        refresh_token: refresh.expose_secret().to_owned(),
        refresh_expires_in: (claims.expires_at - now).max(0),
        device_id: device.device_id.clone(),
        trust: TrustSummary {
            score: decision.score,
            level: trust,
            attested: attested_format(key, device),
        },
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_output_has_no_token() {
        let req: RefreshRequest =
            serde_json::from_str(r#"{"refresh_token": "rt_secret-refresh-value"}"#).unwrap();
        let res = TokenResponse {
            access_token: "eyJ.secret-access-value.sig".into(),
            token_type: "DPoP",
            expires_in: 300,
            scope: "read:x".into(),
            refresh_token: "rt_secret-refresh-value".into(),
            refresh_expires_in: 86_400,
            device_id: "dev_1".into(),
            trust: TrustSummary {
                score: 1.0,
                level: crate::tokens::GrantedTrust::Trusted,
                attested: None,
            },
        };
        let debug = format!("{req:?} {req:#?} {res:?} {res:#?}");
        assert!(!debug.contains("secret-refresh-value"), "{debug}");
        assert!(!debug.contains("secret-access-value"), "{debug}");
        assert!(
            debug.contains("dev_1") && debug.contains("read:x"),
            "{debug}"
        );
    }
}
