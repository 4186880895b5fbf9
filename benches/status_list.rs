//! Token status lists (contract section 10): the cost of building one full list (1 048 576
//! entries) with 1 % of its devices revoked, from the stored non-valid entries to the signed
//! `statuslist+jwt`, and the size a verifier downloads.
//!
//! `cargo bench --bench status_list` (docs/benchmarks.md records the result).

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use keybound::store::{STATUS_LIST_SIZE, StatusSnapshot, StatusValue};
use keybound::tokens::signing::SigningKey;
use keybound::tokens::status_list::{StatusListClaims, TYP_STATUS_LIST};
use rand::{Rng, SeedableRng};

/// 1 % of a full list revoked, at random places (seeded: the same list on every run), and a
/// further 0.1 % suspended.
fn snapshot() -> StatusSnapshot {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
    let mut s = StatusSnapshot::default();
    let n = STATUS_LIST_SIZE;
    while s.entries.len() < (n / 100) as usize {
        s.set(rng.gen_range(0..n), StatusValue::Invalid);
    }
    for _ in 0..n / 1000 {
        s.set(rng.gen_range(0..n), StatusValue::Suspended);
    }
    s
}

fn bench(c: &mut Criterion) {
    let snapshot = snapshot();
    let key = SigningKey::generate();
    let build = || {
        let claims = StatusListClaims::new(
            "https://issuer.example",
            "https://issuer.example/v1/status-lists/0".into(),
            0,
            &snapshot,
            1_767_225_600,
            60,
        );
        key.sign_jws(TYP_STATUS_LIST, &claims)
    };
    let jws = build();
    let claims: serde_json::Value = {
        use base64::Engine as _;
        let part = jws.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(part)
                .unwrap(),
        )
        .unwrap()
    };
    let lst = claims["status_list"]["lst"].as_str().unwrap();
    eprintln!(
        "status list of {STATUS_LIST_SIZE} entries, {} non-valid: lst {} bytes compressed \
         ({} base64url characters), whole JWS {} bytes",
        snapshot.entries.len(),
        lst.len() * 3 / 4,
        lst.len(),
        jws.len()
    );
    c.bench_function("status_list/build_and_sign_1M_1pct", |b| {
        b.iter(|| black_box(build()))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
