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
//! re-syncs under such a delay, written to a section of bench/RESULTS.md of its own.

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

    /// What this rsync run adds to `rsync -a --delete`.
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
    memory_kib: u64,
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

const USAGE: &str = "usage: sync [ROUNDS] [small|large|resync|wan] \
    [ferry|rsync|rsync-z|rsync-fsync|ferry-sync]\n\
    Without a group: every case and tool, written to bench/RESULTS.md (bash bench/sync.sh).\n\
    With a group: its table only, printed; `wan` (bash bench/wan.sh) writes its own section \
    when no tool is named. FERRY_BENCH_DELAY_MS=N delays every byte N ms each way.";

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let rounds: usize = match std::env::args().nth(1).map(|n| n.parse()) {
        None => 3,
        Some(Ok(rounds)) => rounds,
        Some(Err(_)) => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let only = std::env::args().nth(2);
    if only
        .as_deref()
        .is_some_and(|group| !["small", "large", "resync", "wan"].contains(&group))
    {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
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
        let mut rsync = Command::new("rsync");
        rsync.args(["-anc", "--delete", "--itemize-changes", "--exclude=.ferry"]);
        if tool == Tool::FerrySync {
            // Folder times follow each side's own changes under the sync rule.
            rsync.arg("--omit-dir-times");
        }
        let out = rsync
            .arg(format!("{}/", bench.src.display()))
            .arg(format!(
                "{}/",
                bench.dst[tool as usize].join("all").display()
            ))
            .output()?;
        let differences = String::from_utf8_lossy(&out.stdout);
        let real: Vec<&str> = differences
            .lines()
            .filter(|l| *l != ".d..t...... ./")
            .collect();
        if !real.is_empty() {
            bail!("{} left differences: {real:?}", tool.label());
        }
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
    fn new(tools: Vec<Tool>) -> Result<Self> {
        let env = Env::new(Backend::Sqlite);
        let tls = env.path("tls");
        let dir = tls.to_str().context("utf-8")?;
        env.ferry(&["ca", "init", "--dir", dir]).ok();
        for name in ["nas1", "nas2", "bench"] {
            env.ferry(&["ca", "issue", "--dir", dir, name, "--host", "127.0.0.1"])
                .ok();
        }
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

    fn ferry(&self, source: &Path, target: &Path, tool: Tool) -> Result<Sample> {
        let nas1 = Agent::start(&self.env, "nas1", &self.src, &self.tls)?;
        let nas2 = Agent::start(&self.env, "nas2", &self.dst[tool as usize], &self.tls)?;
        let relay = Relay::start(&nas2.address)?;
        let dial = |agent: &str, address: &str| -> Result<Dial> {
            Ok(Dial {
                agent: agent.into(),
                address: address.into(),
                client: "bench".into(),
                tls: ferry_wire::tls::client_config(&self.tls, "bench")?,
            })
        };
        let handoff = Handoff {
            dial: dial("nas1", &nas1.address)?,
            order: JobOrder {
                job: "bench".into(),
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
        let started = Instant::now();
        let summary =
            self.runtime
                .block_on(hand_over(&handoff, &Scope::Full, &Halt::new(), &mut |_| {}))?;
        let wall = started.elapsed();
        if summary.failures > 0 {
            bail!("ferry: {summary:?}");
        }
        let memory_kib = nas1.peak_kib()? + nas2.peak_kib()?;
        Ok(Sample {
            wall,
            wire: relay.bytes(),
            memory_kib,
            cpu: nas1.cpu()? + nas2.cpu()?,
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
            .args(["rsync", "-a", "--delete"])
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
            cpu: client.cpu + daemon.cpu,
        })
    }
}

/// A `ferry-agent run` process, stopped when dropped.
struct Agent {
    child: Child,
    address: String,
}

impl Agent {
    fn start(env: &Env, name: &str, root: &Path, tls: &Path) -> Result<Self> {
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(binary("ferry-agent"))
            .args(["run", "--listen", &address, "--name", name, "--root"])
            .arg(root)
            .arg("--tls-dir")
            .arg(tls)
            .env("FERRY_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(fs::File::create(env.path(&format!("{name}.log")))?)
            .spawn()?;
        wait_listening(&address)?;
        Ok(Self { child, address })
    }

    fn peak_kib(&self) -> Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .context("no VmHWM")?;
        Ok(line
            .split_whitespace()
            .nth(1)
            .context("VmHWM value")?
            .parse()?)
    }

    /// User and system time used so far.
    fn cpu(&self) -> Result<Duration> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("malformed /proc stat")?
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?
            .context("no clock tick rate")? as u64;
        Ok(Duration::from_secs_f64(ticks as f64 / per_second as f64))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rsync --daemon --no-detach` serving `root` as the writable module `dst`, under GNU time.
struct RsyncDaemon {
    time: Child,
    address: String,
    usage: PathBuf,
}

impl RsyncDaemon {
    fn start(env: &Env, root: &Path) -> Result<Self> {
        let port = free_port()?;
        let config = env.path("rsyncd.conf");
        fs::write(
            &config,
            format!(
                "use chroot = no\nuid = root\ngid = root\n[dst]\npath = {}\nread only = no\n",
                root.display()
            ),
        )?;
        let usage = env.path("rsync-daemon.usage");
        let time = Command::new("/usr/bin/time")
            .args(["-f", USAGE_FORMAT, "-o"])
            .arg(&usage)
            .args(["rsync", "--daemon", "--no-detach", "--address", "127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--config={}", config.display()))
            .stdin(Stdio::null())
            .spawn()?;
        let daemon = Self {
            time,
            address: format!("127.0.0.1:{port}"),
            usage,
        };
        wait_listening(&daemon.address)?;
        Ok(daemon)
    }

    /// Stops the daemon and returns what it and its connection processes used.
    fn stop(mut self) -> Result<Usage> {
        self.terminate()?;
        Usage::read(&self.usage)
    }

    /// Asks the daemon (GNU time's child) to end, and waits for GNU time's report.
    fn terminate(&mut self) -> Result<()> {
        let children = fs::read_to_string(format!(
            "/proc/{pid}/task/{pid}/children",
            pid = self.time.id()
        ))?;
        for pid in children.split_whitespace() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid.parse()?),
                nix::sys::signal::Signal::SIGTERM,
            )?;
        }
        self.time.wait()?;
        Ok(())
    }
}

impl Drop for RsyncDaemon {
    /// A measurement that failed leaves no daemon behind: one would hold the bench's output
    /// open, and whoever reads it would wait forever.
    fn drop(&mut self) {
        if matches!(self.time.try_wait(), Ok(None)) {
            let _ = self.terminate();
        }
    }
}

/// GNU time's report: peak resident set in KiB, user and system seconds (for a daemon, its
/// connection processes count once they are reaped).
const USAGE_FORMAT: &str = "%M %U %S";

struct Usage {
    memory_kib: u64,
    cpu: Duration,
}

impl Usage {
    /// The last line of a GNU time report (a signal notice may come before it).
    fn read(path: &Path) -> Result<Self> {
        let text = fs::read_to_string(path)?;
        let parsed = text.lines().rev().find_map(|line| {
            let [memory, user, system] = line.split_whitespace().collect::<Vec<_>>()[..] else {
                return None;
            };
            let seconds = user.parse::<f64>().ok()? + system.parse::<f64>().ok()?;
            Some(Self {
                memory_kib: memory.parse().ok()?,
                cpu: Duration::from_secs_f64(seconds),
            })
        });
        parsed.with_context(|| format!("no usage in {}: {text:?}", path.display()))
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(address: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(address).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("nothing listens on {address}")
}

/// Forwards connections to `target`, counting every byte in both directions.
struct Relay {
    address: String,
    bytes: Arc<AtomicU64>,
}

impl Relay {
    fn start(target: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?.to_string();
        let bytes = Arc::new(AtomicU64::new(0));
        let (counter, target) = (bytes.clone(), target.to_owned());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else {
                        continue;
                    };
                    let counter = counter.clone();
                    match one_way_delay() {
                        None => std::thread::spawn(move || {
                            let mut buf = vec![0u8; 256 * 1024];
                            while let Ok(n) = from.read(&mut buf) {
                                if n == 0 || to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                counter.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            let _ = to.shutdown(std::net::Shutdown::Write);
                        }),
                        Some(delay) => forward_late(from, to, counter, delay),
                    };
                }
            }
        });
        Ok(Self { address, bytes })
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// Set to a number of milliseconds, the relay holds every byte that long in each direction: a
/// round trip then takes twice that, as across a WAN.
const DELAY: &str = "FERRY_BENCH_DELAY_MS";

fn one_way_delay() -> Option<Duration> {
    let ms: u64 = std::env::var(DELAY).ok()?.parse().ok()?;
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// Forwards what `from` sends to `to`, each piece `delay` after it arrived.
fn forward_late(
    mut from: TcpStream,
    mut to: TcpStream,
    counter: Arc<AtomicU64>,
    delay: Duration,
) -> std::thread::JoinHandle<()> {
    let (queue, arrivals) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0
                || queue
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                break;
            }
        }
    });
    std::thread::spawn(move || {
        for (due, piece) in arrivals {
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if to.write_all(&piece).is_err() {
                break;
            }
            counter.fetch_add(piece.len() as u64, Ordering::Relaxed);
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    })
}

/// A deterministic generator, so every run of the benchmark syncs the same data.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// Text-like bytes: words from a small vocabulary, as documents and logs compress.
    fn text(&mut self, len: usize) -> Vec<u8> {
        const WORDS: [&str; 16] = [
            "replica",
            "schedule",
            "monitor",
            "lease",
            "agent",
            "delta",
            "block",
            "folder",
            "invoice",
            "customer",
            "2026-11-22",
            "total",
            "status",
            "ok",
            "error",
            "report",
        ];
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            let n = self.next();
            out.extend_from_slice(WORDS[(n % 16) as usize].as_bytes());
            out.push(if n.is_multiple_of(11) { b'\n' } else { b' ' });
        }
        out.truncate(len);
        out
    }
}

fn small_file(noise: &mut Noise, i: usize) -> Vec<u8> {
    let len = 1024 + (noise.next() % (15 * 1024)) as usize;
    if i.is_multiple_of(2) {
        noise.text(len)
    } else {
        noise.bytes(len)
    }
}

/// Small file `i`: 100 folders, each holding text and incompressible files in turn, as real
/// folders mix documents with images and archives.
fn small_path(root: &Path, i: usize) -> PathBuf {
    root.join(format!("d{:03}", i / 2 % 100))
        .join(format!("f{i:05}.dat"))
}

fn make_small_files(root: &Path) -> Result<()> {
    let mut noise = Noise(0x5eed);
    for i in 0..SMALL_FILES {
        let path = small_path(root, i);
        fs::create_dir_all(path.parent().context("a folder")?)?;
        fs::write(path, small_file(&mut noise, i))?;
    }
    Ok(())
}

fn make_large_files(root: &Path) -> Result<()> {
    fs::create_dir_all(root)?;
    let mut noise = Noise(0x1a7e);
    for i in 0..LARGE_FILES {
        let mut file = fs::File::create(root.join(format!("large{i}.bin")))?;
        for _ in 0..LARGE_SIZE / (1 << 20) {
            file.write_all(&noise.bytes(1 << 20))?;
        }
    }
    Ok(())
}

/// Changes 1 % of the small files (40 edited in place, 20 renamed, 20 deleted, 20 new) and
/// rewrites 4 MiB in the middle of one large file; `round` picks different files each time.
fn change_one_percent(src: &Path, round: usize) -> Result<()> {
    let mut noise = Noise(0xc4a9 + round as u64);
    let small = src.join("small");
    let path = |i: usize| small_path(&small, i);
    let pick = |k: usize| (round * 997 + k * 101) % SMALL_FILES;
    for k in 0..100 {
        let i = pick(k);
        let file = path(i);
        if !file.exists() {
            continue;
        }
        match k {
            0..40 => {
                let mut f = fs::OpenOptions::new().write(true).open(&file)?;
                let len = f.metadata()?.len();
                f.seek(SeekFrom::Start(len / 2))?;
                f.write_all(b"edited")?;
            }
            40..60 => fs::rename(&file, file.with_extension(format!("moved{round}")))?,
            60..80 => fs::remove_file(&file)?,
            _ => fs::write(
                file.with_extension(format!("new{round}")),
                small_file(&mut noise, k),
            )?,
        }
    }
    let mut large = fs::OpenOptions::new().write(true).open(
        src.join("large")
            .join(format!("large{}.bin", round % LARGE_FILES)),
    )?;
    large.seek(SeekFrom::Start((LARGE_SIZE / 2) as u64))?;
    large.write_all(&noise.bytes(4 << 20))?;
    Ok(())
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

fn write_results(rounds: usize, rows: &[(&str, CaseSamples)]) -> Result<()> {
    let mut section =
        String::from("<!-- sync:start -->\n## Sync: ferry agent to agent vs rsync daemon\n\n");
    section.push_str(&format!(
        "`bash bench/sync.sh {rounds}` on {}, {}: loopback, {rounds} rounds each, median (min-max). \
         Bytes on the wire are counted by a TCP relay between the two ends, for every tool. \
         Memory is the peak resident set of both ends added up, CPU their user and system \
         time added up.\n\n",
        today(),
        machine()
    ));
    section.push_str(&table(rows));
    section.push_str(
        "\nferry makes every file durable before it renames it into place (one `syncfs` per \
         batch of files); plain rsync leaves its writes in the page cache, so its disk writes \
         fall after its time, while `--fsync` makes rsync flush every file as it goes. On a \
         fresh ext4 file system (loop-mounted, no other writes) the small-file copy took \
         ferry 0.37-0.42 s and plain rsync 0.34-0.36 s in 5 rounds each: the flushes' \
         write-back shares this machine's 2 cores with both ends. This machine's own file system is mounted with online \
         discard, and after mass deletions every tool's small-file copy is several times \
         slower for minutes: compare tools within one run, not across runs. ferry's bytes are encrypted and rsync's are not: \
         after the TLS 1.3 handshake ferry seals its frames in records of up to 256 KiB, 20 \
         bytes each (TLS's own records of 16 KiB would cost 0.13 %). ferry compresses file data \
         only while the link is slower than zstd (it reads the connection's TCP_INFO); over \
         loopback it sends file data raw, as plain rsync does, and compresses only the names, \
         sizes and times around it.\n",
    );
    section.push_str("<!-- sync:end -->\n");
    print!("{section}");
    replace_section(&results_file(), "sync", &section)
}

/// Set by bench/slow-link.sh, which runs this benchmark in a network namespace whose loopback
/// is held to this rate: only the small-file copy is measured, into a section of its own.
const SLOW_LINK: &str = "FERRY_BENCH_LINK";

fn write_slow_link_results(rounds: usize, rate: &str, rows: &[(&str, CaseSamples)]) -> Result<()> {
    let intro = format!(
        "`bash bench/slow-link.sh {rounds} {rate}` on {}, {}: the same agents, rsync daemon and \
         counting relay as above, inside a network namespace whose loopback `tc tbf` holds to \
         {rate}. Every byte crosses that loopback twice (into the relay and out), so the path \
         between the two ends carries about half of it. {rounds} rounds each, median \
         (min-max).",
        today(),
        machine()
    );
    let outro = "Here the link, not the CPU, is the bottleneck: ferry measures that (TCP_INFO) \
                 and compresses file data, as `rsync -z` does when asked; over loopback it sends \
                 it raw.";
    let title = "Sync over a slow link: ferry agent to agent vs rsync daemon";
    write_section("sync-slow-link", title, &intro, rows, outro)
}

/// The `wan` group, run by bench/wan.sh with the relay delaying every byte: the re-syncs, into
/// a section of their own.
fn write_wan_results(rounds: usize, rows: &[(&str, CaseSamples)]) -> Result<()> {
    let rtt = one_way_delay().unwrap_or_default() * 2;
    let intro = format!(
        "`bash bench/wan.sh {rounds} {}` on {}, {}: the same agents, rsync daemon and counting \
         relay as above, the relay holding every byte {:?} each way, so the two ends are a \
         {rtt:?} round trip apart (bandwidth unlimited). {rounds} rounds each, median \
         (min-max).",
        rtt.as_millis(),
        today(),
        machine(),
        rtt / 2,
    );
    let outro = "Every answer a sender waits for costs a round trip here: ferry pipelines file \
                 data, deltas, removals, moves and times, and asks for signatures ahead.";
    let title = "Re-syncs across a WAN round trip: ferry agent to agent vs rsync daemon";
    write_section("sync-wan", title, &intro, rows, outro)
}

/// Writes the section `key` of bench/RESULTS.md: a title, what was run, the table, a note.
fn write_section(
    key: &str,
    title: &str,
    intro: &str,
    rows: &[(&str, CaseSamples)],
    outro: &str,
) -> Result<()> {
    let section = format!(
        "<!-- {key}:start -->\n## {title}\n\n{intro}\n\n{}\n{outro}\n<!-- {key}:end -->\n",
        table(rows)
    );
    print!("{section}");
    replace_section(&results_file(), key, &section)
}

fn table(rows: &[(&str, CaseSamples)]) -> String {
    let mut table = String::from(
        "| case | tool | wall time, s | CPU, s | bytes on the wire | peak memory, MiB |\n",
    );
    table.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for (case, tools) in rows {
        for (tool, samples) in tools {
            let column = |f: &dyn Fn(&Sample) -> f64, fmt: &dyn Fn(f64) -> String| {
                let mut values: Vec<f64> = samples.iter().map(f).collect();
                values.sort_by(f64::total_cmp);
                format!(
                    "{} ({}-{})",
                    fmt(values[values.len() / 2]),
                    fmt(values[0]),
                    fmt(values[values.len() - 1])
                )
            };
            table.push_str(&format!(
                "| {case} | {} | {} | {} | {} | {} |\n",
                tool.label(),
                column(&|s| s.wall.as_secs_f64(), &|v| format!("{v:.2}")),
                column(&|s| s.cpu.as_secs_f64(), &|v| format!("{v:.2}")),
                column(&|s| s.wire as f64, &|v| human(v as u64)),
                column(&|s| s.memory_kib as f64 / 1024.0, &|v| format!("{v:.0}")),
            ));
        }
    }
    table
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.2} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::round_order;

    #[test]
    fn over_the_rounds_each_tool_goes_first_once_and_follows_each_other_once() {
        for tools in [2, 4, 6] {
            let orders: Vec<Vec<usize>> = (0..tools).map(|r| round_order(tools, r)).collect();
            for order in &orders {
                let mut sorted = order.clone();
                sorted.sort();
                assert_eq!(sorted, (0..tools).collect::<Vec<_>>(), "{orders:?}");
            }
            let firsts: HashSet<usize> = orders.iter().map(|order| order[0]).collect();
            assert_eq!(firsts.len(), tools, "{orders:?}");
            let pairs: Vec<(usize, usize)> = orders
                .iter()
                .flat_map(|order| order.windows(2).map(|w| (w[0], w[1])))
                .collect();
            let distinct: HashSet<&(usize, usize)> = pairs.iter().collect();
            assert_eq!(pairs.len(), tools * (tools - 1), "{orders:?}");
            assert_eq!(distinct.len(), pairs.len(), "a pair repeats: {orders:?}");
        }
    }
}
