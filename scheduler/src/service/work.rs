//! What a scheduler holds: per lease, its epoch, the halt its work obeys, and the work itself
//! (a schedule's firing state and run, or a monitor's task).

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ferry_engine::Halt;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::plan::ProblemSlot;
use crate::plan::definitions::ValidSchedule;
use crate::store::{JobRow, ResourceKind};

/// A schedule or monitor, by kind and name.
pub(super) type Resource = (ResourceKind, String);

pub(super) struct Holding {
    pub(super) epoch: i64,
    /// The job it runs, which this scheduler holds while it holds this (see `job_holds`).
    pub(super) job: String,
    /// Halts this lease's local work at the lease deadline unless a renewal extends it, and at
    /// once when the lease is lost: fencing for work on local paths.
    pub(super) halt: Halt,
    pub(super) work: Work,
}

/// A lease just won: its epoch, and the halt its work obeys.
pub(super) struct Claimed {
    pub(super) epoch: i64,
    pub(super) halt: Halt,
}

pub(super) enum Work {
    Schedule(ScheduleWork),
    Monitor(MonitorWork),
}

pub(super) struct ScheduleWork {
    /// Every cron time up to here is fired or accounted for.
    pub(super) cursor: DateTime<Utc>,
    cron: Option<Arc<ValidSchedule>>,
    pub(super) running: Option<Task>,
    pub(super) problem: ProblemSlot,
    /// The first cron time after `cursor`, and the cursor it was found for: finding it walks
    /// the cron, and every tick asks for it of every schedule held.
    next: Option<(DateTime<Utc>, Option<DateTime<Utc>>)>,
}

impl ScheduleWork {
    /// A schedule taken up at `cursor`, its definition not checked yet.
    pub(super) fn new(cursor: DateTime<Utc>) -> Self {
        Self {
            cursor,
            cron: None,
            running: None,
            problem: ProblemSlot::default(),
            next: None,
        }
    }

    /// Its definition as checked at this tick (`None` while invalid).
    pub(super) fn set_cron(&mut self, cron: Option<Arc<ValidSchedule>>) {
        let same = match (&self.cron, &cron) {
            (Some(old), Some(new)) => Arc::ptr_eq(old, new),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.next = None;
        }
        self.cron = cron;
    }

    /// The first cron time after the cursor, `None` when it never fires again or is invalid.
    pub(super) fn next_fire(&mut self) -> Option<DateTime<Utc>> {
        match self.next {
            Some((cursor, next)) if cursor == self.cursor => next,
            _ => {
                let next = self.cron.as_ref()?.cron.next_after(self.cursor);
                self.next = Some((self.cursor, next));
                next
            }
        }
    }

    /// What `next_fire` last found, if it is still current.
    pub(super) fn known_next_fire(&self) -> Option<DateTime<Utc>> {
        self.next
            .filter(|(cursor, _)| *cursor == self.cursor)
            .and_then(|(_, next)| next)
    }
}

pub(super) struct MonitorWork {
    /// What the task was started with, to restart it when a user edits it.
    pub(super) definition: MonitorDefinition,
    pub(super) task: Task,
    pub(super) stop: CancellationToken,
    pub(super) problem: ProblemSlot,
}

impl Drop for MonitorWork {
    /// A monitor whose holding is dropped (lease lost, deadline passed) stops watching: its
    /// task would otherwise wait, halted, for its next batch with the watch still open.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The parts of a monitor whose edit needs a restart (placement fields do not).
#[derive(Clone, PartialEq, Eq)]
pub(super) struct MonitorDefinition {
    pub(super) job: Box<JobRow>,
    pub(super) debounce_ms: i64,
    pub(super) rescan_ms: i64,
}

pub(super) struct Task {
    pub(super) handle: JoinHandle<()>,
    /// Every folder it writes is on an agent, as it was started: fenced there, it may outlive
    /// the lease deadline.
    pub(super) through_agents: bool,
    /// The run it carries out, and the halt of that run alone (`ferry run cancel`).
    pub(super) run: Option<(i64, Halt)>,
}

impl Task {
    pub(super) fn spawn(
        work: impl Future<Output = ()> + Send + 'static,
        through_agents: bool,
        run: Option<(i64, Halt)>,
    ) -> Self {
        Self {
            handle: tokio::spawn(work),
            through_agents,
            run,
        }
    }

    pub(super) fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

impl Holding {
    /// The run its work carries out now, if any.
    pub(super) fn run_id(&self) -> Option<i64> {
        let task = match &self.work {
            Work::Schedule(work) => work.running.as_ref()?,
            Work::Monitor(work) => &work.task,
        };
        task.run.as_ref().map(|(id, _)| *id)
    }

    /// Whether every folder the work writes is on an agent, which refuses a write under an
    /// older epoch than one it has seen: such work needs no local deadline to be fenced.
    pub(super) fn through_agents(&self) -> bool {
        match &self.work {
            Work::Schedule(work) => work.running.as_ref().is_some_and(|t| t.through_agents),
            Work::Monitor(work) => work.task.through_agents,
        }
    }

    /// Waits for the work to end, until `deadline` at most; false if it is still going.
    pub(super) async fn finished_by(&mut self, deadline: Instant) -> bool {
        let task = match &mut self.work {
            Work::Schedule(ScheduleWork {
                running: Some(task),
                ..
            }) => task,
            Work::Monitor(work) => &mut work.task,
            Work::Schedule(_) => return true,
        };
        tokio::time::timeout_at(deadline, &mut task.handle)
            .await
            .is_ok()
    }
}

impl Work {
    /// Stops after the current batch (monitors) or run (schedules).
    pub(super) fn stop_at_safe_point(&self) {
        if let Work::Monitor(work) = self {
            work.stop.cancel();
        }
    }
}
