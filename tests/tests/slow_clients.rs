//! Slow and silent clients, many at once: connections that send nothing, part of the HTTP/2
//! preface, a request head a byte at a time, a body that stops, or never read their response.
//! Every one is closed at its deadline, file descriptors come back to the baseline, and a
//! well-behaved client is served all along. The default run opens a few hundred; the long
//! suite (scripts/long-tests.sh) thousands.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use proxy_tests::{ADMIN_ON_PORT_0, MockUpstream, TestEnv, eventually, get, metric, open_fds};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Every deadline of the run.
const DEADLINE: &str = "1s";

/// An upstream whose every answer is far larger than the socket buffers can hold.
async fn endless_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 1073741824\r\n\r\n";
                if stream.write_all(head).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                while stream.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    addr
}

/// Opens one slow connection of `kind` and returns it with what it already sent.
async fn slow(kind: usize, addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let opening: &[u8] = match kind {
        // Silent.
        0 => b"",
        // Part of the HTTP/2 preface.
        1 => b"PRI * HTTP/2.0\r\n",
        // A request head that never ends.
        2 => b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Slow: ",
        // A body that stops.
        3 => b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 1000\r\n\r\n0123456789",
        // A response it never reads.
        _ => b"GET / HTTP/1.1\r\nHost: big.test\r\n\r\n",
    };
    s.write_all(opening).await.unwrap();
    s
}

/// Whether the proxy has closed `s`: reads (and discards) until end of stream or an error.
async fn closed(mut s: TcpStream, within: Duration) -> bool {
    let mut buf = vec![0u8; 256 * 1024];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

async fn run(per_kind: usize, non_readers: usize) {
    let app = MockUpstream::start("app").await;
    let big = endless_upstream().await;
    let keys = [
        ADMIN_ON_PORT_0.to_owned(),
        format!("request_header_timeout = \"{DEADLINE}\""),
        format!("request_body_timeout = \"{DEADLINE}\""),
        format!("response_send_timeout = \"{DEADLINE}\""),
        "max_connections_per_ip = 0".to_owned(),
        "max_connections = 100000".to_owned(),
    ]
    .join("\n");
    let body = format!(
        "[[sites]]\nhostnames = [\"a.test\"]\nupstreams = [\"{}\"]\n\
         [[sites]]\nhostnames = [\"big.test\"]\nupstreams = [\"http://{big}\"]\n",
        app.url()
    );
    let env = TestEnv::start_with(&keys, &body).await;
    assert_eq!(get(env.http, "a.test", "/").await.status, 200);
    let baseline = open_fds();

    // A well-behaved client, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let good = {
        let (stop, served, failed, http) = (stop.clone(), served.clone(), failed.clone(), env.http);
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let ok = tokio::time::timeout(Duration::from_secs(2), get(http, "a.test", "/"))
                    .await
                    .is_ok_and(|a| a.status == 200);
                if ok {
                    served.fetch_add(1, Ordering::SeqCst);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let mut opened = Vec::new();
    for kind in 0..5 {
        let n = if kind == 4 { non_readers } else { per_kind };
        for _ in 0..n {
            opened.push(slow(kind, env.http).await);
        }
    }
    let total = opened.len();
    // The non-readers are cut by the proxy: wait for that before reading anything from them.
    let cut = "proxy_timeouts_total{kind=\"response_send\"}";
    eventually("every non-reader cut", || async {
        let n = metric(&env.metrics().await, cut).unwrap_or(0.0);
        (n >= non_readers as f64).then_some(())
    })
    .await;
    let results = futures_join(opened).await;
    let open = results.iter().filter(|c| !**c).count();
    assert_eq!(open, 0, "{open} of {total} slow connections still open");

    stop.store(true, Ordering::SeqCst);
    good.await.unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "the good client was failed or slowed"
    );
    assert!(served.load(Ordering::SeqCst) > 10);
    eventually("file descriptors back to the baseline", || async {
        (open_fds() <= baseline + 5).then_some(())
    })
    .await;
    let text = env.metrics().await;
    let first_bytes = metric(&text, "proxy_timeouts_total{kind=\"first_bytes\"}").unwrap();
    assert!(first_bytes >= (2 * per_kind) as f64, "{first_bytes}");
    // A slow body is cut by its pause timeout or, trickled, by its minimum rate.
    let bodies = metric(&text, "proxy_timeouts_total{kind=\"request_body\"}").unwrap()
        + metric(&text, "proxy_timeouts_total{kind=\"request_body_rate\"}").unwrap();
    assert!(bodies >= per_kind as f64, "{bodies}");
    env.stop().await;
}

/// Waits for every connection to be closed by the proxy (at most 10 s in all).
async fn futures_join(streams: Vec<TcpStream>) -> Vec<bool> {
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|s| tokio::spawn(closed(s, Duration::from_secs(10))))
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread")]
async fn hundreds_of_slow_and_silent_clients_are_closed_at_their_deadlines() {
    run(60, 20).await;
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "long: thousands of connections; run with scripts/long-tests.sh"]
async fn thousands_of_slow_and_silent_clients_are_closed_at_their_deadlines() {
    run(1000, 100).await;
}
