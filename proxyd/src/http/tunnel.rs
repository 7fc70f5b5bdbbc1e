//! Upgrade tunnels (WebSocket and the like): bytes copied both ways between the client and the
//! upstream once the upstream switched protocols. A tunnel holds no runtime, so reloads do not
//! touch it; it keeps its client connection's place under the connection caps, and it closes
//! once no byte has passed either way for `tunnel_idle_timeout`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::gate::Permit;
use crate::metrics::Metrics;

/// Copies until either side closes or the tunnel has been idle for `idle_timeout`.
pub async fn run(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    name: String,
    permit: Arc<Permit>,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
) {
    let (client, upstream) = match (client.await, upstream.await) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(upstream = %name, error = %e, "upgrade did not complete");
            return;
        }
    };
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Touch::new(TokioIo::new(client), start, last.clone());
    let mut upstream = Touch::new(TokioIo::new(upstream), start, last.clone());
    let idle = async {
        loop {
            let quiet = start
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if quiet >= idle_timeout {
                return;
            }
            tokio::time::sleep(idle_timeout - quiet).await;
        }
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match copied {
            Ok((up, down)) => tracing::debug!(upstream = %name, up, down, "tunnel closed"),
            Err(e) => tracing::debug!(upstream = %name, error = %e, "tunnel ended with an error"),
        },
        () = idle => {
            metrics.timed_out("tunnel_idle");
            tracing::debug!(upstream = %name, timeout = ?idle_timeout, "idle tunnel closed");
        }
    }
    drop(permit);
}

/// Records when bytes last came in from its side.
struct Touch<T> {
    inner: T,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Touch<T> {
    fn new(inner: T, start: Instant, last: Arc<AtomicU64>) -> Touch<T> {
        Touch { inner, start, last }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Touch<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Touch<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
