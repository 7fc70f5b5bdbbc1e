//! `proxyctl shutdown`: asks the local proxyd to drain (like SIGTERM) and, with `--wait`, waits
//! until it has exited.
//!
//! The drain is proxyd's: it stops accepting, lets in-flight requests finish within its drain
//! deadline, then exits. proxyctl only starts it and, with `--wait`, watches the socket: once
//! nothing accepts connections there any more, proxyd is gone.

use std::path::Path;
use std::time::Duration;

use proto::v1::{DataPlaneStatusReply, DrainReply};
use tokio::time::Instant;

use crate::client;
use crate::json;
use crate::output::one_line;

/// How often `--wait` looks at the socket.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// `draining: proxyd edge-1 stops accepting; in-flight requests have up to 30s to finish`.
pub fn draining_line(dp: &DataPlaneStatusReply, drain: &DrainReply) -> String {
    format!(
        "draining: proxyd {} stops accepting; in-flight requests have up to {} to finish",
        one_line(&dp.node_id),
        humantime::format_duration(Duration::from_millis(drain.deadline_ms))
    )
}

/// The `--json` answer; `stopped` is `None` without `--wait`.
pub fn to_json(
    dp: &DataPlaneStatusReply,
    drain: &DrainReply,
    stopped: Option<bool>,
) -> json::Shutdown {
    json::Shutdown {
        node_id: dp.node_id.clone(),
        pid: dp.pid,
        deadline_ms: drain.deadline_ms,
        stopped,
    }
}

/// Polls `socket` until nothing accepts connections on it (true) or `timeout` has passed
/// (false).
pub async fn wait_until_stopped(socket: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // A connect on a local socket does not block, but a full backlog must not hang us either.
        let accepts = tokio::time::timeout(remaining, client::accepts_connections(socket))
            .await
            .unwrap_or(true);
        if !accepts {
            return true;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL.min(remaining)).await;
    }
}

#[cfg(test)]
mod tests;
