//! `proxyctl history`: the versions controld published recently, newest first, as a short table;
//! under a version's row, what changed inside each site it modified (when controld recorded it).
//!
//! Pure functions of the `HistoryReply`; `main` does the talking.

use proto::v1::{HistoryEntry, HistoryReply};

use crate::diff;
use crate::output::{self, align, format_unix_ms, one_line};

/// Renders the reply for a terminal, ending in a newline. The serving version carries a `*`.
/// The site details are indented under their row and do not count for the column widths.
pub fn render(reply: &HistoryReply) -> String {
    if reply.entries.is_empty() {
        return output::lines(&["no versions recorded".to_owned()]);
    }
    let header = ["VERSION", "PUBLISHED", "SOURCE", "BY", "SUMMARY"];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    // controld sends them newest first already; the table shows them in the order they came.
    rows.extend(
        reply
            .entries
            .iter()
            .map(|entry| row(entry, reply.current_version)),
    );
    let mut table = align(&rows).into_iter();
    let mut out: Vec<String> = table.next().into_iter().collect();
    for (line, entry) in table.zip(&reply.entries) {
        out.push(line);
        out.extend(diff::site_lines(entry.diff.as_ref(), "  "));
    }
    output::lines(&out)
}

fn row(entry: &HistoryEntry, current_version: u64) -> Vec<String> {
    let marker = if entry.version == current_version {
        "*"
    } else {
        ""
    };
    vec![
        format!("{}{marker}", entry.version),
        format_unix_ms(entry.at_unix_ms),
        or_dash(one_line(&entry.source)),
        // In a fleet: the node it was published from, and who asked there.
        match (entry.uid, entry.node.is_empty()) {
            (Some(uid), true) => format!("uid {uid}"),
            (Some(uid), false) => format!("uid {uid}@{}", one_line(&entry.node)),
            (None, false) => one_line(&entry.node),
            (None, true) => "-".to_owned(),
        },
        or_dash(one_line(&entry.summary)),
    ]
}

/// `-` for an empty cell, so that every column stays readable.
fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests;
