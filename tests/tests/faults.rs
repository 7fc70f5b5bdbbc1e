//! Upstream faults and hostile clients, end to end: every failure is answered within its
//! configured time, other sites are unaffected, nothing leaks, and request smuggling never gets
//! a second request to an upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proxy_tests::{DEADLINE, MockUpstream, TestEnv, eventually, get, open_fds, raw_exchange, site};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that accepts and never answers; it closes its side when the proxy closes.
async fn hanging_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// An upstream that promises 100 bytes, sends 3 and resets the connection.
async fn resetting_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
                    .await;
                let _ = stream.set_zero_linger();
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_hanging_and_resetting_upstreams_fail_fast_and_leak_nothing() {
    let ok = MockUpstream::start("ok").await;
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let hanging = hanging_upstream().await;
    let resetting = resetting_upstream().await;
    let body = site("ok.example", &ok.url(), "")
        + &site("refused.example", &format!("http://{refused}"), "")
        + &site(
            "hang.example",
            &format!("http://{hanging}"),
            "upstream_response_timeout = \"300ms\"",
        )
        + &site("reset.example", &format!("http://{resetting}"), "");
    let env = TestEnv::start(&body).await;

    let started = Instant::now();
    assert_eq!(get(env.http, "refused.example", "/").await.status, 502);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a refused connection fails at once"
    );

    let started = Instant::now();
    assert_eq!(get(env.http, "hang.example", "/").await.status, 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // The head arrived, the body did not: the client's connection is cut, not left hanging.
    let cut = raw_exchange(env.http, b"GET / HTTP/1.1\r\nHost: reset.example\r\n\r\n").await;
    assert!(cut.starts_with("HTTP/1.1 200"), "{cut}");
    assert!(!cut.ends_with(&"x".repeat(97)), "{cut}");

    let baseline = open_fds();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let host = ["refused.example", "hang.example", "reset.example"][i % 3];
        let http = env.http;
        tasks.push(tokio::spawn(async move {
            raw_exchange(
                http,
                format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
        }));
    }
    // Other sites are served while the failures pile up (and passive health ejects the failing
    // upstreams: 503 from then on).
    for _ in 0..10 {
        assert_eq!(get(env.http, "ok.example", "/").await.status, 200);
    }
    for t in tasks {
        let answer = t.await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 502")
                || answer.starts_with("HTTP/1.1 503")
                || answer.starts_with("HTTP/1.1 504")
                || answer.starts_with("HTTP/1.1 200"),
            "{answer}"
        );
    }
    eventually("file descriptors to return to the baseline", || async {
        (open_fds() <= baseline + 8).then_some(())
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_header_sender_is_cut_at_the_header_timeout_while_others_are_served() {
    let ok = MockUpstream::start("ok").await;
    let env = TestEnv::start_with(
        "request_header_timeout = \"1s\"",
        &site("ok.example", &ok.url(), ""),
    )
    .await;

    let mut slow = TcpStream::connect(env.http).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: ok.exa")
        .await
        .unwrap();
    let started = Instant::now();
    let dripping = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        loop {
            // One byte every 200 ms would keep a connection alive forever without the timeout.
            tokio::select! {
                read = slow.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    if slow.write_all(b"m").await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    for _ in 0..5 {
        assert_eq!(get(env.http, "ok.example", "/").await.status, 200);
    }
    tokio::time::timeout(DEADLINE, dripping)
        .await
        .expect("the slow client is cut")
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(ok.hits(), 5, "the slow request never reached the upstream");

    // The same deadline closes a keep-alive connection that sits idle between requests.
    let mut idle = proxy_tests::Conn::open(env.http).await;
    assert_eq!(idle.get("ok.example", "/").await.status, 200);
    let started = Instant::now();
    eventually("the idle keep-alive connection to be closed", || async {
        idle.is_closed().then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn request_smuggling_never_gets_a_second_request_to_the_upstream() {
    // TE.CL: a back end that trusted Content-Length would read "5c\r\n" as the body and the
    // chunk's content as a second request.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app.example\r\nContent-Length: 15\r\n\r\nx=1";
    let te_cl = format!(
        "POST / HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
        smuggled.len()
    );
    let attempts: Vec<String> = vec![
        // CL.TE: the tail would be a second request if framing were passed through.
        "POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: app.example\r\n\r\n".into(),
        te_cl,
        // Duplicate and malformed Content-Length.
        "POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\nContent-Length: 41\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        "POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: +5\r\n\r\nhello".into(),
        "POST / HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5, 6\r\n\r\nhello!".into(),
        // Obfuscated Transfer-Encoding.
        "POST / HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding: xchunked\r\nContent-Length: 5\r\n\r\nhello".into(),
        "POST / HTTP/1.1\r\nHost: app.example\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n".into(),
    ];
    for (i, attempt) in attempts.iter().enumerate() {
        let app = MockUpstream::start("app").await;
        let env = TestEnv::start(&site("app.example", &app.url(), "")).await;
        let answer = raw_exchange(env.http, attempt.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 "), "attempt {i}: {answer}");
        // Let anything the proxy might still send arrive before counting.
        assert_eq!(
            get(env.http, "app.example", "/after").await.status,
            200,
            "attempt {i}"
        );
        let requests = app.requests();
        let paths: Vec<_> = requests.iter().map(|r| r.uri.path().to_owned()).collect();
        assert!(
            !paths.iter().any(|p| p == "/smuggled"),
            "attempt {i} smuggled a request: {paths:?}"
        );
        assert!(requests.len() <= 2, "attempt {i}: {paths:?}");
        for r in &requests {
            assert!(
                r.body.is_some(),
                "attempt {i}: the upstream got a badly framed request: {r:?}"
            );
        }
        env.stop().await;
    }
}
