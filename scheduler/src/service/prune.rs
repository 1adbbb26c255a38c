//! Pruning: finished runs older than `keep_runs` are deleted with their events, about once an
//! hour, by every scheduler (the delete is idempotent, so no lease is needed).

use std::time::Duration;

use super::worker::Worker;
use crate::store::{Store, StoreError};

/// How often finished runs older than `keep_runs` are deleted, and how many per statement.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const PRUNE_BATCH: i64 = 5000;
/// The wait after a full batch: more are due, soon rather than in an hour.
const PRUNE_MORE: Duration = Duration::from_secs(1);

pub struct Pruner {
    pub store: Store,
    pub keep_runs: Duration,
}

impl Worker for Pruner {
    fn name(&self) -> &'static str {
        "prune"
    }

    async fn work(&mut self) -> Result<Duration, StoreError> {
        let keep_ms = i64::try_from(self.keep_runs.as_millis()).unwrap_or(i64::MAX);
        let pruned = self.store.prune_runs(keep_ms, PRUNE_BATCH).await?;
        if pruned > 0 {
            let keep = humantime::format_duration(self.keep_runs);
            tracing::info!(pruned, %keep, "deleted old runs");
        }
        Ok(match pruned < PRUNE_BATCH as u64 {
            true => PRUNE_EVERY,
            false => PRUNE_MORE,
        })
    }
}
