//! Sealed refresh tokens (issue 18), the grace window (contract 9.2), sign-out (contract 9.3),
//! and what a refresh keeps of the key's privileges (issue 15, items 3 and 7). Each refusal is
//! asserted by its exact code.

use keybound::tokens::{RefreshClaims, RefreshSealer};
use reqwest::StatusCode;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDb, expect_error, expect_json, spawn_app, spawn_app_args};
use crate::on_both_backends;
use crate::proofs::Device;
use crate::token::{claims_of, exchange, new_key, refresh};

fn now() -> i64 {
    keybound::clock::now()
}

async fn first_token(app: &TestApp, key: &str, dev: &Device) -> String {
    let body = expect_json(exchange(app, key, dev, json!({})).await, StatusCode::OK).await;
    body["refresh_token"].as_str().unwrap().to_owned()
}

/// The claims inside `token`, opened with the server's own sealer.
fn opened(app: &TestApp, token: &str) -> RefreshClaims {
    app.state()
        .refresh_sealer
        .open(token)
        .expect("the server's own token opens")
}

/// A token with `claims`, sealed by the server's own key (as if it had issued them).
fn sealed(app: &TestApp, claims: &RefreshClaims) -> String {
    app.state()
        .refresh_sealer
        .seal(claims)
        .expose_secret()
        .to_owned()
}

pub async fn revoke(app: &TestApp, dev: &Device, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/token/revoke"))
        .header("DPoP", dev.proof("POST", &app.url("/v1/token/revoke")))
        .form(&[("token", token), ("token_type_hint", "refresh_token")])
        .send()
        .await
        .expect("request")
}

/// The first token of a family is self-contained: nothing is stored at the exchange, and every
/// forgery of it is refused before storage is asked.
async fn the_first_token_is_stateless_and_unforgeable(db: TestDb) {
    let app = spawn_app(&db).await;
    let (key, _) = new_key(&app, json!({"trust_on_enroll": true})).await;
    let dev = Device::new();
    let rt = first_token(&app, &key, &dev).await;
    let claims = opened(&app, &rt);
    assert_eq!(
        (claims.generation, claims.jkt.as_str()),
        (0, dev.jkt.as_str())
    );
    assert_eq!(
        app.store
            .get_refresh_family(&claims.family_id)
            .await
            .unwrap(),
        None,
        "the exchange wrote nothing for its refresh token"
    );

    // Tampered: one character of the ciphertext changed.
    let mut chars: Vec<char> = rt.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    // Forged with another master key: the right shape and claims, the wrong key.
    let foreign = RefreshSealer::new(&[7; 32], &[8; 32])
        .seal(&claims)
        .expose_secret()
        .to_owned();
    // Expired (the server's own key, so only the expiry is wrong).
    let expired = sealed(
        &app,
        &RefreshClaims {
            issued_at: now() - 86_401,
            expires_at: now() - 1,
            ..claims.clone()
        },
    );
    for (token, why) in [
        (tampered.as_str(), "tampered"),
        (foreign.as_str(), "sealed under another master key"),
        (expired.as_str(), "expired"),
        (&rt[..rt.len() - 4], "cut"),
    ] {
        expect_error(
            refresh(&app, &dev, token).await,
            StatusCode::UNAUTHORIZED,
            "INVALID_REFRESH_TOKEN",
            why,
        )
        .await;
    }
    // Another device's key.
    expect_error(
        refresh(&app, &Device::new(), &rt).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_REFRESH_TOKEN",
        "another device",
    )
    .await;
    assert_eq!(
        app.store
            .get_refresh_family(&claims.family_id)
            .await
            .unwrap(),
        None,
        "no refusal touched the family"
    );

    // The genuine one refreshes; its family row appears at generation 1.
    let next = expect_json(refresh(&app, &dev, &rt).await, StatusCode::OK).await;
    let row = app
        .store
        .get_refresh_family(&claims.family_id)
        .await
        .unwrap()
        .expect("written at the first refresh");
    assert_eq!((row.generation, row.revoked_at), (1, None));
    let rt2 = next["refresh_token"].as_str().unwrap();
    assert_eq!(opened(&app, rt2).generation, 1);

    // Replayed after its family's first refresh: reuse, and the family is revoked.
    expect_error(
        refresh(&app, &dev, &rt).await,
        StatusCode::UNAUTHORIZED,
        "REFRESH_TOKEN_REUSED",
        "generation 0 presented again",
    )
    .await;
    expect_error(
        refresh(&app, &dev, rt2).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_REFRESH_TOKEN",
        "descendant",
    )
    .await;
}

/// Issue 15, item 3: a refresh grants what the key allows now, not at the exchange.
async fn refresh_follows_the_keys_current_scopes_audience_and_family_age(db: TestDb) {
    let app = spawn_app(&db).await;
    let (key, key_id) = new_key(&app, json!({"trust_on_enroll": true})).await;
    let dev = Device::new();
    let body = expect_json(exchange(&app, &key, &dev, json!({})).await, StatusCode::OK).await;
    assert_eq!(body["scope"], "read:users write:orders");
    let rt = body["refresh_token"].as_str().unwrap().to_owned();

    expect_json(
        app.admin_patch(
            &format!("/keys/{key_id}"),
            json!({"scopes": ["read:users"]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let body = expect_json(refresh(&app, &dev, &rt).await, StatusCode::OK).await;
    assert_eq!(body["scope"], "read:users", "write:orders is gone");
    let at = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(at["scope"], "read:users");
    // And it stays gone, even if the key gets it back: the family's scope only shrinks.
    let rt = body["refresh_token"].as_str().unwrap().to_owned();
    expect_json(
        app.admin_patch(
            &format!("/keys/{key_id}"),
            json!({"scopes": ["read:users", "write:orders"]}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let body = expect_json(refresh(&app, &dev, &rt).await, StatusCode::OK).await;
    assert_eq!(body["scope"], "read:users");
    let claims = opened(&app, body["refresh_token"].as_str().unwrap());

    // A family past its absolute age is refused, however recently it was refreshed.
    let max_age = app.state().settings.refresh_family_max_age_secs;
    let old = sealed(
        &app,
        &RefreshClaims {
            family_id: "rf_old".into(),
            generation: 0,
            family_created_at: now() - max_age - 1,
            issued_at: now() - 10,
            expires_at: now() + 3_600,
            ..claims.clone()
        },
    );
    expect_error(
        refresh(&app, &dev, &old).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_REFRESH_TOKEN",
        "family past --refresh-family-max-age",
    )
    .await;
    // An audience taken off the allowed list is refused.
    let gone = sealed(
        &app,
        &RefreshClaims {
            family_id: "rf_gone".into(),
            generation: 0,
            audience: "https://no-longer-allowed.example".into(),
            ..claims
        },
    );
    expect_error(
        refresh(&app, &dev, &gone).await,
        StatusCode::BAD_REQUEST,
        "INVALID_AUDIENCE",
        "audience no longer allowed",
    )
    .await;
}

on_both_backends!(
    the_first_token_is_stateless_and_unforgeable,
    refresh_follows_the_keys_current_scopes_audience_and_family_age,
    grace_answers_the_same_successor_to_the_same_key,
    grace_is_reuse_for_another_key,
    sign_out_revokes_one_family,
);

/// The family's expiry never passes its absolute age: the answer's `refresh_expires_in` says so.
#[tokio::test]
async fn the_family_age_caps_the_refresh_expiry() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| a.refresh_family_max_age = 600).await;
    let (key, _) = new_key(&app, json!({})).await;
    let body = expect_json(
        exchange(&app, &key, &Device::new(), json!({})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["refresh_expires_in"], 600);
}

async fn grace_app(db: &TestDb, seconds: u64) -> (TestApp, String) {
    let app = spawn_app_args(db, |a| a.refresh_reuse_grace_seconds = seconds).await;
    let (key, _) = new_key(&app, json!({"trust_on_enroll": true})).await;
    (app, key)
}

/// Contract 9.2: a lost answer retried by the same device gets the same successor; once that
/// successor is used, or the window has passed, the old token is reuse again.
async fn grace_answers_the_same_successor_to_the_same_key(db: TestDb) {
    let (app, key) = grace_app(&db, 30).await;
    let dev = Device::new();
    let rt1 = first_token(&app, &key, &dev).await;
    let a = expect_json(refresh(&app, &dev, &rt1).await, StatusCode::OK).await;
    let b = expect_json(refresh(&app, &dev, &rt1).await, StatusCode::OK).await;
    assert_eq!(a["refresh_token"], b["refresh_token"], "the same successor");
    assert_ne!(a["access_token"], b["access_token"], "a fresh access token");
    // Storage never holds the successor in the clear.
    let fam = opened(&app, &rt1).family_id;
    let row = app.store.get_refresh_family(&fam).await.unwrap().unwrap();
    let kept = row.grace_token.expect("sealed for the window");
    let rt2 = a["refresh_token"].as_str().unwrap();
    assert!(!String::from_utf8_lossy(&kept).contains(rt2));

    // Using the successor ends the grace of rt1.
    let c = expect_json(refresh(&app, &dev, rt2).await, StatusCode::OK).await;
    expect_error(
        refresh(&app, &dev, &rt1).await,
        StatusCode::UNAUTHORIZED,
        "REFRESH_TOKEN_REUSED",
        "rt1 after its successor was used",
    )
    .await;
    expect_error(
        refresh(&app, &dev, c["refresh_token"].as_str().unwrap()).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_REFRESH_TOKEN",
        "the family is revoked",
    )
    .await;

    // After the window: reuse.
    let (short, key) = grace_app(&db, 1).await;
    let rt1 = first_token(&short, &key, &dev).await;
    expect_json(refresh(&short, &dev, &rt1).await, StatusCode::OK).await;
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    expect_error(
        refresh(&short, &dev, &rt1).await,
        StatusCode::UNAUTHORIZED,
        "REFRESH_TOKEN_REUSED",
        "after the window",
    )
    .await;
}

/// Contract 9.2: within the window, the spent token in another key's hands is reuse.
async fn grace_is_reuse_for_another_key(db: TestDb) {
    let (app, key) = grace_app(&db, 30).await;
    let dev = Device::new();
    let rt1 = first_token(&app, &key, &dev).await;
    let a = expect_json(refresh(&app, &dev, &rt1).await, StatusCode::OK).await;
    expect_error(
        refresh(&app, &Device::new(), &rt1).await,
        StatusCode::UNAUTHORIZED,
        "REFRESH_TOKEN_REUSED",
        "another key within the window",
    )
    .await;
    expect_error(
        refresh(&app, &dev, a["refresh_token"].as_str().unwrap()).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_REFRESH_TOKEN",
        "the family was revoked",
    )
    .await;
    crate::alerts::wait_for_alert(&app, "REFRESH_TOKEN_REUSED").await;
}

/// Contract 9.3: sign-out revokes the token's family only, and only for its own device.
async fn sign_out_revokes_one_family(db: TestDb) {
    let app = spawn_app(&db).await;
    let (key, _) = new_key(&app, json!({"trust_on_enroll": true})).await;
    let dev = Device::new();
    let session = first_token(&app, &key, &dev).await;
    let other_session = first_token(&app, &key, &dev).await;
    let refreshed = expect_json(refresh(&app, &dev, &other_session).await, StatusCode::OK).await;
    let other_session = refreshed["refresh_token"].as_str().unwrap().to_owned();

    // A proof by another key: 200, nothing revoked.
    let res = revoke(&app, &Device::new(), &session).await;
    assert_eq!(expect_json(res, StatusCode::OK).await, json!({}));
    // Unknown and malformed tokens: 200 as well.
    for t in ["rt_unknown", "not a token"] {
        assert_eq!(
            expect_json(revoke(&app, &dev, t).await, StatusCode::OK).await,
            json!({}),
            "{t}"
        );
    }
    // The real sign-out (never refreshed: the family's first token).
    let res = revoke(&app, &dev, &session).await;
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(expect_json(res, StatusCode::OK).await, json!({}));
    expect_error(
        refresh(&app, &dev, &session).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_REFRESH_TOKEN",
        "signed out",
    )
    .await;
    // Twice is fine (RFC 7009: an invalid token is not an error).
    assert_eq!(
        expect_json(revoke(&app, &dev, &session).await, StatusCode::OK).await,
        json!({})
    );
    // The device's other session lives on, and signs out the same way (a refreshed family).
    let live = expect_json(refresh(&app, &dev, &other_session).await, StatusCode::OK).await;
    let live = live["refresh_token"].as_str().unwrap().to_owned();
    let res = app
        .client
        .post(app.url("/v1/token/revoke"))
        .header("DPoP", dev.proof("POST", &app.url("/v1/token/revoke")))
        .json(&json!({"token": live}))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_json(res, StatusCode::OK).await, json!({}));
    expect_error(
        refresh(&app, &dev, &live).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_REFRESH_TOKEN",
        "signed out by a JSON request",
    )
    .await;
    // The revocation feed names both families.
    let feed = app
        .client
        .get(app.url("/v1/revocations"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let families = claims_of(&feed)["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "refresh_family")
        .count();
    assert_eq!(families, 2);
}

#[tokio::test]
async fn sign_out_refusals_use_the_envelope_for_form_bodies_too() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::new();
    let rt = first_token(&app, &key, &dev).await;
    let url = app.url("/v1/token/revoke");

    let no_proof = app.client.post(&url).form(&[("token", rt.as_str())]);
    let wrong_htu = app
        .client
        .post(&url)
        .header("DPoP", dev.proof("POST", &app.url("/v1/token/refresh")))
        .form(&[("token", rt.as_str())]);
    let no_token = app
        .client
        .post(&url)
        .header("DPoP", dev.proof("POST", &url))
        .form(&[("token_type_hint", "refresh_token")]);
    let twice = app
        .client
        .post(&url)
        .header("DPoP", dev.proof("POST", &url))
        .form(&[("token", rt.as_str()), ("token", rt.as_str())]);
    let text = app
        .client
        .post(&url)
        .header("DPoP", dev.proof("POST", &url))
        .header("content-type", "text/plain")
        .body(format!("token={rt}"));
    for (req, status, code, why) in [
        (
            no_proof,
            StatusCode::UNAUTHORIZED,
            "INVALID_DPOP_PROOF",
            "no proof",
        ),
        (
            wrong_htu,
            StatusCode::UNAUTHORIZED,
            "INVALID_DPOP_PROOF",
            "refresh htu",
        ),
        (
            no_token,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "no token",
        ),
        (
            twice,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            "token twice",
        ),
        (
            text,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "text/plain",
        ),
    ] {
        expect_error(req.send().await.unwrap(), status, code, why).await;
    }
    // Nothing was revoked by any of them.
    expect_json(refresh(&app, &dev, &rt).await, StatusCode::OK).await;
}

/// Issue 15, item 7: a proof by the wrong key is refused before the replay store sees it, so
/// the owner can still use that very proof; the device's refresh rate is limited.
#[tokio::test]
async fn refresh_checks_the_token_before_the_replay_store_and_limits_each_device() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| a.refresh_rate_per_device = 3).await;
    let (key, _) = new_key(&app, json!({"trust_on_enroll": true})).await;
    let (owner, thief) = (Device::new(), Device::new());
    let theirs = first_token(&app, &key, &thief).await;
    let mut rt = first_token(&app, &key, &owner).await;
    let proof = owner.proof("POST", &app.url("/v1/token/refresh"));
    let send = |token: String, proof: String| {
        app.client
            .post(app.url("/v1/token/refresh"))
            .header("DPoP", proof)
            .json(&json!({"refresh_token": token}))
            .send()
    };
    for why in ["a token of another device", "the same again"] {
        expect_error(
            send(theirs.clone(), proof.clone()).await.unwrap(),
            StatusCode::UNAUTHORIZED,
            "INVALID_REFRESH_TOKEN",
            why,
        )
        .await;
    }
    for why in ["garbage", "unknown"] {
        let token = if why == "garbage" {
            "x".to_owned()
        } else {
            format!("rt_{}", "A".repeat(120))
        };
        expect_error(
            send(token, proof.clone()).await.unwrap(),
            StatusCode::UNAUTHORIZED,
            "INVALID_REFRESH_TOKEN",
            why,
        )
        .await;
    }
    // The proof was never stored: its owner uses it now, once.
    let body = expect_json(
        send(rt.clone(), proof.clone()).await.unwrap(),
        StatusCode::OK,
    )
    .await;
    let next = body["refresh_token"].as_str().unwrap().to_owned();
    expect_error(
        send(next.clone(), proof).await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "DPOP_REPLAY",
        "now it is a replay",
    )
    .await;
    // Its alert names the key sealed in the refresh token.
    let alert = crate::alerts::wait_for_alert(&app, "DPOP_REPLAY").await;
    let parsed = keybound::keys::ApiKey::parse(&key).unwrap();
    assert_eq!(alert["key_id"], parsed.id().as_str(), "{alert}");
    rt = next;
    // Rate: 3 a minute for this device (one spent above, the replay refused before it).
    for _ in 0..2 {
        let body = expect_json(refresh(&app, &owner, &rt).await, StatusCode::OK).await;
        rt = body["refresh_token"].as_str().unwrap().to_owned();
    }
    let res = refresh(&app, &owner, &rt).await;
    assert!(res.headers().contains_key("retry-after"));
    expect_error(
        res,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "4th in a minute",
    )
    .await;
    // The refused refresh spent nothing: another device is not limited by it.
    let theirs = expect_json(refresh(&app, &thief, &theirs).await, StatusCode::OK).await;
    assert!(theirs["refresh_token"].is_string());
}

/// Issue 15, item 7: nonce challenges spend a per-IP budget of their own.
#[tokio::test]
async fn nonce_challenges_spend_their_own_budget() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |a| {
        a.require_dpop_nonce = true;
        a.nonce_challenge_budget = 3;
    })
    .await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::new();
    for i in 0..3 {
        expect_error(
            exchange(&app, &key, &dev, json!({})).await,
            StatusCode::BAD_REQUEST,
            "USE_DPOP_NONCE",
            &format!("challenge {i}"),
        )
        .await;
    }
    let res = exchange(&app, &key, &dev, json!({})).await;
    assert!(res.headers().contains_key("retry-after"));
    expect_error(
        res,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "4th challenge",
    )
    .await;
}

/// A shape check that does not depend on the database: issued tokens match the redaction
/// and well-formedness shapes.
#[tokio::test]
async fn issued_tokens_have_the_recognisable_shape() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, _) = new_key(&app, json!({})).await;
    let rt = first_token(&app, &key, &Device::new()).await;
    assert!(keybound::tokens::is_well_formed_refresh_token(&rt), "{rt}");
    let line = format!("token={rt} end");
    let masked = keybound::telemetry::redact::redact(line.as_bytes());
    assert_eq!(&*masked, b"token=rt_[REDACTED] end".as_slice());
    let _: Value = json!({});
}

/// Issue 18: device history is off the answer path, in storage within a second without anyone
/// asking, and written at a graceful shutdown.
#[tokio::test]
async fn device_history_is_flushed_within_a_second_and_at_shutdown() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let dev = Device::new();
    let count = |store: std::sync::Arc<dyn keybound::store::Store>, key_id: String| async move {
        let devices = store.list_devices(&key_id).await.unwrap();
        devices.first().map_or(0, |d| d.exchange_count)
    };
    for _ in 0..3 {
        expect_json(exchange(&app, &key, &dev, json!({})).await, StatusCode::OK).await;
    }
    let started = std::time::Instant::now();
    while count(app.store.clone(), key_id.clone()).await != 3 {
        assert!(
            started.elapsed() < std::time::Duration::from_millis(1_500),
            "history not written within a second"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for _ in 0..2 {
        expect_json(exchange(&app, &key, &dev, json!({})).await, StatusCode::OK).await;
    }
    let store = app.store.clone();
    app.stop().await;
    assert_eq!(
        count(store, key_id).await,
        5,
        "written at the graceful stop"
    );
}
