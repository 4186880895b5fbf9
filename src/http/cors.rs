//! Browsers (contract section 11), with tower-http's CORS layer.
//!
//! Two policies, each a layer a route adopts where it is declared:
//!
//! - [`token_endpoint`] for the token endpoints and the attestation challenge: preflights are
//!   answered (204) for any origin, and every actual answer to a request with an `Origin`
//!   (errors and nonce challenges included, so a browser app can read `DPoP-Nonce`,
//!   `Retry-After` and `WWW-Authenticate`) allows that origin — except a refusal with
//!   `ORIGIN_NOT_ALLOWED`, which goes out with no CORS header at all: the key's own
//!   `allowed_origins` is the only origin policy, and it is checked where the key is known.
//!   Answering any origin is safe because nothing here rides on ambient credentials: no
//!   cookies (`Access-Control-Allow-Credentials` is never sent), and every request carries
//!   its own API key or refresh token and a proof by the device's key.
//! - [`public_document`] for what anyone may read from anywhere (JWKS, metadata, the
//!   revocation feed, the status lists): `Access-Control-Allow-Origin: *`.
//!
//! The admin API adopts neither, so it never sends a CORS header.

use std::time::Duration;

use axum::http::{HeaderName, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::MethodRouter;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::OriginRefused;

/// How long a browser may cache a preflight's answer. Browsers cap it (Chromium at 2 hours);
/// ten minutes keeps a policy change quick to reach them.
pub const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// Request headers a browser may send to the token endpoints.
const ALLOW_HEADERS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("dpop"),
    header::CONTENT_TYPE,
];

/// Response headers a browser app must be able to read: the nonce to retry with (RFC 9449
/// section 8), when to retry after a 429, and the DPoP challenge.
const EXPOSE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("dpop-nonce"),
    header::RETRY_AFTER,
    header::WWW_AUTHENTICATE,
];

/// The token endpoints' policy, around `route` (a `post(handler)`): preflights for its path
/// are answered, its answers carry CORS headers as the module explains. Use it where the
/// route is declared: `.route(PATH, cors::token_endpoint(post(handler)))`.
pub fn token_endpoint<S: Clone + Send + Sync + 'static>(route: MethodRouter<S>) -> MethodRouter<S> {
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::mirror_request())
        .allow_methods([Method::POST])
        .allow_headers(ALLOW_HEADERS)
        .expose_headers(EXPOSE_HEADERS)
        .max_age(PREFLIGHT_MAX_AGE);
    // An explicit OPTIONS route, so the preflight reaches the layer as this path's own method
    // (the app's method-not-allowed fallback would answer 405 without it). The CORS layer
    // answers every OPTIONS itself; the handler never runs.
    route
        .options(|| async { StatusCode::NO_CONTENT })
        // One layer, not two: a route clones what each layer wraps on every request
        // (`crate::http::app_with`).
        .layer::<_, std::convert::Infallible>(
            tower::ServiceBuilder::new()
                .map_response(origin_refusals_and_preflights as fn(Response) -> Response)
                .layer(cors),
        )
}

/// What tower-http's layer does not do for us: a preflight answers 204 (contract section 11;
/// tower-http answers 200), and a response marked [`OriginRefused`] loses every CORS header
/// tower-http added.
///
/// A plain function of the response (a `tower` map, no boxed middleware per request): a
/// preflight is recognised by `Access-Control-Allow-Methods`, which tower-http writes on its
/// answers to `OPTIONS` (the layer answers every `OPTIONS` itself) and on no other response,
/// and which no handler writes.
fn origin_refusals_and_preflights(mut res: Response) -> Response {
    if res.status() == StatusCode::OK
        && res
            .headers()
            .contains_key(header::ACCESS_CONTROL_ALLOW_METHODS)
    {
        *res.status_mut() = StatusCode::NO_CONTENT;
    }
    if res.extensions().get::<OriginRefused>().is_some() {
        let headers = res.headers_mut();
        let cors: Vec<HeaderName> = headers
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in cors {
            headers.remove(name);
        }
    }
    res
}

/// The public documents' policy: readable from any origin (`Access-Control-Allow-Origin: *`),
/// for `GET`. Adopt it on the route: `.route(PATH, get(handler).layer(cors::public_document()))`.
pub fn public_document() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(tower_http::cors::Any)
        .allow_methods([Method::GET])
        .max_age(PREFLIGHT_MAX_AGE)
}
