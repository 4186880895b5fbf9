//! Transport hardening for apps: custom trust anchors and pinning of the server's public key
//! (SPKI SHA-256), on top of the usual WebPKI checks. Both take effect during the TLS
//! handshake, so nothing (no API key, no body) is sent to a server that fails them.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// A SHA-256 digest of a DER SubjectPublicKeyInfo.
pub(crate) type SpkiPin = [u8; 32];

/// Parses a pin as OkHttp and HPKP write it: standard base64 of the SHA-256 of the DER
/// SubjectPublicKeyInfo, optionally prefixed with `sha256/`.
pub(crate) fn parse_pin(pin: &str) -> Result<SpkiPin> {
    let b64 = pin.trim().strip_prefix("sha256/").unwrap_or(pin.trim());
    STANDARD
        .decode(b64)
        .ok()
        .and_then(|bytes| SpkiPin::try_from(bytes.as_slice()).ok())
        .ok_or_else(|| {
            Error::config(format!(
                "SPKI pin {pin:?} is not base64 of a SHA-256 digest (44 characters)"
            ))
        })
}

/// The certificates of a PEM text (one or more `CERTIFICATE` blocks).
pub(crate) fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::config(format!("root certificate PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::config("root certificate PEM holds no certificate"));
    }
    Ok(certs)
}

/// The rustls configuration for a client with custom roots (`roots`, replacing the built-in
/// Mozilla set when not empty) and/or pins (`pins`; when not empty, the server's own key must
/// match one).
pub(crate) fn client_config(
    roots: &[CertificateDer<'static>],
    pins: &[SpkiPin],
) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut store = RootCertStore::empty();
    if roots.is_empty() {
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        for root in roots {
            store
                .add(root.clone())
                .map_err(|e| Error::config(format!("root certificate: {e}")))?;
        }
    }
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| Error::config(format!("TLS verifier: {e}")))?;
    let verifier = PinningVerifier {
        webpki,
        pins: pins.to_vec(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::config(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    // The SDK's reqwest speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// WebPKI verification first (chain to a trusted root, name, validity), then the pin.
///
/// Only the server's own certificate is compared: the other certificates a server presents
/// are not necessarily the path WebPKI verified, so an attacker could append any public
/// certificate whose key is pinned. Pin the server's key and a backup key.
#[derive(Debug)]
struct PinningVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    pins: Vec<SpkiPin>,
}

/// The server's key matched no configured pin.
#[derive(Debug)]
pub(crate) struct PinMismatch;

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the server's public key matches none of the configured SPKI pins")
    }
}

impl StdError for PinMismatch {}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if self.pins.is_empty() {
            return Ok(verified);
        }
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let digest: SpkiPin = Sha256::digest(cert.subject_public_key_info().as_ref()).into();
        if self.pins.contains(&digest) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch)),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// True when `err` (a failed request) failed on a pin, somewhere down its chain of causes.
/// `io::Error` hides its payload from `source()`, so it is opened with `get_ref`.
pub(crate) fn is_pin_mismatch(err: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.is::<PinMismatch>() {
            return true;
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
            e.downcast_ref::<rustls::Error>()
            && other.0.is::<PinMismatch>()
        {
            return true;
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            current = Some(inner as &(dyn StdError + 'static));
            continue;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_base64_sha256_with_an_optional_prefix() {
        let pin = STANDARD.encode([7u8; 32]);
        assert_eq!(parse_pin(&pin).unwrap(), [7u8; 32]);
        assert_eq!(parse_pin(&format!("sha256/{pin}")).unwrap(), [7u8; 32]);
        for bad in ["", "sha256/", "not base64!", &STANDARD.encode([7u8; 20])] {
            assert!(parse_pin(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn root_pem_must_hold_a_certificate() {
        assert!(parse_pem_certificates(b"").is_err());
        assert!(
            parse_pem_certificates(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }
}
