//! Printing results: aligned tables for people, JSON for scripts (`--output json`).

use chrono::{DateTime, Utc};
use clap::ValueEnum;
use serde::Serialize;

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
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
}

/// `2026-11-22 08:30:00` in UTC, or `-`.
pub fn time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}

pub fn or_dash(value: Option<&str>) -> String {
    value.unwrap_or("-").to_owned()
}
