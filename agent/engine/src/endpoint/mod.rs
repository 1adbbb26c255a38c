//! Where a replica lives. The engine only talks to the [`Endpoint`] trait, so a folder on this
//! machine ([`LocalEndpoint`]) and a folder behind a remote agent (in `ferry-wire`) are synced
//! by the same code. A new kind of replica implements [`Endpoint`], says what more it can do
//! in its [`Capabilities`], and may offer a [`Pipeline`] of changes sent without waiting.
//!
//! Every write is crash-safe: a file is written under a temporary name in its destination
//! folder, flushed to disk, given its mode and mtime, then renamed over the target, so a crash
//! never leaves a half-written file under the real name.

use std::borrow::Cow;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::delta::{Encoded, Op, Signature};
use crate::fence::Fence;
use crate::filter::Filter;
use crate::journal::{Journaled, Mark};
use crate::meta::{Accounts, Keep, Xattrs};
use crate::tree::{Entry, Expected, Mtime, Tree, TreeBuilder};

mod local;

pub use local::{LocalEndpoint, LocalSink, Staged};

#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct EndpointError {
    /// What was being done, as a verb phrase: "read folder", "write file", ….
    pub op: Cow<'static, str>,
    /// The full path (or `agent:/path`) involved.
    pub path: String,
    /// What the failure means to the engine; the I/O error says what happened.
    pub failure: Failure,
    #[source]
    pub source: io::Error,
}

/// The failures the engine (or an agent's peer) reacts to differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An error of the file system at the replica.
    Io,
    /// A delta rebuilt into something other than the sender's file (a false block match, or
    /// a base that changed meanwhile): sending the file whole fixes it.
    BadDelta,
    /// The lease this work runs under is no longer current where the replica is.
    StaleLease,
    /// The path is outside what the endpoint may touch.
    Outside,
    /// The replica could not be reached, or its connection broke.
    Unreachable,
    /// The file went away since the scan (deleted or renamed meanwhile): normal churn on a
    /// live share, which the next run sees, not a failure.
    Vanished,
}

pub type Result<T> = std::result::Result<T, EndpointError>;

impl EndpointError {
    pub fn new(
        op: impl Into<Cow<'static, str>>,
        path: impl Into<String>,
        source: io::Error,
    ) -> Self {
        Self {
            op: op.into(),
            path: path.into(),
            failure: Failure::Io,
            source,
        }
    }

    /// The same error, meaning `failure` to the engine.
    pub fn meaning(self, failure: Failure) -> Self {
        Self { failure, ..self }
    }

    /// See [`Failure::BadDelta`].
    pub fn is_bad_delta(&self) -> bool {
        self.failure == Failure::BadDelta
    }

    /// The error `e` carries when a replica's reader or writer passed one through (so a lost
    /// lease still reads as one), or a new one for `op` on `path`.
    pub fn carried(op: &'static str, path: impl Into<String>, e: io::Error) -> Self {
        match e.get_ref().is_some_and(|inner| inner.is::<EndpointError>()) {
            true => *(e.into_inner().and_then(|inner| inner.downcast().ok()))
                .expect("checked to be an endpoint's error"),
            false => Self::new(op, path, e),
        }
    }
}

/// Produces a state file's bytes into the writer it is given (see [`Endpoint::write_state`]).
pub type WriteState<'a> = dyn FnMut(&mut dyn io::Write) -> io::Result<()> + 'a;

/// Which part of a replica a scan covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything under the root.
    Full,
    /// These paths (relative to the root) and, for folders, everything under them.
    Paths(Vec<PathBuf>),
}

/// Takes a scan's entries one by one, in the order it finds them (see
/// [`Endpoint::scan_each`]).
pub type EachEntry<'a> = dyn FnMut(&Path, Entry) -> Result<()> + Send + 'a;

/// One replica of a job: a folder, local or remote, that the engine reads and writes.
pub trait Endpoint: Send + Sync {
    /// How users name this replica in messages: `/srv/docs` or `agent:/srv/docs`.
    fn display(&self) -> String;
    /// Readies the replica for a run under `fence` (the lease the run works for); fails unless
    /// the root is an existing folder, which `create` makes first.
    fn prepare(&self, create: bool, fence: Option<&Fence>) -> Result<()>;
    /// Scans `scope`, handing each entry to `each` as it is found instead of holding the tree:
    /// a full scan in a tree's order, one of some paths in the order of the paths. A remote
    /// replica checks each path a peer names (see [`crate::tree::is_listable`]); the order it
    /// is the caller's to check.
    fn scan_each(&self, scope: &Scope, filter: &Filter, each: &mut EachEntry) -> Result<()>;
    /// What [`Endpoint::scan_each`] finds, as one tree.
    fn scan(&self, scope: &Scope, filter: &Filter) -> Result<Tree> {
        let mut scanned = TreeBuilder::default();
        self.scan_each(scope, filter, &mut |path, entry| {
            scanned.push(path, entry);
            Ok(())
        })?;
        Ok(scanned.build())
    }
    /// What its change journal says changed since `mark` (see [`crate::journal`]); a replica
    /// without one is scanned whole every time.
    fn changes_since(&self, mark: Option<&Mark>) -> Result<Journaled> {
        let _ = mark;
        Ok(Journaled::Unjournaled)
    }
    /// What is at `rel` now (not following a final symlink), if anything.
    fn stat(&self, rel: &Path) -> Result<Option<Entry>>;
    /// What this kind of replica can do beyond these calls; nothing more by default.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
    /// Its way of sending changes without waiting for each outcome, if it has one.
    fn pipeline(&self) -> Option<&dyn Pipeline> {
        None
    }
    /// Block signatures of the file at `rel`, the base for a delta; `None` without a file.
    fn signature(&self, rel: &Path) -> Result<Option<Signature>>;
    /// Streams the file at `rel` into `out` as a delta against `base` (whole without one).
    fn send_file(
        &self,
        rel: &Path,
        base: Option<&Signature>,
        out: &mut dyn FnMut(Op) -> io::Result<()>,
    ) -> Result<Encoded>;
    /// Starts writing `rel` crash-safely as `incoming` describes: its content comes as ops,
    /// and its mode, mtime, owner and attributes are set before it is renamed into place.
    fn receive_file<'a>(
        &'a self,
        rel: &Path,
        incoming: &Incoming,
    ) -> Result<Box<dyn FileSink + 'a>>;
    /// With `expected`, fails instead if `rel` no longer holds what was expected (see
    /// [`Expected`]), as [`Endpoint::remove`] does.
    fn make_dir(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<()>;
    fn make_symlink(&self, rel: &Path, entry: &Entry) -> Result<()>;
    /// Makes the FIFO, socket or device `entry` describes at `rel` (for a job that keeps
    /// special files), replacing what is there.
    fn make_special(&self, rel: &Path, entry: &Entry) -> Result<()>;
    /// Removes a file or link, or an empty folder. A folder that is not empty is left in place
    /// and `Ok(false)` returned: it holds files the job does not own (excluded ones, say). With
    /// `expected`, `rel` is checked first where it is, so a remote replica costs no round trip
    /// for it.
    fn remove(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<bool>;
    /// Renames `from` to `to`, which must not exist: a rename never replaces anything (it
    /// moves a losing version aside, next to files that may be a user's).
    fn rename(&self, from: &Path, to: &Path) -> Result<()>;
    /// Places a copy of the file at `from` as `to` (making its folders): a hard link where the
    /// file system allows, else a copy. Keeps a version before it is deleted or overwritten,
    /// and moves a renamed file's content without sending it; with a `check`, only while
    /// both paths hold what it expects.
    fn duplicate(&self, from: &Path, to: &Path, check: Option<&MoveCheck>) -> Result<()>;
    fn set_mtime(&self, rel: &Path, mtime: Mtime) -> Result<()>;
    /// Gives the entry at `rel` `entry`'s permission bits ([`Entry::kept_mode`]) and owner
    /// (where this replica sets owners and `entry` names one) and, with `xattrs`, makes its
    /// extended attributes that `keep` covers exactly those; never through a symlink. A
    /// `chmod`, `chown`, `setfacl` or `setfattr` at the source so costs no file bytes.
    fn set_meta(
        &self,
        rel: &Path,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
        keep: Keep,
    ) -> Result<()>;
    /// The extended attributes (ACLs among them) of the entry at `rel`, sorted by name.
    fn xattrs(&self, rel: &Path) -> Result<Xattrs>;
    /// The names this replica's machine gives the users `uids` and groups `gids`, those it
    /// knows (owners are kept by name, see [`Keep::numeric_ids`]).
    fn account_names(&self, uids: &[u32], gids: &[u32]) -> Result<Accounts>;
    /// The numbers this replica's machine gives the users and groups so named, those it knows.
    fn account_ids(&self, users: &[String], groups: &[String]) -> Result<Accounts>;
    fn hash(&self, rel: &Path) -> Result<blake3::Hash>;
    /// ferry's own state for this replica (a sync job's last agreed tree), by name, read as it
    /// is used: a million-file job's is over a hundred megabytes.
    fn read_state(&self, name: &str) -> Result<Option<Box<dyn io::Read + '_>>>;
    /// State `name` whole, for the small ones.
    fn read_state_bytes(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(mut reader) = self.read_state(name)? else {
            return Ok(None);
        };
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| EndpointError::carried("read state", self.display() + "/" + name, e))?;
        Ok(Some(bytes))
    }
    /// Puts in place every file committed but not yet there (a local replica makes a batch
    /// of them durable with one flush): those that failed after all. The engine calls it
    /// when it settles, before anything that needs the files in place. Required, so that no
    /// wrapper of a replica forgets to pass it on: its files would never be put in place.
    fn publish_committed(&self) -> Vec<(PathBuf, EndpointError)>;
    /// Writes state `name` as `produce` writes it: in place and durable once it returns, or
    /// not at all, the state before it kept whole.
    fn write_state(&self, name: &str, produce: &mut WriteState) -> Result<()>;
    /// Writes state `name` whole, for the small ones.
    fn write_state_bytes(&self, name: &str, bytes: &[u8]) -> Result<()> {
        self.write_state(name, &mut |out| out.write_all(bytes))
    }
    /// Bytes this replica has moved over the network so far (0 for a local folder).
    fn wire_bytes(&self) -> u64 {
        0
    }
}

/// A file about to be written (see [`Endpoint::receive_file`]).
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Its mode and mtime, and its owner where the replica sets owners.
    pub entry: &'a Entry,
    /// The block size of the current file's signature the ops were made against; `None`
    /// when they are literals only.
    pub block_size: Option<u32>,
    /// Under the sync rule, what `rel` must still hold for the file to be renamed into place.
    pub expected: Option<&'a Expected>,
    /// Its extended attributes (ACLs among them), if it is to have any.
    pub xattrs: Option<&'a Xattrs>,
}

/// What a file taken as moved must still be when it is duplicated, where either side may
/// change meanwhile (the sync rule): the file it is taken from as scanned, and what was at the
/// new path (nothing, as a rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveCheck {
    pub from: Expected,
    pub to: Expected,
}

/// What a kind of replica can do, so the engine plans for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// File data to or from it crosses a network: a delta against the old version, or a
    /// local duplicate of a moved file, saves bytes there.
    pub across_network: bool,
    /// What it keeps of what the job keeps ([`Keep`]): a writer that is not root keeps no
    /// owners, an older agent none of it.
    pub keeps: Keep,
    /// It duplicates a moved file only while a [`MoveCheck`] holds (an older agent ignores
    /// one), so the sync rule, whose replicas may change during a run, can take moved files
    /// from where they were.
    pub checks_moves: bool,
}

/// Changes sent without waiting for each outcome, where that saves round trips (a replica on
/// an agent): the outcomes come with [`Pipeline::settle`]. The engine reaches it through
/// [`Changes`], which falls back to the plain calls for a replica without one.
pub trait Pipeline {
    /// The files whose [`Endpoint::signature`] the run asks for next, in order: they are
    /// asked for ahead, so each costs no round trip of its own.
    fn expect_signatures(&self, paths: Vec<PathBuf>);
    /// The hashes of several files, each or why not, in order, asked for all at once.
    fn hashes(&self, rels: &[PathBuf]) -> Vec<Result<blake3::Hash>>;
    /// Removes `rel` without waiting: the outcome comes with [`Pipeline::settle`].
    fn remove_later(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<()>;
    /// Duplicates `from` as `to` (a moved file) without waiting: a failure comes with
    /// [`Pipeline::settle`], as a failed write.
    fn duplicate_later(&self, from: &Path, to: &Path, check: Option<&MoveCheck>) -> Result<()>;
    /// Makes a folder without waiting (folders and files are made in the order sent): a
    /// failure comes with [`Pipeline::settle`].
    fn make_dir_later(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<()>;
    /// Sets a time without waiting: a failure comes with [`Pipeline::settle`].
    fn set_mtime_later(&self, rel: &Path, mtime: Mtime) -> Result<()>;
    /// [`Endpoint::set_meta`] without waiting: a failure comes with [`Pipeline::settle`].
    fn set_meta_later(
        &self,
        rel: &Path,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
        keep: Keep,
    ) -> Result<()>;
    /// Waits for what was sent without waiting and says what it came to.
    fn settle(&self) -> Settled;
}

/// The engine's calls that use a replica's [`Pipeline`] when it has one and the plain,
/// waiting calls when not.
pub trait Changes {
    fn expect_signatures(&self, paths: Vec<PathBuf>);
    fn hashes(&self, rels: &[PathBuf]) -> Vec<Result<blake3::Hash>>;
    /// `Some(removed)` when done at once, `None` when the outcome comes with `settle`.
    fn remove_later(
        &self,
        rel: &Path,
        entry: &Entry,
        expected: Option<&Expected>,
    ) -> Result<Option<bool>>;
    fn duplicate_later(&self, from: &Path, to: &Path, check: Option<&MoveCheck>) -> Result<()>;
    fn make_dir_later(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<()>;
    fn set_mtime_later(&self, rel: &Path, mtime: Mtime) -> Result<()>;
    fn set_meta_later(
        &self,
        rel: &Path,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
        keep: Keep,
    ) -> Result<()>;
    fn settle(&self) -> Settled;
}

impl Changes for dyn Endpoint + '_ {
    fn expect_signatures(&self, paths: Vec<PathBuf>) {
        if let Some(pipeline) = self.pipeline() {
            pipeline.expect_signatures(paths);
        }
    }

    fn hashes(&self, rels: &[PathBuf]) -> Vec<Result<blake3::Hash>> {
        match self.pipeline() {
            Some(pipeline) => pipeline.hashes(rels),
            None => rels.iter().map(|rel| self.hash(rel)).collect(),
        }
    }

    fn remove_later(
        &self,
        rel: &Path,
        entry: &Entry,
        expected: Option<&Expected>,
    ) -> Result<Option<bool>> {
        match self.pipeline() {
            Some(pipeline) => pipeline.remove_later(rel, entry, expected).map(|()| None),
            None => self.remove(rel, entry, expected).map(Some),
        }
    }

    fn duplicate_later(&self, from: &Path, to: &Path, check: Option<&MoveCheck>) -> Result<()> {
        match self.pipeline() {
            Some(pipeline) => pipeline.duplicate_later(from, to, check),
            None => self.duplicate(from, to, check),
        }
    }

    fn make_dir_later(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<()> {
        match self.pipeline() {
            Some(pipeline) => pipeline.make_dir_later(rel, entry, expected),
            None => self.make_dir(rel, entry, expected),
        }
    }

    fn set_mtime_later(&self, rel: &Path, mtime: Mtime) -> Result<()> {
        match self.pipeline() {
            Some(pipeline) => pipeline.set_mtime_later(rel, mtime),
            None => self.set_mtime(rel, mtime),
        }
    }

    fn set_meta_later(
        &self,
        rel: &Path,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
        keep: Keep,
    ) -> Result<()> {
        match self.pipeline() {
            Some(pipeline) => pipeline.set_meta_later(rel, entry, xattrs, keep),
            None => self.set_meta(rel, entry, xattrs, keep),
        }
    }

    fn settle(&self) -> Settled {
        match self.pipeline() {
            Some(pipeline) => pipeline.settle(),
            None => Settled {
                failed_writes: self.publish_committed(),
                ..Settled::default()
            },
        }
    }
}

/// What a replica's pipelined work came to (see [`Pipeline::settle`]).
#[derive(Debug, Default)]
pub struct Settled {
    /// Files committed or moved without waiting that failed after all; a delta that did not
    /// rebuild the file fails as [`EndpointError::is_bad_delta`].
    pub failed_writes: Vec<(PathBuf, EndpointError)>,
    /// Removals sent without waiting: whether each removed something, or why it failed.
    pub removals: Vec<(PathBuf, Result<bool>)>,
    /// Other changes sent without waiting that failed (a time or metadata not set).
    pub failed_changes: Vec<(PathBuf, EndpointError)>,
    /// Folders made without waiting that failed.
    pub failed_dirs: Vec<(PathBuf, EndpointError)>,
}

/// A file being written: ops go in, and [`FileSink::commit`] checks the result against the
/// sender's hash and renames it into place. Dropped without a commit, it leaves nothing.
pub trait FileSink {
    fn write(&mut self, op: Op) -> Result<()>;
    /// Returns the size of the file now in place.
    fn commit(self: Box<Self>, sent: &Encoded) -> Result<u64>;
}
