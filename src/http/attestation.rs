//! `POST /v1/attestation/challenge` (contract section 8): a fresh challenge for a platform
//! attestation. No credentials: a challenge is worth nothing without a valid key and proof at
//! the exchange, and it costs no storage (see [`crate::exchange::challenge`]).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;

use crate::exchange::challenge::{CHALLENGE_PATH, CHALLENGE_TTL_SECS};
use crate::state::AppState;

/// Attestation routes.
pub fn router() -> Router<AppState> {
    // Browser apps may ask too (contract 11): the same CORS rule as the token endpoints.
    Router::new().route(CHALLENGE_PATH, super::cors::token_endpoint(post(challenge)))
}

/// This module's part of the OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(challenge))]
pub(super) struct Doc;

/// A challenge and how long it is good for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChallengeResponse {
    /// base64url; the app attests the client data `<challenge>.<jkt of its DPoP key>`.
    pub challenge: String,
    /// Seconds it stays valid (300); it is good for one accepted attestation.
    pub expires_in: i64,
}

/// Issues a single-use attestation challenge, valid for 300 s on every instance.
#[utoipa::path(post, path = "/v1/attestation/challenge", tag = "token",
    responses((status = 200, description = "A fresh challenge (`Cache-Control: no-store`).",
               body = ChallengeResponse)))]
async fn challenge(State(state): State<AppState>) -> Response {
    let mut res = axum::Json(ChallengeResponse {
        challenge: state.challenges.issue(crate::clock::now()),
        expires_in: CHALLENGE_TTL_SECS,
    })
    .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}
