//! Watching a folder for changes: file-system events become batches of changed paths.
//!
//! The watcher is a hint and the rescan is the truth: inotify misses changes on network mounts
//! and drops events when its queue overflows, so an overflow or watcher error asks the caller
//! for a full rescan instead of guessing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};

use crate::filter::is_reserved;

/// What a batch asks the caller to sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// These paths (relative to a watched root) changed.
    Paths(Vec<PathBuf>),
    /// Events were lost; only a full rescan is safe.
    Rescan,
}

enum Signal {
    Changed(PathBuf),
    Lost(String),
}

/// A recursive watch on one or more roots. Dropping it stops the watch.
pub struct FolderWatch {
    _watchers: Vec<RecommendedWatcher>,
    signals: mpsc::UnboundedReceiver<Signal>,
}

impl FolderWatch {
    pub fn new(roots: &[PathBuf]) -> notify::Result<Self> {
        let (tx, signals) = mpsc::unbounded_channel();
        let mut watchers = Vec::with_capacity(roots.len());
        for root in roots {
            let root_for_events = root.clone();
            let tx = tx.clone();
            let mut watcher =
                notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                    for signal in signals_of(&root_for_events, res) {
                        // The receiver is gone only when the watch was dropped.
                        let _ = tx.send(signal);
                    }
                })?;
            watcher.watch(root, RecursiveMode::Recursive)?;
            watchers.push(watcher);
        }
        Ok(Self {
            _watchers: watchers,
            signals,
        })
    }

    /// Waits for the next change, then gathers everything that follows within `debounce`, so a
    /// burst of writes becomes one batch. Returns `None` when the watch has ended.
    pub async fn next_batch(&mut self, debounce: Duration) -> Option<Batch> {
        let mut batch = Batching::default();
        batch.add(self.signals.recv().await?);
        let deadline = Instant::now() + debounce;
        while let Ok(Some(signal)) = timeout_at(deadline, self.signals.recv()).await {
            batch.add(signal);
        }
        while let Ok(signal) = self.signals.try_recv() {
            batch.add(signal);
        }
        Some(batch.finish())
    }
}

#[derive(Default)]
struct Batching {
    paths: Vec<PathBuf>,
    lost: Option<String>,
}

impl Batching {
    fn add(&mut self, signal: Signal) {
        match signal {
            Signal::Changed(path) => self.paths.push(path),
            Signal::Lost(reason) => {
                tracing::warn!(%reason, "file watcher lost events; rescanning");
                self.lost = Some(reason);
            }
        }
    }

    fn finish(mut self) -> Batch {
        if self.lost.is_some() {
            return Batch::Rescan;
        }
        self.paths.sort();
        self.paths.dedup();
        Batch::Paths(self.paths)
    }
}

fn signals_of(root: &Path, res: notify::Result<notify::Event>) -> Vec<Signal> {
    let event = match res {
        Ok(event) => event,
        Err(e) => return vec![Signal::Lost(e.to_string())],
    };
    if event.need_rescan() {
        return vec![Signal::Lost("the event queue overflowed".into())];
    }
    if event.kind.is_access() {
        // Reads and closes after reading change nothing; a close after writing does.
        if !matches!(
            event.kind,
            notify::EventKind::Access(notify::event::AccessKind::Close(
                notify::event::AccessMode::Write
            ))
        ) {
            return Vec::new();
        }
    }
    event
        .paths
        .into_iter()
        .filter_map(|p| p.strip_prefix(root).ok().map(Path::to_path_buf))
        .filter(|rel| !is_reserved(rel))
        .map(Signal::Changed)
        .collect()
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, Flag};
    use notify::{Event, EventKind};

    use super::*;

    #[test]
    fn an_overflow_asks_for_a_rescan() {
        let overflow = Event::new(EventKind::Other).set_flag(Flag::Rescan);
        let signals = signals_of(Path::new("/r"), Ok(overflow));
        assert!(matches!(signals.as_slice(), [Signal::Lost(_)]));
    }

    #[test]
    fn paths_are_made_relative_and_ferrys_own_files_ignored() {
        let event = Event::new(EventKind::Create(CreateKind::File))
            .add_path("/r/a/b.txt".into())
            .add_path("/r/a/.ferry-tmp.1.2".into());
        let signals = signals_of(Path::new("/r"), Ok(event));
        assert!(matches!(signals.as_slice(), [Signal::Changed(p)] if p == Path::new("a/b.txt")));
    }

    #[tokio::test]
    async fn a_burst_of_writes_becomes_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = FolderWatch::new(&[dir.path().to_path_buf()]).unwrap();
        for i in 0..5 {
            std::fs::write(dir.path().join(format!("f{i}")), "x").unwrap();
        }
        let batch = tokio::time::timeout(
            Duration::from_secs(5),
            watch.next_batch(Duration::from_millis(200)),
        )
        .await
        .expect("a batch within 5 s");
        let Some(Batch::Paths(paths)) = batch else {
            panic!("{batch:?}")
        };
        assert_eq!(paths.len(), 5, "{paths:?}");
    }
}
