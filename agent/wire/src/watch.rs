//! Watching a folder for changes: file-system events become batches of changed paths.
//!
//! The watcher is a hint and the rescan is the truth: inotify misses changes on network mounts
//! and drops events when its queue overflows, so an overflow or watcher error asks the caller
//! for a full rescan instead of guessing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{Instant, timeout_at};

use crate::client::{Dial, Session};
use crate::protocol::{ErrorKind, Request, Response, brief};
use ferry_engine::filter::is_reserved;
use ferry_engine::tree::is_plain;

/// A folder to watch: on this machine, or on an agent, which watches it and streams the
/// changes back.
#[derive(Debug, Clone)]
pub enum WatchRoot {
    Local(PathBuf),
    Agent { dial: Dial, path: String },
}

impl std::fmt::Display for WatchRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchRoot::Local(path) => write!(f, "{}", path.display()),
            WatchRoot::Agent { dial, path } => write!(f, "{}:{path}", dial.agent),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot watch {root}: {message}")]
pub struct WatchError {
    pub root: String,
    pub message: String,
    /// The folder does not exist (yet: a first sync may create it).
    pub missing: bool,
}

/// What a batch asks the caller to sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// These paths (relative to a watched root) changed.
    Paths(Vec<PathBuf>),
    /// Events were lost; only a full rescan is safe.
    Rescan,
    /// The watch of a folder on an agent ended (the agent stopped, the connection broke):
    /// nothing is watched there any more, so the watch must be opened again.
    Broken(String),
}

enum Signal {
    Changed(PathBuf),
    Lost(String),
    Broken(String),
}

/// A recursive watch on one or more roots. Dropping it stops the watch, on agents too.
pub struct FolderWatch {
    /// Held for their lifetime: dropping a watcher stops it.
    watchers: Vec<RecommendedWatcher>,
    remote: Vec<AbortHandle>,
    signals: mpsc::UnboundedReceiver<Signal>,
    /// What the current batch has gathered. Kept here, not in `next_batch`, so a caller that
    /// stops waiting (a `select!` with a timer) loses nothing: the next call goes on with it.
    gathered: Batching,
    /// When the first change of the batch being gathered (or last returned) was noticed.
    first_noticed: Instant,
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        // Ending the task closes its connection, and the agent stops watching.
        for task in &self.remote {
            task.abort();
        }
    }
}

impl FolderWatch {
    /// Watches every root; returns once each watch is in place, so no later change is missed.
    pub async fn open(roots: &[WatchRoot]) -> Result<Self, WatchError> {
        let (tx, signals) = mpsc::unbounded_channel();
        let mut watch = Self {
            watchers: Vec::new(),
            remote: Vec::new(),
            signals,
            gathered: Batching::default(),
            first_noticed: Instant::now(),
        };
        for root in roots {
            match root {
                WatchRoot::Local(path) => watch.watchers.push(watch_here(path, tx.clone())?),
                WatchRoot::Agent { dial, path } => watch
                    .remote
                    .push(watch_on_agent(dial, path, tx.clone()).await?),
            }
        }
        Ok(watch)
    }

    /// Waits for the next change, then gathers everything that follows within `debounce`, so a
    /// burst of writes becomes one batch. Returns `None` when the watch has ended. Cancel-safe.
    pub async fn next_batch(&mut self, debounce: Duration) -> Option<Batch> {
        if self.gathered.is_empty() {
            let first = self.signals.recv().await?;
            self.first_noticed = Instant::now();
            self.gathered.add(first);
        }
        let deadline = Instant::now() + debounce;
        while let Ok(Some(signal)) = timeout_at(deadline, self.signals.recv()).await {
            self.gathered.add(signal);
        }
        while let Ok(signal) = self.signals.try_recv() {
            self.gathered.add(signal);
        }
        Some(std::mem::take(&mut self.gathered).finish())
    }

    /// When the first change of the batch `next_batch` last returned was noticed: a batch is
    /// replicated that long after its first change.
    pub fn batch_began(&self) -> Instant {
        self.first_noticed
    }
}

fn watch_here(
    root: &Path,
    tx: mpsc::UnboundedSender<Signal>,
) -> Result<RecommendedWatcher, WatchError> {
    let fail = |message: String, missing| WatchError {
        root: root.display().to_string(),
        message,
        missing,
    };
    if !root.is_dir() {
        return Err(fail("no such folder".into(), true));
    }
    let root_for_events = root.to_path_buf();
    let on_event = move |res: notify::Result<notify::Event>| {
        for signal in signals_of(&root_for_events, res) {
            // The receiver is gone only when the watch was dropped.
            let _ = tx.send(signal);
        }
    };
    // A symlink inside the folder may lead anywhere (`link -> /`): it is replicated as a link,
    // and what it points to is not watched.
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher =
        RecommendedWatcher::new(on_event, config).map_err(|e| fail(e.to_string(), false))?;
    watcher
        .watch(root, RecursiveMode::Recursive)
        .map_err(|e| fail(e.to_string(), false))?;
    Ok(watcher)
}

/// How long an agent may take to connect and put a watch in place.
const WATCH_HANDSHAKE: Duration = Duration::from_secs(10);

/// Asks the agent to watch `path` and forwards what it reports until the watch is dropped.
async fn watch_on_agent(
    dial: &Dial,
    path: &str,
    tx: mpsc::UnboundedSender<Signal>,
) -> Result<AbortHandle, WatchError> {
    let root = format!("{}:{path}", dial.agent);
    let fail = |message: String, missing| WatchError {
        root: root.clone(),
        message,
        missing,
    };
    let handshake = async {
        let mut session = Session::connect(dial, None, Arc::default()).await?;
        let answer = session.call(&Request::Watch { path: path.into() }).await?;
        Ok::<_, crate::client::ClientError>((session, answer))
    };
    let (mut session, answer) = match tokio::time::timeout(WATCH_HANDSHAKE, handshake).await {
        Ok(Ok(opened)) => opened,
        Ok(Err(e)) => return Err(fail(e.to_string(), false)),
        Err(_) => {
            let silent = format!("no answer within {} s", WATCH_HANDSHAKE.as_secs());
            return Err(fail(silent, false));
        }
    };
    match answer {
        Response::Done => {}
        Response::Failed(wire) => {
            return Err(fail(wire.message, wire.kind == ErrorKind::NotFound));
        }
        other => return Err(fail(session.unexpected(&other, "Done").to_string(), false)),
    }
    let forward = tokio::spawn(async move {
        let ended = loop {
            match session.receive().await {
                Ok(Response::Changed { paths }) => {
                    for path in paths {
                        if let Some(signal) = changed_on_agent(&root, path) {
                            let _ = tx.send(signal);
                        }
                    }
                }
                Ok(Response::Lost { reason }) => {
                    let _ = tx.send(Signal::Lost(format!("{root}: {reason}")));
                }
                Ok(other) => break format!("unexpected {}", brief(&other)),
                Err(e) => break e.to_string(),
            }
        };
        let _ = tx.send(Signal::Broken(format!(
            "the watch of {root} ended: {ended}"
        )));
    });
    Ok(forward.abort_handle())
}

/// A path an agent reports, if it is one: plain names below the watched folder, not ferry's.
fn changed_on_agent(root: &str, path: PathBuf) -> Option<Signal> {
    if !is_plain(&path) {
        tracing::warn!(
            root,
            ?path,
            "ignoring a change the agent reported outside its folder"
        );
        return None;
    }
    (!is_reserved(&path)).then_some(Signal::Changed(path))
}

#[derive(Default)]
struct Batching {
    paths: Vec<PathBuf>,
    lost: Option<String>,
    broken: Option<String>,
}

impl Batching {
    fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.lost.is_none() && self.broken.is_none()
    }

    fn add(&mut self, signal: Signal) {
        match signal {
            Signal::Changed(path) => self.paths.push(path),
            Signal::Lost(reason) => {
                tracing::warn!(%reason, "file watcher lost events; rescanning");
                self.lost = Some(reason);
            }
            Signal::Broken(reason) => self.broken = Some(reason),
        }
    }

    fn finish(mut self) -> Batch {
        if let Some(reason) = self.broken {
            return Batch::Broken(reason);
        }
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

    async fn watch_here(dir: &Path) -> FolderWatch {
        let root = WatchRoot::Local(dir.to_path_buf());
        FolderWatch::open(&[root]).await.unwrap()
    }

    /// The paths of the next batch, gathered over 200 ms.
    async fn next_paths(watch: &mut FolderWatch) -> Vec<PathBuf> {
        let batch = tokio::time::timeout(
            Duration::from_secs(5),
            watch.next_batch(Duration::from_millis(200)),
        )
        .await
        .expect("a batch within 5 s");
        let Some(Batch::Paths(paths)) = batch else {
            panic!("{batch:?}")
        };
        paths
    }

    #[tokio::test]
    async fn a_burst_of_writes_becomes_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = watch_here(dir.path()).await;
        for i in 0..5 {
            std::fs::write(dir.path().join(format!("f{i}")), "x").unwrap();
        }
        let paths = next_paths(&mut watch).await;
        assert_eq!(paths.len(), 5, "{paths:?}");
    }

    #[tokio::test]
    async fn a_symlink_out_of_the_folder_is_not_followed() {
        let (dir, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let mut watch = watch_here(dir.path()).await;
        std::fs::write(outside.path().join("secret.txt"), "x").unwrap();
        std::fs::write(dir.path().join("inside.txt"), "x").unwrap();
        let paths = next_paths(&mut watch).await;
        assert_eq!(paths, vec![PathBuf::from("inside.txt")]);
    }
}
