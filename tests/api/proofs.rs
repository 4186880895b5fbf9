//! A test device: an Ed25519 (or P-256) key pair whose DPoP proofs are built with
//! `jsonwebtoken`, an implementation independent of keybound's own verifier. Hand-assembled
//! proofs (for attacks no honest library would produce) use [`raw_jws`].

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::Signer;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Which key type a device uses.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Ed25519,
    P256,
}

/// A device key pair.
pub struct Device {
    kind: Kind,
    ed: Option<ed25519_dalek::SigningKey>,
    der: Vec<u8>,
    pub jwk: Value,
    pub jkt: String,
}

impl Device {
    pub fn new() -> Device {
        Device::of(Kind::Ed25519)
    }

    pub fn of(kind: Kind) -> Device {
        match kind {
            Kind::Ed25519 => {
                let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
                let x = B64.encode(key.verifying_key().as_bytes());
                let der = key.to_pkcs8_der().expect("pkcs8").as_bytes().to_vec();
                let jkt = thumbprint(&format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#));
                Device {
                    kind,
                    ed: Some(key),
                    der,
                    jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
                    jkt,
                }
            }
            Kind::P256 => {
                use p256::elliptic_curve::sec1::ToEncodedPoint;
                use p256::pkcs8::EncodePrivateKey as _;
                let sk = p256::SecretKey::random(&mut rand::rngs::OsRng);
                let point = sk.public_key().to_encoded_point(false);
                let x = B64.encode(point.x().expect("x"));
                let y = B64.encode(point.y().expect("y"));
                let der = sk.to_pkcs8_der().expect("pkcs8").as_bytes().to_vec();
                let jkt = thumbprint(&format!(
                    r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#
                ));
                Device {
                    kind,
                    ed: None,
                    der,
                    jwk: json!({"kty": "EC", "crv": "P-256", "x": x, "y": y}),
                    jkt,
                }
            }
        }
    }

    /// A valid proof for `htm` `htu`, now, with a fresh `jti`.
    pub fn proof(&self, htm: &str, htu: &str) -> String {
        self.proof_claims(json!({
            "jti": uuid::Uuid::new_v4().to_string(),
            "htm": htm,
            "htu": htu,
            "iat": keybound::clock::now(),
        }))
    }

    /// A proof carrying `nonce`.
    pub fn proof_with_nonce(&self, htm: &str, htu: &str, nonce: &str) -> String {
        self.proof_claims(json!({
            "jti": uuid::Uuid::new_v4().to_string(),
            "htm": htm, "htu": htu, "iat": keybound::clock::now(), "nonce": nonce,
        }))
    }

    /// A properly signed proof with arbitrary claims, built by `jsonwebtoken`.
    pub fn proof_claims(&self, claims: Value) -> String {
        let (alg, key) = match self.kind {
            Kind::Ed25519 => (Algorithm::EdDSA, EncodingKey::from_ed_der(&self.der)),
            Kind::P256 => (Algorithm::ES256, EncodingKey::from_ec_der(&self.der)),
        };
        let mut header = Header::new(alg);
        header.typ = Some("dpop+jwt".into());
        header.jwk =
            Some(serde_json::from_value(self.jwk.clone()).expect("jsonwebtoken parses the jwk"));
        jsonwebtoken::encode(&header, &claims, &key).expect("jsonwebtoken signs")
    }

    /// Signs `header.payload` with this (Ed25519) device key, whatever the header says.
    pub fn raw_jws(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            B64.encode(serde_json::to_vec(header).unwrap()),
            B64.encode(serde_json::to_vec(claims).unwrap())
        );
        let sig = self
            .ed
            .as_ref()
            .expect("an Ed25519 device")
            .sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.to_bytes()))
    }

    /// The Ed25519 private key as the JWK `d` member (to smuggle it into a proof header).
    pub fn private_d(&self) -> String {
        B64.encode(self.ed.as_ref().expect("Ed25519").to_bytes())
    }
}

fn thumbprint(canonical: &str) -> String {
    B64.encode(Sha256::digest(canonical.as_bytes()))
}

/// Fresh standard claims for a hand-built proof.
pub fn claims(htm: &str, htu: &str) -> Value {
    json!({"jti": uuid::Uuid::new_v4().to_string(), "htm": htm, "htu": htu, "iat": keybound::clock::now()})
}
