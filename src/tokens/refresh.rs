//! Opaque refresh tokens: `rt_` followed by 43 base64url characters (256 random bits).
//!
//! Only [`hash_refresh_token`]'s SHA-256 digest is stored. Why a fast hash is right here, when
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

/// Random bytes in a refresh token.
const RANDOM_BYTES: usize = 32;

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
    // Exact capacity: `SecretString::from(String)` goes through `into_boxed_str`, which would
    // reallocate (leaving an unzeroized copy behind) if capacity exceeded length.
    let mut token = String::with_capacity(REFRESH_TOKEN_LEN);
    token.push_str(REFRESH_TOKEN_PREFIX);
    URL_SAFE_NO_PAD.encode_string(random.as_ref(), &mut token);
    debug_assert_eq!(token.len(), token.capacity());
    let hash = hash_refresh_token(&token);
    (SecretString::from(token), hash)
}

/// The SHA-256 digest of a presented refresh token, for lookup (see the module docs for why
/// SHA-256 suffices).
pub fn hash_refresh_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
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

    #[test]
    fn the_hash_is_plain_sha256_of_the_token_text() {
        // FIPS 180-2 example: SHA-256("abc").
        let expected: [u8; 32] = [
            0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
            0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
            0xf2, 0x00, 0x15, 0xad,
        ];
        assert_eq!(hash_refresh_token("abc"), expected);
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
