//! One hostile client must never hurt anyone else: each of the limits of docs/security.md,
//! end to end through real sockets. Every test shows the limit biting, its metric counting it,
//! and the upstream's health untouched where the client was at fault.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_tests::{
    ADMIN_ON_PORT_0, DEADLINE, MockUpstream, TestEnv, eventually, get, metric, site,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Any single fault counted against an upstream ejects it for an hour.
const EJECT_ON_ONE: &str = "[sites.passive_health]\nconsecutive_failures = 1\ncooldown = \"1h\"";

fn proxy_keys(lines: &[&str]) -> String {
    std::iter::once(ADMIN_ON_PORT_0)
        .chain(lines.iter().copied())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn metric_value(env: &TestEnv, series: &str) -> f64 {
    metric(&env.metrics().await, series).unwrap_or(-1.0)
}

/// Waits until the metric `series` reads `value`.
async fn metric_reaches(env: &TestEnv, series: &str, value: f64) {
    eventually(&format!("{series} = {value}"), || async {
        (metric_value(env, series).await == value).then_some(())
    })
    .await;
}

/// Reads until the peer closes (or resets) the connection; fails after `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the proxy closes the connection in time");
    got
}

/// A TCP connection to `to` from the loopback address `from` (any of 127.0.0.0/8).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upload_gets_408_and_the_upstream_stays_healthy() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start_with(
        &proxy_keys(&["request_body_timeout = \"300ms\""]),
        &site("a.test", &app.url(), EJECT_ON_ONE),
    )
    .await;
    let mut stream = TcpStream::connect(env.http).await.unwrap();
    stream
        .write_all(
            b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: 100\r\n\r\n0123456789",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let answer = closed_within(&mut stream, DEADLINE).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let series = format!("proxy_upstream_healthy{{upstream=\"{}\"}}", app.url());
    assert_eq!(
        metric_value(&env, &series).await,
        1.0,
        "not the upstream's fault"
    );
    assert_eq!(get(env.http, "a.test", "/").await.status, 200);
    assert_eq!(
        metric_value(&env, "proxy_timeouts_total{kind=\"request_body\"}").await,
        1.0
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_caps_are_closed_at_accept_and_counted() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start_with(
        &proxy_keys(&["max_connections = 4", "max_connections_per_ip = 2"]),
        &site("a.test", &app.url(), ""),
    )
    .await;
    let mut held = vec![
        connect_from("127.0.0.2", env.http).await,
        connect_from("127.0.0.2", env.http).await,
    ];
    metric_reaches(&env, "proxy_connections_open", 2.0).await;
    let mut third = connect_from("127.0.0.2", env.http).await;
    closed_within(&mut third, DEADLINE).await;
    metric_reaches(
        &env,
        "proxy_connections_refused_total{reason=\"max_connections_per_ip\"}",
        1.0,
    )
    .await;
    held.push(connect_from("127.0.0.3", env.http).await);
    held.push(connect_from("127.0.0.3", env.http).await);
    metric_reaches(&env, "proxy_connections_open", 4.0).await;
    let mut fifth = connect_from("127.0.0.4", env.http).await;
    closed_within(&mut fifth, DEADLINE).await;
    metric_reaches(
        &env,
        "proxy_connections_refused_total{reason=\"max_connections\"}",
        1.0,
    )
    .await;
    // A place that comes back is taken again.
    held.pop();
    metric_reaches(&env, "proxy_connections_open", 3.0).await;
    assert_eq!(get(env.http, "a.test", "/").await.status, 200);
    drop(held);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_connections_and_idle_http2_connections_are_closed_at_their_deadlines() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start_with(
        &proxy_keys(&[
            "request_header_timeout = \"500ms\"",
            "http2_idle_timeout = \"700ms\"",
        ]),
        &site("a.test", &app.url(), ""),
    )
    .await;
    // Nothing at all: closed at the request-head timeout, before the protocol is known.
    let mut silent = TcpStream::connect(env.http).await.unwrap();
    let started = Instant::now();
    closed_within(&mut silent, Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_millis(400));
    metric_reaches(&env, "proxy_timeouts_total{kind=\"first_bytes\"}", 1.0).await;

    // An HTTP/2 connection that served a request, then went quiet: GOAWAY at the idle timeout.
    let stream = TcpStream::connect(env.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::get("http://a.test/")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    let idle_from = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the proxy ends an idle HTTP/2 connection")
        .unwrap()
        .unwrap();
    assert!(idle_from.elapsed() >= Duration::from_millis(600));
    metric_reaches(&env, "proxy_timeouts_total{kind=\"idle\"}", 1.0).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_max_concurrent_streams_is_what_the_config_says() {
    use proxy_tests::h2raw;
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start_with(
        "http2_max_concurrent_streams = 7",
        &site("a.test", &app.url(), ""),
    )
    .await;
    let (_conn, settings) = h2raw::RawConn::open(env.http, &[]).await;
    assert!(
        settings.contains(&(h2raw::setting::MAX_CONCURRENT_STREAMS, 7)),
        "{settings:?}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_tunnel_counts_as_a_connection_and_is_closed_at_its_deadline() {
    let ws = MockUpstream::start("ws").await;
    let env = TestEnv::start_with(
        &proxy_keys(&["tunnel_idle_timeout = \"600ms\""]),
        &site("a.test", &ws.url(), ""),
    )
    .await;
    let mut stream = TcpStream::connect(env.http).await.unwrap();
    stream
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = vec![0u8; 1024];
    let n = stream.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 101"));
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    // The tunnel holds its client connection's place.
    assert_eq!(metric_value(&env, "proxy_connections_open").await, 1.0);
    let quiet_from = Instant::now();
    closed_within(&mut stream, Duration::from_secs(5)).await;
    assert!(quiet_from.elapsed() >= Duration::from_millis(500));
    metric_reaches(&env, "proxy_timeouts_total{kind=\"tunnel_idle\"}", 1.0).await;
    metric_reaches(&env, "proxy_connections_open", 0.0).await;
    env.stop().await;
}

/// An upstream that reads each request and never answers; counts its connections.
async fn hanging_upstream() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread")]
async fn circuit_breakers_answer_503_at_once_and_leave_health_alone() {
    let (hanging, connections) = hanging_upstream().await;
    let upstream = format!("http://{hanging}");
    let limits =
        "upstream_limits = { max_connections = 1, max_pending_requests = 1, max_requests = 3 }";
    let env = TestEnv::start_with(
        ADMIN_ON_PORT_0,
        &site(
            "a.test",
            &upstream,
            &format!("upstream_response_timeout = \"20s\"\nretries = 0\n{limits}\n{EJECT_ON_ONE}"),
        ),
    )
    .await;
    let http = env.http;
    // The first takes the one connection, the second waits as the one pending request.
    let first = tokio::spawn(async move { get(http, "a.test", "/1").await });
    eventually("the first request at the upstream", || async {
        (connections.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let overflow = format!(
        "proxy_upstream_overflow_total{{upstream=\"{upstream}\",limit=\"max_pending_requests\"}}"
    );
    // Of two more, one waits as the one pending request and the other is refused at once.
    let mut second = tokio::spawn(async move { get(http, "a.test", "/2").await });
    let mut third = tokio::spawn(async move { get(http, "a.test", "/3").await });
    let third = tokio::time::timeout(DEADLINE, async {
        tokio::select! {
            answer = &mut second => answer.unwrap(),
            answer = &mut third => answer.unwrap(),
        }
    })
    .await
    .expect("one of them is refused at once");
    assert_eq!(third.status, 503, "{third:?}");
    assert!(third.body.contains("service unavailable"), "{third:?}");
    assert_eq!(metric_value(&env, &overflow).await, 1.0);
    let healthy = format!("proxy_upstream_healthy{{upstream=\"{upstream}\"}}");
    assert_eq!(metric_value(&env, &healthy).await, 1.0);
    assert_eq!(
        connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "never more than max_connections"
    );
    first.abort();
    second.abort();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_requests_caps_what_is_outstanding_at_an_upstream() {
    let (hanging, connections) = hanging_upstream().await;
    let upstream = format!("http://{hanging}");
    let env = TestEnv::start_with(
        ADMIN_ON_PORT_0,
        &format!(
            "[upstream_limits]\nmax_requests = 2\n{}",
            site("a.test", &upstream, "upstream_response_timeout = \"20s\"")
        ),
    )
    .await;
    let http = env.http;
    let held: Vec<_> = (0..2)
        .map(|i| tokio::spawn(async move { get(http, "a.test", &format!("/{i}")).await }))
        .collect();
    // Both at the upstream (each on its own connection) before the third is sent.
    eventually("two requests outstanding at the upstream", || async {
        (connections.load(std::sync::atomic::Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    let refused = tokio::time::timeout(DEADLINE, get(http, "a.test", "/x"))
        .await
        .expect("refused at once");
    assert_eq!(refused.status, 503, "{refused:?}");
    let overflow =
        format!("proxy_upstream_overflow_total{{upstream=\"{upstream}\",limit=\"max_requests\"}}");
    assert!(metric_value(&env, &overflow).await >= 1.0);
    for h in held {
        h.abort();
    }
    env.stop().await;
}

/// An upstream that sends a response head and `sent` body bytes of `promised`, then stalls
/// (or, with `promised` large, keeps writing until its peer stops reading). Reports when its
/// connection is closed by the proxy.
async fn body_upstream(
    promised: usize,
    sent: usize,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let closed = closed.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {promised}\r\n\r\n");
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                let mut left = sent;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        let _ = closed.send(());
                        return;
                    }
                    left -= n;
                }
                // Stall; notice when the proxy gives up on the connection.
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = closed.send(());
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upstream_body_is_cut_at_its_deadline() {
    let (addr, mut closed) = body_upstream(100, 10).await;
    let env = TestEnv::start_with(
        &proxy_keys(&["upstream_body_timeout = \"400ms\""]),
        &site("a.test", &format!("http://{addr}"), ""),
    )
    .await;
    let mut stream = TcpStream::connect(env.http).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let got = closed_within(&mut stream, Duration::from_secs(5)).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with("xxxxxxxxxx"), "the body is cut short: {got}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    tokio::time::timeout(DEADLINE, closed.recv())
        .await
        .expect("the upstream connection is closed too");
    metric_reaches(&env, "proxy_timeouts_total{kind=\"upstream_body\"}", 1.0).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_cut_and_its_upstream_released() {
    // More than the socket buffers on both sides can hold.
    let size = 256 * 1024 * 1024;
    let (addr, mut closed) = body_upstream(size, size).await;
    let env = TestEnv::start_with(
        &proxy_keys(&["response_send_timeout = \"500ms\""]),
        &site("a.test", &format!("http://{addr}"), ""),
    )
    .await;
    let mut stream = TcpStream::connect(env.http).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    // Never read: the proxy's writes stall, and at the deadline it gives up on both sides.
    tokio::time::timeout(DEADLINE, closed.recv())
        .await
        .expect("the upstream connection is released");
    metric_reaches(&env, "proxy_timeouts_total{kind=\"response_send\"}", 1.0).await;
    metric_reaches(&env, "proxy_connections_open", 0.0).await;
    assert_eq!(
        get(env.http, "a.test", "/").await.status,
        200,
        "others are served"
    );
    drop(stream);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_behind_a_trusted_proxy_key_on_the_forwarded_client() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start(&format!(
        "trusted_proxies = [\"127.0.0.1\"]\n[rate_limit]\nrequests_per_second = 1\nburst = 1\n{}",
        site("a.test", &app.url(), "")
    ))
    .await;
    let from = |client: &str| {
        http::Request::get("/")
            .header("host", "a.test")
            .header("x-forwarded-for", format!("{client}, 127.0.0.1"))
            .body(http_body_util::Empty::new().boxed())
            .unwrap()
    };
    let mut lb = proxy_tests::Conn::open(env.http).await;
    assert_eq!(lb.send(from("198.51.100.1")).await.status, 200);
    assert_eq!(
        lb.send(from("198.51.100.2")).await.status,
        200,
        "another client behind the same balancer has its own budget"
    );
    assert_eq!(lb.send(from("198.51.100.1")).await.status, 429);

    // From a peer that is not trusted, X-Forwarded-For is never read: one budget.
    let stream = connect_from("127.0.0.2", env.http).await;
    let mut direct = proxy_tests::Conn::over(stream).await;
    assert_eq!(direct.send(from("203.0.113.1")).await.status, 200);
    assert_eq!(direct.send(from("203.0.113.2")).await.status, 429);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_that_stops_answering_pings_is_closed_even_with_a_stream_open() {
    use proxy_tests::h2raw;
    let (hanging, connections) = hanging_upstream().await;
    let env = TestEnv::start_with(
        &proxy_keys(&[
            "http2_keepalive_interval = \"300ms\"",
            "http2_keepalive_timeout = \"300ms\"",
        ]),
        &site(
            "a.test",
            &format!("http://{hanging}"),
            "upstream_response_timeout = \"30s\"",
        ),
    )
    .await;
    let (mut conn, _) = h2raw::RawConn::open(env.http, &[]).await;
    // A request the upstream never answers keeps a stream open: the idle timeout cannot apply.
    let block = h2raw::request("GET", "a.test", "/slow");
    conn.send(&h2raw::headers(
        1,
        h2raw::flag::END_STREAM | h2raw::flag::END_HEADERS,
        &block,
    ))
    .await
    .unwrap();
    eventually("the request at the upstream", || async {
        (connections.load(std::sync::atomic::Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // The client answers nothing: the proxy's PING goes unanswered and it gives up.
    let started = Instant::now();
    let mut pinged = false;
    while let Some(frame) = conn.recv().await {
        pinged |= frame.kind == h2raw::kind::PING && !frame.has(h2raw::flag::ACK);
    }
    assert!(pinged, "the proxy pinged: {:?}", conn.received);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_takes_no_upload_gets_its_response_deadline() {
    // Accepts, reads nothing, answers nothing: the upload stops at the socket buffers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let env = TestEnv::start_with(
        &proxy_keys(&["request_body_timeout = \"30s\""]),
        &site(
            "a.test",
            &format!("http://{upstream}"),
            "body_limit_bytes = \"256m\"\nupstream_response_timeout = \"500ms\"\nretries = 0",
        ),
    )
    .await;
    let size: usize = 192 << 20;
    let mut stream = TcpStream::connect(env.http).await.unwrap();
    let (mut reader, mut writer) = stream.split();
    let head = format!("POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: {size}\r\n\r\n");
    let started = Instant::now();
    let send = async {
        writer.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..(size >> 20) {
            if writer.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    let answer = async {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        got
    };
    // The client keeps sending (it is not the one stalling); the answer comes regardless.
    let got = tokio::time::timeout(DEADLINE, async {
        tokio::select! {
            got = answer => got,
            () = async { send.await; std::future::pending::<()>().await } => unreachable!(),
        }
    })
    .await
    .expect("an answer while the upload is stuck");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 504"), "{got}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    metric_reaches(
        &env,
        "proxy_timeouts_total{kind=\"upstream_response\"}",
        1.0,
    )
    .await;
    env.stop().await;
}

/// Issue 19 #13: a response counted against `max_requests` (and least-requests) only until its
/// head arrived, so streaming responses were invisible to both. It counts until its body ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_streaming_response_counts_against_max_requests_until_its_body_ends() {
    // Heads at once, then 10 of 1,000 body bytes, then nothing.
    let (addr, _closed) = body_upstream(1000, 10).await;
    let upstream = format!("http://{addr}");
    let env = TestEnv::start_with(
        ADMIN_ON_PORT_0,
        &format!(
            "[upstream_limits]\nmax_requests = 1\n{}",
            site("a.test", &upstream, "")
        ),
    )
    .await;
    // The first request has its head; its body streams on.
    let mut first = TcpStream::connect(env.http).await.unwrap();
    first
        .write_all(b"GET /stream HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, first.read(&mut byte))
            .await
            .expect("the first response's head")
            .unwrap();
        assert_eq!(n, 1, "closed before the head ended: {head:?}");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    let second = tokio::time::timeout(DEADLINE, get(env.http, "a.test", "/second"))
        .await
        .expect("refused at once");
    assert_eq!(
        second.status, 503,
        "the first is still outstanding: {second:?}"
    );
    // Its body ended (the client went away): the place is free again.
    drop(first);
    eventually("max_requests free again", || async {
        let mut probe = TcpStream::connect(env.http).await.ok()?;
        probe
            .write_all(b"GET /third HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .ok()?;
        let mut status = [0u8; 12];
        probe.read_exact(&mut status).await.ok()?;
        (&status == b"HTTP/1.1 200").then_some(())
    })
    .await;
    env.stop().await;
}
