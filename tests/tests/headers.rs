//! Headers at the proxy boundary, end to end: what the upstream may and may not see, trusted
//! proxies, request ids, and request heads too large for the limits.

#![allow(clippy::unwrap_used, reason = "tests")]

use proxy_tests::{MockUpstream, TestEnv, raw_exchange};

fn site(upstream: &str) -> String {
    format!("[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{upstream}\"]\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_and_spoofed_headers_never_reach_the_upstream() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start(&site(&app.url())).await;

    let request = "GET /x HTTP/1.1\r\nHost: app.example\r\n\
        Connection: close, X-Secret\r\nConnection: X-Other\r\nX-Secret: 1\r\nX-Other: 2\r\n\
        Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\n\
        Proxy-Connection: keep-alive\r\nUpgrade: h2c\r\n\
        X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n\
        Forwarded: for=6.6.6.6\r\nX-Request-Id: forged\r\nX-Kept: yes\r\n\r\n";
    let answer = raw_exchange(env.http, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let seen = &app.requests()[0].headers;
    for name in [
        "x-secret",
        "x-other",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
        "upgrade",
    ] {
        assert!(
            !seen.contains_key(name),
            "{name} reached the upstream: {seen:?}"
        );
    }
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-host"], "app.example");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(
        seen["forwarded"],
        "for=127.0.0.1;host=\"app.example\";proto=http"
    );
    assert_eq!(seen["x-kept"], "yes");
    let id = seen["x-request-id"].to_str().unwrap();
    assert_ne!(id, "forged");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("x-request-id: {id}")),
        "the client sees the same id: {answer}"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trusted_proxy_s_forwarding_headers_are_kept_and_extended() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start(&format!(
        "trusted_proxies = [\"127.0.0.1/32\"]\n{}",
        site(&app.url())
    ))
    .await;

    let request = "GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\
        X-Forwarded-For: 198.51.100.7\r\nX-Forwarded-Proto: https\r\nX-Request-Id: edge-42\r\n\r\n";
    let answer = raw_exchange(env.http, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = &app.requests()[0].headers;
    assert_eq!(seen["x-forwarded-for"], "198.51.100.7, 127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "https");
    assert_eq!(seen["x-request-id"], "edge-42");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn request_heads_over_the_limits_get_431_and_the_proxy_keeps_serving() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start_with(
        "max_request_headers = 10\nmax_request_header_bytes = \"8k\"",
        &site(&app.url()),
    )
    .await;

    let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let request = format!("GET / HTTP/1.1\r\nHost: app.example\r\n{many}Connection: close\r\n\r\n");
    let answer = raw_exchange(env.http, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    let big = "a".repeat(10 * 1024);
    let request =
        format!("GET / HTTP/1.1\r\nHost: app.example\r\nX-Big: {big}\r\nConnection: close\r\n\r\n");
    let answer = raw_exchange(env.http, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");

    assert_eq!(app.hits(), 0);
    let ok = raw_exchange(
        env.http,
        b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    env.stop().await;
}

/// Issue 19 #5: an HTTP/2 client may send each cookie in a field of its own (RFC 9113 §8.2.3);
/// the HTTP/1.1 upstream gets them joined with "; " in one line, not only the last.
#[tokio::test(flavor = "multi_thread")]
async fn split_http2_cookies_reach_an_http1_upstream_joined() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start(&site(&app.url())).await;
    let stream = tokio::net::TcpStream::connect(env.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("http://app.example/cookies")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
    let seen = &app.requests()[0].headers;
    let cookies: Vec<_> = seen.get_all("cookie").iter().collect();
    assert_eq!(cookies, ["a=1; b=2"], "{seen:?}");
    env.stop().await;
}

/// Issue 19 #9: `Trailer` was stripped as hop-by-hop, so hyper never sent an HTTP/1.1 client
/// the trailer fields an upstream sent. They arrive now, those the `Trailer` header declares.
#[tokio::test(flavor = "multi_thread")]
async fn trailers_from_an_http1_upstream_reach_an_http1_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = stream.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n\
                          5\r\nhello\r\n0\r\nx-checksum: abc123\r\nx-undeclared: no\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    let env = TestEnv::start(&site(&format!("http://{upstream}"))).await;
    let answer = raw_exchange(
        env.http,
        b"GET /t HTTP/1.1\r\nHost: app.example\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    let lower = answer.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{answer}");
    assert!(lower.contains("hello"), "{answer}");
    assert!(
        lower.contains("x-checksum: abc123"),
        "the trailer: {answer}"
    );
    assert!(
        !lower.contains("x-undeclared"),
        "only declared trailers: {answer}"
    );
    env.stop().await;
}

/// Review of issue 19 #9: with `Trailer` end to end, a client's request trailers reached the
/// upstream, forged forwarding headers among them. A request's `Trailer` goes, and with it the
/// trailer fields hyper would send.
#[tokio::test(flavor = "multi_thread")]
async fn request_trailers_never_reach_the_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 4096];
                // The whole chunked body, its last chunk and trailer section included.
                while !got.windows(5).any(|w| w == b"0\r\n\r\n") && !got.ends_with(b"\r\n\r\n\r\n")
                {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(2),
                        stream.read(&mut buf),
                    )
                    .await
                    {
                        Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                let _ = seen_tx.send(got);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    let env = TestEnv::start(&site(&format!("http://{upstream}"))).await;
    let answer = raw_exchange(
        env.http,
        b"POST /t HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\n\
          Trailer: x-forwarded-for, x-original-url\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\nx-forwarded-for: 6.6.6.6\r\nx-original-url: /admin\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = String::from_utf8_lossy(&seen_rx.recv().await.unwrap()).to_ascii_lowercase();
    assert!(!seen.contains("6.6.6.6"), "{seen}");
    assert!(!seen.contains("x-original-url"), "{seen}");
    assert!(!seen.contains("trailer:"), "{seen}");
    env.stop().await;
}
