//! RFC 9449 DPoP proofs at the token endpoints: pure, synchronous, no I/O.
//!
//! The checks themselves (JWS shape, `alg` allow-list, `typ`, `crit`, public `jwk`, signature,
//! `jti`, `htm`, `htu`, `iat`) live in the `keybound-jose` crate, shared with the SDK's
//! resource-server verifier so the two cannot drift apart. This module keeps what only the
//! server has: its [`VerifyOptions`], the replay key, nonces, and the error the HTTP layer maps
//! to `INVALID_DPOP_PROOF` ([`DpopError`], whose messages name the failed check).
//!
//! [`verify_proof`](crate::dpop::verify_proof) answers one question: is this `DPoP` header a proof, signed by the key it
//! carries, made for this method and URI, at about this time? It returns the key's thumbprint
//! (the device identity, CONTRACT §6) and the claims the caller still has to act on:
//!
//! * `jti` must be recorded in the [replay store](crate::replay) for
//!   [`VerifyOptions::replay_ttl`](crate::dpop::VerifyOptions::replay_ttl), keyed by [`VerifiedProof::replay_key`](crate::dpop::VerifiedProof::replay_key), and a proof seen
//!   before refused (`DPOP_REPLAY`);
//! * `nonce` must be checked with a [`NonceIssuer`](crate::dpop::NonceIssuer) when the server demands nonces
//!   (`USE_DPOP_NONCE`);
//! * `ath` must be compared with the access token when a proof accompanies one (resource
//!   servers; the token endpoints get none).
//!
//! What is accepted, and why, is in the comments of `keybound_jose::dpop::verify_proof`; URI
//! comparison is in `keybound_jose::htu`.

mod batch;
mod nonce;
#[cfg(test)]
mod tests;

pub use batch::SignatureBatcher;

pub use keybound_jose::Error as DpopError;
pub use keybound_jose::dpop::{DPOP_TYP, MAX_JTI_BYTES, ProofAlg};
pub use keybound_jose::jwk_thumbprint;
pub use nonce::NonceIssuer;

use keybound_jose::dpop::{KeyCache, NoCache, ProofCheck};
use keybound_jose::{CheckedJwk, Curve, PublicKey};
use std::time::Duration;

/// Settings of [`verify_proof`]. `Default` gives the secure defaults documented per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// How far `iat` may be from the server clock, either way, in seconds. Default 60
    /// (CONTRACT §3.1): wide enough for phone clocks, narrow enough to keep the replay
    /// window (and the replay store) small. RFC 9449 §11.1 leaves the value to the server.
    pub iat_leeway_secs: i64,
    /// Largest proof accepted, in bytes, checked before any parsing. Default 8 KiB: a proof
    /// with a P-256 key is about 600 bytes, so this leaves room for long `jti`s and extra
    /// claims while bounding the work an attacker can make us do.
    pub max_proof_bytes: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            iat_leeway_secs: 60,
            max_proof_bytes: keybound_jose::dpop::DEFAULT_MAX_PROOF_BYTES,
        }
    }
}

impl VerifyOptions {
    /// How long a `jti` must be remembered so that no replay of it is ever accepted.
    ///
    /// A proof is acceptable while `|now - iat| <= leeway`, so from its first sighting (at
    /// the earliest `iat - leeway`) until `iat + leeway`: at most `2 * leeway`. One second is
    /// added because times are whole seconds, and five more for clock skew between server
    /// instances that share one replay store.
    pub fn replay_ttl(&self) -> Duration {
        let leeway = u64::try_from(self.iat_leeway_secs).unwrap_or(0);
        Duration::from_secs(leeway.saturating_mul(2).saturating_add(6))
    }
}

/// A proof that passed every check of [`verify_proof`]: the shared core's verified proof
/// (its `jkt`, `jti`, `iat`, `nonce`, `ath`, `alg` and reduced `jwk`, read through `Deref`),
/// plus what only the server derives from it, its [`replay_key`](Self::replay_key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof(keybound_jose::dpop::VerifiedProof);

impl std::ops::Deref for VerifiedProof {
    type Target = keybound_jose::dpop::VerifiedProof;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl VerifiedProof {
    /// The id to record in the replay store: the `jti` scoped to the key that signed it.
    ///
    /// Scoping by key means one client cannot burn another device's `jti` values, and two
    /// devices that happen to pick the same `jti` do not collide. The thumbprint is fixed
    /// length base64url (no `:`), so the concatenation is unambiguous.
    pub fn replay_key(&self) -> String {
        format!("{}:{}", self.jkt, self.jti)
    }
}

/// Verifies a DPoP proof JWT (RFC 9449 §4.3) for a request with method `htm` to URI `htu`
/// received at `now_unix`.
///
/// `htu` is what the server expects: the issuer plus the route path. It is compared with the
/// proof's `htu` after RFC 3986 normalisation, ignoring query and fragment on both sides (so a
/// proof whose `htu` carries a query is accepted when the rest matches, as §4.3 check 9 says).
/// `htm` is compared exactly: HTTP methods are case-sensitive (RFC 9110 §9.1).
///
/// Checks run cheapest and most fundamental first, and nothing from the payload is trusted
/// before the signature verifies: size, JWS shape, `alg` allow-list, `typ`, `crit`, `jwk`
/// (public only, matching `alg`), signature, then the claims `jti`, `htm`, `htu`, `iat`.
pub fn verify_proof(
    proof: &str,
    htm: &str,
    htu: &str,
    now_unix: i64,
    opts: &VerifyOptions,
) -> Result<VerifiedProof, DpopError> {
    verify_proof_with(proof, htm, htu, now_unix, opts, &NoCache)
}

/// [`verify_proof`], with decoded proof keys kept in `keys` (see [`ProofKeys`]).
pub fn verify_proof_with(
    proof: &str,
    htm: &str,
    htu: &str,
    now_unix: i64,
    opts: &VerifyOptions,
    keys: &dyn KeyCache,
) -> Result<VerifiedProof, DpopError> {
    let check = proof_check(htm, htu, now_unix, opts);
    keybound_jose::dpop::verify_proof(proof, &check, keys).map(VerifiedProof)
}

/// [`verify_proof_with`], with an Ed25519 proof's signature checked by `signatures`, in a
/// batch with the others waiting ([`SignatureBatcher`]); an ES256 proof's here, alone. The
/// same checks in the same order, and the same errors.
pub async fn verify_proof_batched(
    proof: &str,
    htm: &str,
    htu: &str,
    now_unix: i64,
    opts: &VerifyOptions,
    keys: &ProofKeys,
    signatures: &SignatureBatcher,
) -> Result<VerifiedProof, DpopError> {
    let check = proof_check(htm, htu, now_unix, opts);
    let prepared = keybound_jose::dpop::prepare_proof(proof, &check, keys)?;
    let signed = if prepared.is_ed25519() {
        signatures.verify(prepared.signature_job()).await?
    } else {
        prepared.verify_signature()?
    };
    prepared.finish(&check, keys, signed).map(VerifiedProof)
}

fn proof_check<'a>(
    htm: &'a str,
    htu: &'a str,
    now_unix: i64,
    opts: &VerifyOptions,
) -> ProofCheck<'a> {
    ProofCheck {
        htm,
        htu,
        now: now_unix,
        iat_leeway_secs: u64::try_from(opts.iat_leeway_secs).unwrap_or(0),
        max_proof_bytes: opts.max_proof_bytes,
    }
}

/// Ed25519 proof keys whose proofs verified lately, decoded: a device signs every proof of its
/// session with one key (its exchange, then a refresh every access-token lifetime), so a key
/// seen again is not decompressed (a field square root), re-encoded and hashed into its
/// thumbprint again. About 4 % of an exchange's server CPU (`docs/benchmarks.md`, tenth
/// session).
///
/// Keyed by the JWK's `x` exactly as presented (for a given curve, the key depends on nothing
/// else); [`keybound_jose::dpop::verify_proof`] asks only after the JWK's checks (public only,
/// `OKP`/`Ed25519` for `EdDSA`) and stores a key only after its signature verified, so a
/// made-up key never enters and every proof's signature is still verified. P-256 keys are not
/// kept: their uncompressed point costs no square root. Bounded in entries, and an entry not
/// used for [`PROOF_KEY_IDLE`] goes.
pub struct ProofKeys(moka::sync::Cache<String, PublicKey>);

/// Proof keys kept at most (about 0.8 KB each).
pub const PROOF_KEYS: u64 = 10_000;
/// A proof key unused this long is dropped: two access-token lifetimes.
pub const PROOF_KEY_IDLE: Duration = Duration::from_secs(600);

impl ProofKeys {
    fn x<'a>(jwk: &CheckedJwk<'a>) -> Option<&'a str> {
        (jwk.curve() == Curve::Ed25519)
            .then(|| jwk.member("x"))
            .flatten()
    }
}

impl Default for ProofKeys {
    /// An empty cache of at most [`PROOF_KEYS`] keys.
    fn default() -> Self {
        ProofKeys(
            moka::sync::Cache::builder()
                .max_capacity(PROOF_KEYS)
                .time_to_idle(PROOF_KEY_IDLE)
                .build(),
        )
    }
}

impl KeyCache for ProofKeys {
    fn get(&self, jwk: &CheckedJwk<'_>) -> Option<PublicKey> {
        self.0.get(Self::x(jwk)?)
    }

    fn put(&self, jwk: &CheckedJwk<'_>, key: &PublicKey) {
        if let Some(x) = Self::x(jwk) {
            self.0.insert(x.to_owned(), key.clone());
        }
    }
}
