//! The proof's `jwk`: from JSON to a verifying key, and its RFC 7638 thumbprint.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Verifier as _;
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{DpopError, ProofAlg};

/// JWK members that hold private key material in any key type of RFC 7518 §6: `d` (EC, OKP
/// and RSA), the RSA CRT members and `oth`, and `k` (symmetric). A proof carrying any of them
/// means a client shipped its private key over the wire; RFC 9449 §4.3 check 7 says to refuse.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// A device public key we can verify proofs with.
#[derive(Debug)]
pub(crate) enum DeviceKey {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

/// Reads the public key of `jwk` for `alg`, returning the key and the JWK reduced to its
/// required members (the ones RFC 7638 hashes).
///
/// The order of the checks matters: private material is refused first, so that a key that
/// is also wrong in other ways is still logged as the more serious fault.
pub(crate) fn parse_public_jwk(
    jwk: &Value,
    alg: ProofAlg,
) -> Result<(DeviceKey, Value), DpopError> {
    let Value::Object(members) = jwk else {
        return Err(DpopError::InvalidJwk("not a JSON object"));
    };
    if PRIVATE_MEMBERS.iter().any(|m| members.contains_key(*m)) {
        return Err(DpopError::PrivateKeyInJwk);
    }
    let kty = str_member(members, "kty")?;
    let crv = str_member(members, "crv")?;

    // The key type must be the one `alg` names. Without this, a proof could pick the
    // verification algorithm and the key independently (algorithm confusion).
    match (alg, kty, crv) {
        (ProofAlg::EdDsa | ProofAlg::Ed25519, "OKP", "Ed25519") => {
            let x = coordinate(members, "x")?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&x)
                .map_err(|_| DpopError::InvalidJwk("x is not an Ed25519 point"))?;
            // A small-order key lets one signature verify for many messages; verify_strict
            // refuses it as well, but saying so here gives a clearer error.
            if key.is_weak() {
                return Err(DpopError::InvalidJwk("weak Ed25519 key"));
            }
            let public =
                serde_json::json!({"kty": kty, "crv": crv, "x": URL_SAFE_NO_PAD.encode(x)});
            Ok((DeviceKey::Ed25519(key), public))
        }
        (ProofAlg::Es256, "EC", "P-256") => {
            let x = coordinate(members, "x")?;
            let y = coordinate(members, "y")?;
            let point = p256::EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
            // from_encoded_point checks that the point is on the curve and not the identity:
            // an off-curve point would open invalid-curve attacks on ECDSA verification.
            let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map_err(|_| DpopError::InvalidJwk("x, y is not a P-256 point"))?;
            let public = serde_json::json!({
                "kty": kty, "crv": crv,
                "x": URL_SAFE_NO_PAD.encode(x), "y": URL_SAFE_NO_PAD.encode(y),
            });
            Ok((DeviceKey::P256(key), public))
        }
        _ => Err(DpopError::KeyAlgMismatch),
    }
}

impl DeviceKey {
    /// Verifies a JWS signature (RFC 7515 §5.2) over `signing_input` = `header.payload`.
    pub(crate) fn verify(&self, signing_input: &[u8], signature: &[u8]) -> Result<(), DpopError> {
        match self {
            // verify_strict rather than verify: it also refuses non-canonical R encodings and
            // small-order keys, so every (message, key) has exactly one valid signature
            // encoding (RFC 8032 §5.1.7 leaves these checks to the implementation).
            DeviceKey::Ed25519(key) => {
                let signature = ed25519_dalek::Signature::from_slice(signature)
                    .map_err(|_| DpopError::BadSignature)?;
                key.verify_strict(signing_input, &signature)
                    .map_err(|_| DpopError::BadSignature)
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
            DeviceKey::P256(key) => {
                let signature = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| DpopError::BadSignature)?;
                key.verify(signing_input, &signature)
                    .map_err(|_| DpopError::BadSignature)
            }
        }
    }
}

/// The RFC 7638 JWK thumbprint with SHA-256, base64url without padding: the `jkt` of
/// RFC 9449 §6 and of the access token's `cnf` claim (CONTRACT §4).
///
/// Only the required members of the key type enter the hash, in lexicographic order, with no
/// whitespace (RFC 7638 §3.2): `crv`, `kty`, `x` for OKP (RFC 8037 §2); `crv`, `kty`, `x`,
/// `y` for EC; `e`, `kty`, `n` for RSA. RSA is here only so the function can be checked
/// against RFC 7638's own example; proofs never use RSA keys.
///
/// The member values are hashed as given; call this on a key that has been validated (as
/// [`VerifiedProof::jwk`](super::VerifiedProof) is) when the thumbprint must identify a usable
/// key.
pub fn jwk_thumbprint(jwk: &Value) -> Result<String, DpopError> {
    let Value::Object(members) = jwk else {
        return Err(DpopError::InvalidJwk("not a JSON object"));
    };

    // Field order in these structs is the RFC 7638 order; serde_json writes them compactly,
    // escaping exactly as RFC 7638 §3.3 expects (the JSON of RFC 7159).
    #[derive(Serialize)]
    struct Okp<'a> {
        crv: &'a str,
        kty: &'a str,
        x: &'a str,
    }
    #[derive(Serialize)]
    struct Ec<'a> {
        crv: &'a str,
        kty: &'a str,
        x: &'a str,
        y: &'a str,
    }
    #[derive(Serialize)]
    struct Rsa<'a> {
        e: &'a str,
        kty: &'a str,
        n: &'a str,
    }

    let kty = str_member(members, "kty")?;
    let canonical = match kty {
        "OKP" => serde_json::to_vec(&Okp {
            crv: str_member(members, "crv")?,
            kty,
            x: str_member(members, "x")?,
        }),
        "EC" => serde_json::to_vec(&Ec {
            crv: str_member(members, "crv")?,
            kty,
            x: str_member(members, "x")?,
            y: str_member(members, "y")?,
        }),
        "RSA" => serde_json::to_vec(&Rsa {
            e: str_member(members, "e")?,
            kty,
            n: str_member(members, "n")?,
        }),
        _ => return Err(DpopError::InvalidJwk("unsupported kty")),
    }
    .map_err(|_| DpopError::InvalidJwk("cannot serialise"))?;

    Ok(URL_SAFE_NO_PAD.encode(Sha256::digest(&canonical)))
}

fn str_member<'a>(
    members: &'a Map<String, Value>,
    name: &'static str,
) -> Result<&'a str, DpopError> {
    match members.get(name) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(DpopError::InvalidJwk(match name {
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
fn coordinate(members: &Map<String, Value>, name: &'static str) -> Result<[u8; 32], DpopError> {
    let encoded = str_member(members, name)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| DpopError::InvalidJwk("coordinate is not base64url"))?;
    bytes
        .try_into()
        .map_err(|_| DpopError::InvalidJwk("coordinate is not 32 bytes"))
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
                matches!(jwk_thumbprint(&jwk), Err(DpopError::InvalidJwk(_))),
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
                DpopError::PrivateKeyInJwk,
                "private d",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": x, "k": "AA"}),
                DpopError::PrivateKeyInJwk,
                "k",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed448", "x": x}),
                DpopError::KeyAlgMismatch,
                "Ed448",
            ),
            (
                json!({"kty": "EC", "crv": "P-256", "x": x, "y": x}),
                DpopError::KeyAlgMismatch,
                "EC key for EdDSA",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 31])}),
                DpopError::InvalidJwk("coordinate is not 32 bytes"),
                "short x",
            ),
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo="}),
                DpopError::InvalidJwk("coordinate is not base64url"),
                "padded x",
            ),
            // The identity point (y = 1) has small order.
            (
                json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode({ let mut b = [0u8; 32]; b[0] = 1; b })}),
                DpopError::InvalidJwk("weak Ed25519 key"),
                "small-order key",
            ),
        ];
        for (jwk, want, why) in cases {
            assert_eq!(
                parse_public_jwk(&jwk, ProofAlg::EdDsa).unwrap_err(),
                want,
                "{why}"
            );
        }

        let ec = json!({"kty": "EC", "crv": "P-256",
                        "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])});
        assert_eq!(
            parse_public_jwk(&ec, ProofAlg::Es256).unwrap_err(),
            DpopError::InvalidJwk("x, y is not a P-256 point"),
            "off-curve point"
        );
        assert_eq!(
            parse_public_jwk(
                &json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
                ProofAlg::Es256
            )
            .unwrap_err(),
            DpopError::KeyAlgMismatch,
            "OKP key for ES256"
        );
    }
}
