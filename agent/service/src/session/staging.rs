//! Received files, made durable in batches: a whole file is received and checked into a
//! temporary name ([`Staged`]); once a batch is full, one flush to disk (`syncfs`) makes every
//! file in it durable and they are renamed into place, on another thread while more files
//! arrive (group commit). Each file's verdict is owed to the peer, in the order it was sent.

use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use ferry_engine::delta::Encoded;
use ferry_engine::endpoint::{EndpointError, FileSink, Incoming, LocalEndpoint, Staged};
use ferry_wire::frame::FrameError;
use ferry_wire::protocol::{ErrorKind, Request, Response, brief};

use super::{Session, failure, verdict, wire_failure};

/// Whole files received before one flush to disk makes them all durable and they are renamed
/// into place: one `syncfs` instead of an fsync per file. A batch this large starts its flush
/// when none is under way; each flush also commits the file system's journal, so fewer,
/// larger batches cost the disk less (256 files: about 5 % less time than 128 on the bench's
/// small files).
const STAGE_FILES: usize = 256;
const STAGE_BYTES: u64 = 64 << 20;
/// While a flush is under way the next batch grows up to this (group commit: a disk slower
/// than the network makes batches larger, not the receiver wait).
const STAGE_MAX_FILES: usize = 4096;
const STAGE_MAX_BYTES: u64 = 256 << 20;
// A client stops sending once `FILES_AHEAD` files wait for their verdicts: a batch that is not
// full must never hold that many, or it would wait for files that do not come.
const _: () = assert!(STAGE_MAX_FILES < ferry_wire::remote::FILES_AHEAD);

/// Files received and checked, waiting for their batch to be made durable and put in place.
#[derive(Default)]
pub(super) struct Stager {
    staged: Vec<Staged>,
    bytes: u64,
    /// The batch being flushed and published on another thread while more files arrive; its
    /// verdicts, in order, when done.
    publishing: Option<JoinHandle<Vec<Response>>>,
}

impl Stager {
    fn push(&mut self, file: Staged) {
        self.bytes += file.size();
        self.staged.push(file);
    }

    /// Whether the staged files should start publishing now: a full batch when the disk is
    /// free, an overfull one in any case.
    fn ready(&self) -> bool {
        let (files, bytes) = (self.staged.len(), self.bytes);
        let idle = self.publishing.as_ref().is_none_or(|p| p.is_finished());
        let full = files >= STAGE_FILES || bytes >= STAGE_BYTES;
        let overfull = files >= STAGE_MAX_FILES || bytes >= STAGE_MAX_BYTES;
        overfull || full && idle
    }

    /// Starts publishing the staged files on another thread: flushed to disk and renamed into
    /// place ([`Staged::publish_batch`]), or all failed with `refusal`. The batch before must
    /// be finished.
    fn start(&mut self, refusal: Option<Response>) {
        debug_assert!(self.publishing.is_none(), "one batch at a time");
        if self.staged.is_empty() {
            return;
        }
        self.bytes = 0;
        let staged = std::mem::take(&mut self.staged);
        self.publishing = Some(tokio::task::spawn_blocking(move || match refusal {
            // Dropped unpublished, the files are removed.
            Some(refused) => staged.iter().map(|_| verdict(refused.clone())).collect(),
            None => (Staged::publish_batch(staged).into_iter())
                .map(|outcome| match outcome {
                    Ok(bytes) => Response::Verdict { bytes, error: None },
                    Err(e) => verdict(wire_failure(&e)),
                })
                .collect(),
        }));
    }

    /// The verdicts of the batch being published, once it is done; none without one.
    async fn finish(&mut self) -> Vec<Response> {
        match self.publishing.take() {
            Some(publishing) => publishing.await.expect("publishing a batch panicked"),
            None => Vec::new(),
        }
    }
}

impl Session<'_> {
    /// Makes the staged files durable with one flush, renames them into place, and sends
    /// their verdicts (unless the peer is gone).
    pub(super) async fn publish_staged(&mut self, answer: bool) -> Result<(), FrameError> {
        self.start_publishing(answer).await?;
        self.finish_publishing(answer).await
    }

    /// Starts publishing the staged batch on another thread, once the batch before it is done.
    async fn start_publishing(&mut self, answer: bool) -> Result<(), FrameError> {
        self.finish_publishing(answer).await?;
        let stale = self.fence_refusal();
        self.stager.start(stale);
        Ok(())
    }

    /// Waits for the batch being published and sends its verdicts.
    async fn finish_publishing(&mut self, answer: bool) -> Result<(), FrameError> {
        let verdicts = self.stager.finish().await;
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
    pub(super) async fn await_request(&mut self) -> Result<(), FrameError> {
        loop {
            let Some(publishing) = self.stager.publishing.as_mut() else {
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
            self.stager.publishing = None;
            self.send_verdicts(verdicts).await?;
            self.stream.flush().await?;
        }
    }

    /// Receives a file's ops until `DataEnd`, then stages it (or reports why not); its verdict
    /// is sent when its batch is published. No sender waits for it: one whose delta did not
    /// rebuild hears so in the verdict and sends the file again, whole.
    pub(super) async fn write_file(
        &mut self,
        replica: &LocalEndpoint,
        path: &Path,
        incoming: &Incoming<'_>,
    ) -> Result<(), FrameError> {
        let mut sink = match replica.receive(path, incoming) {
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
                        "{} in the middle of a file",
                        brief(&other)
                    )));
                }
            }
        };
        // An empty hash abandons the file: the sender owes itself a verdict either way.
        let response = match (sink, error, <[u8; 32]>::try_from(hash)) {
            (_, Some(e), _) => wire_failure(&e),
            (Some(sink), None, Ok(hash)) => {
                let sent = Encoded {
                    size: incoming.entry.size,
                    hash: blake3::Hash::from_bytes(hash),
                };
                match sink.finish(&sent, false) {
                    Ok(staged) => {
                        self.stager.push(staged);
                        if self.stager.ready() {
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
    pub(super) async fn refuse_file(&mut self, failure: Response) -> Result<(), FrameError> {
        self.publish_staged(true).await?;
        self.reply(&verdict(failure)).await
    }

    /// Reads and discards a refused file's data, keeping the session in step.
    pub(super) async fn drain_file(&mut self) -> Result<(), FrameError> {
        loop {
            match self.next().await? {
                Request::Data { .. } => {}
                Request::DataEnd { .. } => return Ok(()),
                other => {
                    return Err(FrameError::Unexpected(format!(
                        "{} in the middle of a file",
                        brief(&other)
                    )));
                }
            }
        }
    }
}
