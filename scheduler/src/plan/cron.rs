//! Cron expressions: the standard 5 fields, or 6 with a leading seconds field, evaluated in a
//! named time zone (UTC by default).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

#[derive(Debug, Clone)]
pub struct CronSpec {
    cron: Cron,
    tz: Tz,
}

impl CronSpec {
    /// Parses `expr` in `timezone` (an IANA name such as `Europe/Paris`). The error says what
    /// is wrong in words a user can act on.
    pub fn parse(expr: &str, timezone: &str) -> Result<Self, String> {
        let tz = Tz::from_str(timezone).map_err(|_| {
            format!("unknown time zone {timezone:?}: use an IANA name such as UTC or Europe/Paris")
        })?;
        let fields = expr.split_whitespace().count();
        if !expr.trim_start().starts_with('@') && !(5..=6).contains(&fields) {
            return Err(format!(
                "invalid cron expression {expr:?}: expected 5 fields (minute hour day month weekday) \
                 or 6 with a leading seconds field, found {fields}"
            ));
        }
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(expr)
            .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))?;
        Ok(Self { cron, tz })
    }

    /// The first firing strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&after.with_timezone(&self.tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The last firing at or before `at`.
    pub fn latest_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_previous_occurrence(&at.with_timezone(&self.tz), true)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn utc(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 2, h, m, s).unwrap()
    }

    #[test]
    fn five_fields_fire_on_the_minute() {
        let spec = CronSpec::parse("*/15 * * * *", "UTC").unwrap();
        assert_eq!(spec.next_after(utc(10, 7, 30)), Some(utc(10, 15, 0)));
    }

    #[test]
    fn a_sixth_leading_field_is_seconds() {
        let spec = CronSpec::parse("*/10 * * * * *", "UTC").unwrap();
        assert_eq!(spec.next_after(utc(10, 0, 1)), Some(utc(10, 0, 10)));
        assert_eq!(
            spec.latest_at_or_before(utc(10, 0, 19)),
            Some(utc(10, 0, 10))
        );
    }

    #[test]
    fn weekdays_are_posix_numbered() {
        // 2026-03-02 is a Monday; weekday 1 is Monday as in crontab(5).
        let spec = CronSpec::parse("0 2 * * 1", "UTC").unwrap();
        assert_eq!(spec.next_after(utc(0, 0, 0)), Some(utc(2, 0, 0)));
    }

    #[test]
    fn time_zones_shift_the_firing() {
        let spec = CronSpec::parse("0 2 * * *", "Europe/Paris").unwrap();
        assert_eq!(spec.next_after(utc(0, 0, 0)), Some(utc(1, 0, 0)));
    }

    #[test]
    fn bad_expressions_say_why() {
        let err = CronSpec::parse("61 * * * *", "UTC").unwrap_err();
        assert!(err.contains("61 * * * *"), "{err}");
        let err = CronSpec::parse("* * *", "UTC").unwrap_err();
        assert!(err.contains("expected 5 fields"), "{err}");
        let err = CronSpec::parse("* * * * *", "Mars/Olympus").unwrap_err();
        assert!(err.contains("time zone"), "{err}");
    }
}
