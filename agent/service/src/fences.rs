//! The highest lease epoch this agent has seen per resource, kept across restarts: a write
//! under a lower one comes from a scheduler that has lost the lease since, and is refused.
//!
//! Only schedulers advance an epoch: an agent pushing a run handed over to it carries the
//! scheduler's fence, which is checked but never raises what is kept, so no agent's key can
//! shut a scheduler out. The store is bounded: resource names are short, and past
//! [`MAX_RESOURCES`] the resources seen longest ago are forgotten.
//!
//! A record is only as good as the state folder it came from. In an active/passive cluster
//! the folder belongs on the clustered disk, beside the served data, so it moves with them;
//! one left on a node's own disk is older than the data once the other node has served
//! them, and no folder at all knows nothing. So each save stamps the served roots and the
//! state folder alike (a random value, in the roots' `trusted.ferry.state` attribute): at
//! start, a state folder whose stamp every root still carries was the last to serve them and
//! vouches for its records. Otherwise every record is in doubt, and so is every resource it
//! lacks: such a resource is admitted only under a fence its scheduler presents as confirmed
//! by the database (its lease's last renewal has not run out), never at the first epoch that
//! comes along.

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
/// The longest resource name accepted (`job:NAME`).
pub const MAX_RESOURCE_LEN: usize = 256;
/// The attribute of a served root naming the stamp of the state folder that last served it.
/// In the `trusted.` namespace: only root sees or sets it, and it is never replicated.
pub const STAMP_ATTRIBUTE: &str = "trusted.ferry.state";

/// The highest lease epoch seen per resource.
pub struct Fences {
    highest: Mutex<HashMap<String, Seen>>,
    file: Option<PathBuf>,
    /// The served roots, stamped at every save.
    roots: Vec<PathBuf>,
    /// Whether the state folder was the last to serve the roots, so that a resource without
    /// a record was never written here under a lease.
    vouched: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Seen {
    epoch: i64,
    /// When a scheduler last presented it, in seconds since the epoch.
    at: u64,
    /// Loaded from a state folder that cannot vouch for it, and not confirmed since.
    #[serde(default)]
    doubtful: bool,
}

/// What `fences.json` holds: the current form, or the ones before it (no stamp; epochs only).
#[derive(Deserialize)]
#[serde(untagged)]
enum Kept {
    Stamped {
        stamp: String,
        fences: HashMap<String, Seen>,
    },
    Seen(HashMap<String, Seen>),
    Epochs(HashMap<String, i64>),
}

#[derive(Serialize)]
struct Saved<'a> {
    stamp: &'a str,
    fences: &'a HashMap<String, Seen>,
}

/// Why a fence was refused: by a newer epoch, or for want of a confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// For the refusals metric: `stale_epoch` or `unconfirmed`.
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl Fences {
    /// Loads the fences kept in `dir`, if any, for an agent serving `roots`, and stamps both
    /// anew: from now on this folder is the one that last served them.
    pub fn load(dir: Option<&Path>, roots: &[PathBuf]) -> io::Result<Self> {
        let file = dir.map(|d| d.join("fences.json"));
        let (stamp, mut highest) = match &file {
            Some(path) => read_kept(path)?,
            None => (None, HashMap::new()),
        };
        let vouched = stamp.is_some_and(|stamp| {
            let carried = |root: &PathBuf| read_stamp(root).as_deref() == Some(stamp.as_str());
            roots.iter().all(carried)
        });
        if !vouched {
            highest.values_mut().for_each(|seen| seen.doubtful = true);
            if let Some(dir) = dir {
                tracing::warn!(
                    state_dir = %dir.display(),
                    "the state folder was not the last to serve these roots (a new folder, or \
                     one left behind on a cluster's other node): leases are admitted once their \
                     schedulers confirm them with the database"
                );
            }
        }
        let fences = Self {
            highest: Mutex::new(highest),
            file,
            roots: roots.to_vec(),
            vouched,
        };
        fences.save(&fences.highest.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(fences)
    }

    /// Admits work under `fence` from a peer of `role` unless a newer epoch of its resource
    /// has been seen, or (from a scheduler) the record of it is in doubt and the fence is not
    /// confirmed. A scheduler's newer epoch is remembered; an agent's is not.
    pub fn admit(&self, role: Role, fence: &Fence) -> Result<(), Refusal> {
        if fence.resource.len() > MAX_RESOURCE_LEN {
            return Err(Refusal {
                reason: "bad_fence",
                message: format!(
                    "a lease resource name of {} bytes; at most {MAX_RESOURCE_LEN} are accepted",
                    fence.resource.len()
                ),
            });
        }
        let mut highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        let seen = highest.get(&fence.resource).copied();
        if let Some(seen) = seen.filter(|seen| seen.epoch > fence.epoch) {
            return Err(Refusal {
                reason: "stale_epoch",
                message: format!(
                    "stale lease: {fence} is older than epoch {}, which another scheduler holds \
                     now; this scheduler lost the lease and must not write",
                    seen.epoch
                ),
            });
        }
        // An agent pushing a run handed over to it admitted the scheduler's fence itself,
        // doubts and all.
        if role != Role::Scheduler {
            return Ok(());
        }
        let doubtful = seen.map_or(!self.vouched, |seen| seen.doubtful);
        if doubtful && !fence.confirmed {
            return Err(self.unconfirmed(fence));
        }
        let kept = Seen {
            epoch: fence.epoch,
            at: now(),
            doubtful: false,
        };
        highest.insert(fence.resource.clone(), kept);
        // A newer epoch, or a doubt lifted, must outlive a restart; a mere sighting need not.
        if seen.is_none_or(|seen| seen.epoch < fence.epoch || seen.doubtful) {
            forget_oldest(&mut highest);
            self.save(&highest);
        }
        Ok(())
    }

    fn unconfirmed(&self, fence: &Fence) -> Refusal {
        let why = match &self.file {
            None => "it keeps no state folder (--state-dir)".to_owned(),
            Some(file) => format!(
                "its state folder {} is new, or was not the last to serve its roots",
                file.parent().unwrap_or(file).display()
            ),
        };
        Refusal {
            reason: "unconfirmed",
            message: format!(
                "{fence} is not confirmed: this agent cannot vouch for its record of the lease \
                 ({why}), and the scheduler could not confirm it with its database just now; \
                 the work is retried once the scheduler reaches its database"
            ),
        }
    }

    /// Stamps the roots, then keeps `highest` with the same stamp. A save cut off between the
    /// two leaves them differing, which costs confirmations at the next start, never safety.
    fn save(&self, highest: &HashMap<String, Seen>) {
        let Some(path) = &self.file else {
            return;
        };
        let stamp = format!("{:032x}", rand_u128());
        for root in &self.roots {
            if let Err(e) = write_stamp(root, &stamp) {
                tracing::warn!(root = %root.display(), error = %e, "could not stamp the root with \
                    the state folder's mark; leases will need confirming after a restart");
            }
        }
        let saved = Saved {
            stamp: &stamp,
            fences: highest,
        };
        if let Err(e) = save_json(path, &saved) {
            tracing::warn!(path = %path.display(), error = %e, "could not save the fences");
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.highest.lock().unwrap().len()
    }
}

/// The stamp and records kept at `path`; none when it does not exist.
fn read_kept(path: &Path) -> io::Result<(Option<String>, HashMap<String, Seen>)> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((None, HashMap::new())),
        Err(e) => return Err(e),
    };
    let kept = serde_json::from_slice(&bytes)
        .map_err(|e| io::Error::other(format!("{}: not a fences file ({e})", path.display())))?;
    Ok(match kept {
        Kept::Stamped { stamp, fences } => (Some(stamp), fences),
        Kept::Seen(seen) => (None, seen),
        Kept::Epochs(epochs) => {
            let seen = |epoch| Seen {
                epoch,
                at: now(),
                doubtful: false,
            };
            (
                None,
                epochs.into_iter().map(|(r, e)| (r, seen(e))).collect(),
            )
        }
    })
}

fn read_stamp(root: &Path) -> Option<String> {
    let mut value = [0u8; 64];
    let size = rustix::fs::getxattr(root, STAMP_ATTRIBUTE, &mut value).ok()?;
    String::from_utf8(value[..size].to_vec()).ok()
}

fn write_stamp(root: &Path, stamp: &str) -> io::Result<()> {
    let flags = rustix::fs::XattrFlags::empty();
    Ok(rustix::fs::setxattr(
        root,
        STAMP_ATTRIBUTE,
        stamp.as_bytes(),
        flags,
    )?)
}

fn rand_u128() -> u128 {
    uuid::Uuid::new_v4().as_u128()
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

/// Writes `value` to `path` crash-safely.
fn save_json(path: &Path, value: &impl serde::Serialize) -> io::Result<()> {
    write_durably(path, &serde_json::to_vec(value).map_err(io::Error::other)?)
}

/// Replaces `path` with `bytes` crash-safely (temporary file, fsync, rename): after a crash
/// it holds the old bytes or the new, never a mix.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(temp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fence its scheduler has just confirmed with the database.
    fn fence(resource: &str, epoch: i64) -> Fence {
        Fence {
            confirmed: true,
            ..Fence::new(resource, epoch)
        }
    }

    fn unconfirmed(resource: &str, epoch: i64) -> Fence {
        Fence::new(resource, epoch)
    }

    #[test]
    fn an_agent_cannot_advance_an_epoch_and_lock_the_scheduler_out() {
        let fences = Fences::load(None, &[]).unwrap();
        fences
            .admit(Role::Scheduler, &fence("job:docs", 4))
            .unwrap();
        // An agent's certificate with a forged epoch: checked, not kept.
        fences
            .admit(Role::Agent, &fence("job:docs", i64::MAX))
            .unwrap();
        fences
            .admit(Role::Scheduler, &unconfirmed("job:docs", 4))
            .unwrap();
        // A stale epoch is refused from anyone, confirmed or not.
        for role in [Role::Agent, Role::Scheduler] {
            let refusal = fences.admit(role, &fence("job:docs", 3)).unwrap_err();
            assert_eq!(refusal.reason, "stale_epoch");
        }
    }

    #[test]
    fn without_a_state_folder_a_lease_is_admitted_once_confirmed() {
        let fences = Fences::load(None, &[]).unwrap();
        let refusal = fences
            .admit(Role::Scheduler, &unconfirmed("job:docs", 3))
            .unwrap_err();
        assert_eq!(refusal.reason, "unconfirmed");
        assert!(refusal.message.contains("--state-dir"), "{refusal}");
        // An agent pushing a run handed over checked the scheduler's fence itself.
        fences
            .admit(Role::Agent, &unconfirmed("job:docs", 3))
            .unwrap();
        assert!(
            (fences.admit(Role::Scheduler, &unconfirmed("job:docs", 3))).is_err(),
            "an agent's fence vouches for nothing"
        );
        fences
            .admit(Role::Scheduler, &fence("job:docs", 3))
            .unwrap();
        // Confirmed once by a scheduler, the record vouches for the lease.
        fences
            .admit(Role::Scheduler, &unconfirmed("job:docs", 3))
            .unwrap();
    }

    #[test]
    fn a_state_folder_vouches_only_while_it_was_the_last_to_serve_the_roots() {
        let root = tempfile::tempdir().unwrap();
        let roots = [root.path().to_path_buf()];
        let (active, passive) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // The passive node's folder, last used a while ago: it saw epoch 2.
        let stale = Fences::load(Some(passive.path()), &roots).unwrap();
        stale.admit(Role::Scheduler, &fence("job:docs", 2)).unwrap();
        drop(stale);
        // The active node served the roots since and saw epoch 5.
        let current = Fences::load(Some(active.path()), &roots).unwrap();
        current
            .admit(Role::Scheduler, &fence("job:docs", 5))
            .unwrap();
        drop(current);

        // Restarted on the active node's folder (on the clustered disk): it vouches.
        let restarted = Fences::load(Some(active.path()), &roots).unwrap();
        restarted
            .admit(Role::Scheduler, &unconfirmed("job:docs", 5))
            .unwrap();
        restarted
            .admit(Role::Scheduler, &unconfirmed("job:new", 1))
            .unwrap();
        drop(restarted);

        // The passive node's folder was not the last to serve the roots: a scheduler that lost
        // the lease at epoch 4 is refused unless the database confirms it, which it will not.
        let failed_over = Fences::load(Some(passive.path()), &roots).unwrap();
        let refusal = failed_over
            .admit(Role::Scheduler, &unconfirmed("job:docs", 4))
            .unwrap_err();
        assert_eq!(refusal.reason, "unconfirmed");
        assert!(
            refusal
                .message
                .contains(&passive.path().display().to_string()),
            "{refusal}"
        );
        assert!(
            failed_over
                .admit(Role::Scheduler, &unconfirmed("job:other", 1))
                .is_err(),
            "a resource it has no record of is in doubt too"
        );
        failed_over
            .admit(Role::Scheduler, &fence("job:docs", 5))
            .unwrap();
        drop(failed_over);
        // The confirmation was kept, with a stamp the roots now carry.
        let again = Fences::load(Some(passive.path()), &roots).unwrap();
        again
            .admit(Role::Scheduler, &unconfirmed("job:docs", 5))
            .unwrap();
    }

    #[test]
    fn the_store_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let fences = Fences::load(Some(dir.path()), &[]).unwrap();
        let long = "x".repeat(MAX_RESOURCE_LEN + 1);
        assert!(fences.admit(Role::Scheduler, &fence(&long, 1)).is_err());
        let mut highest = fences.highest.lock().unwrap();
        for i in 0..MAX_RESOURCES + 50 {
            let seen = Seen {
                epoch: 1,
                at: i as u64,
                doubtful: false,
            };
            highest.insert(format!("job:{i}"), seen);
        }
        forget_oldest(&mut highest);
        assert_eq!(highest.len(), MAX_RESOURCES);
        assert!(!highest.contains_key("job:0"), "the oldest goes first");
        assert!(highest.contains_key(&format!("job:{}", MAX_RESOURCES + 49)));
    }

    #[test]
    fn fences_kept_by_an_older_agent_still_load_in_doubt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fences.json"), r#"{"job:docs": 7}"#).unwrap();
        let fences = Fences::load(Some(dir.path()), &[]).unwrap();
        assert!(
            fences
                .admit(Role::Scheduler, &fence("job:docs", 6))
                .is_err()
        );
        assert_eq!(fences.len(), 1);
        let refusal = fences
            .admit(Role::Scheduler, &unconfirmed("job:docs", 7))
            .unwrap_err();
        assert_eq!(refusal.reason, "unconfirmed");
    }
}
