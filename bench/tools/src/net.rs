//! Client connections: plain TCP or TLS (rustls with the ring provider).
//!
//! TLS here trusts ANY server certificate: this is a benchmark load tool that
//! talks to a proxy on loopback with a throw-away self-signed certificate, so
//! the certificate chain and name are not checked (see `AcceptAnyCert`). The
//! handshake signature is still verified, so the client does the same
//! handshake work a real client would.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket under the stream.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Accepts every server certificate (benchmark tool only, see the module doc);
/// checks the handshake signatures with the provider's algorithms.
#[derive(Debug)]
struct AcceptAnyCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Where and how to do TLS.
#[derive(Clone)]
pub struct TlsTarget {
    connector: TlsConnector,
    sni: ServerName<'static>,
}

impl TlsTarget {
    /// A client config offering ALPN `http/1.1` and trusting any certificate.
    /// `resume`: allow TLS session resumption (rustls' default in-memory cache).
    pub fn new(sni: &str, resume: bool) -> Result<TlsTarget, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = AcceptAnyCert(provider.signature_verification_algorithms);
        let mut cfg = ClientConfig::builder_with_provider(Arc::<CryptoProvider>::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS config: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        if !resume {
            cfg.resumption = rustls::client::Resumption::disabled();
        }
        let sni =
            ServerName::try_from(sni.to_string()).map_err(|e| format!("--sni {sni:?}: {e}"))?;
        Ok(TlsTarget {
            connector: TlsConnector::from(Arc::new(cfg)),
            sni,
        })
    }
}

/// Connects (TCP_NODELAY on) and, with `tls`, does the TLS handshake.
pub async fn connect(addr: SocketAddr, tls: Option<&TlsTarget>) -> io::Result<Stream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok(Stream::Plain(tcp)),
        Some(t) => {
            let s = t.connector.connect(t.sni.clone(), tcp).await?;
            Ok(Stream::Tls(Box::new(s)))
        }
    }
}

/// Resolves `host:port` (a literal address needs no lookup).
pub async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("resolving {addr:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("resolving {addr:?}: no address"))
}

/// Counts distinct error messages, keeping the first few.
#[derive(Default, Clone)]
pub struct ErrorLog {
    pub total: u64,
    pub kinds: Vec<(String, u64)>,
}

impl ErrorLog {
    const KEEP: usize = 8;

    pub fn add(&mut self, msg: impl std::fmt::Display) {
        self.total += 1;
        let msg = msg.to_string();
        if let Some(k) = self.kinds.iter_mut().find(|(m, _)| *m == msg) {
            k.1 += 1;
        } else if self.kinds.len() < Self::KEEP {
            self.kinds.push((msg, 1));
        }
    }

    pub fn merge(&mut self, o: &ErrorLog) {
        self.total += o.total;
        for (m, n) in &o.kinds {
            if let Some(k) = self.kinds.iter_mut().find(|(x, _)| x == m) {
                k.1 += n;
            } else if self.kinds.len() < Self::KEEP {
                self.kinds.push((m.clone(), *n));
            }
        }
    }

    /// Writes a summary to stderr.
    pub fn report(&self, tool: &str, what: &str) {
        if self.total == 0 {
            return;
        }
        eprintln!(
            "{tool}: {} {what} failed; first kinds of error:",
            self.total
        );
        for (m, n) in &self.kinds {
            eprintln!("{tool}:   {n} x {m}");
        }
    }
}
