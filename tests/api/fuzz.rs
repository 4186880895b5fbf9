//! The fuzz targets of `fuzz/` as property tests, so every `cargo test` (on stable, in CI)
//! runs them for a bounded number of cases: the API key parser, the DPoP proof verifier and
//! the request body parsers, on random bytes and on mutations of valid inputs. The longer,
//! coverage-guided libFuzzer run is `fuzz/run.sh`.

use keybound::fuzzing;
use keybound::keys::{ApiKey, KeyEnv};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::proofs::Device;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        // A failure prints its minimal input; no regression files are written into tests/.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A valid key, and that key with one byte replaced, inserted or removed.
fn mutated_key() -> impl Strategy<Value = (String, Vec<u8>)> {
    let env = prop_oneof![Just(KeyEnv::Prod), Just(KeyEnv::Test), Just(KeyEnv::Dev)];
    (env, any::<prop::sample::Index>(), any::<u8>(), 0..3u8).prop_map(|(env, at, byte, how)| {
        let original = ApiKey::generate(env).expose().to_owned();
        let mut key = original.as_bytes().to_vec();
        let i = at.index(key.len());
        match how {
            0 => key[i] = byte,
            1 => key.insert(i, byte),
            _ => {
                key.remove(i);
            }
        }
        (original, key)
    })
}

/// A proof valid at [`fuzzing::NOW`] for [`fuzzing::HTU`], by a fresh device key.
fn valid_proof() -> String {
    Device::new().proof_claims(json!({
        "jti": uuid::Uuid::new_v4().to_string(),
        "htm": "POST",
        "htu": fuzzing::HTU,
        "iat": fuzzing::NOW,
    }))
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Objects whose fields are the real ones of the bodies, with values of any type.
fn body_like() -> impl Strategy<Value = Vec<u8>> {
    let field = prop::sample::select(vec![
        "scope",
        "audience",
        "device",
        "name",
        "attributes",
        "refresh_token",
        "scopes",
        "env",
        "description",
        "expires_in_days",
        "rate_limit_per_minute",
        "allowed_ips",
        "allowed_origins",
        "max_devices",
        "limited_scopes",
        "trust_on_enroll",
        "expires_at",
    ]);
    prop::collection::btree_map(field, json_value(), 0..8)
        .prop_map(|m| serde_json::to_vec(&m).expect("serializes"))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn api_key_parser_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..128)) {
        fuzzing::api_key(&data);
    }

    #[test]
    fn api_key_parser_on_mutated_keys((original, data) in mutated_key()) {
        fuzzing::api_key(&data);
        // CRC-32 catches every single-byte change, and an insertion or removal breaks the
        // length: only the unchanged key (a byte replaced by itself) still parses.
        let parses = std::str::from_utf8(&data).is_ok_and(|t| ApiKey::parse(t).is_ok());
        prop_assert_eq!(parses, data == original.as_bytes());
    }

    #[test]
    fn dpop_verifier_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
        fuzzing::dpop_proof(&data);
    }

    #[test]
    fn dpop_verifier_on_mutated_proofs(at in any::<prop::sample::Index>(), byte in any::<u8>(),
                                       cut in any::<bool>()) {
        let mut proof = valid_proof().into_bytes();
        let i = at.index(proof.len());
        if cut { proof.truncate(i) } else { proof[i] = byte }
        fuzzing::dpop_proof(&proof);
    }

    #[test]
    fn body_parsers_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
        fuzzing::bodies(&data);
    }

    #[test]
    fn body_parsers_on_body_like_json(data in body_like()) {
        fuzzing::bodies(&data);
    }
}

#[test]
fn the_targets_accept_valid_inputs() {
    for env in [KeyEnv::Prod, KeyEnv::Test, KeyEnv::Dev] {
        let key = ApiKey::generate(env);
        assert!(ApiKey::parse(key.expose()).is_ok());
        fuzzing::api_key(key.expose().as_bytes());
    }
    let proof = valid_proof();
    let verified = keybound::dpop::verify_proof(
        &proof,
        "POST",
        fuzzing::HTU,
        fuzzing::NOW,
        &Default::default(),
    );
    assert!(verified.is_ok(), "{verified:?}");
    fuzzing::dpop_proof(proof.as_bytes());
    fuzzing::bodies(br#"{"scope": "read:users", "device": {"attributes": {"platform": "ios"}}}"#);
}

/// Writes seed corpora for `fuzz/run.sh` (valid inputs for libFuzzer to mutate) into
/// `target/fuzz-seeds/`, and checks they are accepted. They are made afresh rather than
/// committed: a committed API key, even an unused one, is what `keybound scan` exists to flag.
#[test]
fn fuzz_seeds_are_valid_inputs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-seeds");
    let write = |target: &str, name: &str, data: &[u8]| {
        std::fs::create_dir_all(dir.join(target)).unwrap();
        std::fs::write(dir.join(target).join(name), data).unwrap();
    };
    for env in [KeyEnv::Prod, KeyEnv::Test, KeyEnv::Dev] {
        let key = ApiKey::generate(env);
        write("api_key", env.as_str(), key.expose().as_bytes());
    }
    write("dpop_proof", "ed25519", valid_proof().as_bytes());
    let p256 = Device::of(crate::proofs::Kind::P256).proof_claims(json!({
        "jti": "seed", "htm": "POST", "htu": fuzzing::HTU, "iat": fuzzing::NOW,
    }));
    write("dpop_proof", "es256", p256.as_bytes());
    write("bodies", "token", br#"{"scope": "read:users", "audience": "https://api.example.com", "device": {"name": "phone", "attributes": {"platform": "ios", "install_id": "i-1"}}}"#);
    write("bodies", "new_key", br#"{"name": "app", "scopes": ["read:users"], "env": "test", "allowed_ips": ["10.0.0.0/8", "::1"], "allowed_origins": ["https://app.example.com"], "max_devices": 5}"#);
    write("bodies", "patch", br#"{"description": null, "expires_at": 1750000000, "limited_scopes": null, "rate_limit_per_minute": 60.0}"#);
    let read = |target: &str| {
        std::fs::read_dir(dir.join(target))
            .unwrap_or_else(|e| panic!("fuzz/seeds/{target}: {e}"))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect::<Vec<_>>()
    };
    for key in read("api_key") {
        assert!(ApiKey::parse(std::str::from_utf8(&key).unwrap()).is_ok());
    }
    for proof in read("dpop_proof") {
        let proof = std::str::from_utf8(&proof).unwrap();
        let opts = Default::default();
        let v = keybound::dpop::verify_proof(proof, "POST", fuzzing::HTU, fuzzing::NOW, &opts);
        assert!(v.is_ok(), "{v:?}");
    }
    assert!(!read("bodies").is_empty());
}
