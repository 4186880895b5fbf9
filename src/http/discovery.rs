//! Discovery and verification support (contract 3.3): JWKS, RFC 8414 metadata, the signed
//! revocation feed, leak reports, and the guard against API keys in URLs.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::json;

use utoipa::{IntoParams, ToSchema};

use super::cors;
use super::extract::{ClientIp, Json, Query};
use super::openapi::ErrorBody;
use crate::alerts::AlertKind;
use crate::error::{Error, Result};
use crate::keys::{ApiKey, format::find_keys};
use crate::state::AppState;
use crate::store::KeyStatus;
use crate::store::RevocationRecord;
use crate::tokens::Jwks;

/// How long verifiers may cache the JWKS. Short, so a rotation propagates quickly; verifiers
/// also refetch on an unknown `kid`.
const JWKS_MAX_AGE: u32 = 300;
/// Most feed entries per page.
const FEED_PAGE: i64 = 1000;

/// Discovery routes; the public documents are readable from any origin (contract 11).
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/.well-known/jwks.json",
            get(jwks).layer(cors::public_document()),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata).layer(cors::public_document()),
        )
        .route(
            "/v1/revocations",
            get(revocations).layer(cors::public_document()),
        )
        .route("/v1/leaks", post(leaks))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(jwks, metadata, revocations, leaks),
    components(schemas(RevocationRecord))
)]
pub(super) struct Doc;

/// The public keys that verify access tokens: the active signing key and every retired key
/// whose tokens may not have expired yet.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "discovery", responses(
    (status = 200, description = "RFC 7517 JWK Set of Ed25519 OKP keys; cacheable.", body = Jwks)))]
async fn jwks(State(state): State<AppState>) -> Response {
    let mut res = axum::Json(state.keyring.jwks()).into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_str(&format!("public, max-age={JWKS_MAX_AGE}")).expect("ascii"),
    );
    res
}

/// RFC 8414 authorization server metadata: enough for a stock OAuth client with DPoP support
/// (openid-client's `algorithm: 'oauth2'` discovery) to obtain and refresh tokens.
#[derive(serde::Serialize, ToSchema)]
struct Metadata {
    issuer: String,
    /// `POST /v1/token`: JSON (contract 3.1) or RFC 6749 form (9.1).
    token_endpoint: String,
    jwks_uri: String,
    /// RFC 7009 sign-out (`POST /v1/token/revoke`, contract 9.3).
    revocation_endpoint: String,
    /// RFC 7662 introspection (`POST /v1/token/introspect`, contract 9.4).
    introspection_endpoint: String,
    /// The platform attestation challenge (`POST /v1/attestation/challenge`, contract 8).
    attestation_challenge_endpoint: String,
    /// The signed revocation feed (`GET /v1/revocations`).
    revocation_feed_endpoint: String,
    /// RFC 8693 token exchange (the API key as subject token) and RFC 6749 refresh.
    grant_types_supported: Vec<&'static str>,
    /// `none`: the API key is the subject token, not a client credential; the refresh token
    /// is bound to the device's DPoP key.
    token_endpoint_auth_methods_supported: Vec<&'static str>,
    /// Sign-out needs no client authentication, only the device's proof.
    revocation_endpoint_auth_methods_supported: Vec<&'static str>,
    dpop_signing_alg_values_supported: Vec<&'static str>,
}

/// RFC 8414 metadata: where the token endpoint and the keys are, and which DPoP algorithms
/// are accepted.
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "discovery",
    responses((status = 200, description = "RFC 8414 metadata; cacheable.", body = Metadata)))]
async fn metadata(State(state): State<AppState>) -> Response {
    let iss = &state.settings.issuer;
    let mut res = axum::Json(Metadata {
        issuer: iss.clone(),
        token_endpoint: format!("{iss}/v1/token"),
        jwks_uri: format!("{iss}/.well-known/jwks.json"),
        revocation_endpoint: format!("{iss}/v1/token/revoke"),
        introspection_endpoint: format!("{iss}{}", super::introspect::PATH),
        attestation_challenge_endpoint: format!("{iss}/v1/attestation/challenge"),
        revocation_feed_endpoint: format!("{iss}/v1/revocations"),
        grant_types_supported: vec![
            super::oauth::TOKEN_EXCHANGE_GRANT,
            super::oauth::REFRESH_TOKEN_GRANT,
        ],
        token_endpoint_auth_methods_supported: vec!["none"],
        revocation_endpoint_auth_methods_supported: vec!["none"],
        dpop_signing_alg_values_supported: vec!["EdDSA", "Ed25519", "ES256"],
    })
    .into_response();
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    res
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct FeedQuery {
    /// The `next` cursor of the previous answer; absent: from the beginning.
    #[param(pattern = "^[0-9]{0,18}$")]
    since: Option<String>,
}

/// The revocation feed: a JWS over the entries after the cursor. The cursor is the feed
/// position as a decimal string; clients must treat it as opaque.
#[utoipa::path(get, path = "/v1/revocations", tag = "discovery", params(FeedQuery), responses(
    (status = 200, description = "A JWS (`typ: revocations+jwt`, signed like access tokens) whose \
claims are `iss`, `iat`, `revocations` (an array of `RevocationRecord`, oldest first), `next` (the \
cursor for `since`) and `more`.", content_type = "application/jwt"),
    (status = 400, description = "`INVALID_REQUEST`: `since` is not a cursor of this feed; \
`API_KEY_IN_URL`.", body = ErrorBody),
    (status = 503, description = "`UNAVAILABLE`.", body = ErrorBody),
))]
async fn revocations(
    State(state): State<AppState>,
    Query(q): Query<FeedQuery>,
) -> Result<Response> {
    let after = match q.since.as_deref() {
        None | Some("") => 0,
        Some(s) => s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            Error::InvalidRequest("since: not a cursor returned by this feed".into())
        })?,
    };
    let entries = state.store.list_revocations(after, FEED_PAGE).await?;
    let next = entries.last().map_or(after, |e| e.seq);
    let claims = json!({
        "iss": state.settings.issuer,
        "iat": crate::state::now(),
        "revocations": entries,
        "next": next.to_string(),
        "more": entries.len() as i64 == FEED_PAGE,
    });
    let jws = state
        .keyring
        .active()
        .sign_jws(crate::tokens::signing::TYP_REVOCATIONS, &claims);
    Ok((
        [
            (header::CONTENT_TYPE, "application/jwt"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        jws,
    )
        .into_response())
}

/// A leaked key, reported by a secret scanner.
#[derive(Deserialize, ToSchema)]
struct LeakReport {
    /// The plaintext key as found.
    key: String,
    /// Where it was found (URL or note).
    #[serde(default)]
    source: Option<String>,
}

/// The answer to every leak report, valid key or not.
#[derive(serde::Serialize, ToSchema)]
struct LeakReceived {
    /// Always `received`.
    status: &'static str,
}

/// A scanner reports a leaked key: a valid one is suspended at once. The answer is the same
/// whether or not the key was valid, so the endpoint cannot be used to test keys.
#[utoipa::path(post, path = "/v1/leaks", tag = "discovery",
    request_body(content = LeakReport, content_type = "application/json"),
    responses(
        (status = 202, description = "Received. The same answer whether or not the key was valid; \
a valid key is suspended at once and a `KEY_LEAKED` alert raised.", body = LeakReceived),
        (status = 400, description = "`INVALID_REQUEST`, `API_KEY_IN_URL`.", body = ErrorBody),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`.", body = ErrorBody),
        (status = 415, description = "`UNSUPPORTED_MEDIA_TYPE`.", body = ErrorBody),
        (status = 503, description = "`UNAVAILABLE`.", body = ErrorBody),
    ))]
async fn leaks(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(report): Json<LeakReport>,
) -> Result<Response> {
    let source: String = report
        .source
        .unwrap_or_default()
        .chars()
        .take(512)
        .collect();
    let verified = match ApiKey::parse(report.key.trim()) {
        Ok(key) => {
            let (record, cached) = state.cache.key_and_source(key.id().as_str()).await?;
            let matches = record.as_ref().is_some_and(|r| {
                bool::from(subtle::ConstantTimeEq::ct_eq(
                    &key.secret_hash()[..],
                    &r.secret_hash[..],
                ))
            });
            if !matches {
                // As at the token endpoint: the answer's timing must not tell a live id.
                state.cache.pay_for_refusal(cached).await;
            }
            record.filter(|_| matches)
        }
        Err(_) => None,
    };
    if let Some(record) = verified {
        let now = crate::state::now();
        if record.status == KeyStatus::Active {
            let actor = crate::keys::service::Actor {
                name: "leak-report".into(),
                ip: Some(ip.to_string()),
            };
            crate::keys::service::set_status(
                &*state.store,
                &record.key_id,
                KeyStatus::Suspended,
                Some("leak reported"),
                &actor,
                now,
            )
            .await?;
        }
        state.alerts.raise(
            AlertKind::KeyLeaked,
            Some(&record.key_id),
            None,
            Some(ip),
            json!({"source": source}),
        );
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(LeakReceived { status: "received" }),
    )
        .into_response())
}

/// Middleware: a request whose query string holds an API key is refused before routing, and
/// the key is flagged with a `KEY_IN_URL` alert (URLs end up in proxy and server logs).
pub async fn reject_keys_in_url(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if let Some(query) = req.uri().query() {
        // The query holds a plaintext key: wipe our decoded copy when done.
        let decoded = zeroize::Zeroizing::new(percent_decode(query));
        let found = find_keys(&decoded);
        if !found.is_empty() {
            let ip = req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| {
                    super::extract::client_ip(
                        c.0.ip(),
                        req.headers(),
                        &state.settings.trusted_proxies,
                    )
                });
            for (pos, id) in found {
                // A checksum is no secret: say whether the URL held the real key, so that
                // containment acts only on genuine exposures, not on forged lookalikes.
                let verified = secret_matches(&state, &decoded[pos..], &id).await;
                state.alerts.raise(
                    AlertKind::KeyInUrl,
                    Some(id.as_str()),
                    None,
                    ip,
                    json!({"path": req.uri().path(), "secret_verified": verified}),
                );
            }
            // A stock OAuth client at the token endpoint reads RFC 6749 errors (contract 9.1).
            if req.uri().path() == crate::exchange::TOKEN_PATH
                && super::extract::is_form(req.headers())
            {
                return Error::ApiKeyInUrl.into_oauth_response();
            }
            return Error::ApiKeyInUrl.into_response();
        }
    }
    next.run(req).await
}

/// Whether `text` starts with the key `id` names, with the right secret.
async fn secret_matches(state: &AppState, text: &[u8], id: &crate::keys::KeyId) -> bool {
    let len = "sk_".len() + id.env().as_str().len() + 1 + crate::keys::format::BODY_LEN;
    let Some(key) = text
        .get(..len)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|s| ApiKey::parse(s).ok())
    else {
        return false;
    };
    match state.cache.key(id.as_str()).await {
        Ok(Some(record)) => bool::from(subtle::ConstantTimeEq::ct_eq(
            &key.secret_hash()[..],
            &record.secret_hash[..],
        )),
        _ => false,
    }
}

/// Percent-decodes a query, so a key that was URL-encoded is still seen.
fn percent_decode(q: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(q).collect()
}
