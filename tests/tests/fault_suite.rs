//! More faults, end to end: an upstream that dies mid-body, one that answers with something
//! that is not HTTP or with two framings, one that trickles its response head past the response
//! timeout, proxyd killed with SIGKILL under load and restarted while controld is down, and
//! proxyd out of file descriptors. After each, proxyd serves.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use proxy_tests::{
    DEADLINE, MockUpstream, Process, TestEnv, eventually, get, get_request, listener_address, site,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// An upstream that reads each request head, then hands the connection to `behave`.
async fn scripted<F, Fut>(behave: F) -> String
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let behave = Arc::new(behave);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let behave = behave.clone();
            tokio::spawn(async move {
                if read_head(&mut stream).await {
                    behave(stream).await;
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Reads up to the end of a request head (at most 64 KiB); false when the peer went away first.
async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// Writes `bytes`, waits for `cut` (the client has them all), then resets the connection (RST,
/// not FIN). Waiting on the client rather than a timer: a RST can overtake data the proxy has not
/// read yet.
async fn write_then_reset(mut stream: TcpStream, bytes: &[u8], cut: &Notify) {
    let _ = stream.write_all(bytes).await;
    let _ = tokio::time::timeout(DEADLINE, cut.notified()).await;
    let _ = stream.set_zero_linger();
}

/// What a client got for a GET: the status, the body bytes that arrived, and whether the body
/// ended cleanly (`Ok`) or was cut (`Err`).
#[derive(Debug)]
struct Received {
    status: u16,
    body: Vec<u8>,
    ended: Result<(), String>,
}

/// GET `host` `/` on a fresh HTTP/1.1 connection, reading the body frame by frame; once
/// `release.0` body bytes have arrived, notifies `release.1`.
async fn get_frames(addr: SocketAddr, host: &str, release: Option<(usize, &Notify)>) -> Received {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(get_request(host, "/")).await.unwrap();
    let (parts, mut body) = response.into_parts();
    let mut received = Vec::new();
    let mut release = release;
    let ended = loop {
        if let Some((_, cut)) = release.take_if(|(len, _)| received.len() >= *len) {
            cut.notify_one();
        }
        match body.frame().await {
            None => break Ok(()),
            Some(Err(e)) => break Err(e.to_string()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    received.extend_from_slice(&data);
                }
            }
        }
    };
    Received {
        status: parts.status.as_u16(),
        body: received,
        ended,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_reset_mid_body_cuts_the_client_body_and_others_are_served() {
    let ok = MockUpstream::start("ok").await;
    let (sized_cut, chunked_cut) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let sized = scripted({
        let cut = sized_cut.clone();
        move |stream| {
            let cut = cut.clone();
            async move {
                let mut response = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
                response.extend_from_slice(&[b'x'; 30000]);
                write_then_reset(stream, &response, &cut).await;
            }
        }
    })
    .await;
    let chunked = scripted({
        let cut = chunked_cut.clone();
        move |stream| {
            let cut = cut.clone();
            async move {
                let response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n5\r\nworld\r\n";
                write_then_reset(stream, response, &cut).await;
            }
        }
    })
    .await;
    let body = site("ok.example", &ok.url(), "")
        + &site("sized.example", &sized, "")
        + &site("chunked.example", &chunked, "");
    let env = TestEnv::start(&body).await;

    for (host, arrived, cut) in [
        ("sized.example", 30000, &sized_cut),
        ("chunked.example", 10, &chunked_cut),
    ] {
        let started = Instant::now();
        let got = tokio::time::timeout(DEADLINE, get_frames(env.http, host, Some((arrived, cut))))
            .await
            .expect("the cut body ends the response, it does not hang");
        assert_eq!(got.status, 200, "{host}: the head had arrived: {got:?}");
        assert!(
            got.ended.is_err(),
            "{host}: a cut body must not look complete to the client: {} bytes, {:?}",
            got.body.len(),
            got.ended
        );
        assert_eq!(
            got.body.len(),
            arrived,
            "{host}: what the upstream sent got through"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{host}");
        assert_eq!(get(env.http, "ok.example", "/").await.status, 200);
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_answering_with_something_that_is_not_http_gets_502() {
    let ok = MockUpstream::start("ok").await;
    let answers: [&'static [u8]; 8] = [
        b"garbage\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n",
        b"HTTP/1.1 abc Not A Status\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon in this header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\nhello!!",
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
        // Nothing at all: the upstream reads the request and closes.
        b"",
    ];
    let mut body = site("ok.example", &ok.url(), "");
    for (i, answer) in answers.into_iter().enumerate() {
        let upstream = scripted(move |mut stream| async move {
            let _ = stream.write_all(answer).await;
            let _ = stream.shutdown().await;
        })
        .await;
        body += &site(&format!("bad{i}.example"), &upstream, "");
    }
    let env = TestEnv::start(&body).await;

    for (i, answer) in answers.iter().enumerate() {
        let started = Instant::now();
        let got = get(env.http, &format!("bad{i}.example"), "/").await;
        let what = String::from_utf8_lossy(answer);
        assert_eq!(got.status, 502, "{what:?}: {got:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{what:?}");
        // Words that cannot occur in the hex request id the error page carries.
        for word in ["garbage", "SSH", "Not A Status", "colon", "hello"] {
            assert!(!got.body.contains(word), "{what:?} leaked: {got:?}");
        }
        assert_eq!(get(env.http, "ok.example", "/").await.status, 200);
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_head_trickled_past_the_timeout_gets_504_in_time() {
    let ok = MockUpstream::start("ok").await;
    let gave_up = Arc::new(AtomicBool::new(false));
    let trickle = scripted({
        let gave_up = gave_up.clone();
        move |mut stream| {
            let gave_up = gave_up.clone();
            async move {
                // A byte every 200 ms keeps any idle timer happy; only a deadline on the whole
                // head stops it. 60 bytes: 12 s, bounded even if the proxy never gives up.
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Slow: yes-very\r\n\r\nok" {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if stream.write_all(&[*byte]).await.is_err() {
                        gave_up.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }
    })
    .await;
    let body = site("ok.example", &ok.url(), "")
        + &site(
            "trickle.example",
            &trickle,
            "upstream_response_timeout = \"600ms\"",
        );
    let env = TestEnv::start(&body).await;

    let started = Instant::now();
    let got = get(env.http, "trickle.example", "/").await;
    let took = started.elapsed();
    assert_eq!(got.status, 504, "{got:?}");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(get(env.http, "ok.example", "/").await.status, 200);
    // The proxy closed its side: the trickler's writes start failing.
    eventually("the upstream connection to be closed", || async {
        gave_up.load(Ordering::SeqCst).then_some(())
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_with_both_framings_reaches_the_client_with_the_real_one_or_502() {
    // RFC 9112 §6.3: Transfer-Encoding overrides Content-Length, and an intermediary that
    // forwards such a message must first remove the Content-Length.
    let mut body = String::new();
    for (i, declared) in [3, 100].into_iter().enumerate() {
        let upstream = scripted(move |mut stream| async move {
            let response = format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: {declared}\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n"
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        })
        .await;
        body += &site(&format!("both{i}.example"), &upstream, "");
    }
    let env = TestEnv::start(&body).await;
    for (i, declared) in [3, 100].into_iter().enumerate() {
        let got = get_frames(env.http, &format!("both{i}.example"), None).await;
        let whole = got.status == 200 && got.body == b"hello" && got.ended.is_ok();
        assert!(
            whole || got.status == 502,
            "Content-Length {declared} next to chunked: the client got {got:?} ({:?})",
            String::from_utf8_lossy(&got.body)
        );
    }
    env.stop().await;
}

/// GET `/` for `app.example` on a fresh connection with `Connection: close`: the status, or
/// `None` when the connection failed (refused, reset, or no answer within 2 s).
async fn try_get(addr: SocketAddr) -> Option<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer);
        text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// The arguments of a proxyd process on `env`'s control socket, saving snapshots in `state`.
fn proxyd_args(env: &TestEnv, state: &str) -> Vec<String> {
    vec![
        "--control-socket".into(),
        env.socket.to_str().unwrap().into(),
        "--state-dir".into(),
        state.into(),
        "--admin-socket".into(),
        env.dir.path().join("proxyd.sock").to_str().unwrap().into(),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn proxyd_killed_under_load_restarts_on_its_saved_snapshot_without_controld() {
    let (old, new) = (
        MockUpstream::start("old").await,
        MockUpstream::start("new").await,
    );
    let env = TestEnv::paths_only();
    env.write_config(&site("app.example", &old.url(), ""));
    let state = env.dir.path().join("proxyd-state");
    let args = proxyd_args(&env, state.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let config = env.config_path.to_str().unwrap().to_owned();
    let mut controld = Process::start("controld", &["--config", &config]);
    let mut proxyd = Process::start_logged("proxyd", &args);
    let http = listener_address(&env.wait_for_applied(1).await, "http");
    // The snapshot to come back with is the latest one, not the first.
    env.write_config(&site("app.example", &new.url(), ""));
    controld.signal("HUP").await;
    env.wait_for_applied(2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = tokio::spawn({
        let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
        async move {
            // Bounded in count; the test stops it long before.
            for _ in 0..100_000 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                match try_get(http).await {
                    Some(200) => served.fetch_add(1, Ordering::SeqCst),
                    _ => failed.fetch_add(1, Ordering::SeqCst),
                };
            }
        }
    });
    eventually("load to flow", || async {
        (served.load(Ordering::SeqCst) > 20).then_some(())
    })
    .await;
    proxyd.signal("KILL").await;
    assert_eq!(proxyd.exit_code().await, None, "killed by a signal");
    eventually("the load to see proxyd gone", || async {
        (failed.load(Ordering::SeqCst) > 5).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();

    controld.signal("TERM").await;
    assert_eq!(controld.exit_code().await, Some(0));
    let mut proxyd = Process::start_logged("proxyd", &args);
    let http = proxyd.wait_for_listener("http").await;
    proxyd.wait_for_log(&["serving the saved snapshot"]).await;
    for _ in 0..5 {
        let answer = get(http, "app.example", "/").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.body.starts_with("upstream new"), "{answer:?}");
    }
    // The killed proxyd left its admin socket behind; the new one took the path over.
    let channel = proto::uds::connect(&env.dir.path().join("proxyd.sock"), DEADLINE)
        .await
        .unwrap();
    let local = proto::v1::data_plane_client::DataPlaneClient::new(channel)
        .status(proto::v1::DataPlaneStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (local.applied_version, local.from_saved_snapshot),
        (2, true)
    );
    proxyd.signal("TERM").await;
    assert_eq!(proxyd.exit_code().await, Some(0));
}

/// How many file descriptors process `pid` has open.
fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn accept_survives_running_out_of_file_descriptors() {
    const LIMIT: usize = 64;
    let ok = MockUpstream::start("ok").await;
    // Never contacted before the descriptors run out: no pooled connection to reuse.
    let fresh = MockUpstream::start("fresh").await;
    let env = TestEnv::paths_only();
    env.write_config(
        &(site("app.example", &ok.url(), "") + &site("fresh.example", &fresh.url(), "")),
    );
    let state = env.dir.path().join("proxyd-state");
    let args = proxyd_args(&env, state.to_str().unwrap());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let config = env.config_path.to_str().unwrap().to_owned();
    let _controld = Process::start("controld", &["--config", &config]);
    let nofile = format!("--nofile={LIMIT}:{LIMIT}");
    let mut proxyd = Process::start_logged_under(&["prlimit", &nofile, "--"], "proxyd", &args);
    let http = listener_address(&env.wait_for_applied(1).await, "http");
    assert_eq!(try_get(http).await, Some(200));
    let idle_fds = fds_of(proxyd.pid());
    assert!(idle_fds < LIMIT - 8, "{idle_fds} fds at rest");

    // Every connect succeeds (the kernel completes it into the backlog); proxyd accepts until
    // it has no descriptor left.
    let mut clients = Vec::new();
    for _ in 0..(LIMIT + 16) {
        clients.push(TcpStream::connect(http).await.unwrap());
    }
    let line = proxyd.wait_for_log(&["accept failed", "\"http\""]).await;
    assert!(line.contains("Too many open files"), "{line}");

    // The first client was accepted; it asks while proxyd has no descriptor for a new upstream
    // connection: it gets an error status, not a hang or a crash.
    let first = &mut clients[0];
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: fresh.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut answer))
        .await
        .expect("an answer while out of descriptors")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    drop(clients);
    eventually("a new connection to be served again", || async {
        (try_get(http).await == Some(200)).then_some(())
    })
    .await;
    eventually("proxyd's descriptors to come back", || async {
        (fds_of(proxyd.pid()) <= idle_fds + 4).then_some(())
    })
    .await;
    proxyd.signal("TERM").await;
    assert_eq!(proxyd.exit_code().await, Some(0));
}
