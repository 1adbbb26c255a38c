//! [`Entry`]: what a scan reports of one path, in 56 bytes. A tree holds one per path, a million
//! for a million-file share, so every byte of it is a megabyte there: the kind and the flags
//! share a word with the permission bits, and what few entries have (a link's target, a
//! device's number, the hard-link group) is boxed apart.

use std::fmt;
use std::fs::Metadata;
use std::num::NonZeroU64;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::file_mode;
use crate::meta::{Digest, Meta, Owner};

mod wire;

/// What kind of thing a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// Its target is [`Entry::target`].
    Symlink,
    /// A FIFO, a socket or a device (its number is [`Entry::device`]). Never opened: a run
    /// leaves it out with a warning event, unless the job keeps special files, when one of the
    /// same kind is made in its place.
    Special(Node),
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
    pub(crate) const ALL: [Node; 5] = [
        Node::Fifo,
        Node::Socket,
        Node::CharDevice,
        Node::BlockDevice,
        Node::Unknown,
    ];

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

impl Mtime {
    /// The whole second `secs` after the epoch.
    pub fn at(secs: i64) -> Self {
        Self { secs, nanos: 0 }
    }
}

/// Written and read in the form it had as a plain struct, which older agents use.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "wire::Read")]
pub struct Entry {
    /// Bytes for a file, 0 otherwise.
    pub size: u64,
    pub mtime: Mtime,
    /// The permission bits, the kind and the flags below.
    bits: u32,
    /// Who owns it, by number, when `OWNED` is set; zeros otherwise, so that equal entries are
    /// equal field by field.
    owner: Owner,
    acl: Option<Digest>,
    xattrs: Option<Digest>,
    rare: Option<Box<Rare>>,
}

// A tree holds one a path: a million for a million-file share.
const _: () = assert!(std::mem::size_of::<Entry>() <= 56);

/// What few entries have. Never all default: an entry without any of it has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Rare {
    /// A symlink's target; empty for the others.
    target: PathBuf,
    /// A device's number (`st_rdev`); 0 for the others.
    device: u64,
    /// See [`Meta::link`].
    link: Option<NonZeroU64>,
}

/// Permission bits (`st_mode & 0o7777`).
const MODE: u32 = 0o7777;
const KIND_SHIFT: u32 = 12;
const KIND: u32 = 0b11 << KIND_SHIFT;
const NODE_SHIFT: u32 = 14;
const NODE: u32 = 0b111 << NODE_SHIFT;
const OWNED: u32 = 1 << 17;
const SPARSE: u32 = 1 << 18;

impl Entry {
    /// A file of `size` bytes.
    pub fn file(size: u64, mtime: Mtime, mode: u32) -> Self {
        Self::new(Kind::File, mtime, mode).sized(size)
    }

    /// A folder with permission bits `mode`, time 0 and no metadata beyond them: one to make,
    /// or one only its kind matters of.
    pub fn folder(mode: u32) -> Self {
        Self::dir(Mtime::at(0), mode)
    }

    pub fn dir(mtime: Mtime, mode: u32) -> Self {
        Self::new(Kind::Dir, mtime, mode)
    }

    pub fn symlink(target: PathBuf, mtime: Mtime, mode: u32) -> Self {
        let mut entry = Self::new(Kind::Symlink, mtime, mode);
        entry.change_rare(|rare| rare.target = target);
        entry
    }

    /// A special file of kind `node`; `device` is a device's number, 0 for the others.
    pub fn special(node: Node, device: u64, mtime: Mtime, mode: u32) -> Self {
        let mut entry = Self::new(Kind::Special(node), mtime, mode);
        entry.change_rare(|rare| rare.device = device);
        entry
    }

    pub fn from_metadata(meta: &Metadata, symlink_target: Option<PathBuf>) -> Self {
        let mtime = Mtime {
            secs: meta.mtime(),
            nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        };
        let mode = meta.mode() & MODE;
        match symlink_target {
            Some(target) => Self::symlink(target, mtime, mode),
            None if meta.is_dir() => Self::dir(mtime, mode),
            None => Self::file(meta.len(), mtime, mode),
        }
    }

    fn new(kind: Kind, mtime: Mtime, mode: u32) -> Self {
        let kind_bits = match kind {
            Kind::File => 0,
            Kind::Dir => 1,
            Kind::Symlink => 2,
            Kind::Special(node) => 3 | (node as u32) << (NODE_SHIFT - KIND_SHIFT),
        };
        Self {
            size: 0,
            mtime,
            bits: mode & MODE | kind_bits << KIND_SHIFT,
            owner: Owner { uid: 0, gid: 0 },
            acl: None,
            xattrs: None,
            rare: None,
        }
    }

    fn sized(mut self, size: u64) -> Self {
        self.size = size;
        self
    }

    /// The same entry with the facts of `meta`.
    pub fn with_meta(mut self, meta: Meta) -> Self {
        self.set_meta(meta);
        self
    }

    pub fn kind(&self) -> Kind {
        match (self.bits & KIND) >> KIND_SHIFT {
            0 => Kind::File,
            1 => Kind::Dir,
            2 => Kind::Symlink,
            _ => Kind::Special(Node::ALL[((self.bits & NODE) >> NODE_SHIFT) as usize]),
        }
    }

    /// Permission bits (`st_mode & 0o7777`).
    pub fn mode(&self) -> u32 {
        self.bits & MODE
    }

    /// A symlink's target; `None` for the others.
    pub fn target(&self) -> Option<&Path> {
        let rare = self.rare.as_deref();
        (self.kind() == Kind::Symlink).then(|| rare.map_or(Path::new(""), |rare| &rare.target))
    }

    /// A device's number (`st_rdev`); 0 for the others.
    pub fn device(&self) -> u64 {
        self.rare.as_ref().map_or(0, |rare| rare.device)
    }

    /// Owner, ACLs, extended attributes, hard links and holes.
    pub fn meta(&self) -> Meta {
        Meta {
            owner: self.owner(),
            acl: self.acl,
            xattrs: self.xattrs,
            link: self.link(),
            sparse: self.bits & SPARSE != 0,
        }
    }

    /// See [`Meta::link`]: read alone where a run looks at every entry.
    pub fn link(&self) -> Option<NonZeroU64> {
        self.rare.as_ref().and_then(|rare| rare.link)
    }

    /// See [`Meta::acl`].
    pub fn acl(&self) -> Option<Digest> {
        self.acl
    }

    /// See [`Meta::xattrs`].
    pub fn xattrs(&self) -> Option<Digest> {
        self.xattrs
    }

    pub fn owner(&self) -> Option<Owner> {
        (self.bits & OWNED != 0).then_some(self.owner)
    }

    pub fn set_owner(&mut self, owner: Option<Owner>) {
        self.bits = self.bits & !OWNED | if owner.is_some() { OWNED } else { 0 };
        self.owner = owner.unwrap_or(Owner { uid: 0, gid: 0 });
    }

    pub fn set_meta(&mut self, meta: Meta) {
        self.set_owner(meta.owner);
        self.acl = meta.acl;
        self.xattrs = meta.xattrs;
        self.bits = self.bits & !SPARSE | if meta.sparse { SPARSE } else { 0 };
        self.change_rare(|rare| rare.link = meta.link);
    }

    /// Changes what is boxed apart, dropping the box when nothing is left in it.
    fn change_rare(&mut self, change: impl FnOnce(&mut Rare)) {
        let mut rare = self.rare.take().unwrap_or_default();
        change(&mut rare);
        if *rare != Rare::default() {
            self.rare = Some(rare);
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind() == Kind::Dir
    }

    /// The permission bits a replica written by ferry holds for this entry: a file loses its
    /// setuid and setgid bits, since it belongs to whoever runs ferry there, not to its owner
    /// at the source (a user's setuid program would otherwise become a root one).
    pub fn kept_mode(&self) -> u32 {
        match self.kind() {
            Kind::File => file_mode(self.mode()),
            _ => self.mode(),
        }
    }

    /// True when a transfer can skip this path: same kind, and for a file the same size and
    /// modification time (rsync's quick check), for a link the same target, for a device the
    /// same number.
    pub fn looks_unchanged(&self, other: &Entry) -> bool {
        match (self.kind(), other.kind()) {
            (Kind::File, Kind::File) => self.size == other.size && self.mtime == other.mtime,
            (Kind::Dir, Kind::Dir) => true,
            (Kind::Symlink, Kind::Symlink) => self.target() == other.target(),
            (Kind::Special(a), Kind::Special(b)) => a == b && self.device() == other.device(),
            _ => false,
        }
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("Entry");
        out.field("kind", &self.kind());
        match self.kind() {
            Kind::Symlink => out.field("target", &self.target()),
            Kind::Special(_) => out.field("device", &self.device()),
            Kind::File | Kind::Dir => out.field("size", &self.size),
        };
        let mtime = self.mtime;
        out.field("mtime", &mtime)
            .field("mode", &format_args!("{:o}", self.mode()))
            .field("meta", &self.meta())
            .finish()
    }
}
