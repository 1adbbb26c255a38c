//! Serving reads: a scan streamed in frames, a file streamed as a delta against the peer's
//! signature.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::mpsc;

use ferry_engine::delta::{Op, Signature};
use ferry_engine::endpoint::{Endpoint, EndpointError, LocalEndpoint, Scope};
use ferry_engine::filter::Filter;
use ferry_engine::tree::Entry;
use ferry_wire::frame::FrameError;
use ferry_wire::protocol::{DataOp, ErrorKind, MAX_BATCH, Response};

use super::{Session, failure, wire_failure};

/// Entries per `Scanned` frame at most.
const SCAN_BATCH: usize = 4096;
/// Bytes of paths (and links' targets) per `Scanned` frame at most: with [`SCAN_BATCH`], a
/// frame stays far below the size limit whatever the paths (up to 4 KiB each).
const SCAN_BATCH_BYTES: usize = 1 << 20;
/// File data an agent sends in one frame when it serves a file (as `BATCH_BYTES` for a client).
const READ_BATCH_BYTES: usize = 1024 * 1024;

impl Session<'_> {
    /// Streams a scan: entries go out in batches while the walk goes on, so the agent never
    /// holds the tree (a million files would take hundreds of MiB here, on top of the peer's).
    /// A batch is held back until the next one arrives or the walk ends, so the last says
    /// `more: false`; a walk that fails after some batches ends with the failure instead.
    pub(super) async fn scan(
        &mut self,
        replica: Arc<LocalEndpoint>,
        paths: Option<Vec<PathBuf>>,
        include: &[String],
        exclude: &[String],
    ) -> Result<(), FrameError> {
        let filter = match Filter::new(include, exclude) {
            Ok(filter) => filter,
            Err(e) => {
                let refusal = failure("scan", "", ErrorKind::Other, e.to_string());
                return self.reply(&refusal).await;
            }
        };
        let scope = paths.map_or(Scope::Full, Scope::Paths);
        let (tx, mut rx) = mpsc::channel::<Vec<(PathBuf, Entry)>>(2);
        let walker = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(SCAN_BATCH);
            let mut batch_bytes = 0;
            let closed = || {
                let gone = io::Error::other("the connection closed");
                EndpointError::new("scan", replica.display(), gone)
            };
            replica.scan_each(&scope, &filter, &mut |path, entry| {
                let target = entry.target().map_or(0, |t| t.as_os_str().len());
                batch_bytes += path.as_os_str().len() + target;
                batch.push((path.to_path_buf(), entry));
                if batch.len() == SCAN_BATCH || batch_bytes >= SCAN_BATCH_BYTES {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(SCAN_BATCH));
                    batch_bytes = 0;
                    tx.blocking_send(full).map_err(|_| closed())?;
                }
                Ok(())
            })?;
            tx.blocking_send(batch).map_err(|_| closed())
        });
        let mut held = None;
        while let Some(batch) = rx.recv().await {
            if let Some(entries) = held.replace(batch) {
                let more = true;
                self.reply(&Response::Scanned { entries, more }).await?;
            }
        }
        match walker.await.expect("a scan's walker panicked") {
            Ok(()) => {
                let entries = held.unwrap_or_default();
                let more = false;
                self.reply(&Response::Scanned { entries, more }).await
            }
            Err(e) => self.reply(&wire_failure(&e)).await,
        }
    }

    /// Streams a file as a delta: the file is read on a blocking thread while batches go out.
    pub(super) async fn read_file(
        &mut self,
        replica: Arc<LocalEndpoint>,
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
                if bytes >= READ_BATCH_BYTES || batch.len() >= MAX_BATCH {
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
}
