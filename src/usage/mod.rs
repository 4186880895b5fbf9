//! Usage tracking: one event per token request by an authenticated key, written in batches
//! by a background task so the request path never waits on it. The SQL stores write each
//! batch inside one of the token path's group-commit transactions (`Store::insert_usage`).
//!
//! The queue is bounded: under overload, events are dropped and counted
//! (`keybound_usage_dropped_total`) rather than slowing down token issuance. Only requests that
//! got as far as a valid key are recorded, so a flood of made-up keys cannot fill the table.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{Store, UsageEvent};

/// Events waiting to be written before new ones are dropped.
pub const QUEUE: usize = 65_536;
/// Most events per write.
const BATCH: usize = 1_000;

/// Hands usage events to the writer task.
#[derive(Clone)]
pub struct UsageRecorder {
    tx: mpsc::Sender<UsageEvent>,
}

impl UsageRecorder {
    /// Starts the writer task for `store`.
    pub fn start(store: Arc<dyn Store>) -> UsageRecorder {
        let (tx, mut rx) = mpsc::channel::<UsageEvent>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                // Wait for the first event, then take whatever else is queued (up to BATCH),
                // lingering briefly so a busy server writes few, large batches.
                match rx.recv().await {
                    Some(e) => batch.push(e),
                    None => return,
                }
                let linger = tokio::time::sleep(Duration::from_millis(200));
                tokio::pin!(linger);
                while batch.len() < BATCH {
                    tokio::select! {
                        e = rx.recv() => match e {
                            Some(e) => batch.push(e),
                            None => break,
                        },
                        _ = &mut linger => break,
                    }
                }
                let events = batch.len();
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                if let Err(e) = store.insert_usage(full).await {
                    metrics::counter!("keybound_usage_dropped_total").increment(events as u64);
                    tracing::warn!(error = %e, events, "could not store usage events");
                }
            }
        });
        UsageRecorder { tx }
    }

    /// Queues an event; drops (and counts) it when the queue is full.
    pub fn record(&self, event: UsageEvent) {
        if self.tx.try_send(event).is_err() {
            metrics::counter!("keybound_usage_dropped_total").increment(1);
        }
    }
}
