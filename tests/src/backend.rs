//! Backends as real deployments have them, on 127.0.0.1 port 0: HTTPS with a private CA (and,
//! for mutual TLS, client certificates it verifies), HTTP/2 over TLS (ALPN) or with prior
//! knowledge (h2c), and gRPC services (tonic's health and reflection services). Each records
//! what it received and answers `backend <name> <HTTP version>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::tls::{Issued, TestCa};

/// What a backend received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub version: http::Version,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    /// The connection came with a client certificate.
    pub client_certificate: bool,
    /// The connection's TLS handshake resumed an earlier session.
    pub resumed: bool,
}

/// An HTTP/1.1 and HTTP/2 backend, plaintext or TLS.
pub struct Backend {
    pub addr: SocketAddr,
    tls: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    shutdown: CancellationToken,
}

/// How a TLS backend is set up.
pub struct BackendTls<'a> {
    pub certificate: &'a Issued,
    /// Offered ALPN protocols ("h2", "http/1.1").
    pub alpn: &'a [&'a str],
    /// Mutual TLS: client certificates must chain to this CA.
    pub client_ca: Option<&'a TestCa>,
}

impl Backend {
    /// A backend speaking HTTP/1.1 and h2c (prior knowledge) on plain TCP.
    pub async fn plain(name: &str) -> Backend {
        Backend::start(name, None).await
    }

    /// A backend behind TLS.
    pub async fn tls(name: &str, tls: BackendTls<'_>) -> Backend {
        Backend::start(name, Some(server_config(&tls))).await
    }

    async fn start(name: &str, tls: Option<Arc<ServerConfig>>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let backend = Backend {
            addr,
            tls: tls.is_some(),
            seen: seen.clone(),
            shutdown: shutdown.clone(),
        };
        let name = name.to_owned();
        tokio::spawn(async move {
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            loop {
                let (tcp, _) = tokio::select! {
                    () = shutdown.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (seen, name, acceptor) = (seen.clone(), name.clone(), acceptor.clone());
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(TokioIo::new(tcp), Handshake::default(), seen, name).await,
                        Some(acceptor) => {
                            // A failed handshake (the proxy refused our certificate, or sent
                            // none) just ends the connection.
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let session = tls.get_ref().1;
                            let handshake = Handshake {
                                client_certificate: session.peer_certificates().is_some(),
                                resumed: session.handshake_kind()
                                    == Some(rustls::HandshakeKind::Resumed),
                            };
                            serve(TokioIo::new(tls), handshake, seen, name).await;
                        }
                    }
                });
            }
        });
        backend
    }

    /// `https://127.0.0.1:port` or `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// What the TLS handshake of a connection was.
#[derive(Debug, Clone, Copy, Default)]
struct Handshake {
    client_certificate: bool,
    resumed: bool,
}

async fn serve<I>(io: TokioIo<I>, handshake: Handshake, seen: Arc<Mutex<Vec<Seen>>>, name: String)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req: Request<Incoming>| {
        seen.lock().unwrap().push(Seen {
            version: req.version(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            client_certificate: handshake.client_certificate,
            resumed: handshake.resumed,
        });
        let body = format!("backend {name} {:?}", req.version());
        // `/close...`: the connection ends with this answer (HTTP/1.1).
        let close = req.uri().path().starts_with("/close");
        async move {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            if close {
                response.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(response)
        }
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

fn server_config(tls: &BackendTls<'_>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
                .unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let (chain, key) = read_pair(&tls.certificate.cert_file, &tls.certificate.key_file);
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = tls.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

fn read_pair(cert: &Path, key: &Path) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (chain, PrivateKeyDer::from_pem_file(key).unwrap())
}

/// A gRPC backend over h2c: tonic's health service (unary Check, server-streaming Watch) and
/// reflection service (bidirectional streaming). `health` sets statuses while it runs.
pub struct GrpcBackend {
    pub addr: SocketAddr,
    pub health: tonic_health::server::HealthReporter,
    shutdown: CancellationToken,
}

impl GrpcBackend {
    pub async fn start() -> GrpcBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .unwrap();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(reflection)
                .serve_with_incoming_shutdown(incoming, stop.cancelled())
                .await;
        });
        GrpcBackend {
            addr,
            health,
            shutdown,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for GrpcBackend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An h2c backend that allows `max_streams` concurrent streams on each connection and holds
/// every request until [`H2Backend::release`]. It counts the connections that carried requests
/// and the requests in progress. Started [`H2Backend::gated`], it accepts nothing until
/// [`H2Backend::open`], and its accept queue is full meanwhile: a dial to it hangs, as one to a
/// slow network does.
pub struct H2Backend {
    pub addr: SocketAddr,
    used_connections: Arc<std::sync::atomic::AtomicUsize>,
    in_progress: Arc<std::sync::atomic::AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
    open: tokio::sync::watch::Sender<bool>,
    /// Connections that fill the accept queue of a gated backend.
    _filler: Vec<std::net::TcpStream>,
    shutdown: CancellationToken,
}

impl H2Backend {
    pub async fn start(max_streams: u32) -> H2Backend {
        H2Backend::launch(max_streams, false).await
    }

    pub async fn gated(max_streams: u32) -> H2Backend {
        H2Backend::launch(max_streams, true).await
    }

    async fn launch(max_streams: u32, gated: bool) -> H2Backend {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = socket.local_addr().unwrap();
        let listener = socket.listen(if gated { 1 } else { 1024 }).unwrap();
        let mut filler = Vec::new();
        if gated {
            // Fill the accept queue until a connect no longer completes: then SYNs are dropped.
            loop {
                let attempt = tokio::time::timeout(
                    std::time::Duration::from_millis(300),
                    tokio::net::TcpStream::connect(addr),
                )
                .await;
                match attempt {
                    Ok(Ok(stream)) => filler.push(stream.into_std().unwrap()),
                    _ => break,
                }
                assert!(filler.len() < 64, "the accept queue never filled");
            }
        }
        let used_connections = Arc::new(AtomicUsize::new(0));
        let in_progress = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let (open, mut opened) = tokio::sync::watch::channel(!gated);
        let shutdown = CancellationToken::new();
        let backend = H2Backend {
            addr,
            used_connections: used_connections.clone(),
            in_progress: in_progress.clone(),
            release,
            open,
            _filler: filler,
            shutdown: shutdown.clone(),
        };
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = opened.wait_for(|open| *open) => {}
            }
            loop {
                let (tcp, _) = tokio::select! {
                    () = shutdown.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let used = Arc::new(AtomicBool::new(false));
                let (used_connections, in_progress, released) = (
                    used_connections.clone(),
                    in_progress.clone(),
                    released.clone(),
                );
                let service = service_fn(move |_req: Request<Incoming>| {
                    if !used.swap(true, Ordering::SeqCst) {
                        used_connections.fetch_add(1, Ordering::SeqCst);
                    }
                    in_progress.fetch_add(1, Ordering::SeqCst);
                    let (in_progress, mut released) = (in_progress.clone(), released.clone());
                    async move {
                        let _ = released.wait_for(|r| *r).await;
                        in_progress.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"held"))))
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .max_concurrent_streams(max_streams)
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        backend
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts accepting (a gated backend).
    pub fn open(&self) {
        let _ = self.open.send(true);
    }

    /// Answers the requests held and every later one at once.
    pub fn release(&self) {
        let _ = self.release.send(true);
    }

    /// Connections that carried at least one request.
    pub fn used_connections(&self) -> usize {
        self.used_connections
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Requests received and not answered yet.
    pub fn in_progress(&self) -> usize {
        self.in_progress.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for H2Backend {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Bytes in a [`big_upstream`] response: far more than every buffer on the way can hold.
pub const BIG_BODY: usize = 64 << 20;

static CHUNK: [u8; 16 * 1024] = [b'x'; 16 * 1024];

/// What a [`big_upstream`] handed out: body bytes, and bodies dropped before their end.
#[derive(Debug, Default)]
pub struct BigCounts {
    pub produced: std::sync::atomic::AtomicUsize,
    pub abandoned: std::sync::atomic::AtomicUsize,
}

/// A [`BIG_BODY`] response body made as it is read.
struct BigBody {
    left: usize,
    counts: Arc<BigCounts>,
}

impl hyper::body::Body for BigBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        use std::sync::atomic::Ordering;
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len());
        self.left -= n;
        self.counts.produced.fetch_add(n, Ordering::SeqCst);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(Bytes::from_static(
            &CHUNK[..n],
        )))))
    }
}

impl Drop for BigBody {
    fn drop(&mut self) {
        if self.left > 0 {
            self.counts
                .abandoned
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// An HTTP/1.1 upstream that answers every request with a [`BIG_BODY`] body, made as it is
/// read, and counts what it handed out.
pub async fn big_upstream() -> (SocketAddr, Arc<BigCounts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(BigCounts::default());
    let shared = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counts = shared.clone();
            let service = service_fn(move |_req: Request<Incoming>| {
                let body = BigBody {
                    left: BIG_BODY,
                    counts: counts.clone(),
                };
                std::future::ready(Ok::<_, Infallible>(Response::new(body)))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, counts)
}
