//! One peer's session: the `Hello` handshake, then requests until the peer leaves or the
//! agent stops. Each concern has its own file: [`files`] (scans and reads), [`staging`]
//! (received files, made durable and put in place in batches), [`run_job`] (a run handed
//! over by a scheduler) and [`watch`] (changes reported to a monitor). Sessions run over any
//! [`Connection`], so they are tested over in-memory pipes.
//!
//! The peer is who its certificate says ([`Peer`]); its `Hello` must say the same. Every
//! path it names is opened beneath one of the agent's roots, if that root lets the peer read
//! it (and write it, for a write: [`crate::config`]), and every write is checked against the
//! lease fence the session presented: a session without one cannot write.

use std::collections::VecDeque;
use std::io;
use std::path::{Component, Path};
use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::watch::Receiver;

use ferry_engine::Fence;
use ferry_engine::endpoint::{Endpoint, EndpointError, Failure, Incoming, LocalEndpoint};
use ferry_engine::journal::Journaled;
use ferry_engine::meta::MAX_ACCOUNTS;
use ferry_engine::tree::{Entry, Kind};
use ferry_wire::frame::{self, Data, FrameError};
use ferry_wire::identity::Peer;
use ferry_wire::link::LinkMeter;
use ferry_wire::protocol::{
    ErrorKind, OLDEST_PROTOCOL, PROTOCOL_VERSION, Request, Response, WireError, agree, brief,
};
use ferry_wire::transport::Connection;

use crate::config::Rights;
use crate::fences::Refusal;
use crate::serve::{Agent, refused};
use staging::Stager;

mod files;
mod run_job;
mod staging;
mod state;
mod watch;

#[cfg(test)]
mod attacks;
#[cfg(test)]
mod tests;

/// One peer's session: the folder it opened and the lease it works for.
struct Session<'a> {
    stream: Connection,
    /// Whether file data sent on `stream` goes compressed; `None` when it is not a socket.
    link: Option<LinkMeter>,
    agent: &'a Agent,
    /// Who the peer is, by its certificate.
    peer: Peer,
    fence: Option<Fence>,
    /// Shared with each request's work, not cloned: a clone would not hold the folder the
    /// last file was received into, and each file would resolve its folder afresh.
    replica: Option<Arc<LocalEndpoint>>,
    /// What the peer may do in the open folder.
    rights: Rights,
    stager: Stager,
    states: state::StateWrites,
    /// The rest of a `Batch` frame, served before the next frame is read.
    queued: VecDeque<Request>,
    /// Turns true when the agent stops: the session ends before its next request.
    stop: Receiver<bool>,
}

/// Runs a session over `stream` until the peer leaves or the agent stops.
pub async fn run(
    mut stream: Connection,
    link: Option<LinkMeter>,
    agent: &Agent,
    peer: Peer,
    stop: Receiver<bool>,
) -> Result<(), FrameError> {
    let deadline = agent.config.limits.handshake_deadline();
    let Ok(said) = tokio::time::timeout(deadline, handshake(&mut stream, agent, &peer)).await
    else {
        tracing::warn!(%peer, "refused a session: no Hello within {deadline:?}");
        return Ok(());
    };
    let Some(fence) = said? else {
        return Ok(());
    };
    let mut session = Session {
        stream,
        link,
        agent,
        peer,
        fence,
        replica: None,
        rights: Rights::default(),
        stager: Stager::default(),
        states: state::StateWrites::default(),
        queued: VecDeque::new(),
        stop,
    };
    loop {
        let request = match session.next().await {
            Ok(request) => request,
            Err(e) => {
                // The peer is gone, or the agent stops, but the files it sent whole are
                // checked: put them in place.
                let stopping = *session.stop.borrow();
                session.publish_staged(stopping).await?;
                if stopping {
                    session.stream.flush().await?;
                    tracing::info!("session ended: the agent is stopping");
                    return Ok(());
                }
                return Err(e);
            }
        };
        // Files wait to be published in batches. A file's data and a new folder do not need
        // them in place, nor does a signature: should the file change before the delta made
        // against it arrives, the delta does not rebuild and the file is sent whole.
        let pipelined = match &request {
            Request::WriteFile { .. } | Request::MakeDir { .. } | Request::Signature { .. } => true,
            // A folder is never staged: its metadata can be set before the batch is in place.
            Request::SetMeta { entry, .. } => entry.is_dir(),
            _ => false,
        };
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

/// Reads the peer's `Hello` and welcomes it; the lease it works for, or `None` when it was
/// refused (and told why).
async fn handshake(
    stream: &mut Connection,
    agent: &Agent,
    peer: &Peer,
) -> Result<Option<Option<Fence>>, FrameError> {
    match frame::read::<Request>(stream).await? {
        Request::Hello {
            version: oldest,
            newest,
            client,
            fence,
        } => {
            let newest = newest.unwrap_or(oldest);
            let Some(version) = agree(oldest, newest) else {
                let reason = version_refusal(oldest, newest, peer);
                return refuse(stream, reason).await.map(|()| None);
            };
            if client != peer.name {
                let reason = format!(
                    "the Hello names {}, but the certificate is {peer}'s",
                    brief(&client)
                );
                return refuse(stream, reason).await.map(|()| None);
            }
            if let Some(Err(refusal)) = fence.as_ref().map(|f| agent.fences.admit(peer.role, f)) {
                tracing::warn!(%peer, reason = %refusal, "refused a session");
                refused(refusal.reason);
                return refuse(stream, refusal.message).await.map(|()| None);
            }
            match &fence {
                Some(fence) => tracing::info!(%peer, %fence, "session started"),
                None => tracing::info!(%peer, "session started"),
            }
            metrics::counter!("ferry_agent_sessions_total", "role" => peer.role.as_str())
                .increment(1);
            let welcome = Response::Welcome {
                version,
                agent: agent.config.name.clone(),
                software: env!("CARGO_PKG_VERSION").to_owned(),
                roots: agent
                    .config
                    .roots
                    .iter()
                    .map(|r| r.path.display().to_string())
                    .collect(),
                keeps: LocalEndpoint::keeps(),
            };
            frame::write(stream, &welcome).await?;
            Ok(Some(fence))
        }
        other => refuse(
            stream,
            format!("expected Hello first, got {}", brief(&other)),
        )
        .await
        .map(|()| None),
    }
}

/// Why a `Hello` whose protocol range (`oldest` to `newest`) misses this agent's is refused.
fn version_refusal(oldest: u32, newest: u32, peer: &Peer) -> String {
    let theirs = match newest == oldest {
        true => format!("version {oldest}"),
        false => format!("versions {oldest} to {newest}"),
    };
    format!(
        "protocol {theirs} from {peer}; this agent speaks versions {OLDEST_PROTOCOL} to \
         {PROTOCOL_VERSION}: upgrade the older of the two"
    )
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
        let read = tokio::select! {
            read = frame::read(&mut self.stream) => read?,
            () = stopping(&mut self.stop) => return Err(FrameError::Closed),
        };
        match read {
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

    /// Refuses a write without a lease, under a stale lease, or where the peer may not
    /// write; `None` when the request may go ahead. (Opening a folder to create it is checked
    /// when it is opened.)
    fn fenced_out(&self, request: &Request) -> Option<Response> {
        if !request.writes() || matches!(request, Request::Open { .. }) {
            return None;
        }
        if let Some(refusal) = self.fence_refusal() {
            return Some(refusal);
        }
        if self.replica.is_some() && !self.rights.write {
            let reason = format!(
                "{} may not write here; see the root's write and handover lists in the \
                 agent's configuration",
                self.peer,
            );
            return Some(failure("write", "", ErrorKind::PermissionDenied, reason));
        }
        None
    }

    /// Refuses a write without a lease or under a stale one.
    fn fence_refusal(&self) -> Option<Response> {
        let refusal = match &self.fence {
            None => Refusal {
                reason: "stale_epoch",
                message: "a write without a lease: every write carries the fence of the \
                          schedule or monitor it is for"
                    .to_owned(),
            },
            Some(fence) => self.agent.fences.admit(self.peer.role, fence).err()?,
        };
        tracing::warn!(peer = %self.peer, reason = %refusal, "refused a write");
        refused(refusal.reason);
        Some(failure("write", "", ErrorKind::StaleEpoch, refusal.message))
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
            } => return self.scan(replica, paths, &include, &exclude).await,
            Request::ReadFile { path, base } => return self.read_file(replica, path, base).await,
            Request::WriteFile {
                path,
                entry,
                block_size,
                expected,
                xattrs,
            } => {
                let incoming = Incoming {
                    entry: &entry,
                    block_size,
                    expected: expected.as_ref(),
                    xattrs: xattrs.as_ref(),
                };
                return self.write_file(&replica, &path, &incoming).await;
            }
            Request::Stat { path } => replica.stat(&path).map(|e| Response::Stat(e.map(Box::new))),
            Request::Signature { path } => replica.signature(&path).map(Response::Signature),
            Request::MakeDir {
                path,
                entry,
                expected,
            } => replica.make_dir(&path, &entry, expected.as_ref()).map(done),
            Request::MakeSymlink { path, entry } => replica.make_symlink(&path, &entry).map(done),
            Request::MakeSpecial { path, entry } => {
                make_special_for_peer(&replica, &path, &entry).map(done)
            }
            Request::Remove {
                path,
                entry,
                expected,
            } => replica
                .remove(&path, &entry, expected.as_ref())
                .map(Response::Removed),
            Request::Rename { from, to } => replica.rename(&from, &to).map(done),
            Request::SetMtime { path, mtime } => replica.set_mtime(&path, mtime).map(done),
            Request::SetMeta {
                path,
                entry,
                xattrs,
                keep,
            } => replica
                .set_meta(&path, &entry, xattrs.as_ref(), keep)
                .map(done),
            Request::ReadXattrs { path } => replica.xattrs(&path).map(Response::Xattrs),
            Request::AccountNames { uids, gids } => {
                within_account_limit(uids.len().max(gids.len()))
                    .and_then(|()| replica.account_names(&uids, &gids))
                    .map(Response::Accounts)
            }
            Request::AccountIds { users, groups } => {
                within_account_limit(users.len().max(groups.len()))
                    .and_then(|()| replica.account_ids(&users, &groups))
                    .map(Response::Accounts)
            }
            Request::Duplicate { from, to, check } => {
                replica.duplicate(&from, &to, check.as_ref()).map(done)
            }
            Request::Hash { path } => replica
                .hash(&path)
                .map(|h| Response::Hash(h.as_bytes().to_vec())),
            Request::ReadState { name } => replica
                .read_state_bytes(&state_name(&name)?)
                .map(|b| Response::State(b.map(serde_bytes::ByteBuf::from))),
            Request::WriteState { name, bytes } => replica
                .write_state_bytes(&state_name(&name)?, &bytes)
                .map(done),
            Request::ReadStatePart { name, from } => {
                state::read_part(&replica, &state_name(&name)?, from)
            }
            Request::WriteStatePart {
                name,
                from,
                bytes,
                last,
            } => (self.states).write_part(&replica, state_name(&name)?, from, bytes, last),
            Request::ChangesSince { mark } => {
                replica
                    .changes_since(mark.as_ref())
                    .map(|journaled| match journaled {
                        Journaled::Unjournaled => Response::Journal {
                            now: None,
                            changed: None,
                        },
                        Journaled::At { now, changed } => Response::Journal {
                            now: Some(now),
                            changed,
                        },
                    })
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
        self.rights = Rights::default();
        let (replica, root) = match self.agent.replica(path) {
            Ok(found) => found,
            Err(reason) => return failure("open folder", path, ErrorKind::Outside, reason),
        };
        let rights = root.rights(&self.peer);
        let refused = match (rights, create) {
            (Rights { read: false, .. }, _) => Some("use"),
            (Rights { write: false, .. }, true) => Some("create"),
            _ => None,
        };
        if let Some(verb) = refused {
            let reason = format!(
                "{} may not {verb} {path}; see the root's read, write and handover lists in the \
                 agent's configuration",
                self.peer
            );
            return failure("open folder", path, ErrorKind::PermissionDenied, reason);
        }
        if let Some(refusal) = self.fence_refusal().filter(|_| create) {
            return refusal;
        }
        self.rights = rights;
        match replica.prepare(create, None) {
            Ok(()) => {
                self.replica = Some(Arc::new(replica));
                Response::Done
            }
            Err(e) => wire_failure(&e),
        }
    }
}

/// Resolves once the agent stops.
async fn stopping(stop: &mut Receiver<bool>) {
    if stop.wait_for(|stopping| *stopping).await.is_err() {
        // The agent is gone without saying so: nothing will ever stop this session.
        std::future::pending::<()>().await;
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

/// Refuses a look-up of more users or groups than a peer may ask about at once: each one may
/// cost the machine's directory service a round trip.
fn within_account_limit(asked: usize) -> Result<(), EndpointError> {
    if asked <= MAX_ACCOUNTS {
        return Ok(());
    }
    let why = format!("{asked} users or groups asked about; at most {MAX_ACCOUNTS} at once");
    let refused = io::Error::new(io::ErrorKind::InvalidInput, why);
    Err(EndpointError::new(
        "look up the users and groups of",
        "",
        refused,
    ))
}

/// Makes a FIFO or a socket a peer asks for, never a device: a device node in a share would
/// open a disk to whoever can read the share.
fn make_special_for_peer(
    replica: &LocalEndpoint,
    path: &Path,
    entry: &Entry,
) -> Result<(), EndpointError> {
    match entry.kind() {
        Kind::Special(node) if !node.is_device() => replica.make_special(path, entry),
        _ => {
            let why = "an agent makes FIFOs and sockets for a peer, never a device";
            let refused = io::Error::new(io::ErrorKind::PermissionDenied, why);
            Err(EndpointError::new(
                "create special file",
                path.display().to_string(),
                refused,
            ))
        }
    }
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
    let kind = match (e.failure, e.source.kind()) {
        (Failure::BadDelta, _) => ErrorKind::InvalidData,
        (Failure::StaleLease, _) => ErrorKind::StaleEpoch,
        (Failure::Outside, _) => ErrorKind::Outside,
        (Failure::Vanished, _) => ErrorKind::Vanished,
        (_, io::ErrorKind::NotFound) => ErrorKind::NotFound,
        (_, io::ErrorKind::PermissionDenied) => ErrorKind::PermissionDenied,
        (_, io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded) => ErrorKind::StorageFull,
        _ => ErrorKind::Other,
    };
    failure(&e.op, &e.path, kind, e.source.to_string())
}

/// Tells the peer why the session ends.
async fn refuse(stream: &mut (impl AsyncWrite + Unpin), reason: String) -> Result<(), FrameError> {
    tracing::warn!(reason, "refused a session");
    metrics::counter!("ferry_agent_refusals_total", "reason" => "session").increment(1);
    frame::write(stream, &Response::Refused { reason })
        .await
        .map(drop)
}
