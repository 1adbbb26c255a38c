//! Where a replica lives. The engine only talks to the [`Endpoint`] trait, so a folder on this
//! machine and a folder behind a remote agent are synced by the same code.
//!
//! Every write is crash-safe: a file is written under a temporary name in its destination folder,
//! flushed to disk, given its mode and mtime, then renamed over the target, so a crash never
//! leaves a half-written file under the real name.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use filetime::FileTime;

use crate::filter::{Filter, STATE_DIR, TEMP_PREFIX};
use crate::tree::{Entry, Kind, Mtime, Tree};

#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct EndpointError {
    /// What was being done, as a verb phrase: "read folder", "write file", ….
    pub op: &'static str,
    /// The full path (or `agent:/path`) involved.
    pub path: String,
    #[source]
    pub source: io::Error,
}

pub type Result<T> = std::result::Result<T, EndpointError>;

/// Which part of a replica a scan covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything under the root.
    Full,
    /// These paths (relative to the root) and, for folders, everything under them.
    Paths(Vec<PathBuf>),
}

/// One replica of a job: a folder, local or remote, that the engine reads and writes.
pub trait Endpoint: Send + Sync {
    /// How users name this replica in messages: `/srv/docs` or `agent:/srv/docs`.
    fn display(&self) -> String;
    /// Fails unless the root is an existing folder; `create` makes a missing one first.
    fn check_root(&self, create: bool) -> Result<()>;
    fn scan(&self, scope: &Scope, filter: &Filter) -> Result<Tree>;
    /// What is at `rel` now (not following a final symlink), if anything.
    fn stat(&self, rel: &Path) -> Result<Option<Entry>>;
    fn open(&self, rel: &Path) -> Result<Box<dyn Read + Send>>;
    /// Writes `data` to `rel` crash-safely with `entry`'s mode and mtime; returns bytes written.
    fn write_file(&self, rel: &Path, entry: &Entry, data: &mut dyn Read) -> Result<u64>;
    fn make_dir(&self, rel: &Path, entry: &Entry) -> Result<()>;
    fn make_symlink(&self, rel: &Path, entry: &Entry) -> Result<()>;
    /// Removes a file or link, or an empty folder. A folder that is not empty is left in place
    /// and `Ok(false)` returned: it holds files the job does not own (excluded ones, say).
    fn remove(&self, rel: &Path, entry: &Entry) -> Result<bool>;
    fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    fn set_mtime(&self, rel: &Path, mtime: Mtime) -> Result<()>;
    fn hash(&self, rel: &Path) -> Result<blake3::Hash>;
    /// ferry's own state for this replica (a sync job's last agreed tree), by name.
    fn read_state(&self, name: &str) -> Result<Option<Vec<u8>>>;
    fn write_state(&self, name: &str, bytes: &[u8]) -> Result<()>;
}

/// A folder on this machine.
#[derive(Debug, Clone)]
pub struct LocalEndpoint {
    root: PathBuf,
}

impl LocalEndpoint {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn full(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    fn err(&self, op: &'static str, rel: &Path) -> impl FnOnce(io::Error) -> EndpointError {
        let path = self.full(rel).display().to_string();
        move |source| EndpointError { op, path, source }
    }

    fn walk(&self, rel: &Path, filter: &Filter, tree: &mut Tree) -> Result<()> {
        let dir = self.full(rel);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            // A folder deleted while we walked: the next scan sees the truth. The root itself
            // vanishing is an error, never an empty tree.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !rel.as_os_str().is_empty() => {
                return Ok(());
            }
            Err(e) => return Err(self.err("read folder", rel)(e)),
        };
        for dirent in entries {
            let dirent = dirent.map_err(self.err("read folder", rel))?;
            let child = rel.join(dirent.file_name());
            if is_orphan_temp(&child) {
                let _ = fs::remove_file(self.full(&child));
                continue;
            }
            self.visit(&child, filter, tree)?;
        }
        Ok(())
    }

    /// Adds `rel` (and, for a folder, its contents) to `tree` if the filter admits it.
    fn visit(&self, rel: &Path, filter: &Filter, tree: &mut Tree) -> Result<()> {
        let Some(entry) = self.stat_entry(rel)? else {
            return Ok(());
        };
        if entry.is_dir() {
            if filter.admits_dir(rel) {
                tree.insert(rel.to_path_buf(), entry);
                self.walk(rel, filter, tree)?;
            }
        } else if filter.admits_file(rel) {
            tree.insert(rel.to_path_buf(), entry);
        }
        Ok(())
    }

    fn stat_entry(&self, rel: &Path) -> Result<Option<Entry>> {
        let full = self.full(rel);
        let meta = match fs::symlink_metadata(&full) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err("read", rel)(e)),
        };
        let target = if meta.file_type().is_symlink() {
            Some(fs::read_link(&full).map_err(self.err("read link", rel))?)
        } else {
            None
        };
        Ok(Some(Entry::from_metadata(&meta, target)))
    }

    /// Creates a fresh temporary path beside `rel`, making missing parent folders.
    fn temp_beside(&self, rel: &Path) -> Result<PathBuf> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let parent = rel.parent().unwrap_or(Path::new(""));
        fs::create_dir_all(self.full(parent)).map_err(self.err("create folder", parent))?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{TEMP_PREFIX}{}.{n}", std::process::id());
        Ok(self.full(&parent.join(name)))
    }

    /// Renames a finished temporary file over `rel`, or removes it if anything failed.
    fn commit_temp(&self, temp: &Path, rel: &Path, written: io::Result<()>) -> Result<()> {
        let renamed = written.and_then(|()| fs::rename(temp, self.full(rel)));
        if renamed.is_err() {
            let _ = fs::remove_file(temp);
        }
        renamed.map_err(self.err("write", rel))
    }

    fn state_path(&self, name: &str) -> PathBuf {
        self.root.join(STATE_DIR).join(name)
    }
}

impl Endpoint for LocalEndpoint {
    fn display(&self) -> String {
        self.root.display().to_string()
    }

    fn check_root(&self, create: bool) -> Result<()> {
        let root = Path::new("");
        if create {
            fs::create_dir_all(&self.root).map_err(self.err("create folder", root))?;
        }
        match fs::metadata(&self.root) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(self.err("use as a folder", root)(io::Error::new(
                io::ErrorKind::NotADirectory,
                "it is not a folder",
            ))),
            Err(e) => Err(self.err("open folder", root)(e)),
        }
    }

    fn scan(&self, scope: &Scope, filter: &Filter) -> Result<Tree> {
        let mut tree = Tree::new();
        match scope {
            Scope::Full => self.walk(Path::new(""), filter, &mut tree)?,
            Scope::Paths(paths) => {
                for rel in paths {
                    if ancestors_admitted(rel, filter) {
                        self.visit(rel, filter, &mut tree)?;
                    }
                }
            }
        }
        Ok(tree)
    }

    fn stat(&self, rel: &Path) -> Result<Option<Entry>> {
        self.stat_entry(rel)
    }

    fn open(&self, rel: &Path) -> Result<Box<dyn Read + Send>> {
        let file = File::open(self.full(rel)).map_err(self.err("open", rel))?;
        Ok(Box::new(file))
    }

    fn write_file(&self, rel: &Path, entry: &Entry, data: &mut dyn Read) -> Result<u64> {
        let temp = self.temp_beside(rel)?;
        let mut copied = 0;
        let written = (|| {
            let mut file = File::create(&temp)?;
            copied = io::copy(data, &mut file)?;
            file.flush()?;
            file.set_permissions(fs::Permissions::from_mode(entry.mode))?;
            file.sync_all()?;
            drop(file);
            filetime::set_file_mtime(&temp, to_filetime(entry.mtime))
        })();
        self.commit_temp(&temp, rel, written)?;
        Ok(copied)
    }

    fn make_dir(&self, rel: &Path, entry: &Entry) -> Result<()> {
        let full = self.full(rel);
        match fs::create_dir_all(&full) {
            Ok(()) => fs::set_permissions(&full, fs::Permissions::from_mode(entry.mode))
                .map_err(self.err("set mode of", rel)),
            Err(e) => Err(self.err("create folder", rel)(e)),
        }
    }

    fn make_symlink(&self, rel: &Path, entry: &Entry) -> Result<()> {
        let Kind::Symlink { target } = &entry.kind else {
            unreachable!("make_symlink called for {:?}", entry.kind);
        };
        let temp = self.temp_beside(rel)?;
        let written = std::os::unix::fs::symlink(target, &temp).and_then(|()| {
            filetime::set_symlink_file_times(
                &temp,
                to_filetime(entry.mtime),
                to_filetime(entry.mtime),
            )
        });
        self.commit_temp(&temp, rel, written)
    }

    fn remove(&self, rel: &Path, entry: &Entry) -> Result<bool> {
        let full = self.full(rel);
        let removed = if entry.is_dir() {
            fs::remove_dir(&full)
        } else {
            fs::remove_file(&full)
        };
        match removed {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(false),
            Err(e) => Err(self.err("remove", rel)(e)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        fs::rename(self.full(from), self.full(to)).map_err(self.err("rename", from))
    }

    fn set_mtime(&self, rel: &Path, mtime: Mtime) -> Result<()> {
        filetime::set_file_mtime(self.full(rel), to_filetime(mtime))
            .map_err(self.err("set mtime of", rel))
    }

    fn hash(&self, rel: &Path) -> Result<blake3::Hash> {
        let mut hasher = blake3::Hasher::new();
        File::open(self.full(rel))
            .and_then(|file| hasher.update_reader(file).map(drop))
            .map_err(self.err("read", rel))?;
        Ok(hasher.finalize())
    }

    fn read_state(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.state_path(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(EndpointError {
                op: "read state",
                path: path.display().to_string(),
                source: e,
            }),
        }
    }

    fn write_state(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let rel = Path::new(STATE_DIR).join(name);
        let entry = Entry {
            kind: Kind::File,
            size: bytes.len() as u64,
            mtime: now_mtime(),
            mode: 0o600,
        };
        self.write_file(&rel, &entry, &mut &bytes[..]).map(drop)
    }
}

/// Scoped paths come from a watcher: skip one whose parent folder the filter excludes.
fn ancestors_admitted(rel: &Path, filter: &Filter) -> bool {
    rel.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .all(|a| filter.admits_dir(a))
}

/// A temporary file left by a writer that no longer runs (it crashed mid-transfer).
fn is_orphan_temp(rel: &Path) -> bool {
    let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
        return false;
    };
    let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
        return true;
    };
    pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

fn to_filetime(mtime: Mtime) -> FileTime {
    FileTime::from_unix_time(mtime.secs, mtime.nanos)
}

fn now_mtime() -> Mtime {
    let now = FileTime::now();
    Mtime {
        secs: now.unix_seconds(),
        nanos: now.nanoseconds(),
    }
}
