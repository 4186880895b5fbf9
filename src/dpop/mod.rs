//! RFC 9449 DPoP proof verification: pure, synchronous, no I/O.
//!
//! [`verify_proof`](crate::dpop::verify_proof) answers one question: is this `DPoP` header a proof, signed by the key it
//! carries, made for this method and URI, at about this time? It returns the key's thumbprint
//! (the device identity, CONTRACT §6) and the claims the caller still has to act on:
//!
//! * `jti` must be recorded in the [replay store](crate::replay) for
//!   [`VerifyOptions::replay_ttl`](crate::dpop::VerifyOptions::replay_ttl), keyed by [`VerifiedProof::replay_key`](crate::dpop::VerifiedProof::replay_key), and a proof seen
//!   before refused (`DPOP_REPLAY`);
//! * `nonce` must be checked with a [`NonceIssuer`](crate::dpop::NonceIssuer) when the server demands nonces
//!   (`USE_DPOP_NONCE`);
//! * `ath` must be compared with the access token when a proof accompanies one (resource
//!   servers; the token endpoints get none).
//!
//! What is accepted, and why, is in the comments of [`verify_proof`](crate::dpop::verify_proof); URI comparison is in
//! the `htu` module.

mod error;
mod htu;
mod jwk;
mod nonce;
#[cfg(test)]
mod tests;

pub use error::DpopError;
pub use jwk::jwk_thumbprint;
pub use nonce::NonceIssuer;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;

/// The JWS `typ` of a DPoP proof (RFC 9449 §4.2). Compared exactly: it is what every client
/// library sends, and the contract names it so.
pub const DPOP_TYP: &str = "dpop+jwt";

/// Longest `jti` we accept, in bytes. A random 128-bit `jti` needs 22 characters; the bound
/// keeps attacker-chosen strings out of logs and stores.
pub const MAX_JTI_BYTES: usize = 256;

/// Settings of [`verify_proof`]. `Default` gives the secure defaults documented per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyOptions {
    /// How far `iat` may be from the server clock, either way, in seconds. Default 60
    /// (CONTRACT §3.1): wide enough for phone clocks, narrow enough to keep the replay
    /// window (and the replay store) small. RFC 9449 §11.1 leaves the value to the server.
    pub iat_leeway_secs: i64,
    /// Largest proof accepted, in bytes, checked before any parsing. Default 8 KiB: a proof
    /// with a P-256 key is about 600 bytes, so this leaves room for long `jti`s and extra
    /// claims while bounding the work an attacker can make us do.
    pub max_proof_bytes: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            iat_leeway_secs: 60,
            max_proof_bytes: 8 * 1024,
        }
    }
}

impl VerifyOptions {
    /// How long a `jti` must be remembered so that no replay of it is ever accepted.
    ///
    /// A proof is acceptable while `|now - iat| <= leeway`, so from its first sighting (at
    /// the earliest `iat - leeway`) until `iat + leeway`: at most `2 * leeway`. One second is
    /// added because times are whole seconds, and five more for clock skew between server
    /// instances that share one replay store.
    pub fn replay_ttl(&self) -> Duration {
        let leeway = u64::try_from(self.iat_leeway_secs).unwrap_or(0);
        Duration::from_secs(leeway.saturating_mul(2).saturating_add(6))
    }
}

/// The signature algorithm of a proof: the allow-list of RFC 9449 §4.3 check 5 for this
/// server (CONTRACT §3.1). Symmetric algorithms and `none` can never be here: a proof must
/// be verifiable with the public key it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProofAlg {
    /// `EdDSA` (RFC 8037) with an Ed25519 key.
    EdDsa,
    /// `Ed25519` (RFC 9864's fully-specified name for the same algorithm).
    Ed25519,
    /// `ES256`: ECDSA on P-256 with SHA-256 (RFC 7518 §3.4).
    Es256,
}

impl ProofAlg {
    /// The JWS `alg` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProofAlg::EdDsa => "EdDSA",
            ProofAlg::Ed25519 => "Ed25519",
            ProofAlg::Es256 => "ES256",
        }
    }

    fn from_alg(alg: &str) -> Option<Self> {
        match alg {
            "EdDSA" => Some(ProofAlg::EdDsa),
            "Ed25519" => Some(ProofAlg::Ed25519),
            "ES256" => Some(ProofAlg::Es256),
            _ => None,
        }
    }
}

/// A proof that passed every check of [`verify_proof`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedProof {
    /// RFC 7638 SHA-256 thumbprint of the proof key, base64url: the device identity and the
    /// access token's `cnf.jkt`.
    pub jkt: String,
    /// The proof's unique id; see [`replay_key`](Self::replay_key).
    pub jti: String,
    /// Issue time, Unix seconds (a fractional `iat` is rounded down).
    pub iat: i64,
    /// The server-provided nonce, if the proof carries one; not checked here.
    pub nonce: Option<String>,
    /// The access-token hash, if the proof carries one; not checked here.
    pub ath: Option<String>,
    /// The signature algorithm used.
    pub alg: ProofAlg,
    /// The public key, reduced to the members its thumbprint covers (`kty`, `crv`, `x` and,
    /// for EC, `y`), with their values exactly as presented. Optional members (`kid`, `use`,
    /// ...) are dropped so a client cannot make us store arbitrary data with the device.
    pub jwk: Value,
}

impl VerifiedProof {
    /// The id to record in the replay store: the `jti` scoped to the key that signed it.
    ///
    /// Scoping by key means one client cannot burn another device's `jti` values, and two
    /// devices that happen to pick the same `jti` do not collide. The thumbprint is fixed
    /// length base64url (no `:`), so the concatenation is unambiguous.
    pub fn replay_key(&self) -> String {
        format!("{}:{}", self.jkt, self.jti)
    }
}

/// The header members we act on. Typed, so that a duplicated member (`{"alg":"ES256",
/// "alg":"none"}`) is a parse error instead of "last one wins" (RFC 7515 §4: a recipient
/// must reject duplicates or use the lexically last; rejecting leaves no ambiguity between
/// parsers). Other members are ignored (RFC 7515 §4).
#[derive(Deserialize)]
struct RawHeader {
    alg: Option<Value>,
    typ: Option<Value>,
    jwk: Option<UniqueObject>,
    crit: Option<Value>,
}

/// A JSON object whose member names are unique: `{"x": A, "x": B}` in a `jwk` is refused
/// for the same reason as duplicated header members, since a parser that keeps the first `x`
/// would verify with, and thumbprint, a different key than one that keeps the last.
struct UniqueObject(Value);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> serde::de::Visitor<'de> for ObjectVisitor {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueObject, A::Error> {
                let mut members = serde_json::Map::new();
                while let Some((name, value)) = access.next_entry::<String, Value>()? {
                    if members.insert(name, value).is_some() {
                        return Err(serde::de::Error::custom("duplicate member"));
                    }
                }
                Ok(UniqueObject(Value::Object(members)))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// The claims we act on; duplicates refused as for the header. `Option<Value>` so that a
/// wrong type gives a precise error instead of a parse failure.
#[derive(Deserialize)]
struct RawClaims {
    jti: Option<Value>,
    htm: Option<Value>,
    htu: Option<Value>,
    iat: Option<Value>,
    nonce: Option<Value>,
    ath: Option<Value>,
}

/// Verifies a DPoP proof JWT (RFC 9449 §4.3) for a request with method `htm` to URI `htu`
/// received at `now_unix`.
///
/// `htu` is what the server expects: the issuer plus the route path. It is compared with the
/// proof's `htu` after RFC 3986 normalisation, ignoring query and fragment on both sides (so a
/// proof whose `htu` carries a query is accepted when the rest matches, as §4.3 check 9 says).
/// `htm` is compared exactly: HTTP methods are case-sensitive (RFC 9110 §9.1).
///
/// Checks run cheapest and most fundamental first, and nothing from the payload is trusted
/// before the signature verifies: size, JWS shape, `alg` allow-list, `typ`, `crit`, `jwk`
/// (public only, matching `alg`), signature, then the claims `jti`, `htm`, `htu`, `iat`.
pub fn verify_proof(
    proof: &str,
    htm: &str,
    htu: &str,
    now_unix: i64,
    opts: &VerifyOptions,
) -> Result<VerifiedProof, DpopError> {
    // Bound the work before touching the input.
    if proof.len() > opts.max_proof_bytes {
        return Err(DpopError::TooLarge {
            limit: opts.max_proof_bytes,
        });
    }

    // Compact serialisation only: exactly three parts (RFC 7515 §7.1). A JWE (five parts)
    // or a JSON serialisation is not a proof.
    let mut parts = proof.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(DpopError::Malformed);
    };

    let header: RawHeader = decode_json_object(header_b64)?;

    // The alg allow-list comes before anything else is looked at, so `none`, the HMAC
    // family (whose "key" would be whatever the attacker puts in the header) and every other
    // algorithm are refused without going near key or signature code (RFC 8725 §3.1).
    let alg = match &header.alg {
        Some(Value::String(alg)) => ProofAlg::from_alg(alg).ok_or(DpopError::AlgNotAllowed)?,
        _ => return Err(DpopError::AlgNotAllowed),
    };

    // Explicit typing (RFC 8725 §3.11): an access token or ID token signed by the same
    // device key cannot be passed off as a proof.
    if !matches!(&header.typ, Some(Value::String(typ)) if typ == DPOP_TYP) {
        return Err(DpopError::WrongTyp);
    }

    // We understand no extension, so any critical one must make us refuse (RFC 7515
    // §4.1.11); this also rules out unencoded payloads (RFC 7797 `b64`).
    if header.crit.is_some() {
        return Err(DpopError::UnsupportedCrit);
    }

    let jwk = header.jwk.as_ref().ok_or(DpopError::MissingJwk)?;
    let (key, public_jwk) = jwk::parse_public_jwk(&jwk.0, alg)?;

    // The signing input is the ASCII of the first two parts as received (RFC 7515 §5.2).
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| DpopError::Malformed)?;
    let signing_input_len = header_b64.len() + 1 + payload_b64.len();
    key.verify(&proof.as_bytes()[..signing_input_len], &signature)?;

    let claims: RawClaims = decode_json_object(payload_b64)?;

    let jti = match claims.jti {
        Some(Value::String(jti)) if !jti.is_empty() && jti.len() <= MAX_JTI_BYTES => jti,
        _ => return Err(DpopError::InvalidJti),
    };

    let Some(Value::String(proof_htm)) = claims.htm else {
        return Err(DpopError::InvalidClaim("htm"));
    };
    if proof_htm != htm {
        return Err(DpopError::HtmMismatch);
    }

    let Some(Value::String(proof_htu)) = claims.htu else {
        return Err(DpopError::InvalidClaim("htu"));
    };
    let expected = htu::normalize(htu).ok_or(DpopError::InvalidExpectedHtu)?;
    if htu::normalize(&proof_htu).as_deref() != Some(expected.as_str()) {
        return Err(DpopError::HtuMismatch);
    }

    let iat = claims
        .iat
        .as_ref()
        .and_then(numeric_date)
        .ok_or(DpopError::InvalidClaim("iat"))?;
    let leeway = u64::try_from(opts.iat_leeway_secs).unwrap_or(0);
    if now_unix.abs_diff(iat) > leeway {
        return Err(DpopError::IatOutsideWindow);
    }

    let nonce = optional_string(claims.nonce, "nonce")?;
    let ath = optional_string(claims.ath, "ath")?;

    Ok(VerifiedProof {
        jkt: jwk_thumbprint(&public_jwk)?,
        jti,
        iat,
        nonce,
        ath,
        alg,
        jwk: public_jwk,
    })
}

/// Decodes one base64url part holding a JSON object (RFC 7515 §7.1 / RFC 7519 §7.2).
fn decode_json_object<T: DeserializeOwned>(part: &str) -> Result<T, DpopError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| DpopError::Malformed)?;
    // serde would also read our structs from a JSON array, positionally; a JOSE header or a
    // claims set is always an object.
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(DpopError::Malformed);
    }
    serde_json::from_slice(&bytes).map_err(|_| DpopError::Malformed)
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds, possibly fractional, which we
/// round down. Out-of-range values saturate and then fail the window check.
fn numeric_date(value: &Value) -> Option<i64> {
    let Value::Number(n) = value else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    // `as` saturates for out-of-range floats; NaN and infinities cannot come from JSON.
    f.is_finite().then(|| f.floor() as i64)
}

fn optional_string(value: Option<Value>, name: &'static str) -> Result<Option<String>, DpopError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(DpopError::InvalidClaim(name)),
    }
}
