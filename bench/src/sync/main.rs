//! `bash bench/sync.sh [ROUNDS]`: ferry's agent-to-agent sync against rsync, same data, same
//! run, both over loopback: ferry as two `ferry-agent run` processes (the source agent pushes
//! to the destination agent, as when a scheduler hands it a run), rsync as a client pushing to
//! an `rsync --daemon`: as it is, with `-z` (compressed, as ferry), and with `--fsync` (every
//! file flushed to disk, as ferry makes every file durable).
//!
//! Every connection between the two ends goes through a byte-counting TCP relay, so "bytes on
//! the wire" is measured the same way for both: everything that crossed, TLS and all for
//! ferry. Peak memory is the sum of both ends' maximum resident set (GNU time for rsync's
//! client and daemon, VmHWM for the agents). Each measurement starts fresh processes.
//!
//! Cases: the initial copy of 10,000 small files (text and incompressible ones in turn, in 100
//! folders) and of two 100 MiB files; a re-sync with nothing changed; a re-sync after changing
//! 1 % of the files (small edits, 4 MiB rewritten in the middle of a large file, renames,
//! deletions, new files). Results go to bench/RESULTS.md.
//!
//! `sync ROUNDS small|large|resync [ferry|rsync|rsync-z|rsync-fsync|ferry-sync]` runs one
//! group of cases, with every tool or one, and prints its table without touching
//! bench/RESULTS.md (for profiling one case). `ferry-sync` is ferry under the two-way sync rule,
//! which a full run leaves out: rsync has nothing to compare it with.
//! `FERRY_BENCH_DELAY_MS=N` makes the relay hold every byte N ms each way, as across a WAN
//! (a round trip then takes 2N ms). The group `wan` (what `bash bench/wan.sh` runs) is the
//! re-syncs under such a delay, written to a section of bench/RESULTS.md of its own. The group
//! `million` (`bash bench/million.sh`) is a million small files, with agents that stay up
//! between runs (see [`million`]).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferry_bench::{machine, replace_section, results_file, today};
use ferry_engine::{Halt, Rule, Scope};
use ferry_tests::harness::{Backend, Env, binary};
use ferry_wire::client::Dial;
use ferry_wire::handoff::{Handoff, hand_over};
use ferry_wire::protocol::{JobOrder, RemoteFolder};

mod data;
mod million;
mod peers;
mod relay;
mod report;

use data::*;
use million::write_million_results;
use peers::*;
use relay::*;
use report::*;

const SMALL_FILES: usize = 10_000;
const LARGE_FILES: usize = 2;
const LARGE_SIZE: usize = 100 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tool {
    Ferry,
    Rsync,
    RsyncZ,
    RsyncFsync,
    /// ferry under the two-way sync rule: run only when named (rsync has no counterpart).
    FerrySync,
}

impl Tool {
    /// The tools of a full run.
    const ALL: [Tool; 4] = [Tool::Ferry, Tool::Rsync, Tool::RsyncZ, Tool::RsyncFsync];
    /// Every tool the command line can name.
    const EVERY: [Tool; 5] = [
        Tool::Ferry,
        Tool::Rsync,
        Tool::RsyncZ,
        Tool::RsyncFsync,
        Tool::FerrySync,
    ];

    /// The name that picks this tool alone on the command line.
    fn key(self) -> &'static str {
        match self {
            Tool::Ferry => "ferry",
            Tool::Rsync => "rsync",
            Tool::RsyncZ => "rsync-z",
            Tool::RsyncFsync => "rsync-fsync",
            Tool::FerrySync => "ferry-sync",
        }
    }

    /// What this rsync run adds to `rsync -aHAX --numeric-ids --delete` (the metadata ferry
    /// keeps: owners, hard links, ACLs, extended attributes).
    fn rsync_options(self) -> &'static [&'static str] {
        match self {
            Tool::RsyncZ => &["-z"],
            // Every file flushed to disk, as ferry makes every file durable.
            Tool::RsyncFsync => &["--fsync"],
            Tool::Ferry | Tool::Rsync | Tool::FerrySync => &[],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Tool::Ferry => "ferry (2 agents, TLS, zstd)",
            Tool::Rsync => "rsync --daemon",
            Tool::RsyncZ => "rsync --daemon, -z",
            Tool::RsyncFsync => "rsync --daemon, --fsync",
            Tool::FerrySync => "ferry, sync rule (two-way)",
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    wall: Duration,
    wire: u64,
    /// Peak resident set of both ends, added up.
    memory_kib: u64,
    /// Peak resident set of the end that held more.
    larger_end_kib: u64,
    /// User and system time of both ends, added up.
    cpu: Duration,
}

struct Bench {
    /// The tools measured, all unless the command line picks one.
    tools: Vec<Tool>,
    env: Env,
    tls: PathBuf,
    src: PathBuf,
    /// Destination roots, one per tool.
    dst: [PathBuf; 5],
    runtime: tokio::runtime::Runtime,
}

const USAGE: &str = "usage: sync [ROUNDS] [small|large|resync|wan|million] \
    [ferry|rsync|rsync-z|rsync-fsync|ferry-sync]\n\
    Without a group: every case and tool, written to bench/RESULTS.md (bash bench/sync.sh).\n\
    With a group: its table only, printed; `wan` (bash bench/wan.sh) and `million` (bash \
    bench/million.sh: ferry and rsync --daemon only) write their own sections when no tool is \
    named. FERRY_BENCH_DELAY_MS=N delays every byte N ms each way.";

/// The rounds to run and the group to run alone, if any, from the command line; exits with
/// the usage on bad input.
fn arguments() -> (usize, Option<String>) {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        std::process::exit(0);
    }
    let usage = || -> ! {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let rounds: usize = match std::env::args().nth(1).map(|n| n.parse()) {
        None => 3,
        Some(Ok(rounds)) => rounds,
        Some(Err(_)) => usage(),
    };
    let only = std::env::args().nth(2);
    if only
        .as_deref()
        .is_some_and(|group| !["small", "large", "resync", "wan", "million"].contains(&group))
    {
        usage();
    }
    (rounds, only)
}

fn main() -> Result<()> {
    let (rounds, only) = arguments();
    // Across a WAN only the re-syncs are measured: round trips are what it adds.
    let wan = only.as_deref() == Some("wan");
    let runs = |group: &str| {
        only.as_deref().is_none_or(|only| only == group) || (wan && group == "resync")
    };
    let tools = match std::env::args().nth(3) {
        None => Tool::ALL.to_vec(),
        Some(key) => match Tool::EVERY.into_iter().find(|t| t.key() == key) {
            Some(tool) => vec![tool],
            None => bail!("no tool {key:?}: say ferry, rsync, rsync-z, rsync-fsync or ferry-sync"),
        },
    };
    if only.as_deref() == Some("million") {
        let named = std::env::args().nth(3).is_some();
        let tools = match named {
            true => tools,
            false => vec![Tool::Ferry, Tool::Rsync],
        };
        let rows = Bench::new(tools)?.million(rounds)?;
        if named {
            print!("{}", table(&rows));
            return Ok(());
        }
        return write_million_results(rounds, &rows);
    }
    let bench = Bench::new(tools)?;
    eprintln!("generating the data set");
    make_small_files(&bench.src.join("small"))?;
    make_large_files(&bench.src.join("large"))?;
    let mut rows = Vec::new();

    let case = "initial copy, 10,000 small files (1-16 KiB, half text)";
    if runs("small") {
        rows.push((
            case,
            bench.rounds(rounds, |b, tool, r| {
                b.measure(tool, "small", &format!("small-{r}"))
            })?,
        ));
    }
    if let Ok(rate) = std::env::var(SLOW_LINK) {
        return write_slow_link_results(rounds, &rate, &rows);
    }
    let case = "initial copy, 2 files of 100 MiB";
    if runs("large") {
        rows.push((
            case,
            bench.rounds(rounds, |b, tool, r| {
                b.measure(tool, "large", &format!("large-{r}"))
            })?,
        ));
    }
    if !runs("resync") {
        print!("{}", table(&rows));
        return Ok(());
    }
    for &tool in &bench.tools {
        bench.measure(tool, "", "all")?;
    }
    let case = "re-sync, nothing changed (10,002 files, 280 MiB)";
    rows.push((
        case,
        bench.rounds(rounds, |b, tool, _| b.measure(tool, "", "all"))?,
    ));
    let case = "re-sync, 1 % changed (edits, 4 MiB in a large file, renames, deletions, new)";
    let mut changed = 0;
    rows.push((
        case,
        bench.rounds(rounds, |b, tool, r| {
            if r != changed {
                change_one_percent(&b.src, r)?;
                changed = r;
            }
            b.measure(tool, "", "all")
        })?,
    ));
    for &tool in &bench.tools {
        bench.check_identical(tool)?;
    }
    if wan && bench.tools.len() > 1 {
        return write_wan_results(rounds, &rows);
    }
    if only.is_some() {
        print!("{}", table(&rows));
        return Ok(());
    }
    write_results(rounds, &rows)
}

impl Bench {
    /// Fails unless `tool`'s replica of the whole data set is identical to the source.
    fn check_identical(&self, tool: Tool) -> Result<()> {
        let mut rsync = Command::new("rsync");
        rsync.args(["-anc", "--delete", "--itemize-changes", "--exclude=.ferry"]);
        if tool == Tool::FerrySync {
            // Folder times follow each side's own changes under the sync rule.
            rsync.arg("--omit-dir-times");
        }
        let replica = self.dst[tool as usize].join("all");
        let out = rsync
            .arg(format!("{}/", self.src.display()))
            .arg(format!("{}/", replica.display()))
            .output()?;
        let differences = String::from_utf8_lossy(&out.stdout);
        let real: Vec<&str> = differences
            .lines()
            .filter(|l| *l != ".d..t...... ./")
            .collect();
        if !real.is_empty() {
            bail!("{} left differences: {real:?}", tool.label());
        }
        Ok(())
    }

    fn new(tools: Vec<Tool>) -> Result<Self> {
        let env = Env::new(Backend::Sqlite);
        let tls = env.tls_folder(&["nas1", "nas2"], &["bench"]);
        let src = env.path("src");
        let dst = Tool::EVERY.map(|tool| env.path(tool.key()));
        for d in dst.iter().chain([&src]) {
            fs::create_dir_all(d)?;
        }
        Ok(Self {
            tools,
            env,
            tls,
            src,
            dst,
            runtime: tokio::runtime::Runtime::new()?,
        })
    }

    /// Runs `measure` `rounds` times for every tool, in an order that changes each round (see
    /// [`round_order`]).
    fn rounds(
        &self,
        rounds: usize,
        mut measure: impl FnMut(&Self, Tool, usize) -> Result<Sample>,
    ) -> Result<CaseSamples> {
        let mut samples: Vec<(Tool, Vec<Sample>)> =
            self.tools.iter().map(|t| (*t, vec![])).collect();
        for r in 1..=rounds {
            for turn in round_order(self.tools.len(), r) {
                let tool = self.tools[turn];
                // What the last tool left in the page cache is written out first, so its
                // write-back does not land in the next tool's time.
                Command::new("sync").status()?;
                let sample = measure(self, tool, r)?;
                eprintln!("round {r} {}: {sample:?}", tool.label());
                samples[turn].1.push(sample);
            }
        }
        Ok(samples)
    }

    /// Syncs `src/from` to the tool's `to` folder (mirror) and measures it.
    fn measure(&self, tool: Tool, from: &str, to: &str) -> Result<Sample> {
        let source = if from.is_empty() {
            self.src.clone()
        } else {
            self.src.join(from)
        };
        let target = self.dst[tool as usize].join(to);
        match tool {
            Tool::Ferry | Tool::FerrySync => self.ferry(&source, &target, tool),
            rsync => self.rsync(&source, to, rsync),
        }
    }

    /// A run with agents started for it alone.
    fn ferry(&self, source: &Path, target: &Path, tool: Tool) -> Result<Sample> {
        let pair = Pair::start(self, &self.src, tool)?;
        self.ferry_on(&pair, source, target, (tool, "bench"))
    }

    /// A run of `job` on agents that are up: its own wall time, bytes, peak memory and CPU.
    /// The agents' change journals are asked what changed since the job's last run: a job
    /// never run scans everything.
    fn ferry_on(
        &self,
        pair: &Pair,
        source: &Path,
        target: &Path,
        (tool, job): (Tool, &str),
    ) -> Result<Sample> {
        let relay = Relay::start(&pair.nas2.address)?;
        let dial = |agent: &str, address: &str| -> Result<Dial> {
            Ok(Dial {
                agent: agent.into(),
                address: address.into(),
                client: "bench".into(),
                tls: ferry_wire::tls::client_config(&self.tls, "bench")?,
            })
        };
        let handoff = Handoff {
            dial: dial("nas1", &pair.nas1.address)?,
            order: JobOrder {
                job: job.into(),
                rule: match tool {
                    Tool::FerrySync => Rule::Sync,
                    _ => Rule::Mirror,
                },
                source: source.display().to_string(),
                destinations: vec![RemoteFolder {
                    agent: "nas2".into(),
                    address: relay.address.clone(),
                    path: target.display().to_string(),
                }],
                include: vec![],
                exclude: vec![],
                guards: Default::default(),
                paths: None,
            },
        };
        // Idle first, as agents are between scheduled runs: the last run's connections close
        // (this runtime runs only while it is blocked on) and the memory freed goes back.
        let idle = async { tokio::time::sleep(Duration::from_millis(500)).await };
        self.runtime.block_on(idle);
        pair.reset_peaks()?;
        let cpu_before = pair.cpu()?;
        let started = Instant::now();
        let summary = self.runtime.block_on(hand_over(
            &handoff,
            &Scope::Full,
            &bench_lease(),
            &mut |_| {},
        ))?;
        let wall = started.elapsed();
        if summary.failures > 0 {
            bail!("ferry: {summary:?}");
        }
        let (source_kib, destination_kib) = pair.peak_kib()?;
        Ok(Sample {
            wall,
            wire: relay.bytes(),
            memory_kib: source_kib + destination_kib,
            larger_end_kib: source_kib.max(destination_kib),
            cpu: pair.cpu()? - cpu_before,
        })
    }

    fn rsync(&self, source: &Path, to: &str, tool: Tool) -> Result<Sample> {
        let daemon = RsyncDaemon::start(&self.env, &self.dst[tool as usize])?;
        let relay = Relay::start(&daemon.address)?;
        let client_usage = self.env.path("rsync-client.usage");
        let mut command = Command::new("/usr/bin/time");
        command
            .args(["-f", USAGE_FORMAT, "-o"])
            .arg(&client_usage)
            .args(["rsync", "-aHAX", "--numeric-ids", "--delete"])
            .args(tool.rsync_options());
        let started = Instant::now();
        let status = command
            .arg(format!("{}/", source.display()))
            .arg(format!("rsync://{}/dst/{to}/", relay.address))
            .status()?;
        let wall = started.elapsed();
        if !status.success() {
            bail!("rsync failed: {status}");
        }
        let client = Usage::read(&client_usage)?;
        let daemon = daemon.stop()?;
        Ok(Sample {
            wall,
            wire: relay.bytes(),
            memory_kib: client.memory_kib + daemon.memory_kib,
            larger_end_kib: client.memory_kib.max(daemon.memory_kib),
            cpu: client.cpu + daemon.cpu,
        })
    }
}

/// The order of `tools` tools in round `round`: the rows of a balanced Latin square, so that
/// over the rounds each tool runs first once and right after each other tool once. Turning one
/// order instead kept each tool behind the same one every round, and a tool's run slows the
/// next on some disks (rsync --fsync's ten thousand journal commits did ferry's).
fn round_order(tools: usize, round: usize) -> Vec<usize> {
    (0..tools)
        .map(|i| match i % 2 {
            1 => i.div_ceil(2),
            _ => (tools - i / 2) % tools,
        })
        .map(|first| (first + round) % tools)
        .collect()
}

/// Each tool's samples for one case.
type CaseSamples = Vec<(Tool, Vec<Sample>)>;

/// The lease the benchmark's runs work under: every write to an agent carries one.
fn bench_lease() -> Halt {
    // Confirmed, as a scheduler's lease is while it reaches its database.
    Halt::fenced(ferry_engine::Fence {
        confirmed: true,
        ..ferry_engine::Fence::new("job:bench", 1)
    })
}
