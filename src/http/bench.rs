//! `POST /bench/sign`: the benchmark's ceiling route, served only with `--bench-routes`.
//!
//! It does what an exchange does last and nothing before: build access-token claims and sign
//! them with the active key, behind the same middleware as every route. `keybound bench`
//! compares the full exchange with it, on the same server in the same run, to show what the
//! checks and the durable write cost on top of the one signature no token can do without.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::state::AppState;
use crate::tokens::{AccessClaims, AccessGrant, GrantedTrust};

/// Path of the sign-only route.
pub const SIGN_PATH: &str = "/bench/sign";

/// Path of the switches route.
pub const SWITCHES_PATH: &str = "/bench/switches";

/// Benchmark-only routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(SIGN_PATH, post(sign))
        .route(SWITCHES_PATH, put(switches))
}

/// Body of `PUT /bench/switches`.
#[derive(Debug, Deserialize, Serialize)]
pub struct SwitchesBody {
    /// Check the per-key rate and the per-IP failure budget.
    pub rate_limits: bool,
    /// Record usage events.
    pub usage: bool,
}

/// Turns rate limiting and usage tracking on or off, for `keybound bench --overhead`.
async fn switches(State(state): State<AppState>, Json(body): Json<SwitchesBody>) -> Response {
    state.switches.set(body.rate_limits, body.usage);
    tracing::warn!(
        rate_limits = body.rate_limits,
        usage = body.usage,
        "benchmark switches changed"
    );
    Json(body).into_response()
}

async fn sign(State(state): State<AppState>) -> Response {
    let s = &state.settings;
    let claims = AccessClaims::new(
        &AccessGrant {
            issuer: &s.issuer,
            key_id: "ak_test_benchbenchben",
            audience: &s.audiences[0],
            scope: "read:bench write:bench",
            jkt: "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
            device_id: "dev_bench",
            trust: GrantedTrust::Trusted,
            ttl_seconds: s.access_ttl_secs as u64,
        },
        crate::state::now() as u64,
    );
    let token = claims.sign(&state.keyring.active());
    let mut res = Json(json!({"access_token": token, "token_type": "DPoP",
                              "expires_in": claims.expires_in()}))
    .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
