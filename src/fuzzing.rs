//! The bodies of the fuzz targets, shared by the libFuzzer targets in `fuzz/` (run with
//! cargo-fuzz on nightly, `fuzz/run.sh`) and the property tests in `tests/api/fuzz.rs` (run by
//! every `cargo test`, on stable, for a bounded number of cases).
//!
//! Each takes arbitrary bytes, feeds them to a parser that faces the network, and panics only
//! when a property breaks: the parsers themselves must never panic, whatever they are given.

use crate::dpop::{self, VerifyOptions};
use crate::exchange::{RefreshRequest, TokenRequest};
use crate::keys::service::{KeyPatch, NewKey, parse_cidrs, parse_origins, validate_scopes};
use crate::keys::{ApiKey, KeyId, format::find_keys};

/// The `htu` the DPoP target verifies against.
pub const HTU: &str = "https://keybound.example/v1/token";

/// The clock the DPoP target verifies at (proofs built for it have `iat` near it).
pub const NOW: i64 = 1_750_000_000;

/// The API key parser: anything accepted is exactly the contract's format, and round-trips.
pub fn api_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let scanned = find_keys(text.as_bytes());
    let Ok(key) = ApiKey::parse(text) else {
        return;
    };
    // `^sk_(prod|test|dev)_[0-9A-Za-z]{61}$` and nothing else.
    let env = key.env().as_str();
    let body = text
        .strip_prefix("sk_")
        .and_then(|r| r.strip_prefix(env))
        .and_then(|r| r.strip_prefix('_'))
        .expect("an accepted key starts with sk_<env>_");
    assert_eq!(body.len(), 61, "body length");
    assert!(body.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(key.expose(), text, "the key is kept as presented");
    let id = key.id();
    assert_eq!(id.as_str(), format!("ak_{env}_{}", &body[..12]));
    assert!(KeyId::parse(id.as_str()).is_some(), "its id parses");
    assert!(
        scanned.iter().any(|(_, found)| found == id),
        "the scanner finds every key the parser accepts"
    );
}

/// The DPoP proof verifier, on arbitrary input: never panics, and anything it accepts was
/// checked against the request it was asked about.
pub fn dpop_proof(data: &[u8]) {
    let Ok(proof) = std::str::from_utf8(data) else {
        return;
    };
    let opts = VerifyOptions::default();
    if let Ok(verified) = dpop::verify_proof(proof, "POST", HTU, NOW, &opts) {
        assert!(
            (verified.iat - NOW).abs() <= opts.iat_leeway_secs,
            "iat outside the window"
        );
        assert!(!verified.jti.is_empty());
        assert!(!verified.jkt.is_empty());
    }
}

/// The request bodies: serde never panics, and validation never panics on what it accepts.
pub fn bodies(data: &[u8]) {
    if let Ok(body) = serde_json::from_slice::<TokenRequest>(data)
        && body.validate().is_ok()
        && let Some(device) = &body.device
    {
        assert!(
            device.attributes.len() <= 32,
            "the contract allows 32 attributes"
        );
    }
    let _ = serde_json::from_slice::<RefreshRequest>(data);
    if let Ok(new) = serde_json::from_slice::<NewKey>(data) {
        let _ = validate_scopes("scopes", &new.scopes);
        if let Ok(cidrs) = parse_cidrs(&new.allowed_ips) {
            // Normalised CIDRs parse again to themselves.
            assert_eq!(parse_cidrs(&cidrs).ok().as_ref(), Some(&cidrs));
        }
        if let Ok(origins) = parse_origins(&new.allowed_origins) {
            assert_eq!(parse_origins(&origins).ok().as_ref(), Some(&origins));
        }
    }
    if let Ok(patch) = serde_json::from_slice::<KeyPatch>(data)
        && let Some(scopes) = &patch.scopes
    {
        let _ = validate_scopes("scopes", scopes);
    }
}
