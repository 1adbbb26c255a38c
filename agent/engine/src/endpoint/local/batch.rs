//! Files a run writes to a local replica, made durable in batches: each is finished under its
//! temporary name ([`Staged`]), and once a batch is full one flush to disk (`syncfs`) makes
//! them all durable and they are renamed into place, on another thread while the run writes
//! the next batch (group commit). An fsync per file would cost a journal commit per file: at
//! 200,000 small files, most of the copy. Failures come with [`Batches::publish_all`], which
//! the engine calls when it settles a phase.

use std::path::PathBuf;
use std::thread::JoinHandle;

use super::Staged;
use crate::endpoint::EndpointError;

/// A batch starts its flush at this many files or bytes when none is under way; while one is,
/// the next batch grows up to the larger bounds (a disk slower than the writes makes batches
/// larger, not the run wait), then waits for it.
const BATCH_FILES: usize = 256;
const BATCH_BYTES: u64 = 64 << 20;
const BATCH_MAX_FILES: usize = 4096;
const BATCH_MAX_BYTES: u64 = 256 << 20;

/// Files that failed after their commit, by path in the replica.
pub type Failures = Vec<(PathBuf, EndpointError)>;

#[derive(Default)]
pub(super) struct Batches {
    staged: Vec<Staged>,
    bytes: u64,
    /// The batch being flushed and published on another thread; its failures when done.
    publishing: Option<JoinHandle<Failures>>,
    failed: Failures,
}

impl Batches {
    /// Adds a committed file; starts publishing the batch once it is full.
    pub(super) fn push(&mut self, file: Staged) {
        self.bytes += file.size();
        self.staged.push(file);
        let idle = self.publishing.as_ref().is_none_or(JoinHandle::is_finished);
        let full = self.staged.len() >= BATCH_FILES || self.bytes >= BATCH_BYTES;
        let overfull = self.staged.len() >= BATCH_MAX_FILES || self.bytes >= BATCH_MAX_BYTES;
        if overfull || full && idle {
            self.wait_for_publishing();
            let batch = std::mem::take(&mut self.staged);
            self.bytes = 0;
            self.publishing = Some(std::thread::spawn(move || publish(batch)));
        }
    }

    /// Puts every committed file in place (durable first); returns those that failed since
    /// the last call.
    pub(super) fn publish_all(&mut self) -> Failures {
        self.wait_for_publishing();
        self.bytes = 0;
        let failed = publish(std::mem::take(&mut self.staged));
        self.failed.extend(failed);
        std::mem::take(&mut self.failed)
    }

    fn wait_for_publishing(&mut self) {
        if let Some(publishing) = self.publishing.take() {
            let failed = publishing.join().expect("publishing a batch panicked");
            self.failed.extend(failed);
        }
    }
}

/// Flushes `batch` once and renames its files into place; those that failed.
fn publish(batch: Vec<Staged>) -> Failures {
    let targets: Vec<PathBuf> = batch.iter().map(|file| file.target().to_owned()).collect();
    let published = Staged::publish_batch(batch);
    (targets.into_iter().zip(published))
        .filter_map(|(target, outcome)| outcome.err().map(|e| (target, e)))
        .collect()
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches")
            .field("staged", &self.staged.len())
            .field("publishing", &self.publishing.is_some())
            .field("failed", &self.failed.len())
            .finish()
    }
}
