//! A replica on this machine: a folder, read and written through the file system, every path
//! resolved beneath the folder's open handle and never through a symlink ([`Root`]).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, BufWriter};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, RwLock, Weak};

use filetime::FileTime;
use rustix::fs::FileType;

use super::{
    Capabilities, EachEntry, Endpoint, EndpointError, Failure, FileSink, Incoming, MoveCheck,
    Result, Scope, WriteState,
};
use crate::beneath::{self, Folder, Found, Root};
use crate::delta::{self, Encoded, Op, Rebuild, Signature};
use crate::fence::Fence;
use crate::filter::{Filter, STATE_DIR, TEMP_PREFIX};
use crate::journal::{ChangeJournal, Journaled, Mark};
use crate::meta::{self, Accounts, Keep, Meta, Owner, Xattrs};
use crate::tree::{Entry, Expected, Kind, Mtime, file_mode};

/// A folder on this machine.
#[derive(Debug)]
pub struct LocalEndpoint {
    /// Where the replica is, as users name it.
    path: PathBuf,
    /// The folder it lies in and must stay beneath: trusted configuration (an agent's root,
    /// a folder a scheduler may use) or the replica itself. It is opened as given; the rest of
    /// `path` is resolved beneath it without following a symlink.
    anchor: PathBuf,
    /// The replica's folder, opened by [`Endpoint::prepare`] (or on first use) and held: a
    /// folder swapped for a symlink meanwhile cannot move the replica.
    root: RwLock<Option<Arc<Root>>>,
    /// Only looked at (a dry run): a scan leaves even the temporary files of dead runs alone.
    looks_only: bool,
    /// Files committed by a run, made durable and put in place a batch at a time.
    batches: Mutex<Batches>,
    /// The folder the last file was received into, by its path, while a file received there
    /// is not yet in place: the files of a folder, received one after another, resolve it
    /// once instead of twice each (made, then renamed into place), and each goes into place
    /// in the folder its temporary name was made in.
    receiving: Mutex<Option<(PathBuf, Weak<Folder>)>>,
    /// The change journal of the root it lies in (an agent's), if one is kept.
    journal: Option<Arc<dyn ChangeJournal>>,
}

impl Clone for LocalEndpoint {
    /// The same folder, without the files committed through this one.
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
            anchor: self.anchor.clone(),
            root: RwLock::new(self.held()),
            looks_only: self.looks_only,
            batches: Mutex::default(),
            receiving: Mutex::default(),
            journal: self.journal.clone(),
        }
    }
}

impl LocalEndpoint {
    /// The folder `path`, as given (an administrator named it).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self::beneath(path.clone(), path)
    }

    /// The same folder, to be looked at only (a dry run): its scans remove nothing, not even
    /// a dead run's temporary files, whose process another machine or container may run.
    pub fn looking_only(mut self) -> Self {
        self.looks_only = true;
        self
    }

    /// The same folder, whose changes `journal` (kept over `anchor`) records.
    pub fn journaled(mut self, journal: Arc<dyn ChangeJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// The folder `path` inside `anchor`: no symlink between them is followed. `path` must
    /// start with `anchor`.
    pub fn beneath(anchor: impl Into<PathBuf>, path: impl Into<PathBuf>) -> Self {
        let (anchor, path) = (anchor.into(), path.into());
        debug_assert!(path.starts_with(&anchor), "{path:?} is not in {anchor:?}");
        Self {
            anchor,
            path,
            root: RwLock::default(),
            looks_only: false,
            batches: Mutex::default(),
            receiving: Mutex::default(),
            journal: None,
        }
    }

    /// What a folder on this machine keeps: everything, but owners only when this process
    /// runs as root (a device, too, needs root: making one fails without).
    pub fn keeps() -> Keep {
        Keep {
            owner: *SETS_OWNERS,
            specials: true,
            ..Keep::default()
        }
    }

    /// The error for a user or group that could not be looked up (an unreachable directory
    /// service, say).
    fn accounts_error(&self) -> impl Fn(nix::Error) -> EndpointError + '_ {
        |e| self.err("look up the users and groups of", Path::new(""))(e.into())
    }

    fn batches(&self) -> MutexGuard<'_, Batches> {
        self.batches.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn held(&self) -> Option<Arc<Root>> {
        self.root.read().expect("root lock").clone()
    }

    fn open(&self, create: bool) -> io::Result<Arc<Root>> {
        let below = self
            .path
            .strip_prefix(&self.anchor)
            .unwrap_or(Path::new(""));
        let root = Arc::new(Root::open(&self.anchor, below, create)?);
        *self.root.write().expect("root lock") = Some(root.clone());
        Ok(root)
    }

    /// The replica's open folder.
    fn root(&self) -> Result<Arc<Root>> {
        match self.held() {
            Some(root) => Ok(root),
            None => self
                .open(false)
                .map_err(self.err("open folder", Path::new(""))),
        }
    }

    fn full(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    /// Builds the error naming `rel` only when there is one: this runs for every file.
    fn err<'a>(
        &'a self,
        op: &'static str,
        rel: &'a Path,
    ) -> impl FnOnce(io::Error) -> EndpointError + 'a {
        move |source| endpoint_error(op, self.full(rel), source)
    }

    /// Hands `rel` (and, for a folder, what lies below it) to `each` if the filter admits it.
    fn add(
        &self,
        root: &Root,
        (rel, entry): (&Path, Entry),
        filter: &Filter,
        (pace, each): (Pace, &mut EachEntry),
    ) -> Result<()> {
        let is_dir = entry.is_dir();
        if filter.admits(rel, is_dir) {
            each(rel, entry)?;
            if is_dir {
                self.walk(root, rel, filter, (pace, each))?;
            }
        }
        Ok(())
    }

    /// The entry for what a scan found at `rel`; `None` for nothing.
    fn entry(
        &self,
        found: Option<Found>,
        rel: &Path,
        read_link: impl FnOnce() -> io::Result<PathBuf>,
        read_xattrs: impl FnOnce() -> io::Result<Xattrs>,
    ) -> Result<Option<Entry>> {
        let Some(found) = found else {
            return Ok(None);
        };
        entry_from(found, read_link, read_xattrs)
            .map(Some)
            .map_err(self.err("read", rel))
    }

    /// The entry at `rel`, not followed if it is a symlink.
    fn lstat(&self, root: &Root, rel: &Path) -> Result<Option<Entry>> {
        let found = root.stat(rel).map_err(self.err("read", rel))?;
        self.entry(found, rel, || root.read_link(rel), || root.xattrs(rel))
    }

    /// Opens the regular file at `rel` for reading, never through a symlink.
    fn open_file(&self, rel: &Path) -> Result<Option<File>> {
        self.root()?.open_file(rel).map_err(self.err("open", rel))
    }

    /// Makes a fresh temporary entry beside `rel` with `create`; returns its path. Missing
    /// parent folders are made only when the first try finds them missing: usually they
    /// exist, and a file server receiving many small files should not ask again for each.
    fn create_beside<T>(
        &self,
        root: &Root,
        rel: &Path,
        create: impl Fn(&Path) -> io::Result<T>,
    ) -> Result<(PathBuf, T)> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let temp = parent.join(temp_name());
        let made = self.making_folders(root, rel, |_| create(&temp))?;
        Ok((temp, made))
    }

    /// `create`, tried again once the folders above `rel` are made when it finds them missing
    /// (told so by its argument).
    fn making_folders<T>(
        &self,
        root: &Root,
        rel: &Path,
        create: impl Fn(bool) -> io::Result<T>,
    ) -> Result<T> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let created = match create(false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !parent.as_os_str().is_empty() => {
                root.make_dirs(parent, 0o777)
                    .map_err(self.err("create folder", parent))?;
                create(true)
            }
            created => created,
        };
        created.map_err(self.err("write", rel))
    }

    /// Makes a temporary file for the received file `rel` in its folder, opened once for the
    /// files received there one after another (see `receiving`).
    fn create_received(
        &self,
        root: &Root,
        rel: &Path,
        mode: u32,
    ) -> Result<(Arc<Folder>, OsString, File)> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        let temp = OsString::from(temp_name());
        let (folder, file) = self.making_folders(root, rel, |again| {
            // Again, the folder held may be one that was removed: it is opened afresh.
            let folder = self.receiving_folder(root, parent, again)?;
            let file = folder.create_new(&temp, mode)?;
            Ok((folder, file))
        })?;
        Ok((folder, temp, file))
    }

    /// The folder `parent`, as held for the file received before if it went there and is not
    /// yet in place (and not `afresh`), or opened now.
    fn receiving_folder(
        &self,
        root: &Root,
        parent: &Path,
        afresh: bool,
    ) -> io::Result<Arc<Folder>> {
        let mut receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        let held = (receiving.as_ref())
            .filter(|(path, _)| path == parent && !afresh)
            .and_then(|(_, folder)| folder.upgrade());
        if let Some(folder) = held {
            return Ok(folder);
        }
        let folder = Arc::new(root.folder(parent)?);
        *receiving = Some((parent.to_path_buf(), Arc::downgrade(&folder)));
        Ok(folder)
    }

    /// Renames a finished temporary entry over `rel`, or removes it if anything failed.
    fn commit_temp(
        &self,
        root: &Root,
        temp: &Path,
        rel: &Path,
        written: io::Result<()>,
    ) -> Result<()> {
        let renamed = written.and_then(|()| root.rename(temp, rel));
        if renamed.is_err() {
            let _ = root.remove_file(temp);
        }
        renamed.map_err(self.err("write", rel))
    }

    /// Makes a link or a special file under a temporary name beside `rel` with `create`, gives
    /// it `entry`'s owner and time, and renames it over `rel`.
    fn make_beside(
        &self,
        rel: &Path,
        entry: &Entry,
        create: impl Fn(&Root, &Path) -> io::Result<()>,
    ) -> Result<()> {
        let root = self.root()?;
        let (temp, ()) = self.create_beside(&root, rel, |temp| create(&root, temp))?;
        let owned = match settable_owner(entry) {
            Some(owner) => root.chown(&temp, owner),
            None => Ok(()),
        };
        let written = owned.and_then(|()| root.set_times(&temp, entry.mtime, Some(entry.mtime)));
        self.commit_temp(&root, &temp, rel, written)
    }

    /// Starts writing `rel` (see [`Endpoint::receive_file`]).
    pub fn receive(&self, rel: &Path, incoming: &Incoming) -> Result<LocalSink<'_>> {
        let Incoming {
            entry,
            block_size,
            expected,
            xattrs,
        } = *incoming;
        if let Some(xattrs) = xattrs {
            checked_xattrs(xattrs).map_err(self.err("write", rel))?;
        }
        let root = self.root()?;
        let old = match block_size {
            Some(_) => self.open_file(rel)?,
            None => None,
        };
        let mode = file_mode(entry.mode());
        let (folder, temp, file) = self.create_received(&root, rel, mode)?;
        let mut sink = LocalSink {
            endpoint: self,
            root,
            folder,
            rel: rel.to_path_buf(),
            entry: entry.clone(),
            temp,
            expected: expected.cloned(),
            xattrs: xattrs.cloned(),
            rebuild: None,
            committed: false,
            // Only a file large enough to be flushed early needs a second handle.
            writeback: (entry.size >= WRITEBACK_EVERY)
                .then(|| file.try_clone().ok())
                .flatten(),
            flushing: None,
            flushed_at: 0,
        };
        let out = BufWriter::new(Output::new(file, entry.meta().sparse));
        let rebuild =
            Rebuild::new(old, block_size.unwrap_or(1), out).map_err(self.err("read", rel))?;
        sink.rebuild = Some(rebuild);
        Ok(sink)
    }

    fn state_path(name: &str) -> PathBuf {
        Path::new(STATE_DIR).join(name)
    }

    /// ferry's state file `name` for this replica, open for reading (see
    /// [`Endpoint::read_state`]).
    pub fn state_file(&self, name: &str) -> Result<Option<File>> {
        self.open_file(&Self::state_path(name))
    }

    /// Puts a copy of the file at `from` under a temporary name beside `to`.
    fn copy_beside(&self, root: &Root, from: &Path, to: &Path) -> Result<PathBuf> {
        let linked = self.create_beside(root, to, |temp| root.hard_link(from, temp));
        if let Ok((temp, ())) = linked {
            return Ok(temp);
        }
        // No hard link here (another file system's rules, a link count at its limit): copy,
        // reading only a regular file and writing only a new one.
        let missing = || io::Error::new(io::ErrorKind::NotFound, "no such file");
        let mut source = root
            .open_file(from)
            .and_then(|file| file.ok_or_else(missing))
            .map_err(self.err("duplicate", from))?;
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &source
                .metadata()
                .map_err(self.err("duplicate", from))?
                .permissions(),
        );
        let (temp, mut copy) =
            self.create_beside(root, to, |temp| root.create_new(temp, file_mode(mode)))?;
        match io::copy(&mut source, &mut copy) {
            Ok(_) => Ok(temp),
            Err(e) => {
                let _ = root.remove_file(&temp);
                Err(self.err("duplicate", from)(e))
            }
        }
    }
}

impl Endpoint for LocalEndpoint {
    fn display(&self) -> String {
        self.path.display().to_string()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            across_network: false,
            keeps: Self::keeps(),
            checks_moves: true,
        }
    }

    fn prepare(&self, create: bool, _fence: Option<&Fence>) -> Result<()> {
        self.open(create)
            .map(drop)
            .map_err(self.err("open folder", Path::new("")))
    }

    fn changes_since(&self, mark: Option<&Mark>) -> Result<Journaled> {
        let Some(journal) = &self.journal else {
            return Ok(Journaled::Unjournaled);
        };
        let folder = self
            .path
            .strip_prefix(&self.anchor)
            .unwrap_or(Path::new(""));
        Ok(journal.changes_since(folder, mark))
    }

    fn scan_each(&self, scope: &Scope, filter: &Filter, each: &mut EachEntry) -> Result<()> {
        let root = self.root()?;
        let pace = Pace::default();
        beneath::with_own_cwd(|| match scope {
            Scope::Full => self.walk(&root, Path::new(""), filter, (pace, each)),
            Scope::Paths(paths) => {
                for rel in paths.iter().filter(|rel| ancestors_admitted(rel, filter)) {
                    if let Some(entry) = self.lstat(&root, rel)? {
                        self.add(&root, (rel, entry), filter, (pace, each))?;
                    }
                }
                Ok(())
            }
        })
    }

    fn stat(&self, rel: &Path) -> Result<Option<Entry>> {
        self.lstat(&*self.root()?, rel)
    }

    fn signature(&self, rel: &Path) -> Result<Option<Signature>> {
        let Some(file) = self.open_file(rel)? else {
            return Ok(None);
        };
        let size = file.metadata().map_err(self.err("read", rel))?.len();
        delta::signature(&mut io::BufReader::new(file), size)
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
        let gone = || self.err("open", rel)(missing()).meaning(Failure::Vanished);
        let mut file = self.open_file(rel)?.ok_or_else(gone)?;
        delta::encode(&mut file, base, out).map_err(self.err("read", rel))
    }

    fn receive_file<'a>(
        &'a self,
        rel: &Path,
        incoming: &Incoming,
    ) -> Result<Box<dyn FileSink + 'a>> {
        Ok(Box::new(self.receive(rel, incoming)?))
    }

    fn make_dir(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<()> {
        let root = self.root()?;
        still_holds(&root, rel, expected).map_err(self.err("create folder", rel))?;
        // A symlink where the folder goes is replaced, as rsync does: never followed.
        if let Some(Kind::Symlink) = self.lstat(&root, rel)?.map(|found| found.kind()) {
            root.remove_file(rel)
                .map_err(self.err("replace the symlink", rel))?;
        }
        root.make_dirs(rel, 0o700)
            .map_err(self.err("create folder", rel))?;
        if let Some(owner) = settable_owner(entry) {
            root.chown(rel, owner)
                .map_err(self.err("set owner of", rel))?;
        }
        root.set_dir_mode(rel, entry.mode())
            .map_err(self.err("set mode of", rel))
    }

    fn make_symlink(&self, rel: &Path, entry: &Entry) -> Result<()> {
        let Some(target) = entry.target() else {
            unreachable!("make_symlink called for {entry:?}");
        };
        self.make_beside(rel, entry, |root, temp| root.symlink(target, temp))
    }

    fn make_special(&self, rel: &Path, entry: &Entry) -> Result<()> {
        let Kind::Special(node) = entry.kind() else {
            unreachable!("make_special called for {entry:?}");
        };
        let device = entry.device();
        let mode = entry.kept_mode();
        self.make_beside(rel, entry, |root, temp| {
            root.make_node(temp, node, mode, device)
        })
    }

    fn remove(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<bool> {
        let root = self.root()?;
        still_holds(&root, rel, expected).map_err(self.err("remove", rel))?;
        let removed = if entry.is_dir() {
            root.remove_dir(rel)
        } else {
            root.remove_file(rel)
        };
        match removed {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(false),
            Err(e) => Err(self.err("remove", rel)(e)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        self.root()?
            .rename_new(from, to)
            .map_err(self.err("rename", from))
    }

    fn duplicate(&self, rel: &Path, to: &Path, check: Option<&MoveCheck>) -> Result<()> {
        let root = self.root()?;
        let temp = self.copy_beside(&root, rel, to)?;
        // Checked once the copy is made: a change to the file after it was linked shows.
        let holds = |check: &MoveCheck| {
            still_holds(&root, rel, Some(&check.from))
                .and_then(|()| still_holds(&root, to, Some(&check.to)))
        };
        self.commit_temp(&root, &temp, to, check.map_or(Ok(()), holds))
    }

    fn set_meta(
        &self,
        rel: &Path,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
        keep: Keep,
    ) -> Result<()> {
        if let Some(xattrs) = xattrs {
            checked_xattrs(xattrs).map_err(self.err("set extended attributes of", rel))?;
        }
        let root = self.root()?;
        // The owner first: a `chown` drops file capabilities, which the attributes then set.
        if let Some(owner) = settable_owner(entry) {
            root.chown(rel, owner)
                .map_err(self.err("set owner of", rel))?;
        }
        let moded = match entry.kind() {
            Kind::Dir => root.set_dir_mode(rel, entry.kept_mode()),
            // Through a handle of the file itself: a path could be swapped for a link.
            Kind::File => root.open_file(rel).and_then(|file| match file {
                Some(file) => file.set_permissions(fs::Permissions::from_mode(entry.kept_mode())),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such file")),
            }),
            // A link has no mode of its own on Linux, and a special file is never synced.
            Kind::Symlink | Kind::Special(_) => Ok(()),
        };
        moded.map_err(self.err("set mode of", rel))?;
        match xattrs {
            Some(xattrs) => root
                .set_xattrs(rel, xattrs, &|name| keep.keeps(name))
                .map_err(self.err("set extended attributes of", rel)),
            None => Ok(()),
        }
    }

    fn account_names(&self, uids: &[u32], gids: &[u32]) -> Result<Accounts> {
        let mut accounts = Accounts::default();
        for &uid in uids {
            let user = nix::unistd::User::from_uid(uid.into()).map_err(self.accounts_error())?;
            accounts.users.extend(user.map(|user| (uid, user.name)));
        }
        for &gid in gids {
            let group = nix::unistd::Group::from_gid(gid.into()).map_err(self.accounts_error())?;
            accounts.groups.extend(group.map(|group| (gid, group.name)));
        }
        Ok(accounts)
    }

    fn account_ids(&self, users: &[String], groups: &[String]) -> Result<Accounts> {
        let mut accounts = Accounts::default();
        for name in users {
            let user = nix::unistd::User::from_name(name).map_err(self.accounts_error())?;
            accounts
                .users
                .extend(user.map(|user| (user.uid.as_raw(), name.clone())));
        }
        for name in groups {
            let group = nix::unistd::Group::from_name(name).map_err(self.accounts_error())?;
            accounts
                .groups
                .extend(group.map(|group| (group.gid.as_raw(), name.clone())));
        }
        Ok(accounts)
    }

    fn xattrs(&self, rel: &Path) -> Result<Xattrs> {
        self.root()?
            .xattrs(rel)
            .map_err(self.err("read extended attributes of", rel))
    }

    fn set_mtime(&self, rel: &Path, mtime: Mtime) -> Result<()> {
        self.root()?
            .set_times(rel, mtime, Some(mtime))
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

    fn read_state(&self, name: &str) -> Result<Option<Box<dyn io::Read + '_>>> {
        let file = self.state_file(name)?;
        Ok(file.map(|file| Box::new(file) as Box<dyn io::Read>))
    }

    fn publish_committed(&self) -> Vec<(PathBuf, EndpointError)> {
        self.batches().publish_all()
    }

    fn write_state(&self, name: &str, produce: &mut WriteState) -> Result<()> {
        let rel = Self::state_path(name);
        let entry = Entry::file(0, now_mtime(), 0o600);
        let incoming = Incoming {
            entry: &entry,
            block_size: None,
            expected: None,
            xattrs: None,
        };
        let mut out = StateOut {
            sink: self.receive(&rel, &incoming)?,
            hasher: blake3::Hasher::new(),
            size: 0,
        };
        let mut buffered = io::BufWriter::with_capacity(1 << 20, &mut out);
        let produced = produce(&mut buffered).and_then(|()| io::Write::flush(&mut buffered));
        drop(buffered);
        produced.map_err(|e| {
            EndpointError::carried("write state", self.full(&rel).display().to_string(), e)
        })?;
        let sent = Encoded {
            size: out.size,
            hash: out.hasher.finalize(),
        };
        // Durable and in place at once: what it records is already in place.
        out.sink.finish(&sent, true)?.publish().map(drop)
    }
}

/// A state file as it is written: into its sink, hashed on the way for the sink's check.
struct StateOut<'a> {
    sink: LocalSink<'a>,
    hasher: blake3::Hasher,
    size: u64,
}

impl io::Write for StateOut<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.sink
            .write(Op::Literal(bytes.to_vec()))
            .map_err(io::Error::other)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The error for `op` on `full`; a path that would have led outside the folder is
/// [`Failure::Outside`].
fn endpoint_error(op: &'static str, full: PathBuf, source: io::Error) -> EndpointError {
    let failure = match beneath::is_outside(&source) {
        true => Failure::Outside,
        false => Failure::Io,
    };
    EndpointError::new(op, full.display().to_string(), source).meaning(failure)
}

/// `xattrs` if they are within Linux's limits (they may come from a peer).
fn checked_xattrs(xattrs: &[meta::Xattr]) -> io::Result<()> {
    meta::check(xattrs).map_err(|why| io::Error::new(io::ErrorKind::InvalidInput, why))
}

/// The owner to give a written entry: the one it names, where this process may give owners
/// (it runs as root); otherwise whoever writes owns it, as with `rsync` run by a user.
fn settable_owner(entry: &Entry) -> Option<Owner> {
    entry.owner().filter(|_| *SETS_OWNERS)
}

/// Whether this process may give files away: it runs as root.
pub static SETS_OWNERS: LazyLock<bool> = LazyLock::new(|| nix::unistd::geteuid().is_root());

/// Asked once: temporary names carry it, for every file received.
static PID: LazyLock<u32> = LazyLock::new(std::process::id);

/// A name for a temporary file no other of this process or of another has (until the process
/// ends: a dead process's are removed by the next scan, see [`is_orphan_temp`]).
fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{TEMP_PREFIX}{}.{n}", *PID)
}

/// The entry for `found`.
fn entry_from(
    found: Found,
    read_link: impl FnOnce() -> io::Result<PathBuf>,
    read_xattrs: impl FnOnce() -> io::Result<Xattrs>,
) -> io::Result<Entry> {
    let entry = match found.file_type {
        FileType::RegularFile => Entry::file(found.size, found.mtime, found.mode),
        FileType::Directory => Entry::dir(found.mtime, found.mode),
        FileType::Symlink => Entry::symlink(read_link()?, found.mtime, found.mode),
        special => {
            let node = beneath::node(special);
            let device = if node.is_device() { found.device } else { 0 };
            let owner = Some(found.owner);
            let special = Entry::special(node, device, found.mtime, found.mode);
            return Ok(special.with_meta(Meta {
                owner,
                ..Meta::default()
            }));
        }
    };
    let (acl, xattrs) = meta::digests(&read_xattrs()?, &account_name);
    let file = entry.kind() == Kind::File;
    Ok(entry.with_meta(Meta {
        owner: Some(found.owner),
        acl,
        xattrs,
        link: (file && found.links > 1).then(|| meta::link_id(found.dev, found.ino)),
        sparse: file && found.allocated < found.size,
    }))
}

/// Under the sync rule: fails when `rel` no longer holds what the run's scan saw there
/// (someone changed it during the run), so the change is left for the next run to see.
fn still_holds(root: &Root, rel: &Path, expected: Option<&Expected>) -> io::Result<()> {
    holds(expected, || root.stat(rel), || root.read_link(rel))
}

/// [`still_holds`] for the name `name` in `folder`.
fn still_holds_in(folder: &Folder, name: &OsStr, expected: Option<&Expected>) -> io::Result<()> {
    holds(expected, || folder.stat(name), || folder.read_link(name))
}

fn holds(
    expected: Option<&Expected>,
    stat: impl FnOnce() -> io::Result<Option<Found>>,
    read_link: impl FnOnce() -> io::Result<PathBuf>,
) -> io::Result<()> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let now = match stat()? {
        // A quick check compares no attributes: none are read.
        Some(found) => Some(entry_from(found, read_link, || Ok(Vec::new()))?),
        None => None,
    };
    if expected.is_met_by(now.as_ref()) {
        return Ok(());
    }
    Err(io::Error::other(
        "changed during the sync; left as it is, and synced again on the next run",
    ))
}

/// Scoped paths come from a watcher: skip one whose parent folder the filter excludes.
fn ancestors_admitted(rel: &Path, filter: &Filter) -> bool {
    rel.ancestors()
        .skip(1)
        .filter(|a| !a.as_os_str().is_empty())
        .all(|a| filter.admits_dir(a))
}

/// A temporary file left by a writer that no longer runs (it crashed mid-transfer).
fn is_orphan_temp(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
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

mod accounts;
mod batch;
mod output;
mod sink;
mod staged;
mod walk;

use accounts::account_name;
use batch::Batches;
use output::Output;
pub use sink::LocalSink;
use sink::WRITEBACK_EVERY;
pub use staged::Staged;
use walk::Pace;

#[cfg(test)]
mod tests;
