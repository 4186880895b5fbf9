//! Platform attestation through the server (contract section 8): the challenge endpoint, each
//! format under each key policy, checks failing end to end with `INVALID_ATTESTATION` and an
//! `ATTESTATION_FAILED` alert, challenge reuse and expiry (also across instances), and
//! `required` on exchange and refresh. Attestations are generated under a test root given as
//! `--attestation-root` (the verifier's unit tests cover each check and the real vectors).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use reqwest::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use crate::attestation_gen::{
    self as generated, AndroidOpts, AppleOpts, TEST_APP_ID, TEST_PACKAGE, TEST_SIGNING_CERT_SHA256,
    TestRoot,
};
use crate::helpers::{TestApp, TestDb, cli, expect_error, expect_json, now, spawn_app_args};
use crate::on_both_backends;
use crate::proofs::{Device, Kind};
use crate::token::{exchange, ios, new_key, refresh};

on_both_backends!(
    the_challenge_endpoint_and_metadata,
    each_format_under_each_policy,
    failed_checks_answer_invalid_attestation_with_an_alert,
    a_challenge_is_single_use_and_expires,
    required_refuses_unattested_devices_on_exchange_and_refresh,
    an_attested_device_is_never_denied_but_still_scored,
    the_policy_in_the_admin_api_and_the_cli,
);

/// A server that trusts `root` for both formats and accepts the generators' app.
pub async fn attested_app(db: &TestDb, root: &TestRoot) -> TestApp {
    attested_app_with(db, root, |_| {}).await
}

pub async fn attested_app_with(
    db: &TestDb,
    root: &TestRoot,
    configure: impl FnOnce(&mut keybound::config::ServeArgs),
) -> TestApp {
    let path = db
        .dir
        .path()
        .join(format!("root-{}.pem", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, root.root_pem()).unwrap();
    spawn_app_args(db, |a| {
        a.attestation_roots = vec![path];
        a.apple_app_ids = vec![TEST_APP_ID.into()];
        a.android_packages = vec![TEST_PACKAGE.into()];
        a.android_signing_cert_sha256 = vec![TEST_SIGNING_CERT_SHA256];
        configure(a);
    })
    .await
}

pub async fn challenge(app: &TestApp) -> String {
    let res = app
        .client
        .post(app.url("/v1/attestation/challenge"))
        .send()
        .await
        .unwrap();
    let body = expect_json(res, StatusCode::OK).await;
    body["challenge"].as_str().unwrap().to_owned()
}

/// The uncompressed point of a P-256 test device.
fn point(dev: &Device) -> Vec<u8> {
    let mut p = vec![4u8];
    p.extend(B64URL.decode(dev.jwk["x"].as_str().unwrap()).unwrap());
    p.extend(B64URL.decode(dev.jwk["y"].as_str().unwrap()).unwrap());
    p
}

/// An Android attestation of `dev` (P-256) over a fresh challenge.
pub async fn android(app: &TestApp, root: &TestRoot, dev: &Device, opts: &AndroidOpts) -> Value {
    let ch = challenge(app).await;
    android_over(root, &ch, dev, opts)
}

fn android_over(root: &TestRoot, ch: &str, dev: &Device, opts: &AndroidOpts) -> Value {
    let client_data = format!("{ch}.{}", dev.jkt);
    generated::android_chain(root, ch, client_data.as_bytes(), &point(dev), opts)
}

/// An App Attest attestation for `dev` (any DPoP alg) over a fresh challenge.
pub async fn apple(app: &TestApp, root: &TestRoot, dev: &Device, opts: &AppleOpts) -> Value {
    let ch = challenge(app).await;
    let client_data = format!("{ch}.{}", dev.jkt);
    generated::apple_attestation(root, &ch, client_data.as_bytes(), TEST_APP_ID, opts)
}

/// The device member: the usual phone attributes plus `attestation`.
pub fn with_attestation(attestation: Value) -> Value {
    let mut device = ios("install-1");
    device["attestation"] = attestation;
    json!({ "device": device })
}

fn claims(access_token: &str) -> Value {
    let payload = access_token.split('.').nth(1).unwrap();
    serde_json::from_slice(&B64URL.decode(payload).unwrap()).unwrap()
}

async fn devices(app: &TestApp, key_id: &str) -> Vec<Value> {
    let list = expect_json(
        app.admin_get(&format!("/keys/{key_id}/devices")).await,
        StatusCode::OK,
    )
    .await;
    list["devices"].as_array().unwrap().clone()
}

async fn alerts(app: &TestApp, kind: &str) -> Vec<Value> {
    let list = expect_json(
        app.admin_get(&format!("/alerts?kind={kind}")).await,
        StatusCode::OK,
    )
    .await;
    list["alerts"].as_array().unwrap().clone()
}

/// Waits up to 1 s for `n` alerts of `kind`.
async fn wait_for_alerts(app: &TestApp, kind: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let list = alerts(app, kind).await;
        if list.len() >= n {
            return list;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} {kind} alerts within 1 s, expected {n}",
            list.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn the_challenge_endpoint_and_metadata(db: TestDb) {
    let app = attested_app(&db, &TestRoot::new()).await;
    let res = app
        .client
        .post(app.url("/v1/attestation/challenge"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body = expect_json(res, StatusCode::OK).await;
    assert_eq!(body["expires_in"], 300);
    let ch = body["challenge"].as_str().unwrap();
    let raw = B64URL.decode(ch).expect("base64url");
    assert!(raw.len() >= 32, "at least 32 random bytes");
    assert_ne!(challenge(&app).await, ch, "a fresh one each time");

    let meta = expect_json(
        app.client
            .get(app.url("/.well-known/oauth-authorization-server"))
            .send()
            .await
            .unwrap(),
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        meta["attestation_challenge_endpoint"],
        app.url("/v1/attestation/challenge")
    );
}

/// Contract section 8's table: `off` ignores a valid attestation; `preferred` and `required`
/// record it and trust the device at once; the device stays attested afterwards.
async fn each_format_under_each_policy(db: TestDb) {
    let root = TestRoot::new();
    let app = attested_app(&db, &root).await;
    for policy in ["off", "preferred", "required"] {
        for format in ["apple-appattest", "android-key"] {
            let what = format!("{format} under {policy}");
            let (key, key_id) = new_key(&app, json!({ "attestation": policy })).await;
            // App Attest does not care about the DPoP alg; Android certifies the P-256 key.
            let dev = Device::of(if format == "android-key" {
                Kind::P256
            } else {
                Kind::Ed25519
            });
            let attestation = if format == "android-key" {
                android(&app, &root, &dev, &AndroidOpts::default()).await
            } else {
                apple(&app, &root, &dev, &AppleOpts::default()).await
            };
            let t = expect_json(
                exchange(&app, &key, &dev, with_attestation(attestation)).await,
                StatusCode::OK,
            )
            .await;
            let listed = &devices(&app, &key_id).await[0];
            if policy == "off" {
                assert_eq!(t["trust"]["level"], "limited", "{what}");
                assert_eq!(t["trust"]["attested"], Value::Null, "{what}");
                assert!(
                    claims(t["access_token"].as_str().unwrap())
                        .get("att")
                        .is_none()
                );
                assert_eq!(listed["attestation"], Value::Null, "{what}: not recorded");
                continue;
            }
            assert_eq!(t["trust"]["level"], "trusted", "{what}: trusted at once");
            assert_eq!(t["trust"]["attested"], format, "{what}");
            assert_eq!(
                claims(t["access_token"].as_str().unwrap())["att"],
                format,
                "{what}"
            );
            assert_eq!(listed["attestation"]["format"], format, "{what}");
            assert!(listed["attestation"]["attested_at"].as_i64().unwrap() > 0);
            if format == "android-key" {
                assert_eq!(
                    listed["attestation"]["security_level"], "TrustedEnvironment",
                    "{what}"
                );
            } else {
                assert!(listed["attestation"]["key_id"].is_string(), "{what}");
                assert!(listed["attestation"]["public_key"].is_string(), "{what}");
            }
            // Attested once, for life: later exchanges and refreshes need no attestation.
            let again = expect_json(
                exchange(&app, &key, &dev, json!({"device": ios("install-1")})).await,
                StatusCode::OK,
            )
            .await;
            assert_eq!(again["trust"]["level"], "trusted", "{what}");
            assert_eq!(again["trust"]["attested"], format, "{what}");
            let r = expect_json(
                refresh(&app, &dev, again["refresh_token"].as_str().unwrap()).await,
                StatusCode::OK,
            )
            .await;
            assert_eq!(r["trust"]["attested"], format, "{what}");
            assert_eq!(claims(r["access_token"].as_str().unwrap())["att"], format);
        }
    }
    assert!(
        alerts(&app, "ATTESTATION_FAILED").await.is_empty(),
        "nothing failed"
    );
}

/// A representative few of section 8's checks, end to end: each is refused with
/// `INVALID_ATTESTATION` naming the check, raises `ATTESTATION_FAILED`, and issues nothing
/// (under `required`, enrolls nothing either). The verifier's unit tests cover every check.
async fn failed_checks_answer_invalid_attestation_with_an_alert(db: TestDb) {
    let root = TestRoot::new();
    let app = attested_app(&db, &root).await;
    let (key, key_id) = new_key(&app, json!({"attestation": "required"})).await;
    let other_root = TestRoot::new();
    let cases: Vec<(&str, Device, Value, &str)> = {
        let mut v = vec![];
        let d = Device::of(Kind::P256);
        let a = android(
            &app,
            &root,
            &d,
            &AndroidOpts {
                package: "com.evil.clone".into(),
                ..AndroidOpts::default()
            },
        )
        .await;
        v.push(("android: another package", d, a, "package"));
        let d = Device::of(Kind::P256);
        let a = android(
            &app,
            &root,
            &d,
            &AndroidOpts {
                attestation_security_level: 0,
                keymint_security_level: 0,
                ..AndroidOpts::default()
            },
        )
        .await;
        v.push(("android: software key", d, a, "ecurity"));
        let d = Device::of(Kind::P256);
        let a = android(
            &app,
            &root,
            &d,
            &AndroidOpts {
                verified_boot_state: 2,
                ..AndroidOpts::default()
            },
        )
        .await;
        v.push(("android: unverified boot", d, a, "verifiedBootState"));
        let d = Device::of(Kind::P256);
        let a = android(&app, &other_root, &d, &AndroidOpts::default()).await;
        v.push(("android: unknown root", d, a, "android-key"));
        // The chain certifies another key than the proof's.
        let (d, other) = (Device::of(Kind::P256), Device::of(Kind::P256));
        let ch = challenge(&app).await;
        // Client data bound to the proof's key, but the leaf certifies the other key.
        let client_data = format!("{ch}.{}", d.jkt);
        let a = generated::android_chain(
            &root,
            &ch,
            client_data.as_bytes(),
            &point(&other),
            &AndroidOpts::default(),
        );
        v.push((
            "android: leaf key is not the DPoP key",
            d,
            a,
            "DPoP proof's key",
        ));
        let d = Device::new();
        let a = apple(
            &app,
            &root,
            &d,
            &AppleOpts {
                rp_id: Some("ZZZZZ99999.com.example.other".into()),
                ..AppleOpts::default()
            },
        )
        .await;
        v.push(("apple: another app", d, a, "--apple-app-id"));
        let d = Device::new();
        let a = apple(
            &app,
            &root,
            &d,
            &AppleOpts {
                aaguid: Some(generated::AAGUID_DEVELOPMENT),
                ..AppleOpts::default()
            },
        )
        .await;
        v.push((
            "apple: development environment not allowed",
            d,
            a,
            "appattestdevelop",
        ));
        let d = Device::new();
        let a = apple(
            &app,
            &root,
            &d,
            &AppleOpts {
                wrong_nonce: true,
                ..AppleOpts::default()
            },
        )
        .await;
        v.push(("apple: nonce over other client data", d, a, "nonce"));
        // A challenge this server never issued.
        let d = Device::new();
        let mut a = apple(&app, &root, &d, &AppleOpts::default()).await;
        a["challenge"] = json!(B64URL.encode([7u8; 72]));
        v.push(("a challenge not issued here", d, a, "challenge"));
        v
    };
    for (i, (what, dev, attestation, names)) in cases.iter().enumerate() {
        let res = exchange(&app, &key, dev, with_attestation(attestation.clone())).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{what}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "INVALID_ATTESTATION", "{what}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("invalid attestation: ") && message.len() > 22,
            "{what}: the message names the check: {message}"
        );
        assert!(message.contains(names), "{what}: {message}");
        let raised = wait_for_alerts(&app, "ATTESTATION_FAILED", i + 1).await;
        let alert = raised
            .iter()
            .find(|a| a["details"]["jkt"] == dev.jkt.as_str())
            .unwrap_or_else(|| panic!("{what}: no alert for this device"));
        assert_eq!(alert["key_id"], key_id.as_str());
        assert_eq!(alert["severity"], "critical");
        assert_eq!(
            format!(
                "invalid attestation: {}",
                alert["details"]["check"].as_str().unwrap()
            ),
            message
        );
    }
    assert!(devices(&app, &key_id).await.is_empty(), "nothing enrolled");
}

/// Single use (the second presentation, by any device, is refused) and 5 minutes.
async fn a_challenge_is_single_use_and_expires(db: TestDb) {
    let root = TestRoot::new();
    let app = attested_app(&db, &root).await;
    let (key, _) = new_key(&app, json!({})).await;
    let ch = challenge(&app).await;
    let first = Device::of(Kind::P256);
    let t = expect_json(
        exchange(
            &app,
            &key,
            &first,
            with_attestation(android_over(&root, &ch, &first, &AndroidOpts::default())),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(t["trust"]["attested"], "android-key");
    // Another device's own valid attestation over the same challenge.
    let second = Device::of(Kind::P256);
    let res = exchange(
        &app,
        &key,
        &second,
        with_attestation(android_over(&root, &ch, &second, &AndroidOpts::default())),
    )
    .await;
    expect_error(
        res,
        StatusCode::UNAUTHORIZED,
        "INVALID_ATTESTATION",
        "a used challenge",
    )
    .await;

    // A challenge made with this deployment's key, expired a second ago.
    let master = keybound::tokens::keyring::master_key(
        Some(&SecretString::from(db.master_key().to_owned())),
        std::path::Path::new("unused"),
        false,
    )
    .unwrap();
    let secret = master.derive("keybound/attestation-challenge/v1");
    let expired = keybound::exchange::challenge::Challenges::new(&secret).issue(now() - 301);
    let third = Device::of(Kind::P256);
    let res = exchange(
        &app,
        &key,
        &third,
        with_attestation(android_over(
            &root,
            &expired,
            &third,
            &AndroidOpts::default(),
        )),
    )
    .await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INVALID_ATTESTATION");
    assert_eq!(
        body["error"]["message"],
        "invalid attestation: challenge: expired"
    );
    // The same key made a fresh one: accepted (the MAC was right, only the time was not).
    let fresh = keybound::exchange::challenge::Challenges::new(&secret).issue(now());
    expect_json(
        exchange(
            &app,
            &key,
            &third,
            with_attestation(android_over(&root, &fresh, &third, &AndroidOpts::default())),
        )
        .await,
        StatusCode::OK,
    )
    .await;
}

/// `required`: no token for a device without an attestation on record, on exchange and on
/// refresh (the policy may be tightened after the device enrolled); a device not attested yet
/// attests on a later exchange and is trusted from then on.
async fn required_refuses_unattested_devices_on_exchange_and_refresh(db: TestDb) {
    let root = TestRoot::new();
    let app = attested_app(&db, &root).await;
    let (key, key_id) = new_key(&app, json!({"attestation": "required"})).await;
    // A re-implemented client with the leaked key: no attestation, no token, no device.
    expect_error(
        exchange(&app, &key, &Device::new(), json!({"device": ios("x")})).await,
        StatusCode::FORBIDDEN,
        "ATTESTATION_REQUIRED",
        "no attestation under required",
    )
    .await;
    assert!(devices(&app, &key_id).await.is_empty(), "nothing enrolled");

    // A device enrolled while the key was `preferred`, without attestation...
    expect_json(
        app.admin_patch(
            &format!("/keys/{key_id}"),
            json!({"attestation": "preferred"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let dev = Device::of(Kind::P256);
    let t = expect_json(
        exchange(&app, &key, &dev, json!({"device": ios("y")})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(t["trust"]["attested"], Value::Null);
    // ...gets nothing once the key requires attestation: not by refresh, not by exchange.
    expect_json(
        app.admin_patch(
            &format!("/keys/{key_id}"),
            json!({"attestation": "required"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    expect_error(
        refresh(&app, &dev, t["refresh_token"].as_str().unwrap()).await,
        StatusCode::FORBIDDEN,
        "ATTESTATION_REQUIRED",
        "refresh of an unattested device under required",
    )
    .await;
    expect_error(
        exchange(&app, &key, &dev, json!({"device": ios("y")})).await,
        StatusCode::FORBIDDEN,
        "ATTESTATION_REQUIRED",
        "exchange of an unattested device under required",
    )
    .await;
    // It attests on a later exchange: recorded, trusted, and its refreshes work again.
    let a = android(&app, &root, &dev, &AndroidOpts::default()).await;
    let mut body = with_attestation(a);
    body["device"]["attributes"]["install_id"] = json!("y");
    let t = expect_json(exchange(&app, &key, &dev, body).await, StatusCode::OK).await;
    assert_eq!(t["trust"]["level"], "trusted");
    assert_eq!(t["trust"]["attested"], "android-key");
    expect_json(
        refresh(&app, &dev, t["refresh_token"].as_str().unwrap()).await,
        StatusCode::OK,
    )
    .await;
}

/// An attested device that presents another platform is still scored (limited, alerted), but
/// never denied while its key is the attested one.
async fn an_attested_device_is_never_denied_but_still_scored(db: TestDb) {
    let root = TestRoot::new();
    let app = attested_app(&db, &root).await;
    let (key, _) = new_key(&app, json!({})).await;
    let dev = Device::of(Kind::P256);
    let a = android(&app, &root, &dev, &AndroidOpts::default()).await;
    expect_json(
        exchange(&app, &key, &dev, with_attestation(a)).await,
        StatusCode::OK,
    )
    .await;
    let other_platform = json!({"device": {"attributes": {"platform": "android",
        "model": "Pixel 8", "install_id": "other"}}});
    let t = expect_json(
        exchange(&app, &key, &dev, other_platform).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(t["trust"]["level"], "limited", "scored, not exempt");
    wait_for_alerts(&app, "FINGERPRINT_MISMATCH", 1).await;
}

async fn the_policy_in_the_admin_api_and_the_cli(db: TestDb) {
    let app = attested_app(&db, &TestRoot::new()).await;
    let created = app
        .create_key(json!({"name": "a", "scopes": ["read:x"]}))
        .await;
    assert_eq!(created["attestation"], "preferred", "the default");
    let key_id = created["key_id"].as_str().unwrap();
    let patched = expect_json(
        app.admin_patch(&format!("/keys/{key_id}"), json!({"attestation": "off"}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(patched["attestation"], "off");
    assert_eq!(app.get_key(key_id).await["attestation"], "off");
    expect_error(
        app.admin_patch(
            &format!("/keys/{key_id}"),
            json!({"attestation": "sometimes"}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        "an unknown policy",
    )
    .await;
    assert_eq!(app.get_key(key_id).await["attestation"], "off", "unchanged");

    let made = cli(
        &db,
        &[
            "keys",
            "create",
            "--name",
            "cli",
            "--scopes",
            "read:x",
            "--attestation",
            "required",
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let id = made["key_id"].as_str().unwrap();
    let shown = cli(&db, &["keys", "show", id, "--json"]).await.ok().json();
    assert_eq!(shown["attestation"], "required");
    let text = cli(&db, &["keys", "show", id]).await.ok();
    assert!(text.stdout.contains("attestation") && text.stdout.contains("required"));
    let bad = cli(
        &db,
        &[
            "keys",
            "create",
            "--name",
            "x",
            "--scopes",
            "read:x",
            "--attestation",
            "maybe",
        ],
    )
    .await;
    assert_ne!(bad.code, 0);
}

/// A challenge accepted on one instance is refused on another sharing Redis (and the
/// database): single use holds across the cluster.
#[tokio::test]
async fn a_challenge_used_on_one_instance_is_refused_on_another() {
    let Some(redis) = crate::helpers::redis_test_url() else {
        return;
    };
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let root = TestRoot::new();
    let with_redis = |a: &mut keybound::config::ServeArgs| a.redis_url = Some(redis.clone().into());
    let a = attested_app_with(&db, &root, with_redis).await;
    let b = attested_app_with(&db, &root, |a| a.redis_url = Some(redis.clone().into())).await;
    let (key, _) = new_key(&a, json!({})).await;
    let ch = challenge(&a).await;
    let first = Device::of(Kind::P256);
    expect_json(
        exchange(
            &a,
            &key,
            &first,
            with_attestation(android_over(&root, &ch, &first, &AndroidOpts::default())),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let second = Device::of(Kind::P256);
    let res = exchange(
        &b,
        &key,
        &second,
        with_attestation(android_over(&root, &ch, &second, &AndroidOpts::default())),
    )
    .await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "INVALID_ATTESTATION");
    assert_eq!(
        body["error"]["message"],
        "invalid attestation: challenge: already used"
    );
    // Instance B checks challenges instance A issued: a fresh one from A works on B.
    let ch = challenge(&a).await;
    expect_json(
        exchange(
            &b,
            &key,
            &second,
            with_attestation(android_over(&root, &ch, &second, &AndroidOpts::default())),
        )
        .await,
        StatusCode::OK,
    )
    .await;
}
