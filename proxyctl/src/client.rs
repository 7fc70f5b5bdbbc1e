//! The clients: reach controld's Admin socket or proxyd's own DataPlane socket, and name the step
//! that failed.
//!
//! Every way a call can fail becomes one [`Error`], naming the daemon it was for, so `main` can
//! pick the exit code and print one clear line. Three kinds matter to a script: the daemon is not
//! running at all ([`Error::is_not_running`]: exit 3 for `status`, `health` and `shutdown`), it
//! could not be reached or did not answer ([`Error::Connect`], [`Error::Timeout`],
//! [`Error::Rpc`]: exit 69, try again later), or it answered and refused the operation
//! ([`Error::Refused`]: exit 1, trying again will not help).

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::v1::admin_client::AdminClient;
use proto::v1::data_plane_client::DataPlaneClient;
use proto::v1::{
    DataPlaneStatusReply, DataPlaneStatusRequest, DrainReply, DrainRequest, GetConfigReply,
    GetConfigRequest, HistoryReply, HistoryRequest, ReloadReply, ReloadRequest, RollbackRequest,
    StatusReply, StatusRequest, ValidateReply, ValidateRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::output::one_line;

/// Connecting never waits longer than this, even with a long `--timeout`: a local socket either
/// answers at once or is not going to.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Which daemon a call goes to; errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Daemon {
    /// The control plane, on its Admin socket (`--socket`).
    Controld,
    /// The local data plane, on its own DataPlane socket (`--data-plane-socket`).
    Proxyd,
}

impl fmt::Display for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Daemon::Controld => "controld",
            Daemon::Proxyd => "proxyd",
        })
    }
}

/// Why talking to a daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection to the socket. `not_running` is set when the socket file is missing or
    /// nobody listens on it: the daemon is simply not running.
    #[error("cannot reach {daemon} at {}: {reason}{}", .socket.display(), running_hint(*.daemon, *.not_running))]
    Connect {
        daemon: Daemon,
        socket: PathBuf,
        reason: String,
        not_running: bool,
    },
    /// Connected, but no answer arrived within `--timeout`.
    #[error("{call}: no answer from {daemon} at {} within {} (see --timeout)",
        .socket.display(), humantime::format_duration(*.timeout))]
    Timeout {
        daemon: Daemon,
        socket: PathBuf,
        call: &'static str,
        timeout: Duration,
    },
    /// The call itself failed: the connection broke, or the daemon answered with an error status
    /// that says nothing about the request (UNAVAILABLE, INTERNAL, UNIMPLEMENTED, ...).
    #[error("{call} failed: {daemon} at {}: {message}", .socket.display())]
    Rpc {
        daemon: Daemon,
        socket: PathBuf,
        call: &'static str,
        code: Code,
        message: String,
    },
    /// The daemon is fine and refused this request: the caller may not make changes
    /// (PERMISSION_DENIED), the version is unknown (NOT_FOUND), there is nothing to roll back to
    /// or another writer published first (`reload --if-version`) (FAILED_PRECONDITION), or the
    /// request is malformed (INVALID_ARGUMENT). `message` is the daemon's own, on one line:
    /// `reload: version is now 13: another writer published first; nothing was reloaded`.
    #[error("{call}: {message}")]
    Refused {
        call: &'static str,
        code: Code,
        message: String,
    },
}

impl Error {
    /// True when the daemon is not running at all (DESIGN §8 exit code 3 for `status`, `health`
    /// and `shutdown`).
    pub fn is_not_running(&self) -> bool {
        matches!(
            self,
            Error::Connect {
                not_running: true,
                ..
            }
        )
    }

    /// True when the daemon answered and refused the operation (DESIGN §8 exit code 1), rather
    /// than being unreachable (69).
    pub fn is_refused(&self) -> bool {
        matches!(self, Error::Refused { .. })
    }
}

fn running_hint(daemon: Daemon, not_running: bool) -> String {
    if not_running {
        format!(" (is {daemon} running?)")
    } else {
        String::new()
    }
}

/// The socket a client talks to, and the deadline every call on it gets.
struct Target {
    daemon: Daemon,
    socket: PathBuf,
    timeout: Duration,
}

impl Target {
    /// Connects to `socket`; `timeout` is the deadline of each later call and, capped at 5 s,
    /// of the connection itself.
    async fn connect(
        daemon: Daemon,
        socket: &Path,
        timeout: Duration,
    ) -> Result<(Target, Channel), Error> {
        let connect_timeout = timeout.min(MAX_CONNECT_TIMEOUT);
        let failed = |reason: String, not_running: bool| Error::Connect {
            daemon,
            socket: socket.to_owned(),
            reason,
            not_running,
        };
        // The outer timer is a backstop: tonic's connect timeout covers the socket connect, this
        // also covers the HTTP/2 handshake with a peer that accepted but never speaks.
        match tokio::time::timeout(
            connect_timeout,
            proto::uds::connect(socket, connect_timeout),
        )
        .await
        {
            Ok(Ok(channel)) => Ok((
                Target {
                    daemon,
                    socket: socket.to_owned(),
                    timeout,
                },
                channel,
            )),
            Ok(Err(err)) => {
                let (reason, not_running) = describe_connect_failure(&err);
                Err(failed(reason, not_running))
            }
            Err(_) => Err(failed(
                format!(
                    "no connection within {}",
                    humantime::format_duration(connect_timeout)
                ),
                false,
            )),
        }
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        // Tells the daemon the deadline too, so it can give up on its side.
        request.set_timeout(self.timeout);
        request
    }

    /// Waits for a call with the whole deadline and names what went wrong.
    async fn finish<T>(
        &self,
        call: &'static str,
        answer: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(rpc_error(
                self.daemon,
                &self.socket,
                call,
                self.timeout,
                &status,
            )),
            Err(_) => Err(Error::Timeout {
                daemon: self.daemon,
                socket: self.socket.clone(),
                call,
                timeout: self.timeout,
            }),
        }
    }
}

/// A connected Admin client (controld) with the deadline every call gets.
pub struct Admin {
    client: AdminClient<Channel>,
    target: Target,
}

impl Admin {
    /// Connects to controld's `socket`; `timeout` is the deadline of each later call and, capped
    /// at 5 s, of the connection itself.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Admin, Error> {
        let (target, channel) = Target::connect(Daemon::Controld, socket, timeout).await?;
        Ok(Admin {
            // GetConfig carries a whole snapshot.
            client: AdminClient::new(channel)
                .max_decoding_message_size(proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(proto::MAX_REQUEST_BYTES),
            target,
        })
    }

    /// `Admin.Reload`.
    pub async fn reload(&mut self, request: ReloadRequest) -> Result<ReloadReply, Error> {
        let request = self.target.request(request);
        let answer = self.client.reload(request);
        self.target.finish("reload", answer).await
    }

    /// `Admin.Status`.
    pub async fn status(&mut self) -> Result<StatusReply, Error> {
        let request = self.target.request(StatusRequest {});
        let answer = self.client.status(request);
        self.target.finish("status", answer).await
    }

    /// `Admin.History`.
    pub async fn history(&mut self) -> Result<HistoryReply, Error> {
        let request = self.target.request(HistoryRequest {});
        let answer = self.client.history(request);
        self.target.finish("history", answer).await
    }

    /// `Admin.Rollback`: its reply is a reload's.
    pub async fn rollback(&mut self, request: RollbackRequest) -> Result<ReloadReply, Error> {
        let request = self.target.request(request);
        let answer = self.client.rollback(request);
        self.target.finish("rollback", answer).await
    }

    /// `Admin.Validate`, for `check --remote`: nothing is applied.
    pub async fn validate(&mut self, request: ValidateRequest) -> Result<ValidateReply, Error> {
        let request = self.target.request(request);
        let answer = self.client.validate(request);
        self.target.finish("check", answer).await
    }

    /// `Admin.Certificates`, for `certs` (and `status`).
    pub async fn certificates(&mut self) -> Result<proto::v1::CertificatesReply, Error> {
        let request = self.target.request(proto::v1::CertificatesRequest {});
        let answer = self.client.certificates(request);
        self.target.finish("certs", answer).await
    }

    /// `Admin.GetConfig`, for `config show`.
    pub async fn get_config(&mut self) -> Result<GetConfigReply, Error> {
        let request = self.target.request(GetConfigRequest {});
        let answer = self.client.get_config(request);
        self.target.finish("config show", answer).await
    }
}

/// A connected DataPlane client (the local proxyd) with the deadline every call gets.
pub struct DataPlane {
    client: DataPlaneClient<Channel>,
    target: Target,
}

impl DataPlane {
    /// Connects to proxyd's own `socket`; `timeout` as for [`Admin::connect`].
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<DataPlane, Error> {
        let (target, channel) = Target::connect(Daemon::Proxyd, socket, timeout).await?;
        Ok(DataPlane {
            client: DataPlaneClient::new(channel),
            target,
        })
    }

    /// `DataPlane.Status`.
    pub async fn status(&mut self) -> Result<DataPlaneStatusReply, Error> {
        let request = self.target.request(DataPlaneStatusRequest {});
        let answer = self.client.status(request);
        self.target.finish("status", answer).await
    }

    /// `DataPlane.Drain`: answers once the drain has started.
    pub async fn drain(&mut self) -> Result<DrainReply, Error> {
        let request = self.target.request(DrainRequest {});
        let answer = self.client.drain(request);
        self.target.finish("shutdown", answer).await
    }
}

/// Whether something still accepts connections on `socket` (not whether it speaks gRPC): how
/// `shutdown --wait` sees that proxyd has exited. `false` once the file is gone or nobody
/// listens on it; other failures (no permission, ...) count as still there.
pub async fn accepts_connections(socket: &Path) -> bool {
    match tokio::net::UnixStream::connect(socket).await {
        Ok(_) => true,
        Err(err) => !matches!(
            err.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        ),
    }
}

/// Turns an error status into an [`Error`] whose message fits on one line.
fn rpc_error(
    daemon: Daemon,
    socket: &Path,
    call: &'static str,
    timeout: Duration,
    status: &Status,
) -> Error {
    let socket = socket.to_owned();
    let code = status.code();
    // tonic's own client-side deadline reports itself as CANCELLED "Timeout expired".
    let tonic_timer = code == Code::Cancelled && status.message() == "Timeout expired";
    if code == Code::DeadlineExceeded || tonic_timer {
        return Error::Timeout {
            daemon,
            socket,
            call,
            timeout,
        };
    }
    let text = one_line(status.message());
    if refuses_the_request(code) {
        let message = if text.is_empty() {
            code.description().to_owned()
        } else {
            text
        };
        return Error::Refused {
            call,
            code,
            message,
        };
    }
    let message = match (code, text.is_empty()) {
        (Code::Unavailable, _) => format!("connection lost: {}", or_unknown(&text)),
        (Code::Unimplemented, _) => {
            format!("{call} is not supported (is {daemon} older than proxyctl?)")
        }
        (_, true) => code.description().to_owned(),
        (_, false) => format!("{text} ({})", code.description().to_lowercase()),
    };
    Error::Rpc {
        daemon,
        socket,
        call,
        code,
        message,
    }
}

/// The codes with which a daemon answers "not this request": the operation failed, and the daemon
/// is reachable and well. Every other code (UNAVAILABLE, INTERNAL, ...) says nothing about the
/// request and stays "unreachable".
fn refuses_the_request(code: Code) -> bool {
    matches!(
        code,
        Code::PermissionDenied | Code::NotFound | Code::FailedPrecondition | Code::InvalidArgument
    )
}

fn or_unknown(text: &str) -> &str {
    if text.is_empty() {
        "unknown reason"
    } else {
        text
    }
}

/// Finds the operating system's reason in a transport error's chain, and whether it means that
/// nothing is running there (socket file missing, or a stale file nobody listens on).
fn describe_connect_failure(err: &(dyn StdError + 'static)) -> (String, bool) {
    let mut innermost = err;
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            let not_running = matches!(
                io.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            );
            return (describe_io(io), not_running);
        }
        innermost = e;
        current = e.source();
    }
    (one_line(&innermost.to_string()), false)
}

/// The OS message without Rust's " (os error 2)" suffix: "No such file or directory".
pub fn describe_io(err: &io::Error) -> String {
    let text = err.to_string();
    match err.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .unwrap_or(&text)
            .to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("transport error")]
    struct Wrapper(#[source] io::Error);

    #[test]
    fn missing_socket_means_not_running() {
        let err = Wrapper(io::Error::from_raw_os_error(2)); // ENOENT
        let (reason, not_running) = describe_connect_failure(&err);
        assert_eq!(reason, "No such file or directory");
        assert!(not_running);
    }

    #[test]
    fn refused_means_not_running_but_permission_does_not() {
        let refused = Wrapper(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert!(describe_connect_failure(&refused).1);
        let denied = Wrapper(io::Error::from_raw_os_error(13)); // EACCES
        assert_eq!(
            describe_connect_failure(&denied),
            ("Permission denied".to_owned(), false)
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("transport error")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("h2 handshake\nfailed")]
    struct Inner;

    #[test]
    fn without_an_io_error_the_innermost_message_is_used() {
        assert_eq!(
            describe_connect_failure(&Outer(Inner)),
            ("h2 handshake; failed".to_owned(), false)
        );
        // An io::Error without an OS code keeps its own text.
        let custom = Wrapper(io::Error::other("custom"));
        assert_eq!(describe_connect_failure(&custom).0, "custom");
    }

    #[test]
    fn connect_error_line_reads_well() {
        let err = Error::Connect {
            daemon: Daemon::Controld,
            socket: PathBuf::from("/run/controld/control.sock"),
            reason: "No such file or directory".into(),
            not_running: true,
        };
        assert_eq!(
            err.to_string(),
            "cannot reach controld at /run/controld/control.sock: No such file or directory \
             (is controld running?)"
        );
        assert!(err.is_not_running());
    }

    #[test]
    fn deadline_statuses_become_timeouts() {
        let socket = Path::new("/s");
        let timeout = Duration::from_secs(30);
        let tonic_timer = Status::cancelled("Timeout expired");
        let err = rpc_error(Daemon::Controld, socket, "reload", timeout, &tonic_timer);
        assert_eq!(
            err.to_string(),
            "reload: no answer from controld at /s within 30s (see --timeout)"
        );
        let server = Status::deadline_exceeded("late");
        assert!(matches!(
            rpc_error(Daemon::Controld, socket, "reload", timeout, &server),
            Error::Timeout { .. }
        ));
    }

    #[test]
    fn rpc_errors_stay_on_one_line() {
        let status = Status::internal("snapshot store\nis broken");
        let err = rpc_error(
            Daemon::Controld,
            Path::new("/s"),
            "reload",
            Duration::from_secs(1),
            &status,
        );
        assert_eq!(
            err.to_string(),
            "reload failed: controld at /s: snapshot store; is broken (internal error)"
        );
        assert!(!err.is_not_running());
        assert!(!err.is_refused());
    }

    #[test]
    fn refusals_name_the_call_and_keep_controlds_message() {
        let socket = Path::new("/s");
        let timeout = Duration::from_secs(1);
        let cases = [
            (
                "reload",
                Status::permission_denied("uid 1000\nmay not reload"),
                "reload: uid 1000; may not reload",
            ),
            (
                "rollback",
                Status::not_found("version 9 is not in the history"),
                "rollback: version 9 is not in the history",
            ),
            (
                "rollback",
                Status::failed_precondition("there is no earlier version to roll back to"),
                "rollback: there is no earlier version to roll back to",
            ),
            (
                "reload",
                Status::failed_precondition(
                    "version is now 13: another writer published first; nothing was reloaded",
                ),
                "reload: version is now 13: another writer published first; nothing was reloaded",
            ),
            (
                "rollback",
                Status::invalid_argument(""),
                "rollback: Client specified an invalid argument",
            ),
        ];
        for (call, status, line) in cases {
            let err = rpc_error(Daemon::Controld, socket, call, timeout, &status);
            assert!(err.is_refused(), "{err:?}");
            assert!(!err.is_not_running());
            assert_eq!(err.to_string(), line);
        }
    }

    #[test]
    fn unreachable_statuses_are_not_refusals() {
        let socket = Path::new("/s");
        let timeout = Duration::from_secs(1);
        for status in [
            Status::unavailable("broken pipe"),
            Status::deadline_exceeded("late"),
            Status::unimplemented(""),
            Status::internal("oops"),
            Status::unknown("h2 protocol error"),
        ] {
            let err = rpc_error(Daemon::Controld, socket, "history", timeout, &status);
            assert!(!err.is_refused(), "{err:?}");
        }
    }

    #[tokio::test]
    async fn connecting_to_a_missing_socket_says_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let Err(err) = Admin::connect(&socket, Duration::from_secs(1)).await else {
            panic!("connected to a socket that does not exist");
        };
        assert!(err.is_not_running(), "{err}");
        assert!(
            err.to_string().contains("No such file or directory"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn connecting_to_a_stale_socket_says_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        let Err(err) = Admin::connect(&socket, Duration::from_secs(1)).await else {
            panic!("connected to a socket nobody listens on");
        };
        assert!(err.is_not_running(), "{err}");
        assert!(err.to_string().contains("Connection refused"), "{err}");
    }

    #[test]
    fn proxyd_errors_name_proxyd() {
        let err = Error::Connect {
            daemon: Daemon::Proxyd,
            socket: PathBuf::from("/run/proxyd/admin.sock"),
            reason: "Connection refused".into(),
            not_running: true,
        };
        assert_eq!(
            err.to_string(),
            "cannot reach proxyd at /run/proxyd/admin.sock: Connection refused \
             (is proxyd running?)"
        );
        let socket = Path::new("/run/proxyd/admin.sock");
        let timeout = Duration::from_secs(2);
        let old = rpc_error(
            Daemon::Proxyd,
            socket,
            "status",
            timeout,
            &Status::unimplemented(""),
        );
        assert_eq!(
            old.to_string(),
            "status failed: proxyd at /run/proxyd/admin.sock: status is not supported \
             (is proxyd older than proxyctl?)"
        );
        let late = rpc_error(
            Daemon::Proxyd,
            socket,
            "shutdown",
            timeout,
            &Status::deadline_exceeded(""),
        );
        assert_eq!(
            late.to_string(),
            "shutdown: no answer from proxyd at /run/proxyd/admin.sock within 2s (see --timeout)"
        );
    }

    #[tokio::test]
    async fn a_missing_data_plane_socket_says_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let Err(err) = DataPlane::connect(&socket, Duration::from_secs(1)).await else {
            panic!("connected to a socket that does not exist");
        };
        assert!(err.is_not_running(), "{err}");
        assert!(
            err.to_string().starts_with("cannot reach proxyd at "),
            "{err}"
        );
        assert!(!accepts_connections(&socket).await);
    }

    #[tokio::test]
    async fn a_listening_socket_accepts_connections_and_a_stale_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        assert!(accepts_connections(&socket).await);
        drop(listener);
        assert!(
            !accepts_connections(&socket).await,
            "stale file, nobody listens"
        );
    }
}
