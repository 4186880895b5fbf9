//! Compact JWS serialisation (RFC 7515 §7.1), cut into its parts.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::Error;
use crate::json::decode_json_object;

/// A compact JWS cut into its three parts, with the protected header decoded strictly
/// ([`decode_json_object`]: one JSON object, no duplicated members) and the signature decoded.
///
/// Splitting says nothing about validity: the caller checks the header (`alg` against its
/// allow-list first) and the signature before it reads the payload with
/// [`payload`](Self::payload).
#[derive(Debug, Clone)]
pub struct CompactJws<'a> {
    header: Map<String, Value>,
    payload_b64: &'a str,
    signing_input: &'a str,
    signature: Vec<u8>,
}

impl<'a> CompactJws<'a> {
    /// Splits `token`: exactly three base64url parts (no padding), the first a JSON object.
    /// A JWE (five parts), a JSON serialisation or anything else is [`Error::Malformed`].
    pub fn split(token: &'a str) -> Result<Self, Error> {
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Error::Malformed);
        };
        let header = decode_json_object(header_b64)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| Error::Malformed)?;
        Ok(Self {
            header,
            payload_b64,
            // The signing input is the ASCII of the first two parts as received
            // (RFC 7515 §5.2), never a re-encoding of what we decoded.
            signing_input: &token[..header_b64.len() + 1 + payload_b64.len()],
            signature,
        })
    }

    /// The protected header.
    pub fn header(&self) -> &Map<String, Value> {
        &self.header
    }

    /// A header member that is a JSON string; `None` when absent or of another type.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }

    /// `base64url(header) "." base64url(payload)`, the bytes the signature covers.
    pub fn signing_input(&self) -> &'a str {
        self.signing_input
    }

    /// The payload part, still base64url.
    pub fn payload_b64(&self) -> &'a str {
        self.payload_b64
    }

    /// The decoded signature.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// The payload as a JSON object, decoded as strictly as the header. Read it only once the
    /// signature has verified.
    pub fn payload(&self) -> Result<Map<String, Value>, Error> {
        decode_json_object(self.payload_b64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_parts_and_keeps_the_signing_input_as_received() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA"}"#);
        let jws = format!("{header}.e30.AAEC");
        let parsed = CompactJws::split(&jws).unwrap();
        assert_eq!(parsed.header_str("alg"), Some("EdDSA"));
        assert_eq!(parsed.signing_input(), format!("{header}.e30"));
        assert_eq!(parsed.payload_b64(), "e30");
        assert_eq!(parsed.signature(), [0, 1, 2]);
        assert_eq!(parsed.payload().unwrap(), Map::new());
    }

    #[test]
    fn refuses_wrong_shapes() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA"}"#);
        for token in [
            String::new(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            "a.b.c.d.e".to_owned(),
            "!!.e30.".to_owned(),
            format!("{}.e30.", URL_SAFE_NO_PAD.encode("[1]")),
            format!("{header}.e30.AAAA="),
            format!("{header}.e30.!!"),
        ] {
            assert_eq!(
                CompactJws::split(&token).unwrap_err(),
                Error::Malformed,
                "{token}"
            );
        }
    }
}
