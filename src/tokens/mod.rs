//! What keybound issues: EdDSA-signed access tokens bound to a device key, opaque refresh
//! tokens, and the signing keys (sealed at rest, published as a JWKS) behind them.
//!
//! * [`signing`](crate::tokens::signing) — Ed25519 signing keys, `kid`s, the JWKS, and the
//!   master key that seals private keys for storage.
//! * [`access`](crate::tokens::access) — access token claims (contract section 4), signed
//!   as `at+jwt`.
//! * [`refresh`](crate::tokens::refresh) — sealed `rt_…` refresh tokens (XChaCha20-Poly1305
//!   under a key derived from the master key).
//! * [`status_list`](crate::tokens::status_list) — the token status lists (contract section
//!   10) every access token points into.

pub mod access;
pub mod keyring;
pub mod refresh;
pub mod signing;
pub mod status_list;

pub use access::{AccessClaims, AccessGrant, Cnf, DeviceDenied, GrantedTrust, new_jti};
pub use refresh::{RefreshClaims, RefreshSealer, is_well_formed_refresh_token};
pub use signing::{
    Jwks, KeyError, MasterKey, PublicJwk, SigningKey, ed25519_jwk_thumbprint, jwks_json,
};

#[cfg(test)]
mod tests;
