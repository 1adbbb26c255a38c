//! An entry as frames and sync jobs' bases carry it: the plain struct it was before its kind
//! and flags were packed, so agents of either layout read each other (pinned by
//! `tree::tests`). Written from a borrowed view, so writing a tree copies nothing.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};

use super::{Entry, Kind, Mtime, Node};
use crate::meta::Meta;

#[derive(Serialize)]
struct Written<'a> {
    kind: WrittenKind<'a>,
    size: u64,
    mtime: Mtime,
    mode: u32,
    meta: Meta,
}

#[derive(Serialize)]
enum WrittenKind<'a> {
    File,
    Dir,
    Symlink {
        #[serde(serialize_with = "crate::raw_path::serialize")]
        target: &'a Path,
    },
    Special {
        node: Node,
        device: u64,
    },
}

impl Serialize for Entry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let kind = match self.kind() {
            Kind::File => WrittenKind::File,
            Kind::Dir => WrittenKind::Dir,
            Kind::Symlink => WrittenKind::Symlink {
                target: self.target().unwrap_or(Path::new("")),
            },
            Kind::Special(node) => WrittenKind::Special {
                node,
                device: self.device(),
            },
        };
        let written = Written {
            kind,
            size: self.size,
            mtime: self.mtime,
            mode: self.mode(),
            meta: self.meta(),
        };
        written.serialize(serializer)
    }
}

#[derive(Deserialize)]
pub(super) struct Read {
    kind: ReadKind,
    size: u64,
    mtime: Mtime,
    mode: u32,
    #[serde(default)]
    meta: Meta,
}

#[derive(Deserialize)]
enum ReadKind {
    File,
    Dir,
    Symlink {
        #[serde(with = "crate::raw_path")]
        target: PathBuf,
    },
    Special {
        node: Node,
        #[serde(default)]
        device: u64,
    },
}

impl From<Read> for Entry {
    /// Bits of the mode beyond the permission bits are dropped: no replica is given them.
    fn from(read: Read) -> Self {
        let entry = match read.kind {
            ReadKind::File => Entry::file(read.size, read.mtime, read.mode),
            ReadKind::Dir => Entry::dir(read.mtime, read.mode),
            ReadKind::Symlink { target } => Entry::symlink(target, read.mtime, read.mode),
            ReadKind::Special { node, device } => {
                Entry::special(node, device, read.mtime, read.mode)
            }
        };
        entry.with_meta(read.meta)
    }
}
