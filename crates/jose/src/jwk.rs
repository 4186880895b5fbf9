//! JWKs: the one list of private members, RFC 7638 thumbprints, and public keys a proof can
//! be verified with.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Verifier as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::Error;
use crate::dpop::ProofAlg;

/// JWK members that hold private key material in any key type of RFC 7518 §6: `d` (EC, OKP
/// and RSA), the RSA CRT members and `oth`, and `k` (symmetric). A proof carrying any of them
/// means a client shipped its private key over the wire; RFC 9449 §4.3 check 7 says to refuse.
/// The server's verifier, the SDK's verifier and the SDK's proof builder all use this one list.
pub const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Whether `jwk` has any of the [`PRIVATE_MEMBERS`].
pub fn has_private_members(jwk: &Value) -> bool {
    PRIVATE_MEMBERS.iter().any(|m| jwk.get(m).is_some())
}

/// The RFC 7638 JWK thumbprint with SHA-256, base64url without padding: the `jkt` of
/// RFC 9449 §6 and of an access token's `cnf` claim.
///
/// Only the required members of the key type enter the hash, in lexicographic order, with no
/// whitespace (RFC 7638 §3.2): `crv`, `kty`, `x` for OKP (RFC 8037 §2); `crv`, `kty`, `x`,
/// `y` for EC; `e`, `kty`, `n` for RSA. RSA is here so the function can be checked against
/// RFC 7638's own example and so SDK users can thumbprint any key; proofs never use RSA keys.
///
/// The member values are hashed as given; call this on a key that has been validated (as
/// [`PublicKey::jwk`] is) when the thumbprint must identify a usable key.
pub fn jwk_thumbprint(jwk: &Value) -> Result<String, Error> {
    let Value::Object(members) = jwk else {
        return Err(Error::InvalidJwk("not a JSON object"));
    };
    let kty = str_member(members, "kty")?;
    let canonical = match kty {
        "OKP" => canonical(&[
            ("crv", str_member(members, "crv")?),
            ("kty", kty),
            ("x", str_member(members, "x")?),
        ]),
        "EC" => canonical(&[
            ("crv", str_member(members, "crv")?),
            ("kty", kty),
            ("x", str_member(members, "x")?),
            ("y", str_member(members, "y")?),
        ]),
        "RSA" => canonical(&[
            ("e", str_member(members, "e")?),
            ("kty", kty),
            ("n", str_member(members, "n")?),
        ]),
        _ => return Err(Error::InvalidJwk("unsupported kty")),
    };
    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// The thumbprint of an Ed25519 public key (the server's signing keys' `kid`): the same hash
/// as [`jwk_thumbprint`] of `{"kty":"OKP","crv":"Ed25519","x":…}`.
pub fn ed25519_thumbprint(public_key: &[u8; 32]) -> String {
    let x = URL_SAFE_NO_PAD.encode(public_key);
    let canonical = canonical(&[("crv", "Ed25519"), ("kty", "OKP"), ("x", &x)]);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

/// `{"name":"value",…}` with the members in the order given (the caller gives RFC 7638's
/// lexicographic order) and no whitespace. Values are written by serde_json, which escapes
/// exactly as RFC 7638 §3.3 expects (the JSON of RFC 7159).
fn canonical(members: &[(&str, &str)]) -> String {
    let mut out = String::from("{");
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(name);
        out.push_str("\":");
        out.push_str(&Value::from(*value).to_string());
    }
    out.push('}');
    out
}

/// The curve of a proof key: which of the allowed key types a JWK is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curve {
    /// `{"kty":"OKP","crv":"Ed25519"}`, for `EdDSA` / `Ed25519`.
    Ed25519,
    /// `{"kty":"EC","crv":"P-256"}`, for `ES256`.
    P256,
}

/// A JWK that passed the checks made before any key material is decoded: a JSON object, no
/// [`PRIVATE_MEMBERS`], and a key type and curve that fit the proof's `alg`. What a
/// [`KeyCache`](crate::dpop::KeyCache) is asked about.
#[derive(Debug, Clone, Copy)]
pub struct CheckedJwk<'a> {
    curve: Curve,
    members: &'a Map<String, Value>,
}

impl<'a> CheckedJwk<'a> {
    /// Runs the checks, in this order: private material is refused first, so that a key that
    /// is also wrong in other ways is still logged as the more serious fault.
    pub fn check(jwk: &'a Value, alg: ProofAlg) -> Result<Self, Error> {
        let Value::Object(members) = jwk else {
            return Err(Error::InvalidJwk("not a JSON object"));
        };
        if PRIVATE_MEMBERS.iter().any(|m| members.contains_key(*m)) {
            return Err(Error::PrivateKeyInJwk);
        }
        let kty = str_member(members, "kty")?;
        let crv = str_member(members, "crv")?;
        // The key type must be the one `alg` names. Without this, a proof could pick the
        // verification algorithm and the key independently (algorithm confusion).
        let curve = match (alg, kty, crv) {
            (ProofAlg::EdDsa | ProofAlg::Ed25519, "OKP", "Ed25519") => Curve::Ed25519,
            (ProofAlg::Es256, "EC", "P-256") => Curve::P256,
            _ => return Err(Error::KeyAlgMismatch),
        };
        Ok(Self { curve, members })
    }

    /// The key's curve.
    pub fn curve(&self) -> Curve {
        self.curve
    }

    /// A member that is a JSON string (`x`, `y`): what a cache keys on. For a given curve the
    /// key decoded from a JWK depends on nothing but its coordinates.
    pub fn member(&self, name: &str) -> Option<&'a str> {
        self.members.get(name).and_then(Value::as_str)
    }

    /// Decodes and validates the key material.
    pub fn to_key(&self) -> Result<PublicKey, Error> {
        let members = self.members;
        let (key, jwk) = match self.curve {
            Curve::Ed25519 => {
                let x = coordinate(members, "x")?;
                let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                    .map_err(|_| Error::InvalidJwk("x is not an Ed25519 point"))?;
                // A small-order key lets one signature verify for many messages; verify_strict
                // refuses it as well, but saying so here gives a clearer error.
                if key.is_weak() {
                    return Err(Error::InvalidJwk("weak Ed25519 key"));
                }
                let jwk = serde_json::json!({
                    "kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(x),
                });
                (VerifyingKey::Ed25519(key), jwk)
            }
            Curve::P256 => {
                let x = coordinate(members, "x")?;
                let y = coordinate(members, "y")?;
                let point =
                    p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
                // from_encoded_point checks that the point is on the curve and not the
                // identity: an off-curve point would open invalid-curve attacks on ECDSA
                // verification.
                let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                    .map_err(|_| Error::InvalidJwk("x, y is not a P-256 point"))?;
                let jwk = serde_json::json!({
                    "kty": "EC", "crv": "P-256",
                    "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
                });
                (VerifyingKey::P256(key), jwk)
            }
        };
        let jkt = jwk_thumbprint(&jwk)?;
        Ok(PublicKey(std::sync::Arc::new(Decoded { key, jwk, jkt })))
    }
}

/// A proof key decoded from its JWK and validated: the point is on its curve, and an Ed25519
/// key is not of small order. Shared, so a [`KeyCache`](crate::dpop::KeyCache) hands out a
/// copy without copying the JWK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(std::sync::Arc<Decoded>);

#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    key: VerifyingKey,
    jwk: Value,
    jkt: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum VerifyingKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl PublicKey {
    /// Reads the public key of `jwk` for `alg` ([`CheckedJwk::check`], then
    /// [`CheckedJwk::to_key`]).
    pub fn from_jwk(jwk: &Value, alg: ProofAlg) -> Result<Self, Error> {
        CheckedJwk::check(jwk, alg)?.to_key()
    }

    /// The JWK reduced to the members its thumbprint covers (`kty`, `crv`, `x` and, for EC,
    /// `y`). Optional members (`kid`, `use`, ...) are dropped so a client cannot make a
    /// verifier store arbitrary data with the device.
    pub fn jwk(&self) -> &Value {
        &self.0.jwk
    }

    /// The RFC 7638 SHA-256 thumbprint of [`jwk`](Self::jwk).
    pub fn thumbprint(&self) -> &str {
        &self.0.jkt
    }

    /// The Ed25519 key, for batch verification ([`crate::dpop::verify_signatures`]).
    pub(crate) fn ed25519(&self) -> Option<&ed25519_dalek::VerifyingKey> {
        match &self.0.key {
            VerifyingKey::Ed25519(key) => Some(key),
            VerifyingKey::P256(_) => None,
        }
    }

    /// Verifies a JWS signature (RFC 7515 §5.2) over `signing_input` = `header.payload`.
    pub fn verify(&self, signing_input: &[u8], signature: &[u8]) -> Result<(), Error> {
        match &self.0.key {
            // verify_strict rather than verify: it also refuses non-canonical R encodings and
            // small-order keys, so every (message, key) has exactly one valid signature
            // encoding (RFC 8032 §5.1.7 leaves these checks to the implementation).
            VerifyingKey::Ed25519(key) => {
                let signature = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| Error::BadSignature)?;
                key.verify_strict(signing_input, &signature)
                    .map_err(|_| Error::BadSignature)
            }
            // JWS ES256 signatures are the 64-byte r || s of RFC 7518 §3.4, not DER.
            // from_slice refuses r or s equal to 0 or >= n.
            //
            // High-S signatures are accepted on purpose. ECDSA is malleable ((r, s) and
            // (r, n - s) both verify), but nothing here depends on the signature bytes being
            // unique: replay protection keys on the signed `jti`, which a malleated proof
            // keeps, so it is still refused as a replay. Refusing high S would instead reject
            // about half of the proofs made by WebCrypto, Android Keystore, the iOS Secure
            // Enclave and others, which do not normalise S.
            VerifyingKey::P256(key) => {
                let signature = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| Error::BadSignature)?;
                key.verify(signing_input, &signature)
                    .map_err(|_| Error::BadSignature)
            }
        }
    }
}

fn str_member<'a>(members: &'a Map<String, Value>, name: &'static str) -> Result<&'a str, Error> {
    match members.get(name) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(Error::InvalidJwk(match name {
            "kty" => "kty missing or not a string",
            "crv" => "crv missing or not a string",
            "x" => "x missing or not a string",
            "y" => "y missing or not a string",
            _ => "required member missing or not a string",
        })),
    }
}

/// A 32-byte base64url coordinate. RFC 7518 §6.2.1.2 and RFC 8037 §2 fix the length to the
/// field size, so a shorter (leading zeros dropped) or longer value is refused rather than
/// padded: two spellings of one key would give two thumbprints.
fn coordinate(members: &Map<String, Value>, name: &'static str) -> Result<[u8; 32], Error> {
    let encoded = str_member(members, name)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| Error::InvalidJwk("coordinate is not base64url"))?;
    bytes
        .try_into()
        .map_err(|_| Error::InvalidJwk("coordinate is not 32 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// RFC 7638 §3.1: the RSA key of RFC 7517 appendix A.1 and its thumbprint.
    #[test]
    fn rfc_7638_section_3_1_example() {
        let jwk = json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        assert_eq!(
            jwk_thumbprint(&jwk).unwrap(),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    /// RFC 8037 appendix A.3: the Ed25519 key of A.2 and its thumbprint.
    #[test]
    fn rfc_8037_appendix_a_3_okp_thumbprint() {
        let jwk = json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        });
        assert_eq!(
            jwk_thumbprint(&jwk).unwrap(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn thumbprint_ignores_optional_members_and_member_order() {
        let plain = json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"});
        let decorated = json!({"x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "use": "sig",
                               "alg": "EdDSA", "kid": "k1", "crv": "Ed25519", "kty": "OKP"});
        assert_eq!(jwk_thumbprint(&plain), jwk_thumbprint(&decorated));
    }

    #[test]
    fn ec_thumbprint_hashes_the_canonical_members() {
        // The P-256 key of RFC 7515 appendix A.3; the expected value is the SHA-256 of the
        // canonical JSON spelled out by hand, so the member order and compact form are pinned.
        let x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
        let y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        assert_eq!(
            jwk_thumbprint(&jwk).unwrap(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
        );
    }

    #[test]
    fn thumbprint_refuses_incomplete_or_unknown_keys() {
        for (jwk, why) in [
            (json!("OKP"), "not an object"),
            (json!({"crv": "Ed25519", "x": "AA"}), "no kty"),
            (json!({"kty": "OKP", "crv": "Ed25519"}), "no x"),
            (json!({"kty": "EC", "crv": "P-256", "x": "AA"}), "no y"),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": 5}),
                "x not a string",
            ),
            (json!({"kty": "oct", "k": "AA"}), "symmetric"),
        ] {
            assert!(
                matches!(jwk_thumbprint(&jwk), Err(Error::InvalidJwk(_))),
                "{why}"
            );
        }
    }

    #[test]
    fn public_key_parsing_refuses_bad_keys() {
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let cases = [
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": x, "d": "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"}),
                Error::PrivateKeyInJwk,
                "private d",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": x, "k": "AA"}),
                Error::PrivateKeyInJwk,
                "k",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed448", "x": x}),
                Error::KeyAlgMismatch,
                "Ed448",
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": x, "y": x}),
                Error::KeyAlgMismatch,
                "EC key for EdDSA",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 31])}),
                Error::InvalidJwk("coordinate is not 32 bytes"),
                "short x",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo="}),
                Error::InvalidJwk("coordinate is not base64url"),
                "padded x",
            ),
            // The identity point (y = 1) has small order.
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode({ let mut b = [0u8; 32]; b[0] = 1; b })}),
                Error::InvalidJwk("weak Ed25519 key"),
                "small-order key",
            ),
        ];
        for (jwk, want, why) in cases {
            assert_eq!(
                PublicKey::from_jwk(&jwk, ProofAlg::EdDsa).unwrap_err(),
                want,
                "{why}"
            );
        }

        let ec = json!({"kty": "EC", "crv": "P-256",
                        "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])});
        assert_eq!(
            PublicKey::from_jwk(&ec, ProofAlg::Es256).unwrap_err(),
            Error::InvalidJwk("x, y is not a P-256 point"),
            "off-curve point"
        );
        assert_eq!(
            PublicKey::from_jwk(
                &json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
                ProofAlg::Es256
            )
            .unwrap_err(),
            Error::KeyAlgMismatch,
            "OKP key for ES256"
        );
    }

    /// The list is exactly the private members of RFC 7518 §6.2.2 (EC), §6.3.2 (RSA, with
    /// `oth`), §6.4 (`k`) and RFC 8037 §2 (OKP `d`), written out here independently of the
    /// constant, so dropping one from [`PRIVATE_MEMBERS`] fails this test.
    #[test]
    fn private_members_are_those_of_rfc_7518_and_8037() {
        let rfc = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
        let mut ours = PRIVATE_MEMBERS.to_vec();
        ours.sort_unstable();
        let mut want = rfc.to_vec();
        want.sort_unstable();
        assert_eq!(ours, want);
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        for member in rfc {
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, member: "AQAB"});
            assert!(has_private_members(&jwk), "{member}");
            assert_eq!(
                PublicKey::from_jwk(&jwk, ProofAlg::EdDsa).unwrap_err(),
                Error::PrivateKeyInJwk,
                "{member}"
            );
        }
        assert!(!has_private_members(
            &json!({"kty": "OKP", "crv": "Ed25519", "x": x})
        ));
    }

    #[test]
    fn ed25519_thumbprint_is_the_jwk_thumbprint() {
        // RFC 8037 appendix A.2 / A.3.
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(x).unwrap().try_into().unwrap();
        assert_eq!(
            ed25519_thumbprint(&bytes),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn thumbprint_escapes_member_values_as_json() {
        let jwk = json!({"kty": "OKP", "crv": "a\"b", "x": "é"});
        let canonical = "{\"crv\":\"a\\\"b\",\"kty\":\"OKP\",\"x\":\"é\"}";
        assert_eq!(
            jwk_thumbprint(&jwk).unwrap(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
        );
    }

    #[test]
    fn parsed_keys_keep_only_the_thumbprint_members() {
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "use": "sig"});
        let key = PublicKey::from_jwk(&jwk, ProofAlg::EdDsa).unwrap();
        assert_eq!(key.jwk(), &json!({"kty": "OKP", "crv": "Ed25519", "x": x}));
        assert_eq!(
            key.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
