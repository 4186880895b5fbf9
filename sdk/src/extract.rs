//! axum integration (feature `axum`): [`VerifiedToken`] as an extractor and [`Error`] as a
//! response with the challenges RFC 6750 section 3 and RFC 9449 section 7.1 describe.
//!
//! See the crate documentation for an example.

use axum::extract::{FromRef, FromRequestParts, OriginalUri};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use crate::error::{Error, ErrorKind, InvalidTokenReason};
use crate::verifier::{VerifiedToken, Verifier};

/// The proof algorithms this verifier accepts, advertised in every challenge (RFC 9449
/// section 7.1, `algs`).
const CHALLENGE_ALGS: &str = r#"algs="EdDSA Ed25519 ES256""#;

impl<S> FromRequestParts<S> for VerifiedToken
where
    Arc<Verifier>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Error;

    /// Verifies the request's `Authorization: DPoP` token and `DPoP` proof with the state's
    /// [`Verifier`]. The result is kept in the request's extensions: a second extraction in
    /// the same request (a middleware, then the handler) reuses it instead of presenting the
    /// proof again, which the replay cache would refuse.
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(token) = parts.extensions.get::<VerifiedToken>() {
            return Ok(token.clone());
        }
        let verifier = Arc::<Verifier>::from_ref(state);
        let authorization = single_header(
            &parts.headers,
            AUTHORIZATION.as_str(),
            InvalidTokenReason::Malformed,
        )?;
        // RFC 9449 section 4.3, check 1: not more than one DPoP header.
        let dpop = single_header(&parts.headers, "dpop", InvalidTokenReason::InvalidProof)?;
        let Some(base) = verifier.resource_url() else {
            tracing::error!("VerifierBuilder::resource_url is not set; refusing every request");
            return Err(Error::config("the verifier has no resource_url"));
        };
        // Behind `Router::nest` the URI is stripped of the prefix; the client signed the full one.
        let path = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.path(), |o| o.0.path());
        let url = format!("{}{path}", base.as_str().trim_end_matches('/'));
        let token = verifier
            .verify_request(parts.method.as_str(), &url, authorization, dpop)
            .await?;
        parts.extensions.insert(token.clone());
        Ok(token)
    }
}

/// The value of header `name` if it appears at most once and is text.
fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &str,
    reason: InvalidTokenReason,
) -> Result<Option<&'a str>, Error> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Error::invalid_token(reason));
    }
    value
        .to_str()
        .map(Some)
        .map_err(|_| Error::invalid_token(reason))
}

/// Answers a refused request the way RFC 6750 and RFC 9449 describe, with a JSON body in
/// keybound's envelope. The body and the challenge name the class of failure only (invalid
/// token, invalid proof, insufficient scope), never which check failed: that detail goes to
/// the log at `debug` level.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, error, code, message) = match self.kind() {
            // RFC 6750 section 3.1: no error code when the request had no credentials.
            ErrorKind::InvalidToken(InvalidTokenReason::MissingToken) => (
                StatusCode::UNAUTHORIZED,
                None,
                "INVALID_TOKEN",
                "authentication required",
            ),
            ErrorKind::InvalidToken(reason) if reason.is_proof_problem() => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_dpop_proof"),
                "INVALID_DPOP_PROOF",
                "invalid DPoP proof",
            ),
            ErrorKind::InvalidToken(_) | ErrorKind::Revoked => (
                StatusCode::UNAUTHORIZED,
                Some("invalid_token"),
                "INVALID_TOKEN",
                "invalid access token",
            ),
            ErrorKind::InsufficientScope => (
                StatusCode::FORBIDDEN,
                Some("insufficient_scope"),
                "INSUFFICIENT_SCOPE",
                "insufficient scope",
            ),
            // The verifier's per-key share of its replay cache is spent (one client flooding).
            ErrorKind::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                None,
                "RATE_LIMITED",
                "too many requests",
            ),
            ErrorKind::Unavailable | ErrorKind::Network | ErrorKind::Timeout => (
                StatusCode::SERVICE_UNAVAILABLE,
                None,
                "UNAVAILABLE",
                "temporarily unavailable",
            ),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                "INTERNAL",
                "internal error",
            ),
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::debug!(error = %self, "request refused");
        }
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        let mut response = (status, axum::Json(body)).into_response();
        if let ErrorKind::RateLimited {
            retry_after: Some(wait),
        } = self.kind()
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from(wait.as_secs().max(1)),
            );
        }
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            let challenge = match error {
                Some(error) => format!(r#"DPoP error="{error}", {CHALLENGE_ALGS}"#),
                None => format!("DPoP {CHALLENGE_ALGS}"),
            };
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_str(&challenge).expect("the challenge is ASCII"),
            );
        }
        response
    }
}
