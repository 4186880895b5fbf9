//! Fixtures: an in-test "issuer" that signs tokens and feeds like keybound does, a
//! verifier configured for it, and a way to serve an axum router on a loopback port.

#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use keybound_sdk::{DeviceKey, DpopProofBuilder, Verifier};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

pub const AUDIENCE: &str = "https://api.example.com";
pub const RESOURCE: &str = "https://api.example.com/v1/users?page=2";
pub const KEY_ID: &str = "ak_test_AAAAAAAAAAAA";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs like a keybound server: Ed25519 keys with a `kid`, published as a JWKS.
pub struct TestIssuer {
    pub issuer: String,
    pub kid: String,
    key: SigningKey,
}

impl TestIssuer {
    pub fn new(issuer: impl Into<String>) -> Self {
        Self::with_kid(issuer, "sig-1")
    }

    pub fn with_kid(issuer: impl Into<String>, kid: &str) -> Self {
        Self {
            issuer: issuer.into(),
            kid: kid.into(),
            key: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    pub fn public_key_bytes(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    pub fn jwk(&self) -> Value {
        json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
            "kid": self.kid, "x": b64(self.public_key_bytes()),
        })
    }

    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk()] })
    }

    /// Signs with jsonwebtoken, an implementation independent of the verifier under test.
    pub fn sign(&self, typ: &str, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.typ = Some(typ.into());
        header.kid = Some(self.kid.clone());
        let der = self.key.to_pkcs8_der().unwrap();
        let key = jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes());
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    }

    /// Signs an arbitrary header by hand, for headers jsonwebtoken would not produce.
    pub fn sign_raw(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let signature = self.key.sign(input.as_bytes());
        format!("{input}.{}", b64(signature.to_bytes()))
    }

    pub fn access_token(&self, claims: &Value) -> String {
        self.sign("at+jwt", claims)
    }

    /// The claims keybound puts in an access token for `device`.
    pub fn claims(&self, device: &dyn DeviceKey) -> Value {
        let now = now();
        json!({
            "iss": self.issuer, "sub": KEY_ID, "client_id": KEY_ID, "aud": AUDIENCE,
            "iat": now, "nbf": now, "exp": now + 300, "jti": b64(rand::random::<[u8; 16]>()),
            "scope": "read:users write:orders",
            "cnf": { "jkt": device.thumbprint().unwrap() },
            "did": "dev_1", "trust": "trusted",
        })
    }

    pub fn feed(&self, revocations: &[Value], next: &str) -> String {
        self.feed_page(revocations, next, false)
    }

    /// A feed page, with `more` saying whether entries remain after it.
    pub fn feed_page(&self, revocations: &[Value], next: &str, more: bool) -> String {
        self.sign(
            "revocations+jwt",
            &json!({
                "iss": self.issuer, "iat": now(), "revocations": revocations, "next": next,
                "more": more,
            }),
        )
    }

    /// A status list token for `uri` (contract section 10): 2-bit `statuses`, ZLIB-compressed.
    pub fn status_list(&self, uri: &str, statuses: &[u8], ttl: u64) -> String {
        use std::io::Write as _;
        let mut bytes = vec![0u8; statuses.len().div_ceil(4)];
        for (i, status) in statuses.iter().enumerate() {
            bytes[i / 4] |= (status & 3) << (2 * (i % 4));
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&bytes).unwrap();
        let now = now();
        self.sign(
            "statuslist+jwt",
            &json!({
                "sub": uri, "iat": now, "exp": now + 600, "ttl": ttl,
                "status_list": {"bits": 2, "lst": b64(z.finish().unwrap())},
            }),
        )
    }
}

/// A verifier for `issuer` with its JWKS fixed and the revocation feed off.
pub async fn offline_verifier(issuer: &TestIssuer) -> Verifier {
    Verifier::builder(&issuer.issuer)
        .audience(AUDIENCE)
        .jwks(issuer.jwks())
        .danger_disable_revocation_feed()
        .build()
        .await
        .unwrap()
}

/// One request for [`RESOURCE`] with `token` and a fresh proof by `device`.
pub async fn call(
    verifier: &Verifier,
    device: &dyn DeviceKey,
    token: &str,
) -> keybound_sdk::Result<()> {
    let proof = proof(device, "GET", RESOURCE, token);
    verifier
        .verify_request(
            "GET",
            RESOURCE,
            Some(&format!("DPoP {token}")),
            Some(&proof),
        )
        .await
        .map(|_| ())
}

pub fn proof(key: &dyn DeviceKey, method: &str, url: &str, token: &str) -> String {
    DpopProofBuilder::new(key, method, url)
        .access_token(token)
        .sign()
        .unwrap()
}

/// Serves `router` on an ephemeral loopback port and returns its base URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

/// Polls `condition` every 20 ms until it holds or `within` passes.
pub async fn eventually(
    within: std::time::Duration,
    mut condition: impl AsyncFnMut() -> bool,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
