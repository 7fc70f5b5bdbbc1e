//! Where proxyctl's words go: the answer on stdout (text or JSON), failures as one line on stderr.
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
}
