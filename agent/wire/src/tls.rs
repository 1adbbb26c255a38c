//! Mutual TLS from a `ferry ca` folder: each side presents `NAME.pem`/`NAME.key` and accepts
//! only peers whose certificate the folder's `ca.pem` signed. There is no plain-text mode.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason} (make it with `ferry ca init` / `ferry ca issue`)")]
    File { path: PathBuf, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn identity(
    dir: &Path,
    name: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let cert_path = dir.join(format!("{name}.pem"));
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(&cert_path, e))?;
    if certs.is_empty() {
        return Err(file_error(&cert_path, "no certificate in it"));
    }
    let key_path = dir.join(format!("{name}.key"));
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| file_error(&key_path, e))?;
    Ok((certs, key))
}

fn roots(dir: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let path = dir.join("ca.pem");
    let ca = CertificateDer::from_pem_file(&path).map_err(|e| file_error(&path, e))?;
    let mut roots = RootCertStore::empty();
    roots.add(ca)?;
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An agent's side: presents `name`'s certificate, requires one signed by the CA from peers.
pub fn server_config(dir: &Path, name: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(dir)?, provider())
        .build()
        .map_err(|e| file_error(&dir.join("ca.pem"), e))?;
    let (certs, key) = identity(dir, name)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    // Sessions are long and few: resuming one would save little.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A connecting side (scheduler or agent): presents `name`'s certificate, trusts only the CA.
pub fn client_config(dir: &Path, name: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let (certs, key) = identity(dir, name)?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(dir)?)
        .with_client_auth_cert(certs, key)?;
    Ok(Arc::new(config))
}
