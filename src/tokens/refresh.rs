//! Sealed refresh tokens: `rt_` followed by the base64url of an XChaCha20-Poly1305 seal of the
//! token's claims ([`RefreshClaims`]) under a key derived from the master key
//! (`keybound/refresh/v1`).
//!
//! Why sealed rather than random-and-stored: a random token is worth something only once a
//! row names it, so every exchange had to make a row durable before it could answer (a disk
//! flush on the answer path, 65–100 µs of server CPU per exchange, `docs/benchmarks.md`). A
//! sealed token carries what the refresh needs (family, generation, key, device, device key
//! thumbprint, scope, audience, times) and proves by its tag that this server issued it, so an
//! exchange writes nothing for it. What a single-use token still needs from storage is one
//! fact: which generation of its family is the live one. The family's row holds that, written
//! at the family's first refresh (see `docs/design.md`, "Refresh tokens").
//!
//! Only the server can read or make one: the key never leaves the process, so a database
//! writer cannot mint refresh tokens (issue 15, item 8), and the client sees only ciphertext.
//! A token that fails to open (forged, tampered, cut, or sealed under another master key) is
//! refused without touching storage.
//!
//! The nonce is 24 random bytes (XChaCha20's nonce is long enough that random nonces never
//! collide in practice); the associated data names the format version, so a blob sealed for
//! another purpose under a related key can never open as a refresh token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::{Key, XChaCha20Poly1305};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::signing::{aead_open, aead_seal};
use zeroize::Zeroizing;

/// The prefix that makes a refresh token recognisable to log redaction and secret scanners.
pub const REFRESH_TOKEN_PREFIX: &str = "rt_";

/// The label of the sealing key derived from the master key.
pub const REFRESH_KEY_LABEL: &str = "keybound/refresh/v1";

/// The label of the key that seals a successor kept for the grace window (contract 9.2).
pub const GRACE_KEY_LABEL: &str = "keybound/refresh-grace/v1";

/// Associated data of every refresh token seal (the format version).
const AAD: &[u8] = b"keybound refresh token v1";

/// Fewest base64url characters after the prefix: a nonce, a tag and a few bytes of claims.
pub const MIN_BODY_LEN: usize = 80;

/// Most characters after the prefix. Claims are bounded (ids, a thumbprint, the key's scopes
/// and an audience), and anything longer is refused before any work.
pub const MAX_BODY_LEN: usize = 4096;

/// A refresh family's row is kept this long after its last token expired, then purged
/// (hourly). It cannot matter any more: every token of the family is refused as expired
/// before storage is asked (the row must outlive them, or a purged family's first token would
/// open as never refreshed; `expires_at` is the latest expiry of any of its tokens).
pub const REFRESH_PURGE_AFTER_EXPIRY: i64 = 7 * 86_400;

/// What a refresh token says. Short field names: the token travels with every refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshClaims {
    /// Family id (`rf_…`): every token descending from one exchange.
    #[serde(rename = "f")]
    pub family_id: String,
    /// Generation in the family: 0 for the exchange's token, +1 per refresh.
    #[serde(rename = "g")]
    pub generation: i64,
    /// The API key it was issued under.
    #[serde(rename = "k")]
    pub key_id: String,
    /// The device it was issued to.
    #[serde(rename = "d")]
    pub device_id: String,
    /// RFC 7638 thumbprint of the device key it is bound to.
    #[serde(rename = "j")]
    pub jkt: String,
    /// Scope granted at the exchange (space separated).
    #[serde(rename = "s")]
    pub scope: String,
    /// Audience granted at the exchange.
    #[serde(rename = "a")]
    pub audience: String,
    /// When the family began (the exchange): its absolute lifetime counts from here.
    #[serde(rename = "c")]
    pub family_created_at: i64,
    /// Issue time of this token.
    #[serde(rename = "i")]
    pub issued_at: i64,
    /// Expiry of this token.
    #[serde(rename = "e")]
    pub expires_at: i64,
}

/// Seals and opens refresh tokens with the key derived from the master key.
pub struct RefreshSealer {
    cipher: XChaCha20Poly1305,
    grace: XChaCha20Poly1305,
}

impl std::fmt::Debug for RefreshSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshSealer(..)")
    }
}

impl RefreshSealer {
    /// A sealer from the two derived keys ([`REFRESH_KEY_LABEL`], [`GRACE_KEY_LABEL`]).
    pub fn new(token_key: &[u8; 32], grace_key: &[u8; 32]) -> RefreshSealer {
        RefreshSealer {
            cipher: XChaCha20Poly1305::new(Key::from_slice(token_key)),
            grace: XChaCha20Poly1305::new(Key::from_slice(grace_key)),
        }
    }

    /// The token for `claims`. The plaintext goes to the client; it is never stored.
    pub fn seal(&self, claims: &RefreshClaims) -> SecretString {
        let plain = Zeroizing::new(serde_json::to_vec(claims).expect("claims always serialize"));
        let blob = aead_seal(&self.cipher, &plain, AAD);
        let mut token = String::with_capacity(
            REFRESH_TOKEN_PREFIX.len() + base64::encoded_len(blob.len(), false).unwrap_or(0),
        );
        token.push_str(REFRESH_TOKEN_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&blob, &mut token);
        // Exact capacity, so `SecretString::from` does not reallocate and leave a copy behind.
        token.shrink_to_fit();
        SecretString::from(token)
    }

    /// The claims of a token this server sealed; `None` for anything else (malformed, cut,
    /// tampered, or sealed under another master key). Expiry is the caller's check.
    pub fn open(&self, token: &str) -> Option<RefreshClaims> {
        if !is_well_formed_refresh_token(token) {
            return None;
        }
        let blob = URL_SAFE_NO_PAD
            .decode(&token[REFRESH_TOKEN_PREFIX.len()..])
            .ok()?;
        let plain = aead_open(&self.cipher, &blob, AAD)?;
        serde_json::from_slice(&plain).ok()
    }

    /// Seals the successor `token` of `family_id` for the grace window (contract 9.2): storage
    /// keeps only this ciphertext, bound to its family, never the token itself.
    pub fn seal_successor(&self, family_id: &str, token: &str) -> Vec<u8> {
        aead_seal(&self.grace, token.as_bytes(), family_id.as_bytes())
    }

    /// The successor token sealed by [`seal_successor`](Self::seal_successor) for `family_id`.
    pub fn open_successor(&self, family_id: &str, sealed: &[u8]) -> Option<SecretString> {
        let plain = aead_open(&self.grace, sealed, family_id.as_bytes())?;
        let text = String::from_utf8(plain.to_vec()).ok()?;
        Some(SecretString::from(text))
    }
}

/// Whether `token` has the refresh token shape (`rt_` + 80 to 4096 base64url characters). Lets
/// the server refuse garbage before any work; says nothing about validity.
pub fn is_well_formed_refresh_token(token: &str) -> bool {
    let Some(body) = token.strip_prefix(REFRESH_TOKEN_PREFIX) else {
        return false;
    };
    (MIN_BODY_LEN..=MAX_BODY_LEN).contains(&body.len())
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;

    fn sealer(seed: u8) -> RefreshSealer {
        RefreshSealer::new(&[seed; 32], &[seed ^ 0xff; 32])
    }

    fn claims() -> RefreshClaims {
        RefreshClaims {
            family_id: "rf_0190a1b2c3d4e5f60718293a4b5c6d7e".into(),
            generation: 0,
            key_id: "ak_test_0123456789ab".into(),
            device_id: "dev_0190a1b2c3d4e5f60718293a4b5c6d7e".into(),
            jkt: "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs".into(),
            scope: "read:users write:orders".into(),
            audience: "https://api.example.com".into(),
            family_created_at: 1_700_000_000,
            issued_at: 1_700_000_000,
            expires_at: 1_700_086_400,
        }
    }

    #[test]
    fn a_sealed_token_opens_to_its_claims_and_has_the_shape() {
        let s = sealer(1);
        let token = s.seal(&claims());
        let plain = token.expose_secret();
        assert!(plain.starts_with("rt_"), "{plain}");
        assert!(is_well_formed_refresh_token(plain), "{plain}");
        assert_eq!(s.open(plain), Some(claims()));
        // The client sees ciphertext only.
        assert!(!plain.contains("ak_test") && !plain.contains("read:users"));
    }

    #[test]
    fn two_seals_of_the_same_claims_differ() {
        let s = sealer(1);
        assert_ne!(
            s.seal(&claims()).expose_secret(),
            s.seal(&claims()).expose_secret()
        );
    }

    #[test]
    fn tampered_cut_and_foreign_tokens_do_not_open() {
        let s = sealer(1);
        let token = s.seal(&claims()).expose_secret().to_owned();
        let mut blob = URL_SAFE_NO_PAD.decode(&token[3..]).unwrap();
        for i in [
            0,
            super::super::signing::NONCE_LEN,
            blob.len() / 2,
            blob.len() - 1,
        ] {
            blob[i] ^= 1;
            let forged = format!("rt_{}", URL_SAFE_NO_PAD.encode(&blob));
            assert_eq!(s.open(&forged), None, "byte {i} flipped");
            blob[i] ^= 1;
        }
        let cut = format!("rt_{}", URL_SAFE_NO_PAD.encode(&blob[..blob.len() - 1]));
        assert_eq!(s.open(&cut), None, "cut");
        // Sealed under another master key: same shape, does not open here.
        let foreign = sealer(2).seal(&claims());
        assert!(is_well_formed_refresh_token(foreign.expose_secret()));
        assert_eq!(s.open(foreign.expose_secret()), None, "another master key");
    }

    #[test]
    fn a_successor_is_sealed_to_its_family() {
        let s = sealer(1);
        let token = s.seal(&claims());
        let kept = s.seal_successor("rf_a", token.expose_secret());
        assert!(!String::from_utf8_lossy(&kept).contains("rt_"));
        let back = s.open_successor("rf_a", &kept).unwrap();
        assert_eq!(back.expose_secret(), token.expose_secret());
        assert!(s.open_successor("rf_b", &kept).is_none(), "another family");
        assert!(sealer(2).open_successor("rf_a", &kept).is_none());
        // The grace key is not the token key: a kept successor never opens as a token.
        let as_token = format!("rt_{}", URL_SAFE_NO_PAD.encode(&kept));
        assert_eq!(s.open(&as_token), None);
    }

    #[test]
    fn debug_hides_the_plaintext() {
        let token = sealer(1).seal(&claims());
        let shown = format!("{token:?}");
        assert!(!shown.contains(token.expose_secret()), "{shown}");
        assert!(!shown.contains("rt_"), "{shown}");
    }

    #[test]
    fn malformed_tokens_are_recognised() {
        let token = sealer(1).seal(&claims());
        let good = token.expose_secret();
        let body = &good[3..];
        for (bad, why) in [
            (String::new(), "empty"),
            (body.to_owned(), "no prefix"),
            (format!("rx_{body}"), "wrong prefix"),
            (format!("rt_{}", &body[..MIN_BODY_LEN - 1]), "too short"),
            (format!("rt_{}", "A".repeat(MAX_BODY_LEN + 1)), "too long"),
            (format!("rt_{}+", &body[1..]), "standard base64 character"),
            (format!("rt_{}=", &body[1..]), "padding"),
            (format!("rt_{}é", &body[2..]), "non-ASCII"),
            (format!("sk_{body}"), "API key prefix"),
        ] {
            assert!(!is_well_formed_refresh_token(&bad), "{why}: {bad}");
            assert_eq!(sealer(1).open(&bad), None, "{why}");
        }
    }
}
