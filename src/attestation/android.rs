//! Android Key Attestation: the DPoP key's certificate chain, as "Verify hardware-backed key
//! pairs with key attestation" (developer.android.com/privacy-and-security/
//! security-key-attestation) describes it, and the key description extension's schema from
//! source.android.com/docs/security/features/keystore/attestation#schema. Contract section 8,
//! `android-key`.

use std::collections::HashSet;

use asn1_rs::{Any, Class, FromBer, Tag};
use x509_parser::oid_registry::Oid;
use x509_parser::prelude::X509Certificate;

use super::chain::{self, Anchor, MAX_CHAIN};
use super::{AttestationError, Attested, Format, decode_base64};

/// The key description extension (KeyDescription).
const KEY_DESCRIPTION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 11129, 2, 1, 17];

/// AuthorizationList tags (the Keymaster/KeyMint tag numbers without their type bits).
const TAG_ROOT_OF_TRUST: u32 = 704;
const TAG_ATTESTATION_APPLICATION_ID: u32 = 709;

fn fail(msg: impl std::fmt::Display) -> AttestationError {
    AttestationError(format!("android-key: {msg}"))
}

/// What the checks need besides the attestation itself.
pub(crate) struct Policy<'a> {
    pub(crate) packages: &'a [String],
    pub(crate) signing_cert_sha256: &'a [[u8; 32]],
    pub(crate) revoked_serials: &'a HashSet<String>,
    pub(crate) anchors: Vec<&'a Anchor>,
    pub(crate) links: &'a chain::VerifiedLinks,
}

/// Verifies an Android key attestation chain for `client_data` and the DPoP key's uncompressed
/// P-256 point `dpop_point` (`None` when the proof's key is not P-256).
pub(crate) fn verify(
    policy: &Policy<'_>,
    chain_b64: &[String],
    client_data: &[u8],
    dpop_point: Option<&[u8]>,
    now: i64,
) -> Result<Attested, AttestationError> {
    if policy.packages.is_empty() {
        return Err(fail("no --android-package is configured"));
    }
    if policy.signing_cert_sha256.is_empty() {
        return Err(fail("no --android-signing-cert-sha256 is configured"));
    }
    if chain_b64.is_empty() || chain_b64.len() > MAX_CHAIN {
        return Err(fail("certificate_chain must hold 1 to 8 certificates"));
    }
    let ders = chain_b64
        .iter()
        .enumerate()
        .map(|(i, c)| {
            decode_base64(c).ok_or_else(|| fail(format!("certificate {i} is not base64")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let certs = ders
        .iter()
        .enumerate()
        .map(|(i, der)| {
            chain::parse_der(der)
                .ok_or_else(|| fail(format!("certificate {i} is not a valid X.509 certificate")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    // The chain: every link, up to one of Google's hardware attestation roots (or a configured
    // --attestation-root), every certificate valid now.
    chain::verify_chain("android-key", &certs, &policy.anchors, policy.links, now)
        .map_err(AttestationError)?;

    // Google's status list revokes leaked or compromised attestation keys by serial.
    for (i, cert) in certs.iter().enumerate() {
        let serial = format!("{:x}", cert.tbs_certificate.serial);
        if policy.revoked_serials.contains(&serial) {
            return Err(fail(format!(
                "certificate {i} (serial {serial}) is revoked by the attestation status list"
            )));
        }
    }

    // The attested key is the DPoP key: otherwise a genuine attestation of some other key
    // would vouch for an attacker's proof key.
    let leaf = &certs[0];
    let Some(dpop_point) = dpop_point else {
        return Err(fail("the DPoP key is not an ES256 (P-256) key"));
    };
    if leaf.public_key().subject_public_key.data.as_ref() != dpop_point {
        return Err(fail(
            "the leaf certificate's key is not the DPoP proof's key",
        ));
    }

    // Only the leaf may carry a key description: the secure hardware writes it into the
    // certificate of the key it generates. Found higher up, the leaf was issued by a key
    // (an attest key, or any attested signing key) that can sign arbitrary certificates, and
    // the leaf's extension is whatever that key's holder wrote (Google: "only the first
    // occurrence of the extension in the chain can be trusted").
    let oid = Oid::from(KEY_DESCRIPTION_OID).map_err(|_| fail("key description OID"))?;
    if let Some(i) = certs
        .iter()
        .skip(1)
        .position(|c| c.extensions().iter().any(|e| e.oid == oid))
    {
        return Err(fail(format!(
            "certificate {} above the leaf carries a key description \
             (attest-key chains are not accepted)",
            i + 1
        )));
    }
    let description = key_description(leaf, &oid)?;

    if description.challenge != client_data {
        return Err(fail(
            "attestationChallenge is not the client data: wrong challenge or DPoP key",
        ));
    }
    // Software attestation is produced by Android itself and proves nothing about hardware.
    let level = security_level(description.attestation_security_level).ok_or_else(|| {
        fail("attestationSecurityLevel is Software, not TrustedEnvironment or StrongBox")
    })?;
    security_level(description.keymint_security_level).ok_or_else(|| {
        fail("keyMintSecurityLevel is Software, not TrustedEnvironment or StrongBox")
    })?;

    // The root of trust must come from the hardware-enforced list: a software-enforced one is
    // Android's word, not the TEE's.
    let root_of_trust = description
        .hardware_enforced
        .root_of_trust
        .ok_or_else(|| fail("the hardware-enforced list has no rootOfTrust"))?;
    if root_of_trust.verified_boot_state != 0 {
        return Err(fail(format!(
            "verifiedBootState is {}, not Verified",
            boot_state_name(root_of_trust.verified_boot_state)
        )));
    }
    if !root_of_trust.device_locked {
        return Err(fail("deviceLocked is false (the bootloader is unlocked)"));
    }

    // The app: Android fills attestationApplicationId in the software-enforced list from the
    // package manager (the calling app's package and signing certificates).
    let app_id = description
        .software_enforced
        .application_id
        .ok_or_else(|| fail("the software-enforced list has no attestationApplicationId"))?;
    let app = application_id(app_id)?;
    if !app.packages.iter().any(|p| {
        policy
            .packages
            .iter()
            .any(|want| want.as_bytes() == p.as_slice())
    }) {
        return Err(fail(
            "the attested package name is none of the configured --android-package",
        ));
    }
    if !app.digests.iter().any(|d| {
        policy
            .signing_cert_sha256
            .iter()
            .any(|want| want.as_slice() == d.as_slice())
    }) {
        return Err(fail(
            "no attested signing-certificate digest is one of --android-signing-cert-sha256",
        ));
    }

    Ok(Attested {
        format: Format::AndroidKey,
        security_level: Some(level.to_string()),
        public_key: None,
        key_id: None,
    })
}

/// `TrustedEnvironment` (1) or `StrongBox` (2); `None` for Software (0) or anything else.
fn security_level(level: u32) -> Option<&'static str> {
    match level {
        1 => Some("TrustedEnvironment"),
        2 => Some("StrongBox"),
        _ => None,
    }
}

fn boot_state_name(state: u32) -> &'static str {
    match state {
        0 => "Verified",
        1 => "SelfSigned",
        2 => "Unverified",
        3 => "Failed",
        _ => "unknown",
    }
}

/// The parts of KeyDescription the policy reads.
struct KeyDescription<'a> {
    attestation_security_level: u32,
    keymint_security_level: u32,
    challenge: &'a [u8],
    software_enforced: AuthorizationList<'a>,
    hardware_enforced: AuthorizationList<'a>,
}

#[derive(Default)]
struct AuthorizationList<'a> {
    root_of_trust: Option<RootOfTrust>,
    /// The DER of AttestationApplicationId (the content of its OCTET STRING).
    application_id: Option<&'a [u8]>,
}

struct RootOfTrust {
    device_locked: bool,
    verified_boot_state: u32,
}

struct ApplicationId {
    packages: Vec<Vec<u8>>,
    digests: Vec<Vec<u8>>,
}

/// The elements of a constructed value's content, in order.
fn elements(content: &[u8]) -> Option<Vec<Any<'_>>> {
    let mut rest = content;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (r, any) = Any::from_ber(rest).ok()?;
        out.push(any);
        rest = r;
    }
    Some(out)
}

/// Parses one complete value (no trailing bytes) with the given universal tag.
fn single(data: &[u8], tag: Tag) -> Option<Any<'_>> {
    let (rest, any) = Any::from_ber(data).ok()?;
    (rest.is_empty() && any.class() == Class::Universal && any.tag() == tag).then_some(any)
}

fn octets<'a>(any: &Any<'a>) -> Option<&'a [u8]> {
    (any.class() == Class::Universal
        && any.tag() == Tag::OctetString
        && !any.header.is_constructed())
    .then_some(any.data)
}

fn key_description<'a>(
    leaf: &'a X509Certificate<'_>,
    oid: &Oid<'_>,
) -> Result<KeyDescription<'a>, AttestationError> {
    let ext = leaf
        .extensions()
        .iter()
        .find(|e| e.oid == *oid)
        .ok_or_else(|| fail("the leaf certificate has no key description extension"))?;
    let malformed = || fail("the key description extension is malformed");
    // KeyDescription ::= SEQUENCE { attestationVersion INTEGER, attestationSecurityLevel
    //   SecurityLevel, keyMintVersion INTEGER, keyMintSecurityLevel SecurityLevel,
    //   attestationChallenge OCTET STRING, uniqueId OCTET STRING,
    //   softwareEnforced AuthorizationList, hardwareEnforced AuthorizationList }
    let seq = single(ext.value, Tag::Sequence).ok_or_else(malformed)?;
    let items = elements(seq.data).ok_or_else(malformed)?;
    if items.len() < 8 {
        return Err(malformed());
    }
    let level = |a: &Any<'_>| a.as_enumerated().map(|e| e.0).ok();
    Ok(KeyDescription {
        attestation_security_level: level(&items[1]).ok_or_else(malformed)?,
        keymint_security_level: level(&items[3]).ok_or_else(malformed)?,
        challenge: octets(&items[4]).ok_or_else(malformed)?,
        software_enforced: authorization_list(&items[6]).ok_or_else(malformed)?,
        hardware_enforced: authorization_list(&items[7]).ok_or_else(malformed)?,
    })
}

/// AuthorizationList ::= SEQUENCE { ... [n] EXPLICIT ... OPTIONAL ... }: only the members the
/// policy reads are parsed; the others are skipped by tag.
fn authorization_list<'a>(any: &Any<'a>) -> Option<AuthorizationList<'a>> {
    if any.tag() != Tag::Sequence {
        return None;
    }
    let mut list = AuthorizationList::default();
    for item in elements(any.data)? {
        if item.class() != Class::ContextSpecific {
            return None;
        }
        match item.tag().0 {
            TAG_ROOT_OF_TRUST => {
                // RootOfTrust ::= SEQUENCE { verifiedBootKey OCTET STRING, deviceLocked BOOLEAN,
                //   verifiedBootState VerifiedBootState, verifiedBootHash OCTET STRING (v3+) }
                let seq = single(item.data, Tag::Sequence)?;
                let fields = elements(seq.data)?;
                if fields.len() < 3 {
                    return None;
                }
                list.root_of_trust = Some(RootOfTrust {
                    device_locked: fields[1].as_bool().ok()?,
                    verified_boot_state: fields[2].as_enumerated().ok()?.0,
                });
            }
            TAG_ATTESTATION_APPLICATION_ID => {
                let inner = single(item.data, Tag::OctetString)?;
                list.application_id = Some(octets(&inner)?);
            }
            _ => {}
        }
    }
    Some(list)
}

/// AttestationApplicationId ::= SEQUENCE { package_infos SET OF AttestationPackageInfo,
///   signature_digests SET OF OCTET_STRING }
/// AttestationPackageInfo ::= SEQUENCE { package_name OCTET_STRING, version INTEGER }
fn application_id(der: &[u8]) -> Result<ApplicationId, AttestationError> {
    let malformed = || fail("attestationApplicationId is malformed");
    let seq = single(der, Tag::Sequence).ok_or_else(malformed)?;
    let parts = elements(seq.data).ok_or_else(malformed)?;
    if parts.len() < 2 || parts[0].tag() != Tag::Set || parts[1].tag() != Tag::Set {
        return Err(malformed());
    }
    let mut packages = Vec::new();
    for info in elements(parts[0].data).ok_or_else(malformed)? {
        if info.tag() != Tag::Sequence {
            return Err(malformed());
        }
        let fields = elements(info.data).ok_or_else(malformed)?;
        let name = fields.first().and_then(octets).ok_or_else(malformed)?;
        packages.push(name.to_vec());
    }
    let mut digests = Vec::new();
    for digest in elements(parts[1].data).ok_or_else(malformed)? {
        digests.push(octets(&digest).ok_or_else(malformed)?.to_vec());
    }
    Ok(ApplicationId { packages, digests })
}
