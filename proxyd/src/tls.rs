//! TLS termination for listeners with `tls = true`: one rustls `ServerConfig` (ring provider,
//! TLS 1.2 and 1.3, ALPN h2 and http/1.1) whose certificate resolver asks [`Certificates`] (the
//! runtime serving now) on every handshake, and the handshake of each connection under one
//! deadline. Nothing here knows routing: the runtime implements [`Certificates`].
//!
//! The certificate is looked up on every handshake, so a reload that brings a new certificate
//! applies to the next handshake at once, while connections already established keep the one
//! they negotiated.
//!
//! A handshake offering the ALPN protocol `acme-tls/1` is an ACME TLS-ALPN-01 validation
//! (RFC 8737): it gets the pending challenge's certificate for its SNI, and the connection ends
//! with the handshake.

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::{
    Accepted, Acceptor, ClientHello, ResolvesServerCert, UnbufferedServerConnection,
};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

mod stream;
pub use stream::TlsStream;

/// Where the terminator finds certificates, asked on every handshake.
pub trait Certificates: std::fmt::Debug + Send + Sync + 'static {
    /// The site whose certificate answers for `server_name` (SNI), and that certificate.
    fn site(&self, server_name: Option<&str>) -> Option<(String, Arc<CertifiedKey>)>;
    /// The certificate of a pending ACME TLS-ALPN-01 challenge for `server_name`.
    fn alpn_challenge(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>>;
    /// Whether a handshake may resume a session (`proxy.tls_session_resumption`).
    fn session_resumption(&self) -> bool;
}

/// A fatal `unrecognized_name` alert (RFC 6066 §3) as a plaintext record: nothing has been
/// negotiated yet when proxyd finds it has no certificate for the name asked.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];

/// ALPN protocols offered, most preferred first.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The ALPN protocol of ACME TLS-ALPN-01 validation.
const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// A client's TLS stream, boxed: rustls's connection state is over a kilobyte, and the
/// connection's task moves it from the handshake to HTTP; as a box it is one pointer in the
/// task's frame, which an idle connection keeps.
pub type ClientTls = Box<TlsStream>;

/// Why a TLS connection did not get as far as HTTP.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake not complete within {0:?}")]
    Timeout(Duration),
    #[error("no certificate for server name {0:?} (and no default_tls_site with one)")]
    UnknownServerName(Option<String>),
    #[error("TLS handshake failed: {0}")]
    Failed(#[from] std::io::Error),
    /// Not a failure: an ACME validation handshake was answered; no HTTP follows.
    #[error("answered an ACME TLS-ALPN-01 validation for {0:?}")]
    AcmeChallenge(Option<String>),
}

/// What the handshake settled, for the request path.
#[derive(Debug, Clone)]
pub struct Session {
    /// The site whose certificate the connection got; requests for other sites get 421.
    pub site: String,
    /// What ALPN agreed on: `Some(true)` h2, `Some(false)` http/1.1, `None` nothing.
    pub h2: Option<bool>,
    /// The handshake resumed an earlier session (a ticket) rather than a full one.
    pub resumed: bool,
}

/// Terminates TLS for every TLS listener of this proxyd.
pub struct Terminator {
    /// Sessions resume: TLS 1.3 tickets and the TLS 1.2 session cache (rustls's, in memory).
    config: Arc<ServerConfig>,
    /// Every handshake is a full one: no tickets, no cache.
    full_only: Arc<ServerConfig>,
    certificates: Arc<dyn Certificates>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Terminator {
    pub fn new(certificates: Arc<dyn Certificates>) -> Result<Terminator, rustls::Error> {
        // The provider is passed explicitly: no process-wide default to install or race on.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(CurrentCertificates(certificates.clone())));
        config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // The server's order (rustls': AES-GCM first, then ChaCha20), as TLS scanners and most
        // hardening guides expect; every suite offered is a forward-secret AEAD either way.
        config.ignore_client_order = true;
        let mut full_only = config.clone();
        full_only.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        full_only.send_tls13_tickets = 0;
        Ok(Terminator {
            config: Arc::new(config),
            full_only: Arc::new(full_only),
            certificates,
            provider,
        })
    }

    /// Runs the server side of the handshake on `tcp`, within `deadline` (the
    /// `tls_handshake_timeout`: like the request-head timeout, it bounds what a slow or silent
    /// client can hold).
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        deadline: Duration,
    ) -> Result<(ClientTls, Session), HandshakeError> {
        tokio::time::timeout(deadline, self.negotiate(tcp))
            .await
            .unwrap_or(Err(HandshakeError::Timeout(deadline)))
    }

    /// Reads the ClientHello first, so that a name no site can answer for gets
    /// `unrecognized_name` rather than rustls's generic refusal; then finishes the handshake,
    /// whose certificate the resolver picks from the runtime by the same rule.
    async fn negotiate(&self, tcp: TcpStream) -> Result<(ClientTls, Session), HandshakeError> {
        let mut incoming = Vec::new();
        let hello = read_client_hello(&tcp, &mut incoming).await?;
        let server_name = hello.client_hello().server_name().map(str::to_owned);
        let acme = hello
            .client_hello()
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        drop(hello);
        if acme {
            return self.answer_challenge(tcp, incoming, server_name).await;
        }
        let site = self
            .certificates
            .site(server_name.as_deref())
            .map(|(site, _)| site);
        let Some(site) = site else {
            refuse(tcp).await;
            return Err(HandshakeError::UnknownServerName(server_name));
        };
        let config = if self.certificates.session_resumption() {
            self.config.clone()
        } else {
            self.full_only.clone()
        };
        let stream = handshake(config, tcp, incoming).await?;
        let conn = stream.connection();
        let h2 = conn.alpn_protocol().map(|p| p == b"h2");
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        Ok((stream, Session { site, h2, resumed }))
    }
}

impl Terminator {
    /// Completes a TLS-ALPN-01 validation handshake with the pending challenge's certificate
    /// for the SNI (or refuses it when there is none), then closes the connection.
    async fn answer_challenge(
        &self,
        tcp: TcpStream,
        incoming: Vec<u8>,
        server_name: Option<String>,
    ) -> Result<(ClientTls, Session), HandshakeError> {
        let Some(key) = self.certificates.alpn_challenge(server_name.as_deref()) else {
            refuse(tcp).await;
            return Err(HandshakeError::UnknownServerName(server_name));
        };
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(std::io::Error::other)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(key)));
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        let mut stream = handshake(Arc::new(config), tcp, incoming).await?;
        let _ = stream.shutdown().await;
        tracing::info!(
            name = server_name.as_deref().unwrap_or("-"),
            "answered an ACME TLS-ALPN-01 validation"
        );
        Err(HandshakeError::AcmeChallenge(server_name))
    }
}

/// Reads from `tcp` into `incoming` until it holds a whole ClientHello, which rustls's
/// acceptor parses from a copy: the bytes stay in `incoming` for the connection's handshake.
/// A ClientHello rustls refuses gets its alert.
pub(crate) async fn read_client_hello(
    tcp: &TcpStream,
    incoming: &mut Vec<u8>,
) -> Result<Accepted, HandshakeError> {
    let mut acceptor = Acceptor::default();
    let mut fed = 0;
    loop {
        tcp.readable().await?;
        incoming.reserve(4096);
        match tcp.try_read_buf(incoming) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the client closed the connection before its ClientHello",
                )
                .into());
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        // The acceptor takes a record at a time until it has a message begun (a ClientHello of
        // several records): it processes what it took before it takes more.
        while fed < incoming.len() {
            let mut unread = &incoming[fed..];
            match acceptor.read_tls(&mut unread)? {
                0 => break,
                n => fed += n,
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => return Ok(accepted),
                Ok(None) => {}
                Err((e, mut alert)) => {
                    let mut bytes = Vec::new();
                    let _ = alert.write_all(&mut bytes);
                    let _ = tcp.try_write(&bytes);
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e).into());
                }
            }
        }
    }
}

/// The handshake under `config`, from the ClientHello in `incoming` on.
pub(crate) async fn handshake(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
    incoming: Vec<u8>,
) -> Result<ClientTls, HandshakeError> {
    let conn = UnbufferedServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut stream = Box::new(TlsStream::new(conn, tcp, incoming));
    std::future::poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

/// Always the same certificate: the challenge's.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Sends `unrecognized_name` and closes; the client may already be gone.
async fn refuse(mut tcp: TcpStream) {
    let _ = tcp.write_all(&UNRECOGNIZED_NAME_ALERT).await;
    let _ = tcp.shutdown().await;
}

/// The certificate resolver: the certificates in force at the handshake.
#[derive(Debug)]
struct CurrentCertificates(Arc<dyn Certificates>);

impl ResolvesServerCert for CurrentCertificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.site(hello.server_name()).map(|(_, key)| key)
    }
}
