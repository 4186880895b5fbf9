//! Group commit for the token hot path.
//!
//! Every exchange and refresh writes a refresh token, a device's history and the key's last use;
//! the usage recorder's per-minute totals ride along in the same transactions.
//! Durability means a commit waits for the disk (SQLite `synchronous=FULL`, PostgreSQL
//! `synchronous_commit=on`), and a disk flush costs the same for one row as for hundreds. So
//! those writes do not each get a transaction: callers put them on a queue, one task takes
//! everything queued (up to [`MAX_BATCH`]), runs it in a single transaction, commits, and only
//! then answers each caller. While one batch commits the next one queues up, so the number of
//! flushes per second stays constant as the request rate grows. (A batch that the database
//! writes in one statement, the refresh path's usual one, needs no explicit transaction: see
//! the backends' `Batch` implementation in `store::sql`.)
//!
//! Failure handling:
//! - A statement fails (a constraint, a deadlock with another instance): the transaction is
//!   rolled back, so nothing of the batch was written, and every op is run again alone, so one
//!   bad op fails only its own caller.
//! - The database is unreachable, or `COMMIT` itself fails: every caller of the batch gets the
//!   error. A failed commit may in fact have committed, so the ops are not run again (a second
//!   `advance_refresh_family` would find its generation spent and look like a reuse).

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::{DeviceLifecycle, DeviceRecord, FamilyRecord, KeyRecord, UsageMinute};
use crate::error::{Error, Result};

/// Most ops in one transaction. Large enough that a batch covers every request in flight at
/// high concurrency, small enough that one transaction stays short.
pub(super) const MAX_BATCH: usize = 256;

/// Queued ops at most; beyond that callers wait for room (backpressure instead of memory).
const QUEUE: usize = 4096;

/// A write that goes through the group-commit queue.
#[derive(Debug)]
pub(super) enum WriteOp {
    /// `Store::advance_refresh_family`.
    AdvanceFamily {
        /// The generation being spent.
        from: i64,
        /// The family at its next generation.
        next: FamilyRecord,
    },
    /// `Store::update_device_usage`.
    UpdateDeviceUsage(Arc<DeviceRecord>),
    /// `Store::touch_keys`.
    TouchKeys(Vec<(String, i64)>),
    /// `Store::add_usage`: one flush of the usage recorder.
    AddUsage(Vec<UsageMinute>),
}

/// What a committed op answers.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Answer {
    /// `advance_refresh_family`'s result (whether this write won); `true` for the ops that
    /// have nothing to say.
    Done(bool),
    /// `update_device_usage`'s: the device's lifecycle fields as the write found them.
    Device(Option<DeviceLifecycle>),
    /// `touch_keys`': the keys as the write found them.
    Keys(Vec<KeyRecord>),
}

/// Why a batch failed.
#[derive(Debug)]
pub(super) enum BatchError {
    /// A statement failed; the transaction was rolled back and nothing was written.
    Statement(Error),
    /// `BEGIN` or `COMMIT` failed; after a failed commit the outcome is unknown.
    Transaction(Error),
}

/// Runs ops in one transaction; implemented by each backend's pool.
#[async_trait]
pub(super) trait Batch: Send + Sync + 'static {
    /// Runs `ops` in order in one transaction and commits it, with one [`Answer`] per op.
    async fn run(&self, ops: &[WriteOp]) -> Result<Vec<Answer>, BatchError>;
}

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<Answer>>,
}

/// The queue's sending side; dropping it lets the writer task finish what is queued and stop.
pub(super) struct GroupWriter {
    queue: mpsc::Sender<Job>,
}

impl GroupWriter {
    /// Starts the writer task on the current Tokio runtime.
    pub(super) fn spawn(batch: impl Batch) -> Self {
        let (queue, jobs) = mpsc::channel(QUEUE);
        tokio::spawn(run(batch, jobs));
        GroupWriter { queue }
    }

    /// Queues `op` and waits until the transaction holding it has committed.
    pub(super) async fn submit(&self, op: WriteOp) -> Result<Answer> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { op, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::unavailable("the storage writer has stopped")
}

async fn run(batch: impl Batch, mut queue: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    let sizes = crate::telemetry::histogram("keybound_store_batch_ops");
    // recv_many waits for one job, then takes whatever else is already queued.
    while queue.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        // Ops per transaction, for operators (and benchmarks): how much group commit gathers.
        sizes.record(jobs.len() as f64);
        let (ops, replies): (Vec<_>, Vec<_>) = jobs.drain(..).map(|j| (j.op, j.reply)).unzip();
        for (reply, answer) in replies.into_iter().zip(commit(&batch, &ops).await) {
            // A caller that stopped waiting (its request was cancelled) needs no answer; its
            // write is committed all the same.
            let _ = reply.send(answer);
        }
    }
}

/// Commits `ops`, returning one answer per op.
#[tracing::instrument(level = "debug", skip_all, fields(ops = ops.len()))]
async fn commit(batch: &impl Batch, ops: &[WriteOp]) -> Vec<Result<Answer>> {
    match batch.run(ops).await {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(BatchError::Statement(e)) if ops.len() > 1 && !matches!(e, Error::Unavailable(_)) => {
            tracing::warn!(
                error = %cause(&e),
                "a write in a batch failed; running its ops one by one"
            );
            let mut answers = Vec::with_capacity(ops.len());
            for op in ops {
                let answer = match batch.run(std::slice::from_ref(op)).await {
                    Ok(mut a) => Ok(a.pop().unwrap_or(Answer::Done(true))),
                    Err(BatchError::Statement(e) | BatchError::Transaction(e)) => Err(e),
                };
                answers.push(answer);
            }
            answers
        }
        Err(BatchError::Statement(e) | BatchError::Transaction(e)) => fan_out(e, ops.len()),
    }
}

/// One error for each of `n` callers.
fn fan_out(e: Error, n: usize) -> Vec<Result<Answer>> {
    if n == 1 {
        return vec![Err(e)];
    }
    let shared = Arc::new(e);
    (0..n)
        .map(|_| {
            let copy = Shared(shared.clone());
            Err(match *shared {
                Error::Unavailable(_) => Error::unavailable(copy),
                _ => Error::internal(copy),
            })
        })
        .collect()
}

/// What went wrong underneath a 5xx error, for logs. Its `Display` is the database's message,
/// never its detail (where PostgreSQL would quote the conflicting row, a token hash included).
fn cause(e: &Error) -> &(dyn std::error::Error + 'static) {
    match e {
        Error::Unavailable(c) | Error::Internal(c) => c.as_ref(),
        other => other,
    }
}

/// The cause of a batch's failure, shared by every caller of the batch.
#[derive(Debug)]
struct Shared(Arc<Error>);

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(cause(&self.0), f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        cause(&self.0).source()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records each transaction's size; fails any transaction holding a `TouchKeys` with the
    /// key `"bad"`, and every transaction when `down` is set.
    #[derive(Default)]
    struct Fake {
        batches: Mutex<Vec<usize>>,
        down: bool,
    }

    #[async_trait]
    impl Batch for Arc<Fake> {
        async fn run(&self, ops: &[WriteOp]) -> Result<Vec<Answer>, BatchError> {
            // Let the queue fill up behind the first op, as a disk flush would.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            self.batches.lock().unwrap().push(ops.len());
            if self.down {
                return Err(BatchError::Transaction(Error::unavailable("down")));
            }
            let bad = |op: &WriteOp| matches!(op, WriteOp::TouchKeys(k) if k[0].0 == "bad");
            if ops.iter().any(bad) {
                return Err(BatchError::Statement(Error::internal("constraint")));
            }
            Ok(vec![Answer::Keys(Vec::new()); ops.len()])
        }
    }

    fn touch(key: &str) -> WriteOp {
        WriteOp::TouchKeys(vec![(key.to_owned(), 1)])
    }

    async fn submit_all(fake: Arc<Fake>, keys: &[&str]) -> Vec<Result<Answer>> {
        let writer = Arc::new(GroupWriter::spawn(fake));
        let calls = keys.iter().map(|k| {
            let (writer, op) = (writer.clone(), touch(k));
            tokio::spawn(async move { writer.submit(op).await })
        });
        let mut answers = Vec::new();
        for call in calls.collect::<Vec<_>>() {
            answers.push(call.await.unwrap());
        }
        answers
    }

    #[tokio::test]
    async fn concurrent_writes_share_transactions() {
        let fake = Arc::new(Fake::default());
        let answers = submit_all(fake.clone(), &["k"; 100]).await;
        assert!(answers.iter().all(|a| matches!(a, Ok(Answer::Keys(_)))));
        let batches = fake.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 100);
        assert!(
            batches.len() < 10,
            "100 queued writes took {} transactions",
            batches.len()
        );
    }

    #[tokio::test]
    async fn one_bad_op_fails_only_its_caller() {
        let fake = Arc::new(Fake::default());
        let mut keys = vec!["k"; 20];
        keys[7] = "bad";
        let answers = submit_all(fake, &keys).await;
        for (i, a) in answers.iter().enumerate() {
            assert_eq!(a.is_err(), i == 7, "answer {i}: {a:?}");
        }
    }

    #[tokio::test]
    async fn an_unreachable_database_fails_every_caller_without_retries() {
        let fake = Arc::new(Fake {
            down: true,
            ..Fake::default()
        });
        let answers = submit_all(fake.clone(), &["k"; 20]).await;
        for a in &answers {
            assert!(matches!(a, Err(Error::Unavailable(_))), "{a:?}");
        }
        let batches = fake.batches.lock().unwrap().clone();
        assert_eq!(
            batches.iter().sum::<usize>(),
            20,
            "no op may be run twice: {batches:?}"
        );
    }
}
