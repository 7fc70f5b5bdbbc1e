//! Hand-over of a serving proxyd to its successor (`proxyd --takeover`, an upgrade), step by
//! step, with who owns what at each step: the listening sockets, the admin socket file
//! (`/run/proxyd/admin.sock`) and systemd's notifications. [`wire`] is the exchange on the
//! socket; [`successor`] the new process's side of it; this file drives both.
//!
//! 1. **The successor asks** (`inherit`). It binds an inbox socket next to the admin
//!    socket and calls `Handover` on the admin socket. The predecessor owns everything; the
//!    successor owns only its inbox (removed when the exchange ends, however it ends).
//! 2. **The predecessor hands over** ([`hand_over`]). One hand-over at a time: a second
//!    successor is refused until the first has served or failed. The predecessor duplicates
//!    its listening sockets, the admin socket's and its stderr, and sends them with its
//!    snapshot (SCM_RIGHTS). From here both processes hold every listening socket, and the
//!    kernel queues new connections for whichever accepts; no socket is ever closed.
//! 3. **The successor applies the snapshot** (`serve_inherited`). If it cannot, it drops
//!    the connection and stops: the predecessor, which never stopped accepting, serves on. The
//!    successor has not touched the admin socket file, nor told systemd anything.
//! 4. **The successor serves the admin socket**, from the duplicate it received (the file on
//!    disk is the predecessor's socket, so nothing is rebound and no client sees it missing),
//!    and only now: before this, `proxyctl` reached the predecessor alone.
//! 5. **The successor becomes the main process** ([`successor::serving`]): under systemd
//!    without a master it sends `MAINPID=` and `READY=1` first, so that systemd never sees its
//!    main process exit before it knows the new one. Under a master (`--worker`), its
//!    notifications go to the master, which takes it on and signals it (SIGUSR1); a worker that
//!    gets no go-ahead stops, and the predecessor serves on.
//! 6. **The successor says it serves** (one byte, `R`); the predecessor stops accepting,
//!    drains its connections within `shutdown_timeout`, and exits 100 (handed over). The admin
//!    socket file stays: it is the successor's now, and the predecessor does not remove it.
//!    A predecessor that hears nothing within [`READY_DEADLINE`] serves on and accepts the next
//!    hand-over.
//!
//! The master (`proxyd --master`, [`crate::master`]) starts the successor of each upgrade as
//! a worker and decides in one place whether it won; systemd sees only the master.

mod successor;
mod wire;

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use wire::Inherited;
pub use wire::READY_DEADLINE;

use crate::Options;
use crate::control::Identity;
use crate::dataplane::DataPlane;

/// Step 1, for a process started with `--takeover`: the predecessor's sockets and snapshot.
/// `Err(())`: a worker that could not take over stops (the master reports the failed upgrade);
/// a process on its own binds as usual instead (`Ok(None)`).
pub(crate) async fn inherit(options: &mut Options) -> Result<Option<Inherited>, ()> {
    let inherited = match (&options.admin_socket, options.takeover) {
        (Some(path), true) => match successor::receive(path, &options.identity).await {
            Ok(inherited) => Some(inherited),
            Err(e) if options.worker => {
                tracing::error!(error = %e, "taking over from the running proxyd failed; it serves on");
                options
                    .failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return Err(());
            }
            Err(e) => {
                tracing::warn!(error = %e, "taking over from the running proxyd failed; binding instead");
                None
            }
        },
        (None, true) => {
            tracing::warn!("--takeover needs the admin socket; binding instead");
            None
        }
        _ => None,
    };
    if let Some(inherited) = &inherited {
        // The same data plane, continued: controld keeps one entry per node.
        options.identity.node_id = inherited.node_id.clone();
    }
    Ok(inherited)
}

/// Steps 3 to 6: serves what was handed over; the admin socket's task, when it serves.
/// `start_admin` serves the admin socket (from the handed duplicate, if any). A successor that
/// fails sets `options.failed` and stops, leaving the predecessor as it was.
pub(crate) async fn serve_inherited<A>(
    plane: &Arc<DataPlane>,
    mut inherited: Inherited,
    options: &Options,
    shutdown: &CancellationToken,
    start_admin: impl FnOnce(Option<std::os::unix::net::UnixListener>) -> Option<A>,
) -> Option<A> {
    let admin_socket = inherited
        .admin_socket
        .take()
        .filter(|(p, _)| Some(p.as_path()) == options.admin_socket.as_deref())
        .map(|(_, l)| l);
    plane.inherit(
        std::mem::take(&mut inherited.listeners),
        inherited.admin_http.take(),
    );
    if let Some(snapshot) = inherited.snapshot.take()
        && !crate::control::apply_handed(plane, snapshot).await
    {
        // Dropping `inherited` tells the predecessor to serve on.
        tracing::error!("cannot serve the snapshot handed over; the running proxyd serves on");
        fail(options, shutdown);
        return None;
    }
    // A predecessor that had no snapshot yet: this one waits for controld like it did.
    let admin = start_admin(admin_socket);
    if successor::serving(inherited, options.worker, shutdown).await {
        plane.took_over();
    } else {
        fail(options, shutdown);
    }
    admin
}

/// This process stops as one that failed: the predecessor, its sockets and its admin socket
/// file stay as they were.
fn fail(options: &Options, shutdown: &CancellationToken) {
    options
        .failed
        .store(true, std::sync::atomic::Ordering::Relaxed);
    shutdown.cancel();
}

/// Step 2, on the predecessor: the `Handover` call of the admin socket at `admin_path`.
pub(crate) async fn hand_over(
    plane: &Arc<DataPlane>,
    identity: &Identity,
    admin_path: &Path,
    request: pb::HandoverRequest,
) -> Result<pb::HandoverReply, Status> {
    let inbox = std::path::PathBuf::from(&request.socket_path);
    // Only to a socket next to this admin socket (where only proxyd's user may create one).
    if inbox.parent() != admin_path.parent() || request.socket_path.is_empty() {
        return Err(Status::invalid_argument(
            "socket_path must be in the admin socket's directory",
        ));
    }
    if plane.report().draining {
        return Err(Status::failed_precondition(
            "draining: nothing to hand over",
        ));
    }
    if !plane.begin_handover() {
        return Err(Status::failed_precondition(
            "a hand-over to another successor is under way",
        ));
    }
    // Ended below unless the sockets went out (then the successor's answer ends it).
    let ended = EndHandover(Some(plane.clone()));
    let (mut sockets, snapshot) = plane
        .handover_parts()
        .map_err(|e| Status::internal(format!("duplicating the listeners: {e}")))?;
    // The successor logs where this process does.
    if let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() {
        sockets.push((
            pb::HandedSocketKind::Log,
            "stderr".into(),
            String::new(),
            stderr,
        ));
    }
    let version = snapshot.as_ref().map_or(0, |s| s.version);
    let node_id = identity.node_id.clone();
    let sent = tokio::task::spawn_blocking(move || {
        let handed: Vec<wire::Handed<'_>> = sockets
            .iter()
            .map(|(kind, name, address, fd)| wire::Handed {
                kind: *kind,
                name: name.clone(),
                address: address.clone(),
                fd: std::os::fd::AsFd::as_fd(fd),
            })
            .collect();
        wire::send(&inbox, &handed, snapshot, &node_id)
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(|e| Status::unavailable(format!("handing over to {}: {e}", request.socket_path)))?;
    tracing::info!(successor = request.pid, build = %request.build_version, version,
        "listeners and snapshot handed over; serving until the successor does");
    let plane = plane.clone();
    ended.defuse();
    tokio::spawn(async move {
        let ready = tokio::task::spawn_blocking(move || wire::wait_ready(sent))
            .await
            .unwrap_or(false);
        if ready {
            plane.handed_over();
        } else {
            tracing::warn!("the successor did not take over; serving on");
            plane.end_handover();
        }
    });
    Ok(pb::HandoverReply {
        pid: identity.pid,
        build_version: proto::BUILD_VERSION.to_owned(),
        version,
        node_id: identity.node_id.clone(),
    })
}

/// Ends a hand-over when dropped, unless defused: every early return of `Handover` lets the
/// next successor try.
struct EndHandover(Option<Arc<DataPlane>>);

impl EndHandover {
    fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for EndHandover {
    fn drop(&mut self) {
        if let Some(plane) = self.0.take() {
            plane.end_handover();
        }
    }
}
