//! A run handed over by a scheduler: the job runs here, with this agent's folder as its
//! source, and its progress streams back on the session. It halts when the keep-alives stop,
//! the scheduler goes away, a newer lease holder arrives, or the agent stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use ferry_engine::endpoint::{Endpoint, Scope};
use ferry_engine::filter::Filter;
use ferry_engine::{Halt, JobSpec};
use ferry_wire::client::Dial;
use ferry_wire::frame::{self, FrameError};
use ferry_wire::identity::{Peer, Role};
use ferry_wire::protocol::{ErrorKind, JobOrder, Request, Response, brief};
use ferry_wire::remote::RemoteEndpoint;

use super::{Session, failure, stopping};
use crate::serve::Agent;

/// Progress events of a run handed over, at most, in one frame, and how long they gather
/// between two frames.
const PROGRESS_BATCH: usize = 1024;
const PROGRESS_GATHER: Duration = Duration::from_millis(10);

impl Session<'_> {
    /// Runs a job whose source is here, streaming progress to the scheduler that handed it
    /// over; the run halts when its keep-alives stop or the scheduler goes away.
    pub(super) async fn run_job(
        self,
        order: JobOrder,
        valid_for_ms: u64,
    ) -> Result<(), FrameError> {
        let halt = match &self.fence {
            Some(fence) => Halt::fenced(fence.clone()),
            None => Halt::new(),
        };
        halt.extend_until(Instant::now() + Duration::from_millis(valid_for_ms));
        let refused = self.fence_refusal();
        let (mut read, mut write) = tokio::io::split(self.stream);
        let spec = match refused.map_or_else(|| job_spec(self.agent, &self.peer, &order), Err) {
            Ok(spec) => spec,
            Err(response) => return frame::write(&mut write, &response).await.map(drop),
        };
        tracing::info!(job = order.job, fence = ?self.fence, "running a job handed over");
        let watcher = halt.clone();
        let (fences, fence) = (self.agent.fences.clone(), self.fence.clone());
        let mut stop = self.stop.clone();
        let keep_alive = tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = frame::read::<Request>(&mut read) => message,
                    () = stopping(&mut stop) => {
                        tracing::info!("the agent is stopping; stopping the run handed over");
                        return watcher.stop();
                    }
                };
                match message {
                    // A newer holder has reached this agent: the run is stale, however long
                    // its scheduler keeps it alive.
                    Ok(Request::KeepAlive { .. })
                        if fence
                            .as_ref()
                            .is_some_and(|f| fences.admit(Role::Scheduler, f).is_err()) =>
                    {
                        tracing::warn!(?fence, "a newer lease holder arrived; stopping the run");
                        return watcher.stop();
                    }
                    Ok(Request::KeepAlive { valid_for_ms }) => {
                        watcher.extend_until(Instant::now() + Duration::from_millis(valid_for_ms))
                    }
                    Ok(Request::Cancel) | Err(_) => return watcher.stop(),
                    Ok(other) => {
                        tracing::warn!(
                            message = brief(&other),
                            "unexpected message during a run; stopping it"
                        );
                        return watcher.stop();
                    }
                }
            }
        });
        let (tx, mut rx) = mpsc::unbounded_channel();
        let scope = order.paths.clone().map_or(Scope::Full, Scope::Paths);
        let work = ferry_wire::blocking::spawn(move || {
            ferry_engine::run::run(&spec, &scope, &halt, &mut |event| {
                let _ = tx.send(event);
            })
        });
        let mut connected = true;
        let mut events = Vec::new();
        while rx.recv_many(&mut events, PROGRESS_BATCH).await > 0 {
            let mut progress: Vec<Response> = events.drain(..).map(Response::Progress).collect();
            let report = match progress.len() {
                1 => progress.pop().expect("one event"),
                _ => Response::Batch(progress),
            };
            if connected {
                connected = frame::write(&mut write, &report).await.is_ok();
            }
            // Events pile up meanwhile: a frame (and a wake-up) per file would cost more than
            // the small files themselves.
            tokio::time::sleep(PROGRESS_GATHER).await;
        }
        keep_alive.abort();
        let response = match work.await.expect("the sync engine panicked") {
            Ok(summary) => Response::RunDone { summary },
            Err(e) => failure("run", &order.job, ErrorKind::Other, e.to_string()),
        };
        tracing::info!(job = order.job, ?response, "run handed over ended");
        frame::write(&mut write, &response).await.map(drop)
    }
}

/// The engine's view of a job a scheduler (`peer`) handed to this agent: the source here,
/// each destination here or on another agent (reached with this agent's own certificate, at
/// the address this agent's peer list gives, or the order's when it has none).
fn job_spec(agent: &Agent, peer: &Peer, order: &JobOrder) -> Result<JobSpec, Response> {
    let config = &agent.config;
    if peer.role != Role::Scheduler {
        let reason = format!("only a scheduler hands runs over, and {peer} is not one");
        return Err(failure(
            "run",
            &order.job,
            ErrorKind::PermissionDenied,
            reason,
        ));
    }
    let here = |path: &str, writes: bool| {
        let (replica, root) = agent
            .replica(path)
            .map_err(|reason| failure("open folder", path, ErrorKind::Outside, reason))?;
        let rights = root.rights(peer);
        if !rights.read || (writes && !rights.write) {
            let verb = if writes { "write" } else { "read" };
            let reason = format!(
                "{peer} may not {verb} {path}; see the root's read and write lists in the \
                 agent's configuration"
            );
            return Err(failure(
                "open folder",
                path,
                ErrorKind::PermissionDenied,
                reason,
            ));
        }
        Ok(Arc::new(replica) as Arc<dyn Endpoint>)
    };
    let destinations = order
        .destinations
        .iter()
        .map(|folder| {
            if folder.agent == config.name {
                return here(&folder.path, true);
            }
            let address = match config.peers.is_empty() {
                true => folder.address.clone(),
                false => config.peers.get(&folder.agent).cloned().ok_or_else(|| {
                    let reason = format!(
                        "{} is not among this agent's peers; add it under [peers] in its \
                         configuration to let runs push to it",
                        folder.agent
                    );
                    failure("run", &order.job, ErrorKind::PermissionDenied, reason)
                })?,
            };
            let dial = Dial {
                agent: folder.agent.clone(),
                address,
                client: config.name.clone(),
                tls: config.client_tls.clone(),
            };
            let runtime = tokio::runtime::Handle::current();
            let endpoint = RemoteEndpoint::new(dial, folder.path.clone(), runtime);
            Ok(Arc::new(endpoint) as Arc<dyn Endpoint>)
        })
        .collect::<Result<_, _>>()?;
    let filter = Filter::new(&order.include, &order.exclude)
        .map_err(|e| failure("run", &order.job, ErrorKind::Other, e.to_string()))?;
    Ok(JobSpec {
        name: order.job.clone(),
        rule: order.rule,
        source: here(&order.source, false)?,
        destinations,
        filter,
        guards: order.guards.clone(),
        full_scan_every: config.full_scan_every,
    })
}
