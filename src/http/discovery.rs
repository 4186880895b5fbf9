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
use super::envelope::ErrorBody;
use super::extract::{ClientIp, Json, Query};
use crate::alerts::AlertKind;
use crate::error::{Error, Result};
use crate::keys::ApiKey;
use crate::keys::format::find_first_key;
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
        .route(
            "/v1/status-lists/{n}",
            get(status_list).layer(cors::public_document()),
        )
        .route("/v1/leaks", post(leaks))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(jwks, metadata, revocations, status_list, leaks),
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
    /// The `next` cursor of the previous answer; absent: from the beginning (the oldest entry
    /// kept). A cursor from before pruned entries reads on from the oldest entry kept.
    #[param(pattern = "^[0-9]{0,18}$")]
    since: Option<String>,
    /// Start at the first entry made at or after this time (unix seconds) instead of at a
    /// cursor: a new verifier reads recent entries only. Not together with `since`.
    #[param(pattern = "^[0-9]{1,12}$")]
    since_time: Option<String>,
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
    let after = match (q.since.as_deref(), q.since_time.as_deref()) {
        (Some(_), Some(_)) => {
            return Err(Error::InvalidRequest(
                "give since or since_time, not both".into(),
            ));
        }
        (None, Some(t)) => {
            let t = Some(t)
                .filter(|t| !t.is_empty() && t.len() <= 12 && t.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|t| t.parse::<i64>().ok())
                .ok_or_else(|| Error::InvalidRequest("since_time: unix seconds".into()))?;
            state.store.revocation_cursor_at(t).await?
        }
        (None | Some(""), None) => 0,
        (Some(s), None) => s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            Error::InvalidRequest("since: not a cursor returned by this feed".into())
        })?,
    };
    let entries = state.store.list_revocations(after, FEED_PAGE).await?;
    let next = entries.last().map_or(after, |e| e.seq);
    let claims = json!({
        "iss": state.settings.issuer,
        "iat": crate::clock::now(),
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

/// Token status list `n` (contract section 10): a signed `statuslist+jwt` with two bits per
/// device, which access tokens point into with their `status` claim.
#[utoipa::path(get, path = "/v1/status-lists/{n}", tag = "discovery",
    params(("n" = u32, Path, description = "The list number, as in a token's `status.status_list.uri`.")),
    responses(
    (status = 200, description = "A JWS (`typ: statuslist+jwt`, signed like access tokens) with \
claims `iss`, `sub` (the list's URI), `iat`, `exp`, `ttl` and `status_list` (`bits: 2`, `lst`: \
base64url of the ZLIB-compressed entries). Entry values: 0 valid, 1 invalid (device or key \
revoked, key expired), 2 suspended.", content_type = "application/statuslist+jwt"),
    (status = 404, description = "`NOT_FOUND`: no such list.", body = ErrorBody),
    (status = 503, description = "`UNAVAILABLE`.", body = ErrorBody),
))]
async fn status_list(
    State(state): State<AppState>,
    axum::extract::Path(n): axum::extract::Path<String>,
) -> Result<Response> {
    // Digits only (no sign, no spaces); anything else names no list.
    let n = Some(n.as_str())
        .filter(|s| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or(Error::NotFound)?;
    let jws = state.status_lists.get(n).await?.ok_or(Error::NotFound)?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                crate::tokens::status_list::CONTENT_TYPE,
            ),
            // Verifiers cache it for its `ttl` claim; HTTP caches between us and them must not
            // add their own lifetime on top.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        jws.to_string(),
    )
        .into_response())
}

/// A leaked key, reported by a secret scanner. The key is held as a secret (wiped on drop,
/// never in `Debug`): it may well be live.
#[derive(Deserialize, ToSchema)]
struct LeakReport {
    /// The plaintext key as found.
    #[schema(value_type = String)]
    key: secrecy::SecretString,
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
        (status = 429, description = "`RATE_LIMITED`: the client IP's failure budget is spent (a \
report of a key that does not verify counts as a failure); `Retry-After` is set.", body = ErrorBody),
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
    // Behind the per-IP failure budget, like the token endpoints: a report is a key check.
    state.failures.check(ip).await?;
    let now = crate::clock::now();
    // The same check as the token endpoint's, so the answer's timing does not tell a live id
    // either. A key that verified is reported whatever its status.
    let verified = match state
        .key_auth()
        .authenticate(secrecy::ExposeSecret::expose_secret(&report.key), now)
        .await
    {
        Ok(v) => Some(v.record().clone()),
        Err(e) if e.is_auth_failure() => {
            // Still 202, the same answer; the failure is counted all the same.
            super::guard::count_failure(&state, ip).await?;
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(record) = verified {
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

/// Middleware: a request whose URL (query string or path) holds an API key is refused before
/// routing with `API_KEY_IN_URL`, and flagged with a `KEY_IN_URL` alert (URLs end up in proxy
/// and server logs).
///
/// An unauthenticated request can carry hundreds of checksum-valid keys, which anyone can
/// forge for any key id, so the guard does bounded work whatever the URL holds (see
/// `docs/design.md`, "Keys in URLs"):
/// * only the first key is looked at (query first, then path);
/// * its secret is checked like any presented key ([`crate::keys::auth`]: one cached lookup,
///   the equalised refusal, the key id's failure budget), and not at all once the client's
///   address has spent its failure budget;
/// * a key whose secret verified is named in the alert (`details.secret_verified: true`, at
///   most one alert per key a minute); containment may act on it;
/// * a look-alike that did not verify is a failed authentication for the address's budget,
///   counted in `keybound_keys_in_url_unverified_total`, and reported without a key id in
///   one alert per address bucket a minute.
pub async fn reject_keys_in_url(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let Some((key, place)) = first_key_in_url(req.uri()) else {
        return next.run(req).await;
    };
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| {
            super::extract::client_ip(c.0.ip(), req.headers(), &state.settings.trusted_proxies)
        });
    // The path is only named when the key was not in it.
    let path = (place == "query").then(|| req.uri().path().chars().take(256).collect::<String>());
    flag_key_in_url(&state, &key, place, path, ip).await;
    // A stock OAuth client at the token endpoint reads RFC 6749 errors (contract 9.1).
    if req.uri().path() == crate::exchange::TOKEN_PATH && super::extract::is_form(req.headers()) {
        return Error::ApiKeyInUrl.into_oauth_response();
    }
    Error::ApiKeyInUrl.into_response()
}

/// The first key in the URL's query, else in its path, both percent-decoded (a URL-encoded
/// key is still seen), with where it was.
fn first_key_in_url(uri: &axum::http::Uri) -> Option<(ApiKey, &'static str)> {
    let find = |part: &str| {
        // The part may hold a plaintext key: wipe the decoded copy when done.
        let decoded = zeroize::Zeroizing::new(percent_decode(part));
        find_first_key(&decoded).map(|(_, key)| key)
    };
    if let Some(key) = uri.query().and_then(find) {
        return Some((key, "query"));
    }
    find(uri.path()).map(|key| (key, "path"))
}

/// Checks the key's secret (when the address may still spend failures) and raises the alert.
async fn flag_key_in_url(
    state: &AppState,
    key: &ApiKey,
    place: &'static str,
    path: Option<String>,
    ip: Option<std::net::IpAddr>,
) {
    let within_budget = match ip {
        Some(ip) => state.failures.check(ip).await.is_ok(),
        None => true,
    };
    let verified = if within_budget {
        match state.key_auth().verify(key, crate::clock::now()).await {
            Ok(v) => Some(v.record().key_id.clone()),
            Err(e) => {
                if let (true, Some(ip)) = (e.is_auth_failure(), ip)
                    && let Err(e) = super::guard::count_failure(state, ip).await
                {
                    tracing::warn!(error = %e, "could not count a key-in-URL failure");
                }
                None
            }
        }
    } else {
        None
    };
    match verified {
        Some(key_id) => state.alerts.raise_once(
            AlertKind::KeyInUrl,
            &key_id,
            Some(&key_id),
            ip,
            json!({"secret_verified": true, "in": place, "path": path}),
        ),
        None => {
            metrics::counter!("keybound_keys_in_url_unverified_total").increment(1);
            let subject = ip.map_or_else(String::new, |ip| state.failures.bucket(ip).to_string());
            state.alerts.raise_once(
                AlertKind::KeyInUrl,
                &format!("unverified {subject}"),
                None,
                ip,
                json!({"secret_verified": false, "in": place, "path": path}),
            );
        }
    }
}

/// Percent-decodes a query or path, so a key that was URL-encoded is still seen.
fn percent_decode(q: &str) -> Vec<u8> {
    percent_encoding::percent_decode_str(q).collect()
}
