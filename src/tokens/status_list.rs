//! Token status lists (contract section 10; IETF draft "OAuth Status List",
//! draft-ietf-oauth-status-list): every access token names its device's entry, and
//! `GET /v1/status-lists/<n>` serves the signed list, so a resource server learns that a device
//! or key was revoked (or a key suspended) by fetching one small document per `ttl`, whatever
//! the number of tokens.
//!
//! * The format: [`pack`] (2 bits per entry, entry `i` at byte `i / 4`, bit offset `2 (i mod 4)`,
//!   least significant bits first, draft section 4.1), [`compress`] (ZLIB, RFC 1950), and
//!   [`StatusListClaims`] signed as `typ: statuslist+jwt`.
//! * Index allocation is storage's ([`Store::enroll_device`]): one global index per device,
//!   never reused; list `n` holds global indexes `n * STATUS_LIST_SIZE ..` (see [`locate`]).
//! * [`StatusLists`] builds lists on demand and keeps each signed list until a record it was
//!   built from changes: the validation cache's evictions ([`CachedStore::generation`]) reach
//!   every instance through Redis within milliseconds, so a revocation is in every served list
//!   well within the contract's 1 s. Changes made by the CLI directly in the database have no
//!   eviction; a list is therefore also rebuilt after the validation cache's own TTL (5 s) and
//!   when a key expires.

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flate2::Compression;
use flate2::write::ZlibEncoder;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::store::cached::CachedStore;
use crate::store::{STATUS_LIST_SIZE, StatusSnapshot, Store};
use crate::tokens::keyring::KeyRing;

/// The JWS `typ` of a status list token (draft section 5.1).
pub const TYP_STATUS_LIST: &str = "statuslist+jwt";

/// The media type a status list is served with (draft section 8.2).
pub const CONTENT_TYPE: &str = "application/statuslist+jwt";

/// Bits per entry: 0 valid, 1 invalid, 2 suspended (draft section 7.1).
pub const BITS: u8 = 2;

/// Path of list `n`, below the issuer.
pub fn path(n: i64) -> String {
    format!("/v1/status-lists/{n}")
}

/// The list and the index within it of a device's global status index.
pub fn locate(global_idx: i64) -> (i64, i64) {
    (
        global_idx.div_euclid(STATUS_LIST_SIZE),
        global_idx.rem_euclid(STATUS_LIST_SIZE),
    )
}

/// The `status` claim of an access token (draft section 6.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenStatus {
    /// The token's entry.
    pub status_list: StatusListRef,
}

/// Where a token's status is: entry `idx` of the list at `uri`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusListRef {
    /// Index within the list.
    pub idx: u64,
    /// `<issuer>/v1/status-lists/<n>`.
    pub uri: String,
}

impl TokenStatus {
    /// The claim for the device with global status index `global_idx`.
    pub fn of(issuer: &str, global_idx: i64) -> TokenStatus {
        let (list, idx) = locate(global_idx);
        TokenStatus {
            status_list: StatusListRef {
                idx: idx as u64,
                uri: format!("{issuer}{}", path(list)),
            },
        }
    }
}

/// Packs `entries` (index within the list, 2-bit value) into the draft's byte array for a list
/// of `size` entries: entry `i` in byte `i / 4` at bit offset `2 (i mod 4)`. Entries outside
/// the list are ignored; values are cut to their low two bits.
pub fn pack(entries: impl IntoIterator<Item = (usize, u8)>, size: usize) -> Vec<u8> {
    let per_byte = 8 / usize::from(BITS);
    let mut bytes = vec![0u8; size.div_ceil(per_byte)];
    for (i, value) in entries {
        if let Some(byte) = bytes.get_mut(i / per_byte) {
            let shift = (i % per_byte) * usize::from(BITS);
            *byte = (*byte & !(0b11 << shift)) | ((value & 0b11) << shift);
        }
    }
    bytes
}

/// ZLIB (RFC 1950) at the best compression: a list is built at most once per change, served
/// many times, and its size is what every verifier downloads.
pub fn compress(bytes: &[u8]) -> Vec<u8> {
    let mut z = ZlibEncoder::new(Vec::with_capacity(bytes.len() / 64), Compression::best());
    z.write_all(bytes).expect("writing to a Vec cannot fail");
    z.finish().expect("writing to a Vec cannot fail")
}

/// The `status_list` claim (draft section 4.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusListClaim {
    /// Always [`BITS`].
    pub bits: u8,
    /// base64url (no padding) of the ZLIB-compressed byte array.
    pub lst: String,
}

/// The claims of a status list token (draft section 5.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusListClaims {
    /// The issuer (tokens name it as their `iss`).
    pub iss: String,
    /// The list's own URI, as tokens name it.
    pub sub: String,
    /// When the list was built (its content is as of then).
    pub iat: u64,
    /// `iat + 2 ttl`: see [`StatusListClaims::new`].
    pub exp: u64,
    /// Seconds a verifier may cache the list.
    pub ttl: u64,
    /// The entries.
    pub status_list: StatusListClaim,
}

impl StatusListClaims {
    /// The claims for list `sub` with the non-valid `entries` (global indexes of that list).
    ///
    /// `exp` is `iat + 2 ttl`: the server may hand out a copy built a moment ago, and a
    /// verifier may then cache it for a full `ttl`; the second `ttl` also lets one refetch fail
    /// without the verifier holding an expired list.
    pub fn new(
        iss: &str,
        sub: String,
        list_start: i64,
        snapshot: &StatusSnapshot,
        iat: u64,
        ttl: u64,
    ) -> StatusListClaims {
        let entries = snapshot.entries.iter().filter_map(|(&global, &v)| {
            usize::try_from(global - list_start)
                .ok()
                .map(|i| (i, v as u8))
        });
        let bytes = pack(entries, STATUS_LIST_SIZE as usize);
        StatusListClaims {
            iss: iss.to_owned(),
            sub,
            iat,
            exp: iat.saturating_add(ttl.saturating_mul(2)),
            ttl,
            status_list: StatusListClaim {
                bits: BITS,
                lst: URL_SAFE_NO_PAD.encode(compress(&bytes)),
            },
        }
    }
}

/// How long a built list may be served while no eviction says it changed: the validation
/// cache's TTL, so a change made by the CLI directly in the database reaches the lists as soon
/// as it reaches the token path (contract 3.4), and never longer than the list's `ttl`.
fn max_age(ttl: u64) -> Duration {
    Duration::from_secs(ttl).min(crate::store::cached::TTL)
}

/// A signed list as served.
struct Built {
    jws: Arc<str>,
    /// [`CachedStore::generation`] before its storage reads.
    generation: u64,
    built: Instant,
    /// Unix seconds when a key expires, which changes the list without a write.
    next_expiry: Option<i64>,
}

/// Builds, signs and caches the status lists.
pub struct StatusLists {
    store: Arc<dyn Store>,
    cache: Arc<CachedStore>,
    keyring: Arc<KeyRing>,
    issuer: String,
    ttl: u64,
    lists: Mutex<HashMap<i64, Arc<Built>>>,
    /// One build at a time: a burst of verifiers after a change costs one build, not one each.
    building: tokio::sync::Mutex<()>,
}

impl StatusLists {
    /// Lists of `store` (through `cache`, whose evictions make them stale), signed with the
    /// active key of `keyring`, with `ttl` seconds for verifiers.
    pub fn new(
        store: Arc<dyn Store>,
        cache: Arc<CachedStore>,
        keyring: Arc<KeyRing>,
        issuer: String,
        ttl: u64,
    ) -> StatusLists {
        StatusLists {
            store,
            cache,
            keyring,
            issuer,
            ttl,
            lists: Mutex::default(),
            building: tokio::sync::Mutex::new(()),
        }
    }

    /// The `ttl` claim.
    pub fn ttl(&self) -> u64 {
        self.ttl
    }

    /// List `n` as a signed `statuslist+jwt`, `None` when there is no such list.
    pub async fn get(&self, n: i64) -> Result<Option<Arc<str>>> {
        if let Some(jws) = self.fresh(n) {
            return Ok(Some(jws));
        }
        let _turn = self.building.lock().await;
        // Someone else may have built it while we waited.
        if let Some(jws) = self.fresh(n) {
            return Ok(Some(jws));
        }
        let Some(start) = n.checked_mul(STATUS_LIST_SIZE) else {
            return Ok(None);
        };
        let generation = self.cache.generation();
        let now = crate::clock::now();
        let Some(snapshot) = self
            .store
            .status_snapshot(start, start + STATUS_LIST_SIZE, now)
            .await?
        else {
            return Ok(None);
        };
        let (issuer, sub, ttl, key) = (
            self.issuer.clone(),
            format!("{}{}", self.issuer, path(n)),
            self.ttl,
            self.keyring.active(),
        );
        let next_expiry = snapshot.next_expiry;
        // Packing and compressing a million entries takes milliseconds: off the runtime.
        let jws = tokio::task::spawn_blocking(move || {
            let claims = StatusListClaims::new(&issuer, sub, start, &snapshot, now as u64, ttl);
            key.sign_jws(TYP_STATUS_LIST, &claims)
        })
        .await
        .map_err(crate::Error::internal)?;
        let jws: Arc<str> = jws.into();
        let built = Arc::new(Built {
            jws: jws.clone(),
            generation,
            built: Instant::now(),
            next_expiry,
        });
        self.lists.lock().expect("not poisoned").insert(n, built);
        metrics::counter!("keybound_status_list_builds_total").increment(1);
        Ok(Some(jws))
    }

    /// The cached list `n` if nothing it was built from has changed since.
    fn fresh(&self, n: i64) -> Option<Arc<str>> {
        let built = self.lists.lock().expect("not poisoned").get(&n).cloned()?;
        let fresh = built.generation == self.cache.generation()
            && built.built.elapsed() < max_age(self.ttl)
            && built.next_expiry.is_none_or(|e| crate::clock::now() < e);
        fresh.then(|| built.jws.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::*;
    use crate::store::StatusValue;

    #[test]
    fn entries_are_packed_two_bits_each_least_significant_first() {
        // The draft's 2-bit example (draft-ietf-oauth-status-list, section 4.1): statuses
        // 1,2,0,3,0,1,0,1,1,2,3,3 pack to 0xC9 0x44 0xF9.
        let values = [1u8, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3];
        let bytes = pack(values.iter().copied().enumerate(), values.len());
        assert_eq!(bytes, [0xC9, 0x44, 0xF9]);
        let ours = pack(
            [
                (0, StatusValue::Invalid as u8),
                (1, StatusValue::Suspended as u8),
            ],
            4,
        );
        assert_eq!(ours, [0b0000_1001]);
    }

    #[test]
    fn a_later_value_for_the_same_entry_replaces_the_earlier() {
        let bytes = pack([(5, 2), (5, 1)], 8);
        assert_eq!(bytes, [0, 0b0000_0100]);
        assert_eq!(pack([(8, 1)], 8), [0, 0], "outside the list");
    }

    #[test]
    fn invalid_wins_over_suspended_in_a_snapshot() {
        let mut s = StatusSnapshot::default();
        s.set(3, StatusValue::Invalid);
        s.set(3, StatusValue::Suspended);
        s.set(4, StatusValue::Suspended);
        s.set(4, StatusValue::Invalid);
        assert_eq!(s.entries[&3], StatusValue::Invalid);
        assert_eq!(s.entries[&4], StatusValue::Invalid);
    }

    #[test]
    fn compression_is_zlib_and_round_trips() {
        let bytes = pack([(0, 1), (999, 2)], 4096);
        let z = compress(&bytes);
        // RFC 1950: CMF 0x78 (deflate, 32 KiB window), FCHECK makes CMF*256+FLG a multiple of 31.
        assert_eq!(z[0], 0x78);
        assert_eq!((u16::from(z[0]) * 256 + u16::from(z[1])) % 31, 0);
        let mut back = Vec::new();
        flate2::read::ZlibDecoder::new(&z[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, bytes);
    }

    #[test]
    fn a_full_list_with_one_percent_revoked_stays_under_50_kib() {
        // Contract target (issue 20): 1 048 576 entries, 1 % invalid at random places.
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
        let mut snapshot = StatusSnapshot::default();
        while snapshot.entries.len() < (STATUS_LIST_SIZE / 100) as usize {
            snapshot.set(rng.gen_range(0..STATUS_LIST_SIZE), StatusValue::Invalid);
        }
        let claims = StatusListClaims::new(
            "https://i",
            "https://i/v1/status-lists/0".into(),
            0,
            &snapshot,
            0,
            60,
        );
        let compressed = URL_SAFE_NO_PAD.decode(&claims.status_list.lst).unwrap();
        eprintln!(
            "1M entries, 1 % revoked: {} bytes compressed",
            compressed.len()
        );
        assert!(compressed.len() < 50 * 1024, "{} bytes", compressed.len());
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&compressed[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), (STATUS_LIST_SIZE / 4) as usize);
        let (&idx, _) = snapshot.entries.iter().next().unwrap();
        assert_eq!((raw[idx as usize / 4] >> (2 * (idx % 4))) & 3, 1);
    }

    #[test]
    fn global_indexes_map_to_a_list_and_an_entry() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(STATUS_LIST_SIZE - 1), (0, STATUS_LIST_SIZE - 1));
        assert_eq!(locate(STATUS_LIST_SIZE), (1, 0));
        assert_eq!(locate(3 * STATUS_LIST_SIZE + 7), (3, 7));
        let claim =
            serde_json::to_value(TokenStatus::of("https://i.example", STATUS_LIST_SIZE + 2))
                .unwrap();
        assert_eq!(
            claim,
            serde_json::json!({"status_list": {"idx": 2, "uri": "https://i.example/v1/status-lists/1"}})
        );
    }
}
