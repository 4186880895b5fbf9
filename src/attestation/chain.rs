//! Certificate chains: parsing (x509-parser), signature checks (p256, p384, rsa) and trust
//! anchors. Shared by both formats; the messages name the format so an operator reading an
//! `ATTESTATION_FAILED` alert knows which check failed.
//!
//! This is the part of RFC 5280 section 6 path validation both platforms rely on, and no more:
//! each certificate is signed by the next one's key and names it as issuer, every issuer is a
//! CA, every certificate is within its validity period, and the last certificate either is a
//! trust anchor (same subject and key) or is signed by one. No name constraints, policies or
//! revocation lists exist in these chains (Android's revocation is Google's status list,
//! checked in `android.rs`).

use sha2::{Digest, Sha256};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_PKCS1_SHA256WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey as ParsedKey;

/// Longest chain accepted: Android's remotely provisioned chains have five certificates,
/// App Attest's two; the bound keeps a hostile request from costing many signature checks.
pub(crate) const MAX_CHAIN: usize = 8;

/// A public key that can verify certificate signatures.
#[derive(Debug, Clone)]
pub(crate) enum IssuerKey {
    /// An EC key as its uncompressed SEC1 point, checked to be on its curve when parsed.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Rsa(rsa::RsaPublicKey),
}

/// The curves of the attestation CAs: P-256 (Android intermediates and leaves) and P-384
/// (Apple's CAs, Google's ECDSA roots).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Curve {
    P256,
    P384,
}

impl IssuerKey {
    /// The key of a SubjectPublicKeyInfo: EC P-256, EC P-384 or RSA; anything else is refused.
    pub(crate) fn from_spki(
        spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    ) -> Result<IssuerKey, String> {
        let alg = &spki.algorithm.algorithm;
        if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .ok_or("EC key without a named curve")?;
            let point = spki.subject_public_key.data.as_ref();
            // RustCrypto parses the point (compressed or not) and checks it is on the curve;
            // ring, which verifies, takes it uncompressed.
            if curve == OID_EC_P256 {
                p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                    .map(|k| IssuerKey::Ec {
                        curve: Curve::P256,
                        point: k.to_encoded_point(false).as_bytes().to_vec(),
                    })
                    .map_err(|_| "invalid P-256 public key".to_string())
            } else if curve == OID_NIST_EC_P384 {
                p384::ecdsa::VerifyingKey::from_sec1_bytes(point)
                    .map(|k| IssuerKey::Ec {
                        curve: Curve::P384,
                        point: k.to_encoded_point(false).as_bytes().to_vec(),
                    })
                    .map_err(|_| "invalid P-384 public key".to_string())
            } else {
                Err("unsupported EC curve".into())
            }
        } else if *alg == OID_PKCS1_RSAENCRYPTION {
            match spki.parsed() {
                Ok(ParsedKey::RSA(key)) => rsa::RsaPublicKey::new(
                    rsa::BigUint::from_bytes_be(key.modulus),
                    rsa::BigUint::from_bytes_be(key.exponent),
                )
                .map(IssuerKey::Rsa)
                .map_err(|_| "unsupported RSA public key".to_string()),
                _ => Err("invalid RSA public key".into()),
            }
        } else {
            Err("unsupported public key algorithm".into())
        }
    }

    /// Verifies `cert`'s signature with this key. Accepted: ECDSA with SHA-256 or SHA-384
    /// (either curve: Google's P-384 intermediates sign with SHA-256) and RSA PKCS#1 v1.5 with
    /// SHA-256 (Google's RSA root).
    ///
    /// ECDSA is verified with `ring` (already linked for rustls): its P-384 verification is
    /// about 1.5 times as fast as RustCrypto's `p384`, and App Attest's credential
    /// certificate, different for every device, is signed with P-384, so that one check is
    /// most of an App Attest verification (docs/benchmarks.md, "Platform attestation").
    pub(crate) fn verifies(&self, cert: &X509Certificate<'_>) -> bool {
        use ring::signature as ring_sig;
        let tbs = cert.tbs_certificate.as_ref();
        let sig = cert.signature_value.data.as_ref();
        let alg = &cert.signature_algorithm.algorithm;
        // The outer and the signed algorithm must agree (RFC 5280 4.1.1.2), or the signature
        // would be checked under an algorithm the issuer never signed.
        if *alg != cert.tbs_certificate.signature.algorithm {
            return false;
        }
        match self {
            IssuerKey::Ec { curve, point } => {
                let sha256 = *alg == OID_SIG_ECDSA_WITH_SHA256;
                if !sha256 && *alg != OID_SIG_ECDSA_WITH_SHA384 {
                    return false;
                }
                let ring_alg = match (curve, sha256) {
                    (Curve::P256, true) => &ring_sig::ECDSA_P256_SHA256_ASN1,
                    (Curve::P256, false) => &ring_sig::ECDSA_P256_SHA384_ASN1,
                    (Curve::P384, true) => &ring_sig::ECDSA_P384_SHA256_ASN1,
                    (Curve::P384, false) => &ring_sig::ECDSA_P384_SHA384_ASN1,
                };
                ring_sig::UnparsedPublicKey::new(ring_alg, point)
                    .verify(tbs, sig)
                    .is_ok()
            }
            IssuerKey::Rsa(key) if *alg == OID_PKCS1_SHA256WITHRSA => key
                .verify(
                    rsa::Pkcs1v15Sign::new::<Sha256>(),
                    &Sha256::digest(tbs),
                    sig,
                )
                .is_ok(),
            IssuerKey::Rsa(_) => false,
        }
    }
}

/// A trust anchor: a root certificate's subject and key, parsed once.
#[derive(Debug, Clone)]
pub(crate) struct Anchor {
    subject: Vec<u8>,
    spki: Vec<u8>,
    key: IssuerKey,
}

impl Anchor {
    /// Parses every certificate of a PEM bundle (text outside `BEGIN`/`END` blocks is ignored).
    pub(crate) fn from_pem_bundle(pem: &[u8]) -> Result<Vec<Anchor>, String> {
        let mut anchors = Vec::new();
        for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
            let block = block.map_err(|e| format!("invalid PEM: {e}"))?;
            if block.label != "CERTIFICATE" {
                continue;
            }
            let cert =
                parse_der(&block.contents).ok_or("a PEM block is not an X.509 certificate")?;
            let key = IssuerKey::from_spki(cert.public_key())?;
            anchors.push(Anchor {
                subject: cert.subject().as_raw().to_vec(),
                spki: cert.public_key().raw.to_vec(),
                key,
            });
        }
        if anchors.is_empty() {
            return Err("no certificate in the PEM data".into());
        }
        Ok(anchors)
    }
}

/// Links already verified from a CA certificate to its issuer's key, one set per
/// [`Verifier`](super::Verifier): SHA-256 of the certificate's whole DER (signature included,
/// length-prefixed) and of the issuer's SubjectPublicKeyInfo (a built-in or configured root,
/// or the CA above it in the chain).
///
/// Every App Attest chain goes through the same Apple intermediate, and Android chains through
/// a few Google and manufacturer intermediates, so after the first attestation their links cost
/// a hash instead of a P-384 or RSA-4096 signature check, and a warm App Attest verification
/// does one P-384 check (the credential certificate's) instead of two. Only successful checks
/// are kept, and only for CA certificates (leaves are per device and would only evict useful
/// entries). A hit means exactly these bytes were verified with exactly this key: an
/// intermediate that differs in any byte (another validity, another key, a forged signature)
/// misses and is checked again, so the cache cannot accept anything the check would refuse.
/// What it does not skip: the leaf's signature, the names, the CA flags and every
/// certificate's validity at the verification's own `now` (`verify_chain`).
#[derive(Debug)]
pub(crate) struct VerifiedLinks(moka::sync::Cache<[u8; 32], ()>);

/// Distinct intermediates seen in practice are a few hundred (Apple: one; Android: Google's
/// and each manufacturer's); the bound keeps a flood of self-made CAs under a configured
/// `--attestation-root` from growing memory (least recently used first out).
const MAX_VERIFIED_LINKS: u64 = 4096;

impl Default for VerifiedLinks {
    fn default() -> Self {
        VerifiedLinks(moka::sync::Cache::new(MAX_VERIFIED_LINKS))
    }
}

impl VerifiedLinks {
    fn key(cert: &X509Certificate<'_>, issuer_spki: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update((cert.as_raw().len() as u64).to_be_bytes());
        h.update(cert.as_raw());
        h.update(issuer_spki);
        h.finalize().into()
    }

    /// Whether `key` verifies `cert`, answered from the cache for CA certificates seen before.
    fn verifies(&self, key: &IssuerKey, issuer_spki: &[u8], cert: &X509Certificate<'_>) -> bool {
        if !is_ca(cert) {
            return key.verifies(cert);
        }
        let id = Self::key(cert, issuer_spki);
        if self.0.contains_key(&id) {
            return true;
        }
        if !key.verifies(cert) {
            return false;
        }
        self.0.insert(id, ());
        true
    }

    /// How many links are cached (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.0.run_pending_tasks();
        self.0.entry_count()
    }
}

/// Parses one DER certificate; trailing bytes are refused.
pub(crate) fn parse_der(der: &[u8]) -> Option<X509Certificate<'_>> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Some(cert),
        _ => None,
    }
}

/// Checks a leaf-first chain up to one of `anchors` at `now`. `what` prefixes every message
/// (the format's name); certificates are numbered from 0, the leaf.
pub(crate) fn verify_chain(
    what: &str,
    chain: &[X509Certificate<'_>],
    anchors: &[&Anchor],
    links: &VerifiedLinks,
    now: i64,
) -> Result<(), String> {
    if chain.is_empty() {
        return Err(format!("{what}: the certificate chain is empty"));
    }
    // Each link: certificate i names certificate i+1 as issuer, i+1 is a CA, and its key
    // signed i.
    for (i, pair) in chain.windows(2).enumerate() {
        let (cert, issuer) = (&pair[0], &pair[1]);
        if cert.issuer().as_raw() != issuer.subject().as_raw() {
            return Err(format!(
                "{what}: certificate {i}'s issuer is not certificate {}'s subject",
                i + 1
            ));
        }
        if !is_ca(issuer) {
            return Err(format!(
                "{what}: certificate {} signs another but is not a CA",
                i + 1
            ));
        }
        let key = IssuerKey::from_spki(issuer.public_key())
            .map_err(|e| format!("{what}: certificate {}: {e}", i + 1))?;
        if !links.verifies(&key, issuer.public_key().raw, cert) {
            return Err(format!(
                "{what}: certificate {i}'s signature does not verify with certificate {}'s key",
                i + 1
            ));
        }
    }
    // The end of the chain: an anchor itself (same subject and key: its own signature adds
    // nothing) or a certificate an anchor signed.
    let last = &chain[chain.len() - 1];
    let trusted = anchors.iter().any(|a| {
        (a.subject == last.subject().as_raw() && a.spki == last.public_key().raw)
            || (a.subject == last.issuer().as_raw() && links.verifies(&a.key, &a.spki, last))
    });
    if !trusted {
        return Err(format!(
            "{what}: the certificate chain does not end at a trusted root"
        ));
    }
    // Validity against the server's clock (RFC 5280 4.1.2.5), after the signatures so that
    // an expired forgery is reported as a forgery.
    for (i, cert) in chain.iter().enumerate() {
        let v = cert.validity();
        if now < v.not_before.timestamp() {
            return Err(format!("{what}: certificate {i} is not yet valid"));
        }
        if now > v.not_after.timestamp() {
            return Err(format!("{what}: certificate {i} has expired"));
        }
    }
    Ok(())
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}
