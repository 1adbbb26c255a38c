//! What a journal's watch stands on: the root folder itself and the mounts at and below it.
//! A root replaced or a mount come or gone means the watch no longer sees everything.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

/// File systems whose changes can be made where no watch here sees them.
const UNWATCHABLE: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "9p",
    "ceph",
    "glusterfs",
    "lustre",
    "afs",
    "gpfs",
    "ocfs2",
    "gfs2",
    "beegfs",
    "davfs",
    "virtiofs",
];

/// File systems that stamp every change to an entry (its data, metadata, a rename of it, an
/// entry made or removed in a folder) with a change time no user can set: what lets a journal
/// catch up with the changes made while it was not watching.
const KEEPS_CHANGE_TIMES: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "zfs", "f2fs", "bcachefs", "tmpfs",
];

/// What a watch began over: the root folder itself and the mounts at and below it.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Ground {
    root: Option<Identity>,
    mounts: Vec<Mount>,
}

impl Ground {
    pub(super) fn of(root: &Path) -> Self {
        Self {
            root: Identity::of(root),
            mounts: mounts_at(root),
        }
    }

    /// A mount here whose changes no watch sees, if any.
    pub(super) fn unwatchable(&self) -> Option<&Mount> {
        (self.mounts.iter()).find(|m| UNWATCHABLE.contains(&m.kind.as_str()))
    }

    /// Whether every file system here keeps change times a journal can catch up by.
    pub(super) fn keeps_change_times(&self) -> bool {
        (self.mounts.iter()).all(|m| KEEPS_CHANGE_TIMES.contains(&m.kind.as_str()))
    }

    /// This ground as it stays across a reboot: mount and device numbers do not.
    pub(super) fn lasting(&self) -> String {
        let mut text = match self.root {
            Some(root) => format!("{}.{}", root.inode, root.born.map_or(0, |b| b.as_nanos())),
            None => "none".into(),
        };
        for mount in &self.mounts {
            text += &format!(" {}:{}", mount.path.display(), mount.kind);
        }
        text
    }
}

/// Which folder a path names: its inode, and its birth time (a freed inode number is soon
/// given to a new folder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    device: u64,
    inode: u64,
    born: Option<Duration>,
}

impl Identity {
    pub(super) fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::symlink_metadata(path).ok()?;
        let born = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
        Some(Self {
            device: meta.dev(),
            inode: meta.ino(),
            born,
        })
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let born = self.born.map_or(0, |b| b.as_nanos());
        write!(f, "{}.{}.{born}", self.device, self.inode)
    }
}

/// A mount at or below a root: where, and what file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mount {
    id: String,
    pub(super) path: PathBuf,
    pub(super) kind: String,
}

/// The mounts at and below `root` (and the one holding it), from `/proc/self/mountinfo`.
fn mounts_at(root: &Path) -> Vec<Mount> {
    let root = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let all: Vec<Mount> = table.lines().filter_map(parse_mount).collect();
    let holding = (all.iter())
        .filter(|m| root.starts_with(&m.path))
        .max_by_key(|m| m.path.as_os_str().len())
        .cloned();
    let mut mounts: Vec<Mount> = (all.into_iter())
        .filter(|m| m.path.starts_with(&root) && m.path != root)
        .chain(holding)
        .collect();
    mounts.sort_by(|a, b| (&a.path, &a.id).cmp(&(&b.path, &b.id)));
    mounts
}

/// One line of `mountinfo`: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - TYPE SOURCE ...`.
fn parse_mount(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let id = fields.next()?.to_owned();
    let path = unescape(fields.nth(3)?);
    let kind = fields.skip_while(|f| *f != "-").nth(1)?.to_owned();
    Some(Mount { id, path, kind })
}

/// A mount point as `mountinfo` writes it, with `\040` for a space and so on.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let text = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(text, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mountinfo_line_gives_its_mount_point_and_file_system() {
        let line = "36 35 98:0 /mnt1 /srv/my\\040share rw,noatime master:1 - nfs4 host:/x rw";
        let mount = parse_mount(line).unwrap();
        assert_eq!(mount.id, "36");
        assert_eq!(mount.path, Path::new("/srv/my share"));
        assert_eq!(mount.kind, "nfs4");
    }
}
