//! Schedules held here: claimed when placement gives them here, fired at their cron times (a
//! requested run first, then a due retry, then the cron), never overlapping themselves, and
//! given back between runs when placement moves them.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use ferry_engine::Halt;

use super::Service;
use super::snapshot::Definitions;
use super::work::{Claimed, Holding, Resource, ScheduleWork, Task, Work};
use crate::lease::Placement;
use crate::plan::definitions::ValidSchedule;
use crate::plan::run::{self, ScheduledRun};
use crate::plan::{ProblemSlot, firing};
use crate::store::{CronFiring, NewRun, ResourceKind, RunAttempt, ScheduleRow, StoreError};

/// What an idle schedule held here fires with.
struct Firing<'a> {
    row: &'a ScheduleRow,
    valid: &'a ValidSchedule,
    epoch: i64,
    /// Every cron time up to here is fired or accounted for.
    cursor: DateTime<Utc>,
    problem: &'a ProblemSlot,
    halt: &'a Halt,
    /// Where the programs of `on_failure` hooks are.
    hook_dir: Option<PathBuf>,
}

/// What firing did: the run it started, if any, and where the schedule's cursor now stands.
struct Fired {
    task: Option<Task>,
    cursor: DateTime<Utc>,
}

/// What is due for an idle schedule.
enum Next {
    /// Started now (a requested run, a retry), or only the cursor moved.
    Now(Fired),
    /// A cron firing, inserted with the tick's others (see `start_planned`).
    Planned(Box<PlannedCron>),
}

/// A cron firing planned by a tick, started with the others once every schedule was seen.
pub(super) struct PlannedCron {
    key: Resource,
    firing: CronFiring,
    /// Where the schedule's cursor moves once it is recorded.
    cursor: DateTime<Utc>,
    run: ScheduledRun,
}

impl Firing<'_> {
    fn run(&self, attempt: i32, trigger: &'static str) -> ScheduledRun {
        ScheduledRun {
            execution: self.valid.execution.clone(),
            attempt,
            retries: self.row.retries,
            retry_delay_ms: self.row.retry_delay_ms,
            trigger,
            problem: self.problem.clone(),
            halt: self.halt.clone(),
            hook_dir: self.hook_dir.clone(),
        }
    }

    /// Nothing started; the cursor moves to `cursor`.
    fn nothing(&self, cursor: DateTime<Utc>) -> Fired {
        Fired { task: None, cursor }
    }
}

impl Service {
    pub(super) async fn reconcile_schedule(
        &mut self,
        row: &ScheduleRow,
        defs: &Definitions,
        placements: &HashMap<String, Placement>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let key = (ResourceKind::Schedule, row.name.clone());
        let job = defs.jobs.get(&row.job_name);
        let valid = self.compiled.schedule(row, job, &defs.remotes).clone();
        let invalid = valid.as_ref().err().map(ToString::to_string);
        self.report_problem(&key, &row.last_error, invalid.clone())
            .await?;
        let placement = self.place(
            (&key, &row.job_name),
            row.held,
            invalid.as_deref(),
            placements,
        );
        match (placement, self.holdings.contains_key(&key)) {
            (Placement::Here(_), true) => self.fire_due(&key, row, valid.ok(), now).await?,
            (_, true) => self.release_when_idle(&key).await?,
            // Not claimed this tick: its job is still held elsewhere, or another won it.
            (_, false) => {}
        }
        Ok(())
    }

    /// Takes up the schedules of `claimed` (just won): each resumes firing where its firing
    /// got to, read fresh for all of them in one statement.
    pub(super) async fn take_schedules(
        &mut self,
        defs: &Definitions,
        claimed: &mut HashMap<Resource, Claimed>,
    ) -> Result<(), StoreError> {
        let names: Vec<String> = (claimed.keys())
            .filter(|(kind, _)| *kind == ResourceKind::Schedule)
            .map(|(_, name)| name.clone())
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        let fired = self.store.fired_so_far(&names).await?;
        for row in &defs.schedules {
            let key = (ResourceKind::Schedule, row.name.clone());
            let Some(Claimed { epoch, halt }) = claimed.remove(&key) else {
                continue;
            };
            let (fired_until, last_fired) = fired.get(&row.name).cloned().unwrap_or_default();
            let cursor = [fired_until, last_fired, Some(row.created_at)]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(row.created_at);
            let work = Work::Schedule(ScheduleWork::new(cursor));
            let job = row.job_name.clone();
            let holding = Holding {
                epoch,
                job,
                halt,
                work,
            };
            self.holdings.insert(key, holding);
        }
        Ok(())
    }

    async fn fire_due(
        &mut self,
        key: &Resource,
        row: &ScheduleRow,
        valid: Option<Arc<ValidSchedule>>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let holding = &self.holdings[key];
        let (epoch, halt) = (holding.epoch, holding.halt.clone());
        let Some(Work::Schedule(work)) = self.holdings.get_mut(key).map(|h| &mut h.work) else {
            return Ok(());
        };
        work.set_cron(valid.clone());
        if work.running.as_ref().is_some_and(Task::is_finished) {
            work.running = None;
        }
        let Some(valid) = valid else { return Ok(()) };
        if work.running.is_some() {
            // A schedule never overlaps itself; times passing meanwhile follow its misfire policy.
            return Ok(());
        }
        let asked = row.run_requested_at.is_some()
            || (self.due_retries.iter()).any(|r| r.schedule_name.as_ref() == Some(&row.name));
        if !asked && work.next_fire().is_none_or(|next| next > now) {
            return Ok(());
        }
        let (cursor, problem) = (work.cursor, work.problem.clone());
        if self.busy_jobs.contains(&row.job_name) {
            // Nor another schedule of its job: it fires once that run ends.
            return Ok(());
        }
        let firing = Firing {
            row,
            valid: &valid,
            epoch,
            cursor,
            problem: &problem,
            halt: &halt,
            hook_dir: self.config.hook_dir.clone(),
        };
        let fired = match self.start_next_run(&firing, key, now).await? {
            None => return Ok(()),
            Some(Next::Planned(planned)) => {
                self.busy_jobs.insert(row.job_name.clone());
                self.planned.push(*planned);
                return Ok(());
            }
            Some(Next::Now(fired)) => fired,
        };
        let Some(Work::Schedule(work)) = self.holdings.get_mut(key).map(|h| &mut h.work) else {
            return Ok(());
        };
        if fired.task.is_some() {
            self.busy_jobs.insert(row.job_name.clone());
        }
        work.running = fired.task;
        if fired.cursor > work.cursor {
            work.cursor = fired.cursor;
            let cursor = [(row.name.clone(), fired.cursor)];
            self.store.set_fired_until(&cursor).await?;
        }
        Ok(())
    }

    /// Starts the cron firings this tick planned: their runs inserted in one statement, their
    /// cursors moved in one more, then their tasks spawned.
    pub(super) async fn start_planned(&mut self) -> Result<(), StoreError> {
        let planned = std::mem::take(&mut self.planned);
        if planned.is_empty() {
            return Ok(());
        }
        let firings: Vec<CronFiring> = planned.iter().map(|p| p.firing.clone()).collect();
        let started: HashMap<String, i64> = (self.store.start_cron_runs(&self.me, &firings))
            .await?
            .into_iter()
            .map(|(id, schedule)| (schedule, id))
            .collect();
        let cursors: Vec<(String, DateTime<Utc>)> = (planned.iter())
            .map(|p| (p.firing.schedule_name.clone(), p.cursor))
            .collect();
        self.store.set_fired_until(&cursors).await?;
        for PlannedCron {
            key,
            firing,
            cursor,
            run,
        } in planned
        {
            let (schedule, fire_time) = (&firing.schedule_name, firing.fire_time);
            let task = match started.get(schedule) {
                Some(&id) => {
                    tracing::info!(schedule, run = id, %fire_time, trigger = "cron", "run started");
                    Some(self.spawn_run(id, run))
                }
                None => {
                    tracing::debug!(schedule, %fire_time, "firing already recorded; not run again");
                    None
                }
            };
            if let Some(Work::Schedule(work)) = self.holdings.get_mut(&key).map(|h| &mut h.work) {
                work.running = task;
                work.cursor = work.cursor.max(cursor);
            }
        }
        Ok(())
    }

    /// Starts whatever is due for an idle schedule: a requested run, a retry, or a cron
    /// firing; `None` when nothing is.
    async fn start_next_run(
        &self,
        firing: &Firing<'_>,
        key: &Resource,
        now: DateTime<Utc>,
    ) -> Result<Option<Next>, StoreError> {
        if let Some(requested) = firing.row.run_requested_at {
            let task = self.start_requested(firing, requested).await?;
            return Ok(Some(Next::Now(Fired {
                task,
                cursor: firing.cursor,
            })));
        }
        let row_name = Some(firing.row.name.as_str());
        let due_retry = (self.due_retries.iter())
            .find(|r| r.schedule_name.as_deref() == row_name)
            .cloned();
        if let Some(retry) = due_retry {
            let retried = self
                .store
                .begin_retry(retry.id, retry.attempt, &self.me, firing.epoch);
            let task = retried.await?.then(|| {
                let attempt = retry.attempt + 1;
                tracing::info!(
                    schedule = firing.row.name,
                    run = retry.id,
                    attempt,
                    "retrying"
                );
                self.spawn_run(retry.id, firing.run(attempt, "retry"))
            });
            return Ok(Some(Next::Now(Fired {
                task,
                cursor: firing.cursor,
            })));
        }
        Ok(self.plan_cron(firing, key, now))
    }

    /// A run a user asked for (`ferry schedule run`).
    async fn start_requested(
        &self,
        firing: &Firing<'_>,
        requested: DateTime<Utc>,
    ) -> Result<Option<Task>, StoreError> {
        let id = self
            .start_run(firing.row, requested, "manual", firing.epoch)
            .await?;
        let task = id.map(|id| self.spawn_run(id, firing.run(1, "manual")));
        self.store
            .clear_run_request(&firing.row.name, requested)
            .await?;
        Ok(task)
    }

    /// The oldest cron time due, under the schedule's misfire policy, planned to start with
    /// the tick's other firings.
    fn plan_cron(&self, firing: &Firing<'_>, key: &Resource, now: DateTime<Utc>) -> Option<Next> {
        let (row, valid) = (firing.row, firing.valid);
        let grace = chrono::Duration::from_std(self.config.lease_ttl * 2).unwrap_or_default();
        let due = firing::due(&valid.cron, firing.cursor, now, valid.misfire, grace)?;
        let Some(&fire_time) = due.fire.first() else {
            tracing::info!(
                schedule = row.name,
                skipped = due.skipped,
                "missed fire times skipped by the misfire policy"
            );
            return Some(Next::Now(firing.nothing(due.cursor)));
        };
        if due.skipped > 0 {
            tracing::info!(
                schedule = row.name,
                skipped = due.skipped,
                policy = row.misfire,
                "missed fire times not run"
            );
        }
        // Run the oldest due time now; the rest are found again from the new cursor.
        let cursor = if due.fire.len() > 1 {
            fire_time
        } else {
            due.cursor
        };
        Some(Next::Planned(Box::new(PlannedCron {
            key: key.clone(),
            firing: CronFiring {
                job_name: row.job_name.clone(),
                schedule_name: row.name.clone(),
                fire_time,
                epoch: firing.epoch,
            },
            cursor,
            run: firing.run(1, "cron"),
        })))
    }

    async fn start_run(
        &self,
        row: &ScheduleRow,
        fire_time: DateTime<Utc>,
        trigger: &'static str,
        epoch: i64,
    ) -> Result<Option<i64>, StoreError> {
        let run = NewRun {
            job_name: row.job_name.clone(),
            schedule_name: Some(row.name.clone()),
            monitor_name: None,
            fire_time,
            trigger,
            holder: self.me.clone(),
            epoch,
        };
        let id = self.store.start_run(&run).await?;
        match id {
            Some(id) => {
                tracing::info!(schedule = row.name, run = id, %fire_time, trigger, "run started")
            }
            None => {
                tracing::debug!(schedule = row.name, %fire_time, "firing already recorded; not run again")
            }
        }
        Ok(id)
    }

    /// The jobs a schedule held here has a run going for: another schedule of such a job
    /// waits until it ends. Taken once a tick, then kept up as runs start.
    pub(super) fn note_busy_jobs(&mut self) {
        let busy = self.holdings.values().filter(|holding| {
            matches!(&holding.work, Work::Schedule(work)
                if work.running.as_ref().is_some_and(|task| !task.is_finished()))
        });
        self.busy_jobs = busy.map(|holding| holding.job.clone()).collect();
    }

    fn spawn_run(&self, id: i64, mut run: ScheduledRun) -> Task {
        let attempt = RunAttempt {
            id,
            instance: self.me.instance.clone(),
            attempt: run.attempt,
        };
        let through_agents = run.execution.handoff.is_some();
        // The run's own halt: a cancel stops this run, not the lease's next ones.
        run.halt = run.halt.child();
        let halt = run.halt.clone();
        Task::spawn(
            run::run_scheduled(self.runs_store.clone(), attempt, run),
            through_agents,
            Some((id, halt)),
        )
    }

    /// Stops the runs going here that someone asked to cancel (`ferry run cancel`); each
    /// records itself as cancelled.
    pub(super) async fn cancel_requested_runs(&self) -> Result<(), StoreError> {
        let wanted = self.store.cancel_requests(&self.me.instance).await?;
        if wanted.is_empty() {
            return Ok(());
        }
        let running = self
            .holdings
            .values()
            .filter_map(|holding| match &holding.work {
                Work::Schedule(work) => work.running.as_ref()?.run.as_ref(),
                Work::Monitor(_) => None,
            });
        for (id, halt) in running.filter(|(id, _)| wanted.contains(id)) {
            if !halt.is_halted() {
                tracing::info!(run = id, "cancelling the run, as asked");
                halt.stop();
            }
        }
        Ok(())
    }
}
