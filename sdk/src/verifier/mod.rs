//! The offline verifier for resource servers: checks keybound access tokens and their DPoP
//! proofs with nothing but the issuer's public keys and its revocation feed.

mod claims;
mod jwks;
mod replay;
mod revocations;
mod status;
mod token;

pub use token::VerifiedToken;

use ed25519_dalek::Signature;
use reqwest::Url;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use self::claims::ClaimRules;
use self::jwks::Jwks;
use self::replay::{ReplayCache, ReplayError};
use self::revocations::{FEED_TYP, FeedClaims, MAX_PAGES_PER_POLL, Revocations, horizon};
use self::status::{
    Fetched, ListClaims, MAX_LIST_RESPONSE, STATUS_LIST_MEDIA_TYPE, STATUS_LIST_TYP, Slot,
    StatusList, StatusLists, StatusRef,
};
use self::token::AccessClaims;
use crate::dpop::{ProofExpectations, ProofKeys, check_proof, htu};
use crate::error::{Error, ErrorKind, InvalidTokenReason, Result};
use crate::http::{error_from_response, parse_service_url};
use crate::jose::{CompactJws, b64_decode, unix_now};

/// The only `alg` accepted for access tokens and the feed. It is compared with the header
/// before anything else is read, so `none`, `HS256` signed with the public key as the HMAC
/// secret, or RSA confusion never reach signature code.
const TOKEN_ALG: &str = "EdDSA";
/// RFC 9068 section 2.1: `at+jwt`, or its full media type.
const TOKEN_TYPS: [&str; 2] = ["at+jwt", "application/at+jwt"];
/// A feed page older than this is refused: an attacker on the path replaying an old, validly
/// signed page must not be able to hide newer revocations.
const MAX_FEED_AGE: u64 = 300;
/// Where keybound publishes its status lists, under the issuer. A token naming a list
/// anywhere else is refused: the verifier fetches only from its issuer.
const STATUS_LIST_PATH: &str = "/v1/status-lists/";
/// After a failed first fetch of a status list, requests do not try again inline for this
/// long (they are judged on the feed meanwhile), so an unreachable list does not put a
/// network round trip on every request.
const STATUS_RETRY: Duration = Duration::from_secs(2);

/// Checks keybound access tokens offline, as a resource server needs.
///
/// Built with [`Verifier::builder`]; share one per process (it is `Send + Sync`; put it in an
/// `Arc`). While it lives, a background task polls the issuer's revocation feed.
///
/// ```no_run
/// # async fn run() -> keybound_sdk::Result<()> {
/// use keybound_sdk::Verifier;
///
/// let verifier = Verifier::builder("https://auth.example.com")
///     .audience("https://api.example.com")
///     .build()
///     .await?;
///
/// let token = verifier
///     .verify_request(
///         "GET",
///         "https://api.example.com/v1/orders?page=2",
///         Some("DPoP eyJ…"), // the Authorization header
///         Some("eyJ…"),      // the DPoP header
///     )
///     .await?;
/// token.require_scope("read:orders")?;
/// println!("key {} on device {}", token.subject(), token.device_id());
/// # Ok(())
/// # }
/// ```
///
/// # When a service cannot verify offline: introspection
///
/// A service that cannot run this verifier (a gateway without Ed25519, a language without an
/// SDK, a policy against caching keys) can ask the issuer instead, with RFC 7662
/// introspection (contract 9.4): one call per request, answered from the issuer's validation
/// cache, so a revoked or suspended key or a revoked device is inactive at once rather than
/// after the next feed poll. The operator gives the service its own bearer token
/// (`keybound serve --introspection-token T`, repeatable):
///
/// ```text
/// POST /v1/token/introspect HTTP/1.1
/// Host: auth.example.com
/// Authorization: Bearer <introspection token>
/// Content-Type: application/x-www-form-urlencoded
///
/// token=eyJ…
///
/// HTTP/1.1 200 OK
/// Cache-Control: no-store
///
/// {"active": true, "scope": "read:orders", "client_id": "ak_prod_…", "sub": "ak_prod_…",
///  "aud": "https://api.example.com", "iss": "https://auth.example.com", "exp": 1767225900,
///  "iat": 1767225600, "jti": "…", "token_type": "DPoP", "cnf": {"jkt": "…"},
///  "did": "dev_…", "trust": "trusted"}
/// ```
///
/// Anything else answers `{"active": false}` and nothing more. Introspection does **not**
/// check the DPoP proof: the service must still check the request's `DPoP` header against
/// `cnf.jkt` (RFC 9449 section 7), and the audience, as this verifier does; without that a
/// stolen token is as good as the device's. Prefer this verifier where it can run: it needs no
/// call per request and keeps working while the issuer is unreachable.
pub struct Verifier {
    shared: Arc<Shared>,
    poller: Option<tokio::task::JoinHandle<()>>,
}

struct Shared {
    issuer: String,
    leeway: u64,
    proof_window: u64,
    resource_url: Option<Url>,
    http: reqwest::Client,
    jwks: Jwks,
    replay: ReplayCache,
    proof_keys: ProofKeys,
    revocations: Revocations,
    feed: Option<Feed>,
    status_lists: StatusLists,
    status_prefix: String,
    max_staleness: Duration,
    token_rules: ClaimRules,
    feed_rules: ClaimRules,
    list_rules: ClaimRules,
}

struct Feed {
    url: Url,
    interval: Duration,
}

/// Configures a [`Verifier`]. Every option has a secure default.
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct VerifierBuilder {
    issuer: String,
    audiences: Vec<String>,
    leeway: Duration,
    proof_window: Duration,
    jwks: Option<Value>,
    jwks_refresh_interval: Duration,
    poll_interval: Option<Duration>,
    replay_capacity: usize,
    replay_quota_per_key: usize,
    max_staleness: Duration,
    http_timeout: Duration,
    resource_url: Option<String>,
    allow_insecure_http: bool,
}

impl Verifier {
    /// Starts configuring a verifier for tokens issued by `issuer`, which must be exactly the
    /// server's `--issuer` (the `iss` claim and the base of its well-known URLs).
    pub fn builder(issuer: impl Into<String>) -> VerifierBuilder {
        VerifierBuilder {
            issuer: issuer.into(),
            audiences: Vec::new(),
            leeway: Duration::from_secs(30),
            proof_window: Duration::from_secs(60),
            jwks: None,
            jwks_refresh_interval: Duration::from_secs(10),
            poll_interval: Some(Duration::from_secs(5)),
            replay_capacity: 100_000,
            replay_quota_per_key: 1_000,
            max_staleness: Duration::from_secs(300),
            http_timeout: Duration::from_secs(5),
            resource_url: None,
            allow_insecure_http: false,
        }
    }

    /// Verifies a request to this resource server: its `Authorization: DPoP <token>` header and
    /// its `DPoP` proof header, for a request with HTTP `method` to the full `url` the client
    /// used (scheme, host, path; query and fragment are ignored).
    ///
    /// Checks, in order: the `DPoP` scheme and both headers present (a token without a proof
    /// is refused); the token's `alg` (EdDSA only), `typ` (`at+jwt`) and `kid`; its signature;
    /// `iss`, `aud`, `exp` and `nbf` (with the leeway); `cnf.jkt`; the revocation feed; the
    /// proof (RFC 9449 section 4.3: `typ`, `alg`, signature by its `jwk`, `htm`, `htu`, `iat`,
    /// `ath`); that the proof's key is the one in `cnf.jkt`; the token's entry in its status
    /// list (contract section 10); that the revocation state is fresh enough
    /// ([`VerifierBuilder::max_staleness`]); and last, that the proof was not used before.
    ///
    /// Refusals are [`ErrorKind::InvalidToken`] with the failed check, or
    /// [`ErrorKind::Revoked`] (the feed or the status list says the key or device was revoked
    /// or suspended). [`ErrorKind::Unavailable`] means the verifier fails closed: neither the
    /// feed nor the token's status list could be read for longer than `max_staleness`, or the
    /// replay cache is full of live entries. [`ErrorKind::RateLimited`] means this device key
    /// holds its whole quota of the replay cache
    /// ([`VerifierBuilder::replay_quota_per_key`]).
    pub async fn verify_request(
        &self,
        method: &str,
        url: &str,
        authorization: Option<&str>,
        dpop: Option<&str>,
    ) -> Result<VerifiedToken> {
        use InvalidTokenReason::*;
        let shared = &*self.shared;
        let authorization = authorization.ok_or(Error::invalid_token(MissingToken))?;
        let (scheme, token) = authorization
            .trim()
            .split_once(' ')
            .ok_or(Error::invalid_token(Malformed))?;
        // RFC 9449 section 7.1: a DPoP-bound token travels under the DPoP scheme. Taking it as
        // Bearer would let a stolen token be used without the device key.
        if !scheme.eq_ignore_ascii_case("DPoP") {
            return Err(Error::invalid_token(WrongScheme));
        }
        let token = token.trim();
        let proof = dpop.ok_or(Error::invalid_token(MissingProof))?;
        let request_htu = htu(url)?;

        let claims: AccessClaims = shared
            .verify_jws(token, &TOKEN_TYPS, &shared.token_rules)
            .await
            .map_err(Error::invalid_token)?;
        let jkt = claims
            .cnf
            .as_ref()
            .and_then(|c| c.jkt.clone())
            .ok_or(Error::invalid_token(MissingConfirmation))?;
        if shared.revocations.is_revoked(&claims.sub, &jkt, claims.iat) {
            return Err(Error::new(ErrorKind::Revoked));
        }

        let now = unix_now();
        let checked = check_proof(
            proof.trim(),
            &shared.proof_keys,
            &ProofExpectations {
                method,
                htu: &request_htu,
                access_token: token,
                window: shared.proof_window,
                now,
            },
        )
        .map_err(Error::invalid_token)?;
        // RFC 9449 section 7.1: the proof must come from the key the token is bound to; a
        // thief holding the token alone can only sign proofs with some other key.
        if checked.jkt != jkt {
            return Err(Error::invalid_token(ProofKeyMismatch));
        }
        check_status(&self.shared, claims.status.as_ref().map(|s| &s.status_list)).await?;
        // An accepted proof has |iat - now| <= window, so it cannot be accepted after
        // now + 2 * window; remembering it that long is enough.
        let remember_until = now + 2 * shared.proof_window + 1;
        match shared
            .replay
            .insert(&checked.jkt, &checked.jti, remember_until, now)
        {
            Ok(()) => {}
            Err(ReplayError::Replayed) => return Err(Error::invalid_token(ProofReplayed)),
            Err(ReplayError::QuotaExceeded { until }) => {
                return Err(Error::new(ErrorKind::RateLimited {
                    retry_after: Some(Duration::from_secs(until.saturating_sub(now).max(1))),
                })
                .with_message("this device key holds its whole share of the DPoP replay cache"));
            }
            Err(ReplayError::Full) => {
                tracing::warn!("DPoP replay cache is full; refusing requests until entries expire");
                return Err(
                    Error::new(ErrorKind::Unavailable).with_message("DPoP replay cache full")
                );
            }
        }
        tracing::trace!(proof_iat = checked.iat, "DPoP-bound token verified");
        Ok(VerifiedToken::new(claims, jkt))
    }

    /// Whether the revocation feed was read to its end within the last three poll intervals.
    /// `false` while the verifier is still catching up with a long feed, and always `false`
    /// when the feed is disabled. Export it as a metric or a readiness signal.
    pub fn feed_healthy(&self) -> bool {
        self.shared
            .feed
            .as_ref()
            .is_some_and(|feed| self.shared.revocations.healthy(3 * feed.interval))
    }

    /// When the revocation feed was last read successfully, if ever.
    pub fn feed_last_success(&self) -> Option<SystemTime> {
        self.shared.revocations.last_success()
    }

    /// The public URL of this resource server, as given to
    /// [`VerifierBuilder::resource_url`].
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn resource_url(&self) -> Option<&Url> {
        self.shared.resource_url.as_ref()
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        if let Some(poller) = &self.poller {
            poller.abort();
        }
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.shared.issuer)
            .field("feed_healthy", &self.feed_healthy())
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Verifies a compact JWS signed by the issuer: `alg` against the allow list first, then
    /// `typ`, `kid`, the signature, and the registered claims per `rules`; then reads the
    /// claims into `T`.
    async fn verify_jws<T: DeserializeOwned>(
        &self,
        token: &str,
        typs: &[&str],
        rules: &ClaimRules,
    ) -> Result<T, InvalidTokenReason> {
        use InvalidTokenReason::*;
        let jws = CompactJws::split(token).map_err(|_| Malformed)?;
        if jws.header_str("alg") != Some(TOKEN_ALG) {
            return Err(AlgorithmNotAllowed);
        }
        if !jws.header_str("typ").is_some_and(|t| typs.contains(&t)) {
            return Err(WrongType);
        }
        let kid = jws.header_str("kid").ok_or(UnknownKeyId)?;
        let key = self.jwks.key(&self.http, kid).await.ok_or(UnknownKeyId)?;
        let signature = Signature::from_slice(jws.signature()).map_err(|_| BadSignature)?;
        // verify_strict (RFC 8032 section 5.1.7 with the checks RFC 8037 leaves implicit):
        // refuses non-canonical encodings and small-order points, so a signature has exactly
        // one valid form.
        key.verify_strict(jws.signing_input().as_bytes(), &signature)
            .map_err(|_| BadSignature)?;
        let payload = b64_decode(jws.payload_b64()).ok_or(Malformed)?;
        rules.check(&payload, unix_now())?;
        serde_json::from_slice(&payload).map_err(|_| Malformed)
    }

    /// Reads the revocation feed from the cursor and applies it, page after page while it says
    /// there are `more` (at most [`MAX_PAGES_PER_POLL`] pages a poll). The first poll starts at
    /// the revocation horizon (`since_time`), not at the feed's beginning.
    async fn poll_revocations(&self) -> Result<()> {
        let Some(feed) = &self.feed else {
            return Ok(());
        };
        for _ in 0..MAX_PAGES_PER_POLL {
            let page = self.read_feed_page(&feed.url).await?;
            let more = page.more && page.next.is_some();
            let count = page.revocations.len();
            self.revocations.apply(page, self.leeway);
            if count > 0 {
                tracing::info!(count, "applied revocations from the feed");
            }
            if !more {
                self.revocations.poll_finished(true);
                return Ok(());
            }
        }
        tracing::warn!("revocation feed longer than one poll reads; catching up");
        self.revocations.poll_finished(false);
        Ok(())
    }

    /// One verified page of the feed after the current cursor.
    async fn read_feed_page(&self, url: &Url) -> Result<FeedClaims> {
        let mut request = self.http.get(url.clone());
        request = match self.revocations.cursor() {
            Some(cursor) => request.query(&[("since", cursor)]),
            None => request.query(&[("since_time", horizon(unix_now(), self.leeway))]),
        };
        let response = request.send().await.map_err(Error::from_http)?;
        if !response.status().is_success() {
            return Err(error_from_response(response).await);
        }
        let body = response.text().await.map_err(Error::from_http)?;
        let body = body.trim();
        // The JWS is the body; tolerate it arriving as a JSON string too.
        let jws = serde_json::from_str::<String>(body).unwrap_or_else(|_| body.to_owned());
        let page: FeedClaims = self
            .verify_jws(&jws, &[FEED_TYP], &self.feed_rules)
            .await
            .map_err(|reason| {
                Error::new(ErrorKind::InvalidToken(reason)).with_message("revocation feed")
            })?;
        let now = unix_now();
        if page.iat + MAX_FEED_AGE + self.leeway < now
            || page.iat + self.leeway < self.revocations.last_iat()
        {
            return Err(Error::new(ErrorKind::UnexpectedResponse { status: 200 })
                .with_message("stale revocation feed page"));
        }
        Ok(page)
    }

    /// Fetches and verifies the status list token at `uri`: signed by the issuer like access
    /// tokens (`typ: statuslist+jwt`), its `sub` the URI it was fetched from, the response and
    /// the decompressed list both bounded.
    async fn fetch_status_list(&self, uri: &str) -> Result<Fetched> {
        let unexpected = |message: &'static str| {
            Error::new(ErrorKind::UnexpectedResponse { status: 200 }).with_message(message)
        };
        let mut response = self
            .http
            .get(uri)
            .header(reqwest::header::ACCEPT, STATUS_LIST_MEDIA_TYPE)
            .send()
            .await
            .map_err(Error::from_http)?;
        if !response.status().is_success() {
            return Err(error_from_response(response).await);
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_LIST_RESPONSE as u64)
        {
            return Err(unexpected("status list response too large"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(Error::from_http)? {
            if body.len() + chunk.len() > MAX_LIST_RESPONSE {
                return Err(unexpected("status list response too large"));
            }
            body.extend_from_slice(&chunk);
        }
        let text = std::str::from_utf8(&body)
            .map_err(|_| unexpected("status list is not text"))?
            .trim();
        let claims: ListClaims = self
            .verify_jws(text, &[STATUS_LIST_TYP], &self.list_rules)
            .await
            .map_err(|reason| {
                Error::new(ErrorKind::InvalidToken(reason)).with_message("status list")
            })?;
        // Draft section 5.1: `sub` is the list's URI; a list served for another URI (a
        // cache or proxy mix-up, or an attacker replaying a validly signed list) is refused.
        if claims.sub != uri {
            return Err(unexpected("status list names another URI"));
        }
        let list = StatusList::decode(&claims.status_list)
            .map_err(|_| unexpected("status list cannot be decoded"))?;
        tracing::debug!(uri, iat = claims.iat, "status list fetched");
        Ok(Fetched::new(claims, list))
    }
}

/// The token's revocation status from its status list, then the freshness rule.
///
/// A list seen before answers from memory; past its `ttl` it is refreshed in the background
/// while the copy in hand keeps answering. A list never seen is fetched first (one fetch for
/// all concurrent requests). Then: a status other than 0 (1 invalid, 2 suspended) refuses the
/// token; and when neither the feed nor the list was read within `max_staleness`, the token is
/// refused as [`ErrorKind::Unavailable`]: the verifier no longer knows what was revoked.
async fn check_status(shared: &Arc<Shared>, status: Option<&StatusRef>) -> Result<()> {
    let fetched = match status {
        Some(status) => current_list(shared, status).await?,
        None => None,
    };
    if let (Some(status), Some(fetched)) = (status, &fetched) {
        match fetched.list.get(status.idx) {
            Some(0) => {}
            Some(_) => return Err(Error::new(ErrorKind::Revoked)),
            // Draft section 8.3: an index outside the list is an invalid reference.
            None => return Err(Error::invalid_token(InvalidTokenReason::Malformed)),
        }
    }
    let feed_read = shared
        .feed
        .as_ref()
        .and_then(|_| shared.revocations.last_success());
    // A copy past its own `exp` still says what was revoked, but no longer that the rest is
    // valid: it does not count as fresh.
    let now = unix_now();
    let list_read = fetched
        .as_ref()
        .filter(|f| f.expires_at.is_none_or(|exp| now <= exp + shared.leeway))
        .map(|f| f.fetched_at);
    let newest = feed_read.max(list_read);
    let watched = shared.feed.is_some() || status.is_some();
    let stale = newest
        .and_then(|t| t.elapsed().ok())
        .is_none_or(|age| age > shared.max_staleness);
    if watched && stale {
        tracing::warn!("neither the revocation feed nor the status list is fresh; refusing");
        return Err(Error::new(ErrorKind::Unavailable)
            .with_message("revocation state is older than max_staleness"));
    }
    Ok(())
}

/// The copy of the status list `status` names that requests should use now, if any.
async fn current_list(shared: &Arc<Shared>, status: &StatusRef) -> Result<Option<Arc<Fetched>>> {
    let under_issuer = status
        .uri
        .strip_prefix(&shared.status_prefix)
        .is_some_and(|n| !n.is_empty() && !n.contains(['/', '?', '#']));
    if !under_issuer {
        return Err(Error::invalid_token(InvalidTokenReason::Malformed)
            .with_message("status list outside the issuer"));
    }
    let slot = shared.status_lists.slot(&status.uri);
    if let Some(fetched) = slot.current() {
        if std::time::SystemTime::now() >= fetched.refresh_at && slot.start_refresh() {
            let (shared, slot, uri) = (shared.clone(), slot.clone(), status.uri.clone());
            tokio::spawn(async move {
                refresh_list(&shared, &slot, &uri).await;
                slot.end_refresh();
            });
        }
        return Ok(Some(fetched));
    }
    if !slot.may_retry(STATUS_RETRY) {
        return Ok(None);
    }
    let _one_fetch = slot.fetch.lock().await;
    if slot.current().is_none() && slot.may_retry(STATUS_RETRY) {
        refresh_list(shared, &slot, &status.uri).await;
    }
    Ok(slot.current())
}

/// Fetches the list into its slot; a failure keeps the last good copy and is logged.
async fn refresh_list(shared: &Shared, slot: &Slot, uri: &str) {
    match shared.fetch_status_list(uri).await {
        Ok(fetched) => slot.store(fetched),
        Err(error) => {
            slot.failed();
            tracing::warn!(%error, uri, "status list unreachable; keeping the last good copy");
        }
    }
}

impl VerifierBuilder {
    /// Adds an accepted audience (`aud`). Repeat for several. Default: only the issuer itself,
    /// which is what the server puts in `aud` when it has no `--audience`; a resource server
    /// should name its own audience.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// Clock skew tolerated on `exp` and `nbf`. Default: 30 s.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// How far a DPoP proof's `iat` may be from now, either way. Default: 60 s, the window the
    /// server uses. A shorter window means a smaller replay cache and less time for replays.
    pub fn proof_window(mut self, window: Duration) -> Self {
        self.proof_window = window;
        self
    }

    /// Uses a fixed JWKS (`{"keys": [...]}`) instead of fetching it from the issuer's metadata.
    /// Meant for tests and air-gapped setups: a fixed set never learns about key rotation.
    /// Default: discovered through `/.well-known/oauth-authorization-server` → `jwks_uri`,
    /// cached per `Cache-Control: max-age`, refreshed on an unknown `kid` (at most every 10 s),
    /// with the last good set kept when a refresh fails.
    pub fn jwks(mut self, jwks: Value) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// The least time between two JWKS fetches, whatever triggers them (an unknown `kid`, an
    /// expired cache). Default: 10 s, so tokens with made-up `kid`s cannot make this verifier
    /// flood the issuer.
    pub fn jwks_refresh_interval(mut self, interval: Duration) -> Self {
        self.jwks_refresh_interval = interval;
        self
    }

    /// How often to poll the revocation feed (`GET /v1/revocations`). Default: every 5 s,
    /// which bounds how long a revoked key or device keeps working here.
    pub fn revocation_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = Some(interval.max(Duration::from_millis(100)));
        self
    }

    /// Turns the revocation feed off: tokens then stay valid until they expire even after their
    /// key or device is revoked. Default: on. Only for tests or issuers without the feed.
    pub fn danger_disable_revocation_feed(mut self) -> Self {
        self.poll_interval = None;
        self
    }

    /// How many DPoP proofs to remember for replay detection. A proof is remembered for twice
    /// the proof window; when the cache is full of live proofs, requests are refused
    /// ([`ErrorKind::Unavailable`]) rather than risking a replay. Default: 100 000, enough for
    /// ~800 requests per second with the default window.
    pub fn replay_cache_capacity(mut self, capacity: usize) -> Self {
        self.replay_capacity = capacity.max(1);
        self
    }

    /// How many live proofs one device key (`jkt`) may hold in the replay cache. A client that
    /// sends more proofs than this within the replay window (twice the proof window) is
    /// refused with [`ErrorKind::RateLimited`] until its oldest proofs expire, so one client
    /// cannot fill the cache and lock every other client out. Default: 1 000 (over 8 requests
    /// per second per device, sustained, with the default window); at most the capacity.
    pub fn replay_quota_per_key(mut self, quota: usize) -> Self {
        self.replay_quota_per_key = quota.max(1);
        self
    }

    /// How old the verifier's knowledge of revocations may get before it refuses tokens
    /// ([`ErrorKind::Unavailable`], fail closed). Knowledge is as fresh as the newer of the last
    /// complete read of the revocation feed and the last fetch of the token's status list, so
    /// an outage of one of them alone changes nothing. Default: 5 minutes — long enough to ride
    /// out a brief issuer outage, short next to the hour an access token can live.
    pub fn max_staleness(mut self, max: Duration) -> Self {
        self.max_staleness = max;
        self
    }

    /// Timeout for each request to the issuer (metadata, JWKS, feed, status lists). Default: 5 s.
    pub fn http_timeout(mut self, timeout: Duration) -> Self {
        self.http_timeout = timeout;
        self
    }

    /// The public base URL of this resource server (e.g. `https://api.example.com`), used by
    /// the axum extractor to rebuild the URL a proof's `htu` must match. It is configured
    /// rather than taken from the `Host` header, which the client controls. Default: none; the
    /// extractor then refuses every request.
    pub fn resource_url(mut self, url: impl Into<String>) -> Self {
        self.resource_url = Some(url.into());
        self
    }

    /// Accepts a plain-`http` issuer that is not a loopback address. Default: refused, since
    /// anyone on the path could then replace the JWKS and mint tokens.
    pub fn danger_allow_insecure_http(mut self) -> Self {
        self.allow_insecure_http = true;
        self
    }

    /// Builds the verifier: discovers and fetches the JWKS (unless fixed) and reads the
    /// revocation feed once (unless disabled). Both must succeed, so a resource server never
    /// starts accepting tokens without knowing which are revoked. Then starts polling the feed
    /// in a background task on the current tokio runtime.
    pub async fn build(self) -> Result<Verifier> {
        let issuer_url = parse_service_url(&self.issuer, self.allow_insecure_http)?;
        let resource_url = self
            .resource_url
            .as_deref()
            .map(|u| parse_service_url(u, true))
            .transpose()?;
        let http = reqwest::Client::builder()
            .timeout(self.http_timeout)
            .connect_timeout(self.http_timeout)
            // Key material comes only from the configured issuer; no redirects elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::config("cannot build the HTTP client").with_source(e))?;

        let jwks = match &self.jwks {
            Some(jwks) => Jwks::fixed(jwks)?,
            None => {
                let jwks_uri = discover_jwks_uri(&http, &self.issuer, &issuer_url).await?;
                let jwks_uri = parse_service_url(&jwks_uri, self.allow_insecure_http)?;
                Jwks::remote(&http, jwks_uri.into(), self.jwks_refresh_interval).await?
            }
        };

        let audiences = if self.audiences.is_empty() {
            vec![self.issuer.clone()]
        } else {
            self.audiences
        };
        let token_rules = ClaimRules {
            issuer: self.issuer.clone(),
            require_issuer: true,
            audiences: Some(audiences),
            require_exp: true,
            leeway: self.leeway.as_secs(),
        };
        let feed_rules = ClaimRules {
            audiences: None,
            require_exp: false,
            ..token_rules.clone()
        };
        let list_rules = ClaimRules {
            require_issuer: false,
            ..feed_rules.clone()
        };

        let feed = self.poll_interval.map(|interval| Feed {
            url: Url::parse(&format!(
                "{}/v1/revocations",
                self.issuer.trim_end_matches('/')
            ))
            .expect("the issuer is a valid URL"),
            interval,
        });
        let status_prefix = format!("{}{STATUS_LIST_PATH}", self.issuer.trim_end_matches('/'));
        let shared = Arc::new(Shared {
            issuer: self.issuer,
            leeway: self.leeway.as_secs(),
            proof_window: self.proof_window.as_secs(),
            resource_url,
            http,
            jwks,
            replay: ReplayCache::new(self.replay_capacity, self.replay_quota_per_key),
            proof_keys: ProofKeys::default(),
            revocations: Revocations::default(),
            feed,
            status_lists: StatusLists::default(),
            status_prefix,
            max_staleness: self.max_staleness,
            token_rules,
            feed_rules,
            list_rules,
        });

        let poller = match &shared.feed {
            Some(feed) => {
                shared.poll_revocations().await?;
                Some(tokio::spawn(poll_forever(
                    Arc::downgrade(&shared),
                    feed.interval,
                )))
            }
            None => None,
        };
        Ok(Verifier { shared, poller })
    }
}

/// Polls the feed until the verifier is dropped. Failures keep the last state (every token
/// revoked so far stays refused) and are logged once per failed poll.
async fn poll_forever(shared: Weak<Shared>, interval: Duration) {
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(error) = shared.poll_revocations().await {
            tracing::warn!(
                %error,
                last_success = ?shared.revocations.last_success(),
                "revocation feed unreachable; keeping the last known revocations"
            );
        }
    }
}

/// RFC 8414: reads the issuer's metadata and returns its `jwks_uri`, after checking that the
/// metadata names the same issuer (section 3.3; stops one server posing as another).
async fn discover_jwks_uri(
    http: &reqwest::Client,
    issuer: &str,
    issuer_url: &Url,
) -> Result<String> {
    // Section 3.1: the well-known segment goes between the host and the issuer's path.
    let path = issuer_url.path().trim_end_matches('/');
    let mut metadata_url = issuer_url.clone();
    metadata_url.set_path(&format!("/.well-known/oauth-authorization-server{path}"));
    metadata_url.set_query(None);

    let response = http
        .get(metadata_url)
        .send()
        .await
        .map_err(Error::from_http)?;
    if !response.status().is_success() {
        return Err(error_from_response(response).await);
    }
    let metadata: Value = response.json().await.map_err(Error::from_http)?;
    let unexpected = || Error::new(ErrorKind::UnexpectedResponse { status: 200 });
    if metadata.get("issuer").and_then(Value::as_str) != Some(issuer) {
        return Err(unexpected().with_message("metadata names another issuer"));
    }
    metadata
        .get("jwks_uri")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| unexpected().with_message("metadata has no jwks_uri"))
}
