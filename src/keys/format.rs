//! The API key format (contract section 2): `sk_<env>_<id><secret><checksum>`.
//!
//! The 61-character base62 body is a 12-character public id, a 43-character secret (43 base62
//! digits carry log2(62^43) ≈ 256.03 bits, drawn from the OS CSPRNG) and a 6-character checksum:
//! CRC-32 (IEEE) of `sk_<env>_<id><secret>`, written big-endian in base62 and left-padded.
//!
//! The checksum is not a security feature: it lets [`ApiKey::parse`] refuse typos, truncations
//! and random garbage without touching storage, and lets `keybound scan` find real keys with no
//! false positives.

use std::fmt;

use rand::Rng;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

// The id and environment are values records hold, so they live below the store
// (`crate::ids`); re-exported here, where keys are made and parsed.
pub use crate::ids::{KeyEnv, KeyId};

/// The base62 alphabet in value order: `0-9`, `A-Z`, `a-z`.
pub const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Length of the public id part of the body.
pub use crate::ids::ID_LEN;
/// Length of the secret part of the body.
pub const SECRET_LEN: usize = 43;
/// Length of the checksum part of the body.
pub const CHECKSUM_LEN: usize = 6;
/// Length of the whole base62 body.
pub const BODY_LEN: usize = ID_LEN + SECRET_LEN + CHECKSUM_LEN;

/// Why a presented key was refused before storage. Callers map every variant to the single
/// `INVALID_API_KEY` answer; the variants exist for tests and the scanner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Not `sk_(prod|test|dev)_` + 61 base62 characters.
    #[error("not a keybound API key")]
    Malformed,
    /// Well-formed, but the checksum does not match.
    #[error("API key checksum mismatch")]
    BadChecksum,
}

/// A syntactically valid API key with a correct checksum. Holding one says nothing about
/// whether the key exists: that is storage's job.
///
/// The plaintext is kept in a [`SecretString`] (zeroized on drop, redacted in `Debug`).
pub struct ApiKey {
    id: KeyId,
    plaintext: SecretString,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

impl ApiKey {
    /// Generates a new key for `env` from the OS CSPRNG.
    pub fn generate(env: KeyEnv) -> ApiKey {
        let mut rng = OsRng;
        let mut random = |n: usize| -> Zeroizing<String> {
            // Uniform over the alphabet: `gen_range` rejects out-of-range draws, no modulo bias.
            Zeroizing::new(
                (0..n)
                    .map(|_| BASE62[rng.gen_range(0..62)] as char)
                    .collect(),
            )
        };
        let id = random(ID_LEN);
        let secret = random(SECRET_LEN);
        let mut s = Zeroizing::new(format!(
            "sk_{}_{}{}",
            env.as_str(),
            id.as_str(),
            secret.as_str()
        ));
        let sum = checksum(s.as_bytes());
        s.push_str(&sum);
        ApiKey {
            id: KeyId::from_parts(env, &id),
            plaintext: SecretString::from(s.as_str()),
        }
    }

    /// Parses a presented key: format first, then checksum. Touches no storage.
    pub fn parse(s: &str) -> Result<ApiKey, KeyFormatError> {
        let (env, body) = split(s).ok_or(KeyFormatError::Malformed)?;
        let (prefixed, sum) = s.split_at(s.len() - CHECKSUM_LEN);
        if checksum(prefixed.as_bytes()).as_bytes() != sum.as_bytes() {
            return Err(KeyFormatError::BadChecksum);
        }
        Ok(ApiKey {
            id: KeyId::from_parts(env, &body[..ID_LEN]),
            plaintext: SecretString::from(s),
        })
    }

    /// The public id `ak_<env>_<id>`.
    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// The environment of the key.
    pub fn env(&self) -> KeyEnv {
        self.id.env()
    }

    /// The full plaintext. Only to be shown once, at creation or rotation.
    pub fn expose(&self) -> &str {
        self.plaintext.expose_secret()
    }

    /// SHA-256 of the secret part: what storage keeps.
    ///
    /// A fast hash is the right tool here: the secret is 256 bits from a CSPRNG, so there is no
    /// dictionary to precompute and brute force is 2^256 work whatever the hash costs. A slow
    /// password hash (bcrypt, argon2) would only add milliseconds to every exchange and an easy
    /// CPU denial of service, for no security gain.
    pub fn secret_hash(&self) -> [u8; 32] {
        let s = self.plaintext.expose_secret();
        let start = s.len() - CHECKSUM_LEN - SECRET_LEN;
        let hash = sha256_of(&s.as_bytes()[start..s.len() - CHECKSUM_LEN]);
        // SHA-256 copies its last partial block (here the whole 43-byte secret) into a
        // buffer in its own stack frame, which nothing clears: the secret would stay on the
        // worker thread's stack until other calls happen to overwrite it (lab C found such
        // copies). The frame just released is overwritten at once instead.
        scrub_stack();
        hash
    }
}

/// SHA-256 in a frame of its own, so [`scrub_stack`] called next from the same caller
/// overwrites it.
#[inline(never)]
fn sha256_of(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Overwrites the stack below the caller's frame (where the callee it just returned from
/// kept its locals) with zeros. 4 KiB covers the hasher's frames with a wide margin.
#[inline(never)]
fn scrub_stack() {
    let mut area = [0u8; 4096];
    zeroize::Zeroize::zeroize(&mut area[..]);
    std::hint::black_box(&area);
}

/// Splits `sk_<env>_<body>` after checking the exact format (no checksum check).
fn split(s: &str) -> Option<(KeyEnv, &str)> {
    let rest = s.strip_prefix("sk_")?;
    let (env, body) = rest.split_once('_')?;
    let env = env.parse::<KeyEnv>().ok()?;
    (body.len() == BODY_LEN && body.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then_some((env, body))
}

/// The 6-character base62 checksum of `sk_<env>_<id><secret>`.
pub fn checksum(prefixed: &[u8]) -> String {
    let mut n = crc32fast::hash(prefixed);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    // 62^6 > 2^32, so every CRC-32 value fits in six digits.
    String::from_utf8(out.to_vec()).expect("base62 is ASCII")
}

/// Finds every well-formed key with a valid checksum in `text`, returning byte offsets and ids.
/// Used by `keybound scan`; a candidate must not be glued to more base62 characters.
pub fn find_keys(text: &[u8]) -> Vec<(usize, KeyId)> {
    keys_in(text).map(|(pos, key)| (pos, key.id)).collect()
}

/// The first key [`find_keys`] would find, with its plaintext (for a check of its secret);
/// stops there, so a text full of keys costs no more than its first.
pub fn find_first_key(text: &[u8]) -> Option<(usize, ApiKey)> {
    keys_in(text).next()
}

/// The keys in `text`, in order, found lazily.
fn keys_in(text: &[u8]) -> impl Iterator<Item = (usize, ApiKey)> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        while let Some(pos) = find_from(text, b"sk_", i) {
            i = pos + 3;
            if pos > 0 && is_key_char(text[pos - 1]) {
                continue;
            }
            for env in ["prod", "test", "dev"] {
                if !text[pos + 3..].starts_with(env.as_bytes()) {
                    continue;
                }
                let len = 3 + env.len() + 1 + BODY_LEN;
                let Some(cand) = text.get(pos..pos + len) else {
                    continue;
                };
                if text
                    .get(pos + len)
                    .is_some_and(|&b| b.is_ascii_alphanumeric())
                {
                    continue;
                }
                if let Ok(s) = std::str::from_utf8(cand)
                    && let Ok(key) = ApiKey::parse(s)
                {
                    i = pos + len;
                    return Some((pos, key));
                }
            }
        }
        None
    })
}

fn is_key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn find_from(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Vectors computed independently with Python's `zlib.crc32` and a separate base62 encoder
    /// (see docs/key-format.md): they pin CRC-32/IEEE, big-endian base62 and the padding.
    #[test]
    fn checksum_matches_independent_vectors() {
        assert_eq!(
            checksum(b"The quick brown fox jumps over the lazy dog"),
            "1C9bYH"
        );
        assert_eq!(
            checksum(b""),
            "000000",
            "crc32 of the empty string is 0: all padding"
        );
        let key = format!("sk_test_AAAAAAAAAAAA{}2yuqjJ", "B".repeat(43));
        let parsed = ApiKey::parse(&key).expect("independently computed key is valid");
        assert_eq!(parsed.id().as_str(), "ak_test_AAAAAAAAAAAA");
        assert_eq!(parsed.env(), KeyEnv::Test);
        let wrong = format!("sk_test_AAAAAAAAAAAA{}2yuqjK", "B".repeat(43));
        assert_eq!(
            ApiKey::parse(&wrong).err(),
            Some(KeyFormatError::BadChecksum)
        );
    }

    #[test]
    fn generated_keys_parse_and_have_the_documented_shape() {
        for env in [KeyEnv::Prod, KeyEnv::Test, KeyEnv::Dev] {
            let key = ApiKey::generate(env);
            let s = key.expose();
            assert!(s.starts_with(&format!("sk_{}_", env.as_str())));
            assert_eq!(s.len(), 3 + env.as_str().len() + 1 + 61);
            let parsed = ApiKey::parse(s).expect("a generated key parses");
            assert_eq!(parsed.id(), key.id());
            assert_eq!(parsed.secret_hash(), key.secret_hash());
            assert!(
                key.id()
                    .as_str()
                    .starts_with(&format!("ak_{}_", env.as_str()))
            );
            assert_eq!(KeyId::parse(key.id().as_str()).as_ref(), Some(key.id()));
        }
    }

    #[test]
    fn malformed_variants_are_refused() {
        let good = ApiKey::generate(KeyEnv::Test);
        let g = good.expose().to_owned();
        let cases: Vec<(String, KeyFormatError, &str)> = vec![
            (String::new(), KeyFormatError::Malformed, "empty"),
            (
                g[..g.len() - 1].to_owned(),
                KeyFormatError::Malformed,
                "truncated",
            ),
            (
                format!("{g}0"),
                KeyFormatError::Malformed,
                "one char too long",
            ),
            (
                g.replacen("sk_test_", "sk_live_", 1),
                KeyFormatError::Malformed,
                "unknown env",
            ),
            (
                g.replacen("sk_", "SK_", 1),
                KeyFormatError::Malformed,
                "uppercase prefix",
            ),
            (
                g.replacen("sk_test_", "pk_test_", 1),
                KeyFormatError::Malformed,
                "wrong prefix",
            ),
            (format!(" {g}"), KeyFormatError::Malformed, "leading space"),
            (
                format!("{}-{}", &g[..20], &g[21..]),
                KeyFormatError::Malformed,
                "non-base62 char",
            ),
            (
                format!("{}é{}", &g[..20], &g[22..]),
                KeyFormatError::Malformed,
                "non-ascii",
            ),
            (
                g.replacen("sk_test_", "sk_test__", 1)[..g.len()].to_owned(),
                KeyFormatError::Malformed,
                "double underscore",
            ),
        ];
        for (input, want, why) in cases {
            assert_eq!(ApiKey::parse(&input).err(), Some(want), "{why}");
        }
        // Flip one character of the secret: format holds, checksum catches it.
        let mut bytes = g.clone().into_bytes();
        bytes[20] = if bytes[20] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert_eq!(
            ApiKey::parse(&typo).err(),
            Some(KeyFormatError::BadChecksum)
        );
        // Swap two adjacent characters.
        let mut bytes = g.into_bytes();
        let (a, b) = (30, 31);
        if bytes[a] != bytes[b] {
            bytes.swap(a, b);
            let swapped = String::from_utf8(bytes).unwrap();
            assert_eq!(
                ApiKey::parse(&swapped).err(),
                Some(KeyFormatError::BadChecksum)
            );
        }
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let key = ApiKey::generate(KeyEnv::Prod);
        let dbg = format!("{key:?}");
        assert!(!dbg.contains(key.expose()), "{dbg}");
        assert!(!dbg.contains(&key.expose()[20..40]));
    }

    #[test]
    fn scan_finds_keys_only_with_valid_checksums() {
        let k1 = ApiKey::generate(KeyEnv::Prod);
        let k2 = ApiKey::generate(KeyEnv::Dev);
        let mut bad = k1.expose().to_owned().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
        let text = format!(
            "x={};y=\"{}\" z={} glued=A{}",
            k1.expose(),
            k2.expose(),
            String::from_utf8(bad).unwrap(),
            k1.expose()
        );
        let ids: Vec<_> = find_keys(text.as_bytes())
            .into_iter()
            .map(|(_, id)| id)
            .collect();
        assert_eq!(ids, vec![k1.id().clone(), k2.id().clone()]);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,100}") {
            let _ = ApiKey::parse(&s);
        }

        #[test]
        fn any_single_substitution_in_the_body_is_caught(pos in 8usize..69, c in 0usize..62) {
            let key = ApiKey::generate(KeyEnv::Test);
            let mut b = key.expose().as_bytes().to_vec();
            prop_assume!(b[pos] != BASE62[c]);
            b[pos] = BASE62[c];
            let s = String::from_utf8(b).unwrap();
            prop_assert!(ApiKey::parse(&s).is_err());
        }
    }
}
