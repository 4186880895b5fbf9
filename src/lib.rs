//! keybound

/// Device trust: scoring a device key's fingerprint, history and network into
/// `trusted`, `limited` or denied (contract section 6).
pub mod devices;
/// Token issuance: Ed25519 signing keys and the JWKS, access token claims, refresh tokens,
/// and the master key that seals signing keys at rest (contract sections 3.3 and 4).
pub mod tokens;
