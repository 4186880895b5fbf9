//! `POST /v1/token/introspect` (RFC 7662, contract 9.4): for resource servers that cannot
//! verify tokens offline.
//!
//! A token is active while its signature (a published signing key), its lifetime, its API key
//! and its device are all good. Key and device are read through the validation cache, the
//! same records the token endpoint reads: cheap, and a revocation or suspension made through
//! the API (on any instance, with Redis) is seen at once. The proof of possession is not
//! checked here (the resource server holds the request and its DPoP proof, and checks them
//! against `cnf.jkt`).

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderValue, header, request::Parts};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::envelope::ErrorBody;
use super::extract::FormOrJson;
use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::DeviceStatus;
use crate::tokens::{AccessClaims, Cnf, GrantedTrust};

/// The endpoint's path.
pub const PATH: &str = "/v1/token/introspect";

/// The introspection route.
pub fn router() -> Router<AppState> {
    Router::new().route(PATH, post(introspect))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(introspect),
    components(schemas(IntrospectionRequest, Introspection))
)]
pub(super) struct Doc;

/// Proof that the request carried the admin token or one of the `--introspection-token`s.
pub struct IntrospectionAuth;

impl FromRequestParts<AppState> for IntrospectionAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or(Error::InvalidAdminToken)?;
        // Digests compared in constant time, against every accepted token with no early exit:
        // neither the content, the length, nor which token matched leaks by timing.
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        let accepted = state
            .admin_token_hash
            .iter()
            .chain(&state.introspection_token_hashes)
            .fold(subtle::Choice::from(0), |any, h| any | digest.ct_eq(h));
        if bool::from(accepted) {
            Ok(IntrospectionAuth)
        } else {
            Err(Error::InvalidAdminToken)
        }
    }
}

/// The request: RFC 7662 section 2.1.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct IntrospectionRequest {
    /// The access token.
    #[schema(format = Password)]
    token: String,
    /// Accepted and ignored (only access tokens are introspected).
    #[allow(dead_code)]
    token_type_hint: Option<String>,
}

/// The answer: RFC 7662 section 2.2. An inactive token's answer is `{"active": false}` and
/// nothing else; an active one's has every member.
#[derive(Default, Serialize, utoipa::ToSchema)]
pub struct Introspection {
    /// Whether the token is ours, unexpired, and its key and device are in good standing.
    active: bool,
    /// Granted scopes, space separated.
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
    /// The API key id `ak_…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<String>,
    /// The API key id `ak_…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jti: Option<String>,
    /// Always `DPoP`: the resource server must check a proof against `cnf.jkt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    token_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cnf: Option<Cnf>,
    /// The device id.
    #[serde(skip_serializing_if = "Option::is_none")]
    did: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trust: Option<GrantedTrust>,
}

/// Whether an access token is active, and its claims when it is. Refusals are in the
/// contract's envelope whatever the body's type.
#[utoipa::path(post, path = "/v1/token/introspect", tag = "token",
    request_body(description = "RFC 7662: `token=<access token>` (form; a JSON object with \
`token` is accepted too).",
        content(
            (IntrospectionRequest = "application/x-www-form-urlencoded"),
            (IntrospectionRequest = "application/json"),
        )),
    security(("introspection_token" = []), ("admin_token" = [])),
    responses(
        (status = 200, description = "`{\"active\": true, …claims}` while the token's signature, \
lifetime, key and device are all good (a revoked or suspended key, or a revoked device, counts at \
once); otherwise `{\"active\": false}` (`Cache-Control: no-store`).", body = Introspection),
        (status = 400, description = "`INVALID_REQUEST`: no `token`; `API_KEY_IN_URL`.", body = ErrorBody),
        (status = 401, description = "`INVALID_ADMIN_TOKEN`: neither the admin token nor an \
introspection token.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`: neither form nor JSON.", body = ErrorBody),
        (status = 503, description = "`UNAVAILABLE`.", body = ErrorBody),
    ))]
async fn introspect(
    State(state): State<AppState>,
    _: IntrospectionAuth,
    FormOrJson(req): FormOrJson<IntrospectionRequest>,
) -> Result<Response> {
    let answer = introspection(&state, &req.token).await?;
    let mut res = axum::Json(answer).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// The answer for `token`: active only while every check passes.
async fn introspection(state: &AppState, token: &str) -> Result<Introspection> {
    let inactive = Ok(Introspection::default());
    let Some(c) = AccessClaims::verify(token.trim(), |kid| state.keyring.verifying_key(kid)) else {
        return inactive;
    };
    let now = crate::clock::now();
    let now_u = u64::try_from(now).unwrap_or(0);
    if c.iss != state.settings.issuer || c.exp <= now_u || c.nbf > now_u {
        return inactive;
    }
    match state.cache.key(&c.sub).await? {
        Some(key) if key.usable_at(now) => {}
        _ => return inactive,
    }
    match state.cache.device(&c.sub, &c.cnf.jkt).await? {
        Some(d) if d.status != DeviceStatus::Revoked && d.device_id == c.did => {}
        _ => return inactive,
    }
    Ok(Introspection {
        active: true,
        scope: Some(c.scope),
        client_id: Some(c.client_id),
        sub: Some(c.sub),
        aud: Some(c.aud),
        iss: Some(c.iss),
        exp: Some(c.exp),
        iat: Some(c.iat),
        jti: Some(c.jti),
        token_type: Some("DPoP"),
        cnf: Some(c.cnf),
        did: Some(c.did),
        trust: Some(c.trust),
    })
}
