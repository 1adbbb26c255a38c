//! `ferry job dry-run NAME`: what a run of a mirror or a copy would do now, file by file,
//! without doing it. The engine scans and plans as a run does; nothing is written.

use std::collections::{BTreeMap, HashMap};

use ferry_engine::Halt;
use ferry_engine::run::Planned;
use serde::Serialize;

use super::output::Output;
use super::{Reach, invalid};
use crate::plan::definitions::{self, Remotes};
use crate::plan::run::human_bytes;
use crate::store::Store;

/// What a run would do, with its totals per destination.
#[derive(Serialize)]
struct DryRun {
    job: String,
    planned: Vec<Planned>,
    /// Per destination: how many of each `what`, and the bytes to copy.
    totals: BTreeMap<String, Totals>,
    /// Why a run would stop before deleting anything, if it would.
    stops: Option<String>,
}

#[derive(Default, Serialize)]
struct Totals {
    copy: u64,
    update: u64,
    delete: u64,
    other: u64,
    bytes: u64,
}

pub async fn dry_run(store: &Store, out: Output, name: &str, reach: &Reach) -> anyhow::Result<()> {
    let job = store.job(name).await?;
    let job = job.ok_or_else(|| invalid("NAME", format!("no job named {name:?}")))?;
    if job.rule == "sync" {
        let why = "the sync rule has no dry-run: what it does depends on what the last run \
                   agreed, which only a run may change";
        return Err(invalid("NAME", why));
    }
    let addresses: HashMap<String, String> = (store.agents().await?.into_iter())
        .map(|a| (a.name, a.address))
        .collect();
    let identity = match &reach.tls_dir {
        Some(dir) => {
            let me = (reach.identity.clone()).unwrap_or_else(crate::lease::default_name);
            Some((me.clone(), ferry_wire::tls::client_config(dir, &me)?))
        }
        None => None,
    };
    // Local folders are read here, with this user's rights: nothing is written.
    let remotes = Remotes {
        addresses,
        identity,
        allowed: vec!["/".into()],
        looks_only: true,
    };
    let execution = definitions::job_spec(&job, &remotes)
        .map_err(|problem| invalid("NAME", problem.to_string()))?;
    let spec = execution.spec;
    // Remote folders answer through this runtime: the engine waits for them on a thread of
    // its own.
    let planned =
        ferry_wire::blocking::spawn(move || ferry_engine::run::preview(&spec, &Halt::new()))
            .await??;
    let report = DryRun::new(name, planned, job.max_deletes);
    match out {
        Output::Json => out.one(&report),
        Output::Table => report.print(),
    }
    Ok(())
}

impl DryRun {
    fn new(job: &str, planned: Vec<Planned>, max_deletes: Option<i64>) -> Self {
        let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
        for item in &planned {
            let total = totals.entry(item.at.clone()).or_default();
            total.bytes += item.bytes;
            match item.what.as_str() {
                "copy" => total.copy += 1,
                "update" => total.update += 1,
                "delete" => total.delete += 1,
                _ => total.other += 1,
            }
        }
        let over = |(at, total): (&String, &Totals)| {
            let max = u64::try_from(max_deletes?).unwrap_or(0);
            (total.delete > max).then(|| {
                format!(
                    "a run would stop before deleting anything: {} deletions at {at}, more \
                     than --max-deletes {max}",
                    total.delete
                )
            })
        };
        let stops = totals.iter().find_map(over);
        Self {
            job: job.to_owned(),
            planned,
            totals,
            stops,
        }
    }

    fn print(&self) {
        Output::Table.list(&self.planned, &["at", "what", "path", "bytes"], |p| {
            vec![
                p.at.clone(),
                p.what.clone(),
                match p.path.as_os_str().is_empty() {
                    true => ".".into(),
                    false => p.path.display().to_string(),
                },
                match p.bytes {
                    0 => "-".into(),
                    bytes => human_bytes(bytes),
                },
            ]
        });
        if self.planned.is_empty() {
            println!("job {}: a run would change nothing", self.job);
        }
        for (at, t) in &self.totals {
            println!(
                "{at}: would copy {} and update {} files ({}), delete {}, and {} more changes",
                t.copy,
                t.update,
                human_bytes(t.bytes),
                t.delete,
                t.other
            );
        }
        if let Some(stops) = &self.stops {
            println!("{stops}");
        }
    }
}
