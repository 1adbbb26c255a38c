//! Harnesses that drive the real binaries: [`Env`] (a database and a scratch folder, with the
//! `ferry` CLI and raw SQL against it) and [`TestScheduler`] (a `ferry scheduler run` process,
//! killed on drop).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sqlx::Connection;
use tempfile::TempDir;

use crate::netns::SlowLink;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The backends to run a test on: SQLite always, PostgreSQL when the private server is up
/// (under `CI=true` it must be).
pub fn backends() -> Vec<Backend> {
    let mut backends = vec![Backend::Sqlite];
    if crate::pg::shared().is_some() {
        backends.push(Backend::Postgres);
    }
    backends
}

/// A path to one of the workspace's binaries, built beside this test.
pub fn binary(name: &str) -> PathBuf {
    // A test runs from target/<profile>/deps/, a benchmark binary from target/<profile>/.
    let exe = std::env::current_exe().expect("executable path");
    let beside = exe.parent().expect("a folder").to_path_buf();
    let candidates = [
        beside.join(name),
        beside.parent().map(|p| p.join(name)).unwrap_or_default(),
    ];
    let found = candidates.iter().find(|p| p.is_file()).cloned();
    found.unwrap_or_else(|| {
        panic!("{name} is missing beside {}: build it first (`cargo build --workspace --bins`, as tests/run.sh does)", beside.display())
    })
}

/// The previous release's binary `name` (`ferry` or `ferry-agent`), which tests/run.sh builds
/// from its commit for the upgrade test; `None` when this checkout could not build it.
pub fn previous_release(name: &str) -> Option<PathBuf> {
    let ours = binary(name);
    let target = ours.ancestors().find(|p| p.ends_with("target"))?;
    let previous = target.join("previous-release").join(name);
    previous.is_file().then_some(previous)
}

/// The result of one `ferry` command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with the output unless the command succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// A scratch folder and a database, SQLite or a fresh PostgreSQL database.
pub struct Env {
    pub dir: TempDir,
    pub db: String,
    pub backend: Backend,
    /// Where the binaries run: loopback, or a slow link of the test's own.
    pub network: Option<SlowLink>,
}

impl Env {
    /// An environment on a database of `server`, a PostgreSQL the test may stop and restart.
    pub fn on_server(server: &crate::pg::PgServer) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = server.create_database().expect("createdb");
        Self {
            dir,
            db,
            backend: Backend::Postgres,
            network: None,
        }
    }

    /// An environment on the database at `db` (a URL the test made, with several hosts, say).
    pub fn on_database(db: String) -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            db,
            backend: Backend::Postgres,
            network: None,
        }
    }

    /// The live holder of a schedule or monitor, per `ferry_status`.
    pub fn holder(&self, name: &str) -> Option<String> {
        self.sql_text(&format!(
            "SELECT holder FROM ferry_status WHERE name = '{name}'"
        ))
    }

    pub fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = match backend {
            Backend::Sqlite => dir.path().join("ferry.db").display().to_string(),
            Backend::Postgres => crate::pg::shared()
                .expect("PostgreSQL is up")
                .create_database()
                .expect("createdb"),
        };
        Self {
            dir,
            db,
            backend,
            network: None,
        }
    }

    /// One of ferry's binaries, to be run where this environment's processes run.
    pub fn command(&self, name: &str) -> Command {
        match &self.network {
            Some(link) => link.command(&binary(name)),
            None => Command::new(binary(name)),
        }
    }

    /// A path inside the scratch folder.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Runs `ferry --db <db> args…` and returns what it printed.
    pub fn ferry(&self, args: &[&str]) -> Run {
        let output = self
            .command("ferry")
            .arg("--db")
            .arg(&self.db)
            .args(args)
            .env("FERRY_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("running ferry");
        Run::from(output)
    }

    /// `ferry job add NAME --rule RULE --from FROM --to TO EXTRA…`, which must succeed.
    pub fn add_job(&self, name: &str, rule: &str, (from, to): (&Path, &Path), extra: &[&str]) {
        let (from, to) = (from.to_str().expect("UTF-8"), to.to_str().expect("UTF-8"));
        let add = [
            "job", "add", name, "--rule", rule, "--from", from, "--to", to,
        ];
        self.ferry(&[&add[..], extra].concat()).ok();
    }

    /// The last `lines` run events, as `ferry tail` prints them.
    pub fn events(&self, lines: usize) -> String {
        self.ferry(&["tail", "-n", &lines.to_string()]).ok().stdout
    }

    /// Runs SQL statements as a user would from psql or sqlite3.
    pub fn sql(&self, statements: &str) {
        self.try_sql(statements).expect("SQL statements");
    }

    /// Runs SQL statements and returns the database's error, if any.
    pub fn try_sql(&self, statements: &str) -> Result<(), sqlx::Error> {
        let db = self.db.clone();
        let statements = sqlx::AssertSqlSafe(statements.to_owned());
        block_on(async move {
            match self.backend {
                Backend::Postgres => {
                    let mut conn = sqlx::PgConnection::connect(&db).await?;
                    sqlx::raw_sql(statements).execute(&mut conn).await?;
                }
                Backend::Sqlite => {
                    let mut conn =
                        sqlx::SqliteConnection::connect(&format!("sqlite://{db}")).await?;
                    sqlx::raw_sql(statements).execute(&mut conn).await?;
                }
            }
            Ok(())
        })
    }

    /// The first column of the first row of `query`, as text (NULL and no row are `None`).
    pub fn sql_text(&self, query: &str) -> Option<String> {
        let db = self.db.clone();
        let query = query.to_owned();
        block_on(async move {
            let row: Option<(Option<String>,)> = match self.backend {
                Backend::Postgres => {
                    let mut conn = sqlx::PgConnection::connect(&db).await?;
                    sqlx::query_as(sqlx::AssertSqlSafe(query))
                        .fetch_optional(&mut conn)
                        .await?
                }
                Backend::Sqlite => {
                    let mut conn =
                        sqlx::SqliteConnection::connect(&format!("sqlite://{db}")).await?;
                    sqlx::query_as(sqlx::AssertSqlSafe(query))
                        .fetch_optional(&mut conn)
                        .await?
                }
            };
            Ok::<_, sqlx::Error>(row.and_then(|(v,)| v))
        })
        .expect("SQL query")
    }

    /// A `ferry ca` folder (`tls` in this environment) with a certificate for each agent
    /// (also valid for 127.0.0.1) and each scheduler, in its role.
    pub fn tls_folder(&self, agents: &[&str], schedulers: &[&str]) -> PathBuf {
        let tls = self.path("tls");
        let dir = tls.to_str().expect("a UTF-8 path");
        self.ferry(&["ca", "init", "--dir", dir]).ok();
        for agent in agents {
            let issue = ["ca", "issue", "--dir", dir, "--role", "agent", agent];
            self.ferry(&[&issue[..], &["--host", "127.0.0.1"]].concat())
                .ok();
        }
        for scheduler in schedulers {
            let issue = [
                "ca",
                "issue",
                "--dir",
                dir,
                "--role",
                "scheduler",
                scheduler,
            ];
            self.ferry(&issue).ok();
        }
        tls
    }

    /// Starts `ferry scheduler run --name NAME` with fast test timings.
    pub fn scheduler(&self, name: &str) -> TestScheduler {
        TestScheduler::start(self, name, &[])
    }
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// A running `ferry scheduler run`, SIGKILLed when dropped.
pub struct TestScheduler {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl TestScheduler {
    pub fn start(env: &Env, name: &str, extra: &[&str]) -> Self {
        Self::start_with_vars(env, name, extra, &[])
    }

    /// Starts `program` (another release's `ferry`) as scheduler `name`.
    pub fn start_program(env: &Env, program: &Path, name: &str, extra: &[&str]) -> Self {
        Self::launch(env, Command::new(program), name, extra, &[])
    }

    /// Starts with extra environment variables (LD_PRELOAD of libfaketime, say).
    pub fn start_with_vars(env: &Env, name: &str, extra: &[&str], vars: &[(&str, &str)]) -> Self {
        Self::launch(env, env.command("ferry"), name, extra, vars)
    }

    /// Starts a scheduler that sees `files` over the system's (`/etc/hosts`, say: host names
    /// of the test's own), as [`over_system_files`] does. Needs root.
    pub fn start_seeing(env: &Env, name: &str, extra: &[&str], files: &[(&Path, &str)]) -> Self {
        let command = over_system_files(files, &binary("ferry"));
        Self::launch(env, command, name, extra, &[])
    }

    fn launch(
        env: &Env,
        mut command: Command,
        name: &str,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> Self {
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = env.path(&format!("{name}.{n}.log"));
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let child = command
            .arg("--db")
            .arg(&env.db)
            .args(["scheduler", "run", "--name", name])
            .args(extra)
            // Every folder of a test is in its scratch folder, unless the test says otherwise.
            .args(match extra.contains(&"--allow") {
                true => vec![],
                false => vec!["--allow".as_ref(), env.dir.path().as_os_str()],
            })
            .env("FERRY_LOG", "info,ferry=debug")
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting ferry scheduler run");
        let scheduler = Self {
            name: name.into(),
            child: Some(child),
            log,
        };
        scheduler.wait_for_log("registered", Duration::from_secs(20));
        scheduler
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGSTOP: the process freezes, as on a long GC pause or a stalled VM. On SQLite it is
    /// frozen between two of its writes: the write lock is the file's, so a process stopped
    /// inside a write would stall every other writer until it resumed (SQLite's limit, which
    /// the README names), and the test would wait on that instead of on the lease.
    pub fn pause(&self, env: &Env) {
        let stop = || kill(Pid::from_raw(self.pid()), Signal::SIGSTOP).expect("SIGSTOP");
        if env.backend == Backend::Postgres {
            return stop();
        }
        let db = format!("sqlite://{}", env.db);
        block_on(async move {
            let mut conn = sqlx::SqliteConnection::connect(&db).await?;
            // Waits out a write in progress; while it is held, the scheduler is in none.
            sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut conn).await?;
            stop();
            sqlx::raw_sql("ROLLBACK").execute(&mut conn).await?;
            Ok::<_, sqlx::Error>(())
        })
        .expect("taking SQLite's write lock to freeze a scheduler between writes");
    }

    /// SIGCONT after [`TestScheduler::pause`].
    pub fn resume(&self) {
        kill(Pid::from_raw(self.pid()), Signal::SIGCONT).expect("SIGCONT");
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        wait_for_log(
            &format!("scheduler {}", self.name),
            || self.log(),
            needle,
            timeout,
        );
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit code and how long it took.
    pub fn terminate(mut self) -> (i32, Duration) {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let status = child.wait().expect("wait");
        let code = status.code().unwrap_or_else(|| {
            use std::os::unix::process::ExitStatusExt;
            let signal = status.signal().unwrap_or(0);
            panic!(
                "scheduler {} died of signal {signal} on SIGTERM:\n{}",
                self.name,
                self.log()
            )
        });
        (code, started.elapsed())
    }

    /// SIGKILL: no cleanup, exactly like a crash.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestScheduler {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits until `log()` contains `needle`; panics with the log, naming `who`, after `timeout`.
fn wait_for_log(who: &str, log: impl Fn() -> String, needle: &str, timeout: Duration) {
    let waited = wait_until(timeout, || log().contains(needle));
    assert!(waited, "{who} never logged {needle:?}:\n{}", log());
}

/// Polls `done` every 50 ms until it is true or `timeout` passes; returns whether it became true.
pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every file, folder and link under `root` with its content and mtime, for comparing trees.
pub fn snapshot(root: &Path) -> Vec<(String, Option<Vec<u8>>, i64)> {
    let mut entries = Vec::new();
    collect(root, root, &mut entries);
    entries.sort();
    entries
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, Option<Vec<u8>>, i64)>) {
    let Ok(read) = fs::read_dir(dir) else { return };
    for entry in read.flatten() {
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .expect("under root")
            .display()
            .to_string();
        if rel.starts_with(".ferry") {
            continue;
        }
        // A temporary file may be renamed away between the listing and this look.
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        let mtime = filetime_secs(&meta);
        if meta.is_dir() {
            out.push((format!("{rel}/"), None, 0));
            collect(root, &path, out);
        } else {
            out.push((rel, fs::read(&path).ok(), mtime));
        }
    }
}

fn filetime_secs(meta: &fs::Metadata) -> i64 {
    use std::os::unix::fs::MetadataExt;
    meta.mtime() * 1_000_000_000 + meta.mtime_nsec()
}

/// `program`, run in a mount namespace of its own where each `(file, system_file)` of `files`
/// is bind-mounted over the system file: it sees other users, or other host names, than the
/// machine does, as a process on another machine would. Needs root.
pub fn over_system_files(files: &[(&Path, &str)], program: &Path) -> Command {
    let mut script = String::new();
    for _ in files {
        script.push_str("mount --bind \"$1\" \"$2\" && shift 2 && ");
    }
    script.push_str("exec \"$@\"");
    let mut unshare = Command::new("unshare");
    unshare.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        &script,
        "sh",
    ]);
    for (file, system_file) in files {
        unshare.arg(file).arg(system_file);
    }
    unshare.arg(program);
    unshare
}

/// A running `ferry-agent run` on 127.0.0.1 (a free port), SIGKILLed when dropped.
pub struct TestAgent {
    pub name: String,
    /// `127.0.0.1:PORT` it listens on.
    pub address: String,
    child: Child,
    log: PathBuf,
    /// Where this process's part of the log begins (an agent restarted under its name
    /// appends to the same file).
    log_from: usize,
}

/// What an agent process is started under.
enum Wrapper {
    None,
    /// `prlimit`: at most this many file descriptors.
    OpenFiles(u32),
    /// A mount namespace whose `/etc/passwd` and `/etc/group` are those in this folder.
    Accounts(PathBuf),
    /// Another release's binary.
    Program(PathBuf),
}

impl TestAgent {
    pub fn start(env: &Env, name: &str, roots: &[&Path], tls_dir: &Path) -> Self {
        Self::start_at(env, name, roots, tls_dir, "127.0.0.1:0")
    }

    /// Starts an agent listening on `listen` (a fixed port, to restart it where it was).
    pub fn start_at(env: &Env, name: &str, roots: &[&Path], tls_dir: &Path, listen: &str) -> Self {
        Self::launch(env, name, roots, tls_dir, (listen, &[]), Wrapper::None)
    }

    /// Starts an agent listening on `listen`, with more `ferry-agent run` arguments.
    pub fn start_at_with(
        env: &Env,
        name: &str,
        roots: &[&Path],
        tls_dir: &Path,
        listen: &str,
        extra: &[&str],
    ) -> Self {
        Self::launch(env, name, roots, tls_dir, (listen, extra), Wrapper::None)
    }

    /// Starts `program` (another release's `ferry-agent`) as agent `name`.
    pub fn start_program(
        env: &Env,
        program: &Path,
        name: &str,
        roots: &[&Path],
        tls_dir: &Path,
    ) -> Self {
        let wrapper = Wrapper::Program(program.to_owned());
        Self::launch(env, name, roots, tls_dir, ("127.0.0.1:0", &[]), wrapper)
    }

    /// Starts an agent with more `ferry-agent run` arguments (`--config FILE`, say) and, when
    /// given, at most `open_files` file descriptors.
    pub fn start_with(
        env: &Env,
        name: &str,
        roots: &[&Path],
        tls_dir: &Path,
        extra: &[&str],
        open_files: Option<u32>,
    ) -> Self {
        let wrapper = open_files.map_or(Wrapper::None, Wrapper::OpenFiles);
        Self::launch(env, name, roots, tls_dir, ("127.0.0.1:0", extra), wrapper)
    }

    /// Starts an agent that sees `passwd` and `group` (the contents of those files) as its
    /// machine's users and groups, as an agent on another machine would: it runs in a mount
    /// namespace of its own, where they are bind-mounted over `/etc`'s. Needs root.
    pub fn start_with_accounts(
        env: &Env,
        name: &str,
        roots: &[&Path],
        tls_dir: &Path,
        (passwd, group): (&str, &str),
    ) -> Self {
        let files = env.path(&format!("agent-{name}-accounts"));
        fs::create_dir_all(&files).expect("accounts folder");
        fs::write(files.join("passwd"), passwd).expect("passwd");
        fs::write(files.join("group"), group).expect("group");
        let wrapper = Wrapper::Accounts(files);
        Self::launch(env, name, roots, tls_dir, ("127.0.0.1:0", &[]), wrapper)
    }

    fn launch(
        env: &Env,
        name: &str,
        roots: &[&Path],
        tls_dir: &Path,
        (listen, extra): (&str, &[&str]),
        wrapper: Wrapper,
    ) -> Self {
        let log = env.path(&format!("agent-{name}.log"));
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let skip = fs::read_to_string(&log).map_or(0, |l| l.len());
        let mut command = match wrapper {
            Wrapper::OpenFiles(limit) => {
                let mut prlimit = Command::new("prlimit");
                prlimit
                    .arg(format!("--nofile={limit}:{limit}"))
                    .arg("--")
                    .arg(binary("ferry-agent"));
                prlimit
            }
            Wrapper::Accounts(files) => {
                let (passwd, group) = (files.join("passwd"), files.join("group"));
                let over = [(&*passwd, "/etc/passwd"), (&*group, "/etc/group")];
                over_system_files(&over, &binary("ferry-agent"))
            }
            Wrapper::None => env.command("ferry-agent"),
            Wrapper::Program(program) => Command::new(program),
        };
        command
            .args(["run", "--listen", listen, "--name", name, "--tls-dir"])
            .arg(tls_dir);
        // A state folder of its own, unless the test names one.
        if !extra.contains(&"--state-dir") {
            command
                .arg("--state-dir")
                .arg(env.path(&format!("agent-{name}-state")));
        }
        for root in roots {
            command.arg("--root").arg(root);
        }
        command.args(extra);
        let child = command
            .env(
                "FERRY_LOG",
                "info,ferry_agent=debug,ferry_wire=debug,ferry_engine=debug",
            )
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("starting ferry-agent run");
        let mut agent = Self {
            name: name.into(),
            address: String::new(),
            child,
            log,
            log_from: skip,
        };
        let found = wait_until(Duration::from_secs(20), || {
            let log = agent.log();
            let address = log[skip.min(log.len())..]
                .lines()
                .find(|l| l.contains("listening"))
                .and_then(|l| l.split("address=").nth(1));
            address
                .map(|a| agent.address = a.trim().to_owned())
                .is_some()
        });
        assert!(found, "agent {name} never listened:\n{}", agent.log());
        agent
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What this process logged, without what agents of the same name logged before it.
    pub fn log_since_start(&self) -> String {
        let log = self.log();
        log.get(self.log_from..).unwrap_or_default().to_owned()
    }

    /// Waits until the log contains `needle`; panics with the log after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        wait_for_log(
            &format!("agent {}", self.name),
            || self.log(),
            needle,
            timeout,
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash or a power cut would stop it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
