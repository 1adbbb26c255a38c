//! The orphan sweep. Every scheduler places jobs from the same rows, but not always with the
//! same view: a scheduler that finds a job's definition unusable (a local path outside its
//! `--allow`, an agent it has no certificate for) leaves out what the others give it, and one
//! that died a moment ago still looks alive. A job placed on a scheduler that does not take it
//! would wait as long as that lasts. So once a job has stayed unheld for a lease's time (its
//! owner has ticked twice by then, or is dead) after its placement, every scheduler passes over its owner, and the next scheduler in the job's
//! rendezvous order adopts it (and the next after that, a lease's time later, if that one does
//! not take it either). An adopted job is given back after [`ADOPTION_SPAN`] (at a safe
//! point), so that its owner can take it once it is able to.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use super::Service;
use super::snapshot::job_key;
use crate::lease::{Candidates, Demand, Placement};
use crate::store::StoreError;

/// How long a scheduler keeps a job it adopted before offering it back to its owner.
const ADOPTION_SPAN: Duration = Duration::from_secs(300);

/// A job placed on a scheduler that has not taken it.
pub(super) struct Orphan {
    /// Where placement puts the job.
    owner: String,
    /// The schedulers that were given the job and let a lease's time pass without taking it.
    passed_over: Vec<String>,
    /// When the current target was given the job (or, once adopted here, when it was adopted).
    since: Instant,
}

impl Service {
    /// Turns the placements of orphaned jobs this scheduler should adopt into `Here`.
    pub(super) async fn sweep_orphans(
        &mut self,
        placements: &mut HashMap<String, Placement>,
        candidates: &Candidates,
        demands: &[Demand<'_>],
    ) -> Result<(), StoreError> {
        self.read_unheld_jobs().await?;
        let held_here: HashSet<String> = self.jobs_held.keys().map(|job| job_key(job)).collect();
        let mut orphans = HashMap::new();
        for demand in demands
            .iter()
            .filter(|d| d.fallback_any || d.preferred.is_none())
        {
            let Some(Placement::Elsewhere(owner)) = placements.get(&demand.key) else {
                continue;
            };
            let known = self
                .orphans
                .remove(&demand.key)
                .filter(|o| &o.owner == owner);
            let orphan = if held_here.contains(&demand.key) {
                // Kept while adopted here, until its span ends.
                known.filter(|o| {
                    o.target(&demand.key, candidates) == Some(self.me.name.as_str())
                        && o.since.elapsed() < ADOPTION_SPAN
                })
            } else if self.unheld_jobs.1.contains(&demand.key) {
                let mut orphan = known.unwrap_or_else(|| Orphan::new(owner));
                orphan.pass_over_after(self.config.lease_ttl, &demand.key, candidates);
                Some(orphan)
            } else {
                None
            };
            let Some(orphan) = orphan else { continue };
            if orphan.target(&demand.key, candidates) == Some(self.me.name.as_str()) {
                if !held_here.contains(&demand.key) {
                    tracing::info!(
                        job = demand.key,
                        owner = orphan.owner,
                        "adopting a job its scheduler has not taken"
                    );
                }
                placements.insert(demand.key.clone(), Placement::Here("adopted"));
            }
            orphans.insert(demand.key.clone(), orphan);
        }
        self.orphans = orphans;
        Ok(())
    }

    /// The jobs no live scheduler holds, read again once a lease's time has passed: an orphan
    /// is one for at least that long, and the query reads every job.
    async fn read_unheld_jobs(&mut self) -> Result<(), StoreError> {
        if self.unheld_jobs.0.elapsed() < self.config.lease_ttl {
            return Ok(());
        }
        let unheld = self.store.unheld_jobs().await?;
        self.unheld_jobs = (
            Instant::now(),
            unheld.iter().map(|job| job_key(job)).collect(),
        );
        Ok(())
    }
}

impl Orphan {
    fn new(owner: &str) -> Self {
        Self {
            owner: owner.to_owned(),
            passed_over: Vec::new(),
            since: Instant::now(),
        }
    }

    /// The scheduler the job is given to now: its owner, then the next one not passed over.
    fn target<'a>(&'a self, key: &str, candidates: &'a Candidates) -> Option<&'a str> {
        match self.passed_over.is_empty() {
            true => Some(&self.owner),
            false => candidates.next_for(key, &self.passed_over),
        }
    }

    /// Passes over the current target once it has let `grace` go by without taking the job.
    fn pass_over_after(&mut self, grace: Duration, key: &str, candidates: &Candidates) {
        if self.since.elapsed() < grace {
            return;
        }
        if let Some(target) = self.target(key, candidates).map(str::to_owned) {
            self.passed_over.push(target);
            self.since = Instant::now();
        }
    }
}
