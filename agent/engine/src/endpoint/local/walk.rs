//! A scan's walk over several threads. Workers list folders (read their names, then ask each
//! entry's attributes) ahead of the walker, which hands the entries on in a tree's order. A
//! cold disk answers one inode read at a time per thread: a scan that asks on several keeps
//! the disk's queue full, and on a warm one the `statx` calls of a million-file share run on
//! every core.
//!
//! Workers take the first folder in a tree's order that is still to be listed, which is the
//! next the walker needs or close to it, and stop while enough entries wait for the walker ([`Pace`]):
//! walking ahead must not gather the tree the streamed scan avoids holding. The walker lists a
//! folder itself when no worker has taken it yet, so the bound never leaves it waiting.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::{EachEntry, LocalEndpoint, Result, is_orphan_temp};
use crate::beneath::{self, Root};
use crate::filter::Filter;
use crate::tree::{Entry, MAX_SCANNED_PATH};

/// How a walk runs: `workers` threads list folders beside the walker (with 0 the walker lists
/// every folder itself), and wait while `ahead` entries listed wait for the walker.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pace {
    pub(super) workers: usize,
    pub(super) ahead: usize,
}

impl Default for Pace {
    /// A worker a core, 2 to 8 (enough to keep a disk's queue busy), and 65,536 entries
    /// ahead (about 130 bytes each).
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |cores| cores.get());
        Self {
            workers: cores.clamp(2, 8),
            ahead: 1 << 16,
        }
    }
}

/// What a folder holds that the filter admits, in name order, each with its path.
type Listing = Vec<(PathBuf, Entry)>;

/// The folders of one walk, between the walker and the workers.
struct Folders {
    state: Mutex<State>,
    changed: Condvar,
    /// Entries listed ahead of the walker, at most, before a worker takes another folder.
    ahead: usize,
}

#[derive(Default)]
struct State {
    /// Folders found and not taken yet, in a tree's order.
    queued: BTreeSet<PathBuf>,
    /// Folders listed by a worker, until the walker takes them.
    listed: HashMap<PathBuf, Result<Listing>>,
    /// Entries in `listed`.
    ahead: usize,
    /// The walk ended, done or failed: the workers stop.
    over: bool,
}

impl LocalEndpoint {
    /// Hands `top` (a folder, already handed on itself, or the root) and what lies below it
    /// to `each`, in a tree's order: each folder's names sorted, a folder's contents right
    /// after it.
    pub(super) fn walk(
        &self,
        root: &Root,
        top: &Path,
        filter: &Filter,
        (pace, each): (Pace, &mut EachEntry),
    ) -> Result<()> {
        let folders = Folders {
            state: Mutex::default(),
            changed: Condvar::new(),
            ahead: pace.ahead,
        };
        // A listing that panicked must still reach the walker, or it would wait for it forever.
        let list = |rel: &Path| {
            let listed = panic::catch_unwind(AssertUnwindSafe(|| self.list(root, rel, filter)));
            listed.unwrap_or_else(|_| {
                let broke = io::Error::other("the thread listing it failed; see the agent's log");
                Err(self.err("read folder", rel)(broke))
            })
        };
        // The top folder listed here first: without a folder in it (as in most of the paths a
        // monitor's batch names), no worker is started.
        let first = list(top)?;
        let below: Vec<PathBuf> = subfolders(&first).collect();
        let workers = if below.is_empty() { 0 } else { pace.workers };
        folders.lock().queued.extend(below);
        std::thread::scope(|threads| {
            for _ in 0..workers {
                let worker = std::thread::Builder::new().name("ferry-scan".into());
                // Without a worker the walker lists the folders itself: slower, not wrong.
                let _ = worker.spawn_scoped(threads, || {
                    beneath::own_cwd_here();
                    folders.work(&list);
                });
            }
            let walked = folders.hand_over(first, &list, each);
            folders.lock().over = true;
            folders.changed.notify_all();
            walked
        })
    }

    /// Lists the folder `rel`: the entries in it the filter admits, with their attributes. A
    /// temporary file of a writer that no longer runs is removed instead (unless this endpoint
    /// only looks).
    fn list(&self, root: &Root, rel: &Path, filter: &Filter) -> Result<Listing> {
        if rel.as_os_str().len() >= MAX_SCANNED_PATH {
            let too_long = io::Error::from_raw_os_error(libc::ENAMETOOLONG);
            return Err(self.err("read folder", rel)(too_long));
        }
        let folder = match root.folder(rel) {
            Ok(folder) => folder,
            // A folder deleted while we walked: the next scan sees the truth. The root itself
            // vanishing is an error, never an empty tree.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.as_os_str().is_empty() => {
                return Ok(Vec::new());
            }
            Err(e) => return Err(self.err("read folder", rel)(e)),
        };
        let mut names = folder.names().map_err(self.err("read folder", rel))?;
        names.sort_unstable();
        let mut listing = Vec::with_capacity(names.len());
        for name in names {
            if is_orphan_temp(&name) {
                if !self.looks_only {
                    let _ = folder.remove_file(&name);
                }
                continue;
            }
            let child = rel.join(&name);
            let found = folder.stat(&name).map_err(self.err("read", &child))?;
            let read_link = || folder.read_link(&name);
            let Some(entry) = self.entry(found, &child, read_link, || folder.xattrs(&name))? else {
                continue;
            };
            if filter.admits(&child, entry.is_dir()) {
                listing.push((child, entry));
            }
        }
        Ok(listing)
    }
}

impl Folders {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The walker: hands every entry of `first` (the top folder's listing) and below to
    /// `each`, taking each folder's listing as it comes to it.
    fn hand_over(
        &self,
        first: Listing,
        list: &(dyn Fn(&Path) -> Result<Listing> + Sync),
        each: &mut EachEntry,
    ) -> Result<()> {
        let mut open = vec![first.into_iter()];
        while let Some(listing) = open.last_mut() {
            let Some((path, entry)) = listing.next() else {
                open.pop();
                continue;
            };
            let is_dir = entry.is_dir();
            each(&path, entry)?;
            if is_dir {
                open.push(self.take(&path, list)?.into_iter());
            }
        }
        Ok(())
    }

    /// The listing of `rel`: a worker's, waited for if one is at it, or made here if none
    /// has taken it yet.
    fn take(
        &self,
        rel: &Path,
        list: &(dyn Fn(&Path) -> Result<Listing> + Sync),
    ) -> Result<Listing> {
        let mut state = self.lock();
        loop {
            if let Some(listed) = state.listed.remove(rel) {
                state.ahead -= listed.as_ref().map_or(0, Vec::len);
                self.changed.notify_all();
                return listed;
            }
            if state.queued.remove(rel) {
                drop(state);
                let listed = list(rel);
                if let Ok(listing) = &listed {
                    self.lock().queued.extend(subfolders(listing));
                    self.changed.notify_all();
                }
                return listed;
            }
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A worker: lists the first folder queued while the walker is not too far behind, until
    /// the walk is over. A folder's subfolders are queued in the same step its listing is
    /// left for the walker, so every folder the walker comes to is queued, being listed, or
    /// listed.
    fn work(&self, list: &(dyn Fn(&Path) -> Result<Listing> + Sync)) {
        let mut state = self.lock();
        while !state.over {
            let next = (state.ahead < self.ahead)
                .then(|| state.queued.pop_first())
                .flatten();
            let Some(rel) = next else {
                state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            };
            drop(state);
            let listed = list(&rel);
            state = self.lock();
            if let Ok(listing) = &listed {
                state.ahead += listing.len();
                let found = subfolders(listing);
                state.queued.extend(found);
            }
            state.listed.insert(rel, listed);
            self.changed.notify_all();
        }
    }
}

/// The folders a listing holds.
fn subfolders(listing: &Listing) -> impl Iterator<Item = PathBuf> + '_ {
    (listing.iter())
        .filter(|(_, entry)| entry.is_dir())
        .map(|(path, _)| path.clone())
}

#[cfg(test)]
mod tests;
