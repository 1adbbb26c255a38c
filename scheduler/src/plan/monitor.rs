//! A real-time monitor: a full sync when it starts, then every watched change synced in small
//! debounced batches, with a periodic full rescan as the safety net (and at once when the
//! watcher lost events). One `runs` row covers the whole holding period; each batch is an event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ferry_engine::run::EngineError;
use ferry_engine::{Halt, Scope};
use ferry_wire::watch::{Batch, FolderWatch, WatchRoot};

use crate::plan::definitions::Execution;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::ProblemSlot;
use super::run::{Recorder, describe, sync};
use super::settle::Settling;
use crate::store::{RunAttempt, Store};

/// Waits before trying again after a failed start or sync (an agent gone, a missing source
/// folder): short at first, since an agent's cluster or a restart brings it back within
/// seconds, then doubling up to the longest.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_LONGEST: Duration = Duration::from_secs(5);

/// The wait before the next try: [`RETRY_FIRST`] after a success, doubling with each failure
/// up to [`RETRY_LONGEST`].
#[derive(Default)]
pub struct Backoff {
    failures_in_a_row: AtomicU64,
}

impl Backoff {
    fn next_wait(&self) -> Duration {
        let failures = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed);
        let doubled = RETRY_FIRST.saturating_mul(1 << failures.min(16) as u32);
        doubled.min(RETRY_LONGEST)
    }

    fn succeeded(&self) {
        self.failures_in_a_row.store(0, Ordering::Relaxed);
    }
}

pub struct MonitorTask {
    pub name: String,
    pub execution: Execution,
    pub roots: Vec<WatchRoot>,
    pub debounce: Duration,
    pub rescan: Duration,
    /// The problem that keeps it from replicating, if any, for the monitor's `last_error`.
    pub problem: ProblemSlot,
    pub retry: Backoff,
}

/// Runs until `stop` (a safe point: between batches) or `halt` (at once, mid-batch).
pub async fn run(
    store: Store,
    attempt: RunAttempt,
    task: MonitorTask,
    stop: CancellationToken,
    halt: Halt,
) {
    let mut recorder = Recorder::new(store, attempt, &task.execution.spec.name);
    let roots: Vec<String> = task.roots.iter().map(ToString::to_string).collect();
    recorder
        .note("info", &format!("watching {}", roots.join(", ")))
        .await;
    let outcome = watch_loop(&task, &stop, &halt, &mut recorder).await;
    match outcome {
        Ok(()) => {
            recorder.note("info", "stopped watching").await;
            recorder.finish("succeeded", None, None).await;
        }
        Err(EngineError::Cancelled { .. }) => {
            recorder
                .note(
                    "warn",
                    "stopped mid-batch: the scheduler lost its lease or is stopping",
                )
                .await;
            recorder
                .finish("interrupted", Some("stopped mid-batch".into()), None)
                .await;
        }
        Err(e) => unreachable!("watch_loop retries other errors: {e}"),
    }
}

async fn watch_loop(
    task: &MonitorTask,
    stop: &CancellationToken,
    halt: &Halt,
    recorder: &mut Recorder,
) -> Result<(), EngineError> {
    // A folder the first sync creates (a destination, under the sync rule) cannot be watched
    // before it exists: sync once, then watch.
    let mut synced_for_missing = false;
    'restart: loop {
        // Watch first, then scan: a change during the initial scan is then not missed.
        let opened = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            opened = FolderWatch::open(&task.roots) => opened,
        };
        let problem = match opened {
            Ok(mut watch) => match follow(task, &mut watch, stop, halt, recorder).await? {
                Next::Stop => return Ok(()),
                Next::Go | Next::Restart => continue 'restart,
            },
            Err(e) if e.missing && !synced_for_missing => {
                synced_for_missing = true;
                match sync_or_wait(task, Scope::Full, halt, stop, recorder).await? {
                    Next::Stop => return Ok(()),
                    Next::Go | Next::Restart => continue 'restart,
                }
            }
            Err(e) => e.to_string(),
        };
        synced_for_missing = false;
        if let Next::Stop = wait_after(task, recorder, stop, &problem).await {
            return Ok(());
        }
    }
}

/// Syncs in full, then every batch the watch reports, until asked to stop (`Stop`) or a
/// problem asks for a new watch (`Restart`).
async fn follow(
    task: &MonitorTask,
    watch: &mut FolderWatch,
    stop: &CancellationToken,
    halt: &Halt,
    recorder: &mut Recorder,
) -> Result<Next, EngineError> {
    let mut scope = Some(Scope::Full);
    let mut next_rescan = Instant::now() + task.rescan;
    let mut batch_began: Option<Instant> = None;
    let mut settling = Settling::default();
    recorder.remember_large_copies();
    loop {
        if let Some(scope) = scope.take() {
            let full = scope == Scope::Full;
            match sync_or_wait(task, scope, halt, stop, recorder).await? {
                Next::Go if full => {
                    task.problem.set(None);
                    task.retry.succeeded();
                }
                Next::Go => {}
                other => return Ok(other),
            }
            settling.copied(recorder.take_large_copies());
            if let Some(began) = batch_began.take() {
                let lag = began.elapsed().as_secs_f64();
                metrics::gauge!("ferry_monitor_lag_seconds", "monitor" => task.name.clone())
                    .set(lag);
            }
        }
        let settles = settling.next_due();
        tokio::select! {
            _ = stop.cancelled() => return Ok(Next::Stop),
            _ = sleep_until(next_rescan) => {
                next_rescan = Instant::now() + task.rescan;
                scope = Some(Scope::Full);
            }
            () = sleep_until(settles.unwrap_or(next_rescan)), if settles.is_some() => {}
            batch = watch.next_batch(task.debounce) => match batch {
                Some(Batch::Paths(paths)) if paths.is_empty() => {}
                Some(Batch::Paths(paths)) => {
                    settling.changed(paths, Instant::now());
                    batch_began.get_or_insert(watch.batch_began());
                }
                Some(Batch::Broken(problem)) => {
                    return Ok(wait_after(task, recorder, stop, &problem).await);
                }
                None => {
                    let problem = "the watch ended";
                    return Ok(wait_after(task, recorder, stop, problem).await);
                }
                Some(Batch::Rescan) => {
                    next_rescan = Instant::now() + task.rescan;
                    scope = Some(Scope::Full);
                }
            },
        }
        if scope.is_none() {
            let due = settling.take_due(Instant::now());
            scope = (!due.is_empty()).then_some(Scope::Paths(due));
        }
    }
}

/// What the watch loop does after a sync.
enum Next {
    Go,
    /// A problem was reported and waited out: start over (new watch, full scan).
    Restart,
    /// Asked to stop while waiting.
    Stop,
}

/// Syncs `scope`; a problem (other than a halt, which ends the holding) is reported and
/// waited out before the loop starts over.
async fn sync_or_wait(
    task: &MonitorTask,
    scope: Scope,
    halt: &Halt,
    stop: &CancellationToken,
    recorder: &mut Recorder,
) -> Result<Next, EngineError> {
    match sync_batch(task, scope, halt, recorder).await {
        Ok(()) => Ok(Next::Go),
        Err(e @ EngineError::Cancelled { .. }) => Err(e),
        Err(e) => Ok(wait_after(task, recorder, stop, &e.to_string()).await),
    }
}

async fn wait_after(
    task: &MonitorTask,
    recorder: &Recorder,
    stop: &CancellationToken,
    problem: &str,
) -> Next {
    let wait = task.retry.next_wait();
    report(task, recorder, problem, wait).await;
    if pause(stop, wait).await {
        Next::Stop
    } else {
        Next::Restart
    }
}

async fn sync_batch(
    task: &MonitorTask,
    scope: Scope,
    halt: &Halt,
    recorder: &mut Recorder,
) -> Result<(), EngineError> {
    let what = match &scope {
        Scope::Full => "full scan".to_string(),
        Scope::Paths(paths) => format!("{} changed paths", paths.len()),
    };
    recorder.next_batch();
    let summary = sync(&task.execution, scope, halt, recorder).await?;
    recorder.flush_unwritten().await;
    let changed =
        summary.files_copied + summary.files_deleted + summary.conflicts + summary.failures > 0;
    if changed || what == "full scan" {
        let level = if summary.failures > 0 {
            "error"
        } else {
            "info"
        };
        recorder
            .note(level, &format!("batch ({what}): {}", describe(&summary)))
            .await;
        recorder.save_counters().await;
    }
    Ok(())
}

async fn report(task: &MonitorTask, recorder: &Recorder, problem: &str, wait: Duration) {
    tracing::warn!(monitor = task.name, "{problem}");
    recorder
        .note(
            "error",
            &format!("{problem}; retrying in {:.1} s", wait.as_secs_f64()),
        )
        .await;
    task.problem.set(Some(problem.to_owned()));
}

/// Sleeps for `wait`; true if `stop` came first.
async fn pause(stop: &CancellationToken, wait: Duration) -> bool {
    tokio::select! {
        _ = stop.cancelled() => true,
        _ = tokio::time::sleep(wait) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_come_quickly_after_a_success_then_slow_down() {
        let retry = Backoff::default();
        let waits: Vec<Duration> = (0..6).map(|_| retry.next_wait()).collect();
        let ms = |ms| Duration::from_millis(ms);
        assert_eq!(
            waits,
            [ms(500), ms(1000), ms(2000), ms(4000), ms(5000), ms(5000)]
        );
        retry.succeeded();
        assert_eq!(retry.next_wait(), RETRY_FIRST);
    }
}
