//! What a client keeps between launches, so that a relaunch refreshes instead of spending a
//! full exchange of the API key.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind, Result};
use crate::file;

/// The state a [`Client`](crate::Client) persists through a [`SessionStore`]. `Debug` never
/// prints the refresh token.
///
/// Fields may be added in minor releases; build one with `Session::default()` and set fields.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct Session {
    /// The current refresh token; `None` before the first exchange and after
    /// [`Client::sign_out`](crate::Client::sign_out). It rotates on every refresh, so the
    /// client saves the session after each one.
    pub refresh_token: Option<SecretString>,
    /// When the refresh token expires, by this device's clock.
    pub refresh_expires_at: Option<SystemTime>,
    /// keybound's id for this device, once an exchange gave one.
    pub device_id: Option<String>,
    /// The RFC 7638 thumbprint of the device key this session belongs to. A stored session
    /// for another key is cleared rather than used: its refresh token is bound to that key.
    pub key_thumbprint: Option<String>,
    /// The attestation format keybound recorded for this device key (`trust.attested`), once
    /// it answered one: the client never attests this key again.
    pub attested: Option<String>,
    /// The install id sent as the `install_id` device attribute: random, made once per
    /// install and device key, and kept across sign-outs.
    pub install_id: Option<String>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("refresh_expires_at", &self.refresh_expires_at)
            .field("device_id", &self.device_id)
            .field("key_thumbprint", &self.key_thumbprint)
            .field("attested", &self.attested)
            .field("install_id", &self.install_id)
            .finish()
    }
}

/// Where a [`Client`](crate::Client) keeps its [`Session`] between launches: the Keychain on
/// iOS, EncryptedSharedPreferences on Android, [`FileSessionStore`] on a desktop or server.
///
/// The client calls [`load`](Self::load) once, when it is built; [`save`](Self::save) after
/// every token it gets (the refresh token rotates each time) and after a sign-out (without
/// the refresh token); [`clear`](Self::clear) when the stored session belongs to another
/// device key. A failing `save` is logged and followed by a `clear`, so a spent refresh token
/// is never presented after a relaunch (that would look like theft and revoke the family).
pub trait SessionStore: Send + Sync + fmt::Debug {
    /// The stored session, or `None` when there is none.
    fn load(&self) -> Result<Option<Session>>;
    /// Stores `session`, replacing the previous one.
    fn save(&self, session: &Session) -> Result<()>;
    /// Forgets the stored session.
    fn clear(&self) -> Result<()>;
}

/// A [`SessionStore`] in a JSON file, for desktop apps, CLIs and services.
///
/// The file is written with mode `0600` through a temporary file renamed into place, and a
/// file that group or others can read is refused (as for
/// [`Ed25519DeviceKey::load_or_create`](crate::Ed25519DeviceKey::load_or_create)). The refresh
/// token is stored in plain text under those permissions; on a phone, use the platform's
/// keystore instead.
#[derive(Debug, Clone)]
pub struct FileSessionStore {
    path: PathBuf,
}

impl FileSessionStore {
    /// A store in the file at `path` (created on the first save).
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_owned(),
        }
    }
}

#[derive(Serialize, Deserialize, Default)]
struct StoredSession {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_expires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_thumbprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    attested: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    install_id: Option<String>,
}

fn store_error(path: &Path, e: impl fmt::Display) -> Error {
    Error::new(ErrorKind::SessionStore)
        .with_message(format!("session file {}: {e}", path.display()))
}

impl SessionStore for FileSessionStore {
    fn load(&self) -> Result<Option<Session>> {
        let bytes = match file::read_private(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(store_error(&self.path, e)),
        };
        // The serde error is dropped: its text could quote the refresh token.
        let stored: StoredSession = serde_json::from_slice(&bytes)
            .map_err(|_| store_error(&self.path, "not a session file"))?;
        Ok(Some(Session {
            refresh_token: stored.refresh_token.map(SecretString::from),
            refresh_expires_at: stored
                .refresh_expires_at
                .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            device_id: stored.device_id,
            key_thumbprint: stored.key_thumbprint,
            attested: stored.attested,
            install_id: stored.install_id,
        }))
    }

    fn save(&self, session: &Session) -> Result<()> {
        let stored = StoredSession {
            refresh_token: session
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret().to_owned()),
            refresh_expires_at: session.refresh_expires_at.map(unix_seconds),
            device_id: session.device_id.clone(),
            key_thumbprint: session.key_thumbprint.clone(),
            attested: session.attested.clone(),
            install_id: session.install_id.clone(),
        };
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(&stored).expect("a session always serializes"),
        );
        let tmp = file::temp_path(&self.path);
        let written =
            file::write_private(&tmp, &json).and_then(|()| std::fs::rename(&tmp, &self.path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(|e| store_error(&self.path, e))?;
        file::sync_parent(&self.path);
        Ok(())
    }

    fn clear(&self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_error(&self.path, e)),
        }
    }
}

/// Seconds since the Unix epoch (0 for a time before it).
pub(crate) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_store_round_trips_and_keeps_the_file_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileSessionStore::new(dir.path().join("session.json"));
        assert!(store.load().unwrap().is_none());
        let session = Session {
            refresh_token: Some("rt-secret".to_owned().into()),
            refresh_expires_at: Some(UNIX_EPOCH + Duration::from_secs(1_900_000_000)),
            device_id: Some("dev_1".into()),
            key_thumbprint: Some("jkt".into()),
            attested: Some("android-key".into()),
            install_id: Some("i-1".into()),
        };
        store.save(&session).unwrap();
        let loaded = store.load().unwrap().unwrap();
        assert_eq!(
            loaded.refresh_token.as_ref().map(|t| t.expose_secret()),
            Some("rt-secret")
        );
        assert_eq!(loaded.refresh_expires_at, session.refresh_expires_at);
        assert_eq!(loaded.device_id.as_deref(), Some("dev_1"));
        assert_eq!(loaded.attested.as_deref(), Some("android-key"));
        assert_eq!(loaded.install_id.as_deref(), Some("i-1"));
        assert!(
            !format!("{loaded:?}").contains("rt-secret"),
            "Debug redacts"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("session.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp files left"
        );
        store.clear().unwrap();
        assert!(store.load().unwrap().is_none());
        store.clear().unwrap();
    }

    #[test]
    fn a_garbled_file_is_an_error_that_does_not_quote_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.json");
        let store = FileSessionStore::new(&path);
        store.save(&Session::default()).unwrap();
        std::fs::write(&path, b"{\"refresh_token\": 12, \"x\": \"rt-secret").unwrap();
        let err = store.load().unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::SessionStore);
        assert!(!err.to_string().contains("rt-secret"));
    }
}
