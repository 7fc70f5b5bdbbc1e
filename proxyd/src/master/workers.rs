//! The master's side of its workers: starting them, the notify socket they report on, and
//! signalling and describing them.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use rustix::process::{Pid, Signal, WaitStatus};
use tokio::net::UnixDatagram;

use super::{EXIT_HANDED_OVER, EXIT_SIGNALLED, MasterError, MasterOptions};

/// sd_listen_fds(3)'s variables: the first worker gets systemd's sockets; later workers take
/// them from the one serving.
const SOCKET_ACTIVATION: [&str; 4] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_FDS_FIRST_FD",
];

/// Starts a worker running `binary`, reporting to the master's notify socket.
pub(super) fn spawn(
    binary: &Path,
    options: &MasterOptions,
    notify_at: &Path,
    takeover: bool,
) -> Result<u32, MasterError> {
    let mut command = Command::new(binary);
    command
        .args(&options.worker_args)
        .env("NOTIFY_SOCKET", notify_at)
        .stdin(Stdio::null());
    if takeover {
        command.arg("--takeover");
        for name in SOCKET_ACTIVATION {
            command.env_remove(name);
        }
    } else {
        // systemd's sockets (fds 3 and up, inherited) are for the worker, whose pid systemd
        // could not know: without LISTEN_PID, proxyd's reader (listenfd) takes them all the
        // same (libsystemd's would not).
        command.env_remove("LISTEN_PID");
    }
    let child = command.spawn().map_err(|source| MasterError::Spawn {
        binary: binary.to_owned(),
        source,
    })?;
    // Reaped through SIGCHLD and waitpid: the handle is not needed.
    Ok(child.id())
}

/// Closes the master's copies of the sockets systemd passed (the first worker has them).
pub(super) fn close_passed_sockets() {
    let mut passed = listenfd::ListenFd::from_env();
    for index in 0..passed.len() {
        // Taking one as what it is closes it when dropped; proxyd only takes TCP ones.
        if !matches!(passed.take_tcp_listener(index), Ok(Some(_))) {
            let _ = passed.take_unix_listener(index);
        }
    }
}

/// The workers' notify socket: only this process's user may send to it (mode 0600), and each
/// message comes with its sender's pid.
pub(super) fn bind_notify(path: &Path) -> std::io::Result<UnixDatagram> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Ours: `master.sock`, bound just before, proved no other master runs here.
    let _ = std::fs::remove_file(path);
    let socket = std::os::unix::net::UnixDatagram::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    rustix::net::sockopt::set_socket_passcred(&socket, true)?;
    socket.set_nonblocking(true)?;
    UnixDatagram::from_std(socket)
}

/// One datagram and the pid that sent it.
pub(super) async fn recv_from(
    socket: &UnixDatagram,
    buffer: &mut [u8],
) -> std::io::Result<(usize, Option<u32>)> {
    loop {
        socket.readable().await?;
        match try_recv(socket, buffer) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// A datagram already queued, and the pid that sent it; `WouldBlock` when none is.
pub(super) fn try_recv(
    socket: &UnixDatagram,
    buffer: &mut [u8],
) -> std::io::Result<(usize, Option<u32>)> {
    socket.try_io(tokio::io::Interest::READABLE, || {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmCredentials(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let message = rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(buffer)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
        .map_err(std::io::Error::from)?;
        let mut sender = None;
        for part in control.drain() {
            if let RecvAncillaryMessage::ScmCredentials(cred) = part {
                sender = Some(cred.pid.as_raw_pid().unsigned_abs());
            }
        }
        Ok((message.bytes, sender))
    })
}

pub(super) fn signal_pid(pid: u32, how: Signal) {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process(pid, how) {
        tracing::debug!(pid = pid.as_raw_pid(), error = %e, "signalling a worker");
    }
}

pub(super) fn describe(status: WaitStatus) -> String {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) if code == i32::from(EXIT_HANDED_OVER) => {
            "stopped after handing over to a successor".to_owned()
        }
        (Some(code), _) if code == i32::from(EXIT_SIGNALLED) => "stopped on a signal".to_owned(),
        (Some(code), _) => format!("exited with status {code}"),
        (_, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "stopped".to_owned(),
    }
}
