//! Opaque refresh tokens: `rt_` followed by 43 base64url characters (32 bytes: a UUIDv7, whose
//! 48-bit millisecond time comes first, then 16 bytes from the CSPRNG; 202 random bits in all).
//!
//! Storage keeps only [`hash_refresh_token`]'s lookup key: the token's first 16 bytes (the
//! UUIDv7) followed by the first 16 bytes of the SHA-256 of the whole token. The time-ordered
//! front is for the database: new tokens land at the end of the primary-key index, on pages
//! already in memory, instead of on a random page of an index that grows with every exchange
//! (a random key costs a page read and a page write per insert once the index outgrows the
//! cache). It reveals only when the token was issued. The digest half is what makes the key
//! worthless without the token: matching a stored key means finding a second preimage of 128
//! bits of SHA-256. (Tokens issued before this key format are not found: their holders fall
//! back to an exchange with their API key.)
//!
//! Why a fast hash is right here, when
//! passwords need a slow one: a slow hash (Argon2, bcrypt) exists to make guessing a
//! *low-entropy* secret from its stolen hash expensive. A refresh token carries 256 bits from
//! the CSPRNG; nobody can enumerate 2^256 candidates however cheap each guess is, so slowness
//! buys nothing and would only make every refresh (and a flood of bogus ones) cost the server
//! milliseconds of CPU. SHA-256 is preimage resistant, so a leaked table of hashes yields no
//! usable token. The digest is also deterministic, so storage can look a token up by it with a
//! unique index instead of comparing secrets one by one.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use rand::rngs::OsRng;
use secrecy::SecretString;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The prefix that makes a refresh token recognisable to log redaction and secret scanners.
pub const REFRESH_TOKEN_PREFIX: &str = "rt_";

/// Bytes in a refresh token.
const RANDOM_BYTES: usize = 32;

/// Leading bytes of a token (its UUIDv7) that also lead its lookup key.
const ORDER_BYTES: usize = 16;

/// Base64url characters that decode to the first 18 bytes (whole 4-character groups).
const ORDER_CHARS: usize = 24;

/// Length of the base64url body: 32 bytes → 43 characters without padding.
const BODY_LEN: usize = 43;

/// Total length of a refresh token.
pub const REFRESH_TOKEN_LEN: usize = REFRESH_TOKEN_PREFIX.len() + BODY_LEN;

/// A fresh refresh token and the SHA-256 digest storage keeps.
///
/// The plaintext goes to the client once and is never stored; it is a `SecretString`, so it
/// cannot reach a log through `Debug` and is zeroized when dropped.
pub fn new_refresh_token() -> (SecretString, [u8; 32]) {
    let mut random = Zeroizing::new([0u8; RANDOM_BYTES]);
    OsRng.fill_bytes(random.as_mut());
    random[..ORDER_BYTES].copy_from_slice(uuid::Uuid::now_v7().as_bytes());
    // Exact capacity: `SecretString::from(String)` goes through `into_boxed_str`, which would
    // reallocate (leaving an unzeroized copy behind) if capacity exceeded length.
    let mut token = String::with_capacity(REFRESH_TOKEN_LEN);
    token.push_str(REFRESH_TOKEN_PREFIX);
    URL_SAFE_NO_PAD.encode_string(random.as_ref(), &mut token);
    debug_assert_eq!(token.len(), token.capacity());
    let hash = hash_refresh_token(&token);
    (SecretString::from(token), hash)
}

/// The storage lookup key of a presented refresh token: its first 16 bytes, then the first 16
/// bytes of its SHA-256 (see the module docs for why, and why SHA-256 suffices). Anything not
/// in the token format gets the digest's other half in front instead, a key no issued token
/// has.
pub fn hash_refresh_token(token: &str) -> [u8; 32] {
    let digest = Sha256::digest(token.as_bytes());
    let mut key = [0u8; 32];
    let front = token
        .strip_prefix(REFRESH_TOKEN_PREFIX)
        .and_then(|body| body.get(..ORDER_CHARS))
        .and_then(|chars| URL_SAFE_NO_PAD.decode(chars).ok());
    match front {
        Some(bytes) => key[..ORDER_BYTES].copy_from_slice(&bytes[..ORDER_BYTES]),
        None => key[..ORDER_BYTES].copy_from_slice(&digest[ORDER_BYTES..]),
    }
    key[ORDER_BYTES..].copy_from_slice(&digest[..ORDER_BYTES]);
    key
}

/// Whether `token` has the refresh token format (`rt_` + 43 base64url characters). Lets the
/// server refuse garbage without touching storage; says nothing about validity.
pub fn is_well_formed_refresh_token(token: &str) -> bool {
    token.len() == REFRESH_TOKEN_LEN
        && token.starts_with(REFRESH_TOKEN_PREFIX)
        && token.as_bytes()[REFRESH_TOKEN_PREFIX.len()..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use secrecy::ExposeSecret as _;

    use super::*;

    #[test]
    fn new_tokens_have_the_format_and_their_hash() {
        let (token, hash) = new_refresh_token();
        let plain = token.expose_secret();
        assert!(plain.starts_with("rt_"), "{plain}");
        assert_eq!(plain.len(), REFRESH_TOKEN_LEN);
        assert!(is_well_formed_refresh_token(plain));
        assert_eq!(
            URL_SAFE_NO_PAD.decode(&plain[3..]).unwrap().len(),
            32,
            "256 bits"
        );
        assert_eq!(hash, hash_refresh_token(plain));
    }

    // FIPS 180-2 example: SHA-256("abc").
    const SHA256_ABC: [u8; 32] = [
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22,
        0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00,
        0x15, 0xad,
    ];

    #[test]
    fn the_key_is_the_tokens_front_then_half_its_sha256() {
        let (token, key) = new_refresh_token();
        let plain = token.expose_secret();
        let bytes = URL_SAFE_NO_PAD.decode(&plain[3..]).unwrap();
        assert_eq!(key[..16], bytes[..16], "the token's UUIDv7");
        let digest = Sha256::digest(plain.as_bytes());
        assert_eq!(key[16..], digest[..16], "the SHA-256 of the whole token");
        let uuid = uuid::Uuid::from_slice(&bytes[..16]).unwrap();
        assert_eq!(uuid.get_version_num(), 7);

        // Not a token: the digest's halves, swapped (a known vector for the digest itself).
        let mut expected = [0u8; 32];
        expected[..16].copy_from_slice(&SHA256_ABC[16..]);
        expected[16..].copy_from_slice(&SHA256_ABC[..16]);
        assert_eq!(hash_refresh_token("abc"), expected);
    }

    #[test]
    fn keys_of_later_tokens_sort_later() {
        let keys: Vec<[u8; 32]> = (0..2_000).map(|_| new_refresh_token().1).collect();
        // The millisecond time (first 6 bytes) never goes back.
        assert!(keys.windows(2).all(|w| w[0][..6] <= w[1][..6]));
        let (_, later) = {
            std::thread::sleep(std::time::Duration::from_millis(2));
            new_refresh_token()
        };
        assert!(keys.iter().all(|k| *k < later));
    }

    #[test]
    fn a_token_with_another_secret_half_gets_another_key() {
        let (token, key) = new_refresh_token();
        let mut bytes = URL_SAFE_NO_PAD.decode(&token.expose_secret()[3..]).unwrap();
        bytes[31] ^= 1;
        let forged = format!("rt_{}", URL_SAFE_NO_PAD.encode(&bytes));
        let forged_key = hash_refresh_token(&forged);
        assert_eq!(forged_key[..16], key[..16], "same front");
        assert_ne!(forged_key, key, "a different key: storage does not find it");
    }

    #[test]
    fn tokens_and_hashes_never_repeat() {
        let mut tokens = HashSet::new();
        let mut hashes = HashSet::new();
        for _ in 0..10_000 {
            let (token, hash) = new_refresh_token();
            assert!(tokens.insert(token.expose_secret().to_owned()));
            assert!(hashes.insert(hash));
        }
    }

    #[test]
    fn debug_hides_the_plaintext() {
        let (token, _) = new_refresh_token();
        let shown = format!("{token:?}");
        assert!(!shown.contains(token.expose_secret()), "{shown}");
        assert!(!shown.contains("rt_"), "{shown}");
    }

    #[test]
    fn malformed_tokens_are_recognised() {
        let (token, _) = new_refresh_token();
        let good = token.expose_secret();
        let body = &good[3..];
        for (bad, why) in [
            (String::new(), "empty"),
            (body.to_owned(), "no prefix"),
            (format!("rx_{body}"), "wrong prefix"),
            (format!("rt_{}", &body[1..]), "too short"),
            (format!("{good}A"), "too long"),
            (format!("rt_{}+", &body[1..]), "standard base64 character"),
            (format!("rt_{}=", &body[1..]), "padding"),
            (format!("rt_{}é", &body[2..]), "non-ASCII"),
            (format!("sk_{body}"), "API key prefix"),
        ] {
            assert!(!is_well_formed_refresh_token(&bad), "{why}: {bad}");
        }
    }
}
