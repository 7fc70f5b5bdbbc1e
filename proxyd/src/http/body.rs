//! Bodies in flight, with the deadlines hyper does not keep: a request body from the client and a
//! response body from the upstream each must keep moving, or they end with an error that says
//! whose fault it was (a client's stalled upload must never count against the upstream).
//!
//! - **Pauses**: no frame for the timeout (`request_body_timeout`, `upstream_body_timeout`).
//! - **A whole upload**: once `request_body_timeout` has passed, a request body must average
//!   `request_body_min_rate` (a byte every 50 s never pauses long enough, and would hold an
//!   upstream slot for ever).
//! - **A gRPC call**: no pause timeout (a quiet server stream is not dead); its deadline, the
//!   client's `grpc-timeout` capped by the route's timeout, ends the response with
//!   `grpc-status: 4` (DEADLINE_EXCEEDED) trailers.
//! - **A slow reader**: a response body hyper does not poll (the client does not take what it
//!   was handed) cannot time itself; it tells its connection's [`super::Activity`] how delivery
//!   goes, and the connection judges it (`response_min_rate`).

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
    #[error("the client sent its request body slower than {0} bytes/s")]
    TooSlow(u64),
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

/// `inner`, failing once it produces no frame for `timeout`, or falls behind its other
/// deadlines.
pub struct Watched<B> {
    inner: B,
    /// `None`: pauses are not timed (a gRPC call).
    timeout: Option<Duration>,
    /// Armed while a frame is awaited, for the nearest deadline.
    sleep: Option<Pin<Box<Sleep>>>,
    /// When the armed pause ends.
    pause_ends: Option<Instant>,
    /// A request body's least average rate, in bytes per second, once `timeout` has passed.
    min_rate: Option<u64>,
    /// The first poll: the rate's clock starts when the body is first asked for (a request
    /// that waited for a connection, or an `Expect: 100-continue` client not yet told to send,
    /// has not been slow).
    started: Option<Instant>,
    /// Data bytes read so far.
    bytes: u64,
    /// A gRPC call's deadline: the response ends with DEADLINE_EXCEEDED trailers there.
    call_deadline: Option<Instant>,
    /// The trailers that ended the body have been given: nothing follows.
    finished: bool,
    side: Side,
    metrics: Arc<Metrics>,
    /// Follows how sending the body goes (request bodies only).
    progress: Option<Arc<Upload>>,
    /// Keeps the client connection busy until the body ends (request bodies only).
    open: Option<super::BodyOpen>,
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
            timeout: Some(timeout),
            sleep: None,
            pause_ends: None,
            min_rate: None,
            started: None,
            bytes: 0,
            call_deadline: None,
            finished: false,
            side,
            metrics,
            progress: None,
            open: None,
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

    /// A request body must average `rate` bytes per second once its pause timeout has passed.
    pub fn min_rate(mut self, rate: Option<u64>) -> Watched<B> {
        self.min_rate = rate.filter(|r| *r > 0);
        self
    }

    /// A gRPC response: pauses are not timed, and `deadline` (if any) ends the call.
    pub fn grpc_call(mut self, deadline: Option<Instant>) -> Watched<B> {
        self.timeout = None;
        self.call_deadline = deadline;
        self
    }

    /// When the body falls behind its minimum rate: `timeout` after the start, plus the time
    /// the bytes read so far buy.
    fn rate_deadline(&self) -> Option<Instant> {
        let rate = self.min_rate?;
        let grace = self.timeout?;
        let bought = Duration::from_millis(self.bytes.saturating_mul(1000) / rate);
        Some(self.started? + grace + bought)
    }

    /// Reports the body's progress to `upload`, and keeps the client connection busy (`open`)
    /// until the body ends or is dropped.
    pub fn report_to(mut self, upload: Arc<Upload>, open: super::BodyOpen) -> Watched<B> {
        self.progress = Some(upload);
        self.open = Some(open);
        self
    }

    fn ended(&mut self) {
        self.open = None;
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

impl<B> Watched<B> {
    /// Nothing from `inner` yet: arms the nearest deadline, and fails (or, for a gRPC call,
    /// ends) the body once it has passed.
    fn waiting(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let now = Instant::now();
        let pause_ends = match (self.pause_ends, self.timeout) {
            (Some(at), _) => Some(at),
            (None, Some(timeout)) => Some(now + timeout),
            (None, None) => None,
        };
        self.pause_ends = pause_ends;
        let nearest = [pause_ends, self.rate_deadline(), self.call_deadline]
            .into_iter()
            .flatten()
            .min();
        let Some(nearest) = nearest else {
            return Poll::Pending;
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(nearest)));
        if sleep.deadline() != nearest {
            sleep.as_mut().reset(nearest);
        }
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.sleep = None;
        self.pause_ends = None;
        let now = Instant::now();
        if self.call_deadline.is_some_and(|at| at <= now) {
            self.metrics.timed_out("grpc_deadline");
            self.finished = true;
            self.ended();
            return Poll::Ready(Some(Ok(Frame::trailers(deadline_exceeded()))));
        }
        let error: BoxError = match self.side {
            Side::Client if self.rate_deadline().is_some_and(|at| at <= now) => {
                self.metrics.timed_out("request_body_rate");
                Box::new(ClientBodyError::TooSlow(self.min_rate.unwrap_or_default()))
            }
            Side::Client => {
                self.metrics.timed_out("request_body");
                Box::new(ClientBodyError::Timeout(self.timeout.unwrap_or_default()))
            }
            Side::Upstream => {
                self.metrics.timed_out("upstream_body");
                Box::new(UpstreamBodyTimeout(self.timeout.unwrap_or_default()))
            }
        };
        Poll::Ready(Some(Err(error)))
    }

    /// The frame handed out before this poll has been taken by the client.
    fn delivered(&self) {
        if let Some((_, active)) = &self._held {
            active.delivery_taken();
        }
    }

    /// A frame has been handed out, and more follows: until the next poll it waits on the
    /// client.
    fn handed(&mut self) {
        let bytes = self.bytes;
        if let Some((_, active)) = &mut self._held {
            active.delivery_handed(bytes);
        }
    }
}

/// The trailers of a gRPC call that ran out of time: DEADLINE_EXCEEDED.
fn deadline_exceeded() -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("4"));
    trailers.insert(
        "grpc-message",
        http::HeaderValue::from_static("proxyd: deadline exceeded"),
    );
    trailers
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
        if me.finished {
            return Poll::Ready(None);
        }
        if me.started.is_none() {
            me.started = Some(Instant::now());
        }
        me.delivered();
        match Pin::new(&mut me.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                me.sleep = None;
                me.pause_ends = None;
                me.moved(false);
                if let Some(open) = &me.open {
                    open.moved();
                }
                if let Some(data) = frame.data_ref() {
                    me.bytes = me.bytes.saturating_add(data.len() as u64);
                }
                if me.inner.is_end_stream() {
                    me.ended();
                } else {
                    me.handed();
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
                me.waiting(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
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
        let fault = e.downcast_ref::<ClientBodyError>().unwrap();
        assert!(matches!(fault, ClientBodyError::Timeout(_)), "{fault}");
        drop(tx);
    }

    #[tokio::test]
    async fn a_body_that_keeps_moving_too_slowly_fails_at_its_minimum_rate() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut body = Watched::new(
            StreamBody::new(stream),
            Duration::from_millis(300),
            Side::Client,
            Arc::new(Metrics::new()),
        )
        .min_rate(Some(1000));
        // A byte every 100 ms: no pause reaches 300 ms, and 10 bytes/s is far under 1000.
        let sender = tokio::spawn(async move {
            loop {
                if tx
                    .send(Ok(Frame::data(Bytes::from_static(b"x"))))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let started = Instant::now();
        let e = loop {
            match body.frame().await {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("the body ended"),
            }
        };
        let fault = e.downcast_ref::<ClientBodyError>().unwrap();
        assert!(matches!(fault, ClientBodyError::TooSlow(1000)), "{fault}");
        // Cut once the grace (the pause timeout) and what the bytes bought had passed.
        assert!(started.elapsed() < Duration::from_secs(2));
        sender.abort();
    }

    #[tokio::test]
    async fn a_grpc_call_past_its_deadline_ends_with_deadline_exceeded_trailers() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let mut body = Watched::new(
            StreamBody::new(stream),
            Duration::from_millis(50),
            Side::Upstream,
            Arc::new(Metrics::new()),
        )
        .grpc_call(Some(Instant::now() + Duration::from_millis(300)));
        tx.send(Ok(Frame::data(Bytes::from_static(b"message"))))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().unwrap().is_data());
        // Quiet for longer than the 50 ms pause timeout: a gRPC stream has none.
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "4");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        drop(tx);
    }
}
