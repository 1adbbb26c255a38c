//! `ferry-agent`: today a one-shot local sync with ferry's engine; the remote agent service
//! arrives with mutual TLS and delta transfer.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use ferry_agent::endpoint::{Endpoint, LocalEndpoint};
use ferry_agent::filter::Filter;
use ferry_agent::{Event, JobSpec, Rule, Scope};

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
    let Cli { command } = Cli::parse();
    let Command::Sync {
        rule,
        include,
        exclude,
        verbose,
        source,
        destinations,
    } = command;
    let filter = match Filter::new(&include, &exclude) {
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
    };
    let print = |event: Event| match event {
        Event::Failed { path, error } => eprintln!("failed {}: {error}", path.display()),
        other if verbose => println!("{other:?}"),
        _ => {}
    };
    match ferry_agent::engine::run(
        &spec,
        &Scope::Full,
        &ferry_agent::engine::Halt::new(),
        &mut { print },
    ) {
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
