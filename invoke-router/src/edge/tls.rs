//! HTTPS: a rustls acceptor from PEM certificate and key files (ring
//! provider, TLS 1.2 and 1.3, ALPN `http/1.1`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::settings::TlsFiles;

/// Why the TLS settings are unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file does not read or parse as PEM.
    #[error("TLS certificate {path}: {source}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("TLS certificate {0} holds no CERTIFICATE block")]
    NoCert(PathBuf),
    /// The key file does not read or holds no private key.
    #[error("TLS key {path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("TLS certificate and key: {0}")]
    Config(#[from] rustls::Error),
}

/// Builds the acceptor of `files`.
pub fn acceptor(files: TlsFiles<'_>) -> Result<TlsAcceptor, TlsError> {
    let certs = load_certs(files.cert)?;
    let key = PrivateKeyDer::from_pem_file(files.key).map_err(|source| TlsError::Key {
        path: files.key.to_path_buf(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |source| TlsError::Cert {
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(path.to_path_buf()));
    }
    Ok(certs)
}
