//! Checking a DPoP proof at a resource server (RFC 9449 section 4.3, with the `ath` and key
//! binding checks of section 7.1).

use ed25519_dalek::{Signature as EdSignature, VerifyingKey as EdVerifyingKey};
use p256::EncodedPoint;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature as EcSignature, VerifyingKey as EcVerifyingKey};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::{PRIVATE_JWK_MEMBERS, PROOF_ALGS, PROOF_TYP, htu};
use crate::error::InvalidTokenReason;
use crate::jose::{CompactJws, b64_decode, jwk_thumbprint, sha256_b64};

/// What the request says a proof must match.
pub(crate) struct ProofExpectations<'a> {
    /// The request's HTTP method.
    pub(crate) method: &'a str,
    /// The request's URL, already in `htu` form.
    pub(crate) htu: &'a str,
    /// The access token the proof must be bound to (`ath`).
    pub(crate) access_token: &'a str,
    /// Accepted distance of `iat` from `now`, in seconds, both ways.
    pub(crate) window: u64,
    /// The current time, Unix seconds.
    pub(crate) now: u64,
}

/// A proof that passed every check that does not need the access token's claims.
#[derive(Debug)]
pub(crate) struct CheckedProof {
    /// The RFC 7638 thumbprint of the proof's key; the caller compares it with `cnf.jkt`.
    pub(crate) jkt: String,
    pub(crate) jti: String,
    pub(crate) iat: u64,
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: String,
    htm: String,
    htu: String,
    iat: u64,
    ath: Option<String>,
}

/// Checks `proof` in the order of RFC 9449 section 4.3: shape, `typ`, `alg`, key, signature,
/// then the claims. The replay check is the caller's, done last so that refused proofs never
/// fill the replay cache.
pub(crate) fn check_proof(
    proof: &str,
    keys: &ProofKeys,
    expect: &ProofExpectations<'_>,
) -> Result<CheckedProof, InvalidTokenReason> {
    use InvalidTokenReason::*;
    let jws = CompactJws::split(proof).ok_or(InvalidProof)?;
    if jws.header_str("typ") != Some(PROOF_TYP) {
        return Err(InvalidProof);
    }
    // The allow list comes before any use of the key, so `none` or an HMAC "signature" made
    // with the public key as the secret never reach a verifier.
    let alg = jws.header_str("alg").ok_or(InvalidProof)?;
    if !PROOF_ALGS.contains(&alg) {
        return Err(InvalidProof);
    }
    let jwk = jws
        .header
        .get("jwk")
        .filter(|j| j.is_object())
        .ok_or(InvalidProof)?;
    if PRIVATE_JWK_MEMBERS.iter().any(|m| jwk.get(m).is_some()) {
        return Err(InvalidProof);
    }
    let jkt = keys
        .verify(alg, jwk, jws.signing_input.as_bytes(), &jws.signature)
        .ok_or(InvalidProof)?;

    let claims: ProofClaims = jws.claims().ok_or(InvalidProof)?;
    if claims.jti.is_empty() {
        return Err(InvalidProof);
    }
    if claims.htm != expect.method {
        return Err(ProofMethodMismatch);
    }
    // Clients normally send the normalised form already; parsing is the slow path.
    if claims.htu != expect.htu && htu(&claims.htu).ok().as_deref() != Some(expect.htu) {
        return Err(ProofUrlMismatch);
    }
    if claims.iat.abs_diff(expect.now) > expect.window {
        return Err(ProofTimeInvalid);
    }
    if claims.ath.as_deref() != Some(sha256_b64(expect.access_token).as_str()) {
        return Err(ProofTokenHashMismatch);
    }
    Ok(CheckedProof {
        jkt,
        jti: claims.jti,
        iat: claims.iat,
    })
}

/// Most Ed25519 proof keys remembered; the map is emptied when it is full.
const PROOF_KEYS_CAPACITY: usize = 10_000;

/// Ed25519 proof keys seen recently, decompressed, with their thumbprints. A device signs all
/// its proofs with one key, and decompressing the point and hashing the thumbprint cost about
/// a tenth of checking the signature: with this they are paid once per device rather than once
/// per request. Only keys whose signature verified are remembered, and the map is bounded, so
/// made-up keys cannot grow it.
#[derive(Default)]
pub(crate) struct ProofKeys {
    ed25519: Mutex<HashMap<String, (EdVerifyingKey, String)>>,
}

impl ProofKeys {
    /// The RFC 7638 thumbprint of `jwk` when `signature` over `message` verifies with it under
    /// `alg` and the key type fits the algorithm (an EC key cannot be used with `EdDSA`, nor
    /// the reverse); `None` otherwise.
    fn verify(&self, alg: &str, jwk: &Value, message: &[u8], signature: &[u8]) -> Option<String> {
        let member = |name: &str| jwk.get(name).and_then(Value::as_str);
        match (alg, member("kty")?, member("crv")?) {
            ("EdDSA" | "Ed25519", "OKP", "Ed25519") => {
                let x = member("x")?;
                let signature = EdSignature::from_slice(signature).ok()?;
                let known = self.lock().get(x).cloned();
                let (key, jkt) = match &known {
                    Some(known) => known.clone(),
                    None => {
                        let bytes: [u8; 32] = b64_decode(x)?.try_into().ok()?;
                        (
                            EdVerifyingKey::from_bytes(&bytes).ok()?,
                            jwk_thumbprint(jwk).ok()?,
                        )
                    }
                };
                // verify_strict also refuses small-order keys and non-canonical signatures.
                key.verify_strict(message, &signature).ok()?;
                if known.is_none() {
                    let mut keys = self.lock();
                    if keys.len() >= PROOF_KEYS_CAPACITY {
                        keys.clear();
                    }
                    keys.insert(x.to_owned(), (key, jkt.clone()));
                }
                Some(jkt)
            }
            ("ES256", "EC", "P-256") => {
                let x: [u8; 32] = b64_decode(member("x")?)?.try_into().ok()?;
                let y: [u8; 32] = b64_decode(member("y")?)?.try_into().ok()?;
                let point = EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
                let key = EcVerifyingKey::from_encoded_point(&point).ok()?;
                let signature = EcSignature::from_slice(signature).ok()?;
                key.verify(message, &signature).ok()?;
                jwk_thumbprint(jwk).ok()
            }
            _ => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (EdVerifyingKey, String)>> {
        self.ed25519.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_key::{DeviceKey, Ed25519DeviceKey, Es256DeviceKey};
    use crate::dpop::DpopProofBuilder;
    use crate::jose::{b64_encode, unix_now};
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use serde_json::json;

    const URL: &str = "https://api.example.com/v1/things";
    const TOKEN: &str = "header.payload.signature";

    fn expect(now: u64) -> ProofExpectations<'static> {
        ProofExpectations {
            method: "GET",
            htu: URL,
            access_token: TOKEN,
            window: 60,
            now,
        }
    }

    fn proof(key: &dyn DeviceKey) -> String {
        DpopProofBuilder::new(key, "GET", "https://api.example.com/v1/things?x=1#frag")
            .access_token(TOKEN)
            .sign()
            .unwrap()
    }

    /// Re-signs a proof after `edit` changed its header or claims, as an attacker holding the
    /// key (or a buggy client) would.
    fn resign(key: &dyn DeviceKey, edit: impl FnOnce(&mut Value, &mut Value)) -> String {
        let original = proof(key);
        let jws = CompactJws::split(&original).unwrap();
        let mut header = jws.header.clone();
        let mut claims: Value = jws.claims().unwrap();
        edit(&mut header, &mut claims);
        let input = format!(
            "{}.{}",
            b64_encode(header.to_string()),
            b64_encode(claims.to_string())
        );
        let signature = key.sign(input.as_bytes()).now().unwrap();
        format!("{input}.{}", b64_encode(signature))
    }

    #[test]
    fn built_proofs_pass_the_checks_for_both_algorithms() {
        let keys: [Box<dyn DeviceKey>; 2] = [
            Box::new(Ed25519DeviceKey::generate()),
            Box::new(Es256DeviceKey::generate()),
        ];
        for key in keys {
            let checked =
                check_proof(&proof(&*key), &ProofKeys::default(), &expect(unix_now())).unwrap();
            assert_eq!(checked.jkt, key.thumbprint().unwrap(), "{}", key.alg());
        }
    }

    #[test]
    fn built_proofs_verify_with_jsonwebtoken() {
        // An independent implementation agrees with our signatures and claims.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;

        let ed = Ed25519DeviceKey::generate();
        let jwk = ed.public_jwk();
        let key = DecodingKey::from_ed_components(jwk["x"].as_str().unwrap()).unwrap();
        let data = jsonwebtoken::decode::<Value>(proof(&ed), &key, &validation).unwrap();
        assert_eq!(data.header.typ.as_deref(), Some("dpop+jwt"));
        assert_eq!(data.claims["htu"], URL);
        assert_eq!(data.claims["htm"], "GET");
        assert_eq!(data.claims["ath"], sha256_b64(TOKEN));

        let ec = Es256DeviceKey::generate();
        let jwk = ec.public_jwk();
        let key =
            DecodingKey::from_ec_components(jwk["x"].as_str().unwrap(), jwk["y"].as_str().unwrap())
                .unwrap();
        validation.algorithms = vec![Algorithm::ES256];
        jsonwebtoken::decode::<Value>(proof(&ec), &key, &validation).unwrap();
    }

    #[test]
    fn proof_claims_have_the_rfc9449_shape() {
        let key = Ed25519DeviceKey::generate();
        let a = proof(&key);
        let b = DpopProofBuilder::new(&key, "POST", "https://issuer.example/v1/token")
            .nonce("n-1")
            .sign()
            .unwrap();
        let a = CompactJws::split(&a).unwrap();
        let b = CompactJws::split(&b).unwrap();
        assert_eq!(a.header["jwk"], key.public_jwk());
        assert_eq!(a.header_str("alg"), Some("EdDSA"));
        let a: Value = a.claims().unwrap();
        let b: Value = b.claims().unwrap();
        assert_ne!(a["jti"], b["jti"], "every proof has its own jti");
        assert_eq!(b64_decode(a["jti"].as_str().unwrap()).unwrap().len(), 16);
        assert_eq!(b["nonce"], "n-1");
        assert!(b.get("ath").is_none(), "no ath without an access token");
        assert!(a["iat"].as_u64().unwrap().abs_diff(unix_now()) <= 1);
    }

    #[test]
    fn each_bad_proof_fails_for_its_reason() {
        use InvalidTokenReason::*;
        let key = Ed25519DeviceKey::generate();
        let now = unix_now();
        let cases: Vec<(&str, String, InvalidTokenReason)> = vec![
            ("not a jws", "abc".into(), InvalidProof),
            (
                "wrong typ",
                resign(&key, |h, _| h["typ"] = "jwt".into()),
                InvalidProof,
            ),
            (
                "alg none",
                {
                    let p = proof(&key);
                    let jws = CompactJws::split(&p).unwrap();
                    let mut h = jws.header.clone();
                    h["alg"] = "none".into();
                    format!("{}.{}.", b64_encode(h.to_string()), jws.payload_b64)
                },
                InvalidProof,
            ),
            (
                "alg/key mismatch",
                resign(&key, |h, _| h["alg"] = "ES256".into()),
                InvalidProof,
            ),
            (
                "private key in jwk",
                resign(&key, |h, _| h["jwk"]["d"] = "AAAA".into()),
                InvalidProof,
            ),
            (
                "tampered claims",
                {
                    let p = proof(&key);
                    let parts: Vec<&str> = p.split('.').collect();
                    let claims = json!({"jti": "x", "htm": "GET", "htu": URL, "iat": now});
                    format!(
                        "{}.{}.{}",
                        parts[0],
                        b64_encode(claims.to_string()),
                        parts[2]
                    )
                },
                InvalidProof,
            ),
            (
                "wrong method",
                resign(&key, |_, c| c["htm"] = "POST".into()),
                ProofMethodMismatch,
            ),
            (
                "wrong url",
                resign(&key, |_, c| {
                    c["htu"] = "https://evil.example/v1/things".into()
                }),
                ProofUrlMismatch,
            ),
            (
                "too old",
                resign(&key, |_, c| c["iat"] = (now - 120).into()),
                ProofTimeInvalid,
            ),
            (
                "from the future",
                resign(&key, |_, c| c["iat"] = (now + 120).into()),
                ProofTimeInvalid,
            ),
            (
                "no ath",
                resign(&key, |_, c| {
                    c.as_object_mut().unwrap().remove("ath");
                }),
                ProofTokenHashMismatch,
            ),
            (
                "ath of another token",
                resign(&key, |_, c| c["ath"] = sha256_b64("other").into()),
                ProofTokenHashMismatch,
            ),
        ];
        // Once with the key unknown, once with it remembered from a good proof.
        let keys = ProofKeys::default();
        for (name, proof, reason) in &cases {
            assert_eq!(
                check_proof(proof, &keys, &expect(now)).unwrap_err(),
                *reason,
                "{name}"
            );
        }
        check_proof(&proof(&key), &keys, &expect(now)).unwrap();
        assert_eq!(keys.lock().len(), 1);
        for (name, proof, reason) in &cases {
            assert_eq!(
                check_proof(proof, &keys, &expect(now)).unwrap_err(),
                *reason,
                "{name}, key remembered"
            );
        }
    }

    #[test]
    fn a_remembered_key_vouches_only_for_its_own_signatures() {
        let (owner, thief) = (Ed25519DeviceKey::generate(), Ed25519DeviceKey::generate());
        let keys = ProofKeys::default();
        let checked = check_proof(&proof(&owner), &keys, &expect(unix_now())).unwrap();
        assert_eq!(checked.jkt, owner.thumbprint().unwrap());
        // The thief names the owner's key in the header but can only sign with its own.
        let forged = resign(&thief, |h, _| h["jwk"] = owner.public_jwk());
        assert_eq!(
            check_proof(&forged, &keys, &expect(unix_now())).unwrap_err(),
            InvalidTokenReason::InvalidProof
        );
    }

    #[test]
    fn remembered_keys_are_bounded() {
        let keys = ProofKeys::default();
        for i in 0..PROOF_KEYS_CAPACITY {
            keys.lock().insert(format!("key-{i}"), Default::default());
        }
        let key = Ed25519DeviceKey::generate();
        check_proof(&proof(&key), &keys, &expect(unix_now())).unwrap();
        assert_eq!(keys.lock().len(), 1, "emptied when full");
    }

    #[test]
    fn htu_comparison_normalises_the_url() {
        let key = Ed25519DeviceKey::generate();
        let p = resign(&key, |_, c| {
            c["htu"] = "HTTPS://API.example.com:443/v1/things".into()
        });
        assert!(check_proof(&p, &ProofKeys::default(), &expect(unix_now())).is_ok());
    }
}
