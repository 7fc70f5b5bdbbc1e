//! The controld binary: command line, logging, signals. The daemon itself is the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use controld::config::LogFormat;
use controld::{Controld, Options, ReloadOptions};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, reload};

/// Exit code when the daemon refuses to start on a bad config (EX_CONFIG).
const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "controld",
    version,
    about = "The proxy's control plane: owns the config file and streams validated, versioned \
             snapshots to the data planes (proxyd)",
    after_help = "Examples:
  controld check --config /etc/proxyd/proxy.toml    validate; every problem with file:line:col
  controld --config /etc/proxyd/proxy.toml          run (SIGHUP reloads, SIGTERM stops)

Exit codes:
  0   stopped cleanly; check: the file is valid
  1   check: the file is invalid; run: another failure (state directory, socket in use)
  2   usage error
  78  refused to start: the config file is invalid (systemd: RestartPreventExitStatus=78)"
)]
struct Cli {
    /// The config file controld owns.
    #[arg(long, global = true, default_value = "/etc/proxyd/proxy.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config file: one line on success, every problem on failure (exit 1).
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Check) => check(&cli.config),
        None => serve(cli.config),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match controld::snapshot::load_checked(path).map(|(c, _)| c) {
        Ok(c) => {
            for w in c.certificate_warnings(std::time::SystemTime::now()) {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok ({} sites, {} listeners)",
                path.display(),
                c.dynamic.sites.len(),
                c.statics.proxy.listeners.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            for d in e.diagnostics(path) {
                eprintln!("{d}");
            }
            ExitCode::from(1)
        }
    }
}

fn serve(config_path: PathBuf) -> ExitCode {
    let loaded = match controld::snapshot::load_checked(&config_path) {
        Ok(loaded) => Ok(loaded),
        // A host of a fleet whose file's fleet part went stale starts from what it applied.
        Err(e) => match controld::cluster::start_from_kept(&config_path) {
            Some((config, text, version)) => {
                eprintln!(
                    "controld: {} does not check; starting from fleet version {version}, which \
                     this host applied last, with the file's host tables (`controld check` \
                     shows the problems)",
                    config_path.display()
                );
                Ok((config, text))
            }
            None => Err(e),
        },
    };
    let (config, text) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            let diagnostics = e.diagnostics(&config_path);
            for d in &diagnostics {
                eprintln!("{d}");
            }
            eprintln!("controld: refusing to start with an invalid config");
            // `systemctl status` shows it beside the journal's lines.
            let first = diagnostics
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            let status = format!(
                "refused to start: {} problem(s) in {}; first: {first}",
                diagnostics.len(),
                config_path.display()
            );
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&status)]);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let log_level_hook = init_logging(config.statics.log_format, &config.dynamic.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("controld: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = Options {
        log_level_hook: Some(log_level_hook),
        ..Options::new(config_path)
    };
    match runtime.block_on(run(options, config, text)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "controld stopped");
            eprintln!("controld: {e}");
            if e.is_config() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn run(
    options: Options,
    config: controld::Config,
    text: String,
) -> Result<(), controld::Error> {
    let controld = Controld::start(&options, config, &text)?;
    let socket = controld::socket::bind(&controld.socket_path())?;
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(controld.reloader(), shutdown.clone()));
    controld.serve(socket, shutdown).await
}

/// SIGHUP reloads; SIGTERM and SIGINT stop controld (data planes keep serving).
///
/// The handlers are installed when this is called, not when the future first runs: a signal sent
/// right after READY=1 must not meet the default action (SIGHUP's would kill controld).
fn signals(
    reloader: Arc<controld::Reloader>,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move { watch_signals(handlers, reloader, shutdown).await }
}

type Handlers = (
    std::io::Result<tokio::signal::unix::Signal>,
    std::io::Result<tokio::signal::unix::Signal>,
    std::io::Result<tokio::signal::unix::Signal>,
);

async fn watch_signals(
    handlers: Handlers,
    reloader: Arc<controld::Reloader>,
    shutdown: CancellationToken,
) {
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) = handlers else {
        tracing::error!("cannot install signal handlers; stopping");
        shutdown.cancel();
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading");
                // In its own task, so that SIGTERM is not held up by a reload waiting for ACKs.
                let reloader = reloader.clone();
                tokio::spawn(async move {
                    let origin = controld::reloader::Origin { source: "sighup".to_owned(), uid: None, pid: None };
                let report = reloader.reload(ReloadOptions { origin, ..ReloadOptions::default() }).await;
                    tracing::info!(outcome = ?report.outcome, version = report.version, "SIGHUP reload done");
                });
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    tracing::info!("stopping");
    shutdown.cancel();
}

/// Installs the global subscriber; the returned hook changes the level live.
fn init_logging(format: LogFormat, level: &str) -> controld::LogLevelHook {
    use tracing_subscriber::prelude::*;
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry.with(fmt.json()).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
    Arc::new(move |level: &str| match EnvFilter::try_new(level) {
        Ok(f) => {
            if handle.reload(f).is_ok() {
                tracing::info!(level, "log level changed");
            }
        }
        Err(e) => tracing::warn!(level, error = %e, "ignoring an invalid log level"),
    })
}
