//! `ferry job|schedule|monitor edit NAME`: the definition as TOML in `$VISUAL` or `$EDITOR`,
//! checked as `set` checks it once the editor exits, and written only if it passes. Only what
//! a user defines is in the file: a schedule's cursor, requests and errors are the
//! schedulers'.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::invalid;
use crate::store::{JobRow, MonitorRow, ScheduleRow};
use ferry_engine::meta::Keep;

/// What `ferry job edit` shows of a job.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobView {
    rule: String,
    source: String,
    destinations: Vec<String>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    max_deletes: Option<i64>,
    versions_dir: Option<String>,
    #[serde(default)]
    checksum: bool,
    on_failure: Option<String>,
    keep: Keep,
}

impl JobView {
    pub fn of(row: &JobRow) -> Self {
        Self {
            rule: row.rule.clone(),
            source: row.source.clone(),
            destinations: row.destinations.clone(),
            include: row.include.clone(),
            exclude: row.exclude.clone(),
            max_deletes: row.max_deletes,
            versions_dir: row.versions_dir.clone(),
            checksum: row.checksum,
            on_failure: row.on_failure.clone(),
            keep: row.keep,
        }
    }

    pub fn apply(self, row: &mut JobRow) {
        (row.rule, row.source, row.destinations) = (self.rule, self.source, self.destinations);
        (row.include, row.exclude) = (self.include, self.exclude);
        (row.max_deletes, row.versions_dir) = (self.max_deletes, self.versions_dir);
        (row.checksum, row.on_failure, row.keep) = (self.checksum, self.on_failure, self.keep);
    }
}

/// What `ferry schedule edit` shows of a schedule.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleView {
    job: String,
    cron: String,
    timezone: String,
    preferred: Option<String>,
    fallback_any: bool,
    retries: i32,
    #[serde(with = "humantime_serde")]
    retry_delay: Duration,
    misfire: String,
}

impl ScheduleView {
    pub fn of(row: &ScheduleRow) -> Self {
        Self {
            job: row.job_name.clone(),
            cron: row.cron.clone(),
            timezone: row.timezone.clone(),
            preferred: row.preferred.clone(),
            fallback_any: row.fallback_any,
            retries: row.retries,
            retry_delay: Duration::from_millis(row.retry_delay_ms.max(0) as u64),
            misfire: row.misfire.clone(),
        }
    }

    pub fn apply(self, row: &mut ScheduleRow) {
        (row.job_name, row.cron, row.timezone) = (self.job, self.cron, self.timezone);
        (row.preferred, row.fallback_any) = (self.preferred, self.fallback_any);
        row.retries = self.retries;
        row.retry_delay_ms = i64::try_from(self.retry_delay.as_millis()).unwrap_or(i64::MAX);
        row.misfire = self.misfire;
    }
}

/// What `ferry monitor edit` shows of a monitor.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorView {
    job: String,
    preferred: Option<String>,
    fallback_any: bool,
    #[serde(with = "humantime_serde")]
    debounce: Duration,
    #[serde(with = "humantime_serde")]
    rescan: Duration,
}

impl MonitorView {
    pub fn of(row: &MonitorRow) -> Self {
        let ms = |ms: i64| Duration::from_millis(ms.max(0) as u64);
        Self {
            job: row.job_name.clone(),
            preferred: row.preferred.clone(),
            fallback_any: row.fallback_any,
            debounce: ms(row.debounce_ms),
            rescan: ms(row.rescan_ms),
        }
    }

    pub fn apply(self, row: &mut MonitorRow) {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        (row.job_name, row.preferred) = (self.job, self.preferred);
        row.fallback_any = self.fallback_any;
        (row.debounce_ms, row.rescan_ms) = (ms(self.debounce), ms(self.rescan));
    }
}

/// Opens `view` of `what` `name` in the user's editor and reads it back; `None` when it was
/// left as it was. A file that does not read is an error that names the line, and the edit is
/// kept for another try.
pub fn in_editor<T: Serialize + DeserializeOwned>(
    what: &str,
    name: &str,
    view: &T,
) -> anyhow::Result<Option<T>> {
    let text = format!(
        "# {what} {name}: change what you need, save and quit; an optional line left out is \
         cleared.\n# Checked as `ferry {what} set` checks it before anything is written.\n{}",
        toml::to_string(view)?
    );
    let mut file = tempfile::Builder::new()
        .prefix(&format!("ferry-{what}-"))
        .suffix(".toml")
        .tempfile()?;
    file.write_all(text.as_bytes())?;
    run_editor(file.path())?;
    let edited = std::fs::read_to_string(file.path())?;
    if edited == text {
        return Ok(None);
    }
    match toml::from_str(&edited) {
        Ok(view) => Ok(Some(view)),
        Err(e) => {
            let (_, kept) = file.keep()?;
            let why = format!("{e}your edit is kept in {}", kept.display());
            Err(invalid("edit", why))
        }
    }
}

fn run_editor(path: &Path) -> anyhow::Result<()> {
    let editor = (std::env::var("VISUAL").ok())
        .or_else(|| std::env::var("EDITOR").ok())
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| "vi".to_owned());
    // Like git, the editor is a shell word list: `code --wait` works.
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("{editor} \"$1\""), "sh"])
        .arg(path)
        .status()
        .map_err(|e| anyhow::anyhow!("starting the editor {editor:?}: {e}"))?;
    if !status.success() {
        anyhow::bail!("the editor {editor:?} exited with {status}; nothing changed");
    }
    Ok(())
}
