//! gRPC over a Unix socket: how proxyd and proxyctl reach controld, and how both daemons
//! accept callers.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, UdsConnectInfo};
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
    /// Whether dropping it removes the file (not once handed over to a successor).
    remove_on_drop: bool,
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
            remove_on_drop: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listener, once; the file stays owned by this value.
    pub fn take_listener(&mut self) -> Option<tokio::net::UnixListener> {
        self.listener.take()
    }

    /// A socket bound by a predecessor and handed over: this value owns its file from now on
    /// (and removes it when dropped, unless handed over again).
    pub fn adopt(
        listener: std::os::unix::net::UnixListener,
        path: &Path,
    ) -> std::io::Result<BoundSocket> {
        use std::os::unix::fs::MetadataExt;
        listener.set_nonblocking(true)?;
        let meta = std::fs::symlink_metadata(path)?;
        Ok(BoundSocket {
            listener: Some(tokio::net::UnixListener::from_std(listener)?),
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
            replaced_stale: false,
            remove_on_drop: true,
        })
    }

    /// Leaves the file in place when dropped: a successor serves it now.
    pub fn hand_over(&mut self) {
        self.remove_on_drop = false;
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if self.remove_on_drop
            && let Ok(meta) = std::fs::symlink_metadata(&self.path)
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

/// Calls one caller's connection may have in progress at once; more wait their turn (a
/// Subscribe stream counts as one for its whole life).
pub const MAX_CALLS_PER_CONNECTION: usize = 16;

/// A caller's connection that has not answered a PING for `KEEPALIVE_TIMEOUT`, asked every
/// `KEEPALIVE_INTERVAL`, is closed: a peer that vanished or stopped reading lets go of its
/// file descriptor.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A gRPC server with the bounds both daemons put on each caller of their Unix socket: calls at
/// once per connection, streams reset before being accepted, keep-alive PINGs. Serve it with
/// [`Incoming`] for the handshake deadline.
pub fn server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
}

/// How long a caller has, from connecting, to send the HTTP/2 preface and the header of its first
/// frame. Callers are local processes; one that stops inside the handshake is not a client.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The HTTP/2 connection preface (RFC 9113 §3.4) and the 9-byte header of the SETTINGS frame that
/// must follow it.
const HANDSHAKE_BYTES: usize = 24 + 9;

/// Connections one socket keeps open at once: a caller past it is closed at accept. A backstop:
/// each user but root and the daemon's own is held to [`MAX_CONNECTIONS_PER_USER`] first, so that
/// no one member of the socket's group can take every place and lock out the operators and the
/// data planes.
pub const MAX_CONNECTIONS: usize = 1024;

/// Connections one user (by peer credentials) may keep open at once on one socket; root and the
/// daemon's own user are held only to [`MAX_CONNECTIONS`].
pub const MAX_CONNECTIONS_PER_USER: usize = 32;

/// The connections accepted on a control or admin socket, each with a handshake deadline: hyper's
/// HTTP/2 server reads the preface with no deadline of its own, so a caller that stops inside it
/// would hold its connection (and a file descriptor) forever. Past the handshake, the server's
/// HTTP/2 keep-alive PINGs find dead peers. At most [`MAX_CONNECTIONS`] are open at once.
pub struct Incoming {
    listener: UnixListener,
    handshake: Duration,
    slots: Arc<tokio::sync::Semaphore>,
    per_user: Arc<PerUser>,
    max: usize,
    shed: Shed,
}

/// Connections closed over a cap: logged at most once per [`SHED_LOG_INTERVAL`], with how many
/// were closed since, so a caller hammering the socket cannot flood the log.
#[derive(Default)]
struct Shed {
    since_logged: u64,
    logged_at: Option<std::time::Instant>,
}

const SHED_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Shed {
    fn note(&mut self, uid: Option<u32>, what: &str, cap: usize) {
        self.since_logged += 1;
        let now = std::time::Instant::now();
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < SHED_LOG_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            uid,
            closed = self.since_logged,
            "closing a new connection at once: {what} are at their cap of {cap}"
        );
        self.logged_at = Some(now);
        self.since_logged = 0;
    }
}

/// Connections open per user.
struct PerUser {
    max: usize,
    /// Root and this process's own user: not held to `max`.
    exempt: [u32; 2],
    open: std::sync::Mutex<std::collections::HashMap<u32, usize>>,
}

impl PerUser {
    /// A place for one more connection of `uid`, or `None` when it has `max` open.
    fn take(self: &Arc<Self>, uid: Option<u32>) -> Option<UserSlot> {
        let Some(uid) = uid.filter(|u| !self.exempt.contains(u)) else {
            return Some(UserSlot(None));
        };
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(uid).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(UserSlot(Some((self.clone(), uid))))
    }
}

/// One connection's place among its user's; given back when dropped.
struct UserSlot(Option<(Arc<PerUser>, u32)>);

impl Drop for UserSlot {
    fn drop(&mut self) {
        if let Some((per_user, uid)) = self.0.take() {
            let mut open = per_user.open.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = open.get_mut(&uid) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.remove(&uid);
                }
            }
        }
    }
}

impl Incoming {
    pub fn new(listener: UnixListener, handshake: Duration) -> Incoming {
        Incoming::with_limits(
            listener,
            handshake,
            MAX_CONNECTIONS,
            MAX_CONNECTIONS_PER_USER,
        )
    }

    /// At most `max` connections open at once, and `per_user` of one (non-exempt) user.
    pub fn with_limits(
        listener: UnixListener,
        handshake: Duration,
        max: usize,
        per_user: usize,
    ) -> Incoming {
        // This process's effective uid, without unsafe code: the owner of /proc/self (without
        // procfs, only root is exempt).
        let own = std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
            .unwrap_or(0);
        Incoming {
            listener,
            handshake,
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            per_user: Arc::new(PerUser {
                max: per_user,
                exempt: [0, own],
                open: Default::default(),
            }),
            max,
            shed: Shed::default(),
        }
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Handshaking>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let handshake = self.handshake;
        loop {
            let (stream, _) = match self.listener.poll_accept(cx) {
                Poll::Ready(Ok(accepted)) => accepted,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
                Poll::Pending => return Poll::Pending,
            };
            // Over a cap: closed at once (the caller sees its connection end), and the next.
            let uid = stream.peer_cred().ok().map(|c| c.uid());
            let Some(user_slot) = self.per_user.take(uid) else {
                let cap = self.per_user.max;
                self.shed.note(uid, "this user's connections", cap);
                drop(stream);
                continue;
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                let cap = self.max;
                self.shed.note(uid, "connections", cap);
                drop(stream);
                continue;
            };
            return Poll::Ready(Some(Ok(Handshaking {
                inner: stream,
                read: 0,
                deadline: Some(Box::pin(tokio::time::sleep(handshake))),
                _slot: (slot, user_slot),
            })));
        }
    }
}

/// An accepted connection whose reads fail with `TimedOut` if the handshake's bytes have not all
/// arrived by the deadline.
pub struct Handshaking {
    inner: UnixStream,
    read: usize,
    /// Dropped once the handshake's bytes are in.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Its place among the socket's connections and its user's, until it closes.
    _slot: (tokio::sync::OwnedSemaphorePermit, UserSlot),
}

impl AsyncRead for Handshaking {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        match polled {
            Poll::Ready(Ok(())) => {
                self.read += buf.filled().len() - before;
                if self.read >= HANDSHAKE_BYTES {
                    self.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = self
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 handshake within the deadline",
                    )));
                }
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl AsyncWrite for Handshaking {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Handshaking {
    type ConnectInfo = UdsConnectInfo;

    /// The peer's credentials, as for a plain `UnixStream`: both daemons check them.
    fn connect_info(&self) -> UdsConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::StreamExt;

    async fn pair(handshake: Duration) -> (UnixStream, Handshaking, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut incoming = Incoming::new(UnixListener::bind(&path).unwrap(), handshake);
        let client = UnixStream::connect(&path).await.unwrap();
        let server = incoming.next().await.unwrap().unwrap();
        (client, server, dir)
    }

    #[tokio::test]
    async fn a_caller_stopping_inside_the_handshake_times_out() {
        let (mut client, mut server, _dir) = pair(Duration::from_millis(200)).await;
        client.write_all(&[0x50; 10]).await.unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(server.read(&mut buf).await.unwrap(), 10);
        let err = tokio::time::timeout(Duration::from_secs(5), server.read(&mut buf))
            .await
            .expect("the deadline fires")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn one_user_cannot_take_every_place_and_root_and_the_daemon_are_not_held_to_it() {
        let per_user = Arc::new(PerUser {
            max: 2,
            exempt: [0, 1000],
            open: Default::default(),
        });
        let a = per_user.take(Some(500)).unwrap();
        let _b = per_user.take(Some(500)).unwrap();
        assert!(per_user.take(Some(500)).is_none(), "a third of user 500's");
        let _other = per_user
            .take(Some(501))
            .expect("another user still gets in");
        let _root: Vec<_> = (0..5).map(|_| per_user.take(Some(0)).unwrap()).collect();
        let _own: Vec<_> = (0..5).map(|_| per_user.take(Some(1000)).unwrap()).collect();
        drop(a);
        assert!(per_user.take(Some(500)).is_some(), "a place given back");
    }

    #[tokio::test]
    async fn callers_past_the_connection_cap_are_closed_at_accept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let mut incoming = Incoming::with_limits(
            UnixListener::bind(&path).unwrap(),
            Duration::from_secs(5),
            2,
            2,
        );
        let _a = UnixStream::connect(&path).await.unwrap();
        let held_a = incoming.next().await.unwrap().unwrap();
        let _b = UnixStream::connect(&path).await.unwrap();
        let _held_b = incoming.next().await.unwrap().unwrap();
        // The third is closed at accept (and nothing is handed to the server)...
        let mut third = UnixStream::connect(&path).await.unwrap();
        let none = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
        assert!(none.is_err(), "nothing served past the cap");
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
            .await
            .expect("closed, not left waiting")
            .unwrap();
        assert_eq!(closed, 0);
        // ...and one after a place freed is served.
        drop(held_a);
        let _d = UnixStream::connect(&path).await.unwrap();
        let _held_d = incoming.next().await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn past_the_handshake_a_quiet_caller_is_left_alone() {
        let (mut client, mut server, _dir) = pair(Duration::from_millis(100)).await;
        client.write_all(&[0x50; HANDSHAKE_BYTES]).await.unwrap();
        let mut buf = [0u8; 64];
        let mut got = 0;
        while got < HANDSHAKE_BYTES {
            got += server.read(&mut buf).await.unwrap();
        }
        let quiet = tokio::time::timeout(Duration::from_millis(400), server.read(&mut buf)).await;
        assert!(quiet.is_err(), "still waiting, no error: {quiet:?}");
        client.write_all(b"x").await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 1);
    }
}
