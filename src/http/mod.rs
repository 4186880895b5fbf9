//! HTTP: the router, one module per resource, extractors and the error mapping.

pub mod admin;
pub mod attestation;
pub mod cors;
pub mod discovery;
pub mod envelope;
pub mod extract;
pub mod guard;
pub mod health;
pub mod introspect;
pub mod oauth;
pub mod openapi;
pub mod token;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Request};
use tower::ServiceBuilder;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::Error;
use crate::state::AppState;

/// Largest request body (contract section 3).
pub const MAX_BODY: usize = 16 * 1024;

/// What one listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Everything (one listener, the default).
    All,
    /// Everything but the admin API, which answers 404 here (`--admin-listen` is set).
    Public,
    /// Only the admin API (the `--admin-listen` address).
    Admin,
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    app_for(state, Surface::All)
}

/// The HTTP application for one listener.
pub fn app_for(state: AppState, surface: Surface) -> Router {
    app_with(state, surface, Router::new())
}

/// The HTTP application for one listener, with `extra` routes beside the public ones, behind
/// the same middleware. `keybound serve` passes none; only the load generator
/// (`keybound-bench`) adds its ceiling routes, to a server it starts itself on loopback.
pub fn app_with(state: AppState, surface: Surface, extra: Router<AppState>) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    let mut routes = Router::new();
    if surface != Surface::Admin {
        routes = routes
            .merge(extra)
            .merge(health::router())
            .merge(openapi::router())
            .merge(token::router())
            .merge(attestation::router())
            .merge(introspect::router())
            .merge(discovery::router());
    }
    if surface != Surface::Public {
        routes = routes.nest("/admin/v1", admin::router());
    }
    // One layer made of every middleware, outermost first. `Router::layer` wraps each route
    // on its own, and a route clones what it wraps on every request (`axum::routing::Route`):
    // as nine layers, each request cloned the stack below each of them again, the route's
    // service included (about 80 allocations a token request, `docs/benchmarks.md`); as one,
    // each route holds one stack, cloned once.
    let middleware = ServiceBuilder::new()
        .layer(axum::middleware::map_request(drop_foreign_request_id))
        .layer(SetRequestIdLayer::new(request_id.clone(), RandomRequestId))
        .layer(PropagateRequestIdLayer::new(request_id))
        .layer(
            // The span records method, route and request id; never headers or bodies, which
            // carry API keys, tokens and proofs.
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                // Borrowed: a span records its fields when it is made.
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                let route = req
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map_or("unmatched", axum::extract::MatchedPath::as_str);
                tracing::info_span!("request", method = %req.method(), route, request_id = id)
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            discovery::reject_keys_in_url,
        ))
        // A stalled body (no chunk for this long) fails the read: the extractor answers 400
        // and hyper closes the connection, whose body it can no longer find the end of.
        .layer(RequestBodyTimeoutLayer::new(
            state.settings.body_read_timeout,
        ))
        // Back to axum's body type for the layers below, as `Router::layer` does between two.
        .map_request(|req: Request<_>| req.map(axum::body::Body::new))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(count_requests));
    routes
        .fallback(|| async { Error::NotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(middleware)
        .with_state(state)
}

/// Longest client `x-request-id` kept (every UUID text form fits).
const MAX_REQUEST_ID: usize = 64;

/// Gives a request without an id of ours a random UUID, as tower-http's `MakeRequestUuid`
/// does, but from the thread's CSPRNG instead of a system call a request
/// ([`crate::ids::uuid_v4`]).
#[derive(Debug, Clone, Copy)]
struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let mut text = uuid::Uuid::encode_buffer();
        let id = crate::ids::uuid_v4().hyphenated().encode_lower(&mut text);
        HeaderValue::from_str(id).ok().map(RequestId::new)
    }
}

/// Keeps a client's `x-request-id` only when it is a UUID (at most [`MAX_REQUEST_ID`]
/// characters); otherwise it is removed and [`SetRequestIdLayer`] generates one. The id is
/// written into every log line and echoed in the response, so an arbitrary client string
/// could forge log entries or smuggle data into them.
async fn drop_foreign_request_id(mut req: axum::extract::Request) -> axum::extract::Request {
    let keep = req.headers().get_all("x-request-id").iter().count() == 1
        && req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_request_id);
    if !keep {
        req.headers_mut().remove("x-request-id");
    }
    req
}

/// Whether a client's request id is acceptable: UUID-shaped and short.
fn is_request_id(id: &str) -> bool {
    id.len() <= MAX_REQUEST_ID && uuid::Uuid::try_parse(id).is_ok()
}

/// Counts requests by matched route and status, and times them.
async fn count_requests(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    REQUEST_METRICS.record(
        route.as_ref().map_or("unmatched", |p| p.as_str()),
        res.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    res
}

/// The request counter and timer of each route and status, registered once: a `metrics`
/// macro with labels allocates, hashes and looks up its key on every call. Bounded as the
/// labels are: routes are the matched patterns, statuses three digits.
static REQUEST_METRICS: std::sync::LazyLock<RequestMetrics> =
    std::sync::LazyLock::new(RequestMetrics::default);

#[derive(Default)]
struct RequestMetrics {
    routes: std::sync::RwLock<std::collections::HashMap<String, RouteMetrics>>,
}

/// One route's timer, and its counter for each status seen.
struct RouteMetrics {
    seconds: metrics::Histogram,
    requests: std::collections::HashMap<u16, metrics::Counter>,
}

impl RequestMetrics {
    /// Counts one request to `route` answered with `status` in `seconds`.
    fn record(&self, route: &str, status: u16, seconds: f64) {
        use std::sync::PoisonError;
        {
            let routes = self.routes.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(r) = routes.get(route)
                && let Some(requests) = r.requests.get(&status)
            {
                requests.increment(1);
                r.seconds.record(seconds);
                return;
            }
        }
        // The first request of a route and status: register its handles with the
        // process-wide recorder (installed first, so they are never the no-op ones).
        crate::telemetry::metrics();
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        let r = routes
            .entry(route.to_owned())
            .or_insert_with(|| RouteMetrics {
                seconds: metrics::histogram!("keybound_http_request_seconds", "route" => route.to_owned()),
                requests: std::collections::HashMap::new(),
            });
        r.requests
            .entry(status)
            .or_insert_with(|| {
                metrics::counter!(
                    "keybound_http_requests_total",
                    "route" => route.to_owned(),
                    "status" => status.to_string()
                )
            })
            .increment(1);
        r.seconds.record(seconds);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_uuid_shaped_request_ids_are_kept() {
        let cases = [
            ("0b6c6f0e-3a8e-4c4b-9f5e-2f1d2c3b4a59", true),
            ("0B6C6F0E-3A8E-4C4B-9F5E-2F1D2C3B4A59", true),
            ("0b6c6f0e3a8e4c4b9f5e2f1d2c3b4a59", true),
            ("not-a-uuid", false),
            ("", false),
            ("0b6c6f0e-3a8e-4c4b-9f5e-2f1d2c3b4a59 injected=1", false),
            ("0b6c6f0e-3a8e-4c4b-9f5e-2f1d2c3b4a5g", false),
        ];
        for (id, want) in cases {
            assert_eq!(super::is_request_id(id), want, "{id:?}");
        }
        assert!(!super::is_request_id(&"a".repeat(65)));
    }

    /// The handles kept for a route and status count every request, the first (which
    /// registers them) and the ones after, with the process-wide recorder that `/metrics`
    /// renders.
    #[test]
    fn request_metrics_count_every_request() {
        let route = "/test/request-metrics";
        for (status, seconds) in [(418, 0.0001), (418, 0.003), (429, 0.02)] {
            super::REQUEST_METRICS.record(route, status, seconds);
        }
        let text = crate::telemetry::metrics().render();
        let value = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::trim)
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .to_owned()
        };
        let requests = |status: u16| {
            value(&format!(
                "keybound_http_requests_total{{route=\"{route}\",status=\"{status}\"}}"
            ))
        };
        assert_eq!(requests(418), "2");
        assert_eq!(requests(429), "1");
        assert_eq!(
            value(&format!(
                "keybound_http_request_seconds_count{{route=\"{route}\"}}"
            )),
            "3"
        );
        assert_eq!(
            value(&format!(
                "keybound_http_request_seconds_bucket{{route=\"{route}\",le=\"0.005\"}}"
            )),
            "2"
        );
    }
}
