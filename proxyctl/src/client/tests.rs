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

#[test]
fn a_connection_closed_at_once_names_the_connection_cap() {
    // controld and proxyd close a new connection at once when its user has 32 open to them:
    // the caller sees a broken pipe or a reset at connect, or the call's transport error.
    let closed = Wrapper(io::Error::from(io::ErrorKind::BrokenPipe));
    let (reason, not_running) = describe_connect_failure(&closed);
    assert!(!not_running, "the daemon runs");
    assert!(reason.contains("32 connections open"), "{reason}");
    let status = Status::unknown("transport error");
    let err = rpc_error(
        Daemon::Controld,
        Path::new("/run/controld/control.sock"),
        "history",
        Duration::from_secs(30),
        &status,
    );
    assert!(err.to_string().contains("32 connections open"), "{err}");
    assert!(!err.is_refused());
}
