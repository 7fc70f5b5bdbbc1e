//! proxyctl's command line (DESIGN §9): parse, call controld's Admin service or the local
//! proxyd's DataPlane service, print, exit.
//!
//! The operator's and deploy scripts' handle on controld, and on the proxyd of this host through
//! its own socket, which answers while controld is down: `status` asks both, `health` and
//! `shutdown` only proxyd, and `check` without `--remote` neither (it runs controld's own config
//! code here). Rendering lives in `reload` (also for `rollback`), `check`, `config`, `status`,
//! `history`, `health`, `shutdown` and `json`; this file only wires them to the clients and turns
//! outcomes into exit codes.

mod certs;
mod check;
mod client;
mod config;
mod diff;
mod exit;
#[cfg(test)]
mod fixtures;
mod health;
mod history;
mod json;
mod output;
mod reload;
mod shutdown;
mod status;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use proto::v1::{ReloadRequest, RollbackRequest, ValidateRequest};

use crate::client::{Admin, DataPlane};
use crate::exit::Exit;
use crate::reload::Operation;
use crate::status::{Local, Report};

/// Reload, roll back and inspect the reverse proxy through controld's control socket and the
/// local proxyd's own socket.
///
/// Exit codes: 0 ok; 1 operation failed (reload or rollback rejected or not applied by every data
/// plane, refused by controld or proxyd: not allowed, unknown version, nothing to roll back to,
/// reload --if-version: another version serves now; check: the file is invalid or unreadable;
/// status degraded or controld down; health: not ready or draining; shutdown --wait: proxyd
/// still running at --timeout); 2 usage; 3 not running (status: neither controld nor proxyd
/// answers; health, shutdown: proxyd); 69 controld (health, shutdown: proxyd) unreachable or no
/// answer.
#[derive(Debug, Parser)]
#[command(
    name = "proxyctl",
    version = proto::BUILD_VERSION,
    after_help = "Examples:
  proxyctl status                          controld, every data plane and this host's proxyd
  proxyctl check new.toml                  validate a file here, with controld's own checks
  proxyctl check --remote new.toml         ask the running controld what it would change
  proxyctl reload --dry-run                what the file on disk would change
  proxyctl reload                          publish it; returns once every data plane applied it
  proxyctl --json reload | jq .version     the same, for scripts
  proxyctl reload --if-version 12          only if version 12 still serves (else exit 1)
  proxyctl config show                     the config text the serving version was built from
  proxyctl certs                           every certificate: expiry, next renewal, last error
  proxyctl history                         the versions published recently
  proxyctl rollback 12                     publish version 12's config again, as a new version
  proxyctl health                          is this host's proxyd serving? (asks proxyd only)
  proxyctl shutdown --wait --timeout 2m    drain this host's proxyd and wait until it exited
  proxyctl completions bash > /etc/bash_completion.d/proxyctl

Exit codes:
  0   ok
  1   operation failed: rejected, refused by a data plane, by controld or by proxyd;
      reload --if-version: another version serves now; check: the file is invalid (or
      unreadable); status degraded (also: controld down while proxyd answers); health: not
      ready or draining; shutdown --wait: proxyd still running after --timeout
  2   usage error
  3   not running: status: neither controld nor proxyd answers; health, shutdown: proxyd
  69  controld unreachable (proxyd for health, shutdown), or no answer within --timeout

--json: every command prints one JSON object on stdout; its fields are only ever added, never
renamed or removed.

The sockets: --socket PATH, or PROXYCTL_SOCKET (controld, default /run/controld/control.sock);
--data-plane-socket PATH, or PROXYCTL_DATA_PLANE_SOCKET (this host's proxyd, default
/run/proxyd/admin.sock; status, health and shutdown use it, and work while controld is down)."
)]
struct Cli {
    /// controld's Admin socket.
    #[arg(
        long,
        global = true,
        env = "PROXYCTL_SOCKET",
        default_value = "/run/controld/control.sock",
        value_name = "PATH"
    )]
    socket: PathBuf,

    /// The local proxyd's own socket (`proxyd --admin-socket`), for status, health and shutdown.
    #[arg(
        long,
        global = true,
        env = "PROXYCTL_DATA_PLANE_SOCKET",
        default_value = "/run/proxyd/admin.sock",
        value_name = "PATH"
    )]
    data_plane_socket: PathBuf,

    /// Print the answer as one JSON object on stdout (errors stay text on stderr).
    #[arg(long, global = true)]
    json: bool,

    /// Deadline for the whole call, e.g. "30s", "2m"; connecting waits at most 5s of it.
    /// `shutdown --wait` waits this long again for proxyd to exit.
    #[arg(long, global = true, default_value = "30s", value_name = "D", value_parser = parse_timeout)]
    timeout: Duration,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Re-read the config file and publish it; waits until every data plane applied or refused it.
    Reload {
        /// Validate and show what would change, without publishing anything.
        #[arg(long)]
        dry_run: bool,
        /// Publish a new version even when the file did not change.
        #[arg(long)]
        force: bool,
        /// Reload only if VERSION still serves (see `status`); if another writer published
        /// first, publish nothing and exit 1 ("version is now N").
        #[arg(long, value_name = "VERSION")]
        if_version: Option<u64>,
    },
    /// Check a config file without applying it: here, with controld's own validation (no daemon
    /// needed), or with --remote by the running controld, which also says what a reload of it
    /// would change. Exits 0 when valid, 1 when not (every problem is printed).
    Check {
        /// The config file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Send the file to the running controld (Admin.Validate) and show what a reload of it
        /// would change against the serving version; nothing is applied.
        #[arg(long)]
        remote: bool,
    },
    /// The running config, as controld has it.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Show controld, every connected data plane and this host's proxyd; exits 1 when degraded
    /// (no data plane, one lags, the local one is not ready or cut off, controld is down).
    Status,
    /// Ask this host's proxyd (only) whether it serves: exits 0 ready, 1 not ready or draining,
    /// 3 not running. For scripts and load-balancer checks.
    Health,
    /// Drain this host's proxyd (like SIGTERM): it stops accepting, lets in-flight requests
    /// finish, then exits.
    Shutdown {
        /// Then wait until proxyd has exited (its socket no longer accepts connections), at most
        /// --timeout; exits 1 if it is still running then.
        #[arg(long)]
        wait: bool,
    },
    /// Every site's certificate: names, source (files or acme), not-after, days left, next
    /// renewal and the last renewal error.
    Certs,
    /// List the versions published recently, newest first; `*` marks the serving one.
    History,
    /// Publish an earlier version's config again, as a new version; the file on disk is untouched.
    Rollback {
        /// The version to restore (see `history`); default: the one before the serving version.
        #[arg(value_name = "VERSION", value_parser = clap::value_parser!(u64).range(1..))]
        version: Option<u64>,
    },
    /// Print proxyctl's version.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the config text the serving version was built from (secret-looking values
    /// redacted), under a `# version N (sha256 ...) from PATH` comment.
    Show,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if timeout.is_zero() {
        return Err("must be longer than 0s".to_owned());
    }
    Ok(timeout)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    run(&cli).await.into()
}

async fn run(cli: &Cli) -> Exit {
    match cli.command {
        Command::Reload {
            dry_run,
            force,
            if_version,
        } => {
            let request = ReloadRequest {
                dry_run,
                force,
                if_version,
            };
            match call(cli, |mut admin| async move { admin.reload(request).await }).await {
                Ok(reply) => answer(
                    cli,
                    || json::Reload::from(&reply),
                    || reload::render(&reply, Operation::Reload),
                    reload::exit(&reply),
                ),
                Err(err) => fail(&err, &cli.command),
            }
        }
        Command::Rollback { version } => {
            let request = RollbackRequest { version };
            let rollback = |mut admin: Admin| async move { admin.rollback(request).await };
            match call(cli, rollback).await {
                Ok(reply) => answer(
                    cli,
                    || json::Reload::from(&reply),
                    || reload::render(&reply, Operation::Rollback { restores: version }),
                    reload::exit(&reply),
                ),
                Err(err) => fail(&err, &cli.command),
            }
        }
        Command::Check {
            ref file,
            remote: false,
        } => {
            let report = check::local(file);
            answer(cli, || report.to_json(), || report.render(), report.exit())
        }
        Command::Check {
            ref file,
            remote: true,
        } => check_remote(cli, file).await,
        Command::Config {
            command: ConfigCommand::Show,
        } => match call(cli, |mut admin| async move { admin.get_config().await }).await {
            Ok(reply) => answer(
                cli,
                || json::ConfigShow::from(&reply),
                || config::render_show(&reply),
                Exit::Ok,
            ),
            Err(err) => fail(&err, &cli.command),
        },
        Command::Status => {
            // Both at once: a daemon that does not answer costs its timeout only once.
            let (control, local) = tokio::join!(
                call(cli, |mut admin| async move {
                    let status = admin.status().await?;
                    // Best effort: an older controld has no Certificates call.
                    let certificates = admin.certificates().await.ok();
                    Ok((status, certificates))
                }),
                call_data_plane(cli, |mut dp| async move { dp.status().await }),
            );
            status(cli, control, local)
        }
        Command::Certs => {
            match call(cli, |mut admin| async move { admin.certificates().await }).await {
                Ok(reply) => answer(
                    cli,
                    || certs::Certs::from(&reply),
                    || certs::render(&reply),
                    Exit::Ok,
                ),
                Err(err) => fail(&err, &cli.command),
            }
        }
        Command::Health => {
            match call_data_plane(cli, |mut dp| async move { dp.status().await }).await {
                Ok(reply) => answer(
                    cli,
                    || health::to_json(&reply),
                    || health::render(&reply),
                    health::exit(&reply),
                ),
                Err(err) => fail(&err, &cli.command),
            }
        }
        Command::Shutdown { wait } => shutdown(cli, wait).await,
        Command::History => {
            match call(cli, |mut admin| async move { admin.history().await }).await {
                Ok(reply) => answer(
                    cli,
                    || json::History::from(&reply),
                    || history::render(&reply),
                    Exit::Ok,
                ),
                Err(err) => fail(&err, &cli.command),
            }
        }
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "proxyctl", &mut std::io::stdout());
            Exit::Ok
        }
        Command::Version => answer(
            cli,
            || json::Version {
                proxyctl: proto::BUILD_VERSION,
            },
            || format!("proxyctl {}\n", proto::BUILD_VERSION),
            Exit::Ok,
        ),
    }
}

/// Connects to controld, then makes one call on the connection.
async fn call<T, F>(cli: &Cli, rpc: impl FnOnce(Admin) -> F) -> Result<T, client::Error>
where
    F: Future<Output = Result<T, client::Error>>,
{
    rpc(Admin::connect(&cli.socket, cli.timeout).await?).await
}

/// Connects to the local proxyd, then makes its calls on the connection.
async fn call_data_plane<T, F>(
    cli: &Cli,
    rpc: impl FnOnce(DataPlane) -> F,
) -> Result<T, client::Error>
where
    F: Future<Output = Result<T, client::Error>>,
{
    rpc(DataPlane::connect(&cli.data_plane_socket, cli.timeout).await?).await
}

/// `status` from both answers. A missing local proxyd is normal (the data planes may run
/// elsewhere); a missing controld is degraded when proxyd answers, and today's error (3 when not
/// running) when it does not either.
fn status(
    cli: &Cli,
    control: Result<(proto::v1::StatusReply, Option<proto::v1::CertificatesReply>), client::Error>,
    local: Result<proto::v1::DataPlaneStatusReply, client::Error>,
) -> Exit {
    let local = match local {
        Ok(reply) => Local::Answered(reply),
        Err(err) if err.is_not_running() => Local::Absent {
            socket: cli.data_plane_socket.clone(),
        },
        Err(err) => Local::Failed {
            reason: err.to_string(),
        },
    };
    let (control, certificates) = match control {
        Ok((reply, certificates)) => (Some(reply), certificates),
        Err(err) => {
            let Local::Answered(_) = local else {
                let exit = fail(&err, &cli.command);
                if let Local::Failed { reason } = &local {
                    output::error(reason);
                }
                return exit;
            };
            // The answer below says controld is down; stderr says why, also under --json.
            output::error(&err);
            (None, None)
        }
    };
    let report = Report {
        control,
        control_socket: cli.socket.clone(),
        local,
        certificates,
    };
    answer(
        cli,
        || {
            let mut status = json::Status::new(report.control.as_ref(), report.local_reply());
            status.certificate_warnings = report
                .certificates
                .as_ref()
                .map(certs::warnings)
                .unwrap_or_default();
            status
        },
        || report.render(),
        report.exit(),
    )
}

/// `check --remote FILE`: reads FILE here and has controld validate its text; the diagnostics
/// name FILE as given.
async fn check_remote(cli: &Cli, file: &Path) -> Exit {
    let config_text = match check::read(file) {
        Ok(text) => text,
        Err(err) => {
            output::error(&err);
            return Exit::Failed;
        }
    };
    let file_name = file.display().to_string();
    let request = ValidateRequest {
        config_text,
        file_name: file_name.clone(),
    };
    match call(
        cli,
        |mut admin| async move { admin.validate(request).await },
    )
    .await
    {
        Ok(reply) => answer(
            cli,
            || json::RemoteCheck::new(&reply, check::remote_is_valid(&reply)),
            || check::render_remote(&reply, &file_name),
            check::remote_exit(&reply),
        ),
        Err(err) => fail(&err, &cli.command),
    }
}

/// `shutdown [--wait]`: learns the node's name, starts the drain, and with `--wait` watches the
/// socket until proxyd has gone (at most `--timeout`).
async fn shutdown(cli: &Cli, wait: bool) -> Exit {
    // The connection closes when this returns, so that it does not hold up proxyd's shutdown.
    let drain = |mut dp: DataPlane| async move {
        let status = dp.status().await?;
        let drain = dp.drain().await?;
        Ok((status, drain))
    };
    let (status, drain) = match call_data_plane(cli, drain).await {
        Ok(answers) => answers,
        Err(err) => return fail(&err, &cli.command),
    };
    if !cli.json {
        // At once: the operator sees the drain start while --wait waits.
        output::text(&output::lines(&[shutdown::draining_line(&status, &drain)]));
    }
    let stopped = if wait {
        Some(shutdown::wait_until_stopped(&cli.data_plane_socket, cli.timeout).await)
    } else {
        None
    };
    let exit = if stopped == Some(false) {
        output::error(&format_args!(
            "proxyd at {} still accepts connections after {} (see --timeout)",
            cli.data_plane_socket.display(),
            humantime::format_duration(cli.timeout)
        ));
        Exit::Failed
    } else {
        Exit::Ok
    };
    if cli.json {
        return json_answer(&shutdown::to_json(&status, &drain, stopped), exit);
    }
    if stopped == Some(true) {
        output::text("stopped\n");
    }
    exit
}

/// Prints the answer as JSON or text and ends with `exit`, the answer's own verdict (unless the
/// JSON cannot be encoded, which our plain structs never are).
fn answer<J: serde::Serialize>(
    cli: &Cli,
    as_json: impl FnOnce() -> J,
    as_text: impl FnOnce() -> String,
    exit: Exit,
) -> Exit {
    if !cli.json {
        output::text(&as_text());
        return exit;
    }
    json_answer(&as_json(), exit)
}

/// Prints the answer as JSON and ends with `exit`, or with 1 if it cannot be encoded.
fn json_answer<J: serde::Serialize>(value: &J, exit: Exit) -> Exit {
    match output::json(value) {
        Ok(()) => exit,
        Err(err) => {
            output::error(&format_args!("cannot encode the answer as JSON: {err}"));
            Exit::Failed
        }
    }
}

/// Prints why a call failed and picks its exit code.
fn fail(err: &client::Error, command: &Command) -> Exit {
    output::error(err);
    error_exit(err, command)
}

/// A request a daemon refused (not allowed, unknown version, nothing to roll back to) is an
/// operation that failed (1), for every command: retrying will not help. DESIGN §8 gives "not
/// running" (3) its own code for the commands that ask whether something runs (`status`,
/// `health`, `shutdown`): for `reload` a missing daemon is as unreachable (69) as a broken one,
/// which is what `ExecReload=` expects.
fn error_exit(err: &client::Error, command: &Command) -> Exit {
    if err.is_refused() {
        return Exit::Failed;
    }
    match command {
        Command::Status | Command::Health | Command::Shutdown { .. } if err.is_not_running() => {
            Exit::NotRunning
        }
        _ => Exit::Unavailable,
    }
}

#[cfg(test)]
mod tests {
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
                assert_eq!(error_exit(&refused(code), command), Exit::Failed);
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

    #[test]
    fn rollback_takes_an_optional_positive_version() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.command);
        assert!(matches!(
            parse(&["proxyctl", "rollback", "5"]),
            Ok(Command::Rollback { version: Some(5) })
        ));
        assert!(matches!(
            parse(&["proxyctl", "rollback"]),
            Ok(Command::Rollback { version: None })
        ));
        assert!(parse(&["proxyctl", "rollback", "0"]).is_err());
        assert!(parse(&["proxyctl", "rollback", "latest"]).is_err());
        assert!(matches!(
            parse(&["proxyctl", "history", "--json"]),
            Ok(Command::History)
        ));
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "proxyctl",
            "reload",
            "--json",
            "--socket",
            "/tmp/s",
            "--timeout",
            "2s",
            "--dry-run",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket, Path::new("/tmp/s"));
        assert_eq!(cli.timeout, Duration::from_secs(2));
        assert!(matches!(
            cli.command,
            Command::Reload {
                dry_run: true,
                force: false,
                if_version: None,
            }
        ));
    }

    #[test]
    fn reload_takes_if_version() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.command);
        assert!(matches!(
            parse(&["proxyctl", "reload", "--if-version", "12"]),
            Ok(Command::Reload {
                if_version: Some(12),
                dry_run: false,
                force: false,
            })
        ));
        assert!(parse(&["proxyctl", "reload", "--if-version"]).is_err());
        assert!(parse(&["proxyctl", "reload", "--if-version", "twelve"]).is_err());
    }

    #[test]
    fn check_takes_a_file_and_config_show_is_a_subcommand() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).map(|cli| cli.command);
        let Ok(Command::Check { file, remote }) = parse(&["proxyctl", "check", "new.toml"]) else {
            panic!("check FILE");
        };
        assert_eq!((file.as_path(), remote), (Path::new("new.toml"), false));
        assert!(matches!(
            parse(&["proxyctl", "check", "--remote", "new.toml", "--json"]),
            Ok(Command::Check { remote: true, .. })
        ));
        assert!(parse(&["proxyctl", "check"]).is_err(), "FILE is required");
        assert!(matches!(
            parse(&["proxyctl", "config", "show", "--json"]),
            Ok(Command::Config {
                command: ConfigCommand::Show
            })
        ));
        assert!(
            parse(&["proxyctl", "config"]).is_err(),
            "config needs a subcommand"
        );
    }

    #[test]
    fn the_data_plane_socket_has_a_default_and_a_flag() {
        let cli = Cli::try_parse_from(["proxyctl", "health"]).unwrap();
        if std::env::var_os("PROXYCTL_DATA_PLANE_SOCKET").is_none() {
            assert_eq!(cli.data_plane_socket, Path::new("/run/proxyd/admin.sock"));
        }
        let cli = Cli::try_parse_from([
            "proxyctl",
            "shutdown",
            "--wait",
            "--data-plane-socket",
            "/tmp/dp.sock",
            "--timeout",
            "2m",
        ])
        .unwrap();
        assert_eq!(cli.data_plane_socket, Path::new("/tmp/dp.sock"));
        assert_eq!(cli.timeout, Duration::from_secs(120));
        assert!(matches!(cli.command, Command::Shutdown { wait: true }));
        assert!(matches!(
            Cli::try_parse_from(["proxyctl", "shutdown"]).map(|cli| cli.command),
            Ok(Command::Shutdown { wait: false })
        ));
    }

    #[test]
    fn timeout_must_be_a_positive_duration() {
        assert_eq!(parse_timeout("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("soon").is_err());
        assert!(Cli::try_parse_from(["proxyctl", "--timeout", "x", "status"]).is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
