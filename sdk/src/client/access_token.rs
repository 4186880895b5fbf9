use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use crate::trust::TrustLevel;

/// An access token from keybound, bound to the client's device key, with what the server said
/// about it. Cheap to clone.
///
/// `Debug` never prints the token itself.
#[derive(Clone)]
pub struct AccessToken {
    inner: Arc<Inner>,
}

struct Inner {
    token: SecretString,
    expires_at: SystemTime,
    scope: String,
    device_id: String,
    trust_level: TrustLevel,
    trust_score: f64,
    attested: Option<String>,
}

impl AccessToken {
    pub(crate) fn new(
        token: String,
        expires_at: SystemTime,
        scope: String,
        device_id: String,
        trust_level: TrustLevel,
        trust_score: f64,
        attested: Option<String>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                token: token.into(),
                expires_at,
                scope,
                device_id,
                trust_level,
                trust_score,
                attested,
            }),
        }
    }

    /// The JWT itself. It only works together with a DPoP proof from this device, but still
    /// treat it as a secret: keep it out of logs and URLs. Prefer
    /// [`Client::authorize`](crate::Client::authorize), which builds both headers.
    pub fn expose_secret(&self) -> &str {
        self.inner.token.expose_secret()
    }

    /// When the token expires, by this machine's clock (from the server's `expires_in`).
    pub fn expires_at(&self) -> SystemTime {
        self.inner.expires_at
    }

    /// The granted scopes, space separated; a limited device may get fewer than it asked for.
    pub fn scope(&self) -> &str {
        &self.inner.scope
    }

    /// keybound's id for this device.
    pub fn device_id(&self) -> &str {
        &self.inner.device_id
    }

    /// How far keybound trusts this device.
    pub fn trust_level(&self) -> TrustLevel {
        self.inner.trust_level
    }

    /// The device's trust score, 0 to 1.
    pub fn trust_score(&self) -> f64 {
        self.inner.trust_score
    }

    /// The platform attestation keybound has on record for this device key
    /// (`"apple-appattest"`, `"android-key"`), if any (contract section 8).
    pub fn attested(&self) -> Option<&str> {
        self.inner.attested.as_deref()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &"[REDACTED]")
            .field("expires_at", &self.inner.expires_at)
            .field("scope", &self.inner.scope)
            .field("device_id", &self.inner.device_id)
            .field("trust_level", &self.inner.trust_level)
            .field("attested", &self.inner.attested)
            .finish()
    }
}
