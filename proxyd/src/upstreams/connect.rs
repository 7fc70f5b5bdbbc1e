//! Dialing an upstream: DNS (none for an IP literal; cached, in `dns`), TCP to the resolved
//! addresses Happy-Eyeballs style with TCP_NODELAY, TLS for https:// upstreams, and the place the
//! connection takes under the breaker's `max_connections`.

mod dns;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Authority;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::client::TlsStream;

/// What an upstream connection speaks once set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    Http1,
    H2,
}

/// TLS to one upstream: the client config (roots, client certificate, ALPN, session cache for
/// resumption, shared by every connection of the pool) and the name to verify.
#[derive(Clone)]
pub struct TlsConnector {
    pub config: Arc<rustls::ClientConfig>,
    /// `None`: the upstream URL's host.
    pub server_name: Option<ServerName<'static>>,
}

/// A dial failure and where it happened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("resolving {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("{0} resolves to no address")]
    NoAddress(String),
    #[error("tcp connect: {0}")]
    Tcp(std::io::Error),
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("HTTP handshake: {0}")]
    Handshake(hyper::Error),
}

impl DialError {
    /// For a failed TLS handshake, a short reason fit for a metric label.
    pub fn tls_reason(&self) -> Option<&'static str> {
        let DialError::Tls(e) = self else { return None };
        let rustls = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        Some(match rustls {
            Some(rustls::Error::InvalidCertificate(cert)) => match cert {
                rustls::CertificateError::UnknownIssuer => "unknown_issuer",
                rustls::CertificateError::Expired
                | rustls::CertificateError::ExpiredContext { .. } => "expired",
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. } => "name_mismatch",
                _ => "bad_certificate",
            },
            Some(rustls::Error::AlertReceived(_)) => "alert_received",
            Some(rustls::Error::NoApplicationProtocol) => "no_application_protocol",
            Some(_) => "protocol",
            None => "io",
        })
    }
}

/// Resolves `authority` (an IP literal needs no lookup; a name goes through the cache in
/// `dns`) and connects to the first address that answers (`connect_any`), with TCP_NODELAY.
pub async fn tcp(authority: &Authority, default_port: u16) -> Result<TcpStream, DialError> {
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(default_port);
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Arc<[SocketAddr]> = match literal.parse::<IpAddr>() {
        Ok(ip) => Arc::new([SocketAddr::new(ip, port)]),
        Err(_) => dns::system()
            .resolve(host, port, std::time::Instant::now())
            .await
            .map_err(|e| DialError::Resolve(host.to_owned(), e))?,
    };
    if addresses.is_empty() {
        return Err(DialError::NoAddress(host.to_owned()));
    }
    connect_any(&addresses).await
}

/// RFC 8305's Connection Attempt Delay: how long an attempt has before the next address is
/// tried alongside it. A blackholed address (a broken IPv6 route, a full accept queue) never
/// fails by itself, so without this it would use up the whole connect timeout.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Happy Eyeballs (RFC 8305 sections 4 to 6) over `addresses`: families interleaved, a new
/// attempt every `ATTEMPT_DELAY` or as soon as one fails, earlier ones kept running; the first
/// connection wins (with TCP_NODELAY) and the others are dropped. When all fail, the last error.
/// The caller's connect timeout bounds the whole.
pub async fn connect_any(addresses: &[SocketAddr]) -> Result<TcpStream, DialError> {
    connect_staggered(addresses, ATTEMPT_DELAY).await
}

type Attempt = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + Send>>;

/// What woke `connect_staggered`.
enum Event {
    Connected(TcpStream),
    Failed(std::io::Error),
    DelayPassed,
}

async fn connect_staggered(
    addresses: &[SocketAddr],
    delay: Duration,
) -> Result<TcpStream, DialError> {
    let mut queue = interleave(addresses).into_iter();
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut last_error = None;
    let timer = tokio::time::sleep(delay);
    tokio::pin!(timer);
    loop {
        if attempts.is_empty() {
            let Some(address) = queue.next() else {
                return Err(last_error.map_or_else(
                    || DialError::Tcp(std::io::Error::other("no address to connect to")),
                    DialError::Tcp,
                ));
            };
            attempts.push(Box::pin(TcpStream::connect(address)));
            timer.as_mut().reset(tokio::time::Instant::now() + delay);
        }
        let more = !queue.as_slice().is_empty();
        let event = std::future::poll_fn(|cx| {
            for i in 0..attempts.len() {
                if let Poll::Ready(result) = attempts[i].as_mut().poll(cx) {
                    drop(attempts.swap_remove(i));
                    return Poll::Ready(match result {
                        Ok(tcp) => Event::Connected(tcp),
                        Err(e) => Event::Failed(e),
                    });
                }
            }
            if more && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::DelayPassed);
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Connected(tcp) => {
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            // A failure starts the next attempt at once (the top of the loop, when none is
            // left running; here otherwise), with a new delay.
            Event::Failed(e) => last_error = Some(e),
            Event::DelayPassed => {}
        }
        if !attempts.is_empty()
            && let Some(address) = queue.next()
        {
            attempts.push(Box::pin(TcpStream::connect(address)));
            timer.as_mut().reset(tokio::time::Instant::now() + delay);
        }
    }
}

/// `addresses` with the families alternating, starting with the family of the first one (the
/// resolver's preference), each family in the resolver's order (RFC 8305 section 4).
fn interleave(addresses: &[SocketAddr]) -> Vec<SocketAddr> {
    let first_is_v6 = addresses.first().is_some_and(SocketAddr::is_ipv6);
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for address in addresses {
        match address.is_ipv6() == first_is_v6 {
            true => first.push(*address),
            false => second.push(*address),
        }
    }
    let mut ordered = Vec::with_capacity(addresses.len());
    let (mut first, mut second) = (first.into_iter(), second.into_iter());
    loop {
        match (first.next(), second.next()) {
            (None, None) => return ordered,
            (a, b) => ordered.extend(a.into_iter().chain(b)),
        }
    }
}

/// TCP, then TLS when `tls` is set; what ALPN agreed on (HTTP/1.1 when nothing was).
pub async fn stream(
    authority: &Authority,
    tls: Option<&TlsConnector>,
) -> Result<(Stream, Option<Negotiated>), DialError> {
    let Some(tls) = tls else {
        return Ok((Stream::Tcp(tcp(authority, 80).await?), None));
    };
    let name = match &tls.server_name {
        Some(name) => name.clone(),
        None => {
            let host = authority.host();
            let literal = host.trim_start_matches('[').trim_end_matches(']');
            ServerName::try_from(literal.to_owned()).map_err(|_| {
                DialError::Tls(std::io::Error::other(format!(
                    "invalid server name {host:?}"
                )))
            })?
        }
    };
    let tcp = tcp(authority, 443).await?;
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let stream = connector.connect(name, tcp).await.map_err(DialError::Tls)?;
    let negotiated = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => Some(Negotiated::H2),
        Some(_) => Some(Negotiated::Http1),
        None => None,
    };
    Ok((Stream::Tls(Box::new(stream)), negotiated))
}

/// TCP keepalive and `TCP_USER_TIMEOUT` on an upstream socket: a peer that vanished without a
/// FIN is found after 30 s idle and three unanswered probes 10 s apart, and data it never
/// acknowledges fails the connection after 30 s instead of about 15 minutes of retransmissions.
pub fn keep_alive(stream: &Stream) {
    let tcp = match stream {
        Stream::Tcp(tcp) => tcp,
        Stream::Tls(tls) => tls.get_ref().0,
    };
    let socket = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(UPSTREAM_KEEPALIVE_IDLE)
        .with_interval(UPSTREAM_KEEPALIVE_PROBE_INTERVAL)
        .with_retries(UPSTREAM_KEEPALIVE_PROBES);
    if let Err(e) = socket
        .set_tcp_keepalive(&keepalive)
        .and_then(|()| socket.set_tcp_user_timeout(Some(UPSTREAM_USER_TIMEOUT)))
    {
        tracing::debug!(error = %e, "cannot set TCP keepalive on an upstream connection");
    }
}

const UPSTREAM_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const UPSTREAM_KEEPALIVE_PROBE_INTERVAL: Duration = Duration::from_secs(10);
const UPSTREAM_KEEPALIVE_PROBES: u32 = 3;
const UPSTREAM_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// The system's trusted roots, loaded once (from the usual places, or SSL_CERT_FILE /
/// SSL_CERT_DIR); certificates that fail to load are skipped, as OpenSSL does.
pub fn system_roots() -> Arc<rustls::RootCertStore> {
    static ROOTS: OnceLock<Arc<rustls::RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let loaded = rustls_native_certs::load_native_certs();
            for e in &loaded.errors {
                tracing::warn!(error = %e, "loading the system's trusted certificates");
            }
            let mut roots = rustls::RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
            tracing::debug!(added, ignored, "system roots for upstream TLS");
            Arc::new(roots)
        })
        .clone()
}

/// A TCP or TLS upstream connection.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// An upstream connection that holds its place under `max_connections` until it closes (a
/// WebSocket tunnel included: the permit travels with the socket).
pub struct Counted {
    io: TokioIo<Stream>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Counted {
    pub fn new(stream: Stream, permit: Option<OwnedSemaphorePermit>) -> Counted {
        Counted {
            io: TokioIo::new(stream),
            _permit: permit,
        }
    }
}

impl hyper::rt::Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Counted {
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

#[cfg(test)]
mod tests;
