use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::{Signer, SigningKey};
use rand::rngs::OsRng;
use serde_json::{Value, json};
use std::fmt;
use std::path::Path;

use super::{DeviceKey, Signing};
use crate::error::{Error, Result};
use crate::file;
use crate::jose::b64_encode;

/// An Ed25519 device key held in memory; the default [`DeviceKey`].
///
/// The private key is zeroized when the value is dropped and is never printed by `Debug`.
pub struct Ed25519DeviceKey {
    signing_key: SigningKey,
}

impl Ed25519DeviceKey {
    /// A fresh key from the operating system's CSPRNG. It lives only as long as the process:
    /// a new key is a new device to keybound, so apps usually want
    /// [`load_or_create`](Self::load_or_create).
    pub fn generate() -> Self {
        Self {
            signing_key: SigningKey::generate(&mut OsRng),
        }
    }

    /// The key with this 32-byte seed (RFC 8032 private key), for test vectors.
    #[cfg(test)]
    pub(crate) fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            signing_key: SigningKey::from_bytes(seed),
        }
    }

    /// Loads the key stored at `path`, or creates one and stores it there.
    ///
    /// The file holds the key as PKCS#8 DER. It is created with mode `0600` through a temporary
    /// file in the same directory that is then linked into place, so a crash never leaves a
    /// half-written key and two processes starting at once end up with the same key. On Unix a
    /// file readable by group or others is refused, as `ssh` does, because anyone who can read
    /// it can act as this device.
    pub fn load_or_create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let der = file::load_or_create(path, || {
            let key = Self::generate();
            let der = key
                .signing_key
                .to_pkcs8_der()
                .map_err(|e| Error::device_key(e.to_string()))?;
            Ok(zeroize::Zeroizing::new(der.as_bytes().to_vec()))
        })?;
        let signing_key = SigningKey::from_pkcs8_der(&der).map_err(|_| {
            Error::device_key(format!("{} is not an Ed25519 PKCS#8 key", path.display()))
        })?;
        Ok(Self { signing_key })
    }
}

impl DeviceKey for Ed25519DeviceKey {
    fn public_jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": b64_encode(self.signing_key.verifying_key().as_bytes()),
        })
    }

    fn alg(&self) -> &str {
        "EdDSA"
    }

    fn sign<'a>(&'a self, message: &'a [u8]) -> Signing<'a> {
        Signing::ready(Ok(self.signing_key.sign(message).to_bytes().to_vec()))
    }
}

impl fmt::Debug for Ed25519DeviceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519DeviceKey")
            .field("public_jwk", &self.public_jwk())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_or_create_persists_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        let first = Ed25519DeviceKey::load_or_create(&path).unwrap();
        let second = Ed25519DeviceKey::load_or_create(&path).unwrap();
        assert_eq!(first.thumbprint().unwrap(), second.thumbprint().unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary files are left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn load_refuses_a_world_readable_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        Ed25519DeviceKey::load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Ed25519DeviceKey::load_or_create(&path).unwrap_err();
        assert_eq!(err.kind(), &crate::ErrorKind::DeviceKey);
    }

    #[test]
    fn load_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("device.key");
        Ed25519DeviceKey::load_or_create(&path).unwrap();
        std::fs::write(&path, b"not a key").unwrap();
        let err = Ed25519DeviceKey::load_or_create(&path).unwrap_err();
        assert_eq!(err.kind(), &crate::ErrorKind::DeviceKey);
    }

    #[test]
    fn debug_does_not_print_the_private_key() {
        let key = Ed25519DeviceKey::generate();
        let secret = b64_encode(key.signing_key.to_bytes());
        assert!(!format!("{key:?}").contains(&secret));
    }
}
