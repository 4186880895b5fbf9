//! `keybound_sdk::Verifier` on tokens from the real server, with keys found through its
//! discovery document: a good request passes, each way of using a stolen token fails for its
//! own reason, and a revocation reaches the verifier within its poll interval.

use std::sync::Arc;
use std::time::{Duration, Instant};

use keybound_sdk::{
    AccessToken, DeviceKey, DpopProofBuilder, Ed25519DeviceKey, ErrorKind, InvalidTokenReason,
    Verifier,
};
use reqwest::StatusCode;
use serde_json::json;

use super::{client_for, create_key, key_id};
use crate::helpers::{TestApp, TestDb, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    a_server_token_verifies_with_the_discovered_jwks,
    each_misuse_of_a_stolen_token_fails_for_its_reason,
    revocations_reach_the_verifier_within_its_poll_interval,
);

/// The URL the client calls at the resource server; only its `htu` matters to the proofs.
const RESOURCE: &str = "https://api.example.com/v1/users?page=2";

/// A verifier for `app`, knowing nothing but its issuer URL.
async fn verifier(app: &TestApp, poll: Duration) -> Verifier {
    Verifier::builder(app.url(""))
        .revocation_poll_interval(poll)
        .build()
        .await
        .expect("discovery, JWKS and the first feed page")
}

/// `Authorization` and `DPoP` for `token`, with a fresh proof signed by `key`.
fn signed(key: &dyn DeviceKey, token: &AccessToken) -> (String, String) {
    let proof = DpopProofBuilder::new(key, "GET", RESOURCE)
        .access_token(token.expose_secret())
        .sign()
        .unwrap();
    (format!("DPoP {}", token.expose_secret()), proof)
}

async fn verify(
    verifier: &Verifier,
    (authorization, proof): &(String, String),
) -> keybound_sdk::Result<keybound_sdk::VerifiedToken> {
    verifier
        .verify_request("GET", RESOURCE, Some(authorization), Some(proof))
        .await
}

async fn a_server_token_verifies_with_the_discovered_jwks(db: TestDb) {
    let app = spawn_app(&db).await;
    let key = create_key(&app, json!({})).await;
    let device = Arc::new(Ed25519DeviceKey::generate());
    let client = client_for(&app, &key, device.clone())
        .scope("read:users")
        .build()
        .unwrap();
    let verifier = verifier(&app, Duration::from_secs(5)).await;

    let headers = client.authorize("GET", RESOURCE).await.unwrap();
    let token = verifier
        .verify_request(
            "GET",
            RESOURCE,
            headers["authorization"].to_str().ok(),
            headers["dpop"].to_str().ok(),
        )
        .await
        .expect("a token and proof from the real server and client");

    let issued = client.token().await.unwrap();
    assert_eq!(token.subject(), key_id(&key));
    assert_eq!(token.client_id(), key_id(&key));
    assert_eq!(token.device_id(), issued.device_id());
    assert_eq!(token.thumbprint(), device.thumbprint().unwrap());
    assert_eq!(token.scopes(), ["read:users"]);
    assert!(token.require_scope("write:orders").is_err());
    assert!(verifier.feed_healthy());
}

/// What a thief can do with a token copied off the wire, without the device key; and what a
/// client bug looks like. Each is refused with the reason that names it.
async fn each_misuse_of_a_stolen_token_fails_for_its_reason(db: TestDb) {
    use InvalidTokenReason::*;
    let app = spawn_app(&db).await;
    let key = create_key(&app, json!({})).await;
    let device = Arc::new(Ed25519DeviceKey::generate());
    let client = client_for(&app, &key, device.clone()).build().unwrap();
    let token = client.token().await.unwrap();
    let stolen = token.expose_secret();
    let verifier = verifier(&app, Duration::from_secs(5)).await;
    let attacker = Ed25519DeviceKey::generate();

    let captured = signed(&*device, &token);
    verify(&verifier, &captured)
        .await
        .expect("the owner's request");
    let dpop = format!("DPoP {stolen}");
    let bearer = format!("Bearer {stolen}");
    let attackers_proof = signed(&attacker, &token).1;
    let other_token_proof = DpopProofBuilder::new(&*device, "GET", RESOURCE)
        .access_token("another.access.token")
        .sign()
        .unwrap();
    let other_url_proof =
        DpopProofBuilder::new(&*device, "GET", "https://api.example.com/v1/admin")
            .access_token(stolen)
            .sign()
            .unwrap();
    // One signature character changed (not the last: its low bits are padding, and base64url
    // decoding would refuse it before the signature is checked).
    let mut tampered = stolen.as_bytes().to_vec();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let tampered = format!("DPoP {}", String::from_utf8(tampered).unwrap());
    let fresh = || signed(&*device, &token).1;

    let cases: [(&str, &str, Option<String>, InvalidTokenReason); 7] = [
        (
            "the token alone, without a proof",
            &dpop,
            None,
            MissingProof,
        ),
        (
            "the token as a Bearer token",
            &bearer,
            Some(attackers_proof.clone()),
            WrongScheme,
        ),
        (
            "a proof from the attacker's own key",
            &dpop,
            Some(attackers_proof),
            ProofKeyMismatch,
        ),
        (
            "the captured proof, replayed",
            &captured.0,
            Some(captured.1.clone()),
            ProofReplayed,
        ),
        (
            "a proof for another token (wrong ath)",
            &dpop,
            Some(other_token_proof),
            ProofTokenHashMismatch,
        ),
        (
            "a proof for another URL",
            &dpop,
            Some(other_url_proof),
            ProofUrlMismatch,
        ),
        (
            "a tampered signature",
            &tampered,
            Some(fresh()),
            BadSignature,
        ),
    ];
    for (why, authorization, proof, reason) in cases {
        let err = verifier
            .verify_request("GET", RESOURCE, Some(authorization), proof.as_deref())
            .await
            .expect_err(why);
        assert_eq!(err.kind(), &ErrorKind::InvalidToken(reason), "{why}: {err}");
    }

    let elsewhere = Verifier::builder(app.url(""))
        .audience("https://other-api.example")
        .build()
        .await
        .unwrap();
    let err = verify(&elsewhere, &signed(&*device, &token))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::InvalidToken(WrongAudience),
        "a token for another audience: {err}"
    );
    verify(&verifier, &signed(&*device, &token))
        .await
        .expect("the owner, with a fresh proof, is still fine");
}

/// A resource server holds valid tokens; an operator revokes one device, then the key. Each
/// revocation is refused within the poll interval (plus a little for the poll itself), still
/// without a call per request, while tokens it does not cover keep working.
async fn revocations_reach_the_verifier_within_its_poll_interval(db: TestDb) {
    const POLL: Duration = Duration::from_secs(1);
    let app = spawn_app(&db).await;
    let key = create_key(&app, json!({})).await;
    let (phone, laptop) = (
        Arc::new(Ed25519DeviceKey::generate()),
        Arc::new(Ed25519DeviceKey::generate()),
    );
    let phone_token = client_for(&app, &key, phone.clone())
        .build()
        .unwrap()
        .token()
        .await
        .unwrap();
    let laptop_token = client_for(&app, &key, laptop.clone())
        .build()
        .unwrap()
        .token()
        .await
        .unwrap();
    let verifier = verifier(&app, POLL).await;
    verify(&verifier, &signed(&*phone, &phone_token))
        .await
        .unwrap();

    let res = app
        .admin_post(
            &format!("/devices/{}/revoke", phone_token.device_id()),
            json!({}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let took = refused_within(&verifier, &*phone, &phone_token, POLL).await;
    eprintln!("device revocation refused after {took:?}");
    verify(&verifier, &signed(&*laptop, &laptop_token))
        .await
        .expect("the key's other device is unaffected");

    let res = app
        .admin_post(
            &format!("/keys/{}/revoke", key_id(&key)),
            json!({"reason": "test"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let took = refused_within(&verifier, &*laptop, &laptop_token, POLL).await;
    eprintln!("key revocation refused after {took:?}");
}

/// What a poll of the feed may take on top of the interval in this test: debug builds sign
/// and check the feed's JWS with unoptimised Ed25519 (~15 ms each), on the one thread the
/// server, the poller and this test share, on a machine running the other tests too. Measured
/// 0.7 to 1.3 s in all with a 1 s interval; a release build polls in a few milliseconds.
const POLL_LATENCY: Duration = Duration::from_secs(1);

/// Verifies fresh requests with `token` until one is refused as revoked; fails if that takes
/// longer than `poll` plus [`POLL_LATENCY`].
async fn refused_within(
    verifier: &Verifier,
    key: &dyn DeviceKey,
    token: &AccessToken,
    poll: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        match verify(verifier, &signed(key, token)).await {
            Err(e) if e.kind() == &ErrorKind::Revoked => return started.elapsed(),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => {}
        }
        assert!(
            started.elapsed() < poll + POLL_LATENCY,
            "still accepted {:?} after the revocation",
            started.elapsed()
        );
        // Each try costs the shared thread tens of milliseconds in a debug build; trying
        // less often leaves it to the poller.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
