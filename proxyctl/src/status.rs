//! `proxyctl status`: controld and its data planes as a short table, and the fleet's exit code.
//!
//! Pure functions of the `StatusReply`; `main` does the talking.

use proto::v1::{ControlPlaneStatus, DataPlaneStatus, LastReload, StatusReply};

use crate::exit::Exit;
use crate::json;
use crate::output::{self, align, format_unix_ms, one_line};

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

#[cfg(test)]
mod tests;
