//! Platform attestation (contract section 8): proof, once, that a device's DPoP key belongs to
//! a genuine build of the app on genuine hardware.
//!
//! A pure, synchronous verification core: no HTTP, no storage, no clock of its own (`now` is
//! passed in, so tests verify real vectors at the time they were made). The server checks the
//! challenge (single use, expiry) before it calls [`Verifier::verify`].

use std::collections::HashSet;

use serde::Deserialize;

/// The `device.attestation` member of an exchange (contract section 8, "Presenting it").
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "format")]
pub enum Attestation {
    /// Apple App Attest: the key id and the CBOR attestation object, both base64.
    #[serde(rename = "apple-appattest")]
    Apple {
        /// The challenge from `POST /v1/attestation/challenge`.
        challenge: String,
        /// Base64 key identifier (SHA-256 of the App Attest public key).
        key_id: String,
        /// Base64 CBOR attestation object.
        object: String,
    },
    /// Android Key Attestation: the DPoP key's certificate chain, base64 DER, leaf first.
    #[serde(rename = "android-key")]
    Android {
        /// The challenge from `POST /v1/attestation/challenge`.
        challenge: String,
        /// Base64 DER certificates, leaf first.
        certificate_chain: Vec<String>,
    },
}

impl Attestation {
    /// The challenge this attestation claims.
    pub fn challenge(&self) -> &str {
        match self {
            Attestation::Apple { challenge, .. } | Attestation::Android { challenge, .. } => {
                challenge
            }
        }
    }

    /// Its format.
    pub fn format(&self) -> Format {
        match self {
            Attestation::Apple { .. } => Format::AppleAppAttest,
            Attestation::Android { .. } => Format::AndroidKey,
        }
    }
}

/// An attestation format, as the contract names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `apple-appattest`
    AppleAppAttest,
    /// `android-key`
    AndroidKey,
}

impl Format {
    /// The contract's name: `apple-appattest` or `android-key`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::AppleAppAttest => "apple-appattest",
            Format::AndroidKey => "android-key",
        }
    }

    /// Parses the contract's name.
    pub fn parse(s: &str) -> Option<Format> {
        match s {
            "apple-appattest" => Some(Format::AppleAppAttest),
            "android-key" => Some(Format::AndroidKey),
            _ => None,
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the verifier accepts (from the `--apple-app-id`, `--android-*` and `--attestation-*`
/// settings).
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `TEAMID.BUNDLE_ID` values; empty: every App Attest attestation fails.
    pub apple_app_ids: Vec<String>,
    /// Accept the `appattestdevelop` AAGUID (development builds). Default off.
    pub allow_development: bool,
    /// Android package names; empty: every Android attestation fails.
    pub android_packages: Vec<String>,
    /// SHA-256 digests of the app's signing certificates; empty: every Android attestation fails.
    pub android_signing_cert_sha256: Vec<[u8; 32]>,
    /// Contents of `--attestation-root` files (PEM, one or more certificates): extra trust
    /// anchors for both formats.
    pub extra_roots_pem: Vec<Vec<u8>>,
    /// Revoked Android attestation certificate serials, lower-case hex.
    pub android_revoked_serials: HashSet<String>,
}

/// Parses an `--android-signing-cert-sha256` value: 64 hex digits, either case, with or
/// without `:` between bytes.
pub fn parse_signing_cert_sha256(s: &str) -> Result<[u8; 32], String> {
    Err(format!("not implemented yet: {}", s.len()))
}

/// Parses Google's attestation status list
/// (`{"entries": {"<serial hex>": {"status": "REVOKED", ...}}}`) into the revoked serials,
/// lower-case hex.
pub fn parse_android_revocations(json: &[u8]) -> Result<HashSet<String>, String> {
    Err(format!("not implemented yet: {}", json.len()))
}

/// A verified attestation: what the server records on the device.
#[derive(Debug, Clone)]
pub struct Attested {
    /// The format that verified.
    pub format: Format,
    /// Android: `TrustedEnvironment` or `StrongBox`.
    pub security_level: Option<String>,
    /// Apple: the App Attest credential public key (SEC1 uncompressed point).
    pub public_key: Option<Vec<u8>>,
    /// Apple: the key id (SHA-256 of `public_key`).
    pub key_id: Option<Vec<u8>>,
}

/// A failed attestation; the message names the check that failed and carries no secret.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AttestationError(pub String);

/// Verifies attestations; built once (parses and keeps the trust anchors).
#[derive(Debug)]
pub struct Verifier {
    settings: Settings,
}

impl Verifier {
    /// Builds a verifier: parses the built-in roots and `settings.extra_roots_pem`.
    pub fn new(settings: Settings) -> Result<Self, String> {
        Ok(Verifier { settings })
    }

    /// Verifies `att` for `client_data` (the bytes the app attested: the server passes
    /// `<challenge>.<jkt>`) and the DPoP proof's public JWK, at `now` (unix seconds).
    pub fn verify(
        &self,
        att: &Attestation,
        client_data: &[u8],
        dpop_jwk: &serde_json::Value,
        now: i64,
    ) -> Result<Attested, AttestationError> {
        let _ = (&self.settings, att, client_data, dpop_jwk, now);
        Err(AttestationError("attestation not implemented yet".into()))
    }
}
