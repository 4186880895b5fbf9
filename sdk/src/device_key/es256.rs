use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use rand::rngs::OsRng;
use serde_json::{Value, json};
use std::fmt;

use super::{DeviceKey, Signing};
use crate::jose::b64_encode;

/// A P-256 (ES256) device key held in memory.
///
/// It mostly shows how a [`DeviceKey`] backed by a platform keystore looks: the Secure Enclave
/// and the Android Keystore both offer P-256 and return the public point and signatures, which
/// is all this trait needs.
pub struct Es256DeviceKey {
    signing_key: SigningKey,
}

impl Es256DeviceKey {
    /// A fresh key from the operating system's CSPRNG, kept in memory only.
    pub fn generate() -> Self {
        Self {
            signing_key: SigningKey::random(&mut OsRng),
        }
    }
}

impl Es256DeviceKey {
    /// The key with this 32-byte private scalar, for test vectors.
    #[cfg(test)]
    pub(crate) fn from_scalar(d: &[u8]) -> Self {
        Self {
            signing_key: SigningKey::from_slice(d).expect("a valid P-256 scalar"),
        }
    }
}

impl DeviceKey for Es256DeviceKey {
    fn public_jwk(&self) -> Value {
        let point = self.signing_key.verifying_key().to_encoded_point(false);
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": b64_encode(point.x().expect("an uncompressed point has x")),
            "y": b64_encode(point.y().expect("an uncompressed point has y")),
        })
    }

    fn alg(&self) -> &str {
        "ES256"
    }

    fn sign<'a>(&'a self, message: &'a [u8]) -> Signing<'a> {
        // RFC 7518 section 3.4: the JWS signature is the fixed-size r || s, not DER. The
        // nonce is RFC 6979's deterministic one, so the same message gives the same signature.
        let signature: Signature = self.signing_key.sign(message);
        Signing::ready(Ok(signature.to_bytes().to_vec()))
    }
}

impl fmt::Debug for Es256DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Es256DeviceKey")
            .field("public_jwk", &self.public_jwk())
            .finish_non_exhaustive()
    }
}
