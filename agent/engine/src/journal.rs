//! A replica's change journal, as a run sees it: where the journal stood at the last run (a
//! [`Mark`]), and which paths changed since. An agent keeps one per served root, fed by its
//! file watcher; a run that may trust every replica's answer looks at those paths only,
//! instead of scanning whole trees that barely changed.
//!
//! The journal is a hint with a strict rule: it answers only for an interval its watch ran
//! through unbroken. An overflow, a restart, a mount or unmount below the root, or a network
//! file system makes it say "I cannot tell", and the run scans everything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often a job whose replicas keep journals scans everything all the same, unless told
/// otherwise: a daily check that the journals missed nothing.
pub const FULL_SCAN_EVERY: Duration = Duration::from_secs(24 * 60 * 60);

/// Where a journal stood: its identity (a new one each time its watch starts) and the
/// generation it had reached. Changes noticed later have higher generations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub journal: String,
    pub generation: u64,
}

/// A replica's answer to "what changed since this mark".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Journaled {
    /// The replica keeps no journal: every run scans it whole.
    Unjournaled,
    /// The journal stands at `now`; `changed` holds the paths (relative to the replica, each
    /// covering what lies under it) changed since the mark asked about, or `None` when the
    /// journal cannot tell (no mark, another journal's mark, a watch broken since).
    At {
        now: Mark,
        changed: Option<Vec<PathBuf>>,
    },
}

/// A change journal over a root, shared by the replicas opened in it.
pub trait ChangeJournal: Send + Sync + std::fmt::Debug {
    /// What changed in `folder` (relative to the journal's root) since `mark`, with the
    /// paths made relative to `folder`.
    fn changes_since(&self, folder: &Path, mark: Option<&Mark>) -> Journaled;
}
