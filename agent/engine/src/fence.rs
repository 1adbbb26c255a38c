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
    /// `schedule:NAME` or `monitor:NAME`.
    pub resource: String,
    pub epoch: i64,
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

    pub fn stop(&self) {
        self.0.stopped.store(true, Ordering::SeqCst);
    }

    /// Allows work until `deadline` (replacing an earlier deadline).
    pub fn extend_until(&self, deadline: Instant) {
        let nanos = deadline
            .saturating_duration_since(epoch())
            .as_nanos()
            .max(1);
        self.0
            .deadline
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::SeqCst);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_halt_stops_with_its_parent_or_alone_and_shares_its_deadline() {
        let lease = Halt::fenced(Fence {
            resource: "job:docs".into(),
            epoch: 3,
        });
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
}
