//! One upstream's connections, pooled by proxyd itself on hyper's connection API rather than
//! through hyper-util's generic client (which cost 15 % of the instructions of a proxied request:
//! a boxed 3 kB response future, a SipHash pool key and six allocations; docs/benchmarks.md).
//!
//! - Per serving thread ([`crate::shards`]), as Envoy keeps a connection pool per worker and
//!   nginx per worker process: a connection's task runs on the thread that dialed it, and only
//!   that thread's requests use it, so no request waits for another thread to get to it, and
//!   threads on different cores take no lock in turn. The breaker's limits stay the upstream's.
//! - HTTP/1.1: idle connections wait in a LIFO stack (the warmest first). A connection goes
//!   back when its response body has been read to the end, and is closed instead when the body
//!   is dropped early, the upstream asked to close, `max_idle_connections` wait already in its
//!   thread's stack, or requests wait for a place under `max_connections` (an idle connection
//!   would keep its place from them; a request that finds none free closes another thread's
//!   oldest idle connection for one).
//! - HTTP/2 (h2 over TLS, h2c with prior knowledge, or what ALPN picked with `auto`): requests
//!   share connections up to the upstream's stream limit, more connections open when they are
//!   full, one dial at a time ([`h2`]). A connection silent while requests wait on it is PINGed
//!   after `upstream_h2_ping_interval` and closed when the answer does not come in time.
//! - Every upstream socket has TCP keepalive and `TCP_USER_TIMEOUT`: a peer gone without a FIN
//!   (a NAT or load balancer that dropped the flow) is found in about a minute instead of the
//!   kernel's 15 minutes of retransmissions.
//! - A request that a pooled connection could not even start sending (the upstream closed it
//!   while it idled) is sent again on another connection: nothing of it went out.
//! - Idle connections close after the idle timeout, and all at once when the pool is dropped
//!   (its upstream left the config).
//! - Every new connection first takes a place under the breaker's `max_connections`, and keeps it
//!   until the socket closes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::stripes::Striped;
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::UpstreamBody;
use super::breaker::Breaker;
use super::connect::{self, Counted, DialError, Negotiated, TlsConnector};
use tokio::sync::OwnedSemaphorePermit;

mod framing;
mod h2;
mod idle;

pub use idle::PooledBody;
use idle::{GiveBack, reap};

/// What a pool's connections speak (`upstream_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    /// HTTP/2 over TLS.
    H2,
    /// HTTP/2 with prior knowledge over TCP.
    H2c,
    /// Over TLS, what ALPN picks (h2 or http/1.1); over TCP, HTTP/1.1.
    Auto,
}

impl Protocol {
    /// The ALPN protocols offered over TLS.
    pub fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
            Protocol::H2 | Protocol::H2c => vec![b"h2".to_vec()],
            Protocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }
}

/// The connect and idle timeouts every pool shares; a snapshot that changes them changes them
/// for every pool at once (the next dial, the next checkout).
#[derive(Debug)]
pub struct Timeouts {
    connect_ms: AtomicU64,
    idle_ms: AtomicU64,
    h2_ping_interval_ms: AtomicU64,
    h2_ping_timeout_ms: AtomicU64,
    /// Wakes the pools' reapers when the idle timeout changes.
    changed: tokio::sync::Notify,
}

impl Timeouts {
    pub fn new(connect: Duration, idle: Duration) -> Timeouts {
        let timeouts = Timeouts {
            connect_ms: AtomicU64::new(0),
            idle_ms: AtomicU64::new(0),
            h2_ping_interval_ms: AtomicU64::new(0),
            h2_ping_timeout_ms: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        };
        timeouts.set(connect, idle);
        timeouts.set_h2_ping(
            crate::convert::DEFAULT_UPSTREAM_H2_PING_INTERVAL,
            crate::convert::DEFAULT_UPSTREAM_H2_PING_TIMEOUT,
        );
        timeouts
    }

    /// For HTTP/2 connections dialed from now on.
    pub fn set_h2_ping(&self, interval: Duration, timeout: Duration) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.h2_ping_interval_ms
            .store(ms(interval), Ordering::Relaxed);
        self.h2_ping_timeout_ms
            .store(ms(timeout), Ordering::Relaxed);
    }

    fn h2_ping(&self) -> (Duration, Duration) {
        (
            Duration::from_millis(self.h2_ping_interval_ms.load(Ordering::Relaxed)),
            Duration::from_millis(self.h2_ping_timeout_ms.load(Ordering::Relaxed)),
        )
    }

    pub fn set(&self, connect: Duration, idle: Duration) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.connect_ms.store(ms(connect), Ordering::Relaxed);
        let before = self.idle_ms.swap(ms(idle), Ordering::Relaxed);
        if before != ms(idle) {
            self.changed.notify_waiters();
        }
    }

    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms.load(Ordering::Relaxed))
    }

    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms.load(Ordering::Relaxed))
    }
}

/// How a pool dials and keeps connections.
#[derive(Clone)]
pub struct Settings {
    pub timeouts: Arc<Timeouts>,
    pub max_idle: usize,
    pub protocol: Protocol,
    /// For https:// upstreams.
    pub tls: Option<TlsConnector>,
}

type SharedError = Arc<dyn std::error::Error + Send + Sync>;

/// Why a request did not get a response. Cloned for the requests that waited for a failed
/// dial.
#[derive(Debug, Clone)]
pub struct Error {
    /// No connection could be made: nothing reached the upstream.
    connect: bool,
    source: SharedError,
}

impl Error {
    fn connect(source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error {
            connect: true,
            source: Arc::new(source),
        }
    }

    fn request(source: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error {
            connect: false,
            source: Arc::new(source),
        }
    }

    /// Whether the request never reached the upstream because no connection could be made.
    pub fn is_connect(&self) -> bool {
        self.connect
    }

    /// Why the TLS handshake failed, when that is why no connection could be made.
    pub fn tls_failure(&self) -> Option<(&'static str, String)> {
        let dial = self.source.downcast_ref::<DialError>()?;
        Some((dial.tls_reason()?, dial.to_string()))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.connect {
            "cannot connect"
        } else {
            "exchange failed"
        })
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// A ready connection, just dialed.
enum Dialed {
    Http1(http1::SendRequest<UpstreamBody>),
    H2(h2::Conn),
}

/// One upstream's pool. Dropping it closes its idle connections at once; connections busy with a
/// request close when that request ends.
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    scheme: Scheme,
    authority: Authority,
    settings: Settings,
    breaker: Arc<Breaker>,
    /// Each serving thread's connections.
    idle: Striped<Mutex<Idle>>,
    /// Whether a task is expiring idle connections.
    reaping: AtomicBool,
    /// The pool was dropped: nothing comes back.
    closed: AtomicBool,
    /// An `auto` pool's upstream picked h2 by ALPN.
    learned_h2: AtomicBool,
    /// Woken when a full HTTP/2 connection frees a stream.
    freed: Arc<tokio::sync::Notify>,
}

/// One serving thread's connections of the pool.
#[derive(Default)]
struct Idle {
    /// Idle HTTP/1.1 connections and since when they idle, the most recently used last.
    http1: Vec<(http1::SendRequest<UpstreamBody>, Instant)>,
    /// The HTTP/2 connections.
    h2: h2::Conns,
}

impl Pool {
    pub fn new(
        scheme: Scheme,
        authority: Authority,
        settings: Settings,
        breaker: Arc<Breaker>,
    ) -> Pool {
        Pool::for_threads(scheme, authority, settings, breaker, crate::shards::count())
    }

    /// With a part for each of `threads` serving threads.
    fn for_threads(
        scheme: Scheme,
        authority: Authority,
        settings: Settings,
        breaker: Arc<Breaker>,
        threads: usize,
    ) -> Pool {
        Pool {
            shared: Arc::new(Shared {
                scheme,
                authority,
                settings,
                breaker,
                idle: Striped::new(threads),
                reaping: AtomicBool::new(false),
                closed: AtomicBool::new(false),
                learned_h2: AtomicBool::new(false),
                freed: Arc::default(),
            }),
        }
    }

    /// Sends `request` (origin-form URI, with its Host header) on a pooled or new connection.
    /// `reached` is set once the request has a connection to go on: until then it waits on
    /// the pool (a dial, the breaker's `max_connections`), which is no fault of the upstream's.
    pub async fn send(
        &self,
        mut request: Request<UpstreamBody>,
        reached: &AtomicBool,
    ) -> Result<Response<PooledBody>, Error> {
        let shared = &self.shared;
        if shared.speaks_h2() {
            // Boxed: HTTP/2's waits would grow every request's future, which hyper keeps
            // allocated for each idle client connection.
            return Box::pin(shared.send_h2(request, reached)).await;
        }
        // Pooled HTTP/1.1 connections. One the upstream closed while it idled refuses the
        // request before sending any of it, and gives it back for the next.
        while let Some(mut sender) = shared.checkout_http1() {
            reached.store(true, Ordering::Relaxed);
            shared.origin_form(&mut request);
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(shared.http1_response(sender, response)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(Error::request(e.into_error())),
                },
            }
        }
        // Boxed: dialing is rare, and inline its state would grow every request's future.
        Box::pin(shared.dial_and_send(request, None, None, reached)).await
    }

    /// Whether its connections may be HTTP/2: h2 and h2c, and `auto` over TLS (ALPN).
    pub fn may_speak_h2(&self) -> bool {
        match self.shared.settings.protocol {
            Protocol::H2 | Protocol::H2c => true,
            Protocol::Auto => self.shared.settings.tls.is_some(),
            Protocol::Http1 => false,
        }
    }

    /// One GET for `path` on a connection of its own (outside the breaker's limits, as a new
    /// client's would be), with the pool's protocol and TLS settings; a 2xx or 3xx answer
    /// within `timeout` passes.
    pub async fn probe(&self, path: &str, timeout: Duration) -> bool {
        let shared = &self.shared;
        let exchange = async {
            let mut request = Request::get(path)
                .header(http::header::HOST, shared.authority.as_str())
                .header(http::header::USER_AGENT, "proxyd-health-check")
                .body(super::empty_body())
                .ok()?;
            let response = match shared.dial(false, None).await.ok()? {
                Dialed::Http1(mut sender) => sender.send_request(request).await.ok()?,
                Dialed::H2(conn) => {
                    shared.absolute_form(&mut request);
                    conn.sender.clone().send_request(request).await.ok()?
                }
            };
            let status = response.status();
            Some(status.is_success() || status.is_redirection())
        };
        matches!(
            tokio::time::timeout(timeout, exchange).await,
            Ok(Some(true))
        )
    }

    /// HTTP/1.1 connections waiting idle.
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.shared
            .idle
            .iter()
            .map(|idle| lock(idle).http1.len())
            .sum()
    }

    /// The streams open on each HTTP/2 connection, oldest first.
    #[cfg(test)]
    fn h2_streams(&self) -> Vec<usize> {
        self.shared.lock().h2.open_streams()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let shared = &self.shared;
        // Set before the stacks are emptied: whatever comes back after sees it under the same
        // lock (`put_back`, `share_h2`).
        shared.closed.store(true, Ordering::SeqCst);
        for idle in shared.idle.iter() {
            let mut idle = lock(idle);
            idle.http1.clear();
            idle.h2.clear();
        }
    }
}

impl Shared {
    /// This thread's connections.
    fn lock(&self) -> MutexGuard<'_, Idle> {
        lock(self.idle.get(crate::shards::current()))
    }

    /// Whether requests look for an HTTP/2 stream first: h2 and h2c pools, and `auto` pools
    /// whose upstream picked h2.
    fn speaks_h2(&self) -> bool {
        match self.settings.protocol {
            Protocol::H2 | Protocol::H2c => true,
            Protocol::Http1 => false,
            Protocol::Auto => self.learned_h2.load(Ordering::Relaxed),
        }
    }

    /// A new HTTP/2 connection joins the pool (unless the pool is gone), with the first stream
    /// on it for the request that dialed it.
    fn share_h2(self: &Arc<Self>, conn: h2::Conn) -> h2::Stream {
        self.learned_h2.store(true, Ordering::Relaxed);
        let (stream, reap) = {
            let mut idle = self.lock();
            if self.closed.load(Ordering::SeqCst) {
                return h2::Conns::default().add(conn);
            }
            let stream = idle.h2.add(conn);
            (stream, idle.h2.len() > 1)
        };
        if reap {
            self.start_reaper();
        }
        stream
    }

    /// Starts the task that expires idle connections, unless it runs. Called after a connection
    /// was added: the reaper looks again after it says it stops (`idle::reap`), so one of the two
    /// sees the connection.
    fn start_reaper(self: &Arc<Self>) {
        if !self.reaping.load(Ordering::SeqCst) && !self.reaping.swap(true, Ordering::SeqCst) {
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// This thread's warmest idle HTTP/1.1 connection that is still open.
    fn checkout_http1(&self) -> Option<http1::SendRequest<UpstreamBody>> {
        let mut idle = self.lock();
        while let Some((sender, since)) = idle.http1.pop() {
            if sender.is_ready() && since.elapsed() < self.settings.timeouts.idle() {
                return Some(sender);
            }
        }
        None
    }

    /// Closes the oldest idle HTTP/1.1 connection of another thread, if there is one: its place
    /// under `max_connections` comes back once its thread has closed it.
    fn close_an_idle_elsewhere(&self) {
        let mine = crate::shards::current() % self.idle.iter().count().max(1);
        for (i, idle) in self.idle.iter().enumerate() {
            if i == mine {
                continue;
            }
            let mut idle = lock(idle);
            if !idle.http1.is_empty() {
                drop(idle.http1.remove(0));
                return;
            }
        }
    }

    /// The response, with its connection going back to the pool once the body is read.
    fn http1_response(
        self: &Arc<Self>,
        sender: http1::SendRequest<UpstreamBody>,
        response: Response<Incoming>,
    ) -> Response<PooledBody> {
        let (parts, body) = response.into_parts();
        // A 101 hands the connection over to the tunnel: it never comes back.
        let giveback = (parts.status != http::StatusCode::SWITCHING_PROTOCOLS).then(|| GiveBack {
            shared: self.clone(),
            sender,
        });
        let mut body = PooledBody {
            inner: body,
            giveback,
            stream: None,
        };
        if body.inner.is_end_stream() {
            body.give_back();
        }
        Response::from_parts(parts, body)
    }

    fn put_back(self: &Arc<Self>, sender: http1::SendRequest<UpstreamBody>) {
        {
            let mut idle = self.lock();
            // Requests waiting for a place under `max_connections` get this one's.
            if self.closed.load(Ordering::SeqCst)
                || idle.http1.len() >= self.settings.max_idle
                || self.breaker.has_pending()
            {
                return;
            }
            idle.http1.push((sender, Instant::now()));
        }
        self.start_reaper();
    }

    /// HTTP/2 carries the target as :scheme and :authority: the authority the client asked
    /// for (its Host header, which goes), else the upstream's.
    fn absolute_form(&self, request: &mut Request<UpstreamBody>) {
        if request.uri().scheme().is_some() {
            return;
        }
        let authority = request
            .headers_mut()
            .remove(http::header::HOST)
            .and_then(|host| Authority::try_from(host.as_bytes()).ok())
            .unwrap_or_else(|| self.authority.clone());
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(authority);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }

    /// For HTTP/1.1: a GET's body kept ([`framing::keep_body`]), no `te` (hop-by-hop there), and
    /// back from [`Self::absolute_form`] (HTTP/2 refused it): origin-form, the authority as Host.
    fn origin_form(&self, request: &mut Request<UpstreamBody>) {
        framing::keep_body(request);
        if self.settings.protocol != Protocol::Http1 {
            request.headers_mut().remove(http::header::TE);
        }
        if request.uri().scheme().is_none() {
            return;
        }
        let parts = std::mem::take(request.uri_mut()).into_parts();
        if let Some(authority) = &parts.authority
            && let Ok(host) = http::HeaderValue::from_str(authority.as_str())
        {
            request.headers_mut().insert(http::header::HOST, host);
        }
        *request.uri_mut() = parts
            .path_and_query
            .map_or_else(|| http::Uri::from_static("/"), http::Uri::from);
    }

    /// A new connection (within the breaker's limit when `counted`) and the connect timeout,
    /// speaking what the settings and ALPN say.
    async fn dial(
        &self,
        counted: bool,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Dialed, Error> {
        let permit = match (counted, permit) {
            (_, Some(permit)) => Some(permit),
            (true, None) => match self.breaker.try_connection() {
                Some(permit) => Some(permit),
                None => {
                    // No place: an idle connection of another thread may hold one.
                    self.close_an_idle_elsewhere();
                    Some(self.breaker.connection().await.map_err(Error::connect)?)
                }
            },
            (false, None) => None,
        };
        let timeout = self.settings.timeouts.connect();
        let (stream, alpn) = tokio::time::timeout(
            timeout,
            connect::stream(&self.authority, self.settings.tls.as_ref()),
        )
        .await
        .map_err(|_| Error::connect(DialError::Timeout(timeout)))?
        .map_err(Error::connect)?;
        connect::keep_alive(&stream);
        let io = Counted::new(stream, permit);
        let h2 = match self.settings.protocol {
            Protocol::H2 | Protocol::H2c => true,
            Protocol::Http1 => false,
            Protocol::Auto => alpn == Some(Negotiated::H2),
        };
        if h2 {
            let (interval, ping_timeout) = self.settings.timeouts.h2_ping();
            let (io, settings) = h2::FirstRead::new(io);
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                // Only while requests wait on it: an idle connection's liveness is TCP
                // keepalive's business, and a server enforcing a PING policy (grpc-go) would
                // close a connection PINGed while idle.
                .keep_alive_interval(interval)
                .keep_alive_timeout(ping_timeout)
                .keep_alive_while_idle(false)
                .handshake(io)
                .await
                .map_err(|e| Error::connect(DialError::Handshake(e)))?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Ok(Dialed::H2(h2::Conn::new(
                sender,
                settings,
                self.freed.clone(),
            )))
        } else {
            let (sender, connection) = http1::Builder::new()
                .handshake(io)
                .await
                .map_err(|e| Error::connect(DialError::Handshake(e)))?;
            tokio::spawn(async move {
                if let Err(e) = connection.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
            });
            Ok(Dialed::Http1(sender))
        }
    }
}

/// Locks `mutex`; a thread that panicked holding it left nothing half done (a stack of them).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
