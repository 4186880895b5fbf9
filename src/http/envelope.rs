//! The error envelope (the types [`crate::error`] answers with) and the failure responses the
//! endpoints share, as the types the OpenAPI document is derived from. A module of its own so
//! that the handler modules, which name these in their `#[utoipa::path]` annotations, and
//! [`super::openapi`], which gathers the handlers' documents, do not import each other.

// The envelope's types are the ones `crate::error` writes every refusal with; re-exported here,
// where the handlers' documents name them.
pub use crate::error::{ErrorBody, ErrorCode, ErrorDetail, OAuthErrorBody};

/// The failures every admin endpoint shares.
#[derive(utoipa::IntoResponses)]
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
