//! `bash bench/monitor.sh`: how long a file written to a watched folder takes to appear at the
//! destination, ferry's monitor against lsyncd, same machine, same run, local folders.
//!
//! Each tool watches its own source folder; the benchmark writes one small file at a time,
//! every 200 ms, and polls for it at the destination (1 ms steps). ferry runs with its default
//! debounce (100 ms) and with 0; lsyncd with `delay = 0` (its default is 15 s) and its default
//! rsync action. Results (median, p99, min-max) go to bench/RESULTS.md.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_bench::{machine, replace_section, results_file, stats, today};
use ferry_tests::harness::{Backend, Env};

const GAP: Duration = Duration::from_millis(200);
const GIVE_UP: Duration = Duration::from_secs(30);

fn main() -> Result<()> {
    let files: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(50);
    let env = Env::new(Backend::Sqlite);
    let _scheduler = env.scheduler("bench");
    let mut rows = Vec::new();
    for (label, debounce) in [
        ("ferry monitor, default debounce 100 ms", "100ms"),
        ("ferry monitor, debounce 0", "0ms"),
    ] {
        let (src, dst) = folders(&env, debounce)?;
        let name = format!("d{debounce}");
        let (from, to) = (
            src.to_str().context("utf-8")?,
            dst.to_str().context("utf-8")?,
        );
        env.ferry(&[
            "job", "add", &name, "--rule", "mirror", "--from", from, "--to", to,
        ])
        .ok();
        env.ferry(&[
            "monitor",
            "add",
            &name,
            "--job",
            &name,
            "--debounce",
            debounce,
        ])
        .ok();
        wait_for(&dst.join("ready"))?;
        rows.push((label.to_owned(), measure(&src, &dst, files)?));
    }
    let (src, dst) = folders(&env, "lsyncd")?;
    let lsyncd = Lsyncd::start(&env, &src, &dst)?;
    wait_for(&dst.join("ready"))?;
    rows.push((
        "lsyncd 2, delay = 0, default.rsync".to_owned(),
        measure(&src, &dst, files)?,
    ));
    drop(lsyncd);
    write_results(files, &rows)
}

/// A source holding a `ready` file (its arrival says the watcher runs) and a destination.
fn folders(env: &Env, name: &str) -> Result<(PathBuf, PathBuf)> {
    let (src, dst) = (
        env.path(&format!("{name}-src")),
        env.path(&format!("{name}-dst")),
    );
    fs::create_dir_all(&src)?;
    fs::create_dir_all(&dst)?;
    fs::write(src.join("ready"), "ready")?;
    Ok((src, dst))
}

/// Writes `files` files one by one and times each one's arrival.
fn measure(src: &Path, dst: &Path, files: usize) -> Result<Vec<Duration>> {
    let mut samples = Vec::with_capacity(files);
    for i in 0..files {
        let name = format!("file-{i}.txt");
        let content = format!("content {i}\n");
        let written = Instant::now();
        fs::write(src.join(&name), &content)?;
        wait_for_content(&dst.join(&name), &content)?;
        samples.push(written.elapsed());
        std::thread::sleep(GAP);
    }
    Ok(samples)
}

fn wait_for(path: &Path) -> Result<()> {
    wait_for_content(path, "ready")
}

/// Polls until `path` holds `content` (a file seen half-copied does not count).
fn wait_for_content(path: &Path, content: &str) -> Result<()> {
    let deadline = Instant::now() + GIVE_UP;
    while Instant::now() < deadline {
        if fs::read_to_string(path).is_ok_and(|c| c == content) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    bail!("{} did not arrive within {GIVE_UP:?}", path.display())
}

/// lsyncd watching `src` into `dst`, stopped on drop.
struct Lsyncd(Child);

impl Lsyncd {
    fn start(env: &Env, src: &Path, dst: &Path) -> Result<Self> {
        let config = env.path("lsyncd.lua");
        let settings = format!(
            "settings {{ nodaemon = true, logfile = \"{}\" }}\n\
             sync {{ default.rsync, source = \"{}\", target = \"{}\", delay = 0 }}\n",
            env.path("lsyncd.log").display(),
            src.display(),
            dst.display()
        );
        fs::write(&config, settings)?;
        let child = Command::new("lsyncd")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting lsyncd (bench/monitor.sh installs it)")?;
        Ok(Self(child))
    }
}

impl Drop for Lsyncd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_results(files: usize, rows: &[(String, Vec<Duration>)]) -> Result<()> {
    let mut section =
        String::from("<!-- monitor:start -->\n## Real-time monitor latency (bench/monitor.sh)\n\n");
    section += &format!(
        "{} on {}; local folders, one small file written every 200 ms, {files} files per tool, \
         time from the write to the file's full content at the destination (polled every 1 ms), \
         `bash bench/monitor.sh {files}`.\n\n",
        today(),
        machine()
    );
    section += "| tool | median | p99 | min - max |\n| --- | --- | --- | --- |\n";
    for (label, samples) in rows {
        let (median, p99, min, max) = stats(samples, 1000.0);
        section +=
            &format!("| {label} | {median:.1} ms | {p99:.1} ms | {min:.1} - {max:.1} ms |\n");
    }
    section += "\nBars: p50 under 200 ms and p99 under 1 s at the default debounce; with debounce 0 within \
        2x of lsyncd at `delay = 0`. lsyncd's default delay is 15 s, Syncthing's 10 s.\n<!-- monitor:end -->\n";
    print!("{section}");
    replace_section(&results_file(), "monitor", &section)
}
