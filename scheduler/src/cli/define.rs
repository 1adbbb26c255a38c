//! `ferry job|schedule|monitor …`: definitions, checked here with the same rules the scheduler
//! applies to rows written by SQL.

use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use ferry_engine::meta::Keep;
use serde_json::json;

use super::edit;
use super::output::{or_dash, time_in};
use super::{
    JobAdd, JobCommand, JobSet, MonitorAdd, MonitorCommand, MonitorSet, Output, PlacementArgs,
    PlacementSet, ScheduleAdd, ScheduleCommand, ScheduleSet, invalid,
};
use crate::plan::cron::CronSpec;
use crate::plan::definitions::{self, JobField, Place};
use crate::plan::firing::Misfire;
use crate::plan::run::human_bytes;
use crate::store::{Cancel, JobRow, MonitorRow, ResourceKind, RunRow, ScheduleRow, Store};

pub async fn job(store: &Store, out: Output, cmd: JobCommand) -> anyhow::Result<()> {
    match cmd {
        JobCommand::Add(args) => add_job(store, out, args).await,
        JobCommand::Set(args) => set_job(store, out, args).await,
        JobCommand::Edit { name } => edit_job(store, out, &name).await,
        JobCommand::DryRun { name, reach } => {
            super::preview::dry_run(store, out, &name, &reach).await
        }
        JobCommand::List => {
            let jobs = store.jobs().await?;
            out.list(
                &jobs,
                &["name", "rule", "source", "destinations", "filters"],
                |j| {
                    let filters: Vec<String> = j
                        .include
                        .iter()
                        .map(|g| format!("+{g}"))
                        .chain(j.exclude.iter().map(|g| format!("-{g}")))
                        .collect();
                    vec![
                        j.name.clone(),
                        j.rule.clone(),
                        j.source.clone(),
                        j.destinations.join(", "),
                        filters.join(" "),
                    ]
                },
            );
            Ok(())
        }
        JobCommand::Show { name } => {
            out.one(&find_job(store, &name).await?);
            Ok(())
        }
        JobCommand::Rm { name } => {
            store.remove_job(&name).await?;
            let done = json!({"done": "removed", "kind": "job", "name": name});
            out.done(format!("removed job {name}"), done);
            Ok(())
        }
    }
}

async fn add_job(store: &Store, out: Output, args: JobAdd) -> anyhow::Result<()> {
    let allow_missing_source = args.allow_missing_source;
    let mut exclude = args.exclude;
    exclude.extend(patterns_from(&args.exclude_from)?);
    let row = JobRow {
        name: args.name,
        rule: args.rule,
        source: args.source,
        destinations: args.destinations,
        include: args.include,
        exclude,
        max_deletes: args.max_deletes,
        versions_dir: args.versions_dir,
        checksum: args.checksum,
        keep: Keep {
            owner: !args.no_owner,
            acls: !args.no_acls,
            xattrs: !args.no_xattrs,
            hard_links: !args.no_hard_links,
            specials: args.specials,
            numeric_ids: args.numeric_ids,
        },
        on_failure: args.on_failure,
    };
    check_name("job", &row.name)?;
    check_job_row(store, &row, allow_missing_source).await?;
    store.add_job(&row).await?;
    let sentence = format!(
        "added job {} ({} {} -> {})",
        row.name,
        row.rule,
        row.source,
        row.destinations.join(", ")
    );
    out.done(
        sentence,
        json!({"done": "added", "kind": "job", "job": row}),
    );
    Ok(())
}

/// `ferry job set`: the job with the flags given replacing its values, checked as `add` does.
async fn set_job(store: &Store, out: Output, args: JobSet) -> anyhow::Result<()> {
    let before = find_job(store, &args.name).await?;
    let mut row = before.clone();
    replace(&mut row.rule, args.rule);
    replace(&mut row.source, args.source);
    replace_list(&mut row.destinations, args.destinations);
    if args.no_filters {
        (row.include, row.exclude) = (vec![], vec![]);
    }
    replace_list(&mut row.include, args.include);
    let mut exclude = args.exclude;
    exclude.extend(patterns_from(&args.exclude_from)?);
    replace_list(&mut row.exclude, exclude);
    replace_or_clear(&mut row.max_deletes, args.max_deletes, args.no_max_deletes);
    replace_or_clear(&mut row.versions_dir, args.versions_dir, args.no_versions);
    replace_or_clear(&mut row.on_failure, args.on_failure, args.no_on_failure);
    replace(&mut row.checksum, args.checksum);
    check_job_row(store, &row, args.allow_missing_source).await?;
    keep_sync_replicas(&before, &row)?;
    store.replace_job(&row).await?;
    print_changes(out, "job", &row.name, (&before, &row))
}

/// Refuses to move a sync job's replicas (or to make a job sync or stop being one). Its base,
/// what the replicas last agreed on, is kept at the source under the job's name: a replica
/// changed under it would read as one where everything the base lists was deleted, and the
/// next run would delete those files everywhere.
fn keep_sync_replicas(before: &JobRow, after: &JobRow) -> anyhow::Result<()> {
    let sync = |job: &JobRow| job.rule == "sync";
    let moved = before.source != after.source || before.destinations != after.destinations;
    if (sync(before) || sync(after)) && (moved || before.rule != after.rule) {
        let why = format!(
            "job {} syncs both ways from what its replicas last agreed on: changing its rule or \
             its folders would turn files missing from a new folder into deletions everywhere; \
             make a new job (another name) for the new folders instead",
            after.name
        );
        return Err(invalid("--rule/--from/--to", why));
    }
    Ok(())
}

async fn edit_job(store: &Store, out: Output, name: &str) -> anyhow::Result<()> {
    let before = find_job(store, name).await?;
    let Some(view) = edit::in_editor("job", name, &edit::JobView::of(&before))? else {
        return print_changes(out, "job", name, (&before, &before));
    };
    let mut row = before.clone();
    view.apply(&mut row);
    // A source accepted before stays accepted, whether or not this machine has it.
    check_job_row(store, &row, row.source == before.source).await?;
    keep_sync_replicas(&before, &row)?;
    store.replace_job(&row).await?;
    print_changes(out, "job", name, (&before, &row))
}

/// Checks a job's row as the scheduler will, and what only this machine can tell: that its
/// agents are known and its local source is there.
async fn check_job_row(
    store: &Store,
    row: &JobRow,
    allow_missing_source: bool,
) -> anyhow::Result<()> {
    let checked = definitions::check_job(row).map_err(|problem| {
        let flag = match problem.field {
            JobField::Rule => "--rule",
            JobField::Source => "--from",
            JobField::Destination => "--to",
            JobField::Filter => "--include/--exclude",
            JobField::Guards => "--max-deletes/--versions",
            JobField::OnFailure => "--on-failure",
        };
        invalid(flag, problem.to_string())
    })?;
    let agents: Vec<String> = store.agents().await?.into_iter().map(|a| a.name).collect();
    let places = std::iter::once(("--from", &checked.source))
        .chain(checked.destinations.iter().map(|p| ("--to", p)));
    for (flag, place) in places {
        if let Place::Agent { agent, .. } = place
            && !agents.contains(agent)
        {
            let message = format!(
                "agent {agent:?} is not known; add it first with `ferry agent add {agent} --address HOST:PORT`"
            );
            return Err(invalid(flag, message));
        }
    }
    let local_source = matches!(checked.source, Place::Local(_));
    if local_source && !allow_missing_source && !std::path::Path::new(&row.source).is_dir() {
        let message = format!(
            "source folder {} does not exist on this machine; create it, or pass \
             --allow-missing-source if it exists only where the schedulers run",
            row.source
        );
        return Err(invalid("--from", message));
    }
    Ok(())
}

async fn find_job(store: &Store, name: &str) -> anyhow::Result<JobRow> {
    let job = store.job(name).await?;
    job.ok_or_else(|| invalid("job", format!("no job named {name:?}")))
}

/// The patterns of ignore files (`--exclude-from`): one a line, as in .gitignore, blank lines
/// and `#` comments skipped.
fn patterns_from(files: &[std::path::PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut patterns = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .map_err(|e| invalid("--exclude-from", format!("{}: {e}", file.display())))?;
        for (number, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('!') {
                let why = format!(
                    "{}:{}: {line:?}: taking back an exclusion with ! is not supported; \
                     name what to keep with --include",
                    file.display(),
                    number + 1
                );
                return Err(invalid("--exclude-from", why));
            }
            patterns.push(line.to_owned());
        }
    }
    Ok(patterns)
}

/// `slot` takes `value` when one was given.
fn replace<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// `slot` takes `value` when one was given, or nothing when `clear`.
fn replace_or_clear<T>(slot: &mut Option<T>, value: Option<T>, clear: bool) {
    if clear {
        *slot = None;
    }
    if value.is_some() {
        *slot = value;
    }
}

/// A list flag given replaces the whole list.
fn replace_list(slot: &mut Vec<String>, values: Vec<String>) {
    if !values.is_empty() {
        *slot = values;
    }
}

/// Says what `set` changed, field by field, or that nothing did.
fn print_changes<T: serde::Serialize>(
    out: Output,
    what: &str,
    name: &str,
    (before, after): (&T, &T),
) -> anyhow::Result<()> {
    let (before, after) = (serde_json::to_value(before)?, serde_json::to_value(after)?);
    let (Some(before), Some(after)) = (before.as_object(), after.as_object()) else {
        return Ok(());
    };
    let changed: serde_json::Map<String, serde_json::Value> = after
        .iter()
        .filter(|(field, value)| before.get(*field) != Some(value))
        .map(|(field, value)| {
            let was = before.get(field).cloned().unwrap_or_default();
            (field.clone(), json!({"from": was, "to": value}))
        })
        .collect();
    let sentence = match changed.is_empty() {
        true => format!("{what} {name} unchanged"),
        false => {
            let each =
                (changed.iter()).map(|(field, c)| format!("{field} {} -> {}", c["from"], c["to"]));
            format!(
                "changed {what} {name}: {}",
                each.collect::<Vec<_>>().join(", ")
            )
        }
    };
    let done = json!({"done": "changed", "kind": what, "name": name, "changes": changed});
    out.done(sentence, done);
    Ok(())
}

pub async fn schedule(
    store: &Store,
    out: Output,
    cmd: ScheduleCommand,
    utc: bool,
) -> anyhow::Result<()> {
    match cmd {
        ScheduleCommand::Add(args) => add_schedule(store, out, args).await,
        ScheduleCommand::Set(args) => set_schedule(store, out, args).await,
        ScheduleCommand::Edit { name } => edit_schedule(store, out, &name).await,
        ScheduleCommand::List => {
            let schedules = store.schedules().await?;
            out.list(
                &schedules,
                &[
                    "name", "job", "cron", "tz", "prefer", "held", "next", "error",
                ],
                |s| {
                    let next = CronSpec::parse(&s.cron, &s.timezone)
                        .ok()
                        .and_then(|c| c.next_after(Utc::now()));
                    let zone = (!utc).then_some(s.timezone.as_str());
                    vec![
                        s.name.clone(),
                        s.job_name.clone(),
                        s.cron.clone(),
                        s.timezone.clone(),
                        or_dash(s.preferred.as_deref()),
                        s.held.to_string(),
                        time_in(next, zone),
                        or_dash(s.last_error.as_deref()),
                    ]
                },
            );
            Ok(())
        }
        ScheduleCommand::Show { name } => {
            let schedule = find_schedule(store, &name).await?;
            out.one(&schedule);
            Ok(())
        }
        ScheduleCommand::Rm { name } => remove(store, out, ResourceKind::Schedule, &name).await,
        ScheduleCommand::Hold { name } => {
            hold(store, out, (ResourceKind::Schedule, &name), true).await
        }
        ScheduleCommand::Release { name } => {
            hold(store, out, (ResourceKind::Schedule, &name), false).await
        }
        ScheduleCommand::Run {
            name,
            wait,
            timeout,
        } => run_now(store, out, &name, wait.then_some(timeout)).await,
    }
}

async fn add_schedule(store: &Store, out: Output, args: ScheduleAdd) -> anyhow::Result<()> {
    check_name("schedule", &args.name)?;
    let PlacementArgs {
        preferred,
        no_fallback,
        held,
    } = args.placement;
    let row = ScheduleRow {
        name: args.name,
        job_name: args.job,
        cron: args.cron,
        timezone: args.tz,
        preferred,
        fallback_any: !no_fallback,
        held,
        retries: args.retries,
        retry_delay_ms: millis(args.retry_delay),
        misfire: args.misfire,
        run_requested_at: None,
        fired_until: None,
        last_error: None,
        created_at: Utc::now(),
    };
    check_schedule(store, &row).await?;
    store.add_schedule(&row).await?;
    let sentence = format!(
        "added schedule {} (job {}, cron {:?} {})",
        row.name, row.job_name, row.cron, row.timezone
    );
    out.done(
        sentence,
        json!({"done": "added", "kind": "schedule", "schedule": row}),
    );
    Ok(())
}

async fn set_schedule(store: &Store, out: Output, args: ScheduleSet) -> anyhow::Result<()> {
    let before = find_schedule(store, &args.name).await?;
    let mut row = before.clone();
    replace(&mut row.job_name, args.job);
    replace(&mut row.cron, args.cron);
    replace(&mut row.timezone, args.tz);
    set_placement(&mut row.preferred, &mut row.fallback_any, args.placement);
    replace(&mut row.retries, args.retries);
    replace(&mut row.retry_delay_ms, args.retry_delay.map(millis));
    replace(&mut row.misfire, args.misfire);
    check_schedule(store, &row).await?;
    store.update_schedule(&row).await?;
    print_changes(out, "schedule", &row.name, (&before, &row))
}

async fn edit_schedule(store: &Store, out: Output, name: &str) -> anyhow::Result<()> {
    let before = find_schedule(store, name).await?;
    let Some(view) = edit::in_editor("schedule", name, &edit::ScheduleView::of(&before))? else {
        return print_changes(out, "schedule", name, (&before, &before));
    };
    let mut row = before.clone();
    view.apply(&mut row);
    check_schedule(store, &row).await?;
    store.update_schedule(&row).await?;
    print_changes(out, "schedule", name, (&before, &row))
}

/// Checks a schedule's cron and time zone, misfire policy, retries and job.
async fn check_schedule(store: &Store, row: &ScheduleRow) -> anyhow::Result<()> {
    CronSpec::parse(&row.cron, &row.timezone).map_err(|e| {
        let flag = if e.contains("time zone") {
            "--tz"
        } else {
            "--cron"
        };
        invalid(flag, e)
    })?;
    row.misfire
        .parse::<Misfire>()
        .map_err(|e| invalid("--misfire", e))?;
    if row.retries < 0 {
        return Err(invalid("--retries", "must be 0 or more"));
    }
    require_job(store, &row.job_name).await
}

fn set_placement(preferred: &mut Option<String>, fallback_any: &mut bool, change: PlacementSet) {
    replace_or_clear(preferred, change.preferred, change.no_prefer);
    if change.fallback || change.no_fallback {
        *fallback_any = change.fallback;
    }
}

async fn find_schedule(store: &Store, name: &str) -> anyhow::Result<ScheduleRow> {
    store
        .schedules()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| invalid("schedule", format!("no schedule named {name:?}")))
}

pub async fn monitor(store: &Store, out: Output, cmd: MonitorCommand) -> anyhow::Result<()> {
    match cmd {
        MonitorCommand::Add(args) => add_monitor(store, out, args).await,
        MonitorCommand::Set(args) => set_monitor(store, out, args).await,
        MonitorCommand::Edit { name } => edit_monitor(store, out, &name).await,
        MonitorCommand::List => {
            let monitors = store.monitors().await?;
            out.list(
                &monitors,
                &[
                    "name", "job", "prefer", "held", "debounce", "rescan", "error",
                ],
                |m| {
                    vec![
                        m.name.clone(),
                        m.job_name.clone(),
                        or_dash(m.preferred.as_deref()),
                        m.held.to_string(),
                        format!("{}ms", m.debounce_ms),
                        humantime::format_duration(Duration::from_millis(m.rescan_ms as u64))
                            .to_string(),
                        or_dash(m.last_error.as_deref()),
                    ]
                },
            );
            Ok(())
        }
        MonitorCommand::Show { name } => {
            out.one(&find_monitor(store, &name).await?);
            Ok(())
        }
        MonitorCommand::Rm { name } => remove(store, out, ResourceKind::Monitor, &name).await,
        MonitorCommand::Hold { name } => {
            hold(store, out, (ResourceKind::Monitor, &name), true).await
        }
        MonitorCommand::Release { name } => {
            hold(store, out, (ResourceKind::Monitor, &name), false).await
        }
    }
}

async fn add_monitor(store: &Store, out: Output, args: MonitorAdd) -> anyhow::Result<()> {
    check_name("monitor", &args.name)?;
    let PlacementArgs {
        preferred,
        no_fallback,
        held,
    } = args.placement;
    let row = MonitorRow {
        name: args.name,
        job_name: args.job,
        preferred,
        fallback_any: !no_fallback,
        held,
        debounce_ms: millis(args.debounce),
        rescan_ms: millis(args.rescan),
        last_error: None,
        created_at: Utc::now(),
    };
    check_monitor(store, &row).await?;
    store.add_monitor(&row).await?;
    let sentence = format!("added monitor {} (job {})", row.name, row.job_name);
    out.done(
        sentence,
        json!({"done": "added", "kind": "monitor", "monitor": row}),
    );
    Ok(())
}

async fn find_monitor(store: &Store, name: &str) -> anyhow::Result<MonitorRow> {
    let monitor = store.monitors().await?.into_iter().find(|m| m.name == name);
    monitor.ok_or_else(|| invalid("monitor", format!("no monitor named {name:?}")))
}

async fn edit_monitor(store: &Store, out: Output, name: &str) -> anyhow::Result<()> {
    let before = find_monitor(store, name).await?;
    let Some(view) = edit::in_editor("monitor", name, &edit::MonitorView::of(&before))? else {
        return print_changes(out, "monitor", name, (&before, &before));
    };
    let mut row = before.clone();
    view.apply(&mut row);
    check_monitor(store, &row).await?;
    store.update_monitor(&row).await?;
    print_changes(out, "monitor", name, (&before, &row))
}

async fn set_monitor(store: &Store, out: Output, args: MonitorSet) -> anyhow::Result<()> {
    let before = find_monitor(store, &args.name).await?;
    let mut row = before.clone();
    replace(&mut row.job_name, args.job);
    set_placement(&mut row.preferred, &mut row.fallback_any, args.placement);
    replace(&mut row.debounce_ms, args.debounce.map(millis));
    replace(&mut row.rescan_ms, args.rescan.map(millis));
    check_monitor(store, &row).await?;
    store.update_monitor(&row).await?;
    print_changes(out, "monitor", &row.name, (&before, &row))
}

async fn check_monitor(store: &Store, row: &MonitorRow) -> anyhow::Result<()> {
    if row.rescan_ms <= 0 {
        return Err(invalid("--rescan", "must be greater than zero"));
    }
    require_job(store, &row.job_name).await
}

async fn require_job(store: &Store, job: &str) -> anyhow::Result<()> {
    if store.job(job).await?.is_none() {
        return Err(invalid(
            "--job",
            format!("no job named {job:?}; create it with `ferry job add {job} …`"),
        ));
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    if name.trim().is_empty() || name.contains(char::is_control) {
        return Err(invalid(what, format!("{name:?} is not a usable name")));
    }
    Ok(())
}

async fn remove(store: &Store, out: Output, kind: ResourceKind, name: &str) -> anyhow::Result<()> {
    store.remove(kind, name).await?;
    let done = json!({"done": "removed", "kind": kind, "name": name});
    out.done(format!("removed {kind} {name}"), done);
    Ok(())
}

async fn hold(
    store: &Store,
    out: Output,
    (kind, name): (ResourceKind, &str),
    held: bool,
) -> anyhow::Result<()> {
    store.set_held(kind, name, held).await?;
    let (done, sentence) = match held {
        true => ("held", "held: it will not run until released"),
        false => ("released", "released"),
    };
    let json = json!({"done": done, "kind": kind, "name": name});
    out.done(format!("{kind} {name} {sentence}"), json);
    Ok(())
}

/// `ferry run cancel ID [--wait]`.
pub async fn cancel(store: &Store, out: Output, id: i64, wait: bool) -> anyhow::Result<()> {
    match store.request_cancel(id).await? {
        Cancel::Asked if !wait => out.done(
            format!("asked the scheduler running run {id} to cancel it"),
            json!({"done": "cancel asked", "run": id}),
        ),
        Cancel::Asked => eprintln!("asked the scheduler running run {id} to cancel it"),
        Cancel::RetryDropped => out.done(
            format!("cancelled run {id}: it will not be retried"),
            json!({"done": "cancelled", "run": id}),
        ),
        Cancel::Not(run) if run.monitor_name.is_some() => {
            let monitor = run.monitor_name.unwrap_or_default();
            let why = format!(
                "run {id} is monitor {monitor}'s: hold the monitor instead (`ferry monitor hold {monitor}`)"
            );
            return Err(invalid("ID", why));
        }
        Cancel::Not(run) => {
            return Err(invalid(
                "ID",
                format!("run {id} has already ended ({})", run.state),
            ));
        }
    }
    if !wait {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let run = store.run(id).await?.context("the run vanished")?;
        if run.state != "running" {
            out.one(&run);
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "run {id} is still running a minute later: is its scheduler alive (`ferry status`)?"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `ferry schedule run NAME [--wait]`.
/// Asks for a run of schedule `name`, and with `wait` waits for its end (at most the timeout
/// it holds, if any) and prints it.
async fn run_now(
    store: &Store,
    out: Output,
    name: &str,
    wait: Option<Option<Duration>>,
) -> anyhow::Result<()> {
    let requested = store.request_run(name).await?;
    eprintln!("asked the scheduler holding {name} to run it now");
    let Some(timeout) = wait else {
        return Ok(());
    };
    let waiting = wait_for_run(store, name, requested);
    let run = match timeout {
        None => waiting.await?,
        Some(limit) => tokio::time::timeout(limit, waiting).await.map_err(|_| {
            anyhow::anyhow!(
                "gave up waiting for {name} after {}; the run goes on once a scheduler takes it \
                 (`ferry runs` shows it)",
                humantime::format_duration(limit)
            )
        })??,
    };
    out.one(&run);
    if run.state == "succeeded" {
        Ok(())
    } else {
        anyhow::bail!(
            "run {} of {name} {}: {}",
            run.id,
            run.state,
            run.error.unwrap_or_default()
        )
    }
}

async fn wait_for_run(
    store: &Store,
    name: &str,
    requested: chrono::DateTime<Utc>,
) -> anyhow::Result<RunRow> {
    let started = std::time::Instant::now();
    let mut warned = false;
    let progress = Progress::on_terminal();
    loop {
        let run = store
            .run_for(name, requested)
            .await
            .context("reading the run")?;
        match run {
            Some(run) if run.state != "running" && run.retry_at.is_none() => return Ok(run),
            Some(run) => progress.show(&run),
            None if !warned && started.elapsed() > Duration::from_secs(5) => {
                warned = true;
                let alive = store.schedulers().await?.iter().any(|s| s.alive);
                match alive {
                    false => eprintln!(
                        "still waiting: no scheduler is running to take {name}; start one with \
                         `ferry scheduler run` (or give up with --timeout)"
                    ),
                    true => eprintln!(
                        "still waiting: no scheduler has picked up {name}; is the schedule held, \
                         or its job waiting (`ferry status`)?"
                    ),
                }
            }
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What `--wait` shows while a run goes, when its output is a terminal: the run's counters,
/// as its scheduler writes them (every 2 s), and the rate since the wait began.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn on_terminal() -> Self {
        use std::io::IsTerminal;
        let bar = std::io::stdout().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            let style = indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.set_message("waiting for a scheduler to start the run");
            bar
        });
        Self { bar }
    }

    fn show(&self, run: &RunRow) {
        let Some(bar) = &self.bar else {
            return;
        };
        let seconds = bar.elapsed().as_secs_f64().max(0.001);
        let rate = human_bytes((run.bytes_total as f64 / seconds) as u64);
        bar.set_message(format!(
            "run {} on {}, attempt {}: {} files copied, {} deleted, {} ({rate}/s)",
            run.id,
            run.scheduler.as_deref().unwrap_or("?"),
            run.attempt,
            run.files_copied,
            run.files_deleted,
            human_bytes(run.bytes_total as u64),
        ));
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
