//! A mock upstream on 127.0.0.1 port 0 that records every request it received and answers
//! `upstream <name>`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: http::Method,
    pub uri: http::Uri,
    pub headers: HeaderMap,
    /// `None` when the body did not arrive whole (the client aborted it).
    pub body: Option<Bytes>,
}

#[derive(Default)]
struct Log {
    /// The status every answer has (0 means 200).
    status: std::sync::atomic::AtomicU16,
    heads: AtomicUsize,
    connections: AtomicUsize,
    /// Connections accepted and not closed yet.
    open: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
}

pub struct MockUpstream {
    pub name: String,
    pub addr: SocketAddr,
    log: Arc<Log>,
    shutdown: CancellationToken,
}

impl MockUpstream {
    pub async fn start(name: &str) -> MockUpstream {
        MockUpstream::start_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Like [`MockUpstream::start`], on a given address (to bring a dead upstream back).
    pub async fn start_on(name: &str, addr: SocketAddr) -> MockUpstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Log::default());
        let shutdown = CancellationToken::new();
        let upstream = MockUpstream {
            name: name.to_owned(),
            addr,
            log: log.clone(),
            shutdown: shutdown.clone(),
        };
        let name = name.to_owned();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    () = shutdown.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                log.connections.fetch_add(1, Ordering::SeqCst);
                log.open.fetch_add(1, Ordering::SeqCst);
                let (conn_log, name) = (log.clone(), name.clone());
                let service = service_fn(move |req| answer(req, conn_log.clone(), name.clone()));
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades();
                let log = log.clone();
                tokio::spawn(async move {
                    let _ = conn.await;
                    log.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        upstream
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers every later request with `status`.
    pub fn set_status(&self, status: u16) {
        self.log.status.store(status, Ordering::SeqCst);
    }

    /// Request heads received so far (counted on arrival, before the body).
    pub fn hits(&self) -> usize {
        self.log.heads.load(Ordering::SeqCst)
    }

    /// TCP connections open right now.
    pub fn open_connections(&self) -> usize {
        self.log.open.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.log.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.requests.lock().unwrap().clone()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn answer(
    mut req: Request<Incoming>,
    log: Arc<Log>,
    name: String,
) -> Result<Response<Full<Bytes>>, Infallible> {
    log.heads.fetch_add(1, Ordering::SeqCst);
    if let Some(protocol) = req.headers().get(http::header::UPGRADE).cloned() {
        return Ok(echo_upgrade(&mut req, protocol, &log));
    }
    // `/sleep/<ms>...` answers after that long: a slow upstream for drain tests.
    if let Some(ms) = req
        .uri()
        .path()
        .strip_prefix("/sleep/")
        .and_then(|rest| rest.split('/').next()?.parse().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.ok().map(|b| b.to_bytes());
    log.requests.lock().unwrap().push(Recorded {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body: body.clone(),
    });
    let text = match body {
        Some(b) => format!("upstream {name} got {} bytes", b.len()),
        None => format!("upstream {name} got a broken body"),
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    let status = log.status.load(Ordering::SeqCst);
    if status != 0 {
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    }
    Ok(response)
}

/// Switches protocols and echoes every byte back, for tunnel tests.
fn echo_upgrade(
    req: &mut Request<Incoming>,
    protocol: http::HeaderValue,
    log: &Log,
) -> Response<Full<Bytes>> {
    log.requests.lock().unwrap().push(Recorded {
        method: req.method().clone(),
        uri: req.uri().clone(),
        headers: req.headers().clone(),
        body: None,
    });
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
        let _ = tokio::io::copy(&mut reader, &mut writer).await;
    });
    Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, protocol)
        .body(Full::new(Bytes::new()))
        .unwrap()
}
