//! What ferry's benchmarks share: summary statistics and writing their section of
//! bench/RESULTS.md with the date and the machine.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

/// Median, p99 (nearest rank), min and max of `samples`, in `unit`s of a second (1.0 for
/// seconds, 1000.0 for milliseconds).
pub fn stats(samples: &[Duration], unit: f64) -> (f64, f64, f64, f64) {
    let mut sorted: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * unit).collect();
    sorted.sort_by(f64::total_cmp);
    let rank =
        |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    (rank(0.5), rank(0.99), sorted[0], sorted[sorted.len() - 1])
}

/// Replaces the `<!-- NAME:start -->` … `<!-- NAME:end -->` section of the results file (or
/// appends it), leaving the other benchmarks' sections alone.
pub fn replace_section(path: &Path, name: &str, section: &str) -> Result<()> {
    let (start, end) = (
        format!("<!-- {name}:start -->"),
        format!("<!-- {name}:end -->\n"),
    );
    let old = fs::read_to_string(path).unwrap_or_else(|_| "# ferry benchmark results\n".into());
    let new = match (old.find(&start), old.find(&end)) {
        (Some(a), Some(b)) => format!("{}{section}{}", &old[..a], &old[b + end.len()..]),
        _ => format!("{}\n\n{section}", old.trim_end()),
    };
    fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// The results file beside this crate.
pub fn results_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md")
}

pub fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores ({cpu})")
}

pub fn today() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
