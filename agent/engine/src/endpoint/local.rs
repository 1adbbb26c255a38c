//! A replica on this machine: a folder, read and written through the file system.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use filetime::FileTime;

use super::{Endpoint, EndpointError, Failure, FileSink, Result, Scope};
use crate::delta::{self, DeltaError, Encoded, Op, Rebuild, Signature};
use crate::fence::Fence;
use crate::filter::{Filter, STATE_DIR, TEMP_PREFIX};
use crate::tree::{Entry, Expected, Kind, Mtime, Tree};

/// A folder on this machine.
#[derive(Debug, Clone)]
pub struct LocalEndpoint {
    root: PathBuf,
    /// Serving paths a peer names: each must stay inside the root (see [`confine`]).
    confined: bool,
}

impl LocalEndpoint {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            confined: false,
        }
    }

    /// A folder whose paths come from the network: each is checked to stay inside `root`.
    pub fn confined(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            confined: true,
        }
    }

    fn full(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }

    /// Builds the error naming `rel` only when there is one: this runs for every file.
    fn err<'a>(
        &'a self,
        op: &'static str,
        rel: &'a Path,
    ) -> impl FnOnce(io::Error) -> EndpointError + 'a {
        move |source| EndpointError::new(op, self.full(rel).display().to_string(), source)
    }

    /// The full path of `rel`, once it is known to stay inside the root.
    fn checked(&self, rel: &Path) -> Result<PathBuf> {
        if self.confined {
            confine(&self.root, rel)
                .map_err(|e| self.err("reach", rel)(e).meaning(Failure::Outside))?;
        }
        Ok(self.full(rel))
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
            self.visit_found(&child, filter, tree)?;
        }
        Ok(())
    }

    /// Adds `rel`, a path a peer or a watcher named, (and, for a folder, its contents) to
    /// `tree` if the filter admits it.
    fn visit(&self, rel: &Path, filter: &Filter, tree: &mut Tree) -> Result<()> {
        self.checked(rel)?;
        self.visit_found(rel, filter, tree)
    }

    /// [`Self::visit`] for a path known to stay inside: the walk found it, and never enters a
    /// symlink.
    fn visit_found(&self, rel: &Path, filter: &Filter, tree: &mut Tree) -> Result<()> {
        let Some(entry) = self.lstat(rel)? else {
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

    /// The entry at `rel`, not followed if it is a symlink; unchecked.
    fn lstat(&self, rel: &Path) -> Result<Option<Entry>> {
        entry_at(&self.full(rel)).map_err(self.err("read", rel))
    }

    /// Opens the file at `rel` for reading, never through a symlink.
    fn open_file(&self, rel: &Path) -> Result<Option<File>> {
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.checked(rel)?);
        match opened {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("open", rel)(e)),
        }
    }

    /// Makes a fresh temporary entry beside `rel` with `create`. Missing parent folders are
    /// made only when the first try finds them missing: usually they exist, and a file server
    /// receiving many small files should not ask again for each.
    fn create_beside<T>(
        &self,
        rel: &Path,
        create: impl Fn(&Path) -> io::Result<T>,
    ) -> Result<(PathBuf, T)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        self.checked(rel)?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = self.full(&parent.join(format!("{TEMP_PREFIX}{}.{n}", *PID)));
        let created = match create(&temp) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(self.full(parent)).map_err(self.err("create folder", parent))?;
                create(&temp)
            }
            created => created,
        };
        created
            .map(|made| (temp, made))
            .map_err(self.err("write", rel))
    }

    /// Renames a finished temporary file over `rel`, or removes it if anything failed.
    fn commit_temp(&self, temp: &Path, rel: &Path, written: io::Result<()>) -> Result<()> {
        let renamed = written.and_then(|()| fs::rename(temp, self.full(rel)));
        if renamed.is_err() {
            let _ = fs::remove_file(temp);
        }
        renamed.map_err(self.err("write", rel))
    }

    /// Starts writing `rel` (see [`Endpoint::receive_file`]).
    pub fn receive(
        &self,
        rel: &Path,
        entry: &Entry,
        block_size: Option<u32>,
        expected: Option<&Expected>,
    ) -> Result<LocalSink<'_>> {
        let old = match block_size {
            Some(_) => self.open_file(rel)?,
            None => None,
        };
        let mode = entry.mode & 0o7777;
        let create = |temp: &Path| {
            let mut options = OpenOptions::new();
            options.write(true).create_new(true).mode(mode);
            options.open(temp)
        };
        let (temp, file) = self.create_beside(rel, create)?;
        let mut sink = LocalSink {
            endpoint: self,
            rel: rel.to_path_buf(),
            entry: entry.clone(),
            temp,
            expected: expected.cloned(),
            rebuild: None,
            committed: false,
            // Only a file large enough to be flushed early needs a second handle.
            writeback: (entry.size >= WRITEBACK_EVERY)
                .then(|| file.try_clone().ok())
                .flatten(),
            flushing: None,
            flushed_at: 0,
        };
        let rebuild = Rebuild::new(old, block_size.unwrap_or(1), BufWriter::new(file))
            .map_err(self.err("read", rel))?;
        sink.rebuild = Some(rebuild);
        Ok(sink)
    }

    /// Flushes every file written on this folder's file system to disk (one `syncfs`): the
    /// durability point for a batch of [`Staged`] files.
    pub fn flush_all(&self) -> Result<()> {
        File::open(&self.root)
            .and_then(|root| nix::unistd::syncfs(&root).map_err(io::Error::from))
            .map_err(self.err("flush", Path::new("")))
    }

    fn state_path(&self, name: &str) -> PathBuf {
        self.root.join(STATE_DIR).join(name)
    }
}

impl Endpoint for LocalEndpoint {
    fn display(&self) -> String {
        self.root.display().to_string()
    }

    fn prepare(&self, create: bool, _fence: Option<&Fence>) -> Result<()> {
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
        self.checked(rel)?;
        self.lstat(rel)
    }

    fn signature(&self, rel: &Path) -> Result<Option<Signature>> {
        let Some(file) = self.open_file(rel)? else {
            return Ok(None);
        };
        let meta = file.metadata().map_err(self.err("read", rel))?;
        if !meta.is_file() {
            return Ok(None);
        }
        delta::signature(&mut io::BufReader::new(file), meta.len())
            .map(Some)
            .map_err(self.err("read", rel))
    }

    fn send_file(
        &self,
        rel: &Path,
        base: Option<&Signature>,
        out: &mut dyn FnMut(Op) -> io::Result<()>,
    ) -> Result<Encoded> {
        let missing = || io::Error::new(io::ErrorKind::NotFound, "vanished during the sync");
        let mut file = self
            .open_file(rel)?
            .ok_or_else(|| self.err("open", rel)(missing()))?;
        delta::encode(&mut file, base, out).map_err(self.err("read", rel))
    }

    fn receive_file<'a>(
        &'a self,
        rel: &Path,
        entry: &Entry,
        block_size: Option<u32>,
        expected: Option<&Expected>,
    ) -> Result<Box<dyn FileSink + 'a>> {
        Ok(Box::new(self.receive(rel, entry, block_size, expected)?))
    }

    fn make_dir(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<()> {
        let full = self.checked(rel)?;
        still_holds(&full, expected).map_err(self.err("create folder", rel))?;
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
        let (temp, ()) =
            self.create_beside(rel, |temp| std::os::unix::fs::symlink(target, temp))?;
        let written = filetime::set_symlink_file_times(
            &temp,
            to_filetime(entry.mtime),
            to_filetime(entry.mtime),
        );
        self.commit_temp(&temp, rel, written)
    }

    fn remove(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<bool> {
        let full = self.checked(rel)?;
        still_holds(&full, expected).map_err(self.err("remove", rel))?;
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
        fs::rename(self.checked(from)?, self.checked(to)?).map_err(self.err("rename", from))
    }

    fn duplicate(&self, rel: &Path, to: &Path) -> Result<()> {
        let (from, kept) = (self.checked(rel)?, self.checked(to)?);
        if let Some(parent) = kept.parent() {
            fs::create_dir_all(parent).map_err(self.err("create folder", to))?;
        }
        fs::hard_link(&from, &kept)
            .or_else(|_| fs::copy(&from, &kept).map(drop))
            .map_err(self.err("duplicate", rel))
    }

    fn set_mtime(&self, rel: &Path, mtime: Mtime) -> Result<()> {
        filetime::set_symlink_file_times(self.checked(rel)?, to_filetime(mtime), to_filetime(mtime))
            .map_err(self.err("set mtime of", rel))
    }

    fn hash(&self, rel: &Path) -> Result<blake3::Hash> {
        let mut hasher = blake3::Hasher::new();
        let missing = || io::Error::new(io::ErrorKind::NotFound, "no such file");
        let file = self
            .open_file(rel)?
            .ok_or_else(|| self.err("read", rel)(missing()))?;
        hasher.update_reader(file).map_err(self.err("read", rel))?;
        Ok(hasher.finalize())
    }

    fn read_state(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.state_path(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(EndpointError::new(
                "read state",
                path.display().to_string(),
                e,
            )),
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
        let mut sink = self.receive_file(&rel, &entry, None, None)?;
        sink.write(Op::Literal(bytes.to_vec()))?;
        let sent = Encoded {
            size: bytes.len() as u64,
            hash: blake3::hash(bytes),
        };
        sink.commit(&sent).map(drop)
    }
}

/// The entry at `full`, not followed if it is a symlink; `None` when nothing is there.
fn entry_at(full: &Path) -> io::Result<Option<Entry>> {
    let meta = match fs::symlink_metadata(full) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let target = match meta.file_type().is_symlink() {
        true => Some(fs::read_link(full)?),
        false => None,
    };
    Ok(Some(Entry::from_metadata(&meta, target)))
}

/// Asked once: temporary names carry it, for every file received.
static PID: LazyLock<u32> = LazyLock::new(std::process::id);

/// The process's umask, as the kernel reports it (`None` if it does not): a file created with
/// its mode needs no `chmod` unless the umask took some of it.
static UMASK: LazyLock<Option<u32>> = LazyLock::new(|| {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
});

/// How much of a file is written between two early write-backs.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// A file being written to a temporary name beside its target.
pub struct LocalSink<'a> {
    endpoint: &'a LocalEndpoint,
    rel: PathBuf,
    entry: Entry,
    temp: PathBuf,
    expected: Option<Expected>,
    rebuild: Option<Rebuild<BufWriter<File>>>,
    committed: bool,
    /// The temporary file again, to start its write-back to disk early from another thread:
    /// the flush before the rename then has little left to do.
    writeback: Option<File>,
    flushing: Option<std::thread::JoinHandle<()>>,
    flushed_at: u64,
}

impl LocalSink<'_> {
    fn fail(&self, e: DeltaError) -> EndpointError {
        let error = self.endpoint.err("write", &self.rel);
        match e {
            DeltaError::Io(e) => error(e),
            bad => error(io::Error::new(io::ErrorKind::InvalidData, bad.to_string()))
                .meaning(Failure::BadDelta),
        }
    }
}

impl FileSink for LocalSink<'_> {
    fn write(&mut self, op: Op) -> Result<()> {
        let rebuild = self.rebuild.as_mut().expect("written before commit");
        let pushed = rebuild.push(&op);
        let written = rebuild.written;
        pushed.map_err(|e| self.fail(e))?;
        let idle = self.flushing.as_ref().is_none_or(|f| f.is_finished());
        if written - self.flushed_at >= WRITEBACK_EVERY && idle {
            self.flushed_at = written;
            if let Some(file) = self.writeback.as_ref().and_then(|f| f.try_clone().ok()) {
                self.flushing = Some(std::thread::spawn(move || drop(file.sync_data())));
            }
        }
        Ok(())
    }

    fn commit(self: Box<Self>, sent: &Encoded) -> Result<u64> {
        self.finish(sent, true)?.publish()
    }
}

impl LocalSink<'_> {
    /// Checks the file against the sender's hash and gives it its mode and mtime, still under
    /// its temporary name; it is renamed into place by [`Staged::publish`] once it is on disk:
    /// after its own fsync (`sync`), or after [`LocalEndpoint::flush_all`] for a batch.
    pub fn finish(mut self, sent: &Encoded, sync: bool) -> Result<Staged> {
        if let Some(flushing) = self.flushing.take() {
            let _ = flushing.join();
        }
        let rebuild = self.rebuild.take().expect("finished once");
        let size = rebuild.written;
        let out = rebuild.finish(&sent.hash).map_err(|e| self.fail(e))?;
        let entry = &self.entry;
        let finished = (|| {
            let file = out.into_inner().map_err(io::IntoInnerError::into_error)?;
            // The file was created with its mode, less what the umask took.
            if UMASK.is_none_or(|umask| entry.mode & 0o7777 & umask != 0) {
                file.set_permissions(fs::Permissions::from_mode(entry.mode))?;
            }
            filetime::set_file_handle_times(&file, None, Some(to_filetime(entry.mtime)))?;
            if sync {
                file.sync_all()?;
            }
            Ok(())
        })();
        finished.map_err(self.endpoint.err("write", &self.rel))?;
        self.committed = true;
        Ok(Staged {
            temp: self.temp.clone(),
            target: self.endpoint.full(&self.rel),
            expected: self.expected.take(),
            size,
            published: false,
        })
    }
}

/// A finished file under its temporary name, waiting to be renamed into place. Dropped
/// unpublished, it is removed.
pub struct Staged {
    temp: PathBuf,
    target: PathBuf,
    expected: Option<Expected>,
    size: u64,
    published: bool,
}

impl Staged {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Renames the file over its target, if the target still holds what was expected; returns
    /// its size.
    pub fn publish(mut self) -> Result<u64> {
        self.published = true;
        let renamed = self
            .still_expected()
            .and_then(|()| fs::rename(&self.temp, &self.target));
        match renamed {
            Ok(()) => Ok(self.size),
            Err(e) => {
                let _ = fs::remove_file(&self.temp);
                Err(EndpointError::new(
                    "write",
                    self.target.display().to_string(),
                    e,
                ))
            }
        }
    }

    fn still_expected(&self) -> io::Result<()> {
        still_holds(&self.target, self.expected.as_ref())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

impl Drop for LocalSink<'_> {
    /// Not committed (an error, a halt, a dropped connection): the temporary file goes.
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Under the sync rule: fails when `full` no longer holds what the run's scan saw there
/// (someone changed it during the run), so the change is left for the next run to see.
fn still_holds(full: &Path, expected: Option<&Expected>) -> io::Result<()> {
    match expected {
        Some(expected) if !expected.is_met_by(entry_at(full)?.as_ref()) => Err(io::Error::other(
            "changed during the sync; left as it is, and synced again on the next run",
        )),
        _ => Ok(()),
    }
}

/// Checks that `rel`, a path a peer sent, stays inside `root`: only plain names (no `..`, no
/// absolute path), and no symlink on the way (one could lead anywhere). The last name may be a
/// symlink: it is replicated as a link, never followed.
pub fn confine(root: &Path, rel: &Path) -> io::Result<()> {
    let outside = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
    let mut walked = root.to_path_buf();
    let mut components = rel.components().peekable();
    while let Some(component) = components.next() {
        let Component::Normal(name) = component else {
            return Err(outside(format!(
                "{} leaves the folder ({component:?}); only plain names are served",
                rel.display()
            )));
        };
        walked.push(name);
        if components.peek().is_some()
            && fs::symlink_metadata(&walked).is_ok_and(|m| m.file_type().is_symlink())
        {
            return Err(outside(format!(
                "{} passes through the symlink {}, which may lead outside the served folder",
                rel.display(),
                walked.display()
            )));
        }
    }
    Ok(())
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
    pid != *PID && !Path::new(&format!("/proc/{pid}")).exists()
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
