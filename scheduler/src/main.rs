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

use crate::cli::{Cli, Invalid, LogFormat};
use crate::store::StoreError;

/// Exit code for input the user must correct (clap uses it for usage errors too).
const EXIT_INVALID: u8 = 2;

fn main() -> ExitCode {
    ferry_engine::memory::keep_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if is_invalid_input(&e) {
                ExitCode::from(EXIT_INVALID)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn is_invalid_input(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Invalid>().is_some()
        || matches!(
            e.downcast_ref::<StoreError>(),
            Some(StoreError::Exists { .. } | StoreError::NotFound { .. })
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
