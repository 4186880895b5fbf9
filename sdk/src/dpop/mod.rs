//! DPoP proofs (RFC 9449): building them for the client, checking them for the verifier.

mod build;
mod check;

pub use build::DpopProofBuilder;
pub(crate) use check::{ProofExpectations, ProofKeys, check_proof};

use reqwest::Url;

use crate::error::{Error, Result};

/// The `typ` every proof carries (RFC 9449 section 4.2).
pub(crate) const PROOF_TYP: &str = "dpop+jwt";

/// The `alg` values accepted in a proof: EdDSA (also under its RFC 9864 name `Ed25519`) and
/// ES256, as the contract lists. Never `none` and never a symmetric algorithm: a proof must be
/// verifiable with the public key it carries.
pub(crate) const PROOF_ALGS: [&str; 3] = ["EdDSA", "Ed25519", "ES256"];

/// JWK members that only a private key has. A proof carrying one leaks the device key, so it is
/// refused on both sides.
pub(crate) const PRIVATE_JWK_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "k"];

/// The `htu` form of a URL: RFC 9449 section 4.2 says "without query and fragment parts".
/// Parsing also normalises case and default ports, so two spellings of one URL compare equal.
pub(crate) fn htu(url: &str) -> Result<String> {
    let mut url = Url::parse(url).map_err(|e| Error::config(format!("invalid URL: {e}")))?;
    url.set_query(None);
    url.set_fragment(None);
    Ok(url.into())
}
