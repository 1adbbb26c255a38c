//! The client side of a pipelined session: requests leave in batches without waiting, and the
//! answers that come back (in order) are matched to what is owed: a file's verdict, a removal's
//! outcome, a signature asked for ahead of the run's need.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use ferry_engine::endpoint::Settled;

use super::from_wire;
use crate::client::{ClientError, Session};
use crate::protocol::{ErrorKind, Request, Response, WireError, brief};

/// Requests (small files' data among them) gathered before they are sent as one batch: large
/// enough that frames are few, small enough that the receiver writes while the sender reads.
const BATCH_BYTES: usize = 256 * 1024;
pub(super) const BATCH_OPS: usize = crate::protocol::MAX_BATCH;

/// The most a request encodes to beyond its [`Request::weight`]: its fields and their names.
/// A batch of [`BATCH_OPS`] such requests, the [`BATCH_BYTES`] their weights may reach and
/// the one that passes it stay under a frame's size, which a receiver checks once the frame
/// is decompressed.
const UNWEIGHED: usize = 512;
const _: () = assert!(
    BATCH_OPS * UNWEIGHED + 2 * BATCH_BYTES < crate::frame::MAX_FRAME as usize,
    "a full batch fits a frame"
);

/// Signatures asked for ahead of the run's need, at most: enough to cover a WAN's round trip
/// with the files of a re-sync, few enough that unused ones cost little.
const SIGNATURES_AHEAD: usize = 64;

/// Requests sent without waiting for their answers, at most: more could fill both
/// directions' buffers while neither side reads.
pub const PIPELINE: usize = 1024;

/// Whole files written without waiting for each verdict, at most: the agent answers them in
/// order, a batch as soon as it is on disk (its batches are smaller than this). Verdicts are a
/// few bytes each, compressed a batch to a frame, so this many fit the sockets' buffers;
/// enough that the agent writes the next batch while it flushes one (a million small files:
/// the flushes of 1,024 left both cores idle a third of the time).
pub const FILES_AHEAD: usize = 8192;

/// A session, and the files sent on it whose verdict has not been read yet.
pub(super) struct Link {
    pub(super) session: Session,
    /// Paths of files whose `Verdict` is still to come, in order; `None` for an abandoned
    /// file (its failure is expected).
    pub(super) pending: VecDeque<Option<PathBuf>>,
    /// Files that failed after the engine moved on.
    pub(super) late: Vec<(PathBuf, WireError)>,
    /// Changes sent without waiting whose answer is still to come, in order.
    pub(super) owed: VecDeque<Owed>,
    /// Removals answered since the last settle: whether each removed something.
    pub(super) removed: Vec<(PathBuf, std::result::Result<bool, WireError>)>,
    /// Other changes sent without waiting that failed (a time not set).
    pub(super) failed_changes: Vec<(PathBuf, WireError)>,
    /// Folders made without waiting that failed.
    pub(super) failed_dirs: Vec<(PathBuf, WireError)>,
    /// Files whose signature the run will ask for, not asked of the agent yet.
    pub(super) upcoming: VecDeque<PathBuf>,
    /// Signatures asked for ahead whose answer is still to come.
    pub(super) asked: HashSet<PathBuf>,
    /// Answers to signatures asked for ahead, until the run takes them.
    pub(super) signatures: HashMap<PathBuf, Response>,
    /// Small requests not sent yet: they leave together in one `Batch` frame (compressed as
    /// one), before this side waits for anything.
    pub(super) outbox: Vec<Request>,
    pub(super) outbox_bytes: usize,
    /// The rest of a `Batch` of answers, taken one at a time.
    pub(super) inbox: VecDeque<Response>,
}

/// A change sent without waiting for its answer.
pub(super) enum Owed {
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
    pub(super) fn describe(&self) -> (&'static str, &Path) {
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
    pub(super) fn new(session: Session) -> Self {
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

    pub(super) async fn send(&mut self, request: Request) -> std::result::Result<(), ClientError> {
        let size = request.weight();
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
    pub(super) async fn flush(&mut self) -> std::result::Result<(), ClientError> {
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
    pub(super) async fn receive(&mut self) -> std::result::Result<Response, ClientError> {
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
    pub(super) async fn answer(&mut self) -> std::result::Result<Response, ClientError> {
        loop {
            let response = self.receive().await?;
            if let Some(answer) = self.note(response) {
                return Ok(answer);
            }
        }
    }

    /// Reads the next owed verdict.
    pub(super) async fn verdict(&mut self) -> std::result::Result<(), ClientError> {
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
    pub(super) async fn collect_owed(
        &mut self,
        owed: usize,
    ) -> std::result::Result<(), ClientError> {
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
    pub(super) fn note(&mut self, response: Response) -> Option<Response> {
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
                    kind: ErrorKind::Other,
                    op: op.into(),
                    path: path.display().to_string(),
                    message: format!("the agent answered {}", brief(&other)),
                };
                self.note_failure(owed, wire);
            }
        }
        None
    }

    /// Files a change sent without waiting that failed where the engine looks for it.
    pub(super) fn note_failure(&mut self, owed: Owed, wire: WireError) {
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
    pub(super) fn take_settled(&mut self, agent: &str) -> Settled {
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
    pub(super) async fn ask_ahead(&mut self) -> std::result::Result<(), ClientError> {
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
    pub(super) async fn signature(
        &mut self,
        path: &Path,
    ) -> std::result::Result<Response, ClientError> {
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
    pub(super) fn note_verdict(&mut self, error: Option<WireError>) {
        let path = self.pending.pop_front().flatten();
        if let (Some(path), Some(error)) = (path, error) {
            self.late.push((path, error));
        }
    }

    pub(super) async fn call(
        &mut self,
        request: Request,
    ) -> std::result::Result<Response, ClientError> {
        self.send(request).await?;
        self.answer().await
    }

    /// Several requests and their answers, in order, with up to `PIPELINE` unanswered: more
    /// could fill both directions' buffers while neither side reads.
    pub(super) async fn call_many(
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use ferry_engine::meta::{Keep, Xattr};
    use ferry_engine::tree::{Entry, Expected, Mtime};

    use super::*;

    /// Every request sent without waiting, with the longest path a scan lists, a link's
    /// target as long, and attributes: none encodes to more than its weight and
    /// [`UNWEIGHED`], so a batch never outgrows a frame.
    #[test]
    fn a_request_weighs_at_least_what_grows_in_it() {
        let long = |c: char| PathBuf::from(c.to_string().repeat(4095));
        let link = Entry::symlink(long('t'), Mtime::at(1), 0o777);
        let expected = Some(Expected {
            entry: Some(link.clone()),
        });
        let xattrs = Some(vec![Xattr {
            name: b"user.dosattrib".to_vec(),
            value: vec![7; 60_000],
        }]);
        let requests = [
            Request::WriteFile {
                path: long('p'),
                entry: link.clone(),
                block_size: Some(4096),
                expected: expected.clone(),
                xattrs: xattrs.clone(),
            },
            Request::MakeDir {
                path: long('p'),
                entry: link.clone(),
                expected: expected.clone(),
            },
            Request::Remove {
                path: long('p'),
                entry: link.clone(),
                expected,
            },
            Request::SetMeta {
                path: long('p'),
                entry: link.clone(),
                xattrs,
                keep: Keep::default(),
            },
            Request::MakeSymlink {
                path: long('p'),
                entry: link,
            },
            Request::Rename {
                from: long('a'),
                to: long('b'),
            },
            Request::SetMtime {
                path: long('p'),
                mtime: Mtime::at(1),
            },
        ];
        for request in requests {
            let encoded = rmp_serde::to_vec_named(&request).unwrap().len();
            assert!(
                encoded <= request.weight() + UNWEIGHED,
                "{} encodes to {encoded} bytes, weighs {}",
                brief(&request),
                request.weight()
            );
        }
    }
}
