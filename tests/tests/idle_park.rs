//! Idle HTTP/1.1 connections give their buffers back (docs/architecture.md, "Idle connections"):
//! a keep-alive connection without a request for 1 s is taken back from hyper and waits with no
//! buffer (`proxy_connections_idle`), and its next request, on the same socket, is served by a
//! new hyper connection. What must not change for the client: requests after the wait (plain,
//! TLS, an Upgrade), a request head half-sent before the wait, the request-head timeout for a
//! client that trickles one, a response the client had not read yet, a request body still on its
//! way after its response (never read as a request of its own), and the idle keep-alive timeout
//! (`request_header_timeout`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxy_tests::raw_http::{Reply, read_response};
use proxy_tests::tls::TestCa;
use proxy_tests::{
    ADMIN_ON_PORT_0, HTTPS_ON_PORT_0, MockUpstream, Setup, TestEnv, eventually, metric,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The park delay of proxyd (server.rs `PARK_AFTER`), and a margin past it.
const PAST_PARK_DELAY: Duration = Duration::from_millis(1500);

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: a.test\r\n\r\n").into_bytes()
}

/// Reads one response: its head and body.
async fn response<S: AsyncRead + Unpin>(stream: &mut S) -> (String, Vec<u8>) {
    match read_response(stream, proxy_tests::DEADLINE).await {
        Reply::Response { head, body, .. } => (head, body),
        other => panic!("no response: {other}"),
    }
}

async fn idle_count(env: &TestEnv) -> f64 {
    metric(&env.metrics().await, "proxy_connections_idle").unwrap_or(-1.0)
}

async fn wait_idle(env: &TestEnv, count: f64) {
    eventually(&format!("{count} connections idle"), || async move {
        (idle_count(env).await == count).then_some(())
    })
    .await;
}

/// A request, the wait past the park delay (the connection counted idle), the next request.
async fn request_park_request<S: AsyncRead + AsyncWrite + Unpin>(env: &TestEnv, stream: &mut S) {
    stream.write_all(&request("/one")).await.unwrap();
    let (head, body) = response(stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, b"upstream app got 0 bytes");
    wait_idle(env, 1.0).await;
    stream.write_all(&request("/two")).await.unwrap();
    let (head, _) = response(stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(idle_count(env).await, 0.0);
}

async fn start(app: &MockUpstream, ca: &TestCa, dir: &std::path::Path, keys: &str) -> TestEnv {
    let cert = ca.issue(dir, "a", &["a.test"]);
    let body = format!(
        "[[sites]]\nhostnames = [\"a.test\"]\nupstreams = [\"{}\"]\nhttps_redirect = false\n{}\n",
        app.url(),
        cert.site_tls()
    );
    let setup = Setup {
        proxy_keys: format!("{ADMIN_ON_PORT_0}\n{keys}"),
        listeners: HTTPS_ON_PORT_0.to_owned(),
        ..Setup::default()
    };
    TestEnv::start_setup(setup, &body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_parked_connection_serves_its_next_requests_plain_tls_upgrade_and_a_half_sent_head() {
    let app = MockUpstream::start("app").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let env = start(&app, &ca, dir.path(), "").await;

    // Plain.
    let mut plain = TcpStream::connect(env.http).await.unwrap();
    request_park_request(&env, &mut plain).await;

    // A whole request and the start of the next in one write; the rest after the park delay.
    let mut both = request("/three");
    both.extend_from_slice(b"GET /four HTTP/1.1\r\nHo");
    plain.write_all(&both).await.unwrap();
    let (head, _) = response(&mut plain).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Nothing to observe while the half head waits: the time itself is the test.
    tokio::time::sleep(PAST_PARK_DELAY).await;
    plain.write_all(b"st: a.test\r\n\r\n").await.unwrap();
    let (head, _) = response(&mut plain).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let paths: Vec<String> = app.requests().iter().map(|r| r.uri.to_string()).collect();
    assert_eq!(paths, ["/one", "/two", "/three", "/four"]);

    // An Upgrade on a connection that was parked: the tunnel gets the socket.
    wait_idle(&env, 1.0).await;
    plain
        .write_all(
            b"GET /chat HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = plain.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed: {got:?}");
        got.extend_from_slice(&chunk[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    plain.write_all(b"ping through the tunnel").await.unwrap();
    let mut echoed = [0u8; 23];
    tokio::time::timeout(proxy_tests::DEADLINE, plain.read_exact(&mut echoed))
        .await
        .expect("the echo in time")
        .unwrap();
    assert_eq!(&echoed, b"ping through the tunnel");
    drop(plain);

    // TLS.
    let tcp = TcpStream::connect(env.https.unwrap()).await.unwrap();
    let config = Arc::new(ca.client(&["http/1.1"], false));
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("a.test").unwrap(), tcp)
        .await
        .unwrap();
    eventually("the plain connection gone", || async {
        (idle_count(&env).await == 0.0).then_some(())
    })
    .await;
    request_park_request(&env, &mut tls).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_trickled_after_a_request_still_ends_at_the_request_header_timeout() {
    let app = MockUpstream::start("app").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let env = start(&app, &ca, dir.path(), "request_header_timeout = \"3s\"").await;
    let mut stream = TcpStream::connect(env.http).await.unwrap();
    // proxyd counts the timeout from the last request's start: no later than this.
    let started = Instant::now();
    stream.write_all(&request("/one")).await.unwrap();
    response(&mut stream).await;
    // A head that never ends, a byte at a time: parked once with it (after 1 s), it gets
    // `request_header_timeout` from then, never a fresh one per park.
    stream.write_all(b"GET /slow HTTP/1.1\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let closed = loop {
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "a trickled head kept the connection past the request-header timeout"
        );
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
            // Closed, or hyper's 408 then closed.
            Ok(Ok(0) | Err(_)) => break started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => {
                if stream.write_all(b"X").await.is_err() {
                    break started.elapsed();
                }
            }
        }
    };
    assert!(
        closed >= Duration::from_secs(3),
        "closed after {closed:?}, before the request-header timeout"
    );
    env.stop().await;
}

/// An upstream that answers `GET /<size>` with that many bytes, one request per connection
/// (and says so: an upstream that closed a kept-alive connection unannounced would race the next
/// request sent on it, which fails as a 502).
async fn big_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let size: usize = String::from_utf8_lossy(&seen)
                    .split(' ')
                    .nth(1)
                    .and_then(|path| path.trim_start_matches('/').parse().ok())
                    .unwrap_or(0);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&vec![b'x'; size]).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_the_client_has_not_read_past_the_park_delay_arrive_whole() {
    // Sizes around what the kernel's socket buffers and hyper's write buffer hold between
    // them: some wait whole in the kernel (and their connections park), some wait in part
    // upstream (their requests are not over). The case between, a body that has ended with its
    // tail in hyper's buffer, is pinned down in proxyd's own tests (server/io.rs).
    const SIZES: [usize; 8] = [
        256 << 10,
        512 << 10,
        1 << 20,
        2 << 20,
        3 << 20,
        4 << 20,
        6 << 20,
        16 << 20,
    ];
    let upstream = big_upstream().await;
    let env = TestEnv::start_with(
        ADMIN_ON_PORT_0,
        &format!("[[sites]]\nhostnames = [\"a.test\"]\nupstreams = [\"http://{upstream}\"]\n"),
    )
    .await;
    let mut streams = Vec::new();
    for size in SIZES {
        let mut stream = TcpStream::connect(env.http).await.unwrap();
        stream
            .write_all(&request(&format!("/{size}")))
            .await
            .unwrap();
        streams.push((size, stream));
    }
    // The clients read nothing for a while: the responses wait in proxyd and the kernel.
    tokio::time::sleep(PAST_PARK_DELAY * 2).await;
    for (size, stream) in &mut streams {
        let (head, body) = response(stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body.len(), *size);
    }
    // Then they are idle like any other.
    wait_idle(&env, SIZES.len() as f64).await;
    env.stop().await;
}

/// An upstream that answers as soon as it has a request head, before reading the body (as
/// nginx's 401 and 413 do), then reads on (or, unless `read_on`, never reads nor closes again);
/// it logs every request line it sees.
async fn early_answer_upstream(read_on: bool) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                loop {
                    // A head smuggled inside a body proxyd forwards as body shows here too.
                    while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&got[..end]).into_owned();
                        log.lock()
                            .unwrap()
                            .push(head.lines().next().unwrap_or("").to_owned());
                        got.drain(..end + 4);
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
                            .await;
                        if !read_on {
                            std::future::pending::<()>().await;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// What arrives on `stream` within `wait` (until it closes).
async fn read_for(stream: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let until = tokio::time::Instant::now() + wait;
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout_at(until, stream.read(&mut buf)).await {
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rest_of_a_request_body_after_its_early_response_is_never_a_request_of_its_own() {
    let (upstream, seen) = early_answer_upstream(true).await;
    let env = TestEnv::start_with(
        ADMIN_ON_PORT_0,
        &format!("[[sites]]\nhostnames = [\"a.test\"]\nupstreams = [\"http://{upstream}\"]\n"),
    )
    .await;
    let smuggled = b"GET /smuggled HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n";
    let length = smuggled.len();
    let mut chunked = format!("{length:x}\r\n").into_bytes();
    chunked.extend_from_slice(smuggled);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    // (head, rest of the body, whether the rest reaches the upstream: after its final response
    // hyper never tells an `Expect: 100-continue` client to send, and closes instead of reading).
    let cases = [
        (
            format!("POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: {length}\r\n\r\n"),
            smuggled.to_vec(),
            true,
        ),
        (
            "POST /upload HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_owned(),
            chunked,
            true,
        ),
        (
            format!(
                "POST /upload HTTP/1.1\r\nHost: a.test\r\nExpect: 100-continue\r\nContent-Length: {length}\r\n\r\n"
            ),
            smuggled.to_vec(),
            false,
        ),
    ];
    for (head, rest, forwarded) in &cases {
        let mut stream = TcpStream::connect(env.http).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        let (first, body) = response(&mut stream).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert_eq!(body, b"early");
        let heads = seen.lock().unwrap().len();
        // The upload goes on after a pause longer than the park delay: the time is the test.
        tokio::time::sleep(PAST_PARK_DELAY).await;
        assert_eq!(
            idle_count(&env).await,
            0.0,
            "parked with a request body on its way: {head}"
        );
        // (A write error: proxyd closed the connection, which is fine.)
        let _ = stream.write_all(rest).await;
        let after = read_for(&mut stream, Duration::from_secs(1)).await;
        assert!(
            after.is_empty(),
            "the rest of the body was answered as a request: {:?}; the upstream saw {:?}",
            String::from_utf8_lossy(&after),
            seen.lock().unwrap()
        );
        if *forwarded {
            // It reached the upstream as the body it is (the upstream here reads whatever ends
            // in a blank line as a head: with chunked framing, its first line is the chunk's
            // size).
            eventually("the body forwarded", || async {
                (seen.lock().unwrap().len() > heads).then_some(())
            })
            .await;
            if !head.contains("chunked") {
                assert_eq!(
                    seen.lock().unwrap()[heads],
                    "GET /smuggled HTTP/1.1",
                    "{head}"
                );
            }
        }
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_stops_reading_after_answering_does_not_pin_the_client_connection() {
    let (upstream, _) = early_answer_upstream(false).await;
    let env = TestEnv::start_with(
        &format!("{ADMIN_ON_PORT_0}\nrequest_body_timeout = \"2s\""),
        &format!(
            "[[sites]]\nhostnames = [\"a.test\"]\nupstreams = [\"http://{upstream}\"]\nbody_limit_bytes = \"1g\"\n"
        ),
    )
    .await;
    let mut stream = TcpStream::connect(env.http).await.unwrap();
    let head = b"POST /up HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000000000\r\n\r\n";
    stream.write_all(head).await.unwrap();
    let (first, _) = response(&mut stream).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // Upload until every buffer on the way is full: the upstream reads no more.
    let chunk = vec![b'x'; 64 << 10];
    while let Ok(Ok(())) =
        tokio::time::timeout(Duration::from_millis(500), stream.write_all(&chunk)).await
    {}
    // The response is done and the body goes nowhere: closed after request_body_timeout.
    let open = || async { metric(&env.metrics().await, "proxy_connections_open") };
    eventually("the connection closed", || async {
        (open().await == Some(0.0)).then_some(())
    })
    .await;
    let metrics = env.metrics().await;
    assert_eq!(
        metric(&metrics, "proxy_timeouts_total{kind=\"request_body\"}"),
        Some(1.0),
        "{metrics}"
    );
    env.stop().await;
}

/// One request on a new connection to `env`, answered: the connection, and when it was.
async fn after_one_request(env: &TestEnv) -> (TcpStream, Instant) {
    let mut stream = TcpStream::connect(env.http).await.unwrap();
    stream.write_all(&request("/one")).await.unwrap();
    response(&mut stream).await;
    (stream, Instant::now())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_closes_at_the_request_header_timeout_whatever_comes_late() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start_with(
        &format!("{ADMIN_ON_PORT_0}\nrequest_header_timeout = \"3s\""),
        &proxy_tests::site("a.test", &app.url(), ""),
    )
    .await;
    let quiet = async {
        let (mut stream, since) = after_one_request(&env).await;
        // Parked after 1 s, closed at 3 s.
        let rest = read_for(&mut stream, Duration::from_secs(8)).await;
        let closed = since.elapsed();
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
        assert!(
            closed >= Duration::from_millis(2900) && closed < Duration::from_secs(5),
            "closed {closed:?} after its last request, with request_header_timeout = 3s"
        );
    };
    let late_byte = async {
        let (mut stream, since) = after_one_request(&env).await;
        // Just before the idle close, one byte starts a round of its own (the time is the
        // test): it must not buy a second request_header_timeout.
        tokio::time::sleep(Duration::from_millis(2700).saturating_sub(since.elapsed())).await;
        stream.write_all(b"G").await.unwrap();
        let rest = read_for(&mut stream, Duration::from_secs(8)).await;
        let closed = since.elapsed();
        assert!(
            closed < Duration::from_millis(3600),
            "closed {closed:?} after its last request (request_header_timeout 3s); got {:?}",
            String::from_utf8_lossy(&rest)
        );
    };
    tokio::join!(quiet, late_byte);
    env.stop().await;
}
