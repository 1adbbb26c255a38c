//! `ferry-agent`: the agent service a file server runs (`run`), and a one-shot local sync with
//! ferry's engine (`sync`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ferry_engine::endpoint::{Endpoint, LocalEndpoint};
use ferry_engine::filter::Filter;
use ferry_engine::{Event, Halt, JobSpec, Rule, Scope};

mod fences;
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
    /// Example: ferry-agent run --name nas1 --root /srv/docs --tls-dir /etc/ferry/tls
    Run {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:9033")]
        listen: String,
        /// This agent's name: its certificate is TLS_DIR/NAME.pem (from `ferry ca issue`).
        #[arg(long)]
        name: String,
        /// A folder this agent serves; repeat for several. Nothing outside them is reachable.
        #[arg(long = "root", value_name = "DIR", required = true)]
        roots: Vec<PathBuf>,
        /// Folder with ca.pem, NAME.pem and NAME.key.
        #[arg(long, value_name = "DIR")]
        tls_dir: PathBuf,
        /// Folder for the agent's own state (the lease epochs it has seen, so a scheduler that
        /// lost its lease stays refused across a restart). In memory only when not given.
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
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
}

fn main() -> ExitCode {
    ferry_engine::memory::keep_freed_memory();
    let Cli { command } = Cli::parse();
    match command {
        Command::Run {
            listen,
            name,
            roots,
            tls_dir,
            state_dir,
        } => run_agent(&listen, name, roots, &tls_dir, state_dir),
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

fn run_agent(
    listen: &str,
    name: String,
    roots: Vec<PathBuf>,
    tls_dir: &std::path::Path,
    state_dir: Option<PathBuf>,
) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if let Some(missing) = roots.iter().find(|r| !r.is_absolute() || !r.is_dir()) {
        eprintln!(
            "ferry-agent: --root {}: not an existing folder given by an absolute path",
            missing.display()
        );
        return ExitCode::from(2);
    }
    let tls = ferry_wire::tls::server_config(tls_dir, &name)
        .and_then(|server| Ok((server, ferry_wire::tls::client_config(tls_dir, &name)?)));
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
        let listener = match tokio::net::TcpListener::bind(listen).await {
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
        let config = serve::AgentConfig {
            name,
            roots,
            client_tls,
            state_dir,
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
    };
    let print = |event: Event| match event {
        Event::Failed { path, error } => eprintln!("failed {}: {error}", path.display()),
        other if verbose => println!("{other:?}"),
        _ => {}
    };
    match ferry_engine::run::run(&spec, &Scope::Full, &Halt::new(), &mut { print }) {
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
