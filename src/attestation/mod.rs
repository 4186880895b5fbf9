//! Platform attestation (contract section 8): proof, once, that a device's DPoP key belongs to
//! a genuine build of the app on genuine hardware.
//!
//! A pure, synchronous verification core: no HTTP, no storage, no clock of its own (`now` is
//! passed in, so tests verify real vectors at the time they were made). The server checks the
//! challenge (single use, expiry) before it calls [`Verifier::verify`].
//!
//! - [`apple`]: App Attest, Apple's attestation-object validation steps 1-9.
//! - [`android`]: Android Key Attestation, the chain and the key description extension.
//! - [`chain`]: X.509 chains to the trust anchors, shared by both.
//!
//! Every failure is an [`AttestationError`] whose message names the check that failed (the
//! server puts it in the `ATTESTATION_FAILED` alert); no message carries the attestation's
//! bytes.
//!
//! Built-in trust anchors (public certificates, in `src/attestation/roots/`):
//! - Apple App Attestation Root CA, from
//!   <https://www.apple.com/certificateauthority/Apple_App_Attestation_Root_CA.pem>
//!   (SHA-256 of the DER: `1cb9823b…6242c932`, checked by a test).
//! - Google's hardware attestation roots (the RSA-4096 key in its four published certificates,
//!   and the ECDSA P-384 "Key Attestation CA1" signing chains from 2026-02-01), from
//!   <https://developer.android.com/privacy-and-security/security-key-attestation#root_certificate>.

use std::collections::HashSet;

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256};

mod android;
mod apple;
mod chain;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

/// Apple App Attestation Root CA (PEM).
const APPLE_ROOT_PEM: &[u8] = include_bytes!("roots/apple-app-attestation-root-ca.pem");
/// Google Hardware Attestation roots (PEM bundle with comments).
const GOOGLE_ROOTS_PEM: &[u8] = include_bytes!("roots/google-hardware-attestation-roots.pem");

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
    let invalid = || {
        "a signing-certificate SHA-256 is 64 hex digits, optionally with ':' between bytes"
            .to_string()
    };
    let s = s.trim();
    let hex: String = if s.contains(':') {
        // Colons only between whole bytes (the keytool/apksigner form AA:BB:…).
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 32 || parts.iter().any(|p| p.len() != 2) {
            return Err(invalid());
        }
        parts.concat()
    } else {
        s.to_string()
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
    }
    Ok(out)
}

/// Parses Google's attestation status list
/// (`{"entries": {"<serial hex>": {"status": "REVOKED", ...}}}`) into the revoked serials,
/// lower-case hex.
pub fn parse_android_revocations(json: &[u8]) -> Result<HashSet<String>, String> {
    #[derive(Deserialize)]
    struct StatusList {
        entries: std::collections::HashMap<String, Entry>,
    }
    #[derive(Deserialize)]
    struct Entry {
        status: String,
    }
    let list: StatusList = serde_json::from_slice(json)
        .map_err(|e| format!("not an attestation status list ({{\"entries\": {{...}}}}): {e}"))?;
    // Only REVOKED refuses; SUSPENDED entries are temporary and Google documents them as
    // "do not trust for now", so they refuse too.
    Ok(list
        .entries
        .into_iter()
        .filter(|(_, e)| {
            e.status.eq_ignore_ascii_case("REVOKED") || e.status.eq_ignore_ascii_case("SUSPENDED")
        })
        // Serials compare as `{:x}` of the certificate's serial: lower case, no leading zeros.
        .map(|(serial, _)| {
            let s = serial.trim().trim_start_matches('0').to_ascii_lowercase();
            if s.is_empty() { "0".to_string() } else { s }
        })
        .collect())
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
    apple_roots: Vec<chain::Anchor>,
    google_roots: Vec<chain::Anchor>,
    extra_roots: Vec<chain::Anchor>,
    links: chain::VerifiedLinks,
}

impl Verifier {
    /// Builds a verifier: parses the built-in roots and `settings.extra_roots_pem`.
    pub fn new(settings: Settings) -> Result<Self, String> {
        let apple_roots = chain::Anchor::from_pem_bundle(APPLE_ROOT_PEM)?;
        let google_roots = chain::Anchor::from_pem_bundle(GOOGLE_ROOTS_PEM)?;
        let mut extra_roots = Vec::new();
        for (i, pem) in settings.extra_roots_pem.iter().enumerate() {
            let anchors = chain::Anchor::from_pem_bundle(pem)
                .map_err(|e| format!("--attestation-root file {}: {e}", i + 1))?;
            extra_roots.extend(anchors);
        }
        Ok(Verifier {
            settings,
            apple_roots,
            google_roots,
            extra_roots,
            links: chain::VerifiedLinks::default(),
        })
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
        match att {
            Attestation::Apple { key_id, object, .. } => {
                // Apple's clientDataHash is SHA-256 of what the app attested.
                let client_data_hash = Sha256::digest(client_data);
                apple::verify(&self.apple_policy(), key_id, object, &client_data_hash, now)
            }
            Attestation::Android {
                certificate_chain, ..
            } => android::verify(
                &self.android_policy(),
                certificate_chain,
                client_data,
                p256_point(dpop_jwk).as_deref(),
                now,
            ),
        }
    }

    fn apple_policy(&self) -> apple::Policy<'_> {
        apple::Policy {
            app_ids: &self.settings.apple_app_ids,
            allow_development: self.settings.allow_development,
            anchors: self.apple_roots.iter().chain(&self.extra_roots).collect(),
            links: &self.links,
        }
    }

    fn android_policy(&self) -> android::Policy<'_> {
        android::Policy {
            packages: &self.settings.android_packages,
            signing_cert_sha256: &self.settings.android_signing_cert_sha256,
            revoked_serials: &self.settings.android_revoked_serials,
            anchors: self.google_roots.iter().chain(&self.extra_roots).collect(),
            links: &self.links,
        }
    }
}

/// The uncompressed SEC1 point of an EC P-256 JWK (RFC 7518 6.2.1), or `None` for any other
/// key or a malformed one.
fn p256_point(jwk: &serde_json::Value) -> Option<Vec<u8>> {
    if jwk.get("kty")?.as_str()? != "EC" || jwk.get("crv")?.as_str()? != "P-256" {
        return None;
    }
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let x = b64.decode(jwk.get("x")?.as_str()?).ok()?;
    let y = b64.decode(jwk.get("y")?.as_str()?).ok()?;
    if x.len() != 32 || y.len() != 32 {
        return None;
    }
    let mut point = Vec::with_capacity(65);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    Some(point)
}

/// Base64 as apps send it: standard or URL-safe alphabet, padded or not (iOS's
/// `base64EncodedString()` pads; Android's `Base64.NO_WRAP | URL_SAFE` may not).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&base64::alphabet::STANDARD, config)
        .decode(s)
        .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, config).decode(s))
        .ok()
}
