//! Protocols end to end: HTTP/2 with prior knowledge from clients, and Upgrade tunnels
//! (WebSocket) that carry on across reloads.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_tests::{DEADLINE, H2Conn, MockUpstream, TestEnv, output_text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn site(host: &str, upstream: &str) -> String {
    format!("[[sites]]\nhostnames = [\"{host}\"]\nupstreams = [\"{upstream}\"]\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn h2c_clients_are_served_from_http1_upstreams() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start(&site("app.example", &app.url())).await;

    let stream = TcpStream::connect(env.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let request = http::Request::get(format!("http://app.example/h2/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_2);
        assert!(response.headers().contains_key("x-request-id"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"upstream app"), "{body:?}");
    }
    let seen = &app.requests()[0];
    assert_eq!(seen.uri.path(), "/h2/0");
    assert_eq!(
        seen.headers["host"], "app.example",
        "the :authority becomes Host upstream"
    );
    env.stop().await;
}

/// A GET or HEAD may carry a body (search APIs send queries that way). hyper's client sends
/// one of unknown length as bodiless unless told otherwise: an HTTP/2 client's DATA frames and
/// an HTTP/1.1 client's chunks were dropped on the way to an HTTP/1.1 upstream, with no error.
#[tokio::test(flavor = "multi_thread")]
async fn a_get_keeps_its_body_of_unknown_length_from_http2_and_chunked_http1() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start(&site("app.example", &app.url())).await;

    // DATA frames without a content-length: the body's length is known only at its end.
    let frames = [b"hello ".as_slice(), b"world"]
        .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b))));
    let body = StreamBody::new(tokio_stream::iter(frames)).boxed();
    let request = http::Request::get("http://app.example/search")
        .body(body)
        .unwrap();
    let answer = H2Conn::open(env.http).await.send(request).await;
    assert_eq!(answer.body, "upstream app got 11 bytes");

    let chunked =
        b"GET /search HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\r\n\
                    6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n";
    let reply = proxy_tests::raw_http::exchange(env.http, chunked, false, DEADLINE).await;
    match reply {
        proxy_tests::raw_http::Reply::Response { status, body, .. } => {
            assert_eq!(status, 200);
            assert_eq!(body, b"upstream app got 11 bytes");
        }
        other => panic!("{other:?}"),
    }
    for seen in app.requests() {
        assert_eq!(seen.method, http::Method::GET);
        assert_eq!(seen.body.as_deref(), Some(b"hello world".as_slice()));
    }
    env.stop().await;
}

/// Reads from `stream` until `needle` has arrived.
async fn read_until(stream: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        while !got.windows(needle.len()).any(|w| w == needle) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before {:?} arrived: {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("data within the deadline");
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_tunnel_carries_on_across_a_reload() {
    let ws = MockUpstream::start("ws").await;
    let env = TestEnv::start(&site("app.example", &ws.url())).await;

    let mut stream = TcpStream::connect(env.http).await.unwrap();
    let handshake = "GET /chat HTTP/1.1\r\nHost: app.example\r\nConnection: keep-alive, Upgrade\r\n\
        Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(handshake.as_bytes()).await.unwrap();
    let head = read_until(&mut stream, b"\r\n\r\n").await;
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: websocket") && head.contains("connection: upgrade"),
        "{head}"
    );
    let seen = &ws.requests()[0].headers;
    assert_eq!(seen["upgrade"], "websocket");
    assert_eq!(seen["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");

    stream.write_all(b"frame-1").await.unwrap();
    read_until(&mut stream, b"frame-1").await;

    let other = MockUpstream::start("other").await;
    env.write_config(&(site("app.example", &ws.url()) + &site("other.example", &other.url())));
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));

    stream.write_all(b"frame-2").await.unwrap();
    read_until(&mut stream, b"frame-2").await;
    env.stop().await;
}
