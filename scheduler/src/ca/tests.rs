use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn identity(dir: &Path, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let certs = CertificateDer::pem_file_iter(dir.join(format!("{name}.pem")))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    (
        certs,
        PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap(),
    )
}

fn roots(dir: &Path) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap())
        .unwrap();
    Arc::new(roots)
}

/// A mutual-TLS handshake in memory: the server (`agent`) trusts `server_ca`, the client
/// (`scheduler`, from `client_dir`) trusts `client_ca`. Returns whether a byte got through.
async fn handshake(server_dir: &Path, client_dir: &Path, agent: &str, scheduler: &str) -> bool {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(server_dir), provider.clone())
        .build()
        .unwrap();
    let (certs, key) = identity(server_dir, agent);
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .unwrap();
    let (certs, key) = identity(client_dir, scheduler);
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(client_dir))
        .with_client_auth_cert(certs, key)
        .unwrap();
    let (a, b) = tokio::io::duplex(1 << 16);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let served = tokio::spawn(async move {
        let mut tls = acceptor.accept(a).await.ok()?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.ok()?;
        tls.write_all(&byte).await.ok()?;
        Some(())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from(agent.to_owned()).unwrap();
    let echoed = async {
        let mut tls = connector.connect(name, b).await.ok()?;
        tls.write_all(b"x").await.ok()?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.ok()?;
        Some(byte[0] == b'x')
    };
    let client_ok = echoed.await == Some(true);
    let server_ok = served.await.unwrap().is_some();
    client_ok && server_ok
}

#[tokio::test]
async fn issued_certificates_authenticate_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path()).unwrap();
    issue(
        dir.path(),
        "nas1",
        &["127.0.0.1".into(), "nas1.example".into()],
    )
    .unwrap();
    issue(dir.path(), "sched1", &[]).unwrap();

    assert!(handshake(dir.path(), dir.path(), "nas1", "sched1").await);
    let key_mode = fs::metadata(dir.path().join("nas1.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let (ours, theirs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    init(ours.path()).unwrap();
    init(theirs.path()).unwrap();
    issue(ours.path(), "nas1", &[]).unwrap();
    issue(theirs.path(), "intruder", &[]).unwrap();
    // The intruder trusts our CA (it knows whom it talks to), but its own certificate is not ours.
    fs::copy(
        ours.path().join("ca.pem"),
        theirs.path().join("ca.pem.ours"),
    )
    .unwrap();
    fs::rename(
        theirs.path().join("ca.pem.ours"),
        theirs.path().join("ca.pem"),
    )
    .unwrap();

    assert!(!handshake(ours.path(), theirs.path(), "nas1", "intruder").await);
}

#[test]
fn the_ca_is_never_replaced_and_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        issue(dir.path(), "nas1", &[]),
        Err(CaError::NoCa(_))
    ));
    init(dir.path()).unwrap();
    assert!(matches!(init(dir.path()), Err(CaError::Exists(_))));
    assert!(matches!(
        issue(dir.path(), "../escape", &[]),
        Err(CaError::BadName(_))
    ));
    issue(dir.path(), "nas1", &[]).unwrap();
    assert!(matches!(
        issue(dir.path(), "nas1", &[]),
        Err(CaError::Exists(_))
    ));
}
