//! Offline verification at a resource server: one `Verifier::verify_request` (an access token
//! and its DPoP proof, every check including the replay cache), next to the floor it cannot
//! beat, two raw Ed25519 `verify_strict` calls (one signature per JWS). Figures and the command
//! that produced them: docs/benchmarks.md.
//!
//! A third case adds the token status list (contract section 10): the same verification of a
//! token that names an entry of a 1 048 576-entry list, the list fetched once from a loopback
//! issuer and then answered from memory, as in production between two `ttl`s.
//!
//! Criterion times each function in its own window of a few seconds. On a shared machine the
//! load changes between windows, so after the Criterion run the bench also times the two in
//! alternating rounds of 100 and prints the ratio of their medians, which drift cannot skew.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{BatchSize, Criterion, black_box};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use keybound_sdk::{DeviceKey, DpopProofBuilder, Ed25519DeviceKey, Verifier};
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ISSUER: &str = "https://auth.example.com";
const URL: &str = "https://api.example.com/v1/users?page=2";

/// A verifier, a token it accepts, the device that holds it, and the raw material for the
/// floor: both public keys, decompressed, and one signed message of each kind.
struct Fixture {
    rt: tokio::runtime::Runtime,
    verifier: Verifier,
    token: String,
    authorization: String,
    device: Ed25519DeviceKey,
    raw: [(VerifyingKey, String, Signature); 2],
}

/// A compact JWS signed with `key`, the way keybound signs access tokens.
fn jws(key: &SigningKey, header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(signature.to_bytes()))
}

/// A DPoP proof for a GET of [`URL`] with `token`.
fn proof(device: &Ed25519DeviceKey, token: &str) -> String {
    DpopProofBuilder::new(device, "GET", URL)
        .access_token(token)
        .sign()
        .unwrap()
}

/// `key`, with the signing input and the signature of `jws`.
fn raw(key: VerifyingKey, jws: &str) -> (VerifyingKey, String, Signature) {
    let (input, signature) = jws.rsplit_once('.').unwrap();
    let signature = Signature::from_slice(&B64.decode(signature).unwrap()).unwrap();
    (key, input.to_owned(), signature)
}

impl Fixture {
    /// `with_status`: the token names an entry of a status list that a loopback issuer
    /// serves (the verifier's issuer is then that server).
    fn new(with_status: bool) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let issuer = SigningKey::generate(&mut rand::rngs::OsRng);
        let listener = with_status.then(|| {
            rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap()
        });
        let iss = match &listener {
            Some(l) => format!("http://{}", l.local_addr().unwrap()),
            None => ISSUER.to_owned(),
        };
        let list_uri = format!("{iss}/v1/status-lists/0");
        let device = Ed25519DeviceKey::generate();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        // The claims keybound puts in an access token (contract section 4).
        let mut claims = json!({
            "iss": iss, "sub": "ak_prod_0123456789AB", "client_id": "ak_prod_0123456789AB",
            "aud": iss, "iat": now, "nbf": now, "exp": now + 3600,
            "jti": "l0n3aWp2K3Ry6a4y1fQvWg", "scope": "read:users write:orders",
            "cnf": {"jkt": device.thumbprint().unwrap()},
            "did": "dev_0190f0c0a0b0c0d0e0f0a0b0c0d0e0f0", "trust": "trusted",
        });
        if let Some(listener) = listener {
            claims["status"] = json!({"status_list": {"idx": 654_321, "uri": list_uri}});
            // A full list (2^20 devices, 2 bits each), all valid, signed like keybound's.
            let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            std::io::Write::write_all(&mut z, &vec![0u8; (1 << 20) / 4]).unwrap();
            let list = jws(
                &issuer,
                &json!({"alg": "EdDSA", "typ": "statuslist+jwt", "kid": "sig-1"}),
                &json!({
                    "iss": iss, "sub": list_uri, "iat": now, "exp": now + 86_400, "ttl": 86_400,
                    "status_list": {"bits": 2, "lst": B64.encode(z.finish().unwrap())},
                }),
            );
            let router = axum::Router::new().route(
                "/v1/status-lists/0",
                axum::routing::get(move || {
                    let list = list.clone();
                    async move { list }
                }),
            );
            rt.spawn(async move { axum::serve(listener, router).await.unwrap() });
        }
        let token = jws(
            &issuer,
            &json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "sig-1"}),
            &claims,
        );
        let jwks = json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": "sig-1",
            "x": B64.encode(issuer.verifying_key().as_bytes()),
        }]});
        let verifier = rt
            .block_on(
                Verifier::builder(&iss)
                    .jwks(jwks)
                    .danger_disable_revocation_feed()
                    // Every verification remembers its proof; the default 100 000 would fill
                    // up during a run and turn the measurement into one of the refusal path.
                    // One device sends them all, so its quota must be as large.
                    .replay_cache_capacity(50_000_000)
                    .replay_quota_per_key(50_000_000)
                    // The list is fetched once; a long run must not outlive its freshness.
                    .max_staleness(Duration::from_secs(86_400))
                    .build(),
            )
            .unwrap();
        let device_key = VerifyingKey::from_bytes(
            &B64.decode(device.public_jwk()["x"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap(),
        )
        .unwrap();
        Self {
            rt,
            verifier,
            authorization: format!("DPoP {token}"),
            raw: [
                raw(issuer.verifying_key(), &token),
                raw(device_key, &proof(&device, &token)),
            ],
            token,
            device,
        }
    }

    /// A fresh proof for the token: each request brings a new one (a replayed one is
    /// refused), so proofs are made outside the timed part.
    fn proof(&self) -> String {
        proof(&self.device, &self.token)
    }

    async fn verify(&self, proof: &str) {
        self.verifier
            .verify_request("GET", URL, Some(&self.authorization), Some(proof))
            .await
            .unwrap();
    }

    /// The floor: the token's and the proof's signature, nothing else.
    fn verify_strict_x2(&self) {
        for (key, input, signature) in &self.raw {
            key.verify_strict(black_box(input.as_bytes()), signature)
                .unwrap();
        }
    }
}

fn criterion_benches(c: &mut Criterion, f: &Fixture, with_status: &Fixture) {
    let mut group = c.benchmark_group("verify");
    group.bench_function("token+proof", |b| {
        b.to_async(&f.rt).iter_batched(
            || f.proof(),
            |proof| async move { f.verify(&proof).await },
            BatchSize::SmallInput,
        )
    });
    // The first verification fetches the list; the timed ones read it from memory.
    with_status
        .rt
        .block_on(with_status.verify(&with_status.proof()));
    group.bench_function("token+proof+status list", |b| {
        let f = with_status;
        b.to_async(&f.rt).iter_batched(
            || f.proof(),
            |proof| async move { f.verify(&proof).await },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("verify_strict x1", |b| {
        let (key, input, signature) = &f.raw[0];
        b.iter(|| {
            key.verify_strict(black_box(input.as_bytes()), signature)
                .unwrap()
        })
    });
    group.bench_function("verify_strict x2", |b| b.iter(|| f.verify_strict_x2()));
    group.finish();
}

/// Times `verify_request` and the floor in alternating rounds and prints both medians and
/// their ratio (floor / verify_request: 1.0 would mean no overhead beyond the signatures).
fn interleaved(f: &Fixture) {
    const ROUNDS: usize = 200;
    const PER_ROUND: usize = 100;
    let (mut ours, mut floor) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
    for _ in 0..ROUNDS {
        let proofs: Vec<String> = (0..PER_ROUND).map(|_| f.proof()).collect();
        let started = Instant::now();
        f.rt.block_on(async {
            for proof in &proofs {
                f.verify(proof).await;
            }
        });
        ours.push(started.elapsed() / PER_ROUND as u32);
        let started = Instant::now();
        for _ in 0..PER_ROUND {
            f.verify_strict_x2();
        }
        floor.push(started.elapsed() / PER_ROUND as u32);
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (ours, floor) = (median(&mut ours), median(&mut floor));
    println!(
        "interleaved ({ROUNDS} rounds of {PER_ROUND}): token+proof {ours:.2?}, verify_strict x2 \
         {floor:.2?}, ratio {:.3}",
        floor.as_secs_f64() / ours.as_secs_f64()
    );
}

fn main() {
    let fixture = Fixture::new(false);
    let with_status = Fixture::new(true);
    let mut criterion = Criterion::default().configure_from_args();
    criterion_benches(&mut criterion, &fixture, &with_status);
    criterion.final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` (a quick smoke run, unoptimised)
    // does not, and skips this.
    if std::env::args().any(|arg| arg == "--bench") {
        interleaved(&fixture);
    }
}
