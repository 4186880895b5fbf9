//! The benchmark's ceiling routes, served only by a server this crate starts itself on
//! loopback ([`crate::server`]); `keybound serve` has none of them.
//!
//! - `POST /bench/sign` does what an exchange does last and nothing before: build access-token
//!   claims and sign them with the active key, behind the same middleware as every route.
//! - `POST /bench/verify-sign` first does the other fixed cost of every exchange: a SHA-256 (as
//!   of a presented API key) and one Ed25519 `verify_strict` (as of a DPoP proof's signature,
//!   over a message of a proof's size, with a key decompressed once), then the same signing.
//!   It is the "SHA-256 + one `verify_strict` + one sign" reference route.
//!
//! `keybound bench` compares the full exchange with both, on the same server in the same run:
//! against sign-only, what the checks and the durable write cost on top of the one signature
//! no token can do without; against verify-sign, what they cost on top of the two signature
//! operations no exchange can do without.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use keybound::state::AppState;
use keybound::tokens::{AccessClaims, AccessGrant, GrantedTrust};

/// Path of the sign-only route.
pub const SIGN_PATH: &str = "/bench/sign";

/// Path of the verify-and-sign route.
pub const VERIFY_SIGN_PATH: &str = "/bench/verify-sign";

/// Path of the switches route.
pub const SWITCHES_PATH: &str = "/bench/switches";

/// Benchmark-only routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(SIGN_PATH, post(sign))
        .route(VERIFY_SIGN_PATH, post(verify_sign))
        .route(SWITCHES_PATH, put(switches))
}

/// Body of `PUT /bench/switches`.
#[derive(Debug, Deserialize, Serialize)]
pub struct SwitchesBody {
    /// Check the per-key rate and the per-IP failure budget.
    pub rate_limits: bool,
    /// Record usage events.
    pub usage: bool,
    /// Write a refresh's family row and queue the device's history (default on).
    #[serde(default = "on")]
    pub writes: bool,
}

fn on() -> bool {
    true
}

/// Turns rate limiting, usage tracking and the token path's writes on or off, for
/// `keybound bench --overhead`.
async fn switches(State(state): State<AppState>, Json(body): Json<SwitchesBody>) -> Response {
    state
        .switches
        .set(body.rate_limits, body.usage, body.writes);
    tracing::warn!(
        rate_limits = body.rate_limits,
        usage = body.usage,
        writes = body.writes,
        "benchmark switches changed"
    );
    Json(body).into_response()
}

/// What `POST /bench/verify-sign` hashes and verifies: made once per process.
struct Fixed {
    api_key: [u8; 48],
    key: ed25519_dalek::VerifyingKey,
    message: Vec<u8>,
    signature: ed25519_dalek::Signature,
}

fn fixed() -> &'static Fixed {
    static FIXED: std::sync::OnceLock<Fixed> = std::sync::OnceLock::new();
    FIXED.get_or_init(|| {
        use ed25519_dalek::Signer;
        let signer = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        // About the size of a DPoP proof's signing input (its header with the JWK, and claims).
        let message = vec![b'e'; 360];
        Fixed {
            api_key: [b'k'; 48],
            key: signer.verifying_key(),
            signature: signer.sign(&message),
            message,
        }
    })
}

async fn verify_sign(state: State<AppState>) -> Response {
    use sha2::Digest;
    let f = fixed();
    let digest = sha2::Sha256::digest(std::hint::black_box(&f.api_key));
    std::hint::black_box(digest);
    if f.key.verify_strict(&f.message, &f.signature).is_err() {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    sign(state).await
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
            att: None,
            ttl_seconds: s.access_ttl_secs as u64,
            status_idx: 0,
        },
        keybound::clock::now() as u64,
    );
    let token = claims.sign(&state.keyring.active());
    let mut res = Json(json!({"access_token": token, "token_type": "DPoP",
                              "expires_in": claims.expires_in()}))
    .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
