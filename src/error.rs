//! The one error type of the server, mapped to the contract's envelope (contract section 5).
//!
//! Every handler returns [`Result<T>`]; the [`IntoResponse`] impl below is the only place that
//! turns an error into an HTTP response. A 5xx body never says more than the code: the cause is
//! logged once, inside the request span, and never sent to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// `Result` with the server's [`Error`] as default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every way a request can fail, one variant per contract code.
///
/// Messages are written for the client and never contain a secret: no key, token, proof or
/// hash is ever formatted into one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400: malformed JSON, wrong types, limits exceeded.
    #[error("{0}")]
    InvalidRequest(String),
    /// 400: an API key appeared in the query string.
    #[error("API keys must not be sent in the URL; this key has been flagged")]
    ApiKeyInUrl,
    /// 400: a DPoP nonce is required or the presented one is stale; carries a fresh nonce.
    #[error("a fresh DPoP nonce is required; use the one in the DPoP-Nonce header")]
    UseDpopNonce {
        /// The nonce to send back in the `DPoP-Nonce` header.
        nonce: String,
    },
    /// 400: the requested audience is not in the allowed list.
    #[error("the requested audience is not allowed")]
    InvalidAudience,
    /// 401: no API key was presented.
    #[error("an API key is required (X-API-Key or Authorization: Bearer)")]
    MissingApiKey,
    /// 401: one message for malformed, unknown, wrong secret, expired, suspended or revoked keys.
    #[error("the API key is invalid")]
    InvalidApiKey,
    /// 401: the DPoP proof failed a check; the reason names the check, never the proof.
    #[error("invalid DPoP proof: {0}")]
    InvalidDpopProof(String),
    /// 401: the proof's `jti` was already seen within its window.
    #[error("the DPoP proof was already used")]
    DpopReplay,
    /// 401: unknown, expired, or bound to another device key.
    #[error("the refresh token is invalid")]
    InvalidRefreshToken,
    /// 401: a spent refresh token was presented again; its family is now revoked.
    #[error("the refresh token was already used; all tokens of this session are revoked")]
    RefreshTokenReused,
    /// 401: the admin API was called without the right token.
    #[error("invalid admin token")]
    InvalidAdminToken,
    /// 403: the client IP is outside the key's allow list.
    #[error("requests from this IP address are not allowed for this key")]
    IpNotAllowed,
    /// 403: the `Origin` is outside the key's allow list.
    #[error("requests from this origin are not allowed for this key")]
    OriginNotAllowed,
    /// 403: a scope the key does not hold was requested.
    #[error("the key does not hold the requested scope")]
    InsufficientScope,
    /// 403: a new device beyond the key's `max_devices`.
    #[error("the key has reached its device limit")]
    DeviceLimitReached,
    /// 403: the device was revoked.
    #[error("this device has been revoked")]
    DeviceRevoked,
    /// 403: the device's trust score is below the deny threshold.
    #[error("this device is not trusted")]
    DeviceUntrusted,
    /// The key's attestation policy is `required` and the device has no valid attestation on
    /// record (contract section 8).
    #[error("this key requires a platform attestation of the device; none is on record")]
    AttestationRequired,
    /// A presented attestation failed a check; the message names the check, never secrets.
    #[error("invalid attestation: {0}")]
    InvalidAttestation(String),
    /// 404: unknown route or object; the admin API when it is off.
    #[error("not found")]
    NotFound,
    /// 405: wrong method on a known route.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: body over 16 KiB.
    #[error("the request body is larger than 16 KiB")]
    PayloadTooLarge,
    /// 415: the body is not JSON.
    #[error("the request body must be JSON (Content-Type: application/json)")]
    UnsupportedMediaType,
    /// 429: a rate limit or failure budget is spent.
    #[error("rate limit exceeded; retry after {retry_after_secs} s")]
    RateLimited {
        /// Seconds until a retry can succeed (the `Retry-After` header).
        retry_after_secs: u64,
    },
    /// 429 `RATE_LIMITED` as well, for a wrong secret: the presented key id's failure budget
    /// is spent. Apart from [`RateLimited`](Self::RateLimited) because it is a failed
    /// authentication, which counts against the client address's failure budget; a key's own
    /// rate limit is not.
    #[error("rate limit exceeded; retry after {retry_after_secs} s")]
    KeyIdBudgetSpent {
        /// Seconds until the id's budget has room again (the `Retry-After` header).
        retry_after_secs: u64,
    },
    /// 503: storage (or Redis) is unreachable; nothing was issued.
    #[error("a storage dependency is unavailable")]
    Unavailable(#[source] Cause),
    /// 500: a bug. The cause is logged, never sent.
    #[error("internal error")]
    Internal(#[source] Cause),
}

/// Declares [`ErrorCode`] from the list of codes: each variant's name is the code it writes.
macro_rules! error_codes {
    ($($code:ident),* $(,)?) => {
        // What the envelope's `code` carries, so the document's list is the server's.
        /// Every error code of contract section 5.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
        #[allow(non_camel_case_types, clippy::upper_case_acronyms)]
        pub enum ErrorCode {
            $($code,)*
        }

        impl ErrorCode {
            /// The code as written in the envelope.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$code => stringify!($code),)*
                }
            }
        }
    };
}

error_codes!(
    INVALID_REQUEST,
    API_KEY_IN_URL,
    USE_DPOP_NONCE,
    INVALID_AUDIENCE,
    MISSING_API_KEY,
    INVALID_API_KEY,
    INVALID_DPOP_PROOF,
    DPOP_REPLAY,
    INVALID_REFRESH_TOKEN,
    REFRESH_TOKEN_REUSED,
    INVALID_ADMIN_TOKEN,
    IP_NOT_ALLOWED,
    ORIGIN_NOT_ALLOWED,
    INSUFFICIENT_SCOPE,
    DEVICE_LIMIT_REACHED,
    DEVICE_REVOKED,
    DEVICE_UNTRUSTED,
    ATTESTATION_REQUIRED,
    INVALID_ATTESTATION,
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    PAYLOAD_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    RATE_LIMITED,
    INTERNAL,
    UNAVAILABLE,
);

/// The error envelope every failure answers with (contract section 3 and 5).
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of the envelope.
#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The contract's code; each response lists the codes it can carry.
    pub code: ErrorCode,
    /// Human readable; never contains a secret, and says nothing internal on a 5xx.
    pub message: String,
}

/// RFC 6749 section 5.2's error body: what a form-encoded request at `POST /v1/token` gets
/// instead of the envelope (contract 9.1).
#[derive(Serialize, ToSchema)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `unsupported_grant_type`, `invalid_grant`, `invalid_scope`,
    /// `invalid_target`, `invalid_dpop_proof`, `use_dpop_nonce` (with `DPoP-Nonce` and
    /// `WWW-Authenticate: DPoP error="use_dpop_nonce"`), `server_error`,
    /// `temporarily_unavailable`, or another contract code in lower case (`rate_limited`,
    /// `device_revoked`, …).
    #[schema(value_type = String)]
    pub error: std::borrow::Cow<'static, str>,
    /// Human readable; never contains a secret.
    pub error_description: String,
}

/// A boxed cause for 5xx errors, so they can carry any source without leaking it to clients.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    /// An internal error from any cause.
    pub fn internal(cause: impl Into<Cause>) -> Self {
        Error::Internal(cause.into())
    }

    /// A dependency-unavailable error from any cause.
    pub fn unavailable(cause: impl Into<Cause>) -> Self {
        Error::Unavailable(cause.into())
    }

    /// The contract's HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        use Error::*;
        match self {
            InvalidRequest(_) | ApiKeyInUrl | UseDpopNonce { .. } | InvalidAudience => {
                StatusCode::BAD_REQUEST
            }
            MissingApiKey
            | InvalidApiKey
            | InvalidDpopProof(_)
            | DpopReplay
            | InvalidRefreshToken
            | RefreshTokenReused
            | InvalidAdminToken
            | InvalidAttestation(_) => StatusCode::UNAUTHORIZED,
            IpNotAllowed | OriginNotAllowed | InsufficientScope | DeviceLimitReached
            | DeviceRevoked | DeviceUntrusted | AttestationRequired => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RateLimited { .. } | KeyIdBudgetSpent { .. } => StatusCode::TOO_MANY_REQUESTS,
            Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The contract's error code for this error, as the envelope's `code` carries it.
    pub fn code(&self) -> &'static str {
        self.error_code().as_str()
    }

    /// The contract's error code for this error.
    pub fn error_code(&self) -> ErrorCode {
        use Error::*;
        match self {
            InvalidRequest(_) => ErrorCode::INVALID_REQUEST,
            ApiKeyInUrl => ErrorCode::API_KEY_IN_URL,
            UseDpopNonce { .. } => ErrorCode::USE_DPOP_NONCE,
            InvalidAudience => ErrorCode::INVALID_AUDIENCE,
            MissingApiKey => ErrorCode::MISSING_API_KEY,
            InvalidApiKey => ErrorCode::INVALID_API_KEY,
            InvalidDpopProof(_) => ErrorCode::INVALID_DPOP_PROOF,
            DpopReplay => ErrorCode::DPOP_REPLAY,
            InvalidRefreshToken => ErrorCode::INVALID_REFRESH_TOKEN,
            RefreshTokenReused => ErrorCode::REFRESH_TOKEN_REUSED,
            InvalidAdminToken => ErrorCode::INVALID_ADMIN_TOKEN,
            IpNotAllowed => ErrorCode::IP_NOT_ALLOWED,
            OriginNotAllowed => ErrorCode::ORIGIN_NOT_ALLOWED,
            InsufficientScope => ErrorCode::INSUFFICIENT_SCOPE,
            DeviceLimitReached => ErrorCode::DEVICE_LIMIT_REACHED,
            DeviceRevoked => ErrorCode::DEVICE_REVOKED,
            DeviceUntrusted => ErrorCode::DEVICE_UNTRUSTED,
            AttestationRequired => ErrorCode::ATTESTATION_REQUIRED,
            InvalidAttestation(_) => ErrorCode::INVALID_ATTESTATION,
            NotFound => ErrorCode::NOT_FOUND,
            MethodNotAllowed => ErrorCode::METHOD_NOT_ALLOWED,
            PayloadTooLarge => ErrorCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => ErrorCode::UNSUPPORTED_MEDIA_TYPE,
            RateLimited { .. } | KeyIdBudgetSpent { .. } => ErrorCode::RATE_LIMITED,
            Unavailable(_) => ErrorCode::UNAVAILABLE,
            Internal(_) => ErrorCode::INTERNAL,
        }
    }

    /// Whether this error counts as a failed authentication for the per-IP failure budget.
    pub fn is_auth_failure(&self) -> bool {
        use Error::*;
        matches!(
            self,
            InvalidApiKey
                | InvalidDpopProof(_)
                | DpopReplay
                | InvalidRefreshToken
                | RefreshTokenReused
                | InvalidAdminToken
                | KeyIdBudgetSpent { .. }
        )
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        // Connection-level failures mean "storage unreachable": fail closed with 503. Anything
        // else (a constraint we did not map, a decoding error) is a bug: 500.
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => Error::unavailable(e),
            sqlx::Error::Database(ref db)
                if matches!(db.code().as_deref(), Some("5" | "6" | "261" | "517")) =>
            {
                // SQLITE_BUSY / SQLITE_LOCKED (and extended codes): the database is held by
                // another writer beyond the busy timeout.
                Error::unavailable(e)
            }
            sqlx::Error::Database(ref db)
                if db.code().is_some_and(|c| {
                    c.starts_with("08")
                        || c.starts_with("57P")
                        || (c.len() == 5 && c.starts_with("53"))
                        || c == "3D000"
                }) =>
            {
                // PostgreSQL connection exceptions (class 08), operator intervention (57P: the
                // server shutting down, our connections terminated), insufficient resources
                // (class 53: too many connections, disk full) and a database that no longer
                // exists (3D000, what a reconnect meets after DROP DATABASE).
                Error::unavailable(e)
            }
            other => Error::internal(other),
        }
    }
}

/// Marks a response that refused the request's `Origin` (`ORIGIN_NOT_ALLOWED`): the CORS layer
/// of the token endpoints ([`crate::http::cors`]) sends no CORS header with it (contract
/// section 11), so a page on a refused origin cannot even read the refusal.
#[derive(Debug, Clone, Copy)]
pub struct OriginRefused;

impl Error {
    /// The RFC 6749 section 5.2 `error` value and status for this error, by the mapping table
    /// of contract 9.1 (for form-encoded requests at the token endpoint).
    pub fn oauth_error(&self) -> (StatusCode, std::borrow::Cow<'static, str>) {
        use Error::*;
        let bad = StatusCode::BAD_REQUEST;
        let named = |s: &'static str| std::borrow::Cow::Borrowed(s);
        match self {
            // RFC 8693 section 2.2.2: a bad subject token is `invalid_request`.
            InvalidRequest(_) | MissingApiKey | InvalidApiKey => (bad, named("invalid_request")),
            InvalidRefreshToken | RefreshTokenReused => (bad, named("invalid_grant")),
            InsufficientScope => (bad, named("invalid_scope")),
            // RFC 8707 section 2: an audience or resource we do not serve.
            InvalidAudience => (bad, named("invalid_target")),
            // RFC 9449 section 5.
            InvalidDpopProof(_) | DpopReplay => (bad, named("invalid_dpop_proof")),
            // RFC 9449 section 8.
            UseDpopNonce { .. } => (bad, named("use_dpop_nonce")),
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, named("invalid_request")),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, named("server_error")),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                named("temporarily_unavailable"),
            ),
            other => (other.status(), other.code().to_ascii_lowercase().into()),
        }
    }

    /// The RFC 6749 section 5.2 answer, `{"error", "error_description"}`, for a form-encoded
    /// request at the token endpoint (contract 9.1). Same headers as the envelope's; a nonce
    /// challenge also names itself in `WWW-Authenticate` (RFC 9449 section 8).
    pub fn into_oauth_response(self) -> Response {
        let (status, error) = self.oauth_error();
        self.log();
        let body = OAuthErrorBody {
            error,
            error_description: self.to_string(),
        };
        let mut res = (status, axum::Json(body)).into_response();
        self.finish(&mut res);
        if let Error::UseDpopNonce { .. } = self {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("DPoP error=\"use_dpop_nonce\""),
            );
        }
        res
    }

    fn log(&self) {
        match self {
            Error::Internal(cause) => tracing::error!(error = %cause, "internal error"),
            Error::Unavailable(cause) => tracing::warn!(error = %cause, "dependency unavailable"),
            _ => tracing::debug!(code = self.code(), "request refused"),
        }
    }

    /// The headers (and the CORS marker) both error writers share.
    fn finish(&self, res: &mut Response) {
        if let Error::OriginNotAllowed = self {
            res.extensions_mut().insert(OriginRefused);
        }
        let headers = res.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        match self {
            Error::RateLimited { retry_after_secs }
            | Error::KeyIdBudgetSpent { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Error::UseDpopNonce { nonce } => {
                if let Ok(v) = HeaderValue::from_str(nonce) {
                    headers.insert("dpop-nonce", v);
                }
            }
            Error::InvalidDpopProof(_) | Error::DpopReplay => {
                // RFC 9449 section 7.1: tell the client which scheme and algorithms we accept.
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "DPoP error=\"invalid_dpop_proof\", algs=\"EdDSA Ed25519 ES256\"",
                    ),
                );
            }
            _ => {}
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        self.log();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.error_code(),
                message: self.to_string(),
            },
        };
        let mut res = (status, axum::Json(body)).into_response();
        self.finish(&mut res);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Contract 9.1's table, row by row (the integration tests reach each row for its cause).
    #[test]
    fn oauth_errors_follow_the_mapping_table() {
        let bad = StatusCode::BAD_REQUEST;
        let cases = [
            (Error::InvalidRequest("x".into()), bad, "invalid_request"),
            (Error::MissingApiKey, bad, "invalid_request"),
            (Error::InvalidApiKey, bad, "invalid_request"),
            (Error::InvalidRefreshToken, bad, "invalid_grant"),
            (Error::RefreshTokenReused, bad, "invalid_grant"),
            (Error::InsufficientScope, bad, "invalid_scope"),
            (Error::InvalidAudience, bad, "invalid_target"),
            (
                Error::InvalidDpopProof("x".into()),
                bad,
                "invalid_dpop_proof",
            ),
            (Error::DpopReplay, bad, "invalid_dpop_proof"),
            (
                Error::UseDpopNonce { nonce: "n".into() },
                bad,
                "use_dpop_nonce",
            ),
            (
                Error::PayloadTooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
            ),
            (
                Error::internal("x"),
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
            ),
            (
                Error::unavailable("x"),
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
            ),
            (
                Error::RateLimited {
                    retry_after_secs: 1,
                },
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
            ),
            (
                Error::KeyIdBudgetSpent {
                    retry_after_secs: 1,
                },
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
            ),
            (
                Error::DeviceRevoked,
                StatusCode::FORBIDDEN,
                "device_revoked",
            ),
            (
                Error::OriginNotAllowed,
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
            ),
            (Error::ApiKeyInUrl, bad, "api_key_in_url"),
        ];
        for (e, status, code) in cases {
            assert_eq!(e.oauth_error(), (status, code.into()), "{}", e.code());
        }
    }

    /// The typed envelope writes what the `json!` one did, byte for byte, and a code is
    /// written as its name.
    #[test]
    fn the_envelope_is_written_as_the_contract_shows_it() {
        let e = Error::InvalidRequest("bad \"x\"".into());
        let body = ErrorBody {
            error: ErrorDetail {
                code: e.error_code(),
                message: e.to_string(),
            },
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"error":{"code":"INVALID_REQUEST","message":"bad \"x\""}}"#
        );
        let oauth = OAuthErrorBody {
            error: "invalid_grant".into(),
            error_description: "d".into(),
        };
        assert_eq!(
            serde_json::to_string(&oauth).unwrap(),
            r#"{"error":"invalid_grant","error_description":"d"}"#
        );
        for e in [
            Error::DeviceUntrusted,
            Error::AttestationRequired,
            Error::NotFound,
        ] {
            assert_eq!(
                serde_json::to_value(e.error_code()).unwrap(),
                serde_json::Value::from(e.code())
            );
        }
    }

    #[test]
    fn a_nonce_challenge_names_itself_and_carries_the_nonce() {
        let res = Error::UseDpopNonce {
            nonce: "n-1".into(),
        }
        .into_oauth_response();
        assert_eq!(res.headers()["dpop-nonce"], "n-1");
        assert_eq!(
            res.headers()[header::WWW_AUTHENTICATE],
            "DPoP error=\"use_dpop_nonce\""
        );
        let res = Error::RateLimited {
            retry_after_secs: 7,
        }
        .into_oauth_response();
        assert_eq!(res.headers()[header::RETRY_AFTER], "7");
        let res = Error::OriginNotAllowed.into_oauth_response();
        assert!(res.extensions().get::<OriginRefused>().is_some());
    }
}
