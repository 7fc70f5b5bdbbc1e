//! HTTP/2 upstream connections under the conditions that broke a single shared connection
//! (issue 19 #7): an upstream whose stream limit is reached gets more connections, a cold start
//! under load dials once, and a connection a middlebox silently dropped is found by PING and
//! replaced instead of holding every request until its response timeout.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use proxy_tests::backend::H2Backend;
use proxy_tests::relay::Relay;
use proxy_tests::{ADMIN_ON_PORT_0, Conn, TestEnv, eventually, metric};

fn h2c_site(url: &str, extra: &str) -> String {
    format!(
        "[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{url}\"]\n\
         upstream_protocol = \"h2c\"\n{extra}\n"
    )
}

/// Sends `n` GETs at once, each on its own client connection; their statuses.
fn concurrent_gets(env: &TestEnv, n: usize) -> tokio::task::JoinSet<u16> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let addr = env.http;
        set.spawn(async move {
            let mut conn = Conn::open(addr).await;
            conn.get("app.example", "/").await.status.as_u16()
        });
    }
    set
}

async fn in_flight(env: &TestEnv) -> Option<f64> {
    metric(&env.metrics().await, "proxy_requests_in_flight")
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_past_an_upstream_s_stream_limit_open_more_connections() {
    let backend = H2Backend::start(2).await;
    let env = TestEnv::start(&h2c_site(&backend.url(), "")).await;
    let mut requests = concurrent_gets(&env, 5);
    // One connection carries 2 at a time: all 5 reach the backend only over 3 connections
    // (with one shared connection, 3 waited behind the first 2 until those ended).
    eventually("5 requests in progress at the backend", || async {
        (backend.in_progress() == 5).then_some(())
    })
    .await;
    assert_eq!(backend.used_connections(), 3);
    backend.release();
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cold_start_under_load_dials_one_connection() {
    let backend = H2Backend::gated(100).await;
    let env = TestEnv::start_with(ADMIN_ON_PORT_0, &h2c_site(&backend.url(), "")).await;
    let mut requests = concurrent_gets(&env, 20);
    // Every request is in proxyd, waiting for a connection that cannot complete yet.
    eventually("20 requests in flight", || async {
        (in_flight(&env).await == Some(20.0)).then_some(())
    })
    .await;
    backend.open();
    eventually("20 requests at the backend", || async {
        (backend.in_progress() == 20).then_some(())
    })
    .await;
    // They waited for one dial instead of each making its own.
    assert_eq!(backend.used_connections(), 1);
    backend.release();
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_gone_silent_is_found_by_ping_and_replaced() {
    let backend = H2Backend::start(100).await;
    backend.release();
    let relay = Relay::start(backend.addr).await;
    let env = TestEnv::start_with(
        "upstream_h2_ping_interval = \"300ms\"\nupstream_h2_ping_timeout = \"300ms\"",
        &h2c_site(
            &format!("http://{}", relay.addr),
            "upstream_response_timeout = \"30s\"",
        ),
    )
    .await;
    let mut conn = Conn::open(env.http).await;
    assert_eq!(conn.get("app.example", "/").await.status, 200);
    assert_eq!(relay.accepted(), 1);
    // The flow goes silent, as behind a NAT that dropped it: no FIN, no reset.
    relay.blackhole();
    // The request on it is answered within the PING deadline, not the 30 s response timeout
    // (a 502: it went out, so it is not sent again).
    let answer = tokio::time::timeout(Duration::from_secs(10), conn.get("app.example", "/"))
        .await
        .expect("the request waited on the silent connection");
    assert_eq!(answer.status, 502, "{answer:?}");
    // The dead connection is gone: the next request dials a new one and gets through.
    let answer = tokio::time::timeout(Duration::from_secs(10), conn.get("app.example", "/"))
        .await
        .expect("the next request waited too");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(relay.accepted(), 2);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_waiting_at_the_connection_cap_take_streams_freed_on_the_existing_connection() {
    // Review of issue 19: with max_connections reached, the request that would dial waited for
    // a connection place while streams freed up on the one connection; it (and the requests
    // behind it) hung until the deadline, and the 504 ejected a healthy upstream.
    let backend = H2Backend::start(2).await;
    let env = TestEnv::start_with(
        ADMIN_ON_PORT_0,
        &h2c_site(
            &backend.url(),
            "upstream_response_timeout = \"8s\"\nupstream_limits = { max_connections = 1 }\n\
             passive_health = { consecutive_failures = 1, cooldown = \"60s\" }",
        ),
    )
    .await;
    let mut requests = concurrent_gets(&env, 2);
    eventually("2 requests at the backend", || async {
        (backend.in_progress() == 2).then_some(())
    })
    .await;
    // Two more: no stream free, no connection place left; they wait in proxyd.
    let mut waiting = concurrent_gets(&env, 2);
    eventually("4 requests in flight", || async {
        (in_flight(&env).await == Some(4.0)).then_some(())
    })
    .await;
    let released = std::time::Instant::now();
    backend.release();
    while let Some(status) = requests.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    while let Some(status) = waiting.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert!(
        released.elapsed() < Duration::from_secs(4),
        "the waiting requests took the freed streams at once, not at the 8 s deadline"
    );
    assert_eq!(backend.used_connections(), 1);
    // Nothing counted against the upstream.
    let mut conn = Conn::open(env.http).await;
    assert_eq!(conn.get("app.example", "/").await.status, 200);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_allowing_no_stream_gets_503_at_once_not_a_connection_per_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // SETTINGS_MAX_CONCURRENT_STREAMS = 0 ("for short durations", RFC 9113 §5.1.2).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0];
                let _ = tcp.write_all(&settings).await;
                let mut buf = [0u8; 4096];
                let mut acked = false;
                while let Ok(n) = tcp.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    if !acked {
                        acked = true;
                        let _ = tcp.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
                    }
                }
            });
        }
    });
    let env = TestEnv::start(&h2c_site(
        &format!("http://{addr}"),
        "upstream_response_timeout = \"30s\"",
    ))
    .await;
    for _ in 0..5 {
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            Conn::open(env.http).await.get("app.example", "/"),
        )
        .await
        .expect("answered at once, not at the response timeout");
        assert_eq!(answer.status, 503, "{answer:?}");
    }
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n <= 2, "{n} connections for 5 requests made one at a time");
    env.stop().await;
}
