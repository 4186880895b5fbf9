//! Replay detection for DPoP proofs (RFC 9449 §11.1): a proof's `jti` is accepted once.
//!
//! Neither store holds the id it is given, only a digest of it (Redis: its SHA-256; memory: a
//! keyed 64-bit fingerprint): a proof is a credential (CONTRACT §7), and a fixed-size key also
//! bounds the memory an attacker can make an entry cost.
//!
//! Both fail closed: when the store cannot answer, the caller gets
//! [`ReplayError::Unavailable`](crate::replay::ReplayError::Unavailable)
//! and must refuse the request (`503 UNAVAILABLE`), never treat the proof as new.

mod memory;
mod redis_store;

pub use memory::MemoryReplayStore;
pub use redis_store::RedisReplayStore;

use sha2::{Digest, Sha256};
use std::time::Duration;

/// Where seen proof ids are remembered. One instance per process, shared behind an `Arc`.
#[async_trait::async_trait]
pub trait ReplayStore: Send + Sync + 'static {
    /// Records `id` for `ttl`; Ok(true) if it was new, Ok(false) if already seen (a replay).
    async fn first_seen(&self, id: &str, ttl: Duration) -> Result<bool, ReplayError>;
    /// Approximate number of entries held (for a metric); None if unknown.
    fn approx_len(&self) -> Option<u64>;
}

/// The store could not say whether an id is new.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The backend failed, timed out or is full. The reason is for logs; it never contains
    /// the id.
    #[error("replay store unavailable: {0}")]
    Unavailable(String),
}

/// The shortest time an id is remembered. A zero (or sub-millisecond) ttl would forget the id
/// at once and make every replay look new; flooring it makes that caller mistake fail safe.
pub const MIN_TTL: Duration = Duration::from_secs(1);

fn effective_ttl(ttl: Duration) -> Duration {
    ttl.max(MIN_TTL)
}

fn hash_id(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}
