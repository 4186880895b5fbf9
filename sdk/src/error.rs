//! One opaque error type for the whole SDK.
//!
//! The kind is what callers branch on; the rest (HTTP status, the server's human message, the
//! underlying cause) is there for logs. Nothing in an `Error` ever holds a secret: messages are
//! written by this crate or copied from the server's error envelope, which the contract keeps
//! free of secrets (section 7).

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from the SDK: a failed call to keybound, a refused token, a bad configuration.
///
/// Branch on [`Error::kind`]; print it for logs (the text never contains a secret).
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: ErrorKind,
    status: Option<u16>,
    message: Option<String>,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

/// What went wrong. Every error code of the keybound contract (section 5) has its own variant,
/// so an app can tell "key revoked" from "device limit" from "network down".
///
/// New variants may be added in minor releases, so a `match` needs a wildcard arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    // ---- codes from the server (contract section 5) ----
    /// `INVALID_REQUEST` (400): the server found the request malformed.
    InvalidRequest,
    /// `API_KEY_IN_URL` (400): an API key was put in a URL; the key has been flagged.
    ApiKeyInUrl,
    /// `USE_DPOP_NONCE` (400): the server wants a fresh DPoP nonce. The [`Client`](crate::Client)
    /// retries once by itself, so an app only sees this when the retry failed too.
    UseDpopNonce,
    /// `INVALID_AUDIENCE` (400): the requested audience is not allowed.
    InvalidAudience,
    /// `MISSING_API_KEY` (401): no API key was sent.
    MissingApiKey,
    /// `INVALID_API_KEY` (401): the key is malformed, unknown, expired, suspended or revoked. The
    /// server deliberately does not say which.
    InvalidApiKey,
    /// `INVALID_DPOP_PROOF` (401): the server refused the DPoP proof.
    InvalidDpopProof,
    /// `DPOP_REPLAY` (401): the server has already seen this proof.
    DpopReplay,
    /// `INVALID_REFRESH_TOKEN` (401): unknown, expired, or bound to another device key.
    InvalidRefreshToken,
    /// `REFRESH_TOKEN_REUSED` (401): a spent refresh token was presented; its whole family is
    /// now revoked.
    RefreshTokenReused,
    /// `INVALID_ADMIN_TOKEN` (401).
    InvalidAdminToken,
    /// `IP_NOT_ALLOWED` (403): the caller's address is outside the key's allow list.
    IpNotAllowed,
    /// `ORIGIN_NOT_ALLOWED` (403): the `Origin` is outside the key's allow list.
    OriginNotAllowed,
    /// `INSUFFICIENT_SCOPE` (403): a scope was asked for that the key does not hold; also what
    /// [`VerifiedToken::require_scope`](crate::VerifiedToken::require_scope) returns.
    InsufficientScope,
    /// `DEVICE_LIMIT_REACHED` (403): the key already has its maximum number of devices.
    DeviceLimitReached,
    /// `DEVICE_REVOKED` (403): this device key was revoked.
    DeviceRevoked,
    /// `DEVICE_UNTRUSTED` (403): the device's trust score is below the deny threshold.
    DeviceUntrusted,
    /// `NOT_FOUND` (404): usually a wrong base URL.
    NotFound,
    /// `METHOD_NOT_ALLOWED` (405).
    MethodNotAllowed,
    /// `PAYLOAD_TOO_LARGE` (413).
    PayloadTooLarge,
    /// `UNSUPPORTED_MEDIA_TYPE` (415).
    UnsupportedMediaType,
    /// `RATE_LIMITED` (429). `retry_after` is the server's `Retry-After`, when it sent one.
    RateLimited {
        /// How long the server asked the caller to wait.
        retry_after: Option<Duration>,
    },
    /// `ATTESTATION_REQUIRED` (403): the key requires a platform attestation and this device
    /// has none on record (contract section 8).
    AttestationRequired,
    /// `INVALID_ATTESTATION` (401): the attestation sent failed a check; the message names it.
    InvalidAttestation,
    /// `INTERNAL` (500): a bug in the server.
    Internal,
    /// `UNAVAILABLE` (503): the server's storage is unreachable and it fails closed. Also used by
    /// the [`Verifier`](crate::Verifier) when it cannot take more work safely (replay cache full).
    Unavailable,

    // ---- produced by this SDK ----
    /// The server could not be reached (DNS, connect, TLS, connection reset).
    Network,
    /// The server did not answer within the configured timeout.
    Timeout,
    /// The server answered something this SDK does not understand: an unknown error code, a
    /// body that is not the contract's shape, or an unexpected status.
    UnexpectedResponse {
        /// The HTTP status of the answer.
        status: u16,
    },
    /// The [`Verifier`](crate::Verifier) refused an access token or its DPoP proof.
    InvalidToken(InvalidTokenReason),
    /// The [`Verifier`](crate::Verifier) refused a token because the revocation feed names its
    /// API key or its device.
    Revoked,
    /// The device key could not be created, loaded, stored or used for signing.
    DeviceKey,
    /// A builder or function was given an invalid argument (a bad URL, a missing API key, …).
    Config,
    /// The server's TLS certificate chain verified, but its public key matches none of the
    /// configured pins (see [`ClientBuilder::pin_spki_sha256`](crate::ClientBuilder::pin_spki_sha256)):
    /// possibly an interception proxy. The handshake was abandoned; nothing was sent.
    CertificatePinMismatch,
    /// The [`SessionStore`](crate::SessionStore) could not load, save or clear the session.
    SessionStore,
    /// The [`AttestationProvider`](crate::AttestationProvider) failed or returned something
    /// that is not an attestation member.
    Attestation,
}

/// Why the [`Verifier`](crate::Verifier) refused a request. Each reason names one check, so a
/// log line says which attack or mistake was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidTokenReason {
    /// No `Authorization` header.
    MissingToken,
    /// `Authorization` does not use the `DPoP` scheme (a DPoP-bound token sent as `Bearer`).
    WrongScheme,
    /// Not a compact JWS, undecodable, or a required claim is missing or mistyped.
    Malformed,
    /// The header's `alg` is not on the allow list (`none`, `HS256`, `RS256`, …).
    AlgorithmNotAllowed,
    /// The header's `typ` is not `at+jwt`.
    WrongType,
    /// The header's `kid` is not in the issuer's JWKS, even after a refresh.
    UnknownKeyId,
    /// The signature does not verify.
    BadSignature,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// `aud` names none of the configured audiences.
    WrongAudience,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// The token has no `cnf.jkt`, so it is not bound to a device key.
    MissingConfirmation,
    /// No `DPoP` proof came with the token.
    MissingProof,
    /// The DPoP proof is malformed, has the wrong `typ` or `alg`, carries a private key, or its
    /// signature does not verify with its own `jwk`.
    InvalidProof,
    /// The proof's `htm` is not the request's method.
    ProofMethodMismatch,
    /// The proof's `htu` is not the request's URL.
    ProofUrlMismatch,
    /// The proof's `iat` is outside the accepted window.
    ProofTimeInvalid,
    /// The proof's `ath` is missing or is not the hash of this access token.
    ProofTokenHashMismatch,
    /// The proof was signed by a key other than the one the token is bound to (`cnf.jkt`).
    ProofKeyMismatch,
    /// The proof's `jti` was already used.
    ProofReplayed,
}

impl InvalidTokenReason {
    /// True for problems with the DPoP proof rather than with the access token; RFC 9449
    /// section 7.1 answers those with `error="invalid_dpop_proof"`.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) fn is_proof_problem(self) -> bool {
        matches!(
            self,
            Self::MissingProof
                | Self::InvalidProof
                | Self::ProofMethodMismatch
                | Self::ProofUrlMismatch
                | Self::ProofTimeInvalid
                | Self::ProofTokenHashMismatch
                | Self::ProofKeyMismatch
                | Self::ProofReplayed
        )
    }

    fn describe(self) -> &'static str {
        match self {
            Self::MissingToken => "no access token",
            Self::WrongScheme => "authorization scheme is not DPoP",
            Self::Malformed => "malformed token",
            Self::AlgorithmNotAllowed => "algorithm not allowed",
            Self::WrongType => "wrong token type",
            Self::UnknownKeyId => "unknown signing key",
            Self::BadSignature => "bad signature",
            Self::WrongIssuer => "wrong issuer",
            Self::WrongAudience => "wrong audience",
            Self::Expired => "token expired",
            Self::NotYetValid => "token not yet valid",
            Self::MissingConfirmation => "token is not bound to a key",
            Self::MissingProof => "no DPoP proof",
            Self::InvalidProof => "invalid DPoP proof",
            Self::ProofMethodMismatch => "DPoP proof for another method",
            Self::ProofUrlMismatch => "DPoP proof for another URL",
            Self::ProofTimeInvalid => "DPoP proof outside its time window",
            Self::ProofTokenHashMismatch => "DPoP proof for another token",
            Self::ProofKeyMismatch => "DPoP proof from another key",
            Self::ProofReplayed => "DPoP proof replayed",
        }
    }
}

impl fmt::Display for InvalidTokenReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

impl ErrorKind {
    /// The kind for a contract error code; `None` for a code this version does not know.
    pub(crate) fn from_code(code: &str, retry_after: Option<Duration>) -> Option<Self> {
        Some(match code {
            "INVALID_REQUEST" => Self::InvalidRequest,
            "API_KEY_IN_URL" => Self::ApiKeyInUrl,
            "USE_DPOP_NONCE" => Self::UseDpopNonce,
            "INVALID_AUDIENCE" => Self::InvalidAudience,
            "MISSING_API_KEY" => Self::MissingApiKey,
            "INVALID_API_KEY" => Self::InvalidApiKey,
            "INVALID_DPOP_PROOF" => Self::InvalidDpopProof,
            "DPOP_REPLAY" => Self::DpopReplay,
            "INVALID_REFRESH_TOKEN" => Self::InvalidRefreshToken,
            "REFRESH_TOKEN_REUSED" => Self::RefreshTokenReused,
            "INVALID_ADMIN_TOKEN" => Self::InvalidAdminToken,
            "IP_NOT_ALLOWED" => Self::IpNotAllowed,
            "ORIGIN_NOT_ALLOWED" => Self::OriginNotAllowed,
            "INSUFFICIENT_SCOPE" => Self::InsufficientScope,
            "DEVICE_LIMIT_REACHED" => Self::DeviceLimitReached,
            "DEVICE_REVOKED" => Self::DeviceRevoked,
            "DEVICE_UNTRUSTED" => Self::DeviceUntrusted,
            "NOT_FOUND" => Self::NotFound,
            "METHOD_NOT_ALLOWED" => Self::MethodNotAllowed,
            "PAYLOAD_TOO_LARGE" => Self::PayloadTooLarge,
            "UNSUPPORTED_MEDIA_TYPE" => Self::UnsupportedMediaType,
            "RATE_LIMITED" => Self::RateLimited { retry_after },
            "ATTESTATION_REQUIRED" => Self::AttestationRequired,
            "INVALID_ATTESTATION" => Self::InvalidAttestation,
            "INTERNAL" => Self::Internal,
            "UNAVAILABLE" => Self::Unavailable,
            _ => return None,
        })
    }

    fn describe(&self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid request",
            Self::ApiKeyInUrl => "API key in URL",
            Self::UseDpopNonce => "DPoP nonce required",
            Self::InvalidAudience => "audience not allowed",
            Self::MissingApiKey => "missing API key",
            Self::InvalidApiKey => "invalid API key",
            Self::InvalidDpopProof => "DPoP proof refused",
            Self::DpopReplay => "DPoP proof replayed",
            Self::InvalidRefreshToken => "invalid refresh token",
            Self::RefreshTokenReused => "refresh token reused",
            Self::InvalidAdminToken => "invalid admin token",
            Self::IpNotAllowed => "IP address not allowed",
            Self::OriginNotAllowed => "origin not allowed",
            Self::InsufficientScope => "insufficient scope",
            Self::DeviceLimitReached => "device limit reached",
            Self::DeviceRevoked => "device revoked",
            Self::DeviceUntrusted => "device untrusted",
            Self::NotFound => "not found",
            Self::MethodNotAllowed => "method not allowed",
            Self::PayloadTooLarge => "payload too large",
            Self::UnsupportedMediaType => "unsupported media type",
            Self::RateLimited { .. } => "rate limited",
            Self::AttestationRequired => "attestation required",
            Self::InvalidAttestation => "attestation refused",
            Self::Internal => "internal server error",
            Self::Unavailable => "service unavailable",
            Self::Network => "network error",
            Self::Timeout => "timed out",
            Self::UnexpectedResponse { .. } => "unexpected response",
            Self::InvalidToken(_) => "invalid token",
            Self::Revoked => "token revoked",
            Self::DeviceKey => "device key error",
            Self::Config => "invalid configuration",
            Self::CertificatePinMismatch => "server key matches no pin",
            Self::SessionStore => "session store error",
            Self::Attestation => "attestation provider error",
        }
    }
}

impl Error {
    /// An error of kind [`ErrorKind::DeviceKey`] wrapping `source`. Meant for implementations
    /// of [`DeviceKey`](crate::DeviceKey) backed by a platform keystore.
    pub fn device_key(source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        Self::new(ErrorKind::DeviceKey).with_source(source)
    }

    /// An error of `kind` with a human `message` (no secrets), for implementations of the
    /// SDK's traits ([`SessionStore`](crate::SessionStore),
    /// [`AttestationProvider`](crate::AttestationProvider)) and for bindings.
    pub fn with_kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::new(kind).with_message(message)
    }

    /// The human message: the server's, or the SDK's own. Never holds a secret.
    pub fn message(&self) -> Option<&str> {
        self.inner.message.as_deref()
    }

    /// The kind of error; what to branch on.
    pub fn kind(&self) -> &ErrorKind {
        &self.inner.kind
    }

    /// The HTTP status the server answered with, when the error came from an answer.
    pub fn status(&self) -> Option<u16> {
        self.inner.status
    }

    pub(crate) fn new(kind: ErrorKind) -> Self {
        Self {
            inner: Box::new(Inner {
                kind,
                status: None,
                message: None,
                source: None,
            }),
        }
    }

    /// A copy for a second receiver of the same failure; the source is left out (it is
    /// not clonable), kind, status and message are kept.
    pub(crate) fn duplicate(&self) -> Self {
        Self {
            inner: Box::new(Inner {
                kind: self.inner.kind.clone(),
                status: self.inner.status,
                message: self.inner.message.clone(),
                source: None,
            }),
        }
    }

    pub(crate) fn invalid_token(reason: InvalidTokenReason) -> Self {
        Self::new(ErrorKind::InvalidToken(reason))
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config).with_message(message)
    }

    pub(crate) fn with_status(mut self, status: u16) -> Self {
        self.inner.status = Some(status);
        self
    }

    pub(crate) fn with_message(mut self, message: impl Into<String>) -> Self {
        self.inner.message = Some(message.into());
        self
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    /// The kind of a `reqwest` failure: a timeout is not the same as "network down".
    pub(crate) fn from_http(err: reqwest::Error) -> Self {
        let kind = if crate::tls::is_pin_mismatch(&err) {
            ErrorKind::CertificatePinMismatch
        } else if err.is_timeout() {
            ErrorKind::Timeout
        } else if err.is_decode() {
            ErrorKind::UnexpectedResponse {
                status: err.status().map_or(0, |s| s.as_u16()),
            }
        } else {
            ErrorKind::Network
        };
        Self::new(kind).with_source(err)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind);
        if let Some(status) = self.inner.status {
            d.field("status", &status);
        }
        if let Some(message) = &self.inner.message {
            d.field("message", message);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner.kind {
            ErrorKind::InvalidToken(reason) => write!(f, "invalid token: {reason}")?,
            kind => f.write_str(kind.describe())?,
        }
        if let Some(status) = self.inner.status {
            write!(f, " (HTTP {status})")?;
        }
        if let Some(message) = &self.inner.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_code_has_a_kind() {
        let codes = [
            "INVALID_REQUEST",
            "API_KEY_IN_URL",
            "USE_DPOP_NONCE",
            "INVALID_AUDIENCE",
            "MISSING_API_KEY",
            "INVALID_API_KEY",
            "INVALID_DPOP_PROOF",
            "DPOP_REPLAY",
            "INVALID_REFRESH_TOKEN",
            "REFRESH_TOKEN_REUSED",
            "INVALID_ADMIN_TOKEN",
            "IP_NOT_ALLOWED",
            "ORIGIN_NOT_ALLOWED",
            "INSUFFICIENT_SCOPE",
            "DEVICE_LIMIT_REACHED",
            "DEVICE_REVOKED",
            "DEVICE_UNTRUSTED",
            "NOT_FOUND",
            "METHOD_NOT_ALLOWED",
            "PAYLOAD_TOO_LARGE",
            "UNSUPPORTED_MEDIA_TYPE",
            "ATTESTATION_REQUIRED",
            "INVALID_ATTESTATION",
            "RATE_LIMITED",
            "INTERNAL",
            "UNAVAILABLE",
        ];
        let mut kinds = Vec::new();
        for code in codes {
            let kind =
                ErrorKind::from_code(code, None).unwrap_or_else(|| panic!("{code} unmapped"));
            assert!(
                !kinds.contains(&kind),
                "{code} shares a kind with another code"
            );
            kinds.push(kind);
        }
        assert_eq!(ErrorKind::from_code("SOMETHING_NEW", None), None);
    }

    #[test]
    fn display_names_the_reason_and_status() {
        let err = Error::new(ErrorKind::InvalidApiKey)
            .with_status(401)
            .with_message("invalid api key");
        assert_eq!(
            err.to_string(),
            "invalid API key (HTTP 401): invalid api key"
        );
        let err = Error::invalid_token(InvalidTokenReason::Expired);
        assert_eq!(err.to_string(), "invalid token: token expired");
    }
}
