//! The error envelope and the failure responses the endpoints share, as types the OpenAPI
//! document is derived from. A module of its own so that the handler modules, which name
//! these in their `#[utoipa::path]` annotations, and [`super::openapi`], which gathers the
//! handlers' documents, do not import each other.

use utoipa::ToSchema;

/// The error envelope every failure answers with (contract section 3 and 5).
#[derive(ToSchema, serde::Serialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// RFC 6749 section 5.2's error body: what a form-encoded request at `POST /v1/token` gets
/// instead of the envelope (contract 9.1).
#[derive(ToSchema, serde::Serialize)]
pub struct OAuthErrorBody {
    /// `invalid_request`, `unsupported_grant_type`, `invalid_grant`, `invalid_scope`,
    /// `invalid_target`, `invalid_dpop_proof`, `use_dpop_nonce` (with `DPoP-Nonce` and
    /// `WWW-Authenticate: DPoP error="use_dpop_nonce"`), `server_error`,
    /// `temporarily_unavailable`, or another contract code in lower case (`rate_limited`,
    /// `device_revoked`, …).
    pub error: String,
    /// Human readable; never contains a secret.
    pub error_description: String,
}

/// The inside of the envelope.
#[derive(ToSchema, serde::Serialize)]
pub struct ErrorDetail {
    /// The contract's code; each response lists the codes it can carry.
    pub code: ErrorCode,
    /// Human readable; never contains a secret, and says nothing internal on a 5xx.
    pub message: String,
}

/// The failures every admin endpoint shares.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum AdminErrors {
    /// The admin token is missing or wrong.
    #[response(status = 401, description = "`INVALID_ADMIN_TOKEN`.")]
    Unauthorized(ErrorBody),
    /// No such object, or no admin token is configured.
    #[response(
        status = 404,
        description = "`NOT_FOUND`: no such key or device, or the admin API is off."
    )]
    NotFound(ErrorBody),
    /// Storage is unreachable.
    #[response(status = 503, description = "`UNAVAILABLE`.")]
    Unavailable(ErrorBody),
}

/// The failures of every endpoint that takes a JSON body.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum BodyErrors {
    /// The body is malformed or breaks a rule.
    #[response(
        status = 400,
        description = "`INVALID_REQUEST`: malformed JSON, wrong types, unknown fields or a value \
out of range; `API_KEY_IN_URL`."
    )]
    Invalid(ErrorBody),
    /// Over 16 KiB.
    #[response(
        status = 413,
        description = "`PAYLOAD_TOO_LARGE`: the body is over 16 KiB."
    )]
    TooLarge(ErrorBody),
    /// Not JSON.
    #[response(
        status = 415,
        description = "`UNSUPPORTED_MEDIA_TYPE`: a body without `Content-Type: application/json`."
    )]
    NotJson(ErrorBody),
}

/// Every error code of contract section 5.
#[derive(ToSchema, serde::Serialize)]
#[allow(non_camel_case_types, clippy::upper_case_acronyms, dead_code)]
pub enum ErrorCode {
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
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    PAYLOAD_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    RATE_LIMITED,
    INTERNAL,
    UNAVAILABLE,
}
