//! Why a JWK, a compact JWS or a DPoP proof was refused.

use std::fmt;

/// Why the core refused its input. One precise enum for everything the crate checks; the
/// server and the SDK each map it to their own codes and reasons.
///
/// Messages are fixed strings: they never echo the input or any part of it, because a proof is
/// a credential and because echoing attacker-controlled text into logs invites log injection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The proof is longer than [`ProofCheck::max_proof_bytes`](crate::dpop::ProofCheck).
    TooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// Not three base64url parts, or a part that is not the JSON object it should be (a
    /// duplicated member included).
    Malformed,
    /// `alg` is missing or not one of `EdDSA`, `Ed25519`, `ES256` (RFC 9449 §4.3 check 5).
    AlgNotAllowed,
    /// `typ` is missing or not `dpop+jwt` (RFC 9449 §4.3 check 4).
    WrongTyp,
    /// The header has a `crit` parameter; we implement no extension (RFC 7515 §4.1.11).
    UnsupportedCrit,
    /// No `jwk` header parameter (RFC 9449 §4.2).
    MissingJwk,
    /// The `jwk` carries private key members (RFC 9449 §4.3 check 7).
    PrivateKeyInJwk,
    /// The `jwk` key type or curve does not fit `alg` (algorithm confusion).
    KeyAlgMismatch,
    /// The `jwk` is not a usable public key of its type.
    InvalidJwk(&'static str),
    /// The signature does not verify with the `jwk` (RFC 9449 §4.3 check 6).
    BadSignature,
    /// `jti` is missing, not a string, empty or longer than 256 bytes.
    InvalidJti,
    /// A required claim is missing or has the wrong JSON type (RFC 9449 §4.3 check 3).
    InvalidClaim(&'static str),
    /// `htm` is not the request's method (RFC 9449 §4.3 check 8).
    HtmMismatch,
    /// `htu` is not the request's URI, or is not an http(s) URI (RFC 9449 §4.3 check 9).
    HtuMismatch,
    /// `iat` is further than the leeway from the verifier's clock (RFC 9449 §4.3 check 11).
    IatOutsideWindow,
    /// The *expected* URI given by the verifier is not an absolute http(s) URI: a
    /// configuration bug on the verifier's side, reported separately so it is not mistaken for
    /// a client fault.
    InvalidExpectedHtu,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooLarge { limit } => write!(f, "proof is larger than {limit} bytes"),
            Error::Malformed => f.write_str("proof is not a well-formed compact JWS"),
            Error::AlgNotAllowed => {
                f.write_str("alg not allowed: only EdDSA, Ed25519 and ES256 are accepted")
            }
            Error::WrongTyp => f.write_str("typ must be dpop+jwt"),
            Error::UnsupportedCrit => f.write_str("crit header parameter is not supported"),
            Error::MissingJwk => f.write_str("jwk header parameter is missing"),
            Error::PrivateKeyInJwk => f.write_str("private key material in jwk"),
            Error::KeyAlgMismatch => f.write_str("jwk key type or curve does not match alg"),
            Error::InvalidJwk(why) => write!(f, "jwk is invalid: {why}"),
            Error::BadSignature => f.write_str("bad signature"),
            Error::InvalidJti => f.write_str("jti must be a non-empty string of at most 256 bytes"),
            Error::InvalidClaim(name) => write!(f, "claim {name} is missing or has the wrong type"),
            Error::HtmMismatch => f.write_str("htm mismatch"),
            Error::HtuMismatch => f.write_str("htu mismatch"),
            Error::IatOutsideWindow => f.write_str("iat outside the acceptance window"),
            Error::InvalidExpectedHtu => {
                f.write_str("expected htu is not an absolute http(s) URI (server misconfiguration)")
            }
        }
    }
}

impl std::error::Error for Error {}
