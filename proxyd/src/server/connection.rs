//! One client connection, from its accept to its end: the TLS handshake, the protocol, hyper's
//! connection under proxyd's deadlines, and an idle HTTP/1.1 connection parked without hyper.
//!
//! A connection's task is as large as the largest state of its future, and an idle connection
//! keeps all of it: [`Connection::run`] is written to keep that small (768 bytes of task).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::io;
use super::spread::Given;
use super::{Permit, Settings};
use crate::http::{Activity, ClientConn, Due, Proxy};
use crate::tls::Terminator;

/// A client connection being served, whichever the protocol.
trait Served: Future<Output = Result<(), hyper::Error>> + Send {
    /// Stops taking requests; those in progress finish (HTTP/2: GOAWAY).
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> Served for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Send,
    S::Future: Send,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B> Served for hyper::server::conn::http2::Connection<I, S, TokioExecutor>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Send,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

/// One accepted connection and what serving it needs.
pub(super) struct Connection {
    /// Its place under the connection caps, shared with an Upgrade tunnel it turns into.
    pub(super) permit: Arc<Permit>,
    pub(super) peer: SocketAddr,
    pub(super) proxy: Arc<Proxy>,
    /// Those in force at its accept.
    pub(super) settings: Arc<Settings>,
    pub(super) shutdown: CancellationToken,
}

impl Connection {
    /// The connection's task: [`Connection::run`], until it ends or `hard_stop` is cancelled
    /// (the drain deadline passed); `given` counts it as its loop's until then.
    pub(super) fn task(
        self,
        stream: TcpStream,
        tls: Option<Arc<Terminator>>,
        hard_stop: &CancellationToken,
        given: Given,
    ) -> impl Future<Output = ()> + Send + 'static {
        UntilStopped {
            run: self.run(stream, tls),
            stop: hard_stop.clone().cancelled_owned(),
            _given: given,
        }
    }

    /// TLS handshake first when the listener has one, then HTTP until either side closes.
    ///
    /// Not an `async fn`, and one future for the whole connection: its task is as large as
    /// the largest state of this future, and an idle connection keeps all of it. An `async
    /// fn` keeps its arguments twice (as arguments and as locals), a nested one adds its own,
    /// and a local bound in the function's outer scope keeps its room after it is moved on;
    /// the large states (the handshake, hyper's connection) are boxed.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn would keep its arguments twice in every idle connection's task"
    )]
    fn run(
        self,
        stream: TcpStream,
        tls: Option<Arc<Terminator>>,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let metrics = self.proxy.metrics().clone();
            let activity = Arc::new(Activity::new());
            let (io, client) = {
                let (stream, session) = match tls {
                    None => (io::ClientStream::Plain(stream), None),
                    Some(tls) => {
                        let deadline = self.settings.limits.tls_handshake_timeout;
                        let handshake = tokio::select! {
                            handshake = Box::pin(tls.handshake(stream, deadline)) => handshake,
                            // A drain does not wait for handshakes.
                            () = self.shutdown.cancelled() => return,
                        };
                        match handshake {
                            Ok((stream, session)) => {
                                metrics.tls_handshake(session.resumed);
                                (io::ClientStream::Tls(stream), Some(session))
                            }
                            Err(e) => {
                                if matches!(e, crate::tls::HandshakeError::Timeout(_)) {
                                    metrics.timed_out("tls_handshake");
                                }
                                tracing::debug!(client = %self.peer, error = %e, "TLS handshake failed");
                                return;
                            }
                        }
                    }
                };
                let io = io::GuardedIo::new(
                    stream,
                    self.settings.first_bytes,
                    self.settings.limits.response_send_timeout,
                    metrics.clone(),
                    activity.clone(),
                );
                let client = Arc::new(ClientConn {
                    peer: self.peer,
                    tls: session,
                    activity: activity.clone(),
                    permit: self.permit.clone(),
                });
                (io, client)
            };
            let negotiated = client.tls.as_ref().and_then(|s| s.h2);
            let proxy = self.proxy.clone();
            let service = service_fn(move |req| {
                let (proxy, client) = (proxy.clone(), client.clone());
                async move { Ok::<_, Infallible>(proxy.handle(req, &client).await) }
            });
            // Boxed: the task keeps no room for it while it waits for requests.
            let Some((mut io, h2)) = Box::pin(io::choose_protocol(io, negotiated)).await else {
                return;
            };
            if h2 {
                let mut connection = Box::pin(
                    self.settings
                        .builders
                        .h2
                        .serve_connection(TokioIo::new(io), service),
                );
                let idle_timeout = self.settings.limits.http2_idle_timeout;
                Box::pin(self.drive(connection.as_mut(), &activity, idle_timeout, None)).await;
                return;
            }
            // An idle HTTP/1.1 connection lives for `request_header_timeout` after its last
            // request (or its accept), as it does in hyper, whose header timer runs while it
            // waits, and whatever the rounds (a byte sent before the deadline starts a round
            // whose fresh header timer must not extend it); never past `http2_idle_timeout`.
            let idle_timeout = self
                .settings
                .first_bytes
                .min(self.settings.limits.http2_idle_timeout);
            // HTTP/1.1 in rounds: a round ends when the connection has waited for its next
            // request for `PARK_AFTER`; hyper's connection (its buffers, its state) is dropped,
            // the bytes it had read and not used are kept, and the next round starts when the
            // client sends more.
            loop {
                io = {
                    let mut connection = Box::pin(
                        self.settings
                            .builders
                            .h1
                            .serve_connection(TokioIo::new(io), service.clone())
                            .with_upgrades(),
                    );
                    let started = activity.requests_started();
                    // Boxed, as the connection is: a parked connection keeps neither.
                    let round = Box::pin(self.drive(
                        connection.as_mut(),
                        &activity,
                        idle_timeout,
                        Some(started),
                    ));
                    if let Round::Closed = round.await {
                        return;
                    }
                    // `None`: upgraded, the tunnel has the socket.
                    let Some(parts) = Pin::into_inner(connection).into_parts() else {
                        return;
                    };
                    parts.io.into_inner().replaying(parts.read_buf)
                };
                let _idle = metrics.connection_idle();
                let more = loop {
                    let Some(deadline) = activity.idle_deadline(idle_timeout) else {
                        metrics.timed_out("idle");
                        tracing::debug!(client = %self.peer, timeout = ?idle_timeout, "idle connection closed");
                        break false;
                    };
                    tokio::select! {
                        ready = std::future::poll_fn(|cx| io.poll_readable(cx)) => break ready.is_ok(),
                        () = self.shutdown.cancelled() => break false,
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                };
                if !more {
                    // TLS: a close_notify first, if the client takes it.
                    let send_timeout = self.settings.limits.response_send_timeout;
                    let _ = tokio::time::timeout(send_timeout, io.shutdown()).await;
                    return;
                }
            }
        }
    }

    /// Serves on `connection` until it ends, under the connection's deadlines (after
    /// `idle_timeout` without a request: HTTP/2 closed gracefully, HTTP/1.1 at once); with `park`
    /// (HTTP/1.1: the requests started before this round), until the connection may wait
    /// without hyper ([`Due::Park`]).
    async fn drive<C: Served + ?Sized>(
        &self,
        mut connection: Pin<&mut C>,
        activity: &Activity,
        idle_timeout: Duration,
        park: Option<u64>,
    ) -> Round {
        let metrics = self.proxy.metrics();
        let mut closing = false;
        let park = park.map(|started| (PARK_AFTER, started));
        let body_timeout = self.settings.limits.request_body_timeout;
        let send_timeout = self.settings.limits.response_send_timeout;
        let min_rate = self.settings.limits.response_min_rate;
        let result = loop {
            tokio::select! {
                // First: a connection that has ended is not parked.
                biased;
                result = connection.as_mut() => break result,
                // A client that keeps responses waiting, taking them slower than the minimum
                // rate, loses the connection: its responses' upstream connections and places
                // go with it.
                () = activity.slow_reader(send_timeout, min_rate.unwrap_or(0)), if min_rate.is_some() => {
                    metrics.timed_out("response_rate");
                    tracing::debug!(client = %self.peer, "client reads responses too slowly; connection closed");
                    break Ok(());
                }
                () = self.shutdown.cancelled(), if !closing => {
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
                due = activity.due(idle_timeout, park, body_timeout), if !closing => match due {
                    Due::Idle => {
                        metrics.timed_out("idle");
                        tracing::debug!(client = %self.peer, timeout = ?idle_timeout, "idle connection closed");
                        // HTTP/1.1: closed as hyper's header timer would (a request head begun
                        // in this round must not keep it open); HTTP/2: GOAWAY.
                        if park.is_some() {
                            break Ok(());
                        }
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    Due::Park => return Round::Park,
                    // Its response is done; the rest of its body can go nowhere.
                    Due::BodyStalled => {
                        metrics.timed_out("request_body");
                        tracing::debug!(client = %self.peer, timeout = ?body_timeout, "request body stalled after its response; connection closed");
                        break Ok(());
                    }
                },
            }
        };
        if let Err(e) = result {
            tracing::debug!(client = %self.peer, error = %e, "connection ended with an error");
        }
        Round::Closed
    }
}

pin_project_lite::pin_project! {
    /// A connection's future until the drain deadline passes. A future of its own rather than
    /// an `async` block with a `select!`: the block would keep the connection's future twice
    /// (as captured, and in the `select!`), in a task every idle connection keeps.
    struct UntilStopped<F> {
        #[pin]
        run: F,
        #[pin]
        stop: tokio_util::sync::WaitForCancellationFutureOwned,
        // Counted as this loop's connection until it ends.
        _given: Given,
    }
}

impl<F: Future<Output = ()>> Future for UntilStopped<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let this = self.project();
        if this.run.poll(cx).is_ready() {
            return std::task::Poll::Ready(());
        }
        this.stop.poll(cx)
    }
}

/// How long an HTTP/1.1 connection waits for its next request before it gives its buffers back
/// (nginx gives them back at once; a connection busy with requests keeps them).
const PARK_AFTER: Duration = Duration::from_secs(1);

/// How a round of serving a connection ended.
enum Round {
    /// The connection is done.
    Closed,
    /// The connection waits for a request: it can do so without hyper.
    Park,
}
