//! `ferry`: define replication jobs, run the scheduler service, and watch what it does.

mod ca;
mod cli;
mod config;
mod lease;
mod plan;
mod service;
mod store;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Invalid, LogFormat, Output, Unhealthy};
use crate::store::StoreError;

/// Exit code for input the user must correct (clap uses it for usage errors too).
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    ferry_engine::memory::keep_freed_memory();
    let cli = Cli::parse();
    if !cli.is_service() {
        end_quietly_on_closed_pipe();
    }
    init_logging(cli.log_format);
    let json = cli.output == Output::Json;
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Unhealthy>().is_some() => {
            ExitCode::from(e.downcast_ref::<Unhealthy>().map_or(2, |u| u.0))
        }
        Err(e) => {
            let code = if is_invalid_input(&e) {
                EXIT_INVALID
            } else {
                1
            };
            if json {
                // Scripts that asked for JSON get their errors as JSON too, on stderr.
                let error = serde_json::json!({ "error": format!("{e:#}"), "exit_code": code });
                eprintln!("{error}");
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(code)
        }
    }
}

/// A command whose output goes into a pipe that closes early (`ferry runs | head -1`) ends as
/// Unix tools do, quietly, instead of panicking on the failed write. The scheduler service keeps
/// Rust's default: there a closed pipe is an error to log, not the end.
fn end_quietly_on_closed_pipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: SIG_DFL installs no handler of ours, so nothing runs in a signal context; the
    // runtime has not started yet, so no other thread sees the change half-done.
    #[allow(unsafe_code)]
    let restored = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    if let Err(e) = restored {
        tracing::debug!(error = %e, "could not restore SIGPIPE");
    }
}

fn is_invalid_input(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Invalid>().is_some()
        || matches!(
            e.downcast_ref::<StoreError>(),
            Some(
                StoreError::Exists { .. }
                    | StoreError::NotFound { .. }
                    | StoreError::InUse { .. }
                    | StoreError::Alive { .. }
            )
        )
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
