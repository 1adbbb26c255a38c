//! A journal kept in the agent's state folder, so that the marks it gave hold across a restart
//! of the agent: its identity, the paths it recorded, the generations it may have handed out,
//! and the instant before which every change is among those paths. What changed after that
//! instant, while no watch ran, the journal finds again by the entries' change times.

use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Reach;

/// The layout of the file; another is read as no file.
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Kept {
    format: u32,
    /// The root as configured: a file kept for another root is not this one's.
    #[serde(with = "serde_bytes")]
    root: Vec<u8>,
    /// What the watch stood on ([`super::ground::Ground::lasting`]).
    pub ground: String,
    pub id: String,
    /// Marks older than this generation cannot be answered.
    pub floor: u64,
    /// No mark handed out names a generation above this.
    pub reserved: u64,
    /// Unix nanoseconds: every change made before is among `changed`.
    pub drained: u64,
    changed: Vec<KeptChange>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeptChange {
    #[serde(with = "serde_bytes")]
    path: Vec<u8>,
    generation: u64,
    reach: Reach,
}

impl Kept {
    pub fn new(
        root: &Path,
        ground: String,
        id: String,
        (floor, reserved, drained): (u64, u64, u64),
    ) -> Self {
        Self {
            format: FORMAT,
            root: root.as_os_str().as_bytes().to_vec(),
            ground,
            id,
            floor,
            reserved,
            drained,
            changed: Vec::new(),
        }
    }

    pub fn push(&mut self, path: &Path, generation: u64, reach: Reach) {
        self.changed.push(KeptChange {
            path: path.as_os_str().as_bytes().to_vec(),
            generation,
            reach,
        });
    }

    /// The recorded paths, each with its generation and what it stands for.
    pub fn into_changed(self) -> impl Iterator<Item = (PathBuf, u64, Reach)> {
        (self.changed.into_iter()).map(|c| {
            let path = PathBuf::from(std::ffi::OsString::from_vec(c.path));
            (path, c.generation, c.reach)
        })
    }
}

/// Where the journal of `root` is kept in `state_dir`.
pub(super) fn file_for(state_dir: &Path, root: &Path) -> PathBuf {
    let hash = blake3::hash(root.as_os_str().as_bytes()).to_hex();
    state_dir.join(format!("journal-{}.bin", &hash[..16]))
}

/// The journal kept in `file` for `root`: `Ok(None)` when there is none, an error saying why
/// when the file cannot be read as one.
pub(super) fn load(file: &Path, root: &Path) -> Result<Option<Kept>, String> {
    let bytes = match std::fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let kept: Kept = rmp_serde::from_slice(&bytes).map_err(|e| format!("unreadable: {e}"))?;
    if kept.format != FORMAT {
        return Err(format!("kept in another layout ({})", kept.format));
    }
    if kept.root != root.as_os_str().as_bytes() {
        return Err("kept for another root".into());
    }
    Ok(Some(kept))
}

pub(super) fn save(file: &Path, kept: &Kept) -> io::Result<()> {
    let bytes = rmp_serde::to_vec(kept).map_err(io::Error::other)?;
    crate::fences::write_durably(file, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_journal_reads_back_only_for_its_own_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new("/srv/a");
        let file = file_for(dir.path(), root);
        assert_eq!(load(&file, root).unwrap().map(|k| k.id), None);
        let mut kept = Kept::new(root, "1.2 /:ext4".into(), "id".into(), (3, 70, 9));
        kept.push(Path::new("docs/\u{e9}t\u{e9}"), 5, Reach::Entries);
        save(&file, &kept).unwrap();
        let back = load(&file, root).unwrap().unwrap();
        assert_eq!((back.floor, back.reserved, back.drained), (3, 70, 9));
        let changed: Vec<_> = back.into_changed().collect();
        assert_eq!(
            changed,
            vec![(PathBuf::from("docs/\u{e9}t\u{e9}"), 5, Reach::Entries)]
        );
        assert!(load(&file, Path::new("/srv/b")).is_err());
        std::fs::write(&file, b"garbage").unwrap();
        assert!(load(&file, root).is_err());
    }
}
