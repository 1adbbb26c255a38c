//! `ferry scheduler run`: the service. Each tick it heartbeats, renews its leases, re-reads the
//! definitions, claims what placement gives it, releases what it should no longer hold (at a
//! safe point: between runs, between a monitor's batches), and fires due schedules.
//!
//! A lease that cannot be renewed stops its work at once. When the database is unreachable the
//! service keeps its work only until its local lease deadline (monotonic clock: last successful
//! renewal + TTL - margin), since by then another scheduler may hold the leases.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_engine::{Fence, Halt};
use ferry_wire::tls::ClientConfig;
use ferry_wire::watch::WatchRoot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ServiceConfig;
use crate::lease::{Candidates, Demand, Placement};
use crate::plan::definitions::{self, Execution, Remotes, ValidSchedule};
use crate::plan::monitor::{self, MonitorTask};
use crate::plan::run::{self, ScheduledRun};
use crate::plan::{ProblemSlot, firing};
use crate::store::{
    Channel, JobRow, LeaseHolder, MonitorRow, NewRun, Registration, ResourceKind, RunAttempt,
    RunRow, ScheduleRow, SchedulerRow, Store, StoreError,
};

/// How often finished runs older than `keep_runs` are deleted, and how many per statement.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const PRUNE_BATCH: i64 = 5000;

/// How long a graceful stop waits for runs to record their end before leaving anyway.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

type Resource = (ResourceKind, String);

pub struct Service {
    store: Store,
    config: ServiceConfig,
    me: LeaseHolder,
    holdings: HashMap<Resource, Holding>,
    database_reachable: bool,
    /// The last error the database answered with (not a lost connection), logged once.
    data_problem: Option<String>,
    /// When old runs were last pruned.
    pruned_at: Option<Instant>,
    /// Runs due for another attempt, read once per tick.
    due_retries: Vec<RunRow>,
    /// Local work must stop by then unless a renewal succeeds first.
    lease_deadline: Instant,
    /// This scheduler's certificate for reaching agents, if it has one.
    identity: Option<(String, Arc<ClientConfig>)>,
}

struct Holding {
    epoch: i64,
    /// Halts this lease's local work at the lease deadline unless a renewal extends it, and at
    /// once when the lease is lost: fencing for work on local paths.
    halt: Halt,
    work: Work,
}

/// A lease just won: its epoch, and the halt its work obeys.
struct Claimed {
    epoch: i64,
    halt: Halt,
}

enum Work {
    Schedule(ScheduleWork),
    Monitor(MonitorWork),
}

struct ScheduleWork {
    /// Every cron time up to here is fired or accounted for.
    cursor: DateTime<Utc>,
    cron: Option<Box<ValidSchedule>>,
    running: Option<Task>,
    problem: ProblemSlot,
}

struct MonitorWork {
    /// What the task was started with, to restart it when a user edits it.
    definition: MonitorDefinition,
    task: Task,
    stop: CancellationToken,
    problem: ProblemSlot,
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
struct MonitorDefinition {
    job: JobRow,
    debounce_ms: i64,
    rescan_ms: i64,
}

struct Task {
    handle: JoinHandle<()>,
    /// Every folder it writes is on an agent, as it was started: fenced there, it may outlive
    /// the lease deadline.
    through_agents: bool,
}

impl Task {
    fn spawn(work: impl Future<Output = ()> + Send + 'static, through_agents: bool) -> Self {
        Self {
            handle: tokio::spawn(work),
            through_agents,
        }
    }

    fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }
}

/// What one tick read from the database.
struct Definitions {
    jobs: HashMap<String, JobRow>,
    schedules: Vec<ScheduleRow>,
    monitors: Vec<MonitorRow>,
    schedulers: Vec<SchedulerRow>,
    remotes: Remotes,
}

/// The text every scheduler places a schedule or monitor by.
fn demand_key(kind: ResourceKind, name: &str) -> String {
    format!("{kind}:{name}")
}

impl Definitions {
    /// The schedules and monitors that want a scheduler: not held, and valid.
    fn demands(&self) -> Vec<Demand<'_>> {
        let schedules = self
            .schedules
            .iter()
            .filter(|s| {
                !s.held
                    && definitions::schedule(s, self.jobs.get(&s.job_name), &self.remotes).is_ok()
            })
            .map(|s| {
                (
                    demand_key(ResourceKind::Schedule, &s.name),
                    s.preferred.as_deref(),
                    s.fallback_any,
                )
            });
        let monitors = self
            .monitors
            .iter()
            .filter(|m| {
                !m.held
                    && definitions::monitor(m, self.jobs.get(&m.job_name), &self.remotes).is_ok()
            })
            .map(|m| {
                (
                    demand_key(ResourceKind::Monitor, &m.name),
                    m.preferred.as_deref(),
                    m.fallback_any,
                )
            });
        schedules
            .chain(monitors)
            .map(|(key, preferred, fallback_any)| Demand {
                key,
                preferred,
                fallback_any,
            })
            .collect()
    }

    async fn load(
        store: &Store,
        identity: &Option<(String, Arc<ClientConfig>)>,
    ) -> Result<Self, StoreError> {
        let remotes = Remotes {
            addresses: store
                .agents()
                .await?
                .into_iter()
                .map(|a| (a.name, a.address))
                .collect(),
            identity: identity.clone(),
        };
        Ok(Self {
            remotes,
            jobs: store
                .jobs()
                .await?
                .into_iter()
                .map(|j| (j.name.clone(), j))
                .collect(),
            schedules: store.schedules().await?,
            monitors: store.monitors().await?,
            schedulers: store.schedulers().await?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "scheduler {0}: another process registered this name after this one was taken for dead; stopping"
    )]
    IdentityLost(String),
    #[error("{0}")]
    Config(String),
}

impl Service {
    /// Registers this scheduler; fails if a live scheduler already has the name.
    pub async fn start(
        store: Store,
        config: ServiceConfig,
        name: String,
    ) -> Result<Self, ServiceError> {
        config.validate().map_err(ServiceError::Config)?;
        let identity = match &config.tls_dir {
            Some(dir) => {
                let tls = ferry_wire::tls::client_config(dir, &name)
                    .map_err(|e| ServiceError::Config(format!("--tls-dir: {e}")))?;
                Some((name.clone(), tls))
            }
            None => None,
        };
        let registration = Registration {
            name: name.clone(),
            instance_id: uuid::Uuid::new_v4().to_string(),
            host: crate::lease::default_name(),
            pid: i64::from(std::process::id()),
            version: env!("CARGO_PKG_VERSION").into(),
            lease_ttl_ms: config.lease_ttl.as_millis() as i64,
        };
        store.register_scheduler(&registration).await?;
        tracing::info!(
            scheduler = name,
            instance = registration.instance_id,
            "registered"
        );
        let me = LeaseHolder {
            name,
            instance: registration.instance_id,
        };
        Ok(Self {
            store,
            lease_deadline: Instant::now() + config.lease_ttl,
            config,
            me,
            holdings: HashMap::new(),
            database_reachable: true,
            data_problem: None,
            pruned_at: None,
            due_retries: Vec::new(),
            identity,
        })
    }

    /// Runs until `shutdown` completes, then stops cleanly: runs are interrupted and recorded,
    /// monitors finish their batch, and every lease is released at once for the others.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), ServiceError> {
        let mut notifications = self
            .store
            .notifications(Channel::Definitions)
            .await
            .ok()
            .flatten();
        tokio::pin!(shutdown);
        let outcome = loop {
            let wait = match self.tick().await {
                Ok(wait) => wait,
                Err(fatal) => break Err(fatal),
            };
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                _ = tokio::time::sleep(wait) => {}
                _ = next_notification(&mut notifications) => {}
            }
        };
        // The listener holds a pooled connection; closing the pool waits for it.
        drop(notifications);
        self.stop().await;
        outcome
    }

    async fn tick(&mut self) -> Result<Duration, ServiceError> {
        self.extend_agent_work();
        // A tick that hangs on the database counts as the database being away: the deadline
        // check below must not wait for a query that may never answer.
        // Past this a renewal could come too late for the halt deadline.
        let limit = self
            .config
            .lease_ttl
            .saturating_sub(self.config.heartbeat)
            .max(self.config.heartbeat);
        let synced = match tokio::time::timeout(limit, self.sync_with_database()).await {
            Ok(synced) => synced,
            Err(_) => Err(ServiceError::Store(StoreError::Timeout(limit))),
        };
        match synced {
            Ok(wait) => {
                if !self.database_reachable {
                    tracing::info!("database reachable again");
                    self.database_reachable = true;
                }
                self.data_problem = None;
                Ok(wait)
            }
            Err(ServiceError::Store(e)) if !e.is_connection() => {
                // The database answered, but with something ferry cannot use (a row it cannot
                // read, say): say so once per distinct problem, and keep the leases.
                let problem = e.to_string();
                if self.data_problem.as_ref() != Some(&problem) {
                    tracing::error!(error = %problem, "could not use what the database returned; retrying every heartbeat");
                    self.data_problem = Some(problem);
                }
                Ok(self.config.heartbeat)
            }
            Err(ServiceError::Store(e)) => {
                if self.database_reachable {
                    tracing::error!(error = %e, "database unreachable; retrying every heartbeat, local work stops at the lease deadline");
                    self.database_reachable = false;
                }
                self.enforce_deadline();
                Ok(self.config.heartbeat)
            }
            Err(fatal) => Err(fatal),
        }
    }

    async fn sync_with_database(&mut self) -> Result<Duration, ServiceError> {
        if !self
            .store
            .heartbeat(&self.me.name, &self.me.instance)
            .await?
        {
            return Err(ServiceError::IdentityLost(self.me.name.clone()));
        }
        self.renew_leases().await?;
        let now = self.store.now().await?;
        let defs = Definitions::load(&self.store, &self.identity).await?;
        self.due_retries = self.store.due_retries().await?;
        let settle = chrono::Duration::from_std(self.config.settle).unwrap_or_default();
        let candidates = Candidates::new(&defs.schedulers, now, settle);
        let placements = candidates.place_all(&self.me.name, &defs.demands());
        for row in &defs.schedules {
            self.reconcile_schedule(row, &defs, &placements, now)
                .await?;
        }
        for row in &defs.monitors {
            self.reconcile_monitor(row, &defs, &placements, now).await?;
        }
        self.release_vanished(&defs).await?;
        self.prune_old_runs().await?;
        Ok(self.next_wake(now))
    }

    async fn renew_leases(&mut self) -> Result<(), StoreError> {
        let sent = Instant::now();
        let deadline = self.deadline_from(sent);
        let renewed: HashSet<(String, String, i64)> = self
            .store
            .renew_all(&self.me, self.ttl_ms())
            .await?
            .into_iter()
            .collect();
        let mut lost = Vec::new();
        for ((kind, name), holding) in &self.holdings {
            if renewed.contains(&(kind.as_str().to_owned(), name.clone(), holding.epoch)) {
                holding.halt.extend_until(deadline.into_std());
                tracing::debug!(kind = %kind, name, epoch = holding.epoch, "lease renewed");
            } else {
                lost.push((*kind, name.clone()));
            }
        }
        for key in lost {
            if let Some(holding) = self.holdings.remove(&key) {
                holding.halt.stop();
                tracing::warn!(kind = %key.0, name = key.1, epoch = holding.epoch, "lease lost to another scheduler; stopped its work");
            }
        }
        // A claim whose tick was cut short before its work started: give it back.
        for (kind, name, epoch) in renewed {
            let Ok(kind) = kind.parse::<ResourceKind>() else {
                continue;
            };
            if self
                .holdings
                .get(&(kind, name.clone()))
                .is_none_or(|h| h.epoch != epoch)
            {
                tracing::info!(kind = %kind, name, epoch, "releasing a lease held without work");
                self.store.release(kind, &name, &self.me, epoch).await?;
            }
        }
        self.lease_deadline = deadline;
        Ok(())
    }

    /// The local deadline of a lease renewed (or claimed) by a statement sent at `sent`.
    fn deadline_from(&self, sent: Instant) -> Instant {
        let margin = (self.config.heartbeat / 2).min(Duration::from_millis(500));
        sent + self.config.lease_ttl - margin
    }

    /// Without the database, leases cannot be renewed: past the deadline another scheduler may
    /// hold them, so work on local paths stops. Work whose folders are all on agents goes on:
    /// the agents fence it, refusing its writes once a newer holder has reached them, so the
    /// replication survives a database outage without a second writer.
    fn enforce_deadline(&mut self) {
        if Instant::now() < self.lease_deadline {
            return;
        }
        let local: Vec<Resource> = self
            .holdings
            .iter()
            .filter(|(_, holding)| !holding.through_agents())
            .map(|(key, _)| key.clone())
            .collect();
        if !local.is_empty() {
            tracing::error!(
                leases = local.len(),
                "lease deadline passed without reaching the database; stopped all local work"
            );
        }
        for key in local {
            if let Some(holding) = self.holdings.remove(&key) {
                holding.halt.stop();
            }
        }
    }

    /// Work through agents is fenced by the agents, not by the lease deadline: its halt is kept
    /// two leases ahead at every tick, before the database is asked (it may hang), so it never
    /// lapses while this scheduler runs. A lease found lost still stops it at once.
    fn extend_agent_work(&self) {
        let until = (Instant::now() + 2 * self.config.lease_ttl).into_std();
        for holding in self.holdings.values().filter(|h| h.through_agents()) {
            holding.halt.extend_until(until);
        }
    }

    async fn reconcile_schedule(
        &mut self,
        row: &ScheduleRow,
        defs: &Definitions,
        placements: &HashMap<String, Placement>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let key = (ResourceKind::Schedule, row.name.clone());
        let valid = definitions::schedule(row, defs.jobs.get(&row.job_name), &defs.remotes);
        let invalid = valid.as_ref().err().cloned();
        self.report_problem(&key, &row.last_error, invalid.clone())
            .await?;
        let placement = self.place(&key, row.held, invalid.as_deref(), placements);
        match (placement, self.holdings.contains_key(&key)) {
            (Placement::Here(_), false) => {
                if let Some(Claimed { epoch, halt }) = self.claim(&key).await? {
                    self.store
                        .interrupt_orphans(ResourceKind::Schedule, &row.name, epoch, row.retries)
                        .await?;
                    let cursor = self.schedule_cursor(row).await?;
                    let work = ScheduleWork {
                        cursor,
                        cron: None,
                        running: None,
                        problem: ProblemSlot::default(),
                    };
                    self.holdings.insert(
                        key.clone(),
                        Holding {
                            epoch,
                            halt,
                            work: Work::Schedule(work),
                        },
                    );
                }
                if self.holdings.contains_key(&key) {
                    self.fire_due(&key, row, valid.ok(), now).await?;
                }
            }
            (Placement::Here(_), true) => self.fire_due(&key, row, valid.ok(), now).await?,
            (_, true) => self.release_when_idle(&key).await?,
            (_, false) => {}
        }
        Ok(())
    }

    /// Writes the row's `last_error` if it changed: the definition's problem, else the one its
    /// running work reported.
    async fn report_problem(
        &self,
        key: &Resource,
        last_error: &Option<String>,
        invalid: Option<String>,
    ) -> Result<(), StoreError> {
        let runtime = match self.holdings.get(key).map(|h| &h.work) {
            Some(Work::Schedule(work)) => work.problem.get(),
            Some(Work::Monitor(work)) => work.problem.get(),
            // Only the holder knows how its work goes; the others leave its report alone.
            None if invalid.is_none() => return Ok(()),
            None => None,
        };
        let problem = invalid.or(runtime);
        if problem != *last_error {
            self.store
                .set_last_error(key.0, &key.1, problem.as_deref())
                .await?;
        }
        Ok(())
    }

    fn place(
        &self,
        key: &Resource,
        held: bool,
        problem: Option<&str>,
        placements: &HashMap<String, Placement>,
    ) -> Placement {
        if held {
            return Placement::Waiting("held".into());
        }
        if let Some(problem) = problem {
            return Placement::Waiting(problem.to_owned());
        }
        let placed = placements.get(&demand_key(key.0, &key.1)).cloned();
        placed.unwrap_or_else(|| Placement::Waiting("not placed".into()))
    }

    async fn claim(&self, (kind, name): &Resource) -> Result<Option<Claimed>, StoreError> {
        self.store.ensure_lease(*kind, name).await?;
        let sent = Instant::now();
        let epoch = self
            .store
            .claim(*kind, name, &self.me, self.ttl_ms())
            .await?;
        Ok(epoch.map(|epoch| {
            tracing::info!(kind = %kind, name, epoch, "claimed");
            let halt = Halt::fenced(Fence {
                resource: demand_key(*kind, name),
                epoch,
            });
            halt.extend_until(self.deadline_from(sent).into_std());
            Claimed { epoch, halt }
        }))
    }

    /// Where a newly held schedule resumes firing.
    async fn schedule_cursor(&self, row: &ScheduleRow) -> Result<DateTime<Utc>, StoreError> {
        let last_fired = self.store.last_cron_fire(&row.name).await?;
        Ok([row.fired_until, last_fired, Some(row.created_at)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(row.created_at))
    }

    async fn fire_due(
        &mut self,
        key: &Resource,
        row: &ScheduleRow,
        valid: Option<ValidSchedule>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let epoch = self.holdings[key].epoch;
        let Some(Work::Schedule(work)) = self.holdings.get_mut(key).map(|h| &mut h.work) else {
            return Ok(());
        };
        work.cron = valid.clone().map(Box::new);
        if work.running.as_ref().is_some_and(Task::is_finished) {
            work.running = None;
        }
        let Some(valid) = valid else { return Ok(()) };
        if work.running.is_some() {
            // A schedule never overlaps itself; times passing meanwhile follow its misfire policy.
            return Ok(());
        }
        let cursor = work.cursor;
        let problem = work.problem.clone();
        let halt = self.holdings[key].halt.clone();
        let started = self
            .start_next_run(row, &valid, (epoch, cursor), (&problem, &halt), now)
            .await?;
        let Some(Work::Schedule(work)) = self.holdings.get_mut(key).map(|h| &mut h.work) else {
            return Ok(());
        };
        if let Some((task, new_cursor)) = started {
            work.running = task;
            if new_cursor > work.cursor {
                work.cursor = new_cursor;
                self.store.set_fired_until(&row.name, new_cursor).await?;
            }
        }
        Ok(())
    }

    /// Starts whatever is due for an idle schedule: a requested run, a retry, or a cron firing.
    /// Returns the started task (if any) and the new firing cursor.
    async fn start_next_run(
        &self,
        row: &ScheduleRow,
        valid: &ValidSchedule,
        (epoch, cursor): (i64, DateTime<Utc>),
        (problem, halt): (&ProblemSlot, &Halt),
        now: DateTime<Utc>,
    ) -> Result<Option<(Option<Task>, DateTime<Utc>)>, StoreError> {
        let scheduled = |attempt, trigger| ScheduledRun {
            execution: valid.execution.clone(),
            attempt,
            retries: row.retries,
            retry_delay_ms: row.retry_delay_ms,
            trigger,
            problem: problem.clone(),
            halt: halt.clone(),
        };
        if let Some(requested) = row.run_requested_at {
            let task = self
                .start_run(row, requested, "manual", epoch)
                .await?
                .map(|id| self.spawn_run(id, scheduled(1, "manual")));
            self.store.clear_run_request(&row.name, requested).await?;
            return Ok(Some((task, cursor)));
        }
        let due_retry = self
            .due_retries
            .iter()
            .find(|r| r.schedule_name.as_deref() == Some(&row.name))
            .cloned();
        if let Some(retry) = due_retry {
            let task = if self
                .store
                .begin_retry(retry.id, retry.attempt, &self.me, epoch)
                .await?
            {
                tracing::info!(
                    schedule = row.name,
                    run = retry.id,
                    attempt = retry.attempt + 1,
                    "retrying"
                );
                Some(self.spawn_run(retry.id, scheduled(retry.attempt + 1, "retry")))
            } else {
                None
            };
            return Ok(Some((task, cursor)));
        }
        let grace = chrono::Duration::from_std(self.config.lease_ttl * 2).unwrap_or_default();
        let Some(due) = firing::due(&valid.cron, cursor, now, valid.misfire, grace) else {
            return Ok(None);
        };
        let Some(&fire_time) = due.fire.first() else {
            tracing::info!(
                schedule = row.name,
                skipped = due.skipped,
                "missed fire times skipped by the misfire policy"
            );
            return Ok(Some((None, due.cursor)));
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
        let new_cursor = if due.fire.len() > 1 {
            fire_time
        } else {
            due.cursor
        };
        let task = self
            .start_run(row, fire_time, "cron", epoch)
            .await?
            .map(|id| self.spawn_run(id, scheduled(1, "cron")));
        Ok(Some((task, new_cursor)))
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

    fn spawn_run(&self, id: i64, run: ScheduledRun) -> Task {
        let attempt = RunAttempt {
            id,
            instance: self.me.instance.clone(),
            attempt: run.attempt,
        };
        let through_agents = run.execution.handoff.is_some();
        Task::spawn(
            run::run_scheduled(self.store.clone(), attempt, run),
            through_agents,
        )
    }

    async fn reconcile_monitor(
        &mut self,
        row: &MonitorRow,
        defs: &Definitions,
        placements: &HashMap<String, Placement>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let key = (ResourceKind::Monitor, row.name.clone());
        let valid = definitions::monitor(row, defs.jobs.get(&row.job_name), &defs.remotes);
        let placement = self.place(
            &key,
            row.held,
            valid.as_ref().err().map(String::as_str),
            placements,
        );
        self.report_problem(&key, &row.last_error, valid.as_ref().err().cloned())
            .await?;
        match (placement, valid) {
            (Placement::Here(_), Ok(valid)) => {
                let definition = MonitorDefinition {
                    job: valid.job,
                    debounce_ms: row.debounce_ms,
                    rescan_ms: row.rescan_ms,
                };
                let current = self.holdings.get(&key).map(|h| match &h.work {
                    Work::Monitor(work) => {
                        work.definition == definition && !work.task.is_finished()
                    }
                    Work::Schedule(_) => false,
                });
                let start = (definition, valid.execution, valid.roots);
                match current {
                    Some(true) => {}
                    Some(false) => {
                        // Edited (or ended): restart under a new run with the new definition.
                        let holding = &self.holdings[&key];
                        let claimed = Claimed {
                            epoch: holding.epoch,
                            halt: holding.halt.clone(),
                        };
                        if let Some(fresh) =
                            self.start_monitor(&row.name, start, &claimed, now).await?
                        {
                            let holding = self.holdings.get_mut(&key).expect("checked above");
                            std::mem::replace(&mut holding.work, Work::Monitor(fresh))
                                .stop_at_safe_point();
                        }
                    }
                    None => {
                        if let Some(claimed) = self.claim(&key).await? {
                            let Claimed { epoch, ref halt } = claimed;
                            self.store
                                .interrupt_orphans(ResourceKind::Monitor, &row.name, epoch, 0)
                                .await?;
                            if let Some(work) =
                                self.start_monitor(&row.name, start, &claimed, now).await?
                            {
                                self.holdings.insert(
                                    key,
                                    Holding {
                                        epoch,
                                        halt: halt.clone(),
                                        work: Work::Monitor(work),
                                    },
                                );
                            } else {
                                self.store
                                    .release(ResourceKind::Monitor, &row.name, &self.me, epoch)
                                    .await?;
                            }
                        }
                    }
                }
            }
            (_, _) if self.holdings.contains_key(&key) => self.release_when_idle(&key).await?,
            _ => {}
        }
        Ok(())
    }

    async fn start_monitor(
        &self,
        name: &str,
        (definition, execution, roots): (MonitorDefinition, Execution, Vec<WatchRoot>),
        claimed: &Claimed,
        now: DateTime<Utc>,
    ) -> Result<Option<MonitorWork>, StoreError> {
        let epoch = claimed.epoch;
        let run = NewRun {
            job_name: definition.job.name.clone(),
            schedule_name: None,
            monitor_name: Some(name.to_owned()),
            fire_time: now,
            trigger: "monitor",
            holder: self.me.clone(),
            epoch,
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
        };
        let stop = CancellationToken::new();
        let work = monitor::run(
            self.store.clone(),
            attempt,
            task,
            stop.clone(),
            claimed.halt.clone(),
        );
        Ok(Some(MonitorWork {
            definition,
            task: Task::spawn(work, through_agents),
            stop,
            problem,
        }))
    }

    /// Gives a lease back once its work reaches a safe point (a run ended, a batch finished).
    async fn release_when_idle(&mut self, key: &Resource) -> Result<(), StoreError> {
        let idle = match &self.holdings[key].work {
            Work::Schedule(work) => work.running.as_ref().is_none_or(Task::is_finished),
            Work::Monitor(work) => {
                work.stop.cancel();
                work.task.is_finished()
            }
        };
        if idle {
            let holding = self.holdings.remove(key).expect("checked by the caller");
            // Logged before the release: once released, another holder may begin at once.
            tracing::info!(kind = %key.0, name = key.1, epoch = holding.epoch, "releasing");
            holding.halt.stop();
            self.store
                .release(key.0, &key.1, &self.me, holding.epoch)
                .await?;
        }
        Ok(())
    }

    /// Releases what was deleted from the database.
    async fn release_vanished(&mut self, defs: &Definitions) -> Result<(), StoreError> {
        let vanished: Vec<Resource> = self
            .holdings
            .keys()
            .filter(|(kind, name)| match kind {
                ResourceKind::Schedule => !defs.schedules.iter().any(|s| &s.name == name),
                ResourceKind::Monitor => !defs.monitors.iter().any(|m| &m.name == name),
            })
            .cloned()
            .collect();
        for key in vanished {
            self.release_when_idle(&key).await?;
        }
        Ok(())
    }

    /// Deletes runs older than `keep_runs`, about once an hour (any scheduler may; the delete
    /// is idempotent).
    async fn prune_old_runs(&mut self) -> Result<(), StoreError> {
        if self.pruned_at.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
            return Ok(());
        }
        let keep_ms = i64::try_from(self.config.keep_runs.as_millis()).unwrap_or(i64::MAX);
        let pruned = self.store.prune_runs(keep_ms, PRUNE_BATCH).await?;
        if pruned > 0 {
            tracing::info!(pruned, keep = %humantime::format_duration(self.config.keep_runs), "deleted old runs");
        }
        // A full batch means more are due: come back next tick rather than in an hour.
        if pruned < PRUNE_BATCH as u64 {
            self.pruned_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Sleeps until the next heartbeat or poll, or the next cron time of a schedule held here,
    /// whichever is first.
    fn next_wake(&self, now: DateTime<Utc>) -> Duration {
        let mut wait = self.config.heartbeat.min(self.config.poll);
        for holding in self.holdings.values() {
            if let Work::Schedule(ScheduleWork {
                cursor,
                cron: Some(valid),
                running: None,
                ..
            }) = &holding.work
                && let Some(next) = valid.cron.next_after(*cursor)
            {
                let until = (next - now).to_std().unwrap_or_default();
                wait = wait.min(until.max(Duration::from_millis(5)));
            }
        }
        wait
    }

    fn ttl_ms(&self) -> i64 {
        self.config.lease_ttl.as_millis() as i64
    }

    async fn stop(mut self) {
        tracing::info!(
            leases = self.holdings.len(),
            "stopping: ending runs and releasing leases"
        );
        // Everything halts at once: a run before its next file (and is retried by the next
        // holder if its schedule has retries left), a monitor mid-batch (the next holder's
        // first full scan picks up the rest). The tasks then end in parallel.
        for holding in self.holdings.values() {
            holding.halt.stop();
            if let Work::Monitor(work) = &holding.work {
                work.stop.cancel();
            }
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        let mut released = 0;
        for ((kind, name), holding) in &mut self.holdings {
            if !holding.finished_by(deadline).await {
                // Still writing: its lease must expire rather than let another begin beside it.
                tracing::warn!(kind = %kind, name, "work did not stop by the deadline; its lease expires by itself");
                continue;
            }
            tracing::info!(kind = %kind, name, epoch = holding.epoch, "releasing");
            match self
                .store
                .release(*kind, name, &self.me, holding.epoch)
                .await
            {
                Ok(()) => released += 1,
                Err(e) => {
                    tracing::warn!(error = %e, "could not release the leases; they expire by themselves");
                    break;
                }
            }
        }
        tracing::info!(released, "leases released");
        if let Err(e) = self
            .store
            .deregister(&self.me.name, &self.me.instance)
            .await
        {
            tracing::warn!(error = %e, "could not record the stop");
        }
        if tokio::time::timeout(Duration::from_secs(2), self.store.close())
            .await
            .is_err()
        {
            tracing::debug!("database connections still busy at exit");
        }
        tracing::info!("stopped");
    }
}

impl Holding {
    /// Whether every folder the work writes is on an agent, which refuses a write under an
    /// older epoch than one it has seen: such work needs no local deadline to be fenced.
    fn through_agents(&self) -> bool {
        match &self.work {
            Work::Schedule(work) => work.running.as_ref().is_some_and(|t| t.through_agents),
            Work::Monitor(work) => work.task.through_agents,
        }
    }

    /// Waits for the work to end, until `deadline` at most; false if it is still going.
    async fn finished_by(&mut self, deadline: Instant) -> bool {
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
    fn stop_at_safe_point(&self) {
        if let Work::Monitor(work) = self {
            work.stop.cancel();
        }
    }
}

/// The next notification, or never when there is no listener (SQLite). A lost listener
/// connection waits a moment; PgListener reconnects on the next call.
async fn next_notification(notifications: &mut Option<crate::store::Notifications>) {
    match notifications {
        Some(listener) => {
            if let Err(e) = listener.recv().await {
                tracing::debug!(error = %e, "notification listener lost its connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        None => std::future::pending().await,
    }
}
