//! Bodies in flight, with the deadlines hyper does not keep: a request body from the client and a
//! response body from the upstream each must keep moving, or they end with an error that says
//! whose fault it was (a client's stalled upload must never count against the upstream).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::BoxError;
use crate::metrics::Metrics;

/// The client's request body failed: its fault, not the upstream's.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("the client sent no request body bytes for {0:?}")]
    Timeout(Duration),
    #[error("reading the request body from the client: {0}")]
    Read(BoxError),
}

/// The upstream stopped sending its response body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no response body bytes for {0:?}")]
pub struct UpstreamBodyTimeout(pub Duration);

/// Which side a body comes from, which names its errors.
#[derive(Debug, Clone, Copy)]
pub enum Side {
    Client,
    Upstream,
}

/// `inner`, failing once it produces no frame for `timeout`.
pub struct Watched<B> {
    inner: B,
    timeout: Duration,
    /// Armed while a frame is awaited.
    sleep: Option<Pin<Box<Sleep>>>,
    side: Side,
    metrics: Arc<Metrics>,
    /// Follows how sending the body goes (request bodies only).
    progress: Option<Arc<Upload>>,
    /// Kept until the body is dropped (a proxied response body holds its request's guards).
    _held: Option<super::RequestGuards>,
    /// The upstream's count of requests outstanding, for least-requests and `max_requests`:
    /// a response counts until its body ends (or is dropped), not only until its head.
    _outstanding: Option<crate::upstreams::Outstanding>,
}

/// How a request body's upload goes, for the upstream's response deadline: it runs from the
/// end of the body, or from the last progress when the body stopped being read because the
/// upstream does not take it (then the stall is the upstream's); while the body waits for the
/// client, the stall is the client's and `request_body_timeout` judges it.
#[derive(Debug)]
pub struct Upload {
    start: Instant,
    /// Milliseconds since `start` of the last frame read from the client.
    last_ms: AtomicU64,
    /// The last poll found nothing from the client yet.
    waiting_on_client: AtomicBool,
    ended: AtomicBool,
    changed: Notify,
}

impl Upload {
    pub fn new() -> Arc<Upload> {
        Arc::new(Upload {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            waiting_on_client: AtomicBool::new(false),
            ended: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves when the upstream has had `timeout` to answer: after the body ended, or after
    /// the upstream stopped taking the body (no progress while nothing waits on the client).
    pub async fn upstream_deadline(&self, timeout: Duration) {
        loop {
            let changed = self.changed.notified();
            if self.ended.load(Ordering::Acquire) {
                tokio::time::sleep(timeout).await;
                return;
            }
            let idle = Duration::from_millis(
                self.now_ms()
                    .saturating_sub(self.last_ms.load(Ordering::Acquire)),
            );
            if idle >= timeout && !self.waiting_on_client.load(Ordering::Acquire) {
                return;
            }
            let wait = timeout.saturating_sub(idle).max(Duration::from_millis(10));
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

impl<B> Watched<B> {
    pub fn new(inner: B, timeout: Duration, side: Side, metrics: Arc<Metrics>) -> Watched<B> {
        Watched {
            inner,
            timeout,
            sleep: None,
            side,
            metrics,
            progress: None,
            _held: None,
            _outstanding: None,
        }
    }

    /// Keeps `guards` until the body is dropped, which hyper does once the last frame is
    /// written or the connection goes away.
    /// Keeps the upstream's outstanding count up until this body ends.
    pub fn counting(mut self, outstanding: crate::upstreams::Outstanding) -> Watched<B> {
        self._outstanding = Some(outstanding);
        self
    }

    pub fn holding(mut self, guards: Option<super::RequestGuards>) -> Watched<B> {
        self._held = guards;
        self
    }

    /// Reports the body's progress to `upload`.
    pub fn report_to(mut self, upload: Arc<Upload>) -> Watched<B> {
        self.progress = Some(upload);
        self
    }

    fn ended(&mut self) {
        if let Some(upload) = self.progress.take() {
            upload.ended.store(true, Ordering::Release);
            upload.changed.notify_waiters();
        }
    }

    fn moved(&self, waiting_on_client: bool) {
        if let Some(upload) = &self.progress {
            if !waiting_on_client {
                upload.last_ms.store(upload.now_ms(), Ordering::Release);
            }
            if upload
                .waiting_on_client
                .swap(waiting_on_client, Ordering::AcqRel)
                != waiting_on_client
            {
                upload.changed.notify_waiters();
            }
        }
    }

    fn error(&self, e: BoxError) -> BoxError {
        match self.side {
            Side::Client => Box::new(ClientBodyError::Read(e)),
            Side::Upstream => e,
        }
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = &mut *self;
        match Pin::new(&mut me.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                me.sleep = None;
                me.moved(false);
                if me.inner.is_end_stream() {
                    me.ended();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(me.error(e.into())))),
            Poll::Ready(None) => {
                me.ended();
                Poll::Ready(None)
            }
            Poll::Pending => {
                me.moved(true);
                let timeout = me.timeout;
                let sleep = me
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                me.sleep = None;
                let error: BoxError = match me.side {
                    Side::Client => {
                        me.metrics.timed_out("request_body");
                        Box::new(ClientBodyError::Timeout(me.timeout))
                    }
                    Side::Upstream => {
                        me.metrics.timed_out("upstream_body");
                        Box::new(UpstreamBodyTimeout(me.timeout))
                    }
                };
                Poll::Ready(Some(Err(error)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `e` (or what caused it) is the client's body failing.
pub fn client_body_fault<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a ClientBodyError> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(fault) = err.downcast_ref::<ClientBodyError>() {
            return Some(fault);
        }
        source = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn a_stalled_body_fails_with_whose_fault_it_was() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut body = Watched::new(
            StreamBody::new(stream),
            Duration::from_millis(200),
            Side::Client,
            Arc::new(Metrics::new()),
        );
        tx.send(Ok(Frame::data(Bytes::from_static(b"ab"))))
            .await
            .unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "ab");
        let e = body.frame().await.unwrap().unwrap_err();
        let fault = client_body_fault(e.as_ref()).unwrap();
        assert!(matches!(fault, ClientBodyError::Timeout(_)), "{fault}");
        drop(tx);
    }
}
