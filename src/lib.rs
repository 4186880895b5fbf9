//! keybound

/// RFC 9449 DPoP proof verification, JWK thumbprints and stateless server nonces.
pub mod dpop;
