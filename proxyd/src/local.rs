//! proxyd's own admin socket: the `DataPlane` gRPC service (Status, Drain) on a Unix socket, so
//! that `proxyctl status`, `health` and `shutdown` work while controld is down. Like the control
//! socket it is 0660 and bound without a loose-permission window; Drain is allowed only to root
//! and proxyd's own user (peer credentials).

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};

use crate::control::Identity;
use crate::dataplane::DataPlane;

struct Service {
    plane: Arc<DataPlane>,
    identity: Identity,
    own_uid: Option<u32>,
    /// The admin socket's path.
    path: std::path::PathBuf,
}

impl Service {
    /// Lets root and proxyd's own user (peer credentials) make a changing `call`, and audits
    /// the attempt either way.
    fn allow<T>(
        &self,
        request: &Request<T>,
        call: &str,
        outcome: &str,
        what: &str,
    ) -> Result<(), Status> {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|i| i.peer_cred);
        let uid = cred.map(|c| c.uid());
        let allowed = uid.is_some_and(|u| u == 0 || Some(u) == self.own_uid);
        tracing::info!(target: "audit", call, uid, pid = cred.and_then(|c| c.pid()),
            outcome = if allowed { outcome } else { "denied" });
        if allowed {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{call} is not allowed for uid {}: only root and proxyd's own user may {what}",
            uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string())
        )))
    }
}

#[tonic::async_trait]
impl pb::data_plane_server::DataPlane for Service {
    async fn status(
        &self,
        _: Request<pb::DataPlaneStatusRequest>,
    ) -> Result<Response<pb::DataPlaneStatusReply>, Status> {
        let r = self.plane.report();
        Ok(Response::new(pb::DataPlaneStatusReply {
            node_id: self.identity.node_id.clone(),
            pid: self.identity.pid,
            build_version: proto::BUILD_VERSION.to_owned(),
            applied_version: r.version,
            content_hash: r.hash,
            control_plane_connected: r.control_connected,
            from_saved_snapshot: r.from_saved,
            listeners: r
                .listeners
                .into_iter()
                .map(|b| pb::BoundListener {
                    name: b.name,
                    address: b.address.to_string(),
                })
                .collect(),
            upstreams: r
                .upstreams
                .into_iter()
                .map(|u| pb::UpstreamStatus {
                    url: u.url,
                    healthy: u.available,
                    outstanding: u.outstanding as u64,
                    last_tls_error: u.last_tls_error.unwrap_or_default(),
                })
                .collect(),
            ready: r.ready,
            draining: r.draining,
            open_connections: r.open_connections,
            started_at_unix_ms: r
                .started_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainReply>, Status> {
        self.allow(&request, "Drain", "draining", "stop it")?;
        let deadline_ms = self
            .plane
            .report()
            .drain_timeout
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        tracing::info!("drain requested on the admin socket");
        self.plane.drain();
        Ok(Response::new(pb::DrainReply { deadline_ms }))
    }

    async fn handover(
        &self,
        request: Request<pb::HandoverRequest>,
    ) -> Result<Response<pb::HandoverReply>, Status> {
        self.allow(&request, "Handover", "handing over", "take over")?;
        let reply = crate::takeover::hand_over(
            &self.plane,
            &self.identity,
            &self.path,
            request.into_inner(),
        )
        .await?;
        Ok(Response::new(reply))
    }
}

/// Binds `path` and serves until `shutdown`; the socket file is removed then.
pub fn start(
    path: &Path,
    plane: Arc<DataPlane>,
    identity: Identity,
    shutdown: CancellationToken,
    inherited: Option<std::os::unix::net::UnixListener>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let adopted = inherited.is_some();
    let mut socket = match inherited {
        Some(listener) => {
            tracing::info!(socket = %path.display(), "admin socket handed over");
            proto::uds::BoundSocket::adopt(listener, path)?
        }
        None => {
            let socket = proto::uds::BoundSocket::bind(path)?;
            if socket.replaced_stale {
                tracing::warn!(socket = %path.display(), "replaced a stale admin socket left by a previous run");
            }
            tracing::info!(socket = %path.display(), "admin socket bound");
            socket
        }
    };
    let listener = socket.take_listener();
    if let Some(listener) = &listener {
        plane.keep_for_handover(
            pb::HandedSocketKind::AdminSocket,
            "admin-socket",
            path.display().to_string(),
            std::os::fd::AsFd::as_fd(listener),
        );
    }
    let own_uid = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    let service = Service {
        plane: plane.clone(),
        identity,
        own_uid,
        path: path.to_owned(),
    };
    Ok(tokio::spawn(async move {
        let Some(listener) = listener else { return };
        // The same bounds per caller as controld's control socket (docs/protocol.md).
        let served = proto::uds::server()
            .add_service(
                pb::data_plane_server::DataPlaneServer::new(service)
                    .max_decoding_message_size(proto::MAX_REQUEST_BYTES),
            )
            .serve_with_incoming_shutdown(
                proto::uds::Incoming::new(listener, proto::uds::HANDSHAKE_TIMEOUT),
                shutdown.cancelled(),
            )
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "admin socket stopped");
        }
        if plane.is_handed_over() || (adopted && !plane.owns_adopted_socket()) {
            // The successor serves this socket now, or this process failed to take it over
            // and the predecessor serves it still: its file stays.
            socket.hand_over();
        }
        drop(socket);
    }))
}
