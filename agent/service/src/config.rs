//! What an agent serves and to whom: its configuration file (TOML) and the flags beside it.
//!
//! ```toml
//! name = "nas1"
//! listen = "0.0.0.0:9033"
//! tls_dir = "/etc/ferry/tls"
//! state_dir = "/var/lib/ferry-agent"
//! full_scan_every = "24h"   # runs handed over look only at what the change journals say
//!                           # changed, and scan everything this often; "off": every time
//!
//! [[root]]
//! path = "/srv/docs"
//! read = ["s1", "s2"]   # schedulers that may read it; left out: every scheduler
//! write = ["s1"]        # schedulers that may write it (and so read it); left out: every scheduler
//! handover = ["nas2"]   # agents that may write into it as the destination of a run a
//!                       # scheduler handed over to them; left out: every agent
//!
//! [peers]               # the agents this one may push a handed-over run to, and where
//! nas2 = "nas2.example.com:9033"
//!
//! [limits]
//! max_connections = 256
//! ```
//!
//! A peer's name and role come from its certificate ([`ferry_wire::identity`]). Agents never
//! act as schedulers: they cannot hand runs over, watch folders or advance a lease's fence.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use ferry_wire::identity::{Peer, Role};

/// The configuration file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub tls_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "full_scan_every")]
    pub full_scan_every: Option<FullScanEvery>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    #[serde(default, rename = "root")]
    pub roots: Vec<ServedRoot>,
    #[serde(default)]
    pub peers: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: Limits,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// How often a run handed over scans everything although the change journals could say
/// what changed (`None`: every time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullScanEvery(pub Option<Duration>);

impl Default for FullScanEvery {
    fn default() -> Self {
        Self(Some(ferry_engine::journal::FULL_SCAN_EVERY))
    }
}

/// `24h`, `90m`, `30s`, `2d`, or `off`.
pub fn parse_full_scan_every(text: &str) -> Result<FullScanEvery, String> {
    if text == "off" {
        return Ok(FullScanEvery(None));
    }
    let unit = match text.chars().last() {
        Some('s') => 1,
        Some('m') => 60,
        Some('h') => 3600,
        Some('d') => 86400,
        _ => 0,
    };
    let count = text[..text.len().saturating_sub(1)].parse::<u64>().ok();
    match count.filter(|n| unit > 0 && *n > 0) {
        Some(n) => Ok(FullScanEvery(Some(Duration::from_secs(n * unit)))),
        None => Err(format!(
            "{text:?} is not a duration: write a whole number and s, m, h or d (24h), or off"
        )),
    }
}

fn full_scan_every<'de, D: serde::Deserializer<'de>>(
    text: D,
) -> Result<Option<FullScanEvery>, D::Error> {
    let text = String::deserialize(text)?;
    parse_full_scan_every(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// A folder this agent serves, and who may use it. A list left out means everyone of that
/// role; an empty list, no one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedRoot {
    pub path: PathBuf,
    pub read: Option<Vec<String>>,
    pub write: Option<Vec<String>>,
    pub handover: Option<Vec<String>>,
}

/// What a peer may do in a root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rights {
    pub read: bool,
    pub write: bool,
}

impl ServedRoot {
    /// A root given by `--root`: every scheduler may read and write it, every agent write
    /// into it as a hand-over destination.
    pub fn open_to_all(path: PathBuf) -> Self {
        Self {
            path,
            read: None,
            write: None,
            handover: None,
        }
    }

    pub fn rights(&self, peer: &Peer) -> Rights {
        let listed = |names: &Option<Vec<String>>| {
            names
                .as_ref()
                .is_none_or(|names| names.contains(&peer.name))
        };
        match peer.role {
            // Writing a folder needs reading it: a mirror compares before it writes.
            Role::Scheduler => {
                let write = listed(&self.write);
                Rights {
                    read: write || listed(&self.read),
                    write,
                }
            }
            // A hand-over destination is read (scanned, compared) as well as written.
            Role::Agent => {
                let handover = listed(&self.handover);
                Rights {
                    read: handover,
                    write: handover,
                }
            }
        }
    }
}

/// Bounds on what peers may make an agent hold.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections open at once, from everyone.
    pub max_connections: usize,
    /// Connections open at once from one network address (before it is known who it is).
    pub max_connections_per_address: usize,
    /// Folder watches open at once for one peer.
    pub max_watches_per_peer: usize,
    /// Seconds a new connection has to finish its TLS handshake and say Hello.
    pub handshake_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 512,
            max_connections_per_address: 64,
            max_watches_per_peer: 16,
            handshake_seconds: 10,
        }
    }
}

impl Limits {
    pub fn handshake_deadline(&self) -> Duration {
        Duration::from_secs(self.handshake_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, role: Role) -> Peer {
        Peer {
            name: name.into(),
            role,
        }
    }

    #[test]
    fn roots_grant_what_their_lists_say_and_write_implies_read() {
        let config: FileConfig = toml::from_str(
            r#"
            [[root]]
            path = "/srv/docs"
            read = ["s2"]
            write = ["s1"]
            handover = []
            "#,
        )
        .unwrap();
        let root = &config.roots[0];
        let (s1, s2, s3) = (
            peer("s1", Role::Scheduler),
            peer("s2", Role::Scheduler),
            peer("s3", Role::Scheduler),
        );
        assert_eq!(
            root.rights(&s1),
            Rights {
                read: true,
                write: true
            }
        );
        assert_eq!(
            root.rights(&s2),
            Rights {
                read: true,
                write: false
            }
        );
        assert_eq!(root.rights(&s3), Rights::default());
        assert_eq!(root.rights(&peer("nas2", Role::Agent)), Rights::default());
        // A scheduler listed as a hand-over agent gains nothing: roles are not names.
        let open = ServedRoot::open_to_all("/srv".into());
        assert_eq!(
            open.rights(&peer("nas2", Role::Agent)),
            Rights {
                read: true,
                write: true
            }
        );
    }

    #[test]
    fn unknown_keys_are_refused_rather_than_ignored() {
        let typo = toml::from_str::<FileConfig>("[[root]]\npath = \"/srv\"\nwrites = [\"s1\"]\n");
        assert!(typo.unwrap_err().to_string().contains("writes"));
    }
}
