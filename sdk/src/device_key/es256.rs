use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use rand::rngs::OsRng;
use serde_json::{Value, json};
use std::fmt;

use super::DeviceKey;
use crate::error::Result;
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

    fn alg(&self) -> &'static str {
        "ES256"
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        // RFC 7518 section 3.4: the JWS signature is the fixed-size r || s, not DER.
        let signature: Signature = self.signing_key.sign(message);
        Ok(signature.to_bytes().to_vec())
    }
}

impl fmt::Debug for Es256DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Es256DeviceKey")
            .field("public_jwk", &self.public_jwk())
            .finish_non_exhaustive()
    }
}
