//! Why a DPoP proof was refused.

/// Why [`verify_proof`](super::verify_proof) refused a proof.
///
/// Every variant maps to `401 INVALID_DPOP_PROOF` at the HTTP layer; the variants exist so a log
/// line (and the error message) can say *why*. Messages are fixed strings: they never echo the
/// proof or any part of it, because a proof is a credential (CONTRACT §7) and because echoing
/// attacker-controlled text into logs invites log injection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// The proof is longer than [`VerifyOptions::max_proof_bytes`](super::VerifyOptions).
    #[error("proof is larger than {limit} bytes")]
    TooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// Not three base64url parts, or a part that is not the JSON object it should be.
    #[error("proof is not a well-formed compact JWS")]
    Malformed,
    /// `alg` is missing or not one of `EdDSA`, `Ed25519`, `ES256` (RFC 9449 §4.3 check 5).
    #[error("alg not allowed: only EdDSA, Ed25519 and ES256 are accepted")]
    AlgNotAllowed,
    /// `typ` is missing or not `dpop+jwt` (RFC 9449 §4.3 check 4).
    #[error("typ must be dpop+jwt")]
    WrongTyp,
    /// The header has a `crit` parameter; we implement no extension (RFC 7515 §4.1.11).
    #[error("crit header parameter is not supported")]
    UnsupportedCrit,
    /// No `jwk` header parameter (RFC 9449 §4.2).
    #[error("jwk header parameter is missing")]
    MissingJwk,
    /// The `jwk` carries private key members (RFC 9449 §4.3 check 7).
    #[error("private key material in jwk")]
    PrivateKeyInJwk,
    /// The `jwk` key type or curve does not fit `alg` (algorithm confusion).
    #[error("jwk key type or curve does not match alg")]
    KeyAlgMismatch,
    /// The `jwk` is not a usable public key of its type.
    #[error("jwk is invalid: {0}")]
    InvalidJwk(&'static str),
    /// The signature does not verify with the `jwk` (RFC 9449 §4.3 check 6).
    #[error("bad signature")]
    BadSignature,
    /// `jti` is missing, not a string, empty or longer than 256 bytes.
    #[error("jti must be a non-empty string of at most 256 bytes")]
    InvalidJti,
    /// A required claim is missing or has the wrong JSON type (RFC 9449 §4.3 check 3).
    #[error("claim {0} is missing or has the wrong type")]
    InvalidClaim(&'static str),
    /// `htm` is not the request's method (RFC 9449 §4.3 check 8).
    #[error("htm mismatch")]
    HtmMismatch,
    /// `htu` is not the request's URI, or is not an http(s) URI (RFC 9449 §4.3 check 9).
    #[error("htu mismatch")]
    HtuMismatch,
    /// `iat` is further than the leeway from the server's clock (RFC 9449 §4.3 check 11).
    #[error("iat outside the acceptance window")]
    IatOutsideWindow,
    /// The *expected* URI given by the server is not an absolute http(s) URI: a configuration
    /// bug on our side, reported separately so it is not mistaken for a client fault.
    #[error("expected htu is not an absolute http(s) URI (server misconfiguration)")]
    InvalidExpectedHtu,
}
