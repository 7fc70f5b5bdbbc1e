//! proxyd's master process (`proxyd --master`, what `deploy/proxyd.service` runs), after
//! HAProxy's master-worker mode: the master keeps the PID systemd supervises and runs the data
//! plane in a worker, a child process; an upgrade starts a new worker, from the binary now at
//! the master's path, that takes the listening sockets over from the old one
//! ([`crate::takeover`]). systemd only ever hears from the master, which it can always
//! supervise: its main process never changes.
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
//! unit. A new worker counts as serving only when it says it took over (`MAINPID=` with
//! `READY=1`), never from a `READY=1` that only says it waits for controld; it then waits for
//! the master's go-ahead (SIGUSR1) before it tells the old one to drain, so that the master
//! alone decides between it and the upgrade's deadline (which kills it unannounced). Upgrades are asked for on `master.sock` beside the admin
//! socket, by root or proxyd's own user (`proxyctl upgrade`, the unit's `ExecReload=`), or
//! with SIGHUP.
//!
//! Workers that end: the serving one exiting 0 (a drain asked for on its admin socket) stops
//! the master too, cleanly; exiting any other way (a crash, `kill -9`, a drain after a take-over
//! the master did not see) makes the master exit 1 at once, so that systemd restarts the unit
//! (`Restart=on-failure`) without waiting for older workers to drain. An old, draining worker
//! is reaped and logged; a new one exiting before it serves fails the upgrade, the old one
//! serving on.
//!
//! The master does not re-execute itself (HAProxy's does): its image stays the one systemd
//! started until the next restart. An `execve` has a window in which SIGTERM or SIGHUP kill
//! it, which only a signal mask set in the child could close, and that needs `unsafe`; the
//! master is small and changes rarely (docs/decisions/0006-master-worker.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use rustix::process::{Signal, WaitOptions, WaitStatus};
use sd_notify::NotifyState;
use tokio::net::{UnixDatagram, UnixStream};
use tokio::signal::unix::{SignalKind, signal};

use requests::{Request, accept, answer, read_request};
use workers::{
    bind_notify, close_passed_sockets, describe, recv_from, signal_pid, spawn, try_recv,
};

mod requests;
mod workers;

/// The exit status of a worker that stopped because a successor took over from it: to the
/// master, the serving worker exiting so means a take-over it did not start, and nothing of
/// its own serving.
pub const EXIT_HANDED_OVER: u8 = 100;

/// The exit status of a worker that stopped on a signal of its own (SIGTERM, SIGINT): clean
/// when the master passed it on, a failure when someone signalled the worker alone.
pub const EXIT_SIGNALLED: u8 = 101;

/// How long an upgrade waits for the new worker to serve when the request names no deadline;
/// also the most it may wait: the old worker waits as long for the new one
/// ([`crate::takeover::READY_DEADLINE`]), and then serves on.
const MAX_UPGRADE_TIMEOUT: Duration = crate::takeover::READY_DEADLINE;
const MIN_UPGRADE_TIMEOUT: Duration = Duration::from_secs(1);

/// How the master runs.
#[derive(Debug, Clone)]
pub struct MasterOptions {
    /// The binary workers run: the path the master was started from, so that a binary
    /// replaced at that path is the one an upgrade runs.
    pub binary: PathBuf,
    /// The worker's arguments: the master's without `--master` and `--takeover`, with
    /// `--worker`.
    pub worker_args: Vec<std::ffi::OsString>,
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
    /// SIGTERM or SIGINT, or the serving worker stopped after a drain: the workers drain, then
    /// the master exits.
    stopping: bool,
    /// The serving worker died: exit now, so that systemd restarts the unit at once.
    abandon: bool,
    /// The exit code once every worker is gone.
    exit: u8,
    /// Answers being written, awaited before the master exits.
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

    // `master.sock` first: its bind refuses a live socket, so a second master on the same
    // directory stops here, before it could replace the first one's notify socket.
    let socket_at = socket_path(&options.admin_socket);
    let mut requests =
        proto::uds::BoundSocket::bind(&socket_at).map_err(|source| MasterError::Bind {
            path: socket_at.clone(),
            source,
        })?;
    let listener = requests.take_listener();
    let notify_at = notify_path(&options.admin_socket);
    let notifications = bind_notify(&notify_at).map_err(|source| MasterError::Bind {
        path: notify_at.clone(),
        source,
    })?;

    let pid = spawn(&options.binary, &options, &notify_at, false)?;
    tracing::info!(worker = pid, "proxyd master started its worker");
    // systemd's sockets went to the first worker; the master keeps none open.
    close_passed_sockets();
    let mut master = Master {
        options,
        notify_at,
        current: Some(Worker::new(pid)),
        draining: Vec::new(),
        upgrade: None,
        stopping: false,
        abandon: false,
        exit: 0,
        replies: Vec::new(),
    };

    let (incoming_tx, mut incoming) = tokio::sync::mpsc::channel::<Request>(8);
    let mut buffer = vec![0u8; 4096];
    while !master.done() {
        let deadline = master.upgrade.as_ref().map(|p| p.deadline);
        // Biased, notifications first: a new worker's READY=1 is sent before the old one
        // drains and exits, and before an upgrade's deadline may pass; it must be seen first.
        tokio::select! {
            biased;
            received = recv_from(&notifications, &mut buffer) => {
                if let Ok((len, pid)) = received {
                    master.notified(pid, &String::from_utf8_lossy(&buffer[..len]));
                }
            }
            _ = children.recv() => {
                master.drain_notifications(&notifications, &mut buffer);
                master.reap();
            }
            _ = term.recv() => master.stop(Signal::TERM),
            _ = int.recv() => master.stop(Signal::INT),
            _ = hup.recv() => master.begin_upgrade(None, None, None),
            Some(request) = incoming.recv() => master.begin_upgrade(
                Some(request.stream), request.timeout, request.binary,
            ),
            accepted = accept(listener.as_ref()) => {
                if let Ok(stream) = accepted {
                    // Read off the event loop: a client that sends nothing must not hold up
                    // the workers' exits or a signal.
                    tokio::spawn(read_request(stream, incoming_tx.clone()));
                }
            }
            () = sleep_until(deadline) => {
                master.drain_notifications(&notifications, &mut buffer);
                master.upgrade_timed_out();
            }
        }
    }
    for reply in std::mem::take(&mut master.replies) {
        let _ = reply.await;
    }
    drop(requests);
    let _ = std::fs::remove_file(&master.notify_at);
    Ok(master.exit)
}

impl Master {
    fn done(&self) -> bool {
        self.abandon
            || (self.current.is_none() && self.draining.is_empty() && self.upgrade.is_none())
    }

    fn current_pid(&self) -> Option<u32> {
        self.current.as_ref().map(|w| w.pid)
    }

    /// Answers an upgrade request.
    fn answer(&mut self, reply: Option<UnixStream>, line: String) {
        self.replies.retain(|h| !h.is_finished());
        self.replies.extend(answer(reply, line));
    }

    /// Handles every notification already queued.
    fn drain_notifications(&mut self, socket: &UnixDatagram, buffer: &mut [u8]) {
        while let Ok((len, pid)) = try_recv(socket, buffer) {
            self.notified(pid, &String::from_utf8_lossy(&buffer[..len]));
        }
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
                let clean = matches!(status.exit_status(), Some(0))
                    || status.exit_status() == Some(i32::from(EXIT_SIGNALLED));
                if !clean {
                    self.exit = 1;
                }
                return;
            }
            if status.exit_status() == Some(0) {
                // A drain asked for on its admin socket (`proxyctl shutdown`): the service
                // stops, after the older workers finish theirs.
                tracing::info!(
                    worker = pid,
                    "the worker stopped after a drain; proxyd stops"
                );
                self.stopping = true;
                notify(&[
                    NotifyState::Stopping,
                    NotifyState::Status("stopped by a drain"),
                ]);
                self.stop_pending("proxyd is stopping");
                return;
            }
            // Nothing serves now: exit at once so that systemd sees it and restarts the unit;
            // older workers are told to drain (systemd ends what is left of them).
            tracing::error!(worker = pid, %how,
                "the serving worker is gone; proxyd exits so that systemd restarts it");
            notify(&[
                NotifyState::Stopping,
                NotifyState::Status(&format!("worker {pid} {how}")),
            ]);
            self.stop_pending(&format!("the serving proxyd (pid {pid}) {how}"));
            for other in &self.draining {
                signal_pid(*other, Signal::TERM);
            }
            self.exit = 1;
            self.abandon = true;
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

    /// Ends a pending upgrade without a result; its worker, which never served (it had no
    /// go-ahead), is killed: waiting for it could outlast systemd's stop timeout.
    fn stop_pending(&mut self, why: &str) {
        if let Some(pending) = self.upgrade.take() {
            signal_pid(pending.worker.pid, Signal::KILL);
            self.draining.push(pending.worker.pid);
            self.answer(pending.reply, format!("error {why}"));
        }
    }

    /// A worker's sd_notify message, `pid` its sender.
    fn notified(&mut self, pid: Option<u32>, message: &str) {
        let ready = message.lines().any(|l| l == "READY=1");
        let took_over = message.lines().any(|l| l.starts_with("MAINPID="));
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
            // Passed on while no upgrade runs: during one, systemd hears the outcome.
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
        // Only a take-over counts: a READY=1 that says it waits for controld does not.
        if !(ready && took_over) {
            return;
        }
        // The new worker serves and is telling the old one to drain.
        let Some(pending) = self.upgrade.take() else {
            return;
        };
        let new = pending.worker.pid;
        if let Some(old) = self.current.replace(Worker {
            ready: true,
            ..pending.worker
        }) {
            self.draining.push(old.pid);
        }
        // Its go-ahead: only now does it tell the old worker to drain. A deadline that passed
        // first killed it instead, and the old worker, never told, serves on.
        signal_pid(new, Signal::USR1);
        tracing::info!(old = ?pending.old, new, "upgraded: the new worker serves; the old one drains");
        self.after_upgrade(None);
        self.answer(
            pending.reply,
            format!("ok {} {new}", pending.old.unwrap_or(0)),
        );
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

    /// Starts a new worker that takes over from the current one.
    fn begin_upgrade(
        &mut self,
        reply: Option<UnixStream>,
        timeout: Option<Duration>,
        binary: Option<PathBuf>,
    ) {
        if self.stopping || self.abandon {
            self.answer(reply, "error proxyd is stopping".to_owned());
            return;
        }
        if self.upgrade.is_some() {
            self.answer(reply, "error an upgrade is already running".to_owned());
            return;
        }
        // The request's binary is for this upgrade only: the next one runs the binary at the
        // master's path again.
        let binary = binary.unwrap_or_else(|| self.options.binary.clone());
        notify(&[NotifyState::Reloading, NotifyState::Status("upgrading")]);
        let old = self.current_pid();
        let pid = match spawn(&binary, &self.options, &self.notify_at, true) {
            Ok(pid) => pid,
            Err(e) => {
                self.upgrade_failed(&format!("{e}; {}", serves_on(old)), reply);
                return;
            }
        };
        tracing::info!(new = pid, binary = %binary.display(),
            "upgrade: started a new worker; it takes over from the current one");
        let timeout = timeout
            .unwrap_or(MAX_UPGRADE_TIMEOUT)
            .clamp(MIN_UPGRADE_TIMEOUT, MAX_UPGRADE_TIMEOUT);
        self.upgrade = Some(Pending {
            worker: Worker::new(pid),
            old,
            deadline: tokio::time::Instant::now() + timeout,
            reply,
        });
    }

    fn upgrade_timed_out(&mut self) {
        let Some(pending) = self.upgrade.take() else {
            return;
        };
        // It has not been given the go-ahead (SIGUSR1), so it never told the old worker to
        // drain, even if its READY=1 is on its way: the old worker serves on.
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
        self.stop_pending("proxyd is stopping");
        for pid in self.draining.iter().copied().chain(self.current_pid()) {
            signal_pid(pid, how);
        }
    }
}

fn serves_on(old: Option<u32>) -> String {
    match old {
        Some(pid) => format!("pid {pid} serves on"),
        None => "nothing served before".to_owned(),
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// To systemd (a no-op without `NOTIFY_SOCKET`).
fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sockets_live_beside_the_admin_socket() {
        let admin = Path::new("/run/proxyd/admin.sock");
        assert_eq!(socket_path(admin), Path::new("/run/proxyd/master.sock"));
        assert_eq!(notify_path(admin), Path::new("/run/proxyd/master.notify"));
    }
}
