//! `ferry ca`: a private certificate authority for mutual TLS between schedulers and agents.
//! `init` makes `ca.pem` and `ca.key`; `issue` makes `NAME.pem` and `NAME.key` for a scheduler
//! or an agent, valid for both ends of a connection (each side proves itself to the other) and
//! for the names and addresses it is reached by. Keys are written readable by their owner only.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(
        "{0} already exists; a new CA would invalidate every certificate it issued (remove it to start over)"
    )]
    Exists(PathBuf),
    #[error("no CA in {0}: run `ferry ca init --dir {0}` first")]
    NoCa(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0:?} is not a usable certificate name: use letters, digits, '-', '_' and '.'")]
    BadName(String),
}

/// Creates the CA in `dir` (made if missing); refuses to replace an existing one.
pub fn init(dir: &Path) -> Result<PathBuf, CaError> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca.key"));
    if cert_path.exists() || key_path.exists() {
        return Err(CaError::Exists(cert_path));
    }
    fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.into(),
        source,
    })?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = named("ferry CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(cert_path)
}

/// Issues a certificate for `name` (a scheduler or agent), also valid for `hosts` (DNS names
/// or IP addresses), signed by the CA in `dir`.
pub fn issue(dir: &Path, name: &str, hosts: &[String]) -> Result<PathBuf, CaError> {
    if name.is_empty()
        || name == "ca"
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(CaError::BadName(name.into()));
    }
    let read = |path: PathBuf| {
        fs::read_to_string(&path).map_err(|_| CaError::NoCa(dir.display().to_string()))
    };
    let ca_key = KeyPair::from_pem(&read(dir.join("ca.key"))?)?;
    let issuer = Issuer::from_ca_cert_pem(&read(dir.join("ca.pem"))?, ca_key)?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    if cert_path.exists() {
        return Err(CaError::Exists(cert_path));
    }
    let names: Vec<String> = std::iter::once(name.to_owned())
        .chain(hosts.iter().cloned())
        .collect();
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = named(name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(cert_path)
}

fn named(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

/// Writes a file that must not exist yet, with `mode` from the start (a key is never readable
/// by others, not even for a moment).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let io = |source| CaError::Io {
        path: path.into(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io)
}

#[cfg(test)]
mod tests;
