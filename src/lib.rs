//! keybound

/// RFC 9449 DPoP proof verification, JWK thumbprints and stateless server nonces.
pub mod dpop;
/// Replay store for DPoP `jti`s behind one trait; in memory for one instance.
pub mod replay;
