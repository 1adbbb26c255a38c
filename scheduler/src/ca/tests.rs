use std::os::unix::fs::PermissionsExt;

use ferry_wire::identity::{self, Peer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn issue_as(dir: &Path, name: &str, role: Role, hosts: &[String]) -> Result<PathBuf, CaError> {
    let order = Order {
        name,
        role,
        hosts,
        days: 365,
        out: dir,
    };
    issue(dir, &order)
}

/// A mutual-TLS handshake in memory with ferry's own settings: the server (`agent`) uses the
/// TLS folder `server_dir`, the client (`scheduler`) `client_dir`. Returns whether a byte got
/// through.
async fn handshake(server_dir: &Path, client_dir: &Path, agent: &str, scheduler: &str) -> bool {
    let server = ferry_wire::tls::server_config(server_dir, agent).unwrap();
    let client = ferry_wire::tls::client_config(client_dir, scheduler).unwrap();
    let (a, b) = tokio::io::duplex(1 << 16);
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let served = tokio::spawn(async move {
        let mut tls = acceptor.accept(a).await.ok()?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.ok()?;
        tls.write_all(&byte).await.ok()?;
        Some(())
    });
    let connector = tokio_rustls::TlsConnector::from(client);
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
    let hosts = ["127.0.0.1".into(), "nas1.example".into()];
    issue_as(dir.path(), "nas1", Role::Agent, &hosts).unwrap();
    issue_as(dir.path(), "sched1", Role::Scheduler, &[]).unwrap();

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
    issue_as(ours.path(), "nas1", Role::Agent, &[]).unwrap();
    issue_as(theirs.path(), "intruder", Role::Scheduler, &[]).unwrap();
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
        issue_as(dir.path(), "nas1", Role::Agent, &[]),
        Err(CaError::NoCa(_))
    ));
    init(dir.path()).unwrap();
    assert!(matches!(init(dir.path()), Err(CaError::Exists(_))));
    assert!(matches!(
        issue_as(dir.path(), "../escape", Role::Agent, &[]),
        Err(CaError::BadName(_))
    ));
    issue_as(dir.path(), "nas1", Role::Agent, &[]).unwrap();
    assert!(matches!(
        issue_as(dir.path(), "nas1", Role::Agent, &[]),
        Err(CaError::Exists(_))
    ));
}

fn peer_of(dir: &Path, name: &str) -> Result<Peer, String> {
    let der = CertificateDer::from_pem_file(dir.join(format!("{name}.pem"))).unwrap();
    identity::of(&der)
}

#[test]
fn a_certificate_names_its_holder_and_role_for_a_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path()).unwrap();
    issue_as(dir.path(), "s1", Role::Scheduler, &[]).unwrap();
    issue_as(dir.path(), "nas1", Role::Agent, &[]).unwrap();

    assert_eq!(
        peer_of(dir.path(), "s1").unwrap(),
        Peer {
            name: "s1".into(),
            role: Role::Scheduler
        }
    );
    assert_eq!(
        peer_of(dir.path(), "nas1").unwrap(),
        Peer {
            name: "nas1".into(),
            role: Role::Agent
        }
    );
    let der = CertificateDer::from_pem_file(dir.path().join("s1.pem")).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    let validity = cert.validity();
    let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
    assert!(
        lifetime <= Duration::days(366).whole_seconds(),
        "{lifetime} s"
    );
    assert!(validity.is_valid(), "valid from now on");
}

#[tokio::test]
async fn a_scheduler_certificate_cannot_serve_as_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path()).unwrap();
    issue_as(dir.path(), "s1", Role::Scheduler, &[]).unwrap();
    issue_as(dir.path(), "s2", Role::Scheduler, &[]).unwrap();
    assert!(!handshake(dir.path(), dir.path(), "s1", "s2").await);
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    init(dir.path()).unwrap();
    issue_as(dir.path(), "nas1", Role::Agent, &[]).unwrap();
    issue_as(dir.path(), "s1", Role::Scheduler, &[]).unwrap();
    issue_as(dir.path(), "stolen", Role::Scheduler, &[]).unwrap();
    let server = ferry_wire::tls::server_config(dir.path(), "nas1").unwrap();
    assert!(handshake_with(&server, dir.path(), "stolen").await);

    revoke(dir.path(), "stolen").unwrap();

    assert!(
        !handshake_with(&server, dir.path(), "stolen").await,
        "revoked, yet let in"
    );
    assert!(
        handshake_with(&server, dir.path(), "s1").await,
        "the others still get in"
    );
    // Revoking twice lists it once.
    revoke(dir.path(), "stolen").unwrap();
    let listed = fs::read_to_string(dir.path().join("revoked.json")).unwrap();
    assert_eq!(listed.matches("stolen").count(), 1, "{listed}");
}

/// A handshake against a server config that stays up (as a running agent's does).
async fn handshake_with(
    server: &std::sync::Arc<rustls::ServerConfig>,
    client_dir: &Path,
    scheduler: &str,
) -> bool {
    let client = ferry_wire::tls::client_config(client_dir, scheduler).unwrap();
    let (a, b) = tokio::io::duplex(1 << 16);
    let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
    let served = tokio::spawn(async move {
        let mut tls = acceptor.accept(a).await.ok()?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await.ok()?;
        Some(())
    });
    let connector = tokio_rustls::TlsConnector::from(client);
    let name = ServerName::try_from("nas1").unwrap();
    if let Ok(mut tls) = connector.connect(name, b).await {
        let _ = tls.write_all(b"x").await;
        let _ = tls.flush().await;
    }
    served.await.unwrap().is_some()
}

#[test]
fn keys_can_go_to_a_node_folder_without_the_ca_key() {
    let (ca, node) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    init(ca.path()).unwrap();
    let order = Order {
        name: "nas1",
        role: Role::Agent,
        hosts: &[],
        days: 30,
        out: node.path(),
    };
    issue(ca.path(), &order).unwrap();
    assert!(node.path().join("nas1.key").exists());
    assert!(node.path().join("ca.pem").exists());
    assert!(!node.path().join("ca.key").exists());
    assert!(ca.path().join("issued/nas1.pem").exists());
}
