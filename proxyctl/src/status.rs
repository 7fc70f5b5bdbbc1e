//! `proxyctl status`: controld and its data planes as a short table, then what the local proxyd
//! says about itself on its own socket (so that status still works while controld is down), and
//! the fleet's exit code.
//!
//! Pure functions of the replies ([`Report`]); `main` does the talking.

use std::path::PathBuf;

use proto::v1::{
    BoundListener, ControlPlaneStatus, DataPlaneStatus, DataPlaneStatusReply, FleetStatus,
    LastReload, StatusReply, UpstreamStatus,
};

use crate::exit::Exit;
use crate::json;
use crate::output::{self, align, format_unix_ms, one_line};

/// What `proxyctl status` learned. `main` builds one only when at least one daemon answered;
/// when neither did it prints controld's error instead.
#[derive(Debug)]
pub struct Report {
    /// controld's answer; `None` when it did not answer (its error went to stderr).
    pub control: Option<StatusReply>,
    /// controld's socket, named when controld did not answer.
    pub control_socket: PathBuf,
    /// The proxyd on `--data-plane-socket`.
    pub local: Local,
    /// controld's certificates, for the expiry warnings; `None` when it did not answer.
    pub certificates: Option<proto::v1::CertificatesReply>,
}

/// What became of asking the local proxyd.
#[derive(Debug)]
pub enum Local {
    /// It answered.
    Answered(DataPlaneStatusReply),
    /// Nothing there (no socket file, or nobody listens on it). Not an error: the data planes
    /// may run on other hosts.
    Absent { socket: PathBuf },
    /// Something is there but the call failed (no permission, no answer, ...): the error line.
    /// Noted, but it does not change the exit code: only an answer can.
    Failed { reason: String },
}

impl Report {
    /// The local proxyd's answer, if it gave one.
    pub fn local_reply(&self) -> Option<&DataPlaneStatusReply> {
        match &self.local {
            Local::Answered(reply) => Some(reply),
            Local::Absent { .. } | Local::Failed { .. } => None,
        }
    }

    /// 0 only when controld answered, every data plane it knows is in sync (and there is at
    /// least one), and the local proxyd, if it answered, is ready, not draining and connected to
    /// controld; 1 (degraded) otherwise, also when only the local proxyd answered.
    pub fn exit(&self) -> Exit {
        let Some(control) = &self.control else {
            return Exit::Failed;
        };
        let local_ok = self.local_reply().is_none_or(local_is_healthy);
        if control_exit(control) == Exit::Ok && local_ok {
            Exit::Ok
        } else {
            Exit::Failed
        }
    }

    /// Renders the report for a terminal, ending in a newline: controld's view (today's table),
    /// then, after a blank line, the local data plane's own.
    pub fn render(&self) -> String {
        let mut out = match &self.control {
            Some(reply) => control_lines(reply),
            None => vec![format!(
                "controld   not running (or unreachable at {})",
                self.control_socket.display()
            )],
        };
        match &self.local {
            Local::Answered(reply) => {
                out.push(String::new());
                out.extend(local_section(reply));
            }
            Local::Absent { socket } => {
                // Silence is right when controld knows data planes elsewhere; with none at all,
                // the missing socket may be why.
                if self
                    .control
                    .as_ref()
                    .is_some_and(|c| c.data_planes.is_empty())
                {
                    out.push(format!(
                        "note: no data plane socket at {}",
                        socket.display()
                    ));
                }
            }
            Local::Failed { reason } => out.push(format!("note: {reason}")),
        }
        if let Some(certificates) = &self.certificates {
            let warnings = crate::certs::warnings(certificates);
            if !warnings.is_empty() {
                out.push(String::new());
                out.extend(warnings.into_iter().map(|w| format!("warning: {w}")));
            }
        }
        output::lines(&out)
    }
}

/// The local proxyd is serving and following controld.
fn local_is_healthy(dp: &DataPlaneStatusReply) -> bool {
    dp.ready && !dp.draining && dp.control_plane_connected
}

/// controld's part alone: 0 when at least one data plane is connected and every one serves the
/// desired version; 1 (degraded) otherwise.
fn control_exit(reply: &StatusReply) -> Exit {
    let healthy = !reply.data_planes.is_empty() && reply.data_planes.iter().all(|dp| dp.in_sync);
    // In a fleet, also: etcd answered and every live node serves the fleet's version.
    let fleet_ok = reply
        .fleet
        .as_ref()
        .is_none_or(|f| f.error.is_empty() && f.nodes.iter().all(|n| n.in_sync));
    if healthy && fleet_ok {
        Exit::Ok
    } else {
        Exit::Failed
    }
}

/// controld's part alone: what `status` printed before it also asked the local proxyd.
fn control_lines(reply: &StatusReply) -> Vec<String> {
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
    if let Some(fleet) = &reply.fleet {
        out.push(String::new());
        out.extend(fleet_lines(fleet, std::time::SystemTime::now()));
    }
    out
}

/// The fleet: its version, then a line per live node (NODE, APPLIED, DESIRED, IN SYNC, LAST
/// SEEN) and the reason of each node that does not serve what it last tried.
pub fn fleet_lines(fleet: &FleetStatus, now: std::time::SystemTime) -> Vec<String> {
    let short = |hash: &str| hash.get(..8).unwrap_or(hash).to_owned();
    let mut out = Vec::new();
    if fleet.error.is_empty() {
        out.push(format!(
            "fleet {}  version {} ({})  this host: {}",
            fleet.name,
            fleet.desired_version,
            if fleet.desired_hash.is_empty() {
                "-".to_owned()
            } else {
                short(&fleet.desired_hash)
            },
            fleet.node
        ));
        if !fleet.canary_nodes.is_empty() {
            out.push(format!(
                "staged rollout: version {} on its canaries ({}) first; the others keep \
                 version {} meanwhile",
                fleet.desired_version,
                fleet.canary_nodes.join(", "),
                fleet.stable_version
            ));
        }
    } else {
        out.push(format!(
            "fleet {}  etcd unreachable: {}; this host ({}) as it last recorded itself:",
            fleet.name, fleet.error, fleet.node
        ));
    }
    let now_ms = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let mut rows = vec![
        ["NODE", "APPLIED", "DESIRED", "IN SYNC", "LAST SEEN"]
            .map(str::to_owned)
            .to_vec(),
    ];
    rows.extend(fleet.nodes.iter().map(|n| {
        let seen = if n.last_seen_unix_ms == 0 {
            "-".to_owned()
        } else {
            format!("{}s ago", now_ms.saturating_sub(n.last_seen_unix_ms) / 1000)
        };
        vec![
            n.node.clone(),
            if n.applied_version == 0 {
                "-".to_owned()
            } else {
                format!("{} ({})", n.applied_version, short(&n.applied_hash))
            },
            if !fleet.error.is_empty() {
                "?".to_owned()
            } else if fleet.canary_nodes.is_empty() || fleet.canary_nodes.contains(&n.node) {
                fleet.desired_version.to_string()
            } else {
                fleet.stable_version.to_string()
            },
            if n.in_sync { "yes" } else { "no" }.to_owned(),
            seen,
        ]
    }));
    out.extend(align(&rows));
    out.extend(fleet.nodes.iter().filter(|n| !n.error.is_empty()).map(|n| {
        format!(
            "{}: does not serve version {}: {}",
            n.node,
            n.tried_version,
            one_line(&n.error)
        )
    }));
    out
}

/// The local data plane as it sees itself: its headline, its listeners, and its upstreams
/// when it has any.
pub fn local_section(dp: &DataPlaneStatusReply) -> Vec<String> {
    let mut out = vec![
        local_line(dp),
        format!(
            "listeners  {}  ({} open connections)",
            listener_list(&dp.listeners),
            dp.open_connections
        ),
    ];
    if !dp.upstreams.is_empty() {
        out.extend(upstream_table(&dp.upstreams));
    }
    out
}

/// `proxyd edge-1  pid 812  version 4  controld connected  ready`; the states that need
/// attention in capitals (`controld NOT connected`, `NOT ready`), plus `serving a saved
/// snapshot` and `draining` when they apply.
pub fn local_line(dp: &DataPlaneStatusReply) -> String {
    let version = if dp.applied_version == 0 {
        "no version yet".to_owned()
    } else {
        format!("version {}", dp.applied_version)
    };
    let mut parts = vec![
        format!("proxyd {}", one_line(&dp.node_id)),
        format!("pid {}", dp.pid),
        version,
        if dp.control_plane_connected {
            "controld connected"
        } else {
            "controld NOT connected"
        }
        .to_owned(),
    ];
    if dp.from_saved_snapshot {
        parts.push("serving a saved snapshot".to_owned());
    }
    parts.push(
        if dp.draining {
            "draining"
        } else if dp.ready {
            "ready"
        } else {
            "NOT ready"
        }
        .to_owned(),
    );
    parts.join("  ")
}

/// `UPSTREAM  HEALTHY  OUTSTANDING`, one row per upstream, columns lined up; with a
/// `LAST TLS ERROR` column when a handshake with one of them failed.
pub fn upstream_table(upstreams: &[UpstreamStatus]) -> Vec<String> {
    let tls_errors = upstreams.iter().any(|u| !u.last_tls_error.is_empty());
    let mut header = vec!["UPSTREAM", "HEALTHY", "OUTSTANDING"];
    if tls_errors {
        header.push("LAST TLS ERROR");
    }
    let mut rows = vec![header.into_iter().map(str::to_owned).collect()];
    rows.extend(upstreams.iter().map(|u| {
        let mut row = vec![
            one_line(&u.url),
            if u.healthy { "yes" } else { "no" }.to_owned(),
            u.outstanding.to_string(),
        ];
        if tls_errors {
            row.push(one_line(if u.last_tls_error.is_empty() {
                "-"
            } else {
                &u.last_tls_error
            }));
        }
        row
    }));
    align(&rows)
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
    listener_list(&dp.listeners)
}

/// `http=127.0.0.1:8080, admin=127.0.0.1:9901`, or `-` for none.
fn listener_list(listeners: &[BoundListener]) -> String {
    if listeners.is_empty() {
        return "-".to_owned();
    }
    listeners
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
