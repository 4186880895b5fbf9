//! keybound

/// Token issuance: Ed25519 signing keys and the JWKS, access token claims, refresh tokens,
/// and the master key that seals signing keys at rest (contract sections 3.3 and 4).
pub mod tokens;
