//! # keybound-sdk
//!
//! The client and the offline verifier for keybound, a server that exchanges a long-lived
//! API key plus an RFC 9449 DPoP proof for a short-lived EdDSA access token bound to the
//! device's key.
//!
//! - **Apps** use a [`Client`]: it keeps a valid token in memory, renews it before it runs out
//!   (refresh token first, full exchange when that is refused), shares one renewal between
//!   concurrent callers, retries what is worth retrying, and builds the two headers a resource
//!   server needs ([`Client::authorize`]). The device is its [`DeviceKey`]: an
//!   [`Ed25519DeviceKey`] stored in a file, or a platform keystore behind the trait (which may
//!   sign asynchronously, [`Signing`]). A [`SessionStore`] keeps the session across restarts,
//!   an [`AttestationProvider`] attests a new device key, [`Client::sign_out`] revokes, and
//!   the transport can pin the server's key ([`ClientBuilder::pin_spki_sha256`]). Swift,
//!   Kotlin and Python apps get the same client through the `keybound-ffi` crate.
//! - **Resource servers** use a [`Verifier`]: it checks tokens and their DPoP proofs with
//!   nothing but the issuer's JWKS and polls the issuer's signed revocation feed, so a
//!   revoked key or device stops working within seconds, still without a call per request.
//!   With the `axum` feature, [`VerifiedToken`] is an extractor and [`Error`] a response.
//!
//! Every option has a secure default, named in its documentation. Plain `http` is refused for
//! anything but loopback addresses unless a `danger_` method says otherwise.
//!
//! ## Errors
//!
//! Everything returns [`Error`]; branch on [`Error::kind`]. [`ErrorKind`] has a variant for
//! every error code of the keybound contract, plus the SDK's own ([`ErrorKind::Network`],
//! [`ErrorKind::InvalidToken`] with an [`InvalidTokenReason`], …). No error ever contains a
//! secret.
//!
//! ## A client
//!
//! ```no_run
//! # async fn run() -> keybound_sdk::Result<()> {
//! use keybound_sdk::{Client, Ed25519DeviceKey, ErrorKind};
//! use std::sync::Arc;
//!
//! let client = Client::builder("https://auth.example.com")
//!     .api_key(std::env::var("KEYBOUND_API_KEY").unwrap_or_default().into())
//!     .device_key(Arc::new(Ed25519DeviceKey::load_or_create("device.key")?))
//!     .device_attribute("platform", "linux")
//!     .build()?;
//!
//! match client.authorize("GET", "https://api.example.com/v1/users").await {
//!     Ok(headers) => { /* send the request with these headers */ }
//!     Err(e) if e.kind() == &ErrorKind::InvalidApiKey => { /* revoked, expired or wrong */ }
//!     Err(e) if e.kind() == &ErrorKind::DeviceLimitReached => { /* ask an admin */ }
//!     Err(e) => return Err(e),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## A resource server with axum
//!
//! With the `axum` feature. The router's state gives an `Arc<Verifier>` through `FromRef`;
//! the verifier needs [`VerifierBuilder::resource_url`] to rebuild the URL the client signed.
//! Refusals answer 401 with `WWW-Authenticate: DPoP error="invalid_token"` (or
//! `invalid_dpop_proof`), and a missing scope 403 with `error="insufficient_scope"`.
//!
//! ```no_run
//! # #[cfg(feature = "axum")]
//! # mod example {
//! use axum::{Router, extract::FromRef, routing::get};
//! use keybound_sdk::{VerifiedToken, Verifier};
//! use std::sync::Arc;
//!
//! #[derive(Clone)]
//! struct AppState {
//!     verifier: Arc<Verifier>,
//! }
//!
//! impl FromRef<AppState> for Arc<Verifier> {
//!     fn from_ref(state: &AppState) -> Self {
//!         state.verifier.clone()
//!     }
//! }
//!
//! async fn list_users(token: VerifiedToken) -> Result<String, keybound_sdk::Error> {
//!     token.require_scope("read:users")?;
//!     Ok(format!("hello {}", token.subject()))
//! }
//!
//! pub async fn app() -> keybound_sdk::Result<Router> {
//!     let verifier = Verifier::builder("https://auth.example.com")
//!         .audience("https://api.example.com")
//!         .resource_url("https://api.example.com")
//!         .build()
//!         .await?;
//!     Ok(Router::new()
//!         .route("/v1/users", get(list_users))
//!         .with_state(AppState { verifier: Arc::new(verifier) }))
//! }
//! # }
//! ```
#![deny(missing_docs)]

mod client;
mod device_key;
mod dpop;
mod error;
#[cfg(feature = "axum")]
mod extract;
mod file;
mod http;
mod jose;
mod tls;
mod trust;
#[cfg(test)]
mod vectors;
mod verifier;

pub use client::{
    AccessToken, AttestationProvider, Client, ClientBuilder, FileSessionStore, RetryPolicy,
    Session, SessionStore,
};
pub use device_key::{DeviceKey, Ed25519DeviceKey, Es256DeviceKey, Signing};
pub use dpop::DpopProofBuilder;
pub use error::{Error, ErrorKind, InvalidTokenReason, Result};
pub use jose::jwk_thumbprint;
pub use trust::TrustLevel;
pub use verifier::{VerifiedToken, Verifier, VerifierBuilder};
