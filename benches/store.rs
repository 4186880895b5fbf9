//! Micro-benchmarks that need a store: a cached key lookup, and the whole exchange called in
//! process (`keybound::exchange::exchange`, no HTTP) on a fresh SQLite database, with DPoP
//! proofs built outside the timed section. Figures: docs/benchmarks.md.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use ed25519_dalek::Signer;
use keybound::config::ServeArgs;
use keybound::exchange::{self, DeviceInfo, Presented, TokenRequest};
use keybound::keys::service::{self, Actor, NewKey};
use keybound::server::Running;
use keybound::store::cached::CachedStore;
use rand::RngCore;
use serde_json::json;

/// A device key that signs proofs for one `htu`.
struct Device {
    key: ed25519_dalek::SigningKey,
    header: String,
}

impl Device {
    fn new() -> Device {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let x = B64.encode(key.verifying_key().as_bytes());
        let header = json!({"typ": "dpop+jwt", "alg": "EdDSA",
            "jwk": {"kty": "OKP", "crv": "Ed25519", "x": x}});
        Device {
            key,
            header: B64.encode(header.to_string()),
        }
    }

    fn proof(&self, htu: &str) -> String {
        let mut jti = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut jti);
        let claims = json!({"jti": B64.encode(jti), "htm": "POST", "htu": htu,
                            "iat": keybound::clock::now()});
        let input = format!("{}.{}", self.header, B64.encode(claims.to_string()));
        let sig = self.key.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.to_bytes()))
    }
}

/// A server on a fresh SQLite database with one key; the directory must outlive it.
async fn server() -> (tempfile::TempDir, Running, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let store = keybound::store::open(&url).await.unwrap();
    let new: NewKey = serde_json::from_value(json!({"name": "bench",
        "scopes": ["read:bench", "write:bench"], "rate_limit_per_minute": 1_000_000,
        "max_devices": 1000}))
    .unwrap();
    let created = service::create(&*store, new, &Actor::cli(), keybound::clock::now())
        .await
        .unwrap();
    let running = keybound::server::start(ServeArgs::for_tests(), store)
        .await
        .unwrap();
    (dir, running, created.key.expose().to_owned())
}

fn body() -> TokenRequest {
    TokenRequest {
        scope: None,
        audience: None,
        device: Some(DeviceInfo {
            name: None,
            attestation: None,
            attributes: [
                ("platform", "ios"),
                ("model", "iPhone15,2"),
                ("os_version", "17.1"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        }),
    }
}

async fn exchange_once(running: &Running, key: &str, proof: &str) {
    let p = Presented {
        api_key: Some(key),
        proof: Ok(Some(proof)),
        origin: None,
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        path: exchange::TOKEN_PATH,
    };
    exchange::exchange(&running.state.exchange, p, body())
        .await
        .result
        .expect("the exchange succeeds");
}

fn cached_key(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_dir, running, key) = rt.block_on(server());
    let id = keybound::keys::ApiKey::parse(&key)
        .unwrap()
        .id()
        .to_string();
    let cache: Arc<CachedStore> = running.state.cache.clone();
    rt.block_on(cache.key(&id))
        .unwrap()
        .expect("the key exists");
    c.bench_function("store/cached_key_lookup", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.key(black_box(&id)).await.unwrap()) })
    });
    let unknown = "ak_prod_AAAAAAAAAAAA";
    rt.block_on(cache.key(unknown)).unwrap();
    c.bench_function("store/cached_unknown_key_lookup", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.key(black_box(unknown)).await.unwrap()) })
    });
    rt.block_on(running.stop());
}

fn whole_exchange(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_dir, running, key) = rt.block_on(server());
    let htu = format!("{}/v1/token", running.state.settings.issuer);
    let devices: Vec<Device> = (0..64).map(|_| Device::new()).collect();
    // Enroll every device and warm the caches.
    rt.block_on(async {
        for d in &devices {
            exchange_once(&running, &key, &d.proof(&htu)).await;
        }
    });
    let mut group = c.benchmark_group("exchange");
    group.measurement_time(Duration::from_secs(5));
    // One at a time: the latency of a lone exchange, durable commit (a disk flush) included.
    group.bench_function("one_at_a_time", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let proofs: Vec<String> = (0..iters).map(|_| devices[0].proof(&htu)).collect();
            let (running, key) = (&running, &key);
            async move {
                let start = Instant::now();
                for p in &proofs {
                    exchange_once(running, key, p).await;
                }
                start.elapsed()
            }
        })
    });
    // 64 at once: what group commit makes of concurrent exchanges (per exchange).
    group.throughput(Throughput::Elements(64));
    group.bench_function("64_concurrent", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let proofs: Vec<Vec<String>> = (0..iters)
                .map(|_| devices.iter().map(|d| d.proof(&htu)).collect())
                .collect();
            let (running, key) = (&running, &key);
            async move {
                let start = Instant::now();
                for round in &proofs {
                    futures::future::join_all(round.iter().map(|p| exchange_once(running, key, p)))
                        .await;
                }
                start.elapsed()
            }
        })
    });
    group.finish();
    rt.block_on(running.stop());
}

criterion_group!(benches, cached_key, whole_exchange);
criterion_main!(benches);
