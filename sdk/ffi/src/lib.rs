//! # keybound-ffi
//!
//! The keybound client for Swift, Kotlin and Python, through
//! [UniFFI](https://mozilla.github.io/uniffi-rs/). A thin layer: every protocol decision
//! (proofs, renewal, retries, nonces, attestation, sign-out, pinning) is made by
//! [`keybound_sdk::Client`]; this crate only translates types.
//!
//! The app implements three foreign traits, so its secrets stay where the platform keeps
//! them: [`DeviceSigner`] (a Secure Enclave or Keystore P-256 key), [`SessionStore`] (the
//! Keychain, EncryptedSharedPreferences) and optionally [`AttestationProvider`]
//! (DCAppAttestService, Android Key Attestation). `docs/mobile.md` shows each per platform.
//!
//! The bindings are generated from the built library:
//! `cargo run -p keybound-ffi --features cli --bin uniffi-bindgen -- generate --library
//! target/debug/libkeybound_ffi.so --language python --out-dir out`.
#![deny(missing_docs)]

use keybound_sdk as sdk;
use keybound_sdk::ErrorKind;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

uniffi::setup_scaffolding!();

/// Every way a call can fail. The variants named after a contract error code carry the
/// server's answer to that code; the others are the SDK's own. `message` never holds a secret.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[non_exhaustive]
pub enum KeyboundError {
    /// `INVALID_REQUEST` (400).
    #[error("INVALID_REQUEST: {message}")]
    InvalidRequest {
        /// What went wrong.
        message: String,
    },
    /// `USE_DPOP_NONCE` (400), after the client's own retry with the new nonce failed too.
    #[error("USE_DPOP_NONCE: {message}")]
    UseDpopNonce {
        /// What went wrong.
        message: String,
    },
    /// `INVALID_AUDIENCE` (400).
    #[error("INVALID_AUDIENCE: {message}")]
    InvalidAudience {
        /// What went wrong.
        message: String,
    },
    /// `MISSING_API_KEY` (401).
    #[error("MISSING_API_KEY: {message}")]
    MissingApiKey {
        /// What went wrong.
        message: String,
    },
    /// `INVALID_API_KEY` (401): unknown, expired, suspended or revoked.
    #[error("INVALID_API_KEY: {message}")]
    InvalidApiKey {
        /// What went wrong.
        message: String,
    },
    /// `INVALID_DPOP_PROOF` (401).
    #[error("INVALID_DPOP_PROOF: {message}")]
    InvalidDpopProof {
        /// What went wrong.
        message: String,
    },
    /// `DPOP_REPLAY` (401).
    #[error("DPOP_REPLAY: {message}")]
    DpopReplay {
        /// What went wrong.
        message: String,
    },
    /// `INVALID_REFRESH_TOKEN` (401). [`KeyboundClient::token`] does not return it: the
    /// client replaces a dead refresh token with a new exchange.
    #[error("INVALID_REFRESH_TOKEN: {message}")]
    InvalidRefreshToken {
        /// What went wrong.
        message: String,
    },
    /// `REFRESH_TOKEN_REUSED` (401). [`KeyboundClient::token`] does not return it: the
    /// client replaces a dead refresh token with a new exchange.
    #[error("REFRESH_TOKEN_REUSED: {message}")]
    RefreshTokenReused {
        /// What went wrong.
        message: String,
    },
    /// `IP_NOT_ALLOWED` (403).
    #[error("IP_NOT_ALLOWED: {message}")]
    IpNotAllowed {
        /// What went wrong.
        message: String,
    },
    /// `ORIGIN_NOT_ALLOWED` (403).
    #[error("ORIGIN_NOT_ALLOWED: {message}")]
    OriginNotAllowed {
        /// What went wrong.
        message: String,
    },
    /// `INSUFFICIENT_SCOPE` (403).
    #[error("INSUFFICIENT_SCOPE: {message}")]
    InsufficientScope {
        /// What went wrong.
        message: String,
    },
    /// `DEVICE_LIMIT_REACHED` (403).
    #[error("DEVICE_LIMIT_REACHED: {message}")]
    DeviceLimitReached {
        /// What went wrong.
        message: String,
    },
    /// `DEVICE_REVOKED` (403).
    #[error("DEVICE_REVOKED: {message}")]
    DeviceRevoked {
        /// What went wrong.
        message: String,
    },
    /// `DEVICE_UNTRUSTED` (403).
    #[error("DEVICE_UNTRUSTED: {message}")]
    DeviceUntrusted {
        /// What went wrong.
        message: String,
    },
    /// `ATTESTATION_REQUIRED` (403).
    #[error("ATTESTATION_REQUIRED: {message}")]
    AttestationRequired {
        /// What went wrong.
        message: String,
    },
    /// `INVALID_ATTESTATION` (401); the message names the failed check.
    #[error("INVALID_ATTESTATION: {message}")]
    InvalidAttestation {
        /// What went wrong.
        message: String,
    },
    /// `RATE_LIMITED` (429), with the server's `Retry-After` when longer than the client waits
    /// by itself.
    #[error("RATE_LIMITED: {message}")]
    RateLimited {
        /// Seconds the server asked to wait, when it said.
        retry_after_seconds: Option<u64>,
        /// What went wrong.
        message: String,
    },
    /// `UNAVAILABLE` (503): the server fails closed; try later.
    #[error("UNAVAILABLE: {message}")]
    Unavailable {
        /// What went wrong.
        message: String,
    },
    /// `INTERNAL` (500).
    #[error("INTERNAL: {message}")]
    Internal {
        /// What went wrong.
        message: String,
    },
    /// The server could not be reached, or did not answer in time.
    #[error("NETWORK: {message}")]
    Network {
        /// What went wrong.
        message: String,
    },
    /// The server's key matched none of the configured SPKI pins; nothing was sent.
    #[error("CERTIFICATE_PIN_MISMATCH: {message}")]
    CertificatePinMismatch {
        /// What went wrong.
        message: String,
    },
    /// An answer this version does not understand (unknown code, wrong shape).
    #[error("UNEXPECTED_RESPONSE: {message}")]
    UnexpectedResponse {
        /// The HTTP status.
        status: u16,
        /// What went wrong.
        message: String,
    },
    /// The [`DeviceSigner`] failed or gave an unusable key or signature.
    #[error("DEVICE_KEY: {message}")]
    DeviceKey {
        /// What went wrong.
        message: String,
    },
    /// The [`SessionStore`] failed.
    #[error("SESSION_STORE: {message}")]
    SessionStore {
        /// What went wrong.
        message: String,
    },
    /// The [`AttestationProvider`] failed or returned no attestation member.
    #[error("ATTESTATION: {message}")]
    Attestation {
        /// What went wrong.
        message: String,
    },
    /// The configuration was refused (bad URL, plain http to a remote host, a key id instead
    /// of the key, a malformed pin, …).
    #[error("CONFIG: {message}")]
    Config {
        /// What went wrong.
        message: String,
    },
}

impl From<sdk::Error> for KeyboundError {
    fn from(e: sdk::Error) -> Self {
        let message = e.to_string();
        match e.kind() {
            ErrorKind::InvalidRequest => Self::InvalidRequest { message },
            ErrorKind::UseDpopNonce => Self::UseDpopNonce { message },
            ErrorKind::InvalidAudience => Self::InvalidAudience { message },
            ErrorKind::MissingApiKey => Self::MissingApiKey { message },
            ErrorKind::InvalidApiKey => Self::InvalidApiKey { message },
            ErrorKind::InvalidDpopProof => Self::InvalidDpopProof { message },
            ErrorKind::DpopReplay => Self::DpopReplay { message },
            ErrorKind::InvalidRefreshToken => Self::InvalidRefreshToken { message },
            ErrorKind::RefreshTokenReused => Self::RefreshTokenReused { message },
            ErrorKind::IpNotAllowed => Self::IpNotAllowed { message },
            ErrorKind::OriginNotAllowed => Self::OriginNotAllowed { message },
            ErrorKind::InsufficientScope => Self::InsufficientScope { message },
            ErrorKind::DeviceLimitReached => Self::DeviceLimitReached { message },
            ErrorKind::DeviceRevoked => Self::DeviceRevoked { message },
            ErrorKind::DeviceUntrusted => Self::DeviceUntrusted { message },
            ErrorKind::AttestationRequired => Self::AttestationRequired { message },
            ErrorKind::InvalidAttestation => Self::InvalidAttestation { message },
            ErrorKind::RateLimited { retry_after } => Self::RateLimited {
                retry_after_seconds: retry_after.map(|d| d.as_secs()),
                message,
            },
            ErrorKind::Unavailable => Self::Unavailable { message },
            ErrorKind::Internal => Self::Internal { message },
            ErrorKind::Network | ErrorKind::Timeout => Self::Network { message },
            ErrorKind::CertificatePinMismatch => Self::CertificatePinMismatch { message },
            ErrorKind::DeviceKey => Self::DeviceKey { message },
            ErrorKind::SessionStore => Self::SessionStore { message },
            ErrorKind::Attestation => Self::Attestation { message },
            ErrorKind::Config => Self::Config { message },
            ErrorKind::UnexpectedResponse { status } => Self::UnexpectedResponse {
                status: *status,
                message,
            },
            // Codes a client never gets from the token endpoints (admin, routing, verifier).
            _ => Self::UnexpectedResponse {
                status: e.status().unwrap_or(0),
                message,
            },
        }
    }
}

impl From<uniffi::UnexpectedUniFFICallbackError> for KeyboundError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::DeviceKey {
            message: format!("foreign callback failed: {}", e.reason),
        }
    }
}

/// The SDK error for an app-implemented trait's failure.
fn to_sdk(e: KeyboundError, kind: ErrorKind) -> sdk::Error {
    sdk::Error::with_kind(kind, e.to_string())
}

// ---- foreign traits ----

/// A public key as a JWK: `kty` `"EC"`, `crv` `"P-256"`, `x` and `y` (ES256, the mobile
/// default), or `kty` `"OKP"`, `crv` `"Ed25519"`, `x` (EdDSA). Coordinates base64url without
/// padding. Never the private part.
#[derive(Debug, Clone, uniffi::Record)]
pub struct PublicJwk {
    /// `"EC"` or `"OKP"`.
    pub kty: String,
    /// `"P-256"` or `"Ed25519"`.
    pub crv: String,
    /// The x coordinate (EC) or the public key (OKP).
    pub x: String,
    /// The y coordinate (EC only).
    pub y: Option<String>,
}

/// The device's signing key, implemented by the app: a Secure Enclave or Android Keystore
/// (StrongBox) P-256 key. keybound knows the device by this key's thumbprint, so keep it for
/// the install's life.
#[uniffi::export(with_foreign)]
#[async_trait::async_trait]
pub trait DeviceSigner: Send + Sync {
    /// The public key. Called once, when the client is built.
    fn public_jwk(&self) -> PublicJwk;
    /// `"ES256"` (P-256) or `"EdDSA"` (Ed25519). Called once, when the client is built.
    fn alg(&self) -> String;
    /// Signs `message`: for ES256 the 64-byte `r || s` (convert the platform's DER signature),
    /// for EdDSA the 64-byte signature. May prompt the user; the client awaits it.
    async fn sign(&self, message: Vec<u8>) -> Result<Vec<u8>, KeyboundError>;
}

/// What the client persists between launches. Keep it in the Keychain or
/// EncryptedSharedPreferences: `refresh_token` is a credential.
#[derive(Debug, Clone, Default, uniffi::Record)]
pub struct StoredSession {
    /// The current refresh token (rotates on every refresh), if any.
    pub refresh_token: Option<String>,
    /// When it expires, in Unix seconds.
    pub refresh_expires_at: Option<u64>,
    /// keybound's id for this device.
    pub device_id: Option<String>,
    /// The thumbprint of the device key the session belongs to.
    pub key_thumbprint: Option<String>,
    /// The attestation format keybound recorded, once it did.
    pub attested: Option<String>,
    /// The install id sent as the `install_id` device attribute.
    pub install_id: Option<String>,
}

/// Where the session lives between launches, implemented by the app.
#[uniffi::export(with_foreign)]
pub trait SessionStore: Send + Sync {
    /// The stored session, or none.
    fn load(&self) -> Result<Option<StoredSession>, KeyboundError>;
    /// Replaces the stored session.
    fn save(&self, session: StoredSession) -> Result<(), KeyboundError>;
    /// Forgets the stored session.
    fn clear(&self) -> Result<(), KeyboundError>;
}

/// Attests the device key with the platform (contract section 8), implemented by the app.
#[uniffi::export(with_foreign)]
#[async_trait::async_trait]
pub trait AttestationProvider: Send + Sync {
    /// The `attestation` member as JSON text (an object with `format` and the format's
    /// members; the client adds `challenge`) for `client_data` (`<challenge>.<jkt>`).
    async fn attest(&self, client_data: Vec<u8>) -> Result<String, KeyboundError>;
}

// ---- adapters to the SDK's traits ----

/// A [`DeviceSigner`] as the SDK's `DeviceKey`; key and alg read once and checked.
struct Signer {
    foreign: Arc<dyn DeviceSigner>,
    jwk: Value,
    alg: String,
}

impl Signer {
    fn new(foreign: Arc<dyn DeviceSigner>) -> Result<Self, KeyboundError> {
        let key = foreign.public_jwk();
        let alg = foreign.alg();
        let valid = match (alg.as_str(), key.kty.as_str(), key.crv.as_str()) {
            ("ES256", "EC", "P-256") => key.y.is_some(),
            ("EdDSA", "OKP", "Ed25519") => key.y.is_none(),
            _ => false,
        };
        if !valid {
            return Err(KeyboundError::DeviceKey {
                message: format!(
                    "alg {alg:?} with a {:?}/{:?} key: use ES256 with EC P-256 or EdDSA with OKP Ed25519",
                    key.kty, key.crv
                ),
            });
        }
        let mut jwk = json!({"kty": key.kty, "crv": key.crv, "x": key.x});
        if let Some(y) = key.y {
            jwk["y"] = y.into();
        }
        Ok(Self { foreign, jwk, alg })
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceSigner")
            .field("public_jwk", &self.jwk)
            .finish_non_exhaustive()
    }
}

impl sdk::DeviceKey for Signer {
    fn public_jwk(&self) -> Value {
        self.jwk.clone()
    }

    fn alg(&self) -> &str {
        &self.alg
    }

    fn sign<'a>(&'a self, message: &'a [u8]) -> sdk::Signing<'a> {
        sdk::Signing::later(async move {
            let signature = self
                .foreign
                .sign(message.to_vec())
                .await
                .map_err(|e| to_sdk(e, ErrorKind::DeviceKey))?;
            if signature.len() != 64 {
                return Err(sdk::Error::with_kind(
                    ErrorKind::DeviceKey,
                    format!(
                        "the signer returned {} bytes; a JWS signature is 64 (r || s, not DER)",
                        signature.len()
                    ),
                ));
            }
            Ok(signature)
        })
    }
}

struct Store(Arc<dyn SessionStore>);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionStore")
    }
}

fn from_unix(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

fn to_unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl sdk::SessionStore for Store {
    fn load(&self) -> sdk::Result<Option<sdk::Session>> {
        let stored = self
            .0
            .load()
            .map_err(|e| to_sdk(e, ErrorKind::SessionStore))?;
        Ok(stored.map(|s| {
            let mut session = sdk::Session::default();
            session.refresh_token = s.refresh_token.map(SecretString::from);
            session.refresh_expires_at = s.refresh_expires_at.map(from_unix);
            session.device_id = s.device_id;
            session.key_thumbprint = s.key_thumbprint;
            session.attested = s.attested;
            session.install_id = s.install_id;
            session
        }))
    }

    fn save(&self, session: &sdk::Session) -> sdk::Result<()> {
        self.0
            .save(StoredSession {
                refresh_token: session
                    .refresh_token
                    .as_ref()
                    .map(|t| t.expose_secret().to_owned()),
                refresh_expires_at: session.refresh_expires_at.map(to_unix),
                device_id: session.device_id.clone(),
                key_thumbprint: session.key_thumbprint.clone(),
                attested: session.attested.clone(),
                install_id: session.install_id.clone(),
            })
            .map_err(|e| to_sdk(e, ErrorKind::SessionStore))
    }

    fn clear(&self) -> sdk::Result<()> {
        self.0
            .clear()
            .map_err(|e| to_sdk(e, ErrorKind::SessionStore))
    }
}

struct Attestation(Arc<dyn AttestationProvider>);

impl std::fmt::Debug for Attestation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AttestationProvider")
    }
}

impl sdk::AttestationProvider for Attestation {
    fn attest<'a>(
        &'a self,
        client_data: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = sdk::Result<Value>> + Send + 'a>> {
        Box::pin(async move {
            let text = self
                .0
                .attest(client_data.to_vec())
                .await
                .map_err(|e| to_sdk(e, ErrorKind::Attestation))?;
            serde_json::from_str(&text).map_err(|_| {
                sdk::Error::with_kind(ErrorKind::Attestation, "the attestation is not JSON")
            })
        })
    }
}

// ---- the client ----

/// How to build a [`KeyboundClient`]. Every field but `base_url` and `api_key` has a default.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ClientConfig {
    /// The keybound server (its issuer URL), `https://…`.
    pub base_url: String,
    /// The API key, `sk_<env>_…`. Keep it out of logs and source control.
    pub api_key: String,
    /// Scopes to ask for, space separated. Default: all of the key's.
    #[uniffi(default = None)]
    pub scope: Option<String>,
    /// The audience to ask for. Default: the server's default.
    #[uniffi(default = None)]
    pub audience: Option<String>,
    /// A human name for the device, shown to administrators.
    #[uniffi(default = None)]
    pub device_name: Option<String>,
    /// Fingerprint attributes (`model`, `os_version`, `app_version`, `locale`, …).
    #[uniffi(default)]
    pub device_attributes: HashMap<String, String>,
    /// Whether the client adds `platform`, `model` (where it can read it) and a persisted
    /// `install_id` (with a session store) for attributes not given. Default: true.
    #[uniffi(default = true)]
    pub default_device_attributes: bool,
    /// SPKI SHA-256 pins of the server's key (base64, optionally `sha256/…`). Default: none.
    #[uniffi(default = [])]
    pub spki_pins: Vec<String>,
    /// PEM root certificates trusted instead of the built-in set. Default: none.
    #[uniffi(default = [])]
    pub root_certificates_pem: Vec<String>,
    /// Attempts per token request, the first included (network errors, 5xx and short
    /// `Retry-After`s are retried with backoff). Default: 4.
    #[uniffi(default = 4)]
    pub max_attempts: u32,
    /// Allows plain http to a non-loopback host. Default: false. Never in production.
    #[uniffi(default = false)]
    pub danger_allow_insecure_http: bool,
}

/// An access token and what keybound said about it.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Token {
    /// The JWT. Send it only with a DPoP proof ([`KeyboundClient::authorize`] builds both).
    pub access_token: String,
    /// Expiry, Unix seconds by this device's clock.
    pub expires_at: u64,
    /// The granted scopes, space separated.
    pub scope: String,
    /// keybound's id for this device.
    pub device_id: String,
    /// `"trusted"` or `"limited"`.
    pub trust_level: String,
    /// The trust score, 0 to 1.
    pub trust_score: f64,
    /// The attestation format on record, if any.
    pub attested: Option<String>,
}

/// The two headers for one call to a resource server.
#[derive(Debug, Clone, uniffi::Record)]
pub struct AuthHeaders {
    /// The `Authorization` value: `DPoP <token>`.
    pub authorization: String,
    /// The `DPoP` value: a fresh proof for this method and URL.
    pub dpop: String,
}

/// The keybound client: one per API key and device; share it.
#[derive(Debug, uniffi::Object)]
pub struct KeyboundClient {
    inner: sdk::Client,
}

#[uniffi::export(async_runtime = "tokio")]
impl KeyboundClient {
    /// Builds a client; no request is made until a token is needed. Loads the stored session.
    #[uniffi::constructor]
    pub fn new(
        config: ClientConfig,
        signer: Arc<dyn DeviceSigner>,
        session_store: Option<Arc<dyn SessionStore>>,
        attestation_provider: Option<Arc<dyn AttestationProvider>>,
    ) -> Result<Arc<Self>, KeyboundError> {
        let mut builder = sdk::Client::builder(config.base_url)
            .api_key(SecretString::from(config.api_key))
            .device_key(Arc::new(Signer::new(signer)?))
            .device_attributes(config.device_attributes)
            .default_device_attributes(config.default_device_attributes)
            .retry_policy(sdk::RetryPolicy::default().max_attempts(config.max_attempts));
        if let Some(scope) = config.scope {
            builder = builder.scope(scope);
        }
        if let Some(audience) = config.audience {
            builder = builder.audience(audience);
        }
        if let Some(name) = config.device_name {
            builder = builder.device_name(name);
        }
        for pin in &config.spki_pins {
            builder = builder.pin_spki_sha256(pin)?;
        }
        for pem in &config.root_certificates_pem {
            builder = builder.add_root_certificates_pem(pem.as_bytes())?;
        }
        if config.danger_allow_insecure_http {
            builder = builder.danger_allow_insecure_http();
        }
        if let Some(store) = session_store {
            builder = builder.session_store(Arc::new(Store(store)));
        }
        if let Some(provider) = attestation_provider {
            builder = builder.attestation_provider(Arc::new(Attestation(provider)));
        }
        Ok(Arc::new(Self {
            inner: builder.build()?,
        }))
    }

    /// A valid access token: from memory, else refreshed, else a new exchange. Concurrent
    /// calls share one request.
    pub async fn token(&self) -> Result<Token, KeyboundError> {
        let token = self.inner.token().await?;
        Ok(Token {
            access_token: token.expose_secret().to_owned(),
            expires_at: to_unix(token.expires_at()),
            scope: token.scope().to_owned(),
            device_id: token.device_id().to_owned(),
            trust_level: token.trust_level().as_str().to_owned(),
            trust_score: token.trust_score(),
            attested: token.attested().map(str::to_owned),
        })
    }

    /// The `Authorization` and `DPoP` headers for one request with `method` to `url`.
    pub async fn authorize(
        &self,
        method: String,
        url: String,
    ) -> Result<AuthHeaders, KeyboundError> {
        let headers = self.inner.authorize(&method, &url).await?;
        let value = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_default()
        };
        Ok(AuthHeaders {
            authorization: value("authorization"),
            dpop: value("dpop"),
        })
    }

    /// Signs out: revokes the refresh token family at the server and forgets the tokens.
    pub async fn sign_out(&self) -> Result<(), KeyboundError> {
        Ok(self.inner.sign_out().await?)
    }
}
