//! Changes reported to a scheduler's monitor: the agent watches a folder and streams the
//! paths that change until the scheduler disconnects or the agent stops.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::AsyncRead;

use ferry_engine::endpoint::{Endpoint, LocalEndpoint};
use ferry_wire::frame::{self, FrameError};
use ferry_wire::identity::{Peer, Role};
use ferry_wire::protocol::{ErrorKind, Request, Response};
use ferry_wire::watch::{Batch, FolderWatch, WatchRoot};

use super::{Session, failure, stopping};
use crate::config::ServedRoot;
use crate::roots;

/// How long the agent gathers changes before sending them: a burst of writes becomes one frame.
const WATCH_COALESCE: Duration = Duration::from_millis(5);

impl Session<'_> {
    /// Watches a folder for a scheduler's monitor and reports its changes until the scheduler
    /// disconnects (or says anything: a watching client has nothing to say).
    pub(super) async fn watch(self, path: &str) -> Result<(), FrameError> {
        let (read, mut write) = tokio::io::split(self.stream);
        let limit = self.agent.config.limits.max_watches_per_peer;
        let held = self.agent.watches.take(&self.peer.name, limit);
        let folder = match (self.peer.role, &held) {
            (Role::Scheduler, Some(_)) => {
                watched_folder(&self.agent.config.roots, &self.peer, path)
            }
            (Role::Scheduler, None) => Err((
                ErrorKind::Other,
                format!(
                    "{} has {limit} watches open here already, as many as it may",
                    self.peer
                ),
            )),
            (Role::Agent, _) => Err((
                ErrorKind::PermissionDenied,
                format!(
                    "only a scheduler watches folders, and {} is not one",
                    self.peer
                ),
            )),
        };
        let folder = match folder {
            Ok(folder) => folder,
            Err((kind, reason)) => {
                let refusal = failure("watch", path, kind, reason);
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
        let mut stop = self.stop;
        loop {
            let batch = tokio::select! {
                () = &mut closed => break,
                () = stopping(&mut stop) => break,
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

/// The folder at `path` (from `peer`), once it is known to be one `peer` may read, and to
/// open beneath its root with no symlink on the way. A folder not there yet is the watcher's
/// to report.
fn watched_folder(
    served: &[ServedRoot],
    peer: &Peer,
    path: &str,
) -> Result<PathBuf, (ErrorKind, String)> {
    let (root, anchor, folder) =
        roots::locate(served, path).map_err(|reason| (ErrorKind::Outside, reason))?;
    if !root.rights(peer).read {
        let reason = format!("{peer} may not read {path}; see the root's read list");
        return Err((ErrorKind::PermissionDenied, reason));
    }
    match LocalEndpoint::beneath(anchor, &folder).prepare(false, None) {
        Err(e) if e.source.kind() != std::io::ErrorKind::NotFound => {
            Err((ErrorKind::Outside, e.to_string()))
        }
        _ => Ok(folder),
    }
}
