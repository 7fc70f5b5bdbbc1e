//! The successor's side of a hand-over (`proxyd --takeover`): ask the running proxyd on its
//! admin socket for its listening sockets and snapshot ([`super::wire`]), and tell it when
//! this process serves them.

use std::path::Path;
use std::time::Duration;

use proto::v1 as pb;

use super::wire::{HandoverError, Inbox, Inherited};
use crate::control::Identity;

/// How long the successor waits for the admin socket to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes over the sockets and snapshot of the proxyd serving `admin`.
pub async fn receive(admin: &Path, identity: &Identity) -> Result<Inherited, HandoverError> {
    let inbox = Inbox::bind(admin)?;
    let socket_path = inbox.path.display().to_string();
    // Waits for the predecessor's connection while the request goes out; the inbox's file is
    // removed when this ends (received, or timed out).
    let receiving = tokio::task::spawn_blocking(move || inbox.receive());
    let channel = proto::uds::connect(admin, CONNECT_TIMEOUT)
        .await
        .map_err(|e| {
            HandoverError::Refused(format!("no proxyd answers on {}: {e}", admin.display()))
        })?;
    let reply = pb::data_plane_client::DataPlaneClient::new(channel)
        .handover(pb::HandoverRequest {
            socket_path,
            pid: identity.pid,
            build_version: proto::BUILD_VERSION.to_owned(),
        })
        .await
        .map_err(|status| HandoverError::Refused(status.message().to_owned()))?
        .into_inner();
    let mut inherited = receiving
        .await
        .map_err(|e| HandoverError::Malformed(e.to_string()))??;
    if let Some(log) = inherited.log.take()
        && let Err(e) = rustix::stdio::dup2_stderr(&log)
    {
        tracing::warn!(error = %e, "cannot log where the running proxyd logs");
    }
    tracing::info!(
        predecessor = reply.pid,
        build = %reply.build_version,
        version = reply.version,
        listeners = inherited.listeners.len(),
        "taking over from the running proxyd"
    );
    Ok(inherited)
}

/// Tells systemd (or the master) that this is the main process now, then the predecessor that
/// this process serves (it drains and exits). In that order: systemd must not see its main
/// process exit before it knows the new one.
///
/// A master's worker (`worker`) then waits for the master's go-ahead (SIGUSR1) before it tells
/// the predecessor: the master decides, in one place, whether this worker won the upgrade or
/// its deadline passed (then it kills this worker, and the predecessor, never told, serves
/// on). `false`: no go-ahead came; the predecessor serves on and this process must stop.
pub async fn serving(
    inherited: Inherited,
    worker: bool,
    shutdown: &tokio_util::sync::CancellationToken,
) -> bool {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before the master can send it: SIGUSR1's default action kills.
    let mut go_ahead = match worker.then(|| signal(SignalKind::user_defined1())) {
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            tracing::error!(error = %e, "cannot wait for the master's go-ahead");
            return false;
        }
        None => None,
    };
    // Told to stop meanwhile (SIGTERM, a stop queued behind the upgrade): never take over.
    if shutdown.is_cancelled() {
        return false;
    }
    crate::notify::main_pid();
    if let Some(go_ahead) = go_ahead.as_mut() {
        let went = tokio::select! {
            got = tokio::time::timeout(super::wire::READY_DEADLINE, go_ahead.recv()) => got.is_ok(),
            () = shutdown.cancelled() => false,
        };
        if !went {
            tracing::error!("the master did not take this worker on; the running proxyd serves on");
            return false;
        }
    }
    if shutdown.is_cancelled() {
        return false;
    }
    match tokio::task::spawn_blocking(move || inherited.serving()).await {
        Ok(Ok(())) => tracing::info!("serving; the previous proxyd drains"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not tell the previous proxyd to drain"),
        Err(e) => tracing::warn!(error = %e, "could not tell the previous proxyd to drain"),
    }
    true
}
