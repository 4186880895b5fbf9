//! `/healthz` (the process is alive), `/readyz` (storage, and Redis in cluster mode, answer;
//! 503 naming the failing dependency when not) and
//! `/metrics` (Prometheus text format).

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::envelope::{ErrorCode, ErrorDetail};
use crate::state::AppState;

/// Health routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(healthz, readyz, metrics))]
pub(super) struct Doc;

/// `/healthz` body.
#[derive(Serialize, ToSchema)]
struct Alive {
    /// Always `ok`.
    status: &'static str,
}

/// The process is alive (it answers); says nothing about its dependencies.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "The process is alive.", body = Alive)))]
async fn healthz() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// The state of one dependency.
#[derive(Serialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Check {
    /// It answered.
    Ok,
    /// It did not answer within the readiness timeout.
    Unavailable,
}

impl Check {
    fn of(ok: bool) -> Check {
        if ok { Check::Ok } else { Check::Unavailable }
    }
}

/// Each dependency's state.
#[derive(Serialize, ToSchema)]
struct Checks {
    /// The database.
    storage: Check,
    /// Redis; present in cluster mode (`--redis-url`) only.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<Check>,
}

/// `/readyz` body when every dependency answers.
#[derive(Serialize, ToSchema)]
struct Ready {
    /// Always `ready`.
    status: &'static str,
    /// `sqlite` or `postgres`.
    storage: &'static str,
    /// Each dependency's state.
    checks: Checks,
}

/// `/readyz` body when a dependency does not answer: the error envelope plus the checks.
#[derive(Serialize, ToSchema)]
struct NotReady {
    /// `UNAVAILABLE`, with a message naming the failing dependencies.
    error: ErrorDetail,
    /// Always `unavailable`.
    status: &'static str,
    /// `sqlite` or `postgres`.
    storage: &'static str,
    /// Each dependency's state.
    checks: Checks,
}

/// How long `/readyz` waits for each dependency. Shorter than a load balancer's usual health
/// check timeout, so a hung dependency reads as "not ready", not as a dead instance.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Ready when storage answers and, in cluster mode, Redis too. The body names each
/// dependency's state, so an operator sees which one is down; a 503 also carries the
/// contract's error envelope.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Storage (and Redis in cluster mode) answer.", body = Ready),
    (status = 503, description = "`UNAVAILABLE`: a dependency does not answer; `checks` says which.",
     body = NotReady),
))]
async fn readyz(State(state): State<AppState>) -> Response {
    let storage = async {
        matches!(
            tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await,
            Ok(Ok(()))
        )
    };
    let redis = async {
        match &state.redis {
            None => None,
            Some(link) => Some(link.ping().await.is_ok()),
        }
    };
    let (storage_ok, redis_ok) = tokio::join!(storage, redis);
    let checks = Checks {
        storage: Check::of(storage_ok),
        redis: redis_ok.map(Check::of),
    };
    let failing: Vec<&str> = [("storage", storage_ok), ("redis", redis_ok.unwrap_or(true))]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect();
    let storage = state.store.backend();
    if failing.is_empty() {
        let body = Ready {
            status: "ready",
            storage,
            checks,
        };
        return Json(body).into_response();
    }
    tracing::warn!(failing = ?failing, "not ready");
    let body = NotReady {
        error: ErrorDetail {
            code: ErrorCode::UNAVAILABLE,
            message: format!("not ready: {} unavailable", failing.join(" and ")),
        },
        status: "unavailable",
        storage,
        checks,
    };
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response()
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health", responses(
    (status = 200, description = "Prometheus text format (version 0.0.4).", body = String,
     content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl axum::response::IntoResponse {
    if let Some(n) = state.replay.approx_len() {
        metrics::gauge!("keybound_replay_store_entries").set(n as f64);
    }
    metrics::gauge!("keybound_key_cache_entries").set(state.cache.key_entries() as f64);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::metrics().render(),
    )
}
