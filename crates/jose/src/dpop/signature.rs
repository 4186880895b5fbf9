//! Proof signatures checked apart from the rest of the proof, alone or in batches.
//!
//! One Ed25519 `verify_strict` is a double-base scalar multiplication; `n` signatures checked
//! together (`ed25519_dalek::verify_batch`: a random linear combination of the `n` equations,
//! one multiscalar multiplication) cost about half as much each from eight on
//! (`benches/crypto.rs`, `docs/benchmarks.md`). A server under load has many proofs waiting at
//! once, so it checks them together ([`verify_signatures`]); a batch that fails is checked again
//! signature by signature, so one bad proof fails only itself.
//!
//! What a batch accepts, compared with `verify_strict`: the same for every signature made by
//! a signer that follows RFC 8032. `verify_strict` also refuses a signature whose `R` has
//! small order and any key of small order; the batch refuses keys of small order too (they are
//! checked one by one, and fail), but its equation differs from `verify_strict`'s by torsion
//! only. Making a signature that one accepts and the other refuses takes the private key
//! (forging one for the cofactored equation is as hard as forging any Ed25519 signature), so
//! the difference is open to the key's holder alone, who can sign proofs anyway: it gives
//! no one a proof for a key they do not hold. Replay protection keys on the signed `jti`,
//! never on the signature bytes.

use crate::Error;
use crate::jwk::PublicKey;

/// Most signatures in one batch: at 64 the gain per signature has flattened
/// (`benches/crypto.rs`), and one batch stays around a millisecond.
pub const MAX_BATCH: usize = 64;

/// One proof's signature check, owned so that another thread can run it.
#[derive(Debug, Clone)]
pub struct SignatureJob {
    key: PublicKey,
    signing_input: Box<[u8]>,
    /// Both proof algorithms' JWS signatures are 64 bytes (Ed25519's `R || S`, ES256's
    /// `r || s`); any other length never verifies.
    signature: Option<[u8; 64]>,
}

/// Proof that a signature verified, for [`PreparedProof::finish`](super::PreparedProof::finish):
/// made only by this module's checks, and bound to the key, signed input and signature it is
/// about.
#[derive(Debug, Clone)]
pub struct SignatureVerified(SignatureJob);

impl SignatureVerified {
    pub(super) fn is_for(&self, key: &PublicKey, signing_input: &[u8], signature: &[u8]) -> bool {
        let job = &self.0;
        job.signature.as_ref().map(<[u8; 64]>::as_slice) == Some(signature)
            && *job.signing_input == *signing_input
            && job.key.thumbprint() == key.thumbprint()
    }
}

impl SignatureJob {
    pub(super) fn new(key: PublicKey, signing_input: &[u8], signature: &[u8]) -> SignatureJob {
        SignatureJob {
            key,
            signing_input: signing_input.into(),
            signature: signature.try_into().ok(),
        }
    }

    /// Checks this signature alone.
    pub fn verify(self) -> Result<SignatureVerified, Error> {
        let signature = self.signature.ok_or(Error::BadSignature)?;
        self.key.verify(&self.signing_input, &signature)?;
        Ok(SignatureVerified(self))
    }

    /// The Ed25519 key and signature, when the job can join a batch: an Ed25519 key not of
    /// small order (keys of small order are refused when decoded; checked again here because a
    /// batch must never hold one) and a signature of the right length.
    #[cfg(feature = "batch")]
    fn batchable(&self) -> Option<(&ed25519_dalek::VerifyingKey, ed25519_dalek::Signature)> {
        let key = self.key.ed25519().filter(|k| !k.is_weak())?;
        Some((key, ed25519_dalek::Signature::from_bytes(&self.signature?)))
    }
}

/// Checks `jobs`, each answer at its job's index: the Ed25519 signatures that can go together
/// (see [`SignatureJob`]) in batches, the rest alone. When a batch fails, its signatures are
/// checked again one by one, so every answer is that of [`SignatureJob::verify`] except for
/// signatures only a key's holder can make (the module's documentation). Without the crate's
/// `batch` feature, every signature is checked alone.
pub fn verify_signatures(jobs: Vec<SignatureJob>) -> Vec<Result<SignatureVerified, Error>> {
    let passed = passed_in_batches(&jobs);
    jobs.into_iter()
        .zip(passed)
        .map(|(job, passed)| {
            if passed {
                Ok(SignatureVerified(job))
            } else {
                job.verify()
            }
        })
        .collect()
}

/// Per job, whether it was in a batch that verified.
#[cfg(feature = "batch")]
fn passed_in_batches(jobs: &[SignatureJob]) -> Vec<bool> {
    let mut passed = vec![false; jobs.len()];
    let batch: Vec<_> = jobs
        .iter()
        .enumerate()
        .filter_map(|(i, job)| job.batchable().map(|(key, sig)| (i, *key, sig)))
        .collect();
    if batch.len() < 2 {
        return passed;
    }
    for chunk in batch.chunks(MAX_BATCH) {
        let messages: Vec<&[u8]> = chunk
            .iter()
            .map(|&(i, ..)| &*jobs[i].signing_input)
            .collect();
        let signatures: Vec<_> = chunk.iter().map(|&(_, _, sig)| sig).collect();
        let keys: Vec<_> = chunk.iter().map(|&(_, key, _)| key).collect();
        if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
            for &(i, ..) in chunk {
                passed[i] = true;
            }
        }
    }
    passed
}

#[cfg(not(feature = "batch"))]
fn passed_in_batches(jobs: &[SignatureJob]) -> Vec<bool> {
    vec![false; jobs.len()]
}
