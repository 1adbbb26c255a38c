//! The definitions a scheduler works from: jobs, schedules, monitors and agents, read again only
//! when the database's definitions version moved, and from them the jobs that want a scheduler.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use ferry_wire::tls::ClientConfig;

use crate::lease::Demand;
use crate::plan::definitions::{Compiled, Remotes};
use crate::store::{JobRow, MonitorRow, ScheduleRow, Store, StoreError};

/// The definitions as last read from the database.
pub(super) struct Definitions {
    pub(super) jobs: HashMap<String, JobRow>,
    pub(super) schedules: Vec<ScheduleRow>,
    pub(super) monitors: Vec<MonitorRow>,
    pub(super) remotes: Remotes,
}

/// The text every scheduler places a job by, and the resource its runs show agents as their
/// fence: a job's schedules and monitors run on one scheduler, which holds the job.
pub(super) fn job_key(job: &str) -> String {
    format!("job:{job}")
}

impl Definitions {
    /// The jobs that want a scheduler: those with a schedule or monitor that is not held and
    /// is valid. A job goes where its first pinned schedule or monitor (schedules first, by
    /// name) asks; a job with none pinned is spread.
    pub(super) fn demands(&self, compiled: &mut Compiled) -> Vec<Demand<'_>> {
        let mut wanted: Vec<(&str, &Option<String>, bool)> = Vec::new();
        for s in self.schedules.iter().filter(|s| !s.held) {
            if compiled
                .schedule(s, self.jobs.get(&s.job_name), &self.remotes)
                .is_ok()
            {
                wanted.push((&s.job_name, &s.preferred, s.fallback_any));
            }
        }
        for m in self.monitors.iter().filter(|m| !m.held) {
            if compiled
                .monitor(m, self.jobs.get(&m.job_name), &self.remotes)
                .is_ok()
            {
                wanted.push((&m.job_name, &m.preferred, m.fallback_any));
            }
        }
        let mut demands: Vec<Demand<'_>> = Vec::new();
        let mut of_job: HashMap<&str, usize> = HashMap::new();
        for (job, preferred, fallback_any) in wanted {
            let Some(&at) = of_job.get(job) else {
                of_job.insert(job, demands.len());
                demands.push(Demand {
                    key: job_key(job),
                    preferred: preferred.as_deref(),
                    fallback_any,
                });
                continue;
            };
            let demand = &mut demands[at];
            if demand.preferred.is_none() && preferred.is_some() {
                demand.preferred = preferred.as_deref();
                demand.fallback_any = fallback_any;
            }
        }
        demands
    }

    pub(super) async fn load(
        store: &Store,
        identity: &Option<(String, Arc<ClientConfig>)>,
        allowed: &[PathBuf],
    ) -> Result<Self, StoreError> {
        let remotes = Remotes {
            addresses: store
                .agents()
                .await?
                .into_iter()
                .map(|a| (a.name, a.address))
                .collect(),
            identity: identity.clone(),
            allowed: allowed.to_vec(),
            looks_only: false,
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
        })
    }
}
