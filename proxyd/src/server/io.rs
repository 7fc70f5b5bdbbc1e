//! The client socket as hyper sees it, with two deadlines hyper has no setting for:
//!
//! - **before the protocol is known**: hyper's auto builder reads the first bytes to tell
//!   HTTP/1.1 from the HTTP/2 preface, without a deadline. A client that sends nothing, or stops
//!   inside the preface, would hold the connection forever. Reads fail with `TimedOut` once
//!   `first_bytes` passes before the protocol is clear (24 bytes of preface, or one byte that
//!   differs from it); from then on hyper's own request-head timeout and proxyd's HTTP/2 idle
//!   timeout take over.
//! - **a client that does not read**: while a write makes no progress for `send_timeout`, it
//!   fails with `TimedOut`, which ends the connection (hyper stops polling a response body when
//!   the socket is full, so a timer on the body would never fire).
//!
//! It also lets an idle HTTP/1.1 connection wait for its next request without holding a buffer
//! ([`Idle`], [`Prefixed::replaying`]): the connection is taken back from hyper, and the bytes
//! hyper had read and not used yet are replayed to the next hyper connection on the socket.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use crate::http::Activity;
use crate::metrics::Metrics;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub struct GuardedIo<T> {
    inner: T,
    /// Bytes of the preface matched so far; `None` once the protocol is clear.
    sniffed: Option<usize>,
    /// The deadline of the first bytes; dropped once the protocol is clear.
    first_bytes: Option<Pin<Box<Sleep>>>,
    send_timeout: Duration,
    /// Armed while a write is blocked.
    send_stall: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
    /// Told when writes block and unblock.
    activity: Arc<Activity>,
}

impl<T> GuardedIo<T> {
    pub fn new(
        inner: T,
        first_bytes: Duration,
        send_timeout: Duration,
        metrics: Arc<Metrics>,
        activity: Arc<Activity>,
    ) -> GuardedIo<T> {
        GuardedIo {
            inner,
            sniffed: Some(0),
            first_bytes: Some(Box::pin(tokio::time::sleep(first_bytes))),
            send_timeout,
            send_stall: None,
            metrics,
            activity,
        }
    }

    /// The protocol is clear: no deadline of this layer on reads any more.
    fn sniffed(&mut self) {
        self.sniffed = None;
        self.first_bytes = None;
    }

    /// Follows the preface over newly read bytes; disarms the deadline once the protocol is
    /// clear.
    fn sniff(&mut self, bytes: &[u8]) {
        let Some(mut at) = self.sniffed else { return };
        for b in bytes {
            if H2_PREFACE.get(at) != Some(b) {
                self.sniffed();
                return;
            }
            at += 1;
            if at == H2_PREFACE.len() {
                self.sniffed();
                return;
            }
        }
        self.sniffed = Some(at);
    }

    /// What a write or flush of the inner socket returned, with the stall timer: progress
    /// disarms it, a blocked write polls it.
    fn watch_progress<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_pending() {
            self.stalled(cx)?;
        } else if self.send_stall.take().is_some() {
            self.activity.set_write_blocked(false);
        }
        polled
    }

    /// Polls the stall timer of a blocked write: `Err(TimedOut)` once it has run out.
    fn stalled(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let timeout = self.send_timeout;
        if self.send_stall.is_none() {
            self.activity.set_write_blocked(true);
        }
        let stall = self
            .send_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.metrics.timed_out("response_send");
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the client read nothing for {timeout:?}"),
                ))
            }
            Poll::Pending => Ok(()),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if me.sniffed.is_some() {
                    let new = &buf.filled()[before..];
                    if new.is_empty() {
                        me.sniffed();
                    } else {
                        me.sniff(new);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = me
                    .first_bytes
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if me.sniffed.is_some() && expired {
                    me.sniffed();
                    me.metrics.timed_out("first_bytes");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request from the client in time",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        let polled = Pin::new(&mut me.inner).poll_write(cx, buf);
        me.watch_progress(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        let polled = Pin::new(&mut me.inner).poll_write_vectored(cx, bufs);
        me.watch_progress(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = &mut *self;
        let polled = Pin::new(&mut me.inner).poll_flush(cx);
        me.watch_progress(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Which protocol a client speaks (`true`: HTTP/2): `negotiated` when TLS's ALPN settled it
/// (RFC 9113 §3.3: a connection that agreed on `h2` must send the preface, one that agreed on
/// `http/1.1` speaks HTTP/1.1, whatever its first bytes); otherwise read from its first bytes:
/// HTTP/2 when they are the connection preface, HTTP/1.1 as soon as one differs. `None`: the
/// client closed or failed first (the deadline of [`GuardedIo`] bounds the wait). The bytes
/// read are replayed to hyper.
pub async fn choose_protocol<T: AsyncRead + Unpin>(
    mut io: GuardedIo<T>,
    negotiated: Option<bool>,
) -> Option<(Prefixed<GuardedIo<T>>, bool)> {
    use tokio::io::AsyncReadExt;
    if let Some(h2) = negotiated {
        return Some((Prefixed::new(io), h2));
    }
    let mut head = [0u8; H2_PREFACE.len()];
    let mut len = 0;
    while len < head.len() {
        match io.read(&mut head[len..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => len += n,
        }
        if head[..len] != H2_PREFACE[..len] {
            break;
        }
    }
    let h2 = head[..len] == H2_PREFACE[..];
    Some((
        Prefixed::new(io).replaying(Bytes::copy_from_slice(&head[..len])),
        h2,
    ))
}

/// A socket with bytes already read from it put back in front.
pub struct Prefixed<T> {
    head: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    fn new(inner: T) -> Prefixed<T> {
        Prefixed {
            head: Bytes::new(),
            inner,
        }
    }

    /// `read`, read through this and not used yet, comes first again, before what is left of
    /// any earlier such bytes (`read` came from them, or from the socket once they were all
    /// read). Copied: `read` may be a view into a buffer much larger than itself, which is
    /// given back here.
    pub fn replaying(mut self, read: Bytes) -> Prefixed<T> {
        if !read.is_empty() {
            let mut both = Vec::with_capacity(read.len() + self.head.len());
            both.extend_from_slice(&read);
            both.extend_from_slice(&self.head);
            self.head = both.into();
        }
        self
    }
}

/// A client's socket, plain or TLS: one type, so that one HTTP server (one copy of hyper's
/// code) serves both.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(crate::tls::ClientTls),
}

impl ClientStream {
    /// Bytes the client sent are already here (TLS plaintext decrypted ahead, a close_notify):
    /// no need to wait for the socket.
    fn buffered(&self) -> bool {
        match self {
            ClientStream::Plain(_) => false,
            ClientStream::Tls(tls) => tls.buffered(),
        }
    }

    /// The TCP socket, whose readiness says the client sent something.
    fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(tcp) => tcp,
            ClientStream::Tls(tls) => tls.tcp(),
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            ClientStream::Tls(tls) => Pin::new(tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            ClientStream::Tls(tls) => Pin::new(tls).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            ClientStream::Tls(tls) => Pin::new(tls).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(tcp) => tcp.is_write_vectored(),
            ClientStream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            ClientStream::Tls(tls) => Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            ClientStream::Tls(tls) => Pin::new(tls).poll_shutdown(cx),
        }
    }
}

impl Prefixed<GuardedIo<ClientStream>> {
    /// Ready once the client has sent something (or closed): bytes to serve. A poll rather
    /// than a future: an idle connection waits in it, and keeps no waiter of its own (the
    /// socket's registration keeps the waker).
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.head.is_empty() || self.inner.inner.buffered() {
            return Poll::Ready(Ok(()));
        }
        self.inner.inner.tcp().poll_read_ready(cx)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        if !me.head.is_empty() {
            let n = me.head.len().min(buf.remaining());
            buf.put_slice(&me.head[..n]);
            me.head.advance(n);
            if me.head.is_empty() {
                // Gives the allocation back.
                me.head = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn guarded<T>(io: T) -> GuardedIo<T> {
        GuardedIo::new(
            io,
            Duration::from_millis(200),
            Duration::from_millis(200),
            Arc::new(Metrics::new()),
            Arc::new(Activity::new()),
        )
    }

    #[tokio::test]
    async fn silence_and_a_stalled_preface_time_out_but_a_request_disarms_the_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = guarded(server);
        let mut buf = [0u8; 64];
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        let (mut client2, server) = tokio::io::duplex(64);
        let mut io = guarded(server);
        client2.write_all(b"PRI * HTTP").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 10);
        assert_eq!(
            io.read(&mut buf).await.unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );

        let (mut client3, server) = tokio::io::duplex(64);
        let mut io = guarded(server);
        client3.write_all(b"G").await.unwrap();
        assert_eq!(io.read(&mut buf).await.unwrap(), 1);
        // HTTP/1 is clear after one byte: no deadline of this layer any more.
        let read = tokio::time::timeout(Duration::from_millis(600), io.read(&mut buf)).await;
        assert!(read.is_err(), "still waiting: hyper's own timeout applies");
        drop((client, client2));
    }

    #[tokio::test]
    async fn the_protocol_is_chosen_from_the_first_bytes_which_are_replayed() {
        for (sent, h2) in [
            (&b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"[..], false),
            (&b"PRI * HTTP/1.1\r\n\r\n"[..], false),
            (&H2_PREFACE[..], true),
        ] {
            let (mut client, server) = tokio::io::duplex(64);
            client.write_all(sent).await.unwrap();
            drop(client);
            let (mut io, chosen) = choose_protocol(guarded(server), None).await.unwrap();
            assert_eq!(chosen, h2, "{sent:?}");
            let mut replayed = Vec::new();
            io.read_to_end(&mut replayed).await.unwrap();
            assert_eq!(replayed, sent);
        }
        // Closed inside the preface: nothing to serve.
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(&H2_PREFACE[..5]).await.unwrap();
        drop(client);
        assert!(choose_protocol(guarded(server), None).await.is_none());
    }

    #[tokio::test]
    async fn a_connection_whose_writes_are_blocked_is_not_due_to_park_until_they_go_through() {
        let activity = Arc::new(Activity::new());
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = GuardedIo::new(
            server,
            Duration::from_secs(5),
            Duration::from_secs(5),
            Arc::new(Metrics::new()),
            activity.clone(),
        );
        // A request came and went: only a blocked write keeps the connection from parking.
        drop(activity.request_started());
        let park = Duration::from_millis(20);
        let write = tokio::time::timeout(Duration::from_millis(100), io.write_all(&[7u8; 256]));
        assert!(
            write.await.is_err(),
            "the client reads nothing: the write blocks"
        );
        let never = Duration::from_secs(3600);
        let due = tokio::time::timeout(
            Duration::from_millis(300),
            activity.due(never, Some((park, 0)), never),
        );
        assert!(due.await.is_err(), "due to park while a write is blocked");
        let mut taken = [0u8; 256];
        client.read_exact(&mut taken[..64]).await.unwrap();
        io.write_all(&[7u8; 8]).await.unwrap();
        let due = tokio::time::timeout(
            Duration::from_secs(2),
            activity.due(never, Some((park, 0)), never),
        );
        assert_eq!(
            due.await.ok(),
            Some(crate::http::Due::Park),
            "due once the write went through"
        );
        // No request in this round yet: not due.
        let due = tokio::time::timeout(
            Duration::from_millis(100),
            activity.due(never, Some((park, 1)), never),
        );
        assert!(
            due.await.is_err(),
            "due to park before a request of its round"
        );
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_times_out() {
        let (_client, server) = tokio::io::duplex(16);
        let mut io = guarded(server);
        let e = io.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
