//! The Client's hooks against the fake keybound of `client.rs`: a session that survives a
//! relaunch, the default device attributes, sign-out (`POST /v1/token/revoke`), platform
//! attestation before the first exchange, and device keys that sign asynchronously.

use keybound_sdk::{
    AttestationProvider, DeviceKey, DpopProofBuilder, Ed25519DeviceKey, ErrorKind,
    FileSessionStore, Session, SessionStore, Signing,
};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::{builder, device, fake_keybound, scripted};

fn store(dir: &tempfile::TempDir) -> Arc<FileSessionStore> {
    Arc::new(FileSessionStore::new(dir.path().join("session.json")))
}

/// The persistent device key of an "app": the same file across relaunches.
fn persistent_key(dir: &tempfile::TempDir) -> Arc<dyn DeviceKey> {
    Arc::new(Ed25519DeviceKey::load_or_create(dir.path().join("device.key")).unwrap())
}

#[tokio::test]
async fn a_relaunch_refreshes_from_the_stored_session_instead_of_exchanging() {
    let fake = fake_keybound().await;
    let dir = tempfile::tempdir().unwrap();
    let first = builder(&fake, persistent_key(&dir))
        .session_store(store(&dir))
        .build()
        .unwrap();
    first.token().await.unwrap();
    drop(first);
    let saved = store(&dir).load().unwrap().unwrap();
    assert_eq!(
        saved.refresh_token.as_ref().map(|t| t.expose_secret()),
        Some("rt-1")
    );
    assert_eq!(saved.device_id.as_deref(), Some("dev_1"));

    // "Relaunch": a new client, same key file and store, nothing in memory.
    let relaunched = builder(&fake, persistent_key(&dir))
        .session_store(store(&dir))
        .build()
        .unwrap();
    relaunched.token().await.unwrap();

    assert_eq!(
        fake.exchanges.load(Ordering::SeqCst),
        1,
        "no second exchange"
    );
    assert_eq!(fake.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(
        fake.refresh_bodies.lock().unwrap()[0],
        json!({"refresh_token": "rt-1"})
    );
    let saved = store(&dir).load().unwrap().unwrap();
    assert_eq!(
        saved.refresh_token.as_ref().map(|t| t.expose_secret()),
        Some("rt-2"),
        "the rotated refresh token is saved"
    );
}

#[tokio::test]
async fn a_stored_session_of_another_device_key_is_cleared_not_used() {
    let fake = fake_keybound().await;
    let dir = tempfile::tempdir().unwrap();
    let mut stale = Session::default();
    stale.refresh_token = Some("rt-of-another-key".to_owned().into());
    stale.key_thumbprint = Some("another-jkt".into());
    stale.device_id = Some("dev_other".into());
    store(&dir).save(&stale).unwrap();

    let client = builder(&fake, device())
        .session_store(store(&dir))
        .build()
        .unwrap();
    client.token().await.unwrap();

    assert_eq!(fake.refreshes.load(Ordering::SeqCst), 0);
    assert_eq!(fake.exchanges.load(Ordering::SeqCst), 1);
}

fn attributes(body: &Value) -> Value {
    body["device"]["attributes"].clone()
}

#[tokio::test]
async fn default_attributes_are_the_platform_and_a_persisted_install_id() {
    let fake = fake_keybound().await;
    let dir = tempfile::tempdir().unwrap();
    let plain = |fake: &crate::client::Fake| {
        keybound_sdk::Client::builder(&fake.base)
            .api_key(crate::client::api_key().into())
            .device_key(persistent_key(&dir))
    };

    // Two launches with a store: the same install id, made once.
    for _ in 0..2 {
        plain(&fake)
            .session_store(store(&dir))
            .build()
            .unwrap()
            .token()
            .await
            .unwrap();
        store(&dir).clear().ok();
    }
    // An install id made now is the one stored.
    plain(&fake)
        .session_store(store(&dir))
        .build()
        .unwrap()
        .token()
        .await
        .unwrap();
    // The app's own value wins; defaults can be switched off; no store means no install id.
    plain(&fake)
        .device_attribute("platform", "ios")
        .device_attribute("install_id", "app-chosen")
        .build()
        .unwrap()
        .token()
        .await
        .unwrap();
    plain(&fake)
        .default_device_attributes(false)
        .build()
        .unwrap()
        .token()
        .await
        .unwrap();
    plain(&fake).build().unwrap().token().await.unwrap();

    let bodies = fake.exchange_bodies.lock().unwrap().clone();
    let stored_id = store(&dir).load().unwrap().unwrap().install_id.unwrap();
    let first = attributes(&bodies[0]);
    assert_eq!(first["platform"], std::env::consts::OS);
    assert_eq!(first["install_id"].as_str().unwrap().len(), 22);
    assert_ne!(
        first["install_id"],
        attributes(&bodies[1])["install_id"],
        "a cleared store means a new install"
    );
    assert_eq!(attributes(&bodies[2])["install_id"], stored_id.as_str());
    assert_eq!(attributes(&bodies[3])["platform"], "ios");
    assert_eq!(attributes(&bodies[3])["install_id"], "app-chosen");
    assert_eq!(bodies[4].get("device"), None, "defaults off: no attributes");
    assert_eq!(attributes(&bodies[5])["platform"], std::env::consts::OS);
    assert_eq!(
        attributes(&bodies[5]).get("install_id"),
        None,
        "no store, no install id (a new one per launch would look like a new device)"
    );
}

#[tokio::test]
async fn sign_out_revokes_the_refresh_token_with_a_proof_and_forgets_it() {
    let fake = fake_keybound().await;
    let dir = tempfile::tempdir().unwrap();
    let client = builder(&fake, persistent_key(&dir))
        .session_store(store(&dir))
        .build()
        .unwrap();
    client.token().await.unwrap();
    let install_id = store(&dir).load().unwrap().unwrap().install_id;

    client.sign_out().await.unwrap();

    let revocations = fake.revocations.lock().unwrap().clone();
    assert_eq!(revocations.len(), 1);
    let (body, claims) = &revocations[0];
    assert_eq!(
        body,
        &json!({"token": "rt-1", "token_type_hint": "refresh_token"})
    );
    assert_eq!(claims["htu"], format!("{}/v1/token/revoke", fake.base));
    assert_eq!(claims["htm"], "POST");
    let saved = store(&dir).load().unwrap().unwrap();
    assert!(saved.refresh_token.is_none(), "the store forgot the token");
    assert_eq!(saved.install_id, install_id, "the install id stays");

    // The next token is a new exchange, not a refresh of the revoked token.
    client.token().await.unwrap();
    assert_eq!(fake.exchanges.load(Ordering::SeqCst), 2);
    assert_eq!(fake.refreshes.load(Ordering::SeqCst), 0);
    // Signing out twice sends nothing the second time beyond the new token's revocation.
    client.sign_out().await.unwrap();
    client.sign_out().await.unwrap();
    assert_eq!(fake.revocations.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn sign_out_takes_a_demanded_nonce() {
    let fake = fake_keybound().await;
    fake.require_nonce.store(true, Ordering::SeqCst);
    let client = builder(&fake, device()).build().unwrap();
    client.token().await.unwrap();
    client.sign_out().await.unwrap();
    assert_eq!(
        fake.revocations.lock().unwrap()[0].1["nonce"],
        "server-nonce-1"
    );
}

/// Records the client data it is given and answers an Android-shaped attestation.
#[derive(Debug, Default)]
struct FakeAttestation {
    client_data: Mutex<Vec<String>>,
}

impl AttestationProvider for FakeAttestation {
    fn attest<'a>(
        &'a self,
        client_data: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = keybound_sdk::Result<Value>> + Send + 'a>> {
        Box::pin(async move {
            self.client_data
                .lock()
                .unwrap()
                .push(String::from_utf8(client_data.to_vec()).unwrap());
            Ok(json!({"format": "android-key", "certificate_chain": ["bGVhZg==", "cm9vdA=="]}))
        })
    }
}

#[tokio::test]
async fn a_new_device_key_attests_before_its_first_exchange_and_never_again() {
    let fake = fake_keybound().await;
    *fake.attested.lock().unwrap() = Some("android-key");
    let dir = tempfile::tempdir().unwrap();
    let key = persistent_key(&dir);
    let provider = Arc::new(FakeAttestation::default());
    let client = builder(&fake, key.clone())
        .default_device_attributes(false)
        .session_store(store(&dir))
        .attestation_provider(provider.clone())
        .build()
        .unwrap();

    let token = client.token().await.unwrap();

    assert_eq!(token.attested(), Some("android-key"));
    assert_eq!(fake.challenges.load(Ordering::SeqCst), 1);
    assert_eq!(
        provider.client_data.lock().unwrap().clone(),
        vec![format!("challenge-1.{}", key.thumbprint().unwrap())],
        "client data is <challenge>.<jkt>"
    );
    assert_eq!(
        fake.exchange_bodies.lock().unwrap()[0],
        json!({"scope": "read:users", "device": {
            "name": "test runner",
            "attributes": {"platform": "linux", "install_id": "i-1"},
            "attestation": {"format": "android-key", "challenge": "challenge-1",
                            "certificate_chain": ["bGVhZg==", "cm9vdA=="]}}})
    );
    assert_eq!(
        store(&dir).load().unwrap().unwrap().attested.as_deref(),
        Some("android-key"),
        "persisted"
    );

    // A relaunch whose refresh token is refused exchanges again, without attesting.
    fake.refresh_script
        .lock()
        .unwrap()
        .push_back(scripted(401, "INVALID_REFRESH_TOKEN"));
    let relaunched = builder(&fake, key)
        .session_store(store(&dir))
        .attestation_provider(provider.clone())
        .build()
        .unwrap();
    relaunched.token().await.unwrap();
    assert_eq!(fake.exchanges.load(Ordering::SeqCst), 2);
    assert_eq!(
        fake.challenges.load(Ordering::SeqCst),
        1,
        "no new challenge"
    );
    assert!(
        fake.exchange_bodies.lock().unwrap()[1]["device"]
            .get("attestation")
            .is_none()
    );
}

#[tokio::test]
async fn a_known_device_attests_only_when_the_server_requires_it() {
    // The first exchange is answered `attested: null` (the key's policy is `off`): later
    // exchanges of this device do not attest again ...
    let fake = fake_keybound().await;
    let provider = Arc::new(FakeAttestation::default());
    let client = builder(&fake, device())
        .attestation_provider(provider.clone())
        .build()
        .unwrap();
    client.token().await.unwrap();
    client.sign_out().await.unwrap();
    client.token().await.unwrap();
    assert_eq!(fake.challenges.load(Ordering::SeqCst), 1);

    // ... until an exchange is refused with ATTESTATION_REQUIRED: then once more, attested.
    client.sign_out().await.unwrap();
    fake.exchange_script
        .lock()
        .unwrap()
        .push_back(scripted(403, "ATTESTATION_REQUIRED"));
    client.token().await.unwrap();
    assert_eq!(fake.challenges.load(Ordering::SeqCst), 2);
    let bodies = fake.exchange_bodies.lock().unwrap().clone();
    assert_eq!(bodies.len(), 4);
    assert!(bodies[2]["device"].get("attestation").is_none());
    assert_eq!(
        bodies[3]["device"]["attestation"]["challenge"],
        "challenge-2"
    );
}

#[tokio::test]
async fn attestation_errors_have_their_own_kinds() {
    let fake = fake_keybound().await;
    fake.exchange_script
        .lock()
        .unwrap()
        .push_back(scripted(401, "INVALID_ATTESTATION"));
    let client = builder(&fake, device())
        .attestation_provider(Arc::new(FakeAttestation::default()))
        .build()
        .unwrap();
    let err = client.token().await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidAttestation);
    assert_eq!(fake.exchanges.load(Ordering::SeqCst), 1, "not retried");

    #[derive(Debug)]
    struct Broken;
    impl AttestationProvider for Broken {
        fn attest<'a>(
            &'a self,
            _: &'a [u8],
        ) -> Pin<Box<dyn Future<Output = keybound_sdk::Result<Value>> + Send + 'a>> {
            Box::pin(async { Ok(json!(["not", "an", "object"])) })
        }
    }
    let client = builder(&fake, device())
        .attestation_provider(Arc::new(Broken))
        .build()
        .unwrap();
    let err = client.token().await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Attestation);
    assert_eq!(fake.exchanges.load(Ordering::SeqCst), 1, "nothing sent");
}

/// A key that signs later, as a keystore behind a prompt or a foreign binding does.
#[derive(Debug)]
struct SlowKey(Ed25519DeviceKey);

impl DeviceKey for SlowKey {
    fn public_jwk(&self) -> Value {
        self.0.public_jwk()
    }
    fn alg(&self) -> &str {
        self.0.alg()
    }
    fn sign<'a>(&'a self, message: &'a [u8]) -> Signing<'a> {
        Signing::later(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.0.sign(message).await
        })
    }
}

#[tokio::test]
async fn an_asynchronous_device_key_works_through_the_client() {
    let fake = fake_keybound().await;
    let key: Arc<dyn DeviceKey> = Arc::new(SlowKey(Ed25519DeviceKey::generate()));
    let client = builder(&fake, key.clone()).build().unwrap();

    client.token().await.unwrap();
    let headers = client
        .authorize("GET", "https://api.example.com/x")
        .await
        .unwrap();

    assert!(headers.contains_key("dpop"));
    let proof = DpopProofBuilder::new(&*key, "GET", "https://api.example.com/x")
        .sign_async()
        .await
        .unwrap();
    assert_eq!(proof.split('.').count(), 3);
    let err = DpopProofBuilder::new(&*key, "GET", "https://api.example.com/x")
        .sign()
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &ErrorKind::DeviceKey,
        "the blocking path refuses it"
    );
}
