//! proxyd, the data plane: subscribes to controld, applies whole snapshots atomically and
//! proxies HTTP traffic to upstreams. It keeps serving its last good snapshot when controld is
//! gone.

mod activation;
mod admin;
mod control;
pub mod convert;
mod dataplane;
mod gate;
mod http;
mod limits;
mod listeners;
mod local;
pub mod master;
pub mod memory;
mod metrics;
mod notify;
mod runtime;
mod saved;
mod server;
mod shards;
mod stripes;
mod takeover;
mod tls;
mod upstreams;

/// What `bench/contention` measures on the request path, exported for it alone.
#[doc(hidden)]
pub mod contention {
    pub use crate::limits::{LimiterStore, Scope, SiteLimiter};
    pub use crate::metrics::{Latency, StripedCounter, StripedGauge};
    pub use crate::stripes::Striped;
}

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use activation::Activation;
pub use control::{Identity, backoff};
pub use dataplane::LogLevelHook;
pub use shards::Shards;

/// How often idle clients are dropped from the rate limiters.
const LIMITER_EVICTION_INTERVAL: Duration = Duration::from_secs(60);

/// How proxyd runs.
#[derive(Clone)]
pub struct Options {
    /// controld's Unix socket.
    pub control_socket: PathBuf,
    pub identity: Identity,
    /// Applies `logging.level` from each snapshot.
    pub log_level_hook: Option<LogLevelHook>,
    /// Where the last applied snapshot is saved, to serve it at the next start if controld is
    /// unreachable then. `None`: nothing is saved.
    pub state_dir: Option<PathBuf>,
    /// Cancel it together with `shutdown` for a fast stop: in-flight requests are not waited for.
    pub fast_stop: CancellationToken,
    /// proxyd's own admin socket (Status, Drain, Handover); `None`: none.
    pub admin_socket: Option<PathBuf>,
    /// Take over the listening sockets and snapshot of the proxyd serving `admin_socket`
    /// ([`handover`]); if that fails, bind as usual (unless `worker`).
    pub takeover: bool,
    /// Runs as the worker of a [`master`] process: a take-over that fails stops this process
    /// (the master reports the failed upgrade; the old worker serves on) instead of binding.
    pub worker: bool,
    /// Set when a hand-over was received but its snapshot could not be served: this process
    /// stops, the predecessor serves on.
    pub failed: Arc<std::sync::atomic::AtomicBool>,
    /// Set when this process stopped because a successor took over from it.
    pub handed_over: Arc<std::sync::atomic::AtomicBool>,
    /// The sockets systemd passed ([`Activation::from_env`]); listeners take them instead of
    /// binding.
    pub activation: Activation,
    /// The runtimes of the serving threads besides the one `run` runs on ([`Shards`]): each
    /// accepts on every listener too.
    pub shards: Vec<tokio::runtime::Handle>,
}

impl Options {
    pub fn new(control_socket: impl Into<PathBuf>, node_id: impl Into<String>) -> Options {
        Options {
            control_socket: control_socket.into(),
            identity: Identity {
                node_id: node_id.into(),
                pid: std::process::id(),
            },
            log_level_hook: None,
            state_dir: None,
            fast_stop: CancellationToken::new(),
            admin_socket: None,
            takeover: false,
            worker: false,
            failed: Arc::default(),
            handed_over: Arc::default(),
            activation: Activation::default(),
            shards: Vec::new(),
        }
    }
}

/// Runs the data plane until `shutdown`, then stops accepting, drains in-flight requests up to
/// the snapshot's `shutdown_timeout` and returns.
pub async fn run(mut options: Options, shutdown: CancellationToken) {
    // A successor's first step (crate::takeover says them all).
    let Ok(inherited) = takeover::inherit(&mut options).await else {
        return;
    };
    let plane = Arc::new(dataplane::DataPlane::new(
        shutdown.clone(),
        options.fast_stop.clone(),
        options.log_level_hook.clone(),
        std::mem::take(&mut options.activation),
        std::mem::take(&mut options.shards),
    ));
    let eviction = tokio::spawn(
        plane
            .limiters()
            .evict_until(LIMITER_EVICTION_INTERVAL, shutdown.clone()),
    );
    let saved = options.state_dir.as_deref().and_then(|dir| match saved::SavedSnapshot::open(dir) {
        Ok(saved) => Some(saved),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot use the state directory; snapshots are not saved");
            None
        }
    });
    // The admin socket serves before controld is tried (status and drain must work while it
    // is down), but a successor's only once it serves what it was handed: until then the
    // predecessor answers on it alone, and a successor that fails never touches it (issue 19
    // #11).
    let start_admin = |inherited: Option<std::os::unix::net::UnixListener>| {
        options.admin_socket.as_deref().and_then(|path| {
            local::start(
                path,
                plane.clone(),
                options.identity.clone(),
                shutdown.clone(),
                inherited,
            )
            .inspect_err(|e| tracing::error!(socket = %path.display(), error = %e, "cannot bind the admin socket"))
            .ok()
        })
    };
    let admin = match inherited {
        Some(inherited) => {
            takeover::serve_inherited(&plane, inherited, &options, &shutdown, start_admin).await
        }
        None => {
            let admin = start_admin(None);
            if let Some(saved) = &saved {
                control::apply_saved(&plane, saved).await;
            }
            admin
        }
    };
    // A successor that could not serve what it was handed stops here: it must not reach
    // controld, nor say anything to systemd (it never was the main process).
    let failed = options.failed.load(std::sync::atomic::Ordering::Relaxed);
    if !failed {
        control::run(
            options.control_socket,
            options.identity,
            plane.clone(),
            saved,
            shutdown.clone(),
        )
        .await;
        notify::stopping();
    }
    plane.drained().await;
    if plane.is_handed_over() {
        options
            .handed_over
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    let _ = eviction.await;
    tracing::info!("proxyd stopped");
}

/// The default node id: `<hostname>-<pid>`.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host = host.trim();
    format!(
        "{}-{}",
        if host.is_empty() { "proxyd" } else { host },
        std::process::id()
    )
}
