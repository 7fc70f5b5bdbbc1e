//! Listeners: accept connections, terminate TLS on TLS listeners, serve HTTP/1.1 and HTTP/2 on
//! them, and drain on shutdown.
//!
//! Listeners outlive snapshots: they are bound once, from the first snapshot, and a reload never
//! touches them or the connections they accepted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::convert::StaticSpec;
use crate::http::{ClientConn, Proxy};
use crate::metrics::ConnectionOpen;
use crate::tls::Terminator;

/// The next connection, with `TCP_NODELAY` set; `None` once `shutdown` is cancelled.
pub async fn accept(
    listener: &TcpListener,
    name: &str,
    shutdown: &CancellationToken,
) -> Option<(tokio::net::TcpStream, std::net::SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, peer));
            }
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves `listener` until `shutdown`, then stops accepting, lets in-flight requests finish
/// (keep-alive off) for up to `drain_timeout`, and drops what is left; `abort` (a fast stop)
/// cuts the drain short. With `tls`, every connection starts with a TLS handshake.
pub async fn serve(
    name: String,
    listener: TcpListener,
    proxy: Arc<Proxy>,
    statics: StaticSpec,
    tls: Option<Arc<Terminator>>,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    // Cancelled when the drain deadline passes: drops every connection still open.
    let hard_stop = CancellationToken::new();
    let builder = http_builder(&statics);
    let drain_timeout = statics.shutdown_timeout;
    while let Some((stream, peer)) = accept(&listener, &name, &shutdown).await {
        let connection = Connection {
            _open: proxy.connection_opened(),
            peer,
            proxy: proxy.clone(),
            builder: builder.clone(),
            // Taken now, so that a drain waits for a handshake in progress too.
            watcher: graceful.watcher(),
            shutdown: shutdown.clone(),
        };
        let (tls, hard_stop) = (tls.clone(), hard_stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = connection.run(stream, tls) => {}
                () = hard_stop.cancelled() => {}
            }
        });
    }
    drop(listener);
    tracing::info!(listener = %name, "stopped accepting; draining connections");
    tokio::select! {
        drained = tokio::time::timeout(drain_timeout, graceful.shutdown()) => if drained.is_err() {
            tracing::warn!(listener = %name, timeout = ?drain_timeout, "drain deadline passed; closing what is left");
        },
        () = abort.cancelled() => tracing::warn!(listener = %name, "fast stop: closing every connection"),
    }
    hard_stop.cancel();
}

/// HTTP/1.1, and HTTP/2 (h2c with prior knowledge, or h2 after ALPN), told apart by the
/// connection preface, with the request-head limits of the first snapshot.
fn http_builder(statics: &StaticSpec) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper answers 431 itself when a request head has more fields or bytes than these.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(statics.request_header_timeout)
        .max_headers(statics.max_request_headers)
        .max_buf_size(statics.max_request_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(statics.max_request_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// One accepted connection and what serving it needs.
struct Connection {
    /// Counts the connection as open until it is dropped.
    _open: ConnectionOpen,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    builder: auto::Builder<TokioExecutor>,
    watcher: Watcher,
    shutdown: CancellationToken,
}

impl Connection {
    /// TLS handshake first when the listener has one, then HTTP until either side closes.
    async fn run(self, stream: TcpStream, tls: Option<Arc<Terminator>>) {
        let Some(tls) = tls else {
            let client = ClientConn {
                peer: self.peer,
                tls: None,
            };
            return self.serve_http(TokioIo::new(stream), client).await;
        };
        let handshake = tokio::select! {
            handshake = tls.handshake(stream) => handshake,
            // A drain does not wait for handshakes.
            () = self.shutdown.cancelled() => return,
        };
        match handshake {
            Ok((stream, session)) => {
                let client = ClientConn {
                    peer: self.peer,
                    tls: Some(session),
                };
                self.serve_http(TokioIo::new(stream), client).await;
            }
            Err(e) => tracing::debug!(client = %self.peer, error = %e, "TLS handshake failed"),
        }
    }

    async fn serve_http<I>(self, io: I, client: ClientConn)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let client = Arc::new(client);
        let proxy = self.proxy;
        let service = service_fn(move |req| {
            let (proxy, client) = (proxy.clone(), client.clone());
            async move { Ok::<_, Infallible>(proxy.handle(req, &client).await) }
        });
        let connection = self.builder.serve_connection_with_upgrades(io, service);
        if let Err(e) = self.watcher.watch(connection.into_owned()).await {
            tracing::debug!(client = %self.peer, error = %e, "connection ended with an error");
        }
    }
}
