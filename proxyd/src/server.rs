//! Listeners: accept connections within the connection caps, terminate TLS on TLS listeners,
//! serve HTTP/1.1 and HTTP/2 on them under their deadlines, and drain on shutdown.
//!
//! Listeners outlive snapshots ([`crate::listeners`]), and so do the connections they accepted.
//! The per-connection settings ([`Settings`]) follow the snapshots: each connection takes those
//! in force at its accept and keeps them; a reload changes them for the next connections.
//!
//! What bounds a client connection (docs/security.md): the caps of [`gate`]; until the protocol
//! is known, the request-head timeout ([`io`]); an HTTP/1.1 request head, hyper's
//! `header_read_timeout`; an HTTP/2 connection, `max_concurrent_streams`, keep-alive PINGs and
//! the idle timeout below; a client that stops reading, the send timeout ([`io`]); a dead peer,
//! TCP keepalive.

mod connection;
use connection::Connection;
mod io;
mod spread;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use crate::gate::Permit;
use spread::{Given, Handoff, adopt};
pub use spread::{Place, Spread};

use arc_swap::ArcSwap;

use crate::convert::{ConnectionLimits, StaticSpec};
use crate::http::Proxy;
use crate::tls::Terminator;

/// The next connection, with `TCP_NODELAY` set; `None` once `shutdown` is cancelled.
/// `failures`: accept failures in a row, logged at the first, then once a second with how many
/// there were (the caller keeps it, so that a wait cut short does not start the count again).
pub async fn accept(
    listener: &TcpListener,
    name: &str,
    shutdown: &CancellationToken,
    failures: &mut u64,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if *failures > 1 {
                    tracing::info!(listener = %name, failures, "accepting again");
                }
                *failures = 0;
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(e) => {
                *failures += 1;
                // 20 a second while it lasts (the back-off below): one line a second.
                if *failures % 20 == 1 {
                    tracing::warn!(listener = %name, error = %e, failures, "accept failed");
                }
                // Out of file descriptors and similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What every accept loop of one listener shares.
#[derive(Clone)]
pub struct Listening {
    pub name: String,
    pub proxy: Arc<Proxy>,
    /// The per-connection settings of the snapshot serving now.
    pub settings: Arc<ArcSwap<Settings>>,
    /// The connection caps, one for every listener.
    pub gate: Arc<Gate>,
    /// On TLS listeners.
    pub tls: Option<Arc<Terminator>>,
    /// Cancelled to stop accepting; the connections then drain.
    pub shutdown: CancellationToken,
    /// A fast stop: cuts the drain short.
    pub abort: CancellationToken,
}

/// Serves `listener` until `shutdown`, then stops accepting, lets in-flight requests finish
/// (keep-alive off, HTTP/2 GOAWAY) for up to the drain deadline in force then, and drops what
/// is left; `abort` (a fast stop) cuts the drain short. With `tls`, every connection starts
/// with a TLS handshake. Each connection is served under the `settings` current at its accept.
/// Connections of every listener count against one `gate`. With several serving threads, this
/// is one of the listener's accept loops (`place`): it serves the connections it accepts and
/// those handed to it, and hands some of its own to the others ([`spread`]). Without a
/// `listener`, it serves only what the others hand it.
pub async fn serve(ctx: Listening, listener: Option<TcpListener>, place: Place) {
    let Listening {
        name,
        proxy,
        settings,
        gate,
        tls,
        shutdown,
        abort,
    } = ctx;
    let Place {
        spread,
        me,
        mut inbox,
    } = place;
    let connections = TaskTracker::new();
    // Cancelled when the drain deadline passes: drops every connection still open.
    let hard_stop = CancellationToken::new();
    // Accepted sockets inherit keepalive from the listener (Linux copies the options); set
    // again on the listener when a snapshot changes it.
    let mut keepalive = settings.load().limits.tcp_keepalive;
    if let Some(listener) = &listener {
        set_keepalive(socket2::SockRef::from(listener), keepalive, &name);
    }
    let mut failures = 0;
    // This loop's connections wait on a token of their own: every wake of a connection's task
    // polls it, which locks the token's waiter list, and one token for every thread's
    // connections would pass that lock between cores.
    let connections_stop = shutdown.child_token();
    let serve = |stream: TcpStream, peer: SocketAddr, permit: Permit, current: Arc<Settings>| {
        let connection = Connection {
            permit: Arc::new(permit),
            peer,
            proxy: proxy.clone(),
            settings: current,
            shutdown: connections_stop.clone(),
        };
        let given = Given::new(spread.clone(), me);
        // Tracked from the accept, so that a drain waits for a handshake in progress too.
        connections.spawn(connection.task(stream, tls.clone(), &hard_stop, given));
    };
    loop {
        let next = async {
            match &listener {
                Some(listener) => accept(listener, &name, &shutdown, &mut failures).await,
                None => {
                    shutdown.cancelled().await;
                    None
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = next => match accepted {
                Some(accepted) => accepted,
                None => break,
            },
            Some(handoff) = inbox.recv() => {
                adopt(handoff, &name, &spread, me, &settings, &serve);
                continue;
            }
        };
        let current = settings.load_full();
        if current.limits.tcp_keepalive != keepalive {
            keepalive = current.limits.tcp_keepalive;
            if let Some(listener) = &listener {
                set_keepalive(socket2::SockRef::from(listener), keepalive, &name);
            }
            // This one was accepted with the previous setting.
            set_keepalive(socket2::SockRef::from(&stream), keepalive, &name);
        }
        let capped = !proxy.trusts(peer.ip());
        let Ok(permit) = gate.admit(peer.ip(), capped) else {
            tracing::debug!(listener = %name, client = %peer, "connection over a cap; closed");
            drop(stream);
            continue;
        };
        let to = spread.pick(me);
        if to == me {
            serve(stream, peer, permit, current);
            continue;
        }
        // Out of this runtime's epoll, into the other loop's inbox (counted on it already).
        match stream.into_std() {
            Ok(stream) => {
                let handoff = Handoff {
                    stream,
                    peer,
                    permit,
                };
                if let Err(handoff) = spread.send(to, handoff) {
                    // That loop has stopped: this one serves it.
                    spread.done(to);
                    spread.take(me);
                    adopt(handoff, &name, &spread, me, &settings, &serve);
                }
            }
            Err(e) => {
                spread.done(to);
                tracing::warn!(listener = %name, client = %peer, error = %e, "cannot hand a connection to another serving thread; closed");
            }
        }
    }
    drop(listener);
    // Connections handed over before this loop stopped are served (and drain) here.
    inbox.close();
    while let Ok(handoff) = inbox.try_recv() {
        adopt(handoff, &name, &spread, me, &settings, &serve);
    }
    connections.close();
    let drain_timeout = settings.load().shutdown_timeout;
    tracing::info!(listener = %name, "stopped accepting; draining connections");
    tokio::select! {
        drained = tokio::time::timeout(drain_timeout, connections.wait()) => if drained.is_err() {
            tracing::warn!(listener = %name, timeout = ?drain_timeout, "drain deadline passed; closing what is left");
        },
        () = abort.cancelled() => tracing::warn!(listener = %name, "fast stop: closing every connection"),
    }
    hard_stop.cancel();
}

/// [`serve`] on a listening socket not registered with a runtime yet: the runtime this runs on
/// takes it (a serving thread's, [`crate::Shards`]).
pub async fn serve_std(ctx: Listening, listener: std::net::TcpListener, place: Place) {
    match TcpListener::from_std(listener) {
        Ok(listener) => serve(ctx, Some(listener), place).await,
        Err(e) => {
            tracing::warn!(listener = %ctx.name, error = %e, "a serving thread cannot accept on the listening socket; the others accept for it");
        }
    }
}

pub use crate::gate::Gate;

fn set_keepalive(socket: socket2::SockRef<'_>, idle: Duration, name: &str) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(Duration::from_secs(10));
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        tracing::warn!(listener = %name, error = %e, "cannot set TCP keepalive");
    }
}

/// hyper's HTTP/1.1 header count limit when none is set.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// The per-connection settings of one snapshot, ready to serve with.
pub struct Settings {
    builders: Builders,
    pub limits: ConnectionLimits,
    /// Until the protocol is known; also hyper's HTTP/1.1 request-head timeout.
    first_bytes: Duration,
    max_request_headers: usize,
    max_request_header_bytes: usize,
    /// The drain deadline.
    pub shutdown_timeout: Duration,
}

impl Settings {
    pub fn new(statics: &StaticSpec) -> Settings {
        Settings {
            builders: http_builder(statics),
            limits: statics.limits,
            first_bytes: statics.request_header_timeout,
            max_request_headers: statics.max_request_headers,
            max_request_header_bytes: statics.max_request_header_bytes,
            shutdown_timeout: statics.shutdown_timeout,
        }
    }

    /// Whether `other` sets the same (the builders follow from the rest).
    pub fn same(&self, other: &Settings) -> bool {
        self.limits == other.limits
            && self.first_bytes == other.first_bytes
            && self.max_request_headers == other.max_request_headers
            && self.max_request_header_bytes == other.max_request_header_bytes
            && self.shutdown_timeout == other.shutdown_timeout
    }
}

/// HTTP/1.1, and HTTP/2 (h2c with prior knowledge, or h2 after ALPN), told apart by the
/// connection preface ([`io::choose_protocol`]), with a snapshot's request-head limits. Each
/// connection then gets only the protocol it speaks (a connection serving either would be as
/// large as both).
struct Builders {
    h1: hyper::server::conn::http1::Builder,
    h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

fn http_builder(statics: &StaticSpec) -> Builders {
    let limits = &statics.limits;
    let mut h1 = hyper::server::conn::http1::Builder::new();
    // hyper answers 431 itself when a request head has more fields or bytes than these.
    h1.timer(TokioTimer::new())
        .header_read_timeout(statics.request_header_timeout)
        .max_buf_size(statics.max_request_header_bytes);
    // hyper's own limit is 100, kept on the stack; any other limit costs a heap-sized buffer
    // initialised on every request head, so it is set only when it differs.
    if statics.max_request_headers != HYPER_DEFAULT_MAX_HEADERS {
        h1.max_headers(statics.max_request_headers);
    }
    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(statics.max_request_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        // A peer that stops answering PINGs is gone, whatever TCP says.
        .keep_alive_interval(Some(limits.http2_keepalive_interval))
        .keep_alive_timeout(limits.http2_keepalive_timeout);
    Builders { h1, h2 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_tcp_keepalive_from_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        set_keepalive(
            socket2::SockRef::from(&listener),
            Duration::from_secs(42),
            "test",
        );
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let sock = socket2::SockRef::from(&accepted);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(42));
    }
}
