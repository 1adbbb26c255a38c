//! A replica on another agent: the [`Endpoint`] trait spoken over a session. The engine calls
//! it from a blocking thread; each call waits on the session's futures through
//! [`crate::blocking`], the one place that may.
//!
//! A file's data streams as batches of delta ops without a reply for each, so a transfer costs
//! one round trip for the signature and one for the final verdict, whatever its size.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::runtime::Handle;

use crate::blocking;
use crate::client::{ClientError, Connector, Dial, Session};
use crate::protocol::{DataOp, ErrorKind, Fence, Request, Response, WireError};
use ferry_engine::delta::{Encoded, Op, Signature};
use ferry_engine::endpoint::{Endpoint, EndpointError, FileSink, Result, Scope, Settled};
use ferry_engine::filter::Filter;
use ferry_engine::tree::{Entry, Expected, Mtime, Tree, is_plain};

/// Requests (small files' data among them) gathered before they are sent as one batch: large
/// enough that frames are few, small enough that the receiver writes while the sender reads.
const BATCH_BYTES: usize = 256 * 1024;
/// A large file's data gathered before it is sent: a frame's header then costs about 100
/// bytes a MiB.
const FILE_DATA_BYTES: usize = 1024 * 1024;
const BATCH_OPS: usize = 4096;

/// Signatures asked for ahead of the run's need, at most: enough to cover a WAN's round trip
/// with the files of a re-sync, few enough that unused ones cost little.
const SIGNATURES_AHEAD: usize = 64;

/// Whole files written without waiting for each verdict, at most: the agent answers them in
/// order, a batch as soon as it is on disk (its batches are smaller than this).
pub const PIPELINE: usize = 1024;

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

/// A session, and the files sent on it whose verdict has not been read yet.
struct Link {
    session: Session,
    /// Paths of files whose `Verdict` is still to come, in order; `None` for an abandoned
    /// file (its failure is expected).
    pending: VecDeque<Option<PathBuf>>,
    /// Files that failed after the engine moved on.
    late: Vec<(PathBuf, WireError)>,
    /// Changes sent without waiting whose answer is still to come, in order.
    owed: VecDeque<Owed>,
    /// Removals answered since the last settle: whether each removed something.
    removed: Vec<(PathBuf, std::result::Result<bool, WireError>)>,
    /// Other changes sent without waiting that failed (a time not set).
    failed_changes: Vec<(PathBuf, WireError)>,
    /// Folders made without waiting that failed.
    failed_dirs: Vec<(PathBuf, WireError)>,
    /// Files whose signature the run will ask for, not asked of the agent yet.
    upcoming: VecDeque<PathBuf>,
    /// Signatures asked for ahead whose answer is still to come.
    asked: HashSet<PathBuf>,
    /// Answers to signatures asked for ahead, until the run takes them.
    signatures: HashMap<PathBuf, Response>,
    /// Small requests not sent yet: they leave together in one `Batch` frame (compressed as
    /// one), before this side waits for anything.
    outbox: Vec<Request>,
    outbox_bytes: usize,
    /// The rest of a `Batch` of answers, taken one at a time.
    inbox: VecDeque<Response>,
}

/// A change sent without waiting for its answer.
enum Owed {
    Removal(PathBuf),
    /// A time set.
    Time(PathBuf),
    /// A folder made.
    Dir(PathBuf),
    /// A file placed from one the agent holds (a move): it fails as a write.
    Copy(PathBuf),
    /// A signature asked for ahead of the run's need.
    Signature(PathBuf),
}

impl Owed {
    fn describe(&self) -> (&'static str, &Path) {
        match self {
            Owed::Removal(path) => ("remove", path),
            Owed::Time(path) => ("set mtime of", path),
            Owed::Dir(path) => ("create folder", path),
            Owed::Copy(path) => ("duplicate", path),
            Owed::Signature(path) => ("read", path),
        }
    }
}

impl Link {
    fn new(session: Session) -> Self {
        Self {
            session,
            pending: VecDeque::new(),
            late: Vec::new(),
            owed: VecDeque::new(),
            removed: Vec::new(),
            failed_changes: Vec::new(),
            failed_dirs: Vec::new(),
            upcoming: VecDeque::new(),
            asked: HashSet::new(),
            signatures: HashMap::new(),
            outbox: Vec::new(),
            outbox_bytes: 0,
            inbox: VecDeque::new(),
        }
    }

    async fn send(&mut self, request: Request) -> std::result::Result<(), ClientError> {
        let size = match &request {
            Request::Data { ops } => ops.iter().map(|op| op.literal_len() + 8).sum(),
            _ => 64,
        };
        if size >= BATCH_BYTES {
            self.flush().await?;
            return self.session.send(&request).await;
        }
        self.outbox.push(request);
        self.outbox_bytes += size;
        if self.outbox_bytes >= BATCH_BYTES || self.outbox.len() >= BATCH_OPS {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the outbox: one request as it is, several as one `Batch`.
    async fn flush(&mut self) -> std::result::Result<(), ClientError> {
        self.outbox_bytes = 0;
        match self.outbox.len() {
            0 => Ok(()),
            1 => {
                let request = self.outbox.pop().expect("one request");
                self.session.send(&request).await
            }
            _ => {
                let batch = Request::Batch(std::mem::take(&mut self.outbox));
                self.session.send(&batch).await
            }
        }
    }

    /// The next response: the rest of a batch, or (once everything queued has left) the next
    /// frame.
    async fn receive(&mut self) -> std::result::Result<Response, ClientError> {
        if let Some(response) = self.inbox.pop_front() {
            return Ok(response);
        }
        self.flush().await?;
        match self.session.receive().await? {
            Response::Batch(responses) => {
                self.inbox.extend(responses);
                let response = self.inbox.pop_front();
                response.ok_or_else(|| self.session.unexpected(&Response::Batch(vec![]), "answers"))
            }
            response => Ok(response),
        }
    }

    /// The answer to the last request; verdicts on earlier files and answers to earlier
    /// changes sent without waiting that come first are noted.
    async fn answer(&mut self) -> std::result::Result<Response, ClientError> {
        loop {
            let response = self.receive().await?;
            if let Some(answer) = self.note(response) {
                return Ok(answer);
            }
        }
    }

    /// Reads the next owed verdict.
    async fn verdict(&mut self) -> std::result::Result<(), ClientError> {
        let owed = self.pending.len();
        while self.pending.len() == owed {
            let response = self.receive().await?;
            if let Some(other) = self.note(response) {
                return Err(self.session.unexpected(&other, "Verdict"));
            }
        }
        Ok(())
    }

    /// Reads answers to changes sent without waiting until at most `owed` are outstanding.
    async fn collect_owed(&mut self, owed: usize) -> std::result::Result<(), ClientError> {
        while self.owed.len() > owed {
            let response = self.receive().await?;
            if let Some(other) = self.note(response) {
                return Err(self.session.unexpected(&other, "the answer to a change"));
            }
        }
        Ok(())
    }

    /// Notes a verdict, or the answer to the oldest change sent without waiting (the agent
    /// answers requests in order); returns any other response.
    fn note(&mut self, response: Response) -> Option<Response> {
        let answer = match response {
            Response::Verdict { error, .. } => {
                self.note_verdict(error);
                return None;
            }
            answer => answer,
        };
        match (self.owed.pop_front(), answer) {
            (None, answer) => return Some(answer),
            (Some(Owed::Removal(path)), Response::Removed(removed)) => {
                self.removed.push((path, Ok(removed)))
            }
            (Some(Owed::Signature(path)), answer) => {
                self.asked.remove(&path);
                self.signatures.insert(path, answer);
            }
            (Some(Owed::Time(_) | Owed::Copy(_) | Owed::Dir(_)), Response::Done) => {}
            (Some(owed), Response::Failed(wire)) => self.note_failure(owed, wire),
            (Some(owed), other) => {
                let (op, path) = owed.describe();
                let wire = WireError {
                    kind: ErrorKind::InvalidData,
                    op: op.into(),
                    path: path.display().to_string(),
                    message: format!("the agent answered {other:?}"),
                };
                self.note_failure(owed, wire);
            }
        }
        None
    }

    /// Files a change sent without waiting that failed where the engine looks for it.
    fn note_failure(&mut self, owed: Owed, wire: WireError) {
        match owed {
            Owed::Removal(path) => self.removed.push((path, Err(wire))),
            Owed::Time(path) => self.failed_changes.push((path, wire)),
            Owed::Dir(path) => self.failed_dirs.push((path, wire)),
            Owed::Copy(path) => self.late.push((path, wire)),
            Owed::Signature(path) => {
                self.asked.remove(&path);
                self.signatures.insert(path, Response::Failed(wire));
            }
        }
    }

    /// What the work sent without waiting came to since the last settle.
    fn take_settled(&mut self, agent: &str) -> Settled {
        let endpoint_error = |(path, wire)| (path, from_wire(agent, wire));
        Settled {
            failed_writes: self.late.drain(..).map(endpoint_error).collect(),
            removals: (self.removed.drain(..))
                .map(|(path, outcome)| (path, outcome.map_err(|wire| from_wire(agent, wire))))
                .collect(),
            failed_changes: self.failed_changes.drain(..).map(endpoint_error).collect(),
            failed_dirs: self.failed_dirs.drain(..).map(endpoint_error).collect(),
        }
    }

    /// Asks for upcoming signatures until `SIGNATURES_AHEAD` are unanswered.
    async fn ask_ahead(&mut self) -> std::result::Result<(), ClientError> {
        while self.asked.len() < SIGNATURES_AHEAD
            && let Some(path) = self.upcoming.pop_front()
        {
            let request = Request::Signature { path: path.clone() };
            self.send(request).await?;
            self.asked.insert(path.clone());
            self.owed.push_back(Owed::Signature(path));
        }
        Ok(())
    }

    /// The agent's answer on `path`'s signature: asked for ahead, or now.
    async fn signature(&mut self, path: &Path) -> std::result::Result<Response, ClientError> {
        if let Some(position) = self.upcoming.iter().position(|p| p == path) {
            // Files the run skipped are not asked for any more.
            self.upcoming.drain(..position);
        }
        self.ask_ahead().await?;
        while self.asked.contains(path) {
            let response = self.receive().await?;
            if let Some(other) = self.note(response) {
                return Err(self.session.unexpected(&other, "Signature"));
            }
        }
        match self.signatures.remove(path) {
            Some(answer) => Ok(answer),
            None => {
                let path = path.to_path_buf();
                self.call(Request::Signature { path }).await
            }
        }
    }

    /// Verdicts come in the order the files were sent: this one is the oldest owed.
    fn note_verdict(&mut self, error: Option<WireError>) {
        let path = self.pending.pop_front().flatten();
        if let (Some(path), Some(error)) = (path, error) {
            self.late.push((path, error));
        }
    }

    async fn call(&mut self, request: Request) -> std::result::Result<Response, ClientError> {
        self.send(request).await?;
        self.answer().await
    }

    /// Several requests and their answers, in order, with up to `PIPELINE` unanswered: more
    /// could fill both directions' buffers while neither side reads.
    async fn call_many(
        &mut self,
        requests: Vec<Request>,
    ) -> std::result::Result<Vec<Response>, ClientError> {
        let mut answers = Vec::with_capacity(requests.len());
        let mut sent = 0;
        for request in requests {
            if sent - answers.len() == PIPELINE {
                answers.push(self.answer().await?);
            }
            self.send(request).await?;
            sent += 1;
        }
        while answers.len() < sent {
            answers.push(self.answer().await?);
        }
        Ok(answers)
    }
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
                Err(self.error(
                    op,
                    rel,
                    io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()),
                ))
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

fn remove_request(rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Request {
    Request::Remove {
        path: rel.to_path_buf(),
        entry: entry.clone(),
        expected: expected.cloned(),
    }
}

/// An agent's error as an endpoint error naming the agent, its kind kept so the engine can
/// react (a bad delta is retried whole).
pub fn from_wire(agent: &str, wire: WireError) -> EndpointError {
    let kind = match wire.kind {
        ErrorKind::NotFound => io::ErrorKind::NotFound,
        ErrorKind::PermissionDenied | ErrorKind::Outside | ErrorKind::StaleEpoch => {
            io::ErrorKind::PermissionDenied
        }
        ErrorKind::StorageFull => io::ErrorKind::StorageFull,
        ErrorKind::InvalidData => io::ErrorKind::InvalidData,
        ErrorKind::Other => io::ErrorKind::Other,
    };
    EndpointError::new(
        wire.op,
        format!("{agent}:{}", wire.path),
        io::Error::new(kind, wire.message),
    )
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
            .map_err(|e| self.error("connect to", root, io::Error::other(e.to_string())))?;
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

    fn scan(&self, scope: &Scope, filter: &Filter) -> Result<Tree> {
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
        let mut tree = Tree::new();
        let mut response = self.call("read folder", root, request)?;
        let mut slot = self.session();
        loop {
            match response {
                Response::Scanned { entries, more } => {
                    if let Some((path, _)) = entries.iter().find(|(path, _)| !is_plain(path)) {
                        // Not to be trusted further: the session is dropped, unread.
                        *slot = None;
                        let outside = "the agent reported a path that leaves the folder";
                        let refused = io::Error::new(io::ErrorKind::InvalidData, outside);
                        return Err(self.error("read folder", path, refused));
                    }
                    tree.extend(entries);
                    if !more {
                        return Ok(tree);
                    }
                }
                other => return Err(self.unexpected("read folder", root, &other)),
            }
            let next = self.on_session(&mut slot, |s| s.receive());
            response = self.answer("read folder", root, &mut slot, next)?;
        }
    }

    fn stat(&self, rel: &Path) -> Result<Option<Entry>> {
        let path = rel.to_path_buf();
        match self.call("read", rel, Request::Stat { path })? {
            Response::Stat(entry) => Ok(entry),
            other => Err(self.unexpected("read", rel, &other)),
        }
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn signature(&self, rel: &Path) -> Result<Option<Signature>> {
        let mut slot = self.session();
        let response = self.on_session(&mut slot, |link| link.signature(rel));
        match self.answer("read", rel, &mut slot, response)? {
            Response::Signature(sig) => Ok(sig),
            other => Err(self.unexpected("read", rel, &other)),
        }
    }

    fn expect_signatures(&self, paths: Vec<PathBuf>) {
        if let Some(link) = self.session().as_mut() {
            link.upcoming = paths.into();
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
        entry: &Entry,
        block_size: Option<u32>,
        expected: Option<&Expected>,
    ) -> Result<Box<dyn FileSink + 'a>> {
        let mut slot = self.session();
        let request = Request::WriteFile {
            path: rel.to_path_buf(),
            entry: entry.clone(),
            block_size,
            expected: expected.cloned(),
        };
        let sent = self.on_session(&mut slot, |s| s.send(request));
        if let Err(e) = sent {
            return Err(self.answer("write", rel, &mut slot, Err(e)).unwrap_err());
        }
        Ok(Box::new(RemoteSink {
            endpoint: self,
            rel: rel.to_path_buf(),
            slot,
            batch: Vec::new(),
            batch_bytes: 0,
            ended: false,
        }))
    }

    fn make_dir(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<()> {
        let request = make_dir_request(rel, entry, expected);
        self.expect_done("create folder", rel, request)
    }

    fn make_dir_later(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<()> {
        let request = make_dir_request(rel, entry, expected);
        self.send_later("create folder", rel, request, Owed::Dir(rel.to_path_buf()))
    }

    fn make_symlink(&self, rel: &Path, entry: &Entry) -> Result<()> {
        let request = Request::MakeSymlink {
            path: rel.to_path_buf(),
            entry: entry.clone(),
        };
        self.expect_done("create link", rel, request)
    }

    fn remove(&self, rel: &Path, entry: &Entry, expected: Option<&Expected>) -> Result<bool> {
        let request = remove_request(rel, entry, expected);
        match self.call("remove", rel, request)? {
            Response::Removed(removed) => Ok(removed),
            other => Err(self.unexpected("remove", rel, &other)),
        }
    }

    fn remove_later(
        &self,
        rel: &Path,
        entry: &Entry,
        expected: Option<&Expected>,
    ) -> Result<Option<bool>> {
        let request = remove_request(rel, entry, expected);
        self.send_later("remove", rel, request, Owed::Removal(rel.to_path_buf()))?;
        Ok(None)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<()> {
        let request = Request::Rename {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        };
        self.expect_done("rename", from, request)
    }

    fn duplicate(&self, from: &Path, to: &Path) -> Result<()> {
        let request = Request::Duplicate {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        };
        self.expect_done("duplicate", from, request)
    }

    fn duplicate_later(&self, from: &Path, to: &Path) -> Result<()> {
        let request = Request::Duplicate {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
        };
        self.send_later("duplicate", to, request, Owed::Copy(to.to_path_buf()))
    }

    fn set_mtime(&self, rel: &Path, mtime: Mtime) -> Result<()> {
        let request = Request::SetMtime {
            path: rel.to_path_buf(),
            mtime,
        };
        self.expect_done("set mtime of", rel, request)
    }

    fn set_mtime_later(&self, rel: &Path, mtime: Mtime) -> Result<()> {
        let request = Request::SetMtime {
            path: rel.to_path_buf(),
            mtime,
        };
        self.send_later("set mtime of", rel, request, Owed::Time(rel.to_path_buf()))
    }

    fn hash(&self, rel: &Path) -> Result<blake3::Hash> {
        let path = rel.to_path_buf();
        let response = self.call("read", rel, Request::Hash { path });
        self.hash_in(rel, response)
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
                        Err(self.error("read", rel, source))
                    })
                    .collect()
            }
        }
    }

    fn read_state(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let request = Request::ReadState { name: name.into() };
        match self.call("read state", Path::new(name), request)? {
            Response::State(bytes) => Ok(bytes.map(|b| b.into_vec())),
            other => Err(self.unexpected("read state", Path::new(name), &other)),
        }
    }

    fn write_state(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let request = Request::WriteState {
            name: name.into(),
            bytes: bytes.to_vec(),
        };
        self.expect_done("write state", Path::new(name), request)
    }

    fn wire_bytes(&self) -> u64 {
        self.wire.load(Ordering::Relaxed)
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
            self.error(op, path, source)
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

    fn expect_done(&self, op: &str, rel: &Path, request: Request) -> Result<()> {
        match self.call(op, rel, request)? {
            Response::Done => Ok(()),
            other => Err(self.unexpected(op, rel, &other)),
        }
    }
}

/// A file streaming to an agent: ops go out in batches; the agent answers once, at the end.
struct RemoteSink<'a> {
    endpoint: &'a RemoteEndpoint,
    rel: std::path::PathBuf,
    /// The session stays locked while the file streams: nothing else may interleave.
    slot: MutexGuard<'a, Option<Link>>,
    batch: Vec<Op>,
    batch_bytes: usize,
    /// `DataEnd` was sent: the agent's answer is due.
    ended: bool,
}

impl RemoteSink<'_> {
    fn send(&mut self, request: Request) -> Result<()> {
        let sent = self
            .endpoint
            .on_session(&mut self.slot, |s| s.send(request));
        if let Err(e) = sent {
            let (endpoint, rel) = (self.endpoint, self.rel.clone());
            return Err(endpoint
                .answer("write", &rel, &mut self.slot, Err(e))
                .unwrap_err());
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let ops = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let ops = ops.into_iter().map(DataOp::from).collect();
        self.send(Request::Data { ops })
    }

    /// Sends the end of the stream; the agent's verdict is owed from then on.
    fn end(&mut self, hash: Vec<u8>) -> Result<()> {
        self.flush()?;
        self.ended = true;
        self.send(Request::DataEnd { hash })
    }

    /// Reads verdicts until at most `owed` are outstanding.
    fn collect(&mut self, owed: usize) -> Result<()> {
        let result = self.endpoint.on_session(&mut self.slot, |link| async move {
            while link.pending.len() > owed {
                link.verdict().await?;
            }
            Ok(())
        });
        let (endpoint, rel) = (self.endpoint, self.rel.clone());
        endpoint.answer(
            "write",
            &rel,
            &mut self.slot,
            result.map(|()| Response::Done),
        )?;
        Ok(())
    }

    fn owe(&mut self, path: Option<PathBuf>) {
        if let Some(link) = self.slot.as_mut() {
            link.pending.push_back(path);
        }
    }
}

impl FileSink for RemoteSink<'_> {
    fn write(&mut self, op: Op) -> Result<()> {
        self.batch_bytes += op.literal_len();
        self.batch.push(op);
        if self.batch_bytes >= FILE_DATA_BYTES || self.batch.len() >= BATCH_OPS {
            self.flush()?;
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>, sent: &Encoded) -> Result<u64> {
        self.end(sent.hash.as_bytes().to_vec())?;
        // Made durable and renamed with its batch: the verdict comes later, in order. A delta
        // that did not rebuild fails there as a bad delta (see `Endpoint::settle`).
        self.owe(Some(self.rel.clone()));
        self.collect(PIPELINE)?;
        Ok(sent.size)
    }
}

impl Drop for RemoteSink<'_> {
    /// Abandoned mid-file: an empty hash tells the agent to throw the file away, and its
    /// answer is read so the session stays in step.
    fn drop(&mut self) {
        if !self.ended && self.slot.is_some() {
            self.batch.clear();
            if self.end(Vec::new()).is_ok() {
                self.owe(None);
            }
        }
    }
}
