//! A private PostgreSQL server for tests: its own data folder on a free port, run as the
//! `postgres` user when we are root (PostgreSQL refuses to run as root), stopped and removed when
//! the test process ends, even by SIGKILL (a watchdog beside the server sees its owner go).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    run_as_postgres: bool,
    /// Settings given to `postgres -c`, after the test defaults.
    settings: Vec<String>,
}

impl PgServer {
    /// Creates and starts a fresh cluster.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Creates and starts a fresh cluster with `settings` (`name=value`) over the defaults,
    /// which favour speed over durability (no fsync, asynchronous commits).
    pub fn start_with(settings: &[&str]) -> Result<Self> {
        let server = Self::empty(settings)?;
        std::fs::create_dir_all(&server.data)?;
        server.own_data_folder()?;
        server.run_tool(
            "initdb",
            &[
                "-D",
                path_str(&server.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )?;
        server.launch()?;
        Ok(server)
    }

    /// A server whose data folder is not made yet.
    fn empty(settings: &[&str]) -> Result<Self> {
        let bin = find_bin_dir().context(
            "no PostgreSQL server binaries (initdb) found under /usr/lib/postgresql; \
             `bash tests/run.sh` installs them",
        )?;
        Ok(Self {
            bin,
            data: std::env::temp_dir().join(format!(
                "ferry-pg-{}-{}",
                std::process::id(),
                next_id()
            )),
            port: free_port()?,
            run_as_postgres: nix::unistd::geteuid().is_root(),
            settings: settings.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn own_data_folder(&self) -> Result<()> {
        if self.run_as_postgres {
            let user = nix::unistd::User::from_name("postgres")?
                .context("running as root, but there is no `postgres` user to run PostgreSQL as")?;
            nix::unistd::chown(&self.data, Some(user.uid), Some(user.gid))?;
        }
        Ok(())
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`) on a port of its own, started,
    /// with the same settings.
    pub fn standby_of(primary: &PgServer) -> Result<Self> {
        let settings: Vec<&str> = primary.settings.iter().map(String::as_str).collect();
        let standby = Self::empty(&settings)?;
        standby.copy_from(primary)?;
        Ok(standby)
    }

    /// Throws this server's data away and starts it again, on its own port, as a streaming
    /// replica of `primary`: how a failed primary rejoins its cluster.
    pub fn rejoin_as_standby_of(&self, primary: &PgServer) -> Result<()> {
        let _ = self.stop();
        std::fs::remove_dir_all(&self.data)?;
        self.copy_from(primary)
    }

    fn copy_from(&self, primary: &PgServer) -> Result<()> {
        let parent = self.data.parent().context("a data folder has a parent")?;
        std::fs::create_dir_all(parent)?;
        std::fs::create_dir_all(&self.data)?;
        std::fs::set_permissions(
            &self.data,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        self.own_data_folder()?;
        let port = primary.port.to_string();
        self.run_tool(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                path_str(&self.data),
                "-R",
                "-X",
                "stream",
                "--no-sync",
            ],
        )?;
        self.launch()
    }

    /// Makes every commit wait until a standby has it (`synchronous_standby_names`), once a
    /// standby streams from this server.
    pub fn require_synchronous_standby(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.query(
            "postgres",
            "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'",
        )? == "0"
        {
            if Instant::now() > deadline {
                bail!("no standby streams from the server on port {}", self.port);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.query(
            "postgres",
            "ALTER SYSTEM SET synchronous_standby_names = '*'",
        )?;
        self.query("postgres", "SELECT pg_reload_conf()")?;
        Ok(())
    }

    /// Promotes this standby to primary (`pg_ctl promote`), waiting until it takes writes.
    pub fn promote(&self) -> Result<()> {
        self.run_tool("pg_ctl", &["promote", "-D", path_str(&self.data), "-w"])
    }

    /// SIGKILLs the server and its backends at once: a crash, with no shutdown.
    pub fn kill(&self) -> Result<()> {
        self.signal_all(nix::sys::signal::Signal::SIGKILL)
    }

    /// One SQL statement through `psql` on database `db`; its output, trimmed.
    pub fn query(&self, db: &str, sql: &str) -> Result<String> {
        let psql = self.bin.join("psql");
        let port = self.port.to_string();
        let out = self
            .command(path_str(&psql))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "-d", db])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates a new, empty database and returns its URL.
    pub fn create_database(&self) -> Result<String> {
        let name = format!("ferry_test_{}", next_id());
        self.run_tool(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                &name,
            ],
        )?;
        Ok(self.url(&name))
    }

    /// Stops the server (fast shutdown: connections are cut), keeping its data.
    pub fn stop(&self) -> Result<()> {
        self.run_tool(
            "pg_ctl",
            &["stop", "-D", path_str(&self.data), "-m", "fast", "-w"],
        )
    }

    /// Freezes the server and its backends (SIGSTOP): connections stay open but nothing
    /// answers, as when the network to the database drops packets without a reset.
    pub fn freeze(&self) -> Result<()> {
        self.signal_all(nix::sys::signal::Signal::SIGSTOP)
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) -> Result<()> {
        self.signal_all(nix::sys::signal::Signal::SIGCONT)
    }

    fn signal_all(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        for pid in self.processes()? {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)?;
        }
        Ok(())
    }

    /// The server's processes: the postmaster and its children (backends, writers, walsenders).
    pub fn processes(&self) -> Result<Vec<i32>> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid"))?;
        let postmaster: i32 = pid_file
            .lines()
            .next()
            .context("empty postmaster.pid")?
            .parse()?;
        let mut pids = vec![postmaster];
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The parent pid is the second field after the command, which is in parentheses.
            let parent = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1));
            if parent == Some(postmaster.to_string().as_str()) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&self) -> Result<()> {
        self.launch()
    }

    fn launch(&self) -> Result<()> {
        // The watchdog stops the server once the test process is gone, however it ended.
        let script = r#"
            "$PGBIN/postgres" -D "$PGDATA" -p "$PGPORT" -k "$PGDATA" -c listen_addresses=127.0.0.1 \
                -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 \
                "$@" >>"$PGDATA/server.log" 2>&1 &
            pg=$!
            while [ -d "/proc/$OWNER" ] && kill -0 "$pg" 2>/dev/null; do sleep 0.5; done
            if kill -0 "$pg" 2>/dev/null; then
                kill -INT "$pg"; wait "$pg"; rm -rf "$PGDATA"
            fi
        "#;
        let mut cmd = self.command("sh");
        cmd.args(["-c", script, "postgres"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .env("PGBIN", &self.bin)
            .env("PGDATA", &self.data)
            .env("PGPORT", self.port.to_string())
            .env("OWNER", std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().context("starting postgres")?;
        self.wait_ready()
    }

    fn wait_ready(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()?;
            if ready.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let log = std::fs::read_to_string(self.data.join("server.log")).unwrap_or_default();
        bail!(
            "PostgreSQL on port {} did not become ready in 30 s:\n{log}",
            self.port
        )
    }

    fn command(&self, program: &str) -> Command {
        if self.run_as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--", program]);
            cmd
        } else {
            Command::new(program)
        }
    }

    fn run_tool(&self, tool: &str, args: &[&str]) -> Result<()> {
        let program = self.bin.join(tool);
        let out = self
            .command(path_str(&program))
            .args(args)
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// One server shared by every test in this process; `None` (after a loud message) when
/// PostgreSQL cannot be started outside CI. Under `CI=true` that is a test failure instead.
pub fn shared() -> Option<&'static PgServer> {
    static SERVER: OnceLock<Option<PgServer>> = OnceLock::new();
    SERVER
        .get_or_init(|| match PgServer::start() {
            Ok(server) => Some(server),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("PostgreSQL is required under CI but could not be started: {e:#}")
            }
            Err(e) => {
                eprintln!("\n!!!!! SKIPPING PostgreSQL tests: {e:#}\n!!!!! run `bash tests/run.sh` to install and run them\n");
                None
            }
        })
        .as_ref()
}

/// A PostgreSQL of the test's own, which it may stop and restart: `None` (after a loud skip
/// message) when PostgreSQL cannot run here; under CI that is a failure (see [`shared`]).
pub fn own_server() -> Option<PgServer> {
    shared()?;
    Some(PgServer::start().expect("a second PostgreSQL server"))
}

/// A fresh database on the shared server, or `None` when PostgreSQL is unavailable (see
/// [`shared`]).
pub fn fresh_database() -> Option<String> {
    let server = shared()?;
    Some(server.create_database().expect("creating a test database"))
}

fn find_bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn next_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}
