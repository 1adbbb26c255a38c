//! What a scan sees: one [`Entry`] per relative path, in parent-before-child order.

use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

pub use crate::meta::{Keep, Meta, Owner};

mod entry;
mod sorted;
mod union;

/// The longest path (relative to the replica) a scan walks into, as `openat2` refuses longer
/// ones (`PATH_MAX`): where it is missing and names are opened one by one, this is what bounds
/// how deep a scan goes, and so how many folders' listings its walk holds at once.
pub const MAX_SCANNED_PATH: usize = 4096;

pub use entry::{Entry, Kind, Mtime, Node};
pub use sorted::{Builder as TreeBuilder, Tree};
pub use union::{Union, pairs};

/// A received file's permission bits (see [`Entry::kept_mode`]): setuid and setgid dropped.
pub fn file_mode(mode: u32) -> u32 {
    mode & 0o1777
}

/// What a path must still hold when a sync rule's write lands on it: what the scan saw there
/// (`None`: nothing). Someone changed it since, and the write is refused rather than destroying
/// that change; the next run sees it. Checked where the file is, just before the rename, so a
/// remote replica costs no round trip per file for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expected {
    pub entry: Option<Entry>,
}

impl Expected {
    pub fn is_met_by(&self, now: Option<&Entry>) -> bool {
        same(now, self.entry.as_ref())
    }
}

/// Whether two sightings of a path (`None`: nothing there) look alike to a quick check.
pub fn same(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.looks_unchanged(b),
        _ => false,
    }
}

/// Checks that every entry lies in a folder of the same tree: a scan listing `a` as a file or a
/// symlink and `a/x` under it would have a writer follow `a` (rsync's CVE-2024-12087), so it
/// is refused whoever made it. A scan of the whole tree must list every folder above an entry;
/// a scan of some paths (`whole: false`) need not list them.
pub fn check_parents(tree: &Tree, whole: bool) -> Result<(), String> {
    // The folder the last entry was found in: most entries share it, and need no lookup.
    let mut last_folder = None;
    for path in tree.keys() {
        let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
            continue;
        };
        if last_folder == Some(parent) {
            continue;
        }
        match tree.get(parent) {
            Some(entry) if entry.is_dir() => last_folder = Some(parent),
            None if !whole => {}
            Some(_) => {
                return Err(format!(
                    "the scan lists {} under {}, which is not a folder",
                    path.display(),
                    parent.display()
                ));
            }
            None => {
                return Err(format!(
                    "the scan lists {} without the folder {} it is in",
                    path.display(),
                    parent.display()
                ));
            }
        }
    }
    Ok(())
}

/// Whether `path` is made of plain names only (no `..`, no root, not empty): the only kind of
/// path a peer may name inside a folder.
pub fn is_plain(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|part| matches!(part, Component::Normal(_)))
}

/// Whether a scan could list `path`: plain, and shorter than [`MAX_SCANNED_PATH`]. What a
/// peer's scan or journal reports, or a file in the replica says, is nothing else.
pub fn is_listable(path: &Path) -> bool {
    is_plain(path) && path.as_os_str().len() < MAX_SCANNED_PATH
}

#[cfg(test)]
mod tests;
