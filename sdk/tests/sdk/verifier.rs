//! The Verifier against tokens signed in the test: the happy path, then one attack per case,
//! each refused for its own reason.

use axum::Json;
use axum::Router;
use axum::http::header;
use axum::routing::get;
use keybound_sdk::{
    DeviceKey, Ed25519DeviceKey, ErrorKind, Es256DeviceKey, InvalidTokenReason, TrustLevel,
    Verifier,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::helpers::*;

const ISSUER: &str = "https://auth.example.com";

#[tokio::test]
async fn a_bound_token_with_its_proof_is_accepted() {
    // Arrange
    let issuer = TestIssuer::new(ISSUER);
    let verifier = offline_verifier(&issuer).await;
    for device in [
        Box::new(Ed25519DeviceKey::generate()) as Box<dyn DeviceKey>,
        Box::new(Es256DeviceKey::generate()),
    ] {
        let token = issuer.access_token(&issuer.claims(&*device));
        let proof = proof(&*device, "GET", RESOURCE, &token);

        // Act
        let verified = verifier
            .verify_request(
                "GET",
                RESOURCE,
                Some(&format!("DPoP {token}")),
                Some(&proof),
            )
            .await
            .unwrap_or_else(|e| panic!("{} device refused: {e}", device.alg()));

        // Assert
        assert_eq!(verified.subject(), KEY_ID);
        assert_eq!(verified.client_id(), KEY_ID);
        assert_eq!(verified.device_id(), "dev_1");
        assert_eq!(verified.trust(), TrustLevel::Trusted);
        assert_eq!(verified.thumbprint(), device.thumbprint().unwrap());
        assert_eq!(verified.scopes(), ["read:users", "write:orders"]);
        assert!(verified.require_scope("read:users").is_ok());
        assert_eq!(
            verified.require_scope("admin").unwrap_err().kind(),
            &ErrorKind::InsufficientScope
        );
    }
}

/// The `Authorization` and `DPoP` headers of a request, either possibly absent.
type Headers = (Option<String>, Option<String>);

/// One attack: how to forge the request, and the reason it must be refused for.
struct Attack {
    name: &'static str,
    reason: InvalidTokenReason,
    forge: fn(&TestIssuer, &Ed25519DeviceKey) -> Headers,
}

fn bound(
    issuer: &TestIssuer,
    device: &Ed25519DeviceKey,
    claims: Value,
) -> (Option<String>, Option<String>) {
    let token = issuer.access_token(&claims);
    let proof = proof(device, "GET", RESOURCE, &token);
    (Some(format!("DPoP {token}")), Some(proof))
}

fn with_claim(issuer: &TestIssuer, device: &Ed25519DeviceKey, name: &str, value: Value) -> Value {
    let mut claims = issuer.claims(device);
    claims[name] = value;
    claims
}

const ATTACKS: &[Attack] = &[
    Attack {
        name: "tampered signature",
        reason: InvalidTokenReason::BadSignature,
        forge: |issuer, device| {
            // Keep the signature, raise the scope: the signature no longer matches.
            let token = issuer.access_token(&issuer.claims(device));
            let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
            parts[1] = b64(with_claim(issuer, device, "scope", "admin".into()).to_string());
            let token = parts.join(".");
            let proof = proof(device, "GET", RESOURCE, &token);
            (Some(format!("DPoP {token}")), Some(proof))
        },
    },
    Attack {
        name: "wrong audience",
        reason: InvalidTokenReason::WrongAudience,
        forge: |issuer, device| {
            bound(
                issuer,
                device,
                with_claim(issuer, device, "aud", "https://other.example".into()),
            )
        },
    },
    Attack {
        name: "wrong issuer",
        reason: InvalidTokenReason::WrongIssuer,
        forge: |issuer, device| {
            bound(
                issuer,
                device,
                with_claim(issuer, device, "iss", "https://evil.example".into()),
            )
        },
    },
    Attack {
        name: "expired beyond the leeway",
        reason: InvalidTokenReason::Expired,
        forge: |issuer, device| {
            let mut claims = issuer.claims(device);
            claims["iat"] = (now() - 400).into();
            claims["nbf"] = (now() - 400).into();
            claims["exp"] = (now() - 100).into();
            bound(issuer, device, claims)
        },
    },
    Attack {
        name: "not yet valid",
        reason: InvalidTokenReason::NotYetValid,
        forge: |issuer, device| {
            bound(
                issuer,
                device,
                with_claim(issuer, device, "nbf", (now() + 600).into()),
            )
        },
    },
    Attack {
        name: "alg none",
        reason: InvalidTokenReason::AlgorithmNotAllowed,
        forge: |issuer, device| {
            let header = json!({"alg": "none", "typ": "at+jwt", "kid": issuer.kid});
            let token = format!(
                "{}.{}.",
                b64(header.to_string()),
                b64(issuer.claims(device).to_string())
            );
            let proof = proof(device, "GET", RESOURCE, &token);
            (Some(format!("DPoP {token}")), Some(proof))
        },
    },
    Attack {
        name: "HS256 keyed with the issuer's public key",
        reason: InvalidTokenReason::AlgorithmNotAllowed,
        forge: |issuer, device| {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
            header.typ = Some("at+jwt".into());
            header.kid = Some(issuer.kid.clone());
            let key = jsonwebtoken::EncodingKey::from_secret(&issuer.public_key_bytes());
            let token = jsonwebtoken::encode(&header, &issuer.claims(device), &key).unwrap();
            let proof = proof(device, "GET", RESOURCE, &token);
            (Some(format!("DPoP {token}")), Some(proof))
        },
    },
    Attack {
        name: "signed by a key outside the JWKS",
        reason: InvalidTokenReason::UnknownKeyId,
        forge: |issuer, device| {
            let rogue = TestIssuer::with_kid(&issuer.issuer, "rogue");
            let token = rogue.access_token(&rogue.claims(device));
            let proof = proof(device, "GET", RESOURCE, &token);
            (Some(format!("DPoP {token}")), Some(proof))
        },
    },
    Attack {
        name: "signed by another key under the known kid",
        reason: InvalidTokenReason::BadSignature,
        forge: |issuer, device| {
            let rogue = TestIssuer::with_kid(&issuer.issuer, &issuer.kid);
            bound(&rogue, device, rogue.claims(device))
        },
    },
    Attack {
        name: "an ID token or other JWT type",
        reason: InvalidTokenReason::WrongType,
        forge: |issuer, device| {
            let token = issuer.sign("JWT", &issuer.claims(device));
            let proof = proof(device, "GET", RESOURCE, &token);
            (Some(format!("DPoP {token}")), Some(proof))
        },
    },
    Attack {
        name: "token not bound to a key",
        reason: InvalidTokenReason::MissingConfirmation,
        forge: |issuer, device| {
            let mut claims = issuer.claims(device);
            claims.as_object_mut().unwrap().remove("cnf");
            bound(issuer, device, claims)
        },
    },
    Attack {
        name: "token without a proof",
        reason: InvalidTokenReason::MissingProof,
        forge: |issuer, device| {
            let token = issuer.access_token(&issuer.claims(device));
            (Some(format!("DPoP {token}")), None)
        },
    },
    Attack {
        name: "DPoP token presented as Bearer",
        reason: InvalidTokenReason::WrongScheme,
        forge: |issuer, device| {
            let (auth, proof) = bound(issuer, device, issuer.claims(device));
            (auth.map(|a| a.replacen("DPoP", "Bearer", 1)), proof)
        },
    },
    Attack {
        name: "no Authorization header",
        reason: InvalidTokenReason::MissingToken,
        forge: |issuer, device| (None, bound(issuer, device, issuer.claims(device)).1),
    },
    Attack {
        name: "stolen token with a proof from the thief's key",
        reason: InvalidTokenReason::ProofKeyMismatch,
        forge: |issuer, device| {
            let token = issuer.access_token(&issuer.claims(device));
            let thief = Ed25519DeviceKey::generate();
            let proof = proof(&thief, "GET", RESOURCE, &token);
            (Some(format!("DPoP {token}")), Some(proof))
        },
    },
    Attack {
        name: "proof bound to another access token (wrong ath)",
        reason: InvalidTokenReason::ProofTokenHashMismatch,
        forge: |issuer, device| {
            let token = issuer.access_token(&issuer.claims(device));
            let other = issuer.access_token(&issuer.claims(device));
            let proof = proof(device, "GET", RESOURCE, &other);
            (Some(format!("DPoP {token}")), Some(proof))
        },
    },
    Attack {
        name: "proof for another URL",
        reason: InvalidTokenReason::ProofUrlMismatch,
        forge: |issuer, device| {
            let token = issuer.access_token(&issuer.claims(device));
            let proof = proof(device, "GET", "https://api.example.com/v1/admin", &token);
            (Some(format!("DPoP {token}")), Some(proof))
        },
    },
    Attack {
        name: "proof for another method",
        reason: InvalidTokenReason::ProofMethodMismatch,
        forge: |issuer, device| {
            let token = issuer.access_token(&issuer.claims(device));
            let proof = proof(device, "DELETE", RESOURCE, &token);
            (Some(format!("DPoP {token}")), Some(proof))
        },
    },
];

#[tokio::test]
async fn each_attack_is_refused_for_its_reason() {
    let issuer = TestIssuer::new(ISSUER);
    let device = Ed25519DeviceKey::generate();
    let verifier = offline_verifier(&issuer).await;
    for attack in ATTACKS {
        let (authorization, dpop) = (attack.forge)(&issuer, &device);
        let err = verifier
            .verify_request("GET", RESOURCE, authorization.as_deref(), dpop.as_deref())
            .await
            .err()
            .unwrap_or_else(|| panic!("{}: accepted", attack.name));
        assert_eq!(
            err.kind(),
            &ErrorKind::InvalidToken(attack.reason),
            "{}: refused for the wrong reason ({err})",
            attack.name
        );
    }
}

#[tokio::test]
async fn a_replayed_proof_is_refused() {
    let issuer = TestIssuer::new(ISSUER);
    let device = Ed25519DeviceKey::generate();
    let verifier = offline_verifier(&issuer).await;
    let (authorization, dpop) = bound(&issuer, &device, issuer.claims(&device));

    let first = verifier
        .verify_request("GET", RESOURCE, authorization.as_deref(), dpop.as_deref())
        .await;
    let second = verifier
        .verify_request("GET", RESOURCE, authorization.as_deref(), dpop.as_deref())
        .await;

    assert!(first.is_ok(), "first use: {first:?}");
    assert_eq!(
        second.unwrap_err().kind(),
        &ErrorKind::InvalidToken(InvalidTokenReason::ProofReplayed)
    );
    // A fresh proof for the same token is fine: the token is reusable, the proof is not.
    let token = authorization.unwrap();
    let fresh = proof(&device, "GET", RESOURCE, token.trim_start_matches("DPoP "));
    assert!(
        verifier
            .verify_request("GET", RESOURCE, Some(&token), Some(&fresh))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_full_replay_cache_fails_closed() {
    // Two devices: one device alone can never fill the cache (its quota is at most the
    // capacity), so the second proof comes from another key.
    let issuer = TestIssuer::new(ISSUER);
    let device = Ed25519DeviceKey::generate();
    let other = Ed25519DeviceKey::generate();
    let verifier = Verifier::builder(ISSUER)
        .audience(AUDIENCE)
        .jwks(issuer.jwks())
        .danger_disable_revocation_feed()
        .replay_cache_capacity(1)
        .build()
        .await
        .unwrap();
    let (a1, p1) = bound(&issuer, &device, issuer.claims(&device));
    let (a2, p2) = bound(&issuer, &other, issuer.claims(&other));
    assert!(
        verifier
            .verify_request("GET", RESOURCE, a1.as_deref(), p1.as_deref())
            .await
            .is_ok()
    );
    let err = verifier
        .verify_request("GET", RESOURCE, a2.as_deref(), p2.as_deref())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Unavailable);
}

#[tokio::test]
async fn the_leeway_accepts_small_clock_skew() {
    let issuer = TestIssuer::new(ISSUER);
    let device = Ed25519DeviceKey::generate();
    let verifier = offline_verifier(&issuer).await;
    let mut claims = issuer.claims(&device);
    claims["exp"] = (now() - 10).into();
    let (authorization, dpop) = bound(&issuer, &device, claims);
    assert!(
        verifier
            .verify_request("GET", RESOURCE, authorization.as_deref(), dpop.as_deref())
            .await
            .is_ok(),
        "10 s past exp is inside the default 30 s leeway"
    );
}

/// A fake issuer serving metadata and a JWKS that can be swapped, counting JWKS fetches.
struct Discovery {
    jwks: std::sync::Mutex<Value>,
    fetches: AtomicUsize,
    broken: std::sync::atomic::AtomicBool,
}

async fn discovery_server(jwks: Value) -> (String, Arc<Discovery>) {
    let state = Arc::new(Discovery {
        jwks: std::sync::Mutex::new(jwks),
        fetches: AtomicUsize::new(0),
        broken: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let meta = json!({
        "issuer": base,
        "token_endpoint": format!("{base}/v1/token"),
        "jwks_uri": format!("{base}/.well-known/jwks.json"),
        "dpop_signing_alg_values_supported": ["EdDSA", "Ed25519", "ES256"],
    });
    let s = state.clone();
    let router = Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get({
                let meta = meta.clone();
                move || async move { Json(meta) }
            }),
        )
        // What a server would answer for an issuer with a path: metadata naming another issuer.
        .route(
            "/.well-known/oauth-authorization-server/tenant",
            get(move || async move { Json(meta) }),
        )
        .route(
            "/.well-known/jwks.json",
            get(move || async move {
                s.fetches.fetch_add(1, Ordering::SeqCst);
                if s.broken.load(Ordering::SeqCst) {
                    return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                }
                let jwks = s.jwks.lock().unwrap().clone();
                Ok(([(header::CACHE_CONTROL, "public, max-age=600")], Json(jwks)))
            }),
        );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (base, state)
}

#[tokio::test]
async fn keys_are_discovered_and_refreshed_on_an_unknown_kid_rate_limited() {
    // Arrange: the issuer rotates from sig-1 to sig-2 after the verifier started.
    let mut old = TestIssuer::with_kid("placeholder", "sig-1");
    let (base, server) = discovery_server(old.jwks()).await;
    old.issuer = base.clone();
    let new = TestIssuer::with_kid(&base, "sig-2");
    let verifier = Verifier::builder(&base)
        .audience(AUDIENCE)
        .jwks_refresh_interval(Duration::from_millis(300))
        .danger_disable_revocation_feed()
        .build()
        .await
        .unwrap();
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
    let device = Ed25519DeviceKey::generate();
    let request = |issuer: &TestIssuer| bound(issuer, &device, issuer.claims(&device));

    // The old key works from the cache, without another fetch.
    let (a, p) = request(&old);
    verifier
        .verify_request("GET", RESOURCE, a.as_deref(), p.as_deref())
        .await
        .unwrap();
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);

    // Right after a fetch, a flood of unknown kids causes no fetch at all.
    *server.jwks.lock().unwrap() = json!({"keys": [old.jwk(), new.jwk()]});
    for _ in 0..20 {
        let (a, p) = request(&new);
        let err = verifier
            .verify_request("GET", RESOURCE, a.as_deref(), p.as_deref())
            .await
            .unwrap_err();
        assert_eq!(
            err.kind(),
            &ErrorKind::InvalidToken(InvalidTokenReason::UnknownKeyId)
        );
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1, "rate-limited");

    // Once the interval has passed, the unknown kid triggers one fetch and the new key works.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (a, p) = request(&new);
    verifier
        .verify_request("GET", RESOURCE, a.as_deref(), p.as_deref())
        .await
        .unwrap();
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn discovery_refuses_metadata_for_another_issuer() {
    let issuer = TestIssuer::new("x");
    let (base, _server) = discovery_server(issuer.jwks()).await;
    // Same server, but we claim a different issuer name: RFC 8414 section 3.3 mix-up defence.
    let other = format!("{base}/tenant");
    let err = Verifier::builder(&other)
        .danger_disable_revocation_feed()
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::UnexpectedResponse { status: 200 },
        "{err}"
    );
}

#[tokio::test]
async fn plain_http_issuers_must_be_loopback() {
    let err = Verifier::builder("http://auth.example.com")
        .danger_disable_revocation_feed()
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Config);
}

#[test]
fn ath_is_the_sha256_of_the_token() {
    // The value a proof must carry, computed independently.
    let device = Ed25519DeviceKey::generate();
    let proof = proof(&device, "GET", RESOURCE, "token-value");
    let payload = proof.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["ath"], b64(Sha256::digest(b"token-value")));
    assert_eq!(claims["htu"], "https://api.example.com/v1/users");
}

#[tokio::test]
async fn last_good_keys_are_kept_when_a_refresh_fails() {
    let mut issuer = TestIssuer::with_kid("placeholder", "sig-1");
    let (base, server) = discovery_server(issuer.jwks()).await;
    issuer.issuer = base.clone();
    let verifier = Verifier::builder(&base)
        .audience(AUDIENCE)
        .jwks_refresh_interval(Duration::from_millis(50))
        .danger_disable_revocation_feed()
        .build()
        .await
        .unwrap();
    let device = Ed25519DeviceKey::generate();

    // An unknown kid makes the verifier refetch, and the JWKS endpoint is down.
    server.broken.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rogue = TestIssuer::with_kid(&base, "unknown");
    let (a, p) = bound(&rogue, &device, rogue.claims(&device));
    let err = verifier
        .verify_request("GET", RESOURCE, a.as_deref(), p.as_deref())
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::InvalidToken(InvalidTokenReason::UnknownKeyId)
    );
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        2,
        "the refresh was attempted"
    );

    // Tokens signed with the last good keys still verify.
    let (a, p) = bound(&issuer, &device, issuer.claims(&device));
    assert!(
        verifier
            .verify_request("GET", RESOURCE, a.as_deref(), p.as_deref())
            .await
            .is_ok()
    );
}
