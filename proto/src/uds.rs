//! gRPC channels over a Unix socket: how proxyd and proxyctl reach controld.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// Opens a gRPC channel to the Unix socket at `path`.
///
/// The URI is a placeholder: tonic needs one, but every connection goes to `path`.
pub async fn connect(
    path: &Path,
    connect_timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.to_owned();
    Endpoint::from_static("http://controld.invalid")
        .connect_timeout(connect_timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
}

/// A listening Unix socket, bound with no window of loose permissions. Dropping it removes the
/// file, if the file is still this socket.
#[derive(Debug)]
pub struct BoundSocket {
    listener: Option<tokio::net::UnixListener>,
    path: PathBuf,
    /// (device, inode) of the socket file, so that a successor's socket is never removed.
    identity: (u64, u64),
    /// A stale socket file (nobody listening) was replaced.
    pub replaced_stale: bool,
}

impl BoundSocket {
    /// Binds `path` with mode 0660, creating its directory (0750) when missing.
    ///
    /// The socket is bound inside a fresh 0700 directory, given its mode there, then renamed into
    /// place: nobody can connect while its permissions are still the umask's. A file already at
    /// `path` is probed: a live socket fails with `AddrInUse`, anything but a socket with
    /// `AlreadyExists`, and a stale socket (connection refused) is replaced by the rename.
    pub fn bind(path: &Path) -> std::io::Result<BoundSocket> {
        use std::fs::{self, DirBuilder};
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        use std::sync::atomic::{AtomicU64, Ordering};

        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(&parent)?;
        let replaced_stale = probe_existing(path)?;

        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let staging = parent.join(format!(".bind.{}.{n}", std::process::id()));
        let _ = fs::remove_dir_all(&staging);
        DirBuilder::new().mode(0o700).create(&staging)?;
        let result = (|| {
            let staged = staging.join("s");
            let listener = std::os::unix::net::UnixListener::bind(&staged)?;
            fs::set_permissions(&staged, fs::Permissions::from_mode(0o660))?;
            // A live socket may have appeared since the probe; rename would replace it.
            probe_existing(path)?;
            fs::rename(&staged, path)?;
            listener.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(listener)
        })();
        let _ = fs::remove_dir_all(&staging);
        let listener = result?;
        let meta = fs::symlink_metadata(path)?;
        Ok(BoundSocket {
            listener: Some(tokio::net::UnixListener::from_std(listener)?),
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
            replaced_stale,
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

impl Drop for BoundSocket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.identity
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `Ok(true)` when a stale socket is in the way (it will be replaced), `Ok(false)` when nothing
/// is; an error when a live socket or something that is not a socket is there.
fn probe_existing(path: &Path) -> std::io::Result<bool> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(Error::new(
            ErrorKind::AddrInUse,
            "in use by a running process; refusing to take it over",
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => Ok(true),
        Err(e) => Err(e),
    }
}
