//! Who a peer is: the name and role its certificate says, never what it claims in a message.
//!
//! `ferry ca issue --role` writes the role into the certificate as a subject alternative name
//! URI, `ferry:role=scheduler` or `ferry:role=agent`; the name is the certificate's common
//! name. The CA signed both, so neither can be chosen by the peer.

use std::fmt;
use std::str::FromStr;

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The subject alternative name URI that carries a certificate's role, before the role.
pub const ROLE_URI_PREFIX: &str = "ferry:role=";

/// What a certificate lets its holder be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Runs schedules and monitors: reads and writes agents' folders under a lease, hands runs
    /// over to agents, watches folders.
    Scheduler,
    /// Serves folders; writes into another agent's folders only as the destination of a run
    /// a scheduler handed over to it.
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Scheduler => "scheduler",
            Role::Agent => "agent",
        }
    }

    /// The URI that carries this role in a certificate.
    pub fn uri(self) -> String {
        format!("{ROLE_URI_PREFIX}{}", self.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "scheduler" => Ok(Role::Scheduler),
            "agent" => Ok(Role::Agent),
            other => Err(format!("unknown role {other:?}: scheduler or agent")),
        }
    }
}

/// A peer as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    pub name: String,
    pub role: Role,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.role, self.name)
    }
}

/// The peer a certificate (already verified against the CA) names.
pub fn of(certificate: &CertificateDer<'_>) -> Result<Peer, String> {
    let (_, cert) = X509Certificate::from_der(certificate.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("the certificate has no common name")?
        .to_owned();
    let uris = cert
        .subject_alternative_name()
        .map_err(|e| format!("unreadable certificate names: {e}"))?
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    let mut roles = uris.iter().filter_map(|general| match general {
        GeneralName::URI(uri) => uri.strip_prefix(ROLE_URI_PREFIX),
        _ => None,
    });
    let role = match (roles.next(), roles.next()) {
        (Some(role), None) => role.parse()?,
        (Some(_), Some(_)) => return Err(format!("the certificate of {name} has two roles")),
        (None, _) => {
            return Err(format!(
                "the certificate of {name} has no ferry role (made before roles existed?); \
                 issue a new one with `ferry ca issue --role scheduler|agent {name}`"
            ));
        }
    };
    Ok(Peer { name, role })
}

/// The serial number of the certificate in `pem`, as its bytes.
pub fn serial_of_pem(pem: &[u8]) -> Result<Vec<u8>, String> {
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem).map_err(|e| e.to_string())?;
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    Ok(cert.raw_serial().to_vec())
}
