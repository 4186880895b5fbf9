//! Simulated devices and their DPoP proofs, built before a run so that the load generator
//! spends its share of the two cores on sending requests, not on Ed25519 signatures.

use std::collections::BTreeMap;

use axum::http::HeaderValue;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use bytes::Bytes;
use ed25519_dalek::Signer;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// One simulated device: an Ed25519 DPoP key, the API key it uses and the fingerprint it
/// presents.
pub struct SimDevice {
    key: ed25519_dalek::SigningKey,
    /// The proof's protected header, base64url, the same for every proof of this device.
    header_b64: String,
    /// RFC 7638 thumbprint of the public key (what the server stores as `jkt`).
    pub jkt: String,
    /// Index of its API key in the target's key list.
    pub key_index: usize,
    /// The fingerprint attributes it presents (and is enrolled with when seeded).
    pub attributes: BTreeMap<String, String>,
    /// The exchange request body, carrying `attributes`.
    pub body: Bytes,
}

impl SimDevice {
    /// A new device with a fresh key pair, using API key `key_index`.
    pub fn new(index: usize, key_index: usize) -> SimDevice {
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let x = B64.encode(key.verifying_key().as_bytes());
        let header = format!(
            r#"{{"typ":"dpop+jwt","alg":"EdDSA","jwk":{{"kty":"OKP","crv":"Ed25519","x":"{x}"}}}}"#
        );
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let attributes: BTreeMap<String, String> = [
            ("platform", "ios".to_owned()),
            ("model", "iPhone15,2".to_owned()),
            ("os_version", "17.1".to_owned()),
            ("app_version", "2.3.0".to_owned()),
            ("install_id", format!("bench-install-{index}")),
            ("locale", "ja-JP".to_owned()),
            ("timezone", "Asia/Tokyo".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let body = serde_json::json!({"device": {"name": format!("bench device {index}"),
                                                 "attributes": attributes}});
        SimDevice {
            header_b64: B64.encode(header),
            jkt: B64.encode(Sha256::digest(canonical.as_bytes())),
            key,
            key_index,
            attributes,
            body: Bytes::from(body.to_string()),
        }
    }

    /// A proof for `POST htu` issued at `iat`, with a fresh random `jti`.
    pub fn proof(&self, htu_json: &str, iat: i64, rng: &mut impl RngCore) -> HeaderValue {
        let mut jti = [0u8; 16];
        rng.fill_bytes(&mut jti);
        let claims = format!(
            r#"{{"jti":"{}","htm":"POST","htu":{htu_json},"iat":{iat}}}"#,
            B64.encode(jti)
        );
        let mut jws = String::with_capacity(self.header_b64.len() + claims.len() * 4 / 3 + 90);
        jws.push_str(&self.header_b64);
        jws.push('.');
        B64.encode_string(claims.as_bytes(), &mut jws);
        let sig = self.key.sign(jws.as_bytes());
        jws.push('.');
        B64.encode_string(sig.to_bytes(), &mut jws);
        HeaderValue::try_from(jws).expect("base64url and dots are valid header characters")
    }
}

/// One exchange ready to send: which device, and its proof.
pub struct Prepared {
    /// Index into the device list.
    pub device: u32,
    /// The `DPoP` header.
    pub proof: HeaderValue,
}

/// `count` proofs for `htu`, round robin over `devices` starting at device `first`, all issued
/// at `iat`, signed on every core.
pub fn build_proofs(
    devices: &[SimDevice],
    htu: &str,
    iat: i64,
    first: usize,
    count: usize,
) -> Vec<Prepared> {
    let htu_json = serde_json::to_string(htu).expect("a string serializes");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = count.div_ceil(threads.max(1));
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let htu_json = &htu_json;
                s.spawn(move || {
                    let mut rng = rand::thread_rng();
                    let from = t * per_thread;
                    let to = ((t + 1) * per_thread).min(count);
                    (from..to)
                        .map(|i| {
                            let device = (first + i) % devices.len();
                            Prepared {
                                device: device as u32,
                                proof: devices[device].proof(htu_json, iat, &mut rng),
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("proof builder panicked"))
            .collect()
    })
}
