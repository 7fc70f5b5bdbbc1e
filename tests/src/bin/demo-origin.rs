//! A tiny origin server for the quick start: answers every request with a line naming it.
//!
//! Usage: `demo-origin [ADDRESS]` (default 127.0.0.1:8081).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let address: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:8081")
        .parse()?;
    let listener = tokio::net::TcpListener::bind(address).await?;
    eprintln!("demo-origin listening on {address}");
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(answer)),
        );
    }
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-");
    let text = format!(
        "hello from the demo origin: {} {} (Host: {host})\n",
        req.method(),
        req.uri()
    );
    Ok(Response::new(Full::new(Bytes::from(text))))
}
