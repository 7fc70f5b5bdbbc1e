//! Listeners: accept connections, serve HTTP/1.1 and h2c on them, and drain on shutdown.
//!
//! Listeners outlive snapshots: they are bound once, from the first snapshot, and a reload never
//! touches them or the connections they accepted.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::convert::StaticSpec;
use crate::http::Proxy;

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
/// cuts the drain short.
pub async fn serve(
    name: String,
    listener: TcpListener,
    proxy: Arc<Proxy>,
    statics: StaticSpec,
    shutdown: CancellationToken,
    abort: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    // Cancelled when the drain deadline passes: drops every connection still open.
    let hard_stop = CancellationToken::new();
    // HTTP/1.1, and HTTP/2 with prior knowledge (h2c), told apart by the connection preface.
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
    let drain_timeout = statics.shutdown_timeout;
    while let Some((stream, peer)) = accept(&listener, &name, &shutdown).await {
        let open = proxy.connection_opened();
        let proxy = proxy.clone();
        let service = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        let hard_stop = hard_stop.clone();
        tokio::spawn(async move {
            let _open = open;
            tokio::select! {
                result = connection => if let Err(e) = result {
                    tracing::debug!(client = %peer, error = %e, "connection ended with an error");
                },
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
