//! Ed25519 proof signatures checked in batches, on threads of their own.
//!
//! The proof's signature is the largest part of an exchange's or refresh's CPU (`verify_strict`,
//! about a third of it, `docs/benchmarks.md`). Checked together, Ed25519 signatures cost about
//! half as much each from eight on (`keybound_jose::dpop::verify_signatures`, whose
//! documentation says what a batch accepts). So a request hands its proof's signature to a
//! verifier thread and waits; the thread takes every signature waiting (up to
//! [`MAX_SIGNATURE_BATCH`]) and checks them together, the way the group commit takes every
//! write waiting (`store::writer`). Nothing waits on purpose: under load the signatures that
//! arrived while the last batch was checked form the next. A batch that fails is checked again
//! signature by signature, so a bad proof fails only itself.
//!
//! **A signature with none other in flight is checked where it is**, on the request's own
//! thread: there is nothing to batch it with, and the hand-off would cost two thread wake-ups
//! (to the verifier thread and back) for a batch of one. Below saturation that is most proofs:
//! at half the closed-loop saturation, open loop, an exchange cost 1.6 times its closed-loop
//! server CPU with every signature handed over, and about a tenth less without those
//! hand-offs (`docs/benchmarks.md`, thirteenth session).
//!
//! The threads are plain OS threads, not Tokio tasks: a batch of 64 is about a millisecond of
//! CPU, too long to hold a runtime worker. They start when a signature is first handed over,
//! one per four cores (the signatures of a fully loaded machine fill about a quarter of its
//! CPU at most).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

use keybound_jose::dpop::{
    MAX_SIGNATURE_BATCH, SignatureJob, SignatureVerified, verify_signatures,
};
use tokio::sync::oneshot;

use super::DpopError;

type Answer = Result<SignatureVerified, DpopError>;
type Job = (SignatureJob, oneshot::Sender<Answer>);

/// Checks proof signatures in batches ([module documentation](self)).
#[derive(Default)]
pub struct SignatureBatcher {
    lanes: OnceLock<Vec<mpsc::Sender<Job>>>,
    next: AtomicUsize,
    /// Signatures being checked now, here or on a verifier thread.
    in_flight: AtomicUsize,
}

/// Counts a signature in [`SignatureBatcher::in_flight`] from [`InFlight::enter`] until dropped
/// (also when the request is cancelled while it waits).
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    /// Counts one more signature in `count`; with how many were in flight before it.
    fn enter(count: &'a AtomicUsize) -> (Self, usize) {
        let before = count.fetch_add(1, Ordering::AcqRel);
        (InFlight(count), before)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SignatureBatcher {
    /// Checks `job`'s signature: here when no other signature is in flight, else on a verifier
    /// thread with whatever other signatures are waiting.
    pub async fn verify(&self, job: SignatureJob) -> Answer {
        let (_counted, others) = InFlight::enter(&self.in_flight);
        if others == 0 {
            metrics::histogram!("keybound_dpop_signature_batch").record(1.0);
            return job.verify();
        }
        let lanes = self.lanes.get_or_init(start);
        let lane = &lanes[self.next.fetch_add(1, Ordering::Relaxed) % lanes.len()];
        let (reply, answer) = oneshot::channel();
        match lane.send((job, reply)) {
            Ok(()) => answer.await.unwrap_or_else(|_| {
                // The thread ended while this job waited (it panicked): fail closed.
                tracing::error!("a proof-signature thread ended with work queued");
                Err(DpopError::BadSignature)
            }),
            // The thread is gone: check it here rather than refuse a good proof.
            Err(mpsc::SendError((job, _))) => job.verify(),
        }
    }

    /// Counts one more signature in flight until the guard drops, as a request checking one
    /// would: the next [`verify`](Self::verify) goes to a verifier thread.
    #[cfg(test)]
    pub(super) fn occupy(&self) -> impl Drop + '_ {
        InFlight::enter(&self.in_flight).0
    }

    /// Whether the verifier threads have started (they start when a signature is first sent
    /// to one).
    #[cfg(test)]
    pub(super) fn threads_started(&self) -> bool {
        self.lanes.get().is_some()
    }
}

/// The verifier threads: one per four cores.
fn start() -> Vec<mpsc::Sender<Job>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut lanes: Vec<_> = (0..cores.div_ceil(4))
        .filter_map(|i| {
            let (tx, rx) = mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name(format!("keybound-verify-{i}"))
                .spawn(move || run(&rx));
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::error!(error = %e, "could not start a proof-signature thread");
                    None
                }
            }
        })
        .collect();
    if lanes.is_empty() {
        // A lane with no thread: every job sent to it is checked by its sender.
        lanes.push(mpsc::channel().0);
    }
    lanes
}

/// A verifier thread: takes every job waiting, checks them together, answers each.
fn run(jobs: &mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_SIGNATURE_BATCH);
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < MAX_SIGNATURE_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let (checks, replies): (Vec<SignatureJob>, Vec<_>) = batch.drain(..).unzip();
        metrics::histogram!("keybound_dpop_signature_batch").record(checks.len() as f64);
        for (reply, answer) in replies.into_iter().zip(verify_signatures(checks)) {
            // The request may have gone (its client hung up): nothing to answer then.
            let _ = reply.send(answer);
        }
    }
}
