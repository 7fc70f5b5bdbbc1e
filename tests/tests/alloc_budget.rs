//! A performance regression guard that times nothing: the heap allocations proxyd makes per
//! proxied request, and the heap it keeps per idle keep-alive connection (HTTP/1.1 plain and
//! over TLS, HTTP/2), counted on a fixed workload. Counts repeat from run to run, whatever else
//! the machine is doing, so a change that adds work to the request path fails here instead of
//! slipping by as benchmark noise.
//!
//! Everything runs on one current-thread runtime on the test's thread, and the counting allocator
//! (`allocation-counter`) counts that thread only. The client and the upstream are hand-written
//! loops over fixed buffers that allocate nothing per request, so what is counted is proxyd's
//! (and tokio's and hyper's on its behalf). The budgets are today's figures with a little room;
//! lower them when a change makes proxyd cheaper (bench/ measures what that buys).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::net::SocketAddr;

use std::sync::Arc;

use proxy_tests::tls::TestCa;
use proxy_tests::{ADMIN_ON_PORT_0, HTTPS_ON_PORT_0, Setup, TestEnv, eventually};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Allocations per proxied HTTP/1.1 keep-alive GET, at most (19.0 measured with proxyd's own
/// upstream pool; 24.0 with hyper-util's client before it).
const ALLOCATIONS_PER_REQUEST: f64 = 21.0;

/// Heap bytes proxyd keeps per idle HTTP/1.1 keep-alive client connection, at most: 1,388
/// measured in a debug build since a connection's task is one future of 768 bytes (2,263 when
/// it kept its arguments twice and every state's room, 1,664 bytes of task; 39,044 while hyper
/// kept its read and write buffers on every idle connection).
const BYTES_PER_IDLE_CONNECTION: f64 = 1.5 * 1024.0;

/// The same over TLS: 5,015 measured (rustls's connection state on top) since the TLS stream
/// is on rustls's unbuffered API and gives its buffers back while it waits; 9,111 with rustls's
/// buffered connection, which keeps a 4 KiB receive buffer for the connection's life.
const BYTES_PER_IDLE_TLS_CONNECTION: f64 = 5.5 * 1024.0;

/// Heap bytes proxyd keeps per idle HTTP/2 connection (h2c), at most: 46,531 measured. An idle
/// HTTP/2 connection is not parked: most of it is the `h2` crate's, kept for the connection's
/// life whatever it carries (a 16 KiB write buffer, tokio-util's 8 KiB read buffer, a 4 KiB
/// HPACK decoding buffer, both HPACK tables).
const BYTES_PER_IDLE_H2C_CONNECTION: f64 = 48.0 * 1024.0;

const REQUEST: &[u8] =
    b"GET /budget HTTP/1.1\r\nHost: budget.test\r\nUser-Agent: alloc-budget\r\n\r\n";
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Type: text/plain\r\n\r\nhello world\n";

/// An upstream that answers every request head with [`RESPONSE`], on any number of keep-alive
/// connections, allocating nothing per request.
async fn fixed_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut filled = 0;
                loop {
                    let Ok(n) = stream.read(&mut buf[filled..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    filled += n;
                    // Requests here have no body: a head ends each one.
                    while let Some(end) = find_head_end(&buf[..filled]) {
                        if stream.write_all(RESPONSE).await.is_err() {
                            return;
                        }
                        buf.copy_within(end..filled, 0);
                        filled -= end;
                    }
                    if filled == buf.len() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Sends [`REQUEST`] and reads one whole response (head and its Content-Length body).
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, buf: &mut [u8; 4096]) {
    stream.write_all(REQUEST).await.unwrap();
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await.unwrap();
        assert!(n > 0, "proxyd closed the connection");
        filled += n;
        if let Some(head) = find_head_end(&buf[..filled]) {
            let text = std::str::from_utf8(&buf[..head]).unwrap();
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            // Without allocating: the client's own allocations would count.
            let length: usize = text
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if filled >= head + length {
                assert_eq!(filled, head + length, "one response at a time");
                return;
            }
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn start(upstream: SocketAddr) -> TestEnv {
    TestEnv::start(&format!(
        "[[sites]]\nhostnames = [\"budget.test\"]\nupstreams = [\"http://{upstream}\"]\n"
    ))
    .await
}

#[test]
fn allocations_per_proxied_request_stay_within_budget() {
    const REQUESTS: u32 = 2000;
    let rt = runtime();
    let (env, mut client) = rt.block_on(async {
        let env = start(fixed_upstream().await).await;
        let mut client = TcpStream::connect(env.http).await.unwrap();
        let mut buf = [0u8; 4096];
        // Warm: the upstream connection pooled, every lazily built structure built.
        for _ in 0..200 {
            round_trip(&mut client, &mut buf).await;
        }
        (env, client)
    });
    let info = allocation_counter::measure(|| {
        rt.block_on(async {
            let mut buf = [0u8; 4096];
            for _ in 0..REQUESTS {
                round_trip(&mut client, &mut buf).await;
            }
        });
    });
    let per_request = info.count_total as f64 / f64::from(REQUESTS);
    let bytes_per_request = info.bytes_total as f64 / f64::from(REQUESTS);
    println!(
        "allocations per proxied request: {per_request:.1} ({bytes_per_request:.0} bytes); budget {ALLOCATIONS_PER_REQUEST}"
    );
    assert!(
        per_request <= ALLOCATIONS_PER_REQUEST,
        "proxyd now makes {per_request:.1} allocations per proxied request, over the budget of \
         {ALLOCATIONS_PER_REQUEST}: find the new ones (or, if they are worth it, measure them in \
         bench/ and raise the budget)"
    );
    rt.block_on(env.stop());
}

#[test]
fn heap_kept_per_idle_connection_stays_within_budget() {
    let plain = heap_per_idle_connection(false);
    let tls = heap_per_idle_connection(true);
    println!(
        "heap kept per idle keep-alive connection: {plain:.0} bytes plain, {tls:.0} bytes TLS; \
         budgets {BYTES_PER_IDLE_CONNECTION}, {BYTES_PER_IDLE_TLS_CONNECTION}"
    );
    assert!(
        plain <= BYTES_PER_IDLE_CONNECTION,
        "proxyd now keeps {plain:.0} bytes per idle keep-alive connection, over the budget of \
         {BYTES_PER_IDLE_CONNECTION}"
    );
    assert!(
        tls <= BYTES_PER_IDLE_TLS_CONNECTION,
        "proxyd now keeps {tls:.0} bytes per idle keep-alive TLS connection, over the budget of \
         {BYTES_PER_IDLE_TLS_CONNECTION}"
    );
}

/// The heap proxyd keeps per idle HTTP/1.1 keep-alive connection (over TLS when `tls`): the
/// connections are made and held by clients on another thread (whose allocations are not
/// counted), each after one request, until proxyd counts them all idle.
fn heap_per_idle_connection(tls: bool) -> f64 {
    const CONNECTIONS: usize = 200;
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let issued = ca.issue(certs.path(), "budget", &["budget.test"]);
    let rt = runtime();
    let env = rt.block_on(async {
        let upstream = fixed_upstream().await;
        let setup = Setup {
            proxy_keys: ADMIN_ON_PORT_0.to_owned(),
            listeners: HTTPS_ON_PORT_0.to_owned(),
            ..Setup::default()
        };
        let body = format!(
            "[[sites]]\nhostnames = [\"budget.test\"]\nupstreams = [\"http://{upstream}\"]\nhttps_redirect = false\n{}\n",
            issued.site_tls()
        );
        let env = TestEnv::start_setup(setup, &body).await;
        // Warm, and the upstream connection pooled.
        let mut client = TcpStream::connect(env.http).await.unwrap();
        let mut buf = [0u8; 4096];
        for _ in 0..50 {
            round_trip(&mut client, &mut buf).await;
        }
        env
    });
    let addr = if tls { env.https.unwrap() } else { env.http };
    let client_config = Arc::new(ca.client(&["http/1.1"], false));
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let clients = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut held: Vec<Box<dyn Held>> = Vec::with_capacity(CONNECTIONS);
            let mut buf = [0u8; 4096];
            for _ in 0..CONNECTIONS {
                let tcp = TcpStream::connect(addr).await.unwrap();
                if tls {
                    let name = ServerName::try_from("budget.test").unwrap();
                    let mut stream = tokio_rustls::TlsConnector::from(client_config.clone())
                        .connect(name, tcp)
                        .await
                        .unwrap();
                    round_trip(&mut stream, &mut buf).await;
                    held.push(Box::new(stream));
                } else {
                    let mut stream = tcp;
                    round_trip(&mut stream, &mut buf).await;
                    held.push(Box::new(stream));
                }
            }
            held_tx.send(()).unwrap();
            let _ = release_rx.recv();
            drop(held);
        });
    });
    let info = allocation_counter::measure(|| {
        rt.block_on(async {
            // Every connection made, answered, and waiting for its next request without buffers.
            tokio::task::spawn_blocking(move || held_rx.recv().unwrap())
                .await
                .unwrap();
            let env = &env;
            eventually("every connection counted idle", || async move {
                (idle_connections(&env.metrics().await) >= CONNECTIONS).then_some(())
            })
            .await;
        });
    });
    release_tx.send(()).unwrap();
    clients.join().unwrap();
    rt.block_on(env.stop());
    info.bytes_current as f64 / CONNECTIONS as f64
}

#[test]
fn heap_kept_per_idle_h2c_connection_stays_within_budget() {
    let h2c = heap_per_idle_h2c_connection();
    println!(
        "heap kept per idle HTTP/2 (h2c) connection: {h2c:.0} bytes; budget \
         {BYTES_PER_IDLE_H2C_CONNECTION}"
    );
    assert!(
        h2c <= BYTES_PER_IDLE_H2C_CONNECTION,
        "proxyd now keeps {h2c:.0} bytes per idle HTTP/2 connection, over the budget of \
         {BYTES_PER_IDLE_H2C_CONNECTION}"
    );
}

/// The heap proxyd keeps per idle HTTP/2 connection (prior knowledge, over TCP): clients on
/// another thread each open a connection, send one GET, read its answer and hold the
/// connection; counted once proxyd has them all open and no request in flight.
fn heap_per_idle_h2c_connection() -> f64 {
    const CONNECTIONS: usize = 100;
    let rt = runtime();
    let env = rt.block_on(async {
        let upstream = fixed_upstream().await;
        let env = TestEnv::start_with(
            ADMIN_ON_PORT_0,
            &format!(
                "[[sites]]\nhostnames = [\"budget.test\"]\nupstreams = [\"http://{upstream}\"]\n"
            ),
        )
        .await;
        let mut client = TcpStream::connect(env.http).await.unwrap();
        let mut buf = [0u8; 4096];
        for _ in 0..50 {
            round_trip(&mut client, &mut buf).await;
        }
        env
    });
    let addr = env.http;
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let clients = std::thread::spawn(move || {
        runtime().block_on(async move {
            let mut held = Vec::with_capacity(CONNECTIONS);
            for _ in 0..CONNECTIONS {
                let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                        .await
                        .unwrap();
                let task = tokio::spawn(conn);
                let request = http::Request::get("http://budget.test/budget")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert_eq!(response.status(), 200);
                http_body_util::BodyExt::collect(response.into_body())
                    .await
                    .unwrap();
                held.push((sender, task));
            }
            held_tx.send(()).unwrap();
            let _ = release_rx.recv();
            drop(held);
        });
    });
    let info = allocation_counter::measure(|| {
        rt.block_on(async {
            tokio::task::spawn_blocking(move || held_rx.recv().unwrap())
                .await
                .unwrap();
            let env = &env;
            eventually(
                "every connection open, no request in flight",
                || async move {
                    let metrics = env.metrics().await;
                    (gauge(&metrics, "proxy_connections_open ") >= CONNECTIONS
                        && gauge(&metrics, "proxy_requests_in_flight ") == 0)
                        .then_some(())
                },
            )
            .await;
        });
    });
    release_tx.send(()).unwrap();
    clients.join().unwrap();
    rt.block_on(env.stop());
    info.bytes_current as f64 / CONNECTIONS as f64
}

/// A connection a client holds.
trait Held: Send {}
impl<T: Send> Held for T {}

/// `proxy_connections_idle` from a metrics page.
fn idle_connections(metrics: &str) -> usize {
    gauge(metrics, "proxy_connections_idle ")
}

/// The value of the series whose line starts with `series` on a metrics page; 0 without it.
fn gauge(metrics: &str, series: &str) -> usize {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}
