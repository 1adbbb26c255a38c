//! What one tick reads from the database: jobs, schedules, monitors, schedulers and agents,
//! and from them the schedules and monitors that want a scheduler.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use ferry_wire::tls::ClientConfig;

use crate::lease::Demand;
use crate::plan::definitions::{Compiled, Remotes};
use crate::store::{
    JobRow, MonitorRow, ResourceKind, ScheduleRow, SchedulerRow, Store, StoreError,
};

/// What one tick read from the database.
pub(super) struct Definitions {
    pub(super) jobs: HashMap<String, JobRow>,
    pub(super) schedules: Vec<ScheduleRow>,
    pub(super) monitors: Vec<MonitorRow>,
    pub(super) schedulers: Vec<SchedulerRow>,
    pub(super) remotes: Remotes,
}

/// The text every scheduler places a schedule or monitor by.
pub(super) fn demand_key(kind: ResourceKind, name: &str) -> String {
    format!("{kind}:{name}")
}

impl Definitions {
    /// The schedules and monitors that want a scheduler: not held, and valid.
    pub(super) fn demands(&self, compiled: &mut Compiled) -> Vec<Demand<'_>> {
        let mut demands = Vec::new();
        for s in self.schedules.iter().filter(|s| !s.held) {
            if compiled
                .schedule(s, self.jobs.get(&s.job_name), &self.remotes)
                .is_ok()
            {
                demands.push(demand(
                    ResourceKind::Schedule,
                    &s.name,
                    &s.preferred,
                    s.fallback_any,
                ));
            }
        }
        for m in self.monitors.iter().filter(|m| !m.held) {
            if compiled
                .monitor(m, self.jobs.get(&m.job_name), &self.remotes)
                .is_ok()
            {
                demands.push(demand(
                    ResourceKind::Monitor,
                    &m.name,
                    &m.preferred,
                    m.fallback_any,
                ));
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

fn demand<'a>(
    kind: ResourceKind,
    name: &str,
    preferred: &'a Option<String>,
    fallback_any: bool,
) -> Demand<'a> {
    Demand {
        key: demand_key(kind, name),
        preferred: preferred.as_deref(),
        fallback_any,
    }
}
