//! `POST /v1/token`, `POST /v1/token/refresh` and `POST /v1/token/revoke`: header extraction
//! and the per-IP failure budget around [`crate::exchange`]. A form-encoded `POST /v1/token`
//! (contract 9.1) goes to [`super::oauth`], which parses it into the same requests and shares
//! [`guarded`].

use axum::Router;
use axum::extract::{FromRequest, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;

use secrecy::ExposeSecret as _;

use super::cors;
use super::envelope::ErrorBody;
use super::extract::{ClientIp, FormOrJson, Json, is_form};
use super::guard::{guarded, presented};
use super::oauth;
use crate::error::Result;
use crate::exchange::{self, RefreshRequest, TokenRequest};
use crate::state::AppState;

/// Token routes, answering browsers' CORS preflights (contract section 11).
pub fn router() -> Router<AppState> {
    Router::new()
        .route(exchange::TOKEN_PATH, cors::token_endpoint(post(token)))
        .route(exchange::REFRESH_PATH, cors::token_endpoint(post(refresh)))
        .route(exchange::REVOKE_PATH, cors::token_endpoint(post(revoke)))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(token, refresh, revoke))]
pub(super) struct Doc;

/// Exchanges an API key and a DPoP proof for a device-bound access token and a refresh token
/// (contract 3.1). The first exchange by a new device key enrolls the device.
#[utoipa::path(post, path = "/v1/token", tag = "token",
    request_body(description = "JSON (contract 3.1; every field is optional, an empty body is `{}`) \
or, for stock OAuth clients, `application/x-www-form-urlencoded` (contract 9.1): an RFC 8693 token \
exchange with the API key as `subject_token` (no API key header then), or an RFC 6749 section 6 \
refresh (`grant_type=refresh_token`, the proof's `htu` is this endpoint). Form requests get RFC 6749 \
section 5.2 errors (`OAuthErrorBody`) by the table of contract 9.1; JSON requests the envelope.",
        content(
            (Option<TokenRequest> = "application/json"),
            (Option<oauth::TokenForm> = "application/x-www-form-urlencoded"),
        )),
    security(("api_key" = [], "dpop" = []), ("api_key_bearer" = [], "dpop" = [])),
    responses(
        (status = 200, description = "Issued (`Cache-Control: no-store`). A form token exchange \
also has `issued_token_type`.", body = oauth::ExchangeAnswer),
        (status = 400, description = "`INVALID_REQUEST` (body limits), `USE_DPOP_NONCE` (the `DPoP-Nonce` \
header carries a fresh nonce), `INVALID_AUDIENCE`, `API_KEY_IN_URL`.", body = ErrorBody),
        (status = 401, description = "`MISSING_API_KEY`, `INVALID_API_KEY`, `INVALID_DPOP_PROOF`, \
`DPOP_REPLAY`, `INVALID_ATTESTATION` (the message names the failed check).", body = ErrorBody),
        (status = 403, description = "`IP_NOT_ALLOWED`, `ORIGIN_NOT_ALLOWED`, `INSUFFICIENT_SCOPE`, \
`DEVICE_LIMIT_REACHED`, `DEVICE_REVOKED`, `DEVICE_UNTRUSTED`, `ATTESTATION_REQUIRED`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: body over 16 KiB.", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: a body that is not JSON.", body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED`: the key's rate, its hourly budget of new \
devices, or the client IP's failure budget is spent; `Retry-After` is set.", body = ErrorBody),
        (status = 503, description = "`UNAVAILABLE`: storage or Redis unreachable; nothing was issued.",
         body = ErrorBody),
    ))]
async fn token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    req: Request,
) -> Result<Response> {
    if is_form(&headers) {
        return Ok(oauth::token(&state, ip, &headers, req).await);
    }
    let work = async {
        match Json::<TokenRequest>::from_request(req, &state).await {
            Ok(Json(body)) => {
                let p = presented(&headers, ip, exchange::TOKEN_PATH);
                exchange::exchange(&state.exchange, p, body)
                    .await
                    .into_parts()
            }
            Err(e) => (None, Err(e)),
        }
    };
    guarded(&state, ip, work).await
}

/// Rotates a refresh token: the old one is spent, a new pair is issued (contract 3.2). The
/// proof must come from the device key the refresh token was issued to.
#[utoipa::path(post, path = "/v1/token/refresh", tag = "token",
    request_body(content = RefreshRequest, content_type = "application/json"),
    security(("dpop" = [])),
    responses(
        (status = 200, description = "Rotated (`Cache-Control: no-store`).", body = exchange::TokenResponse),
        (status = 400, description = "`INVALID_REQUEST`, `USE_DPOP_NONCE`, `API_KEY_IN_URL`.", body = ErrorBody),
        (status = 401, description = "`INVALID_DPOP_PROOF`, `DPOP_REPLAY`, `INVALID_REFRESH_TOKEN`, \
`REFRESH_TOKEN_REUSED` (the whole family is now revoked), `INVALID_API_KEY` (the key was revoked, \
suspended or expired).", body = ErrorBody),
        (status = 403, description = "`IP_NOT_ALLOWED`, `ORIGIN_NOT_ALLOWED`, `DEVICE_REVOKED`, \
`DEVICE_UNTRUSTED`, `ATTESTATION_REQUIRED`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`.", body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED`; `Retry-After` is set.", body = ErrorBody),
        (status = 503, description = "`UNAVAILABLE`: nothing was issued.", body = ErrorBody),
    ))]
async fn refresh(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Result<Json<RefreshRequest>>,
) -> Result<Response> {
    let work = async {
        let result = match body {
            Ok(Json(body)) => {
                let p = presented(&headers, ip, exchange::REFRESH_PATH);
                exchange::refresh(&state.exchange, p, body).await
            }
            Err(e) => Err(e),
        };
        (None, result)
    };
    guarded(&state, ip, work).await
}

/// The answer to a sign-out: an empty object, the same for every token (RFC 7009 section 2.2
/// gives the body no content; `{}` keeps it JSON like every other answer here).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SignedOut {}

/// Signs a device out of one session (contract 9.3, RFC 7009): revokes the refresh family of
/// `token` when the proof is by the device the token was issued to. The answer is `{}` for
/// every token, live or not, and for a proof by another key (nothing is revoked then).
#[utoipa::path(post, path = "/v1/token/revoke", tag = "token",
    request_body(content = exchange::RevokeRequest,
                 description = "Form-encoded (`token=…&token_type_hint=refresh_token`) or JSON.",
                 content_type = "application/x-www-form-urlencoded"),
    security(("dpop" = [])),
    responses(
        (status = 200, description = "`{}`, whether or not anything was revoked.", body = SignedOut),
        (status = 400, description = "`INVALID_REQUEST` (no `token`), `USE_DPOP_NONCE`.", body = ErrorBody),
        (status = 401, description = "`INVALID_DPOP_PROOF`, `DPOP_REPLAY`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`.", body = ErrorBody),
        (status = 429, description = "`RATE_LIMITED`; `Retry-After` is set.", body = ErrorBody),
        (status = 503, description = "`UNAVAILABLE`: nothing was revoked.", body = ErrorBody),
    ))]
async fn revoke(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Result<FormOrJson<exchange::RevokeRequest>>,
) -> Result<Response> {
    let work = async {
        let result = match body {
            Ok(FormOrJson(body)) => exchange::revoke(
                &state.exchange,
                presented(&headers, ip, exchange::REVOKE_PATH),
                body.token.expose_secret(),
            )
            .await
            .map(|()| SignedOut {}),
            Err(e) => Err(e),
        };
        (None, result)
    };
    guarded(&state, ip, work).await
}
