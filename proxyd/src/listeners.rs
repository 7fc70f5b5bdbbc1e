//! The `[[proxy.listeners]]` of the config, kept in step with every snapshot (issue 13 §2):
//!
//! - a listener the snapshot adds is bound (a bind failure refuses the whole snapshot, and
//!   nothing changes);
//! - one it removes stops accepting, and its connections drain under the drain deadline;
//! - a changed address is a removal plus an addition (the new address is bound first);
//! - a changed `tls` keeps the socket (never closed) and applies to new connections: a new
//!   accept loop takes a duplicate of it, and the old loop stops accepting and drains.
//!
//! Changes are made in two steps, so that a snapshot is applied whole or not at all:
//! [`Listeners::plan`] binds what is new and changes nothing; [`Listeners::commit`] serves the
//! plan once the snapshot is applied.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::activation::Activation;
use crate::convert::{ListenerSpec, StaticSpec};
use crate::http::Proxy;
use crate::metrics::Metrics;
use crate::runtime::Runtime;
use crate::server::{Gate, Settings};
use crate::tls::Terminator;

/// Why the listeners of a snapshot could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("binding listener {name:?} on {address}: {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("setting up TLS for the TLS listeners: {0}")]
    Tls(#[from] rustls::Error),
}

/// A listener as bound, with its real address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    pub name: String,
    pub address: SocketAddr,
}

/// A listener serving now.
struct Running {
    /// As configured (port 0 stays 0 here; `local` has the real one).
    address: SocketAddr,
    tls: bool,
    local: SocketAddr,
    /// Cancelled to stop accepting on it; its connections then drain.
    stop: CancellationToken,
    /// A duplicate of the socket: for a `tls` change, and for a hand-over.
    socket: std::net::TcpListener,
}

/// A listener bound for a snapshot, not serving yet.
struct Starting {
    name: String,
    address: SocketAddr,
    tls: bool,
    local: SocketAddr,
    listener: tokio::net::TcpListener,
    socket: std::net::TcpListener,
}

/// What a snapshot changes in the listeners, bound and ready to serve. Dropped unserved (the
/// snapshot was refused), it closes what it bound.
pub struct Plan {
    start: Vec<Starting>,
    /// Names whose accept loop stops (removed, or replaced by an entry of `start`).
    stop: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.stop.is_empty()
    }
}

/// Serving threads that accept on each listener (the main one included); the others serve the
/// connections these hand them. Every accepting thread is woken by every new connection (each
/// has the socket in its own epoll, and tokio registers it without `EPOLLEXCLUSIVE`), and all
/// but one find nothing to accept.
const ACCEPTING_THREADS: usize = 4;

/// What every accept loop shares, from the first snapshot on.
pub struct Serving {
    pub proxy: Arc<Proxy>,
    /// The per-connection settings of the snapshot serving now.
    pub settings: Arc<ArcSwap<Settings>>,
    pub gate: Arc<Gate>,
    pub shutdown: CancellationToken,
    pub abort: CancellationToken,
    pub servers: TaskTracker,
    /// The other serving threads' runtimes: each runs an accept loop of its own on every
    /// listener ([`crate::Shards`]).
    pub shards: Vec<tokio::runtime::Handle>,
}

impl Serving {
    pub fn new(
        proxy: Arc<Proxy>,
        statics: &StaticSpec,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        abort: CancellationToken,
        servers: TaskTracker,
        shards: Vec<tokio::runtime::Handle>,
    ) -> Serving {
        Serving {
            proxy,
            settings: Arc::new(ArcSwap::from_pointee(Settings::new(statics))),
            // One set of connection caps for every listener.
            gate: Arc::new(Gate::new(&statics.limits, metrics)),
            shutdown,
            abort,
            servers,
            shards,
        }
    }

    /// Takes a later snapshot's per-connection settings and caps, for the connections accepted
    /// from now on.
    pub fn update(&self, statics: &StaticSpec) {
        let settings = Settings::new(statics);
        if !self.settings.load().same(&settings) {
            tracing::info!("connection settings changed; new connections use them");
        }
        self.gate.set_limits(&statics.limits);
        self.settings.store(Arc::new(settings));
    }
}

#[derive(Default)]
pub struct Listeners {
    running: Mutex<BTreeMap<String, Running>>,
    /// Shared by the TLS listeners; made when the first one appears.
    tls: Mutex<Option<Arc<Terminator>>>,
}

impl Listeners {
    fn running(&self) -> MutexGuard<'_, BTreeMap<String, Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds what `specs` adds or moves (taking a socket from `inherited` when a predecessor
    /// handed over one with the same name and configured address, else a duplicate of the one
    /// systemd passed for it), and makes the TLS terminator if a TLS listener needs it first.
    /// Changes nothing that serves.
    pub fn plan(
        &self,
        specs: &[ListenerSpec],
        inherited: &mut Vec<(String, SocketAddr, std::net::TcpListener)>,
        activation: &Activation,
        runtime: &Arc<ArcSwap<Runtime>>,
    ) -> Result<Plan, ListenerError> {
        if specs.iter().any(|l| l.tls) {
            let mut tls = self.tls.lock().unwrap_or_else(|e| e.into_inner());
            if tls.is_none() {
                *tls = Some(Arc::new(Terminator::new(runtime.clone())?));
            }
        }
        let names = names(specs);
        let running = self.running();
        let mut plan = Plan {
            start: Vec::new(),
            stop: Vec::new(),
        };
        for ListenerSpec { name, address, tls } in specs {
            let (listener, local) = match running.get(name) {
                Some(r) if r.address == *address && r.tls == *tls => continue,
                // Only `tls` changed: the same socket, served anew.
                Some(r) if r.address == *address => {
                    let dup = r.socket.try_clone().map_err(|source| ListenerError::Bind {
                        name: name.clone(),
                        address: *address,
                        source,
                    })?;
                    plan.stop.push(name.clone());
                    (adopt(name, *address, dup)?, r.local)
                }
                previous => {
                    if previous.is_some() {
                        plan.stop.push(name.clone());
                    }
                    let handed = inherited
                        .iter()
                        .position(|(n, a, _)| n == name && a == address)
                        .map(|i| inherited.swap_remove(i).2);
                    let socket = match handed {
                        Some(socket) => socket,
                        None => socket_for(name, *address, activation, &names)?,
                    };
                    let local = socket.local_addr().map_err(|source| ListenerError::Bind {
                        name: name.clone(),
                        address: *address,
                        source,
                    })?;
                    (adopt(name, *address, socket)?, local)
                }
            };
            let socket = listener.1;
            plan.start.push(Starting {
                name: name.clone(),
                address: *address,
                tls: *tls,
                local,
                listener: listener.0,
                socket,
            });
        }
        for name in running.keys() {
            if !specs.iter().any(|l| l.name == *name) {
                plan.stop.push(name.clone());
            }
        }
        Ok(plan)
    }

    /// Serves `plan`: stops the accept loops it ends (their connections drain), then starts
    /// the new ones.
    pub fn commit(&self, plan: Plan, serving: &Serving) {
        let mut running = self.running();
        for name in plan.stop {
            if let Some(old) = running.remove(&name) {
                tracing::info!(listener = %name, address = %old.local, "listener stops accepting; its connections drain");
                old.stop.cancel();
            }
        }
        let tls = self.tls.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for s in plan.start {
            let stop = serving.shutdown.child_token();
            tracing::info!(listener = %s.name, address = %s.local, tls = s.tls, "listening");
            let ctx = crate::server::Listening {
                name: s.name.clone(),
                proxy: serving.proxy.clone(),
                settings: serving.settings.clone(),
                gate: serving.gate.clone(),
                tls: tls.clone().filter(|_| s.tls),
                shutdown: stop.clone(),
                abort: serving.abort.clone(),
            };
            // An accept loop here and one on each other serving thread; they spread the
            // connections between them. Every loop that accepts (on a duplicate of the socket,
            // in its own epoll) is woken by every new connection: past `ACCEPTING_THREADS`,
            // the threads serve only what the others hand them.
            let mut places = crate::server::Spread::places(1 + serving.shards.len()).into_iter();
            let Some(here) = places.next() else { continue };
            for (i, (shard, place)) in serving.shards.iter().zip(places).enumerate() {
                if i + 1 >= ACCEPTING_THREADS {
                    serving
                        .servers
                        .spawn_on(crate::server::serve(ctx.clone(), None, place), shard);
                    continue;
                }
                // Registered with the shard's own epoll in its runtime (`serve_std`).
                let socket = match socket2::SockRef::from(&s.listener).try_clone() {
                    Ok(socket) => std::net::TcpListener::from(socket),
                    Err(e) => {
                        tracing::warn!(listener = %s.name, error = %e, "cannot duplicate the listening socket for a serving thread; the others accept for it");
                        continue;
                    }
                };
                serving
                    .servers
                    .spawn_on(crate::server::serve_std(ctx.clone(), socket, place), shard);
            }
            serving
                .servers
                .spawn(crate::server::serve(ctx, Some(s.listener), here));
            running.insert(
                s.name,
                Running {
                    address: s.address,
                    tls: s.tls,
                    local: s.local,
                    stop,
                    socket: s.socket,
                },
            );
        }
        serving
            .proxy
            .set_https_listener(running.values().any(|r| r.tls));
    }

    /// Every listener serving now, by name.
    pub fn bound(&self) -> Vec<Bound> {
        self.running()
            .iter()
            .map(|(name, r)| Bound {
                name: name.clone(),
                address: r.local,
            })
            .collect()
    }

    /// A duplicate of each listening socket with its name and configured address, to hand
    /// over to a successor.
    pub fn duplicates(&self) -> std::io::Result<Vec<(String, String, std::os::fd::OwnedFd)>> {
        self.running()
            .iter()
            .map(|(name, r)| {
                let dup = r.socket.try_clone()?;
                Ok((
                    name.clone(),
                    r.address.to_string(),
                    std::os::fd::OwnedFd::from(dup),
                ))
            })
            .collect()
    }
}

/// Every listener name of a snapshot, the admin listener's included.
pub fn names(specs: &[ListenerSpec]) -> Vec<&str> {
    specs
        .iter()
        .map(|l| l.name.as_str())
        .chain([crate::convert::ADMIN_LISTENER_NAME])
        .collect()
}

/// The socket systemd passed for listener `name` (`names`: every listener of the snapshot, see
/// [`Activation::socket_for`]), or else a new one bound on `address`.
pub fn socket_for(
    name: &str,
    address: SocketAddr,
    activation: &Activation,
    names: &[&str],
) -> Result<std::net::TcpListener, ListenerError> {
    match activation.socket_for(name, address, names) {
        Some(passed) => passed.map_err(|source| ListenerError::Bind {
            name: name.to_owned(),
            address,
            source,
        }),
        None => bind(name, address),
    }
}

/// A socket on `address`, listening with the kernel's largest accept queue (`somaxconn`), as
/// HAProxy does: std's `TcpListener::bind` asks for 128, and a burst of connections (clients
/// reconnecting after a restart) then loses SYNs. nginx asks for 511.
fn bind(name: &str, address: SocketAddr) -> Result<std::net::TcpListener, ListenerError> {
    use socket2::{Domain, Socket, Type};
    let bound = (|| {
        let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
        // What std sets too: a restarted proxyd rebinds while old connections are in TIME_WAIT.
        socket.set_reuse_address(true)?;
        socket.bind(&address.into())?;
        socket.listen(listen_backlog())?;
        Ok(std::net::TcpListener::from(socket))
    })();
    bound.map_err(|source| ListenerError::Bind {
        name: name.to_owned(),
        address,
        source,
    })
}

/// Gives a socket handed over by a predecessor the same accept queue (`listen` again only
/// changes the backlog): one bound by a build from before it listened with 128.
pub fn raise_backlog(socket: &std::net::TcpListener) {
    if let Err(e) = socket2::SockRef::from(socket).listen(listen_backlog()) {
        tracing::debug!(error = %e, "cannot raise a handed-over socket's backlog");
    }
}

/// `net.core.somaxconn` (the kernel caps any backlog there), or 4096 when it cannot be read.
fn listen_backlog() -> i32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(4096)
        .min(65535)
}

/// Serves `socket` from tokio, keeping a duplicate of it.
pub fn adopt(
    name: &str,
    address: SocketAddr,
    socket: std::net::TcpListener,
) -> Result<(tokio::net::TcpListener, std::net::TcpListener), ListenerError> {
    let err = |source| ListenerError::Bind {
        name: name.to_owned(),
        address,
        source,
    };
    let dup = socket.try_clone().map_err(err)?;
    socket.set_nonblocking(true).map_err(err)?;
    let listener = tokio::net::TcpListener::from_std(socket).map_err(err)?;
    Ok((listener, dup))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 19 #6: the accept queue was std's 128.
    #[test]
    fn listeners_get_the_kernels_largest_accept_queue() {
        let socket = bind("http", "127.0.0.1:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        // `ss` shows a listening socket's backlog as its Send-Q.
        let Ok(out) = std::process::Command::new("ss")
            .args(["-ltnH", &format!("sport = :{port}")])
            .output()
        else {
            eprintln!("skipped: ss (iproute2) is not installed");
            return;
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let backlog: i32 = text
            .split_whitespace()
            .nth(2)
            .and_then(|q| q.parse().ok())
            .unwrap_or_else(|| panic!("ss: {text}"));
        assert_eq!(backlog, listen_backlog());
        assert!(backlog > 128, "{backlog}");
    }
}
