//! Device keys: the key a DPoP proof is signed with, and so the identity of a device.
//!
//! The private key never leaves an implementation of [`DeviceKey`]: the SDK only asks for the
//! public JWK and for signatures. That lets a mobile app keep the key in the Secure Enclave or
//! the Android Keystore (ES256) and still use this crate.

mod ed25519;
mod es256;
mod file;

pub use ed25519::Ed25519DeviceKey;
pub use es256::Es256DeviceKey;

use serde_json::Value;
use std::fmt;

use crate::error::Result;
use crate::jose::jwk_thumbprint;

/// A device's signing key. keybound knows a device by the RFC 7638 thumbprint of this key.
///
/// Implement it to keep the private key in a hardware keystore. Implementations must be cheap
/// to call from async code (one signature is fine: an Ed25519 signature takes ~20 µs).
pub trait DeviceKey: Send + Sync + fmt::Debug {
    /// The public key as a JWK (`kty`, `crv`, `x`, and `y` for EC), with no private members.
    fn public_jwk(&self) -> Value;

    /// The JWS `alg` this key signs with: `"EdDSA"` for Ed25519 or `"ES256"` for P-256.
    fn alg(&self) -> &'static str;

    /// Signs `message` and returns the JWS signature bytes (64 bytes for both algorithms; for
    /// ES256 that is `r || s`, not DER).
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>>;

    /// The RFC 7638 SHA-256 thumbprint of [`public_jwk`](Self::public_jwk): the `cnf.jkt` of
    /// tokens bound to this key.
    fn thumbprint(&self) -> Result<String> {
        jwk_thumbprint(&self.public_jwk())
    }
}
