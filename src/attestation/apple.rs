//! Apple App Attest: the attestation object's validation, as Apple's "Validating apps that
//! connect to your server" (section "Verify the attestation") lists it, with the steps'
//! numbers in the comments. Contract section 8, `apple-appattest`.

use asn1_rs::{Any, Class, FromBer, Tag};
use ciborium::Value;
use sha2::{Digest, Sha256};
use x509_parser::oid_registry::Oid;
use x509_parser::prelude::X509Certificate;

use super::chain::{self, Anchor, MAX_CHAIN};
use super::{AttestationError, Attested, Format, decode_base64};

/// App Attest's nonce extension (step 4): `SEQUENCE { [1] EXPLICIT OCTET STRING }`.
const NONCE_OID: &[u64] = &[1, 2, 840, 113635, 100, 8, 2];

/// AAGUIDs (step 8): production keys, and development keys (Xcode builds with the
/// `development` App Attest environment).
const AAGUID_PRODUCTION: &[u8; 16] = b"appattest\0\0\0\0\0\0\0";
const AAGUID_DEVELOPMENT: &[u8; 16] = b"appattestdevelop";

fn fail(msg: impl std::fmt::Display) -> AttestationError {
    AttestationError(format!("apple-appattest: {msg}"))
}

/// What the checks need besides the attestation itself.
pub(crate) struct Policy<'a> {
    pub(crate) app_ids: &'a [String],
    pub(crate) allow_development: bool,
    pub(crate) anchors: Vec<&'a Anchor>,
    pub(crate) links: &'a chain::VerifiedLinks,
}

/// Verifies an App Attest attestation whose `clientDataHash` is `client_data_hash` (the server
/// passes SHA-256 of the client data; Apple's own sample object used the raw challenge, which
/// the real-vector test reproduces through this function).
pub(crate) fn verify(
    policy: &Policy<'_>,
    key_id_b64: &str,
    object_b64: &str,
    client_data_hash: &[u8],
    now: i64,
) -> Result<Attested, AttestationError> {
    if policy.app_ids.is_empty() {
        return Err(fail("no --apple-app-id is configured"));
    }
    let key_id = decode_base64(key_id_b64).ok_or_else(|| fail("key_id is not base64"))?;
    let object = decode_base64(object_b64).ok_or_else(|| fail("object is not base64"))?;
    let object: Value = ciborium::from_reader(object.as_slice())
        .map_err(|_| fail("object is not a CBOR attestation object"))?;
    let fmt = map_get(&object, "fmt").and_then(Value::as_text);
    if fmt != Some("apple-appattest") {
        return Err(fail("fmt is not apple-appattest"));
    }
    let auth_data = map_get(&object, "authData")
        .and_then(Value::as_bytes)
        .ok_or_else(|| fail("the attestation object has no authData"))?;
    let x5c = map_get(&object, "attStmt")
        .and_then(|s| map_get(s, "x5c"))
        .and_then(Value::as_array)
        .ok_or_else(|| fail("attStmt has no x5c certificate chain"))?;
    if x5c.is_empty() || x5c.len() > MAX_CHAIN {
        return Err(fail("x5c must hold 1 to 8 certificates"));
    }
    let ders = x5c
        .iter()
        .map(|v| {
            v.as_bytes()
                .ok_or_else(|| fail("an x5c entry is not a byte string"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let certs = ders
        .iter()
        .enumerate()
        .map(|(i, der)| {
            chain::parse_der(der).ok_or_else(|| {
                fail(format!(
                    "x5c certificate {i} is not a valid X.509 certificate"
                ))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    // Step 1: the chain (credential certificate, intermediate) ends at the Apple App
    // Attestation Root CA or a configured --attestation-root, at the server's clock.
    chain::verify_chain(
        "apple-appattest",
        &certs,
        &policy.anchors,
        policy.links,
        now,
    )
    .map_err(AttestationError)?;
    let cred_cert = &certs[0];

    let auth = AuthData::parse(auth_data)?;

    // Steps 2-4: nonce = SHA-256(authData || clientDataHash) is in the credential
    // certificate. It binds the certificate (so the key) to this authData and this challenge.
    let mut hasher = Sha256::new();
    hasher.update(auth_data);
    hasher.update(client_data_hash);
    let expected_nonce = hasher.finalize();
    let nonce = nonce_extension(cred_cert)?;
    if nonce != expected_nonce.as_slice() {
        return Err(fail(
            "the certificate's nonce is not SHA-256(authData || clientDataHash): \
             wrong challenge or client data",
        ));
    }

    // Step 5: the key id is SHA-256 of the credential public key (X9.62 uncompressed point).
    let public_key = cred_cert.public_key().subject_public_key.data.to_vec();
    let key_hash = Sha256::digest(&public_key);
    if key_id != key_hash.as_slice() {
        return Err(fail(
            "key_id is not the SHA-256 of the credential certificate's public key",
        ));
    }

    // Step 6: the RP ID hash is SHA-256 of the App ID (TEAMID.BUNDLE_ID): the key belongs to
    // our app, not another app of any developer.
    if !policy
        .app_ids
        .iter()
        .any(|id| Sha256::digest(id.as_bytes()).as_slice() == auth.rp_id_hash)
    {
        return Err(fail(
            "rpIdHash matches none of the configured --apple-app-id",
        ));
    }

    // Step 7: a fresh key has signed nothing yet.
    if auth.counter != 0 {
        return Err(fail(format!("the counter is {}, not 0", auth.counter)));
    }

    // Step 8: production AAGUID; the development one only when allowed (development keys are
    // not backed by Apple's fraud checks in the same way).
    if auth.aaguid == AAGUID_DEVELOPMENT {
        if !policy.allow_development {
            return Err(fail(
                "the AAGUID is appattestdevelop (a development key) and \
                 --attestation-allow-development is off",
            ));
        }
    } else if auth.aaguid != AAGUID_PRODUCTION {
        return Err(fail("the AAGUID is not App Attest's"));
    }

    // Step 9: the credential id is the key id.
    if auth.credential_id != key_hash.as_slice() {
        return Err(fail(
            "the authenticator data's credential id is not the key id",
        ));
    }

    Ok(Attested {
        format: Format::AppleAppAttest,
        security_level: None,
        public_key: Some(public_key),
        key_id: Some(key_hash.to_vec()),
    })
}

/// A CBOR map member by text key.
fn map_get<'v>(map: &'v Value, key: &str) -> Option<&'v Value> {
    map.as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

/// WebAuthn authenticator data (Web Authentication Level 2, 6.1 and 6.5.1), the fixed layout
/// App Attest uses: rpIdHash(32) flags(1) signCount(4) aaguid(16) credIdLen(2) credId COSE key.
struct AuthData<'a> {
    rp_id_hash: &'a [u8],
    counter: u32,
    aaguid: &'a [u8],
    credential_id: &'a [u8],
}

impl<'a> AuthData<'a> {
    fn parse(data: &'a [u8]) -> Result<AuthData<'a>, AttestationError> {
        let short = || fail("the authenticator data is too short");
        let rp_id_hash = data.get(..32).ok_or_else(short)?;
        let counter = data.get(33..37).ok_or_else(short)?;
        let aaguid = data.get(37..53).ok_or_else(short)?;
        let len = data.get(53..55).ok_or_else(short)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let credential_id = data.get(55..55 + len).ok_or_else(short)?;
        Ok(AuthData {
            rp_id_hash,
            counter: u32::from_be_bytes([counter[0], counter[1], counter[2], counter[3]]),
            aaguid,
            credential_id,
        })
    }
}

/// The nonce in the credential certificate's extension 1.2.840.113635.100.8.2.
fn nonce_extension<'c>(cert: &'c X509Certificate<'_>) -> Result<&'c [u8], AttestationError> {
    let oid = Oid::from(NONCE_OID).map_err(|_| fail("nonce OID"))?;
    let ext = cert
        .get_extension_unique(&oid)
        .ok()
        .flatten()
        .ok_or_else(|| fail("the credential certificate has no nonce extension"))?;
    let malformed = || fail("the credential certificate's nonce extension is malformed");
    let (rest, seq) = Any::from_ber(ext.value).map_err(|_| malformed())?;
    if !rest.is_empty() || seq.tag() != Tag::Sequence {
        return Err(malformed());
    }
    let (_, tagged) = Any::from_ber(seq.data).map_err(|_| malformed())?;
    if tagged.class() != Class::ContextSpecific || tagged.tag() != Tag(1) {
        return Err(malformed());
    }
    let (_, octets) = Any::from_ber(tagged.data).map_err(|_| malformed())?;
    if octets.tag() != Tag::OctetString {
        return Err(malformed());
    }
    Ok(octets.data)
}
