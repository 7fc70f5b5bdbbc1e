//! An HTTP/1.1 client for the tests: one kept-alive connection, plain or over TLS, and one-shot
//! GETs.

use std::net::SocketAddr;

use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use tokio::net::TcpStream;

use crate::TestBody;

/// One HTTP/1.1 client connection, kept alive across requests.
pub struct Conn {
    sender: hyper::client::conn::http1::SendRequest<TestBody>,
}

/// One HTTP/2 client connection with prior knowledge (h2c), for requests that must be HTTP/2
/// (gRPC calls). Requests carry an absolute URI (`http://host/path`).
pub struct H2Conn {
    sender: hyper::client::conn::http2::SendRequest<TestBody>,
}

impl H2Conn {
    pub async fn open(addr: SocketAddr) -> H2Conn {
        let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (sender, connection) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(connection);
        H2Conn { sender }
    }

    pub async fn send(&mut self, request: Request<TestBody>) -> Answer {
        self.sender.ready().await.expect("connection still open");
        let response = self.sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// A response with its body read.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        Conn::over(TcpStream::connect(addr).await.unwrap()).await
    }

    /// HTTP/1.1 over an open stream (a TLS one, say).
    pub async fn over<S>(stream: S) -> Conn
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(connection);
        Conn { sender }
    }

    pub async fn send(&mut self, request: Request<TestBody>) -> Answer {
        self.sender.ready().await.expect("connection still open");
        let response: Response<hyper::body::Incoming> =
            self.sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&mut self, host: &str, path: &str) -> Answer {
        self.send(get_request(host, path)).await
    }

    /// GET whose failure is an answer too: the status, or `None` when the connection failed
    /// (closed, reset) before a whole response arrived.
    pub async fn try_get(&mut self, host: &str, path: &str) -> Option<u16> {
        self.sender.ready().await.ok()?;
        let response = self
            .sender
            .send_request(get_request(host, path))
            .await
            .ok()?;
        let status = response.status().as_u16();
        response.into_body().collect().await.ok()?;
        Some(status)
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

pub fn get_request(host: &str, path: &str) -> Request<TestBody> {
    Request::get(path)
        .header(http::header::HOST, host)
        .body(Empty::new().boxed())
        .unwrap()
}

/// GET on a fresh connection.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Answer {
    Conn::open(addr).await.get(host, path).await
}
