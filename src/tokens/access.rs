//! Access tokens: the claims of contract section 4, signed as `typ: at+jwt`.
//!
//! The claim set follows RFC 9068 (JWT profile for OAuth 2.0 access tokens) plus RFC 9449
//! section 6.1's `cnf.jkt`, which binds the token to the device's DPoP key: a resource server
//! that checks a DPoP proof against `cnf.jkt` refuses a stolen token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};

use super::signing::{SigningKey, TYP_ACCESS_TOKEN};
use super::status_list::TokenStatus;
use crate::devices::TrustLevel;

/// The longest access token lifetime the contract allows (`--access-ttl-seconds` max).
pub const MAX_ACCESS_TTL_SECONDS: u64 = 3600;

/// Revocation feed entries are kept this long: the longest access token lifetime the contract
/// allows (whatever `--access-ttl-seconds` says now, since it may have been longer before a
/// restart) plus an hour of margin for clock skew and slow verifiers. An older entry concerns
/// only tokens that have all expired: a revoked, suspended or expired key gets no new tokens,
/// a revoked device neither. Verifiers that need the current state at once read the status
/// lists (contract section 10).
pub const REVOCATION_FEED_RETENTION: i64 = MAX_ACCESS_TTL_SECONDS as i64 + 3600;

/// The longest lifetime of a token issued to a `limited` device (contract section 6): a device
/// we are unsure of must come back soon, so its trust is re-evaluated often.
pub const LIMITED_MAX_TTL_SECONDS: u64 = 60;

/// Confirmation claim (RFC 7800 section 3.1), carrying the DPoP key thumbprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cnf {
    /// RFC 7638 SHA-256 thumbprint of the device's public key (RFC 9449 section 6.1).
    pub jkt: String,
}

/// The trust level written into a token. A denied device gets no token, so there is no
/// `denied` here: holding a `GrantedTrust` proves the device was not denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GrantedTrust {
    /// Full scopes and TTL.
    Trusted,
    /// Scopes cut to the key's limited set, TTL at most [`LIMITED_MAX_TTL_SECONDS`].
    Limited,
}

/// The device was denied: no token may be issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the device is denied; no token may be issued")]
pub struct DeviceDenied;

impl TryFrom<TrustLevel> for GrantedTrust {
    type Error = DeviceDenied;

    fn try_from(level: TrustLevel) -> Result<Self, DeviceDenied> {
        match level {
            TrustLevel::Trusted => Ok(Self::Trusted),
            TrustLevel::Limited => Ok(Self::Limited),
            TrustLevel::Denied => Err(DeviceDenied),
        }
    }
}

/// The claims of an access token, exactly as contract section 4 lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The issuer URL (`--issuer`).
    pub iss: String,
    /// The API key's public id `ak_…`.
    pub sub: String,
    /// Same as `sub`: the client is the API key (RFC 9068 section 2.2).
    pub client_id: String,
    /// The audience granted.
    pub aud: String,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Not before, unix seconds (= `iat`).
    pub nbf: u64,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Unique token id from [`new_jti`].
    pub jti: String,
    /// Granted scopes, space separated (RFC 9068 section 2.2.3).
    pub scope: String,
    /// The DPoP key binding.
    pub cnf: Cnf,
    /// The device id.
    pub did: String,
    /// The device's trust level at issuance.
    pub trust: GrantedTrust,
    /// The device's entry in the token status lists (contract section 10).
    pub status: TokenStatus,
    /// The device's platform attestation format (`apple-appattest` | `android-key`), only when
    /// attested (contract sections 4 and 8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub att: Option<String>,
}

/// What the token endpoint decided; [`AccessClaims::new`] turns it into claims.
#[derive(Debug, Clone, Copy)]
pub struct AccessGrant<'a> {
    /// The issuer URL.
    pub issuer: &'a str,
    /// The API key's public id `ak_…`.
    pub key_id: &'a str,
    /// The audience.
    pub audience: &'a str,
    /// Granted scopes, space separated.
    pub scope: &'a str,
    /// RFC 7638 thumbprint of the device key.
    pub jkt: &'a str,
    /// The device id.
    pub device_id: &'a str,
    /// The device's trust level.
    pub trust: GrantedTrust,
    /// The attestation format when the device is attested.
    pub att: Option<&'a str>,
    /// The configured lifetime in seconds; clamped as [`AccessClaims::new`] explains.
    pub ttl_seconds: u64,
    /// The device's global status list index (`DeviceRecord::status_idx`).
    pub status_idx: i64,
}

impl AccessClaims {
    /// Claims for `grant`, issued at `now` (unix seconds), with a fresh `jti`.
    ///
    /// The lifetime is clamped to `1..=MAX_ACCESS_TTL_SECONDS`, and to at most
    /// [`LIMITED_MAX_TTL_SECONDS`] for a limited device, so no caller can mint a token that
    /// outlives what the contract promises, whatever the configuration says.
    pub fn new(grant: &AccessGrant<'_>, now: u64) -> Self {
        let max = match grant.trust {
            GrantedTrust::Trusted => MAX_ACCESS_TTL_SECONDS,
            GrantedTrust::Limited => LIMITED_MAX_TTL_SECONDS,
        };
        let ttl = grant.ttl_seconds.clamp(1, max);
        Self {
            iss: grant.issuer.to_owned(),
            sub: grant.key_id.to_owned(),
            client_id: grant.key_id.to_owned(),
            aud: grant.audience.to_owned(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(ttl),
            jti: new_jti(),
            scope: grant.scope.to_owned(),
            cnf: Cnf {
                jkt: grant.jkt.to_owned(),
            },
            did: grant.device_id.to_owned(),
            trust: grant.trust,
            status: TokenStatus::of(grant.issuer, grant.status_idx),
            att: grant.att.map(str::to_owned),
        }
    }

    /// `exp - iat`: the response's `expires_in`.
    pub fn expires_in(&self) -> u64 {
        self.exp.saturating_sub(self.iat)
    }

    /// Signs these claims as an `at+jwt` compact JWS.
    pub fn sign(&self, key: &SigningKey) -> String {
        key.sign_jws(TYP_ACCESS_TOKEN, self)
    }

    /// The claims of `token` if it is one of ours: a compact JWS whose header is `alg: EdDSA`,
    /// `typ: at+jwt` and a `kid` that `key_for` knows, with a valid Ed25519 signature (RFC 8037;
    /// `verify_strict` refuses small-order keys and non-canonical signatures). Lifetime and
    /// issuer are the caller's to check. `None` for anything else: introspection (contract
    /// 9.4) answers every such token the same way, `{"active": false}`.
    pub fn verify(
        token: &str,
        key_for: impl Fn(&str) -> Option<ed25519_dalek::VerifyingKey>,
    ) -> Option<AccessClaims> {
        #[derive(Deserialize)]
        struct Header {
            alg: String,
            typ: Option<String>,
            kid: String,
        }
        let mut parts = token.split('.');
        let (header_b64, payload_b64, signature_b64) =
            (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Header =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).ok()?).ok()?;
        // The algorithm is fixed before any key is touched: no `none`, no HMAC confusion.
        if header.alg != "EdDSA" || header.typ.as_deref() != Some(TYP_ACCESS_TOKEN) {
            return None;
        }
        let key = key_for(&header.kid)?;
        let signature: [u8; 64] = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .ok()?
            .try_into()
            .ok()?;
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
        key.verify_strict(
            signing_input.as_bytes(),
            &ed25519_dalek::Signature::from_bytes(&signature),
        )
        .ok()?;
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload_b64).ok()?).ok()
    }
}

/// A fresh JWT id: 128 bits from the thread's CSPRNG (`rand::thread_rng`: ChaCha12, seeded and
/// regularly reseeded from the operating system; no system call a token), base64url (22
/// characters).
///
/// 128 random bits make a repeat practically impossible (birthday bound ~2^64 tokens), which is
/// what lets a resource server use `jti` for replay detection (RFC 7519 section 4.1.7).
pub fn new_jti() -> String {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn grant(trust: GrantedTrust, ttl_seconds: u64) -> AccessGrant<'static> {
        AccessGrant {
            issuer: "https://issuer.example",
            key_id: "ak_test_0123456789ab",
            audience: "https://api.example.com",
            scope: "read:users write:orders",
            jkt: "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I",
            device_id: "dev_1",
            trust,
            att: None,
            ttl_seconds,
            status_idx: 7,
        }
    }

    #[test]
    fn att_is_present_only_for_an_attested_device() {
        let mut g = grant(GrantedTrust::Trusted, 300);
        let plain = serde_json::to_value(AccessClaims::new(&g, 1_700_000_000)).unwrap();
        assert!(plain.get("att").is_none());
        g.att = Some("android-key");
        let attested = serde_json::to_value(AccessClaims::new(&g, 1_700_000_000)).unwrap();
        assert_eq!(attested["att"], "android-key");
    }

    #[test]
    fn verify_accepts_our_tokens_and_nothing_else() {
        let key = SigningKey::generate();
        let other = SigningKey::generate();
        let claims = AccessClaims::new(&grant(GrantedTrust::Trusted, 300), 1_700_000_000);
        let token = claims.sign(&key);
        let known = |kid: &str| (kid == key.kid()).then(|| key.verifying_key());
        assert_eq!(AccessClaims::verify(&token, known), Some(claims.clone()));

        // Signed by a key we do not publish; or by ours under the wrong `kid`.
        assert_eq!(AccessClaims::verify(&claims.sign(&other), known), None);
        assert_eq!(
            AccessClaims::verify(&token, |_| Some(other.verifying_key())),
            None
        );
        // A changed payload, a changed signature, a fourth part, another `typ`.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let forged = {
            let mut c = claims.clone();
            c.scope = "admin".into();
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&c).unwrap())
        };
        let original = parts[1].clone();
        parts[1] = forged;
        assert_eq!(AccessClaims::verify(&parts.join("."), known), None);
        parts[1] = original;
        parts[2] = URL_SAFE_NO_PAD.encode([0u8; 64]);
        assert_eq!(AccessClaims::verify(&parts.join("."), known), None);
        assert_eq!(AccessClaims::verify(&format!("{token}.x"), known), None);
        let feed = key.sign_jws("revocations+jwt", &claims);
        assert_eq!(AccessClaims::verify(&feed, known), None);
        assert_eq!(AccessClaims::verify("not a token", known), None);
    }

    #[test]
    fn claims_have_exactly_the_contract_members() {
        let claims = AccessClaims::new(&grant(GrantedTrust::Trusted, 300), 1_700_000_000);
        let json = serde_json::to_value(&claims).unwrap();
        let mut names: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "aud",
                "client_id",
                "cnf",
                "did",
                "exp",
                "iat",
                "iss",
                "jti",
                "nbf",
                "scope",
                "status",
                "sub",
                "trust"
            ]
        );
        assert_eq!(json["sub"], "ak_test_0123456789ab");
        assert_eq!(json["client_id"], json["sub"]);
        assert_eq!(json["iat"], 1_700_000_000);
        assert_eq!(json["nbf"], json["iat"]);
        assert_eq!(json["exp"], 1_700_000_300);
        assert_eq!(
            json["cnf"],
            serde_json::json!({"jkt": grant(GrantedTrust::Trusted, 0).jkt})
        );
        assert_eq!(json["trust"], "trusted");
        assert_eq!(
            json["status"],
            serde_json::json!({"status_list": {"idx": 7,
                "uri": "https://issuer.example/v1/status-lists/0"}})
        );
        assert_eq!(claims.expires_in(), 300);
    }

    #[test]
    fn lifetimes_are_clamped_to_the_contract() {
        for (trust, ttl, expected, why) in [
            (GrantedTrust::Trusted, 300, 300, "configured TTL"),
            (
                GrantedTrust::Trusted,
                7200,
                MAX_ACCESS_TTL_SECONDS,
                "over the maximum",
            ),
            (GrantedTrust::Trusted, 0, 1, "zero"),
            (
                GrantedTrust::Limited,
                300,
                LIMITED_MAX_TTL_SECONDS,
                "limited device",
            ),
            (GrantedTrust::Limited, 30, 30, "limited device, shorter TTL"),
        ] {
            let claims = AccessClaims::new(&grant(trust, ttl), 1000);
            assert_eq!(claims.expires_in(), expected, "{why}");
            assert_eq!(claims.trust, trust, "{why}");
        }
    }

    #[test]
    fn only_trusted_and_limited_devices_get_a_token_trust() {
        assert_eq!(
            GrantedTrust::try_from(TrustLevel::Trusted),
            Ok(GrantedTrust::Trusted)
        );
        assert_eq!(
            GrantedTrust::try_from(TrustLevel::Limited),
            Ok(GrantedTrust::Limited)
        );
        assert_eq!(
            GrantedTrust::try_from(TrustLevel::Denied),
            Err(DeviceDenied)
        );
        assert_eq!(
            serde_json::to_value(GrantedTrust::Limited).unwrap(),
            "limited"
        );
    }

    #[test]
    fn jti_is_128_random_bits_and_never_repeats() {
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let jti = new_jti();
            assert_eq!(jti.len(), 22);
            assert_eq!(URL_SAFE_NO_PAD.decode(&jti).unwrap().len(), 16);
            assert!(seen.insert(jti), "jti repeated");
        }
        let a = AccessClaims::new(&grant(GrantedTrust::Trusted, 300), 1);
        let b = AccessClaims::new(&grant(GrantedTrust::Trusted, 300), 1);
        assert_ne!(a.jti, b.jti, "every token gets its own jti");
    }
}
