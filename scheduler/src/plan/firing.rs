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

/// The fire times in `(cursor, now]`. A time more than `grace` before `now` was missed.
pub fn due(
    cron: &CronSpec,
    cursor: DateTime<Utc>,
    now: DateTime<Utc>,
    policy: Misfire,
    grace: Duration,
) -> Option<Due> {
    let latest = cron.latest_at_or_before(now).filter(|&t| t > cursor)?;
    let on_time_from = now - grace;
    let mut times = Vec::new();
    let mut next = cron.next_after(cursor);
    // Only the newest RUN_ALL_BOUND times can ever run; older ones are merely counted.
    let mut older = 0usize;
    while let Some(t) = next.filter(|&t| t <= latest) {
        times.push(t);
        if times.len() > RUN_ALL_BOUND {
            times.remove(0);
            older += 1;
        }
        next = cron.next_after(t);
    }
    let total = older + times.len();
    let fire: Vec<DateTime<Utc>> = match policy {
        Misfire::RunOnce => vec![latest],
        Misfire::Skip => times.into_iter().filter(|&t| t >= on_time_from).collect(),
        Misfire::RunAll => times,
    };
    Some(Due {
        skipped: total - fire.len(),
        fire,
        cursor: latest,
    })
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
