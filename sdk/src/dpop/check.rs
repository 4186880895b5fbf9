//! Checking a DPoP proof at a resource server (RFC 9449 section 4.3, with the `ath` and key
//! binding checks of section 7.1).
//!
//! The section 4.3 checks are `keybound-jose`'s, the same code the server runs at its token
//! endpoints. What is here is the resource server's own: the `ath` binding to the access
//! token, the cache of proof keys, and the mapping to [`InvalidTokenReason`].

use keybound_jose::dpop::{DEFAULT_MAX_PROOF_BYTES, KeyCache, ProofCheck, verify_proof};
use keybound_jose::{CheckedJwk, Curve, PublicKey};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::error::InvalidTokenReason;
use crate::jose::sha256_b64;

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
    pub(crate) iat: i64,
}

/// Checks `proof` in the order of RFC 9449 section 4.3 (size, shape, `alg`, `typ`, `crit`,
/// key, signature, then `jti`, `htm`, `htu`, `iat`), then `ath`. The replay check is the
/// caller's, done last so that refused proofs never fill the replay cache.
pub(crate) fn check_proof(
    proof: &str,
    keys: &ProofKeys,
    expect: &ProofExpectations<'_>,
) -> Result<CheckedProof, InvalidTokenReason> {
    let check = ProofCheck {
        htm: expect.method,
        htu: expect.htu,
        now: i64::try_from(expect.now).unwrap_or(i64::MAX),
        iat_leeway_secs: expect.window,
        max_proof_bytes: DEFAULT_MAX_PROOF_BYTES,
    };
    let verified = verify_proof(proof, &check, keys).map_err(|e| reason(&e))?;
    if verified.ath.as_deref() != Some(sha256_b64(expect.access_token).as_str()) {
        return Err(InvalidTokenReason::ProofTokenHashMismatch);
    }
    Ok(CheckedProof {
        jkt: verified.jkt,
        jti: verified.jti,
        iat: verified.iat,
    })
}

/// The SDK's reason for a refusal of the core. Only the request-binding checks have reasons of
/// their own; everything else says the proof is not a valid proof at all.
fn reason(error: &keybound_jose::Error) -> InvalidTokenReason {
    use keybound_jose::Error;
    match error {
        Error::HtmMismatch => InvalidTokenReason::ProofMethodMismatch,
        // An expected URL the core cannot normalise can match no proof but its exact copy.
        Error::HtuMismatch | Error::InvalidExpectedHtu => InvalidTokenReason::ProofUrlMismatch,
        Error::IatOutsideWindow => InvalidTokenReason::ProofTimeInvalid,
        _ => InvalidTokenReason::InvalidProof,
    }
}

/// Most Ed25519 proof keys remembered; the map is emptied when it is full.
const PROOF_KEYS_CAPACITY: usize = 10_000;

/// Ed25519 proof keys seen recently, decompressed, with their thumbprints. A device signs all
/// its proofs with one key, and decompressing the point and hashing the thumbprint cost about
/// a tenth of checking the signature: with this they are paid once per device rather than once
/// per request. The core hands over only keys whose signature verified, and asks only about
/// JWKs without private members whose type fits the proof's `alg`; the map is bounded, so
/// made-up keys cannot grow it.
#[derive(Default)]
pub(crate) struct ProofKeys {
    ed25519: Mutex<HashMap<String, PublicKey>>,
}

impl KeyCache for ProofKeys {
    fn get(&self, jwk: &CheckedJwk<'_>) -> Option<PublicKey> {
        // For Ed25519 the key is a function of `x` alone.
        if jwk.curve() != Curve::Ed25519 {
            return None;
        }
        self.lock().get(jwk.member("x")?).cloned()
    }

    fn put(&self, jwk: &CheckedJwk<'_>, key: &PublicKey) {
        let (Curve::Ed25519, Some(x)) = (jwk.curve(), jwk.member("x")) else {
            return;
        };
        let mut keys = self.lock();
        if keys.len() >= PROOF_KEYS_CAPACITY {
            keys.clear();
        }
        keys.insert(x.to_owned(), key.clone());
    }
}

impl ProofKeys {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, PublicKey>> {
        self.ed25519.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_key::{DeviceKey, Ed25519DeviceKey, Es256DeviceKey};
    use crate::dpop::DpopProofBuilder;
    use crate::jose::{CompactJws, b64_decode, b64_encode, unix_now};
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};
    use serde_json::{Value, json};

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
        let mut header = Value::Object(jws.header().clone());
        let mut claims = Value::Object(jws.payload().unwrap());
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
        assert_eq!(a.header()["jwk"], key.public_jwk());
        assert_eq!(a.header_str("alg"), Some("EdDSA"));
        let a = a.payload().unwrap();
        let b = b.payload().unwrap();
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
                    let mut h = Value::Object(jws.header().clone());
                    h["alg"] = "none".into();
                    format!("{}.{}.", b64_encode(h.to_string()), jws.payload_b64())
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
        let filler = PublicKey::from_jwk(
            &Ed25519DeviceKey::generate().public_jwk(),
            keybound_jose::dpop::ProofAlg::EdDsa,
        )
        .unwrap();
        for i in 0..PROOF_KEYS_CAPACITY {
            keys.lock().insert(format!("key-{i}"), filler.clone());
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

    /// The SDK refuses a proof whose `jwk` carries any private member of RFC 7518 section 6
    /// and RFC 8037, the same list the server refuses (`src/dpop/tests.rs`,
    /// `refuses_private_key_material_in_jwk`). Before the shared core the SDK's list lacked
    /// `oth`. Each proof is otherwise valid and signed by its key, and the core names the
    /// private member as the cause, so the refusal is for that reason and no other.
    #[test]
    fn every_private_jwk_member_is_refused_as_the_server_refuses_it() {
        let key = Es256DeviceKey::generate();
        let now = unix_now();
        for member in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            let leaky = resign(&key, |h, _| h["jwk"][member] = "AQAB".into());
            let keys = ProofKeys::default();
            assert_eq!(
                check_proof(&leaky, &keys, &expect(now)).unwrap_err(),
                InvalidTokenReason::InvalidProof,
                "{member}"
            );
            let check = ProofCheck {
                htm: "GET",
                htu: URL,
                now: now as i64,
                iat_leeway_secs: 60,
                max_proof_bytes: DEFAULT_MAX_PROOF_BYTES,
            };
            assert_eq!(
                verify_proof(&leaky, &check, &keys).unwrap_err(),
                keybound_jose::Error::PrivateKeyInJwk,
                "{member}"
            );
        }
        check_proof(&proof(&key), &ProofKeys::default(), &expect(now)).unwrap();
    }
}
