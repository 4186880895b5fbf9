//! `POST /v1/token` and `POST /v1/token/refresh` (contract 3.1, 3.2, 4, 6): the happy path
//! and every refusal this issue owns, each failing with its exact code.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestDb, expect_error, expect_json, spawn_app, spawn_app_args};
use crate::on_both_backends;
use crate::proofs::{Device, Kind, claims};

/// Creates a key (`body` merged over sensible defaults) and returns (plaintext, key id).
pub async fn new_key(app: &TestApp, extra: Value) -> (String, String) {
    let mut body = json!({"name": "app", "scopes": ["read:users", "write:orders"], "env": "test"});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let created = app.create_key(body).await;
    (
        created["key"].as_str().unwrap().to_owned(),
        created["key_id"].as_str().unwrap().to_owned(),
    )
}

pub async fn exchange(app: &TestApp, key: &str, dev: &Device, body: Value) -> reqwest::Response {
    exchange_with_proof(app, key, &dev.proof("POST", &app.url("/v1/token")), body).await
}

pub async fn exchange_with_proof(
    app: &TestApp,
    key: &str,
    proof: &str,
    body: Value,
) -> reqwest::Response {
    app.client
        .post(app.url("/v1/token"))
        .header("X-API-Key", key)
        .header("DPoP", proof)
        .json(&body)
        .send()
        .await
        .expect("request")
}

pub async fn refresh(app: &TestApp, dev: &Device, token: &str) -> reqwest::Response {
    app.client
        .post(app.url("/v1/token/refresh"))
        .header("DPoP", dev.proof("POST", &app.url("/v1/token/refresh")))
        .json(&json!({"refresh_token": token}))
        .send()
        .await
        .expect("request")
}

pub fn ios(install_id: &str) -> Value {
    json!({"name": "Taro's iPhone", "attributes": {"platform": "ios", "model": "iPhone15,2",
           "os_version": "17.1", "app_version": "2.3.0", "install_id": install_id,
           "locale": "ja-JP", "timezone": "Asia/Tokyo"}})
}

/// Verifies `token` with an independent JOSE implementation (jsonwebtoken), using nothing but
/// the server's JWKS; returns its header and claims. Panics when it does not verify.
pub async fn verify_with_jwks(
    app: &TestApp,
    token: &str,
    validation: &jsonwebtoken::Validation,
) -> (jsonwebtoken::Header, Value) {
    let jwks: jsonwebtoken::jwk::JwkSet = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("kid in JWKS");
    let data = jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap(),
        validation,
    )
    .expect("the token verifies offline with jsonwebtoken");
    (header, data.claims)
}

/// Decodes a JWT's claims without verifying (tests verify separately with jsonwebtoken).
pub fn claims_of(jwt: &str) -> Value {
    use base64::Engine;
    let part = jwt.split('.').nth(1).expect("three parts");
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap(),
    )
    .unwrap()
}

async fn full_exchange_issues_a_bound_token(db: TestDb) {
    let app = spawn_app(&db).await;
    let (key, key_id) = new_key(&app, json!({"trust_on_enroll": true})).await;
    let dev = Device::new();

    let res = exchange(&app, &key, &dev, json!({"device": ios("i-1")})).await;
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body = expect_json(res, StatusCode::OK).await;

    assert_eq!(body["token_type"], "DPoP");
    assert_eq!(body["expires_in"], 300);
    assert_eq!(body["scope"], "read:users write:orders");
    assert_eq!(body["trust"]["level"], "trusted");
    assert!(body["refresh_token"].as_str().unwrap().starts_with("rt_"));
    assert_eq!(body["refresh_expires_in"], 86_400);
    let token = body["access_token"].as_str().unwrap();

    // Verify with an independent JOSE implementation, using nothing but the JWKS.
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.set_audience(&[app.url("")]);
    validation.set_issuer(&[app.url("")]);
    let (header, c) = verify_with_jwks(&app, token, &validation).await;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(c["sub"], key_id);
    assert_eq!(c["client_id"], key_id);
    assert_eq!(c["cnf"]["jkt"], dev.jkt);
    assert_eq!(c["did"], body["device_id"]);
    assert_eq!(c["trust"], "trusted");
    assert_eq!(c["scope"], "read:users write:orders");
    assert_eq!(c["nbf"], c["iat"]);
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 300);
    assert!(c["jti"].as_str().unwrap().len() >= 22, "at least 128 bits");

    // A second exchange by the same device is recognised (same device id), new jti.
    let again = expect_json(
        exchange(&app, &key, &dev, json!({"device": ios("i-1")})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(again["device_id"], body["device_id"]);
    assert_ne!(
        claims_of(again["access_token"].as_str().unwrap())["jti"],
        c["jti"]
    );
}

async fn refresh_rotates_and_reuse_revokes_the_family(db: TestDb) {
    let app = spawn_app(&db).await;
    let (key, _) = new_key(&app, json!({"trust_on_enroll": true})).await;
    let dev = Device::new();
    let first = expect_json(exchange(&app, &key, &dev, json!({})).await, StatusCode::OK).await;
    let rt1 = first["refresh_token"].as_str().unwrap();

    let second = expect_json(refresh(&app, &dev, rt1).await, StatusCode::OK).await;
    let rt2 = second["refresh_token"].as_str().unwrap();
    assert_ne!(rt1, rt2, "rotated");
    assert_eq!(second["device_id"], first["device_id"]);

    // rt1 is spent: presenting it again is reuse, and burns the whole family.
    expect_error(
        refresh(&app, &dev, rt1).await,
        StatusCode::UNAUTHORIZED,
        "REFRESH_TOKEN_REUSED",
        "reuse",
    )
    .await;
    expect_error(
        refresh(&app, &dev, rt2).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_REFRESH_TOKEN",
        "descendant of a reused token",
    )
    .await;
    crate::alerts::wait_for_alert(&app, "REFRESH_TOKEN_REUSED").await;

    // The family shows up in the revocation feed.
    let feed = app
        .client
        .get(app.url("/v1/revocations"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let entries = claims_of(&feed)["revocations"].clone();
    assert!(
        entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "refresh_family"),
        "{entries}"
    );
}

on_both_backends!(
    full_exchange_issues_a_bound_token,
    refresh_rotates_and_reuse_revokes_the_family
);

#[tokio::test]
async fn api_key_failures_have_one_code() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let dev = Device::new();

    let res = app
        .client
        .post(app.url("/v1/token"))
        .header("DPoP", dev.proof("POST", &app.url("/v1/token")))
        .send()
        .await
        .unwrap();
    expect_error(res, StatusCode::UNAUTHORIZED, "MISSING_API_KEY", "no key").await;

    let mut typo = key.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    // Same id, new secret, valid checksum: an attacker who knows the id.
    let forged = forge_same_id(&key);
    let unknown = keybound::keys::ApiKey::generate(keybound::keys::KeyEnv::Test);
    for (presented, why) in [
        ("garbage".to_owned(), "malformed"),
        (typo, "bad checksum"),
        (forged, "wrong secret for a known id"),
        (unknown.expose().to_owned(), "unknown id"),
    ] {
        let res = exchange(&app, &presented, &dev, json!({})).await;
        expect_error(res, StatusCode::UNAUTHORIZED, "INVALID_API_KEY", why).await;
    }

    // Authorization: Bearer works like X-API-Key.
    let res = app
        .client
        .post(app.url("/v1/token"))
        .bearer_auth(&key)
        .header("DPoP", dev.proof("POST", &app.url("/v1/token")))
        .send()
        .await
        .unwrap();
    expect_json(res, StatusCode::OK).await;

    // Suspended, then revoked.
    expect_json(
        app.admin_post(&format!("/keys/{key_id}/suspend"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    expect_error(
        exchange(&app, &key, &dev, json!({})).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
        "suspended",
    )
    .await;
    expect_json(
        app.admin_post(&format!("/keys/{key_id}/resume"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    expect_json(exchange(&app, &key, &dev, json!({})).await, StatusCode::OK).await;
    expect_json(
        app.admin_post(&format!("/keys/{key_id}/revoke"), json!({"reason": "test"}))
            .await,
        StatusCode::OK,
    )
    .await;
    expect_error(
        exchange(&app, &key, &dev, json!({})).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
        "revoked",
    )
    .await;
}

/// The key's id with a different secret and a correct checksum.
pub fn forge_same_id(key: &str) -> String {
    let prefix_len = "sk_test_".len() + 12;
    let body: String = std::iter::repeat_n('Q', 43).collect();
    let head = format!("{}{}", &key[..prefix_len], body);
    format!(
        "{head}{}",
        keybound::keys::format::checksum(head.as_bytes())
    )
}

#[tokio::test]
async fn every_bad_proof_is_refused_with_invalid_dpop_proof() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::new();
    let other = Device::new();
    let htu = app.url("/v1/token");
    let now = keybound::clock::now();
    let hdr = |alg: &str, typ: &str| json!({"alg": alg, "typ": typ, "jwk": dev.jwk});
    let hmac = {
        use base64::Engine;
        use hmac::Mac;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let input = format!(
            "{}.{}",
            b64.encode(serde_json::to_vec(&hdr("HS256", "dpop+jwt")).unwrap()),
            b64.encode(serde_json::to_vec(&claims("POST", &htu)).unwrap())
        );
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(dev.jwk["x"].as_str().unwrap().as_bytes())
                .unwrap();
        mac.update(input.as_bytes());
        format!("{input}.{}", b64.encode(mac.finalize().into_bytes()))
    };
    let none = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(serde_json::to_vec(&hdr("none", "dpop+jwt")).unwrap()),
            b64.encode(serde_json::to_vec(&claims("POST", &htu)).unwrap())
        )
    };
    let mut with_d = dev.jwk.clone();
    with_d["d"] = json!(dev.private_d());
    let cases: Vec<(String, &str)> = vec![
        ("not-a-jwt".into(), "garbage"),
        (
            dev.raw_jws(&hdr("EdDSA", "JWT"), &claims("POST", &htu)),
            "typ JWT",
        ),
        (none, "alg none"),
        (hmac, "HS256 keyed with the public key"),
        (
            dev.raw_jws(
                &json!({"alg": "EdDSA", "typ": "dpop+jwt", "jwk": with_d}),
                &claims("POST", &htu),
            ),
            "private key in jwk",
        ),
        (
            dev.raw_jws(
                &json!({"alg": "EdDSA", "typ": "dpop+jwt", "jwk": other.jwk}),
                &claims("POST", &htu),
            ),
            "signed by another key than its jwk",
        ),
        (dev.proof("GET", &htu), "wrong htm"),
        (
            dev.proof("POST", &app.url("/v1/token/refresh")),
            "wrong htu",
        ),
        (
            dev.proof("POST", "https://evil.example/v1/token"),
            "htu on another host",
        ),
        (
            dev.proof_claims(json!({"jti": "a", "htm": "POST", "htu": htu, "iat": now - 3600})),
            "stale iat",
        ),
        (
            dev.proof_claims(json!({"jti": "b", "htm": "POST", "htu": htu, "iat": now + 3600})),
            "future iat",
        ),
        (
            dev.proof_claims(json!({"htm": "POST", "htu": htu, "iat": now})),
            "missing jti",
        ),
    ];
    for (proof, why) in cases {
        let res = exchange_with_proof(&app, &key, &proof, json!({})).await;
        expect_error(res, StatusCode::UNAUTHORIZED, "INVALID_DPOP_PROOF", why).await;
    }
    let res = app
        .client
        .post(app.url("/v1/token"))
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    expect_error(
        res,
        StatusCode::UNAUTHORIZED,
        "INVALID_DPOP_PROOF",
        "no proof",
    )
    .await;

    // ES256 proofs built by jsonwebtoken are accepted.
    let p256 = Device::of(Kind::P256);
    let body = expect_json(exchange(&app, &key, &p256, json!({})).await, StatusCode::OK).await;
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["cnf"]["jkt"],
        p256.jkt
    );
}

#[tokio::test]
async fn a_replayed_proof_is_refused() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::new();
    let proof = dev.proof("POST", &app.url("/v1/token"));
    expect_json(
        exchange_with_proof(&app, &key, &proof, json!({})).await,
        StatusCode::OK,
    )
    .await;
    expect_error(
        exchange_with_proof(&app, &key, &proof, json!({})).await,
        StatusCode::UNAUTHORIZED,
        "DPOP_REPLAY",
        "same proof twice",
    )
    .await;
    crate::alerts::wait_for_alert(&app, "DPOP_REPLAY").await;
}

#[tokio::test]
async fn a_proof_replayed_on_another_instance_sharing_redis_is_refused() {
    let Some(redis) = crate::helpers::redis_test_url() else {
        return;
    };
    let db = TestDb::sqlite().await;
    let mut master = None;
    let a = spawn_app_args(&db, |args| {
        args.redis_url = Some(redis.clone().into());
        master = args.master_key.clone();
    })
    .await;
    // The second instance shares the database, the master key and the issuer (a load
    // balancer's name in production): a proof for one is a proof for the other.
    let issuer = a.url("");
    let b = spawn_app_args(&db, |args| {
        args.redis_url = Some(redis.clone().into());
        args.issuer = Some(issuer.clone());
        args.master_key = master.clone();
    })
    .await;
    let (key, _) = new_key(&a, json!({})).await;
    let dev = Device::new();
    let proof = dev.proof("POST", &a.url("/v1/token"));
    expect_json(
        exchange_with_proof(&a, &key, &proof, json!({})).await,
        StatusCode::OK,
    )
    .await;
    let res = b
        .client
        .post(b.url("/v1/token"))
        .header("X-API-Key", &key)
        .header("DPoP", &proof)
        .send()
        .await
        .unwrap();
    expect_error(
        res,
        StatusCode::UNAUTHORIZED,
        "DPOP_REPLAY",
        "replayed on instance b",
    )
    .await;
}

#[tokio::test]
async fn scopes_audiences_and_limited_devices() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |args| {
        args.audiences = vec!["https://api.example.com".into(), "https://b.example".into()]
    })
    .await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::new();

    expect_error(
        exchange(&app, &key, &dev, json!({"scope": "read:users admin:all"})).await,
        StatusCode::FORBIDDEN,
        "INSUFFICIENT_SCOPE",
        "scope escalation",
    )
    .await;
    expect_error(
        exchange(
            &app,
            &key,
            &dev,
            json!({"audience": "https://evil.example"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "INVALID_AUDIENCE",
        "audience outside the list",
    )
    .await;

    // A new device without trust_on_enroll is limited: write scopes cut, TTL at most 60 s.
    let body = expect_json(
        exchange(
            &app,
            &key,
            &dev,
            json!({"audience": "https://b.example", "device": ios("x")}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["trust"]["level"], "limited");
    assert_eq!(
        body["scope"], "read:users",
        "write:orders is cut for a limited device"
    );
    assert!(body["expires_in"].as_u64().unwrap() <= 60);
    let c = claims_of(body["access_token"].as_str().unwrap());
    assert_eq!(c["aud"], "https://b.example");
    assert_eq!(c["trust"], "limited");
    assert_eq!(c["scope"], "read:users");
    // The default audience is the first configured one.
    let body = expect_json(exchange(&app, &key, &dev, json!({})).await, StatusCode::OK).await;
    assert_eq!(
        claims_of(body["access_token"].as_str().unwrap())["aud"],
        "https://api.example.com"
    );
}

/// A reinstall that kept the device key in the keychain presents a new `install_id` at every
/// exchange. Counted once, it stays `limited` (as documented); counted every time, the penalty
/// for earlier mismatches took it to `DEVICE_UNTRUSTED` by the third exchange, with an alert
/// each time (lab P).
#[tokio::test]
async fn a_reinstall_that_kept_the_device_key_stays_limited_and_alerts_once() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let phone = Device::new();
    expect_json(
        exchange(&app, &key, &phone, json!({"device": ios("i-1")})).await,
        StatusCode::OK,
    )
    .await;
    for i in 0..6 {
        let body = expect_json(
            exchange(&app, &key, &phone, json!({"device": ios("i-2")})).await,
            StatusCode::OK,
        )
        .await;
        assert_eq!(body["trust"]["level"], "limited", "exchange {i}: {body}");
    }
    // A third install_id is news again; once its alert is stored, every earlier one is too
    // (alerts are written in order).
    expect_json(
        exchange(&app, &key, &phone, json!({"device": ios("i-3")})).await,
        StatusCode::OK,
    )
    .await;
    let path = format!("/alerts?kind=FINGERPRINT_MISMATCH&key_id={key_id}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let alerts = loop {
        let body = expect_json(app.admin_get(&path).await, StatusCode::OK).await;
        let alerts = body["alerts"].as_array().unwrap().clone();
        if alerts.len() >= 2 || std::time::Instant::now() > deadline {
            break alerts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        alerts.len(),
        2,
        "one alert per new fingerprint: {alerts:#?}"
    );
    let devices = expect_json(
        app.admin_get(&format!("/keys/{key_id}/devices")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(devices["devices"][0]["mismatch_count"], 2, "{devices}");
    assert_eq!(
        devices["devices"][0]["attributes"]["install_id"], "i-1",
        "the recorded fingerprint stays the reference"
    );
    assert!(
        devices["devices"][0].get("mismatch_fingerprint").is_none(),
        "internal"
    );
}

#[tokio::test]
async fn devices_limit_revoke_approve_and_fingerprint_mismatch() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, key_id) = new_key(&app, json!({"max_devices": 1})).await;
    let phone = Device::new();
    let body = expect_json(
        exchange(&app, &key, &phone, json!({"device": ios("i-1")})).await,
        StatusCode::OK,
    )
    .await;
    let device_id = body["device_id"].as_str().unwrap().to_owned();
    crate::alerts::wait_for_alert(&app, "NEW_DEVICE").await;

    expect_error(
        exchange(&app, &key, &Device::new(), json!({})).await,
        StatusCode::FORBIDDEN,
        "DEVICE_LIMIT_REACHED",
        "second device over max_devices=1",
    )
    .await;

    // Approval makes the device trusted (full scopes).
    expect_json(
        app.admin_post(&format!("/devices/{device_id}/approve"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    let body = expect_json(
        exchange(&app, &key, &phone, json!({"device": ios("i-1")})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(body["trust"]["level"], "trusted");
    assert_eq!(body["scope"], "read:users write:orders");

    // Same key pair, different stable attributes: no longer trusted, and an alert.
    let mut cloned = ios("someone-elses-install");
    cloned["attributes"]["model"] = json!("Pixel 8");
    cloned["attributes"]["platform"] = json!("android");
    let res = exchange(&app, &key, &phone, json!({"device": cloned})).await;
    let status = res.status();
    let text = res.text().await.unwrap();
    assert!(
        status == StatusCode::FORBIDDEN
            || serde_json::from_str::<Value>(&text).unwrap()["trust"]["level"] == "limited",
        "a fingerprint mismatch must drop below trusted: {status} {text}"
    );
    if status == StatusCode::FORBIDDEN {
        assert!(text.contains("DEVICE_UNTRUSTED"), "{text}");
    }
    crate::alerts::wait_for_alert(&app, "FINGERPRINT_MISMATCH").await;

    // Revocation: refused at once, with its own code, and announced in the feed.
    let rt = body["refresh_token"].as_str().unwrap().to_owned();
    expect_json(
        app.admin_post(&format!("/devices/{device_id}/revoke"), json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    expect_error(
        exchange(&app, &key, &phone, json!({"device": ios("i-1")})).await,
        StatusCode::FORBIDDEN,
        "DEVICE_REVOKED",
        "revoked device",
    )
    .await;
    expect_error(
        refresh(&app, &phone, &rt).await,
        StatusCode::FORBIDDEN,
        "DEVICE_REVOKED",
        "refresh by a revoked device",
    )
    .await;
    let feed = app
        .client
        .get(app.url("/v1/revocations"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let c = claims_of(&feed);
    assert!(
        c["revocations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "device" && e["id"] == phone.jkt.as_str()),
        "{c}"
    );
    let _ = key_id;
}

#[tokio::test]
async fn refresh_needs_the_same_device_key_and_a_live_key() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let dev = Device::new();
    let body = expect_json(exchange(&app, &key, &dev, json!({})).await, StatusCode::OK).await;
    let rt = body["refresh_token"].as_str().unwrap().to_owned();

    expect_error(
        refresh(&app, &Device::new(), &rt).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_REFRESH_TOKEN",
        "another device key",
    )
    .await;
    expect_error(
        refresh(&app, &dev, "rt_unknown").await,
        StatusCode::UNAUTHORIZED,
        "INVALID_REFRESH_TOKEN",
        "unknown token",
    )
    .await;
    // The thief's attempt did not burn the owner's token.
    let body = expect_json(refresh(&app, &dev, &rt).await, StatusCode::OK).await;
    let rt = body["refresh_token"].as_str().unwrap().to_owned();

    expect_json(
        app.admin_post(&format!("/keys/{key_id}/revoke"), json!({"reason": "test"}))
            .await,
        StatusCode::OK,
    )
    .await;
    expect_error(
        refresh(&app, &dev, &rt).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
        "key revoked",
    )
    .await;
}

#[tokio::test]
async fn nonces_are_demanded_and_handed_out() {
    let db = TestDb::sqlite().await;
    let app = spawn_app_args(&db, |args| args.require_dpop_nonce = true).await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::new();
    let res = exchange(&app, &key, &dev, json!({})).await;
    let nonce = res
        .headers()
        .get("dpop-nonce")
        .expect("DPoP-Nonce header")
        .to_str()
        .unwrap()
        .to_owned();
    expect_error(res, StatusCode::BAD_REQUEST, "USE_DPOP_NONCE", "no nonce").await;

    let htu = app.url("/v1/token");
    let res = exchange_with_proof(
        &app,
        &key,
        &dev.proof_with_nonce("POST", &htu, "forged-nonce"),
        json!({}),
    )
    .await;
    expect_error(
        res,
        StatusCode::BAD_REQUEST,
        "USE_DPOP_NONCE",
        "forged nonce",
    )
    .await;

    let res = exchange_with_proof(
        &app,
        &key,
        &dev.proof_with_nonce("POST", &htu, &nonce),
        json!({}),
    )
    .await;
    assert!(
        res.headers().contains_key("dpop-nonce"),
        "successes carry the next nonce"
    );
    let body = expect_json(res, StatusCode::OK).await;

    let rt = body["refresh_token"].as_str().unwrap();
    let res = refresh(&app, &dev, rt).await;
    expect_error(
        res,
        StatusCode::BAD_REQUEST,
        "USE_DPOP_NONCE",
        "refresh demands a nonce too",
    )
    .await;
}

#[tokio::test]
async fn keys_in_urls_are_refused_and_flagged() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let res = app
        .client
        .post(app.url(&format!("/v1/token?api_key={key}")))
        .send()
        .await
        .unwrap();
    expect_error(
        res,
        StatusCode::BAD_REQUEST,
        "API_KEY_IN_URL",
        "key in query",
    )
    .await;
    let alert = crate::alerts::wait_for_alert(&app, "KEY_IN_URL").await;
    assert_eq!(alert["key_id"], key_id);
    assert!(
        !alert.to_string().contains(&key),
        "the alert never holds the key"
    );
}

#[tokio::test]
async fn a_key_may_burst_its_minute_then_gets_429() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, _) = new_key(&app, json!({"rate_limit_per_minute": 5})).await;
    let dev = Device::new();
    for i in 0..5 {
        let res = exchange(&app, &key, &dev, json!({})).await;
        assert_eq!(res.status(), StatusCode::OK, "request {i}");
    }
    let res = exchange(&app, &key, &dev, json!({})).await;
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=12).contains(&retry), "Retry-After {retry}");
    expect_error(
        res,
        StatusCode::TOO_MANY_REQUESTS,
        "RATE_LIMITED",
        "6th over 5/min",
    )
    .await;
}

#[tokio::test]
async fn bad_bodies_are_refused_before_anything_is_issued() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::new();
    let many: serde_json::Map<String, Value> =
        (0..33).map(|i| (format!("a{i}"), json!("v"))).collect();
    for (body, why) in [
        (json!({"scope": 5}), "wrong type"),
        (json!({"device": {"attributes": many}}), "33 attributes"),
        (
            json!({"device": {"attributes": {"k": "v".repeat(257)}}}),
            "value too long",
        ),
        (
            json!({"device": {"attributes": {"k".repeat(65): "v"}}}),
            "name too long",
        ),
        (
            json!({"device": {"attributes": {"nested": {"a": 1}}}}),
            "not flat",
        ),
    ] {
        expect_error(
            exchange(&app, &key, &dev, body).await,
            StatusCode::BAD_REQUEST,
            "INVALID_REQUEST",
            why,
        )
        .await;
    }
    // An empty body is `{}`.
    let res = app
        .client
        .post(app.url("/v1/token"))
        .header("X-API-Key", &key)
        .header("DPoP", dev.proof("POST", &app.url("/v1/token")))
        .send()
        .await
        .unwrap();
    expect_json(res, StatusCode::OK).await;
}

#[tokio::test]
async fn discovery_documents() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let res = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert!(
        res.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    let jwks = expect_json(res, StatusCode::OK).await;
    let k = &jwks["keys"][0];
    assert_eq!(
        (
            k["kty"].as_str(),
            k["crv"].as_str(),
            k["use"].as_str(),
            k["alg"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("sig"), Some("EdDSA"))
    );
    assert!(k.get("d").is_none(), "no private member");
    let meta = expect_json(
        app.client
            .get(app.url("/.well-known/oauth-authorization-server"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(meta["issuer"], app.url(""));
    assert_eq!(meta["token_endpoint"], app.url("/v1/token"));
    assert_eq!(meta["jwks_uri"], app.url("/.well-known/jwks.json"));
    assert_eq!(
        meta["dpop_signing_alg_values_supported"],
        json!(["EdDSA", "Ed25519", "ES256"])
    );
}

#[tokio::test]
async fn a_reported_leak_suspends_the_key_and_answers_the_same_either_way() {
    let db = TestDb::sqlite().await;
    let app = spawn_app(&db).await;
    let (key, key_id) = new_key(&app, json!({})).await;
    let fake = keybound::keys::ApiKey::generate(keybound::keys::KeyEnv::Test);
    let mut answers = vec![];
    for k in [fake.expose(), "nonsense", key.as_str()] {
        let res = app
            .client
            .post(app.url("/v1/leaks"))
            .json(&json!({"key": k, "source": "https://github.com/x/y"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        answers.push(res.text().await.unwrap());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    assert_eq!(app.get_key(&key_id).await["status"], "suspended");
    crate::alerts::wait_for_alert(&app, "KEY_LEAKED").await;
    expect_error(
        exchange(&app, &key, &Device::new(), json!({})).await,
        StatusCode::UNAUTHORIZED,
        "INVALID_API_KEY",
        "leaked key",
    )
    .await;
}
