//! `ferry-agent run`: serves authenticated connections. Each connection is its own session on
//! a blocking thread (file work blocks; a file server has few peers at once); a peer without a
//! valid certificate, a malformed, oversized or unexpected frame, or another protocol version
//! closes that connection with a logged reason, and the agent goes on serving everyone else.
//!
//! Every path a peer names is checked to stay inside the agent's roots, and every write is
//! checked against the lease fence the session presented ([`Fences`]).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use ferry_engine::delta::{Encoded, Op, Signature};
use ferry_engine::endpoint::{Endpoint, EndpointError, FileSink, LocalEndpoint, Scope, Staged};
use ferry_engine::filter::Filter;
use ferry_engine::tree::{Entry, Expected};
use ferry_engine::{Fence, Halt, JobSpec};
use ferry_wire::client::Dial;
use ferry_wire::frame::{self, Data, FrameError};
use ferry_wire::link::LinkMeter;
use ferry_wire::protocol::{
    DataOp, ErrorKind, JobOrder, PROTOCOL_VERSION, Request, Response, WireError,
};
use ferry_wire::remote::RemoteEndpoint;
use ferry_wire::transport::{self, Connection};
use ferry_wire::watch::{Batch, FolderWatch, WatchRoot};

/// Entries per `Scanned` frame: keeps frames far below the size limit on any tree.
const SCAN_BATCH: usize = 4096;
/// Whole files received before one flush to disk makes them all durable and they are renamed
/// into place: one `syncfs` instead of an fsync per file. A batch this large starts its flush
/// when none is under way; each flush also commits the file system's journal, so fewer,
/// larger batches cost the disk less (256 files: about 5 % less time than 128 on the bench's
/// small files).
const STAGE_FILES: usize = 256;
const STAGE_BYTES: u64 = 64 << 20;
/// While a flush is under way the next batch grows up to this (group commit: a disk slower
/// than the network makes batches larger, not the receiver wait).
const STAGE_MAX_FILES: usize = 768;
const STAGE_MAX_BYTES: u64 = 256 << 20;
// A client stops sending once `PIPELINE` files wait for their verdicts: a batch that is not
// full must never hold that many, or it would wait for files that do not come.
const _: () = assert!(STAGE_MAX_FILES < ferry_wire::remote::PIPELINE);
/// File data an agent sends in one frame when it serves a file (as `BATCH_BYTES` for a client).
const READ_BATCH_BYTES: usize = 1024 * 1024;
/// Progress events of a run handed over, at most, in one frame, and how long they gather
/// between two frames.
const PROGRESS_BATCH: usize = 1024;
const PROGRESS_GATHER: Duration = Duration::from_millis(10);
/// How long the agent gathers changes before sending them: a burst of writes becomes one frame.
const WATCH_COALESCE: Duration = Duration::from_millis(5);

/// What an agent serves.
#[derive(Clone)]
pub struct AgentConfig {
    pub name: String,
    pub roots: Vec<PathBuf>,
    pub tls: Arc<ServerConfig>,
    /// For connecting to other agents when running a job handed to this one.
    pub client_tls: Arc<ClientConfig>,
    /// Where the fences are kept across restarts; in memory only without one.
    pub state_dir: Option<PathBuf>,
}

struct Agent {
    config: AgentConfig,
    fences: Arc<Fences>,
}

/// The highest lease epoch seen per resource. A write under a lower one comes from a
/// scheduler that has lost the lease since, and is refused.
pub struct Fences {
    highest: Mutex<HashMap<String, i64>>,
    file: Option<PathBuf>,
}

impl Fences {
    /// Loads the fences kept in `dir`, if any.
    pub fn load(dir: Option<&Path>) -> io::Result<Self> {
        let file = dir.map(|d| d.join("fences.json"));
        let highest = match &file {
            Some(path) => match std::fs::read(path) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
                Err(e) => return Err(e),
            },
            None => HashMap::new(),
        };
        Ok(Self {
            highest: Mutex::new(highest),
            file,
        })
    }

    /// Admits work under `fence` unless a newer epoch of its resource has been seen.
    pub fn admit(&self, fence: &Fence) -> Result<(), String> {
        let mut highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        let seen = highest.get(&fence.resource).copied();
        match seen {
            Some(seen) if seen > fence.epoch => Err(format!(
                "stale lease: {} epoch {} is older than epoch {seen}, which another scheduler \
                 holds now; this scheduler lost the lease and must not write",
                fence.resource, fence.epoch
            )),
            Some(seen) if seen == fence.epoch => Ok(()),
            _ => {
                highest.insert(fence.resource.clone(), fence.epoch);
                if let Some(path) = &self.file
                    && let Err(e) = save_json(path, &*highest)
                {
                    tracing::warn!(path = %path.display(), error = %e, "could not save the fences");
                }
                Ok(())
            }
        }
    }
}

/// Writes `value` to `path` crash-safely (temporary file, fsync, rename).
fn save_json(path: &Path, value: &impl serde::Serialize) -> io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&serde_json::to_vec(value).map_err(io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(temp, path)
}

/// Serves `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let acceptor = TlsAcceptor::from(config.tls.clone());
    let fences = Arc::new(Fences::load(config.state_dir.as_deref())?);
    let agent = Arc::new(Agent { config, fences });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // rsync's daemon loses ~40 ms per round trip without it.
                    let _ = stream.set_nodelay(true);
                    transport::keep_alive(&stream);
                    let (acceptor, agent) = (acceptor.clone(), agent.clone());
                    let link = LinkMeter::new(&stream);
                    tokio::spawn(async move {
                        match acceptor.accept(stream).await {
                            Ok(tls) => {
                                let handle = tokio::runtime::Handle::current();
                                let stream = transport::buffered(tls);
                                let served = tokio::task::spawn_blocking(move || {
                                    handle.block_on(session(stream, Some(link), &agent))
                                });
                                if let Ok(Err(e)) = served.await {
                                    log_end(peer, &e);
                                }
                            }
                            Err(e) => tracing::warn!(%peer, error = %e, "refused connection: TLS handshake failed"),
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accepting a connection failed"),
            },
        }
    }
}

fn log_end(peer: SocketAddr, error: &FrameError) {
    match error {
        FrameError::Closed => tracing::debug!(%peer, "connection closed"),
        other => tracing::warn!(%peer, error = %other, "closed connection"),
    }
}

/// One peer's session: the folder it opened and the lease it works for.
struct Session<'a> {
    stream: Connection,
    /// Whether file data sent on `stream` goes compressed; `None` when it is not a socket.
    link: Option<LinkMeter>,
    agent: &'a Agent,
    fence: Option<Fence>,
    replica: Option<LocalEndpoint>,
    /// Whole files received and checked, waiting for one flush to disk and their rename; their
    /// verdicts are owed to the peer in order.
    staged: Vec<Staged>,
    staged_bytes: u64,
    /// The batch being flushed and published on another thread while more files arrive; its
    /// verdicts, in order, when done.
    publishing: Option<tokio::task::JoinHandle<Vec<Response>>>,
    /// The rest of a `Batch` frame, served before the next frame is read.
    queued: std::collections::VecDeque<Request>,
}

async fn session(
    mut tls: Connection,
    link: Option<LinkMeter>,
    agent: &Agent,
) -> Result<(), FrameError> {
    let fence = match frame::read::<Request>(&mut tls).await? {
        Request::Hello {
            version,
            client,
            fence,
        } if version == PROTOCOL_VERSION => {
            if let Some(Err(reason)) = fence.as_ref().map(|f| agent.fences.admit(f)) {
                tracing::warn!(client, reason, "refused a session");
                return refuse(&mut tls, reason).await;
            }
            tracing::info!(client, ?fence, "session started");
            let welcome = Response::Welcome {
                version: PROTOCOL_VERSION,
                agent: agent.config.name.clone(),
                software: env!("CARGO_PKG_VERSION").to_owned(),
                roots: agent
                    .config
                    .roots
                    .iter()
                    .map(|r| r.display().to_string())
                    .collect(),
            };
            frame::write(&mut tls, &welcome).await?;
            fence
        }
        Request::Hello {
            version, client, ..
        } => {
            let reason = format!(
                "protocol version {version} from {client}; this agent speaks {PROTOCOL_VERSION}"
            );
            return refuse(&mut tls, reason).await;
        }
        other => return refuse(&mut tls, format!("expected Hello first, got {other:?}")).await,
    };
    let mut session = Session {
        stream: tls,
        link,
        agent,
        fence,
        replica: None,
        staged: Vec::new(),
        staged_bytes: 0,
        publishing: None,
        queued: Default::default(),
    };
    loop {
        let request = match session.next().await {
            Ok(request) => request,
            Err(e) => {
                // The peer is gone, but the files it sent whole are checked: put them in place.
                session.publish_staged(false).await?;
                return Err(e);
            }
        };
        // Files wait to be published in batches. A file's data and a new folder do not need
        // them in place, nor does a signature: should the file change before the delta made
        // against it arrives, the delta does not rebuild and the file is sent whole.
        let pipelined = matches!(
            request,
            Request::WriteFile { .. } | Request::MakeDir { .. } | Request::Signature { .. }
        );
        if !pipelined {
            session.publish_staged(true).await?;
        }
        // A run or a watch ends its session: the connection carries what it reports.
        match request {
            Request::RunJob {
                order,
                valid_for_ms,
            } => return session.run_job(order, valid_for_ms).await,
            Request::Watch { path } => return session.watch(&path).await,
            request => session.serve(request).await?,
        }
    }
}

impl Session<'_> {
    /// Answers into the buffer; it leaves before the next read ([`Self::next`]).
    async fn reply(&mut self, response: &Response) -> Result<(), FrameError> {
        let data = self.link.as_mut().map_or(Data::Raw, LinkMeter::data);
        frame::write_buffered(&mut self.stream, response, data)
            .await
            .map(drop)
    }

    /// The peer's next request: the rest of a batch, or (with what is buffered sent first)
    /// the next frame.
    async fn next(&mut self) -> Result<Request, FrameError> {
        if let Some(request) = self.queued.pop_front() {
            return Ok(request);
        }
        self.stream.flush().await?;
        self.await_request().await?;
        match frame::read(&mut self.stream).await? {
            Request::Batch(requests) => {
                if requests.iter().any(|r| matches!(r, Request::Batch(_))) {
                    return Err(FrameError::Unexpected("a batch inside a batch".into()));
                }
                self.queued.extend(requests);
                self.queued
                    .pop_front()
                    .ok_or_else(|| FrameError::Unexpected("an empty batch".into()))
            }
            request => Ok(request),
        }
    }

    /// Refuses a write under a stale lease; `None` when the request may go ahead.
    fn fenced_out(&self, request: &Request) -> Option<Response> {
        let fence = self.fence.as_ref().filter(|_| request.writes())?;
        let reason = self.agent.fences.admit(fence).err()?;
        tracing::warn!(reason, "refused a write");
        Some(failure("write", "", ErrorKind::StaleEpoch, reason))
    }

    async fn serve(&mut self, request: Request) -> Result<(), FrameError> {
        if let Some(refusal) = self.fenced_out(&request) {
            if let Request::WriteFile { .. } = request {
                self.drain_file().await?;
                return self.refuse_file(refusal).await;
            }
            return self.reply(&refusal).await;
        }
        if let Request::Open { path, create } = &request {
            let response = self.open(path, *create);
            return self.reply(&response).await;
        }
        if let Request::Ping { nonce } = request {
            return self.reply(&Response::Pong { nonce }).await;
        }
        let Some(replica) = self.replica.clone() else {
            let reason = "no folder is open: send Open first".to_owned();
            if let Request::WriteFile { .. } = request {
                self.drain_file().await?;
                let refusal = failure("use", "", ErrorKind::Other, reason);
                return self.refuse_file(refusal).await;
            }
            return self
                .reply(&failure("use", "", ErrorKind::Other, reason))
                .await;
        };
        let response = match request {
            Request::Scan {
                paths,
                include,
                exclude,
            } => return self.scan(&replica, paths, &include, &exclude).await,
            Request::ReadFile { path, base } => return self.read_file(replica, path, base).await,
            Request::WriteFile {
                path,
                entry,
                block_size,
                expected,
            } => {
                let expected = expected.as_ref();
                return self
                    .write_file(&replica, &path, &entry, block_size, expected)
                    .await;
            }
            Request::Stat { path } => replica.stat(&path).map(Response::Stat),
            Request::Signature { path } => replica.signature(&path).map(Response::Signature),
            Request::MakeDir {
                path,
                entry,
                expected,
            } => replica.make_dir(&path, &entry, expected.as_ref()).map(done),
            Request::MakeSymlink { path, entry } => replica.make_symlink(&path, &entry).map(done),
            Request::Remove {
                path,
                entry,
                expected,
            } => replica
                .remove(&path, &entry, expected.as_ref())
                .map(Response::Removed),
            Request::Rename { from, to } => replica.rename(&from, &to).map(done),
            Request::SetMtime { path, mtime } => replica.set_mtime(&path, mtime).map(done),
            Request::Duplicate { from, to } => replica.duplicate(&from, &to).map(done),
            Request::Hash { path } => replica
                .hash(&path)
                .map(|h| Response::Hash(h.as_bytes().to_vec())),
            Request::ReadState { name } => replica
                .read_state(&state_name(&name)?)
                .map(|b| Response::State(b.map(serde_bytes::ByteBuf::from))),
            Request::WriteState { name, bytes } => {
                replica.write_state(&state_name(&name)?, &bytes).map(done)
            }
            // Outside a run there is nothing to keep alive or cancel.
            Request::KeepAlive { .. } | Request::Cancel => return Ok(()),
            Request::Batch(_) => {
                return Err(FrameError::Unexpected("a batch inside a batch".into()));
            }
            Request::Hello { .. } => {
                return Err(FrameError::Unexpected("a second Hello".into()));
            }
            Request::Data { .. } | Request::DataEnd { .. } => {
                return Err(FrameError::Unexpected(
                    "file data outside a WriteFile".into(),
                ));
            }
            Request::Open { .. }
            | Request::Ping { .. }
            | Request::RunJob { .. }
            | Request::Watch { .. } => {
                unreachable!("handled above")
            }
        };
        let response = response.unwrap_or_else(|e| wire_failure(&e));
        self.reply(&response).await
    }

    fn open(&mut self, path: &str, create: bool) -> Response {
        self.replica = None;
        let root = match resolve_root(&self.agent.config.roots, path) {
            Ok(root) => root,
            Err(reason) => return failure("open folder", path, ErrorKind::Outside, reason),
        };
        let replica = LocalEndpoint::confined(root);
        match replica.prepare(create, None) {
            Ok(()) => {
                self.replica = Some(replica);
                Response::Done
            }
            Err(e) => wire_failure(&e),
        }
    }

    async fn scan(
        &mut self,
        replica: &LocalEndpoint,
        paths: Option<Vec<PathBuf>>,
        include: &[String],
        exclude: &[String],
    ) -> Result<(), FrameError> {
        let scope = paths.map_or(Scope::Full, Scope::Paths);
        let scanned = Filter::new(include, exclude)
            .map_err(|e| failure("scan", "", ErrorKind::Other, e.to_string()))
            .and_then(|filter| replica.scan(&scope, &filter).map_err(|e| wire_failure(&e)));
        let tree = match scanned {
            Ok(tree) => tree,
            Err(response) => return self.reply(&response).await,
        };
        let mut entries = tree.into_iter().peekable();
        loop {
            let batch: Vec<_> = entries.by_ref().take(SCAN_BATCH).collect();
            let more = entries.peek().is_some();
            self.reply(&Response::Scanned {
                entries: batch,
                more,
            })
            .await?;
            if !more {
                return Ok(());
            }
        }
    }

    /// Streams a file as a delta: the file is read on a blocking thread while batches go out.
    async fn read_file(
        &mut self,
        replica: LocalEndpoint,
        path: PathBuf,
        base: Option<Signature>,
    ) -> Result<(), FrameError> {
        let (tx, mut rx) = mpsc::channel::<Vec<Op>>(4);
        let reader = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::new();
            let mut bytes = 0;
            let sent = replica.send_file(&path, base.as_ref(), &mut |op| {
                bytes += op.literal_len();
                batch.push(op);
                if bytes >= READ_BATCH_BYTES {
                    bytes = 0;
                    tx.blocking_send(std::mem::take(&mut batch))
                        .map_err(|_| io::Error::other("the connection closed"))?;
                }
                Ok(())
            });
            if !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
            sent
        });
        while let Some(ops) = rx.recv().await {
            let ops = ops.into_iter().map(DataOp::from).collect();
            self.reply(&Response::Data { ops }).await?;
        }
        let response = match reader.await.expect("file reader panicked") {
            Ok(sent) => Response::DataEnd {
                hash: sent.hash.as_bytes().to_vec(),
                size: sent.size,
            },
            Err(e) => wire_failure(&e),
        };
        self.reply(&response).await
    }

    /// Makes the staged files durable with one flush, renames them into place, and sends
    /// their verdicts (unless the peer is gone).
    async fn publish_staged(&mut self, answer: bool) -> Result<(), FrameError> {
        self.start_publishing(answer).await?;
        self.finish_publishing(answer).await
    }

    /// Starts publishing the staged batch on another thread, once the batch before it is done.
    async fn start_publishing(&mut self, answer: bool) -> Result<(), FrameError> {
        self.finish_publishing(answer).await?;
        if self.staged.is_empty() {
            return Ok(());
        }
        self.staged_bytes = 0;
        let staged = std::mem::take(&mut self.staged);
        let stale = self
            .fence
            .as_ref()
            .and_then(|f| self.agent.fences.admit(f).err());
        let replica = self.replica.clone();
        self.publishing = Some(tokio::task::spawn_blocking(move || {
            let flushed = match (stale, replica) {
                (Some(reason), _) => Err(failure("write", "", ErrorKind::StaleEpoch, reason)),
                (None, Some(replica)) => replica.flush_all().map_err(|e| wire_failure(&e)),
                (None, None) => Err(failure("write", "", ErrorKind::Other, "no folder".into())),
            };
            staged
                .into_iter()
                .map(|file| match &flushed {
                    Ok(()) => match file.publish() {
                        Ok(bytes) => Response::Verdict { bytes, error: None },
                        Err(e) => verdict(wire_failure(&e)),
                    },
                    Err(refused) => verdict(refused.clone()),
                })
                .collect()
        }));
        Ok(())
    }

    /// Whether the staged files should start publishing now: a full batch when the disk is
    /// free, an overfull one in any case.
    fn batch_ready(&self) -> bool {
        let (files, bytes) = (self.staged.len(), self.staged_bytes);
        let idle = self.publishing.as_ref().is_none_or(|p| p.is_finished());
        let full = files >= STAGE_FILES || bytes >= STAGE_BYTES;
        let overfull = files >= STAGE_MAX_FILES || bytes >= STAGE_MAX_BYTES;
        overfull || full && idle
    }

    /// Waits for the batch being published and sends its verdicts.
    async fn finish_publishing(&mut self, answer: bool) -> Result<(), FrameError> {
        let Some(publishing) = self.publishing.take() else {
            return Ok(());
        };
        let verdicts = publishing.await.expect("publishing a batch panicked");
        match answer {
            true => self.send_verdicts(verdicts).await,
            false => Ok(()),
        }
    }

    async fn send_verdicts(&mut self, mut verdicts: Vec<Response>) -> Result<(), FrameError> {
        match verdicts.len() {
            0 => Ok(()),
            1 => self.reply(&verdicts.remove(0)).await,
            // One frame, compressed as one: a verdict alone costs more than its content.
            _ => self.reply(&Response::Batch(verdicts)).await,
        }
    }

    /// Waits until the peer sends something, handing over the verdicts of the batch being
    /// published as soon as it is on disk: a peer whose window of unanswered files is full
    /// sends nothing more until it has them.
    async fn await_request(&mut self) -> Result<(), FrameError> {
        loop {
            let Some(publishing) = self.publishing.as_mut() else {
                return Ok(());
            };
            let published = tokio::select! {
                // A buffered read takes nothing when it loses the race.
                arrived = self.stream.fill_buf() => {
                    arrived?;
                    None
                }
                verdicts = publishing => Some(verdicts.expect("publishing a batch panicked")),
            };
            let Some(verdicts) = published else {
                return Ok(());
            };
            self.publishing = None;
            self.send_verdicts(verdicts).await?;
            self.stream.flush().await?;
        }
    }

    /// Receives a file's ops until `DataEnd`, then stages it (or reports why not); its verdict
    /// is sent when its batch is published. No sender waits for it: one whose delta did not
    /// rebuild hears so in the verdict and sends the file again, whole.
    async fn write_file(
        &mut self,
        replica: &LocalEndpoint,
        path: &Path,
        entry: &Entry,
        block_size: Option<u32>,
        expected: Option<&Expected>,
    ) -> Result<(), FrameError> {
        let mut sink = match replica.receive(path, entry, block_size, expected) {
            Ok(sink) => Some(sink),
            Err(e) => {
                self.drain_file().await?;
                return self.refuse_file(wire_failure(&e)).await;
            }
        };
        let mut error: Option<EndpointError> = None;
        let hash = loop {
            match self.next().await? {
                Request::Data { ops } => {
                    for op in ops {
                        if let (Some(s), None) = (sink.as_mut(), &error)
                            && let Err(e) = s.write(op.into())
                        {
                            error = Some(e);
                            sink = None;
                        }
                    }
                }
                Request::DataEnd { hash } => break hash,
                other => {
                    return Err(FrameError::Unexpected(format!(
                        "{other:?} in the middle of a file"
                    )));
                }
            }
        };
        // An empty hash abandons the file: the sender owes itself a verdict either way.
        let response = match (sink, error, <[u8; 32]>::try_from(hash)) {
            (_, Some(e), _) => wire_failure(&e),
            (Some(sink), None, Ok(hash)) => {
                let sent = Encoded {
                    size: entry.size,
                    hash: blake3::Hash::from_bytes(hash),
                };
                match sink.finish(&sent, false) {
                    Ok(staged) => {
                        let bytes = staged.size();
                        self.staged_bytes += bytes;
                        self.staged.push(staged);
                        if self.batch_ready() {
                            self.start_publishing(true).await?;
                        }
                        return Ok(());
                    }
                    Err(e) => wire_failure(&e),
                }
            }
            _ => failure(
                "write",
                &path.display().to_string(),
                ErrorKind::Other,
                "abandoned by the sender".into(),
            ),
        };
        self.refuse_file(response).await
    }

    /// Answers a file that is not staged with its failure. Its verdict must follow those of
    /// the files sent before it, which are published first: the sender matches verdicts to
    /// files by their order.
    async fn refuse_file(&mut self, failure: Response) -> Result<(), FrameError> {
        self.publish_staged(true).await?;
        self.reply(&verdict(failure)).await
    }

    /// Reads and discards a refused file's data, keeping the session in step.
    async fn drain_file(&mut self) -> Result<(), FrameError> {
        loop {
            match self.next().await? {
                Request::Data { .. } => {}
                Request::DataEnd { .. } => return Ok(()),
                other => {
                    return Err(FrameError::Unexpected(format!(
                        "{other:?} in the middle of a file"
                    )));
                }
            }
        }
    }

    /// Runs a job whose source is here, streaming progress to the scheduler that handed it
    /// over; the run halts when its keep-alives stop or the scheduler goes away.
    async fn run_job(self, order: JobOrder, valid_for_ms: u64) -> Result<(), FrameError> {
        let halt = match &self.fence {
            Some(fence) => Halt::fenced(fence.clone()),
            None => Halt::new(),
        };
        halt.extend_until(Instant::now() + Duration::from_millis(valid_for_ms));
        let (mut read, mut write) = tokio::io::split(self.stream);
        let spec = match job_spec(self.agent, &order) {
            Ok(spec) => spec,
            Err(response) => return frame::write(&mut write, &response).await.map(drop),
        };
        tracing::info!(job = order.job, fence = ?self.fence, "running a job handed over");
        let watcher = halt.clone();
        let (fences, fence) = (self.agent.fences.clone(), self.fence.clone());
        let keep_alive = tokio::spawn(async move {
            loop {
                match frame::read::<Request>(&mut read).await {
                    // A newer holder has reached this agent: the run is stale, however long
                    // its scheduler keeps it alive.
                    Ok(Request::KeepAlive { .. })
                        if fence.as_ref().is_some_and(|f| fences.admit(f).is_err()) =>
                    {
                        tracing::warn!(?fence, "a newer lease holder arrived; stopping the run");
                        return watcher.stop();
                    }
                    Ok(Request::KeepAlive { valid_for_ms }) => {
                        watcher.extend_until(Instant::now() + Duration::from_millis(valid_for_ms))
                    }
                    Ok(Request::Cancel) | Err(_) => return watcher.stop(),
                    Ok(other) => {
                        tracing::warn!(?other, "unexpected message during a run; stopping it");
                        return watcher.stop();
                    }
                }
            }
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let scope = order.paths.clone().map_or(Scope::Full, Scope::Paths);
        let work = ferry_wire::blocking::spawn(move || {
            ferry_engine::run::run(&spec, &scope, &halt, &mut |event| {
                let _ = tx.send(event);
            })
        });
        let mut connected = true;
        let mut events = Vec::new();
        while rx.recv_many(&mut events, PROGRESS_BATCH).await > 0 {
            let mut progress: Vec<Response> = events.drain(..).map(Response::Progress).collect();
            let report = match progress.len() {
                1 => progress.pop().expect("one event"),
                _ => Response::Batch(progress),
            };
            if connected {
                connected = frame::write(&mut write, &report).await.is_ok();
            }
            // Events pile up meanwhile: a frame (and a wake-up) per file would cost more than
            // the small files themselves.
            tokio::time::sleep(PROGRESS_GATHER).await;
        }
        keep_alive.abort();
        let response = match work.await.expect("the sync engine panicked") {
            Ok(summary) => Response::RunDone { summary },
            Err(e) => failure("run", &order.job, ErrorKind::Other, e.to_string()),
        };
        tracing::info!(job = order.job, ?response, "run handed over ended");
        frame::write(&mut write, &response).await.map(drop)
    }

    /// Watches a folder for a scheduler's monitor and reports its changes until the scheduler
    /// disconnects (or says anything: a watching client has nothing to say).
    async fn watch(self, path: &str) -> Result<(), FrameError> {
        let (read, mut write) = tokio::io::split(self.stream);
        let folder = match resolve_root(&self.agent.config.roots, path) {
            Ok(folder) => folder,
            Err(reason) => {
                let refusal = failure("watch", path, ErrorKind::Outside, reason);
                return frame::write(&mut write, &refusal).await.map(drop);
            }
        };
        let mut watch = match FolderWatch::open(&[WatchRoot::Local(folder)]).await {
            Ok(watch) => watch,
            Err(e) => {
                let kind = match e.missing {
                    true => ErrorKind::NotFound,
                    false => ErrorKind::Other,
                };
                let refusal = failure("watch", path, kind, e.message);
                return frame::write(&mut write, &refusal).await.map(drop);
            }
        };
        frame::write(&mut write, &Response::Done).await?;
        tracing::info!(path, "watching for a monitor");
        let closed = client_leaves(read);
        tokio::pin!(closed);
        loop {
            let batch = tokio::select! {
                () = &mut closed => break,
                batch = watch.next_batch(WATCH_COALESCE) => batch,
            };
            let report = match batch {
                Some(Batch::Paths(paths)) => Response::Changed { paths },
                Some(Batch::Rescan) => Response::Lost {
                    reason: "the agent's file watcher lost events".into(),
                },
                Some(Batch::Broken(reason)) => Response::Lost { reason },
                None => break,
            };
            frame::write(&mut write, &report).await?;
        }
        tracing::info!(path, "stopped watching");
        Ok(())
    }
}

/// Resolves when a watching client disconnects or sends anything at all.
async fn client_leaves(mut read: impl AsyncRead + Unpin) {
    let _ = frame::read::<Request>(&mut read).await;
}

/// The engine's view of a job handed to this agent: the source here, each destination here or
/// on another agent (reached with this agent's own certificate).
fn job_spec(agent: &Agent, order: &JobOrder) -> Result<JobSpec, Response> {
    let config = &agent.config;
    let here = |path: &str| {
        resolve_root(&config.roots, path)
            .map(|root| Arc::new(LocalEndpoint::confined(root)) as Arc<dyn Endpoint>)
            .map_err(|reason| failure("open folder", path, ErrorKind::Outside, reason))
    };
    let destinations = order
        .destinations
        .iter()
        .map(|folder| {
            if folder.agent == config.name {
                return here(&folder.path);
            }
            let dial = Dial {
                agent: folder.agent.clone(),
                address: folder.address.clone(),
                client: config.name.clone(),
                tls: config.client_tls.clone(),
            };
            let runtime = tokio::runtime::Handle::current();
            let endpoint = RemoteEndpoint::new(dial, folder.path.clone(), runtime);
            Ok(Arc::new(endpoint) as Arc<dyn Endpoint>)
        })
        .collect::<Result<_, _>>()?;
    let filter = Filter::new(&order.include, &order.exclude)
        .map_err(|e| failure("run", &order.job, ErrorKind::Other, e.to_string()))?;
    Ok(JobSpec {
        name: order.job.clone(),
        rule: order.rule,
        source: here(&order.source)?,
        destinations,
        filter,
        guards: order.guards.clone(),
    })
}

/// Checks that `path` (from a peer) is an absolute path inside one of `roots`, symlinks
/// resolved, and returns it resolved. The part that does not exist yet must be plain names.
pub fn resolve_root(roots: &[PathBuf], path: &str) -> Result<PathBuf, String> {
    let requested = Path::new(path);
    if !requested.is_absolute() {
        return Err(format!("{path} is not an absolute path"));
    }
    if requested
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(format!(
            "{path} contains '..' or '.'; name the folder directly"
        ));
    }
    let mut existing = requested;
    let mut missing = Vec::new();
    let resolved = loop {
        match existing.canonicalize() {
            Ok(resolved) => break resolved,
            Err(_) => {
                missing.push(existing.file_name().unwrap_or_default());
                existing = existing.parent().unwrap_or(Path::new("/"));
            }
        }
    };
    let resolved: PathBuf = std::iter::once(resolved.as_os_str())
        .chain(missing.into_iter().rev())
        .collect();
    let inside = roots
        .iter()
        .filter_map(|root| root.canonicalize().ok())
        .any(|root| resolved.starts_with(root));
    if inside {
        Ok(resolved)
    } else {
        let served: Vec<String> = roots.iter().map(|r| r.display().to_string()).collect();
        Err(format!(
            "{path} is outside the folders this agent serves ({}); add it with --root",
            served.join(", ")
        ))
    }
}

/// A state name from a peer is a single plain file name.
fn state_name(name: &str) -> Result<String, FrameError> {
    let plain = Path::new(name).components().count() == 1
        && matches!(
            Path::new(name).components().next(),
            Some(Component::Normal(_))
        );
    if plain {
        Ok(name.to_owned())
    } else {
        Err(FrameError::Unexpected(format!("state name {name:?}")))
    }
}

/// A file's failure as its [`Response::Verdict`].
fn verdict(response: Response) -> Response {
    match response {
        Response::Failed(error) => Response::Verdict {
            bytes: 0,
            error: Some(error),
        },
        other => other,
    }
}

fn done(_: impl Sized) -> Response {
    Response::Done
}

fn failure(op: &str, path: &str, kind: ErrorKind, message: String) -> Response {
    Response::Failed(WireError {
        op: op.into(),
        path: path.into(),
        message,
        kind,
    })
}

fn wire_failure(e: &EndpointError) -> Response {
    let kind = match e.source.kind() {
        io::ErrorKind::NotFound => ErrorKind::NotFound,
        io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => ErrorKind::StorageFull,
        io::ErrorKind::InvalidData => ErrorKind::InvalidData,
        _ => ErrorKind::Other,
    };
    failure(&e.op, &e.path, kind, e.source.to_string())
}

/// Tells the peer why the session ends, then ends it.
async fn refuse(tls: &mut (impl AsyncWrite + Unpin), reason: String) -> Result<(), FrameError> {
    frame::write(
        tls,
        &Response::Refused {
            reason: reason.clone(),
        },
    )
    .await?;
    Err(FrameError::Unexpected(reason))
}
