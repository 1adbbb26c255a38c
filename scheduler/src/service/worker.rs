//! The shape every background duty of a scheduler shares: a [`Worker`] does one round of its
//! duty and says how long to wait before the next; [`run`] repeats it, backs off after errors
//! (doubling from [`BACKOFF_FIRST`] to [`BACKOFF_MAX`]), and returns once the shutdown token is
//! cancelled, between rounds, so a stop waits for the round under way and no longer.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

/// The wait after a first failed round; it doubles with each failure in a row.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// The longest wait between failed rounds.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

pub trait Worker: Send {
    /// Names the duty in logs.
    fn name(&self) -> &'static str;

    /// One round of the duty; the wait before the next.
    fn work(&mut self) -> impl Future<Output = Result<Duration, StoreError>> + Send;
}

/// Runs `worker` until `shutdown` is cancelled.
pub async fn run(mut worker: impl Worker, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let wait = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = worker.work() => match outcome {
                Ok(wait) => {
                    backoff = BACKOFF_FIRST;
                    wait
                }
                Err(e) => {
                    tracing::warn!(worker = worker.name(), error = %e, retry_in = ?backoff, "round failed");
                    let wait = backoff;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    wait
                }
            },
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Fails its first `failures` rounds, then succeeds every hour.
    struct Flaky {
        failures: usize,
        rounds: Arc<AtomicUsize>,
    }

    impl Worker for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }

        async fn work(&mut self) -> Result<Duration, StoreError> {
            let round = self.rounds.fetch_add(1, Ordering::SeqCst);
            match round < self.failures {
                true => Err(StoreError::Timeout(Duration::ZERO)),
                false => Ok(Duration::from_secs(3600)),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_worker_backs_off_doubling_then_keeps_its_own_pace() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let worker = Flaky {
            failures: 3,
            rounds: rounds.clone(),
        };
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(run(worker, shutdown.clone()));
        let rounds_after = |secs| {
            let rounds = rounds.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(secs)).await;
                rounds.load(Ordering::SeqCst)
            }
        };
        // Rounds at 0 s (fails), 1 s (fails), 3 s (fails), 7 s (succeeds), then hourly.
        assert_eq!(rounds_after(2).await, 2);
        assert_eq!(rounds_after(2).await, 3);
        assert_eq!(rounds_after(4).await, 4);
        assert_eq!(rounds_after(1800).await, 4);
        shutdown.cancel();
        running.await.unwrap();
    }
}
