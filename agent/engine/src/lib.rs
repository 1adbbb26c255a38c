//! ferry's sync engine: replicates a job (a rule, a source and one or more destinations)
//! between [`endpoint::Endpoint`]s, and reports what it did as [`Event`]s.
//!
//! It owns trees and scans ([`tree`], [`endpoint`]), filters, rsync-style deltas, the sync
//! rule's base, the rules' planning and execution ([`run`]), and the lease [`fence`] checked
//! before every write. It knows nothing of the network, the database, TLS or async runtimes:
//! an endpoint on another machine is the wire crate's business (`ferry-wire`), which
//! implements [`endpoint::Endpoint`] for it. Every call here blocks its thread.

pub mod base;
pub mod beneath;
pub mod delta;
pub mod endpoint;
pub mod fence;
pub mod filter;
pub mod journal;
pub mod locks;
pub mod memory;
pub mod meta;
pub mod raw_path;
pub mod run;
pub mod tree;

pub use endpoint::Scope;
pub use fence::{Fence, Halt};
pub use run::{Event, Guards, JobSpec, Rule, Summary};

/// Helpers for the tests of this crate and the crates above it.
#[doc(hidden)]
pub mod testing {
    /// Deterministic pseudo-random bytes for tests, so a failing case can be replayed from its seed.
    pub fn noise(seed: u64, len: usize) -> Vec<u8> {
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
}
