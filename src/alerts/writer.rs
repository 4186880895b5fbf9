//! Stores alerts in batches: one transaction per batch instead of one per alert, from a
//! bounded queue, so a burst of alerts costs a few commits and can never grow memory or pile
//! up tasks. Under overload new alerts are dropped and counted
//! (`keybound_alerts_dropped_total`); they were logged and counted by kind when raised.
//!
//! The writer lingers [`LINGER`] after the first alert of a batch, well inside the contract's
//! 1 s in which an alert must be visible in `GET /admin/v1/alerts`. [`AlertWriter::flush`]
//! waits until everything queued before it is stored (called on shutdown).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{AlertRecord, Store};

/// Alerts waiting to be stored before new ones are dropped.
pub const QUEUE: usize = 10_000;
/// Most alerts in one transaction.
const BATCH: usize = 256;
/// How long a batch waits for more alerts after its first.
const LINGER: Duration = Duration::from_millis(50);

enum Msg {
    Alert(AlertRecord),
    /// Answered once everything queued before it is stored.
    Flush(oneshot::Sender<()>),
}

/// The queue's sending side; the task stores what it receives.
pub struct AlertWriter {
    tx: mpsc::Sender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl AlertWriter {
    /// Starts the writer task for `store` with a queue of [`QUEUE`].
    pub fn start(store: Arc<dyn Store>) -> AlertWriter {
        AlertWriter::with_queue(store, QUEUE)
    }

    /// Starts the writer task with a queue of `queue` alerts.
    pub fn with_queue(store: Arc<dyn Store>, queue: usize) -> AlertWriter {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        tokio::spawn(run(store, rx, dropped.clone()));
        AlertWriter { tx, dropped }
    }

    /// Queues `alert`; drops (and counts) it when the queue is full.
    pub fn write(&self, alert: AlertRecord) {
        if self.tx.try_send(Msg::Alert(alert)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("keybound_alerts_dropped_total").increment(1);
        }
    }

    /// Waits until every alert queued before this call is stored (or failed to be).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Alerts dropped because the queue was full, since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Msg>, dropped: Arc<AtomicU64>) {
    let mut batch: Vec<AlertRecord> = Vec::with_capacity(BATCH);
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut lingering = true;
        match first {
            Msg::Alert(a) => batch.push(a),
            Msg::Flush(done) => {
                flushes.push(done);
                lingering = false;
            }
        }
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        while lingering && batch.len() < BATCH {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::Alert(a)) => batch.push(a),
                    Some(Msg::Flush(done)) => {
                        flushes.push(done);
                        break;
                    }
                    None => break,
                },
                _ = &mut linger => break,
            }
        }
        if !batch.is_empty() {
            if let Err(e) = store.insert_alerts(&batch).await {
                dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                metrics::counter!("keybound_alerts_dropped_total").increment(batch.len() as u64);
                tracing::error!(error = %e, alerts = batch.len(), "could not store alerts");
            }
            batch.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(i: usize) -> AlertRecord {
        AlertRecord {
            id: format!("al_test_{i:04}"),
            at: crate::clock::now(),
            kind: "KEY_IN_URL".into(),
            severity: "critical".into(),
            key_id: None,
            device_id: None,
            ip: Some("192.0.2.1".into()),
            details: serde_json::json!({"n": i}),
        }
    }

    async fn stored(store: &dyn Store) -> usize {
        store
            .list_alerts(&crate::store::AlertFilter {
                kind: None,
                key_id: None,
                since: None,
                after: None,
                limit: 10_000,
            })
            .await
            .unwrap()
            .len()
    }

    #[tokio::test]
    async fn queued_alerts_are_stored_by_a_flush_and_a_full_queue_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        let store = crate::store::open(&url).await.unwrap();

        let writer = AlertWriter::with_queue(store.clone(), 1_000);
        for i in 0..300 {
            writer.write(alert(i));
        }
        writer.flush().await;
        assert_eq!(stored(&*store).await, 300, "all stored (two batches)");
        assert_eq!(writer.dropped(), 0);

        // A queue of 4, filled before the task (on this single-threaded runtime) runs once.
        let small = AlertWriter::with_queue(store.clone(), 4);
        for i in 300..310 {
            small.write(alert(i));
        }
        assert_eq!(small.dropped(), 6, "10 alerts into a queue of 4");
        small.flush().await;
        assert_eq!(stored(&*store).await, 304, "the 4 queued ones are stored");
    }
}
