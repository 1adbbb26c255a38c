//! The highest lease epoch this agent has seen per resource, kept across restarts: a write
//! under a lower one comes from a scheduler that has lost the lease since, and is refused.
//!
//! Only schedulers advance an epoch: an agent pushing a run handed over to it carries the
//! scheduler's fence, which is checked but never raises what is kept, so no agent's key can
//! shut a scheduler out. The store is bounded: resource names are short, and past
//! [`MAX_RESOURCES`] the resources seen longest ago are forgotten.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use ferry_engine::Fence;
use ferry_wire::identity::Role;

/// Resources remembered at most; a schedule or monitor forgotten this way had not been seen
/// for longer than any other.
pub const MAX_RESOURCES: usize = 10_000;
/// The longest resource name accepted (`schedule:NAME`, `monitor:NAME`).
pub const MAX_RESOURCE_LEN: usize = 256;

/// The highest lease epoch seen per resource.
pub struct Fences {
    highest: Mutex<HashMap<String, Seen>>,
    file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Seen {
    epoch: i64,
    /// When a scheduler last presented it, in seconds since the epoch.
    at: u64,
}

/// What `fences.json` holds: the current form, or the one before it (epochs only).
#[derive(Deserialize)]
#[serde(untagged)]
enum Kept {
    Seen(HashMap<String, Seen>),
    Epochs(HashMap<String, i64>),
}

impl Fences {
    /// Loads the fences kept in `dir`, if any.
    pub fn load(dir: Option<&Path>) -> io::Result<Self> {
        let file = dir.map(|d| d.join("fences.json"));
        let highest = match &file {
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice(&bytes).map_err(io::Error::other)? {
                    Kept::Seen(seen) => seen,
                    Kept::Epochs(epochs) => (epochs.into_iter())
                        .map(|(resource, epoch)| (resource, Seen { epoch, at: now() }))
                        .collect(),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
                Err(e) => return Err(e),
            },
            None => HashMap::new(),
        };
        Ok(Self {
            highest: Mutex::new(highest),
            file,
        })
    }

    /// Admits work under `fence` from a peer of `role` unless a newer epoch of its resource
    /// has been seen. A scheduler's newer epoch is remembered; an agent's is not.
    pub fn admit(&self, role: Role, fence: &Fence) -> Result<(), String> {
        if fence.resource.len() > MAX_RESOURCE_LEN {
            return Err(format!(
                "a lease resource name of {} bytes; at most {MAX_RESOURCE_LEN} are accepted",
                fence.resource.len()
            ));
        }
        let mut highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        let seen = highest.get(&fence.resource).map(|s| s.epoch);
        match seen {
            Some(seen) if seen > fence.epoch => Err(format!(
                "stale lease: {} epoch {} is older than epoch {seen}, which another scheduler \
                 holds now; this scheduler lost the lease and must not write",
                fence.resource, fence.epoch
            )),
            _ if role != Role::Scheduler => Ok(()),
            Some(seen) if seen == fence.epoch => {
                if let Some(kept) = highest.get_mut(&fence.resource) {
                    kept.at = now();
                }
                Ok(())
            }
            _ => {
                let kept = Seen {
                    epoch: fence.epoch,
                    at: now(),
                };
                highest.insert(fence.resource.clone(), kept);
                forget_oldest(&mut highest);
                if let Some(path) = &self.file
                    && let Err(e) = save_json(path, &*highest)
                {
                    tracing::warn!(path = %path.display(), error = %e, "could not save the fences");
                }
                Ok(())
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.highest.lock().unwrap().len()
    }
}

/// Keeps the store at [`MAX_RESOURCES`]: the resources seen longest ago go first.
fn forget_oldest(highest: &mut HashMap<String, Seen>) {
    let excess = highest.len().saturating_sub(MAX_RESOURCES);
    if excess == 0 {
        return;
    }
    let mut by_age: Vec<(u64, String)> = highest.iter().map(|(r, s)| (s.at, r.clone())).collect();
    by_age.sort_unstable();
    for (_, resource) in by_age.into_iter().take(excess) {
        highest.remove(&resource);
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes `value` to `path` crash-safely (temporary file, fsync, rename).
fn save_json(path: &Path, value: &impl serde::Serialize) -> io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(resource: &str, epoch: i64) -> Fence {
        Fence {
            resource: resource.into(),
            epoch,
        }
    }

    #[test]
    fn an_agent_cannot_advance_an_epoch_and_lock_the_scheduler_out() {
        let fences = Fences::load(None).unwrap();
        fences
            .admit(Role::Scheduler, &fence("schedule:docs", 4))
            .unwrap();
        // An agent's certificate with a forged epoch: checked, not kept.
        fences
            .admit(Role::Agent, &fence("schedule:docs", i64::MAX))
            .unwrap();
        fences
            .admit(Role::Scheduler, &fence("schedule:docs", 4))
            .unwrap();
        // A stale epoch is refused from anyone.
        assert!(
            fences
                .admit(Role::Agent, &fence("schedule:docs", 3))
                .is_err()
        );
        assert!(
            fences
                .admit(Role::Scheduler, &fence("schedule:docs", 3))
                .is_err()
        );
    }

    #[test]
    fn the_store_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let fences = Fences::load(Some(dir.path())).unwrap();
        let long = "x".repeat(MAX_RESOURCE_LEN + 1);
        assert!(fences.admit(Role::Scheduler, &fence(&long, 1)).is_err());
        let mut highest = fences.highest.lock().unwrap();
        for i in 0..MAX_RESOURCES + 50 {
            let seen = Seen {
                epoch: 1,
                at: i as u64,
            };
            highest.insert(format!("schedule:{i}"), seen);
        }
        forget_oldest(&mut highest);
        assert_eq!(highest.len(), MAX_RESOURCES);
        assert!(!highest.contains_key("schedule:0"), "the oldest goes first");
        assert!(highest.contains_key(&format!("schedule:{}", MAX_RESOURCES + 49)));
    }

    #[test]
    fn fences_kept_by_an_older_agent_still_load() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fences.json"), r#"{"schedule:docs": 7}"#).unwrap();
        let fences = Fences::load(Some(dir.path())).unwrap();
        assert!(
            fences
                .admit(Role::Scheduler, &fence("schedule:docs", 6))
                .is_err()
        );
        assert_eq!(fences.len(), 1);
    }
}
