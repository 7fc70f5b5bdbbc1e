//! proxyctl's command line (DESIGN §9): parse, call controld's Admin service, print, exit.
//!
//! The operator's and deploy scripts' handle on controld. Rendering lives in `reload` (also for
//! `rollback`), `status`, `history` and `json`; this file only wires them to the client and turns
//! outcomes into exit codes.

mod client;
mod exit;
#[cfg(test)]
mod fixtures;
mod history;
mod json;
mod output;
mod reload;
mod status;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use proto::v1::{ReloadRequest, RollbackRequest};

use crate::client::Admin;
use crate::exit::Exit;
use crate::reload::Operation;

/// Reload, roll back and inspect the reverse proxy through controld's control socket.
///
/// Exit codes: 0 ok; 1 operation failed (reload or rollback rejected or not applied by every data
/// plane, refused by controld: not allowed, unknown version, nothing to roll back to; status
/// degraded); 2 usage; 3 controld not running (status); 69 controld unreachable or no answer.
#[derive(Debug, Parser)]
#[command(
    name = "proxyctl",
    version = proto::BUILD_VERSION,
    after_help = "Examples:
  proxyctl status                          controld and every data plane, one table
  proxyctl reload --dry-run                what the file on disk would change
  proxyctl reload                          publish it; returns once every data plane applied it
  proxyctl --json reload | jq .version     the same, for scripts
  proxyctl history                         the versions published recently
  proxyctl rollback 12                     publish version 12's config again, as a new version
  proxyctl completions bash > /etc/bash_completion.d/proxyctl

Exit codes:
  0   ok
  1   operation failed: rejected, refused by a data plane or by controld; status degraded
  2   usage error
  3   controld not running (status)
  69  controld unreachable, or no answer within --timeout

The socket: --socket PATH, or PROXYCTL_SOCKET (default /run/controld/control.sock)."
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

    /// Print the answer as one JSON object on stdout (errors stay text on stderr).
    #[arg(long, global = true)]
    json: bool,

    /// Deadline for the whole call, e.g. "30s", "2m"; connecting waits at most 5s of it.
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
    },
    /// Show controld and every connected data plane; exits 1 when none is connected or one lags.
    Status,
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
        Command::Reload { dry_run, force } => {
            let request = ReloadRequest { dry_run, force };
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
        Command::Status => match call(cli, |mut admin| async move { admin.status().await }).await {
            Ok(reply) => answer(
                cli,
                || json::Status::from(&reply),
                || status::render(&reply),
                status::exit(&reply),
            ),
            Err(err) => fail(&err, &cli.command),
        },
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

/// Connects, then makes one call on the connection.
async fn call<T, F>(cli: &Cli, rpc: impl FnOnce(Admin) -> F) -> Result<T, client::Error>
where
    F: Future<Output = Result<T, client::Error>>,
{
    rpc(Admin::connect(&cli.socket, cli.timeout).await?).await
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
    match output::json(&as_json()) {
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

/// A request controld refused (not allowed, unknown version, nothing to roll back to) is an
/// operation that failed (1), for every command: retrying will not help. DESIGN §8 gives "not
/// running" (3) its own code for `status` only: for `reload` a missing daemon is as unreachable
/// (69) as a broken one, which is what `ExecReload=` expects.
fn error_exit(err: &client::Error, command: &Command) -> Exit {
    if err.is_refused() {
        return Exit::Failed;
    }
    match command {
        Command::Status if err.is_not_running() => Exit::NotRunning,
        _ => Exit::Unavailable,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn connect_error(not_running: bool) -> client::Error {
        client::Error::Connect {
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
        };
        assert_eq!(error_exit(&missing, &reload), Exit::Unavailable);
        let broken = connect_error(false);
        assert_eq!(error_exit(&broken, &Command::Status), Exit::Unavailable);
        let timeout = client::Error::Timeout {
            socket: Path::new("/s").to_owned(),
            call: "status",
            timeout: Duration::from_secs(1),
        };
        assert_eq!(error_exit(&timeout, &Command::Status), Exit::Unavailable);
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
            },
            Command::Rollback { version: Some(9) },
            Command::Rollback { version: None },
            Command::Status,
            Command::History,
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
                force: false
            }
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
