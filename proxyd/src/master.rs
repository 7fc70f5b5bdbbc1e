//! proxyd's master process (`proxyd --master`, what `deploy/proxyd.service` runs), after
//! HAProxy's master-worker mode: the master keeps the PID systemd supervises and runs the data
//! plane in a worker, a child process; an upgrade starts a new worker that takes the listening
//! sockets over from the old one ([`crate::handover`]), then the master re-executes itself from
//! the new binary, keeping its PID. systemd only ever hears from the master.
//!
//! The whole lifecycle lives in this module, as one event loop over a small state:
//!
//! | state | sockets | sent to systemd |
//! |---|---|---|
//! | starting | the first worker binds the listeners (or takes systemd's, `LISTEN_FDS`) | nothing until the worker says `READY=1`, then `READY=1` and its `STATUS=` |
//! | serving | the current worker's | the current worker's `READY=1` / `STATUS=`; never its `STOPPING=1` or `MAINPID=` |
//! | upgrading | both workers hold them while they overlap | `RELOADING=1`, then always `READY=1` with the outcome |
//! | stopping | the workers drain theirs | `STOPPING=1` |
//!
//! Workers report to the master, not to systemd: their `NOTIFY_SOCKET` is the master's own
//! datagram socket (`master.notify` beside the admin socket), and the kernel tells the master
//! which pid sent each message (`SO_PASSCRED`), so an old or failed worker can never stop the
//! unit. Upgrades are asked for on `master.sock` beside the admin socket, by root or proxyd's
//! own user (`proxyctl upgrade`, the unit's `ExecReload=`), or with SIGHUP.
//!
//! Workers that end: the current one exiting while nothing stops the master makes the master
//! exit too (1, or 0 after a clean drain such as `proxyctl shutdown`), so that systemd sees it
//! and restarts the unit (`Restart=on-failure`); an old, draining one is reaped and logged; a
//! new one exiting before it serves fails the upgrade, the old one serving on.

use std::ffi::OsString;
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use rustix::process::{Pid, Signal, WaitOptions, WaitStatus};
use sd_notify::NotifyState;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixDatagram, UnixStream};
use tokio::signal::unix::{SignalKind, signal};

/// The environment variable that carries the master's state across its re-execution.
const STATE_VARIABLE: &str = "PROXYD_MASTER_STATE";

/// How long an upgrade waits for the new worker to serve when the request names no deadline.
const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest upgrade request line.
const MAX_REQUEST: usize = 4096;

/// sd_listen_fds(3)'s variables: the first worker gets systemd's sockets; the master itself
/// and later workers never do.
const SOCKET_ACTIVATION: [&str; 4] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_FDS_FIRST_FD",
];

/// How the master runs.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// The binary workers and the re-executed master run: the path the master was started
    /// from, so that a binary replaced at that path is the one an upgrade runs.
    pub binary: PathBuf,
    /// The master's own arguments (without the program name), for its re-execution.
    pub args: Vec<OsString>,
    /// The worker's arguments: the master's without `--master` and `--takeover`.
    pub worker_args: Vec<OsString>,
    /// The admin socket: `master.sock` and `master.notify` live beside it.
    pub admin_socket: PathBuf,
}

/// `master.sock`, beside the admin socket at `admin_socket`: where `proxyctl upgrade` asks.
pub fn socket_path(admin_socket: &Path) -> PathBuf {
    admin_socket.with_file_name("master.sock")
}

fn notify_path(admin_socket: &Path) -> PathBuf {
    admin_socket.with_file_name("master.notify")
}

/// Why the master could not start.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("binding {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("starting the worker {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
}

/// A worker process and what it last told the master.
#[derive(Debug)]
struct Worker {
    pid: u32,
    ready: bool,
    status: Option<String>,
}

impl Worker {
    fn new(pid: u32) -> Worker {
        Worker {
            pid,
            ready: false,
            status: None,
        }
    }
}

/// An upgrade waiting for its new worker to serve.
struct Pending {
    worker: Worker,
    /// The old worker, serving until the new one does.
    old: Option<u32>,
    deadline: tokio::time::Instant,
    /// Where to answer (`None`: asked by SIGHUP).
    reply: Option<UnixStream>,
    /// The binary it runs: the master's own from when it serves.
    binary: PathBuf,
}

/// The master's state.
struct Master {
    options: MasterOptions,
    notify_at: PathBuf,
    /// The worker serving now; `None` once it exited.
    current: Option<Worker>,
    /// Old workers draining after an upgrade, and new ones stopped after a failed one.
    draining: Vec<u32>,
    upgrade: Option<Pending>,
    /// An upgrade succeeded: re-execute the master from the new binary.
    reexec: bool,
    /// SIGTERM or SIGINT, or the serving worker exited: the workers drain, then the master
    /// exits.
    stopping: bool,
    /// The exit code once every worker is gone.
    exit: u8,
    /// Answers being written.
    replies: Vec<tokio::task::JoinHandle<()>>,
}

/// Runs the master until its workers are gone; the exit code for systemd.
pub fn run(options: MasterOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("proxyd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(options)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            tracing::error!(error = %e, "proxyd master cannot run");
            notify(&[NotifyState::Status(&format!("cannot start: {e}"))]);
            ExitCode::FAILURE
        }
    }
}

async fn serve(options: MasterOptions) -> Result<u8, MasterError> {
    // Installed before the first worker starts, so that no exit goes unseen.
    let signals = (|| {
        Ok::<_, std::io::Error>((
            signal(SignalKind::child())?,
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
            signal(SignalKind::hangup())?,
        ))
    })();
    let (mut children, mut term, mut int, mut hup) = signals.map_err(MasterError::Signals)?;

    let notify_at = notify_path(&options.admin_socket);
    let notifications = bind_notify(&notify_at).map_err(|source| MasterError::Bind {
        path: notify_at.clone(),
        source,
    })?;
    let socket_at = socket_path(&options.admin_socket);
    let mut requests =
        proto::uds::BoundSocket::bind(&socket_at).map_err(|source| MasterError::Bind {
            path: socket_at.clone(),
            source,
        })?;
    let listener = requests.take_listener();

    let mut master = Master {
        options,
        notify_at,
        current: None,
        draining: Vec::new(),
        upgrade: None,
        reexec: false,
        stopping: false,
        exit: 0,
        replies: Vec::new(),
    };
    match adopted_state() {
        Some((current, draining)) => {
            tracing::info!(
                worker = current,
                ?draining,
                "proxyd master re-executed; supervising its workers"
            );
            master.current = Some(Worker {
                ready: true,
                ..Worker::new(current)
            });
            master.draining = draining;
            notify(&[
                NotifyState::Ready,
                NotifyState::Status("serving (master upgraded)"),
            ]);
        }
        None => {
            let pid = spawn(&master.options, &master.notify_at, false)?;
            tracing::info!(worker = pid, "proxyd master started its worker");
            master.current = Some(Worker::new(pid));
            // systemd's sockets went to the first worker; the master keeps none open.
            close_passed_sockets();
        }
    }
    // Exits that happened before the handler (or across the re-execution).
    master.reap();

    let (incoming_tx, mut incoming) = tokio::sync::mpsc::channel(8);
    let mut buffer = vec![0u8; 4096];
    while !master.done() {
        let deadline = master.upgrade.as_ref().map(|p| p.deadline);
        tokio::select! {
            _ = children.recv() => {
                // What the workers said before they exited first: a new worker's READY=1
                // precedes the old one's exit, and must be seen as such.
                while let Ok((len, pid)) = try_recv(&notifications, &mut buffer) {
                    master.notified(pid, &String::from_utf8_lossy(&buffer[..len]));
                }
                master.reap();
            }
            _ = term.recv() => master.stop(Signal::TERM),
            _ = int.recv() => master.stop(Signal::INT),
            _ = hup.recv() => master.begin_upgrade(None, None, None),
            received = recv_from(&notifications, &mut buffer) => {
                if let Ok((len, pid)) = received {
                    master.notified(pid, &String::from_utf8_lossy(&buffer[..len]));
                }
            }
            accepted = accept(listener.as_ref()) => {
                if let Ok(stream) = accepted {
                    // Read off the event loop: a client that sends nothing must not hold up
                    // the workers' exits or a signal.
                    tokio::spawn(read_request(stream, incoming_tx.clone()));
                }
            }
            Some(request) = incoming.recv() => master.request(request),
            () = sleep_until(deadline) => master.upgrade_timed_out(),
        }
        if std::mem::take(&mut master.reexec) && !master.stopping {
            // The upgrade's answer first: the connection closes with the old image.
            for reply in std::mem::take(&mut master.replies) {
                let _ = reply.await;
            }
            master.reexecute();
        }
    }
    drop(requests);
    let _ = std::fs::remove_file(&master.notify_at);
    Ok(master.exit)
}

impl Master {
    /// Answers an upgrade request.
    fn answer(&mut self, reply: Option<UnixStream>, line: String) {
        self.replies.retain(|h| !h.is_finished());
        self.replies.extend(answer(reply, line));
    }

    fn done(&self) -> bool {
        self.current.is_none() && self.draining.is_empty() && self.upgrade.is_none()
    }

    fn current_pid(&self) -> Option<u32> {
        self.current.as_ref().map(|w| w.pid)
    }

    /// Reaps every child that exited.
    fn reap(&mut self) {
        while let Ok(Some((pid, status))) = rustix::process::waitpid(None, WaitOptions::NOHANG) {
            self.exited(pid.as_raw_pid().unsigned_abs(), status);
        }
    }

    fn exited(&mut self, pid: u32, status: WaitStatus) {
        let how = describe(status);
        if self.current_pid() == Some(pid) {
            self.current = None;
            if self.stopping {
                tracing::info!(worker = pid, %how, "worker stopped");
                if !clean(status) {
                    self.exit = 1;
                }
                return;
            }
            // Nothing serves now: exit so that systemd sees it and restarts the unit. The
            // others are told to drain first (systemd waits for them before it restarts).
            self.stopping = true;
            self.exit = if clean(status) { 0 } else { 1 };
            if self.exit == 0 {
                tracing::info!(
                    worker = pid,
                    "the worker stopped after a drain; proxyd stops"
                );
            } else {
                tracing::error!(worker = pid, %how,
                    "the serving worker died; proxyd exits so that systemd restarts it");
            }
            notify(&[
                NotifyState::Stopping,
                NotifyState::Status(&format!("worker {pid} {how}")),
            ]);
            for other in &self.draining {
                signal_pid(*other, Signal::TERM);
            }
            if let Some(pending) = self.upgrade.take() {
                signal_pid(pending.worker.pid, Signal::TERM);
                self.draining.push(pending.worker.pid);
                self.answer(
                    pending.reply,
                    format!("error the serving proxyd (pid {pid}) died during the upgrade"),
                );
            }
            return;
        }
        if let Some(at) = self.draining.iter().position(|p| *p == pid) {
            self.draining.swap_remove(at);
            tracing::info!(worker = pid, %how, "previous worker gone");
            return;
        }
        if self.upgrade.as_ref().is_some_and(|p| p.worker.pid == pid)
            && let Some(pending) = self.upgrade.take()
        {
            let message = format!(
                "the new proxyd (pid {pid}) {how} before serving; {}",
                serves_on(pending.old)
            );
            self.upgrade_failed(&message, pending.reply);
        }
    }

    /// A worker's sd_notify message, `pid` its sender.
    fn notified(&mut self, pid: Option<u32>, message: &str) {
        let ready = message.lines().any(|l| l == "READY=1");
        let status = message
            .lines()
            .find_map(|l| l.strip_prefix("STATUS="))
            .map(str::to_owned);
        let upgrading = self.upgrade.is_some();
        if let Some(current) = self.current.as_mut()
            && Some(current.pid) == pid
        {
            if self.stopping {
                return;
            }
            if let Some(status) = &status {
                current.status = Some(status.clone());
            }
            if ready && !current.ready {
                tracing::info!(worker = current.pid, status = ?current.status, "worker ready");
            }
            current.ready |= ready;
            // Forwarded while no upgrade runs: during one, systemd hears the outcome.
            if current.ready && (ready || status.is_some()) && !upgrading {
                let status = current.status.clone().unwrap_or_default();
                notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
            }
            return;
        }
        let Some(pending) = self.upgrade.as_mut() else {
            return;
        };
        if Some(pending.worker.pid) != pid {
            return;
        }
        if let Some(status) = status {
            pending.worker.status = Some(status);
        }
        if !ready {
            return;
        }
        // The new worker serves and has told the old one, which drains now.
        let Some(pending) = self.upgrade.take() else {
            return;
        };
        let new = pending.worker.pid;
        if let Some(old) = self.current.replace(Worker {
            ready: true,
            ..pending.worker
        }) {
            // The new worker tells it to drain right after its READY=1. No SIGTERM from here:
            // one that raced the hand-over would make it drop the admin socket file the new
            // worker serves.
            self.draining.push(old.pid);
        }
        tracing::info!(old = ?pending.old, new, "upgraded: the new worker serves; the old one drains");
        self.options.binary = pending.binary;
        self.after_upgrade(None);
        self.answer(
            pending.reply,
            format!("ok {} {new}", pending.old.unwrap_or(0)),
        );
        self.reexec = true;
    }

    /// `READY=1` again after an upgrade, with its outcome.
    fn after_upgrade(&self, failure: Option<&str>) {
        let serving = self
            .current
            .as_ref()
            .and_then(|w| w.status.clone())
            .unwrap_or_default();
        let status = match failure {
            Some(f) => format!("upgrade failed: {f}; {serving}"),
            None => serving,
        };
        notify(&[NotifyState::Ready, NotifyState::Status(&status)]);
    }

    fn upgrade_failed(&mut self, message: &str, reply: Option<UnixStream>) {
        tracing::error!("upgrade failed: {message}");
        self.after_upgrade(Some(message));
        self.answer(reply, format!("error {message}"));
    }

    /// Acts on a request read from `master.sock`.
    fn request(&mut self, request: Request) {
        match request.kind {
            RequestKind::Ping => {
                self.answer(Some(request.stream), format!("pong {}", std::process::id()));
            }
            RequestKind::Upgrade { timeout, binary } => {
                self.begin_upgrade(Some(request.stream), timeout, binary);
            }
        }
    }

    /// Starts a new worker that takes over from the current one.
    fn begin_upgrade(
        &mut self,
        reply: Option<UnixStream>,
        timeout: Option<Duration>,
        binary: Option<PathBuf>,
    ) {
        if self.stopping {
            self.answer(reply, "error proxyd is stopping".to_owned());
            return;
        }
        if self.upgrade.is_some() {
            self.answer(reply, "error an upgrade is already running".to_owned());
            return;
        }
        let mut options = self.options.clone();
        if let Some(binary) = binary {
            options.binary = binary;
        }
        notify(&[NotifyState::Reloading, NotifyState::Status("upgrading")]);
        let old = self.current_pid();
        let pid = match spawn(&options, &self.notify_at, true) {
            Ok(pid) => pid,
            Err(e) => {
                self.upgrade_failed(&format!("{e}; {}", serves_on(old)), reply);
                return;
            }
        };
        tracing::info!(new = pid, binary = %options.binary.display(),
            "upgrade: started a new worker; it takes over from the current one");
        self.upgrade = Some(Pending {
            worker: Worker::new(pid),
            old,
            deadline: tokio::time::Instant::now() + timeout.unwrap_or(DEFAULT_UPGRADE_TIMEOUT),
            reply,
            binary: options.binary,
        });
    }

    fn upgrade_timed_out(&mut self) {
        let Some(pending) = self.upgrade.take() else {
            return;
        };
        // Not told "serving" yet, so the old worker never stopped accepting.
        signal_pid(pending.worker.pid, Signal::KILL);
        self.draining.push(pending.worker.pid);
        let message = format!(
            "the new proxyd (pid {}) did not serve in time; stopped it; {}",
            pending.worker.pid,
            serves_on(pending.old)
        );
        self.upgrade_failed(&message, pending.reply);
    }

    fn stop(&mut self, how: Signal) {
        if !self.stopping {
            tracing::info!(signal = ?how, "proxyd master stopping: the workers drain");
            notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
        }
        self.stopping = true;
        if let Some(pending) = self.upgrade.take() {
            self.draining.push(pending.worker.pid);
            self.answer(pending.reply, "error proxyd is stopping".to_owned());
        }
        for pid in self.draining.iter().copied().chain(self.current_pid()) {
            signal_pid(pid, how);
        }
    }

    /// Replaces this process's image with the binary the workers now run, keeping its PID
    /// (systemd's main process) and its children; the state crosses in the environment. The
    /// master's sockets close and the new image binds them again.
    fn reexecute(&mut self) {
        use std::os::unix::process::CommandExt;
        let Some(current) = self.current_pid() else {
            return;
        };
        let draining: Vec<String> = self.draining.iter().map(u32::to_string).collect();
        let state = format!("{current};{}", draining.join(","));
        tracing::info!(binary = %self.options.binary.display(), "re-executing the master from the new binary");
        let mut command = Command::new(&self.options.binary);
        command.args(&self.options.args).env(STATE_VARIABLE, state);
        for name in SOCKET_ACTIVATION {
            command.env_remove(name);
        }
        // Only returns on failure; the master then runs on as it is.
        let error = command.exec();
        tracing::error!(error = %error, binary = %self.options.binary.display(),
            "cannot re-execute the master; it runs on from the old binary");
    }
}

fn serves_on(old: Option<u32>) -> String {
    match old {
        Some(pid) => format!("pid {pid} serves on"),
        None => "nothing served before".to_owned(),
    }
}

/// The state a re-executed master finds in its environment: (current worker, draining ones).
fn adopted_state() -> Option<(u32, Vec<u32>)> {
    parse_state(&std::env::var(STATE_VARIABLE).ok()?)
}

/// `CURRENT;DRAINING,DRAINING,...`, as [`Master::reexecute`] writes it.
fn parse_state(state: &str) -> Option<(u32, Vec<u32>)> {
    let (current, draining) = state.split_once(';')?;
    let current = current.parse().ok()?;
    let draining = draining.split(',').filter_map(|p| p.parse().ok()).collect();
    Some((current, draining))
}

/// A request on `master.sock`, from root or proxyd's own user.
struct Request {
    stream: UnixStream,
    kind: RequestKind,
}

enum RequestKind {
    /// Answered once this image has its signal handlers: after an upgrade, proxyctl returns
    /// only when the re-executed master can take a SIGTERM.
    Ping,
    /// `upgrade [TIMEOUT_MS [BINARY]]`.
    Upgrade {
        timeout: Option<Duration>,
        binary: Option<PathBuf>,
    },
}

/// The longest an upgrade may wait for its new worker.
const MAX_UPGRADE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Reads one request line (peer credentials first: others get an answer and nothing more),
/// and hands it to the event loop.
async fn read_request(stream: UnixStream, to: tokio::sync::mpsc::Sender<Request>) {
    let uid = stream.peer_cred().ok().map(|c| c.uid());
    let own = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    if !uid.is_some_and(|uid| uid == 0 || Some(uid) == own) {
        tracing::info!(target: "audit", call = "Upgrade", uid, outcome = "denied");
        if let Some(reply) = answer(
            Some(stream),
            "error only root and proxyd's own user may upgrade".to_owned(),
        ) {
            let _ = reply.await;
        }
        return;
    }
    let mut reader = BufReader::new(stream).take(MAX_REQUEST as u64);
    let mut line = String::new();
    let read = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    let stream = reader.into_inner().into_inner();
    if !matches!(read, Ok(Ok(n)) if n > 0) {
        return;
    }
    let line = line.trim_end_matches('\n');
    let kind = if line == "ping" {
        RequestKind::Ping
    } else if let Some(rest) = line
        .strip_prefix("upgrade")
        .filter(|r| r.is_empty() || r.starts_with(' '))
    {
        let mut parts = rest.trim_start_matches(' ').splitn(2, ' ');
        let timeout = parts
            .next()
            .and_then(|t| t.parse::<u64>().ok())
            .map(|ms| Duration::from_millis(ms).min(MAX_UPGRADE_TIMEOUT));
        let binary = parts.next().filter(|b| !b.is_empty()).map(PathBuf::from);
        tracing::info!(target: "audit", call = "Upgrade", uid, outcome = "upgrading");
        RequestKind::Upgrade { timeout, binary }
    } else {
        if let Some(reply) = answer(Some(stream), "error unknown request".to_owned()) {
            let _ = reply.await;
        }
        return;
    };
    let _ = to.send(Request { stream, kind }).await;
}

/// Starts a worker: this binary without `--master`, reporting to the master's notify socket.
fn spawn(options: &MasterOptions, notify_at: &Path, takeover: bool) -> Result<u32, MasterError> {
    let mut command = Command::new(&options.binary);
    command
        .args(&options.worker_args)
        .env("NOTIFY_SOCKET", notify_at)
        .env_remove(STATE_VARIABLE)
        .stdin(Stdio::null());
    if takeover {
        command.arg("--takeover");
        for name in SOCKET_ACTIVATION {
            command.env_remove(name);
        }
    } else {
        // systemd's sockets (fds 3 and up, inherited): for the worker, whose pid systemd could
        // not know. Without LISTEN_PID the worker takes them (sd_listen_fds(3)'s rule, as
        // listenfd reads it).
        command.env_remove("LISTEN_PID");
    }
    let child = command.spawn().map_err(|source| MasterError::Spawn {
        binary: options.binary.clone(),
        source,
    })?;
    // Reaped through SIGCHLD and waitpid, also after a re-execution: the handle is not needed.
    Ok(child.id())
}

/// Closes the master's copies of the sockets systemd passed (the first worker has them).
fn close_passed_sockets() {
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
fn bind_notify(path: &Path) -> std::io::Result<UnixDatagram> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let _ = std::fs::remove_file(path);
    let socket = std::os::unix::net::UnixDatagram::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    rustix::net::sockopt::set_socket_passcred(&socket, true)?;
    socket.set_nonblocking(true)?;
    UnixDatagram::from_std(socket)
}

/// One datagram and the pid that sent it.
async fn recv_from(
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
fn try_recv(socket: &UnixDatagram, buffer: &mut [u8]) -> std::io::Result<(usize, Option<u32>)> {
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

async fn accept(listener: Option<&tokio::net::UnixListener>) -> std::io::Result<UnixStream> {
    match listener {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes the one-line answer to an upgrade request, in the background; the handle lets a
/// re-execution wait until it is out.
fn answer(reply: Option<UnixStream>, line: String) -> Option<tokio::task::JoinHandle<()>> {
    let mut stream = reply?;
    Some(tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            stream.write_all(format!("{line}\n").as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
    }))
}

/// To systemd (a no-op without `NOTIFY_SOCKET`).
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

fn signal_pid(pid: u32, how: Signal) {
    let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process(pid, how) {
        tracing::debug!(pid = pid.as_raw_pid(), error = %e, "signalling a worker");
    }
}

fn clean(status: WaitStatus) -> bool {
    status.exit_status() == Some(0)
}

fn describe(status: WaitStatus) -> String {
    match (status.exit_status(), status.terminating_signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (_, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "stopped".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_crosses_the_reexecution_as_written() {
        assert_eq!(parse_state("42;"), Some((42, vec![])));
        assert_eq!(parse_state("42;7,8"), Some((42, vec![7, 8])));
        assert_eq!(parse_state("nonsense"), None);
        assert_eq!(parse_state(";7"), None);
    }

    #[test]
    fn the_sockets_live_beside_the_admin_socket() {
        let admin = Path::new("/run/proxyd/admin.sock");
        assert_eq!(socket_path(admin), Path::new("/run/proxyd/master.sock"));
        assert_eq!(notify_path(admin), Path::new("/run/proxyd/master.notify"));
    }
}
