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

use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use hyper::client::conn::http2;

use super::{Error, UpstreamBody};

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

/// What the upstream's connection preface said: its first SETTINGS frame, which proxyd reads
/// itself as the bytes pass (hyper runs the HTTP/2 connection in a task of its own and tells
/// nothing of it). A later SETTINGS frame that lowers the limit is not seen here; the
/// connection itself still obeys it, queueing the streams past it.
pub(super) struct Settings {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`; until the preface is read, 1.
    max_streams: AtomicUsize,
    heard: AtomicBool,
    /// Wakes who waits for `heard`.
    heard_changed: tokio::sync::Notify,
}

impl Settings {
    fn new() -> Settings {
        Settings {
            max_streams: AtomicUsize::new(1),
            heard: AtomicBool::new(false),
            heard_changed: tokio::sync::Notify::new(),
        }
    }

    fn hear(&self, max_streams: usize) {
        self.max_streams.store(max_streams, Ordering::Relaxed);
        self.heard.store(true, Ordering::SeqCst);
        self.heard_changed.notify_waiters();
    }

    /// Until the upstream's SETTINGS have been read, or `bound` passed (a silent upstream).
    pub(super) async fn heard(&self, bound: std::time::Duration) {
        let wait = async {
            let changed = self.heard_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.heard.load(Ordering::SeqCst) {
                changed.await;
            }
        };
        let _ = tokio::time::timeout(bound, wait).await;
    }
}

/// The longest first SETTINGS frame read (RFC 9113's default SETTINGS_MAX_FRAME_SIZE); a longer
/// one is not parsed, and the connection's own reader refuses it anyway.
const MAX_PREFACE: usize = 9 + 16_384;
const FRAME_SETTINGS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// An upstream connection's IO, reading the upstream's first SETTINGS frame as it passes.
pub(super) struct FirstRead<T> {
    io: T,
    /// The preface read so far; `None` once it has been parsed.
    preface: Option<Vec<u8>>,
    settings: Arc<Settings>,
}

impl<T> FirstRead<T> {
    pub(super) fn new(io: T) -> (FirstRead<T>, Arc<Settings>) {
        let settings = Arc::new(Settings::new());
        let io = FirstRead {
            io,
            preface: Some(Vec::new()),
            settings: settings.clone(),
        };
        (io, settings)
    }

    /// Takes `bytes` of the preface; parses it once it is whole.
    fn preface(&mut self, bytes: &[u8], eof: bool) {
        let Some(preface) = &mut self.preface else {
            return;
        };
        preface.extend_from_slice(bytes);
        let parsed = parse_settings(preface);
        if parsed.is_some() || eof || preface.len() >= MAX_PREFACE {
            self.preface = None;
            // No limit stated, or no SETTINGS frame: unlimited, as RFC 9113 starts.
            let max = parsed.flatten().unwrap_or(usize::MAX);
            self.settings.hear(max);
        }
    }
}

/// `None`: incomplete. `Some(limit)`: a whole first frame, with the stream limit it states
/// (`Some(None)` when it is no SETTINGS frame, or states none).
fn parse_settings(bytes: &[u8]) -> Option<Option<usize>> {
    let header = bytes.get(..9)?;
    let length =
        usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
    if header[3] != FRAME_SETTINGS {
        return Some(None);
    }
    let payload = bytes.get(9..9 + length)?;
    let mut limit = None;
    for entry in payload.chunks_exact(6) {
        if u16::from_be_bytes([entry[0], entry[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS {
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            limit = Some(usize::try_from(value).unwrap_or(usize::MAX));
        }
    }
    Some(limit)
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for FirstRead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.preface.is_none() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        // Through a buffer of our own while the preface passes, to see its bytes.
        let mut local = [0u8; 4096];
        let room = buf.remaining().min(local.len());
        let mut read = hyper::rt::ReadBuf::new(&mut local[..room]);
        let polled = Pin::new(&mut self.io).poll_read(cx, read.unfilled());
        if let Poll::Ready(Ok(())) = polled {
            let filled = read.filled();
            buf.put_slice(filled);
            let eof = filled.is_empty();
            self.as_mut().get_mut().preface(filled, eof);
        }
        polled
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for FirstRead<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut frame = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            0,
            0,
            0,
            0,
            0,
        ];
        frame.extend_from_slice(payload);
        frame
    }

    #[test]
    fn the_preface_s_stream_limit_is_read_once_the_frame_is_whole() {
        // SETTINGS_INITIAL_WINDOW_SIZE, then SETTINGS_MAX_CONCURRENT_STREAMS = 2.
        let settings = frame(4, &[0, 4, 0, 1, 0, 0, 0, 3, 0, 0, 0, 2]);
        assert_eq!(parse_settings(&settings[..8]), None);
        assert_eq!(parse_settings(&settings[..15]), None);
        assert_eq!(parse_settings(&settings), Some(Some(2)));
        assert_eq!(
            parse_settings(&frame(4, &[])),
            Some(None),
            "no limit stated"
        );
        assert_eq!(
            parse_settings(&frame(6, &[0; 8])),
            Some(None),
            "no SETTINGS"
        );
    }
}
