//! Replay store shared by every instance through Redis, so a proof replayed against another
//! instance is refused too (CONTRACT §7).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use redis::aio::ConnectionManager;
use std::time::Duration;

use super::{ReplayError, ReplayStore, effective_ttl, hash_id};

/// Replay store on Redis: one `SET key 1 NX PX ttl` per proof.
///
/// `SET ... NX` is atomic on the Redis server, so of any number of concurrent sightings of one
/// id, on any number of instances, exactly one gets `OK` (new) and the others nil (replay);
/// `PX` makes Redis drop the key when the proof could no longer be accepted anyway.
///
/// Keys are `keybound:replay:` followed by the base64url SHA-256 of the id, so Redis never
/// holds proof data and every key has the same small size whatever the client sent.
///
/// Every operation is bounded by a short timeout, and any Redis error or timeout is
/// [`ReplayError::Unavailable`]: the caller fails closed. The connection manager reconnects
/// in the background, so the store recovers by itself when Redis comes back.
#[derive(Clone)]
pub struct RedisReplayStore {
    conn: ConnectionManager,
    prefix: String,
    op_timeout: Duration,
}

impl std::fmt::Debug for RedisReplayStore {
    // Hand-written so no connection detail (the URL may carry a password) is ever printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisReplayStore")
            .field("prefix", &self.prefix)
            .field("op_timeout", &self.op_timeout)
            .finish_non_exhaustive()
    }
}

impl RedisReplayStore {
    /// Prefix of every key this store writes.
    pub const DEFAULT_PREFIX: &'static str = "keybound:replay:";

    /// Default bound on one `SET`: the cluster-wide Redis round-trip bound (see
    /// [`crate::cluster::OP_TIMEOUT`]).
    pub const DEFAULT_OP_TIMEOUT: Duration = crate::cluster::OP_TIMEOUT;

    /// Bound on establishing the first connection in [`connect`](Self::connect).
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

    /// Connects to the Redis at `url` (`redis://`, `rediss://`, `unix://`).
    ///
    /// Fails with [`ReplayError::Unavailable`] when Redis cannot be reached within
    /// [`CONNECT_TIMEOUT`](Self::CONNECT_TIMEOUT). The error never contains the URL.
    pub async fn connect(url: &str) -> Result<Self, ReplayError> {
        let client = redis::Client::open(url)
            .map_err(|_| ReplayError::Unavailable("invalid redis url".to_owned()))?;
        // The process-wide settings: no background retry schedule, so a Redis that comes back
        // is used by the next request (see `crate::cluster`).
        let config = crate::cluster::manager_config();
        let conn = tokio::time::timeout(
            Self::CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| ReplayError::Unavailable("redis connect timed out".to_owned()))?
        .map_err(|e| ReplayError::Unavailable(format!("redis connect failed: {e}")))?;
        Ok(Self::from_manager(conn))
    }

    /// A store on an existing connection manager (shared with other Redis users of the
    /// process, for example the rate limiter).
    pub fn from_manager(conn: ConnectionManager) -> Self {
        Self {
            conn,
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            op_timeout: Self::DEFAULT_OP_TIMEOUT,
        }
    }

    /// Uses another key prefix (to separate deployments sharing one Redis, or tests).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Bounds each Redis operation by `op_timeout`. A connection made by
    /// [`connect`](Self::connect) also drops responses slower than
    /// [`DEFAULT_OP_TIMEOUT`](Self::DEFAULT_OP_TIMEOUT), so a longer bound only takes effect
    /// with a manager of your own ([`from_manager`](Self::from_manager)).
    pub fn with_op_timeout(mut self, op_timeout: Duration) -> Self {
        self.op_timeout = op_timeout;
        self
    }

    fn key(&self, id: &str) -> String {
        format!("{}{}", self.prefix, URL_SAFE_NO_PAD.encode(hash_id(id)))
    }
}

#[async_trait::async_trait]
impl ReplayStore for RedisReplayStore {
    async fn first_seen(&self, id: &str, ttl: Duration) -> Result<bool, ReplayError> {
        let ttl_ms = u64::try_from(effective_ttl(ttl).as_millis()).unwrap_or(u64::MAX);
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(id)).arg(1).arg("NX").arg("PX").arg(ttl_ms);
        // ConnectionManager is a cheap handle onto one multiplexed connection.
        let mut conn = self.conn.clone();
        let reply: Option<String> =
            tokio::time::timeout(self.op_timeout, cmd.query_async(&mut conn))
                .await
                .map_err(|_| ReplayError::Unavailable("redis timed out".to_owned()))?
                .map_err(|e| ReplayError::Unavailable(format!("redis: {e}")))?;
        // "OK" when the key was set (new), nil when it existed (replay).
        Ok(reply.is_some())
    }

    fn approx_len(&self) -> Option<u64> {
        // Counting our keys would need a SCAN over the whole keyspace.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    /// An id no other test (or earlier run) uses, so tests can share one Redis in parallel.
    fn unique_id() -> String {
        format!(
            "test-{}",
            URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
        )
    }

    #[tokio::test]
    async fn second_sighting_is_a_replay() {
        let Some(url) = crate::store::testing::redis_test_url() else {
            return;
        };
        let store = RedisReplayStore::connect(&url).await.unwrap();
        let id = unique_id();
        assert_eq!(
            store.first_seen(&id, Duration::from_secs(30)).await,
            Ok(true)
        );
        assert_eq!(
            store.first_seen(&id, Duration::from_secs(30)).await,
            Ok(false)
        );
        assert_eq!(store.approx_len(), None);
    }

    /// Two server instances, each with its own connection, sharing one Redis.
    #[tokio::test]
    async fn a_replay_on_another_instance_is_seen() {
        let Some(url) = crate::store::testing::redis_test_url() else {
            return;
        };
        let instance_a = RedisReplayStore::connect(&url).await.unwrap();
        let instance_b = RedisReplayStore::connect(&url).await.unwrap();
        let id = unique_id();
        assert_eq!(
            instance_a.first_seen(&id, Duration::from_secs(30)).await,
            Ok(true)
        );
        assert_eq!(
            instance_b.first_seen(&id, Duration::from_secs(30)).await,
            Ok(false)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn exactly_one_of_many_concurrent_callers_sees_new() {
        let Some(url) = crate::store::testing::redis_test_url() else {
            return;
        };
        let stores = [
            Arc::new(RedisReplayStore::connect(&url).await.unwrap()),
            Arc::new(RedisReplayStore::connect(&url).await.unwrap()),
        ];
        let id = Arc::new(unique_id());
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let store = Arc::clone(&stores[i % 2]);
                let id = Arc::clone(&id);
                tokio::spawn(async move { store.first_seen(&id, Duration::from_secs(30)).await })
            })
            .collect();
        let mut new = 0;
        for task in tasks {
            if task.await.unwrap().unwrap() {
                new += 1;
            }
        }
        assert_eq!(new, 1);
    }

    #[tokio::test]
    async fn keys_are_prefixed_hashed_and_expire() {
        let Some(url) = crate::store::testing::redis_test_url() else {
            return;
        };
        let prefix = format!("keybound:test:{}:", unique_id());
        let store = RedisReplayStore::connect(&url)
            .await
            .unwrap()
            .with_prefix(prefix.clone());
        let id = unique_id();
        assert_eq!(
            store.first_seen(&id, Duration::from_millis(1500)).await,
            Ok(true)
        );

        let mut conn = store.conn.clone();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(keys, vec![store.key(&id)]);
        assert!(!keys[0].contains(&id), "the raw id is not stored");
        let ttl_ms: i64 = redis::cmd("PTTL")
            .arg(&keys[0])
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=1500).contains(&ttl_ms), "PTTL {ttl_ms}");

        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert_eq!(
            store.first_seen(&id, Duration::from_secs(30)).await,
            Ok(true),
            "expired"
        );
    }

    #[tokio::test]
    async fn closed_port_is_unavailable_quickly() {
        let started = Instant::now();
        let result = RedisReplayStore::connect("redis://127.0.0.1:1/").await;
        assert!(
            matches!(result, Err(ReplayError::Unavailable(_))),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
    }

    /// A server that accepts connections and never answers: the worst case, as no error ever
    /// arrives. The store must give up within its timeouts.
    #[tokio::test]
    async fn silent_server_is_unavailable_quickly() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let started = Instant::now();
        let result = RedisReplayStore::connect(&format!("redis://{addr}/")).await;
        assert!(
            matches!(result, Err(ReplayError::Unavailable(_))),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        server.abort();
    }

    /// What a fake Redis does when it receives `SET`.
    #[derive(Clone, Copy)]
    enum OnSet {
        /// Never answer: a hung or overloaded server.
        Hang,
        /// Close the connection: a server that died after we connected.
        Close,
    }

    /// A loopback server speaking just enough RESP to let the client connect: it answers
    /// `+OK` to every command (the client's connection set-up) except `SET`.
    async fn fake_redis(on_set: OnSet) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        let Ok(n) = socket.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some((name, used)) = parse_command(&buf) {
                            buf.drain(..used);
                            if name.eq_ignore_ascii_case("SET") {
                                match on_set {
                                    OnSet::Hang => {
                                        tokio::time::sleep(Duration::from_secs(30)).await;
                                        return;
                                    }
                                    OnSet::Close => return,
                                }
                            }
                            if socket.write_all(b"+OK\r\n").await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, server)
    }

    /// Parses one complete RESP array command from `buf`: its name and the bytes it used.
    fn parse_command(buf: &[u8]) -> Option<(String, usize)> {
        fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
            let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
            Some((&buf[at..end], end + 2))
        }
        let (header, mut at) = line(buf, 0)?;
        let count: usize = std::str::from_utf8(header.strip_prefix(b"*")?)
            .ok()?
            .parse()
            .ok()?;
        let mut name = None;
        for _ in 0..count {
            let (len, next) = line(buf, at)?;
            let len: usize = std::str::from_utf8(len.strip_prefix(b"$")?)
                .ok()?
                .parse()
                .ok()?;
            let arg = buf.get(next..next + len)?;
            name.get_or_insert_with(|| String::from_utf8_lossy(arg).into_owned());
            at = next + len + 2;
            if buf.len() < at {
                return None;
            }
        }
        Some((name.unwrap_or_default(), at))
    }

    #[tokio::test]
    async fn hanging_redis_is_unavailable_within_the_op_timeout() {
        let (addr, server) = fake_redis(OnSet::Hang).await;
        let store = RedisReplayStore::connect(&format!("redis://{addr}/"))
            .await
            .expect("the fake answers the connection set-up")
            .with_op_timeout(Duration::from_millis(200));
        let started = Instant::now();
        let result = store.first_seen("id", Duration::from_secs(30)).await;
        assert!(
            matches!(result, Err(ReplayError::Unavailable(_))),
            "{result:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        server.abort();
    }

    #[tokio::test]
    async fn redis_dying_after_connect_is_unavailable() {
        let (addr, server) = fake_redis(OnSet::Close).await;
        let store = RedisReplayStore::connect(&format!("redis://{addr}/"))
            .await
            .expect("the fake answers the connection set-up");
        for _ in 0..2 {
            let started = Instant::now();
            let result = store.first_seen("id", Duration::from_secs(30)).await;
            assert!(
                matches!(result, Err(ReplayError::Unavailable(_))),
                "{result:?}"
            );
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );
        }
        server.abort();
    }

    #[tokio::test]
    async fn errors_do_not_reveal_the_url() {
        let result = RedisReplayStore::connect("redis://:hunter2@127.0.0.1:1/").await;
        let message = result.unwrap_err().to_string();
        assert!(!message.contains("hunter2"), "{message}");
        let result = RedisReplayStore::connect("not a url hunter2").await;
        assert!(!result.unwrap_err().to_string().contains("hunter2"));
    }
}
