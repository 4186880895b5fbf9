//! Verifying one attestation of each format with the trust anchors parsed once (the server
//! builds one `Verifier` at startup) and its cache of verified CA links warm. Also the one
//! P-384 ECDSA check a warm App Attest verification still makes, with RustCrypto's `p384`
//! and with `ring` (the verifier uses ring). Figures: docs/benchmarks.md.

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use keybound::attestation::{Attestation, Settings, Verifier, parse_signing_cert_sha256};

#[path = "../src/attestation/testing.rs"]
mod attestation_gen;

use attestation_gen::*;

const NOW: i64 = 1_800_000_000;

fn bench<M: Measurement + 'static>(c: &mut Criterion<M>, clock: &str) {
    let root = TestRoot::new();
    let verifier = Verifier::new(Settings {
        apple_app_ids: vec![TEST_APP_ID.into()],
        android_packages: vec![TEST_PACKAGE.into(), "com.google.attestationexample".into()],
        android_signing_cert_sha256: vec![
            TEST_SIGNING_CERT_SHA256,
            parse_signing_cert_sha256(
                "68856d1d06f637d6255face5b224db43a9514ace538bb1548b844480fcd85c87",
            )
            .unwrap(),
        ],
        extra_roots_pem: vec![root.root_pem().into_bytes()],
        ..Settings::default()
    })
    .unwrap();
    let client_data = b"q8Yl3bq1Pq0aWm2l1b0T3kYQp2s5fX8uR4nJ6cV9eZA.jkt";
    let (_, point, jwk) = dpop_p256_key();

    // App Attest: P-384 root -> P-384 intermediate -> P-256 credential certificate, CBOR.
    let apple: Attestation = serde_json::from_value(apple_attestation(
        &root,
        "c",
        client_data,
        TEST_APP_ID,
        &AppleOpts::default(),
    ))
    .unwrap();
    verifier
        .verify(&apple, client_data, &jwk, NOW)
        .expect("valid");
    c.bench_function(
        &format!("{clock}/attestation/apple-appattest (generated)"),
        |b| {
            b.iter(|| {
                verifier
                    .verify(black_box(&apple), client_data, &jwk, NOW)
                    .unwrap()
            })
        },
    );

    // Android, generated: P-384 root -> P-256 intermediate -> leaf.
    let android: Attestation = serde_json::from_value(android_chain(
        &root,
        "c",
        client_data,
        &point,
        &AndroidOpts::default(),
    ))
    .unwrap();
    verifier
        .verify(&android, client_data, &jwk, NOW)
        .expect("valid");
    c.bench_function(
        &format!("{clock}/attestation/android-key (generated)"),
        |b| {
            b.iter(|| {
                verifier
                    .verify(black_box(&android), client_data, &jwk, NOW)
                    .unwrap()
            })
        },
    );

    // Android, a real remotely provisioned chain: Google's RSA-4096 root -> P-384 -> P-256 x3.
    let chain: Vec<String> = include_str!("../tests/fixtures/attestation/android-google-rkp.chain")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let real = Attestation::Android {
        challenge: "c".into(),
        certificate_chain: chain,
    };
    let real_jwk = serde_json::json!({"kty": "EC", "crv": "P-256",
        "x": "5RJPNRetn0rlufvqGlibs2W4FKLxKRadLggPLQC3wnk",
        "y": "O2S1IrrVxSnzqwxUj2UXG-jpClOd5NpGfdWSBoN65dg"});
    let then = 1_677_628_800;
    verifier
        .verify(&real, b"challenge", &real_jwk, then)
        .expect("valid");
    c.bench_function(
        &format!("{clock}/attestation/android-key (real RKP chain, RSA root)"),
        |b| {
            b.iter(|| {
                verifier
                    .verify(black_box(&real), b"challenge", &real_jwk, then)
                    .unwrap()
            })
        },
    );
}

/// One P-384 ECDSA-SHA384 verification of a 600-byte message (about a credential
/// certificate's TBS), DER signature: RustCrypto `p384` against `ring`.
fn p384_verify<M: Measurement + 'static>(c: &mut Criterion<M>, clock: &str) {
    use p384::ecdsa::signature::Signer;
    use p384::ecdsa::signature::hazmat::PrehashVerifier;
    use sha2::Digest;
    let key = p384::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let msg = vec![0x5a; 600];
    let sig: p384::ecdsa::Signature = key.sign(&msg);
    let der = sig.to_der();
    let vk = *key.verifying_key();
    let point = vk.to_encoded_point(false);
    let ring_key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P384_SHA384_ASN1,
        point.as_bytes(),
    );
    c.bench_function(&format!("{clock}/p384-verify/RustCrypto p384"), |b| {
        b.iter(|| {
            let digest = sha2::Sha384::digest(black_box(&msg));
            let sig = p384::ecdsa::Signature::from_der(der.as_bytes()).unwrap();
            vk.verify_prehash(&digest, &sig).unwrap()
        })
    });
    c.bench_function(&format!("{clock}/p384-verify/ring"), |b| {
        b.iter(|| ring_key.verify(black_box(&msg), der.as_bytes()).unwrap())
    });
}

/// The calling thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`), in nanoseconds: what one core
/// spends per verification whatever else runs on the machine. Wall time (the default group)
/// also counts the time the thread waited for a core.
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux defines.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;
    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, v: &u64) -> f64 {
        *v as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuFormatter
    }
}

/// Nanoseconds shown like Criterion's wall time (ns, µs, ms), suffixed "cpu".
struct CpuFormatter;

impl ValueFormatter for CpuFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical < 1e3 {
            (1.0, "ns cpu")
        } else if typical < 1e6 {
            (1e-3, "µs cpu")
        } else {
            (1e-6, "ms cpu")
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }
    fn scale_throughputs(&self, _: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let n = match t {
            Throughput::Elements(n) | Throughput::Bytes(n) | Throughput::BytesDecimal(n) => *n,
        };
        values.iter_mut().for_each(|v| *v = n as f64 * 1e9 / *v);
        "per cpu-second"
    }
    fn scale_for_machines(&self, _: &mut [f64]) -> &'static str {
        "ns cpu"
    }
}

fn wall(c: &mut Criterion) {
    bench(c, "wall");
    p384_verify(c, "wall");
}

fn cpu(c: &mut Criterion<ThreadCpuTime>) {
    bench(c, "cpu");
    p384_verify(c, "cpu");
}

criterion_group!(wall_time, wall);
criterion_group! {
    name = cpu_time;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = cpu
}
criterion_main!(wall_time, cpu_time);
