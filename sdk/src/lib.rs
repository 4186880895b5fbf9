//! # keybound-sdk
//!
//! The client and the offline verifier for [keybound], a server that exchanges a long-lived
//! API key plus an RFC 9449 DPoP proof for a short-lived EdDSA access token bound to the
//! device's key.
#![deny(missing_docs)]

mod client;
mod device_key;
mod dpop;
mod error;
mod http;
mod jose;
mod trust;
mod verifier;

pub use client::{AccessToken, Client, ClientBuilder, RetryPolicy};
pub use device_key::{DeviceKey, Ed25519DeviceKey, Es256DeviceKey};
pub use dpop::DpopProofBuilder;
pub use error::{Error, ErrorKind, InvalidTokenReason, Result};
pub use jose::jwk_thumbprint;
pub use trust::TrustLevel;
pub use verifier::{VerifiedToken, Verifier, VerifierBuilder};
