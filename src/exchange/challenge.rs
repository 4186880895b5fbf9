//! Attestation challenges (contract section 8): stateless, single use, valid on every instance.
//!
//! A challenge is `base64url(r || t || HMAC-SHA256(secret, label || r || t))` with `r` 32
//! bytes from the OS CSPRNG (the contract's "at least 32 random bytes") and `t` its expiry in
//! Unix seconds as 8 big-endian bytes. Every instance derives the same secret from the master
//! key (`KeyRing::derive`), so any instance can check a challenge another one issued without
//! shared state; single use comes from the replay store (Redis in a cluster), where a challenge
//! is recorded when an attestation over it is accepted, so a challenge accepted on instance A
//! is refused on instance B.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::replay::ReplayStore;

/// Path of the challenge endpoint.
pub const CHALLENGE_PATH: &str = "/v1/attestation/challenge";
/// How long a challenge is good for (contract section 8: `expires_in` 300).
pub const CHALLENGE_TTL_SECS: i64 = 300;

/// Domain separation from every other MAC made with keys derived from the master key.
const LABEL: &[u8] = b"keybound attestation-challenge v1\0";
const RANDOM_LEN: usize = 32;
const TAG_LEN: usize = 32;
const RAW_LEN: usize = RANDOM_LEN + 8 + TAG_LEN;
/// base64url of 72 bytes, no padding.
const ENCODED_LEN: usize = RAW_LEN / 3 * 4;

/// Why a challenge was refused (the `INVALID_ATTESTATION` message names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeError {
    /// Not one of ours (wrong length, not base64url, bad MAC).
    Unknown,
    /// Past its expiry.
    Expired,
    /// Already used by an accepted attestation (on any instance).
    Used,
}

impl std::fmt::Display for ChallengeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChallengeError::Unknown => "challenge: not issued by this server",
            ChallengeError::Expired => "challenge: expired",
            ChallengeError::Used => "challenge: already used",
        })
    }
}

/// Issues and checks challenges.
#[derive(Clone)]
pub struct Challenges {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for Challenges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenges").finish_non_exhaustive()
    }
}

impl Challenges {
    /// Keyed with a secret every instance shares (derived from the master key).
    pub fn new(secret: &[u8; 32]) -> Self {
        Challenges {
            mac: <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length"),
        }
    }

    /// A fresh challenge, good until `now + CHALLENGE_TTL_SECS`.
    pub fn issue(&self, now: i64) -> String {
        let mut raw = [0u8; RAW_LEN];
        rand::rngs::OsRng.fill_bytes(&mut raw[..RANDOM_LEN]);
        raw[RANDOM_LEN..RANDOM_LEN + 8].copy_from_slice(&(now + CHALLENGE_TTL_SECS).to_be_bytes());
        let tag = self.tag(&raw[..RANDOM_LEN + 8]);
        raw[RANDOM_LEN + 8..].copy_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks that `challenge` is ours and unexpired; returns its expiry.
    pub fn check(&self, challenge: &str, now: i64) -> Result<i64, ChallengeError> {
        if challenge.len() != ENCODED_LEN {
            return Err(ChallengeError::Unknown);
        }
        let raw = URL_SAFE_NO_PAD
            .decode(challenge)
            .map_err(|_| ChallengeError::Unknown)?;
        let raw = <[u8; RAW_LEN]>::try_from(raw).map_err(|_| ChallengeError::Unknown)?;
        let (body, tag) = raw.split_at(RANDOM_LEN + 8);
        if !bool::from(self.tag(body).as_slice().ct_eq(tag)) {
            return Err(ChallengeError::Unknown);
        }
        let expires = i64::from_be_bytes(body[RANDOM_LEN..].try_into().expect("8 bytes"));
        if now >= expires {
            return Err(ChallengeError::Expired);
        }
        Ok(expires)
    }

    /// Records `challenge` as used (call once its attestation verified); `Used` when it was
    /// used before, here or on another instance sharing the replay store.
    pub async fn spend(
        &self,
        replay: &dyn ReplayStore,
        challenge: &str,
        expires: i64,
        now: i64,
    ) -> crate::error::Result<Result<(), ChallengeError>> {
        // Remembered a little past expiry: after that, `check` refuses it anyway.
        let ttl = Duration::from_secs((expires - now).max(0) as u64 + 5);
        let fresh = replay
            .first_seen(&format!("attestation-challenge:{challenge}"), ttl)
            .await
            .map_err(crate::error::Error::unavailable)?;
        Ok(if fresh {
            Ok(())
        } else {
            Err(ChallengeError::Used)
        })
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(LABEL);
        mac.update(body);
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::MemoryReplayStore;

    #[test]
    fn a_challenge_is_ours_until_it_expires() {
        let c = Challenges::new(&[7; 32]);
        let ch = c.issue(1_000);
        assert!(ch.len() >= 43, "at least 32 random bytes");
        assert_eq!(c.check(&ch, 1_000), Ok(1_300));
        assert_eq!(c.check(&ch, 1_299), Ok(1_300));
        assert_eq!(c.check(&ch, 1_300), Err(ChallengeError::Expired));
        assert_ne!(c.issue(1_000), ch, "random part");
        // Another secret (another deployment), a flipped byte, garbage: not ours.
        assert_eq!(
            Challenges::new(&[8; 32]).check(&ch, 1_000),
            Err(ChallengeError::Unknown)
        );
        let mut flipped = ch.clone().into_bytes();
        flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            c.check(std::str::from_utf8(&flipped).unwrap(), 1_000),
            Err(ChallengeError::Unknown)
        );
        assert_eq!(c.check("short", 1_000), Err(ChallengeError::Unknown));
    }

    #[tokio::test]
    async fn a_challenge_is_spent_once() {
        let c = Challenges::new(&[7; 32]);
        let replay = MemoryReplayStore::new();
        let ch = c.issue(1_000);
        assert_eq!(c.spend(&replay, &ch, 1_300, 1_000).await.unwrap(), Ok(()));
        assert_eq!(
            c.spend(&replay, &ch, 1_300, 1_001).await.unwrap(),
            Err(ChallengeError::Used)
        );
    }
}
