//! The pool against raw upstreams that count their connections.

use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::convert::UpstreamLimits;
use bytes::Bytes;

/// A raw HTTP/1.1 upstream answering "ok" to every request; with `close_after`, it closes
/// each connection that long after its first answer, without saying so (as an upstream whose
/// keep-alive timeout is shorter than ours does). Counts the connections it accepted.
async fn upstream(close_after: Option<Duration>) -> (Authority, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if socket.write_all(answer).await.is_err() {
                            return;
                        }
                        if let Some(after) = close_after {
                            tokio::time::sleep(after).await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (authority, accepted)
}

fn pool(authority: Authority, idle_timeout: Duration) -> Pool {
    Pool::new(
        Scheme::HTTP,
        authority,
        Settings {
            timeouts: Arc::new(Timeouts::new(Duration::from_secs(5), idle_timeout)),
            max_idle: 4,
            protocol: Protocol::Http1,
            tls: None,
        },
        Arc::new(Breaker::new(UpstreamLimits::default())),
    )
}

async fn get(pool: &Pool) -> Result<String, Error> {
    let request = Request::get("/")
        .header(http::header::HOST, "app.example")
        .body(super::super::empty_body())
        .unwrap();
    let response = pool
        .send(request, &std::sync::atomic::AtomicBool::new(false))
        .await?;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Ok(String::from_utf8(body.to_vec()).unwrap())
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_connection_read_to_the_end_is_reused_and_expires_after_the_idle_timeout() {
    let (authority, accepted) = upstream(None).await;
    let pool = pool(authority, Duration::from_millis(300));
    for _ in 0..5 {
        assert_eq!(get(&pool).await.unwrap(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection, reused");
    eventually("the connection to come back", || pool.idle_count() == 1).await;
    eventually("the idle connection to expire", || pool.idle_count() == 0).await;
    assert_eq!(get(&pool).await.unwrap(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_thread_keeps_its_connections_and_one_left_without_a_place_closes_another_s_idle_one() {
    let (authority, accepted) = upstream(None).await;
    let settings = Settings {
        timeouts: Arc::new(Timeouts::new(
            Duration::from_secs(5),
            Duration::from_secs(60),
        )),
        max_idle: 4,
        protocol: Protocol::Http1,
        tls: None,
    };
    let breaker = Arc::new(Breaker::new(UpstreamLimits {
        max_connections: 1,
        ..UpstreamLimits::default()
    }));
    let pool = Arc::new(Pool::for_threads(
        Scheme::HTTP,
        authority,
        settings,
        breaker,
        2,
    ));
    // Serving thread 0 (this one) dials the one connection allowed; it idles in its stack.
    assert_eq!(get(&pool).await.unwrap(), "ok");
    eventually("the connection to come back", || pool.idle_count() == 1).await;
    // Serving thread 1 does not use it (its task runs on thread 0): it closes it for the one
    // place, and dials its own, at once rather than after the 60 s idle timeout.
    let theirs = pool.clone();
    let answer = tokio::task::spawn_blocking(move || {
        crate::shards::enter(1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), get(&theirs))
                .await
                .expect("a place under max_connections within 5 s")
                .unwrap()
        })
    })
    .await
    .unwrap();
    assert_eq!(answer, "ok");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "thread 1 dialed its own"
    );
}

#[tokio::test]
async fn a_shorter_idle_timeout_set_by_a_snapshot_applies_to_the_connections_already_idle() {
    let (authority, accepted) = upstream(None).await;
    let timeouts = Arc::new(Timeouts::new(
        Duration::from_secs(5),
        Duration::from_secs(60),
    ));
    let pool = Pool::new(
        Scheme::HTTP,
        authority,
        Settings {
            timeouts: timeouts.clone(),
            max_idle: 4,
            protocol: Protocol::Http1,
            tls: None,
        },
        Arc::new(Breaker::new(UpstreamLimits::default())),
    );
    assert_eq!(get(&pool).await.unwrap(), "ok");
    eventually("the connection to come back", || pool.idle_count() == 1).await;
    timeouts.set(Duration::from_secs(5), Duration::from_millis(1));
    // The reaper wakes for it: the idle connection is closed now, not in 60 s.
    eventually("the idle connection to be reaped", || {
        pool.idle_count() == 0
    })
    .await;
    assert_eq!(get(&pool).await.unwrap(), "ok");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the idle one is past the new timeout: a new connection"
    );
    assert_eq!(timeouts.connect(), Duration::from_secs(5));
}

#[tokio::test]
async fn a_connection_whose_body_was_dropped_unread_is_not_reused() {
    let (authority, accepted) = upstream(None).await;
    let pool = pool(authority, Duration::from_secs(60));
    let request = Request::get("/")
        .header(http::header::HOST, "app.example")
        .body(super::super::empty_body())
        .unwrap();
    let response = pool
        .send(request, &std::sync::atomic::AtomicBool::new(false))
        .await
        .unwrap();
    drop(response);
    assert_eq!(pool.idle_count(), 0);
    assert_eq!(get(&pool).await.unwrap(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_the_upstream_closed_while_idle_are_never_used() {
    // An upstream whose keep-alive timeout (20 ms) is shorter than the pool's.
    let (authority, accepted) = upstream(Some(Duration::from_millis(20))).await;
    let pool = pool(authority, Duration::from_secs(60));
    for i in 0..10 {
        assert_eq!(get(&pool).await.unwrap(), "ok", "request {i}");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        10,
        "a new connection each time"
    );
}

#[tokio::test]
async fn dropping_the_pool_closes_its_idle_connections() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = socket.read(&mut buf).await.unwrap();
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .unwrap();
        // The read that follows ends when the proxy closes its side.
        socket.read(&mut buf).await.unwrap()
    });
    let pool = pool(authority, Duration::from_secs(60));
    assert_eq!(get(&pool).await.unwrap(), "ok");
    eventually("the connection to come back", || pool.idle_count() == 1).await;
    drop(pool);
    let read = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the idle connection was not closed")
        .unwrap();
    assert_eq!(read, 0);
}

#[tokio::test]
async fn an_upstream_that_refuses_connections_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    drop(listener);
    let e = get(&pool(authority, Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(e.is_connect(), "{e:?}");
}

/// An h2c upstream allowing one stream per connection; each request is answered when
/// `release` says so. Counts its connections.
async fn h2c_upstream(
    release: tokio::sync::watch::Receiver<bool>,
) -> (Authority, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string().parse().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let release = release.clone();
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let mut release = release.clone();
                async move {
                    let _ = release.wait_for(|r| *r).await;
                    Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                        Bytes::from_static(b"ok"),
                    )))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(1)
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service),
            );
        }
    });
    (authority, accepted)
}

#[tokio::test]
async fn full_h2_connections_get_company_and_the_extra_ones_close_when_idle() {
    let (release, released) = tokio::sync::watch::channel(false);
    let (authority, accepted) = h2c_upstream(released).await;
    let pool = Arc::new(Pool::new(
        Scheme::HTTP,
        authority,
        Settings {
            timeouts: Arc::new(Timeouts::new(
                Duration::from_secs(5),
                Duration::from_millis(200),
            )),
            max_idle: 4,
            protocol: Protocol::H2c,
            tls: None,
        },
        Arc::new(Breaker::new(UpstreamLimits::default())),
    ));
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let pool = pool.clone();
        requests.spawn(async move { get(&pool).await.unwrap() });
    }
    eventually("three connections, one stream each", || {
        pool.h2_streams() == [1, 1, 1]
    })
    .await;
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    release.send(true).unwrap();
    while let Some(body) = requests.join_next().await {
        assert_eq!(body.unwrap(), "ok");
    }
    // The streams end with their bodies; the two extra connections idle out, the oldest stays.
    eventually("the extra connections to close", || {
        pool.h2_streams() == [0]
    })
    .await;
    assert_eq!(get(&pool).await.unwrap(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "the oldest was reused");
}
