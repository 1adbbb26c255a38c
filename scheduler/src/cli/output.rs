//! Printing results: aligned tables for people, JSON for scripts (`--output json`).

use chrono::{DateTime, Utc};
use clap::ValueEnum;
use serde::Serialize;
use unicode_width::UnicodeWidthStr;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

impl Output {
    /// Prints `items` as a table with `headers`, one row per item, or as a JSON array.
    pub fn list<T: Serialize>(
        self,
        items: &[T],
        headers: &[&str],
        row: impl Fn(&T) -> Vec<String>,
    ) {
        match self {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(items).expect("rows serialise")
            ),
            Output::Table => print_table(headers, items.iter().map(row).collect()),
        }
    }

    /// Says what a command did: `sentence` for people, or `json` (an object saying what was
    /// done to what) for scripts.
    pub fn done(self, sentence: impl std::fmt::Display, json: serde_json::Value) {
        match self {
            Output::Table => println!("{sentence}"),
            Output::Json => println!("{json}"),
        }
    }

    /// Prints one item: as `field: value` lines, or as a JSON object.
    pub fn one<T: Serialize>(self, item: &T) {
        let value = serde_json::to_value(item).expect("rows serialise");
        match self {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&value).expect("json prints")
            ),
            Output::Table => {
                let serde_json::Value::Object(fields) = value else {
                    return;
                };
                let width = fields.keys().map(String::len).max().unwrap_or(0);
                for (key, value) in fields {
                    println!("{key:width$}  {}", plain(&value));
                }
            }
        }
    }
}

fn plain(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items.iter().map(plain).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

pub fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    for line in table_lines(headers, rows) {
        println!("{line}");
    }
}

/// The lines of a table whose columns line up on a terminal: a cell takes the columns it is
/// shown in (two for a CJK character, none for a combining accent), not one per character.
fn table_lines(headers: &[&str], rows: Vec<Vec<String>>) -> Vec<String> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.width()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.width());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = (cells.iter().zip(&widths))
            .map(|(cell, width)| format!("{cell}{}", " ".repeat(width - cell.width())))
            .collect();
        padded.join("  ").trim_end().to_owned()
    };
    let header = line(headers.iter().map(|h| h.to_uppercase()).collect());
    std::iter::once(header)
        .chain(rows.into_iter().map(line))
        .collect()
}

/// `2026-11-22 08:30:00 UTC`, or `-`: the zone is said, since a schedule may fire in another.
pub fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| "-".into())
}

/// `t` in the time zone `zone` (an IANA name: a schedule's), with the zone's abbreviation;
/// in UTC without one, or when the name is not a zone.
pub fn time_in(t: Option<DateTime<Utc>>, zone: Option<&str>) -> String {
    match (t, zone.and_then(|z| z.parse::<chrono_tz::Tz>().ok())) {
        (Some(t), Some(zone)) => t
            .with_timezone(&zone)
            .format("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        (t, _) => time(t),
    }
}

pub fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedules_times_are_shown_in_its_zone_and_others_in_utc() {
        let t = "2026-12-06T01:00:00Z".parse::<DateTime<Utc>>().ok();
        assert_eq!(time_in(t, Some("Europe/Paris")), "2026-12-06 02:00:00 CET");
        assert_eq!(
            time_in(t, Some("America/New_York")),
            "2026-12-05 20:00:00 EST"
        );
        assert_eq!(time_in(t, None), "2026-12-06 01:00:00 UTC");
        assert_eq!(time_in(None, Some("Europe/Paris")), "-");
    }

    #[test]
    fn columns_line_up_with_wide_characters() {
        let rows = vec![
            vec!["報告書".to_owned(), "succeeded".to_owned()],
            vec!["docs".to_owned(), "failed".to_owned()],
        ];
        let lines = table_lines(&["job", "state"], rows);
        // The terminal column where the state column's text starts, on each line.
        let start = |line: &str, text: &str| line[..line.find(text).unwrap()].width();
        let starts = [
            start(&lines[0], "STATE"),
            start(&lines[1], "succeeded"),
            start(&lines[2], "failed"),
        ];
        assert!(starts.iter().all(|&s| s == starts[0]), "{lines:#?}");
    }

    #[test]
    fn times_say_their_zone() {
        let at = DateTime::parse_from_rfc3339("2026-11-22T08:30:00Z").unwrap();
        assert_eq!(time(Some(at.to_utc())), "2026-11-22 08:30:00 UTC");
        assert_eq!(time(None), "-");
    }
}
