//! The JOSE core shared by the keybound server and the keybound SDK.
//!
//! Both verify RFC 9449 DPoP proofs (the server at its token endpoints, the SDK at resource
//! servers) and both compute RFC 7638 thumbprints; this crate is the one place those checks
//! are written. It is pure (no I/O, no clock, no async) and small in dependencies, so both
//! can depend on it without depending on each other:
//!
//! ```text
//! keybound (server) ──► keybound-jose ◄── keybound-sdk
//! ```
//!
//! What is *not* here is what only one side needs: the server's nonces, replay store, error
//! codes and options; the SDK's `ath` check against the token, its proof-key cache and its
//! refusal reasons.

#![deny(missing_docs)]

pub mod dpop;
mod error;
pub mod htu;
mod json;
mod jwk;
mod jws;

pub use error::Error;
pub use json::decode_json_object;
pub use jwk::{
    CheckedJwk, Curve, PRIVATE_MEMBERS, PublicKey, ed25519_thumbprint, has_private_members,
    jwk_thumbprint,
};
pub use jws::CompactJws;
