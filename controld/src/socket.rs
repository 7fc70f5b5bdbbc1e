//! The control socket: bound with no window of loose permissions, never stolen from a live
//! daemon, and removed on clean exit.

use std::io::ErrorKind;
use std::path::Path;

use crate::error::Error;

/// A bound control socket. Dropping it removes the file, if the file is still this socket.
pub type ControlSocket = proto::uds::BoundSocket;

/// Binds the control socket at `path` with mode 0660, never stealing it from a live controld
/// and replacing a stale one (see [`proto::uds::BoundSocket::bind`]).
pub fn bind(path: &Path) -> Result<ControlSocket, Error> {
    match ControlSocket::bind(path) {
        Ok(socket) => {
            if socket.replaced_stale {
                tracing::warn!(socket = %path.display(), "replaced a stale control socket left by a previous run");
            }
            tracing::info!(socket = %path.display(), "control socket bound");
            Ok(socket)
        }
        Err(e) if e.kind() == ErrorKind::AddrInUse => Err(Error::SocketInUse {
            path: path.to_owned(),
        }),
        Err(source) => Err(Error::Socket {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[tokio::test]
    async fn binds_0660_replaces_a_stale_socket_and_never_steals_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("control.sock");

        let first = bind(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o660
        );
        assert!(matches!(bind(&path), Err(Error::SocketInUse { .. })));

        // A crash leaves the file behind with nobody listening.
        let stale = std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).unwrap();
        drop(stale);
        drop(first);
        assert!(!path.exists(), "a clean exit removes the socket");
        fs::rename(dir.path().join("stale.sock"), &path).unwrap();
        let second = bind(&path).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(second);

        fs::write(&path, "not a socket").unwrap();
        assert!(matches!(bind(&path), Err(Error::Socket { .. })));
        assert!(
            fs::read_to_string(&path).is_ok(),
            "a regular file is never removed"
        );
    }
}
