use rand::RngCore;
use rand::rngs::OsRng;
use serde_json::{Map, Value, json};

use super::{PRIVATE_JWK_MEMBERS, PROOF_TYP, htu};
use crate::device_key::DeviceKey;
use crate::error::{Error, Result};
use crate::jose::{b64_encode, sha256_b64, unix_now};

/// Builds one DPoP proof (RFC 9449 section 4.2) signed by a [`DeviceKey`].
///
/// Every proof gets a fresh 128-bit random `jti` and the current `iat`, so a proof is good for
/// exactly one request. The [`Client`](crate::Client) builds its proofs with this; use it
/// directly only when you make token requests yourself.
///
/// ```
/// use keybound_sdk::{DpopProofBuilder, Ed25519DeviceKey};
///
/// let key = Ed25519DeviceKey::generate();
/// let proof = DpopProofBuilder::new(&key, "GET", "https://api.example.com/users?page=2")
///     .access_token("eyJhbGciOiJFZERTQSJ9.e30.c2ln")
///     .sign()?;
/// assert_eq!(proof.split('.').count(), 3);
/// # Ok::<(), keybound_sdk::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `sign` is called"]
pub struct DpopProofBuilder<'a> {
    key: &'a dyn DeviceKey,
    method: &'a str,
    url: &'a str,
    nonce: Option<&'a str>,
    access_token: Option<&'a str>,
}

impl<'a> DpopProofBuilder<'a> {
    /// A proof for a request with HTTP `method` to `url`. The query and fragment of `url` are
    /// left out of `htu`, as RFC 9449 requires.
    pub fn new(key: &'a dyn DeviceKey, method: &'a str, url: &'a str) -> Self {
        Self {
            key,
            method,
            url,
            nonce: None,
            access_token: None,
        }
    }

    /// Includes the server-provided `nonce` (RFC 9449 section 8). Default: no nonce.
    pub fn nonce(mut self, nonce: &'a str) -> Self {
        self.nonce = Some(nonce);
        self
    }

    /// Binds the proof to an access token through `ath` = base64url(SHA-256(token))
    /// (RFC 9449 section 4.2), as a resource server requires. Default: no `ath`, which is
    /// right for calls to the token endpoints.
    pub fn access_token(mut self, access_token: &'a str) -> Self {
        self.access_token = Some(access_token);
        self
    }

    /// Signs the proof and returns it in compact form, ready for the `DPoP` header.
    ///
    /// For keys that sign at once (the in-memory [`Ed25519DeviceKey`](crate::Ed25519DeviceKey)
    /// and [`Es256DeviceKey`](crate::Es256DeviceKey)). A key that signs asynchronously (a
    /// keystore that prompts, a foreign-language signer) is refused with
    /// [`ErrorKind::DeviceKey`](crate::ErrorKind::DeviceKey): use
    /// [`sign_async`](Self::sign_async) for those.
    pub fn sign(self) -> Result<String> {
        let input = self.signing_input(&fresh_jti(), unix_now())?;
        let signature = self.key.sign(input.as_bytes()).now()?;
        Ok(format!("{input}.{}", b64_encode(signature)))
    }

    /// Signs the proof with any [`DeviceKey`], awaiting its signature, and returns it in
    /// compact form.
    pub async fn sign_async(self) -> Result<String> {
        let input = self.signing_input(&fresh_jti(), unix_now())?;
        let signature = self.key.sign(input.as_bytes()).await?;
        Ok(format!("{input}.{}", b64_encode(signature)))
    }

    /// `base64url(header) "." base64url(claims)`, the JWS signing input (RFC 7515 section
    /// 5.1). serde_json writes object members in lexicographic order, so the text is fixed for
    /// given inputs (the test vectors under `tests/vectors/` rely on that).
    pub(crate) fn signing_input(&self, jti: &str, iat: u64) -> Result<String> {
        let jwk = self.key.public_jwk();
        // A faulty DeviceKey that puts its private key in the JWK would publish it in every
        // request header; refuse instead.
        if PRIVATE_JWK_MEMBERS.iter().any(|m| jwk.get(m).is_some()) {
            return Err(Error::device_key("public JWK contains private key members"));
        }
        // Members are inserted in lexicographic order, so the text is the same whether
        // serde_json keeps insertion order (feature `preserve_order`) or sorts.
        let header = json!({ "alg": self.key.alg(), "jwk": sorted(jwk), "typ": PROOF_TYP });

        let mut claims = Map::new();
        if let Some(token) = self.access_token {
            claims.insert("ath".into(), sha256_b64(token).into());
        }
        claims.insert("htm".into(), self.method.into());
        claims.insert("htu".into(), htu(self.url)?.into());
        claims.insert("iat".into(), iat.into());
        claims.insert("jti".into(), jti.into());
        if let Some(nonce) = self.nonce {
            claims.insert("nonce".into(), nonce.into());
        }
        Ok(format!(
            "{}.{}",
            b64_encode(header.to_string()),
            b64_encode(Value::Object(claims).to_string())
        ))
    }
}

/// `jwk` with its members in lexicographic order.
fn sorted(jwk: Value) -> Value {
    match jwk {
        Value::Object(members) => {
            let mut members: Vec<_> = members.into_iter().collect();
            members.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(members.into_iter().collect())
        }
        other => other,
    }
}

/// 128 random bits, base64url: unique per proof (RFC 9449 section 4.2 `jti`).
fn fresh_jti() -> String {
    let mut jti = [0u8; 16];
    OsRng.fill_bytes(&mut jti);
    b64_encode(jti)
}
