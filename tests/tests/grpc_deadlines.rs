//! gRPC calls and their deadlines (issue 19 #14): the route's response-head timeout does not
//! kill a quiet server stream (grpc-go sends its headers with the first message), a call's
//! deadline is its `grpc-timeout` capped by the route's timeout, answered DEADLINE_EXCEEDED,
//! and a deadline the client chose never ejects the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use proxy_tests::backend::H2Backend;
use proxy_tests::{Answer, H2Conn, TestEnv, get_request};

fn grpc_call(timeout: Option<&'static str>) -> http::Request<proxy_tests::TestBody> {
    let mut request = get_request("grpc.example", "/pkg.Service/Watch");
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = "http://grpc.example/pkg.Service/Watch".parse().unwrap();
    request.headers_mut().remove(http::header::HOST);
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    if let Some(timeout) = timeout {
        headers.insert("grpc-timeout", http::HeaderValue::from_static(timeout));
    }
    request
}

async fn start(backend: &H2Backend, route_timeout: &str) -> TestEnv {
    TestEnv::start(&format!(
        "[[sites]]\nhostnames = [\"grpc.example\"]\nupstreams = [\"{}\"]\n\
         upstream_protocol = \"h2c\"\nupstream_response_timeout = \"{route_timeout}\"\n\
         passive_health = {{ consecutive_failures = 1, cooldown = \"60s\" }}\n",
        backend.url()
    ))
    .await
}

fn grpc_status(answer: &Answer) -> Option<&str> {
    answer
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_stream_outlives_the_route_s_head_timeout() {
    let backend = H2Backend::start(100).await;
    let env = start(&backend, "300ms").await;
    let mut conn = H2Conn::open(env.http).await;
    let call = conn.send(grpc_call(None));
    tokio::pin!(call);
    // Well past the route's 300 ms, the call still waits for its first message.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut call)
            .await
            .is_err(),
        "the head timeout ended a gRPC stream"
    );
    assert_eq!(backend.in_progress(), 1);
    backend.release();
    let answer = call.await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, "held");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_s_grpc_timeout_is_its_deadline_capped_by_the_route_s() {
    let backend = H2Backend::start(100).await;
    let env = start(&backend, "30s").await;
    let mut conn = H2Conn::open(env.http).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), conn.send(grpc_call(Some("200m"))))
        .await
        .expect("the call's own deadline was ignored");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        grpc_status(&answer),
        Some("4"),
        "DEADLINE_EXCEEDED: {answer:?}"
    );
    // The client's deadline is not the upstream's failure: with ejection after one failure,
    // the next call still reaches it.
    let second = conn.send(grpc_call(Some("200m")));
    let answer = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .unwrap();
    assert_eq!(
        grpc_status(&answer),
        Some("4"),
        "not UNAVAILABLE (14) from an ejected upstream: {answer:?}"
    );
    env.stop().await;

    // A longer grpc-timeout than the route allows: the route's timeout.
    let backend = H2Backend::start(100).await;
    let env = start(&backend, "300ms").await;
    let mut conn = H2Conn::open(env.http).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), conn.send(grpc_call(Some("1H"))))
        .await
        .expect("the route's cap was ignored");
    assert_eq!(grpc_status(&answer), Some("4"), "{answer:?}");
    env.stop().await;
}

/// An h2c backend that echoes a request's body as its response body: a bidi gRPC stream.
async fn echo_h2c() -> std::net::SocketAddr {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let service = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                let response = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(req.into_body())
                    .unwrap();
                Ok::<_, std::convert::Infallible>(response)
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chatty_bidi_stream_is_not_an_upload_held_to_the_minimum_rate() {
    // Review of issue 19: 20 bytes every 100 ms never pause near request_body_timeout (1 s),
    // and 200 B/s is under the 1 KiB/s minimum: the request body minimum rate reset the call.
    let backend = echo_h2c().await;
    let env = TestEnv::start_with(
        "request_body_timeout = \"1s\"",
        &format!(
            "[[sites]]\nhostnames = [\"grpc.example\"]\nupstreams = [\"http://{backend}\"]\n\
             upstream_protocol = \"h2c\"\n"
        ),
    )
    .await;
    let tcp = tokio::net::TcpStream::connect(env.http).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post("http://grpc.example/chat.Chat/Talk")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let message = bytes::Bytes::from_static(&[
        0, 0, 0, 0, 15, 10, 13, b'h', b'e', b'l', b'l', b'o', b' ', b'w', b'o', b'r', b'l', b'd',
        b'!', b'!',
    ]);
    send.send_data(message.clone(), false).unwrap();
    let mut body = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .unwrap()
        .unwrap()
        .into_body();
    // 3 s of chat: 30 messages, each echoed.
    for i in 0..30 {
        let data = tokio::time::timeout(Duration::from_secs(2), body.data())
            .await
            .unwrap_or_else(|_| panic!("no echo of message {i}"))
            .unwrap_or_else(|| panic!("the stream ended at message {i}"))
            .unwrap_or_else(|e| panic!("the stream broke at message {i}: {e}"));
        let _ = body.flow_control().release_capacity(data.len());
        let mut interval = tokio::time::interval(Duration::from_millis(100));
        interval.tick().await;
        interval.tick().await;
        send.send_data(message.clone(), false)
            .unwrap_or_else(|e| panic!("sending message {}: {e}", i + 1));
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_content_type_over_http1_does_not_lift_a_route_s_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Review of issue 19: any client could lift a plain route's response timeout (and hold an
    // upstream place for ever) with `content-type: application/grpc`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        // Reads requests, never answers.
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
    let env = TestEnv::start(&format!(
        "[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"http://{upstream}\"]\n\
         upstream_response_timeout = \"300ms\"\n"
    ))
    .await;
    let mut tcp = tokio::net::TcpStream::connect(env.http).await.unwrap();
    tcp.write_all(
        b"GET /report HTTP/1.1\r\nhost: app.example\r\ncontent-type: application/grpc\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the route's 300 ms timeout still applies")
        .unwrap();
    // Answered at the route's timeout (in gRPC's form: the request says it is gRPC).
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.contains("grpc-status: 4"), "{head}");
    env.stop().await;
}
