//! HTTP/2 abuse with hand-made frames on proxyd's plain listener (h2c, prior knowledge): rapid
//! reset, resets after acceptance, CONTINUATION and empty DATA floods, SETTINGS and PING floods,
//! stream floods and zero-window stalls. After each: the abuse ended within a bounded number of
//! frames (or was absorbed at a bounded cost), memory stayed bounded, and well-behaved HTTP/1.1
//! and h2c clients were served.
//!
//! proxyd runs in this process, so the process's resident set size covers it. The tests take
//! turns ([`SERIAL`]) so that one test's memory does not show up in another's measurement.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_tests::h2raw::{
    PREFACE, Pong, RawConn, code, continuation, data, flag, headers, kind, literal, literal_head,
    ping, request, rst_stream, setting, settings, window_update,
};
use proxy_tests::{DEADLINE, MockUpstream, TestEnv, eventually, get, rss_kib};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// One test at a time: memory is measured for the whole process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How much the process may grow during one attack. Generous: it is there to catch growth
/// with the number of frames (thousands of streams, megabytes of headers), not allocator noise.
const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

/// The :status 200 of a response head: HPACK static table entry 8, indexed.
const STATUS_200: u8 = 0x88;

const END: u8 = flag::END_STREAM | flag::END_HEADERS;

fn sites(sites: &[(&str, &str)]) -> String {
    sites
        .iter()
        .map(|(host, upstream)| {
            format!("[[sites]]\nhostnames = [\"{host}\"]\nupstreams = [\"{upstream}\"]\n")
        })
        .collect()
}

async fn start(list: &[(&str, &str)]) -> TestEnv {
    TestEnv::start(&sites(list)).await
}

fn assert_rss_bounded(before: u64, attack: &str) {
    let after = rss_kib();
    let growth = after.saturating_sub(before);
    eprintln!("{attack}: RSS {before} KiB -> {after} KiB");
    assert!(
        growth < RSS_GROWTH_LIMIT_KIB,
        "{attack}: the process grew by {growth} KiB"
    );
}

/// A well-behaved HTTP/1.1 client and a well-behaved h2c client are both answered 200 by
/// `host`'s upstream.
async fn assert_served(addr: SocketAddr, host: &str) {
    let answer = tokio::time::timeout(DEADLINE, get(addr, host, "/well-behaved"))
        .await
        .expect("an HTTP/1.1 answer within the deadline");
    assert_eq!(answer.status, 200, "HTTP/1.1: {answer:?}");

    let h2c = async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let request = http::Request::get(format!("http://{host}/well-behaved-h2"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        response.into_body().collect().await.unwrap();
        status
    };
    let status = tokio::time::timeout(DEADLINE, h2c)
        .await
        .expect("an h2c answer within the deadline");
    assert_eq!(status, 200, "h2c");
}

/// Client-initiated stream number `n` (0, 1, 2, ...): 1, 3, 5, ...
fn stream(n: u32) -> u32 {
    2 * n + 1
}

#[tokio::test(flavor = "multi_thread")]
async fn rapid_reset_gets_enhance_your_calm_within_the_first_batch() {
    let _serial = SERIAL.lock().await;
    let app = MockUpstream::start("app").await;
    let env = start(&[("app.test", &app.url())]).await;
    let rss = rss_kib();

    // CVE-2023-44487: HEADERS and RST_STREAM right after, thousands of times, in writes of
    // 100 pairs. h2 counts streams reset before hyper accepted them and sends GOAWAY
    // ENHANCE_YOUR_CALM past 20 (`max_pending_accept_reset_streams`).
    const STREAMS: u32 = 5_000;
    const BATCH: u32 = 100;
    let (mut conn, _) = RawConn::open(env.http, &[]).await;
    let mut sent = 0;
    while sent < STREAMS && !conn.drain() {
        let mut batch = Vec::new();
        for n in sent..sent + BATCH {
            let block = request("GET", "app.test", &format!("/rapid/{n}"));
            batch.extend(headers(stream(n), END, &block));
            batch.extend(rst_stream(stream(n), code::CANCEL));
        }
        sent += BATCH;
        if conn.send(&batch).await.is_err() {
            break;
        }
    }
    let go_away = conn.wait_for_go_away().await;
    conn.wait_for_close().await;
    eprintln!(
        "rapid reset: {sent} streams written, {go_away:?}, upstream saw {}",
        app.hits()
    );
    assert_eq!(go_away.code, code::ENHANCE_YOUR_CALM, "{go_away:?}");
    assert!(
        go_away.last_stream < stream(BATCH),
        "the server went on past the first {BATCH} streams: {go_away:?}"
    );
    assert!(
        app.hits() < 50,
        "reset streams reached the upstream: {}",
        app.hits()
    );

    assert_served(env.http, "app.test").await;
    assert_rss_bounded(rss, "rapid reset");
    env.stop().await;
}

/// An upstream that takes request heads and never answers; it counts connections, heads, and
/// connections the proxy closed.
struct Hanging {
    addr: SocketAddr,
    counts: Arc<[AtomicUsize; 3]>,
    accept: tokio::task::JoinHandle<()>,
}

impl Hanging {
    const ACCEPTED: usize = 0;
    const HEADS: usize = 1;
    const CLOSED: usize = 2;

    async fn start() -> Hanging {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts: Arc<[AtomicUsize; 3]> = Arc::default();
        let shared = counts.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                shared[Hanging::ACCEPTED].fetch_add(1, Ordering::SeqCst);
                let counts = shared.clone();
                tokio::spawn(async move {
                    let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
                    let mut counted = false;
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        if !counted {
                            head.extend_from_slice(&buf[..n]);
                            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                                counts[Hanging::HEADS].fetch_add(1, Ordering::SeqCst);
                                counted = true;
                            }
                        }
                    }
                    counts[Hanging::CLOSED].fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Hanging {
            addr,
            counts,
            accept,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn get(&self, which: usize) -> usize {
        self.counts[which].load(Ordering::SeqCst)
    }

    /// Waits until the proxy has forwarded `heads` requests in all.
    async fn wait_for_heads(&self, heads: usize) {
        eventually(&format!("{heads} request heads upstream"), || {
            std::future::ready((self.get(Hanging::HEADS) >= heads).then_some(()))
        })
        .await;
    }

    /// Waits until the proxy has closed every connection it opened.
    async fn wait_for_all_closed(&self) {
        eventually("the proxy to close its upstream connections", || {
            let (accepted, closed) = (self.get(Hanging::ACCEPTED), self.get(Hanging::CLOSED));
            std::future::ready((closed == accepted).then_some(()))
        })
        .await;
    }
}

impl Drop for Hanging {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn resets_after_acceptance_cancel_the_upstream_requests_and_keep_the_connection() {
    let _serial = SERIAL.lock().await;
    let slow = Hanging::start().await;
    let app = MockUpstream::start("app").await;
    let env = start(&[("slow.test", &slow.url()), ("app.test", &app.url())]).await;
    let rss = rss_kib();

    // Waves of requests the proxy forwards to an upstream that never answers, each reset once
    // the upstream has them. These are ordinary cancellations: no GOAWAY, and every reset
    // must reach the upstream as a closed connection.
    const WAVES: u32 = 4;
    const PER_WAVE: u32 = 50;
    let (mut conn, _) = RawConn::open(env.http, &[]).await;
    for wave in 0..WAVES {
        let first = wave * PER_WAVE;
        let ids: Vec<u32> = (first..first + PER_WAVE).map(stream).collect();
        let block = request("GET", "slow.test", "/hold");
        let opened: Vec<u8> = ids
            .iter()
            .flat_map(|&id| headers(id, END, &block))
            .collect();
        conn.send(&opened).await.unwrap();
        slow.wait_for_heads(((wave + 1) * PER_WAVE) as usize).await;
        let resets: Vec<u8> = ids
            .iter()
            .flat_map(|&id| rst_stream(id, code::CANCEL))
            .collect();
        conn.send(&resets).await.unwrap();
        slow.wait_for_all_closed().await;
    }
    assert_eq!(
        slow.get(Hanging::HEADS),
        (WAVES * PER_WAVE) as usize,
        "one upstream request per stream"
    );
    assert_eq!(conn.ping().await, Pong::Ack, "the connection stays open");
    assert_eq!(conn.go_away(), None);

    // The same connection still carries a request.
    let id = stream(WAVES * PER_WAVE);
    let block = request("GET", "app.test", "/after-resets");
    conn.send(&headers(id, END, &block)).await.unwrap();
    let head = conn
        .wait_for("the response head", |f| {
            f.kind == kind::HEADERS && f.stream == id
        })
        .await;
    assert_eq!(head.payload.first(), Some(&STATUS_200), "{head:?}");

    drop(conn);
    assert_served(env.http, "app.test").await;
    assert_rss_bounded(rss, "resets after acceptance");
    env.stop().await;
}

/// Sends HEADERS without END_HEADERS on stream 1 (its block `first`), then the frames of
/// `next` over and over until a write fails: the server closed the connection. Returns the
/// frames written and the server's GOAWAY.
async fn continuation_flood(
    addr: SocketAddr,
    first: &[u8],
    next: &[u8],
) -> (usize, proxy_tests::h2raw::GoAway) {
    let (mut conn, _) = RawConn::open(addr, &[]).await;
    conn.send(&headers(1, flag::END_STREAM, first))
        .await
        .unwrap();
    let per_write = (64 * 1024 / next.len()).max(1);
    let batch = next.repeat(per_write);
    let limit = kernel_buffer_limit();
    let mut sent = 0;
    while conn.send(&batch).await.is_ok() {
        sent += per_write;
        assert!(
            sent * next.len() < limit,
            "the server took {sent} CONTINUATION frames and went on reading"
        );
    }
    let go_away = conn.wait_for_go_away().await;
    conn.wait_for_close().await;
    (sent, go_away)
}

#[tokio::test(flavor = "multi_thread")]
async fn continuation_floods_get_enhance_your_calm() {
    let _serial = SERIAL.lock().await;
    let app = MockUpstream::start("app").await;
    let env = start(&[("app.test", &app.url())]).await;
    let rss = rss_kib();

    // A header block in a few pieces is fine.
    let (mut conn, server) = RawConn::open(env.http, &[]).await;
    let block = request("GET", "app.test", "/in-pieces");
    let mut pieces = headers(1, flag::END_STREAM, &block[..10]);
    pieces.extend(continuation(1, 0, &block[10..20]));
    pieces.extend(continuation(1, 0, &[]));
    pieces.extend(continuation(1, flag::END_HEADERS, &block[20..]));
    conn.send(&pieces).await.unwrap();
    let head = conn
        .wait_for("the response head", |f| {
            f.kind == kind::HEADERS && f.stream == 1
        })
        .await;
    assert_eq!(head.payload.first(), Some(&STATUS_200), "{head:?}");
    drop(conn);

    // The largest header list the server takes fits in `needed` frames. A block with twice as
    // many CONTINUATIONs, every one of them empty, is abuse, even when it ends.
    let value = |id: u16, default: u32| {
        server
            .iter()
            .find_map(|&(k, v)| (k == id).then_some(v))
            .unwrap_or(default)
    };
    let max_list = value(setting::MAX_HEADER_LIST_SIZE, 16 << 20);
    let max_frame = value(setting::MAX_FRAME_SIZE, 16_384);
    let needed = max_list.div_ceil(max_frame) as usize;
    let (mut conn, _) = RawConn::open(env.http, &[]).await;
    let mut padded = headers(1, flag::END_STREAM, &block);
    padded.extend(continuation(1, 0, &[]).repeat(2 * needed + 1));
    padded.extend(continuation(1, flag::END_HEADERS, &[]));
    let _ = conn.send(&padded).await;
    assert_eq!(
        conn.ping().await,
        Pong::GoAway(proxy_tests::h2raw::GoAway {
            last_stream: 0,
            code: code::ENHANCE_YOUR_CALM,
            debug: "too_many_continuations".into()
        }),
        "a header block in {} frames (the largest list needs {needed})",
        2 * needed + 2
    );

    // CVE-2024-27316 style: CONTINUATION frames without end, empty ones, ones full of
    // header fields, and ones that carry a single value larger than any header list.
    let empty = continuation(1, 0, &[]);
    let mut fields = Vec::new();
    for n in 0.. {
        literal(&mut fields, &format!("x-flood-{n}"), &[b'a'; 1000]);
        if fields.len() > max_frame as usize - 1100 {
            break;
        }
    }
    let full = continuation(1, 0, &fields);
    let mut giant = block.clone();
    literal_head(&mut giant, "x-giant", 1 << 20);
    let filler = continuation(1, 0, &vec![b'a'; max_frame as usize]);
    for (what, first, next) in [
        ("empty", &block, &empty),
        ("full of fields", &block, &full),
        ("one giant value", &giant, &filler),
    ] {
        let (sent, go_away) = continuation_flood(env.http, first, next).await;
        eprintln!(
            "CONTINUATION flood, {what}: {sent} frames written (most never read) before the connection broke, {go_away:?}"
        );
        assert_eq!(go_away.code, code::ENHANCE_YOUR_CALM, "{what}: {go_away:?}");
    }
    assert_eq!(
        app.hits(),
        1,
        "only the request in pieces reached the upstream"
    );

    assert_served(env.http, "app.test").await;
    assert_rss_bounded(rss, "CONTINUATION floods");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_empty_data_flood_gets_enhance_your_calm_within_200_frames() {
    let _serial = SERIAL.lock().await;
    let app = MockUpstream::start("app").await;
    let env = start(&[("app.test", &app.url())]).await;
    let rss = rss_kib();

    // A POST whose body never ends, then empty DATA frames 10 at a time, each batch followed by
    // a PING: its ACK means the server took the batch and carries on.
    let (mut conn, _) = RawConn::open(env.http, &[]).await;
    let block = request("POST", "app.test", "/upload");
    conn.send(&headers(1, flag::END_HEADERS, &block))
        .await
        .unwrap();
    let batch = data(1, 0, &[]).repeat(10);
    let mut sent = 0;
    let go_away = loop {
        assert!(sent < 10_000, "no GOAWAY after {sent} empty DATA frames");
        if conn.send(&batch).await.is_ok() {
            sent += 10;
        }
        let pong = conn.ping().await;
        assert_ne!(
            pong,
            Pong::Closed,
            "closed without GOAWAY after {sent} empty DATA frames"
        );
        if let Pong::GoAway(go_away) = pong {
            break go_away;
        }
    };
    conn.wait_for_close().await;
    eprintln!("empty DATA flood: GOAWAY after {sent} frames: {go_away:?}");
    assert_eq!(go_away.code, code::ENHANCE_YOUR_CALM, "{go_away:?}");
    assert!(sent <= 200, "{sent} empty DATA frames before GOAWAY");

    // The upstream got the request head and a body that broke off, never a whole request.
    let seen = eventually("the upstream to see the body break off", || {
        std::future::ready(app.requests().first().cloned())
    })
    .await;
    assert_eq!(seen.body, None, "{seen:?}");

    assert_served(env.http, "app.test").await;
    assert_rss_bounded(rss, "empty DATA flood");
    env.stop().await;
}

/// The most bytes the kernel may hold for one loopback connection whose client reads nothing:
/// the server's send and receive buffers at their largest, plus the client's, pinned to
/// 16 KiB each by [`stalled_flood`]. Anything past that the server would hold itself.
fn kernel_buffer_limit() -> usize {
    let max = |file: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{file}"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(2)?.parse::<usize>().ok())
            .unwrap_or(32 << 20)
    };
    max("tcp_wmem") + max("tcp_rmem") + (1 << 20)
}

/// Opens h2c with small socket buffers, then writes `frame` over and over and never reads,
/// until the writes stall. Returns the connection (still open) and the bytes written.
async fn stalled_flood(addr: SocketAddr, frame: &[u8]) -> (TcpStream, usize) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.set_send_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(settings(&[]));
    stream.write_all(&hello).await.unwrap();

    let chunk = frame.repeat(64 * 1024 / frame.len());
    let limit = kernel_buffer_limit();
    let (mut written, mut offset, mut idle) = (0, 0, 0);
    // Two write attempts in a row that make no progress in 250 ms: the server stopped reading.
    while idle < 2 {
        assert!(
            written < limit,
            "the server took {written} bytes without the client reading its answers"
        );
        match tokio::time::timeout(Duration::from_millis(250), stream.write(&chunk[offset..])).await
        {
            Ok(result) => {
                let n = result.as_ref().map_or(0, |&n| n);
                assert!(
                    n > 0,
                    "the connection broke after {written} bytes: {result:?}"
                );
                (written, offset, idle) = (written + n, (offset + n) % chunk.len(), 0);
            }
            Err(_) => idle += 1,
        }
    }
    (stream, written)
}

/// The SETTINGS frame of the flood: each one changes the stream window, so h2 must apply it.
fn settings_frame(n: u32) -> Vec<u8> {
    settings(&[
        (setting::INITIAL_WINDOW_SIZE, 65_535 + n % 2),
        (setting::MAX_FRAME_SIZE, 16_384),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_settings_flood_is_acked_one_for_one_and_stalls_when_the_client_does_not_read() {
    let _serial = SERIAL.lock().await;
    let app = MockUpstream::start("app").await;
    let env = start(&[("app.test", &app.url())]).await;
    let rss = rss_kib();

    // A client that reads gets one ACK per SETTINGS and keeps its connection.
    const FLOOD: u32 = 5_000;
    let (mut conn, _) = RawConn::open(env.http, &[]).await;
    let flood: Vec<u8> = (0..FLOOD).flat_map(settings_frame).collect();
    conn.send(&flood).await.unwrap();
    assert_eq!(conn.ping().await, Pong::Ack);
    let acks = conn
        .received
        .iter()
        .filter(|f| f.kind == kind::SETTINGS && f.has(flag::ACK))
        .count();
    assert_eq!(
        acks,
        FLOOD as usize + 1,
        "one ACK per SETTINGS, ours included"
    );

    // A client that never reads: h2 holds one ACK at a time and stops reading while it cannot
    // write it, so the flood stalls in the kernel's buffers.
    drop(conn);
    let (stalled, written) = stalled_flood(env.http, &settings_frame(0)).await;
    eprintln!("SETTINGS flood without reading: stalled after {written} bytes");
    assert_served(env.http, "app.test").await;
    drop(stalled);

    assert_rss_bounded(rss, "SETTINGS flood");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ping_flood_is_acked_one_for_one_and_stalls_when_the_client_does_not_read() {
    let _serial = SERIAL.lock().await;
    let app = MockUpstream::start("app").await;
    let env = start(&[("app.test", &app.url())]).await;
    let rss = rss_kib();

    const FLOOD: u64 = 20_000;
    let (mut conn, _) = RawConn::open(env.http, &[]).await;
    let flood: Vec<u8> = (1 << 32..(1 << 32) + FLOOD).flat_map(ping).collect();
    conn.send(&flood).await.unwrap();
    assert_eq!(conn.ping().await, Pong::Ack);
    let acks = conn
        .received
        .iter()
        .filter(|f| f.kind == kind::PING && f.has(flag::ACK))
        .count();
    assert_eq!(acks, FLOOD as usize + 1, "one ACK per PING, ours included");

    drop(conn);
    let (stalled, written) = stalled_flood(env.http, &ping(7)).await;
    eprintln!("PING flood without reading: stalled after {written} bytes");
    assert_served(env.http, "app.test").await;
    drop(stalled);

    assert_rss_bounded(rss, "PING flood");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_flood_is_refused_past_max_concurrent_streams_then_sent_away() {
    let _serial = SERIAL.lock().await;
    let slow = Hanging::start().await;
    let app = MockUpstream::start("app").await;
    let env = start(&[("slow.test", &slow.url()), ("app.test", &app.url())]).await;
    let rss = rss_kib();

    let (mut conn, server) = RawConn::open(env.http, &[]).await;
    let max = server
        .iter()
        .find_map(|&(k, v)| (k == setting::MAX_CONCURRENT_STREAMS).then_some(v))
        .expect("the server advertises SETTINGS_MAX_CONCURRENT_STREAMS");
    eprintln!("SETTINGS_MAX_CONCURRENT_STREAMS = {max}");

    // `max` streams to an upstream that never answers stay open; every stream past them is
    // refused.
    const EXCESS: u32 = 50;
    let block = request("GET", "slow.test", "/hold");
    let opened: Vec<u8> = (0..max + EXCESS)
        .flat_map(|n| headers(stream(n), END, &block))
        .collect();
    conn.send(&opened).await.unwrap();
    assert_eq!(conn.ping().await, Pong::Ack);
    let refused: Vec<u32> = conn
        .received
        .iter()
        .filter(|f| f.reset_code() == Some(code::REFUSED_STREAM))
        .map(|f| f.stream)
        .collect();
    let expected: Vec<u32> = (max..max + EXCESS).map(stream).collect();
    assert_eq!(
        refused, expected,
        "exactly the streams past {max} are refused"
    );
    slow.wait_for_heads(max as usize).await;
    assert_eq!(conn.ping().await, Pong::Ack);
    assert_eq!(
        slow.get(Hanging::HEADS),
        max as usize,
        "refused streams stay here"
    );
    assert_served(env.http, "app.test").await;

    // Going on opening streams: each refusal counts as an error reset, and past hyper's
    // `max_local_error_reset_streams` (1024) the server sends the client away.
    let mut next = max + EXCESS;
    let go_away = loop {
        assert!(next < max + 10_000, "no GOAWAY after {next} streams");
        let more: Vec<u8> = (next..next + 100)
            .flat_map(|n| headers(stream(n), END, &block))
            .collect();
        next += 100;
        let _ = conn.send(&more).await;
        match conn.ping().await {
            Pong::GoAway(go_away) => break go_away,
            // The GOAWAY may have come with the frames before the close.
            Pong::Closed => {
                break conn
                    .received
                    .iter()
                    .find_map(|f| f.go_away())
                    .unwrap_or_else(|| panic!("closed without GOAWAY after {next} streams"));
            }
            Pong::Ack => {}
        }
    };
    conn.wait_for_close().await;
    let refused = conn
        .received
        .iter()
        .filter(|f| f.reset_code() == Some(code::REFUSED_STREAM))
        .count();
    eprintln!("stream flood: {refused} refused, then {go_away:?} after {next} streams");
    assert_eq!(go_away.code, code::ENHANCE_YOUR_CALM, "{go_away:?}");
    assert!(refused <= 1_100, "{refused} refusals before GOAWAY");
    slow.wait_for_all_closed().await;

    assert_served(env.http, "app.test").await;
    assert_rss_bounded(rss, "stream flood");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_zero_window_client_stalls_its_response_without_the_proxy_buffering_it() {
    let _serial = SERIAL.lock().await;
    let (big, counts) = proxy_tests::backend::big_upstream().await;
    const BIG_BODY: usize = proxy_tests::backend::BIG_BODY;
    let app = MockUpstream::start("app").await;
    let big_url = format!("http://{big}");
    let env = start(&[("big.test", &big_url), ("app.test", &app.url())]).await;
    let rss = rss_kib();

    // Stream windows of 0 and never a WINDOW_UPDATE: the proxy may send the response head but
    // no body byte, and it must stop pulling the body from the upstream.
    let (mut conn, _) = RawConn::open(env.http, &[(setting::INITIAL_WINDOW_SIZE, 0)]).await;
    conn.send(&headers(1, END, &request("GET", "big.test", "/big")))
        .await
        .unwrap();
    let head = conn
        .wait_for("the response head", |f| {
            f.kind == kind::HEADERS && f.stream == 1
        })
        .await;
    assert_eq!(head.payload.first(), Some(&STATUS_200), "{head:?}");

    // Wait until the upstream's body stops moving (the same count twice, 200 ms apart):
    // every buffer on the way is full.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut produced = counts.produced.load(Ordering::SeqCst);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = counts.produced.load(Ordering::SeqCst);
        if now == produced {
            break;
        }
        produced = now;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream's body still moves: {produced} bytes"
        );
    }
    eprintln!("zero window: the upstream handed out {produced} of {BIG_BODY} bytes");
    assert!(
        produced < kernel_buffer_limit(),
        "{produced} bytes left the upstream for a client with a zero window"
    );
    assert_eq!(conn.ping().await, Pong::Ack);
    let body_bytes: usize = conn
        .received
        .iter()
        .filter(|f| f.kind == kind::DATA && f.stream == 1)
        .map(|f| f.payload.len())
        .sum();
    assert_eq!(body_bytes, 0, "DATA past a zero window");
    assert_served(env.http, "app.test").await;
    assert_rss_bounded(rss, "zero-window stall");

    // A little window: exactly that much body, then nothing again.
    conn.send(&window_update(1, 1000)).await.unwrap();
    let first = conn
        .wait_for("body bytes", |f| f.kind == kind::DATA && f.stream == 1)
        .await;
    assert_eq!(first.payload.len(), 1000);

    // The client goes away: the proxy drops the upstream response.
    drop(conn);
    eventually("the proxy to drop the upstream body", || {
        std::future::ready((counts.abandoned.load(Ordering::SeqCst) == 1).then_some(()))
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hand_made_request_with_a_body_is_served() {
    // Keeps the frame writer honest: a normal request with its body in DATA frames is served,
    // so the attacks above fail for the reasons they claim.
    let _serial = SERIAL.lock().await;
    let app = MockUpstream::start("app").await;
    let env = start(&[("app.test", &app.url())]).await;
    let (mut conn, _) = RawConn::open(env.http, &[]).await;
    let block = request("POST", "app.test", "/body");
    let mut frames = headers(1, flag::END_HEADERS, &block);
    frames.extend(data(1, 0, b"hello "));
    frames.extend(data(1, flag::END_STREAM, b"world"));
    conn.send(&frames).await.unwrap();
    let head = conn
        .wait_for("the response head", |f| {
            f.kind == kind::HEADERS && f.stream == 1
        })
        .await;
    assert_eq!(head.payload.first(), Some(&STATUS_200), "{head:?}");
    let seen = &app.requests()[0];
    assert_eq!(seen.body.as_deref(), Some(&b"hello world"[..]));
    drop(conn);
    env.stop().await;
}

/// Reads until the server closes `stream`.
async fn closed_by_server(mut stream: TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(1..) = stream.read(&mut buf).await {}
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_stuck_before_its_protocol_is_known_is_closed_at_the_header_timeout() {
    // docs/configuration.md: the request_header_timeout clock "starts as soon as the connection
    // waits for a request". A plain listener learns HTTP/1.1 from HTTP/2 by the first bytes
    // (the h2c preface); a client that sends none, or half the preface, waits for a request
    // too, and must not hold its connection for ever.
    let _serial = SERIAL.lock().await;
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start_with(
        "request_header_timeout = \"1s\"",
        &sites(&[("app.test", &app.url())]),
    )
    .await;
    let silent = TcpStream::connect(env.http).await.unwrap();
    let mut half = TcpStream::connect(env.http).await.unwrap();
    half.write_all(&PREFACE[..10]).await.unwrap();
    let started = tokio::time::Instant::now();
    assert_served(env.http, "app.test").await;
    for (what, stream) in [("nothing", silent), ("half the h2c preface", half)] {
        let closed =
            tokio::time::timeout_at(started + Duration::from_secs(4), closed_by_server(stream))
                .await;
        assert!(
            closed.is_ok(),
            "a connection that sent {what} is still open {:?} after it connected, with \
             request_header_timeout = 1s",
            started.elapsed()
        );
    }
    env.stop().await;
}
