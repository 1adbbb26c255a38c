//! Serving reads: a scan streamed in frames, a file streamed as a delta against the peer's
//! signature.

use std::io;
use std::path::PathBuf;

use tokio::sync::mpsc;

use ferry_engine::delta::{Op, Signature};
use ferry_engine::endpoint::{Endpoint, LocalEndpoint, Scope};
use ferry_engine::filter::Filter;
use ferry_wire::frame::FrameError;
use ferry_wire::protocol::{DataOp, ErrorKind, MAX_BATCH, Response};

use super::{Session, failure, wire_failure};

/// Entries per `Scanned` frame: keeps frames far below the size limit on any tree.
const SCAN_BATCH: usize = 4096;
/// File data an agent sends in one frame when it serves a file (as `BATCH_BYTES` for a client).
const READ_BATCH_BYTES: usize = 1024 * 1024;

impl Session<'_> {
    pub(super) async fn scan(
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
    pub(super) async fn read_file(
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
