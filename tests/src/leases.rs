//! What schedulers believed they held, rebuilt from their logs: no lease may ever have had two
//! holders at once.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;

use chrono::{DateTime, Utc};

/// Lease TTL minus the renewal margin: how long past its last renewal a holder may believe.
const BELIEF: chrono::Duration = chrono::Duration::milliseconds(2500);

/// One scheduler process's life: its log and when it was killed.
pub struct Incarnation {
    pub log: PathBuf,
    /// When it was SIGKILLed; `None` if it ran to the end of the test.
    pub killed: Option<DateTime<Utc>>,
}

/// From when to when a process believed it held a lease.
type Interval = (DateTime<Utc>, DateTime<Utc>);

/// What one log line says about a lease.
struct LeaseLine {
    at: DateTime<Utc>,
    what: String,
    resource: String,
    epoch: i64,
}

fn lease_lines(log: &str) -> Vec<LeaseLine> {
    log.lines()
        .filter_map(|line| {
            let at: DateTime<Utc> = line.split_whitespace().next()?.parse().ok()?;
            let (_, message) = line.split_once(": ")?;
            let what = ["claimed", "lease renewed", "releasing", "lease lost"]
                .into_iter()
                .find(|w| message.starts_with(w))?;
            let field = |key: &str| {
                let start = message.find(&format!(" {key}="))? + key.len() + 2;
                let value = message[start..].split_whitespace().next()?;
                Some(value.trim_matches('"').to_owned())
            };
            let resource = format!("{}:{}", field("kind")?, field("name")?);
            Some(LeaseLine {
                at,
                what: what.to_owned(),
                resource,
                epoch: field("epoch")?.parse().ok()?,
            })
        })
        .collect()
}

/// Each (resource, epoch) a process believed it held, from its claim until it released, lost
/// or died, and never past its last renewal plus the lease time less the margin.
/// Returns how many handovers (one epoch after another) it checked; `context` goes into the
/// failure message (a chaos seed, say).
pub fn assert_leases_never_overlap(
    lives: &[Incarnation],
    end: DateTime<Utc>,
    context: &str,
) -> usize {
    let mut held: HashMap<String, BTreeMap<i64, Interval>> = HashMap::new();
    for life in lives {
        let log = fs::read_to_string(&life.log).unwrap_or_default();
        let mut open: HashMap<(String, i64), Interval> = HashMap::new();
        let mut close =
            |resource: String, epoch: i64, (start, confirmed): Interval, at: DateTime<Utc>| {
                let until = at.min(confirmed + BELIEF);
                let previous = held
                    .entry(resource.clone())
                    .or_default()
                    .insert(epoch, (start, until));
                assert!(
                    previous.is_none(),
                    "{resource} epoch {epoch} claimed twice ({context})"
                );
            };
        for line in lease_lines(&log) {
            let key = (line.resource.clone(), line.epoch);
            match line.what.as_str() {
                "claimed" => {
                    open.insert(key, (line.at, line.at));
                }
                "lease renewed" => {
                    if let Some(interval) = open.get_mut(&key) {
                        interval.1 = line.at;
                    }
                }
                _ => {
                    if let Some(interval) = open.remove(&key) {
                        close(line.resource, line.epoch, interval, line.at);
                    }
                }
            }
        }
        for ((resource, epoch), interval) in open {
            close(resource, epoch, interval, life.killed.unwrap_or(end));
        }
    }
    let mut checked = 0;
    for (resource, epochs) in &held {
        let intervals: Vec<(&i64, &Interval)> = epochs.iter().collect();
        for pair in intervals.windows(2) {
            let ((e1, (_, end1)), (e2, (start2, _))) = (pair[0], pair[1]);
            assert!(
                end1 <= start2,
                "{resource}: epoch {e1} held until {end1} but epoch {e2} began {start2} ({context})"
            );
            checked += 1;
        }
    }
    checked
}
