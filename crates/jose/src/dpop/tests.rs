//! The proof checks on proofs signed here with ed25519-dalek and p256. The full table of
//! accepted and refused proofs, signed by an independent implementation (`jsonwebtoken`), runs
//! through the server's wrapper in `src/dpop/tests.rs` and the SDK's in `sdk/src/dpop/check.rs`.

use super::*;
use crate::jwk_thumbprint;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
use serde_json::json;
use std::cell::RefCell;

const NOW: i64 = 1_700_000_000;
const HTU: &str = "https://auth.example.com/v1/token";

fn check() -> ProofCheck<'static> {
    ProofCheck {
        htm: "POST",
        htu: HTU,
        now: NOW,
        iat_leeway_secs: 60,
        max_proof_bytes: DEFAULT_MAX_PROOF_BYTES,
    }
}

fn key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
}

fn public_jwk(key: &ed25519_dalek::SigningKey) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519",
           "x": URL_SAFE_NO_PAD.encode(key.verifying_key().as_bytes())})
}

fn sign(key: &ed25519_dalek::SigningKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fn proof_with_jwk(jwk: Value) -> String {
    let header = json!({"typ": DPOP_TYP, "alg": "EdDSA", "jwk": jwk});
    sign(
        &key(),
        &header,
        &json!({"jti": "j-1", "htm": "POST", "htu": HTU, "iat": NOW}),
    )
}

/// RFC 8037 appendix A.4 (signing) and A.5 (validation) with the key of A.1/A.2.
#[test]
fn rfc_8037_ed25519_signature_vector() {
    let d = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    let signing_input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
    let signature =
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

    // A.4: Ed25519 is deterministic, so signing with d gives exactly the published signature.
    let seed: [u8; 32] = URL_SAFE_NO_PAD.decode(d).unwrap().try_into().unwrap();
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    assert_eq!(
        URL_SAFE_NO_PAD.encode(signing.verifying_key().as_bytes()),
        x
    );
    let ours = signing.sign(signing_input.as_bytes());
    assert_eq!(URL_SAFE_NO_PAD.encode(ours.to_bytes()), signature);

    // A.5: our verification path accepts it, and refuses it once a bit is flipped.
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x});
    let key = PublicKey::from_jwk(&jwk, ProofAlg::EdDsa).unwrap();
    assert_eq!(key.jwk(), &jwk);
    let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
    key.verify(signing_input.as_bytes(), &sig).unwrap();
    sig[10] ^= 1;
    assert_eq!(
        key.verify(signing_input.as_bytes(), &sig),
        Err(Error::BadSignature)
    );

    // The A.4 JWS itself is not a DPoP proof: it has neither typ nor jwk.
    assert_eq!(
        verify_proof(&format!("{signing_input}.{signature}"), &check(), &NoCache),
        Err(Error::WrongTyp)
    );
}

#[test]
fn accepts_a_proof_and_returns_what_the_caller_checks() {
    let claims = json!({"jti": "j-1", "htm": "POST", "htu": HTU, "iat": NOW,
                        "nonce": "n", "ath": "a", "nonce2": null});
    let header =
        json!({"typ": DPOP_TYP, "alg": "Ed25519", "jwk": public_jwk(&key()), "crit": null});
    let verified = verify_proof(&sign(&key(), &header, &claims), &check(), &NoCache).unwrap();
    assert_eq!(verified.alg, ProofAlg::Ed25519);
    assert_eq!(verified.jti, "j-1");
    assert_eq!(verified.iat, NOW);
    assert_eq!(verified.nonce.as_deref(), Some("n"));
    assert_eq!(verified.ath.as_deref(), Some("a"));
    assert_eq!(verified.jwk(), &public_jwk(&key()));
    assert_eq!(verified.jkt, jwk_thumbprint(&public_jwk(&key())).unwrap());
}

/// An ES256 proof with `jti`, and its public JWK.
fn es256_proof(jti: &str) -> (String, Value) {
    use p256::ecdsa::signature::Signer as _;
    let signing = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
    let point = signing.verifying_key().to_encoded_point(false);
    let jwk = json!({"kty": "EC", "crv": "P-256",
                     "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
                     "y": URL_SAFE_NO_PAD.encode(point.y().unwrap())});
    let header = json!({"typ": DPOP_TYP, "alg": "ES256", "jwk": jwk});
    let claims = json!({"jti": jti, "htm": "POST", "htu": HTU, "iat": NOW});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature: p256::ecdsa::Signature = signing.sign(input.as_bytes());
    let proof = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
    (proof, jwk)
}

#[test]
fn an_es256_proof_verifies() {
    let (proof, jwk) = es256_proof("j");
    let verified = verify_proof(&proof, &check(), &NoCache).unwrap();
    assert_eq!(verified.alg, ProofAlg::Es256);
    assert_eq!(verified.jwk(), &jwk);
}

/// A cache that remembers every key it is given and answers for any JWK of the curve: the
/// most trusting cache possible, to show what the core checks before asking it.
#[derive(Default)]
struct Trusting {
    key: RefCell<Option<PublicKey>>,
    asked: RefCell<usize>,
}

impl KeyCache for Trusting {
    fn get(&self, _: &CheckedJwk<'_>) -> Option<PublicKey> {
        *self.asked.borrow_mut() += 1;
        self.key.borrow().clone()
    }
    fn put(&self, _: &CheckedJwk<'_>, key: &PublicKey) {
        *self.key.borrow_mut() = Some(key.clone());
    }
}

/// A cached key must not let a proof skip the private-member or key-type checks: the cache
/// of the SDK is keyed on `x` alone, and a JWK with the owner's `x` plus `d` is still a
/// leaked private key.
#[test]
fn the_cache_is_asked_only_about_public_keys_that_fit_alg() {
    let cache = Trusting::default();
    verify_proof(&proof_with_jwk(public_jwk(&key())), &check(), &cache).unwrap();
    assert!(cache.key.borrow().is_some(), "remembered once verified");

    for member in crate::PRIVATE_MEMBERS {
        let mut jwk = public_jwk(&key());
        jwk[member] = json!("AQAB");
        assert_eq!(
            verify_proof(&proof_with_jwk(jwk), &check(), &cache),
            Err(Error::PrivateKeyInJwk),
            "{member}"
        );
    }
    let mut ec = public_jwk(&key());
    ec["kty"] = json!("EC");
    ec["crv"] = json!("P-256");
    assert_eq!(
        verify_proof(&proof_with_jwk(ec), &check(), &cache),
        Err(Error::KeyAlgMismatch)
    );
    assert_eq!(*cache.asked.borrow(), 1, "asked only for the good proof");
}

#[test]
fn a_key_whose_signature_fails_is_not_remembered() {
    let cache = Trusting::default();
    let other = ed25519_dalek::SigningKey::from_bytes(&[8u8; 32]);
    let header = json!({"typ": DPOP_TYP, "alg": "EdDSA", "jwk": public_jwk(&key())});
    let forged = sign(
        &other,
        &header,
        &json!({"jti": "j", "htm": "POST", "htu": HTU, "iat": NOW}),
    );
    assert_eq!(
        verify_proof(&forged, &check(), &cache),
        Err(Error::BadSignature)
    );
    assert!(cache.key.borrow().is_none());
}

#[test]
fn null_members_count_as_absent_and_a_non_object_jwk_is_malformed() {
    let header = json!({"typ": DPOP_TYP, "alg": "EdDSA", "jwk": null});
    let claims = json!({"jti": "j", "htm": "POST", "htu": HTU, "iat": NOW});
    assert_eq!(
        verify_proof(&sign(&key(), &header, &claims), &check(), &NoCache),
        Err(Error::MissingJwk)
    );
    let header = json!({"typ": DPOP_TYP, "alg": "EdDSA", "jwk": "x"});
    assert_eq!(
        verify_proof(&sign(&key(), &header, &claims), &check(), &NoCache),
        Err(Error::Malformed)
    );
}

#[test]
fn htu_is_matched_exactly_or_after_normalisation() {
    let header = json!({"typ": DPOP_TYP, "alg": "EdDSA", "jwk": public_jwk(&key())});
    for (proof_htu, expected, ok) in [
        (HTU, HTU, true),
        ("HTTPS://AUTH.example.com:443/v1/token?q", HTU, true),
        // A path character RFC 3986 does not allow unencoded, as URL libraries following
        // WHATWG leave it: accepted when both sides say exactly the same.
        (
            "https://api.example.com/a|b",
            "https://api.example.com/a|b",
            true,
        ),
        (
            "https://api.example.com/a|c",
            "https://api.example.com/a|b",
            false,
        ),
        ("https://evil.example.com/v1/token", HTU, false),
    ] {
        let claims = json!({"jti": "j", "htm": "POST", "htu": proof_htu, "iat": NOW});
        let check = ProofCheck {
            htu: expected,
            ..check()
        };
        let result = verify_proof(&sign(&key(), &header, &claims), &check, &NoCache);
        assert_eq!(
            result.is_ok(),
            ok,
            "{proof_htu} against {expected}: {result:?}"
        );
    }
}

/// `n` proofs, proof `i` by its own key (seed `i + 1`) with `jti` `j-i`.
fn proofs_by(n: u8) -> Vec<String> {
    (0..n)
        .map(|i| {
            let key = ed25519_dalek::SigningKey::from_bytes(&[i + 1; 32]);
            let header = json!({"typ": DPOP_TYP, "alg": "EdDSA", "jwk": public_jwk(&key)});
            let claims = json!({"jti": format!("j-{i}"), "htm": "POST", "htu": HTU, "iat": NOW});
            sign(&key, &header, &claims)
        })
        .collect()
}

fn jobs(proofs: &[String]) -> Vec<SignatureJob> {
    proofs
        .iter()
        .map(|p| {
            prepare_proof(p, &check(), &NoCache)
                .expect("prepared")
                .signature_job()
        })
        .collect()
}

/// `proof` with its signature replaced by one over the same input by another key.
fn signed_by_another_key(proof: &str) -> String {
    let input = &proof[..proof.rfind('.').unwrap()];
    let other = ed25519_dalek::SigningKey::from_bytes(&[200; 32]);
    let signature = other.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

#[test]
fn signatures_checked_together_pass_or_fail_each_on_its_own() {
    // Batches of every size from two to past MAX_SIGNATURE_BATCH (two chunks), each with one
    // forgery somewhere: only the forgery fails, and each answer finishes its own proof.
    for (n, bad) in [(2u8, 0usize), (9, 4), (70, 69)] {
        let mut proofs = proofs_by(n);
        proofs[bad] = signed_by_another_key(&proofs[bad]);
        let answers = verify_signatures(jobs(&proofs));
        assert_eq!(answers.len(), proofs.len());
        for (i, (proof, answer)) in proofs.iter().zip(answers).enumerate() {
            let prepared = prepare_proof(proof, &check(), &NoCache).unwrap();
            match answer {
                Ok(signed) => {
                    assert_ne!(i, bad, "batch of {n}: the forgery passed");
                    let verified = prepared.finish(&check(), &NoCache, signed).unwrap();
                    assert_eq!(verified.jti, format!("j-{i}"));
                }
                Err(e) => {
                    assert_eq!((i, e), (bad, Error::BadSignature), "batch of {n}");
                    // The same answer as the proof checked alone.
                    assert_eq!(
                        verify_proof(proof, &check(), &NoCache),
                        Err(Error::BadSignature)
                    );
                }
            }
        }
    }
    // A batch of good signatures only: every one passes.
    let proofs = proofs_by(16);
    assert!(verify_signatures(jobs(&proofs)).iter().all(Result::is_ok));
}

#[test]
fn an_es256_signature_among_ed25519_ones_is_checked_alone() {
    let mut proofs = proofs_by(3);
    proofs.push(es256_proof("es").0);
    let prepared = prepare_proof(&proofs[3], &check(), &NoCache).unwrap();
    assert!(!prepared.is_ed25519());
    let answers = verify_signatures(jobs(&proofs));
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    let signed = answers[3].clone().unwrap();
    assert_eq!(
        prepared.finish(&check(), &NoCache, signed).unwrap().jti,
        "es"
    );
}

#[test]
fn a_verified_signature_finishes_only_its_own_proof() {
    let proofs = proofs_by(2);
    let first = prepare_proof(&proofs[0], &check(), &NoCache).unwrap();
    let second = prepare_proof(&proofs[1], &check(), &NoCache).unwrap();
    let signed = first.verify_signature().unwrap();
    assert_eq!(
        second.finish(&check(), &NoCache, signed.clone()),
        Err(Error::BadSignature)
    );
    assert!(first.finish(&check(), &NoCache, signed).is_ok());
}

#[test]
fn a_key_is_remembered_only_when_its_proof_is_finished() {
    let keys = Trusting::default();
    let proofs = proofs_by(1);
    let prepared = prepare_proof(&proofs[0], &check(), &keys).unwrap();
    assert!(keys.key.borrow().is_none(), "not before the signature");
    let signed = verify_signatures(vec![prepared.signature_job()])
        .remove(0)
        .unwrap();
    prepared.finish(&check(), &keys, signed).unwrap();
    assert!(keys.key.borrow().is_some());
}
