//! Every way a call can fail, as one [`Error`] naming the daemon it was for, and how a gRPC
//! status or a transport error becomes one.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::{Code, Status};

use crate::output::one_line;

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

    /// True when the daemon refused because a precondition the caller set no longer holds
    /// (`reload --if-version` / `--if-hash`: another writer got there first).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Error::Refused {
                code: Code::FailedPrecondition,
                ..
            }
        )
    }
}

fn running_hint(daemon: Daemon, not_running: bool) -> String {
    if not_running {
        format!(" (is {daemon} running?)")
    } else {
        String::new()
    }
}
/// Turns an error status into an [`Error`] whose message fits on one line.
pub(super) fn rpc_error(
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
        // The connection ended under the call, before any answer.
        (Code::Unknown, _) if text.starts_with("transport error") => format!(
            "the connection ended before an answer ({text}): the daemon stopped, or closed it \
             at once because this user has 32 connections open to it (1024 in all)"
        ),
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
pub(super) fn describe_connect_failure(err: &(dyn StdError + 'static)) -> (String, bool) {
    let mut innermost = err;
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            let not_running = matches!(
                io.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            );
            // Accepted, then closed before a word: the daemon sheds connections over its caps
            // that way (32 per user, 1024 in all).
            let closed_at_once = matches!(
                io.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::UnexpectedEof
            );
            let mut reason = describe_io(io);
            if closed_at_once {
                reason.push_str(
                    ": the daemon closed the connection at once, as it does when this user has \
                     32 connections open to it (1024 in all)",
                );
            }
            return (reason, not_running);
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
