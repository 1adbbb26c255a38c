//! What a scan sees: one [`Entry`] per relative path, in parent-before-child order.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::meta::{Keep, Meta, Owner};

mod sorted;
mod union;

/// The longest path (relative to the replica) a scan walks into, as `openat2` refuses longer
/// ones (`PATH_MAX`): where it is missing and names are opened one by one, this is what bounds
/// how deep a scan goes, and so how many folders' listings its walk holds at once.
pub const MAX_SCANNED_PATH: usize = 4096;

pub use sorted::{Builder as TreeBuilder, Tree};
pub use union::{Union, pairs};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    File,
    Dir,
    /// Its target boxed: few entries are links, and held inline it would make every entry
    /// of a million-file tree 8 bytes larger.
    Symlink {
        #[serde(with = "crate::raw_path::boxed")]
        target: Box<PathBuf>,
    },
    /// A FIFO, a socket or a device. Never opened: a run leaves it out with a warning event,
    /// unless the job keeps special files, when one of the same kind is made in its place.
    Special {
        node: Node,
        /// A device's number (`st_rdev`); 0 for the others.
        #[serde(default)]
        device: u64,
    },
}

/// What kind of special file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Node {
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    /// What the file system did not say: never made.
    Unknown,
}

impl Node {
    /// As users name it.
    pub fn describe(self) -> &'static str {
        match self {
            Node::Fifo => "a FIFO",
            Node::Socket => "a socket",
            Node::CharDevice => "a character device",
            Node::BlockDevice => "a block device",
            Node::Unknown => "an unknown kind of file",
        }
    }

    pub fn is_device(self) -> bool {
        matches!(self, Node::CharDevice | Node::BlockDevice)
    }
}

/// Modification time with the nanoseconds the file system keeps. Packed into 12 bytes (no
/// padding after the nanoseconds), so an entry's mode fits beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(C, packed(4))]
pub struct Mtime {
    pub secs: i64,
    pub nanos: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub kind: Kind,
    /// Bytes for a file, 0 otherwise.
    pub size: u64,
    pub mtime: Mtime,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner, ACLs, extended attributes, hard links and holes (see [`Meta`]).
    #[serde(default)]
    pub meta: Meta,
}

// A tree holds one a path: a million for a million-file share.
const _: () = assert!(std::mem::size_of::<Entry>() <= 80);

impl Entry {
    /// A folder with permission bits `mode`, time 0 and no metadata beyond them: one to make,
    /// or one only its kind matters of.
    pub fn folder(mode: u32) -> Self {
        Self {
            kind: Kind::Dir,
            size: 0,
            mtime: Mtime { secs: 0, nanos: 0 },
            mode,
            meta: Meta::default(),
        }
    }

    pub fn from_metadata(meta: &Metadata, symlink_target: Option<PathBuf>) -> Self {
        let kind = match symlink_target {
            Some(target) => Kind::Symlink {
                target: Box::new(target),
            },
            None if meta.is_dir() => Kind::Dir,
            None => Kind::File,
        };
        let size = if kind == Kind::File { meta.len() } else { 0 };
        Self {
            kind,
            size,
            mtime: Mtime {
                secs: meta.mtime(),
                nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
            },
            mode: meta.mode() & 0o7777,
            meta: Meta::default(),
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == Kind::Dir
    }

    /// The permission bits a replica written by ferry holds for this entry: a file loses its
    /// setuid and setgid bits, since it belongs to whoever runs ferry there, not to its owner
    /// at the source (a user's setuid program would otherwise become a root one).
    pub fn kept_mode(&self) -> u32 {
        match self.kind {
            Kind::File => file_mode(self.mode),
            _ => self.mode & 0o7777,
        }
    }

    /// True when a transfer can skip this path: same kind, and for a file the same size and
    /// modification time (rsync's quick check), for a link the same target.
    pub fn looks_unchanged(&self, other: &Entry) -> bool {
        match (&self.kind, &other.kind) {
            (Kind::File, Kind::File) => self.size == other.size && self.mtime == other.mtime,
            (Kind::Dir, Kind::Dir) => true,
            (Kind::Symlink { target: a }, Kind::Symlink { target: b }) => a == b,
            (a @ Kind::Special { .. }, b @ Kind::Special { .. }) => a == b,
            _ => false,
        }
    }
}

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
