//! The exchange on its own: a [`Deps`] around a fresh SQLite file, the in-process replay store
//! and limits, and no HTTP. Each test presents what a client would and checks the answer's
//! outcome (the API tests cover the HTTP mapping).

use std::net::{IpAddr, Ipv4Addr};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::Signer;

use super::*;
use crate::keys::service::{self, Actor, NewKey};
use crate::keys::{ApiKey, KeyEnv};
use crate::limits::Backend;
use crate::replay::MemoryReplayStore;
use crate::tokens::signing::MasterKey;

const ISSUER: &str = "http://127.0.0.1:8080";

/// The dependencies, the one key they know, and the directory its database lives in.
struct Fixture {
    deps: Deps,
    key: String,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("keybound.db").display());
    let inner = crate::store::open(&url).await.unwrap();
    let now = crate::clock::now();
    let master = MasterKey::generate();
    // Key hashes are stored MAC'd: the store needs its integrity keys before a key is made.
    crate::integrity::load_or_enable(&*inner, &master, now)
        .await
        .unwrap();
    let new: NewKey =
        serde_json::from_value(json!({"name": "unit", "scopes": ["read:x", "write:x"]})).unwrap();
    let created = service::create(&*inner, new, &Actor::cli(), now)
        .await
        .unwrap();
    let cache = Arc::new(CachedStore::new(inner, 100));
    let store: Arc<dyn Store> = cache.clone();
    let keyring = Arc::new(KeyRing::load(&*store, master, now).await.unwrap());
    let deps = Deps {
        policy: Policy {
            issuer: ISSUER.into(),
            audiences: vec!["api".into()],
            access_ttl_secs: 300,
            refresh_ttl_secs: 86_400,
            refresh_family_max_age_secs: 30 * 86_400,
            refresh_reuse_grace_secs: 0,
            refresh_rate_per_device: 10,
            require_dpop_nonce: false,
            enrollments_per_hour: None,
            stale_device_secs: 30 * 86_400,
        },
        health: Arc::default(),
        last_used: Arc::default(),
        switches: Arc::default(),
        key_limits: Arc::new(KeyLimits::new(Backend::Local, 100)),
        device_limits: Arc::new(KeyLimits::with_prefix(Backend::Local, "device", 100)),
        key_failures: Arc::new(KeyIdFailures::new(Backend::Local, 10)),
        nonce_challenges: Arc::new(IpFailures::new(Backend::Local, "nonce", 10, 100, 64)),
        refresh_sealer: Arc::new(RefreshSealer::new(&[1; 32], &[2; 32])),
        dpop_options: Arc::new(VerifyOptions::default()),
        proof_keys: Arc::default(),
        proof_signatures: Arc::default(),
        nonces: Arc::new(NonceIssuer::new(&[3; 32])),
        replay: Arc::new(MemoryReplayStore::new()),
        alerts: Arc::new(Alerts::new(store.clone(), Default::default())),
        verifier: Arc::new(Verifier::new(Default::default()).unwrap()),
        challenges: Arc::new(challenge::Challenges::new(&[4; 32])),
        keyring,
        store,
        cache,
    };
    Fixture {
        deps,
        key: created.key.expose().to_owned(),
        _dir: dir,
    }
}

/// An Ed25519 device key's proof for the exchange endpoint.
fn proof(device: &ed25519_dalek::SigningKey) -> String {
    let header = json!({"typ": "dpop+jwt", "alg": "EdDSA",
        "jwk": {"kty": "OKP", "crv": "Ed25519",
                "x": B64.encode(device.verifying_key().as_bytes())}});
    let claims = json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": "POST",
        "htu": format!("{ISSUER}{TOKEN_PATH}"), "iat": crate::clock::now()});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = device.sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig.to_bytes()))
}

fn device() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng)
}

fn presented<'a>(key: &'a str, proof: &'a str) -> Presented<'a> {
    Presented {
        api_key: Some(key),
        proof: Ok(Some(proof)),
        origin: None,
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        path: TOKEN_PATH,
    }
}

fn request() -> TokenRequest {
    serde_json::from_value(json!({"device": {"attributes": {"platform": "ios"}}})).unwrap()
}

#[tokio::test]
async fn a_valid_key_and_proof_get_a_bound_token() {
    let f = fixture().await;
    let device = device();
    let proof = proof(&device);

    let outcome = exchange(&f.deps, presented(&f.key, &proof), request()).await;

    let key_id = ApiKey::parse(&f.key).unwrap().id().to_string();
    assert_eq!(outcome.key_id.as_deref(), Some(key_id.as_str()));
    let answer = outcome.result.expect("the exchange is accepted");
    assert_eq!(answer.token_type, "DPoP");
    // A new device starts limited: only the key's `read:` scopes (contract section 6).
    assert_eq!(answer.scope, "read:x");
    assert_eq!(answer.trust.level, GrantedTrust::Limited);
    assert!(answer.device_id.starts_with("dev_"), "{answer:?}");
    // The access token is bound to the proof's key (contract 4: `cnf.jkt`) and signed by
    // the active signing key.
    let claims: serde_json::Value = serde_json::from_slice(
        &B64.decode(answer.access_token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let jkt = dpop::verify_proof(
        &proof,
        "POST",
        &format!("{ISSUER}{TOKEN_PATH}"),
        crate::clock::now(),
        &VerifyOptions::default(),
    )
    .unwrap()
    .jkt
    .clone();
    assert_eq!(claims["cnf"]["jkt"], json!(jkt));
    assert_eq!(claims["sub"], json!(key_id));
    // The refresh token opens with the same sealer, for the same device key.
    let rt = f
        .deps
        .refresh_sealer
        .open(&answer.refresh_token)
        .expect("our refresh token");
    assert_eq!(rt.jkt, jkt);
}

#[tokio::test]
async fn a_wrong_key_is_refused_before_its_proof_is_looked_at() {
    let f = fixture().await;
    let proof = proof(&device());
    let unknown = ApiKey::generate(KeyEnv::Test);
    let mut mangled = f.key.clone();
    mangled.pop();

    for (key, why) in [
        (unknown.expose(), "a well-formed key that was never issued"),
        (mangled.as_str(), "a key with a broken checksum"),
    ] {
        let outcome = exchange(&f.deps, presented(key, &proof), request()).await;
        assert!(outcome.key_id.is_none(), "{why}");
        let err = outcome.result.expect_err(why);
        assert_eq!(err.code(), "INVALID_API_KEY", "{why}");
    }
    // The proof was never checked, so it is still fresh: the right key gets a token with it.
    let outcome = exchange(&f.deps, presented(&f.key, &proof), request()).await;
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
}

#[tokio::test]
async fn a_replayed_proof_is_refused() {
    let f = fixture().await;
    let proof = proof(&device());
    exchange(&f.deps, presented(&f.key, &proof), request())
        .await
        .result
        .expect("the first use is accepted");

    let outcome = exchange(&f.deps, presented(&f.key, &proof), request()).await;

    let err = outcome.result.expect_err("the second use is a replay");
    assert_eq!(err.code(), "DPOP_REPLAY");
}

#[tokio::test]
async fn nothing_is_issued_while_storage_is_down() {
    let f = fixture().await;
    f.deps.health.set(false);
    let proof = proof(&device());

    let outcome = exchange(&f.deps, presented(&f.key, &proof), request()).await;

    assert_eq!(
        outcome.result.expect_err("fails closed").code(),
        "UNAVAILABLE"
    );
}

/// The limited grant compares scopes in place; it grants exactly what the default set
/// (`trust::limited_scopes_default`) or the key's own limited list admits, in the requested
/// order.
#[test]
fn a_limited_device_gets_the_limited_set_and_nothing_else() {
    let scopes =
        |l: &[&str]| -> Vec<crate::ids::Scope> { l.iter().map(|s| s.parse().unwrap()).collect() };
    let mut key = KeyRecord {
        scopes: scopes(&["write:orders", "read:users", "admin", "read:orders"]),
        limited_scopes: None,
        ..crate::store::tests::key("ak_test_AAAAAAAAAAAA")
    };
    let requested: Vec<String> = [
        "read:orders",
        "admin",
        "read:users",
        "write:orders",
        "read:x",
    ]
    .map(str::to_owned)
    .to_vec();
    let default = trust::limited_scopes_default(&key.scopes);
    let want: Vec<String> = requested
        .iter()
        .filter(|s| default.contains(s))
        .cloned()
        .collect();
    assert_eq!(want, ["read:orders", "read:users"]);
    assert_eq!(grant_scopes(&key, &requested, TrustLevel::Limited), want);
    assert_eq!(
        grant_scopes(&key, &requested, TrustLevel::Trusted),
        requested,
        "a trusted device gets what it asked for (checked against the key before)"
    );
    key.limited_scopes = Some(scopes(&["admin"]));
    assert_eq!(
        grant_scopes(&key, &requested, TrustLevel::Limited),
        ["admin"]
    );
    key.limited_scopes = Some(vec![]);
    assert!(grant_scopes(&key, &requested, TrustLevel::Limited).is_empty());
}
