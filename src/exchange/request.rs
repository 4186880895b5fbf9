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
    /// Space-separated scopes (at most 64); default all of the key's.
    #[schema(max_length = 4096)]
    pub scope: Option<String>,
    /// Audience; default the first allowed one.
    #[schema(max_length = 1024)]
    pub audience: Option<String>,
    /// The device's name and fingerprint.
    pub device: Option<DeviceInfo>,
}

/// The device part of a token request.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct DeviceInfo {
    /// Display name.
    #[schema(max_length = 256)]
    pub name: Option<String>,
    /// Flat string→string fingerprint: at most 32 entries, names of 1 to 64 characters, values
    /// of at most 256.
    #[serde(default)]
    #[schema(schema_with = attributes_schema)]
    pub attributes: BTreeMap<String, String>,
    /// A platform attestation of the device key (contract section 8): `{"format":
    /// "apple-appattest", "challenge", "key_id", "object"}` or `{"format": "android-key",
    /// "challenge", "certificate_chain": [...]}`. Verified once, at enrollment (or on a later
    /// exchange of a device not attested yet).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub attestation: Option<crate::attestation::Attestation>,
}

/// `POST /v1/token/refresh` body. The token is a secret: held as one (wiped on drop) and
/// left out of `Debug`.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct RefreshRequest {
    /// The refresh token to spend.
    #[schema(value_type = String)]
    pub refresh_token: secrecy::SecretString,
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshRequest")
            .field("refresh_token", &"[REDACTED]")
            .finish()
    }
}

/// `POST /v1/token/revoke` body (contract 9.3, RFC 7009 section 2.1), form-encoded or JSON.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct RevokeRequest {
    /// The refresh token whose family to revoke.
    #[schema(value_type = String)]
    #[serde(deserialize_with = "secret_string")]
    pub token: secrecy::SecretString,
    /// `refresh_token` or `access_token`; a hint only (RFC 7009), ignored.
    pub token_type_hint: Option<String>,
}

impl std::fmt::Debug for RevokeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevokeRequest")
            .field("token", &"[REDACTED]")
            .field("token_type_hint", &self.token_type_hint)
            .finish()
    }
}

fn secret_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<secrecy::SecretString, D::Error> {
    String::deserialize(d).map(secrecy::SecretString::from)
}

/// The contract's limits on `attributes`, as JSON Schema.
fn attributes_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type};
    let string = |min: usize, max: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(min))
            .max_length(Some(max))
    };
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .max_properties(Some(MAX_ATTRIBUTES))
        .property_names(Some(string(1, MAX_ATTRIBUTE_NAME).build()))
        .additional_properties(Some(string(0, MAX_ATTRIBUTE_VALUE)))
        .build()
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
