//! Cluster mode: the one Redis connection that several instances share state through.
//!
//! With `--redis-url`, the replay store ([`crate::replay`]), the rate limits and failure
//! budgets ([`crate::limits`]) and the cache invalidations ([`crate::store::broadcast`]) all
//! live in Redis. They share one multiplexed connection, made here, so that its failure
//! behaviour is decided in one place:
//!
//! - **At start** Redis must answer within [`CONNECT_TIMEOUT`], or `serve` exits with an
//!   error naming Redis (like PostgreSQL, whose migrations must run before serving). An
//!   orchestrator restarts the process; a half-configured instance never takes traffic.
//! - **While serving** every Redis operation is bounded by [`OP_TIMEOUT`], and any error is a
//!   503 `UNAVAILABLE`: nothing is issued without the replay check and the rate limit.
//! - **Recovery** needs no restart. A failed connection is replaced on demand: the request
//!   that meets a broken or refused connection starts one reconnection attempt (no
//!   background retry schedule: `redis`'s default backs off up to 60 s between attempts, so a
//!   Redis that came back would stay unused for up to a minute), and the requests after it
//!   use the new connection once it is up.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// How long `serve` waits for Redis at start.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Bound on one Redis round trip. A healthy Redis nearby answers in about a millisecond, so
/// this only trips when something is wrong, and a request waiting on a dead Redis gets its
/// 503 within it instead of hanging. Not tighter: on a saturated host (seen in the
/// three-instance test on 2 shared cores) a healthy Redis took over 500 ms now and then, and a
/// false 503 refuses a legitimate client.
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// The connection manager settings every Redis user of the process shares (see the module
/// documentation for why there are no retries).
pub fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Duration::from_secs(1))
        .set_response_timeout(OP_TIMEOUT)
        .set_number_of_retries(0)
        .set_max_delay(1_000)
}

/// The shared Redis connection of one instance.
#[derive(Clone)]
pub struct RedisLink {
    client: redis::Client,
    conn: ConnectionManager,
}

impl std::fmt::Debug for RedisLink {
    // Hand-written: the client holds the URL, which may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLink").finish_non_exhaustive()
    }
}

/// Redis could not be used. The message never contains the URL (it may carry a password).
#[derive(Debug, thiserror::Error)]
#[error("redis is unavailable: {0}")]
pub struct RedisUnavailable(String);

impl RedisLink {
    /// Connects to the Redis at `url` (`redis://`, `rediss://`, `unix://`), waiting at most
    /// [`CONNECT_TIMEOUT`].
    pub async fn connect(url: &str) -> Result<RedisLink, RedisUnavailable> {
        let client = redis::Client::open(url)
            .map_err(|_| RedisUnavailable("invalid redis url".to_owned()))?;
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client.clone(), manager_config()),
        )
        .await
        .map_err(|_| RedisUnavailable("connect timed out".to_owned()))?
        .map_err(|e| RedisUnavailable(format!("connect failed: {}", e.kind_name())))?;
        Ok(RedisLink { client, conn })
    }

    /// A cheap handle onto the shared multiplexed connection.
    pub fn manager(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The client, for connections that cannot be multiplexed (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// One `PING`, bounded by [`OP_TIMEOUT`] (for `/readyz`).
    pub async fn ping(&self) -> Result<(), RedisUnavailable> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(
            OP_TIMEOUT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await
        .map_err(|_| RedisUnavailable("timed out".to_owned()))?
        .map(drop)
        .map_err(|e| RedisUnavailable(e.kind_name().to_owned()))
    }
}

/// A short name for an error's kind, for messages and logs that must not quote Redis (whose
/// error text can echo a command's arguments).
trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for redis::RedisError {
    fn kind_name(&self) -> &'static str {
        if self.is_timeout() {
            "timed out"
        } else if self.is_connection_refusal() {
            "connection refused"
        } else if self.is_connection_dropped() {
            "connection dropped"
        } else if self.is_io_error() {
            "i/o error"
        } else {
            "redis error"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_fails_quickly_without_the_url() {
        let started = std::time::Instant::now();
        let e = RedisLink::connect("redis://:hunter2@127.0.0.1:1/")
            .await
            .unwrap_err();
        assert!(started.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(1));
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
