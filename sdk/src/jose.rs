//! Small JOSE helpers shared by the proof builder, the verifier and the client: base64url and
//! the clock. Compact-JWS splitting, RFC 7638 thumbprints and the DPoP proof checks are the
//! `keybound-jose` crate's, shared with the server.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// JWS uses base64url without padding everywhere (RFC 7515 section 2).
pub(crate) fn b64_encode(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn b64_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// base64url(SHA-256(bytes)): the `ath` of RFC 9449 section 4.2 and the RFC 7638 thumbprint.
pub(crate) fn sha256_b64(bytes: impl AsRef<[u8]>) -> String {
    b64_encode(Sha256::digest(bytes.as_ref()))
}

/// Seconds since the Unix epoch, the unit of every JWT time claim.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) use keybound_jose::CompactJws;

/// The RFC 7638 JWK thumbprint (SHA-256, base64url) of a public JWK.
///
/// Only the required members of the key type take part, in lexicographic order, so the
/// thumbprint is the same however the JWK was serialized. Supports `OKP` (Ed25519), `EC` and
/// `RSA` keys.
///
/// ```
/// // RFC 8037 appendix A.3
/// let jwk = serde_json::json!({
///     "kty": "OKP", "crv": "Ed25519",
///     "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
/// });
/// assert_eq!(
///     keybound_sdk::jwk_thumbprint(&jwk).unwrap(),
///     "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k",
/// );
/// ```
pub fn jwk_thumbprint(jwk: &Value) -> Result<String> {
    keybound_jose::jwk_thumbprint(jwk).map_err(|e| Error::config(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use serde_json::json;

    // The RFC 7638 and RFC 8037 vectors run in `keybound-jose`; here only the SDK's mapping.
    #[test]
    fn thumbprint_errors_are_config_errors() {
        for jwk in [
            json!({"kty": "OKP", "crv": "Ed25519"}),
            json!({"kty": "oct", "k": "c2VjcmV0"}),
        ] {
            let err = jwk_thumbprint(&jwk).unwrap_err();
            assert_eq!(err.kind(), &ErrorKind::Config, "{jwk}");
        }
        let rsa = json!({"kty": "RSA", "e": "AQAB", "n": "0vx7"});
        assert_eq!(
            jwk_thumbprint(&rsa).unwrap(),
            keybound_jose::jwk_thumbprint(&rsa).unwrap()
        );
    }
}
