//! The client-protocol test vectors (`tests/vectors/`, made by `generate.py` with Python's
//! `cryptography`, an implementation independent of this crate) checked against the SDK's own
//! keys, thumbprints and proof builder. `docs/client-protocol.md` explains them for ports.

use p256::ecdsa::signature::Verifier as _;
use serde_json::Value;

use crate::device_key::{DeviceKey, Ed25519DeviceKey, Es256DeviceKey};
use crate::dpop::DpopProofBuilder;
use crate::jose::{b64_decode, b64_encode, jwk_thumbprint};

fn vector(text: &str) -> Value {
    serde_json::from_str(text).expect("vector JSON")
}

fn d(vector: &Value) -> Vec<u8> {
    b64_decode(vector["private_key_d"].as_str().unwrap()).unwrap()
}

/// Checks the key's JWK and thumbprint, and every proof's signing input; returns the proofs
/// with the SDK's signature over each signing input.
fn check(key: &dyn DeviceKey, vector: &Value) -> Vec<(Value, Vec<u8>)> {
    assert_eq!(key.public_jwk(), vector["public_jwk"], "JWK");
    assert_eq!(
        jwk_thumbprint(&vector["public_jwk"]).unwrap(),
        vector["thumbprint"].as_str().unwrap(),
        "thumbprint"
    );
    assert_eq!(
        key.thumbprint().unwrap(),
        vector["thumbprint"].as_str().unwrap()
    );
    let mut signed = Vec::new();
    for case in vector["proofs"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut builder = DpopProofBuilder::new(
            key,
            case["method"].as_str().unwrap(),
            case["url"].as_str().unwrap(),
        );
        if let Some(nonce) = case["nonce"].as_str() {
            builder = builder.nonce(nonce);
        }
        if let Some(token) = case["access_token"].as_str() {
            builder = builder.access_token(token);
        }
        let input = builder
            .signing_input(case["jti"].as_str().unwrap(), case["iat"].as_u64().unwrap())
            .unwrap();
        assert_eq!(input, case["signing_input"].as_str().unwrap(), "{name}");
        let signature = key.sign(input.as_bytes()).now().unwrap();
        assert_eq!(
            signature.len(),
            64,
            "{name}: r || s or an Ed25519 signature"
        );
        signed.push((case.clone(), signature));
    }
    signed
}

#[test]
fn ed25519_vectors_match_byte_for_byte() {
    let vector = vector(include_str!("../tests/vectors/ed25519.json"));
    let key = Ed25519DeviceKey::from_seed(&d(&vector).try_into().unwrap());
    let signed = check(&key, &vector);
    assert_eq!(signed.len(), 3);
    for (case, signature) in signed {
        assert_eq!(
            b64_encode(&signature),
            case["signature"].as_str().unwrap(),
            "{}",
            case["name"]
        );
    }
}

#[test]
fn es256_vectors_match_and_the_signatures_verify() {
    let vector = vector(include_str!("../tests/vectors/es256.json"));
    let key = Es256DeviceKey::from_scalar(&d(&vector));
    let jwk = &vector["public_jwk"];
    let mut point = vec![4u8];
    point.extend(b64_decode(jwk["x"].as_str().unwrap()).unwrap());
    point.extend(b64_decode(jwk["y"].as_str().unwrap()).unwrap());
    let public = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
    for (case, signature) in check(&key, &vector) {
        let signature = p256::ecdsa::Signature::from_slice(&signature).unwrap();
        let input = case["signing_input"].as_str().unwrap();
        public
            .verify(input.as_bytes(), &signature)
            .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
    }
}
