//! RFC 9449 DPoP proof checks: pure, synchronous, no I/O, shared by the server's token
//! endpoints and the SDK's resource-server verifier.
//!
//! [`verify_proof`] answers one question: is this `DPoP` header a proof, signed by the key it
//! carries, made for this method and URI, at about this time? It returns the key's thumbprint
//! and the claims the caller still has to act on, each in its own way:
//!
//! * `jti` must be remembered and a proof seen before refused (the server keeps a replay store
//!   shared by its instances; the SDK a bounded in-process cache);
//! * `nonce` must be checked when the verifier demands nonces (the server);
//! * `ath` must be compared with the access token when a proof accompanies one (the SDK).

use serde_json::{Map, Value};

use crate::jwk::{CheckedJwk, PublicKey};
use crate::{CompactJws, Error, htu};

mod signature;

pub use signature::{
    MAX_BATCH as MAX_SIGNATURE_BATCH, SignatureJob, SignatureVerified, verify_signatures,
};

/// The JWS `typ` of a DPoP proof (RFC 9449 §4.2). Compared exactly: it is what every client
/// library sends, and the contract names it so.
pub const DPOP_TYP: &str = "dpop+jwt";

/// Longest `jti` accepted, in bytes. A random 128-bit `jti` needs 22 characters; the bound
/// keeps attacker-chosen strings out of logs and stores.
pub const MAX_JTI_BYTES: usize = 256;

/// Default for [`ProofCheck::max_proof_bytes`]: 8 KiB. A proof with a P-256 key is about 600
/// bytes, so this leaves room for long `jti`s and extra claims while bounding the work an
/// attacker can make a verifier do.
pub const DEFAULT_MAX_PROOF_BYTES: usize = 8 * 1024;

/// The signature algorithm of a proof: the allow-list of RFC 9449 §4.3 check 5 (CONTRACT
/// §3.1). Symmetric algorithms and `none` can never be here: a proof must be verifiable with
/// the public key it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProofAlg {
    /// `EdDSA` (RFC 8037) with an Ed25519 key.
    EdDsa,
    /// `Ed25519` (RFC 9864's fully-specified name for the same algorithm).
    Ed25519,
    /// `ES256`: ECDSA on P-256 with SHA-256 (RFC 7518 §3.4).
    Es256,
}

impl ProofAlg {
    /// The JWS `alg` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProofAlg::EdDsa => "EdDSA",
            ProofAlg::Ed25519 => "Ed25519",
            ProofAlg::Es256 => "ES256",
        }
    }

    /// The algorithm named by a JWS `alg`, if it is on the allow-list.
    pub fn from_alg(alg: &str) -> Option<Self> {
        match alg {
            "EdDSA" => Some(ProofAlg::EdDsa),
            "Ed25519" => Some(ProofAlg::Ed25519),
            "ES256" => Some(ProofAlg::Es256),
            _ => None,
        }
    }
}

/// The request a proof must be for, and the verifier's limits.
#[derive(Debug, Clone, Copy)]
pub struct ProofCheck<'a> {
    /// The request's HTTP method, compared exactly: methods are case-sensitive (RFC 9110 §9.1).
    pub htm: &'a str,
    /// The request's absolute URI. Compared with the proof's `htu` after RFC 3986
    /// normalisation, ignoring query and fragment on both sides (see [`htu`](crate::htu)).
    pub htu: &'a str,
    /// The verifier's clock, Unix seconds.
    pub now: i64,
    /// How far `iat` may be from `now`, either way, in seconds (RFC 9449 §11.1 leaves the
    /// value to the verifier).
    pub iat_leeway_secs: u64,
    /// Largest proof accepted, in bytes, checked before any parsing
    /// ([`DEFAULT_MAX_PROOF_BYTES`]).
    pub max_proof_bytes: usize,
}

/// A proof that passed every check of [`verify_proof`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// RFC 7638 SHA-256 thumbprint of the proof key, base64url: the device identity and the
    /// access token's `cnf.jkt`.
    pub jkt: String,
    /// The proof's unique id, for the caller's replay check.
    pub jti: String,
    /// Issue time, Unix seconds (a fractional `iat` is rounded down).
    pub iat: i64,
    /// The server-provided nonce, if the proof carries one; not checked here.
    pub nonce: Option<String>,
    /// The access-token hash, if the proof carries one; not checked here.
    pub ath: Option<String>,
    /// The signature algorithm used.
    pub alg: ProofAlg,
    /// The proof key (shared with the [`KeyCache`], not copied); its JWK is [`Self::jwk`].
    pub key: PublicKey,
}

impl VerifiedProof {
    /// The public key, reduced to the members its thumbprint covers (`kty`, `crv`, `x` and,
    /// for EC, `y`), with their values exactly as presented. Optional members (`kid`, `use`,
    /// ...) are dropped so a client cannot make us store arbitrary data with the device.
    pub fn jwk(&self) -> &Value {
        self.key.jwk()
    }
}

/// Proof keys a verifier keeps between proofs, so that a device that signs all its proofs with
/// one key has its point decompressed and its thumbprint hashed once rather than per request.
///
/// [`verify_proof`] asks the cache only about a JWK that passed [`CheckedJwk::check`] (no
/// private members, key type fitting `alg`), and hands it a key only once that key's signature
/// verified, so made-up keys never enter. An implementation must return a key only for a JWK
/// of the same curve and the same coordinates as the one it was given with.
pub trait KeyCache {
    /// A key remembered for `jwk`.
    fn get(&self, jwk: &CheckedJwk<'_>) -> Option<PublicKey>;
    /// Remembers `key`, decoded from `jwk`, whose signature has just verified.
    fn put(&self, jwk: &CheckedJwk<'_>, key: &PublicKey);
}

/// A [`KeyCache`] that remembers nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCache;

impl KeyCache for NoCache {
    fn get(&self, _: &CheckedJwk<'_>) -> Option<PublicKey> {
        None
    }
    fn put(&self, _: &CheckedJwk<'_>, _: &PublicKey) {}
}

/// Verifies a DPoP proof JWT (RFC 9449 §4.3) for the request described by `check`.
///
/// Checks run cheapest and most fundamental first, and nothing from the payload is trusted
/// before the signature verifies: size, JWS shape, `alg` allow-list, `typ`, `crit`, `jwk`
/// (public only, matching `alg`), signature, then the claims `jti`, `htm`, `htu`, `iat`.
///
/// The same checks in three steps, for a verifier that checks signatures in batches:
/// [`prepare_proof`], the signature ([`PreparedProof::verify_signature`], or
/// [`verify_signatures`] with others), then [`PreparedProof::finish`].
pub fn verify_proof(
    proof: &str,
    check: &ProofCheck<'_>,
    keys: &dyn KeyCache,
) -> Result<VerifiedProof, Error> {
    let prepared = prepare_proof(proof, check, keys)?;
    let signed = prepared.verify_signature()?;
    prepared.finish(check, keys, signed)
}

/// A proof whose checks up to its signature passed ([`prepare_proof`]): its signature is next,
/// then the claims ([`finish`](Self::finish)).
#[derive(Debug)]
pub struct PreparedProof<'a> {
    jws: CompactJws<'a>,
    alg: ProofAlg,
    key: PublicKey,
    /// The key came from the [`KeyCache`] (else it is put there once its signature verified).
    cached: bool,
}

/// The checks of [`verify_proof`] before the signature: size, JWS shape, `alg` allow-list,
/// `typ`, `crit`, and the `jwk` (public only, matching `alg`), decoded or taken from `keys`.
pub fn prepare_proof<'a>(
    proof: &'a str,
    check: &ProofCheck<'_>,
    keys: &dyn KeyCache,
) -> Result<PreparedProof<'a>, Error> {
    // Bound the work before touching the input.
    if proof.len() > check.max_proof_bytes {
        return Err(Error::TooLarge {
            limit: check.max_proof_bytes,
        });
    }

    // Compact serialisation only: exactly three parts (RFC 7515 §7.1). A JWE (five parts)
    // or a JSON serialisation is not a proof. Duplicated header members are refused.
    let jws = CompactJws::split(proof)?;
    let header = jws.header();

    // The alg allow-list comes before anything else is looked at, so `none`, the HMAC
    // family (whose "key" would be whatever the attacker puts in the header) and every other
    // algorithm are refused without going near key or signature code (RFC 8725 §3.1).
    let alg = jws
        .header_str("alg")
        .and_then(ProofAlg::from_alg)
        .ok_or(Error::AlgNotAllowed)?;

    // Explicit typing (RFC 8725 §3.11): an access token or ID token signed by the same
    // device key cannot be passed off as a proof.
    if jws.header_str("typ") != Some(DPOP_TYP) {
        return Err(Error::WrongTyp);
    }

    // We understand no extension, so any critical one must make us refuse (RFC 7515
    // §4.1.11); this also rules out unencoded payloads (RFC 7797 `b64`).
    if present(header.get("crit")).is_some() {
        return Err(Error::UnsupportedCrit);
    }

    // `jwk`: public only (RFC 9449 §4.3 check 7) and of the type `alg` names; the cache is
    // asked only after those checks.
    let jwk = present(header.get("jwk")).ok_or(Error::MissingJwk)?;
    if !jwk.is_object() {
        // A JWK is a JSON object (RFC 7517 §4); a string or array here is no JWK at all.
        return Err(Error::Malformed);
    }
    let checked = CheckedJwk::check(jwk, alg)?;
    let (key, cached) = match keys.get(&checked) {
        Some(key) => (key, true),
        None => (checked.to_key()?, false),
    };
    Ok(PreparedProof {
        jws,
        alg,
        key,
        cached,
    })
}

impl PreparedProof<'_> {
    /// Verifies the signature alone (`verify_strict` for Ed25519).
    pub fn verify_signature(&self) -> Result<SignatureVerified, Error> {
        self.signature_job().verify()
    }

    /// The signature's check as a job of its own (owned, so another thread can run it),
    /// for [`verify_signatures`].
    pub fn signature_job(&self) -> SignatureJob {
        SignatureJob::new(
            self.key.clone(),
            self.jws.signing_input().as_bytes(),
            self.jws.signature(),
        )
    }

    /// Whether the proof key is Ed25519, whose signatures [`verify_signatures`] checks in
    /// batches (ES256 signatures are checked one by one).
    pub fn is_ed25519(&self) -> bool {
        self.key.ed25519().is_some()
    }

    /// The rest of [`verify_proof`], once `signed` says this proof's signature verified: the
    /// key enters `keys`, then the claims `jti`, `htm`, `htu`, `iat`. A `signed` that is not
    /// this proof's (another key or signature) is [`Error::BadSignature`].
    pub fn finish(
        self,
        check: &ProofCheck<'_>,
        keys: &dyn KeyCache,
        signed: SignatureVerified,
    ) -> Result<VerifiedProof, Error> {
        let input = self.jws.signing_input().as_bytes();
        if !signed.is_for(&self.key, input, self.jws.signature()) {
            return Err(Error::BadSignature);
        }
        let key = self.key;
        if !self.cached {
            // Decoded again only here, for a key not cached yet: the checks passed before.
            let jwk = present(self.jws.header().get("jwk")).ok_or(Error::MissingJwk)?;
            keys.put(&CheckedJwk::check(jwk, self.alg)?, &key);
        }

        let mut claims = self.jws.payload()?;

        let jti = match claims.remove("jti") {
            Some(Value::String(jti)) if !jti.is_empty() && jti.len() <= MAX_JTI_BYTES => jti,
            _ => return Err(Error::InvalidJti),
        };

        let Some(Value::String(proof_htm)) = claims.remove("htm") else {
            return Err(Error::InvalidClaim("htm"));
        };
        if proof_htm != check.htm {
            return Err(Error::HtmMismatch);
        }

        let Some(Value::String(proof_htu)) = claims.remove("htu") else {
            return Err(Error::InvalidClaim("htu"));
        };
        // Clients normally send exactly the expected form; normalising both is the slow path.
        if proof_htu != check.htu {
            let expected = htu::normalize(check.htu).ok_or(Error::InvalidExpectedHtu)?;
            if htu::normalize(&proof_htu).as_deref() != Some(expected.as_str()) {
                return Err(Error::HtuMismatch);
            }
        }

        let iat = claims
            .get("iat")
            .and_then(numeric_date)
            .ok_or(Error::InvalidClaim("iat"))?;
        if check.now.abs_diff(iat) > check.iat_leeway_secs {
            return Err(Error::IatOutsideWindow);
        }

        let nonce = optional_string(&mut claims, "nonce")?;
        let ath = optional_string(&mut claims, "ath")?;

        Ok(VerifiedProof {
            jkt: key.thumbprint().to_owned(),
            jti,
            iat,
            nonce,
            ath,
            alg: self.alg,
            key,
        })
    }
}

/// A member's value, with `null` taken as absent (as serde reads an `Option`).
fn present(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds, possibly fractional, which we
/// round down. Out-of-range values saturate and then fail the window check.
fn numeric_date(value: &Value) -> Option<i64> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    // `as` saturates for out-of-range floats; NaN and infinities cannot come from JSON.
    f.is_finite().then(|| f.floor() as i64)
}

fn optional_string(
    claims: &mut Map<String, Value>,
    name: &'static str,
) -> Result<Option<String>, Error> {
    match claims.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::InvalidClaim(name)),
    }
}

#[cfg(test)]
mod tests;
