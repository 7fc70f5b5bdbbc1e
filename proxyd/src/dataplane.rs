//! Applying snapshots: check, compile off the request path, swap in whole. Every snapshot also
//! brings the listeners, the admin listener and the per-connection settings in step with it:
//! what it adds is bound before anything changes (a bind failure refuses it whole), and new
//! settings apply to the connections accepted after it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activation::Activation;
use crate::admin::AdminState;
use crate::convert::{ADMIN_LISTENER_NAME, SiteSpec, Spec, StaticSpec};
use crate::http::Proxy;
use crate::limits::LimiterStore;
pub use crate::listeners::{Bound, ListenerError};
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::upstreams::UpstreamStore;

/// How long proxyd waits for an upstream host name to resolve when it checks a snapshot.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Applies `logging.level` (the binary's tracing subscriber).
pub type LogLevelHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Why a snapshot was not applied; the text goes back in the NACK.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("upstream {upstream}: host {host:?} does not resolve: {reason}")]
    Unresolvable {
        upstream: String,
        host: String,
        reason: String,
    },
    #[error("upstream host names did not resolve within {timeout:?}")]
    ResolveTimeout { timeout: Duration },
    #[error(transparent)]
    Listeners(#[from] ListenerError),
}

/// The data plane's state across snapshots.
pub struct DataPlane {
    runtime: Arc<ArcSwap<Runtime>>,
    /// The ACME challenges controld sent apart from snapshots, answered by every runtime.
    challenges: Arc<ArcSwap<crate::convert::Challenges>>,
    limiters: Arc<LimiterStore>,
    /// Health, ejections and load of every upstream, across snapshots.
    upstreams: UpstreamStore,
    /// Outlives every runtime, so counters survive reloads.
    metrics: Arc<Metrics>,
    /// Set once a snapshot is applied and its listeners serve: `/readyz`.
    ready: Arc<AtomicBool>,
    /// The admin HTTP listener (`proxy.admin_address`) serving now.
    admin: Mutex<Option<AdminListener>>,
    /// The `[[proxy.listeners]]` serving now, in step with every snapshot.
    listeners: crate::listeners::Listeners,
    /// What the accept loops share, from the first snapshot on.
    serving: Mutex<Option<Arc<crate::listeners::Serving>>>,
    servers: TaskTracker,
    /// WebSocket and other upgrade tunnels: a drain waits for them up to its deadline.
    tunnels: TaskTracker,
    shutdown: CancellationToken,
    /// Cancelled for a fast stop: drains end at once.
    abort: CancellationToken,
    log_level_hook: Option<LogLevelHook>,
    /// The Subscribe stream to controld is up.
    control_connected: AtomicBool,
    /// Serving a snapshot saved by an earlier run that controld has not confirmed yet.
    from_saved: AtomicBool,
    started_at: std::time::SystemTime,
    /// What a hand-over to a successor needs, and what one from a predecessor brought.
    handover: Mutex<HandoverState>,
    /// The sockets systemd passed (socket activation), for every snapshot.
    activation: Activation,
    /// The serving threads' runtimes besides this one's ([`crate::Shards`]).
    shards: Vec<tokio::runtime::Handle>,
}

/// Sockets and snapshot for a hand-over ([`crate::takeover`]).
#[derive(Default)]
struct HandoverState {
    /// A duplicate of the admin listeners (kind, name, configured address), to hand over; the
    /// `[[proxy.listeners]]` are in [`crate::listeners::Listeners`].
    sockets: Vec<(
        proto::v1::HandedSocketKind,
        String,
        String,
        std::os::fd::OwnedFd,
    )>,
    /// The snapshot serving now, as received.
    snapshot: Option<proto::v1::Snapshot>,
    /// Listeners a predecessor handed over, used by the first snapshot instead of binding.
    listeners: Vec<(String, SocketAddr, std::net::TcpListener)>,
    admin_http: Option<(SocketAddr, std::net::TcpListener)>,
    /// Handed over to a successor: the admin socket file is its now.
    handed_over: bool,
    /// This process took over from a predecessor and serves: the admin socket file it adopted
    /// is its own now (a successor that failed leaves it to the predecessor).
    took_over: bool,
    /// A hand-over to a successor is under way: a second one is refused until it ends.
    handing_over: bool,
}

/// The admin HTTP listener serving now.
struct AdminListener {
    /// As configured (port 0 stays 0 here).
    address: SocketAddr,
    local: SocketAddr,
    /// Cancelled to stop accepting on it.
    stop: CancellationToken,
    /// A duplicate of the socket, to hand over.
    socket: std::net::TcpListener,
}

/// What a snapshot changes in the admin listener.
enum AdminChange {
    Keep,
    Stop,
    /// Bound on the new address (or handed over), not serving yet.
    Start {
        address: SocketAddr,
        local: SocketAddr,
        listener: tokio::net::TcpListener,
        socket: std::net::TcpListener,
    },
}

/// A socket to hand over: what it is and a duplicate of its descriptor.
pub type HandedSocket = (
    proto::v1::HandedSocketKind,
    String,
    String,
    std::os::fd::OwnedFd,
);

/// What this data plane serves now, for its own admin socket.
#[derive(Debug, Clone)]
pub struct Report {
    pub version: u64,
    pub hash: String,
    pub control_connected: bool,
    pub from_saved: bool,
    pub listeners: Vec<Bound>,
    /// (URL, gets traffic, outstanding requests)
    pub upstreams: Vec<crate::upstreams::Listed>,
    pub ready: bool,
    pub draining: bool,
    pub open_connections: u64,
    pub started_at: std::time::SystemTime,
    /// The drain deadline in force.
    pub drain_timeout: Option<Duration>,
}

impl DataPlane {
    pub fn new(
        shutdown: CancellationToken,
        abort: CancellationToken,
        log_level_hook: Option<LogLevelHook>,
        activation: Activation,
        shards: Vec<tokio::runtime::Handle>,
    ) -> DataPlane {
        let challenges = Arc::<ArcSwap<crate::convert::Challenges>>::default();
        let runtime = Arc::new(ArcSwap::from_pointee(
            Runtime::empty().with_delivered(challenges.clone()),
        ));
        let metrics = Arc::new(Metrics::new());
        DataPlane {
            runtime,
            challenges,
            limiters: Arc::default(),
            upstreams: UpstreamStore::new(metrics.clone(), shutdown.clone()),
            metrics,
            ready: Arc::default(),
            admin: Mutex::new(None),
            listeners: Default::default(),
            serving: Mutex::new(None),
            servers: TaskTracker::new(),
            tunnels: TaskTracker::new(),
            shutdown,
            abort,
            log_level_hook,
            control_connected: AtomicBool::new(false),
            from_saved: AtomicBool::new(false),
            started_at: std::time::SystemTime::now(),
            handover: Mutex::default(),
            activation,
            shards,
        }
    }

    /// Answers `challenges` from now on, instead of the ones before: whichever snapshot serves.
    pub fn set_challenges(&self, challenges: crate::convert::Challenges) {
        self.challenges.store(Arc::new(challenges));
    }

    pub fn limiters(&self) -> Arc<LimiterStore> {
        self.limiters.clone()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn set_control_connected(&self, connected: bool) {
        self.control_connected.store(connected, Ordering::Relaxed);
        self.metrics.control_plane(connected);
    }

    pub fn set_from_saved(&self, saved: bool) {
        self.from_saved.store(saved, Ordering::Relaxed);
    }

    /// What this data plane serves now.
    pub fn report(&self) -> Report {
        let runtime = self.runtime.load();
        Report {
            version: runtime.version,
            hash: runtime.hash.clone(),
            control_connected: self.control_connected.load(Ordering::Relaxed),
            from_saved: self.from_saved.load(Ordering::Relaxed),
            listeners: self.all_bound(),
            upstreams: self.upstreams.list(),
            ready: self.ready.load(Ordering::Relaxed),
            draining: self.shutdown.is_cancelled(),
            open_connections: self.metrics.open_connections(),
            started_at: self.started_at,
            drain_timeout: self.drain_timeout(),
        }
    }

    /// Starts the drain, as SIGTERM does.
    pub fn drain(&self) {
        self.shutdown.cancel();
    }

    /// The version serving now; 0 before the first snapshot.
    pub fn version(&self) -> u64 {
        self.runtime.load().version
    }

    fn handover(&self) -> MutexGuard<'_, HandoverState> {
        self.handover.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Listeners a predecessor handed over: the first snapshot serves them instead of binding
    /// (each matched by name and configured address; the others are bound as usual).
    pub fn inherit(
        &self,
        listeners: Vec<(String, SocketAddr, std::net::TcpListener)>,
        admin_http: Option<(SocketAddr, std::net::TcpListener)>,
    ) {
        for (_, _, socket) in &listeners {
            crate::listeners::raise_backlog(socket);
        }
        let mut handover = self.handover();
        handover.listeners = listeners;
        handover.admin_http = admin_http;
    }

    /// Keeps a duplicate of a listening socket, to hand over to a successor.
    pub fn keep_for_handover(
        &self,
        kind: proto::v1::HandedSocketKind,
        name: &str,
        address: String,
        fd: std::os::fd::BorrowedFd<'_>,
    ) {
        match fd.try_clone_to_owned() {
            Ok(fd) => self
                .handover()
                .sockets
                .push((kind, name.to_owned(), address, fd)),
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "cannot keep a listener for hand-over")
            }
        }
    }

    /// Remembers the snapshot serving now, as received, for a successor.
    pub fn remember(&self, snapshot: proto::v1::Snapshot) {
        self.handover().snapshot = Some(snapshot);
    }

    /// What to hand a successor: duplicates of every listening socket, and the snapshot.
    pub fn handover_parts(
        &self,
    ) -> std::io::Result<(Vec<HandedSocket>, Option<proto::v1::Snapshot>)> {
        let mut sockets: Vec<HandedSocket> = self
            .listeners
            .duplicates()?
            .into_iter()
            .map(|(name, address, fd)| (proto::v1::HandedSocketKind::Listener, name, address, fd))
            .collect();
        if let Some(admin) = self.admin().as_ref() {
            sockets.push((
                proto::v1::HandedSocketKind::AdminHttp,
                ADMIN_LISTENER_NAME.to_owned(),
                admin.address.to_string(),
                admin.socket.try_clone()?.into(),
            ));
        }
        let handover = self.handover();
        for (kind, name, address, fd) in &handover.sockets {
            sockets.push((*kind, name.clone(), address.clone(), fd.try_clone()?));
        }
        Ok((sockets, handover.snapshot.clone()))
    }

    /// A successor serves now: this process drains, and leaves the admin socket file to it.
    pub fn handed_over(&self) {
        self.handover().handed_over = true;
        tracing::info!("a successor serves now: draining");
        self.drain();
    }

    pub fn is_handed_over(&self) -> bool {
        self.handover().handed_over
    }

    /// Starts a hand-over, unless one is under way: two successors must never both receive
    /// the sockets (both would accept on them).
    pub fn begin_handover(&self) -> bool {
        let mut state = self.handover();
        !std::mem::replace(&mut state.handing_over, true)
    }

    /// The hand-over ended without a successor serving: another may be tried.
    pub fn end_handover(&self) {
        self.handover().handing_over = false;
    }

    /// This process took over from its predecessor and serves what it was handed.
    pub fn took_over(&self) {
        self.handover().took_over = true;
    }

    /// Whether the admin socket file, if adopted from a predecessor, is this process's own.
    pub fn owns_adopted_socket(&self) -> bool {
        self.handover().took_over
    }

    fn admin(&self) -> MutexGuard<'_, Option<AdminListener>> {
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn serving(&self) -> Option<Arc<crate::listeners::Serving>> {
        self.serving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The drain deadline in force; `None` before the first snapshot.
    fn drain_timeout(&self) -> Option<Duration> {
        self.serving()
            .map(|serving| serving.settings.load().shutdown_timeout)
    }

    /// Every listener serving now, then the admin listener.
    fn all_bound(&self) -> Vec<Bound> {
        let mut all = self.listeners.bound();
        if let Some(admin) = self.admin().as_ref() {
            all.push(Bound {
                name: ADMIN_LISTENER_NAME.to_owned(),
                address: admin.local,
            });
        }
        all
    }

    /// Applies `spec` whole, or leaves everything as it was and says why.
    pub async fn apply(&self, spec: Spec) -> Result<Vec<Bound>, ApplyError> {
        let current = self.runtime.load_full();
        if current.version == spec.version && current.hash == spec.hash {
            return Ok(self.all_bound());
        }
        // Only upstreams this data plane does not use yet are looked up: the others resolved
        // when they were applied, and a passing DNS failure now must not refuse a version that
        // changes something else (a certificate, an ACME challenge, a route), nor the same
        // content under a new version.
        if current.hash != spec.hash {
            let known: std::collections::HashSet<String> =
                self.upstreams.list().into_iter().map(|u| u.url).collect();
            check_upstreams_resolve(&spec, &known).await?;
        }
        let (plan, admin) = self.bind(&spec.statics)?;
        self.upstreams.configure(&spec.statics);
        let runtime = Runtime::compile(&spec, &self.limiters, &self.upstreams)
            .with_delivered(self.challenges.clone());
        self.runtime.store(Arc::new(runtime));
        self.metrics.snapshot_applied(spec.version);
        forget_removed_sites(&self.metrics, &current, &spec);
        if let Some(hook) = &self.log_level_hook {
            hook(&spec.log_level);
        }
        tracing::info!(
            version = spec.version,
            previous = current.version,
            sites = spec.sites.len(),
            "applied snapshot"
        );
        self.serve(plan, admin, &spec.statics);
        crate::notify::serving(spec.version);
        Ok(self.all_bound())
    }

    /// Serves what `bind` prepared, under `statics`' per-connection settings from the next
    /// accept on.
    fn serve(&self, plan: crate::listeners::Plan, admin: AdminChange, statics: &StaticSpec) {
        let serving = {
            let mut serving = self.serving.lock().unwrap_or_else(|e| e.into_inner());
            match serving.as_ref() {
                Some(serving) => {
                    serving.update(statics);
                    serving.clone()
                }
                None => serving
                    .insert(Arc::new(crate::listeners::Serving::new(
                        Arc::new(Proxy::new(
                            self.runtime.clone(),
                            self.metrics.clone(),
                            false,
                            self.tunnels.clone(),
                        )),
                        statics,
                        self.metrics.clone(),
                        self.shutdown.clone(),
                        self.abort.clone(),
                        self.servers.clone(),
                        self.shards.clone(),
                    )))
                    .clone(),
            }
        };
        if !plan.is_empty() {
            self.listeners.commit(plan, &serving);
        }
        self.ready.store(true, Ordering::Release);
        let mut running = self.admin();
        if matches!(admin, AdminChange::Keep) {
            return;
        }
        if let Some(old) = running.take() {
            tracing::info!(listener = ADMIN_LISTENER_NAME, address = %old.local, "admin listener stops accepting");
            old.stop.cancel();
        }
        if let AdminChange::Start {
            address,
            local,
            listener,
            socket,
        } = admin
        {
            let state = AdminState {
                metrics: self.metrics.clone(),
                ready: self.ready.clone(),
            };
            let stop = self.shutdown.child_token();
            tracing::info!(listener = ADMIN_LISTENER_NAME, address = %local, "listening");
            self.servers.spawn(crate::admin::serve(
                listener,
                Arc::new(state),
                stop.clone(),
                self.shutdown.clone(),
            ));
            *running = Some(AdminListener {
                address,
                local,
                stop,
                socket,
            });
        }
    }

    /// Binds what the snapshot adds to the listeners and the admin listener, taking the
    /// sockets a predecessor handed over where they match. Changes nothing that serves.
    fn bind(
        &self,
        statics: &StaticSpec,
    ) -> Result<(crate::listeners::Plan, AdminChange), ApplyError> {
        let (mut inherited, inherited_admin) = {
            let mut handover = self.handover();
            (
                std::mem::take(&mut handover.listeners),
                handover.admin_http.take(),
            )
        };
        let plan = self.listeners.plan(
            &statics.listeners,
            &mut inherited,
            &self.activation,
            &self.runtime,
        )?;
        // Handed-over sockets this config does not listen on close here.
        for (name, address, _) in inherited {
            tracing::warn!(listener = %name, %address, "closing a handed-over listener the config does not have");
        }
        let running = self.admin().as_ref().map(|a| a.address);
        if running == statics.admin_address {
            return Ok((plan, AdminChange::Keep));
        }
        let Some(address) = statics.admin_address else {
            return Ok((plan, AdminChange::Stop));
        };
        let socket = match inherited_admin.filter(|(a, _)| *a == address) {
            Some((_, socket)) => socket,
            None => crate::listeners::socket_for(
                ADMIN_LISTENER_NAME,
                address,
                &self.activation,
                &crate::listeners::names(&statics.listeners),
            )?,
        };
        let local = socket.local_addr().map_err(|source| ListenerError::Bind {
            name: ADMIN_LISTENER_NAME.to_owned(),
            address,
            source,
        })?;
        let (listener, socket) = crate::listeners::adopt(ADMIN_LISTENER_NAME, address, socket)?;
        Ok((
            plan,
            AdminChange::Start {
                address,
                local,
                listener,
                socket,
            },
        ))
    }

    /// Waits until every listener has drained (after `shutdown` was cancelled), and every
    /// open tunnel has closed, both up to the drain deadline (a fast stop cuts it short).
    pub async fn drained(&self) {
        let deadline = self.drain_timeout();
        self.servers.close();
        self.tunnels.close();
        let tunnels = async {
            let Some(deadline) = deadline else { return };
            tokio::select! {
                waited = tokio::time::timeout(deadline, self.tunnels.wait()) => if waited.is_err() {
                    tracing::warn!(open = self.tunnels.len(), timeout = ?deadline, "drain deadline passed; closing the open tunnels");
                },
                () = self.abort.cancelled() => {}
            }
        };
        tokio::join!(self.servers.wait(), tunnels);
    }
}

/// Drops the metric series of the sites `previous` served and `next` does not, so `/metrics`
/// does not keep every site name that ever existed.
fn forget_removed_sites(metrics: &Metrics, previous: &Runtime, next: &Spec) {
    let kept: HashSet<&str> = next.sites.iter().map(SiteSpec::name).collect();
    let gone: HashSet<&str> = previous
        .site_names()
        .filter(|name| !kept.contains(name))
        .collect();
    for site in gone {
        metrics.forget_site(site);
    }
}

mod resolve;

pub(crate) use resolve::check_upstreams_resolve;
