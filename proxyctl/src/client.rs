//! The Admin client: reaches controld's Unix socket and names the step that failed.
//!
//! Every way a call can fail becomes one [`Error`], so `main` can pick the exit code and print
//! one clear line. Two kinds matter to a script: controld could not be reached or did not answer
//! ([`Error::Connect`], [`Error::Timeout`], [`Error::Rpc`]: exit 69, try again later), or it
//! answered and refused the operation ([`Error::Refused`]: exit 1, trying again will not help).

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proto::v1::admin_client::AdminClient;
use proto::v1::{
    HistoryReply, HistoryRequest, ReloadReply, ReloadRequest, RollbackRequest, StatusReply,
    StatusRequest,
};
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use crate::output::one_line;

/// Connecting never waits longer than this, even with a long `--timeout`: a local socket either
/// answers at once or is not going to.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why talking to controld failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No connection to the socket. `not_running` is set when the socket file is missing or
    /// nobody listens on it: controld is simply not running.
    #[error("cannot reach controld at {}: {reason}{}", .socket.display(), running_hint(*.not_running))]
    Connect {
        socket: PathBuf,
        reason: String,
        not_running: bool,
    },
    /// Connected, but no answer arrived within `--timeout`.
    #[error("{call}: no answer from controld at {} within {} (see --timeout)",
        .socket.display(), humantime::format_duration(*.timeout))]
    Timeout {
        socket: PathBuf,
        call: &'static str,
        timeout: Duration,
    },
    /// The call itself failed: the connection broke, or controld answered with an error status
    /// that says nothing about the request (UNAVAILABLE, INTERNAL, UNIMPLEMENTED, ...).
    #[error("{call} failed: controld at {}: {message}", .socket.display())]
    Rpc {
        socket: PathBuf,
        call: &'static str,
        code: Code,
        message: String,
    },
    /// controld is fine and refused this request: the caller may not make changes
    /// (PERMISSION_DENIED), the version is unknown (NOT_FOUND), there is nothing to roll back to
    /// (FAILED_PRECONDITION), or the request is malformed (INVALID_ARGUMENT). `message` is
    /// controld's own, on one line.
    #[error("{call}: {message}")]
    Refused {
        call: &'static str,
        code: Code,
        message: String,
    },
}

impl Error {
    /// True when controld is not running at all (DESIGN §8 exit code 3 for `status`).
    pub fn is_not_running(&self) -> bool {
        matches!(
            self,
            Error::Connect {
                not_running: true,
                ..
            }
        )
    }

    /// True when controld answered and refused the operation (DESIGN §8 exit code 1), rather
    /// than being unreachable (69).
    pub fn is_refused(&self) -> bool {
        matches!(self, Error::Refused { .. })
    }
}

fn running_hint(not_running: bool) -> &'static str {
    if not_running {
        " (is controld running?)"
    } else {
        ""
    }
}

/// A connected Admin client with the deadline every call gets.
pub struct Admin {
    client: AdminClient<Channel>,
    socket: PathBuf,
    timeout: Duration,
}

impl Admin {
    /// Connects to `socket`; `timeout` is the deadline of each later call and, capped at 5 s,
    /// of the connection itself.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Admin, Error> {
        let connect_timeout = timeout.min(MAX_CONNECT_TIMEOUT);
        let failed = |reason: String, not_running: bool| Error::Connect {
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
            Ok(Ok(channel)) => Ok(Admin {
                client: AdminClient::new(channel),
                socket: socket.to_owned(),
                timeout,
            }),
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

    /// `Admin.Reload`.
    pub async fn reload(&mut self, request: ReloadRequest) -> Result<ReloadReply, Error> {
        let request = self.request(request);
        let answer = self.client.reload(request);
        finish(&self.socket, "reload", self.timeout, answer).await
    }

    /// `Admin.Status`.
    pub async fn status(&mut self) -> Result<StatusReply, Error> {
        let request = self.request(StatusRequest {});
        let answer = self.client.status(request);
        finish(&self.socket, "status", self.timeout, answer).await
    }

    /// `Admin.History`.
    pub async fn history(&mut self) -> Result<HistoryReply, Error> {
        let request = self.request(HistoryRequest {});
        let answer = self.client.history(request);
        finish(&self.socket, "history", self.timeout, answer).await
    }

    /// `Admin.Rollback`: its reply is a reload's.
    pub async fn rollback(&mut self, request: RollbackRequest) -> Result<ReloadReply, Error> {
        let request = self.request(request);
        let answer = self.client.rollback(request);
        finish(&self.socket, "rollback", self.timeout, answer).await
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        // Tells controld the deadline too, so it can give up on its side.
        request.set_timeout(self.timeout);
        request
    }
}

/// Waits for a call with the whole deadline and names what went wrong.
async fn finish<T>(
    socket: &Path,
    call: &'static str,
    timeout: Duration,
    answer: impl Future<Output = Result<Response<T>, Status>>,
) -> Result<T, Error> {
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(rpc_error(socket, call, timeout, &status)),
        Err(_) => Err(Error::Timeout {
            socket: socket.to_owned(),
            call,
            timeout,
        }),
    }
}

/// Turns an error status into an [`Error`] whose message fits on one line.
fn rpc_error(socket: &Path, call: &'static str, timeout: Duration, status: &Status) -> Error {
    let socket = socket.to_owned();
    let code = status.code();
    // tonic's own client-side deadline reports itself as CANCELLED "Timeout expired".
    let tonic_timer = code == Code::Cancelled && status.message() == "Timeout expired";
    if code == Code::DeadlineExceeded || tonic_timer {
        return Error::Timeout {
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
            format!("{call} is not supported (is controld older than proxyctl?)")
        }
        (_, true) => code.description().to_owned(),
        (_, false) => format!("{text} ({})", code.description().to_lowercase()),
    };
    Error::Rpc {
        socket,
        call,
        code,
        message,
    }
}

/// The codes with which controld answers "not this request": the operation failed, and the daemon
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
fn describe_io(err: &io::Error) -> String {
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
        let err = rpc_error(socket, "reload", timeout, &tonic_timer);
        assert_eq!(
            err.to_string(),
            "reload: no answer from controld at /s within 30s (see --timeout)"
        );
        let server = Status::deadline_exceeded("late");
        assert!(matches!(
            rpc_error(socket, "reload", timeout, &server),
            Error::Timeout { .. }
        ));
    }

    #[test]
    fn rpc_errors_stay_on_one_line() {
        let status = Status::internal("snapshot store\nis broken");
        let err = rpc_error(Path::new("/s"), "reload", Duration::from_secs(1), &status);
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
                "rollback",
                Status::invalid_argument(""),
                "rollback: Client specified an invalid argument",
            ),
        ];
        for (call, status, line) in cases {
            let err = rpc_error(socket, call, timeout, &status);
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
            let err = rpc_error(socket, "history", timeout, &status);
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
}
