//! Where proxyctl's words go: the answer on stdout (text or JSON), failures as one line on stderr;
//! and the small formatting pieces every command's text shares (lines, tables, timestamps).
//!
//! `println!` panics when stdout is closed (`proxyctl status | head -1`); these helpers never do:
//! a reader that went away does not change what the operation did, so the exit code stands.

use std::io::{self, Write};

use serde::Serialize;

/// Writes already rendered text (ending in a newline) to stdout.
pub fn text(rendered: &str) {
    let mut out = io::stdout().lock();
    // Ignored on purpose: see the module comment.
    let _ = out
        .write_all(rendered.as_bytes())
        .and_then(|()| out.flush());
}

/// Writes `value` as pretty-printed JSON plus a newline to stdout. Fails only if the value
/// cannot be encoded, which our plain structs never are; the caller still reports it.
pub fn json<T: Serialize>(value: &T) -> Result<(), serde_json::Error> {
    let mut rendered = serde_json::to_string_pretty(value)?;
    rendered.push('\n');
    text(&rendered);
    Ok(())
}

/// Prints `proxyctl: <message>` on stderr, as one line.
pub fn error(message: &dyn std::fmt::Display) {
    let _ = writeln!(io::stderr().lock(), "proxyctl: {message}");
}

/// Joins the lines of a message that came over the wire, so it cannot break a one-line format.
pub fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Lines joined with newlines, with the final newline a terminal expects.
pub fn lines(lines: &[String]) -> String {
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Pads every column but the last to its widest cell plus two spaces.
pub fn align(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    // Padded by hand: `format!`'s width stops at 65535, and a data plane may
                    // name itself at length.
                    let width = widths.get(c).copied().unwrap_or(0);
                    line.push_str(cell);
                    let pad = width.saturating_sub(cell.chars().count()) + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line
        })
        .collect()
}

/// Unix milliseconds as `2026-11-21 19:40:01 UTC`.
///
/// Hand-written rather than `humantime::format_rfc3339_seconds`: that one fails (and
/// `to_string` would panic) past the year 9999, and the value comes from the wire.
pub fn format_unix_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (year, month, day) = civil_from_days(secs / 86_400);
    let time = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`,
/// restricted to dates after the epoch so that everything stays unsigned).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_joins_and_trims() {
        assert_eq!(one_line("a\n  b \n\nc"), "a; b; c");
        assert_eq!(one_line("plain"), "plain");
        assert_eq!(one_line(""), "");
    }

    #[test]
    fn lines_end_with_a_newline() {
        assert_eq!(lines(&["a".into(), "b".into()]), "a\nb\n");
    }

    #[test]
    fn align_pads_every_column_but_the_last() {
        let rows = vec![
            vec!["A".to_owned(), "BB".to_owned(), "C".to_owned()],
            vec!["long".to_owned(), "x".to_owned(), "last cell".to_owned()],
        ];
        assert_eq!(align(&rows), ["A     BB  C", "long  x   last cell"]);
    }

    #[test]
    fn timestamps_format_as_utc() {
        assert_eq!(format_unix_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_unix_ms(1_795_290_001_999), "2026-11-21 19:40:01 UTC");
        assert_eq!(format_unix_ms(4_107_542_399_000), "2100-02-28 23:59:59 UTC");
        assert_eq!(format_unix_ms(4_107_542_400_000), "2100-03-01 00:00:00 UTC");
        // Whatever arrives over the wire formats without overflow or panic.
        assert!(format_unix_ms(u64::MAX).ends_with(" UTC"));
    }
}
