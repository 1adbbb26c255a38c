//! `bash bench/failover.sh`: how fast work moves between schedulers on PostgreSQL, default
//! settings (lease TTL 3 s, heartbeat 1 s, settle 2 s).
//!
//! Three schedulers share a private PostgreSQL; a monitor prefers `s1`. Each repetition:
//! SIGKILL `s1` and time until the monitor runs on another scheduler (crash failover); restart
//! `s1` and time until the monitor runs there again (fallback-back, settle included); SIGTERM
//! `s1` and time until it runs elsewhere (graceful handoff); restart `s1` and time its return
//! again. "Runs" means the new holder's monitor run row exists: the watch has started.
//! Results (median, p99, min-max) go to bench/RESULTS.md.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_bench::{machine, replace_section, results_file, stats, today};
use ferry_tests::harness::{Backend, Env, TestScheduler};

const POLL: Duration = Duration::from_millis(20);
const GIVE_UP: Duration = Duration::from_secs(60);

fn main() -> Result<()> {
    let reps: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(20);
    if ferry_tests::pg::shared().is_none() {
        bail!("PostgreSQL is needed: install the postgresql package (tests/run.sh does)");
    }
    let env = Env::new(Backend::Postgres);
    let src = env.path("src");
    fs::create_dir_all(&src)?;
    let (from, to) = (
        src.to_str().context("utf-8 path")?,
        env.path("dst").display().to_string(),
    );
    env.ferry(&[
        "job", "add", "m", "--rule", "mirror", "--from", from, "--to", &to,
    ])
    .ok();
    let mut s1 = Some(env.scheduler("s1"));
    let _s2 = env.scheduler("s2");
    let _s3 = env.scheduler("s3");
    env.ferry(&["monitor", "add", "m", "--job", "m", "--prefer", "s1"])
        .ok();
    wait_for_runner(&env, |s| s == "s1")?;

    let (mut crash, mut graceful, mut back) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 1..=reps {
        s1.take().expect("s1 runs").kill();
        crash.push(timed(|| wait_for_runner(&env, |s| s != "s1"))?);
        back.push(restart_and_time_return(&env, &mut s1)?);

        let (code, _) = s1.take().expect("s1 runs").terminate();
        anyhow::ensure!(code == 0, "s1 exited with {code} on SIGTERM");
        let started = Instant::now();
        wait_for_runner(&env, |s| s != "s1")?;
        graceful.push(started.elapsed());
        back.push(restart_and_time_return(&env, &mut s1)?);
        eprintln!(
            "rep {rep}/{reps}: crash {:.2} s, graceful {:.2} s, back {:.2} s / {:.2} s",
            secs(crash[rep - 1]),
            secs(graceful[rep - 1]),
            secs(back[2 * rep - 2]),
            secs(back[2 * rep - 1])
        );
    }
    let rows = [
        (
            "crash failover: SIGKILL of the holder → monitor running elsewhere",
            &crash,
            "p99 under 5 s",
        ),
        (
            "graceful handoff: SIGTERM of the holder → monitor running elsewhere",
            &graceful,
            "under 1 s",
        ),
        (
            "fallback-back: preferred scheduler restarted → monitor running on it (2 s settle included)",
            &back,
            "under 5 s after settling",
        ),
    ];
    write_results(reps, &rows)
}

/// Starts `s1` again and times until the monitor runs on it.
fn restart_and_time_return(env: &Env, s1: &mut Option<TestScheduler>) -> Result<Duration> {
    let started = Instant::now();
    *s1 = Some(env.scheduler("s1"));
    wait_for_runner(env, |s| s == "s1")?;
    Ok(started.elapsed())
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let started = Instant::now();
    f()?;
    Ok(started.elapsed())
}

/// Waits until the newest running run of monitor `m` belongs to a scheduler `wanted` accepts.
fn wait_for_runner(env: &Env, wanted: impl Fn(&str) -> bool) -> Result<()> {
    let deadline = Instant::now() + GIVE_UP;
    let query = "SELECT scheduler FROM runs WHERE monitor_name = 'm' AND state = 'running' ORDER BY id DESC LIMIT 1";
    while Instant::now() < deadline {
        if env.sql_text(query).is_some_and(|s| wanted(&s)) {
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
    bail!("the monitor did not move within {GIVE_UP:?}")
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn write_results(reps: usize, rows: &[(&str, &Vec<Duration>, &str)]) -> Result<()> {
    let mut section = String::from("<!-- failover:start -->\n## Failover (bench/failover.sh)\n\n");
    section += &format!(
        "{} on {}; PostgreSQL {}, three schedulers, default settings (lease TTL 3 s, heartbeat 1 s, \
         settle 2 s), {reps} repetitions, `bash bench/failover.sh {reps}`.\n\n",
        today(),
        machine(),
        postgres_version()
    );
    section += "| measure | median | p99 | min - max | bar |\n| --- | --- | --- | --- | --- |\n";
    for (what, samples, bar) in rows {
        let (median, p99, min, max) = stats(samples, 1.0);
        section +=
            &format!("| {what} | {median:.2} s | {p99:.2} s | {min:.2} - {max:.2} s | {bar} |\n");
    }
    section += "\nFor comparison (published, not measured here): SureSync 7 takes 2-10 min to take over and \
        never returns work to its preferred host; Kubernetes leader election 15-17 s, Quartz 15-22 s, River ~21 s.\n\
        <!-- failover:end -->\n";
    print!("{section}");
    replace_section(&results_file(), "failover", &section)
}

fn postgres_version() -> String {
    let env = Env::new(Backend::Postgres);
    env.sql_text("SHOW server_version")
        .unwrap_or_else(|| "?".into())
}
