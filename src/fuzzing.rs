//! The bodies of the fuzz targets, shared by the libFuzzer targets in `fuzz/` (run with
//! cargo-fuzz on nightly, `fuzz/run.sh`) and the property tests in `tests/api/fuzz.rs` (run by
//! every `cargo test`, on stable, for a bounded number of cases).
//!
//! Each takes arbitrary bytes, feeds them to a parser that faces the network, and panics only
//! when a property breaks: the parsers themselves must never panic, whatever they are given.

use crate::dpop::{self, VerifyOptions};
use crate::exchange::{RefreshRequest, TokenRequest};
use crate::keys::service::{KeyPatch, NewKey, parse_cidrs, parse_origins, parse_scopes};
use crate::keys::{ApiKey, KeyId, format::find_keys};

/// The `htu` the DPoP target verifies against.
pub const HTU: &str = "https://keybound.example/v1/token";

/// The clock the DPoP target verifies at (proofs built for it have `iat` near it).
pub const NOW: i64 = 1_750_000_000;

/// The API key parser: anything accepted is exactly the contract's format, and round-trips.
pub fn api_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let scanned = find_keys(text.as_bytes());
    let Ok(key) = ApiKey::parse(text) else {
        return;
    };
    // `^sk_(prod|test|dev)_[0-9A-Za-z]{61}$` and nothing else.
    let env = key.env().as_str();
    let body = text
        .strip_prefix("sk_")
        .and_then(|r| r.strip_prefix(env))
        .and_then(|r| r.strip_prefix('_'))
        .expect("an accepted key starts with sk_<env>_");
    assert_eq!(body.len(), 61, "body length");
    assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(key.expose(), text, "the key is kept as presented");
    let id = key.id();
    assert_eq!(id.as_str(), format!("ak_{env}_{}", &body[..12]));
    assert!(KeyId::parse(id.as_str()).is_some(), "its id parses");
    assert!(
        scanned.iter().any(|(_, found)| found == id),
        "the scanner finds every key the parser accepts"
    );
}

/// The DPoP proof verifier, on arbitrary input: never panics, and anything it accepts was
/// checked against the request it was asked about.
pub fn dpop_proof(data: &[u8]) {
    let Ok(proof) = std::str::from_utf8(data) else {
        return;
    };
    let opts = VerifyOptions::default();
    if let Ok(verified) = dpop::verify_proof(proof, "POST", HTU, NOW, &opts) {
        assert!(
            (verified.iat - NOW).abs() <= opts.iat_leeway_secs,
            "iat outside the window"
        );
        assert!(!verified.jti.is_empty());
        assert!(!verified.jkt.is_empty());
    }
}

/// The request bodies: serde never panics, and validation never panics on what it accepts.
pub fn bodies(data: &[u8]) {
    if let Ok(body) = serde_json::from_slice::<TokenRequest>(data)
        && body.validate().is_ok()
        && let Some(device) = &body.device
    {
        assert!(
            device.attributes.len() <= 32,
            "the contract allows 32 attributes"
        );
    }
    let _ = serde_json::from_slice::<RefreshRequest>(data);
    if let Ok(new) = serde_json::from_slice::<NewKey>(data) {
        let _ = parse_scopes("scopes", &new.scopes);
        if let Ok(cidrs) = parse_cidrs(&new.allowed_ips) {
            // Normalised CIDRs parse again to themselves.
            let text: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
            assert_eq!(parse_cidrs(&text).ok().as_ref(), Some(&cidrs));
        }
        if let Ok(origins) = parse_origins(&new.allowed_origins) {
            // Normalised origins parse again to themselves.
            let text: Vec<String> = origins.iter().map(ToString::to_string).collect();
            assert_eq!(parse_origins(&text).ok().as_ref(), Some(&origins));
        }
    }
    if let Ok(patch) = serde_json::from_slice::<KeyPatch>(data)
        && let Some(scopes) = &patch.scopes
    {
        let _ = parse_scopes("scopes", scopes);
    }
}

/// The clock the attestation target verifies at: inside the real Android chain's validity
/// (2023-03-01), so mutations of it reach the key description parser.
pub const ATTESTATION_NOW: i64 = 1_677_628_800;

/// A real Android chain (Google's sample, `tests/fixtures/attestation/`), leaf first.
const ANDROID_CHAIN: &str = include_str!("../tests/fixtures/attestation/android-google-rkp.chain");
/// Apple's sample App Attest object (base64).
const APPLE_OBJECT: &str = include_str!("../tests/fixtures/attestation/apple-sample.b64");

/// The verifier the attestation target uses: settings matching both real samples.
pub fn attestation_verifier() -> &'static crate::attestation::Verifier {
    use crate::attestation::{Settings, Verifier, parse_signing_cert_sha256};
    static VERIFIER: std::sync::OnceLock<Verifier> = std::sync::OnceLock::new();
    VERIFIER.get_or_init(|| {
        Verifier::new(Settings {
            apple_app_ids: vec!["0352187391.com.apple.example_app_attest".into()],
            allow_development: true,
            android_packages: vec!["com.google.attestationexample".into()],
            android_signing_cert_sha256: vec![
                parse_signing_cert_sha256(
                    "68856d1d06f637d6255face5b224db43a9514ace538bb1548b844480fcd85c87",
                )
                .expect("digest"),
            ],
            ..Settings::default()
        })
        .expect("built-in roots parse")
    })
}

/// The attestation verifier and its settings parsers, on arbitrary input: never panics. The
/// first byte picks how the rest is presented: as a JSON `device.attestation` member; as an
/// App Attest object or an Android chain (base64 of the bytes); or as a mutation (XOR at an
/// offset) of Apple's real sample object or of a real Android chain's certificates, which
/// reaches the checks behind the parsers. A mutated Apple sample is never accepted (its nonce
/// binds the SHA-256 of the client data, which the sample never signed).
pub fn attestation(data: &[u8]) {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;

    use crate::attestation::{Attestation, parse_android_revocations, parse_signing_cert_sha256};

    let _ = parse_android_revocations(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_signing_cert_sha256(text);
    }
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let verifier = attestation_verifier();
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-256",
        "x": "5RJPNRetn0rlufvqGlibs2W4FKLxKRadLggPLQC3wnk", "y": "O2S1IrrVxSnzqwxUj2UXG-jpClOd5NpGfdWSBoN65dg"});
    let verify = |att: &Attestation, client_data: &[u8]| {
        verifier.verify(att, client_data, &jwk, ATTESTATION_NOW)
    };
    // XOR `rest` into `bytes` at an offset taken from its first two bytes.
    let mutate = |bytes: &mut Vec<u8>| {
        if rest.len() > 2 && !bytes.is_empty() {
            let at = usize::from(u16::from_be_bytes([rest[0], rest[1]])) % bytes.len();
            for (b, x) in bytes[at..].iter_mut().zip(&rest[2..]) {
                *b ^= x;
            }
        }
    };
    match mode % 5 {
        0 => {
            if let Ok(att) = serde_json::from_slice::<Attestation>(rest) {
                let _ = verify(&att, b"challenge");
            }
        }
        1 => {
            let att = Attestation::Apple {
                challenge: "c".into(),
                key_id: B64.encode(rest.get(..32).unwrap_or(rest)),
                object: B64.encode(rest),
            };
            let _ = verify(&att, b"c");
        }
        2 => {
            let chain = rest.split(|&b| b == 0xff).map(|c| B64.encode(c)).collect();
            let att = Attestation::Android {
                challenge: "c".into(),
                certificate_chain: chain,
            };
            let _ = verify(&att, b"challenge");
        }
        3 => {
            let mut object = B64.decode(APPLE_OBJECT.trim()).expect("fixture");
            mutate(&mut object);
            let att = Attestation::Apple {
                challenge: "test_server_challenge".into(),
                key_id: "bSrEhF8TIzIvWSPwvZ0i2+UOBre4ASH84rK15m6emNY=".into(),
                object: B64.encode(object),
            };
            let result = verifier.verify(&att, b"test_server_challenge", &jwk, 1_713_398_400);
            assert!(result.is_err(), "a mutated Apple sample was accepted");
        }
        _ => {
            let mut chain: Vec<Vec<u8>> = ANDROID_CHAIN
                .split_whitespace()
                .map(|c| B64.decode(c).expect("fixture"))
                .collect();
            let which = usize::from(rest.first().copied().unwrap_or(0)) % chain.len();
            mutate(&mut chain[which]);
            let att = Attestation::Android {
                challenge: "c".into(),
                certificate_chain: chain.iter().map(|c| B64.encode(c)).collect(),
            };
            if let Ok(attested) = verify(&att, b"challenge") {
                assert!(
                    matches!(
                        attested.security_level.as_deref(),
                        Some("TrustedEnvironment" | "StrongBox")
                    ),
                    "an accepted Android chain is hardware-backed"
                );
            }
        }
    }
}
