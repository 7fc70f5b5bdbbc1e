//! `proxyctl status`: controld and its data planes as a short table, and the fleet's exit code.
//!
//! Pure functions of the `StatusReply`; `main` does the talking.

use proto::v1::{ControlPlaneStatus, DataPlaneStatus, LastReload, StatusReply};

use crate::exit::Exit;
use crate::json;
use crate::output::{self, one_line};

/// 0 when at least one data plane is connected and every one serves the desired version;
/// 1 (degraded) otherwise.
pub fn exit(reply: &StatusReply) -> Exit {
    let healthy = !reply.data_planes.is_empty() && reply.data_planes.iter().all(|dp| dp.in_sync);
    if healthy { Exit::Ok } else { Exit::Failed }
}

/// Renders the reply for a terminal, ending in a newline.
pub fn render(reply: &StatusReply) -> String {
    let control = reply.control_plane.clone().unwrap_or_default();
    let mut out = vec![
        control_line(&control),
        last_reload_line(control.last_reload.as_ref()),
    ];
    if reply.data_planes.is_empty() {
        out.push("no data plane connected".to_owned());
    } else {
        out.extend(data_plane_table(&reply.data_planes));
        out.extend(reply.data_planes.iter().filter_map(nack_line));
    }
    output::lines(&out)
}

fn control_line(control: &ControlPlaneStatus) -> String {
    format!(
        "controld   pid {}  v{}  version {}  config {}",
        control.pid, control.build_version, control.version, control.config_path
    )
}

/// `last reload  2026-11-21 19:40:01 UTC  applied  version 4  (1 site modified: b.example)`.
pub fn last_reload_line(last: Option<&LastReload>) -> String {
    let Some(last) = last.filter(|last| last.at_unix_ms != 0) else {
        return "last reload  none since start".to_owned();
    };
    let mut line = format!(
        "last reload  {}  {}  version {}",
        format_unix_ms(last.at_unix_ms),
        json::outcome_name(last.outcome).replace('_', " "),
        last.version
    );
    let summary = one_line(&last.summary);
    if !summary.is_empty() {
        line.push_str(&format!("  ({summary})"));
    }
    line
}

/// The table of data planes, header first, columns padded to line up.
pub fn data_plane_table(data_planes: &[DataPlaneStatus]) -> Vec<String> {
    let header = [
        "DATA PLANE",
        "PID",
        "APPLIED",
        "DESIRED",
        "IN SYNC",
        "LISTENERS",
    ];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    rows.extend(data_planes.iter().map(|dp| {
        vec![
            dp.node_id.clone(),
            dp.pid.to_string(),
            dp.applied_version.to_string(),
            dp.desired_version.to_string(),
            if dp.in_sync { "yes" } else { "no" }.to_owned(),
            listeners(dp),
        ]
    }));
    align(&rows)
}

fn listeners(dp: &DataPlaneStatus) -> String {
    if dp.listeners.is_empty() {
        return "-".to_owned();
    }
    dp.listeners
        .iter()
        .map(|l| format!("{}={}", l.name, l.address))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `node-a refused version 5: <error>`, for a data plane that refused a version.
pub fn nack_line(dp: &DataPlaneStatus) -> Option<String> {
    (dp.last_nack_version != 0).then(|| {
        format!(
            "{} refused version {}: {}",
            dp.node_id,
            dp.last_nack_version,
            one_line(&dp.last_nack_error)
        )
    })
}

/// Pads every column but the last to its widest cell plus two spaces.
fn align(rows: &[Vec<String>]) -> Vec<String> {
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
                    let width = widths.get(c).copied().unwrap_or(0);
                    line.push_str(&format!("{cell:<width$}  "));
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
mod tests;
