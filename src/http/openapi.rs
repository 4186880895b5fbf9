//! The OpenAPI 3.1 description of the HTTP API, generated from the handlers' `#[utoipa::path]`
//! annotations and the request and response types' `ToSchema` derives, served at
//! `GET /openapi.json` and committed as `docs/openapi.json` (a test keeps the two equal).
//!
//! Each resource module declares its own paths (an `OpenApi` derive named `Doc`), so a new
//! handler is described next to its code; this module merges them and adds what they share:
//! the error envelope and the security schemes.

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

pub use super::envelope::{
    AdminErrors, BodyErrors, ErrorBody, ErrorCode, ErrorDetail, OAuthErrorBody,
};
use crate::state::AppState;

/// The `GET /openapi.json` route.
pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// The description of the API, with every path of every resource.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "discovery",
    responses((status = 200, description = "This OpenAPI 3.1 document.", content_type = "application/json"))
)]
async fn openapi_json() -> Response {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=3600")],
        axum::Json(document()),
    )
        .into_response()
}

/// The complete document.
pub fn document() -> serde_json::Value {
    let doc = Root::openapi()
        .merge_from(super::health::Doc::openapi())
        .merge_from(super::token::Doc::openapi())
        .merge_from(super::attestation::Doc::openapi())
        .merge_from(super::introspect::Doc::openapi())
        .merge_from(super::discovery::Doc::openapi())
        .merge_from(super::admin::Doc::openapi());
    let mut doc = serde_json::to_value(doc).expect("the document serializes");
    optional_bodies_are_not_null(&mut doc);
    doc
}

/// The document as written to `docs/openapi.json`: pretty-printed, newline-terminated.
pub fn pretty() -> String {
    let mut s = serde_json::to_string_pretty(&document()).expect("the document serializes");
    s.push('\n');
    s
}

/// utoipa describes an optional body (`Option<T>`) as "not required" and also as
/// `oneOf: [T, null]`. The second is wrong for us: an absent or empty body counts as `{}`, but
/// a body that is the JSON `null` is not an object and is refused (400). Keep `required: false`
/// and the plain `T`.
fn optional_bodies_are_not_null(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let bodies = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.pointer_mut("/requestBody/content"))
        .filter_map(|content| content.as_object_mut())
        .flat_map(|content| content.values_mut());
    for media in bodies {
        let Some(schema) = media.get_mut("schema") else {
            continue;
        };
        let not_null = match schema.get("oneOf").and_then(|o| o.as_array()) {
            Some(items) if items.len() == 2 => items
                .iter()
                .find(|i| i.get("type").and_then(|t| t.as_str()) != Some("null"))
                .cloned(),
            _ => None,
        };
        if let Some(inner) = not_null {
            *schema = inner;
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "keybound",
        description = "Exchanges long-lived API keys and RFC 9449 DPoP proofs for short-lived, \
device-bound EdDSA access tokens. Every error is the envelope `{\"error\": {\"code\", \"message\"}}`; \
each response below names the codes it can carry. Any request whose query string holds an API key \
is refused with 400 `API_KEY_IN_URL` before routing; a wrong method on a known path is 405 \
`METHOD_NOT_ALLOWED`; an unknown path is 404 `NOT_FOUND`. (`POST /bench/sign` and \
`POST /bench/verify-sign`, the load generator's ceiling routes, and `PUT /bench/switches`, which \
turns rate limiting, usage tracking and the token path's writes off to measure their cost, exist \
only in the server the load generator starts itself (`keybound-bench`), never in `keybound serve`, \
and are not part of the API.)",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(openapi_json),
    components(schemas(ErrorBody, ErrorDetail, ErrorCode, OAuthErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "token", description = "Token exchange and refresh (contract 3.1, 3.2), their RFC 6749 \
form (9.1), introspection (9.4). The token endpoints answer CORS preflights and allow any origin \
the presented key's `allowed_origins` admits (contract 11)."),
        (name = "discovery", description = "Discovery and verification (contract 3.3)"),
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "admin", description = "Key, device, audit and alert management (contract 3.4)"),
    )
)]
struct Root;

/// Names of the security schemes the paths refer to (by these literal names: `security(…)`
/// in a path annotation takes string literals only).
mod scheme {
    /// `X-API-Key: sk_…`.
    pub const API_KEY: &str = "api_key";
    /// `Authorization: Bearer sk_…` (the same key, the other header).
    pub const API_KEY_BEARER: &str = "api_key_bearer";
    /// `DPoP: <proof JWT>`.
    pub const DPOP: &str = "dpop";
    /// `Authorization: Bearer <admin token>`.
    pub const ADMIN: &str = "admin_token";
    /// `Authorization: Bearer <introspection token>`.
    pub const INTROSPECTION: &str = "introspection_token";
}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let header = |name: &str, what: &str| {
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(name, what)))
        };
        components.add_security_scheme(
            scheme::API_KEY,
            header("X-API-Key", "The API key `sk_<env>_<61 base62>`."),
        );
        components.add_security_scheme(
            scheme::API_KEY_BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The API key as a bearer token."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            scheme::DPOP,
            header(
                "DPoP",
                "An RFC 9449 proof JWT (`typ: dpop+jwt`, EdDSA/Ed25519 or ES256) whose `htu` is \
                 the issuer followed by the path.",
            ),
        );
        components.add_security_scheme(
            scheme::ADMIN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The admin token (`--admin-token`). Without one configured the admin \
                         API answers 404.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            scheme::INTROSPECTION,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "One of the `--introspection-token`s (the admin token works too).",
                    ))
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_of_the_server_is_in_the_document() {
        let doc = document();
        let codes = &doc["components"]["schemas"]["ErrorCode"]["enum"];
        let errors = [
            crate::Error::InvalidRequest(String::new()),
            crate::Error::ApiKeyInUrl,
            crate::Error::UseDpopNonce {
                nonce: String::new(),
            },
            crate::Error::InvalidAudience,
            crate::Error::MissingApiKey,
            crate::Error::InvalidApiKey,
            crate::Error::InvalidDpopProof(String::new()),
            crate::Error::DpopReplay,
            crate::Error::InvalidRefreshToken,
            crate::Error::RefreshTokenReused,
            crate::Error::InvalidAdminToken,
            crate::Error::IpNotAllowed,
            crate::Error::OriginNotAllowed,
            crate::Error::InsufficientScope,
            crate::Error::DeviceLimitReached,
            crate::Error::DeviceRevoked,
            crate::Error::DeviceUntrusted,
            crate::Error::AttestationRequired,
            crate::Error::InvalidAttestation(String::new()),
            crate::Error::NotFound,
            crate::Error::MethodNotAllowed,
            crate::Error::PayloadTooLarge,
            crate::Error::UnsupportedMediaType,
            crate::Error::RateLimited {
                retry_after_secs: 1,
            },
            crate::Error::internal("x"),
            crate::Error::unavailable("x"),
        ];
        assert_eq!(codes.as_array().unwrap().len(), errors.len());
        for e in errors {
            assert!(
                codes.as_array().unwrap().iter().any(|c| c == e.code()),
                "{} missing from ErrorCode",
                e.code()
            );
        }
    }

    #[test]
    fn it_is_openapi_3_1_and_every_route_is_described() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        let expected = [
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
            ("/v1/token", "post"),
            ("/v1/token/refresh", "post"),
            ("/v1/token/revoke", "post"),
            ("/v1/token/introspect", "post"),
            ("/.well-known/jwks.json", "get"),
            ("/.well-known/oauth-authorization-server", "get"),
            ("/v1/revocations", "get"),
            ("/v1/status-lists/{n}", "get"),
            ("/v1/leaks", "post"),
            ("/v1/attestation/challenge", "post"),
            ("/admin/v1/keys", "post"),
            ("/admin/v1/keys", "get"),
            ("/admin/v1/keys/{key_id}", "get"),
            ("/admin/v1/keys/{key_id}", "patch"),
            ("/admin/v1/keys/{key_id}/revoke", "post"),
            ("/admin/v1/keys/{key_id}/suspend", "post"),
            ("/admin/v1/keys/{key_id}/resume", "post"),
            ("/admin/v1/keys/{key_id}/rotate", "post"),
            ("/admin/v1/keys/{key_id}/devices", "get"),
            ("/admin/v1/keys/{key_id}/usage", "get"),
            ("/admin/v1/devices/{device_id}/revoke", "post"),
            ("/admin/v1/devices/{device_id}/approve", "post"),
            ("/admin/v1/audit", "get"),
            ("/admin/v1/alerts", "get"),
        ];
        for (path, method) in expected {
            assert!(
                paths.get(path).and_then(|p| p.get(method)).is_some(),
                "{method} {path} is not described"
            );
        }
        let described: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
        assert_eq!(
            described,
            expected.len(),
            "a path is described twice or not routed"
        );
    }
}
