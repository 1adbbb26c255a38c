//! `--on-failure`: what the scheduler that held a run does once the run has failed for good
//! (its retries spent): POST the run as JSON to a webhook, or run a program from the
//! scheduler's hook folder with the run as JSON on its standard input.
//!
//! Whoever can write a job row names its hook, so a row can name only a program the
//! scheduler's administrator put in the hook folder, never a command line, and a webhook gets
//! nothing but the run's JSON.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// How long a hook may take before it is given up (and a program killed).
const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// A program in the scheduler's hook folder, by name.
    Program(String),
    /// An http:// or https:// URL.
    Webhook(String),
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hook::Program(name) | Hook::Webhook(name) => f.write_str(name),
        }
    }
}

impl Hook {
    /// Reads a job's `on_failure`, saying what is wrong with it.
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.starts_with("http://") || value.starts_with("https://") {
            url::Url::parse(value).map_err(|e| format!("{value:?} is not a URL: {e}"))?;
            return Ok(Hook::Webhook(value.to_owned()));
        }
        let is_name = !value.is_empty()
            && value.len() <= 255
            && !value.starts_with('.')
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !is_name {
            return Err(format!(
                "{value:?} is neither an http(s):// URL nor the name of a program in the \
                 scheduler's hook folder (letters, digits, '.', '_', '-')"
            ));
        }
        Ok(Hook::Program(value.to_owned()))
    }

    /// Calls the hook with `run` (a run row as JSON); `hook_dir` is where programs are.
    pub async fn call(
        &self,
        hook_dir: Option<&Path>,
        run: &serde_json::Value,
    ) -> Result<(), String> {
        let body = serde_json::to_vec(run).map_err(|e| e.to_string())?;
        match self {
            Hook::Webhook(url) => post(url.clone(), body).await,
            Hook::Program(name) => {
                let dir = hook_dir.ok_or_else(|| {
                    format!("this scheduler has no hook folder (--hook-dir) to find {name} in")
                })?;
                run_program(&program_in(dir, name)?, run, &body).await
            }
        }
    }
}

/// The program `name` in `dir`, if it is a regular file there: a symlink that leads out of
/// the folder is not followed out of it.
fn program_in(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let program = dir.join(name);
    let real =
        std::fs::canonicalize(&program).map_err(|e| format!("{}: {e}", program.display()))?;
    let dir = std::fs::canonicalize(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if real.parent() != Some(dir.as_path()) || !real.is_file() {
        let why = format!("{} is not a program in the hook folder", program.display());
        return Err(why);
    }
    Ok(real)
}

async fn run_program(program: &Path, run: &serde_json::Value, body: &[u8]) -> Result<(), String> {
    let text = |key: &str| {
        run.get(key)
            .map(|v| v.as_str().map_or(v.to_string(), str::to_owned))
    };
    // A hook gets the run, not the scheduler's environment: FERRY_DB holds a password.
    let mut child = tokio::process::Command::new(program)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("FERRY_JOB", text("job_name").unwrap_or_default())
        .env("FERRY_RUN_ID", text("id").unwrap_or_default())
        .env("FERRY_STATE", text("state").unwrap_or_default())
        .env("FERRY_ERROR", text("error").unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    let stdin = child.stdin.take();
    let finished = async move {
        if let Some(mut stdin) = stdin {
            // A program that does not read its input still runs: a broken pipe is no failure.
            let _ = stdin.write_all(body).await;
        }
        child.wait_with_output().await
    };
    // The whole call has the deadline, its input included; past it the program is killed.
    let output = tokio::time::timeout(DEADLINE, finished)
        .await
        .map_err(|_| {
            format!(
                "{} did not end within {DEADLINE:?}; killed",
                program.display()
            )
        })?
        .map_err(|e| format!("{}: {e}", program.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&output.stderr[..output.stderr.len().min(4096)]);
    let said = said.lines().next().unwrap_or("").trim();
    Err(format!("{} {}: {said}", program.display(), output.status))
}

async fn post(url: String, body: Vec<u8>) -> Result<(), String> {
    let posted = tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(DEADLINE))
            .max_redirects(0)
            .build()
            .into();
        agent
            .post(&url)
            .header("Content-Type", "application/json")
            .send(&body[..])
            .map(drop)
            .map_err(|e| {
                // The details (which address refused, and how) go to the log: events are read
                // by whoever reads the database, and must not map the network for them.
                tracing::warn!(url, error = %e, "the on_failure webhook failed");
                match e {
                    ureq::Error::StatusCode(code) => format!("the webhook answered {code}"),
                    _ => "the webhook could not be reached (the scheduler's log says why)".into(),
                }
            })
    });
    posted.await.map_err(|e| e.to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_program_is_a_file_in_the_hook_folder_not_a_link_out_of_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("page"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/bin/sh", dir.path().join("shell")).unwrap();
        std::fs::create_dir(dir.path().join("folder")).unwrap();
        assert!(program_in(dir.path(), "page").is_ok());
        for refused in ["shell", "folder", "missing"] {
            assert!(
                program_in(dir.path(), refused).is_err(),
                "{refused} was taken"
            );
        }
    }

    #[test]
    fn a_hook_is_a_url_or_a_plain_program_name_never_a_path_or_a_command() {
        assert_eq!(
            Hook::parse("https://hooks.example.com/ferry"),
            Ok(Hook::Webhook("https://hooks.example.com/ferry".into()))
        );
        assert_eq!(
            Hook::parse("page-oncall"),
            Ok(Hook::Program("page-oncall".into()))
        );
        for bad in [
            "",
            "../../bin/sh",
            "/bin/sh",
            "rm -rf /",
            ".hidden",
            "a;b",
            "ftp://x",
        ] {
            assert!(Hook::parse(bad).is_err(), "{bad:?} was taken");
        }
    }
}
