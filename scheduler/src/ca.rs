//! `ferry ca`: a private certificate authority for mutual TLS between schedulers and agents.
//!
//! `init` makes `ca.pem` and `ca.key` (valid ten years). `issue` makes `NAME.pem` and
//! `NAME.key` for one role, a scheduler or an agent (see [`ferry_wire::identity`]), valid for a
//! bounded time and for the names and addresses it is reached by; a copy of each certificate
//! stays in the CA's `issued/` folder. `revoke` adds a certificate to `ca.crl`, which agents
//! and schedulers load from their TLS folder. Keys are written readable by their owner only,
//! and may go to another folder than the CA's (`--out`), so `ca.key` never needs to be where
//! a node's key is.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ferry_wire::identity::{self, Role};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

/// How long the CA itself is valid.
const CA_DAYS: i64 = 3650;
/// How far back a certificate's validity starts: a node whose clock is a little behind the
/// CA's still accepts it.
const CLOCK_SLACK: Duration = Duration::hours(1);

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
    #[error("no certificate issued to {name} in {dir}/issued: nothing to revoke")]
    NotIssued { name: String, dir: PathBuf },
    #[error("{path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
}

/// What `ferry ca issue` makes.
pub struct Order<'a> {
    pub name: &'a str,
    pub role: Role,
    /// Other DNS names or IP addresses the holder is reached by.
    pub hosts: &'a [String],
    pub days: u32,
    /// Where `NAME.pem`, `NAME.key` and a copy of `ca.pem` go.
    pub out: &'a Path,
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
    valid_for(&mut params, CA_DAYS);
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

/// Issues a certificate for `order`, signed by the CA in `dir`.
pub fn issue(dir: &Path, order: &Order<'_>) -> Result<PathBuf, CaError> {
    let name = order.name;
    if name.is_empty()
        || name == "ca"
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(CaError::BadName(name.into()));
    }
    let issuer = issuer(dir)?;
    let (cert_path, key_path) = (
        order.out.join(format!("{name}.pem")),
        order.out.join(format!("{name}.key")),
    );
    if cert_path.exists() {
        return Err(CaError::Exists(cert_path));
    }
    let names: Vec<String> = std::iter::once(name.to_owned())
        .chain(order.hosts.iter().cloned())
        .collect();
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name = named(name);
    let role = order.role.uri().try_into()?;
    params.subject_alt_names.push(SanType::URI(role));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // A scheduler only connects; an agent is connected to, and connects to other agents to
    // push a run handed over to it.
    params.extended_key_usages = match order.role {
        Role::Scheduler => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Role::Agent => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    valid_for(&mut params, order.days.into());
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    create_dir(order.out)?;
    let issued = dir.join("issued");
    create_dir(&issued)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
    // Kept by the CA for `revoke`; replaced when the name is issued again.
    let record = issued.join(format!("{name}.pem"));
    fs::write(&record, cert.pem()).map_err(|source| CaError::Io {
        path: record,
        source,
    })?;
    if order.out != dir {
        for shared in ["ca.pem", "ca.crl"] {
            copy_if_present(&dir.join(shared), &order.out.join(shared))?;
        }
    }
    Ok(cert_path)
}

/// One revoked certificate, as `revoked.json` in the CA's folder keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct Revoked {
    name: String,
    /// The certificate's serial number, in hex.
    serial: String,
    /// When it was revoked, in seconds since the epoch.
    at: i64,
}

/// Revokes the certificate last issued to `name` and rewrites `ca.crl` with every revoked
/// certificate; returns the CRL's path. Copy it into each node's TLS folder: agents and
/// schedulers read it again when it changes.
pub fn revoke(dir: &Path, name: &str) -> Result<PathBuf, CaError> {
    let record = dir.join("issued").join(format!("{name}.pem"));
    let pem = fs::read_to_string(&record).map_err(|_| CaError::NotIssued {
        name: name.into(),
        dir: dir.into(),
    })?;
    let unreadable = |reason: String| CaError::Unreadable {
        path: record.clone(),
        reason,
    };
    let serial = identity::serial_of_pem(pem.as_bytes()).map_err(unreadable)?;
    let list_path = dir.join("revoked.json");
    let mut revoked: Vec<Revoked> = match fs::read(&list_path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| CaError::Unreadable {
            path: list_path.clone(),
            reason: e.to_string(),
        })?,
        Err(_) => Vec::new(),
    };
    let serial = hex(&serial);
    if !revoked.iter().any(|r| r.serial == serial) {
        revoked.push(Revoked {
            name: name.into(),
            serial,
            at: OffsetDateTime::now_utc().unix_timestamp(),
        });
    }
    let crl = revocation_list(dir, &revoked)?;
    let json = serde_json::to_vec_pretty(&revoked).expect("a list of strings and numbers");
    replace(&list_path, &json)?;
    let crl_path = dir.join("ca.crl");
    replace(&crl_path, crl.as_bytes())?;
    Ok(crl_path)
}

fn revocation_list(dir: &Path, revoked: &[Revoked]) -> Result<String, CaError> {
    let now = OffsetDateTime::now_utc();
    let revoked_certs = revoked
        .iter()
        .map(|r| RevokedCertParams {
            serial_number: SerialNumber::from(unhex(&r.serial)),
            revocation_time: OffsetDateTime::from_unix_timestamp(r.at).unwrap_or(now),
            reason_code: Some(RevocationReason::Unspecified),
            invalidity_date: None,
        })
        .collect();
    let params = CertificateRevocationListParams {
        this_update: now,
        // ferry does not enforce a CRL's next update: a list stays in force until replaced.
        next_update: now + Duration::days(CA_DAYS),
        crl_number: SerialNumber::from(revoked.len() as u64),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(&issuer(dir)?)?.pem()?)
}

/// The CA in `dir`, ready to sign.
fn issuer(dir: &Path) -> Result<Issuer<'static, KeyPair>, CaError> {
    let read = |path: PathBuf| {
        fs::read_to_string(&path).map_err(|_| CaError::NoCa(dir.display().to_string()))
    };
    let ca_key = KeyPair::from_pem(&read(dir.join("ca.key"))?)?;
    Ok(Issuer::from_ca_cert_pem(
        &read(dir.join("ca.pem"))?,
        ca_key,
    )?)
}

fn valid_for(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - CLOCK_SLACK;
    params.not_after = now + Duration::days(days);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn create_dir(dir: &Path) -> Result<(), CaError> {
    fs::create_dir_all(dir).map_err(|source| CaError::Io {
        path: dir.into(),
        source,
    })
}

fn copy_if_present(from: &Path, to: &Path) -> Result<(), CaError> {
    match fs::read(from) {
        Ok(bytes) => replace(to, &bytes),
        Err(_) => Ok(()),
    }
}

/// Writes `path` whole or not at all (temporary file, rename).
fn replace(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    let temp = path.with_extension("tmp");
    fs::write(&temp, bytes)
        .and_then(|()| fs::rename(&temp, path))
        .map_err(|source| CaError::Io {
            path: path.into(),
            source,
        })
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
