//! HTTPS with rustls: the certificate chain and private key come from PEM files and can be
//! reloaded while serving (on SIGHUP, see [`crate::server::serve`]) without closing the
//! listener: connections already open keep the certificate they started with, new handshakes
//! get the new one.
//!
//! The crypto provider is `ring`, named explicitly rather than taken from the process-wide
//! default, so another library enabling a second rustls provider cannot make start-up panic.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum_server::tls_rustls::RustlsConfig;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// The value of `Strict-Transport-Security` on every HTTPS response: one year, as browsers'
/// preload lists expect. No `includeSubDomains`: keybound cannot know what else runs under
/// its parent domain.
pub const HSTS: &str = "max-age=31536000";

/// A TLS configuration bound to its PEM files.
#[derive(Clone)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    config: RustlsConfig,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the certificate chain and key; refuses files that do not make a usable pair.
    pub fn load(cert: &Path, key: &Path) -> Result<Tls> {
        let config = server_config(cert, key).map_err(|e| {
            Error::InvalidRequest(format!(
                "TLS: cannot use {} / {}: {e}",
                cert.display(),
                key.display()
            ))
        })?;
        Ok(Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            config: RustlsConfig::from_config(config),
        })
    }

    /// Re-reads both files and swaps the configuration in. On any error the running
    /// configuration is kept, so a half-written certificate never takes the server down.
    pub fn reload(&self) -> Result<()> {
        let config = server_config(&self.cert, &self.key).map_err(|e| {
            Error::InvalidRequest(format!(
                "TLS reload failed, keeping the old certificate: {e}"
            ))
        })?;
        self.config.reload_from_config(config);
        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// The acceptor's shared configuration (a handle: reloads reach every clone).
    pub fn rustls_config(&self) -> RustlsConfig {
        self.config.clone()
    }
}

/// Builds a rustls server configuration from PEM files: TLS 1.2 and 1.3 with rustls's safe
/// defaults, no client certificates, ALPN offering HTTP/2 and HTTP/1.1.
fn server_config(cert: &Path, key: &Path) -> io::Result<Arc<ServerConfig>> {
    let cert_pem = std::fs::read(cert)?;
    // The key's PEM text is secret: wipe our copy once parsed.
    let key_pem = Zeroizing::new(std::fs::read(key)?);
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("certificate: {e}")))?;
    if chain.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "no certificate in the certificate file",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn loads_a_pem_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        Tls::load(&cert, &key).expect("a valid pair loads");
    }

    #[test]
    fn refuses_missing_or_mismatched_files() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_a, _) = write_pair(dir.path(), "a");
        let (_, key_b) = write_pair(dir.path(), "b");
        let cases = [
            (
                dir.path().join("nope.crt"),
                key_b.clone(),
                "missing certificate",
            ),
            (cert_a.clone(), dir.path().join("nope.key"), "missing key"),
            (key_b.clone(), key_b.clone(), "key given as certificate"),
            (cert_a.clone(), cert_a.clone(), "certificate given as key"),
            (cert_a.clone(), key_b.clone(), "key of another certificate"),
        ];
        for (cert, key, case) in cases {
            assert!(Tls::load(&cert, &key).is_err(), "{case} must be refused");
        }
    }

    #[test]
    fn a_failed_reload_keeps_the_running_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let tls = Tls::load(&cert, &key).unwrap();
        let before = tls.rustls_config().get_inner();
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&before, &tls.rustls_config().get_inner()));
    }

    #[test]
    fn the_key_pem_is_never_in_error_messages() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a");
        let key_text = std::fs::read_to_string(&key).unwrap();
        // The key file given as the certificate: the error must not echo its content.
        let err = Tls::load(&key, &cert).unwrap_err().to_string();
        for line in key_text.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!err.contains(line), "{err}");
        }
    }
}
