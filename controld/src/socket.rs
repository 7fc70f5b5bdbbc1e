//! The control socket: bound with no window of loose permissions, never stolen from a live
//! daemon, and removed on clean exit.

use std::fs::{self, DirBuilder};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;

/// A bound control socket. Dropping it removes the file, if the file is still this socket.
#[derive(Debug)]
pub struct ControlSocket {
    listener: Option<tokio::net::UnixListener>,
    path: PathBuf,
    /// (device, inode) of the socket file, so that a successor's socket is never removed.
    identity: (u64, u64),
}

impl ControlSocket {
    /// Binds `path` with mode 0660.
    ///
    /// The socket is bound inside a fresh 0700 directory, given its mode there, then renamed into
    /// place: nobody can connect while its permissions are still the umask's. A file already at
    /// `path` is probed: a live socket makes this fail, a stale one (connection refused) is
    /// replaced by the rename.
    pub fn bind(path: &Path) -> Result<ControlSocket, Error> {
        let err = |source| Error::Socket {
            path: path.to_owned(),
            source,
        };
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&parent)
            .map_err(err)?;
        probe_existing(path)?;

        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let staging = parent.join(format!(".controld-bind.{}.{n}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .map_err(err)?;
        let result = (|| {
            let staged = staging.join("s");
            let listener = std::os::unix::net::UnixListener::bind(&staged)?;
            fs::set_permissions(&staged, fs::Permissions::from_mode(0o660))?;
            // A live socket may have appeared since the probe; rename would replace it.
            probe_existing(path)
                .map_err(|e| std::io::Error::new(ErrorKind::AddrInUse, e.to_string()))?;
            fs::rename(&staged, path)?;
            listener.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(listener)
        })();
        let _ = fs::remove_dir_all(&staging);
        let listener = result.map_err(err)?;
        let meta = fs::symlink_metadata(path).map_err(err)?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(err)?;
        tracing::info!(socket = %path.display(), "control socket bound");
        Ok(ControlSocket {
            listener: Some(listener),
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener, once; the file stays owned by this value.
    pub fn take_listener(&mut self) -> Option<tokio::net::UnixListener> {
        self.listener.take()
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Fails if `path` is a socket some process is listening on, or is not a socket at all.
fn probe_existing(path: &Path) -> Result<(), Error> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Socket {
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(Error::Socket {
            path: path.to_owned(),
            source: std::io::Error::new(
                ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ),
        });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(Error::SocketInUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            tracing::warn!(socket = %path.display(), "replacing a stale control socket left by a previous run");
            Ok(())
        }
        Err(source) => Err(Error::Socket {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_0660_replaces_a_stale_socket_and_never_steals_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("control.sock");

        let first = ControlSocket::bind(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o660
        );
        assert!(matches!(
            ControlSocket::bind(&path),
            Err(Error::SocketInUse { .. })
        ));

        // A crash leaves the file behind with nobody listening.
        let stale = std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).unwrap();
        drop(stale);
        drop(first);
        assert!(!path.exists(), "a clean exit removes the socket");
        fs::rename(dir.path().join("stale.sock"), &path).unwrap();
        let second = ControlSocket::bind(&path).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
        drop(second);

        fs::write(&path, "not a socket").unwrap();
        assert!(matches!(
            ControlSocket::bind(&path),
            Err(Error::Socket { .. })
        ));
        assert!(
            fs::read_to_string(&path).is_ok(),
            "a regular file is never removed"
        );
    }
}
