//! Turning rows into runnable definitions. SQL cannot check a cron expression or a path, so
//! whatever users insert is validated here; a problem becomes the row's `last_error` (and an
//! exit code 2 from the CLI), never a crash.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_engine::endpoint::{Endpoint, LocalEndpoint};
use ferry_engine::filter::Filter;
use ferry_engine::journal::FULL_SCAN_EVERY;
use ferry_engine::{Guards, JobSpec, Rule};
use ferry_wire::client::Dial;
use ferry_wire::handoff::Handoff;
use ferry_wire::protocol::{JobOrder, RemoteFolder};
use ferry_wire::remote::RemoteEndpoint;
use ferry_wire::tls::ClientConfig;
use ferry_wire::watch::WatchRoot;

use super::cron::CronSpec;
use super::firing::Misfire;
use super::hooks::Hook;
use crate::store::{JobRow, MonitorRow, ScheduleRow};

/// What is wrong with a schedule or a monitor, phrased for the user (it names the thing and
/// what to do): written to the row's `last_error`, and the row waits until it is fixed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("cron: {0}")]
    Cron(String),
    #[error("misfire: {0}")]
    Misfire(String),
    #[error("job {0:?} does not exist")]
    MissingJob(String),
    #[error(transparent)]
    Job(#[from] JobProblem),
    /// A folder a monitor watches cannot be watched.
    #[error("job {job}: {message}")]
    Watch { job: String, message: String },
}

/// A problem with one field of a definition, phrased for the user.
type Message = String;

/// The part of a job row a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobField {
    Rule,
    Source,
    Destination,
    Filter,
    Guards,
    OnFailure,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job}: {message}")]
pub struct JobProblem {
    pub job: String,
    pub field: JobField,
    pub message: String,
}

/// Where a job's folder is: on this machine, or on an agent (`AGENT:/abs/path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Local(PathBuf),
    Agent { agent: String, path: PathBuf },
}

impl Place {
    /// Whether one place contains the other (a job must not sync a folder into itself).
    fn overlaps(&self, other: &Place) -> bool {
        match (self, other) {
            (Place::Local(a), Place::Local(b)) => a.starts_with(b) || b.starts_with(a),
            (Place::Agent { agent: x, path: a }, Place::Agent { agent: y, path: b }) => {
                x == y && (a.starts_with(b) || b.starts_with(a))
            }
            _ => false,
        }
    }
}

/// How this process reaches folders: agents at their addresses (the `agents` table) with its
/// own certificate (`--tls-dir`), when it has one, and the folders on this machine it may use
/// (`--allow`).
#[derive(Clone, Default)]
pub struct Remotes {
    pub addresses: HashMap<String, String>,
    pub identity: Option<(String, Arc<ClientConfig>)>,
    pub allowed: Vec<PathBuf>,
    /// Folders here are only looked at (`ferry job dry-run`): scans remove nothing.
    pub looks_only: bool,
}

impl Remotes {
    fn dial(&self, agent: &str) -> Result<Dial, String> {
        let address = self.addresses.get(agent).ok_or_else(|| {
            format!("agent {agent:?} is not known; add it with `ferry agent add {agent} --address HOST:PORT`")
        })?;
        let (client, tls) = self.identity.clone().ok_or_else(|| {
            format!(
                "it names agent {agent:?}, but this scheduler has no certificate to reach agents; \
                 start it with --tls-dir (see `ferry ca issue`)"
            )
        })?;
        Ok(Dial {
            agent: agent.to_owned(),
            address: address.clone(),
            client,
            tls,
        })
    }

    /// The allowed folder `path` lies in (as named, or as its symlinks resolve).
    fn allowed_folder(&self, path: &Path) -> Result<PathBuf, String> {
        let as_named = self.allowed.iter().cloned();
        let resolved = self
            .allowed
            .iter()
            .filter_map(|dir| dir.canonicalize().ok());
        as_named
            .chain(resolved)
            .find(|dir| path.starts_with(dir))
            .ok_or_else(|| {
                let allowed: Vec<String> = self
                    .allowed
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect();
                format!(
                    "{} is outside the folders this scheduler may use ({}); start it with \
                     --allow DIR (or allow = [...] in its config file) to let it",
                    path.display(),
                    match allowed.is_empty() {
                        true => "none are allowed".to_owned(),
                        false => allowed.join(", "),
                    }
                )
            })
    }

    fn endpoint(&self, place: &Place) -> Result<Arc<dyn Endpoint>, String> {
        Ok(match place {
            Place::Local(path) => {
                let local = LocalEndpoint::beneath(self.allowed_folder(path)?, path);
                Arc::new(if self.looks_only {
                    local.looking_only()
                } else {
                    local
                })
            }
            Place::Agent { agent, path } => Arc::new(RemoteEndpoint::new(
                self.dial(agent)?,
                path.display().to_string(),
                tokio::runtime::Handle::current(),
            )),
        })
    }
}

/// A job row checked for everything that does not need an agent's address.
#[derive(Debug)]
pub struct CheckedJob {
    pub rule: Rule,
    pub source: Place,
    pub destinations: Vec<Place>,
    pub filter: Filter,
    pub guards: Guards,
    pub on_failure: Option<Hook>,
}

/// Checks a job row: rule, paths (local or on an agent), no overlaps, filters.
pub fn check_job(job: &JobRow) -> Result<CheckedJob, JobProblem> {
    let problem = |field, message: String| JobProblem {
        job: job.name.clone(),
        field,
        message,
    };
    let rule: Rule = job
        .rule
        .parse()
        .map_err(|e| problem(JobField::Rule, format!("rule: {e}")))?;
    let source =
        place(&job.source).map_err(|e| problem(JobField::Source, format!("source: {e}")))?;
    if job.destinations.is_empty() {
        let message = "no destinations: add a row to job_destinations (or use --to)".into();
        return Err(problem(JobField::Destination, message));
    }
    let mut places = vec![source];
    for dest in &job.destinations {
        let here =
            place(dest).map_err(|e| problem(JobField::Destination, format!("destination: {e}")))?;
        if let Some(other) = places.iter().position(|p| p.overlaps(&here)) {
            let message = match other {
                0 => format!(
                    "destination {dest} overlaps the source {}: one would sync into the other",
                    job.source
                ),
                i => format!(
                    "destinations {} and {dest} overlap: one would sync into the other",
                    job.destinations[i - 1]
                ),
            };
            return Err(problem(JobField::Destination, message));
        }
        places.push(here);
    }
    let filter = Filter::new(&job.include, &job.exclude)
        .map_err(|e| problem(JobField::Filter, format!("filter: {e}")))?;
    let guards = guards(job, rule).map_err(|e| problem(JobField::Guards, e))?;
    let on_failure = (job.on_failure.as_deref().map(Hook::parse).transpose())
        .map_err(|e| problem(JobField::OnFailure, format!("on_failure: {e}")))?;
    let source = places.remove(0);
    Ok(CheckedJob {
        rule,
        source,
        destinations: places,
        filter,
        guards,
        on_failure,
    })
}

fn guards(job: &JobRow, rule: Rule) -> Result<Guards, Message> {
    let max_deletes = match job.max_deletes {
        Some(n) => Some(
            u64::try_from(n).map_err(|_| format!("max_deletes {n} is negative; use 0 or more"))?,
        ),
        None => None,
    };
    let versions = match &job.versions_dir {
        None => None,
        Some(_) if rule != Rule::Mirror => {
            return Err(format!(
                "versions_dir keeps what a mirror deletes or overwrites; the {rule} rule does not use it"
            ));
        }
        Some(dir) => {
            let path = PathBuf::from(dir);
            let plain = !dir.is_empty()
                && path
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain {
                return Err(format!(
                    "versions_dir {dir:?} must be a folder name inside each destination, like .versions"
                ));
            }
            Some(path)
        }
    };
    if job.checksum && rule == Rule::Sync {
        return Err(
            "checksum compares what a mirror or a copy would skip; the sync rule does not use it"
                .into(),
        );
    }
    if job.keep.specials && rule == Rule::Sync {
        return Err(
            "specials makes FIFOs, sockets and devices at a mirror's or a copy's destinations; \
             the sync rule does not"
                .into(),
        );
    }
    Ok(Guards {
        max_deletes,
        versions,
        checksum: job.checksum,
        keep: job.keep,
    })
}

/// A job as this scheduler carries it out: the engine's view of it, and, when every folder is
/// on an agent, the order that hands each run to the source's agent instead.
#[derive(Debug, Clone)]
pub struct Execution {
    pub spec: JobSpec,
    pub handoff: Option<Handoff>,
    /// Called once a run has failed for good.
    pub on_failure: Option<Hook>,
}

/// Builds the engine's view of a job, or says what is wrong with the row. A job whose folders
/// are all on agents is handed to the source's agent; otherwise this process runs it.
pub fn job_spec(job: &JobRow, remotes: &Remotes) -> Result<Execution, JobProblem> {
    let checked = check_job(job)?;
    let problem = |field, message: String| JobProblem {
        job: job.name.clone(),
        field,
        message,
    };
    let source = remotes
        .endpoint(&checked.source)
        .map_err(|e| problem(JobField::Source, format!("source: {e}")))?;
    let destinations = checked
        .destinations
        .iter()
        .map(|p| remotes.endpoint(p))
        .collect::<Result<_, _>>()
        .map_err(|e| problem(JobField::Destination, format!("destination: {e}")))?;
    let handoff = handoff(job, &checked, remotes)
        .map_err(|e| problem(JobField::Destination, format!("destination: {e}")))?;
    let spec = JobSpec {
        name: job.name.clone(),
        rule: checked.rule,
        source,
        destinations,
        filter: checked.filter,
        guards: checked.guards,
        full_scan_every: Some(FULL_SCAN_EVERY),
    };
    Ok(Execution {
        spec,
        handoff,
        on_failure: checked.on_failure,
    })
}

/// The order for the source's agent when every folder of the job is on an agent.
fn handoff(
    job: &JobRow,
    checked: &CheckedJob,
    remotes: &Remotes,
) -> Result<Option<Handoff>, String> {
    let Place::Agent { agent, path } = &checked.source else {
        return Ok(None);
    };
    let mut destinations = Vec::new();
    for place in &checked.destinations {
        let Place::Agent { agent, path } = place else {
            return Ok(None);
        };
        destinations.push(RemoteFolder {
            agent: agent.clone(),
            address: remotes.dial(agent)?.address,
            path: path.display().to_string(),
        });
    }
    Ok(Some(Handoff {
        dial: remotes.dial(agent)?,
        order: JobOrder {
            job: job.name.clone(),
            rule: checked.rule,
            source: path.display().to_string(),
            destinations,
            include: job.include.clone(),
            exclude: job.exclude.clone(),
            guards: checked.guards.clone(),
            paths: None,
        },
    }))
}

/// The folders a monitor watches: the source, plus every destination for the sync rule (its
/// changes flow every way). A folder on an agent is watched by that agent.
pub fn watch_roots(job: &JobRow, remotes: &Remotes) -> Result<Vec<WatchRoot>, Message> {
    let mut places = vec![place(&job.source)?];
    if job.rule.parse() == Ok(Rule::Sync) {
        for dest in &job.destinations {
            places.push(place(dest)?);
        }
    }
    places
        .into_iter()
        .map(|p| match p {
            Place::Local(path) => {
                remotes.allowed_folder(&path)?;
                Ok(WatchRoot::Local(path))
            }
            Place::Agent { agent, path } => Ok(WatchRoot::Agent {
                dial: remotes.dial(&agent)?,
                path: path.display().to_string(),
            }),
        })
        .collect()
}

/// Parses a job path: `/abs/path` on this machine, or `agent:/abs/path` on an agent.
pub fn place(path: &str) -> Result<Place, Message> {
    let (agent, local) = match path
        .split_once(':')
        .filter(|(agent, _)| !agent.contains('/'))
    {
        Some((agent, rest)) => (Some(agent), rest),
        None => (None, path),
    };
    if agent.is_some_and(str::is_empty) {
        return Err(format!("{path:?} has an empty agent name before ':'"));
    }
    let p = Path::new(local);
    if !p.is_absolute() {
        return Err(format!("{path:?} is not an absolute path"));
    }
    if p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("{path:?} contains '..'; write the path without it"));
    }
    Ok(match agent {
        Some(agent) => Place::Agent {
            agent: agent.to_owned(),
            path: p.to_path_buf(),
        },
        None => Place::Local(p.to_path_buf()),
    })
}

/// A schedule ready to fire.
#[derive(Clone)]
pub struct ValidSchedule {
    pub cron: CronSpec,
    pub misfire: Misfire,
    pub execution: Execution,
}

pub fn schedule(
    row: &ScheduleRow,
    job: Option<&JobRow>,
    remotes: &Remotes,
) -> Result<ValidSchedule, Problem> {
    let cron = CronSpec::parse(&row.cron, &row.timezone).map_err(Problem::Cron)?;
    let misfire = row.misfire.parse().map_err(Problem::Misfire)?;
    let job = job.ok_or_else(|| Problem::MissingJob(row.job_name.clone()))?;
    Ok(ValidSchedule {
        cron,
        misfire,
        execution: job_spec(job, remotes)?,
    })
}

/// A monitor's job, ready to watch and sync.
#[derive(Clone)]
pub struct ValidMonitor {
    pub job: JobRow,
    pub execution: Execution,
    pub roots: Vec<WatchRoot>,
}

pub fn monitor(
    row: &MonitorRow,
    job: Option<&JobRow>,
    remotes: &Remotes,
) -> Result<ValidMonitor, Problem> {
    let job = job.ok_or_else(|| Problem::MissingJob(row.job_name.clone()))?;
    let execution = job_spec(job, remotes)?;
    let roots = watch_roots(job, remotes).map_err(|message| Problem::Watch {
        job: job.name.clone(),
        message,
    })?;
    Ok(ValidMonitor {
        job: job.clone(),
        execution,
        roots,
    })
}

/// Definitions compiled from the rows, kept while what each was compiled from stays the same:
/// a job's filters and endpoints are built once per change, not at every tick.
#[derive(Default)]
pub struct Compiled {
    /// Raised each time the definitions are read again. Between two reads nothing a
    /// definition is compiled from can change, so an entry checked at the current generation
    /// is used as it is, without comparing its inputs again.
    generation: u64,
    schedules: HashMap<String, Entry<ScheduleInputs, Arc<ValidSchedule>>>,
    monitors: HashMap<String, Entry<MonitorInputs, ValidMonitor>>,
}

struct Entry<I, V> {
    inputs: I,
    compiled: Result<V, Problem>,
    /// The generation at which `inputs` were last found to be the row's.
    checked: u64,
}

/// What a schedule is compiled from (its other columns change as it fires).
struct ScheduleInputs {
    cron: String,
    timezone: String,
    misfire: String,
    job: Option<JobRow>,
    agents: HashMap<String, String>,
}

struct MonitorInputs {
    job_name: String,
    job: Option<JobRow>,
    agents: HashMap<String, String>,
}

impl Compiled {
    /// `row` compiled, from this cache while its inputs are unchanged.
    pub fn schedule(
        &mut self,
        row: &ScheduleRow,
        job: Option<&JobRow>,
        remotes: &Remotes,
    ) -> &Result<Arc<ValidSchedule>, Problem> {
        // Compared in place, so nothing is copied unless something changed.
        let same = |i: &ScheduleInputs| {
            i.cron == row.cron
                && i.timezone == row.timezone
                && i.misfire == row.misfire
                && i.job.as_ref() == job
                && i.agents == remotes.addresses
        };
        let inputs = || ScheduleInputs {
            cron: row.cron.clone(),
            timezone: row.timezone.clone(),
            misfire: row.misfire.clone(),
            job: job.cloned(),
            agents: remotes.addresses.clone(),
        };
        let compile = || schedule(row, job, remotes).map(Arc::new);
        let entries = (&mut self.schedules, self.generation);
        cached(entries, &row.name, (same, inputs), compile)
    }

    pub fn monitor(
        &mut self,
        row: &MonitorRow,
        job: Option<&JobRow>,
        remotes: &Remotes,
    ) -> &Result<ValidMonitor, Problem> {
        let same = |i: &MonitorInputs| {
            i.job_name == row.job_name && i.job.as_ref() == job && i.agents == remotes.addresses
        };
        let inputs = || MonitorInputs {
            job_name: row.job_name.clone(),
            job: job.cloned(),
            agents: remotes.addresses.clone(),
        };
        let entries = (&mut self.monitors, self.generation);
        cached(entries, &row.name, (same, inputs), || {
            monitor(row, job, remotes)
        })
    }

    /// After the definitions were read again: forgets what was compiled for rows that are
    /// gone, and checks the others' inputs again at their next use.
    pub fn read_again(&mut self, schedules: &[ScheduleRow], monitors: &[MonitorRow]) {
        self.generation += 1;
        let schedules: HashSet<&str> = schedules.iter().map(|s| s.name.as_str()).collect();
        let monitors: HashSet<&str> = monitors.iter().map(|m| m.name.as_str()).collect();
        self.schedules
            .retain(|name, _| schedules.contains(name.as_str()));
        self.monitors
            .retain(|name, _| monitors.contains(name.as_str()));
    }
}

/// The compiled definition of `name`: as it is when checked at this `generation`, or while
/// `same` holds for its inputs; otherwise compiled anew and kept with `inputs()`.
fn cached<'a, I, V>(
    (entries, generation): (&'a mut HashMap<String, Entry<I, V>>, u64),
    name: &str,
    (same, inputs): (impl Fn(&I) -> bool, impl FnOnce() -> I),
    compile: impl FnOnce() -> Result<V, Problem>,
) -> &'a Result<V, Problem> {
    // Looked up before an owned key is made: this runs for every definition at every tick.
    let current = match entries.get_mut(name) {
        Some(entry) if entry.checked == generation => true,
        Some(entry) if same(&entry.inputs) => {
            entry.checked = generation;
            true
        }
        _ => false,
    };
    if !current {
        let entry = Entry {
            compiled: compile(),
            inputs: inputs(),
            checked: generation,
        };
        entries.insert(name.to_owned(), entry);
    }
    &entries[name].compiled
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scheduler allowed every local folder.
    fn allowing_all() -> Remotes {
        Remotes {
            allowed: vec!["/".into()],
            ..Default::default()
        }
    }

    #[test]
    fn local_folders_outside_the_allowed_ones_are_refused_by_name() {
        let remotes = Remotes {
            allowed: vec!["/srv".into()],
            ..Default::default()
        };
        assert!(job_spec(&job("/srv/docs", "/srv/backup"), &remotes).is_ok());
        for (source, dest) in [
            ("/srv/docs", "/etc/cron.d"),
            ("/srvx/docs", "/srv/b"),
            ("/root", "/srv/b"),
        ] {
            let err = job_spec(&job(source, dest), &remotes).unwrap_err();
            assert!(
                err.message
                    .contains("outside the folders this scheduler may use"),
                "{err}"
            );
        }
        let none = job_spec(&job("/srv/docs", "/srv/backup"), &Remotes::default()).unwrap_err();
        assert!(none.message.contains("none are allowed"), "{none}");
    }

    fn job(source: &str, dest: &str) -> JobRow {
        JobRow {
            name: "docs".into(),
            rule: "mirror".into(),
            source: source.into(),
            destinations: vec![dest.into()],
            include: vec![],
            exclude: vec![],
            ..Default::default()
        }
    }

    #[test]
    fn a_valid_job_builds() {
        let spec = job_spec(&job("/srv/docs", "/backup/docs"), &allowing_all())
            .unwrap()
            .spec;
        assert_eq!(spec.rule, Rule::Mirror);
        assert_eq!(spec.destinations[0].display(), "/backup/docs");
    }

    #[test]
    fn problems_name_the_job_and_field() {
        let err = check_job(&job("relative/docs", "/b")).unwrap_err();
        assert_eq!(err.field, JobField::Source);
        assert!(err.to_string().starts_with("job docs: source:"), "{err}");
        let err = check_job(&job("/srv/docs", "/srv/docs/inner")).unwrap_err();
        assert!(err.message.contains("overlaps"), "{err}");
        let mut nested = job("/srv/docs", "/b");
        nested.destinations.push("/b/c".into());
        assert!(
            check_job(&nested)
                .unwrap_err()
                .message
                .contains("destinations /b and /b/c overlap")
        );
        let err = job_spec(&job("/srv/docs", "nas:/docs"), &allowing_all()).unwrap_err();
        assert!(err.message.contains("agent \"nas\" is not known"), "{err}");
        let err = check_job(&job("nas:/srv/docs", "nas:/srv/docs/inner")).unwrap_err();
        assert!(err.message.contains("overlaps"), "{err}");
        let err = check_job(&job("/srv/docs", "nas:docs")).unwrap_err();
        assert!(err.message.contains("not an absolute path"), "{err}");
        let mut bad_rule = job("/a", "/b");
        bad_rule.rule = "clone".into();
        assert_eq!(check_job(&bad_rule).unwrap_err().field, JobField::Rule);
    }

    fn schedule_row(cron: &str) -> ScheduleRow {
        ScheduleRow {
            name: "nightly".into(),
            job_name: "docs".into(),
            cron: cron.into(),
            timezone: "UTC".into(),
            preferred: None,
            fallback_any: true,
            held: false,
            retries: 0,
            retry_delay_ms: 0,
            misfire: "run_once".into(),
            run_requested_at: None,
            fired_until: None,
            last_error: None,
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_definition_is_compiled_again_only_when_what_it_is_made_of_changes() {
        let mut compiled = Compiled::default();
        let remotes = allowing_all();
        let docs = job("/srv/docs", "/backup/docs");
        let source = |compiled: &mut Compiled, row: &ScheduleRow, job: &JobRow| {
            let valid = compiled
                .schedule(row, Some(job), &remotes)
                .as_ref()
                .unwrap();
            valid.execution.spec.source.clone()
        };
        let mut row = schedule_row("0 2 * * *");
        let first = source(&mut compiled, &row, &docs);
        // Firing moves these columns at every run: nothing to compile again.
        row.fired_until = Some(chrono::Utc::now());
        row.last_error = Some("a slow disk".into());
        compiled.read_again(std::slice::from_ref(&row), &[]);
        assert!(Arc::ptr_eq(&first, &source(&mut compiled, &row, &docs)));
        row.cron = "0 3 * * *".into();
        compiled.read_again(std::slice::from_ref(&row), &[]);
        let recron = source(&mut compiled, &row, &docs);
        assert!(!Arc::ptr_eq(&first, &recron), "a new cron is compiled");
        let moved = job("/srv/papers", "/backup/docs");
        compiled.read_again(std::slice::from_ref(&row), &[]);
        let rejob = source(&mut compiled, &row, &moved);
        assert_eq!(rejob.display(), "/srv/papers", "an edited job is compiled");
        compiled.read_again(&[], &[]);
        assert!(
            compiled.schedules.is_empty(),
            "a deleted schedule is forgotten"
        );
    }
}
