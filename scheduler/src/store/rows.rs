//! The rows ferry reads and writes, as plain data.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use ferry_engine::meta::Keep;
use serde::Serialize;

use super::ResourceKind;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobRow {
    pub name: String,
    /// `mirror`, `copy` or `sync` (checked by the schema).
    pub rule: String,
    pub source: String,
    pub destinations: Vec<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// A run that would delete more files than this at a replica deletes nothing and fails.
    pub max_deletes: Option<i64>,
    /// Mirror: the folder inside each destination that keeps deleted and overwritten files.
    pub versions_dir: Option<String>,
    /// Mirror and copy: compare the content of files whose size and time agree.
    pub checksum: bool,
    /// The metadata the replicas keep (columns `keep_owner`, `keep_acls`, `keep_xattrs`,
    /// `keep_hard_links`, `keep_specials`, `numeric_ids`).
    pub keep: Keep,
    /// What to call when a run fails for good: a webhook URL, or a program in the hook folder
    /// of the scheduler that ran it.
    pub on_failure: Option<String>,
}

/// A `jobs` row: name, rule, source, max_deletes, versions_dir, checksum, then the `keep_`
/// columns (owner, acls, xattrs, hard_links, specials), `numeric_ids` and `on_failure`.
pub(super) type JobHead = (
    String,
    String,
    String,
    Option<i64>,
    Option<String>,
    bool,
    bool,
    bool,
    bool,
    bool,
    bool,
    bool,
    Option<String>,
);

impl JobRow {
    /// Joins `jobs` rows with their `job_destinations` and `job_filters` rows.
    pub(super) fn assemble(
        heads: Vec<JobHead>,
        destinations: Vec<(String, String)>,
        filters: Vec<(String, String, String)>,
    ) -> Vec<JobRow> {
        let mut jobs: BTreeMap<String, JobRow> = heads
            .into_iter()
            .map(
                |(
                    name,
                    rule,
                    source,
                    max_deletes,
                    versions_dir,
                    checksum,
                    o,
                    a,
                    x,
                    h,
                    sp,
                    n,
                    hook,
                )| {
                    let keep = Keep {
                        owner: o,
                        acls: a,
                        xattrs: x,
                        hard_links: h,
                        specials: sp,
                        numeric_ids: n,
                    };
                    let job = JobRow {
                        name: name.clone(),
                        rule,
                        source,
                        destinations: vec![],
                        include: vec![],
                        exclude: vec![],
                        max_deletes,
                        versions_dir,
                        checksum,
                        keep,
                        on_failure: hook,
                    };
                    (name, job)
                },
            )
            .collect();
        for (name, path) in destinations {
            if let Some(job) = jobs.get_mut(&name) {
                job.destinations.push(path);
            }
        }
        for (name, kind, pattern) in filters {
            if let Some(job) = jobs.get_mut(&name) {
                match kind.as_str() {
                    "include" => job.include.push(pattern),
                    _ => job.exclude.push(pattern),
                }
            }
        }
        jobs.into_values().collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ScheduleRow {
    pub name: String,
    pub job_name: String,
    pub cron: String,
    pub timezone: String,
    pub preferred: Option<String>,
    pub fallback_any: bool,
    pub held: bool,
    pub retries: i32,
    pub retry_delay_ms: i64,
    /// `run_once`, `skip` or `run_all`.
    pub misfire: String,
    pub run_requested_at: Option<DateTime<Utc>>,
    /// Every cron time up to this one has been fired or accounted for by the misfire policy.
    pub fired_until: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct MonitorRow {
    pub name: String,
    pub job_name: String,
    pub preferred: Option<String>,
    pub fallback_any: bool,
    pub held: bool,
    pub debounce_ms: i64,
    pub rescan_ms: i64,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AgentRow {
    pub name: String,
    /// `host:port` schedulers and other agents connect to.
    pub address: String,
    pub created_at: DateTime<Utc>,
}

/// Who a scheduler process is.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    /// Fresh per process, so a restarted scheduler never mistakes an old lease for its own.
    pub instance_id: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    pub lease_ttl_ms: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SchedulerRow {
    pub name: String,
    pub instance_id: String,
    pub host: String,
    pub pid: i64,
    /// The ferry release it runs.
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// Heartbeat younger than its lease TTL, and not stopped.
    pub alive: bool,
    /// Stopped on purpose (SIGTERM, Ctrl-C), not crashed.
    pub stopped: bool,
    /// Live leases it holds.
    pub leases: i64,
}

/// The identity a lease is held under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub name: String,
    pub instance: String,
}

pub struct NewRun {
    pub job_name: String,
    pub schedule_name: Option<String>,
    pub monitor_name: Option<String>,
    pub fire_time: DateTime<Utc>,
    /// `cron`, `manual` or `monitor`.
    pub trigger: &'static str,
    pub holder: LeaseHolder,
    pub epoch: i64,
}

/// A cron firing a tick starts, inserted with the others of the tick
/// ([`super::Store::start_cron_runs`]).
#[derive(Debug, Clone)]
pub struct CronFiring {
    pub job_name: String,
    pub schedule_name: String,
    pub fire_time: DateTime<Utc>,
    /// The schedule's lease epoch.
    pub epoch: i64,
}

/// One attempt of one run, as its writes are fenced: by the instance running it and the
/// attempt number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAttempt {
    pub id: i64,
    pub instance: String,
    pub attempt: i32,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub files_copied: i64,
    pub files_deleted: i64,
    pub bytes_total: i64,
    pub bytes_sent: i64,
}

/// What `ferry run cancel` did.
pub enum Cancel {
    /// The run goes on until the scheduler running it sees the request (a tick).
    Asked,
    /// The run was waiting for a retry: none will come.
    RetryDropped,
    /// Nothing: the run had ended, or is a monitor's.
    Not(Box<RunRow>),
}

pub struct RunEnd {
    /// `succeeded`, `failed`, `interrupted` or `cancelled`.
    pub state: &'static str,
    pub error: Option<String>,
    pub counters: Counters,
    /// Try the same firing again after this many milliseconds.
    pub retry_in_ms: Option<i64>,
}

pub const RUN_COLUMNS: &str = "id, job_name, schedule_name, monitor_name, fire_time, trigger, scheduler, \
    state, attempt, retry_at, started_at, finished_at, files_copied, files_deleted, bytes_total, \
    bytes_sent, error";

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub id: i64,
    pub job_name: String,
    pub schedule_name: Option<String>,
    pub monitor_name: Option<String>,
    pub fire_time: DateTime<Utc>,
    pub trigger: String,
    pub scheduler: Option<String>,
    pub state: String,
    pub attempt: i32,
    pub retry_at: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub files_copied: i64,
    pub files_deleted: i64,
    pub bytes_total: i64,
    pub bytes_sent: i64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub run_id: i64,
    pub at: DateTime<Utc>,
    pub level: String,
    pub message: String,
    pub path: Option<String>,
    pub job_name: String,
    /// The schedule or monitor the run belongs to.
    pub source_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StatusRow {
    pub kind: String,
    pub name: String,
    pub job_name: String,
    /// `held`, `waiting`, `running` or `idle`.
    pub state: String,
    pub holder: Option<String>,
    pub preferred: Option<String>,
    pub fallback_any: bool,
    pub epoch: i64,
    pub last_error: Option<String>,
}

/// A lease this scheduler instance still holds after a renewal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RenewedLease {
    pub kind: ResourceKind,
    pub name: String,
    pub epoch: i64,
}
