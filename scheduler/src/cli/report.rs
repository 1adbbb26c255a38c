//! `ferry status`, `runs`, `tail`, `scheduler list` and `scheduler run`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use super::output::{or_dash, time, time_in};
use super::{AgentCommand, Output, Reach, SchedulerRun, invalid};
use crate::config::ServiceConfig;
use crate::plan::cron::CronSpec;
use crate::plan::run::human_bytes;
use crate::service::Service;
use crate::store::{Channel, RunRow, SchedulerRow, SchemaState, StatusRow, Store};
use ferry_wire::client::{Dial, Session};

pub async fn scheduler_run(store: Store, args: SchedulerRun) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => {
            ServiceConfig::load(path).map_err(|e| invalid("--config", format!("{e:#}")))?
        }
        None => ServiceConfig::default(),
    };
    config.name = args.name.or(config.name);
    config.lease_ttl = args.lease_ttl.unwrap_or(config.lease_ttl);
    config.heartbeat = args.heartbeat.unwrap_or(config.heartbeat);
    config.poll = args.poll.unwrap_or(config.poll);
    config.keep_runs = args.keep_runs.unwrap_or(config.keep_runs);
    config.tls_dir = args.tls_dir.or(config.tls_dir);
    config.allow.extend(args.allow);
    config.metrics_listen = args.metrics_listen.or(config.metrics_listen);
    config.hook_dir = args.hook_dir.or(config.hook_dir);
    config
        .validate()
        .map_err(|e| invalid("--heartbeat/--lease-ttl", e))?;
    let name = config
        .name
        .clone()
        .unwrap_or_else(crate::lease::default_name);
    // Handlers first: a SIGTERM that comes while the service starts must still stop it cleanly.
    let shutdown = shutdown_signal()?;
    let service = Service::start(store, config, name).await?;
    service.run(shutdown).await?;
    Ok(())
}

/// Installs the SIGTERM and SIGINT handlers now; the future completes on either.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("Ctrl-C received"),
        }
    })
}

pub async fn scheduler_list(store: &Store, out: Output) -> anyhow::Result<()> {
    let schedulers = store.schedulers().await?;
    out.list(&schedulers, &SCHEDULER_HEADERS, scheduler_line);
    Ok(())
}

const SCHEDULER_HEADERS: [&str; 7] = [
    "name",
    "alive",
    "host",
    "version",
    "started",
    "heartbeat",
    "leases",
];

fn scheduler_line(s: &SchedulerRow) -> Vec<String> {
    vec![
        s.name.clone(),
        if s.alive {
            "alive".into()
        } else {
            "down".into()
        },
        s.host.clone(),
        s.version.clone(),
        time(Some(s.started_at)),
        time(Some(s.heartbeat_at)),
        s.leases.to_string(),
    ]
}

/// One schedule or monitor in `ferry status`.
#[derive(Serialize)]
struct StatusLine {
    #[serde(flatten)]
    row: StatusRow,
    /// Why it is where it is: `preferred`, `fallback: preferred s1 down since …`, ….
    placement: String,
    next_fire: Option<chrono::DateTime<Utc>>,
    last_run: Option<RunRow>,
    /// The cron time a schedule missed, when it has not fired for [`OVERDUE_AFTER`] past it.
    overdue_since: Option<chrono::DateTime<Utc>>,
    /// The zone its times are printed in (a schedule's own); UTC when `None`.
    #[serde(skip)]
    zone: Option<String>,
}

#[derive(Serialize)]
struct Status {
    schedulers: Vec<SchedulerRow>,
    definitions: Vec<StatusLine>,
}

/// The outcome of `ferry status --check`, as the process's exit code: 1 for a warning, 2 for
/// a critical problem (the line saying why is printed already).
#[derive(Debug, thiserror::Error)]
#[error("health check: exit code {0}")]
pub struct Unhealthy(pub u8);

/// How late a schedule's firing may be before `status --check` warns of it: a firing waits
/// for its job's other run, and a failover takes a lease TTL or two.
const OVERDUE_AFTER: chrono::TimeDelta = chrono::TimeDelta::minutes(2);

/// The first cron time after `since` (a schedule's last firing, or its creation), if it is
/// more than [`OVERDUE_AFTER`] before `now`.
fn overdue(
    cron: &CronSpec,
    since: chrono::DateTime<Utc>,
    now: chrono::DateTime<Utc>,
) -> Option<chrono::DateTime<Utc>> {
    cron.next_after(since)
        .filter(|due| now - *due > OVERDUE_AFTER)
}

pub async fn status(store: &Store, out: Output, check: bool, utc: bool) -> anyhow::Result<()> {
    let schedulers = store.schedulers().await?;
    let schedules = store.schedules().await?;
    let crons: HashMap<&str, Option<CronSpec>> = (schedules.iter())
        .map(|s| (s.name.as_str(), CronSpec::parse(&s.cron, &s.timezone).ok()))
        .collect();
    let created: HashMap<&str, chrono::DateTime<Utc>> = (schedules.iter())
        .map(|s| (s.name.as_str(), s.created_at))
        .collect();
    // A schedule's times are shown in its own zone (a monitor's, and all with --utc, in UTC).
    let zones: HashMap<&str, &str> = (schedules.iter())
        .filter(|_| !utc)
        .map(|s| (s.name.as_str(), s.timezone.as_str()))
        .collect();
    let mut last_runs: HashMap<(bool, String), RunRow> = HashMap::new();
    for run in store.last_runs().await? {
        let key = match (&run.schedule_name, &run.monitor_name) {
            (Some(s), _) => (true, s.clone()),
            (None, Some(m)) => (false, m.clone()),
            (None, None) => continue,
        };
        last_runs.insert(key, run);
    }
    let now = Utc::now();
    let rows = store.status().await?;
    let pins = job_pins(&rows);
    let definitions: Vec<StatusLine> = rows
        .into_iter()
        .map(|row| {
            let is_schedule = row.kind == "schedule";
            let cron = crons
                .get(row.name.as_str())
                .and_then(|c| c.as_ref())
                .filter(|_| is_schedule && row.state != "held");
            let next_fire = cron.and_then(|c| c.next_after(now));
            let last_run = last_runs.remove(&(is_schedule, row.name.clone()));
            // The first cron time after its last firing (or its creation), if long past.
            let since = (last_run.as_ref().map(|r| r.fire_time))
                .or_else(|| created.get(row.name.as_str()).copied());
            let overdue_since = cron
                .zip(since)
                .and_then(|(c, since)| overdue(c, since, now));
            let placement = explain_in_job(&row, &pins, &schedulers);
            let zone = zones.get(row.name.as_str()).filter(|_| is_schedule);
            StatusLine {
                zone: zone.map(|z| z.to_string()),
                row,
                placement,
                next_fire,
                last_run,
                overdue_since,
            }
        })
        .collect();
    let status = Status {
        schedulers,
        definitions,
    };
    if check {
        let (code, line) = health(&status);
        println!("{line}");
        return match code {
            0 => Ok(()),
            code => Err(Unhealthy(code).into()),
        };
    }
    match out {
        Output::Json => out.one(&status),
        Output::Table => print_status(&status, out),
    }
    Ok(())
}

/// `ferry status --check`: the worst problem, as an exit code and a line that names it.
fn health(status: &Status) -> (u8, String) {
    let alive = status.schedulers.iter().filter(|s| s.alive).count();
    let down: Vec<&SchedulerRow> = (status.schedulers.iter())
        .filter(|s| !s.alive && !s.stopped)
        .collect();
    let since = |s: &SchedulerRow| s.heartbeat_at.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    if alive == 0 {
        let last = status.schedulers.iter().max_by_key(|s| s.heartbeat_at);
        let why = last.map_or("none has ever run".into(), |s| {
            format!("{} was the last, down since {}", s.name, since(s))
        });
        return (2, format!("CRITICAL: no scheduler is alive ({why})"));
    }
    let waiting = |kind: &str| {
        (status.definitions.iter())
            .find(|d| d.row.kind == kind && d.row.state == "waiting")
            .map(|d| format!("{kind} {} is waiting: {}", d.row.name, d.placement))
    };
    if let Some(why) = waiting("monitor") {
        return (2, format!("CRITICAL: {why}"));
    }
    let failed = (status.definitions.iter()).find_map(|d| {
        let run = d.last_run.as_ref().filter(|r| r.state == "failed")?;
        let error = run.error.as_deref().unwrap_or("no error recorded");
        Some(format!(
            "the last run of {} {} failed: {error}",
            d.row.kind, d.row.name
        ))
    });
    let overdue = (status.definitions.iter()).find_map(|d| {
        let due = d.overdue_since?;
        Some(format!(
            "schedule {} is overdue: it was due at {} and has not fired since",
            d.row.name,
            due.format("%Y-%m-%d %H:%M:%S UTC")
        ))
    });
    let warning = (down.first())
        .map(|s| format!("scheduler {} is down since {}", s.name, since(s)))
        .or_else(|| waiting("schedule"))
        .or(overdue)
        .or(failed);
    match warning {
        Some(why) => (1, format!("WARNING: {why}")),
        None => {
            let held = status
                .definitions
                .iter()
                .filter(|d| d.row.holder.is_some())
                .count();
            (
                0,
                format!("OK: {alive} schedulers alive, holding {held} schedules and monitors"),
            )
        }
    }
}

/// Per job, the preference it is placed by: that of its first pinned schedule or monitor
/// (schedules first, by name), as the schedulers place a job's work together.
fn job_pins(rows: &[StatusRow]) -> HashMap<String, (String, bool)> {
    let mut pinned: Vec<&StatusRow> = (rows.iter())
        .filter(|r| r.state != "held" && r.preferred.is_some())
        .collect();
    pinned.sort_by_key(|r| (r.kind != "schedule", r.name.clone()));
    let mut pins = HashMap::new();
    for row in pinned {
        if let Some(preferred) = &row.preferred {
            let pin = (preferred.clone(), row.fallback_any);
            pins.entry(row.job_name.clone()).or_insert(pin);
        }
    }
    pins
}

/// Why a schedule or monitor is where it is: by its job's preference (see [`job_pins`]),
/// saying so where that is not its own.
fn explain_in_job(
    row: &StatusRow,
    pins: &HashMap<String, (String, bool)>,
    schedulers: &[SchedulerRow],
) -> String {
    let Some((preferred, fallback_any)) = pins.get(&row.job_name) else {
        return crate::lease::explain(row, schedulers);
    };
    let placed = StatusRow {
        preferred: Some(preferred.clone()),
        fallback_any: *fallback_any,
        ..row.clone()
    };
    let why = crate::lease::explain(&placed, schedulers);
    if row.preferred.as_ref() == Some(preferred) || row.state == "held" {
        return why;
    }
    format!(
        "{why} (as its job {}, which prefers {preferred})",
        row.job_name
    )
}

fn print_status(status: &Status, out: Output) {
    println!("SCHEDULERS");
    out.list(&status.schedulers, &SCHEDULER_HEADERS, scheduler_line);
    println!();
    out.list(
        &status.definitions,
        &[
            "kind",
            "name",
            "job",
            "state",
            "holder",
            "why",
            "next fire",
            "last run",
            "last error",
        ],
        |l| {
            let last = l
                .last_run
                .as_ref()
                .map(|r| {
                    format!(
                        "{} {}",
                        r.state,
                        time_in(Some(r.started_at), l.zone.as_deref())
                    )
                })
                .unwrap_or_else(|| "-".into());
            vec![
                l.row.kind.clone(),
                l.row.name.clone(),
                l.row.job_name.clone(),
                l.row.state.clone(),
                or_dash(l.row.holder.as_deref()),
                l.placement.clone(),
                time_in(l.next_fire, l.zone.as_deref()),
                last,
                or_dash(l.row.last_error.as_deref()),
            ]
        },
    );
}

pub async fn runs(store: &Store, out: Output, job: Option<&str>, limit: i64) -> anyhow::Result<()> {
    let runs = store.runs(job, limit).await?;
    let headers = [
        "id",
        "job",
        "by",
        "fire time",
        "scheduler",
        "state",
        "try",
        "copied",
        "deleted",
        "bytes",
        "sent",
        "error",
    ];
    out.list(&runs, &headers, |r| {
        let by = r
            .schedule_name
            .clone()
            .or(r.monitor_name.clone())
            .unwrap_or_default();
        vec![
            r.id.to_string(),
            r.job_name.clone(),
            by,
            time(Some(r.fire_time)),
            or_dash(r.scheduler.as_deref()),
            r.state.clone(),
            r.attempt.to_string(),
            r.files_copied.to_string(),
            r.files_deleted.to_string(),
            human_bytes(r.bytes_total.max(0) as u64),
            human_bytes(r.bytes_sent.max(0) as u64),
            or_dash(r.error.as_deref()),
        ]
    });
    Ok(())
}

pub async fn tail(store: &Store, out: Output, follow: bool, lines: i64) -> anyhow::Result<()> {
    let mut after = store.event_id_before_last(lines.max(0)).await?;
    let mut notifications = if follow {
        store.notifications(Channel::Events).await?
    } else {
        None
    };
    loop {
        let events = store.events_after(after, 500).await?;
        for e in &events {
            match out {
                Output::Json => println!("{}", serde_json::to_string(e)?),
                Output::Table => {
                    let by = e.source_name.as_deref().unwrap_or("-");
                    let path = e
                        .path
                        .as_deref()
                        .map(|p| format!(" {p}:"))
                        .unwrap_or_default();
                    println!(
                        "{} {:5} {}/{} run {}{path} {}",
                        e.at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
                        e.level,
                        e.job_name,
                        by,
                        e.run_id,
                        e.message
                    );
                }
            }
            after = e.id;
        }
        if !follow {
            return Ok(());
        }
        if events.len() < 500 {
            // PostgreSQL wakes us on NOTIFY; SQLite (and a lost listener) polls.
            let poll = tokio::time::sleep(Duration::from_millis(250));
            match notifications.as_mut() {
                Some(listener) => {
                    tokio::select! {
                        _ = listener.recv() => {}
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
                None => poll.await,
            }
        }
    }
}

/// `ferry db status`: the schema beside this binary's, and who runs which version.
pub async fn db_status(store: &Store, out: Output, schema: SchemaState) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct DbStatus {
        #[serde(flatten)]
        schema: SchemaState,
        ferry: &'static str,
        schedulers: Vec<SchedulerRow>,
    }
    let status = DbStatus {
        schema,
        ferry: env!("CARGO_PKG_VERSION"),
        schedulers: store.schedulers().await?,
    };
    if out == Output::Json {
        out.one(&status);
        return Ok(());
    }
    let schema = &status.schema;
    println!(
        "schema version {} (this ferry {} has {}); binaries with schema {} or newer can use it",
        schema.database, status.ferry, schema.binary, schema.oldest_compatible
    );
    match schema.pending.as_slice() {
        [] => println!("nothing to migrate"),
        pending => println!("`ferry db migrate` would apply: {}", pending.join(", ")),
    }
    println!();
    out.list(&status.schedulers, &SCHEDULER_HEADERS, scheduler_line);
    Ok(())
}

pub async fn agent(store: &Store, out: Output, cmd: AgentCommand) -> anyhow::Result<()> {
    match cmd {
        AgentCommand::Add { name, address } => {
            if name.is_empty() || !address.contains(':') {
                return Err(invalid(
                    "--address",
                    format!("{address:?} is not HOST:PORT"),
                ));
            }
            store.add_agent(&name, &address).await?;
            let done = serde_json::json!({"done": "added", "kind": "agent", "name": name,
                "address": address});
            out.done(format!("added agent {name} at {address}"), done);
        }
        AgentCommand::Rm { name } => {
            store.remove_agent(&name).await?;
            let done = serde_json::json!({"done": "removed", "kind": "agent", "name": name});
            out.done(format!("removed agent {name}"), done);
        }
        AgentCommand::List { reach } => {
            let agents = store.agents().await?;
            let mut reports = Vec::new();
            for agent in &agents {
                let probe = match &reach.tls_dir {
                    Some(_) => Some(probe(&reach, &agent.name, &agent.address).await),
                    None => None,
                };
                reports.push(AgentReport::new(agent, probe));
            }
            let headers = [
                "name",
                "address",
                "added",
                "reachable",
                "version",
                "roots",
                "rtt",
            ];
            out.list(&reports, &headers, |r| {
                vec![
                    r.name.clone(),
                    r.address.clone(),
                    time(Some(r.added)),
                    match (&r.reachable, &r.error) {
                        (None, _) => "- (give --tls-dir)".into(),
                        (Some(true), _) => "yes".into(),
                        (Some(false), e) => format!("no: {}", e.as_deref().unwrap_or("?")),
                    },
                    or_dash(r.software.as_deref()),
                    r.roots.join(", "),
                    r.round_trip_ms
                        .map_or("-".into(), |ms| format!("{ms:.2} ms")),
                ]
            });
        }
        AgentCommand::Test { name, reach } => {
            let agents = store.agents().await?;
            let agent = agents.iter().find(|a| a.name == name).ok_or_else(|| {
                invalid(
                    "NAME",
                    format!("no agent named {name:?}; add it with `ferry agent add`"),
                )
            })?;
            if reach.tls_dir.is_none() {
                return Err(invalid("--tls-dir", "needed to authenticate to the agent"));
            }
            let report = AgentReport::new(
                agent,
                Some(probe(&reach, &agent.name, &agent.address).await),
            );
            if let Some(error) = &report.error {
                anyhow::bail!("{error}");
            }
            match out {
                Output::Json => out.one(&report),
                Output::Table => println!(
                    "agent {} at {}: authenticated, ferry-agent {}, roots {}, round trip {:.2} ms",
                    report.name,
                    report.address,
                    report.software.as_deref().unwrap_or("?"),
                    report.roots.join(", "),
                    report.round_trip_ms.unwrap_or_default()
                ),
            }
        }
    }
    Ok(())
}

/// An agent as `ferry agent list/test` show it.
#[derive(Serialize)]
struct AgentReport {
    name: String,
    address: String,
    added: chrono::DateTime<Utc>,
    /// `None` when not probed.
    reachable: Option<bool>,
    software: Option<String>,
    roots: Vec<String>,
    round_trip_ms: Option<f64>,
    error: Option<String>,
}

impl AgentReport {
    fn new(agent: &crate::store::AgentRow, probe: Option<anyhow::Result<(Session, f64)>>) -> Self {
        let mut report = Self {
            name: agent.name.clone(),
            address: agent.address.clone(),
            added: agent.created_at,
            reachable: probe.as_ref().map(|p| p.is_ok()),
            software: None,
            roots: Vec::new(),
            round_trip_ms: None,
            error: None,
        };
        match probe {
            Some(Ok((session, ms))) => {
                report.software = Some(session.software);
                report.roots = session.roots;
                report.round_trip_ms = Some(ms);
            }
            Some(Err(e)) => report.error = Some(format!("{e:#}")),
            None => {}
        }
        report
    }
}

/// Connects to an agent, authenticates, and times the median of five round trips.
async fn probe(reach: &Reach, agent: &str, address: &str) -> anyhow::Result<(Session, f64)> {
    let dir = reach
        .tls_dir
        .as_deref()
        .expect("probed only with --tls-dir");
    let me = reach
        .identity
        .clone()
        .unwrap_or_else(crate::lease::default_name);
    let dial = Dial {
        agent: agent.to_owned(),
        address: address.to_owned(),
        client: me.clone(),
        tls: ferry_wire::tls::client_config(dir, &me)?,
    };
    let attempt = async {
        let mut session = Session::connect(&dial, None, Default::default()).await?;
        let mut rtts = Vec::new();
        for _ in 0..5 {
            rtts.push(session.ping().await?);
        }
        rtts.sort();
        anyhow::Ok((session, rtts[rtts.len() / 2].as_secs_f64() * 1000.0))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .map_err(|_| anyhow::anyhow!("agent {agent} at {address} did not answer within 5 s"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(name: &str, alive: bool, stopped: bool) -> SchedulerRow {
        SchedulerRow {
            name: name.into(),
            instance_id: format!("{name}-1"),
            host: "h".into(),
            pid: 1,
            version: "0.1.0".into(),
            started_at: Utc::now(),
            heartbeat_at: Utc::now(),
            alive,
            stopped,
            leases: 0,
        }
    }

    fn line(kind: &str, name: &str, state: &str, last_run: Option<&str>) -> StatusLine {
        let run = last_run.map(|state| RunRow {
            id: 7,
            job_name: "docs".into(),
            schedule_name: Some(name.into()),
            monitor_name: None,
            fire_time: Utc::now(),
            trigger: "cron".into(),
            scheduler: Some("s1".into()),
            state: state.into(),
            attempt: 1,
            retry_at: None,
            started_at: Utc::now(),
            finished_at: Some(Utc::now()),
            files_copied: 0,
            files_deleted: 0,
            bytes_total: 0,
            bytes_sent: 0,
            error: Some("disk full".into()),
        });
        StatusLine {
            zone: None,
            row: StatusRow {
                kind: kind.into(),
                name: name.into(),
                job_name: "docs".into(),
                state: state.into(),
                holder: (state == "running" || state == "idle").then(|| "s1".into()),
                preferred: None,
                fallback_any: true,
                epoch: 1,
                last_error: None,
            },
            placement: "spread".into(),
            next_fire: None,
            last_run: run,
            overdue_since: None,
        }
    }

    fn check(schedulers: Vec<SchedulerRow>, definitions: Vec<StatusLine>) -> (u8, String) {
        health(&Status {
            schedulers,
            definitions,
        })
    }

    #[test]
    fn a_schedule_is_overdue_once_its_next_cron_time_is_two_minutes_past() {
        let nightly = CronSpec::parse("0 2 * * *", "UTC").unwrap();
        let at = |t: &str| t.parse::<chrono::DateTime<Utc>>().unwrap();
        let fired = at("2026-12-04T02:00:00Z");
        let due = at("2026-12-05T02:00:00Z");
        assert_eq!(
            overdue(&nightly, fired, at("2026-12-06T01:00:00Z")),
            Some(due)
        );
        assert_eq!(overdue(&nightly, fired, at("2026-12-05T02:01:00Z")), None);
        assert_eq!(overdue(&nightly, due, at("2026-12-05T12:00:00Z")), None);
    }

    #[test]
    fn a_check_warns_of_a_crashed_scheduler_and_a_failed_run_but_not_of_a_stopped_one() {
        let ok = check(
            vec![scheduler("s1", true, false), scheduler("old", false, true)],
            vec![line("schedule", "nightly", "idle", Some("succeeded"))],
        );
        assert_eq!(ok.0, 0, "{ok:?}");
        let crashed = check(
            vec![scheduler("s1", true, false), scheduler("s2", false, false)],
            vec![],
        );
        assert_eq!(crashed.0, 1);
        assert!(
            crashed.1.starts_with("WARNING: scheduler s2 is down"),
            "{crashed:?}"
        );
        let failed = check(
            vec![scheduler("s1", true, false)],
            vec![line("schedule", "nightly", "idle", Some("failed"))],
        );
        assert_eq!(
            failed,
            (
                1,
                "WARNING: the last run of schedule nightly failed: disk full".to_owned()
            )
        );
        let mut late = line("schedule", "nightly", "idle", Some("succeeded"));
        late.overdue_since = "2026-12-06T02:00:00Z".parse().ok();
        let overdue = check(vec![scheduler("s1", true, false)], vec![late]);
        assert_eq!(
            overdue,
            (
                1,
                "WARNING: schedule nightly is overdue: it was due at 2026-12-06 02:00:00 UTC and \
                 has not fired since"
                    .to_owned()
            )
        );
        let stuck = check(
            vec![scheduler("s1", true, false)],
            vec![line("monitor", "live", "waiting", None)],
        );
        assert_eq!(stuck.0, 2);
        assert!(
            stuck.1.starts_with("CRITICAL: monitor live is waiting"),
            "{stuck:?}"
        );
    }
}
