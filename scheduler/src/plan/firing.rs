//! Which cron times to fire now: the on-time ones, and the missed ones as the schedule's
//! misfire policy says.

use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};

use super::cron::CronSpec;

/// At most this many missed firings are run by `run_all`; older ones are skipped.
pub const RUN_ALL_BOUND: usize = 100;

/// What to do with fire times that passed while no scheduler could run the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misfire {
    /// Run once for all of them (the default).
    RunOnce,
    /// Run none of them.
    Skip,
    /// Run each of them, up to [`RUN_ALL_BOUND`].
    RunAll,
}

impl FromStr for Misfire {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "run_once" => Ok(Misfire::RunOnce),
            "skip" => Ok(Misfire::Skip),
            "run_all" => Ok(Misfire::RunAll),
            other => Err(format!(
                "unknown misfire policy {other:?}: use run_once, skip or run_all"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// Fire times to run now, oldest first.
    pub fire: Vec<DateTime<Utc>>,
    /// Missed fire times the policy did not run.
    pub skipped: usize,
    /// Every cron time up to here is now accounted for.
    pub cursor: DateTime<Utc>,
}

/// Missed fire times are counted up to this many (for the log); a longer backlog is not walked.
const COUNT_BOUND: usize = 10_000;

/// The fire times in `(cursor, now]`. A time more than `grace` before `now` was missed.
///
/// Only the newest times can ever run, so the walk goes backwards from `now` and a schedule
/// that missed a month of every-second firings costs no more than one that missed a minute.
pub fn due(
    cron: &CronSpec,
    cursor: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: Misfire,
    grace: Duration,
) -> Option<Due> {
    let latest = cron.latest_at_or_before(now).filter(|&t| t > cursor)?;
    let on_time_from = now - grace;
    let newest = |keep: &dyn Fn(DateTime<Utc>) -> bool| {
        let mut times = vec![latest];
        while times.len() < RUN_ALL_BOUND {
            let before = times
                .last()
                .copied()
                .and_then(|t| cron.latest_at_or_before(t - Duration::milliseconds(1)));
            match before.filter(|&t| t > cursor && keep(t)) {
                Some(t) => times.push(t),
                None => break,
            }
        }
        times.reverse();
        times
    };
    let fire = match policy {
        Misfire::RunOnce => vec![latest],
        Misfire::Skip if latest < on_time_from => vec![],
        Misfire::Skip => newest(&|t| t >= on_time_from),
        Misfire::RunAll => newest(&|_| true),
    };
    let missed = count_between(cron, cursor, latest);
    Some(Due {
        skipped: missed.saturating_sub(fire.len()),
        fire,
        cursor: latest,
    })
}

/// How many cron times lie in `(after, until]`, counting at most [`COUNT_BOUND`].
fn count_between(cron: &CronSpec, after: DateTime<Utc>, until: DateTime<Utc>) -> usize {
    let mut count = 0;
    let mut next = cron.next_after(after);
    while let Some(t) = next.filter(|&t| t <= until && count < COUNT_BOUND) {
        count += 1;
        next = cron.next_after(t);
    }
    count
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + Duration::seconds(s.into())
    }

    fn every_second() -> CronSpec {
        CronSpec::parse("* * * * * *", "UTC").unwrap()
    }

    #[test]
    fn nothing_is_due_before_the_next_time() {
        assert_eq!(
            due(
                &every_second(),
                at(5),
                at(5),
                Misfire::RunOnce,
                Duration::seconds(2)
            ),
            None
        );
    }

    #[test]
    fn an_on_time_firing_runs_under_every_policy() {
        for policy in [Misfire::RunOnce, Misfire::Skip, Misfire::RunAll] {
            let d = due(&every_second(), at(5), at(6), policy, Duration::seconds(2)).unwrap();
            assert_eq!(d.fire, vec![at(6)], "{policy:?}");
            assert_eq!((d.skipped, d.cursor), (0, at(6)));
        }
    }

    #[test]
    fn run_once_runs_the_latest_missed_time() {
        let d = due(
            &every_second(),
            at(0),
            at(10),
            Misfire::RunOnce,
            Duration::seconds(2),
        )
        .unwrap();
        assert_eq!(d.fire, vec![at(10)]);
        assert_eq!(d.skipped, 9);
    }

    #[test]
    fn skip_runs_only_what_is_on_time() {
        let d = due(
            &every_second(),
            at(0),
            at(10),
            Misfire::Skip,
            Duration::seconds(2),
        )
        .unwrap();
        assert_eq!(d.fire, vec![at(8), at(9), at(10)]);
        assert_eq!(d.skipped, 7);
    }

    #[test]
    fn a_long_backlog_is_not_walked() {
        let month = 30 * 24 * 3600;
        let started = std::time::Instant::now();
        let d = due(
            &every_second(),
            at(0),
            at(month),
            Misfire::RunOnce,
            Duration::seconds(2),
        )
        .unwrap();
        assert_eq!(d.fire, vec![at(month)]);
        assert_eq!(d.skipped, COUNT_BOUND - 1, "the count stops at its bound");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn run_all_is_bounded() {
        let d = due(
            &every_second(),
            at(0),
            at(500),
            Misfire::RunAll,
            Duration::seconds(2),
        )
        .unwrap();
        assert_eq!(d.fire.len(), RUN_ALL_BOUND);
        assert_eq!(d.fire.last(), Some(&at(500)));
        assert_eq!(d.skipped, 500 - RUN_ALL_BOUND);
        assert_eq!(d.cursor, at(500));
    }
}
