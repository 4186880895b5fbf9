//! Request bodies of the token endpoints, with the contract's limits.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Most fingerprint attributes per device.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute name.
pub const MAX_ATTRIBUTE_NAME: usize = 64;
/// Longest attribute value.
pub const MAX_ATTRIBUTE_VALUE: usize = 256;

/// `POST /v1/token` body; every field optional, an empty body is `{}`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct TokenRequest {
    /// Space-separated scopes; default all of the key's.
    pub scope: Option<String>,
    /// Audience; default the first allowed one.
    pub audience: Option<String>,
    /// The device's name and fingerprint.
    pub device: Option<DeviceInfo>,
}

/// The device part of a token request.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct DeviceInfo {
    /// Display name.
    pub name: Option<String>,
    /// Flat string→string fingerprint.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// `POST /v1/token/refresh` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct RefreshRequest {
    /// The refresh token to spend.
    pub refresh_token: String,
}

impl TokenRequest {
    /// Checks the contract's limits.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidRequest(m));
        if let Some(s) = &self.scope
            && (s.len() > 4096 || s.split_whitespace().count() > 64)
        {
            return bad("scope: at most 64 scopes and 4096 characters".into());
        }
        if self.audience.as_ref().is_some_and(|a| a.len() > 1024) {
            return bad("audience: at most 1024 characters".into());
        }
        if let Some(d) = &self.device {
            if d.name.as_ref().is_some_and(|n| n.chars().count() > 256) {
                return bad("device.name: at most 256 characters".into());
            }
            if d.attributes.len() > MAX_ATTRIBUTES {
                return bad(format!(
                    "device.attributes: at most {MAX_ATTRIBUTES} entries"
                ));
            }
            for (k, v) in &d.attributes {
                if k.is_empty() || k.chars().count() > MAX_ATTRIBUTE_NAME {
                    return bad(format!(
                        "device.attributes: names are 1 to {MAX_ATTRIBUTE_NAME} characters"
                    ));
                }
                if v.chars().count() > MAX_ATTRIBUTE_VALUE {
                    return bad(format!(
                        "device.attributes: values are at most {MAX_ATTRIBUTE_VALUE} characters"
                    ));
                }
            }
        }
        Ok(())
    }
}
