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
    let link = crate::cluster::RedisLink::connect(url).await.map_err(|e| {
        redis::RedisError::from((redis::ErrorKind::IoError, "redis", e.to_string()))
    })?;
    spawn_on(cache, &link);
    Ok(())
}

/// Starts the publisher (on the instance's shared connection) and the subscriber (on a
/// connection of its own: a subscribed connection can do nothing else) for `cache`.
pub fn spawn_on(cache: Arc<CachedStore>, link: &crate::cluster::RedisLink) {
    let origin = uuid::Uuid::new_v4().simple().to_string();
    tokio::spawn(publish_forever(
        link.manager(),
        cache.changes(),
        origin.clone(),
    ));
    tokio::spawn(subscribe_forever(link.client().clone(), cache, origin));
}

/// How often a publish that failed is tried again.
const REPUBLISH_EVERY: Duration = Duration::from_millis(250);

/// Forwards local changes to the channel. A change that could not be published (Redis was
/// unreachable) is not dropped: the other instances would keep serving the old record for
/// up to the cache TTL. Instead an `All` is published as soon as Redis answers again, so
/// they drop everything they cached in the meantime.
async fn publish_forever(
    mut conn: redis::aio::ConnectionManager,
    mut changes: tokio::sync::broadcast::Receiver<Invalidation>,
    origin: String,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut owed_all = false;
    loop {
        let inv = if owed_all {
            match tokio::time::timeout(REPUBLISH_EVERY, changes.recv()).await {
                Ok(Err(RecvError::Closed)) => return,
                // Whatever came (or nothing did), everything is owed anyway.
                _ => Invalidation::All,
            }
        } else {
            match changes.recv().await {
                Ok(inv) => inv,
                Err(RecvError::Lagged(_)) => Invalidation::All,
                Err(RecvError::Closed) => return,
            }
        };
        let payload = serde_json::to_string(&Message {
            origin: origin.clone(),
            inv,
        })
        .expect("invalidations serialize");
        let sent = tokio::time::timeout(
            crate::cluster::OP_TIMEOUT,
            redis::cmd("PUBLISH")
                .arg(CHANNEL)
                .arg(payload)
                .query_async::<()>(&mut conn),
        )
        .await;
        match sent {
            Ok(Ok(())) => {
                if owed_all {
                    tracing::info!("cache invalidations published again after an outage");
                }
                owed_all = false;
            }
            _ => {
                if !owed_all {
                    tracing::warn!("could not publish a cache invalidation; will retry");
                }
                owed_all = true;
            }
        }
    }
}

async fn subscribe_forever(client: redis::Client, cache: Arc<CachedStore>, origin: String) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // Bounded: a Redis that accepts connections but never answers must not park this
        // task forever.
        let connected =
            tokio::time::timeout(crate::cluster::CONNECT_TIMEOUT, client.get_async_pubsub())
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from((
                        redis::ErrorKind::IoError,
                        "connect timed out",
                    )))
                });
        match connected {
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
