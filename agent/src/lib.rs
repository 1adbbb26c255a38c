//! ferry's sync engine and file-server agent.
//!
//! The engine replicates a job (a rule, a source and one or more destinations) between
//! [`endpoint::Endpoint`]s: a local folder, or a folder on an agent reached over mutual TLS
//! ([`remote`]). The agent never talks to the database: it is told what to sync and reports
//! what it did through [`engine::Event`]s.

pub mod base;
pub mod client;
pub mod delta;
pub mod endpoint;
pub mod engine;
pub mod filter;
pub mod frame;
pub mod link;
pub mod memory;
pub mod protocol;
pub mod raw_path;
pub mod remote;
pub mod seal;
pub mod server;
pub mod tls;
pub mod tree;
pub mod watch;

pub use engine::{Event, Halt, JobSpec, Rule, Scope, Summary};

/// Deterministic pseudo-random bytes for tests, so a failing case can be replayed from its seed.
#[cfg(test)]
pub(crate) fn test_noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}
