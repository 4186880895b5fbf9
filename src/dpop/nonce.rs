//! Stateless server-provided DPoP nonces (RFC 9449 §8).
//!
//! A nonce lets the server bound how long ago a proof was made, whatever `iat` the client
//! claims: a client holding a stolen, not-yet-used key cannot pre-generate proofs for later
//! (RFC 9449 §11.2), because it cannot know a nonce the server has not yet issued.
//!
//! The nonce is `base64url(t || HMAC-SHA256(secret, label || t)[..16])` with `t` the issue time
//! in Unix seconds as 8 big-endian bytes. Any instance holding the same secret validates
//! nonces issued by any other, with no shared state. The MAC is truncated to 128 bits
//! (RFC 2104 §5 allows truncation; 128 bits leave forgery at 2^-128 per guess).
//!
//! A nonce may be used by many proofs while it is fresh; replay is stopped by `jti`, not here.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Domain separation: a MAC made with the same secret for another purpose never doubles as a
/// nonce.
const LABEL: &[u8] = b"keybound dpop-nonce v1\0";
const TAG_LEN: usize = 16;
const RAW_LEN: usize = 8 + TAG_LEN;
/// Length of a nonce string: base64url of 24 bytes, no padding.
const ENCODED_LEN: usize = RAW_LEN / 3 * 4;

/// Issues and checks stateless, authenticated DPoP nonces.
///
/// ```
/// # use keybound::dpop::NonceIssuer;
/// let issuer = NonceIssuer::new(&[7u8; 32]);
/// let nonce = issuer.issue(1_700_000_000);
/// assert!(issuer.is_valid(&nonce, 1_700_000_100));
/// assert!(!issuer.is_valid(&nonce, 1_700_000_301)); // older than the 300 s window
/// ```
#[derive(Clone)]
pub struct NonceIssuer {
    /// The keyed MAC state; the raw secret is not kept.
    mac: Hmac<Sha256>,
    window_secs: i64,
    max_future_secs: i64,
}

impl std::fmt::Debug for NonceIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceIssuer")
            .field("window_secs", &self.window_secs)
            .field("max_future_secs", &self.max_future_secs)
            .finish_non_exhaustive()
    }
}

impl NonceIssuer {
    /// How long a nonce stays valid unless [`with_window`](Self::with_window) says otherwise:
    /// 300 s, long enough for a client that got `USE_DPOP_NONCE` to retry, short enough that a
    /// captured nonce soon stops helping to pre-generate proofs.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);

    /// How far in the future a nonce's issue time may be: the clock skew tolerated between
    /// server instances that share the secret.
    pub const DEFAULT_MAX_FUTURE: Duration = Duration::from_secs(5);

    /// An issuer keyed with a 32-byte secret from a CSPRNG, shared by every instance.
    pub fn new(secret: &[u8; 32]) -> Self {
        Self {
            // HMAC accepts keys of any length, so this cannot fail.
            mac: <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length"),
            window_secs: duration_secs(Self::DEFAULT_WINDOW),
            max_future_secs: duration_secs(Self::DEFAULT_MAX_FUTURE),
        }
    }

    /// Sets how long after issue a nonce is accepted.
    pub fn with_window(mut self, window: Duration) -> Self {
        self.window_secs = duration_secs(window);
        self
    }

    /// Sets how far ahead of this instance's clock a nonce's issue time may be.
    pub fn with_max_future(mut self, max_future: Duration) -> Self {
        self.max_future_secs = duration_secs(max_future);
        self
    }

    /// A nonce issued at `now_unix`. Nonces issued in the same second are identical, which is
    /// fine: a nonce bounds freshness and need not be unique.
    pub fn issue(&self, now_unix: i64) -> String {
        let time = now_unix.to_be_bytes();
        let mut raw = [0u8; RAW_LEN];
        raw[..8].copy_from_slice(&time);
        raw[8..].copy_from_slice(&self.tag(&time));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `nonce` was issued by an instance holding our secret, at most the window ago
    /// and not more than the allowed skew in the future.
    pub fn is_valid(&self, nonce: &str, now_unix: i64) -> bool {
        // Length first: garbage of any size is refused before decoding.
        if nonce.len() != ENCODED_LEN {
            return false;
        }
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return false;
        };
        let Ok(raw) = <[u8; RAW_LEN]>::try_from(raw) else {
            return false;
        };
        let (time, tag) = raw.split_at(8);
        let time: [u8; 8] = time.try_into().expect("split at 8");
        // Constant-time comparison: a byte-by-byte early exit would let an attacker learn a
        // valid tag one byte at a time from response timings.
        if !bool::from(self.tag(&time).as_slice().ct_eq(tag)) {
            return false;
        }
        let Some(age) = now_unix.checked_sub(i64::from_be_bytes(time)) else {
            return false;
        };
        age <= self.window_secs && age >= -self.max_future_secs
    }

    fn tag(&self, time: &[u8; 8]) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        mac.update(LABEL);
        mac.update(time);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }
}

fn duration_secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_700_000_000;

    #[test]
    fn fresh_nonce_is_valid_until_the_window_ends() {
        let issuer = NonceIssuer::new(&[1u8; 32]);
        let nonce = issuer.issue(NOW);
        assert_eq!(nonce.len(), ENCODED_LEN);
        assert!(issuer.is_valid(&nonce, NOW), "at issue time");
        assert!(
            issuer.is_valid(&nonce, NOW + 300),
            "at the end of the window"
        );
        assert!(!issuer.is_valid(&nonce, NOW + 301), "after the window");
        assert!(
            issuer.is_valid(&nonce, NOW - 5),
            "issued by an instance 5 s ahead"
        );
        assert!(!issuer.is_valid(&nonce, NOW - 6), "too far in the future");
    }

    #[test]
    fn window_is_configurable() {
        let issuer = NonceIssuer::new(&[1u8; 32]).with_window(Duration::from_secs(10));
        let nonce = issuer.issue(NOW);
        assert!(issuer.is_valid(&nonce, NOW + 10));
        assert!(!issuer.is_valid(&nonce, NOW + 11));
    }

    #[test]
    fn another_secret_does_not_validate() {
        let nonce = NonceIssuer::new(&[1u8; 32]).issue(NOW);
        assert!(!NonceIssuer::new(&[2u8; 32]).is_valid(&nonce, NOW));
    }

    #[test]
    fn shared_secret_validates_across_instances() {
        let nonce = NonceIssuer::new(&[9u8; 32]).issue(NOW);
        assert!(NonceIssuer::new(&[9u8; 32]).is_valid(&nonce, NOW + 1));
    }

    #[test]
    fn tampered_time_or_tag_is_refused() {
        let issuer = NonceIssuer::new(&[1u8; 32]);
        let mut raw = URL_SAFE_NO_PAD.decode(issuer.issue(NOW)).unwrap();
        // Move the issue time forward by one second to stretch the window: the tag no longer fits.
        raw[7] ^= 1;
        assert!(!issuer.is_valid(&URL_SAFE_NO_PAD.encode(&raw), NOW));
        raw[7] ^= 1;
        raw[RAW_LEN - 1] ^= 0x80;
        assert!(!issuer.is_valid(&URL_SAFE_NO_PAD.encode(&raw), NOW));
    }

    #[test]
    fn garbage_is_refused() {
        let issuer = NonceIssuer::new(&[1u8; 32]);
        for nonce in [
            "",
            "abc",
            &"A".repeat(ENCODED_LEN),
            &"=".repeat(ENCODED_LEN),
            &"a".repeat(10_000),
        ] {
            assert!(!issuer.is_valid(nonce, NOW), "{nonce:.20}");
        }
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let shown = format!("{:?}", NonceIssuer::new(&[0xAB; 32]));
        assert!(
            !shown.to_lowercase().contains("ab, ab") && !shown.contains("171"),
            "{shown}"
        );
    }

    proptest! {
        #[test]
        fn random_strings_are_never_valid(s in "\\PC{0,64}", now in any::<i64>()) {
            prop_assert!(!NonceIssuer::new(&[3u8; 32]).is_valid(&s, now));
        }

        #[test]
        fn extreme_times_do_not_panic(issued in any::<i64>(), now in any::<i64>()) {
            let issuer = NonceIssuer::new(&[3u8; 32]);
            let _ = issuer.is_valid(&issuer.issue(issued), now);
        }
    }
}
