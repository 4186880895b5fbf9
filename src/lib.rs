//! keybound

/// RFC 9449 DPoP proof verification and RFC 7638 JWK thumbprints.
pub mod dpop;
