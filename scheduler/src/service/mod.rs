//! `ferry scheduler run`: the service. Each tick it heartbeats, renews its leases
//! ([`leases`]), reads the definitions ([`snapshot`]), claims what placement gives it, fires
//! due schedules ([`schedules`]) and keeps its monitors running ([`monitors`]), and releases
//! what it should no longer hold at a safe point (between runs, between a monitor's batches).
//! These steps run in this order in one tick, because their order is the lease invariant: a
//! schedule fires only under a lease renewed moments before. Duties that need no lease run as
//! [`worker`]s of their own beside the tick ([`prune`]).
//!
//! A lease that cannot be renewed stops its work at once. When the database is unreachable the
//! service keeps its work only until its local lease deadline (monotonic clock: last successful
//! renewal + TTL - margin), since by then another scheduler may hold the leases.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ferry_wire::tls::ClientConfig;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::ServiceConfig;
use crate::lease::{Candidates, Placement};
use crate::plan::definitions::Compiled;
use crate::store::{Channel, LeaseHolder, Registration, RunRow, Store, StoreError};
use snapshot::{Definitions, job_key};
use work::{Holding, Resource, Work};

mod leases;
mod monitors;
mod orphans;
mod prune;
mod schedules;
mod snapshot;
mod vitals;
mod work;
mod worker;

use vitals::Vitals;

/// How long a statement of a cut-off tick may still commit behind the scheduler's back: it ends
/// by PostgreSQL's statement timeout (5 s) or SQLite's busy timeout (10 s).
const STRAY_WINDOW: Duration = Duration::from_secs(15);

/// The connections of the pool runs record through (the tick's pool is the one it was given).
const RUN_CONNECTIONS: u32 = 8;

/// How long a graceful stop waits for runs to record their end before leaving anyway.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

pub struct Service {
    /// The tick's pool: leases, definitions, firings.
    store: Store,
    /// Runs record their progress and events through a pool of their own, so a tick's lease
    /// statements never queue behind them.
    runs_store: Store,
    config: ServiceConfig,
    me: LeaseHolder,
    holdings: HashMap<Resource, Holding>,
    /// The jobs this scheduler holds, with their epochs: their schedules and monitors are
    /// claimed only here, and their runs carry the epoch to agents as their fence.
    jobs_held: HashMap<String, i64>,
    /// The definitions compiled from the rows, kept until the rows change.
    compiled: Compiled,
    database_reachable: bool,
    /// The database moved to another server since the notifications were subscribed.
    database_moved: bool,
    /// A tick did not finish: until then, a run row it inserted may still appear with no
    /// task running it (see `interrupt_strays`).
    strays_until: Option<Instant>,
    /// The last error the database answered with (not a lost connection), logged once.
    data_problem: Option<String>,
    /// Cron firings planned by this tick, started together (see `start_planned`).
    planned: Vec<schedules::PlannedCron>,
    /// Jobs with a schedule's run going here (see `note_busy_jobs`).
    busy_jobs: HashSet<String>,
    /// Monitors claimed this tick, to be started as they are reconciled.
    claimed: HashMap<Resource, work::Claimed>,
    /// The definitions last read, with the definitions version they were read at.
    definitions: Option<(i64, Arc<Definitions>)>,
    /// The `last_error`s written since the definitions were read.
    errors_written: HashMap<Resource, Option<String>>,
    /// Jobs placed on schedulers that have not taken them (the orphan sweep).
    orphans: HashMap<String, orphans::Orphan>,
    /// The jobs no live scheduler held, and when that was read.
    unheld_jobs: (Instant, HashSet<String>),
    /// Runs due for another attempt, read once per tick.
    due_retries: Vec<RunRow>,
    /// Local work must stop by then unless a renewal succeeds first.
    lease_deadline: Instant,
    /// This scheduler's certificate for reaching agents, if it has one.
    identity: Option<(String, Arc<ClientConfig>)>,
    /// How it is doing, for `/healthz`, `/readyz` and systemd.
    vitals: Arc<Vitals>,
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
    #[error(transparent)]
    Observe(#[from] ferry_wire::observe::ObserveError),
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
        let vitals = Arc::new(Vitals::new(config.heartbeat));
        if let Some(addr) = config.metrics_listen {
            ferry_wire::observe::serve(addr, vitals.clone()).await?;
        }
        store.register_scheduler(&registration).await?;
        tracing::info!(
            scheduler = name,
            instance = registration.instance_id,
            "registered"
        );
        ferry_wire::observe::notify_ready();
        let me = LeaseHolder {
            name,
            instance: registration.instance_id,
        };
        Ok(Self {
            runs_store: store.beside(RUN_CONNECTIONS),
            store,
            lease_deadline: Instant::now() + config.lease_ttl,
            config,
            me,
            holdings: HashMap::new(),
            jobs_held: HashMap::new(),
            compiled: Compiled::default(),
            database_reachable: true,
            database_moved: false,
            strays_until: None,
            data_problem: None,
            due_retries: Vec::new(),
            orphans: HashMap::new(),
            unheld_jobs: (Instant::now(), HashSet::new()),
            definitions: None,
            claimed: HashMap::new(),
            busy_jobs: HashSet::new(),
            planned: Vec::new(),
            errors_written: HashMap::new(),
            identity,
            vitals,
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
        let stop_workers = CancellationToken::new();
        let pruner = prune::Pruner {
            store: self.runs_store.clone(),
            keep_runs: self.config.keep_runs,
        };
        let pruning = tokio::spawn(worker::run(pruner, stop_workers.clone()));
        tokio::pin!(shutdown);
        let outcome = loop {
            let began = Instant::now();
            let wake = match self.tick().await {
                Ok(wake) => wake,
                Err(fatal) => break Err(fatal),
            };
            let (took, next) = (
                began.elapsed(),
                wake.saturating_duration_since(Instant::now()),
            );
            tracing::debug!(
                took_ms = took.as_millis(),
                next_in_ms = next.as_millis(),
                "ticked"
            );
            if std::mem::take(&mut self.database_moved) {
                // NOTIFY does not cross replication: listen on the new primary.
                notifications = self
                    .store
                    .notifications(Channel::Definitions)
                    .await
                    .ok()
                    .flatten();
            }
            tokio::select! {
                _ = &mut shutdown => break Ok(()),
                _ = tokio::time::sleep_until(wake) => {}
                _ = next_notification(&mut notifications) => {}
            }
        };
        // The listener holds a pooled connection; closing the pool waits for it.
        drop(notifications);
        stop_workers.cancel();
        if pruning.await.is_err() {
            tracing::warn!("the pruning worker panicked");
        }
        self.stop().await;
        outcome
    }

    /// One tick; when the next is due.
    async fn tick(&mut self) -> Result<Instant, ServiceError> {
        let started = Instant::now();
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
        if synced.is_err() {
            self.strays_until = Some(Instant::now() + STRAY_WINDOW);
        }
        let reachable = !matches!(&synced, Err(ServiceError::Store(e)) if e.is_connection());
        self.vitals
            .ticked(reachable, self.holdings.len(), self.jobs_held.len());
        match synced {
            Ok(wake) => {
                if !self.database_reachable {
                    tracing::info!("database reachable again");
                    self.database_reachable = true;
                }
                self.data_problem = None;
                Ok(wake)
            }
            Err(ServiceError::Store(e)) if !e.is_connection() => {
                // The database answered, but with something ferry cannot use (a row it cannot
                // read, say): say so once per distinct problem, and keep the leases.
                let problem = e.to_string();
                if self.data_problem.as_ref() != Some(&problem) {
                    tracing::error!(error = %problem, "could not use what the database returned; retrying every heartbeat");
                    self.data_problem = Some(problem);
                }
                Ok(started + self.config.heartbeat)
            }
            Err(ServiceError::Store(e)) => {
                if self.database_reachable {
                    tracing::error!(error = %e, "database unreachable; retrying every heartbeat, local work stops at the lease deadline");
                    self.database_reachable = false;
                }
                self.enforce_deadline();
                self.follow_primary(limit).await;
                Ok(started + self.config.heartbeat)
            }
            Err(fatal) => Err(fatal),
        }
    }

    /// With several database servers, finds the one to use now (after a failover, the
    /// promoted standby); the next tick then works there.
    async fn follow_primary(&mut self, limit: Duration) {
        let both = async {
            let moved = self.store.follow_primary().await?;
            self.runs_store.follow_primary().await?;
            Ok::<_, StoreError>(moved)
        };
        match tokio::time::timeout(limit, both).await {
            Ok(Ok(moved)) => self.database_moved |= moved,
            Ok(Err(e)) => tracing::debug!(error = %e, "no database server to move to yet"),
            Err(_) => tracing::debug!("finding the database server took too long; again next tick"),
        }
    }

    async fn sync_with_database(&mut self) -> Result<Instant, ServiceError> {
        let sent = Instant::now();
        let alive = self
            .store
            .heartbeat(&self.me.name, &self.me.instance)
            .await?;
        metrics::histogram!("ferry_database_query_seconds").record(sent.elapsed().as_secs_f64());
        if !alive {
            return Err(ServiceError::IdentityLost(self.me.name.clone()));
        }
        self.renew_leases().await?;
        self.interrupt_strays().await?;
        let now = self.store.now().await?;
        let now_read_at = Instant::now();
        let defs = self.definitions().await?;
        let schedulers = self.store.schedulers_uncounted().await?;
        self.due_retries = self.store.due_retries().await?;
        let settle = chrono::Duration::from_std(self.config.settle).unwrap_or_default();
        let candidates = Candidates::new(&schedulers, now, settle);
        let demands = defs.demands(&mut self.compiled);
        let mut placements = candidates.place_all(&self.me.name, &demands);
        self.sweep_orphans(&mut placements, &candidates, &demands)
            .await?;
        let wanted = self.wanted_here(&defs, &placements);
        let mut claimed = self.claim_all(&wanted).await?;
        self.take_schedules(&defs, &mut claimed).await?;
        // The monitors claimed are started as they are reconciled.
        self.claimed = claimed;
        self.note_busy_jobs();
        self.planned.clear();
        for row in &defs.schedules {
            self.reconcile_schedule(row, &defs, &placements, now)
                .await?;
        }
        self.start_planned().await?;
        for row in &defs.monitors {
            self.reconcile_monitor(row, &defs, &placements, now).await?;
        }
        // A claim left untaken (its monitor could not start) is given back at the next renewal.
        self.claimed.clear();
        self.cancel_requested_runs().await?;
        self.release_vanished(&defs).await?;
        self.release_idle_jobs().await?;
        Ok(self.next_wake(sent, (now, now_read_at)))
    }

    /// The definitions, read again only when the database's definitions version moved.
    async fn definitions(&mut self) -> Result<Arc<Definitions>, StoreError> {
        let version = self.store.definitions_version().await?;
        if let Some((known, defs)) = &self.definitions
            && *known == version
        {
            return Ok(defs.clone());
        }
        let defs = Definitions::load(&self.store, &self.identity, &self.config.allow).await?;
        self.compiled.read_again(&defs.schedules, &defs.monitors);
        self.errors_written.clear();
        let defs = Arc::new(defs);
        self.definitions = Some((version, defs.clone()));
        Ok(defs)
    }

    /// A tick cut off between inserting a run row (or beginning a retry) and starting its task
    /// leaves the row `running` with nobody running it: such rows of this instance are marked
    /// interrupted, and retried as their schedule allows, instead of waiting for another
    /// scheduler to take the lease over.
    async fn interrupt_strays(&mut self) -> Result<(), StoreError> {
        match self.strays_until {
            Some(until) if Instant::now() < until => {}
            Some(_) => {
                self.strays_until = None;
                return Ok(());
            }
            None => return Ok(()),
        }
        let live: HashSet<i64> = self.holdings.values().filter_map(Holding::run_id).collect();
        for id in self.store.running_runs(&self.me.instance).await? {
            if !live.contains(&id) {
                tracing::warn!(
                    run = id,
                    "a run started by a tick that was cut off never began; marking it interrupted"
                );
                self.store.interrupt_stray(id, &self.me.instance).await?;
            }
        }
        Ok(())
    }

    /// Writes the row's `last_error` if it changed: the definition's problem, else the one its
    /// running work reported.
    async fn report_problem(
        &mut self,
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
        // The rows are read again only when a definition changes: what this scheduler wrote
        // since then is newer than the row it holds.
        let known = self.errors_written.get(key).unwrap_or(last_error);
        if problem != *known {
            self.store
                .set_last_error(key.0, &key.1, problem.as_deref())
                .await?;
            self.errors_written.insert(key.clone(), problem);
        }
        Ok(())
    }

    /// Where a schedule or monitor of `job` runs: where its job is placed (a job's schedules
    /// and monitors run on one scheduler), unless held or invalid. One held here under another
    /// job (its row was edited) is given back first.
    fn place(
        &self,
        (key, job): (&Resource, &str),
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
        if self.holdings.get(key).is_some_and(|h| h.job != job) {
            return Placement::Waiting(format!("moving to job {job}"));
        }
        let placed = placements.get(&job_key(job)).cloned();
        placed.unwrap_or_else(|| Placement::Waiting("not placed".into()))
    }

    /// When the next tick is due: a heartbeat (or poll) after this one began, or the next cron
    /// time of a schedule held here, whichever is first. A cron time is placed on the local
    /// clock from the moment the database's `now` was read, so the tick neither comes early
    /// (and finds nothing due) nor late by its own length.
    fn next_wake(&self, began: Instant, (now, read_at): (DateTime<Utc>, Instant)) -> Instant {
        let mut wake = began + self.config.heartbeat.min(self.config.poll);
        for holding in self.holdings.values() {
            if let Work::Schedule(work) = &holding.work
                && work.running.is_none()
                && let Some(next) = work.known_next_fire()
            {
                let until = (next - now).to_std().unwrap_or_default();
                wake = wake.min(read_at + until.max(Duration::from_millis(5)));
            }
        }
        wake
    }

    fn ttl_ms(&self) -> i64 {
        self.config.lease_ttl.as_millis() as i64
    }

    async fn stop(mut self) {
        self.vitals.stopping();
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
        let mut still_running = HashSet::new();
        for ((kind, name), holding) in &mut self.holdings {
            if !holding.finished_by(deadline).await {
                // Still writing: its lease must expire rather than let another begin beside it.
                tracing::warn!(kind = %kind, name, "work did not stop by the deadline; its lease expires by itself");
                still_running.insert(holding.job.clone());
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
        for (job, epoch) in &self.jobs_held {
            if still_running.contains(job) {
                continue;
            }
            if let Err(e) = self.store.release_job(job, &self.me, *epoch).await {
                tracing::warn!(error = %e, "could not release the jobs held; they expire by themselves");
                break;
            }
        }
        if let Err(e) = self
            .store
            .deregister(&self.me.name, &self.me.instance)
            .await
        {
            tracing::warn!(error = %e, "could not record the stop");
        }
        let close = async { tokio::join!(self.store.close(), self.runs_store.close()) };
        if tokio::time::timeout(Duration::from_secs(2), close)
            .await
            .is_err()
        {
            tracing::debug!("database connections still busy at exit");
        }
        tracing::info!("stopped");
    }
}

/// The next notification, or never when there is no listener (SQLite). A lost listener
/// connection waits a moment; PgListener reconnects on the next call.
async fn next_notification(notifications: &mut Option<crate::store::Notifications>) {
    match notifications {
        Some(listener) => match listener.recv().await {
            Ok(table) => tracing::debug!(table, "woken by a change"),
            Err(e) => {
                tracing::debug!(error = %e, "notification listener lost its connection");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        },
        None => std::future::pending().await,
    }
}
