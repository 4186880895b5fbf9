//! Cache invalidation across instances through Redis pub/sub.
//!
//! Each instance publishes the evictions its own changes cause and applies those of the
//! others, so a revocation made through any instance is in force on all of them within the
//! pub/sub latency (milliseconds), well inside the contract's 1 s. While the subscription is
//! down, nothing is known about other instances' changes: on every (re)connect the local
//! caches are dropped, and records are re-read from storage.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::cached::{CachedStore, Invalidation};

/// The pub/sub channel.
pub const CHANNEL: &str = "keybound:invalidate";

#[derive(Serialize, Deserialize)]
struct Message {
    /// Which instance sent it (its own messages are already applied).
    origin: String,
    inv: Invalidation,
}

/// Starts the publisher and the subscriber for `cache` on the Redis at `url`.
pub async fn spawn(cache: Arc<CachedStore>, url: &str) -> Result<(), redis::RedisError> {
    let client = redis::Client::open(url)?;
    let origin = uuid::Uuid::new_v4().simple().to_string();
    let mut publisher = redis::aio::ConnectionManager::new(client.clone()).await?;
    let mut changes = cache.changes();
    let me = origin.clone();
    tokio::spawn(async move {
        loop {
            let inv = match changes.recv().await {
                Ok(inv) => inv,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Invalidation::All,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let payload = serde_json::to_string(&Message {
                origin: me.clone(),
                inv,
            })
            .expect("invalidations serialize");
            let sent: Result<(), _> = redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(payload)
                .query_async(&mut publisher)
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "could not publish a cache invalidation");
            }
        }
    });
    tokio::spawn(subscribe_forever(client, cache, origin));
    Ok(())
}

async fn subscribe_forever(client: redis::Client, cache: Arc<CachedStore>, origin: String) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(CHANNEL).await.is_ok() {
                    // Whatever changed while we were not listening is unknown: start afresh.
                    cache.apply(&Invalidation::All).await;
                    backoff = Duration::from_millis(100);
                    let mut stream = pubsub.on_message();
                    while let Some(msg) = stream.next().await {
                        let Ok(payload) = msg.get_payload::<String>() else {
                            continue;
                        };
                        match serde_json::from_str::<Message>(&payload) {
                            Ok(m) if m.origin != origin => cache.apply(&m.inv).await,
                            Ok(_) => {}
                            Err(_) => tracing::warn!("ignored a malformed invalidation message"),
                        }
                    }
                }
                tracing::warn!("cache invalidation subscription lost; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot subscribe to cache invalidations"),
        }
        cache.apply(&Invalidation::All).await;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
