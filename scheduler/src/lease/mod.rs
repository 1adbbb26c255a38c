//! Who runs what: scheduler identity, and placement of schedules and monitors over the live
//! schedulers. The lease rows themselves are claimed, renewed and released through
//! [`crate::store::Store`], one compare-and-swap statement each.

use chrono::{DateTime, Duration, Utc};

use crate::store::SchedulerRow;

/// This process's identity: a stable name and a fresh instance id.
pub fn default_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ferry".into())
}

/// Where a schedule or monitor should run, as this scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Here; the reason is shown in status.
    Here(&'static str),
    /// On another scheduler.
    Elsewhere(String),
    /// Nowhere for now: the reason says why.
    Waiting(String),
}

/// The schedulers that may take work. A scheduler that just (re)started joins once it has been
/// alive for the settling time, so a flapping one does not pull work back and forth; when none
/// has settled yet (everything just started), every live one counts.
pub struct Candidates {
    settled: Vec<String>,
    live: Vec<String>,
}

impl Candidates {
    pub fn new(schedulers: &[SchedulerRow], now: DateTime<Utc>, settle: Duration) -> Self {
        let live: Vec<String> = schedulers
            .iter()
            .filter(|s| s.alive)
            .map(|s| s.name.clone())
            .collect();
        let settled: Vec<String> = schedulers
            .iter()
            .filter(|s| s.alive && s.started_at + settle <= now)
            .map(|s| s.name.clone())
            .collect();
        let settled = if settled.is_empty() {
            live.clone()
        } else {
            settled
        };
        Self { settled, live }
    }

    /// Decides where `resource` goes, seen from scheduler `me`.
    pub fn place(
        &self,
        me: &str,
        resource: &str,
        preferred: Option<&str>,
        fallback_any: bool,
    ) -> Placement {
        let at = |owner: &str, why| {
            if owner == me {
                Placement::Here(why)
            } else {
                Placement::Elsewhere(owner.into())
            }
        };
        match preferred {
            Some(p) if self.settled.iter().any(|s| s == p) => at(p, "preferred"),
            Some(p) if !fallback_any => {
                let state = if self.live.iter().any(|s| s == p) {
                    "settling after a restart"
                } else {
                    "down"
                };
                Placement::Waiting(format!(
                    "preferred scheduler {p} is {state}, and fallback is off"
                ))
            }
            _ => match rendezvous(resource, &self.settled) {
                Some(owner) => at(
                    owner,
                    if preferred.is_some() {
                        "fallback"
                    } else {
                        "spread"
                    },
                ),
                None => Placement::Waiting("no live scheduler".into()),
            },
        }
    }
}

/// Highest-random-weight hashing: every scheduler computes the same owner from the same live
/// set, and a scheduler joining or leaving moves only its share of the work.
fn rendezvous<'a>(resource: &str, schedulers: &'a [String]) -> Option<&'a String> {
    schedulers.iter().max_by_key(|s| {
        let mut hasher = blake3::Hasher::new();
        hasher
            .update(resource.as_bytes())
            .update(&[0])
            .update(s.as_bytes());
        let hash = hasher.finalize();
        u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(
        name: &str,
        alive: bool,
        started_secs_ago: i64,
        now: DateTime<Utc>,
    ) -> SchedulerRow {
        SchedulerRow {
            name: name.into(),
            instance_id: format!("{name}-1"),
            host: "h".into(),
            pid: 1,
            started_at: now - Duration::seconds(started_secs_ago),
            heartbeat_at: now,
            alive,
            leases: 0,
        }
    }

    #[test]
    fn a_lone_scheduler_runs_everything_unpinned() {
        let now = Utc::now();
        let c = Candidates::new(&[scheduler("a", true, 0, now)], now, Duration::seconds(2));
        assert_eq!(
            c.place("a", "schedule:x", None, true),
            Placement::Here("spread")
        );
    }

    #[test]
    fn pinned_work_waits_without_fallback() {
        let now = Utc::now();
        let c = Candidates::new(
            &[
                scheduler("a", true, 60, now),
                scheduler("b", false, 60, now),
            ],
            now,
            Duration::seconds(2),
        );
        assert_eq!(
            c.place("a", "x", Some("b"), true),
            Placement::Here("fallback")
        );
        assert!(
            matches!(c.place("a", "x", Some("b"), false), Placement::Waiting(why) if why.contains("b is down"))
        );
    }

    #[test]
    fn the_preferred_scheduler_gets_work_back_once_settled() {
        let now = Utc::now();
        let fresh = Candidates::new(
            &[scheduler("a", true, 60, now), scheduler("b", true, 1, now)],
            now,
            Duration::seconds(2),
        );
        assert_eq!(
            fresh.place("a", "x", Some("b"), true),
            Placement::Here("fallback")
        );
        let settled = Candidates::new(
            &[scheduler("a", true, 60, now), scheduler("b", true, 3, now)],
            now,
            Duration::seconds(2),
        );
        assert_eq!(
            settled.place("a", "x", Some("b"), true),
            Placement::Elsewhere("b".into())
        );
    }

    #[test]
    fn unpinned_work_spreads_evenly() {
        let now = Utc::now();
        let c = Candidates::new(
            &[scheduler("a", true, 60, now), scheduler("b", true, 60, now)],
            now,
            Duration::seconds(2),
        );
        let here = (0..100)
            .filter(|i| {
                c.place("a", &format!("schedule:{i}"), None, true)
                    != Placement::Elsewhere("b".into())
            })
            .count();
        assert!((35..=65).contains(&here), "a got {here} of 100");
    }
}
