//! Transfers that keep moving, too slowly to matter, so that no pause timeout ever fires
//! (issue 19 #8): a request body trickled a few bytes at a time, and an HTTP/2 client that
//! opens its stream window a little at a time. Each held an upstream connection and a
//! `max_requests` place for as long as it liked; now the minimum rates end them.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::atomic::Ordering;
use std::time::Duration;

use proxy_tests::h2raw::{RawConn, flag, headers, kind, request, setting, window_update};
use proxy_tests::{ADMIN_ON_PORT_0, MockUpstream, TestEnv, eventually, get};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread")]
async fn a_trickled_upload_is_cut_once_it_falls_behind_the_minimum_rate() {
    let upstream = MockUpstream::start("app").await;
    let env = TestEnv::start_with(
        &format!(
            "{ADMIN_ON_PORT_0}\nrequest_body_timeout = \"400ms\"\nrequest_body_min_rate = \"1k\""
        ),
        &format!(
            "[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{}\"]\n",
            upstream.url()
        ),
    )
    .await;
    let mut client = TcpStream::connect(env.http).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nhost: app.example\r\ncontent-length: 100000\r\n\r\n")
        .await
        .unwrap();
    // 10 bytes every 100 ms: never a pause near the 400 ms timeout, and 100 bytes/s, far
    // under the minimum. Before the rates, this went on for as long as the client liked.
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the trickled upload was never cut"
        );
        if client.write_all(&[b'x'; 10]).await.is_err() {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(100), client.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if answer.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    // The client's fault: the upstream is still served and healthy.
    assert_eq!(get(env.http, "app.example", "/").await.status, 200);
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("proxy_timeouts_total{kind=\"request_body_rate\"} 1"),
        "{metrics}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_that_opens_its_window_a_trickle_at_a_time_loses_the_connection() {
    let (big, counts) = proxy_tests::backend::big_upstream().await;
    let env = TestEnv::start_with(
        &format!(
            "{ADMIN_ON_PORT_0}\nresponse_send_timeout = \"500ms\"\nresponse_min_rate = \"64k\""
        ),
        &format!("[[sites]]\nhostnames = [\"big.example\"]\nupstreams = [\"http://{big}\"]\n"),
    )
    .await;
    // Stream windows start at 0; the client opens 100 bytes every 100 ms: the connection is
    // never silent and the response never stops for good, but it moves at 1 kB/s.
    let (mut conn, _) = RawConn::open(env.http, &[(setting::INITIAL_WINDOW_SIZE, 0)]).await;
    conn.send(&headers(
        1,
        flag::END_STREAM | flag::END_HEADERS,
        &request("GET", "big.example", "/big"),
    ))
    .await
    .unwrap();
    conn.wait_for("the response head", |f| {
        f.kind == kind::HEADERS && f.stream == 1
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow reader kept its response (and the upstream's connection)"
        );
        if conn.send(&window_update(1, 100)).await.is_err() {
            break;
        }
        let closed = tokio::time::timeout(Duration::from_millis(100), async {
            loop {
                match conn.recv().await {
                    None => return true,
                    Some(f) if f.kind == kind::GOAWAY => return true,
                    Some(_) => {}
                }
            }
        })
        .await;
        if closed == Ok(true) {
            break;
        }
    }
    // Its upstream response went with it.
    eventually("the upstream body to be dropped", || {
        std::future::ready((counts.abandoned.load(Ordering::SeqCst) == 1).then_some(()))
    })
    .await;
    let metrics = env.metrics().await;
    assert!(
        metrics.contains("proxy_timeouts_total{kind=\"response_rate\"} 1"),
        "{metrics}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expect_continue_upload_that_waited_for_a_connection_is_not_the_client_s_fault() {
    // Review of issue 19: the minimum rate's clock started before the upload had a connection,
    // so a client waiting for `100 Continue` behind the breaker got 408 without being told to
    // send.
    let upstream = MockUpstream::start("app").await;
    let env = TestEnv::start_with(
        &format!("{ADMIN_ON_PORT_0}\nrequest_body_timeout = \"1s\""),
        &format!(
            "[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{}\"]\n\
             upstream_response_timeout = \"30s\"\nupstream_limits = {{ max_connections = 1 }}\n",
            upstream.url()
        ),
    )
    .await;
    // The one upstream connection is busy for 2.5 s.
    let busy = tokio::spawn({
        let addr = env.http;
        async move {
            proxy_tests::Conn::open(addr)
                .await
                .get("app.example", "/sleep/2500")
                .await
                .status
        }
    });
    eventually("the slow request at the upstream", || async {
        (upstream.requests().len() == 1).then_some(())
    })
    .await;
    let mut client = TcpStream::connect(env.http).await.unwrap();
    client
        .write_all(
            b"POST /upload HTTP/1.1\r\nhost: app.example\r\ncontent-length: 5\r\n\
              expect: 100-continue\r\n\r\n",
        )
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let mut sent = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("HTTP/1.1 2")
        && !seen.contains("HTTP/1.1 4")
        && !seen.contains("HTTP/1.1 5")
    {
        assert!(tokio::time::Instant::now() < deadline, "no answer: {seen}");
        let n = match tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => continue,
        };
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        if !sent && seen.contains("100 Continue") {
            sent = true;
            client.write_all(b"hello").await.unwrap();
        }
    }
    assert_eq!(busy.await.unwrap(), 200);
    assert!(seen.contains("HTTP/1.1 200"), "{seen}");
    env.stop().await;
}
