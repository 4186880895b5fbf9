//! The signing key ring: the active Ed25519 key that signs tokens, and the public keys the
//! JWKS must keep publishing. Private keys live in storage sealed by the master key and in
//! memory only as parsed `SigningKey`s (zeroized on drop).

use std::sync::{Arc, RwLock};

use secrecy::{ExposeSecret, SecretString};

use super::access::MAX_ACCESS_TTL_SECONDS;
use super::signing::{MasterKey, SigningKey};
use crate::error::{Error, Result};
use crate::store::{SigningKeyRecord, Store};

/// Seconds a retired key stays in the JWKS: the longest token it can have signed, plus
/// margin for clock skew and verifier caches.
pub const PUBLISH_AFTER_RETIREMENT: i64 = MAX_ACCESS_TTL_SECONDS as i64 + 300;

struct Ring {
    active: Arc<SigningKey>,
    jwks: serde_json::Value,
    /// Every published key by `kid` (the active one first), to verify our own tokens
    /// (introspection, contract 9.4).
    verifiers: Vec<(String, ed25519_dalek::VerifyingKey)>,
}

/// The keys in use. Readers take a cheap `Arc` snapshot; reloads swap the whole ring.
pub struct KeyRing {
    ring: RwLock<Arc<Ring>>,
    master: MasterKey,
}

impl KeyRing {
    /// Loads the ring from storage, creating the first signing key when there is none.
    pub async fn load(store: &dyn Store, master: MasterKey, now: i64) -> Result<KeyRing> {
        let ring = build(store, &master, now).await?;
        let ring = match ring {
            Some(r) => r,
            None => {
                create(store, &master, now).await?;
                build(store, &master, now)
                    .await?
                    .ok_or_else(|| Error::internal("no signing key after creating one"))?
            }
        };
        Ok(KeyRing {
            ring: RwLock::new(Arc::new(ring)),
            master,
        })
    }

    /// Re-reads storage (another process may have rotated the key).
    pub async fn reload(&self, store: &dyn Store) -> Result<()> {
        if let Some(r) = build(store, &self.master, crate::clock::now()).await? {
            *self.ring.write().expect("not poisoned") = Arc::new(r);
        }
        Ok(())
    }

    /// A secret derived from the master key for `label` (the same on every instance).
    pub fn derive(&self, label: &str) -> zeroize::Zeroizing<[u8; 32]> {
        self.master.derive(label)
    }

    /// The key that signs new tokens.
    pub fn active(&self) -> Arc<SigningKey> {
        self.ring.read().expect("not poisoned").active.clone()
    }

    /// The public key `kid` names, if it is published (active, or retired with tokens that may
    /// still be live).
    pub fn verifying_key(&self, kid: &str) -> Option<ed25519_dalek::VerifyingKey> {
        let ring = self.ring.read().expect("not poisoned").clone();
        ring.verifiers
            .iter()
            .find(|(k, _)| k == kid)
            .map(|(_, vk)| *vk)
    }

    /// `{"keys": [...]}`: the active key and every retired key that may still have live tokens.
    pub fn jwks(&self) -> serde_json::Value {
        self.ring.read().expect("not poisoned").jwks.clone()
    }
}

/// Generates a new signing key, seals it and makes it the active one (the previous active
/// key is retired but stays published). Returns the new record.
pub async fn create(store: &dyn Store, master: &MasterKey, now: i64) -> Result<SigningKeyRecord> {
    create_retiring_at(store, master, now, now).await
}

/// [`create`], recording the previous active key's retirement at `retired_at` (a time before
/// `now` minus [`PUBLISH_AFTER_RETIREMENT`] takes it out of the JWKS at once: revocation).
pub async fn create_retiring_at(
    store: &dyn Store,
    master: &MasterKey,
    now: i64,
    retired_at: i64,
) -> Result<SigningKeyRecord> {
    let key = SigningKey::generate();
    let record = SigningKeyRecord {
        kid: key.kid().to_owned(),
        public_key: key.verifying_key().as_bytes().to_vec(),
        sealed_private: key.seal(master),
        created_at: now,
        retired_at: None,
    };
    store.insert_signing_key(&record, retired_at).await?;
    Ok(record)
}

async fn build(store: &dyn Store, master: &MasterKey, now: i64) -> Result<Option<Ring>> {
    let records = store.list_signing_keys().await?;
    // Newest active key signs; list_signing_keys is newest first.
    let Some(active) = records.iter().find(|r| r.retired_at.is_none()) else {
        return Ok(None);
    };
    let active = Arc::new(open(master, active)?);
    let mut published = vec![active.public_jwk()];
    let mut verifiers = vec![(active.kid().to_owned(), active.verifying_key())];
    for r in &records {
        let live = r
            .retired_at
            .is_some_and(|t| t + PUBLISH_AFTER_RETIREMENT > now);
        if r.kid != active.kid() && live {
            let pk: [u8; 32] = r
                .public_key
                .as_slice()
                .try_into()
                .map_err(|_| Error::internal("bad public key length"))?;
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).map_err(Error::internal)?;
            let mut jwk = serde_json::to_value(super::signing::PublicJwk::from_verifying_key(&vk))
                .map_err(Error::internal)?;
            jwk["kid"] = serde_json::Value::String(r.kid.clone());
            published.push(jwk);
            verifiers.push((r.kid.clone(), vk));
        }
    }
    Ok(Some(Ring {
        active,
        jwks: serde_json::json!({ "keys": published }),
        verifiers,
    }))
}

fn open(master: &MasterKey, r: &SigningKeyRecord) -> Result<SigningKey> {
    SigningKey::open_sealed(master, &r.kid, &r.sealed_private, r.created_at.max(0) as u64).map_err(|_| {
        Error::internal(
            "a signing key could not be unsealed: the master key differs from the one that sealed it",
        )
    })
}

/// The master key: `KEYBOUND_MASTER_KEY` when given; otherwise the key in `file`; outside
/// `prod`, a generated key kept in `file` (0600) when there is none yet, with a warning.
pub fn master_key(
    given: Option<&SecretString>,
    file: &std::path::Path,
    prod: bool,
) -> Result<MasterKey> {
    if let Some(b64) = given {
        return MasterKey::from_base64(b64.expose_secret().trim()).map_err(|_| {
            Error::InvalidRequest("KEYBOUND_MASTER_KEY must be 32 bytes in base64".into())
        });
    }
    if prod {
        // Production reads a key file it is given (a mounted secret) but never makes one:
        // a generated key nobody backed up would seal every signing key with a secret that
        // dies with the disk.
        return MasterKey::read_existing_file(file).map_err(|e| {
            Error::InvalidRequest(format!(
                "the prod profile needs KEYBOUND_MASTER_KEY or a readable --master-key-file: {e}"
            ))
        });
    }
    let (key, created) = MasterKey::load_or_create_file(file)
        .map_err(|e| Error::InvalidRequest(format!("master key file {}: {e}", file.display())))?;
    if created {
        tracing::warn!(path = %file.display(), "generated a development master key file; set KEYBOUND_MASTER_KEY in production");
    }
    Ok(key)
}
