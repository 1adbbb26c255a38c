//! Turning rows into runnable definitions. SQL cannot check a cron expression or a path, so
//! whatever users insert is validated here; a problem becomes the row's `last_error` (and an
//! exit code 2 from the CLI), never a crash.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_agent::endpoint::{Endpoint, LocalEndpoint};
use ferry_agent::filter::Filter;
use ferry_agent::{JobSpec, Rule};

use super::cron::CronSpec;
use super::firing::Misfire;
use crate::store::{JobRow, MonitorRow, ScheduleRow};

/// A problem with a definition, phrased for the user: it names the thing and what to do.
pub type Problem = String;

/// The part of a job row a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobField {
    Rule,
    Source,
    Destination,
    Filter,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job}: {message}")]
pub struct JobProblem {
    pub job: String,
    pub field: JobField,
    pub message: String,
}

/// Builds the engine's view of a job, or says what is wrong with the row.
pub fn job_spec(job: &JobRow) -> Result<JobSpec, JobProblem> {
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
        local_path(&job.source).map_err(|e| problem(JobField::Source, format!("source: {e}")))?;
    if job.destinations.is_empty() {
        let message = "no destinations: add a row to job_destinations (or use --to)".into();
        return Err(problem(JobField::Destination, message));
    }
    let mut paths = vec![source.clone()];
    for dest in &job.destinations {
        let path = local_path(dest)
            .map_err(|e| problem(JobField::Destination, format!("destination: {e}")))?;
        if let Some(other) = paths
            .iter()
            .position(|p| p.starts_with(&path) || path.starts_with(p))
        {
            let message = match other {
                0 => format!(
                    "destination {dest} overlaps the source {}: one would sync into the other",
                    job.source
                ),
                i => format!(
                    "destinations {} and {dest} overlap: one would sync into the other",
                    paths[i].display()
                ),
            };
            return Err(problem(JobField::Destination, message));
        }
        paths.push(path);
    }
    let destinations = paths[1..]
        .iter()
        .map(|p| Arc::new(LocalEndpoint::new(p)) as Arc<dyn Endpoint>)
        .collect();
    let filter = Filter::new(&job.include, &job.exclude)
        .map_err(|e| problem(JobField::Filter, format!("filter: {e}")))?;
    Ok(JobSpec {
        name: job.name.clone(),
        rule,
        source: Arc::new(LocalEndpoint::new(source)),
        destinations,
        filter,
    })
}

/// The folders a monitor watches: the source, plus every destination for the sync rule (its
/// changes flow every way).
pub fn watch_roots(job: &JobRow) -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(&job.source)];
    if job.rule == "sync" {
        roots.extend(job.destinations.iter().map(PathBuf::from));
    }
    roots
}

/// A path on this machine. `agent:/path` names a path on a remote agent.
pub fn local_path(path: &str) -> Result<PathBuf, Problem> {
    if let Some((agent, _)) = path
        .split_once(':')
        .filter(|(agent, _)| !agent.contains('/'))
    {
        return Err(format!(
            "{path:?} names agent {agent:?}, but this ferry syncs local folders only; use an absolute local path"
        ));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("{path:?} is not an absolute path"));
    }
    if p.components().any(|c| c == std::path::Component::ParentDir) {
        return Err(format!("{path:?} contains '..'; write the path without it"));
    }
    Ok(p.to_path_buf())
}

/// A schedule ready to fire.
#[derive(Clone)]
pub struct ValidSchedule {
    pub cron: CronSpec,
    pub misfire: Misfire,
    pub spec: JobSpec,
}

pub fn schedule(row: &ScheduleRow, job: Option<&JobRow>) -> Result<ValidSchedule, Problem> {
    let cron = CronSpec::parse(&row.cron, &row.timezone).map_err(|e| format!("cron: {e}"))?;
    let misfire = row.misfire.parse().map_err(|e| format!("misfire: {e}"))?;
    let job = job.ok_or_else(|| format!("job {:?} does not exist", row.job_name))?;
    Ok(ValidSchedule {
        cron,
        misfire,
        spec: job_spec(job).map_err(|e| e.to_string())?,
    })
}

/// A monitor's job, ready to watch and sync.
pub fn monitor(row: &MonitorRow, job: Option<&JobRow>) -> Result<(JobRow, JobSpec), Problem> {
    let job = job.ok_or_else(|| format!("job {:?} does not exist", row.job_name))?;
    let spec = job_spec(job).map_err(|e| e.to_string())?;
    Ok((job.clone(), spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(source: &str, dest: &str) -> JobRow {
        JobRow {
            name: "docs".into(),
            rule: "mirror".into(),
            source: source.into(),
            destinations: vec![dest.into()],
            include: vec![],
            exclude: vec![],
        }
    }

    #[test]
    fn a_valid_job_builds() {
        let spec = job_spec(&job("/srv/docs", "/backup/docs")).unwrap();
        assert_eq!(spec.rule, Rule::Mirror);
        assert_eq!(spec.destinations[0].display(), "/backup/docs");
    }

    #[test]
    fn problems_name_the_job_and_field() {
        let err = job_spec(&job("relative/docs", "/b")).unwrap_err();
        assert_eq!(err.field, JobField::Source);
        assert!(err.to_string().starts_with("job docs: source:"), "{err}");
        let err = job_spec(&job("/srv/docs", "/srv/docs/inner")).unwrap_err();
        assert!(err.message.contains("overlaps"), "{err}");
        let mut nested = job("/srv/docs", "/b");
        nested.destinations.push("/b/c".into());
        assert!(
            job_spec(&nested)
                .unwrap_err()
                .message
                .contains("destinations /b and /b/c overlap")
        );
        let err = job_spec(&job("/srv/docs", "nas:/docs")).unwrap_err();
        assert!(err.message.contains("agent \"nas\""), "{err}");
        let mut bad_rule = job("/a", "/b");
        bad_rule.rule = "clone".into();
        assert_eq!(job_spec(&bad_rule).unwrap_err().field, JobField::Rule);
    }
}
