//! `proxyctl health`: one line and an exit code for scripts and load-balancer checks, from the
//! local proxyd alone (`DataPlane.Status`), so it works while controld is down.
//!
//! Healthy means serving: ready (a snapshot is applied, the listeners are bound) and not
//! draining. Being cut off from controld is worth saying but is not unhealthy: proxyd goes on
//! serving the version it has. Pure functions of the reply; `main` does the talking.

use proto::v1::DataPlaneStatusReply;

use crate::exit::Exit;
use crate::json;
use crate::output::{self, one_line};

/// Why the data plane is not healthy; `None` when it is.
pub fn problem(dp: &DataPlaneStatusReply) -> Option<String> {
    if dp.draining {
        return Some(format!(
            "draining: proxyd {} is shutting down",
            one_line(&dp.node_id)
        ));
    }
    if dp.ready {
        return None;
    }
    Some(if dp.applied_version == 0 && dp.control_plane_connected {
        "not ready: no snapshot applied yet".to_owned()
    } else if dp.applied_version == 0 {
        "not ready: no snapshot applied yet, and controld is not connected".to_owned()
    } else {
        format!(
            "not ready: version {} applied, listeners not bound yet",
            dp.applied_version
        )
    })
}

/// 0 when healthy, 1 when it answered but is not ready or is draining.
pub fn exit(dp: &DataPlaneStatusReply) -> Exit {
    if problem(dp).is_none() {
        Exit::Ok
    } else {
        Exit::Failed
    }
}

/// `ok: serving version 4`, with what is worth knowing in parentheses
/// (`controld not connected`, `from a saved snapshot`); or the problem.
pub fn render(dp: &DataPlaneStatusReply) -> String {
    if let Some(problem) = problem(dp) {
        return output::lines(&[problem]);
    }
    let mut line = format!("ok: serving version {}", dp.applied_version);
    let mut notes = Vec::new();
    if !dp.control_plane_connected {
        notes.push("controld not connected");
    }
    if dp.from_saved_snapshot {
        notes.push("from a saved snapshot");
    }
    if !notes.is_empty() {
        line.push_str(&format!(" ({})", notes.join("; ")));
    }
    output::lines(&[line])
}

/// `{"healthy": true, "applied_version": 4, "control_plane_connected": true, "reason": null}`.
pub fn to_json(dp: &DataPlaneStatusReply) -> json::Health {
    let reason = problem(dp);
    json::Health {
        healthy: reason.is_none(),
        applied_version: dp.applied_version,
        control_plane_connected: dp.control_plane_connected,
        reason,
    }
}

#[cfg(test)]
mod tests;
