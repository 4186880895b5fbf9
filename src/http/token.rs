//! `POST /v1/token`, `POST /v1/token/refresh` and `POST /v1/token/revoke`: header extraction
//! and the per-IP failure budget around [`crate::exchange`]. A form-encoded `POST /v1/token`
//! (contract 9.1) goes to [`super::oauth`], which parses it into the same requests and shares
//! [`guarded`].

use axum::Router;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;

use secrecy::ExposeSecret as _;

use super::cors;
use super::extract::{ClientIp, FormOrJson, Json, bearer, is_form};
use super::oauth;
use super::openapi::ErrorBody;
use crate::alerts::AlertKind;
use crate::error::{Error, Result};
use crate::exchange::{self, Presented, RefreshRequest, TokenRequest};
use crate::state::AppState;
use crate::store::UsageEvent;

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

/// What a token request sent to `path` presents: the API key (`X-API-Key`, else a bearer
/// token), the proof, the origin and the client IP.
pub fn presented<'a>(
    headers: &'a HeaderMap,
    ip: std::net::IpAddr,
    path: &'static str,
) -> Presented<'a> {
    fn text(v: &HeaderValue) -> Option<&str> {
        v.to_str().ok()
    }
    let api_key = headers
        .get("x-api-key")
        .and_then(text)
        .or_else(|| bearer(headers));
    let mut proofs = headers.get_all("dpop").iter();
    let proof = match (proofs.next(), proofs.next()) {
        (None, _) => Ok(None),
        (Some(p), None) => Ok(Some(p.to_str().unwrap_or(""))),
        (Some(_), Some(_)) => Err(()),
    };
    Presented {
        api_key,
        proof,
        origin: headers.get(header::ORIGIN).and_then(text),
        ip,
        path,
    }
}

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
    guarded(&state, ip, exchange::TOKEN_PATH, &headers, work).await
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
    guarded(&state, ip, exchange::REFRESH_PATH, &headers, work).await
}

/// Signs a device out of one session (contract 9.3, RFC 7009): revokes the refresh family of
/// `token` when the proof is by the device the token was issued to. The answer is `{}` for
/// every token, live or not, and for a proof by another key (nothing is revoked then).
#[utoipa::path(post, path = "/v1/token/revoke", tag = "token",
    request_body(content = exchange::RevokeRequest,
                 description = "Form-encoded (`token=…&token_type_hint=refresh_token`) or JSON.",
                 content_type = "application/x-www-form-urlencoded"),
    security(("dpop" = [])),
    responses(
        (status = 200, description = "`{}`, whether or not anything was revoked."),
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
            .map(|()| serde_json::json!({})),
            Err(e) => Err(e),
        };
        (None, result)
    };
    guarded(&state, ip, exchange::REVOKE_PATH, &headers, work).await
}

/// What [`guarded`] needs to know of a refusal, whichever writer answers it: the JSON
/// requests' [`Error`] (the envelope) or a form request's refusal (RFC 6749 section 5.2).
pub(super) trait Refusal: From<Error> {
    /// The HTTP status (recorded in usage).
    fn status(&self) -> StatusCode;
    /// Whether it counts against the client IP's failure budget.
    fn is_auth_failure(&self) -> bool;
}

impl Refusal for Error {
    fn status(&self) -> StatusCode {
        Error::status(self)
    }

    fn is_auth_failure(&self) -> bool {
        Error::is_auth_failure(self)
    }
}

/// Refuses an IP that spent its failure budget, counts this request's failure against it,
/// records usage for an identified key, and writes the response headers both endpoints (and
/// both request forms) share.
pub(super) async fn guarded<T: Serialize, E: Refusal>(
    state: &AppState,
    ip: std::net::IpAddr,
    endpoint: &'static str,
    headers: &HeaderMap,
    work: impl Future<Output = (Option<String>, Result<T, E>)>,
) -> Result<Response, E> {
    if state.switches.rate_limits() {
        state.failures.check(ip).await?;
    }
    let started = std::time::Instant::now();
    let (key_id, result) = work.await;
    let elapsed = started.elapsed();
    metrics::histogram!("keybound_exchange_seconds").record(elapsed.as_secs_f64());
    if let Some(key_id) = key_id.filter(|_| state.switches.usage()) {
        let status = match &result {
            Ok(_) => 200,
            Err(e) => i64::from(e.status().as_u16()),
        };
        state.usage.record(UsageEvent {
            key_id,
            at: crate::clock::now(),
            endpoint: endpoint.into(),
            method: "POST".into(),
            status,
            latency_us: elapsed.as_micros() as i64,
            ip: Some(ip.to_string()),
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| ua.chars().take(256).collect()),
        });
    }
    let mut res = match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => {
            if e.is_auth_failure() {
                count_failure(state, ip).await?;
            }
            return Err(e);
        }
    };
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    if state.settings.require_dpop_nonce
        && let Ok(v) = HeaderValue::from_str(&state.nonces.issue(crate::clock::now()))
    {
        // RFC 9449 section 8.2: hand out the next nonce with every success.
        h.insert("dpop-nonce", v);
    }
    Ok(res)
}

/// Counts a failed authentication from `ip` against its failure budget, and raises
/// `FAILURE_BURST` (once a minute per address bucket) when this failure spent it. The token
/// endpoints, the leak report and the key-in-URL guard share this budget.
pub(super) async fn count_failure(state: &AppState, ip: std::net::IpAddr) -> Result<()> {
    if state.failures.record_failure(ip).await? {
        let bucket = state.failures.bucket(ip);
        state.alerts.raise_once(
            AlertKind::FailureBurst,
            &bucket.to_string(),
            None,
            Some(ip),
            serde_json::json!({"budget_per_minute": state.failures.per_minute(),
                               "addresses": bucket.to_string()}),
        );
    }
    Ok(())
}
