//! A replica on another agent: the [`Endpoint`] trait spoken over a session. The engine calls
//! it from a blocking thread; each call waits on the session's futures through
//! [`crate::blocking`], the one place that may.
//!
//! A file's data streams as batches of delta ops without a reply for each, so a transfer costs
//! one round trip for the signature and one for the final verdict, whatever its size.

use std::ffi::OsStr;
use std::future::Future;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::runtime::Handle;

use crate::blocking;
use crate::client::{ClientError, Connector, Dial};
use crate::protocol::{CHECKED_MOVES, ErrorKind, Fence, JOURNALS, Request, Response, WireError};
use ferry_engine::delta::{Encoded, Op, Signature};
use ferry_engine::endpoint::{
    Capabilities, EachEntry, Endpoint, EndpointError, Failure, FileSink, Incoming, MoveCheck,
    Pipeline, Result, Scope, Settled, WriteState,
};
use ferry_engine::filter::Filter;
use ferry_engine::journal::{Journaled, Mark};
use ferry_engine::meta::{Accounts, Keep, Xattrs};
use ferry_engine::tree::{Entry, Expected, Mtime, is_listable};

mod pipeline;
mod sink;
mod state;
#[cfg(test)]
mod tests;

use pipeline::{Link, Owed};
use sink::RemoteSink;

pub use pipeline::{FILES_AHEAD, PIPELINE};

/// A folder `path` on the agent `dial` reaches.
pub struct RemoteEndpoint {
    dial: Dial,
    connect: Connector,
    /// The runtime the session's futures run on.
    runtime: Handle,
    path: String,
    session: Mutex<Option<Link>>,
    wire: Arc<AtomicU64>,
}

impl RemoteEndpoint {
    /// A folder on the agent `dial` reaches, through sessions on `runtime`.
    pub fn new(dial: Dial, path: impl Into<String>, runtime: Handle) -> Self {
        let connect = dial.connector();
        Self::with_connector(dial, connect, path, runtime)
    }

    /// The same, with sessions opened by `connect`.
    pub fn with_connector(
        dial: Dial,
        connect: Connector,
        path: impl Into<String>,
        runtime: Handle,
    ) -> Self {
        Self {
            dial,
            connect,
            runtime,
            path: path.into(),
            session: Mutex::new(None),
            wire: Arc::default(),
        }
    }

    pub fn dial(&self) -> &Dial {
        &self.dial
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn error(&self, op: &str, rel: &Path, source: io::Error) -> EndpointError {
        EndpointError::new(op.to_owned(), self.place(rel), source)
    }

    /// The error for a path the agent reported that no scan lists (see [`is_listable`]),
    /// named by its first 200 bytes: it may be 8 MiB long.
    fn unlistable(&self, op: &str, path: &Path) -> EndpointError {
        let why = "the agent reported a path that leaves the folder, or one longer than any \
                   scan lists";
        let refused = io::Error::new(io::ErrorKind::InvalidData, why);
        let bytes = path.as_os_str().as_bytes();
        let named = OsStr::from_bytes(&bytes[..bytes.len().min(200)]);
        self.error(op, Path::new(named), refused)
            .meaning(Failure::Outside)
    }

    /// `agent:/root/rel`, as users name it.
    fn place(&self, rel: &Path) -> String {
        let full = Path::new(&self.path).join(rel);
        format!("{}:{}", self.dial.agent, full.display())
    }

    /// Runs a session call from the engine's blocking thread ([`crate::blocking`]).
    fn on_session<'s, T, F>(
        &self,
        slot: &'s mut Option<Link>,
        call: impl FnOnce(&'s mut Link) -> F,
    ) -> std::result::Result<T, ClientError>
    where
        F: Future<Output = std::result::Result<T, ClientError>> + 's,
    {
        let Some(session) = slot.as_mut() else {
            return Err(ClientError::NoSession {
                agent: self.dial.agent.clone(),
            });
        };
        blocking::wait(&self.runtime, call(session))?
    }

    fn session(&self) -> MutexGuard<'_, Option<Link>> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One request and its response. A broken connection is dropped, so the next run
    /// reconnects.
    fn call(&self, op: &str, rel: &Path, request: Request) -> Result<Response> {
        let mut slot = self.session();
        let response = self.on_session(&mut slot, |s| s.call(request));
        self.answer(op, rel, &mut slot, response)
    }

    /// Turns a response into the endpoint's result: a `Failed` answer into the agent's error,
    /// a connection failure into an error naming the agent (and the end of this session).
    fn answer(
        &self,
        op: &str,
        rel: &Path,
        slot: &mut Option<Link>,
        response: std::result::Result<Response, ClientError>,
    ) -> Result<Response> {
        match response {
            Ok(Response::Failed(wire)) => Err(from_wire(&self.dial.agent, wire)),
            Ok(other) => Ok(other),
            Err(e) => {
                *slot = None;
                let source = io::Error::new(io::ErrorKind::BrokenPipe, e.to_string());
                Err(self.error(op, rel, source).meaning(Failure::Unreachable))
            }
        }
    }

    /// A file's hash, out of the agent's answer.
    fn hash_in(&self, rel: &Path, response: Result<Response>) -> Result<blake3::Hash> {
        match response? {
            Response::Hash(bytes) if bytes.len() == 32 => Ok(blake3::Hash::from_bytes(
                bytes.try_into().expect("32 bytes"),
            )),
            other => Err(self.unexpected("read", rel, &other)),
        }
    }

    fn unexpected(&self, op: &str, rel: &Path, got: &Response) -> EndpointError {
        let message = format!("the agent answered {got:?}");
        self.error(op, rel, io::Error::new(io::ErrorKind::InvalidData, message))
    }
}

fn make_dir_request(rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Request {
    Request::MakeDir {
        path: rel.to_path_buf(),
        entry: entry.clone(),
        expected: expected.cloned(),
    }
}

fn set_meta_request(rel: &Path, entry: &Entry, xattrs: Option<&Xattrs>, keep: Keep) -> Request {
    Request::SetMeta {
        path: rel.to_path_buf(),
        entry: entry.clone(),
        xattrs: xattrs.cloned(),
        keep,
    }
}

fn remove_request(rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Request {
    Request::Remove {
        path: rel.to_path_buf(),
        entry: entry.clone(),
        expected: expected.cloned(),
    }
}

fn duplicate_request(from: &Path, to: &Path, check: Option<&MoveCheck>) -> Request {
    Request::Duplicate {
        from: from.to_path_buf(),
        to: to.to_path_buf(),
        check: check.cloned(),
    }
}

/// An agent's error as an endpoint error naming the agent, its kind kept so the engine can
/// react (a bad delta is retried whole).
pub fn from_wire(agent: &str, wire: WireError) -> EndpointError {
    let kind = match wire.kind {
        ErrorKind::NotFound | ErrorKind::Vanished => io::ErrorKind::NotFound,
        ErrorKind::PermissionDenied | ErrorKind::Outside | ErrorKind::StaleEpoch => {
            io::ErrorKind::PermissionDenied
        }
        ErrorKind::StorageFull => io::ErrorKind::StorageFull,
        ErrorKind::InvalidData => io::ErrorKind::InvalidData,
        ErrorKind::Other => io::ErrorKind::Other,
    };
    let failure = match wire.kind {
        ErrorKind::InvalidData => Failure::BadDelta,
        ErrorKind::StaleEpoch => Failure::StaleLease,
        ErrorKind::Outside => Failure::Outside,
        ErrorKind::Vanished => Failure::Vanished,
        ErrorKind::NotFound
        | ErrorKind::PermissionDenied
        | ErrorKind::StorageFull
        | ErrorKind::Other => Failure::Io,
    };
    let source = io::Error::new(kind, wire.message);
    EndpointError::new(wire.op, format!("{agent}:{}", wire.path), source).meaning(failure)
}

impl Endpoint for RemoteEndpoint {
    fn display(&self) -> String {
        format!("{}:{}", self.dial.agent, self.path)
    }

    fn prepare(&self, create: bool, fence: Option<&Fence>) -> Result<()> {
        let root = Path::new("");
        let mut slot = self.session();
        *slot = None;
        let connect = (self.connect)(fence.cloned(), self.wire.clone());
        let session = blocking::wait(&self.runtime, connect)
            .map_err(ClientError::from)
            .and_then(|connected| connected)
            .map_err(|e| {
                let source = io::Error::other(e.to_string());
                self.error("connect to", root, source)
                    .meaning(Failure::Unreachable)
            })?;
        *slot = Some(Link::new(session));
        let open = Request::Open {
            path: self.path.clone(),
            create,
        };
        let response = self.on_session(&mut slot, |s| s.call(open));
        match self.answer("open folder", root, &mut slot, response)? {
            Response::Done => Ok(()),
            other => Err(self.unexpected("open folder", root, &other)),
        }
    }

    fn scan_each(&self, scope: &Scope, filter: &Filter, each: &mut EachEntry) -> Result<()> {
        let root = Path::new("");
        let (include, exclude) = filter.patterns();
        let request = Request::Scan {
            paths: match scope {
                Scope::Full => None,
                Scope::Paths(paths) => Some(paths.clone()),
            },
            include: include.to_vec(),
            exclude: exclude.to_vec(),
        };
        let mut response = self.call("read folder", root, request)?;
        let mut slot = self.session();
        loop {
            match response {
                Response::Scanned { entries, more } => {
                    if let Some((path, _)) = entries.iter().find(|(path, _)| !is_listable(path)) {
                        // Not to be trusted further: the session is dropped, unread.
                        *slot = None;
                        return Err(self.unlistable("read folder", path));
                    }
                    for (path, entry) in entries {
                        each(&path, entry)?;
                    }
                    if !more {
                        return Ok(());
                    }
                }
                other => return Err(self.unexpected("read folder", root, &other)),
            }
            let next = self.on_session(&mut slot, |s| s.receive());
            response = self.answer("read folder", root, &mut slot, next)?;
        }
    }

    fn changes_since(&self, mark: Option<&Mark>) -> Result<Journaled> {
        if !self.speaks(JOURNALS) {
            return Ok(Journaled::Unjournaled);
        }
        let root = Path::new("");
        let request = Request::ChangesSince {
            mark: mark.cloned(),
        };
        match self.call("ask the change journal of", root, request)? {
            Response::Journal { now: None, .. } => Ok(Journaled::Unjournaled),
            Response::Journal {
                now: Some(now),
                changed,
            } => match changed.iter().flatten().find(|path| !is_listable(path)) {
                Some(path) => Err(self.unlistable("ask the change journal of", path)),
                None => Ok(Journaled::At { now, changed }),
            },
            other => Err(self.unexpected("ask the change journal of", root, &other)),
        }
    }

    fn stat(&self, rel: &Path) -> Result<Option<Entry>> {
        let path = rel.to_path_buf();
        match self.call("read", rel, Request::Stat { path })? {
            Response::Stat(entry) => Ok(entry.map(|e| *e)),
            other => Err(self.unexpected("read", rel, &other)),
        }
    }

    fn capabilities(&self) -> Capabilities {
        // What the agent said it keeps when the session began (it may have changed since).
        let session = self.session();
        let session = session.as_ref().map(|link| &link.session);
        Capabilities {
            across_network: true,
            keeps: session.map(|s| s.keeps).unwrap_or_default(),
            checks_moves: session.is_some_and(|s| s.protocol >= CHECKED_MOVES),
        }
    }

    fn pipeline(&self) -> Option<&dyn Pipeline> {
        Some(self)
    }

    fn signature(&self, rel: &Path) -> Result<Option<Signature>> {
        let mut slot = self.session();
        let response = self.on_session(&mut slot, |link| link.signature(rel));
        match self.answer("read", rel, &mut slot, response)? {
            Response::Signature(sig) => Ok(sig),
            other => Err(self.unexpected("read", rel, &other)),
        }
    }

    fn send_file(
        &self,
        rel: &Path,
        base: Option<&Signature>,
        out: &mut dyn FnMut(Op) -> io::Result<()>,
    ) -> Result<Encoded> {
        let request = Request::ReadFile {
            path: rel.to_path_buf(),
            base: base.cloned(),
        };
        let mut response = self.call("read", rel, request)?;
        let mut slot = self.session();
        // After a local failure the stream is still read to its end, keeping the session usable.
        let mut failed: Option<io::Error> = None;
        loop {
            match response {
                Response::Data { ops } => {
                    for op in ops {
                        if failed.is_none()
                            && let Err(e) = out(op.into())
                        {
                            failed = Some(e);
                        }
                    }
                }
                Response::DataEnd { hash, size } => {
                    if let Some(e) = failed {
                        return Err(self.error("read", rel, e));
                    }
                    let hash: [u8; 32] = hash
                        .try_into()
                        .map_err(|_| self.error("read", rel, io::Error::other("malformed hash")))?;
                    return Ok(Encoded {
                        size,
                        hash: blake3::Hash::from_bytes(hash),
                    });
                }
                other => return Err(self.unexpected("read", rel, &other)),
            }
            let next = self.on_session(&mut slot, |s| s.receive());
            response = self.answer("read", rel, &mut slot, next)?;
        }
    }

    fn receive_file<'a>(
        &'a self,
        rel: &Path,
        incoming: &Incoming,
    ) -> Result<Box<dyn FileSink + 'a>> {
        let mut slot = self.session();
        let request = Request::WriteFile {
            path: rel.to_path_buf(),
            entry: incoming.entry.clone(),
            block_size: incoming.block_size,
            expected: incoming.expected.cloned(),
            xattrs: incoming.xattrs.cloned(),
        };
        let sent = self.on_session(&mut slot, |s| s.send(request));
        if let Err(e) = sent {
            return Err(self.answer("write", rel, &mut slot, Err(e)).unwrap_err());
        }
        Ok(Box::new(RemoteSink::new(self, rel, slot)))
    }

    fn make_dir(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<()> {
        let request = make_dir_request(rel, entry, expected);
        self.expect_done("create folder", rel, request)
    }

    fn make_symlink(&self, rel: &Path, entry: &Entry) -> Result<()> {
        let request = Request::MakeSymlink {
            path: rel.to_path_buf(),
            entry: entry.clone(),
        };
        self.expect_done("create link", rel, request)
    }

    fn make_special(&self, rel: &Path, entry: &Entry) -> Result<()> {
        let request = Request::MakeSpecial {
            path: rel.to_path_buf(),
            entry: entry.clone(),
        };
        self.expect_done("create special file", rel, request)
    }

    fn remove(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<bool> {
        let request = remove_request(rel, entry, expected);
        match self.call("remove", rel, request)? {
            Response::Removed(removed) => Ok(removed),
            other => Err(self.unexpected("remove", rel, &other)),
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let request = Request::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        };
        self.expect_done("rename", from, request)
    }

    fn duplicate(&self, from: &Path, to: &Path, check: Option<&MoveCheck>) -> Result<()> {
        self.expect_done("duplicate", from, duplicate_request(from, to, check))
    }

    fn set_mtime(&self, rel: &Path, mtime: Mtime) -> Result<()> {
        let request = Request::SetMtime {
            path: rel.to_path_buf(),
            mtime,
        };
        self.expect_done("set mtime of", rel, request)
    }

    fn set_meta(
        &self,
        rel: &Path,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
        keep: Keep,
    ) -> Result<()> {
        let request = set_meta_request(rel, entry, xattrs, keep);
        self.expect_done("set metadata of", rel, request)
    }

    fn account_names(&self, uids: &[u32], gids: &[u32]) -> Result<Accounts> {
        let request = Request::AccountNames {
            uids: uids.to_vec(),
            gids: gids.to_vec(),
        };
        self.expect_accounts(request)
    }

    fn account_ids(&self, users: &[String], groups: &[String]) -> Result<Accounts> {
        let request = Request::AccountIds {
            users: users.to_vec(),
            groups: groups.to_vec(),
        };
        self.expect_accounts(request)
    }

    fn xattrs(&self, rel: &Path) -> Result<Xattrs> {
        let path = rel.to_path_buf();
        match self.call(
            "read extended attributes of",
            rel,
            Request::ReadXattrs { path },
        )? {
            Response::Xattrs(xattrs) => Ok(xattrs),
            other => Err(self.unexpected("read extended attributes of", rel, &other)),
        }
    }

    fn hash(&self, rel: &Path) -> Result<blake3::Hash> {
        let path = rel.to_path_buf();
        let response = self.call("read", rel, Request::Hash { path });
        self.hash_in(rel, response)
    }

    /// The agent puts files in place in batches of its own; their verdicts come with
    /// [`Pipeline::settle`].
    fn publish_committed(&self) -> Vec<(PathBuf, EndpointError)> {
        Vec::new()
    }

    fn read_state(&self, name: &str) -> Result<Option<Box<dyn io::Read + '_>>> {
        self.read_state_from(name)
    }

    fn write_state(&self, name: &str, produce: &mut WriteState) -> Result<()> {
        self.write_state_to(name, produce)
    }

    fn wire_bytes(&self) -> u64 {
        self.wire.load(Ordering::Relaxed)
    }
}

impl Pipeline for RemoteEndpoint {
    fn expect_signatures(&self, paths: Vec<PathBuf>) {
        if let Some(link) = self.session().as_mut() {
            link.upcoming = paths.into();
        }
    }

    fn make_dir_later(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<()> {
        let request = make_dir_request(rel, entry, expected);
        self.send_later("create folder", rel, request, Owed::Dir(rel.to_path_buf()))
    }

    fn remove_later(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<()> {
        let request = remove_request(rel, entry, expected);
        self.send_later("remove", rel, request, Owed::Removal(rel.to_path_buf()))
    }

    fn duplicate_later(&self, from: &Path, to: &Path, check: Option<&MoveCheck>) -> Result<()> {
        let request = duplicate_request(from, to, check);
        self.send_later("duplicate", to, request, Owed::Copy(to.to_path_buf()))
    }

    fn set_meta_later(
        &self,
        rel: &Path,
        entry: &Entry,
        xattrs: Option<&Xattrs>,
        keep: Keep,
    ) -> Result<()> {
        let request = set_meta_request(rel, entry, xattrs, keep);
        let owed = Owed::Time(rel.to_path_buf());
        self.send_later("set metadata of", rel, request, owed)
    }

    fn set_mtime_later(&self, rel: &Path, mtime: Mtime) -> Result<()> {
        let request = Request::SetMtime {
            path: rel.to_path_buf(),
            mtime,
        };
        self.send_later("set mtime of", rel, request, Owed::Time(rel.to_path_buf()))
    }

    fn hashes(&self, rels: &[PathBuf]) -> Vec<Result<blake3::Hash>> {
        let requests = rels
            .iter()
            .map(|rel| Request::Hash { path: rel.clone() })
            .collect();
        let mut slot = self.session();
        match self.on_session(&mut slot, |link| link.call_many(requests)) {
            Ok(answers) => (rels.iter().zip(answers))
                .map(|(rel, answer)| {
                    let response = self.answer("read", rel, &mut slot, Ok(answer));
                    self.hash_in(rel, response)
                })
                .collect(),
            Err(e) => {
                // The session is broken: the next run reconnects.
                *slot = None;
                (rels.iter())
                    .map(|rel| {
                        let source = io::Error::new(io::ErrorKind::BrokenPipe, e.to_string());
                        Err(self
                            .error("read", rel, source)
                            .meaning(Failure::Unreachable))
                    })
                    .collect()
            }
        }
    }

    fn settle(&self) -> Settled {
        let mut slot = self.session();
        let settled = self.on_session(&mut slot, |link| async move {
            if !link.pending.is_empty() || !link.owed.is_empty() {
                // Any request that is not a whole file makes the agent publish its batch, and
                // its answer follows those of every request before it.
                let nonce = link.pending.len() as u64;
                match link.call(Request::Ping { nonce }).await? {
                    Response::Pong { .. } => {}
                    other => return Err(link.session.unexpected(&other, "Pong")),
                }
            }
            // Signatures asked for ahead and not used: the files the run skipped.
            link.upcoming.clear();
            link.signatures.clear();
            Ok(link.take_settled(&self.dial.agent))
        });
        let e = match settled {
            Ok(settled) => return settled,
            Err(e) => e,
        };
        // The connection broke with answers owed: those files are not known to be in place,
        // or gone, and count as failed.
        let Some(mut link) = slot.take() else {
            return Settled::default();
        };
        let mut settled = link.take_settled(&self.dial.agent);
        let broken = |op: &str, path: &Path| {
            let source = io::Error::new(io::ErrorKind::BrokenPipe, e.to_string());
            self.error(op, path, source).meaning(Failure::Unreachable)
        };
        for path in link.pending.into_iter().flatten() {
            let error = broken("write", &path);
            settled.failed_writes.push((path, error));
        }
        for owed in link.owed {
            let (op, path) = owed.describe();
            let error = broken(op, path);
            match owed {
                Owed::Removal(path) => settled.removals.push((path, Err(error))),
                Owed::Time(path) => settled.failed_changes.push((path, error)),
                Owed::Dir(path) => settled.failed_dirs.push((path, error)),
                Owed::Copy(path) => settled.failed_writes.push((path, error)),
                Owed::Signature(_) => {}
            }
        }
        settled
    }
}

impl RemoteEndpoint {
    /// Sends a change without waiting for its answer, which [`Endpoint::settle`] collects.
    fn send_later(&self, op: &str, rel: &Path, request: Request, owed: Owed) -> Result<()> {
        let mut slot = self.session();
        let sent = self.on_session(&mut slot, |link| async move {
            link.send(request).await?;
            link.owed.push_back(owed);
            // The answers must be read before they fill the connection: the agent stops
            // reading while it cannot write.
            link.collect_owed(PIPELINE).await
        });
        self.answer(op, rel, &mut slot, sent.map(|()| Response::Done))
            .map(drop)
    }

    fn expect_accounts(&self, request: Request) -> Result<Accounts> {
        let (op, root) = ("look up the users and groups of", Path::new(""));
        match self.call(op, root, request)? {
            Response::Accounts(accounts) => Ok(accounts),
            other => Err(self.unexpected(op, root, &other)),
        }
    }

    fn expect_done(&self, op: &str, rel: &Path, request: Request) -> Result<()> {
        match self.call(op, rel, request)? {
            Response::Done => Ok(()),
            other => Err(self.unexpected(op, rel, &other)),
        }
    }
}
