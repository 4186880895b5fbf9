//! Generated attestations for tests: App Attest objects and Android key attestation chains
//! under a test root, valid or broken in exactly one way.
//!
//! Uses only std and crates (rcgen, yasna, ciborium, sha2, base64, p256, rand, serde_json), never
//! keybound's own items, so the same file serves the unit tests (`#[cfg(test)] mod testing;`
//! in `src/attestation/mod.rs`) and the API tests
//! (`#[path = "../../src/attestation/testing.rs"] mod attestation_gen;`). Each generator
//! returns the `device.attestation` member of contract section 8 as JSON; configure the server
//! with [`TestRoot::root_pem`] as an `--attestation-root`, [`TEST_APP_ID`] as the
//! `--apple-app-id`, [`TEST_PACKAGE`] and [`TEST_SIGNING_CERT_SHA256_HEX`] for Android.
#![allow(dead_code)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ciborium::Value;
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, IsCa, Issuer,
    KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PublicKeyData, SignatureAlgorithm,
    date_time_ymd,
};
use serde_json::json;
use sha2::{Digest, Sha256};
use yasna::Tag;

/// The App ID generated App Attest objects are made for.
pub const TEST_APP_ID: &str = "ABCDE12345.com.example.keybound";
/// The package generated Android attestations name.
pub const TEST_PACKAGE: &str = "com.example.keybound";
/// The signing-certificate digest generated Android attestations carry.
pub const TEST_SIGNING_CERT_SHA256: [u8; 32] = [0x5a; 32];
/// The same, as an `--android-signing-cert-sha256` value.
pub const TEST_SIGNING_CERT_SHA256_HEX: &str =
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";
/// The serial of every generated Android intermediate, as the status list writes it: list it
/// as revoked to see a chain refused for revocation.
pub const ANDROID_INTERMEDIATE_SERIAL_HEX: &str = "a77e57";
const ANDROID_INTERMEDIATE_SERIAL: u64 = 0xa77e57;

const APPLE_NONCE_OID: &[u64] = &[1, 2, 840, 113635, 100, 8, 2];
const KEY_DESCRIPTION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 1, 17];

/// A self-signed P-384 CA standing in for Apple's and Google's roots.
pub struct TestRoot {
    params: CertificateParams,
    key: KeyPair,
    der: Vec<u8>,
    pem: String,
}

impl TestRoot {
    /// A fresh root (new key every time: two roots never trust each other's chains).
    pub fn new() -> TestRoot {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).expect("P-384 key");
        let params = ca_params("keybound test attestation root");
        let cert = params.self_signed(&key).expect("self-signed root");
        TestRoot {
            der: cert.der().to_vec(),
            pem: cert.pem(),
            params,
            key,
        }
    }

    /// The root certificate, PEM: the contents of an `--attestation-root` file.
    pub fn root_pem(&self) -> String {
        self.pem.clone()
    }

    /// The root certificate, DER.
    pub fn root_der(&self) -> Vec<u8> {
        self.der.clone()
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

impl Default for TestRoot {
    fn default() -> Self {
        TestRoot::new()
    }
}

/// How to break a generated App Attest object (the default breaks nothing).
#[derive(Debug, Clone, Default)]
pub struct AppleOpts {
    /// Another `fmt` than `apple-appattest`.
    pub fmt: Option<String>,
    /// The nonce is computed over other client data.
    pub wrong_nonce: bool,
    /// The credential certificate has no nonce extension.
    pub no_nonce_extension: bool,
    /// The presented `key_id` is another key's.
    pub key_id_mismatch: bool,
    /// The authenticator data's credential id is another key's.
    pub credential_id_mismatch: bool,
    /// The RP ID hashed into the authenticator data (default: the `app_id` argument).
    pub rp_id: Option<String>,
    /// The sign counter (default 0).
    pub counter: u32,
    /// The AAGUID (default `appattest` + 7 zero bytes).
    pub aaguid: Option<[u8; 16]>,
    /// The credential certificate expired in 2021.
    pub expired: bool,
    /// The credential certificate is signed by a key other than the intermediate's.
    pub forged_leaf: bool,
    /// The intermediate is not a CA.
    pub intermediate_not_ca: bool,
}

/// The development AAGUID (`appattestdevelop`).
pub const AAGUID_DEVELOPMENT: [u8; 16] = *b"appattestdevelop";

/// An App Attest `device.attestation` member for `client_data` (the server expects
/// `<challenge>.<jkt>`), under `root`, for `app_id`.
pub fn apple_attestation(
    root: &TestRoot,
    challenge: &str,
    client_data: &[u8],
    app_id: &str,
    opts: &AppleOpts,
) -> serde_json::Value {
    let (inter_params, inter_key, inter_der) = intermediate(
        root,
        &PKCS_ECDSA_P384_SHA384,
        "Apple-like CA",
        !opts.intermediate_not_ca,
        1,
    );
    let cred_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key");
    let point = cred_key.public_key_raw().to_vec();
    let key_hash = Sha256::digest(&point).to_vec();
    let other_hash = Sha256::digest(b"another key").to_vec();

    let rp_id = opts.rp_id.as_deref().unwrap_or(app_id);
    let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
    auth_data.push(0x40); // AT: attested credential data included
    auth_data.extend_from_slice(&opts.counter.to_be_bytes());
    auth_data.extend_from_slice(&opts.aaguid.unwrap_or(*b"appattest\0\0\0\0\0\0\0"));
    let cred_id = if opts.credential_id_mismatch {
        &other_hash
    } else {
        &key_hash
    };
    auth_data.extend_from_slice(&(cred_id.len() as u16).to_be_bytes());
    auth_data.extend_from_slice(cred_id);
    auth_data.extend_from_slice(&cose_p256(&point));

    let nonce_data: &[u8] = if opts.wrong_nonce {
        b"other client data"
    } else {
        client_data
    };
    let mut hasher = Sha256::new();
    hasher.update(&auth_data);
    hasher.update(Sha256::digest(nonce_data));
    let nonce = hasher.finalize();

    let mut params = leaf_params("Apple-like credential", opts.expired);
    if !opts.no_nonce_extension {
        let ext = yasna::construct_der(|w| {
            w.write_sequence(|w| {
                w.next()
                    .write_tagged(Tag::context(1), |w| w.write_bytes(&nonce))
            })
        });
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(APPLE_NONCE_OID, ext));
    }
    let leaf = sign_leaf(
        &params,
        &cred_key,
        &inter_params,
        &inter_key,
        opts.forged_leaf,
    );

    let object = Value::Map(vec![
        (
            Value::Text("fmt".into()),
            Value::Text(opts.fmt.clone().unwrap_or_else(|| "apple-appattest".into())),
        ),
        (
            Value::Text("attStmt".into()),
            Value::Map(vec![
                (
                    Value::Text("x5c".into()),
                    Value::Array(vec![Value::Bytes(leaf), Value::Bytes(inter_der)]),
                ),
                (
                    Value::Text("receipt".into()),
                    Value::Bytes(b"receipt".to_vec()),
                ),
            ]),
        ),
        (Value::Text("authData".into()), Value::Bytes(auth_data)),
    ]);
    let mut cbor = Vec::new();
    ciborium::into_writer(&object, &mut cbor).expect("CBOR");
    let key_id = if opts.key_id_mismatch {
        &other_hash
    } else {
        &key_hash
    };
    json!({
        "format": "apple-appattest",
        "challenge": challenge,
        "key_id": B64.encode(key_id),
        "object": B64.encode(cbor),
    })
}

/// How to break a generated Android chain (the default breaks nothing).
#[derive(Debug, Clone)]
pub struct AndroidOpts {
    /// The attested package (default [`TEST_PACKAGE`]).
    pub package: String,
    /// The attested signing-certificate digest (default [`TEST_SIGNING_CERT_SHA256`]).
    pub signing_cert_sha256: [u8; 32],
    /// attestationSecurityLevel: 0 Software, 1 TrustedEnvironment (default), 2 StrongBox.
    pub attestation_security_level: u32,
    /// keyMintSecurityLevel, same values (default 1).
    pub keymint_security_level: u32,
    /// verifiedBootState: 0 Verified (default), 1 SelfSigned, 2 Unverified, 3 Failed.
    pub verified_boot_state: u32,
    /// deviceLocked (default true).
    pub device_locked: bool,
    /// No rootOfTrust at all.
    pub no_root_of_trust: bool,
    /// The rootOfTrust in the software-enforced list instead of the hardware-enforced one.
    pub root_of_trust_in_software: bool,
    /// No attestationApplicationId.
    pub no_application_id: bool,
    /// attestationChallenge other than the client data.
    pub challenge: Option<Vec<u8>>,
    /// The leaf has no key description extension.
    pub no_key_description: bool,
    /// The key description is not a KeyDescription.
    pub malformed_key_description: bool,
    /// The intermediate also carries a key description.
    pub key_description_in_intermediate: bool,
    /// The leaf expired in 2021.
    pub expired: bool,
    /// The leaf is signed by a key other than the intermediate's.
    pub forged_leaf: bool,
    /// The intermediate is not a CA.
    pub intermediate_not_ca: bool,
    /// Leave the root out of the chain (the intermediate then chains to the anchor directly).
    pub omit_root: bool,
}

impl Default for AndroidOpts {
    fn default() -> Self {
        AndroidOpts {
            package: TEST_PACKAGE.into(),
            signing_cert_sha256: TEST_SIGNING_CERT_SHA256,
            attestation_security_level: 1,
            keymint_security_level: 1,
            verified_boot_state: 0,
            device_locked: true,
            no_root_of_trust: false,
            root_of_trust_in_software: false,
            no_application_id: false,
            challenge: None,
            no_key_description: false,
            malformed_key_description: false,
            key_description_in_intermediate: false,
            expired: false,
            forged_leaf: false,
            intermediate_not_ca: false,
            omit_root: false,
        }
    }
}

/// An Android `device.attestation` member: a chain leaf-first (leaf, intermediate, root)
/// whose leaf certifies `dpop_point` (the DPoP key's uncompressed P-256 point, 65 bytes) with
/// `client_data` as attestationChallenge.
pub fn android_chain(
    root: &TestRoot,
    challenge: &str,
    client_data: &[u8],
    dpop_point: &[u8],
    opts: &AndroidOpts,
) -> serde_json::Value {
    let description = key_description(opts, client_data);
    let (inter_params, inter_key, inter_der) = {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key");
        let mut params = ca_params("Android-like TEE intermediate");
        if opts.intermediate_not_ca {
            params.is_ca = IsCa::ExplicitNoCa;
        }
        params.serial_number = Some(ANDROID_INTERMEDIATE_SERIAL.into());
        if opts.key_description_in_intermediate {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    KEY_DESCRIPTION_OID,
                    description.clone(),
                ));
        }
        let cert = params
            .signed_by(&key, &root.issuer())
            .expect("intermediate");
        (params, key, cert.der().to_vec())
    };
    let mut params = leaf_params("Android Keystore Key", opts.expired);
    if !opts.no_key_description {
        let content = if opts.malformed_key_description {
            yasna::construct_der(|w| w.write_bytes(b"not a KeyDescription"))
        } else {
            description
        };
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                KEY_DESCRIPTION_OID,
                content,
            ));
    }
    let leaf = sign_leaf(
        &params,
        &RawP256(dpop_point.to_vec()),
        &inter_params,
        &inter_key,
        opts.forged_leaf,
    );
    let mut chain = vec![B64.encode(leaf), B64.encode(inter_der)];
    if !opts.omit_root {
        chain.push(B64.encode(root.root_der()));
    }
    json!({
        "format": "android-key",
        "challenge": challenge,
        "certificate_chain": chain,
    })
}

/// A fresh ES256 DPoP key: the signing key, its uncompressed point and its public JWK.
pub fn dpop_p256_key() -> (p256::ecdsa::SigningKey, Vec<u8>, serde_json::Value) {
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let point = key
        .verifying_key()
        .to_encoded_point(false)
        .as_bytes()
        .to_vec();
    let jwk = p256_jwk(&point);
    (key, point, jwk)
}

/// The public JWK (RFC 7518 6.2.1) of an uncompressed P-256 point.
pub fn p256_jwk(point: &[u8]) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    json!({"kty": "EC", "crv": "P-256", "x": b64.encode(&point[1..33]), "y": b64.encode(&point[33..65])})
}

/// A subject key given as a raw uncompressed P-256 point (the DPoP key, whose private half
/// the generator never needs).
struct RawP256(Vec<u8>);

impl PublicKeyData for RawP256 {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2099, 12, 31);
    params
}

fn leaf_params(cn: &str, expired: bool) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.serial_number = Some(1u64.into());
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = if expired {
        date_time_ymd(2021, 1, 1)
    } else {
        date_time_ymd(2099, 12, 31)
    };
    params
}

/// A CA under `root` with a key of `alg`: (params, key, DER).
fn intermediate(
    root: &TestRoot,
    alg: &'static SignatureAlgorithm,
    cn: &str,
    ca: bool,
    serial: u64,
) -> (CertificateParams, KeyPair, Vec<u8>) {
    let key = KeyPair::generate_for(alg).expect("intermediate key");
    let mut params = ca_params(cn);
    params.serial_number = Some(serial.into());
    if !ca {
        params.is_ca = IsCa::ExplicitNoCa;
    }
    let cert = params
        .signed_by(&key, &root.issuer())
        .expect("intermediate");
    (params, key, cert.der().to_vec())
}

/// Signs a leaf with the intermediate's key, or (forged) with a fresh key under the same name.
fn sign_leaf(
    params: &CertificateParams,
    subject: &impl PublicKeyData,
    inter_params: &CertificateParams,
    inter_key: &KeyPair,
    forged: bool,
) -> Vec<u8> {
    let cert = if forged {
        let other = KeyPair::generate_for(inter_key.algorithm()).expect("forger's key");
        params.signed_by(subject, &Issuer::from_params(inter_params, &other))
    } else {
        params.signed_by(subject, &Issuer::from_params(inter_params, inter_key))
    };
    cert.expect("leaf").der().to_vec()
}

/// The COSE_Key (RFC 9053 7.1.1) of an uncompressed P-256 point.
fn cose_p256(point: &[u8]) -> Vec<u8> {
    let int = |i: i64| Value::Integer(i.into());
    let key = Value::Map(vec![
        (int(1), int(2)),  // kty: EC2
        (int(3), int(-7)), // alg: ES256
        (int(-1), int(1)), // crv: P-256
        (int(-2), Value::Bytes(point[1..33].to_vec())),
        (int(-3), Value::Bytes(point[33..65].to_vec())),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&key, &mut out).expect("CBOR");
    out
}

/// A KeyDescription (source.android.com keystore attestation schema, KeyMint 200).
fn key_description(opts: &AndroidOpts, client_data: &[u8]) -> Vec<u8> {
    let challenge = opts
        .challenge
        .clone()
        .unwrap_or_else(|| client_data.to_vec());
    let app_id = yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_set_of(|w| {
                w.next().write_sequence(|w| {
                    w.next().write_bytes(opts.package.as_bytes());
                    w.next().write_i64(1);
                })
            });
            w.next()
                .write_set_of(|w| w.next().write_bytes(&opts.signing_cert_sha256));
        })
    });
    let root_of_trust = |w: yasna::DERWriter<'_>| {
        w.write_tagged(Tag::context(704), |w| {
            w.write_sequence(|w| {
                w.next().write_bytes(&[0x11; 32]);
                w.next().write_bool(opts.device_locked);
                w.next().write_enum(i64::from(opts.verified_boot_state));
                w.next().write_bytes(&[0x22; 32]);
            })
        })
    };
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            w.next().write_i64(200);
            w.next()
                .write_enum(i64::from(opts.attestation_security_level));
            w.next().write_i64(200);
            w.next().write_enum(i64::from(opts.keymint_security_level));
            w.next().write_bytes(&challenge);
            w.next().write_bytes(&[]);
            // softwareEnforced
            w.next().write_sequence(|w| {
                if opts.root_of_trust_in_software && !opts.no_root_of_trust {
                    root_of_trust(w.next());
                }
                if !opts.no_application_id {
                    w.next()
                        .write_tagged(Tag::context(709), |w| w.write_bytes(&app_id));
                }
            });
            // hardwareEnforced: purpose SIGN, algorithm EC, then the root of trust
            w.next().write_sequence(|w| {
                w.next().write_tagged(Tag::context(1), |w| {
                    w.write_set_of(|w| w.next().write_i64(2))
                });
                w.next().write_tagged(Tag::context(2), |w| w.write_i64(3));
                if !opts.root_of_trust_in_software && !opts.no_root_of_trust {
                    root_of_trust(w.next());
                }
            });
        })
    })
}
