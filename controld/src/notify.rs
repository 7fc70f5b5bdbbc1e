//! systemd readiness notifications (`Type=notify`). Each call is a no-op when controld does not
//! run under systemd (no `NOTIFY_SOCKET`), so the library can call them unconditionally.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Serving `version`.
pub fn ready(version: u64) {
    let status = format!("serving config version {version}");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// A reload started. systemd 253+ matches RELOADING=1 to the reload request by MONOTONIC_USEC.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// A reload ended, applied or not: always READY=1, with what happened as STATUS.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}
