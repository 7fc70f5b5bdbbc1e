//! Where controld serves `/metrics`: bound at start from `control.metrics_address`, then moved by
//! the Reloader, which binds a new address before a reload commits and switches after.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::Source;
use crate::error::Error;

/// controld's metrics listener. Changed only by [`MetricsListener::start`] and by the Reloader
/// (under its reload lock), so a reload never races another over it.
pub struct MetricsListener {
    state: Mutex<State>,
}

struct State {
    /// `control.metrics_address` of the config in force, as written (port 0 stays 0): what a
    /// reload compares its own with.
    configured: Option<SocketAddr>,
    /// The address bound and served now, and what stops serving it.
    serving: Option<(SocketAddr, CancellationToken)>,
    /// What is served and until when: from [`MetricsListener::start`] on.
    server: Option<Server>,
}

struct Server {
    source: Arc<dyn Source>,
    shutdown: CancellationToken,
}

/// A listener a reload bound and has not committed yet. [`MetricsListener::switch`] serves it;
/// dropped (the reload did not commit), it closes without having accepted anything.
#[must_use = "dropping it closes the new listener"]
pub struct Rebind {
    configured: Option<SocketAddr>,
    listener: Option<(TcpListener, SocketAddr)>,
}

impl MetricsListener {
    /// Nothing bound yet; `configured` is the `control.metrics_address` controld starts with.
    pub fn new(configured: Option<SocketAddr>) -> MetricsListener {
        MetricsListener {
            state: Mutex::new(State {
                configured,
                serving: None,
                server: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address `/metrics` is served on now (with port 0 configured, the one the OS chose).
    pub fn bound(&self) -> Option<SocketAddr> {
        self.lock().serving.as_ref().map(|(address, _)| *address)
    }

    /// Binds the address of the config in force and serves `source` there until `shutdown`;
    /// from then on, every [`MetricsListener::switch`] serves its listener too. At startup, where
    /// a failure to bind stops controld.
    pub fn start(
        &self,
        source: Arc<dyn Source>,
        shutdown: &CancellationToken,
    ) -> Result<Option<SocketAddr>, Error> {
        // Bound under the lock (a few system calls): a SIGHUP reload cannot slip in between.
        let mut state = self.lock();
        let server = Server {
            source,
            shutdown: shutdown.clone(),
        };
        if let Some(address) = state.configured {
            let listener = bind(address)?;
            state.serving = Some(serve(listener, &server));
        }
        state.server = Some(server);
        Ok(state.serving.as_ref().map(|(address, _)| *address))
    }

    /// Binds `wanted` when it differs from the address of the config in force; `Ok(None)` when
    /// it does not (nothing to move). Changes nothing: the listener serving now keeps serving
    /// until [`MetricsListener::switch`].
    pub fn prepare(&self, wanted: Option<SocketAddr>) -> Result<Option<Rebind>, Error> {
        if self.lock().configured == wanted {
            return Ok(None);
        }
        let listener = wanted.map(bind).transpose()?;
        Ok(Some(Rebind {
            configured: wanted,
            listener,
        }))
    }

    /// Once the reload committed: the old listener stops accepting (a scrape being answered is
    /// finished) and the new one, if any, serves.
    pub fn switch(&self, rebind: Rebind) {
        let mut state = self.lock();
        state.configured = rebind.configured;
        if let Some((address, stop)) = state.serving.take() {
            stop.cancel();
            tracing::info!(%address, "metrics listener closed");
        }
        // Before start, the listener is dropped: start binds the address of the config in force.
        if let (Some(listener), Some(server)) = (rebind.listener, &state.server) {
            state.serving = Some(serve(listener, server));
        }
    }
}

fn bind(address: SocketAddr) -> Result<(TcpListener, SocketAddr), Error> {
    let err = |source| Error::Metrics { address, source };
    let listener = std::net::TcpListener::bind(address).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    // Registered with the runtime here, so that nothing can fail once a reload has committed.
    let listener = TcpListener::from_std(listener).map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    Ok((listener, bound))
}

fn serve(
    (listener, address): (TcpListener, SocketAddr),
    server: &Server,
) -> (SocketAddr, CancellationToken) {
    let stop = server.shutdown.child_token();
    tokio::spawn(super::serve(listener, server.source.clone(), stop.clone()));
    tracing::info!(%address, "serving metrics");
    (address, stop)
}
