//! Ed25519 proof signatures checked in batches, gathered on the runtime's own workers.
//!
//! The proof's signature is the largest part of an exchange's or refresh's CPU besides the
//! access token's own signature (`docs/benchmarks.md`). Checked together, Ed25519 signatures
//! cost about half as much each from eight on (`keybound_jose::dpop::verify_signatures`, whose
//! documentation says what a batch accepts).
//!
//! **How a batch forms.** A request puts its signature in the open batch. The one that opened
//! it (found it empty) leads: it yields once to the runtime ([`tokio::task::yield_now`]), then
//! takes the batch, checks every signature in it on its own worker and answers each. A Tokio
//! worker runs a yielded task again only after the tasks already ready to run (and, when it
//! runs out of them, after one poll of its I/O driver): so the batch holds the signatures of
//! the requests that were ready on the runtime at the same moment (at most [`MAX_GATHER`]: the
//! signature that fills a batch checks it at once), and nothing waits on purpose. Idle, a
//! worker has nothing else to run and the leader comes back at once with a batch of one;
//! saturated, every ready request's proof joins, and the more load, the larger and cheaper
//! the batch. The others just wait for their answer.
//!
//! Nothing leaves the runtime: an earlier design handed each signature to a verifier thread
//! and back, two cross-thread wake-ups per signature that cost about half of what batching
//! saves (`docs/benchmarks.md`, eleventh and fifteenth sessions). A batch holds the worker it
//! runs on for its length (about 20 µs a signature, so at most ~0.6 ms); the other workers go
//! on.
//!
//! A leader cancelled while it yields (its client hung up) still checks the batch and answers
//! the others, as it is dropped ([`Lead`]). A batch that fails is checked again signature by
//! signature, so a bad proof fails only itself.

use std::sync::{Mutex, PoisonError};

use keybound_jose::dpop::{SignatureJob, SignatureVerified, verify_signatures};
use tokio::sync::oneshot;

use super::DpopError;

type Answer = Result<SignatureVerified, DpopError>;
type Job = (SignatureJob, oneshot::Sender<Answer>);

/// Signatures a batch holds at most: the request whose signature fills it checks it at once.
/// Past 32 a signature costs no less in a batch (`docs/design.md`: 19.3 µs each in a batch of
/// 32, 19.5 µs in one of 64), and a batch holds its worker for its whole length (~0.6 ms at 32).
pub const MAX_GATHER: usize = 32;

/// Checks proof signatures in batches ([module documentation](self)).
///
/// Every signature is checked exactly once: the open batch is taken whole, either by the
/// request that fills it or by a leader coming back from its yield; when not empty it holds
/// the signature of a leader that has not yet come back, and a leader takes whatever is open
/// then (its own batch, or a later one when its own was taken full).
#[derive(Default)]
pub struct SignatureBatcher {
    /// The signatures waiting for their batch's leader to come back.
    open: Mutex<Vec<Job>>,
    /// Sizes of the batches checked (tests only).
    #[cfg(test)]
    sizes: Mutex<Vec<usize>>,
}

impl SignatureBatcher {
    /// Checks `job`'s signature together with the others ready on the runtime now.
    pub async fn verify(&self, job: SignatureJob) -> Answer {
        let (reply, answer) = oneshot::channel();
        let role = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            open.push((job, reply));
            match open.len() {
                1 => Role::Lead,
                MAX_GATHER => Role::Fill(std::mem::take(&mut *open)),
                _ => Role::Join,
            }
        };
        match role {
            Role::Lead => {
                let lead = Lead(self);
                tokio::task::yield_now().await;
                drop(lead);
            }
            // Nothing more to wait for. Its leader, back, finds a newer batch or none.
            Role::Fill(batch) => self.check(batch),
            Role::Join => {}
        }
        // Whoever takes a batch answers every signature in it (its leader, or the request that
        // filled it); a sender dropped unanswered means a check panicked: fail closed.
        answer.await.unwrap_or(Err(DpopError::BadSignature))
    }

    /// Takes the open batch and [`check`](Self::check)s it.
    fn check_open(&self) {
        let batch = std::mem::take(&mut *self.open.lock().unwrap_or_else(PoisonError::into_inner));
        self.check(batch);
    }

    /// Checks `batch` and answers each of its signatures.
    fn check(&self, batch: Vec<Job>) {
        if batch.is_empty() {
            return;
        }
        static BATCH_SIZES: std::sync::LazyLock<metrics::Histogram> =
            std::sync::LazyLock::new(|| {
                crate::telemetry::histogram("keybound_dpop_signature_batch")
            });
        BATCH_SIZES.record(batch.len() as f64);
        #[cfg(test)]
        self.sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(batch.len());
        let (checks, replies): (Vec<SignatureJob>, Vec<_>) = batch.into_iter().unzip();
        for (reply, answer) in replies.into_iter().zip(verify_signatures(checks)) {
            // The request may have gone (its client hung up): nothing to answer then.
            let _ = reply.send(answer);
        }
    }

    /// The sizes of the batches checked so far, in order.
    #[cfg(test)]
    pub(super) fn batch_sizes(&self) -> Vec<usize> {
        self.sizes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What a request does for the batch its signature went into.
enum Role {
    /// It opened the batch: yield, then check what is open.
    Lead,
    /// It filled the batch (taken here): check it now.
    Fill(Vec<Job>),
    /// It joined a batch someone else will check.
    Join,
}

/// A batch's leader: checks the open batch when dropped, after its yield or if it is cancelled
/// during it, so no signature is left waiting.
struct Lead<'a>(&'a SignatureBatcher);

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.0.check_open();
    }
}
