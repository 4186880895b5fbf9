//! keybound

/// RFC 9449 DPoP proof verification, JWK thumbprints and stateless server nonces.
pub mod dpop;
/// Replay stores for DPoP `jti`s: in memory for one instance, Redis for several.
pub mod replay;
