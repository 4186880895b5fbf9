//! GCRA in Redis, for limits shared by several instances.
//!
//! The same algorithm as `governor` (the Generic Cell Rate Algorithm, as in ATM networks and
//! redis-cell): a bucket stores its "theoretical arrival time" (TAT). With emission interval
//! `T = 60 s / rate` and a burst of `rate`, a request at `now` is allowed when
//! `max(TAT, now) + T - now <= rate * T`, and then `TAT = max(TAT, now) + T`. The script runs
//! atomically in Redis and uses Redis's clock, so instances with skewed clocks agree.

use std::time::Duration;

use redis::aio::ConnectionManager;

/// Returns `{0, remaining}` when allowed (and records it; `remaining` is how many more takes
/// the bucket allows right now), or `{milliseconds to wait, 0}`.
const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2]) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > limit then
  return {new_tat - now - limit, 0}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {0, math.floor((limit - (new_tat - now)) / interval)}
"#;

/// A Redis connection running the GCRA script, with a short timeout: a limit that cannot be
/// checked fails closed (503), like every other shared state.
#[derive(Clone)]
pub struct RedisGcra {
    conn: ConnectionManager,
    script: redis::Script,
    timeout: Duration,
}

impl RedisGcra {
    /// Connects to `url` with the process-wide connection settings
    /// ([`crate::cluster::manager_config`]).
    pub async fn connect(url: &str) -> Result<RedisGcra, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let conn = tokio::time::timeout(
            crate::cluster::CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(client, crate::cluster::manager_config()),
        )
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "connect timed out")))??;
        Ok(RedisGcra::from_manager(conn))
    }

    /// Runs on an existing connection (the instance's shared one, [`crate::cluster`]).
    pub fn from_manager(conn: ConnectionManager) -> RedisGcra {
        RedisGcra {
            conn,
            script: redis::Script::new(TAKE),
            timeout: crate::cluster::OP_TIMEOUT,
        }
    }

    /// Takes one unit from bucket `key` of `per_minute`; 0 or the milliseconds to wait.
    pub async fn take(&self, key: &str, per_minute: u32) -> Result<u64, redis::RedisError> {
        Ok(self.take_counting(key, per_minute).await?.0)
    }

    /// Like [`take`](Self::take), also answering how many more takes the bucket allows now
    /// (0 when refused): `(milliseconds to wait, remaining)`.
    pub async fn take_counting(
        &self,
        key: &str,
        per_minute: u32,
    ) -> Result<(u64, u64), redis::RedisError> {
        let interval_ms = (60_000 / u64::from(per_minute.max(1))).max(1);
        let mut conn = self.conn.clone();
        let mut call = self.script.key(key);
        call.arg(interval_ms).arg(per_minute);
        self.bounded(async move { call.invoke_async::<(u64, u64)>(&mut conn).await })
            .await
    }

    /// Marks `key` as blocked for `ttl`.
    pub async fn block(&self, key: &str, ttl: Duration) -> Result<(), redis::RedisError> {
        let mut conn = self.conn.clone();
        let ms = ttl.as_millis().max(1) as u64;
        let key = key.to_owned();
        self.bounded(async move {
            redis::cmd("SET")
                .arg(key)
                .arg(1)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// Milliseconds `key` stays blocked (0 when it is not).
    pub async fn blocked_for(&self, key: &str) -> Result<u64, redis::RedisError> {
        let mut conn = self.conn.clone();
        let key = key.to_owned();
        let ttl: i64 = self
            .bounded(async move { redis::cmd("PTTL").arg(key).query_async(&mut conn).await })
            .await?;
        Ok(ttl.max(0) as u64)
    }

    async fn bounded<T>(
        &self,
        f: impl Future<Output = Result<T, redis::RedisError>>,
    ) -> Result<T, redis::RedisError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::IoError, "Redis timed out")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three "instances" (separate connections) share one bucket: together they get the
    /// limit, not three times it.
    #[tokio::test]
    async fn instances_share_one_allowance() {
        let Some(url) = crate::store::testing::redis_test_url() else {
            return;
        };
        let key = format!("keybound:test:gcra:{}", uuid::Uuid::new_v4().simple());
        let mut instances = vec![];
        for _ in 0..3 {
            instances.push(RedisGcra::connect(&url).await.unwrap());
        }
        let mut allowed = 0;
        for i in 0..30 {
            if instances[i % 3].take(&key, 10).await.unwrap() == 0 {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 10, "a 10/min burst across three instances");
        let wait = instances[0].take(&key, 10).await.unwrap();
        assert!(
            wait > 0 && wait <= 6_000,
            "next unit within one interval (6 s): {wait} ms"
        );
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_an_error_not_a_pass() {
        assert!(RedisGcra::connect("redis://127.0.0.1:1").await.is_err());
    }
}
