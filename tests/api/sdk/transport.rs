//! The SDK client paths the mobile bindings rely on, against the real server: an ES256
//! (P-256) device key, the mobile default, through exchange, refresh and a resource call the
//! verifier accepts; a session restored from a store after a "relaunch"; and SPKI pinning over
//! HTTPS, where a wrong pin stops the client in the TLS handshake, before any request.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use keybound::config::ServeArgs;
use keybound_sdk::{
    Client, DeviceKey, ErrorKind, Es256DeviceKey, FileSessionStore, RetryPolicy, SessionStore,
    Verifier,
};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{api_key, claims, client_for, create_key, devices, key_id};
use crate::helpers::{ADMIN_TOKEN, TestDb, expect_error, expect_json, spawn_app_args};
use crate::on_both_backends;
use crate::tls::{client_trusting, write_cert};

on_both_backends!(
    an_es256_device_key_exchanges_refreshes_and_passes_the_verifier,
    a_relaunch_with_a_stored_session_refreshes_without_an_exchange,
);

async fn an_es256_device_key_exchanges_refreshes_and_passes_the_verifier(db: TestDb) {
    let app = spawn_app_args(&db, |a| a.access_ttl_seconds = 2).await;
    let key = create_key(&app, json!({})).await;
    let device = Arc::new(Es256DeviceKey::generate());
    let client = client_for(&app, &key, device.clone())
        .retry_policy(RetryPolicy::none())
        .build()
        .unwrap();

    let first = client.token().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let renewed = client.token().await.unwrap();

    assert_ne!(renewed.expose_secret(), first.expose_secret());
    let cnf = claims(renewed.expose_secret())["cnf"]["jkt"].clone();
    assert_eq!(cnf, device.thumbprint().unwrap(), "bound to the P-256 key");
    let devices = devices(&app, key_id(&key)).await;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["jkt"], device.thumbprint().unwrap());
    assert_eq!(
        devices[0]["exchange_count"], 2,
        "one exchange and one refresh"
    );

    // A resource server checks the ES256 proof against the real server's keys.
    let resource = "https://api.example.com/v1/users";
    let verifier = Verifier::builder(app.url(""))
        .audience(app.url(""))
        .danger_disable_revocation_feed()
        .build()
        .await
        .unwrap();
    let headers = client.authorize("GET", resource).await.unwrap();
    let verified = verifier
        .verify_request(
            "GET",
            resource,
            headers["authorization"].to_str().ok(),
            headers["dpop"].to_str().ok(),
        )
        .await
        .unwrap();
    assert_eq!(verified.thumbprint(), device.thumbprint().unwrap());
}

async fn a_relaunch_with_a_stored_session_refreshes_without_an_exchange(db: TestDb) {
    let app = spawn_app_args(&db, |_| {}).await;
    let key = create_key(&app, json!({})).await;
    let device: Arc<dyn DeviceKey> = Arc::new(Es256DeviceKey::generate());
    let store = Arc::new(FileSessionStore::new(db.dir.path().join("session.json")));
    let launch = || {
        client_for(&app, &key, device.clone())
            .session_store(store.clone())
            .build()
            .unwrap()
    };

    let first = launch().token().await.unwrap();
    let first_refresh = store.load().unwrap().unwrap().refresh_token.unwrap();
    let second = launch().token().await.unwrap();

    assert_ne!(second.expose_secret(), first.expose_secret());
    assert_eq!(second.device_id(), first.device_id());
    let devices = devices(&app, key_id(&key)).await;
    assert_eq!(devices[0]["exchange_count"], 2);
    let install_id = store.load().unwrap().unwrap().install_id.unwrap();
    assert_eq!(devices[0]["attributes"]["install_id"], install_id.as_str());
    // The relaunch refreshed: the first launch's refresh token is spent, so presenting it
    // again is reuse. (A second exchange would have left it live.)
    let url = app.url("/v1/token/refresh");
    let proof = keybound_sdk::DpopProofBuilder::new(&*device, "POST", &url)
        .sign()
        .unwrap();
    let res = app
        .client
        .post(&url)
        .header("dpop", proof)
        .json(&json!({"refresh_token": first_refresh.expose_secret()}))
        .send()
        .await
        .unwrap();
    expect_error(
        res,
        StatusCode::UNAUTHORIZED,
        "REFRESH_TOKEN_REUSED",
        "the stored token was spent by the relaunch's refresh",
    )
    .await;
}

/// HTTPS with a self-signed certificate for 127.0.0.1: the server, its base URL, the
/// certificate's PEM and the SPKI SHA-256 pin of its key (computed from rcgen's encoding of
/// the key, not from the SDK's certificate parsing).
async fn tls_server(db: &TestDb) -> (keybound::server::Running, String, String, String) {
    let (cert, key, pem) = write_cert(db.dir.path(), "pinned");
    let key_pair = rcgen::KeyPair::from_pem(&std::fs::read_to_string(&key).unwrap()).unwrap();
    let pin = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(
        rcgen::PublicKeyData::subject_public_key_info(&key_pair),
    ));
    let mut args = ServeArgs::for_tests();
    args.tls_cert = Some(cert);
    args.tls_key = Some(key);
    args.admin_token = Some(SecretString::from(ADMIN_TOKEN));
    let server = keybound::server::start(args, db.store().await)
        .await
        .expect("HTTPS server starts");
    let base = format!("https://{}", server.addr);
    (server, base, pem, pin)
}

#[tokio::test]
async fn a_wrong_spki_pin_is_refused_in_the_handshake_and_the_right_one_accepted() {
    let db = TestDb::sqlite().await;
    let (server, base, pem, right) = tls_server(&db).await;
    let admin = client_trusting(&pem);
    let res = admin
        .post(format!("{base}/admin/v1/keys"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "pinned", "env": "test", "scopes": ["read:users"]}))
        .send()
        .await
        .unwrap();
    let key = expect_json(res, StatusCode::CREATED).await;
    let key_id = key["key_id"].as_str().unwrap().to_owned();
    let wrong = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(b"another key"));
    let builder = |pins: &[&str]| {
        let mut b = Client::builder(&base)
            .api_key(api_key(&key))
            .device_key(Arc::new(Es256DeviceKey::generate()))
            .add_root_certificates_pem(pem.as_bytes())
            .unwrap();
        for pin in pins {
            b = b.pin_spki_sha256(pin).unwrap();
        }
        b.build().unwrap()
    };

    let err = builder(&[&wrong]).token().await.unwrap_err();

    assert_eq!(err.kind(), &ErrorKind::CertificatePinMismatch, "{err}");
    let listed = admin
        .get(format!("{base}/admin/v1/keys/{key_id}/devices"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let listed = expect_json(listed, StatusCode::OK).await;
    assert_eq!(
        listed["devices"],
        json!([]),
        "the exchange never reached the server: no device was enrolled"
    );

    // The right pin (with a backup pin beside it) is accepted, and "sha256/" is optional.
    let token = builder(&[&wrong, &format!("sha256/{right}")])
        .token()
        .await
        .unwrap();
    assert!(!token.expose_secret().is_empty());
    server.stop().await;
}
