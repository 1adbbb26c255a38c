//! The scheduler service's settings: defaults, then a TOML file (`--config`), then flags.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// This scheduler's name, unique among live schedulers. Default: the host name.
    pub name: Option<String>,
    /// How long a lease lasts without renewal. A crashed scheduler's work moves after at most
    /// this long. Default 3s; raise it on a database far away.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How often the scheduler heartbeats and renews its leases. At most half of `lease_ttl`
    /// (checked); a third or less leaves room for one renewal that comes late. Default 1s.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How often definitions are re-read (SQLite; PostgreSQL also wakes on NOTIFY). Default 1s.
    #[serde(with = "humantime_serde")]
    pub poll: Duration,
    /// How long a restarted scheduler must stay alive before work returns to it. Default 2s;
    /// set in the config file only (there is no flag).
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// How long finished runs (and their events) are kept; older ones are deleted about once
    /// an hour. Default 30 days.
    #[serde(with = "humantime_serde")]
    pub keep_runs: Duration,
    /// Folder with `ca.pem`, `NAME.pem` and `NAME.key` (from `ferry ca`), to reach agents as
    /// this scheduler's name. Without it, jobs on agents are reported as problems.
    pub tls_dir: Option<PathBuf>,
    /// The folders on this machine its jobs may read and write (`--allow`): a job naming a
    /// local path outside them fails, and nothing is touched. None by default; `/` only when
    /// named. Anyone who can write job rows can make a scheduler use these folders.
    pub allow: Vec<PathBuf>,
    /// Where to serve Prometheus metrics (`/metrics`), liveness (`/healthz`) and readiness
    /// (`/readyz`), e.g. `127.0.0.1:9034`. Not served by default.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The folder of the programs jobs may name as their `on_failure` hook (by name only).
    /// Without it, only webhooks are called.
    pub hook_dir: Option<PathBuf>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            name: None,
            lease_ttl: Duration::from_secs(3),
            heartbeat: Duration::from_secs(1),
            poll: Duration::from_secs(1),
            settle: Duration::from_secs(2),
            keep_runs: Duration::from_secs(30 * 24 * 3600),
            tls_dir: None,
            allow: Vec::new(),
            metrics_listen: None,
            hook_dir: None,
        }
    }
}

/// A hook folder's programs run as this scheduler's user at the word of whoever writes job
/// rows: the folder must be one only its owner can change.
fn check_hook_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let problem = |why: &str| format!("hook-dir {}: {why}", dir.display());
    if !dir.is_absolute() {
        return Err(problem("name the folder by its absolute path"));
    }
    let meta = std::fs::metadata(dir).map_err(|e| problem(&e.to_string()))?;
    if !meta.is_dir() {
        return Err(problem("not a folder"));
    }
    if meta.permissions().mode() & 0o022 != 0 {
        return Err(problem("others can write to it; chmod go-w it"));
    }
    Ok(())
}

impl ServiceConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// Checks the timing rules that keep leases safe.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat.is_zero() || self.lease_ttl.is_zero() || self.poll.is_zero() {
            return Err("lease-ttl, heartbeat and poll must be greater than zero".into());
        }
        if let Some(dir) = &self.hook_dir {
            check_hook_dir(dir)?;
        }
        if let Some(relative) = self.allow.iter().find(|dir| !dir.is_absolute()) {
            return Err(format!(
                "allow {}: name the folder by its absolute path",
                relative.display()
            ));
        }
        if self.heartbeat * 2 > self.lease_ttl {
            return Err(format!(
                "heartbeat ({}) must be at most half of lease-ttl ({}), or leases expire between renewals",
                humantime::format_duration(self.heartbeat),
                humantime::format_duration(self.lease_ttl)
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_folder_others_can_write_to_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = |dir: &Path| ServiceConfig {
            hook_dir: Some(dir.to_owned()),
            ..ServiceConfig::default()
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(config(dir.path()).validate(), Ok(()));
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let refused = config(dir.path()).validate().unwrap_err();
        assert!(refused.contains("others can write to it"), "{refused}");
        assert!(
            config(Path::new("hooks")).validate().is_err(),
            "a relative folder"
        );
    }

    #[test]
    fn a_config_file_reads_human_durations() {
        let config: ServiceConfig =
            toml::from_str("name = \"s1\"\nlease_ttl = \"6s\"\nheartbeat = \"500ms\"").unwrap();
        assert_eq!(config.name.as_deref(), Some("s1"));
        assert_eq!(config.lease_ttl, Duration::from_secs(6));
        assert_eq!(config.heartbeat, Duration::from_millis(500));
        assert_eq!(
            config.poll,
            Duration::from_secs(1),
            "unset fields keep their default"
        );
    }

    #[test]
    fn unsafe_timing_is_refused() {
        let config = ServiceConfig {
            heartbeat: Duration::from_secs(2),
            ..Default::default()
        };
        assert!(config.validate().unwrap_err().contains("at most half"));
        assert!(
            toml::from_str::<ServiceConfig>("lease_tll = \"3s\"").is_err(),
            "typos are errors"
        );
    }
}
