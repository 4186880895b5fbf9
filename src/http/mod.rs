//! HTTP: the router, one module per resource, extractors and the error mapping.

pub mod admin;
pub mod bench;
pub mod cors;
pub mod discovery;
pub mod extract;
pub mod health;
pub mod introspect;
pub mod oauth;
pub mod openapi;
pub mod token;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::error::Error;
use crate::state::AppState;

/// Largest request body (contract section 3).
pub const MAX_BODY: usize = 16 * 1024;

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let mut routes = Router::new();
    if state.settings.bench_routes {
        routes = routes.merge(bench::router());
    }
    routes
        .merge(health::router())
        .merge(openapi::router())
        .merge(token::router())
        .merge(introspect::router())
        .merge(discovery::router())
        .nest("/admin/v1", admin::router())
        .fallback(|| async { Error::NotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(axum::middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            discovery::reject_keys_in_url,
        ))
        .layer(
            // The span records method, route and request id; never headers or bodies, which
            // carry API keys, tokens and proofs.
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned();
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_else(|| "unmatched".into());
                tracing::info_span!("request", method = %req.method(), route, request_id = id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
        .with_state(state)
}

/// Counts requests by matched route and status, and times them.
async fn count_requests(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("keybound_http_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("keybound_http_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}
