//! Small JOSE helpers shared by the proof builder, the verifier and the client: base64url,
//! compact-JWS splitting, RFC 7638 thumbprints and the clock.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind, Result};

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

/// A compact JWS cut into its parts, with the header and payload decoded as JSON. Decoding
/// says nothing about validity: callers check the header before trusting anything else.
pub(crate) struct CompactJws<'a> {
    pub(crate) header: Value,
    pub(crate) payload_b64: &'a str,
    pub(crate) signing_input: &'a str,
    pub(crate) signature: Vec<u8>,
}

impl<'a> CompactJws<'a> {
    /// `None` unless the text is exactly three base64url parts with a JSON-object header.
    pub(crate) fn split(token: &'a str) -> Option<Self> {
        let mut parts = token.split('.');
        let (header_b64, payload_b64, signature_b64) =
            (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&b64_decode(header_b64)?).ok()?;
        if !header.is_object() {
            return None;
        }
        Some(Self {
            header,
            payload_b64,
            signing_input: &token[..header_b64.len() + 1 + payload_b64.len()],
            signature: b64_decode(signature_b64)?,
        })
    }

    /// A string member of the header.
    pub(crate) fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }

    /// The payload decoded into `T`; only call once the signature has been verified.
    pub(crate) fn claims<T: DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_slice(&b64_decode(self.payload_b64)?).ok()
    }
}

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
    let member = |name: &str| -> Result<String> {
        let value = jwk.get(name).and_then(Value::as_str).ok_or_else(|| {
            Error::new(ErrorKind::Config).with_message(format!("JWK lacks a string `{name}`"))
        })?;
        // serde_json writes a JSON string with the minimal escaping RFC 7638 section 3.3 asks for.
        Ok(serde_json::to_string(value).expect("a string always serializes"))
    };
    let canonical = match jwk.get("kty").and_then(Value::as_str) {
        Some("OKP") => format!(
            r#"{{"crv":{},"kty":"OKP","x":{}}}"#,
            member("crv")?,
            member("x")?
        ),
        Some("EC") => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            member("crv")?,
            member("x")?,
            member("y")?
        ),
        Some("RSA") => format!(
            r#"{{"e":{},"kty":"RSA","n":{}}}"#,
            member("e")?,
            member("n")?
        ),
        _ => return Err(Error::config("JWK has no supported `kty`")),
    };
    Ok(sha256_b64(canonical))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn thumbprint_matches_rfc7638_rsa_example() {
        // RFC 7638 section 3.1.
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29",
        });
        assert_eq!(
            jwk_thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn thumbprint_ignores_optional_members_and_order() {
        let a = json!({"kty": "OKP", "crv": "Ed25519", "x": "abc"});
        let b = json!({"x": "abc", "use": "sig", "crv": "Ed25519", "kty": "OKP", "kid": "k1"});
        assert_eq!(jwk_thumbprint(&a).unwrap(), jwk_thumbprint(&b).unwrap());
    }

    #[test]
    fn thumbprint_refuses_incomplete_keys() {
        assert!(jwk_thumbprint(&json!({"kty": "OKP", "crv": "Ed25519"})).is_err());
        assert!(jwk_thumbprint(&json!({"kty": "oct", "k": "c2VjcmV0"})).is_err());
    }

    #[test]
    fn split_refuses_wrong_shapes() {
        assert!(CompactJws::split("a.b").is_none());
        assert!(CompactJws::split("a.b.c.d").is_none());
        assert!(CompactJws::split("!!.e30.").is_none());
        let header = b64_encode(br#"{"alg":"EdDSA"}"#);
        let jws = format!("{header}.e30.");
        let parsed = CompactJws::split(&jws).unwrap();
        assert_eq!(parsed.header_str("alg"), Some("EdDSA"));
        assert_eq!(parsed.signing_input, format!("{header}.e30"));
    }
}
