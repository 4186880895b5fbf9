//! What a verified access token tells a resource server (contract section 4).

use serde::Deserialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind, Result};
use crate::trust::TrustLevel;

/// The claims of an access token, as this crate reads them after the signature checked out.
/// `iss`, `aud` and `nbf` are checked by [`ClaimRules`](super::claims::ClaimRules) and not
/// needed here.
#[derive(Deserialize)]
pub(crate) struct AccessClaims {
    pub(crate) sub: String,
    pub(crate) client_id: Option<String>,
    pub(crate) iat: u64,
    pub(crate) exp: u64,
    #[serde(default)]
    pub(crate) scope: String,
    pub(crate) cnf: Option<Confirmation>,
    pub(crate) did: String,
    pub(crate) trust: TrustLevel,
    /// Where the token's revocation status is published (contract section 10); absent in
    /// tokens from servers older than the status lists.
    pub(crate) status: Option<super::status::StatusClaim>,
}

#[derive(Deserialize)]
pub(crate) struct Confirmation {
    pub(crate) jkt: Option<String>,
}

/// An access token that passed every check of [`Verifier::verify_request`](crate::Verifier::verify_request):
/// signature, issuer, audience, lifetime, DPoP proof, key binding, replay and revocation.
///
/// It holds only claims, never the token itself, so it is safe to log with `Debug`.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    subject: String,
    client_id: String,
    scopes: Vec<String>,
    device_id: String,
    trust: TrustLevel,
    thumbprint: String,
    issued_at: u64,
    expires_at: u64,
}

impl VerifiedToken {
    pub(crate) fn new(claims: AccessClaims, thumbprint: String) -> Self {
        Self {
            client_id: claims.client_id.unwrap_or_else(|| claims.sub.clone()),
            subject: claims.sub,
            scopes: claims.scope.split_whitespace().map(str::to_owned).collect(),
            device_id: claims.did,
            trust: claims.trust,
            thumbprint,
            issued_at: claims.iat,
            expires_at: claims.exp,
        }
    }

    /// `sub`: the public id (`ak_…`) of the API key the token was issued for.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// `client_id`: the same API key id (the contract sets both).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The granted scopes (`scope`, split on spaces).
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Whether `scope` was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// `Ok` if `scope` was granted, otherwise an error of kind
    /// [`ErrorKind::InsufficientScope`] (with the `axum` feature it answers 403 with
    /// `WWW-Authenticate: DPoP error="insufficient_scope"`).
    pub fn require_scope(&self, scope: &str) -> Result<()> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(Error::new(ErrorKind::InsufficientScope)
                .with_message(format!("the token lacks the scope {scope:?}")))
        }
    }

    /// `did`: keybound's id for the device.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// `trust`: how far keybound trusts the device.
    pub fn trust(&self) -> TrustLevel {
        self.trust
    }

    /// `cnf.jkt`: the RFC 7638 thumbprint of the device key the token is bound to, which the
    /// request's DPoP proof was checked against.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// `iat`: when the token was issued.
    pub fn issued_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.issued_at)
    }

    /// `exp`: when the token expires.
    pub fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(self.expires_at)
    }
}
