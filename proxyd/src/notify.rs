//! systemd readiness notifications (`Type=notify`). Each call is a no-op when proxyd does not run
//! under systemd (no `NOTIFY_SOCKET`).

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Listeners bound and a snapshot applied: READY=1 the first time, then STATUS updates.
pub fn serving(version: u64) {
    let status = format!("serving config version {version}");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// Nothing to serve yet (no snapshot saved, controld unreachable): ready all the same, so that a
/// first boot with controld down does not hang in systemd's start timeout; proxyd keeps trying
/// and serves from the first snapshot it gets. `systemctl status` shows why nothing is served.
pub fn waiting(reason: &str) {
    let status = format!("waiting for controld, nothing to serve yet: {reason}");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// A snapshot was refused; the previous one keeps serving.
pub fn refused(version: u64, serving: u64) {
    let status = format!("refused config version {version}; serving version {serving}");
    send(&[NotifyState::Status(&status)]);
}

/// This process took over from a predecessor: systemd follows it as the service's main process
/// (under `proxyd --master`, the master reads it as this worker's take-over and tells systemd
/// nothing of it; a proxyd run by systemd without a master is not upgraded this way at all).
pub fn main_pid() {
    send(&[NotifyState::MainPid(std::process::id()), NotifyState::Ready]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}
