//! ferry's sync engine and file-server agent.
//!
//! The engine replicates a job (a rule, a source and one or more destinations) between
//! [`endpoint::Endpoint`]s. Today every endpoint is a local folder; remote agents plug in behind
//! the same trait. The agent never talks to the database: it is told what to sync and reports
//! what it did through [`engine::Event`]s.

pub mod base;
pub mod client;
pub mod delta;
pub mod endpoint;
pub mod engine;
pub mod filter;
pub mod frame;
pub mod protocol;
pub mod server;
pub mod tls;
pub mod tree;
pub mod watch;

pub use engine::{Event, Halt, JobSpec, Rule, Scope, Summary};
