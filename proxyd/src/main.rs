//! The proxyd binary: command line, logging, signals. The data plane itself is the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{EnvFilter, reload};

/// mimalloc rather than glibc's malloc: it keeps allocations of one size together and gives
/// pages whose blocks are all free back to the kernel, so the buffers an idle connection gives
/// back leave the resident set (glibc's heap mixes sizes and keeps them). docs/benchmarks.md
/// measures what it buys.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "proxyd",
    version,
    about = "The proxy's data plane: applies snapshots from controld and proxies traffic",
    after_help = "Examples:
  proxyd --control-socket /run/controld/control.sock --state-dir /var/lib/proxyd

Signals: SIGTERM drains (up to proxy.shutdown_timeout), SIGINT stops at once, SIGHUP is ignored
(with --master: SIGTERM and SIGINT go to the workers, SIGHUP upgrades).
Exit codes: 0 stopped; 1 a hand-over was received but could not be served (--takeover), or a
master's worker died; 2 usage error."
)]
struct Cli {
    /// controld's Unix socket.
    #[arg(long, default_value = "/run/controld/control.sock")]
    control_socket: PathBuf,
    /// Where proxyd saves the last applied snapshot, and serves it from when it starts while
    /// controld is unreachable (0700; the file is 0600).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// proxyd's own admin socket (status, drain), for proxyctl status/health/shutdown while
    /// controld is down. Empty: none.
    #[arg(long, default_value = "/run/proxyd/admin.sock")]
    admin_socket: String,
    /// This data plane's name in controld's status (default: <hostname>-<pid>).
    #[arg(long)]
    node_id: Option<String>,
    /// Log line format until and after the first snapshot.
    #[arg(long, default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
    /// Threads that serve traffic (like nginx's worker_processes). Default: one per CPU this
    /// process may run on (its affinity mask, so `taskset` and systemd's CPUAffinity count).
    /// With one, proxyd serves on its main thread alone (tokio's current-thread scheduler).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
    /// Take over from the proxyd running on --admin-socket: its listening sockets (no
    /// connection is refused meanwhile) and the snapshot it serves; it drains once this one
    /// serves. If that fails, bind as usual. `proxyctl upgrade` starts proxyd this way.
    #[arg(long)]
    takeover: bool,
    /// Run as a master process that keeps its PID (what systemd supervises) and serves
    /// through a worker child: `proxyctl upgrade` (or SIGHUP) starts a new worker from the
    /// binary now at this path, which takes over. The master itself runs on.
    /// Needs --admin-socket (`master.sock` is beside it).
    #[arg(long)]
    master: bool,
    /// Set by the master on the workers it starts: a failed take-over stops the worker
    /// instead of binding the listeners itself.
    #[arg(long, hide = true)]
    worker: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_level_hook = init_logging(&cli.log_format);
    if cli.master {
        return master(&cli);
    }
    // A master's worker stops (drains) when its master dies: outside systemd nobody else would
    // end it, and under systemd the unit restarts anyway. The master forks from its one
    // thread, so this fires on the master's death, not a thread's.
    if cli.worker
        && let Err(e) =
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
    {
        eprintln!("proxyd: cannot follow the master's death: {e}");
    }
    // Before any thread starts: it edits the environment.
    let activation = proxyd::Activation::from_env();
    let threads = cli.worker_threads.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    // One runtime per thread, tokio's current-thread scheduler: the main thread's, and one on
    // each other serving thread (`shards.rs`).
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
    let shards = match proxyd::Shards::start(threads.saturating_sub(1)) {
        Ok(shards) => shards,
        Err(e) => {
            eprintln!("proxyd: cannot start the serving threads: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut options = proxyd::Options::new(
        cli.control_socket,
        cli.node_id.unwrap_or_else(proxyd::default_node_id),
    );
    options.log_level_hook = Some(log_level_hook);
    options.state_dir = cli.state_dir;
    options.admin_socket = (!cli.admin_socket.is_empty()).then(|| PathBuf::from(cli.admin_socket));
    options.takeover = cli.takeover;
    options.worker = cli.worker;
    options.activation = activation;
    options.shards = shards.handles();
    let failed = options.failed.clone();
    let handed_over = options.handed_over.clone();
    let fast_stop = options.fast_stop.clone();
    let signalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone(), fast_stop, signalled.clone()));
        tokio::spawn(proxyd::memory::give_back_freed_pages());
        proxyd::run(options, shutdown).await;
    });
    // Drained: what is left on the serving threads is dropped with them.
    drop(runtime);
    shards.stop();
    if failed.load(std::sync::atomic::Ordering::Relaxed) {
        return ExitCode::FAILURE;
    }
    // A master's worker says so in its status: to the master, a serving worker that exits 0
    // was asked to stop the service.
    if cli.worker && handed_over.load(std::sync::atomic::Ordering::Relaxed) {
        return ExitCode::from(proxyd::master::EXIT_HANDED_OVER);
    }
    // So is a signal that reached the worker itself rather than through the master: `kill` of
    // the worker must not stop the unit as if an operator had.
    if cli.worker && signalled.load(std::sync::atomic::Ordering::Relaxed) {
        return ExitCode::from(proxyd::master::EXIT_SIGNALLED);
    }
    ExitCode::SUCCESS
}

/// `--master`: the worker runs this binary with the same arguments but `--master`.
fn master(cli: &Cli) -> ExitCode {
    if cli.admin_socket.is_empty() {
        eprintln!("proxyd: --master needs --admin-socket (master.sock is made beside it)");
        return ExitCode::from(2);
    }
    let mut argv = std::env::args_os();
    let argv0 = argv.next().unwrap_or_default();
    let mut worker_args: Vec<std::ffi::OsString> = argv
        .filter(|a| a != "--master" && a != "--takeover" && a != "--worker")
        .collect();
    worker_args.push("--worker".into());
    proxyd::master::run(proxyd::master::MasterOptions {
        binary: binary_path(&argv0),
        worker_args,
        admin_socket: PathBuf::from(&cli.admin_socket),
    })
}

/// The path this binary was started from (not /proc/self/exe, which follows the old file once
/// an upgrade replaced it): an upgrade runs whatever is at that path then.
fn binary_path(argv0: &std::ffi::OsStr) -> PathBuf {
    let path = PathBuf::from(argv0);
    if path.components().count() > 1 {
        return std::path::absolute(&path).unwrap_or(path);
    }
    // A bare name was found on PATH.
    std::env::var_os("PATH")
        .and_then(|dirs| {
            std::env::split_paths(&dirs)
                .map(|d| d.join(&path))
                .find(|p| p.is_file())
        })
        .unwrap_or(path)
}

/// SIGTERM and SIGINT: stop accepting, drain, exit.
/// SIGTERM drains; SIGINT stops fast (in-flight requests are cut); SIGHUP is ignored.
///
/// The handlers are installed when this is called, before proxyd can tell anyone it is ready.
fn signals(
    shutdown: CancellationToken,
    fast_stop: CancellationToken,
    signalled: Arc<std::sync::atomic::AtomicBool>,
) -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    );
    async move {
        watch_signals(handlers, shutdown, fast_stop).await;
        signalled.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

type Handlers = (
    std::io::Result<tokio::signal::unix::Signal>,
    std::io::Result<tokio::signal::unix::Signal>,
    std::io::Result<tokio::signal::unix::Signal>,
);

async fn watch_signals(
    handlers: Handlers,
    shutdown: CancellationToken,
    fast_stop: CancellationToken,
) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = handlers else {
        tracing::error!("cannot install signal handlers; stopping");
        shutdown.cancel();
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); break }
            _ = int.recv() => {
                tracing::info!("SIGINT: fast stop");
                fast_stop.cancel();
                break
            }
            // SIGHUP's default action would kill proxyd without draining.
            _ = hup.recv() => tracing::warn!(
                "SIGHUP ignored: proxyd takes its config from controld; reload with `proxyctl reload`"
            ),
        }
    }
    shutdown.cancel();
}

fn init_logging(format: &str) -> proxyd::LogLevelHook {
    use tracing_subscriber::prelude::*;
    let (filter, handle) = reload::Layer::new(EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    if format == "text" {
        registry.with(fmt).init();
    } else {
        registry.with(fmt.json()).init();
    }
    Arc::new(move |level: &str| {
        if let Ok(f) = EnvFilter::try_new(level) {
            let _ = handle.reload(f);
        }
    })
}
