//! DPoP proofs (RFC 9449): building them for the client, checking them for the verifier.

mod build;
mod check;

pub use build::DpopProofBuilder;
pub(crate) use check::{ProofExpectations, ProofKeys, check_proof};

use reqwest::Url;

use crate::error::{Error, Result};

/// The `typ` every proof carries (RFC 9449 section 4.2).
pub(crate) use keybound_jose::dpop::DPOP_TYP as PROOF_TYP;

/// JWK members that only a private key has: the one list of `keybound-jose`, which the server
/// checks too. A proof carrying one leaks the device key, so it is refused on both sides, and
/// the builder refuses to send one.
pub(crate) use keybound_jose::PRIVATE_MEMBERS as PRIVATE_JWK_MEMBERS;

/// The `htu` form of a URL: RFC 9449 section 4.2 says "without query and fragment parts".
/// Parsing also normalises case and default ports, so two spellings of one URL compare equal.
pub(crate) fn htu(url: &str) -> Result<String> {
    let mut url = Url::parse(url).map_err(|e| Error::config(format!("invalid URL: {e}")))?;
    url.set_query(None);
    url.set_fragment(None);
    Ok(url.into())
}
