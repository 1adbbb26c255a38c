//! Work under a lease: the [`Fence`] an agent checks before every write, and the [`Halt`] that
//! stops a run before its next write once the lease may belong to someone else. Both the
//! engine (which checks the halt between actions and while copying) and the wire (which shows
//! the fence to agents) use them, so they live below both.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The lease a session works for: a schedule or monitor, and the epoch its holder won it at.
/// An agent remembers the highest epoch it has seen per resource and refuses writes under an
/// older one, so a scheduler that lost its lease cannot write any more.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fence {
    /// `job:NAME`.
    pub resource: String,
    pub epoch: i64,
    /// Whether the database showed this epoch as the lease's current one when the fence was
    /// presented: its holder's last renewal had not run out. An agent that cannot vouch for
    /// its own record of the resource (its state folder is new, or older than its data)
    /// admits only a confirmed fence.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confirmed: bool,
}

impl Fence {
    /// A fence as its holder knows it, unconfirmed.
    pub fn new(resource: impl Into<String>, epoch: i64) -> Self {
        Self {
            resource: resource.into(),
            epoch,
            confirmed: false,
        }
    }
}

impl std::fmt::Display for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} epoch {}", self.resource, self.epoch)
    }
}

/// Tells a running sync to stop before its next write: when [`Halt::stop`] is called, or when
/// the deadline set by [`Halt::extend_until`] passes (a scheduler's lease deadline: past it,
/// another scheduler may hold the work). Checked before every action and while copying, so a
/// process frozen past its deadline writes nothing once it resumes.
#[derive(Debug, Clone, Default)]
pub struct Halt(Arc<HaltState>);

#[derive(Debug, Default)]
struct HaltState {
    /// The lease this work runs under, shown to agents so they can refuse a stale holder.
    fence: Option<Fence>,
    stopped: AtomicBool,
    /// Nanoseconds after [`epoch`] at which to halt; 0 = no deadline.
    deadline: AtomicU64,
    /// Nanoseconds after [`epoch`] until which the database vouches for the fence; 0 = never.
    confirmed_until: AtomicU64,
    /// The halt this one stops with, if it is a [`Halt::child`].
    parent: Option<Halt>,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Halt {
    pub fn new() -> Self {
        Self::default()
    }

    /// A halt for work under the lease `fence`.
    pub fn fenced(fence: Fence) -> Self {
        Self(Arc::new(HaltState {
            fence: Some(fence),
            ..HaltState::default()
        }))
    }

    /// A halt that stops when this one does, and on its own too: one run of the work held
    /// under a lease, which can be cancelled without stopping the lease's later work.
    pub fn child(&self) -> Self {
        Self(Arc::new(HaltState {
            fence: self.0.fence.clone(),
            parent: Some(self.clone()),
            ..HaltState::default()
        }))
    }

    pub fn fence(&self) -> Option<&Fence> {
        self.0.fence.as_ref()
    }

    /// The fence as it is shown to an agent now: confirmed while the database vouches for it
    /// (see [`Halt::confirm_until`]), or when it came confirmed.
    pub fn presented_fence(&self) -> Option<Fence> {
        let mut fence = self.0.fence.clone()?;
        fence.confirmed |= self.confirmed();
        Some(fence)
    }

    fn confirmed(&self) -> bool {
        let until = self.0.confirmed_until.load(Ordering::SeqCst);
        let confirmed = until != 0 && epoch().elapsed().as_nanos() < u128::from(until);
        confirmed || self.0.parent.as_ref().is_some_and(Halt::confirmed)
    }

    /// Records that the database vouches for the fence until `until`: the local deadline of
    /// the lease's last claim or renewal. Work through agents outlives it (the agents fence
    /// it); only the fence's confirmation lapses.
    pub fn confirm_until(&self, until: Instant) {
        self.0
            .confirmed_until
            .store(nanos_after_epoch(until), Ordering::SeqCst);
    }

    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
    }

    /// Allows work until `deadline` (replacing an earlier deadline).
    pub fn extend_until(&self, deadline: Instant) {
        self.0
            .deadline
            .store(nanos_after_epoch(deadline), Ordering::SeqCst);
    }

    /// Time left before the deadline; `None` without one.
    pub fn remaining(&self) -> Option<Duration> {
        let deadline = self.0.deadline.load(Ordering::SeqCst);
        match (deadline, &self.0.parent) {
            (0, Some(parent)) => parent.remaining(),
            (0, None) => None,
            _ => Some(Duration::from_nanos(deadline).saturating_sub(epoch().elapsed())),
        }
    }

    pub fn is_halted(&self) -> bool {
        if self.0.stopped.load(Ordering::SeqCst) {
            return true;
        }
        let deadline = self.0.deadline.load(Ordering::SeqCst);
        let passed = deadline != 0 && epoch().elapsed().as_nanos() >= u128::from(deadline);
        passed || self.0.parent.as_ref().is_some_and(Halt::is_halted)
    }
}

/// `at` as nanoseconds after [`epoch`], at least 1 (0 means none).
fn nanos_after_epoch(at: Instant) -> u64 {
    let nanos = at.saturating_duration_since(epoch()).as_nanos().max(1);
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_halt_stops_with_its_parent_or_alone_and_shares_its_deadline() {
        let lease = Halt::fenced(Fence::new("job:docs", 3));
        lease.extend_until(Instant::now() + Duration::from_secs(60));
        let run = lease.child();
        assert_eq!(run.fence(), lease.fence());
        assert!(
            run.remaining()
                .is_some_and(|left| left > Duration::from_secs(50))
        );

        run.stop();
        assert!(run.is_halted());
        assert!(
            !lease.is_halted(),
            "cancelling one run leaves the lease's work alone"
        );

        let next = lease.child();
        assert!(!next.is_halted());
        lease.stop();
        assert!(next.is_halted(), "a lost lease stops its runs");
    }

    #[test]
    fn a_fence_is_presented_confirmed_only_while_the_database_vouches_for_it() {
        let lease = Halt::fenced(Fence::new("job:docs", 3));
        let run = lease.child();
        assert_eq!(run.presented_fence(), Some(Fence::new("job:docs", 3)));
        lease.confirm_until(Instant::now() + Duration::from_secs(60));
        assert!(run.presented_fence().is_some_and(|f| f.confirmed));
        lease.confirm_until(Instant::now());
        assert!(!run.presented_fence().is_some_and(|f| f.confirmed));

        // A fence that came confirmed (an agent running a job handed over) stays so.
        let handed_over = Halt::fenced(Fence {
            confirmed: true,
            ..Fence::new("job:docs", 3)
        });
        assert!(handed_over.presented_fence().is_some_and(|f| f.confirmed));
        assert_eq!(Halt::new().presented_fence(), None);
    }
}
