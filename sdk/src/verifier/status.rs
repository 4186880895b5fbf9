//! IETF OAuth Token Status Lists (draft-ietf-oauth-status-list; contract section 10): every
//! access token names a slot in a signed, compressed bit array that the issuer republishes as
//! keys and devices are revoked, suspended or resumed.
//!
//! The list complements the revocation feed. The feed is the low-latency path (polled every
//! few seconds, incremental); the list is the one that cannot fall behind: whatever happened
//! before, one fetch gives the current state of every device on it. So a verifier that missed
//! feed entries (it was down, the feed was unreachable, it is still catching up) still refuses
//! a revoked device within the list's `ttl`.
//!
//! Fetching: the first token naming a list waits for it (one fetch, shared by concurrent
//! requests); afterwards a list past its `ttl` is refreshed in the background while the last
//! good copy keeps answering, so no request waits on a refetch. How stale a copy may get before
//! the verifier stops trusting it is `max_staleness`, judged in [`super`].

use flate2::read::ZlibDecoder;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The JWS `typ` of a status list token (draft section 5.1).
pub(crate) const STATUS_LIST_TYP: &str = "statuslist+jwt";
/// Media type asked for with `Accept` (draft section 14.7).
pub(crate) const STATUS_LIST_MEDIA_TYPE: &str = "application/statuslist+jwt";
/// The largest status-list response read, in bytes. keybound's list for a million devices
/// with a few percent revoked compresses to tens of KiB; a larger answer is not one of ours.
pub(crate) const MAX_LIST_RESPONSE: usize = 1 << 20;
/// The largest decompressed list accepted: 16 MiB is 67 million 2-bit entries. A bound on the
/// output, not just the input, because zlib's ratio lets 1 MiB expand a thousandfold.
const MAX_LIST_BYTES: u64 = 16 << 20;
/// Used when a list has no `ttl` claim: the server's default.
const DEFAULT_TTL: u64 = 60;
/// Floor on the refetch interval, so a `ttl` of 0 does not mean a fetch per request.
const MIN_TTL: u64 = 1;

/// A token's `status` claim (draft section 6.1).
#[derive(Debug, Deserialize)]
pub(crate) struct StatusClaim {
    pub(crate) status_list: StatusRef,
}

/// Where a token's status lives: entry `idx` of the list at `uri`.
#[derive(Debug, Deserialize)]
pub(crate) struct StatusRef {
    pub(crate) idx: u64,
    pub(crate) uri: String,
}

/// The claims of a status list token that matter here; `iss`/`exp` are checked by the
/// verifier's claim rules before these are read.
#[derive(Deserialize)]
pub(crate) struct ListClaims {
    pub(crate) sub: String,
    pub(crate) iat: u64,
    pub(crate) exp: Option<u64>,
    pub(crate) ttl: Option<u64>,
    pub(crate) status_list: EncodedList,
}

#[derive(Deserialize)]
pub(crate) struct EncodedList {
    pub(crate) bits: u8,
    pub(crate) lst: String,
}

/// A decoded list: `bits` per entry, packed least significant bits first (draft section 4.1).
#[derive(Debug)]
pub(crate) struct StatusList {
    bits: u8,
    bytes: Vec<u8>,
}

/// Why a list could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    Bits,
    Base64,
    Zlib,
    TooLarge,
}

impl StatusList {
    /// Decodes `lst`: base64url, then ZLIB (RFC 1950), bounded to [`MAX_LIST_BYTES`].
    pub(crate) fn decode(list: &EncodedList) -> Result<Self, DecodeError> {
        if !matches!(list.bits, 1 | 2 | 4 | 8) {
            return Err(DecodeError::Bits);
        }
        let compressed = crate::jose::b64_decode(&list.lst).ok_or(DecodeError::Base64)?;
        let mut bytes = Vec::new();
        ZlibDecoder::new(compressed.as_slice())
            .take(MAX_LIST_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|_| DecodeError::Zlib)?;
        if bytes.len() as u64 > MAX_LIST_BYTES {
            return Err(DecodeError::TooLarge);
        }
        Ok(Self {
            bits: list.bits,
            bytes,
        })
    }

    /// The status at `idx`, or `None` past the end of the list.
    ///
    /// Entry `i` occupies bits `i * bits .. (i + 1) * bits`, counted from the least
    /// significant bit of byte 0 (draft section 4.1): with 2 bits, byte `⌊2i/8⌋` at offset
    /// `2i mod 8`.
    pub(crate) fn get(&self, idx: u64) -> Option<u8> {
        let bits = u64::from(self.bits);
        let bit = idx.checked_mul(bits)?;
        let byte = *self.bytes.get(usize::try_from(bit / 8).ok()?)?;
        let mask = ((1u16 << bits) - 1) as u8;
        Some((byte >> (bit % 8)) & mask)
    }
}

/// One list as last fetched.
pub(crate) struct Fetched {
    pub(crate) list: StatusList,
    /// When to fetch again (`iat`-independent: counted from when we read it).
    pub(crate) refresh_at: SystemTime,
    /// When we last read it successfully; what `max_staleness` is measured against.
    pub(crate) fetched_at: SystemTime,
    /// The token's own `exp`: past it the copy is no longer the issuer's word.
    pub(crate) expires_at: Option<u64>,
}

impl Fetched {
    pub(crate) fn new(claims: ListClaims, list: StatusList) -> Self {
        let now = SystemTime::now();
        let ttl = claims.ttl.unwrap_or(DEFAULT_TTL).max(MIN_TTL);
        Self {
            list,
            refresh_at: now + Duration::from_secs(ttl),
            fetched_at: now,
            expires_at: claims.exp,
        }
    }
}

/// The lists this verifier has seen, by URI.
#[derive(Default)]
pub(crate) struct StatusLists {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// One list: its last good copy, and what keeps fetches of it to one at a time.
#[derive(Default)]
pub(crate) struct Slot {
    pub(crate) current: Mutex<Option<Arc<Fetched>>>,
    /// Held by the request that fetches a list never seen, so concurrent requests share it.
    pub(crate) fetch: tokio::sync::Mutex<()>,
    /// Set while a background refresh runs.
    refreshing: AtomicBool,
    /// When the last fetch failed.
    failed_at: Mutex<Option<Instant>>,
}

impl Slot {
    /// Claims the background refresh; false when one is already running.
    pub(crate) fn start_refresh(&self) -> bool {
        !self.refreshing.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn end_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }

    pub(crate) fn failed(&self) {
        *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// Whether a fetch may be tried now: no failure within `pause`.
    pub(crate) fn may_retry(&self, pause: Duration) -> bool {
        self.failed_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|t| t.elapsed() >= pause)
    }

    pub(crate) fn current(&self) -> Option<Arc<Fetched>> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn store(&self, fetched: Fetched) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(fetched));
    }
}

impl StatusLists {
    /// The slot for `uri`, created empty on first sight. The number of slots is bounded by
    /// the caller: only URIs under the issuer's own status-list path get here, from tokens
    /// whose signature already verified.
    pub(crate) fn slot(&self, uri: &str) -> Arc<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(uri.to_owned())
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::ZlibEncoder;
    use std::io::Write as _;

    fn encode(bytes: &[u8]) -> EncodedList {
        let mut z = ZlibEncoder::new(Vec::new(), Compression::default());
        z.write_all(bytes).unwrap();
        EncodedList {
            bits: 2,
            lst: crate::jose::b64_encode(z.finish().unwrap()),
        }
    }

    #[test]
    fn entries_are_read_lsb_first() {
        // The draft's 2-bit example (section 4.1): statuses [1,2,0,3, 0,1,0,1, 1,2,3,3]
        // pack into the bytes 0xC9 0x44 0xF9.
        let list = StatusList::decode(&encode(&[0xC9, 0x44, 0xF9])).unwrap();
        let got: Vec<u8> = (0..12).map(|i| list.get(i).unwrap()).collect();
        assert_eq!(got, [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3]);
        assert_eq!(list.get(12), None, "past the end");
        assert_eq!(list.get(u64::MAX), None, "no overflow");
    }

    #[test]
    fn malformed_lists_are_refused() {
        let mut bad_bits = encode(&[0]);
        bad_bits.bits = 3;
        assert_eq!(
            StatusList::decode(&bad_bits).unwrap_err(),
            DecodeError::Bits
        );
        let not_b64 = EncodedList {
            bits: 2,
            lst: "***".into(),
        };
        assert_eq!(
            StatusList::decode(&not_b64).unwrap_err(),
            DecodeError::Base64
        );
        let not_zlib = EncodedList {
            bits: 2,
            lst: crate::jose::b64_encode(b"not zlib at all"),
        };
        assert_eq!(
            StatusList::decode(&not_zlib).unwrap_err(),
            DecodeError::Zlib
        );
    }

    #[test]
    fn a_zlib_bomb_is_refused() {
        // 17 MiB of zeros compresses to ~17 KiB: small on the wire, over the output bound.
        let bomb = encode(&vec![0u8; (MAX_LIST_BYTES + (1 << 20)) as usize]);
        assert!(bomb.lst.len() < MAX_LIST_RESPONSE);
        assert_eq!(
            StatusList::decode(&bomb).unwrap_err(),
            DecodeError::TooLarge
        );
    }
}
