//! Monitors held here: claimed when placement gives them here, their task restarted under a
//! new run when a user edits them, and stopped after their current batch when placement moves
//! them.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_wire::watch::WatchRoot;
use tokio_util::sync::CancellationToken;

use super::Service;
use super::snapshot::Definitions;
use super::work::{Claimed, Holding, MonitorDefinition, MonitorWork, Resource, Task, Work};
use crate::lease::Placement;
use crate::plan::ProblemSlot;
use crate::plan::definitions::{Execution, ValidMonitor};
use crate::plan::monitor::{self, Backoff, MonitorTask};
use crate::store::{MonitorRow, NewRun, ResourceKind, RunAttempt, StoreError};

/// What a monitor's task is started with.
struct MonitorStart {
    definition: MonitorDefinition,
    execution: Execution,
    roots: Vec<WatchRoot>,
}

impl MonitorStart {
    fn new(row: &MonitorRow, valid: ValidMonitor) -> Self {
        let definition = MonitorDefinition {
            job: Box::new(valid.job),
            debounce_ms: row.debounce_ms,
            rescan_ms: row.rescan_ms,
        };
        Self {
            definition,
            execution: valid.execution,
            roots: valid.roots,
        }
    }
}

impl Service {
    pub(super) async fn reconcile_monitor(
        &mut self,
        row: &MonitorRow,
        defs: &Definitions,
        placements: &HashMap<String, Placement>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let key = (ResourceKind::Monitor, row.name.clone());
        let job = defs.jobs.get(&row.job_name);
        let valid = self.compiled.monitor(row, job, &defs.remotes).clone();
        let invalid = valid.as_ref().err().map(ToString::to_string);
        let placement = self.place(
            (&key, &row.job_name),
            row.held,
            invalid.as_deref(),
            placements,
        );
        self.report_problem(&key, &row.last_error, invalid).await?;
        match (placement, valid) {
            (Placement::Here(_), Ok(valid)) => {
                let start = MonitorStart::new(row, valid);
                match self
                    .holdings
                    .get(&key)
                    .map(|h| running_as(h, &start.definition))
                {
                    Some(true) => Ok(()),
                    Some(false) => self.restart_monitor(&key, start, now).await,
                    None => self.take_monitor(&key, start, now).await,
                }
            }
            _ if self.holdings.contains_key(&key) => self.release_when_idle(&key).await,
            _ => Ok(()),
        }
    }

    /// An edited (or ended) monitor: restarted under a new run with its new definition, the
    /// old task stopping after its batch.
    async fn restart_monitor(
        &mut self,
        key: &Resource,
        start: MonitorStart,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let holding = &self.holdings[key];
        let claimed = Claimed {
            epoch: holding.epoch,
            halt: holding.halt.clone(),
        };
        if let Some(fresh) = self.start_monitor(&key.1, start, &claimed, now).await? {
            let holding = self.holdings.get_mut(key).expect("held, checked above");
            std::mem::replace(&mut holding.work, Work::Monitor(fresh)).stop_at_safe_point();
        }
        Ok(())
    }

    /// Starts a monitor claimed this tick; a claim whose run cannot start is given back.
    async fn take_monitor(
        &mut self,
        key: &Resource,
        start: MonitorStart,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let job = start.definition.job.name.clone();
        let Some(claimed) = self.claimed.remove(key) else {
            return Ok(());
        };
        let (name, epoch) = (&key.1, claimed.epoch);
        match self.start_monitor(name, start, &claimed, now).await? {
            Some(work) => {
                let work = Work::Monitor(work);
                let halt = claimed.halt;
                let holding = Holding {
                    epoch,
                    job,
                    halt,
                    work,
                };
                self.holdings.insert(key.clone(), holding);
            }
            None => {
                tracing::info!(monitor = name, epoch, "releasing: its run could not start");
                self.store
                    .release(ResourceKind::Monitor, name, &self.me, epoch)
                    .await?
            }
        }
        Ok(())
    }

    async fn start_monitor(
        &self,
        name: &str,
        start: MonitorStart,
        claimed: &Claimed,
        now: DateTime<Utc>,
    ) -> Result<Option<MonitorWork>, StoreError> {
        let MonitorStart {
            definition,
            execution,
            roots,
        } = start;
        let run = NewRun {
            job_name: definition.job.name.clone(),
            schedule_name: None,
            monitor_name: Some(name.to_owned()),
            fire_time: now,
            trigger: "monitor",
            holder: self.me.clone(),
            epoch: claimed.epoch,
        };
        let Some(id) = self.store.start_run(&run).await? else {
            return Ok(None);
        };
        let attempt = RunAttempt {
            id,
            instance: self.me.instance.clone(),
            attempt: 1,
        };
        let problem = ProblemSlot::default();
        let through_agents = execution.handoff.is_some();
        let task = MonitorTask {
            name: name.to_owned(),
            execution,
            roots,
            debounce: Duration::from_millis(definition.debounce_ms.max(0) as u64),
            rescan: Duration::from_millis(definition.rescan_ms.max(1) as u64),
            problem: problem.clone(),
            retry: Backoff::default(),
        };
        let stop = CancellationToken::new();
        let halt = claimed.halt.clone();
        let work = monitor::run(
            self.runs_store.clone(),
            attempt,
            task,
            stop.clone(),
            halt.clone(),
        );
        Ok(Some(MonitorWork {
            definition,
            task: Task::spawn(work, through_agents, Some((id, halt))),
            stop,
            problem,
        }))
    }
}

/// Whether a holding runs the monitor `definition` still.
fn running_as(holding: &Holding, definition: &MonitorDefinition) -> bool {
    match &holding.work {
        Work::Monitor(work) => work.definition == *definition && !work.task.is_finished(),
        Work::Schedule(_) => false,
    }
}
