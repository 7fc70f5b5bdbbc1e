//! proxyctl's command line (DESIGN §9): parse, call controld's Admin service or the local
//! proxyd's DataPlane service, print, exit.
//!
//! The operator's and deploy scripts' handle on controld, and on the proxyd of this host through
//! its own socket, which answers while controld is down: `status` asks both, `health` and
//! `shutdown` only proxyd, and `check` without `--remote` neither (it runs controld's own config
//! code here). Rendering lives in `reload` (also for `rollback`), `check`, `config`, `status`,
//! `history`, `health`, `shutdown` and `json`; this file only wires them to the clients and turns
//! outcomes into exit codes. The command line itself (flags, commands, help text) is in `cli`.

mod certs;
mod check;
mod cli;
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
mod upgrade;

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use proto::v1::{ReloadRequest, RollbackRequest, ValidateRequest};

use crate::cli::{Cli, Command, ConfigCommand};
use crate::client::{Admin, DataPlane};
use crate::exit::Exit;
use crate::reload::Operation;
use crate::status::{Local, Report};

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
            ref if_hash,
            ref canary,
            canary_wait,
            canary_max_5xx,
        } => {
            let (canary_nodes, canary_count) = match canary {
                Some(cli::Canary::Nodes(nodes)) => (nodes.clone(), 0),
                Some(cli::Canary::Count(n)) => (Vec::new(), *n),
                None => (Vec::new(), 0),
            };
            let request = ReloadRequest {
                dry_run,
                force,
                if_version,
                if_text_hash: if_hash.clone(),
                canary_nodes,
                canary_count,
                canary_wait_ms: canary_wait
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                canary_max_5xx_rise: canary_max_5xx,
            };
            // A staged rollout takes its window on top of the usual wait.
            let deadline = match canary {
                Some(_) => cli.timeout + canary_wait.unwrap_or(CANARY_WAIT),
                None => cli.timeout,
            };
            let reload = |mut admin: Admin| async move { admin.reload(request).await };
            let called = match Admin::connect(&cli.socket, deadline).await {
                Ok(admin) => reload(admin).await,
                Err(e) => Err(e),
            };
            match called {
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
        Command::Upgrade { ref binary } => upgrade(cli, binary.as_deref()).await,
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
/// A staged rollout's window when `--canary-wait` names none (controld's default).
const CANARY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

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

/// `upgrade [--binary PATH]`: asks the running proxyd who it is, starts the successor, and
/// waits until the admin socket answers from it, ready.
async fn upgrade(cli: &Cli, binary: Option<&Path>) -> Exit {
    let old = match call_data_plane(cli, |mut dp| async move { dp.status().await }).await {
        Ok(status) => status,
        Err(err) => return fail(&err, &cli.command),
    };
    let upgraded =
        match upgrade::through_master(&cli.data_plane_socket, cli.timeout, binary, &old).await {
            Ok(Some(upgraded)) => Ok(upgraded),
            Ok(None) => upgrade::upgrade(&cli.data_plane_socket, cli.timeout, binary, &old).await,
            Err(e) => Err(e),
        };
    match upgraded {
        Ok(upgraded) => answer(
            cli,
            || &upgraded,
            || format!("{}\n", upgrade::line(&upgraded)),
            Exit::Ok,
        ),
        Err(err) => {
            output::error(&err);
            Exit::Failed
        }
    }
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
    if err.is_conflict() && matches!(command, Command::Reload { .. }) {
        return Exit::Conflict;
    }
    if err.is_refused() {
        return Exit::Failed;
    }
    match command {
        Command::Status | Command::Health | Command::Shutdown { .. } | Command::Upgrade { .. }
            if err.is_not_running() =>
        {
            Exit::NotRunning
        }
        _ => Exit::Unavailable,
    }
}

#[cfg(test)]
mod tests;
