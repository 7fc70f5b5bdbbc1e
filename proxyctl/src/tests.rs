use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn connect_error(not_running: bool) -> client::Error {
    client::Error::Connect {
        daemon: client::Daemon::Controld,
        socket: PathBuf::from("/run/controld/control.sock"),
        reason: "No such file or directory".into(),
        not_running,
    }
}

#[test]
fn missing_daemon_is_3_for_status_and_69_for_reload() {
    let missing = connect_error(true);
    assert_eq!(error_exit(&missing, &Command::Status), Exit::NotRunning);
    let reload = Command::Reload {
        dry_run: false,
        force: false,
        if_version: None,
        if_hash: None,
        canary: None,
        canary_wait: None,
        canary_max_5xx: None,
    };
    assert_eq!(error_exit(&missing, &reload), Exit::Unavailable);
    let check = Command::Check {
        file: PathBuf::from("proxy.toml"),
        remote: true,
    };
    assert_eq!(error_exit(&missing, &check), Exit::Unavailable);
    let show = Command::Config {
        command: ConfigCommand::Show,
    };
    assert_eq!(error_exit(&missing, &show), Exit::Unavailable);
    let broken = connect_error(false);
    assert_eq!(error_exit(&broken, &Command::Status), Exit::Unavailable);
    let timeout = client::Error::Timeout {
        daemon: client::Daemon::Controld,
        socket: Path::new("/s").to_owned(),
        call: "status",
        timeout: Duration::from_secs(1),
    };
    assert_eq!(error_exit(&timeout, &Command::Status), Exit::Unavailable);
}

#[test]
fn a_missing_proxyd_is_3_for_health_and_shutdown() {
    let missing = client::Error::Connect {
        daemon: client::Daemon::Proxyd,
        socket: PathBuf::from("/run/proxyd/admin.sock"),
        reason: "Connection refused".into(),
        not_running: true,
    };
    assert_eq!(error_exit(&missing, &Command::Health), Exit::NotRunning);
    let shutdown = Command::Shutdown { wait: false };
    assert_eq!(error_exit(&missing, &shutdown), Exit::NotRunning);
    let denied = client::Error::Connect {
        daemon: client::Daemon::Proxyd,
        socket: PathBuf::from("/run/proxyd/admin.sock"),
        reason: "Permission denied".into(),
        not_running: false,
    };
    assert_eq!(error_exit(&denied, &Command::Health), Exit::Unavailable);
    assert_eq!(error_exit(&denied, &shutdown), Exit::Unavailable);
    let refused = client::Error::Refused {
        call: "shutdown",
        code: tonic::Code::PermissionDenied,
        message: "uid 1000 may not drain proxyd".into(),
    };
    assert_eq!(error_exit(&refused, &shutdown), Exit::Failed);
}

#[test]
fn refusals_exit_1_for_every_command() {
    let refused = |code| client::Error::Refused {
        call: "rollback",
        code,
        message: "version 9 is not in the history".into(),
    };
    let commands = [
        Command::Reload {
            dry_run: false,
            force: false,
            if_version: Some(3),
            if_hash: None,
            canary: None,
            canary_wait: None,
            canary_max_5xx: None,
        },
        Command::Check {
            file: PathBuf::from("proxy.toml"),
            remote: true,
        },
        Command::Config {
            command: ConfigCommand::Show,
        },
        Command::Rollback { version: Some(9) },
        Command::Rollback { version: None },
        Command::Status,
        Command::History,
        Command::Health,
        Command::Shutdown { wait: true },
    ];
    for command in &commands {
        for code in [
            tonic::Code::PermissionDenied,
            tonic::Code::NotFound,
            tonic::Code::FailedPrecondition,
            tonic::Code::InvalidArgument,
        ] {
            // A reload whose precondition no longer holds is a conflict (4), nothing else is.
            let expected = match (command, code) {
                (Command::Reload { .. }, tonic::Code::FailedPrecondition) => Exit::Conflict,
                _ => Exit::Failed,
            };
            assert_eq!(error_exit(&refused(code), command), expected);
        }
        let lost = client::Error::Rpc {
            daemon: client::Daemon::Controld,
            socket: PathBuf::from("/s"),
            call: "rollback",
            code: tonic::Code::Unavailable,
            message: "connection lost".into(),
        };
        assert_eq!(error_exit(&lost, command), Exit::Unavailable);
    }
}
