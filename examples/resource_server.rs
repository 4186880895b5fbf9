//! A resource server that checks keybound tokens offline: no call to keybound per request,
//! only its JWKS and its revocation feed, fetched in the background.
//!
//! ```sh
//! cargo run --example resource_server
//! ```
//!
//! Settings (environment): `KEYBOUND_URL` (the keybound server and token issuer, default `http://127.0.0.1:8080`), `LISTEN`
//! (default `127.0.0.1:3000`), `AUDIENCE` (default: the issuer, which is the server's default
//! audience when it runs without `--audience`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use keybound_sdk::{VerifiedToken, Verifier};
use serde_json::{Value, json};
use std::env;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

/// Who is calling: everything the verified token says.
async fn whoami(token: VerifiedToken) -> Json<Value> {
    Json(json!({
        "api_key": token.subject(),
        "device_id": token.device_id(),
        "trust": token.trust().as_str(),
        "scopes": token.scopes(),
        "jkt": token.thumbprint(),
        "expires_at": token.expires_at().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs(),
    }))
}

/// A route that needs a scope: 403 with `error="insufficient_scope"` without it.
async fn users(token: VerifiedToken) -> Result<Json<Value>, keybound_sdk::Error> {
    token.require_scope("read:users")?;
    Ok(Json(json!({ "users": ["ada", "grace"] })))
}

/// Readiness: not ready while revocations may be stale.
async fn ready(State(verifier): State<Arc<Verifier>>) -> (StatusCode, &'static str) {
    if verifier.feed_healthy() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "revocation feed stale")
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let issuer = env::var("KEYBOUND_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let listen = env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let audience = env::var("AUDIENCE").unwrap_or_else(|_| issuer.clone());

    let verifier = Verifier::builder(&issuer)
        .audience(audience)
        // The URL clients use for this server; DPoP proofs are checked against it.
        .resource_url(format!("http://{listen}"))
        .build()
        .await?;

    let app = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/users", get(users))
        .route("/readyz", get(ready))
        .with_state(Arc::new(verifier));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("resource server on http://{listen}, trusting tokens from {issuer}");
    axum::serve(listener, app).await?;
    Ok(())
}
