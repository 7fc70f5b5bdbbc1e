//! The successor's side of a hand-over (`proxyd --takeover`): ask the running proxyd on its
//! admin socket for its listening sockets and snapshot ([`crate::handover`]), and tell it when
//! this process serves them.

use std::path::Path;
use std::time::Duration;

use proto::v1 as pb;

use crate::control::Identity;
use crate::handover::{HandoverError, Inbox, Inherited};

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

/// Tells systemd that this is the main process now, then the predecessor that this process
/// serves (it drains and exits). In that order: systemd must not see its main process exit
/// before it knows the new one.
pub async fn serving(inherited: Inherited) {
    crate::notify::main_pid();
    match tokio::task::spawn_blocking(move || inherited.serving()).await {
        Ok(Ok(())) => tracing::info!("serving; the previous proxyd drains"),
        Ok(Err(e)) => tracing::warn!(error = %e, "could not tell the previous proxyd to drain"),
        Err(e) => tracing::warn!(error = %e, "could not tell the previous proxyd to drain"),
    }
}
