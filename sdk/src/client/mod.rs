//! The client for apps: exchanges the API key for device-bound tokens, keeps one fresh, and
//! builds the headers for calls to resource servers.

mod access_token;
mod attestation;
mod defaults;
mod retry;
mod session;

pub use access_token::AccessToken;
pub use attestation::AttestationProvider;
pub use retry::RetryPolicy;
pub use session::{FileSessionStore, Session, SessionStore};

use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::device_key::DeviceKey;
use crate::dpop::DpopProofBuilder;
use crate::error::{Error, ErrorKind, Result};
use crate::http::{error_from_response, parse_service_url};
use crate::tls::{SpkiPin, parse_pem_certificates, parse_pin};
use crate::trust::TrustLevel;

/// The DPoP header (RFC 9449 section 4.1).
const DPOP: HeaderName = HeaderName::from_static("dpop");
/// The header a server sends a fresh nonce in (RFC 9449 section 8).
const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// A token is renewed once less than this fraction of its lifetime is left, so callers never
/// get one that expires mid-request.
const RENEW_WHEN_LEFT: f64 = 0.2;
/// When renewing fails for a passing reason, the current token is still handed out if it has
/// at least this much life left.
const MIN_USABLE_LIFE: Duration = Duration::from_secs(2);

/// The contract's device attribute limits (section 3.1), checked before anything is sent.
const MAX_ATTRIBUTES: usize = 32;
const MAX_ATTRIBUTE_NAME: usize = 64;
const MAX_ATTRIBUTE_VALUE: usize = 256;

/// A keybound client for an app: one per API key and device, cheap to clone and share.
///
/// ```no_run
/// # async fn run() -> keybound_sdk::Result<()> {
/// use keybound_sdk::{Client, Ed25519DeviceKey};
/// use std::sync::Arc;
///
/// let device_key = Ed25519DeviceKey::load_or_create("device.key")?;
/// let client = Client::builder("https://auth.example.com")
///     .api_key(std::env::var("KEYBOUND_API_KEY").unwrap_or_default().into())
///     .device_key(Arc::new(device_key))
///     .device_name("build server 3")
///     .device_attribute("platform", "linux")
///     .scope("read:users")
///     .build()?;
///
/// // Headers for one call to a resource server: `Authorization: DPoP …` and a fresh `DPoP` proof.
/// let url = "https://api.example.com/v1/users";
/// let headers = client.authorize("GET", url).await?;
/// let users = reqwest::Client::new().get(url).headers(headers).send().await;
/// # let _ = users;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    token_url: Url,
    refresh_url: Url,
    revoke_url: Url,
    challenge_url: Url,
    api_key: SecretString,
    device_key: Arc<dyn DeviceKey>,
    /// The device key's RFC 7638 thumbprint, computed once.
    jkt: String,
    exchange_body: Value,
    retry: RetryPolicy,
    cached: Mutex<Option<Cached>>,
    /// What outlives the process (refresh token, device id, attestation, install id); the
    /// store, when there is one, gets every change.
    session: Mutex<Session>,
    store: Option<Arc<dyn SessionStore>>,
    attestation: Option<Arc<dyn AttestationProvider>>,
    /// Held while a token is being obtained, so concurrent callers share one request; holds
    /// the outcome of the last renewal for those who waited on it.
    renewing: tokio::sync::Mutex<Option<Result<AccessToken>>>,
    /// How many renewals have finished; tells a waiter whether one finished while it waited.
    renewals: AtomicU64,
    /// The latest `DPoP-Nonce` the server sent; used in every later proof.
    nonce: Mutex<Option<String>>,
}

struct Cached {
    token: AccessToken,
    obtained: Instant,
    lifetime: Duration,
}

impl Cached {
    fn left(&self) -> Duration {
        self.lifetime.saturating_sub(self.obtained.elapsed())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// `POST /v1/token`: API key + proof.
    Exchange,
    /// `POST /v1/token/refresh`: refresh token + proof.
    Refresh,
    /// `POST /v1/token/revoke`: refresh token + proof (sign-out, contract 9.3).
    Revoke,
    /// `POST /v1/attestation/challenge`: no credentials (contract 8).
    Challenge,
}

impl Endpoint {
    /// Whether a failed attempt may be sent again. A refresh must not be: if the first one
    /// arrived, the second presents a spent token, which revokes the whole family.
    fn idempotent(self) -> bool {
        self != Endpoint::Refresh
    }
}

/// The success body of both token endpoints (contract 3.1).
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: u64,
    #[serde(default)]
    scope: String,
    refresh_token: Option<String>,
    refresh_expires_in: Option<u64>,
    device_id: String,
    trust: TrustWire,
}

#[derive(Deserialize)]
struct TrustWire {
    score: f64,
    level: TrustLevel,
    /// Contract section 8: the attestation format on record, `null` when none.
    #[serde(default)]
    attested: Option<String>,
}

/// `POST /v1/attestation/challenge`'s answer.
#[derive(Deserialize)]
struct ChallengeResponse {
    challenge: String,
}

impl Client {
    /// Starts configuring a client for the keybound server at `base_url` (its issuer URL, e.g.
    /// `https://auth.example.com`).
    pub fn builder(base_url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base_url: base_url.into(),
            api_key: None,
            device_key: None,
            device_name: None,
            attributes: BTreeMap::new(),
            scope: None,
            audience: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            retry: RetryPolicy::default(),
            allow_insecure_http: false,
            default_attributes: true,
            store: None,
            attestation: None,
            pins: Vec::new(),
            roots: Vec::new(),
        }
    }

    /// A valid access token.
    ///
    /// Served from memory while more than 20 % of its lifetime is left. Then renewed with the
    /// refresh token, or with a full exchange of the API key when there is no usable refresh
    /// token or the server refused it (spent, expired, reused). Concurrent callers share one
    /// renewal: a hundred tasks asking at once cause one request. If renewal fails for a
    /// passing reason (network, 5xx) while the current token still has some life, that token
    /// is returned and the failure logged.
    pub async fn token(&self) -> Result<AccessToken> {
        let inner = &*self.inner;
        if let Some(token) = inner.fresh_token() {
            return Ok(token);
        }
        let seen = inner.renewals.load(Ordering::Acquire);
        let mut last = inner.renewing.lock().await;
        // Whoever held the lock before us may have renewed already ...
        if let Some(token) = inner.fresh_token() {
            return Ok(token);
        }
        // ... or failed while we waited: share that outcome instead of repeating the request.
        // A hundred callers must not turn one refused key into a hundred failed
        // authentications (and a 429 from the server's per-IP failure budget).
        if inner.renewals.load(Ordering::Acquire) != seen
            && let Some(outcome) = last.as_ref()
        {
            return share(outcome);
        }
        let outcome = inner.renew().await;
        *last = Some(share(&outcome));
        inner.renewals.fetch_add(1, Ordering::Release);
        outcome
    }

    /// The headers for one request with HTTP `method` to `url` at a resource server:
    /// `Authorization: DPoP <token>` and a fresh `DPoP` proof bound to that token (`ath`,
    /// RFC 9449 section 4.2). Both values are marked sensitive, so `Debug` hides them.
    ///
    /// Every call builds a new proof; use the headers for exactly one request.
    pub async fn authorize(&self, method: &str, url: &str) -> Result<HeaderMap> {
        let token = self.token().await?;
        let proof = DpopProofBuilder::new(&*self.inner.device_key, method, url)
            .access_token(token.expose_secret())
            .sign_async()
            .await?;
        let mut headers = HeaderMap::with_capacity(2);
        headers.insert(
            AUTHORIZATION,
            sensitive(&format!("DPoP {}", token.expose_secret()))?,
        );
        headers.insert(DPOP, sensitive(&proof)?);
        Ok(headers)
    }

    /// Signs out: revokes the refresh token and every token of its family at the server
    /// (`POST /v1/token/revoke`, contract 9.3), and forgets the access and refresh tokens
    /// here and in the [`SessionStore`]. The next [`token`](Self::token) makes a full
    /// exchange.
    ///
    /// What describes the install rather than the sign-in stays: the device key, the install
    /// id and the attestation record. The local tokens are forgotten even when the server
    /// cannot be reached (the error is returned); the refresh token then dies at its expiry.
    /// Waits for a renewal in flight, so it cannot hand out a token from before the sign-out.
    pub async fn sign_out(&self) -> Result<()> {
        let inner = &*self.inner;
        let mut last = inner.renewing.lock().await;
        *last = None;
        *inner.cached.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let refresh_token = inner.update_session(|session| {
            session.refresh_expires_at = None;
            session.refresh_token.take()
        });
        match refresh_token {
            Some(token) => inner.revoke(&token).await,
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("token_url", &self.inner.token_url.as_str())
            .field("device_key", &self.inner.device_key)
            .finish_non_exhaustive()
    }
}

/// A copy of a renewal's outcome for another caller.
fn share(outcome: &Result<AccessToken>) -> Result<AccessToken> {
    match outcome {
        Ok(token) => Ok(token.clone()),
        Err(e) => Err(e.duplicate()),
    }
}

fn sensitive(value: &str) -> Result<HeaderValue> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| Error::new(ErrorKind::UnexpectedResponse { status: 200 }))?;
    value.set_sensitive(true);
    Ok(value)
}

/// A refresh that failed this way is worth replacing with a full exchange: the refresh token
/// is dead (spent, reused, unknown, bound to another key), or the refresh may have reached the
/// server without us seeing the answer, in which case the token we hold is already spent.
fn falls_back_to_exchange(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidRefreshToken
            | ErrorKind::RefreshTokenReused
            | ErrorKind::InvalidDpopProof
            | ErrorKind::Network
            | ErrorKind::Timeout
            | ErrorKind::Internal
            | ErrorKind::UnexpectedResponse { .. }
    )
}

/// Failures that say nothing about the credentials.
fn is_transient(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Network
            | ErrorKind::Timeout
            | ErrorKind::Internal
            | ErrorKind::Unavailable
            | ErrorKind::RateLimited { .. }
            | ErrorKind::UnexpectedResponse { .. }
    )
}

impl Inner {
    /// Renews the token: refresh first, full exchange when the refresh token is dead.
    async fn renew(&self) -> Result<AccessToken> {
        let current = {
            let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
            cached
                .as_ref()
                .filter(|c| c.left() >= MIN_USABLE_LIFE)
                .map(|c| c.token.clone())
        };
        let refresh = {
            let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
            session.refresh_token.clone().filter(|_| {
                session
                    .refresh_expires_at
                    .is_none_or(|t| SystemTime::now() < t)
            })
        };

        let renewed = match refresh {
            Some(refresh_token) => match self.refresh(&refresh_token).await {
                Err(e) if falls_back_to_exchange(e.kind()) => {
                    tracing::debug!(error = %e, "refresh failed; exchanging the API key instead");
                    // The refresh token is dead or possibly spent: presenting it again would
                    // only look like reuse to the server, even if the exchange fails too.
                    self.update_session(|session| {
                        session.refresh_token = None;
                        session.refresh_expires_at = None;
                    });
                    self.exchange().await
                }
                other => other,
            },
            None => self.exchange().await,
        };
        match (renewed, current) {
            (Err(e), Some(current)) if is_transient(e.kind()) => {
                tracing::warn!(error = %e, "token renewal failed; using the current token a little longer");
                Ok(current)
            }
            (renewed, _) => renewed,
        }
    }

    fn fresh_token(&self) -> Option<AccessToken> {
        let cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let cached = cached.as_ref()?;
        (cached.left() > cached.lifetime.mul_f64(RENEW_WHEN_LEFT)).then(|| cached.token.clone())
    }

    /// Changes the session and hands the new one to the store. A store that cannot save is
    /// cleared instead: a stale refresh token presented after a relaunch would be taken for
    /// a stolen one and revoke the family.
    fn update_session<T>(&self, change: impl FnOnce(&mut Session) -> T) -> T {
        let (out, snapshot) = {
            let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
            let out = change(&mut session);
            (out, self.store.is_some().then(|| session.clone()))
        };
        if let (Some(store), Some(snapshot)) = (&self.store, snapshot)
            && let Err(e) = store.save(&snapshot)
        {
            tracing::warn!(error = %e, "cannot save the session; clearing the stored one");
            if let Err(e) = store.clear() {
                tracing::warn!(error = %e, "cannot clear the stored session either");
            }
        }
        out
    }

    /// A full exchange of the API key, with an attestation when this device key has never
    /// had a token yet (or the server demands one).
    async fn exchange(&self) -> Result<AccessToken> {
        let attest = self.attestation.is_some() && {
            let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
            session.attested.is_none() && session.device_id.is_none()
        };
        match self.exchange_once(attest).await {
            // The key's policy became `required` after this device enrolled: attest now.
            Err(e)
                if e.kind() == &ErrorKind::AttestationRequired
                    && !attest
                    && self.attestation.is_some()
                    && self.session_attested().is_none() =>
            {
                self.exchange_once(true).await
            }
            other => other,
        }
    }

    fn session_attested(&self) -> Option<String> {
        let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        session.attested.clone()
    }

    async fn exchange_once(&self, attest: bool) -> Result<AccessToken> {
        let mut body = self.exchange_body.clone();
        if attest {
            let attestation = self.attest().await?;
            let device = body
                .as_object_mut()
                .expect("the exchange body is an object")
                .entry("device")
                .or_insert_with(|| json!({}));
            device["attestation"] = attestation;
        }
        self.obtain(Endpoint::Exchange, &body).await
    }

    /// Contract section 8: a fresh challenge, the provider's attestation of the client data
    /// `<challenge>.<jkt>`, and the `attestation` member with the challenge filled in.
    async fn attest(&self) -> Result<Value> {
        let provider = self.attestation.as_ref().expect("checked by the caller");
        let challenge: ChallengeResponse = self
            .request_with_retries(Endpoint::Challenge, &Value::Null)
            .await?;
        let client_data = format!("{}.{}", challenge.challenge, self.jkt);
        let mut attestation = provider.attest(client_data.as_bytes()).await?;
        match attestation.as_object_mut() {
            Some(member) if member.get("format").is_some_and(Value::is_string) => {
                member.insert("challenge".into(), challenge.challenge.into());
            }
            _ => {
                return Err(Error::new(ErrorKind::Attestation)
                    .with_message("the attestation provider returned no object with a format"));
            }
        }
        Ok(attestation)
    }

    async fn refresh(&self, refresh_token: &SecretString) -> Result<AccessToken> {
        let body = json!({ "refresh_token": refresh_token.expose_secret() });
        self.obtain(Endpoint::Refresh, &body).await
    }

    /// Contract 9.3: the server answers 200 `{}` whatever it revoked.
    async fn revoke(&self, refresh_token: &SecretString) -> Result<()> {
        let body = json!({
            "token": refresh_token.expose_secret(),
            "token_type_hint": "refresh_token",
        });
        let _: Value = self.request_with_retries(Endpoint::Revoke, &body).await?;
        Ok(())
    }

    /// One token request, retried per the policy; the token cached and the session saved.
    async fn obtain(&self, endpoint: Endpoint, body: &Value) -> Result<AccessToken> {
        let started = Instant::now();
        let started_wall = SystemTime::now();
        let response: TokenResponse = self.request_with_retries(endpoint, body).await?;
        if !response.token_type.eq_ignore_ascii_case("DPoP") {
            // A Bearer token would work for anyone who steals it; do not use one.
            return Err(Error::new(ErrorKind::UnexpectedResponse { status: 200 })
                .with_message("token_type is not DPoP"));
        }
        let lifetime = Duration::from_secs(response.expires_in);
        let attested = response.trust.attested.clone();
        // Lifetimes count from before the request was sent, so clock time spent in transit
        // only makes us renew early.
        let token = AccessToken::new(
            response.access_token,
            started_wall + lifetime,
            response.scope,
            response.device_id.clone(),
            response.trust.level,
            response.trust.score,
            attested.clone(),
        );
        let refresh_expires_at = response
            .refresh_token
            .as_ref()
            .map(|_| started_wall + Duration::from_secs(response.refresh_expires_in.unwrap_or(0)));
        self.update_session(|session| {
            session.refresh_token = response.refresh_token.map(SecretString::from);
            session.refresh_expires_at = refresh_expires_at;
            session.device_id = Some(response.device_id);
            session.key_thumbprint = Some(self.jkt.clone());
            // Once attested, always attested: the server keeps the record for the key's life.
            if attested.is_some() {
                session.attested = attested;
            }
        });
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(Cached {
            token: token.clone(),
            obtained: started,
            lifetime,
        });
        Ok(token)
    }

    async fn request_with_retries<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        body: &Value,
    ) -> Result<T> {
        let mut attempt = 0;
        let mut nonce_retried = false;
        loop {
            attempt += 1;
            let last_attempt = attempt >= self.retry.max_attempts;
            let wait = match self.send_once(endpoint, body).await {
                Ok(response) => return Ok(response),
                Err(Failure::Nonce(e)) => {
                    // RFC 9449 section 8: one retry with the nonce the server just sent. It
                    // does not count as an attempt: nothing failed, the server asked.
                    if nonce_retried {
                        return Err(e);
                    }
                    nonce_retried = true;
                    attempt -= 1;
                    continue;
                }
                Err(Failure::Retryable(e, retry_after)) => {
                    let wait = retry_after.unwrap_or_else(|| self.retry.backoff(attempt));
                    if last_attempt || wait > self.retry.max_retry_after {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, attempt, ?wait, "request failed; retrying");
                    wait
                }
                Err(Failure::Final(e)) => return Err(e),
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn send_once<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        body: &Value,
    ) -> Result<T, Failure> {
        let url = match endpoint {
            Endpoint::Exchange => &self.token_url,
            Endpoint::Refresh => &self.refresh_url,
            Endpoint::Revoke => &self.revoke_url,
            Endpoint::Challenge => &self.challenge_url,
        };
        let mut request = self.http.post(url.clone());
        if endpoint != Endpoint::Challenge {
            let nonce = self.nonce.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut proof = DpopProofBuilder::new(&*self.device_key, "POST", url.as_str());
            if let Some(nonce) = nonce.as_deref() {
                proof = proof.nonce(nonce);
            }
            let proof = proof.sign_async().await.map_err(Failure::Final)?;
            request = request.header(DPOP, proof).json(body);
        }
        if endpoint == Endpoint::Exchange {
            let mut key = HeaderValue::from_str(self.api_key.expose_secret()).map_err(|_| {
                Failure::Final(Error::config("the API key is not a valid header value"))
            })?;
            key.set_sensitive(true);
            request = request.header(X_API_KEY, key);
        }

        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                // Only a failure to connect proves a refresh did not arrive.
                let retry = endpoint.idempotent() || e.is_connect();
                let error = Error::from_http(e);
                // A pin mismatch is not passing: the same server answers the same way.
                let retry = retry && error.kind() != &ErrorKind::CertificatePinMismatch;
                return Err(if retry {
                    Failure::Retryable(error, None)
                } else {
                    Failure::Final(error)
                });
            }
        };
        if let Some(nonce) = response
            .headers()
            .get(DPOP_NONCE)
            .and_then(|v| v.to_str().ok())
        {
            *self.nonce.lock().unwrap_or_else(|e| e.into_inner()) = Some(nonce.to_owned());
        }
        let status = response.status();
        if status.is_success() {
            let bytes = response
                .bytes()
                .await
                .map_err(|e| Failure::Final(Error::from_http(e)))?;
            // The serde error is dropped on purpose: its text can quote the body, which holds
            // tokens.
            return serde_json::from_slice(&bytes).map_err(|_| {
                Failure::Final(
                    Error::new(ErrorKind::UnexpectedResponse {
                        status: status.as_u16(),
                    })
                    .with_status(status.as_u16())
                    .with_message("the answer does not have the contract's shape"),
                )
            });
        }

        let had_nonce = response.headers().contains_key(DPOP_NONCE);
        let error = error_from_response(response).await;
        Err(match error.kind().clone() {
            ErrorKind::UseDpopNonce if had_nonce => Failure::Nonce(error),
            ErrorKind::RateLimited { retry_after } => Failure::Retryable(error, retry_after),
            // 503 means the server failed closed and issued nothing: safe to repeat.
            ErrorKind::Unavailable => Failure::Retryable(error, None),
            _ if status.is_server_error() && endpoint.idempotent() => {
                Failure::Retryable(error, None)
            }
            _ => Failure::Final(error),
        })
    }
}

/// How one attempt failed, and so what the retry loop does next.
enum Failure {
    /// The server asked for a (new) nonce and sent one.
    Nonce(Error),
    /// Worth another attempt, after the server's `Retry-After` if it gave one.
    Retryable(Error, Option<Duration>),
    /// Retrying cannot help.
    Final(Error),
}

/// Configures a [`Client`]. The API key and the device key are required; every other option
/// has a documented default.
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClientBuilder {
    base_url: String,
    api_key: Option<SecretString>,
    device_key: Option<Arc<dyn DeviceKey>>,
    device_name: Option<String>,
    attributes: BTreeMap<String, String>,
    scope: Option<String>,
    audience: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryPolicy,
    allow_insecure_http: bool,
    default_attributes: bool,
    store: Option<Arc<dyn SessionStore>>,
    attestation: Option<Arc<dyn AttestationProvider>>,
    pins: Vec<SpkiPin>,
    roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[REDACTED]"))
            .field("device_key", &self.device_key)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The API key (`sk_<env>_…`). Required. Kept as a [`SecretString`]: zeroized on drop,
    /// never printed, sent only in the `X-API-Key` header of `POST /v1/token` (never in a
    /// URL).
    pub fn api_key(mut self, api_key: SecretString) -> Self {
        self.api_key = Some(api_key);
        self
    }

    /// The device's key. Required. Use [`Ed25519DeviceKey::load_or_create`](crate::Ed25519DeviceKey::load_or_create)
    /// so the device keeps its identity across restarts (each new key is a new device and
    /// counts against the API key's device limit), or a platform keystore behind
    /// [`DeviceKey`].
    pub fn device_key(mut self, device_key: Arc<dyn DeviceKey>) -> Self {
        self.device_key = Some(device_key);
        self
    }

    /// A human name for the device, shown to administrators. Default: none.
    pub fn device_name(mut self, name: impl Into<String>) -> Self {
        self.device_name = Some(name.into());
        self
    }

    /// One fingerprint attribute (`platform`, `model`, `os_version`, `app_version`,
    /// `install_id`, `locale`, `timezone`, …). keybound compares them on every exchange; keep
    /// the stable ones stable. At most 32, names up to 64 and values up to 256 characters.
    /// Default: none.
    pub fn device_attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Several fingerprint attributes at once; see [`device_attribute`](Self::device_attribute).
    pub fn device_attributes<K, V>(mut self, attributes: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.attributes
            .extend(attributes.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// The scopes to ask for, space separated. Default: all of the key's scopes (least
    /// privilege says: ask for what the app needs).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The audience to ask for. Default: the server's default audience.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Timeout for establishing a connection. Default: 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Timeout for one whole token request. Default: 15 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How token requests are retried. Default: [`RetryPolicy::default`].
    pub fn retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Where the session (refresh token, device id, attestation record, install id) is kept
    /// between launches, so a relaunch refreshes instead of exchanging the API key again.
    /// Default: none, the session lives in memory and every launch starts with an exchange.
    pub fn session_store(mut self, store: Arc<dyn SessionStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Attests the device key with the platform (contract section 8) before its first
    /// exchange; see [`AttestationProvider`]. Default: none, no attestation is sent.
    pub fn attestation_provider(mut self, provider: Arc<dyn AttestationProvider>) -> Self {
        self.attestation = Some(provider);
        self
    }

    /// Whether the client fills in the device attributes it can find itself, for any not set
    /// with [`device_attribute`](Self::device_attribute): `platform` (the operating system:
    /// `ios`, `android`, `macos`, `windows`, `linux`, …), `model` (on Linux, the DMI product
    /// name when there is one), and, with a [`session_store`](Self::session_store), an
    /// `install_id` made once and persisted (without a store there is none: a new id on every
    /// launch would look like a different device). keybound weighs these stable attributes
    /// heavily, so a copied device key presented with other ones loses trust. Default: on.
    pub fn default_device_attributes(mut self, enabled: bool) -> Self {
        self.default_attributes = enabled;
        self
    }

    /// Pins the server's public key: the TLS handshake fails, before anything is sent,
    /// unless the SHA-256 of the server certificate's DER SubjectPublicKeyInfo is one of the
    /// pins. `pin` is standard base64, optionally prefixed `sha256/` (OkHttp's format; `openssl
    /// x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary |
    /// base64` prints it). Call once per key: the current one and a backup. The chain is still
    /// verified against the trusted roots first. Only the server's own key is compared, not
    /// its CA's. A mismatch is [`ErrorKind::CertificatePinMismatch`]. Default: no pins.
    pub fn pin_spki_sha256(mut self, pin: &str) -> Result<Self> {
        self.pins.push(parse_pin(pin)?);
        Ok(self)
    }

    /// Trusts the certificates of `pem` (one or more `CERTIFICATE` blocks) as roots
    /// **instead of** the built-in Mozilla set, for a server under a private PKI. A CA the
    /// user installed on the device is never trusted either way. Default: the built-in set.
    pub fn add_root_certificates_pem(mut self, pem: &[u8]) -> Result<Self> {
        self.roots.extend(parse_pem_certificates(pem)?);
        Ok(self)
    }

    /// Accepts a plain-`http` base URL that is not a loopback address. Default: refused, since
    /// the API key would cross the network readable by anyone on the path.
    pub fn danger_allow_insecure_http(mut self) -> Self {
        self.allow_insecure_http = true;
        self
    }

    /// Checks the configuration and builds the client. No request is made until a token is
    /// needed.
    pub fn build(self) -> Result<Client> {
        let base = parse_service_url(&self.base_url, self.allow_insecure_http)?;
        let api_key = self
            .api_key
            .ok_or_else(|| Error::config("an API key is required"))?;
        check_api_key_format(api_key.expose_secret())?;
        let device_key = self
            .device_key
            .ok_or_else(|| Error::config("a device key is required"))?;

        let endpoint = |path: &str| {
            Url::parse(&format!("{}{path}", base.as_str().trim_end_matches('/')))
                .map_err(|e| Error::config(format!("invalid base URL: {e}")))
        };
        let jkt = device_key.thumbprint()?;
        let mut session = load_session(self.store.as_deref(), &jkt)?;
        let mut attributes = self.attributes;
        if self.default_attributes {
            defaults::fill_platform_and_model(&mut attributes);
            if let Some(store) = &self.store
                && !attributes.contains_key("install_id")
            {
                let install_id = match &session.install_id {
                    Some(id) => id.clone(),
                    None => {
                        // Saved before it is first sent, so every launch sends the same one.
                        let id = defaults::new_install_id();
                        session.install_id = Some(id.clone());
                        store.save(&session)?;
                        id
                    }
                };
                attributes.insert("install_id".into(), install_id);
            }
        }
        check_attributes(&attributes)?;

        let mut device = Map::new();
        if let Some(name) = self.device_name {
            device.insert("name".into(), name.into());
        }
        if !attributes.is_empty() {
            device.insert("attributes".into(), json!(attributes));
        }
        let mut body = Map::new();
        if let Some(scope) = self.scope {
            body.insert("scope".into(), scope.into());
        }
        if let Some(audience) = self.audience {
            body.insert("audience".into(), audience.into());
        }
        if !device.is_empty() {
            body.insert("device".into(), device.into());
        }

        let mut http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            // Credentials go to the configured server only.
            .redirect(reqwest::redirect::Policy::none());
        if !self.pins.is_empty() || !self.roots.is_empty() {
            http = http.use_preconfigured_tls(crate::tls::client_config(&self.roots, &self.pins)?);
        }
        let http = http
            .build()
            .map_err(|e| Error::config("cannot build the HTTP client").with_source(e))?;

        Ok(Client {
            inner: Arc::new(Inner {
                http,
                token_url: endpoint("/v1/token")?,
                refresh_url: endpoint("/v1/token/refresh")?,
                revoke_url: endpoint("/v1/token/revoke")?,
                challenge_url: endpoint("/v1/attestation/challenge")?,
                api_key,
                device_key,
                jkt,
                exchange_body: Value::Object(body),
                retry: self.retry,
                cached: Mutex::new(None),
                session: Mutex::new(session),
                store: self.store,
                attestation: self.attestation,
                renewing: tokio::sync::Mutex::new(None),
                renewals: AtomicU64::new(0),
                nonce: Mutex::new(None),
            }),
        })
    }
}

/// The stored session for the device key `jkt`. One stored for another key is cleared: its
/// refresh token is bound to that key and its attestation record is that key's.
fn load_session(store: Option<&dyn SessionStore>, jkt: &str) -> Result<Session> {
    let Some(store) = store else {
        return Ok(Session::default());
    };
    match store.load()? {
        Some(session) if session.key_thumbprint.as_deref() == Some(jkt) => Ok(session),
        Some(session) if session.key_thumbprint.is_none() && session.refresh_token.is_none() => {
            Ok(session)
        }
        Some(_) => {
            tracing::info!("the stored session belongs to another device key; starting afresh");
            store.clear()?;
            Ok(Session::default())
        }
        None => Ok(Session::default()),
    }
}

/// Contract section 2: `sk_<env>_<61 base62 chars>`. Catches the common mistake of passing the
/// public key id (`ak_…`) or a truncated key before it costs a failed authentication. The
/// error never repeats the value.
fn check_api_key_format(key: &str) -> Result<()> {
    let body = ["sk_prod_", "sk_test_", "sk_dev_"]
        .iter()
        .find_map(|prefix| key.strip_prefix(prefix));
    match body {
        Some(body) if body.len() == 61 && body.bytes().all(|b| b.is_ascii_alphanumeric()) => Ok(()),
        _ => Err(Error::config(
            "the API key does not look like a keybound key (sk_<env>_…)",
        )),
    }
}

fn check_attributes(attributes: &BTreeMap<String, String>) -> Result<()> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(Error::config(format!(
            "at most {MAX_ATTRIBUTES} device attributes"
        )));
    }
    for (name, value) in attributes {
        if name.chars().count() > MAX_ATTRIBUTE_NAME || value.chars().count() > MAX_ATTRIBUTE_VALUE
        {
            return Err(Error::config(format!(
                "device attribute {name:.64?} exceeds the size limits"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_format_is_checked_without_echoing_it() {
        let good = format!("sk_test_{}", "a".repeat(61));
        assert!(check_api_key_format(&good).is_ok());
        for bad in [
            "ak_test_AAAAAAAAAAAA".to_owned(),
            format!("sk_test_{}", "a".repeat(60)),
            format!("sk_stage_{}", "a".repeat(61)),
            format!("sk_test_{}-", "a".repeat(60)),
        ] {
            let err = check_api_key_format(&bad).unwrap_err();
            assert!(!err.to_string().contains(&bad));
        }
    }

    #[test]
    fn attribute_limits_follow_the_contract() {
        let mut attrs = BTreeMap::new();
        attrs.insert("platform".to_owned(), "x".repeat(256));
        assert!(check_attributes(&attrs).is_ok());
        attrs.insert("model".to_owned(), "x".repeat(257));
        assert!(check_attributes(&attrs).is_err());
        let many: BTreeMap<_, _> = (0..33).map(|i| (i.to_string(), String::new())).collect();
        assert!(check_attributes(&many).is_err());
    }

    #[test]
    fn the_sample_token_response_vector_parses() {
        let vector: Value =
            serde_json::from_str(include_str!("../../tests/vectors/token-response.json")).unwrap();
        let response: TokenResponse = serde_json::from_value(vector["response"].clone()).unwrap();
        assert_eq!(response.token_type, "DPoP");
        assert_eq!(response.expires_in, 300);
        assert_eq!(response.refresh_expires_in, Some(86400));
        assert_eq!(response.trust.level, TrustLevel::Limited);
        assert_eq!(response.trust.attested, None);
        assert_eq!(response.device_id, "dev_01JEXAMPLE");
    }

    #[test]
    fn only_dead_refresh_tokens_and_ambiguous_failures_fall_back() {
        assert!(falls_back_to_exchange(&ErrorKind::RefreshTokenReused));
        assert!(falls_back_to_exchange(&ErrorKind::InvalidRefreshToken));
        assert!(!falls_back_to_exchange(&ErrorKind::InvalidApiKey));
        assert!(!falls_back_to_exchange(&ErrorKind::DeviceRevoked));
        assert!(!falls_back_to_exchange(&ErrorKind::RateLimited {
            retry_after: None
        }));
    }
}
