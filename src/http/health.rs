//! `/healthz` (the process is alive), `/readyz` (storage answers; 503 when not) and
//! `/metrics` (Prometheus text format).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::error::Result;
use crate::state::AppState;

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

async fn readyz(State(state): State<AppState>) -> Result<Json<Value>> {
    state.store.ping().await?;
    Ok(Json(
        json!({"status": "ready", "storage": state.store.backend()}),
    ))
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
