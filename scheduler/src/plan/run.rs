//! Carrying out a run: the engine works on a blocking thread while this side records its events
//! and counters in `runs` and `run_events`.
//!
//! Recording never stops the sync: when the database is unreachable the events are logged
//! locally and the counters written at the end. After a failed write the recorder stops asking
//! the database for a few seconds, so a database that hangs costs one timeout, not one per
//! file.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ferry_engine::locks::JobLocks;
use ferry_engine::run::EngineError;
use ferry_engine::{Event, Halt, Scope, Summary};

use crate::plan::definitions::Execution;
use tokio::sync::mpsc;

use super::ProblemSlot;
use super::hooks::Hook;
use super::settle::SETTLING_SIZE;
use crate::store::{Counters, RunAttempt, RunEnd, Store, StoreError};

/// Per-file events written for one run (or one monitor batch) before the rest are only counted,
/// so a first copy of a million files does not write a million rows.
const EVENTS_PER_RUN: u32 = 200;
/// How often a long run's counters are written while it goes.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// How long events are only logged locally after the database failed to take one.
const OFFLINE_FOR: Duration = Duration::from_secs(5);
/// How long one write may take: a database that hangs (frozen, partitioned without a reset)
/// answers nothing, and the sync must not wait for it.
const WRITE_PATIENCE: Duration = Duration::from_secs(2);

/// Writes one run's events and counters.
pub struct Recorder {
    store: Store,
    run: RunAttempt,
    /// The job run, for the metrics' labels.
    job: String,
    started: Instant,
    pub counters: Counters,
    written: u32,
    unwritten: u64,
    last_progress: Instant,
    /// Until then the database is not asked: it failed to answer a moment ago.
    offline_until: Mutex<Option<Instant>>,
    /// The files of at least [`SETTLING_SIZE`] bytes copied, with their sizes, when asked for
    /// (a monitor's: see [`crate::plan::settle`]).
    large_copies: Option<Vec<(PathBuf, u64)>>,
}

impl Recorder {
    pub fn new(store: Store, run: RunAttempt, job: &str) -> Self {
        Self {
            store,
            run,
            job: job.to_owned(),
            started: Instant::now(),
            counters: Counters::default(),
            written: 0,
            unwritten: 0,
            last_progress: Instant::now(),
            offline_until: Mutex::new(None),
            large_copies: None,
        }
    }

    /// From now on, remembers the large files copied until [`Self::take_large_copies`].
    pub fn remember_large_copies(&mut self) {
        self.large_copies.get_or_insert_default();
    }

    /// The large files copied since the last call, with their sizes.
    pub fn take_large_copies(&mut self) -> Vec<(PathBuf, u64)> {
        self.large_copies
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Records a run-level message.
    pub async fn note(&self, level: &str, message: &str) {
        self.add_event(level, message, None).await;
    }

    /// Writes an event, or (the database away) logs it here.
    async fn add_event(&self, level: &str, message: &str, path: Option<&str>) {
        let run = self.run.id;
        let added = self.store.add_event(run, level, message, path);
        if self.write(added).await.is_none() {
            tracing::warn!(
                run,
                path,
                "not recorded, the database being away: {level}: {message}"
            );
        }
    }

    /// Runs one write unless the database failed a moment ago; `None` if it was skipped or
    /// failed (and then the database is left alone for a while).
    async fn write<T>(&self, work: impl Future<Output = Result<T, StoreError>>) -> Option<T> {
        let until = *self.offline_until.lock().expect("not poisoned");
        if until.is_some_and(|until| Instant::now() < until) {
            return None;
        }
        let e = match tokio::time::timeout(WRITE_PATIENCE, work).await {
            Ok(Ok(done)) => return Some(done),
            Ok(Err(e)) => e,
            Err(_) => StoreError::Timeout(WRITE_PATIENCE),
        };
        tracing::warn!(run = self.run.id, error = %e, "could not record the run's progress");
        if e.is_connection() {
            *self.offline_until.lock().expect("not poisoned") = Some(Instant::now() + OFFLINE_FOR);
        }
        None
    }

    async fn engine_event(&mut self, event: Event) {
        let (level, message, path) = match &event {
            Event::Copied { to, path, bytes } => {
                self.counters.files_copied += 1;
                self.counters.bytes_total += *bytes as i64;
                if let Some(copies) = &mut self.large_copies
                    && *bytes >= SETTLING_SIZE
                {
                    copies.push((path.clone(), *bytes));
                }
                ("info", format!("copied to {to} ({bytes} bytes)"), path)
            }
            Event::Deleted { at, path } => {
                self.counters.files_deleted += 1;
                ("info", format!("deleted from {at}"), path)
            }
            Event::Conflict { at, path, kept_as } => (
                "warn",
                format!(
                    "conflict in {at}: the other version is kept as {}",
                    kept_as.display()
                ),
                path,
            ),
            Event::Failed { path, error } => ("error", error.clone(), path),
            Event::Skipped { at, path, why } => ("warn", format!("skipped in {at}: {why}"), path),
        };
        if self.written < EVENTS_PER_RUN || level == "error" && self.written < 2 * EVENTS_PER_RUN {
            self.written += 1;
            let path = path.to_string_lossy();
            self.add_event(level, &message, Some(&path)).await;
        } else {
            self.unwritten += 1;
        }
        if self.last_progress.elapsed() >= PROGRESS_EVERY {
            self.last_progress = Instant::now();
            self.save_counters().await;
        }
    }

    /// Writes the counters so far; skipped while the database is away (the end writes them).
    pub async fn save_counters(&self) {
        self.write(self.store.update_run(&self.run, &self.counters))
            .await;
    }

    /// Starts a new batch of per-file events (a monitor records each batch in full).
    pub fn next_batch(&mut self) {
        self.written = 0;
    }

    /// Says how many per-file events were only counted since the last call.
    pub async fn flush_unwritten(&mut self) {
        if self.unwritten > 0 {
            let message = format!(
                "… and {} more file events, counted but not listed",
                self.unwritten
            );
            self.unwritten = 0;
            self.note("info", &message).await;
        }
    }

    /// Ends the run. Retries the write for a while: a run's outcome must not be lost to a
    /// short database outage.
    pub async fn finish(
        &mut self,
        state: &'static str,
        error: Option<String>,
        retry_in_ms: Option<i64>,
    ) {
        self.flush_unwritten().await;
        let job = self.job.clone();
        metrics::counter!("ferry_runs_total", "job" => job.clone(), "state" => state).increment(1);
        metrics::histogram!("ferry_run_duration_seconds", "job" => job)
            .record(self.started.elapsed().as_secs_f64());
        let end = RunEnd {
            state,
            error,
            counters: self.counters,
            retry_in_ms,
        };
        for attempt in 1..=10u32 {
            let finished =
                tokio::time::timeout(WRITE_PATIENCE, self.store.finish_run(&self.run, &end));
            match finished.await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    tracing::warn!(run = self.run.id, attempt, error = %e, "could not record the end of the run; retrying");
                }
                Err(_) => {
                    tracing::warn!(
                        run = self.run.id,
                        attempt,
                        "recording the end of the run timed out; retrying"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
        }
        tracing::error!(
            run = self.run.id,
            state,
            "gave up recording the end of the run"
        );
    }
}

/// Runs the engine once over `scope`, recording as it goes.
pub async fn sync(
    execution: &Execution,
    scope: Scope,
    halt: &Halt,
    recorder: &mut Recorder,
) -> Result<Summary, EngineError> {
    // A job's schedules and monitors all run on the scheduler that holds the job: here they
    // take turns, whether the run is done here or on an agent.
    static TURNS: JobLocks<tokio::sync::Mutex<()>> = JobLocks::new();
    let turn = TURNS.get(&execution.spec.name);
    let _turn = turn.lock().await;
    let before = recorder.counters;
    let summary = follow(execution, scope, halt, recorder).await?;
    // A file sent without waiting that failed after all was counted when it went: the
    // engine's own count is the truth.
    recorder.counters.files_copied = before.files_copied + summary.files_copied as i64;
    recorder.counters.bytes_sent += summary.bytes_sent as i64;
    publish(&execution.spec.name, &summary);
    Ok(summary)
}

/// Adds what one sync did to the job's counters at `/metrics`.
fn publish(job: &str, summary: &Summary) {
    let saved = summary.bytes_total.saturating_sub(summary.bytes_sent);
    for (name, value) in [
        ("ferry_files_copied_total", summary.files_copied),
        ("ferry_files_deleted_total", summary.files_deleted),
        ("ferry_file_failures_total", summary.failures),
        ("ferry_conflicts_total", summary.conflicts),
        ("ferry_bytes_copied_total", summary.bytes_total),
        ("ferry_bytes_sent_total", summary.bytes_sent),
        // What delta transfer (and compression) kept off the wire.
        ("ferry_bytes_saved_total", saved),
    ] {
        metrics::counter!(name, "job" => job.to_owned()).increment(value);
    }
}

/// Runs the engine, here or on the source's agent, recording its events as they come.
async fn follow(
    execution: &Execution,
    scope: Scope,
    halt: &Halt,
    recorder: &mut Recorder,
) -> Result<Summary, EngineError> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Some(handoff) = &execution.handoff {
        let (handoff, halt) = (handoff.clone(), halt.clone());
        let work = tokio::spawn(async move {
            ferry_wire::handoff::hand_over(&handoff, &scope, &halt, &mut |event| {
                let _ = tx.send(event);
            })
            .await
        });
        while let Some(event) = rx.recv().await {
            recorder.engine_event(event).await;
        }
        return work.await.expect("following the agent's run panicked");
    }
    let (spec, halt) = (execution.spec.clone(), halt.clone());
    let work = ferry_wire::blocking::spawn(move || {
        ferry_engine::run::run(&spec, &scope, &halt, &mut |event| {
            // The receiver lives until this closure is dropped.
            let _ = tx.send(event);
        })
    });
    while let Some(event) = rx.recv().await {
        recorder.engine_event(event).await;
    }
    work.await.expect("the sync engine panicked")
}

/// One line for a summary: "3 copied, 1 deleted, 2 conflicts, 12.0 KiB".
pub fn describe(summary: &Summary) -> String {
    let mut parts = vec![
        format!("{} copied", summary.files_copied),
        format!("{} deleted", summary.files_deleted),
    ];
    if summary.conflicts > 0 {
        parts.push(format!("{} conflicts", summary.conflicts));
    }
    if summary.failures > 0 {
        parts.push(format!("{} failed", summary.failures));
    }
    parts.push(human_bytes(summary.bytes_total));
    parts.join(", ")
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Whether the halt that stopped the run was someone's `ferry run cancel` (rather than a stop
/// or a lost lease). A database that does not answer says no: the run is then retried.
async fn cancel_asked(recorder: &Recorder) -> bool {
    let asked = recorder.store.cancel_requested(recorder.run.id);
    matches!(
        tokio::time::timeout(WRITE_PATIENCE, asked).await,
        Ok(Ok(true))
    )
}

/// Tells the job's `on_failure` hook of a run that failed for good (as `ferry runs --output
/// json` shows it), and records in the run's events how that went.
async fn call_failure_hook(recorder: &Recorder, hook: &Hook, hook_dir: Option<&Path>) {
    let id = recorder.run.id;
    let row = match recorder.store.run(id).await {
        Ok(Some(row)) => serde_json::to_value(row).ok(),
        _ => None,
    };
    // The database away, the hook still learns what failed.
    let run = row.unwrap_or_else(
        || serde_json::json!({ "id": id, "job_name": recorder.job, "state": "failed" }),
    );
    match hook.call(hook_dir, &run).await {
        Ok(()) => {
            recorder
                .note("info", &format!("called the on_failure hook {hook}"))
                .await
        }
        Err(e) => {
            tracing::warn!(run = id, job = recorder.job, error = %e, "the on_failure hook failed");
            recorder
                .note("warn", &format!("the on_failure hook failed: {e}"))
                .await;
        }
    }
}

/// How a scheduled run is carried out.
pub struct ScheduledRun {
    pub execution: Execution,
    pub attempt: i32,
    pub retries: i32,
    pub retry_delay_ms: i64,
    pub trigger: &'static str,
    /// Set when a source or destination folder is unusable, cleared by a run that got through.
    pub problem: ProblemSlot,
    /// The lease's halt: the run writes nothing once it is halted.
    pub halt: Halt,
    /// Where the programs of `on_failure` hooks are.
    pub hook_dir: Option<PathBuf>,
}

/// Runs one firing of a schedule from start to recorded end.
pub async fn run_scheduled(store: Store, attempt: RunAttempt, run: ScheduledRun) {
    let mut recorder = Recorder::new(store, attempt, &run.execution.spec.name);
    recorder
        .note(
            "info",
            &format!("started ({}, attempt {})", run.trigger, run.attempt),
        )
        .await;
    let began = Instant::now();
    let outcome = sync(&run.execution, Scope::Full, &run.halt, &mut recorder).await;
    // The count of events not listed belongs to the run's files, before its outcome.
    recorder.flush_unwritten().await;
    let took = format!("{:.1} s", began.elapsed().as_secs_f64());
    let can_retry = run.attempt <= run.retries;
    let retry = |failed: bool| (failed && can_retry).then_some(run.retry_delay_ms);
    match &outcome {
        Ok(_) => run.problem.set(None),
        Err(e @ (EngineError::Source { .. } | EngineError::Destination { .. })) => {
            run.problem.set(Some(e.to_string()))
        }
        Err(_) => {}
    }
    let state = match outcome {
        Ok(summary) if summary.failures == 0 => {
            recorder
                .note(
                    "info",
                    &format!("succeeded in {took}: {}", describe(&summary)),
                )
                .await;
            recorder.finish("succeeded", None, None).await;
            "succeeded"
        }
        Ok(summary) => {
            let error = format!(
                "{} of the files failed; first: {}",
                summary.failures,
                summary.first_failure.as_deref().unwrap_or("?")
            );
            recorder
                .note(
                    "error",
                    &format!("failed in {took}: {}", describe(&summary)),
                )
                .await;
            recorder.finish("failed", Some(error), retry(true)).await;
            "failed"
        }
        Err(EngineError::Cancelled { .. }) if cancel_asked(&recorder).await => {
            recorder
                .note("warn", "cancelled, as asked (`ferry run cancel`)")
                .await;
            let why = "cancelled by `ferry run cancel`".to_owned();
            recorder.finish("cancelled", Some(why), None).await;
            "cancelled"
        }
        Err(EngineError::Cancelled { .. }) => {
            recorder
                .note(
                    "warn",
                    "interrupted: the scheduler stopped or lost its lease",
                )
                .await;
            recorder
                .finish(
                    "interrupted",
                    Some("the scheduler stopped or lost its lease".into()),
                    retry(true),
                )
                .await;
            "interrupted"
        }
        Err(e) => {
            recorder.note("error", &e.to_string()).await;
            recorder
                .finish("failed", Some(e.to_string()), retry(true))
                .await;
            "failed"
        }
    };
    if let Some(hook) = &run.execution.on_failure
        && state == "failed"
        && !can_retry
        && !cancel_asked(&recorder).await
    {
        call_failure_hook(&recorder, hook, run.hook_dir.as_deref()).await;
    }
}
