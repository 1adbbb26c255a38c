//! Lease keeping: renewing every lease held at each tick (a lease missing from the answer is
//! lost, and its work stops at once), claiming what placement gives here, giving leases back at
//! a safe point, and the local deadline that stops local work when the database is away.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use ferry_engine::{Fence, Halt};
use tokio::time::Instant;

use super::Service;
use super::snapshot::{Definitions, job_key};
use super::work::{Claimed, Resource, Task, Work};
use crate::lease::Placement;
use crate::store::{RenewedLease, ResourceKind, StoreError};

/// The monitors a scheduler claims in one tick at most.
const MONITOR_STARTS_PER_TICK: usize = 64;

impl Service {
    pub(super) async fn renew_leases(&mut self) -> Result<(), StoreError> {
        let sent = Instant::now();
        let deadline = self.deadline_from(sent);
        let renewed: HashSet<RenewedLease> = self
            .store
            .renew_all(&self.me, self.ttl_ms())
            .await?
            .into_iter()
            .collect();
        let jobs: HashSet<(String, i64)> = self
            .store
            .renew_job_holds(&self.me, self.ttl_ms())
            .await?
            .into_iter()
            .collect();
        let lost_jobs: Vec<String> = (self.jobs_held.iter())
            .filter(|(job, epoch)| !jobs.contains(&((*job).clone(), **epoch)))
            .map(|(job, _)| job.clone())
            .collect();
        for job in &lost_jobs {
            self.jobs_held.remove(job);
            tracing::warn!(
                job,
                "job taken by another scheduler; stopping its work here"
            );
        }
        let mut lost = Vec::new();
        for ((kind, name), holding) in &self.holdings {
            if lost_jobs.contains(&holding.job) {
                lost.push((*kind, name.clone()));
                continue;
            }
            let lease = RenewedLease {
                kind: *kind,
                name: name.clone(),
                epoch: holding.epoch,
            };
            if renewed.contains(&lease) {
                holding.halt.extend_until(deadline.into_std());
                holding.halt.confirm_until(deadline.into_std());
                tracing::debug!(kind = %kind, name, epoch = holding.epoch, "lease renewed");
            } else {
                lost.push((*kind, name.clone()));
            }
        }
        for key in lost {
            if let Some(holding) = self.holdings.remove(&key) {
                holding.halt.stop();
                tracing::warn!(kind = %key.0, name = key.1, epoch = holding.epoch, "lease lost to another scheduler; stopped its work");
                metrics::counter!("ferry_lease_losses_total", "kind" => key.0.as_str())
                    .increment(1);
            }
        }
        // A job this scheduler gave up in memory while the statement giving it back was cut
        // off: the renewal just kept it, so nobody else could ever take it. Give it back.
        for (job, epoch) in &jobs {
            if !self.jobs_held.contains_key(job) {
                tracing::info!(job, epoch, "releasing a job held without work");
                self.store.release_job(job, &self.me, *epoch).await?;
            }
        }
        // A claim whose tick was cut short before its work started: give it back.
        for RenewedLease { kind, name, epoch } in renewed {
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
    pub(super) fn deadline_from(&self, sent: Instant) -> Instant {
        let margin = (self.config.heartbeat / 2).min(Duration::from_millis(500));
        sent + self.config.lease_ttl - margin
    }

    /// Without the database, leases cannot be renewed: past the deadline another scheduler may
    /// hold them, so work on local paths stops. Work whose folders are all on agents goes on:
    /// the agents fence it, refusing its writes once a newer holder has reached them, so the
    /// replication survives a database outage without a second writer.
    pub(super) fn enforce_deadline(&mut self) {
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
    pub(super) fn extend_agent_work(&self) {
        let until = (Instant::now() + 2 * self.config.lease_ttl).into_std();
        for holding in self.holdings.values().filter(|h| h.through_agents()) {
            holding.halt.extend_until(until);
        }
    }

    /// The schedules and monitors placement gives here that are not held here yet, with their
    /// jobs.
    pub(super) fn wanted_here(
        &mut self,
        defs: &Definitions,
        placements: &HashMap<String, Placement>,
    ) -> Vec<(Resource, String)> {
        let schedules = (defs.schedules.iter()).map(|row| {
            let job = defs.jobs.get(&row.job_name);
            let compiled = self.compiled.schedule(row, job, &defs.remotes);
            let problem = compiled.as_ref().err().map(ToString::to_string);
            (
                (ResourceKind::Schedule, row.name.clone()),
                &row.job_name,
                row.held,
                problem,
            )
        });
        let schedules: Vec<_> = schedules.collect();
        let monitors = (defs.monitors.iter()).map(|row| {
            let job = defs.jobs.get(&row.job_name);
            let compiled = self.compiled.monitor(row, job, &defs.remotes);
            let problem = compiled.as_ref().err().map(ToString::to_string);
            (
                (ResourceKind::Monitor, row.name.clone()),
                &row.job_name,
                row.held,
                problem,
            )
        });
        let monitors: Vec<_> = monitors.collect();
        let wanted = |(key, job, held, problem): &(Resource, &String, bool, Option<String>)| {
            !self.holdings.contains_key(key)
                && matches!(
                    self.place((key, job), *held, problem.as_deref(), placements),
                    Placement::Here(_)
                )
        };
        let schedules = schedules.into_iter().filter(wanted);
        // A monitor starts with a watch and a full scan: a scheduler taking over hundreds at
        // once takes them a batch a tick, so that no tick outgrows its time limit.
        let monitors = monitors
            .into_iter()
            .filter(wanted)
            .take(MONITOR_STARTS_PER_TICK);
        (schedules.chain(monitors))
            .map(|(key, job, _, _)| (key, job.clone()))
            .collect()
    }

    /// Claims, in a few statements for all of them, the schedules and monitors of `wanted`
    /// (with their jobs): each job first, as its runs are fenced at the agents by the job's
    /// epoch, then the leases of those whose job is now held here; the runs their former
    /// holders left `running` are marked interrupted. Items whose job another scheduler still
    /// holds wait (it gives the job up once its own schedules and monitors of it have stopped).
    pub(super) async fn claim_all(
        &mut self,
        wanted: &[(Resource, String)],
    ) -> Result<HashMap<Resource, Claimed>, StoreError> {
        let mut jobs: Vec<String> = (wanted.iter())
            .map(|(_, job)| job)
            .filter(|job| !self.jobs_held.contains_key(*job))
            .cloned()
            .collect();
        jobs.sort();
        jobs.dedup();
        if !jobs.is_empty() {
            for (job, epoch) in self.store.hold_jobs(&jobs, &self.me, self.ttl_ms()).await? {
                tracing::info!(job, epoch, "holding job");
                self.jobs_held.insert(job, epoch);
            }
        }
        let mut claimed = HashMap::new();
        for kind in [ResourceKind::Schedule, ResourceKind::Monitor] {
            let mut job_of: HashMap<&str, &str> = HashMap::new();
            for ((_, name), job) in wanted.iter().filter(|((k, _), _)| *k == kind) {
                if self.jobs_held.contains_key(job) {
                    job_of.insert(name, job);
                } else {
                    tracing::debug!(kind = %kind, name, job, "waiting for its job, which another scheduler still runs");
                }
            }
            if job_of.is_empty() {
                continue;
            }
            let names: Vec<String> = job_of.keys().map(|name| name.to_string()).collect();
            let sent = Instant::now();
            let won = self
                .store
                .claim_all(kind, &names, &self.me, self.ttl_ms())
                .await?;
            let won_names: Vec<String> = won.iter().map(|lease| lease.name.clone()).collect();
            for lease in won {
                tracing::info!(kind = %kind, name = lease.name, epoch = lease.epoch, "claimed");
                metrics::counter!("ferry_lease_claims_total", "kind" => kind.as_str()).increment(1);
                if lease.abandoned {
                    // Its holder stopped renewing it (crashed, cut off): this claim is a failover.
                    metrics::counter!("ferry_failovers_total", "kind" => kind.as_str())
                        .increment(1);
                }
                let job = job_of[lease.name.as_str()];
                let halt = Halt::fenced(Fence::new(job_key(job), self.jobs_held[job]));
                let deadline = self.deadline_from(sent).into_std();
                halt.extend_until(deadline);
                halt.confirm_until(deadline);
                let epoch = lease.epoch;
                claimed.insert((kind, lease.name), Claimed { epoch, halt });
            }
            if !won_names.is_empty() {
                self.store.interrupt_orphans(kind, &won_names).await?;
            }
        }
        Ok(claimed)
    }

    /// Gives back the jobs none of whose schedules and monitors are held here any more, so
    /// another scheduler can take them at once.
    pub(super) async fn release_idle_jobs(&mut self) -> Result<(), StoreError> {
        let busy: HashSet<&String> = self.holdings.values().map(|h| &h.job).collect();
        let idle: Vec<(String, i64)> = (self.jobs_held.iter())
            .filter(|(job, _)| !busy.contains(job))
            .map(|(job, epoch)| (job.clone(), *epoch))
            .collect();
        for (job, epoch) in idle {
            tracing::info!(job, epoch, "releasing job");
            self.jobs_held.remove(&job);
            self.store.release_job(&job, &self.me, epoch).await?;
        }
        Ok(())
    }

    /// Gives a lease back once its work reaches a safe point (a run ended, a batch finished).
    pub(super) async fn release_when_idle(&mut self, key: &Resource) -> Result<(), StoreError> {
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
    pub(super) async fn release_vanished(&mut self, defs: &Definitions) -> Result<(), StoreError> {
        let schedules: HashSet<&str> = defs.schedules.iter().map(|s| s.name.as_str()).collect();
        let monitors: HashSet<&str> = defs.monitors.iter().map(|m| m.name.as_str()).collect();
        let vanished: Vec<Resource> = self
            .holdings
            .keys()
            .filter(|(kind, name)| match kind {
                ResourceKind::Schedule => !schedules.contains(name.as_str()),
                ResourceKind::Monitor => !monitors.contains(name.as_str()),
            })
            .cloned()
            .collect();
        for key in vanished {
            self.release_when_idle(&key).await?;
        }
        Ok(())
    }
}
