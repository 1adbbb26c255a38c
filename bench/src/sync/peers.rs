//! The two ends of each tool: ferry agents and an rsync daemon, as processes, with their peak memory and CPU time.

use super::*;

/// `FERRY_BENCH_AGENT_LOG=FILTER` logs the agents at that level (`FERRY_LOG`'s syntax) into
/// `ferry-bench-NAME.log` in the temporary folder, kept after the run, to see what they decided.
const AGENT_LOG: &str = "FERRY_BENCH_AGENT_LOG";

fn agent_log(env: &Env, name: &str) -> Result<(PathBuf, fs::File)> {
    let path = match std::env::var_os(AGENT_LOG) {
        Some(_) => std::env::temp_dir().join(format!("ferry-bench-{name}.log")),
        None => env.path(&format!("{name}.log")),
    };
    let log = fs::OpenOptions::new().create(true).append(true).open(&path);
    let log = log.with_context(|| format!("{}", path.display()))?;
    Ok((path, log))
}

/// `FERRY_BENCH_AGENT_ARGS="--full-scan-every off"` (say) gives the agents more arguments, to see
/// what a setting costs.
const AGENT_ARGS: &str = "FERRY_BENCH_AGENT_ARGS";

/// A `ferry-agent run` process, stopped when dropped.
pub(crate) struct Agent {
    pub(crate) child: Child,
    pub(crate) address: String,
    log: PathBuf,
}

impl Agent {
    pub(crate) fn start(env: &Env, name: &str, root: &Path, tls: &Path) -> Result<Self> {
        let port = free_port()?;
        let address = format!("127.0.0.1:{port}");
        let (log, log_file) = agent_log(env, name)?;
        let child = Command::new(binary("ferry-agent"))
            .args(["run", "--listen", &address, "--name", name, "--root"])
            .arg(root)
            .arg("--tls-dir")
            .arg(tls)
            .args(
                std::env::var(AGENT_ARGS)
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env(
                "FERRY_LOG",
                std::env::var(AGENT_LOG).unwrap_or_else(|_| JOURNAL_LOG.into()),
            )
            .stdin(Stdio::null())
            .stderr(log_file)
            .spawn()?;
        wait_listening(&address)?;
        Ok(Self {
            child,
            address,
            log,
        })
    }

    /// Whether its change journal runs now (its last word on it was not that it stopped);
    /// `None` when it never spoke of one (journals turned off).
    fn journal_runs(&self) -> Result<Option<bool>> {
        let log = fs::read_to_string(&self.log)?;
        let last = log.lines().rev().find(|l| l.contains("change journal"));
        Ok(last.map(|line| !line.contains("change journal stopped")))
    }

    /// Forgets the peak memory so far, so the next [`Agent::peak_kib`] is the coming work's.
    pub(crate) fn reset_peak(&self) -> Result<()> {
        let path = format!("/proc/{}/clear_refs", self.child.id());
        fs::write(&path, "5").with_context(|| path)
    }

    pub(crate) fn peak_kib(&self) -> Result<u64> {
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
    pub(crate) fn cpu(&self) -> Result<Duration> {
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

/// What the agents log unless `FERRY_BENCH_AGENT_LOG` says otherwise: warnings, and when their
/// change journals start and stop.
const JOURNAL_LOG: &str = "warn,ferry_agent::journal=info";

/// The two agents of a ferry run: `nas1` serving the source, `nas2` the tool's destinations.
pub(crate) struct Pair {
    pub(crate) nas1: Agent,
    pub(crate) nas2: Agent,
}

impl Pair {
    pub(crate) fn start(bench: &Bench, source: &Path, tool: Tool) -> Result<Self> {
        let nas1 = Agent::start(&bench.env, "nas1", source, &bench.tls)?;
        let nas2 = Agent::start(&bench.env, "nas2", &bench.dst[tool as usize], &bench.tls)?;
        Ok(Self { nas1, nas2 })
    }

    /// Waits until both agents' journals run and have run for a while (a watch whose queue
    /// overflowed starts over a moment later).
    pub(crate) fn wait_for_journals(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut steady_since = None;
        while Instant::now() < deadline {
            let (source, destination) = (self.nas1.journal_runs()?, self.nas2.journal_runs()?);
            if source.is_none() && destination.is_none() {
                return Ok(());
            }
            let running = source == Some(true) && destination == Some(true);
            steady_since = running.then(|| steady_since.unwrap_or_else(Instant::now));
            if steady_since.is_some_and(|since| since.elapsed() > Duration::from_secs(3)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("the agents' change journals did not settle within 10 minutes")
    }

    pub(crate) fn reset_peaks(&self) -> Result<()> {
        self.nas1.reset_peak()?;
        self.nas2.reset_peak()
    }

    /// The source's and the destination's peak resident sets, in KiB.
    pub(crate) fn peak_kib(&self) -> Result<(u64, u64)> {
        let (source, destination) = (self.nas1.peak_kib()?, self.nas2.peak_kib()?);
        eprintln!(
            "peak memory: source agent {} MiB, destination agent {} MiB",
            source / 1024,
            destination / 1024
        );
        Ok((source, destination))
    }

    pub(crate) fn cpu(&self) -> Result<Duration> {
        Ok(self.nas1.cpu()? + self.nas2.cpu()?)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rsync --daemon --no-detach` serving `root` as the writable module `dst`, under GNU time.
pub(crate) struct RsyncDaemon {
    pub(crate) time: Child,
    pub(crate) address: String,
    pub(crate) usage: PathBuf,
}

impl RsyncDaemon {
    pub(crate) fn start(env: &Env, root: &Path) -> Result<Self> {
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
    pub(crate) fn stop(mut self) -> Result<Usage> {
        self.terminate()?;
        Usage::read(&self.usage)
    }

    /// Asks the daemon (GNU time's child) to end, and waits for GNU time's report.
    pub(crate) fn terminate(&mut self) -> Result<()> {
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
pub(crate) const USAGE_FORMAT: &str = "%M %U %S";

pub(crate) struct Usage {
    pub(crate) memory_kib: u64,
    pub(crate) cpu: Duration,
}

impl Usage {
    /// The last line of a GNU time report (a signal notice may come before it).
    pub(crate) fn read(path: &Path) -> Result<Self> {
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

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_listening(address: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(address).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("nothing listens on {address}")
}
