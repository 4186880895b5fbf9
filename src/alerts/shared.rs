//! The anomaly windows of a cluster (`--redis-url`): the usage-spike counter (exchanges per key
//! per minute) and the many-devices/networks sets (per key per hour) live in Redis, so every
//! instance counts into the same window, and one alert is raised per crossing for the whole
//! cluster, not one per instance.
//!
//! One script call per exchange does everything (count, add, read, decide), so it costs one
//! round trip, made off the answer path. Who raises is decided in Redis too: the first
//! exchange over a threshold sets a flag for a minute (`SET NX EX 60`, as the in-process
//! detector's one-alert-per-minute quiet period), and only the exchange that set it raises.

use redis::aio::ConnectionManager;

use super::Thresholds;

/// What one exchange saw in the shared windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Exchanges by the key in this minute, this one included.
    pub this_minute: u64,
    /// Distinct devices of the key in this hour.
    pub devices: u64,
    /// Distinct networks of the key in this hour.
    pub networks: u64,
    /// This exchange is the one that raises the spike alert.
    pub spike_crossed: bool,
    /// This exchange is the one that raises the many-devices/networks alert.
    pub many_crossed: bool,
}

/// KEYS: minute counter, device set, network set, spike flag, many flag.
/// ARGV: device id, network, spike threshold, many threshold.
/// Fixed windows (the minute, the hour) like the in-process detector's; each key expires on its
/// own a little after its window.
const OBSERVE: &str = r"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], 120) end
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then redis.call('EXPIRE', KEYS[2], 3660) end
if redis.call('SADD', KEYS[3], ARGV[2]) == 1 then redis.call('EXPIRE', KEYS[3], 3660) end
local devices = redis.call('SCARD', KEYS[2])
local networks = redis.call('SCARD', KEYS[3])
local spike = 0
if count > tonumber(ARGV[3]) and redis.call('SET', KEYS[4], '1', 'NX', 'EX', 60) then spike = 1 end
local many = 0
local limit = tonumber(ARGV[4])
if (devices > limit or networks > limit) and redis.call('SET', KEYS[5], '1', 'NX', 'EX', 60) then
  many = 1
end
return {count, devices, networks, spike, many}
";

/// The shared windows, on the instance's Redis connection. Cheap to clone.
#[derive(Clone)]
pub struct SharedWindows {
    conn: ConnectionManager,
    script: redis::Script,
}

impl SharedWindows {
    /// Windows on `conn`.
    pub fn new(conn: ConnectionManager) -> SharedWindows {
        SharedWindows {
            conn,
            script: redis::Script::new(OBSERVE),
        }
    }

    /// Counts one exchange of `key_id` by `device_id` from `network` at `now`.
    pub async fn observe(
        &self,
        key_id: &str,
        device_id: &str,
        network: &str,
        now: i64,
        t: Thresholds,
    ) -> Result<Seen, redis::RedisError> {
        // `{key_id}`: one hash slot for all of a key's windows (Redis Cluster).
        let (minute, hour) = (now / 60, now / 3600);
        let mut inv = self.script.prepare_invoke();
        inv.key(format!("keybound:win:{{{key_id}}}:m:{minute}"))
            .key(format!("keybound:win:{{{key_id}}}:d:{hour}"))
            .key(format!("keybound:win:{{{key_id}}}:n:{hour}"))
            .key(format!("keybound:win:{{{key_id}}}:spike"))
            .key(format!("keybound:win:{{{key_id}}}:many"))
            .arg(device_id)
            .arg(network)
            .arg(t.usage_spike_per_minute)
            .arg(t.many_per_hour as u64);
        let mut conn = self.conn.clone();
        let (this_minute, devices, networks, spike, many): (u64, u64, u64, u8, u8) =
            tokio::time::timeout(crate::cluster::OP_TIMEOUT, inv.invoke_async(&mut conn))
                .await
                .map_err(|_| {
                    redis::RedisError::from((redis::ErrorKind::IoError, "redis timed out"))
                })??;
        Ok(Seen {
            this_minute,
            devices,
            networks,
            spike_crossed: spike == 1,
            many_crossed: many == 1,
        })
    }
}
