//! The device trust level keybound puts in tokens and token responses (contract section 6).

use serde::Deserialize;
use std::fmt;

/// How far keybound trusts the device a token was issued to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum TrustLevel {
    /// A known device with consistent fingerprints: full scopes and TTL.
    Trusted,
    /// A new or inconsistent device: scopes cut to the key's limited set, TTL at most 60 s.
    Limited,
    /// A level this version of the SDK does not know. Treat it as the least trusted.
    #[serde(other)]
    Unknown,
}

impl TrustLevel {
    /// The contract's name for the level (`"trusted"`, `"limited"`), or `"unknown"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trusted => "trusted",
            Self::Limited => "limited",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for TrustLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
