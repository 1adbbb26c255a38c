//! Who runs what: scheduler identity, placement of schedules and monitors over the live
//! schedulers, and the words `ferry status` uses to say why work is where it is. The lease rows
//! themselves are claimed, renewed and released through [`crate::store::Store`], one
//! compare-and-swap statement each.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};

use crate::store::{SchedulerRow, StatusRow};

/// This host's name, the default scheduler name.
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
    /// Here; the reason is shown in logs.
    Here(&'static str),
    /// On another scheduler.
    Elsewhere(String),
    /// Nowhere for now: the reason says why.
    Waiting(String),
}

/// One schedule or monitor to place.
pub struct Demand<'a> {
    /// `schedule:NAME` or `monitor:NAME`: the same text on every scheduler.
    pub key: String,
    pub preferred: Option<&'a str>,
    pub fallback_any: bool,
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

    /// Places every demand, seen from scheduler `me`. Every scheduler computes the same answer
    /// from the same rows: pinned work goes to its preferred scheduler while that one is up;
    /// the rest is spread evenly (loads differ by at most one), each
    /// item going to the first scheduler with room in its own rendezvous order, so a scheduler
    /// joining or leaving moves little work.
    pub fn place_all(&self, me: &str, demands: &[Demand]) -> HashMap<String, Placement> {
        let at = |owner: &str, why| {
            if owner == me {
                Placement::Here(why)
            } else {
                Placement::Elsewhere(owner.to_owned())
            }
        };
        let mut placed = HashMap::new();
        let mut spread: Vec<&Demand> = Vec::new();
        for demand in demands {
            match demand.preferred {
                Some(p) if self.settled.iter().any(|s| s == p) => {
                    placed.insert(demand.key.clone(), at(p, "preferred"));
                }
                Some(p) if !demand.fallback_any => {
                    let state = if self.live.iter().any(|s| s == p) {
                        "settling after a restart"
                    } else {
                        "down"
                    };
                    let why = format!("preferred scheduler {p} is {state}, and fallback is off");
                    placed.insert(demand.key.clone(), Placement::Waiting(why));
                }
                _ => spread.push(demand),
            }
        }
        if self.settled.is_empty() {
            for demand in spread {
                placed.insert(
                    demand.key.clone(),
                    Placement::Waiting("no live scheduler".into()),
                );
            }
            return placed;
        }
        spread.sort_by(|a, b| a.key.cmp(&b.key));
        // Every scheduler gets `floor` items; `extra` of them one more.
        let floor = spread.len() / self.settled.len();
        let mut extra = spread.len() % self.settled.len();
        let mut load: HashMap<&str, usize> = HashMap::new();
        for demand in spread {
            let owner = rendezvous_order(&demand.key, &self.settled)
                .into_iter()
                .find(|s| {
                    let n = load.get(s.as_str()).copied().unwrap_or(0);
                    n < floor || (n == floor && extra > 0)
                })
                .expect("the shares add up to the demand");
            let n = load.entry(owner.as_str()).or_default();
            if *n == floor {
                extra -= 1;
            }
            *n += 1;
            let why = if demand.preferred.is_some() {
                "fallback"
            } else {
                "spread"
            };
            placed.insert(demand.key.clone(), at(owner, why));
        }
        placed
    }
}

impl Candidates {
    /// The first settled scheduler in `key`'s rendezvous order that is not `excluded`: who
    /// takes over work its placed owner leaves untaken (the orphan sweep).
    pub fn next_for(&self, key: &str, excluded: &[String]) -> Option<&str> {
        rendezvous_order(key, &self.settled)
            .into_iter()
            .find(|s| !excluded.contains(s))
            .map(String::as_str)
    }
}

/// Schedulers in decreasing highest-random-weight order for `key`.
fn rendezvous_order<'a>(key: &str, schedulers: &'a [String]) -> Vec<&'a String> {
    let weight = |s: &String| {
        let mut hasher = blake3::Hasher::new();
        hasher
            .update(key.as_bytes())
            .update(&[0])
            .update(s.as_bytes());
        let hash = hasher.finalize();
        u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
    };
    let mut order: Vec<&String> = schedulers.iter().collect();
    order.sort_by_key(|s| std::cmp::Reverse(weight(s)));
    order
}

/// Why a schedule or monitor is where it is, in words for `ferry status`.
pub fn explain(row: &StatusRow, schedulers: &[SchedulerRow]) -> String {
    let find = |name: &str| schedulers.iter().find(|s| s.name == name);
    let down_since = |name: &str| match find(name) {
        Some(s) if s.alive => format!("{name} is up"),
        Some(s) => format!(
            "{name} down since {}",
            s.heartbeat_at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
        None => format!("{name} has never run"),
    };
    if row.state == "held" {
        return "held".into();
    }
    match (&row.holder, row.preferred.as_deref()) {
        (Some(holder), Some(p)) if holder == p => "preferred".into(),
        (Some(_), Some(p)) if find(p).is_some_and(|s| s.alive) => {
            format!("fallback: preferred {p} is back; the work returns after it settles")
        }
        (Some(_), Some(p)) => format!("fallback: preferred {}", down_since(p)),
        (Some(_), None) => "spread".into(),
        (None, _) if row.last_error.is_some() => "waiting: see last error".into(),
        (None, Some(p)) if !row.fallback_any => format!("waiting: {}, fallback off", down_since(p)),
        (None, _) if !schedulers.iter().any(|s| s.alive) => "waiting: no live scheduler".into(),
        (None, _) => "waiting: being claimed".into(),
    }
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
            version: "0.1.0".into(),
            started_at: now - Duration::seconds(started_secs_ago),
            heartbeat_at: now,
            alive,
            stopped: false,
            leases: 0,
        }
    }

    fn demand(key: &str, preferred: Option<&'static str>, fallback_any: bool) -> Demand<'static> {
        Demand {
            key: key.into(),
            preferred,
            fallback_any,
        }
    }

    fn place(c: &Candidates, me: &str, d: Demand) -> Placement {
        let key = d.key.clone();
        c.place_all(me, &[d]).remove(&key).unwrap()
    }

    #[test]
    fn a_lone_scheduler_runs_everything_unpinned() {
        let now = Utc::now();
        let c = Candidates::new(&[scheduler("a", true, 0, now)], now, Duration::seconds(2));
        assert_eq!(
            place(&c, "a", demand("schedule:x", None, true)),
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
            place(&c, "a", demand("x", Some("b"), true)),
            Placement::Here("fallback")
        );
        let waiting = place(&c, "a", demand("x", Some("b"), false));
        assert!(
            matches!(&waiting, Placement::Waiting(why) if why.contains("b is down")),
            "{waiting:?}"
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
            place(&fresh, "a", demand("x", Some("b"), true)),
            Placement::Here("fallback")
        );
        let settled = Candidates::new(
            &[scheduler("a", true, 60, now), scheduler("b", true, 3, now)],
            now,
            Duration::seconds(2),
        );
        assert_eq!(
            place(&settled, "a", demand("x", Some("b"), true)),
            Placement::Elsewhere("b".into())
        );
    }

    #[test]
    fn unpinned_work_spreads_evenly_and_everyone_agrees() {
        let now = Utc::now();
        let names = ["a", "b", "c"];
        let rows: Vec<SchedulerRow> = names.iter().map(|n| scheduler(n, true, 60, now)).collect();
        let c = Candidates::new(&rows, now, Duration::seconds(2));
        let demands: Vec<Demand> = (0..10)
            .map(|i| demand(&format!("schedule:s{i}"), None, true))
            .collect();
        let views: Vec<HashMap<String, Placement>> =
            names.iter().map(|me| c.place_all(me, &demands)).collect();
        for (i, me) in names.iter().enumerate() {
            let mine = views[i]
                .values()
                .filter(|p| matches!(p, Placement::Here(_)))
                .count();
            assert!((3..=4).contains(&mine), "{me} got {mine} of 10");
            for d in &demands {
                let owners = views
                    .iter()
                    .filter(|v| matches!(v[&d.key], Placement::Here(_)))
                    .count();
                assert_eq!(owners, 1, "{} has {owners} owners", d.key);
            }
        }
    }

    #[test]
    fn status_says_why() {
        let now = Utc::now();
        let schedulers = [
            scheduler("a", true, 60, now),
            scheduler("b", false, 60, now),
        ];
        let row = |holder: Option<&str>, preferred: Option<&str>, fallback_any| StatusRow {
            kind: "monitor".into(),
            name: "m".into(),
            job_name: "j".into(),
            state: if holder.is_some() {
                "running"
            } else {
                "waiting"
            }
            .into(),
            holder: holder.map(Into::into),
            preferred: preferred.map(Into::into),
            fallback_any,
            epoch: 1,
            last_error: None,
        };
        assert_eq!(
            explain(&row(Some("a"), Some("a"), true), &schedulers),
            "preferred"
        );
        assert!(
            explain(&row(Some("a"), Some("b"), true), &schedulers)
                .starts_with("fallback: preferred b down since")
        );
        assert!(
            explain(&row(None, Some("b"), false), &schedulers).starts_with("waiting: b down since")
        );
        assert_eq!(explain(&row(Some("a"), None, true), &schedulers), "spread");
    }
}
