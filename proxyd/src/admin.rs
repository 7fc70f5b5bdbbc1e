//! The admin listener on `proxy.admin_address`: `/healthz`, `/readyz` and `/metrics` over
//! HTTP/1.1. Bound with the listeners from the first snapshot, and moved or stopped by a later
//! one that changes the address; it stops the moment shutdown begins, so it never holds up the
//! drain.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, Metrics};

/// How long a client may take to send a request head (hyper needs a timer for this).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin endpoints report on.
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    /// Set once a snapshot is applied and its listeners serve.
    pub ready: Arc<AtomicBool>,
}

/// Serves `listener` until `stop` (the address changed) or `shutdown`. At `stop`, open admin
/// connections finish the request in progress and close; at `shutdown` they are dropped.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    stop: CancellationToken,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut failures = 0;
    while let Some((stream, peer)) =
        crate::server::accept(&listener, "admin", &stop, &mut failures).await
    {
        let state = state.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let response = answer(req.method(), req.uri().path(), &state);
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let (stop, shutdown) = (stop.clone(), shutdown.clone());
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                // The address moved or went: a scrape in progress finishes, and a kept-alive
                // scraper reconnects to where the listener is now.
                () = stop.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::select! {
                        result = connection => result,
                        () = shutdown.cancelled() => Ok(()),
                    }
                }
                () = shutdown.cancelled() => Ok(()),
            };
            if let Err(e) = result {
                tracing::debug!(client = %peer, error = %e, "admin connection ended with an error");
            }
        });
    }
    tracing::info!(listener = "admin", "admin listener stopped");
}

/// The response to `method path`.
fn answer(method: &Method, path: &str, state: &AdminState) -> Response<Full<Bytes>> {
    if !matches!(path, "/healthz" | "/readyz" | "/metrics") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if method != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => metrics_page(&state.metrics),
    }
}

fn metrics_page(metrics: &Metrics) -> Response<Full<Bytes>> {
    match metrics.encode() {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn state(ready: bool) -> AdminState {
        AdminState {
            metrics: Arc::new(Metrics::new()),
            ready: Arc::new(AtomicBool::new(ready)),
        }
    }

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn routes() {
        let s = state(false);
        let get = |path| answer(&Method::GET, path, &s);
        assert_eq!(get("/healthz").status(), StatusCode::OK);
        assert_eq!(get("/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(get("/").status(), StatusCode::NOT_FOUND);
        assert_eq!(get("/metrics/x").status(), StatusCode::NOT_FOUND);
        let post = answer(&Method::POST, "/metrics", &s);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET");

        s.ready.store(true, Ordering::Release);
        assert_eq!(get("/readyz").status(), StatusCode::OK);

        let m = get("/metrics");
        assert_eq!(m.status(), StatusCode::OK);
        assert_eq!(m.headers()[header::CONTENT_TYPE], metrics::CONTENT_TYPE);
        let text = body(m).await;
        assert!(
            text.contains("# TYPE proxy_requests_in_flight gauge"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
