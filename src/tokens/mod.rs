//! What keybound issues: EdDSA-signed access tokens bound to a device key, opaque refresh
//! tokens, and the signing keys (sealed at rest, published as a JWKS) behind them.
//!
//! * [`signing`] — Ed25519 signing keys, `kid`s, the JWKS, and the master key that seals
//!   private keys for storage.

pub mod signing;

pub use signing::{
    Jwks, KeyError, MasterKey, PublicJwk, SigningKey, ed25519_jwk_thumbprint, jwks_json,
};
