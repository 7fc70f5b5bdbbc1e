//! A pool's HTTP/2 connections, as Envoy and grpc-go keep them:
//!
//! - A request takes a stream on the oldest connection that has one free under the upstream's
//!   `SETTINGS_MAX_CONCURRENT_STREAMS` (read from the connection as it changes), and keeps it
//!   until its response body ends. When every connection is full, a new one is dialed: long
//!   gRPC streams cannot starve unary calls behind one connection's limit.
//! - One dial at a time: requests that find no free stream while a connection is being dialed
//!   wait for that dial instead of each dialing its own (a cold start, a GOAWAY, a server's
//!   `MaxConnectionAge`), and share its failure. They wait until the new connection has heard
//!   the upstream's SETTINGS, so that they take no more streams than it allows (the excess
//!   would queue inside the connection, behind the streams ahead of them).
//! - A connection that idles past the idle timeout closes, except the oldest: it stays, and
//!   its liveness is the PINGs' business (`upstream_h2_ping_interval`).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use hyper::client::conn::http2;

use http::{Request, Response};
use tokio::sync::OwnedSemaphorePermit;

use super::{Dialed, Error, PooledBody, Shared, UpstreamBody};

/// One HTTP/2 connection of the pool.
pub(super) struct Conn {
    pub(super) sender: http2::SendRequest<UpstreamBody>,
    /// Streams our requests hold on it.
    open: AtomicUsize,
    /// What its connection task last saw of the upstream's settings.
    settings: Arc<Settings>,
    /// When its last stream ended, in milliseconds since `epoch`.
    idle_since_ms: AtomicU64,
    epoch: Instant,
    /// The pool's: woken when this connection, full, frees a stream.
    freed: Arc<tokio::sync::Notify>,
}

impl Conn {
    pub(super) fn new(
        sender: http2::SendRequest<UpstreamBody>,
        settings: Arc<Settings>,
        freed: Arc<tokio::sync::Notify>,
    ) -> Conn {
        Conn {
            sender,
            open: AtomicUsize::new(0),
            settings,
            idle_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            freed,
        }
    }

    /// Until the upstream's SETTINGS have been read, or `bound` passed.
    pub(super) async fn heard(&self, bound: std::time::Duration) {
        self.settings.heard(bound).await;
    }

    /// The upstream said it allows no stream (SETTINGS_MAX_CONCURRENT_STREAMS = 0).
    pub(super) fn allows_no_stream(&self) -> bool {
        self.settings.heard.load(Ordering::SeqCst)
            && self.settings.max_streams.load(Ordering::Relaxed) == 0
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn has_room(&self) -> bool {
        self.open.load(Ordering::Relaxed) < self.settings.max_streams.load(Ordering::Relaxed)
    }

    /// A stream on it (the caller checked that it has room, under the pool's lock).
    fn stream(self: &Arc<Self>) -> Stream {
        self.open.fetch_add(1, Ordering::Relaxed);
        Stream { conn: self.clone() }
    }
}

/// A request's stream on a connection: it counts against the connection's limit until
/// dropped, which its response body does when it ends.
pub struct Stream {
    conn: Arc<Conn>,
}

impl Stream {
    pub(super) fn sender(&self) -> http2::SendRequest<UpstreamBody> {
        self.conn.sender.clone()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let conn = &self.conn;
        let before = conn.open.fetch_sub(1, Ordering::Relaxed);
        if before == 1 {
            let now = conn.now_ms();
            conn.idle_since_ms.store(now, Ordering::Relaxed);
        }
        // It was full: requests may be waiting for room (only then, to keep the common drop
        // free of the notifier's lock).
        if before >= conn.settings.max_streams.load(Ordering::Relaxed) {
            conn.freed.notify_waiters();
        }
    }
}

/// The pool's HTTP/2 connections, oldest first, and the dial in flight.
#[derive(Default)]
pub(super) struct Conns {
    list: Vec<Arc<Conn>>,
    dialing: Option<Arc<Dialing>>,
}

/// What a request does next to get a stream.
pub(super) enum Checkout {
    Stream(Stream),
    /// Wait for the connection being dialed (or a stream freed), then look again.
    Wait(Arc<Dialing>),
    /// Dial one, with this place under `max_connections`; the others wait for it.
    Dial(Arc<Dialing>, tokio::sync::OwnedSemaphorePermit),
    /// Every connection is full and no other may be opened now: wait for a stream or a place.
    Full,
    /// The upstream allows no stream on its connection: another would not either.
    NoStreams,
}

impl Conns {
    /// A stream on the oldest open connection with room; else the dial in flight to wait for,
    /// or a dial to make with a place `place` gives under `max_connections`.
    pub(super) fn checkout(
        &mut self,
        place: impl FnOnce() -> Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Checkout {
        self.list.retain(|c| !c.sender.is_closed());
        if let Some(conn) = self.list.iter().find(|c| c.has_room()) {
            return Checkout::Stream(conn.stream());
        }
        if let Some(dialing) = &self.dialing {
            return Checkout::Wait(dialing.clone());
        }
        if !self.list.is_empty() && self.list.iter().all(|c| c.allows_no_stream()) {
            return Checkout::NoStreams;
        }
        match place() {
            Some(permit) => {
                let dialing = Arc::new(Dialing::default());
                self.dialing = Some(dialing.clone());
                Checkout::Dial(dialing, permit)
            }
            None => Checkout::Full,
        }
    }

    /// A new connection joins, with the first stream on it for the request that dialed it.
    pub(super) fn add(&mut self, conn: Conn) -> Stream {
        let conn = Arc::new(conn);
        let stream = conn.stream();
        self.list.push(conn);
        stream
    }

    /// A new connection joins with no stream on it (idle from now).
    pub(super) fn keep(&mut self, conn: Conn) {
        conn.idle_since_ms.store(conn.now_ms(), Ordering::Relaxed);
        self.list.push(Arc::new(conn));
    }

    /// The request could not even start on `stream`'s connection: it is closing.
    pub(super) fn forget(&mut self, stream: &Stream) {
        self.list.retain(|c| !Arc::ptr_eq(c, &stream.conn));
    }

    /// The dial `dialing` ended (with a connection, an error, or cancelled): the next request
    /// that finds no room may dial again.
    pub(super) fn dialed(&mut self, dialing: &Arc<Dialing>) {
        if self
            .dialing
            .as_ref()
            .is_some_and(|d| Arc::ptr_eq(d, dialing))
        {
            self.dialing = None;
        }
    }

    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    pub(super) fn clear(&mut self) {
        self.list.clear();
    }

    /// Closes the connections, all but the oldest open one, that have idled for `timeout_ms`;
    /// when the next of the others would expire (`None`: none left to watch).
    pub(super) fn reap(&mut self, timeout_ms: u64) -> Option<Instant> {
        self.list.retain(|c| !c.sender.is_closed());
        let mut next: Option<Instant> = None;
        let mut oldest = true;
        self.list.retain(|c| {
            // The oldest stays, unless it allows no stream: then a new one asks again.
            if !c.allows_no_stream() && std::mem::take(&mut oldest) {
                return true;
            }
            let now = c.now_ms();
            let expires = if c.open.load(Ordering::Relaxed) > 0 {
                // Busy: look again a timeout from now.
                now.saturating_add(timeout_ms)
            } else {
                let since = c.idle_since_ms.load(Ordering::Relaxed);
                if now.saturating_sub(since) >= timeout_ms {
                    return false;
                }
                since.saturating_add(timeout_ms)
            };
            let at = c.epoch + std::time::Duration::from_millis(expires);
            next = Some(next.map_or(at, |n| n.min(at)));
            true
        });
        next
    }
}

/// A dial other requests wait for.
#[derive(Default)]
pub(super) struct Dialing {
    done: tokio::sync::Notify,
    finished: AtomicBool,
    failed: OnceLock<Error>,
}

impl Dialing {
    /// Waits until the dial ends; its error, if it failed.
    pub(super) async fn wait(&self) -> Option<Error> {
        let notified = self.done.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.finished.load(Ordering::SeqCst) {
            notified.await;
        }
        self.failed.get().cloned()
    }

    /// Wakes the waiters; they get `failed`.
    pub(super) fn finish(&self, failed: Option<Error>) {
        if let Some(e) = failed {
            let _ = self.failed.set(e);
        }
        self.finished.store(true, Ordering::SeqCst);
        self.done.notify_waiters();
    }
}

/// The pool's HTTP/2 requests: how they find a stream, wait, or dial.
impl Shared {
    /// HTTP/2: a free stream, else the dial in flight, else this request dials (within the
    /// breaker's `max_connections`); a stream freed on a connection wakes every wait.
    pub(super) async fn send_h2(
        self: &Arc<Self>,
        mut request: Request<UpstreamBody>,
        reached: &AtomicBool,
    ) -> Result<Response<PooledBody>, Error> {
        loop {
            // Enabled before looking, so that a stream freed meanwhile is not missed.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let checkout = self.lock().h2.checkout(|| self.breaker.try_connection());
            match checkout {
                Checkout::Stream(stream) => {
                    reached.store(true, Ordering::Relaxed);
                    self.absolute_form(&mut request);
                    match stream.sender().try_send_request(request).await {
                        Ok(response) => return Ok(response.map(|b| PooledBody::h2(b, stream))),
                        // The connection is closing: nothing of the request went out.
                        Err(mut e) => match e.take_message() {
                            Some(unsent) => {
                                request = unsent;
                                self.lock().h2.forget(&stream);
                            }
                            None => return Err(Error::request(e.into_error())),
                        },
                    }
                }
                Checkout::Wait(other) => {
                    tokio::select! {
                        failed = other.wait() => if let Some(failed) = failed {
                            return Err(failed);
                        },
                        () = &mut freed => {}
                    }
                }
                Checkout::Dial(mine, permit) => {
                    let ticket = DialTicket {
                        shared: self.clone(),
                        dialing: mine,
                    };
                    return self
                        .dial_and_send(request, Some(ticket), Some(permit), reached)
                        .await;
                }
                // Every connection full and no room for another: a stream freed, or a
                // connection closed, lets it on (the wait counts as a pending request).
                Checkout::Full => {
                    tokio::select! {
                        permit = self.breaker.connection() => {
                            let permit = permit.map_err(Error::connect)?;
                            return self.dial_and_send(request, None, Some(permit), reached).await;
                        }
                        () = &mut freed => {}
                    }
                }
                // The upstream allows no stream at all: no use dialing again.
                Checkout::NoStreams => {
                    return Err(Error::connect(crate::upstreams::CircuitOpen {
                        limit: "upstream_max_concurrent_streams",
                    }));
                }
            }
        }
    }

    /// Dials (with `permit`, else within the breaker's limit) and sends `request` on the new
    /// connection; `ticket` (this request dials for others) shares the outcome.
    pub(super) async fn dial_and_send(
        self: &Arc<Self>,
        mut request: Request<UpstreamBody>,
        ticket: Option<DialTicket>,
        permit: Option<OwnedSemaphorePermit>,
        reached: &AtomicBool,
    ) -> Result<Response<PooledBody>, Error> {
        let dialed = self.dial(true, permit).await;
        if let (Err(e), Some(ticket)) = (&dialed, &ticket) {
            ticket.dialing.finish(Some(e.clone()));
        }
        match dialed? {
            Dialed::Http1(mut sender) => {
                drop(ticket);
                reached.store(true, Ordering::Relaxed);
                self.origin_form(&mut request);
                match sender.send_request(request).await {
                    Ok(response) => Ok(self.http1_response(sender, response)),
                    Err(e) => Err(Error::request(e)),
                }
            }
            Dialed::H2(conn) => {
                // How many streams the upstream allows, before anyone takes one: its preface
                // comes within a round trip (bounded by the connect timeout).
                conn.heard(self.settings.timeouts.connect()).await;
                if conn.allows_no_stream() {
                    // Kept, streamless, until it idles out: the requests until then get 503 at
                    // once instead of a connection each.
                    self.keep_h2(conn);
                    let refused = Error::connect(crate::upstreams::CircuitOpen {
                        limit: "upstream_max_concurrent_streams",
                    });
                    if let Some(ticket) = &ticket {
                        ticket.dialing.finish(Some(refused.clone()));
                    }
                    return Err(refused);
                }
                let stream = self.share_h2(conn);
                // The requests that waited for this dial look again.
                drop(ticket);
                reached.store(true, Ordering::Relaxed);
                self.absolute_form(&mut request);
                match stream.sender().send_request(request).await {
                    Ok(response) => Ok(response.map(|b| PooledBody::h2(b, stream))),
                    Err(e) => Err(Error::request(e)),
                }
            }
        }
    }

    /// A new HTTP/2 connection joins the pool with no stream on it.
    fn keep_h2(self: &Arc<Self>, conn: Conn) {
        {
            let mut idle = self.lock();
            if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            idle.h2.keep(conn);
        }
        self.start_reaper();
    }
}

/// This request dials the connection others wait for; whatever happens to it (a connection, an
/// error, the request cancelled), they are woken when it drops.
pub(super) struct DialTicket {
    shared: Arc<Shared>,
    dialing: Arc<Dialing>,
}

impl Drop for DialTicket {
    fn drop(&mut self) {
        self.shared.lock().h2.dialed(&self.dialing);
        self.dialing.finish(None);
    }
}

impl Conns {
    /// The streams open on each connection, oldest first.
    #[cfg(test)]
    pub(super) fn open_streams(&self) -> Vec<usize> {
        self.list
            .iter()
            .map(|c| c.open.load(Ordering::Relaxed))
            .collect()
    }
}

mod preface;

pub(crate) use preface::{FirstRead, Settings};
