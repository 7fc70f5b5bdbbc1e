//! Hand-over to a successor (`proxyd --takeover`), as HAProxy's `-x` and Envoy's hot restart do
//! it: the running proxyd passes its listening sockets (SCM_RIGHTS, through rustix) and the
//! snapshot it serves to the new process, which serves them at once; only when the new process
//! says it serves does the old one stop accepting and drain. No listening socket is ever closed:
//! both processes hold it while they overlap. docs/decisions/0005-handover.md says why this is
//! ours and not ecdysis.
//!
//! The exchange, on a Unix socket the successor binds next to the admin socket:
//!
//! 1. successor → predecessor, on the admin socket: `Handover { socket_path }` (allowed callers
//!    as for Drain);
//! 2. predecessor → successor, on `socket_path`: a 4-byte big-endian length and a `HandedOver`
//!    message, the descriptors riding on the first bytes;
//! 3. successor → predecessor, same connection: one byte, `R`, once it serves; the predecessor
//!    then drains. A successor that closes the connection, or says nothing within
//!    [`READY_DEADLINE`], leaves the predecessor serving as before.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use prost::Message;
use proto::v1 as pb;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// How long a predecessor waits for its successor to serve.
pub const READY_DEADLINE: Duration = Duration::from_secs(60);

/// How long a successor waits for the sockets once it asked for them.
const RECEIVE_DEADLINE: Duration = Duration::from_secs(10);

/// At most this many descriptors are handed over (listeners, admin listener, admin socket).
const MAX_FDS: usize = 64;

/// At most this many bytes of `HandedOver` (a snapshot with its certificates).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The byte a successor sends once it serves.
const READY: u8 = b'R';

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the predecessor refused: {0}")]
    Refused(String),
    #[error("malformed hand-over: {0}")]
    Malformed(String),
}

/// A listening socket to hand over, with what it is.
pub struct Handed<'a> {
    pub kind: pb::HandedSocketKind,
    pub name: String,
    pub address: String,
    pub fd: BorrowedFd<'a>,
}

/// Sends `sockets` and `snapshot` to the successor listening on `path`; returns the connection
/// on which it will say it serves.
pub fn send(
    path: &Path,
    sockets: &[Handed<'_>],
    snapshot: Option<pb::Snapshot>,
    node_id: &str,
) -> Result<UnixStream, HandoverError> {
    if sockets.len() > MAX_FDS {
        return Err(HandoverError::Malformed(format!(
            "{} sockets (at most {MAX_FDS})",
            sockets.len()
        )));
    }
    let message = pb::HandedOver {
        sockets: sockets
            .iter()
            .map(|s| pb::HandedSocket {
                kind: s.kind.into(),
                name: s.name.clone(),
                address: s.address.clone(),
            })
            .collect(),
        snapshot,
        node_id: node_id.to_owned(),
    }
    .encode_to_vec();
    let length = u32::try_from(message.len())
        .map_err(|_| HandoverError::Malformed("snapshot too large".into()))?;
    let stream = UnixStream::connect(path)?;
    stream.set_write_timeout(Some(RECEIVE_DEADLINE))?;
    let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|s| s.fd).collect();
    let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(HandoverError::Malformed("descriptors do not fit".into()));
    }
    let head = length.to_be_bytes();
    // The descriptors go with the length; the rest follows as a plain stream.
    let sent = rustix::net::sendmsg(
        &stream,
        &[IoSlice::new(&head)],
        &mut control,
        SendFlags::empty(),
    )
    .map_err(std::io::Error::from)?;
    if sent != head.len() {
        return Err(HandoverError::Malformed("short write of the length".into()));
    }
    (&stream).write_all(&message)?;
    Ok(stream)
}

/// Waits (blocking) for the successor to say it serves; `true` when it did.
pub fn wait_ready(mut stream: UnixStream) -> bool {
    let _ = stream.set_read_timeout(Some(READY_DEADLINE));
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(1) if byte[0] == READY)
}

/// What a successor got from its predecessor.
pub struct Inherited {
    pub listeners: Vec<(String, SocketAddr, std::net::TcpListener)>,
    pub admin_http: Option<(SocketAddr, std::net::TcpListener)>,
    pub admin_socket: Option<(PathBuf, UnixListener)>,
    /// The predecessor's stderr.
    pub log: Option<OwnedFd>,
    pub snapshot: Option<pb::Snapshot>,
    pub node_id: String,
    /// Where to say "serving".
    predecessor: UnixStream,
}

impl Inherited {
    /// Tells the predecessor this process serves: it stops accepting and drains.
    pub fn serving(mut self) -> std::io::Result<()> {
        self.predecessor.write_all(&[READY])
    }
}

/// The successor's socket: bound next to the admin socket, removed when dropped.
pub struct Inbox {
    listener: UnixListener,
    pub path: PathBuf,
}

impl Inbox {
    pub fn bind(admin_socket: &Path) -> std::io::Result<Inbox> {
        use std::os::unix::fs::PermissionsExt;
        let mut name = admin_socket.as_os_str().to_owned();
        name.push(format!(".handover.{}", std::process::id()));
        let path = PathBuf::from(name);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Inbox { listener, path })
    }

    /// Receives the predecessor's sockets and snapshot (blocking, within a deadline).
    pub fn receive(&self) -> Result<Inherited, HandoverError> {
        self.listener.set_nonblocking(false)?;
        let (stream, _) = accept_within(&self.listener, RECEIVE_DEADLINE)?;
        stream.set_read_timeout(Some(RECEIVE_DEADLINE))?;
        let mut head = [0u8; 4];
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(
            &stream,
            &mut [IoSliceMut::new(&mut head)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for message in control.drain() {
            if let RecvAncillaryMessage::ScmRights(rights) = message {
                fds.extend(rights);
            }
        }
        if received.bytes < head.len() {
            (&stream).read_exact(&mut head[received.bytes..])?;
        }
        let length = u32::from_be_bytes(head) as usize;
        if length > MAX_MESSAGE {
            return Err(HandoverError::Malformed(format!("{length} bytes")));
        }
        let mut body = vec![0u8; length];
        (&stream).read_exact(&mut body)?;
        let handed = pb::HandedOver::decode(body.as_slice())
            .map_err(|e| HandoverError::Malformed(e.to_string()))?;
        if handed.sockets.len() != fds.len() {
            return Err(HandoverError::Malformed(format!(
                "{} sockets described, {} received",
                handed.sockets.len(),
                fds.len()
            )));
        }
        let mut inherited = Inherited {
            listeners: Vec::new(),
            admin_http: None,
            admin_socket: None,
            log: None,
            snapshot: handed.snapshot,
            node_id: handed.node_id,
            predecessor: stream,
        };
        for (socket, fd) in handed.sockets.into_iter().zip(fds) {
            let kind = pb::HandedSocketKind::try_from(socket.kind)
                .unwrap_or(pb::HandedSocketKind::Unspecified);
            match kind {
                pb::HandedSocketKind::Listener | pb::HandedSocketKind::AdminHttp => {
                    let address: SocketAddr = socket.address.parse().map_err(|_| {
                        HandoverError::Malformed(format!("address {:?}", socket.address))
                    })?;
                    let listener = std::net::TcpListener::from(fd);
                    if kind == pb::HandedSocketKind::Listener {
                        inherited.listeners.push((socket.name, address, listener));
                    } else {
                        inherited.admin_http = Some((address, listener));
                    }
                }
                pb::HandedSocketKind::AdminSocket => {
                    inherited.admin_socket =
                        Some((PathBuf::from(socket.address), UnixListener::from(fd)));
                }
                pb::HandedSocketKind::Log => inherited.log = Some(fd),
                // Something a newer predecessor hands over: closed here (dropping `fd`).
                pb::HandedSocketKind::Unspecified => {}
            }
        }
        Ok(inherited)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `accept` on a blocking listener, giving up after `deadline`.
fn accept_within(
    listener: &UnixListener,
    deadline: Duration,
) -> std::io::Result<(UnixStream, std::os::unix::net::SocketAddr)> {
    listener.set_nonblocking(true)?;
    let until = std::time::Instant::now() + deadline;
    loop {
        match listener.accept() {
            Ok((stream, addr)) => {
                stream.set_nonblocking(false)?;
                return Ok((stream, addr));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if std::time::Instant::now() >= until {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the predecessor sent nothing",
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn sockets_and_a_snapshot_cross_to_the_successor_and_it_says_when_it_serves() {
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin.sock");
        let inbox = Inbox::bind(&admin).unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = tcp.local_addr().unwrap();
        let unix = UnixListener::bind(&admin).unwrap();
        let snapshot = pb::Snapshot {
            version: 7,
            ..Default::default()
        };
        let path = inbox.path.clone();
        let sender = std::thread::spawn(move || {
            let sockets = [
                Handed {
                    kind: pb::HandedSocketKind::Listener,
                    name: "http".into(),
                    address: address.to_string(),
                    fd: tcp.as_fd(),
                },
                Handed {
                    kind: pb::HandedSocketKind::AdminSocket,
                    name: String::new(),
                    address: "/run/proxyd/admin.sock".into(),
                    fd: unix.as_fd(),
                },
            ];
            let stream = send(&path, &sockets, Some(snapshot), "node-a").unwrap();
            // The sender's copies close: the successor's keep the sockets open.
            drop(sockets);
            drop(tcp);
            wait_ready(stream)
        });
        let inherited = inbox.receive().unwrap();
        assert_eq!(inherited.snapshot.as_ref().unwrap().version, 7);
        assert_eq!(inherited.node_id, "node-a");
        let (name, addr, listener) = &inherited.listeners[0];
        assert_eq!((name.as_str(), *addr), ("http", address));
        assert_eq!(listener.local_addr().unwrap(), address);
        assert!(inherited.admin_socket.is_some());
        // The same listening socket: a connection made now is accepted here.
        let _client = std::net::TcpStream::connect(address).unwrap();
        listener.accept().unwrap();
        inherited.serving().unwrap();
        assert!(sender.join().unwrap(), "the predecessor heard it serves");
    }

    #[test]
    fn a_successor_that_goes_away_leaves_the_predecessor_serving() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = Inbox::bind(&dir.path().join("admin.sock")).unwrap();
        let path = inbox.path.clone();
        let sender = std::thread::spawn(move || {
            let stream = send(&path, &[], None, "n").unwrap();
            wait_ready(stream)
        });
        let inherited = inbox.receive().unwrap();
        drop(inherited);
        assert!(!sender.join().unwrap());
    }
}
