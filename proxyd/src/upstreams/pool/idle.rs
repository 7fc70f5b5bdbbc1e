//! Connections going back to the pool: an HTTP/1.1 connection when its response body ends, and
//! the reaper that closes idle ones.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;

use super::{Shared, UpstreamBody, h2};

/// Closes idle connections once they have idled for the timeout; stops when none are left (the
/// next one to come back starts it again) or the pool is gone.
pub(super) async fn reap(pool: Weak<Shared>) {
    loop {
        let Some(shared) = pool.upgrade() else { return };
        let next = match shared.expire_idle() {
            Some(next) => next,
            None => {
                // Says it stops, then looks again: a connection that came back meanwhile was
                // either seen here or saw `reaping` false and started another reaper.
                shared.reaping.store(false, Ordering::SeqCst);
                match shared.expire_idle() {
                    Some(next) if !shared.reaping.swap(true, Ordering::SeqCst) => next,
                    _ => return,
                }
            }
        };
        let timeouts = shared.settings.timeouts.clone();
        drop(shared);
        // A new idle timeout (a snapshot) counts at once, not from the old deadline.
        tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(next)) => {}
            () = timeouts.changed.notified() => {}
        }
    }
}

impl Shared {
    /// Closes the idle connections that timed out or that the upstream closed; when the next
    /// one is due, if any is left.
    fn expire_idle(&self) -> Option<Instant> {
        let timeout = self.settings.timeouts.idle();
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        for idle in self.idle.iter() {
            let mut idle = super::lock(idle);
            idle.http1
                .retain(|(sender, since)| !sender.is_closed() && now - *since < timeout);
            // The oldest is the first to expire.
            let http1 = idle.http1.first().map(|(_, since)| *since + timeout);
            for due in [http1, idle.h2.reap(timeout_ms)].into_iter().flatten() {
                next = Some(next.map_or(due, |next| next.min(due)));
            }
        }
        next
    }
}

/// An HTTP/1.1 connection to give back when the response body ends.
pub(super) struct GiveBack {
    pub(super) shared: Arc<Shared>,
    pub(super) sender: http1::SendRequest<UpstreamBody>,
}

/// A response body that gives its connection back to the pool when read to the end. Dropped
/// before that, the connection closes (hyper cannot reuse it with a body half read).
pub struct PooledBody {
    pub(super) inner: Incoming,
    pub(super) giveback: Option<GiveBack>,
    /// An HTTP/2 response's stream, counted on its connection until the body ends.
    pub(super) stream: Option<h2::Stream>,
}

impl PooledBody {
    pub(super) fn h2(inner: Incoming, stream: h2::Stream) -> PooledBody {
        let stream = (!inner.is_end_stream()).then_some(stream);
        PooledBody {
            inner,
            giveback: None,
            stream,
        }
    }

    pub(super) fn give_back(&mut self) {
        let Some(GiveBack { shared, mut sender }) = self.giveback.take() else {
            return;
        };
        if sender.is_ready() {
            shared.put_back(sender);
        } else if !sender.is_closed() {
            // hyper's connection task has not seen the end of the exchange yet (it runs on
            // its own task): it comes back as soon as it has.
            tokio::spawn(async move {
                if sender.ready().await.is_ok() {
                    shared.put_back(sender);
                }
            });
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => return polled,
            Poll::Ready(Some(Ok(_))) if !self.inner.is_end_stream() => return polled,
            Poll::Ready(None) | Poll::Ready(Some(Ok(_))) => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.giveback = None,
        }
        // Ended (or failed): its HTTP/2 stream is free for another request.
        self.stream = None;
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
