//! Printing answers: aligned tables for people, JSON for programs.

use std::time::{Duration, UNIX_EPOCH};

use serde::Serialize;

/// How a command prints its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A readable table.
    Table,
    /// The API's JSON, pretty-printed.
    Json,
}

/// Prints `value` as JSON, or as the table that `rows` makes of it.
pub fn print<T: Serialize>(
    format: Format,
    value: &T,
    headers: &[&str],
    rows: impl FnOnce(&T) -> Vec<Vec<String>>,
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Table => print!("{}", table(headers, &rows(value))),
    }
    Ok(())
}

/// Lays out `rows` under `headers` in left-aligned columns.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A Unix time in seconds as an RFC 3339 UTC timestamp.
pub fn timestamp(secs: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let text = table(
            &["NAME", "VERSION"],
            &[
                vec!["web".into(), "12".into()],
                vec!["checkout".into(), "3".into()],
            ],
        );
        assert_eq!(text, "NAME      VERSION\nweb       12\ncheckout  3\n");
    }
}
