//! A file streaming to an agent: its ops go out in frames of up to [`FILE_DATA_BYTES`] without
//! a reply; the agent's verdict on it comes later, in order.

use std::path::PathBuf;
use std::sync::MutexGuard;

use ferry_engine::delta::{Encoded, Op};
use ferry_engine::endpoint::{FileSink, Result};

use super::FILES_AHEAD;
use super::RemoteEndpoint;
use super::pipeline::{BATCH_OPS, Link};
use crate::protocol::{DataOp, Request, Response};

/// A large file's data gathered before it is sent: a frame's header then costs about 100
/// bytes a MiB.
const FILE_DATA_BYTES: usize = 1024 * 1024;

/// A file streaming to an agent: ops go out in batches; the agent answers once, at the end.
pub(super) struct RemoteSink<'a> {
    endpoint: &'a RemoteEndpoint,
    rel: std::path::PathBuf,
    /// The session stays locked while the file streams: nothing else may interleave.
    slot: MutexGuard<'a, Option<Link>>,
    batch: Vec<Op>,
    batch_bytes: usize,
    /// `DataEnd` was sent: the agent's answer is due.
    ended: bool,
}

impl<'a> RemoteSink<'a> {
    pub(super) fn new(
        endpoint: &'a RemoteEndpoint,
        rel: &std::path::Path,
        slot: MutexGuard<'a, Option<Link>>,
    ) -> Self {
        Self {
            endpoint,
            rel: rel.to_path_buf(),
            slot,
            batch: Vec::new(),
            batch_bytes: 0,
            ended: false,
        }
    }

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
        self.collect(FILES_AHEAD)?;
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
