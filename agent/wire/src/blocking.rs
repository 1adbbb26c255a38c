//! The one boundary between the engine, which blocks its thread, and the network, which runs
//! as tokio tasks: an endpoint on an agent waits here for its session's futures.
//!
//! Blocking a thread that drives async tasks would stall every task queued on it (tokio
//! refuses with a panic). So engine work that may reach an agent runs through [`spawn`], on
//! the runtime's blocking pool, on a thread marked as such; [`wait`] is allowed there and on
//! threads outside any runtime (the engine's scan threads), and is an error anywhere else.

use std::cell::Cell;
use std::future::Future;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;

thread_local! {
    /// Set while this thread runs work given to [`spawn`].
    static BLOCKING_LANE: Cell<bool> = const { Cell::new(false) };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a call to an agent was made from an async task, which it would stall; \
     run engine work through ferry_wire::blocking::spawn"
)]
pub struct WrongContext;

/// Runs `work` (an engine run, say) on the current runtime's blocking pool, where it may wait
/// on agents.
pub fn spawn<F, R>(work: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        let _lane = Lane::enter();
        work()
    })
}

/// Marks this thread for as long as it lives; the pool reuses threads, so it is cleared even
/// when the work panics.
struct Lane;

impl Lane {
    fn enter() -> Self {
        BLOCKING_LANE.set(true);
        Lane
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        BLOCKING_LANE.set(false);
    }
}

/// Runs `future` on `runtime` and waits for it, unless this thread drives async tasks.
pub fn wait<F: Future>(runtime: &Handle, future: F) -> Result<F::Output, WrongContext> {
    let in_a_runtime = Handle::try_current().is_ok();
    if in_a_runtime && !BLOCKING_LANE.get() {
        return Err(WrongContext);
    }
    Ok(runtime.block_on(future))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer() -> u32 {
        tokio::task::yield_now().await;
        42
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_given_to_spawn_may_wait() {
        let runtime = Handle::current();
        let waited = spawn(move || wait(&runtime, answer())).await.unwrap();
        assert_eq!(waited, Ok(42));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_thread_outside_the_runtime_may_wait() {
        let runtime = Handle::current();
        let waited = spawn(move || {
            std::thread::scope(|threads| threads.spawn(|| wait(&runtime, answer())).join().unwrap())
        });
        assert_eq!(waited.await.unwrap(), Ok(42));
    }

    #[tokio::test]
    async fn an_async_task_gets_an_error_not_a_panic() {
        assert_eq!(wait(&Handle::current(), answer()), Err(WrongContext));
    }

    #[tokio::test]
    async fn a_plain_blocking_task_is_not_a_lane() {
        let runtime = Handle::current();
        let waited = tokio::task::spawn_blocking(move || wait(&runtime, answer()));
        assert_eq!(waited.await.unwrap(), Err(WrongContext));
    }
}
