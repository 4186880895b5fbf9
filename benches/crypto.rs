//! Micro-benchmarks of the per-request cryptography: API key checks, DPoP proof
//! verification, token signing and trust scoring. Figures: docs/benchmarks.md.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{Criterion, black_box, criterion_group, criterion_main};
use ed25519_dalek::Signer;
use keybound::devices::trust::{self, DeviceHistory, NetworkSignals, TrustInputs};
use keybound::dpop::{VerifyOptions, verify_proof};
use keybound::keys::{ApiKey, KeyEnv};
use keybound::tokens::signing::SigningKey;
use keybound::tokens::{AccessClaims, AccessGrant, GrantedTrust};
use serde_json::json;
use subtle::ConstantTimeEq;

const HTU: &str = "http://127.0.0.1:8080/v1/token";

fn ed25519_proof(now: i64) -> String {
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let header = json!({"typ": "dpop+jwt", "alg": "EdDSA",
        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": B64.encode(key.verifying_key().as_bytes())}});
    let claims = json!({"jti": "3f1b8c1e-bench", "htm": "POST", "htu": HTU, "iat": now});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig.to_bytes()))
}

fn es256_proof(now: i64) -> String {
    use p256::ecdsa::signature::Signer as _;
    let sk = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let pt = sk.verifying_key().to_encoded_point(false);
    let header = json!({"typ": "dpop+jwt", "alg": "ES256",
        "jwk": {"kty": "EC", "crv": "P-256", "x": B64.encode(pt.x().unwrap()), "y": B64.encode(pt.y().unwrap())}});
    let claims = json!({"jti": "3f1b8c1e-bench", "htm": "POST", "htu": HTU, "iat": now});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig: p256::ecdsa::Signature = sk.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig.to_bytes()))
}

fn keys(c: &mut Criterion) {
    let key = ApiKey::generate(KeyEnv::Prod);
    let plaintext = key.expose().to_owned();
    let stored = key.secret_hash();
    c.bench_function("api_key/parse+checksum+hash+ct_compare", |b| {
        b.iter(|| {
            let k = ApiKey::parse(black_box(&plaintext)).unwrap();
            black_box(bool::from(k.secret_hash().ct_eq(&stored)))
        })
    });
    // What `keys::auth` does since issue 15 item 8: the stored value is an HMAC of the hash,
    // bound to the key id, under a key derived from the integrity root.
    let integrity = keybound::integrity::Integrity::from_root(&[7; 32]);
    let wrapped = integrity.wrap_key_hash(key.id().as_str(), &stored);
    c.bench_function("api_key/parse+checksum+hash+hmac+ct_compare", |b| {
        b.iter(|| {
            let k = ApiKey::parse(black_box(&plaintext)).unwrap();
            black_box(bool::from(integrity.key_hash_matches(
                k.id().as_str(),
                &k.secret_hash(),
                &wrapped,
            )))
        })
    });
    let mut bad = plaintext.clone().into_bytes();
    bad[30] = if bad[30] == b'a' { b'b' } else { b'a' };
    let bad = String::from_utf8(bad).unwrap();
    c.bench_function("api_key/refuse_bad_checksum", |b| {
        b.iter(|| ApiKey::parse(black_box(&bad)).is_err())
    });
}

fn dpop(c: &mut Criterion) {
    let now = keybound::clock::now();
    let opts = VerifyOptions::default();
    let ed = ed25519_proof(now);
    let es = es256_proof(now);
    c.bench_function("dpop/verify_eddsa", |b| {
        b.iter(|| verify_proof(black_box(&ed), "POST", HTU, now, &opts).unwrap())
    });
    c.bench_function("dpop/verify_es256", |b| {
        b.iter(|| verify_proof(black_box(&es), "POST", HTU, now, &opts).unwrap())
    });
}

fn tokens(c: &mut Criterion) {
    let key = SigningKey::generate();
    let grant = AccessGrant {
        issuer: "http://127.0.0.1:8080",
        key_id: "ak_prod_AAAAAAAAAAAA",
        audience: "http://127.0.0.1:8080",
        scope: "read:users write:orders",
        jkt: "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k",
        device_id: "dev_0190f0c0a0b0c0d0e0f0a0b0c0d0e0f0",
        trust: GrantedTrust::Trusted,
        att: None,
        ttl_seconds: 300,
        status_idx: 0,
    };
    c.bench_function("token/claims+sign_eddsa", |b| {
        b.iter(|| AccessClaims::new(black_box(&grant), 1_700_000_000).sign(&key))
    });
    let stored: BTreeMap<String, String> = [
        ("platform", "ios"),
        ("model", "iPhone15,2"),
        ("install_id", "abc"),
        ("os_version", "17.1"),
        ("app_version", "2.3.0"),
        ("locale", "ja-JP"),
        ("timezone", "Asia/Tokyo"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let mut presented = stored.clone();
    presented.insert("os_version".into(), "17.2".into());
    c.bench_function("trust/evaluate", |b| {
        b.iter(|| {
            trust::evaluate(black_box(&TrustInputs {
                stored: &stored,
                presented: &presented,
                history: DeviceHistory {
                    successful_exchanges: 40,
                    age_seconds: 86_400 * 3,
                    previous_mismatches: 0,
                },
                network: NetworkSignals {
                    network_seen_before: true,
                    distinct_networks_recent: 2,
                },
                attested: false,
                trust_on_enroll: false,
                approved: false,
                is_new: false,
            }))
        })
    });
}

/// What checking proof signatures in batches saves (`ed25519_dalek::verify_batch`: a random
/// linear combination, one multiscalar multiplication; the server's `dpop::SignatureBatcher`)
/// against one `verify_strict` per proof. A batch's time covers all its signatures.
fn ed25519_batch(c: &mut Criterion) {
    const N: usize = 64;
    let mut rng = rand::rngs::OsRng;
    let keys: Vec<ed25519_dalek::SigningKey> = (0..N)
        .map(|_| ed25519_dalek::SigningKey::generate(&mut rng))
        .collect();
    // Proof-sized messages: a DPoP proof's signing input is about 400 bytes.
    let msgs: Vec<Vec<u8>> = (0..N)
        .map(|i| format!("{i:04}{}", "x".repeat(400)).into_bytes())
        .collect();
    let sigs: Vec<ed25519_dalek::Signature> =
        keys.iter().zip(&msgs).map(|(k, m)| k.sign(m)).collect();
    let vks: Vec<ed25519_dalek::VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
    c.bench_function("ed25519/verify_strict", |b| {
        b.iter(|| vks[0].verify_strict(black_box(&msgs[0]), &sigs[0]).unwrap())
    });
    for batch in [2, 4, 8, 16, 32, 64] {
        let m: Vec<&[u8]> = msgs[..batch].iter().map(Vec::as_slice).collect();
        // Per batch: divide by `batch` for the cost of one signature.
        c.bench_function(&format!("ed25519/verify_batch_{batch}"), |b| {
            b.iter(|| {
                ed25519_dalek::verify_batch(black_box(&m), &sigs[..batch], &vks[..batch]).unwrap()
            })
        });
    }
}

criterion_group!(benches, keys, dpop, tokens, ed25519_batch);
criterion_main!(benches);
