//! `/healthz` (the process is alive), `/readyz` (storage, and Redis in cluster mode, answer;
//! 503 naming the failing dependency when not) and
//! `/metrics` (Prometheus text format).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::state::AppState;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Health routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// How long `/readyz` waits for each dependency. Shorter than a load balancer's usual health
/// check timeout, so a hung dependency reads as "not ready", not as a dead instance.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Ready when storage answers and, in cluster mode, Redis too. The body names each
/// dependency's state, so an operator sees which one is down; a 503 also carries the
/// contract's error envelope.
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
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let mut checks = serde_json::Map::new();
    checks.insert("storage".into(), word(storage_ok).into());
    if let Some(ok) = redis_ok {
        checks.insert("redis".into(), word(ok).into());
    }
    let failing: Vec<&str> = [("storage", storage_ok), ("redis", redis_ok.unwrap_or(true))]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect();
    let mut body = json!({
        "status": if failing.is_empty() { "ready" } else { "unavailable" },
        "storage": state.store.backend(),
        "checks": checks,
    });
    if failing.is_empty() {
        return Json(body).into_response();
    }
    tracing::warn!(failing = ?failing, "not ready");
    body["error"] = json!({
        "code": "UNAVAILABLE",
        "message": format!("not ready: {} unavailable", failing.join(" and ")),
    });
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CACHE_CONTROL, "no-store")],
        Json(body),
    )
        .into_response()
}

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
