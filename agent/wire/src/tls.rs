//! Mutual TLS from a `ferry ca` folder: each side presents `NAME.pem`/`NAME.key` and accepts
//! only peers whose certificate the folder's `ca.pem` signed and its `ca.crl` (if there is
//! one) does not revoke. The revocation list is read again whenever its file changes, so a
//! revoked certificate is refused without a restart. There is no plain-text mode.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

pub use rustls::ClientConfig;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
};

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

/// An agent's side: presents `name`'s certificate, requires one signed by the CA and not
/// revoked from peers.
pub fn server_config(dir: &Path, name: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = Arc::new(Revocable::new(dir, build_client_verifier)?);
    let (certs, key) = identity(dir, name)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    // Sessions are long and few: resuming one would save little.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A connecting side (scheduler or agent): presents `name`'s certificate, trusts only the CA,
/// and only certificates it has not revoked.
pub fn client_config(dir: &Path, name: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let (certs, key) = identity(dir, name)?;
    let verifier = Arc::new(Revocable::new(dir, build_server_verifier)?);
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(certs, key)?;
    Ok(Arc::new(config))
}

type Crls = Vec<CertificateRevocationListDer<'static>>;

fn build_client_verifier(
    roots: Arc<RootCertStore>,
    crls: Crls,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .with_crls(crls)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(verifier)
}

fn build_server_verifier(
    roots: Arc<RootCertStore>,
    crls: Crls,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .with_crls(crls)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(verifier)
}

/// A WebPKI verifier (`V`, of client or server certificates) built again with the CA folder's
/// revocation list whenever that file changes.
struct Revocable<V: ?Sized> {
    roots: Arc<RootCertStore>,
    crl_path: PathBuf,
    /// The modification time of `ca.crl` the current verifier was built with.
    seen: Mutex<Option<SystemTime>>,
    current: RwLock<Arc<V>>,
    build: fn(Arc<RootCertStore>, Crls) -> Result<Arc<V>, String>,
}

impl<V: ?Sized> std::fmt::Debug for Revocable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocable")
            .field("crl_path", &self.crl_path)
            .finish_non_exhaustive()
    }
}

impl<V: ?Sized> Revocable<V> {
    fn new(
        dir: &Path,
        build: fn(Arc<RootCertStore>, Crls) -> Result<Arc<V>, String>,
    ) -> Result<Self, TlsError> {
        let roots = roots(dir)?;
        let crl_path = dir.join("ca.crl");
        let seen = modified(&crl_path);
        let crls = read_crls(&crl_path)?;
        let current = build(roots.clone(), crls).map_err(|e| file_error(&crl_path, e))?;
        Ok(Self {
            roots,
            crl_path,
            seen: Mutex::new(seen),
            current: RwLock::new(current),
            build,
        })
    }

    /// The verifier for the revocation list as it is now on disk. A list that cannot be read
    /// keeps the last one in force (and says so): a half-copied file must not lift a
    /// revocation.
    fn verifier(&self) -> Arc<V> {
        let now = modified(&self.crl_path);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen != now {
            let rebuilt = read_crls(&self.crl_path)
                .map_err(|e| e.to_string())
                .and_then(|crls| (self.build)(self.roots.clone(), crls));
            match rebuilt {
                Ok(verifier) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = verifier;
                    *seen = now;
                    tracing::info!(path = %self.crl_path.display(), "revocation list loaded");
                }
                Err(e) => tracing::warn!(
                    path = %self.crl_path.display(),
                    error = %e,
                    "could not read the revocation list; the previous one stays in force"
                ),
            }
        }
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_crls(path: &Path) -> Result<Crls, TlsError> {
    match CertificateRevocationListDer::pem_file_iter(path) {
        Ok(crls) => crls
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(path, e)),
        Err(rustls::pki_types::pem::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Vec::new())
        }
        Err(e) => Err(file_error(path, e)),
    }
}

impl ClientCertVerifier for Revocable<dyn ClientCertVerifier> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // ferry's peers each have one certificate: no hint is needed to choose it.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}

impl ServerCertVerifier for Revocable<dyn ServerCertVerifier> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.verifier().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier().supported_verify_schemes()
    }
}
