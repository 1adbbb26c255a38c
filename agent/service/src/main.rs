//! `ferry-agent`: the agent service a file server runs (`run`), and a one-shot local sync with
//! ferry's engine (`sync`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ferry_engine::endpoint::{Endpoint, LocalEndpoint};
use ferry_engine::filter::Filter;
use ferry_engine::{Event, Halt, JobSpec, Rule, Scope};

use config::{FileConfig, ServedRoot};
use ferry_wire::observe::{self, Probe};

mod config;
mod fences;
mod journal;
mod roots;
mod serve;
mod session;

#[derive(Parser)]
#[command(
    name = "ferry-agent",
    version,
    about = "ferry's file-server agent and sync engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve this file server's folders to ferry schedulers and agents, over mutual TLS.
    ///
    /// Each peer is who its certificate says (`ferry ca issue --role`). With --root, every
    /// scheduler may read and write the folder and every agent may write into it as the
    /// destination of a run handed over to it; a --config file can narrow that per root and
    /// set limits (see docs/SECURITY.md).
    ///
    /// Example: ferry-agent run --name nas1 --root /srv/docs --tls-dir /etc/ferry/tls
    ///
    /// Example: ferry-agent run --config /etc/ferry/agent.toml
    Run(RunArgs),
    /// Sync local folders once with ferry's engine and print what changed.
    ///
    /// Example: ferry-agent sync --rule mirror /srv/docs /backup/docs
    Sync {
        /// mirror (destinations become identical), copy (nothing deleted) or sync (every way).
        #[arg(long, default_value = "mirror")]
        rule: Rule,
        /// Only files matching one of these globs (folders are always traversed).
        #[arg(long = "include", value_name = "GLOB")]
        include: Vec<String>,
        /// Skip paths matching these globs.
        #[arg(long = "exclude", value_name = "GLOB")]
        exclude: Vec<String>,
        /// Print each file as it is copied or deleted.
        #[arg(short, long)]
        verbose: bool,
        source: PathBuf,
        #[arg(required = true)]
        destinations: Vec<PathBuf>,
    },
    /// Print the completion script for SHELL.
    ///
    /// Example: ferry-agent completions bash > /etc/bash_completion.d/ferry-agent
    Completions { shell: clap_complete::Shell },
    /// Write man pages, ferry-agent.1 and one for each command, into DIR.
    Man {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// A TOML file with this agent's name, roots and who may use each, peers and limits;
    /// the flags below add to it or override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:9033].
    #[arg(long)]
    listen: Option<String>,
    /// This agent's name: its certificate is TLS_DIR/NAME.pem (from `ferry ca issue`).
    #[arg(long)]
    name: Option<String>,
    /// A folder this agent serves; repeat for several. Nothing outside them is reachable.
    #[arg(long = "root", value_name = "DIR")]
    roots: Vec<PathBuf>,
    /// Folder with ca.pem, NAME.pem and NAME.key (and ca.crl, once a certificate is revoked).
    #[arg(long, value_name = "DIR")]
    tls_dir: Option<PathBuf>,
    /// Folder for the agent's own state (the lease epochs it has seen, so a scheduler that
    /// lost its lease stays refused across a restart). In memory only when not given.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// A run handed over here looks only at what the roots' change journals say changed since
    /// its last run, and scans everything this often all the same, to check them: 24h, 90m,
    /// 30s; `off` scans everything every time (and keeps no journals) [default: 24h].
    #[arg(long, value_name = "DURATION", value_parser = config::parse_full_scan_every)]
    full_scan_every: Option<config::FullScanEvery>,
    /// Serve Prometheus metrics at /metrics, liveness at /healthz and readiness at /readyz
    /// (every root reachable) on this address, e.g. 127.0.0.1:9035. Bind it where only your
    /// monitoring reaches.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Log lines for people (human) or one JSON object a line (json), for a log collector.
    /// FERRY_LOG filters them (info by default; ferry_agent=debug for every request).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

/// What `ferry-agent run` needs, from the file and the flags together.
struct Settings {
    listen: String,
    name: String,
    tls_dir: PathBuf,
    state_dir: Option<PathBuf>,
    full_scan_every: Option<std::time::Duration>,
    metrics_listen: Option<std::net::SocketAddr>,
    log_format: LogFormat,
    roots: Vec<ServedRoot>,
    peers: std::collections::BTreeMap<String, String>,
    limits: config::Limits,
}

impl RunArgs {
    fn settings(self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let missing = |what: &str| format!("no {what}: give --{what} or set it in --config");
        let roots: Vec<ServedRoot> = (file.roots.into_iter())
            .chain(self.roots.into_iter().map(ServedRoot::open_to_all))
            .collect();
        if roots.is_empty() {
            return Err("no folder to serve: give --root DIR or [[root]] in --config".into());
        }
        if let Some(bad) = roots
            .iter()
            .find(|r| !r.path.is_absolute() || !r.path.is_dir())
        {
            return Err(format!(
                "root {}: not an existing folder given by an absolute path",
                bad.path.display()
            ));
        }
        Ok(Settings {
            listen: (self.listen.or(file.listen)).unwrap_or_else(|| "0.0.0.0:9033".into()),
            name: self.name.or(file.name).ok_or_else(|| missing("name"))?,
            tls_dir: self
                .tls_dir
                .or(file.tls_dir)
                .ok_or_else(|| missing("tls-dir"))?,
            state_dir: self.state_dir.or(file.state_dir),
            full_scan_every: (self.full_scan_every.or(file.full_scan_every))
                .unwrap_or_default()
                .0,
            metrics_listen: self.metrics_listen.or(file.metrics_listen),
            log_format: self.log_format,
            roots,
            peers: file.peers,
            limits: file.limits,
        })
    }
}

/// What the agent tells those who watch it: live while it runs, ready while it can reach
/// every folder it serves (a mount that went away is not). The roots are looked at by
/// [`watch_roots`] on a thread of its own: a hung network mount must not hang the answer.
struct Vitals {
    roots: Vec<PathBuf>,
    unready: std::sync::Mutex<Option<String>>,
}

impl Probe for Vitals {
    fn live(&self) -> Result<(), String> {
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        let unready = self.unready.lock().unwrap_or_else(|e| e.into_inner());
        unready.clone().map_or(Ok(()), Err)
    }
}

/// Looks at the roots every few seconds, and says which one does not answer or is gone.
async fn watch_roots(vitals: Arc<Vitals>) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    loop {
        let roots = vitals.roots.clone();
        let looked = tokio::task::spawn_blocking(move || {
            let gone = roots.iter().find(|root| !root.is_dir());
            gone.map(|root| format!("root {} is not reachable", root.display()))
        });
        let verdict = match tokio::time::timeout(EVERY, looked).await {
            Ok(Ok(verdict)) => verdict,
            Ok(Err(e)) => Some(format!("looking at the roots failed: {e}")),
            Err(_) => Some(format!("a root did not answer within {EVERY:?}")),
        };
        *vitals.unready.lock().unwrap_or_else(|e| e.into_inner()) = verdict;
        tokio::time::sleep(EVERY).await;
    }
}

/// Pets systemd's watchdog while the runtime turns. A root that went away is no reason for a
/// restart, which would not bring it back: `/readyz` reports that instead.
async fn pet_watchdog() {
    let Some(interval) = observe::watchdog_interval() else {
        return;
    };
    loop {
        observe::notify_watchdog();
        tokio::time::sleep(interval).await;
    }
}

fn main() -> ExitCode {
    ferry_engine::memory::keep_freed_memory();
    let Cli { command } = Cli::parse();
    match command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "ferry-agent", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { dir } => {
            let written = std::fs::create_dir_all(&dir).and_then(|()| {
                clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)
            });
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ferry-agent: {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run(args) => match args.settings() {
            Ok(settings) => run_agent(settings),
            Err(e) => {
                eprintln!("ferry-agent: {e}");
                ExitCode::from(2)
            }
        },
        Command::Sync {
            rule,
            include,
            exclude,
            verbose,
            source,
            destinations,
        } => sync_once(rule, &include, &exclude, verbose, source, destinations),
    }
}

fn run_agent(settings: Settings) -> ExitCode {
    let Settings {
        listen,
        name,
        tls_dir,
        state_dir,
        full_scan_every,
        metrics_listen,
        log_format,
        roots,
        peers,
        limits,
    } = settings;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let tls = ferry_wire::tls::server_config(&tls_dir, &name)
        .and_then(|server| Ok((server, ferry_wire::tls::client_config(&tls_dir, &name)?)));
    let (tls, client_tls) = match tls {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("ferry-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(dir) = &state_dir
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("ferry-agent: --state-dir {}: {e}", dir.display());
        return ExitCode::from(2);
    }
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    runtime.block_on(async {
        let listener = match tokio::net::TcpListener::bind(&listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("ferry-agent: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let address = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(agent = name, %address, "listening");
        let vitals = Arc::new(Vitals {
            roots: roots.iter().map(|r| r.path.clone()).collect(),
            unready: std::sync::Mutex::new(None),
        });
        tokio::spawn(watch_roots(vitals.clone()));
        if let Some(addr) = metrics_listen
            && let Err(e) = observe::serve(addr, vitals).await
        {
            eprintln!("ferry-agent: {e}");
            return ExitCode::FAILURE;
        }
        tokio::spawn(pet_watchdog());
        observe::notify_ready();
        let config = serve::AgentConfig {
            name,
            roots,
            peers,
            limits,
            client_tls,
            state_dir,
            full_scan_every,
        };
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let shutdown = async {
            shutdown.await;
            observe::notify_stopping();
        };
        match serve::serve(listener, tls, config, shutdown).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferry-agent: reading the fences in --state-dir: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// A spinner with what a sync has copied so far, when standard output is a terminal.
fn progress_on_terminal() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        let style = indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        bar.set_style(style);
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar.set_message("scanning");
        bar
    })
}

fn sync_once(
    rule: Rule,
    include: &[String],
    exclude: &[String],
    verbose: bool,
    source: PathBuf,
    destinations: Vec<PathBuf>,
) -> ExitCode {
    let filter = match Filter::new(include, exclude) {
        Ok(filter) => filter,
        Err(e) => {
            eprintln!("ferry-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let local = |p: PathBuf| Arc::new(LocalEndpoint::new(p)) as Arc<dyn Endpoint>;
    let spec = JobSpec {
        name: "local".into(),
        rule,
        source: local(source),
        destinations: destinations.into_iter().map(local).collect(),
        filter,
        guards: Default::default(),
        full_scan_every: None,
    };
    let progress = progress_on_terminal();
    let (mut files, mut bytes) = (0u64, 0u64);
    let print = |event: Event| {
        if let (Event::Copied { bytes: size, .. }, Some(bar)) = (&event, &progress) {
            (files, bytes) = (files + 1, bytes + size);
            bar.set_message(format!("copying: {files} files, {bytes} bytes"));
        }
        let (line, problem) = match event {
            Event::Failed { path, error } => (format!("failed {}: {error}", path.display()), true),
            Event::Skipped { at, path, why } => {
                (format!("skipped {} in {at}: {why}", path.display()), true)
            }
            other if verbose => (format!("{other:?}"), false),
            _ => return,
        };
        match &progress {
            Some(bar) => bar.println(line),
            None if problem => eprintln!("{line}"),
            None => println!("{line}"),
        }
    };
    let outcome = ferry_engine::run::run(&spec, &Scope::Full, &Halt::new(), &mut { print });
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    match outcome {
        Ok(summary) => {
            println!(
                "{} copied, {} deleted, {} conflicts, {} bytes, {} failed",
                summary.files_copied,
                summary.files_deleted,
                summary.conflicts,
                summary.bytes_total,
                summary.failures
            );
            if summary.failures > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("ferry-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
