//! The `ferry` command line: definitions, the scheduler service, and status.

mod define;
mod edit;
mod output;
mod preview;
mod report;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use output::Output;
pub use report::Unhealthy;

use crate::store::{Access, Store};

/// Invalid input from the user: exits with code 2 and names the field.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

pub fn invalid(field: &str, message: impl Into<String>) -> anyhow::Error {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
    .into()
}

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "High-availability file replication: schedules and real-time monitors shared by several schedulers",
    long_about = "ferry replicates folders on cron schedules and in real time. Define jobs (what to sync), \
        schedules (when) and monitors (continuously) with this command or with plain SQL, then run \
        `ferry scheduler run` on one or more machines sharing the database.\n\n\
        Quick start (SQLite in the current folder, no server needed):\n  \
        ferry job add docs --rule mirror --from /srv/docs --to /backup/docs\n  \
        ferry schedule add docs-nightly --job docs --cron '0 2 * * *'\n  \
        ferry monitor add docs-live --job docs\n  \
        ferry scheduler run\n  \
        ferry status"
)]
pub struct Cli {
    /// Database URL: postgres://user@host/db, sqlite://path, or a SQLite file path.
    #[arg(
        long,
        global = true,
        env = "FERRY_DB",
        default_value = "ferry.db",
        hide_env_values = true
    )]
    pub db: String,
    /// How to print tables.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Print times in UTC, not in each schedule's own time zone (`--tz`).
    #[arg(long, global = true)]
    pub utc: bool,
    /// Log format of the scheduler service.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether this runs the scheduler service, rather than a command that ends.
    pub fn is_service(&self) -> bool {
        matches!(self.command, Command::Scheduler(SchedulerCommand::Run(_)))
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Jobs: what to replicate (a rule, a source, destinations, filters).
    #[command(subcommand)]
    Job(JobCommand),
    /// Schedules: fire a job at cron times.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// Monitors: replicate every change of a job's source as it happens.
    #[command(subcommand)]
    Monitor(MonitorCommand),
    /// The scheduler service and the list of schedulers.
    #[command(subcommand)]
    Scheduler(SchedulerCommand),
    /// Schedulers, schedules and monitors: who holds what, next fire time, last run, problems.
    Status {
        /// Check health instead, as a monitoring plugin does (Nagios, Icinga): one line, and
        /// exit code 0 (OK), 1 (WARNING: a scheduler down, a last run failed, a schedule
        /// waiting) or 2 (CRITICAL: no scheduler alive, a monitor not replicating).
        #[arg(long)]
        check: bool,
    },
    /// Recent runs, newest first.
    Runs {
        /// Only runs of this job.
        #[arg(long)]
        job: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// One run: cancel it.
    #[command(subcommand)]
    Run(RunCommand),
    /// Print run events (copied, deleted, conflicts, errors); --follow keeps printing new ones.
    Tail {
        /// Keep printing events as they are written.
        #[arg(short, long)]
        follow: bool,
        /// How many past events to print first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: i64,
    },
    /// Database maintenance.
    #[command(subcommand)]
    Db(DbCommand),
    /// Agents: the file servers that serve folders to ferry (`ferry-agent run`).
    #[command(subcommand)]
    Agent(AgentCommand),
    /// A private certificate authority for mutual TLS between schedulers and agents.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Print the completion script for SHELL.
    ///
    /// Example: ferry completions bash > /etc/bash_completion.d/ferry
    Completions { shell: clap_complete::Shell },
    /// Write man pages, ferry.1 and one for each command (ferry-job-add.1, …), into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum RunCommand {
    /// Stop a run of a schedule (its id is in `ferry runs`): the scheduler running it stops it
    /// before its next file, and it ends `cancelled`, with no retry. A run waiting for a
    /// retry gets none. A monitor's run ends when the monitor is held (`ferry monitor hold`).
    ///
    /// Example: ferry run cancel 1234 --wait
    Cancel {
        id: i64,
        /// Wait until the run has ended (at most a minute).
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Register an agent.
    ///
    /// Example: ferry agent add nas1 --address nas1.example.com:9033
    Add {
        name: String,
        #[arg(long, value_name = "HOST:PORT")]
        address: String,
    },
    /// Registered agents; with --tls-dir, also whether each is reachable, its version and
    /// roots.
    List {
        #[command(flatten)]
        reach: Reach,
    },
    /// Remove an agent no job uses.
    Rm { name: String },
    /// Connect to an agent, authenticate both ways, and report the round-trip time.
    ///
    /// Example: ferry agent test nas1 --tls-dir /etc/ferry/tls
    Test {
        name: String,
        #[command(flatten)]
        reach: Reach,
    },
}

/// How the CLI reaches agents.
#[derive(Args)]
pub struct Reach {
    /// Folder with ca.pem and this side's NAME.pem/NAME.key (from `ferry ca`).
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Whose certificate to present (default: this host's name, as a scheduler's).
    #[arg(long = "as", value_name = "NAME")]
    pub identity: Option<String>,
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Create the CA (DIR/ca.pem, DIR/ca.key). Keep ca.key safe: it can issue certificates.
    Init {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Issue a certificate for a scheduler or an agent (NAME.pem, NAME.key and a copy of
    /// ca.pem in OUT, or in DIR without --out).
    ///
    /// The role is written into the certificate: an agent serves schedulers only what their
    /// role allows, and agents can never act as schedulers. Keep the CA's folder (with ca.key)
    /// on the machine that signs, and give each node only its own OUT folder.
    ///
    /// Example: ferry ca issue --dir /root/ferry-ca --out /etc/ferry/tls --role agent nas1 --host nas1.example.com
    Issue {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// scheduler or agent.
        #[arg(long)]
        role: ferry_wire::identity::Role,
        /// The scheduler's or agent's name (what `--name` says when it runs).
        name: String,
        /// Another DNS name or IP address it is reached by; repeat for several.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// How long the certificate is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Where the certificate, its key and ca.pem go (default: DIR).
        #[arg(long, value_name = "OUT")]
        out: Option<PathBuf>,
    },
    /// Revoke the certificate last issued to NAME: DIR/ca.crl is rewritten. Copy ca.crl into
    /// every scheduler's and agent's TLS folder; they read it again within seconds, and
    /// refuse the certificate from then on.
    ///
    /// Example: ferry ca revoke --dir /root/ferry-ca nas2
    Revoke {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        name: String,
    },
}

#[derive(Subcommand)]
pub enum DbCommand {
    /// Bring the database's schema up to this ferry's (the only command that changes it,
    /// beside `scheduler run --migrate`).
    ///
    /// Upgrading: migrate with the new ferry first. Schedulers of the running version keep
    /// working with the new schema (a migration they could not live with says so, and they
    /// refuse it by name), so they can then be upgraded one at a time, the standby first.
    Migrate,
    /// The schema's version beside this ferry's, the migrations it would apply, and the
    /// versions of the schedulers using the database.
    Status,
}

#[derive(Subcommand)]
pub enum JobCommand {
    /// Define a job.
    ///
    /// Example: ferry job add docs --rule mirror --from /srv/docs --to /backup/docs --exclude '*.tmp'
    Add(JobAdd),
    /// Change a job: the flags given replace what the job has (a list flag its whole list);
    /// the schedulers pick the change up at their next tick, a monitor restarts with it.
    ///
    /// Example: ferry job set docs --exclude '*.tmp' --exclude 'cache/' --max-deletes 500
    Set(JobSet),
    /// Change a job in your editor ($VISUAL, $EDITOR or vi), as TOML; checked as `set`
    /// checks it before anything is written.
    Edit {
        name: String,
    },
    List,
    Show {
        name: String,
    },
    /// Remove a job no schedule or monitor uses.
    Rm {
        name: String,
    },
    /// What a run of a mirror or a copy would do now, without doing it: each file it would
    /// copy, update or delete at each destination, the bytes, and whether --max-deletes would
    /// stop it. Local folders are read on this machine (run it where the job's schedulers
    /// run); folders on agents through --tls-dir, with a scheduler's certificate (--as).
    ///
    /// Example: ferry job dry-run docs --tls-dir /etc/ferry/tls --as fs1
    DryRun {
        name: String,
        #[command(flatten)]
        reach: Reach,
    },
}

#[derive(Args)]
pub struct JobAdd {
    pub name: String,
    /// mirror: destinations become identical to the source (extras deleted);
    /// copy: new and changed files only, nothing deleted;
    /// sync: changes and deletions flow every way, conflicts keep both versions.
    #[arg(long)]
    pub rule: String,
    /// Source folder (an absolute path).
    #[arg(long = "from", value_name = "PATH")]
    pub source: String,
    /// Destination folder; repeat for several.
    #[arg(long = "to", value_name = "PATH", required = true)]
    pub destinations: Vec<String>,
    /// Only files matching one of these globs (`*.doc`, `reports/**`); folders are always traversed.
    #[arg(long = "include", value_name = "GLOB")]
    pub include: Vec<String>,
    /// Skip paths matching these globs, as in .gitignore: `*.tmp` and `build` match a name at
    /// any depth, `/build` the root's only, `build/` folders only, `logs/**` a path from the
    /// root. An excluded folder is skipped whole.
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Also skip the patterns of this ignore file, one a line as in .gitignore (blank lines
    /// and `#` comments skipped), like rsync's --exclude-from; repeat for several. The
    /// patterns are stored with the job: edit the file, then `ferry job set --exclude-from`.
    #[arg(long = "exclude-from", value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// Accept a source folder that does not exist on this machine (it exists where the
    /// schedulers run, or will be created later); runs fail until it exists.
    #[arg(long)]
    pub allow_missing_source: bool,
    /// Stop a run before it deletes anything when it would delete more than N files at any
    /// destination (an emptied source, a wrong path): a guard against mass deletion.
    #[arg(long, value_name = "N")]
    pub max_deletes: Option<i64>,
    /// Mirror only: keep the files a run deletes or overwrites in this folder inside each
    /// destination (under the run's date, e.g. .versions/20261122-020000/docs/a.txt) instead
    /// of destroying them.
    #[arg(long = "versions", value_name = "DIR")]
    pub versions_dir: Option<String>,
    /// Mirror and copy: also compare the content (BLAKE3, on both sides) of files whose size
    /// and modification time agree, and copy those that differ, as `rsync --checksum` does.
    /// Every run then reads every file on both sides.
    #[arg(long)]
    pub checksum: bool,
    /// Leave owners and groups alone: files belong to whoever the writer runs as. By
    /// default they are kept where the writer runs as root (`rsync -o -g`), by name between
    /// machines: alice's files belong to alice at the destination, whatever her number there.
    #[arg(long)]
    pub no_owner: bool,
    /// Keep owners and groups by number, not by name (`rsync --numeric-ids`): for machines
    /// that share their numbering (one directory service), or users unknown by name.
    #[arg(long)]
    pub numeric_ids: bool,
    /// Leave POSIX ACLs (access and default) alone. Kept by default (`rsync -A`).
    #[arg(long)]
    pub no_acls: bool,
    /// Leave extended attributes alone (user., security., trusted.: Samba keeps Windows ACLs
    /// in security.NTACL and DOS attributes in user.DOSATTRIB). Kept by default (`rsync -X`).
    #[arg(long)]
    pub no_xattrs: bool,
    /// Write the names of one file at the source as separate copies. By default they stay one
    /// file at every destination of a mirror or a copy (`rsync -H`).
    #[arg(long)]
    pub no_hard_links: bool,
    /// When a run has failed for good (its retries spent), the scheduler that ran it POSTs
    /// the run as JSON to this http(s):// URL, or runs the program of this name from its hook
    /// folder (`ferry scheduler run --hook-dir DIR`) with the run as JSON on its input.
    #[arg(long, value_name = "URL|NAME")]
    pub on_failure: Option<String>,
    /// Mirror and copy: make FIFOs, sockets and devices at the destinations (`rsync
    /// --specials --devices`). By default they are skipped with a warning and never opened.
    /// An agent makes no device for a peer: devices are kept by jobs on local folders only.
    #[arg(long)]
    pub specials: bool,
}

/// `ferry job set`: each flag given replaces the job's value.
#[derive(Args)]
pub struct JobSet {
    pub name: String,
    /// mirror, copy or sync.
    #[arg(long)]
    pub rule: Option<String>,
    /// The source folder.
    #[arg(long = "from", value_name = "PATH")]
    pub source: Option<String>,
    /// The destinations (all of them: repeat for several).
    #[arg(long = "to", value_name = "PATH")]
    pub destinations: Vec<String>,
    /// The include globs (all of them).
    #[arg(long = "include", value_name = "GLOB")]
    pub include: Vec<String>,
    /// The exclude globs (all of them).
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// The exclude globs from an ignore file (with --exclude's, all of them).
    #[arg(long = "exclude-from", value_name = "FILE")]
    pub exclude_from: Vec<PathBuf>,
    /// Drop every include and exclude glob.
    #[arg(long, conflicts_with_all = ["include", "exclude", "exclude_from"])]
    pub no_filters: bool,
    /// Accept a source folder that does not exist on this machine.
    #[arg(long)]
    pub allow_missing_source: bool,
    #[arg(long, value_name = "N", conflicts_with = "no_max_deletes")]
    pub max_deletes: Option<i64>,
    /// Let runs delete any number of files.
    #[arg(long)]
    pub no_max_deletes: bool,
    #[arg(long = "versions", value_name = "DIR", conflicts_with = "no_versions")]
    pub versions_dir: Option<String>,
    /// Keep no versions of deleted and overwritten files.
    #[arg(long)]
    pub no_versions: bool,
    /// Compare the content of files whose size and time agree: true or false.
    #[arg(long, value_name = "BOOL")]
    pub checksum: Option<bool>,
    #[arg(long, value_name = "URL|NAME", conflicts_with = "no_on_failure")]
    pub on_failure: Option<String>,
    /// Call nothing when a run fails.
    #[arg(long)]
    pub no_on_failure: bool,
}

#[derive(Subcommand)]
pub enum ScheduleCommand {
    /// Define a schedule.
    ///
    /// Example: ferry schedule add docs-nightly --job docs --cron '0 2 * * *' --tz Europe/Paris
    Add(ScheduleAdd),
    /// Change a schedule: the flags given replace what it has; the rest stays. Fire times
    /// already past are not fired again under a new cron.
    ///
    /// Example: ferry schedule set docs-nightly --cron '30 1 * * *' --prefer fs2
    Set(ScheduleSet),
    /// Change a schedule in your editor, as TOML; checked before anything is written.
    Edit {
        name: String,
    },
    List,
    Show {
        name: String,
    },
    Rm {
        name: String,
    },
    /// Pause: no scheduler fires it until released.
    Hold {
        name: String,
    },
    /// Resume a held schedule.
    Release {
        name: String,
    },
    /// Ask the scheduler holding it to fire it once, now.
    Run {
        name: String,
        /// Wait for the run to end and print its result (exit code 1 if it failed).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long (exit code 1); the run, once a
        /// scheduler takes it, goes on. Waits for ever by default.
        #[arg(long, value_parser = humantime::parse_duration, requires = "wait")]
        timeout: Option<Duration>,
    },
}

#[derive(Args)]
pub struct ScheduleAdd {
    pub name: String,
    #[arg(long)]
    pub job: String,
    /// Cron expression: 5 fields (minute hour day month weekday), or 6 with leading seconds.
    #[arg(long)]
    pub cron: String,
    /// Time zone the cron times are in (IANA name).
    #[arg(long, default_value = "UTC")]
    pub tz: String,
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// Extra attempts after a failed or interrupted run.
    #[arg(long, default_value_t = 0)]
    pub retries: i32,
    /// Wait before a retry.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub retry_delay: Duration,
    /// Fire times missed while no scheduler could run it: run_once, skip or run_all.
    #[arg(long, default_value = "run_once")]
    pub misfire: String,
}

#[derive(Args)]
pub struct ScheduleSet {
    pub name: String,
    #[arg(long)]
    pub job: Option<String>,
    #[arg(long)]
    pub cron: Option<String>,
    #[arg(long)]
    pub tz: Option<String>,
    #[command(flatten)]
    pub placement: PlacementSet,
    #[arg(long)]
    pub retries: Option<i32>,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retry_delay: Option<Duration>,
    /// run_once, skip or run_all.
    #[arg(long)]
    pub misfire: Option<String>,
}

/// Changes of where a schedule or monitor runs.
#[derive(Args)]
pub struct PlacementSet {
    /// Run on this scheduler while it is alive.
    #[arg(
        long = "prefer",
        value_name = "SCHEDULER",
        conflicts_with = "no_prefer"
    )]
    pub preferred: Option<String>,
    /// Prefer no scheduler: spread with the rest of the work.
    #[arg(long)]
    pub no_prefer: bool,
    /// Fall back to any live scheduler while the preferred one is down.
    #[arg(long, conflicts_with = "no_fallback")]
    pub fallback: bool,
    /// Wait for the preferred scheduler instead of falling back.
    #[arg(long)]
    pub no_fallback: bool,
}

#[derive(Args)]
pub struct PlacementArgs {
    /// Run on this scheduler while it is alive.
    #[arg(long = "prefer", value_name = "SCHEDULER")]
    pub preferred: Option<String>,
    /// Wait for the preferred scheduler instead of falling back to any live one.
    #[arg(long)]
    pub no_fallback: bool,
    /// Create it held (paused).
    #[arg(long)]
    pub held: bool,
}

#[derive(Subcommand)]
pub enum MonitorCommand {
    /// Define a real-time monitor.
    ///
    /// Example: ferry monitor add docs-live --job docs --debounce 100ms
    Add(MonitorAdd),
    /// Change a monitor: the flags given replace what it has; it restarts with them.
    ///
    /// Example: ferry monitor set docs-live --debounce 1s --no-prefer
    Set(MonitorSet),
    /// Change a monitor in your editor, as TOML; checked before anything is written.
    Edit {
        name: String,
    },
    List,
    Show {
        name: String,
    },
    Rm {
        name: String,
    },
    /// Pause: nobody watches it until released.
    Hold {
        name: String,
    },
    /// Resume a held monitor.
    Release {
        name: String,
    },
}

#[derive(Args)]
pub struct MonitorAdd {
    pub name: String,
    #[arg(long)]
    pub job: String,
    #[command(flatten)]
    pub placement: PlacementArgs,
    /// Gather changes for this long before syncing them as one batch.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub debounce: Duration,
    /// Full rescan interval, the safety net for changes the watcher missed.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub rescan: Duration,
}

#[derive(Args)]
pub struct MonitorSet {
    pub name: String,
    #[arg(long)]
    pub job: Option<String>,
    #[command(flatten)]
    pub placement: PlacementSet,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub debounce: Option<Duration>,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub rescan: Option<Duration>,
}

#[derive(Subcommand)]
pub enum SchedulerCommand {
    /// Run the scheduler service until SIGTERM or Ctrl-C.
    Run(SchedulerRun),
    /// Schedulers, alive or not, with their version, last heartbeat and live leases.
    List,
    /// Remove a scheduler that is down for good from the list (and from `status`); what it
    /// held was already taken over. A live scheduler cannot be forgotten.
    Forget { name: String },
}

#[derive(Args)]
pub struct SchedulerRun {
    /// Name, unique among live schedulers (default: the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// TOML file with the settings below (flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Lease lifetime: a crashed scheduler's work moves within this (default 3s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub lease_ttl: Option<Duration>,
    /// Heartbeat and lease renewal interval (default 1s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub heartbeat: Option<Duration>,
    /// How often definitions are re-read (default 1s; PostgreSQL also wakes on NOTIFY).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub poll: Option<Duration>,
    /// Delete finished runs and their events older than this (default 30days).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub keep_runs: Option<Duration>,
    /// Folder with ca.pem and this scheduler's NAME.pem/NAME.key (from `ferry ca issue NAME`),
    /// to reach agents. Needed for jobs with `AGENT:/path` folders.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at /metrics, liveness at /healthz (the service loop turns) and
    /// readiness at /readyz (registered, and the database answers) on this address, e.g.
    /// 127.0.0.1:9034. Bind it where only your monitoring reaches.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The folder of the programs a job may name with `--on-failure NAME`: only these run,
    /// as this scheduler's user, with the failed run as JSON on their standard input (and
    /// FERRY_JOB, FERRY_RUN_ID, FERRY_STATE, FERRY_ERROR set).
    #[arg(long, value_name = "DIR")]
    pub hook_dir: Option<PathBuf>,
    /// Apply the schema migrations this ferry brings before starting (as `ferry db migrate`
    /// does). Without it, a database behind this ferry is refused with what to run.
    #[arg(long)]
    pub migrate: bool,
    /// A folder on this machine whose jobs this scheduler may run (read and write); repeat
    /// for several. A job naming a local path outside them fails with that in its last_error,
    /// and nothing is touched. Jobs on agents need none.
    #[arg(long = "allow", value_name = "DIR")]
    pub allow: Vec<PathBuf>,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Ca(command) => return certificate_authority(cli.output, command),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "ferry", &mut std::io::stdout());
            return Ok(());
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)?;
            return Ok(());
        }
        _ => {}
    }
    let access = cli.command.access();
    check_database(&cli.db, matches!(access, Access::Read | Access::Inspect))?;
    let opened = async {
        let store = Store::open(&cli.db).await?;
        let schema = store.prepare(access).await?;
        Ok::<_, crate::store::StoreError>((store, schema))
    };
    let (store, schema) = opened
        .await
        .map_err(|e| anyhow::anyhow!("opening database {}: {e}", redact(&cli.db)))?;
    let out = cli.output;
    match cli.command {
        Command::Job(cmd) => define::job(&store, out, cmd).await,
        Command::Schedule(cmd) => define::schedule(&store, out, cmd, cli.utc).await,
        Command::Monitor(cmd) => define::monitor(&store, out, cmd).await,
        Command::Scheduler(SchedulerCommand::Run(args)) => report::scheduler_run(store, args).await,
        Command::Scheduler(SchedulerCommand::List) => report::scheduler_list(&store, out).await,
        Command::Scheduler(SchedulerCommand::Forget { name }) => {
            store.forget_scheduler(&name).await?;
            let done = serde_json::json!({"done": "forgot", "kind": "scheduler", "name": name});
            out.done(format!("forgot scheduler {name}"), done);
            Ok(())
        }
        Command::Status { check } => report::status(&store, out, check, cli.utc).await,
        Command::Runs { job, limit } => report::runs(&store, out, job.as_deref(), limit).await,
        Command::Tail { follow, lines } => report::tail(&store, out, follow, lines).await,
        Command::Run(RunCommand::Cancel { id, wait }) => {
            define::cancel(&store, out, id, wait).await
        }
        Command::Agent(cmd) => report::agent(&store, out, cmd).await,
        Command::Ca(_) | Command::Completions { .. } | Command::Man { .. } => {
            unreachable!("handled before the database is opened")
        }
        Command::Db(DbCommand::Migrate) => {
            let sentence = format!(
                "database {} is at schema version {} (this ferry's is {})",
                redact(&cli.db),
                schema.database,
                schema.binary
            );
            out.done(
                sentence,
                serde_json::json!({"done": "migrated", "schema": schema}),
            );
            Ok(())
        }
        Command::Db(DbCommand::Status) => report::db_status(&store, out, schema).await,
    }
}

impl Command {
    /// What the command does with the database. Reading commands never write, so a read-only
    /// role can run them, and none but `db migrate` (or `scheduler run --migrate`) changes the
    /// schema.
    fn access(&self) -> Access {
        match self {
            Command::Db(DbCommand::Migrate) => Access::Migrate,
            Command::Db(DbCommand::Status) => Access::Inspect,
            Command::Scheduler(SchedulerCommand::Run(args)) if args.migrate => Access::Migrate,
            Command::Status { .. }
            | Command::Runs { .. }
            | Command::Tail { .. }
            | Command::Scheduler(SchedulerCommand::List)
            | Command::Job(
                JobCommand::List | JobCommand::Show { .. } | JobCommand::DryRun { .. },
            )
            | Command::Schedule(ScheduleCommand::List | ScheduleCommand::Show { .. })
            | Command::Monitor(MonitorCommand::List | MonitorCommand::Show { .. })
            | Command::Agent(AgentCommand::List { .. } | AgentCommand::Test { .. }) => Access::Read,
            _ => Access::Write,
        }
    }
}

/// Refuses a database URL ferry cannot use, and, for a command that only reads, a SQLite file
/// that is not there (opening it would create an empty database and report nothing).
fn check_database(db: &str, reads_only: bool) -> anyhow::Result<()> {
    let sqlite_file = match db.split_once("://") {
        Some(("postgres" | "postgresql", _)) => return Ok(()),
        Some(("sqlite", path)) => path,
        Some((scheme, _)) => {
            let why = format!(
                "{scheme}:// is not a database ferry uses: give postgres://USER@HOST/DB, or a \
                 SQLite file path (sqlite://PATH)"
            );
            return Err(invalid("--db", why));
        }
        None => db.strip_prefix("sqlite:").unwrap_or(db),
    };
    if reads_only && sqlite_file != ":memory:" && !Path::new(sqlite_file).exists() {
        let why = format!(
            "no ferry database at {sqlite_file}: point --db (or FERRY_DB) at yours; \
             `ferry db migrate` creates a new one"
        );
        return Err(invalid("--db", why));
    }
    Ok(())
}

fn certificate_authority(output: Output, command: CaCommand) -> anyhow::Result<()> {
    use serde_json::json;
    match command {
        CaCommand::Init { dir } => {
            let cert = crate::ca::init(&dir)?;
            let sentence = format!(
                "created the CA {}; issue certificates with `ferry ca issue --dir {} NAME`",
                cert.display(),
                dir.display()
            );
            output.done(
                sentence,
                json!({"done": "created the CA", "certificate": cert}),
            );
        }
        CaCommand::Issue {
            dir,
            role,
            name,
            hosts,
            days,
            out,
        } => {
            let order = crate::ca::Order {
                name: &name,
                role,
                hosts: &hosts,
                days,
                out: out.as_deref().unwrap_or(&dir),
            };
            let cert = crate::ca::issue(&dir, &order).map_err(|e| match e {
                crate::ca::CaError::BadName(_) => invalid("NAME", e.to_string()),
                other => other.into(),
            })?;
            let sentence = format!(
                "issued {} (and its key beside it) for {role} {name}, valid {days} days",
                cert.display()
            );
            let done = json!({"done": "issued", "certificate": cert, "role": role.as_str(),
                "name": name, "days": days});
            output.done(sentence, done);
        }
        CaCommand::Revoke { dir, name } => {
            let crl = crate::ca::revoke(&dir, &name)?;
            let sentence = format!(
                "revoked {name}'s certificate; copy {} into every node's TLS folder",
                crl.display()
            );
            output.done(
                sentence,
                json!({"done": "revoked", "name": name, "crl": crl}),
            );
        }
    }
    Ok(())
}

/// The database URL without its secrets, for messages: the password in the user part and
/// any parameter whose name says it is one (`password=`, `sslpassword=`). A SQLite file path is
/// not a URL and is printed as it is.
fn redact(db: &str) -> String {
    let Ok(mut url) = url::Url::parse(db) else {
        return db.to_owned();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    let secret = |key: &str| key.to_ascii_lowercase().contains("password");
    if url.query_pairs().any(|(key, _)| secret(&key)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| match secret(&key) {
                true => (key.into_owned(), "***".to_owned()),
                false => (key.into_owned(), value.into_owned()),
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(
            redact("postgres://ferry:secret@db/ferry"),
            "postgres://ferry:***@db/ferry"
        );
        assert_eq!(
            redact("postgres://ferry@db/ferry"),
            "postgres://ferry@db/ferry"
        );
        assert_eq!(redact("ferry.db"), "ferry.db");
        assert_eq!(
            redact("postgres://ferry@127.0.0.1:1/ferry?password=hunter2&sslmode=verify-full"),
            "postgres://ferry@127.0.0.1:1/ferry?password=***&sslmode=verify-full"
        );
        assert_eq!(
            redact("postgres://u:p%40ss@db/ferry?sslpassword=x"),
            "postgres://u:***@db/ferry?sslpassword=***"
        );
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
