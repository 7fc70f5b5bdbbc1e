//! Listeners follow the config live (issue 13 §2): a reload binds a listener it adds, drains one
//! it removes, refuses the whole snapshot when a new one cannot be bound, and applies a `tls`
//! change to new connections without closing the socket, all while traffic goes on.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use proxy_tests::tls::TestCa;
use proxy_tests::{
    MockUpstream, TestEnv, eventually, get, listener_address, output_text, site, wait_until_refused,
};

fn listener(name: &str, address: &str, tls: bool) -> String {
    format!("\n[[proxy.listeners]]\nname = \"{name}\"\naddress = \"{address}\"\ntls = {tls}\n")
}

/// Requests sent one after another until [`Load::finish`], each counted as answered (`true`) or
/// failed.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start<F, Fut>(request: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = bool> + Send,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let task = tokio::spawn({
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    let counter = if request().await { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        Load {
            stop,
            ok,
            failed,
            task,
        }
    }

    /// Waits for 20 more answered requests, so the load provably outlived every reload before
    /// this call, then stops it: no request may have failed.
    async fn finish(self) {
        let before = self.ok.load(Ordering::Relaxed);
        eventually("the load to go on after the reloads", || async {
            (self.ok.load(Ordering::Relaxed) >= before + 20).then_some(())
        })
        .await;
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let (ok, failed) = (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        );
        assert_eq!(failed, 0, "{failed} of {} requests failed", ok + failed);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn listeners_are_added_moved_switched_to_tls_and_removed_by_reload_under_load() {
    let app = MockUpstream::start("app").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let cert = ca.issue(dir.path(), "site", &["app.example"]);
    let tls = format!("https_redirect = false\n{}", cert.site_tls());
    let site = site("app.example", &app.url(), &tls);
    // A site with a certificate needs a TLS listener: `https` stays throughout.
    let env = TestEnv::start_with_listeners(proxy_tests::HTTPS_ON_PORT_0, &site).await;
    let status = env.status().await;
    let http = listener_address(&status, "http");
    let write =
        |extra: &str| std::fs::write(&env.config_path, env.config_text(&site) + extra).unwrap();

    // Steady load on the listener that stays.
    let load =
        Load::start(move || async move { get(http, "app.example", "/").await.status == 200 });

    // Added: bound by the reload, serving at once, no restart asked for.
    write(&listener("extra", "127.0.0.1:0", false));
    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("proxy.listeners"),
        "the diff names it: {text}"
    );
    assert!(!text.contains("restart"), "{text}");
    let extra = listener_address(&env.status().await, "extra");
    assert_eq!(get(extra, "app.example", "/").await.status, 200);

    // A keep-alive connection on it, open across the next reload.
    let mut kept = proxy_tests::Conn::open(extra).await;
    assert_eq!(kept.get("app.example", "/").await.status, 200);

    // `tls` switched on: the same address, now TLS for new connections; the plain connection
    // open before is drained (closed once idle, like those of a removed listener).
    write(&listener("extra", "127.0.0.1:0", true));
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(
        listener_address(&env.status().await, "extra"),
        extra,
        "same socket"
    );
    let tls = proxy_tests::tls::connect(extra, "app.example", ca.client(&["http/1.1"], false))
        .await
        .expect("a TLS handshake on the switched listener");
    let mut over_tls = proxy_tests::Conn::over(tls).await;
    assert_eq!(over_tls.get("app.example", "/").await.status, 200);
    eventually("the plain connection to be drained", || async {
        kept.is_closed().then_some(())
    })
    .await;

    // Moved: the new address is bound, the old one stops accepting.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved_to = free.local_addr().unwrap();
    drop(free);
    write(&listener("extra", &moved_to.to_string(), true));
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(listener_address(&env.status().await, "extra"), moved_to);
    let tls = proxy_tests::tls::connect(moved_to, "app.example", ca.client(&["http/1.1"], false))
        .await
        .expect("TLS on the new address");
    assert_eq!(
        proxy_tests::Conn::over(tls)
            .await
            .get("app.example", "/")
            .await
            .status,
        200
    );
    wait_until_refused(extra).await;
    let extra = moved_to;

    // A listener that cannot be bound refuses the whole snapshot: nothing changes.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_address = busy.local_addr().unwrap().to_string();
    write(&(listener("extra", &extra.to_string(), true) + &listener("busy", &busy_address, false)));
    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("busy"), "the NACK names the listener: {text}");
    let status = env.status().await;
    assert_eq!(listener_address(&status, "extra"), extra);
    drop(busy);

    // Removed: it stops accepting; the other listener serves on.
    write("");
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    wait_until_refused(extra).await;

    load.finish().await;
    env.stop().await;
}

/// A connection to `to` from loopback address `from` (each is a client of its own for the
/// per-address cap).
async fn connect_from(from: [u8; 4], to: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the peer closed `stream` (EOF or reset) within `within`; what it sent first is
/// returned with `true`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> (bool, String) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let closed = tokio::time::timeout(within, read_all).await.is_ok();
    (closed, String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_settings_caps_drain_deadline_and_admin_listener_follow_reloads_under_load() {
    use tokio::io::AsyncWriteExt;
    let app = MockUpstream::start("app").await;
    // The load comes from 127.0.0.3, a trusted proxy: the per-address cap below exempts it.
    let site = format!(
        "trusted_proxies = [\"127.0.0.3/32\"]\n{}",
        site("app.example", &app.url(), "")
    );
    let mut env = TestEnv::start(&site).await;
    let http = env.http;
    // `[proxy]` keys in place of the environment's drain deadline.
    let write = |keys: &str| {
        let text = env
            .config_text(&site)
            .replace("shutdown_timeout = \"2s\"\n", &format!("{keys}\n"));
        std::fs::write(&env.config_path, text).unwrap();
    };

    // Steady load, a new connection per request.
    let load = Load::start(move || async move {
        let stream = connect_from([127, 0, 0, 3], http).await;
        let mut conn = proxy_tests::Conn::over(stream).await;
        conn.try_get("app.example", "/").await == Some(200)
    });

    // An admin listener, added by reload.
    write("shutdown_timeout = \"2s\"\nadmin_address = \"127.0.0.1:0\"");
    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(!text.contains("restart"), "{text}");
    let admin = listener_address(&env.status().await, "admin");
    assert_eq!(get(admin, "localhost", "/healthz").await.status, 200);
    let open = || async {
        let metrics = get(admin, "localhost", "/metrics").await.body;
        proxy_tests::metric(&metrics, "proxy_connections_open").unwrap_or(0.0)
    };

    // Accepted under the first settings: three idle connections and one half-sent head.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect_from([127, 0, 0, 1], http).await);
    }
    let mut half_before = connect_from([127, 0, 0, 1], http).await;
    half_before
        .write_all(b"GET / HTTP/1.1\r\nHost: app.example\r\n")
        .await
        .unwrap();
    eventually("the four connections to be accepted", || async {
        (open().await >= 4.0).then_some(())
    })
    .await;

    // One reload: a cap of 2 per client, a 500 ms request-head deadline and a 300 ms drain
    // deadline. All live: no restart asked for; the admin listener stays as it is.
    write(
        "shutdown_timeout = \"300ms\"\nmax_connections_per_ip = 2\n\
         request_header_timeout = \"500ms\"\nadmin_address = \"127.0.0.1:0\"",
    );
    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("proxy.max_connections_per_ip"), "{text}");
    assert!(!text.contains("restart"), "{text}");
    assert_eq!(listener_address(&env.status().await, "admin"), admin);

    // The cap holds for new connections from 127.0.0.1 (four are open): closed at once.
    let mut refused = connect_from([127, 0, 0, 1], http).await;
    let (closed, sent) = closed_within(&mut refused, Duration::from_secs(5)).await;
    assert!(closed && sent.is_empty(), "closed unanswered: {sent:?}");
    let metrics = get(admin, "localhost", "/metrics").await.body;
    assert!(
        proxy_tests::metric(
            &metrics,
            r#"proxy_connections_refused_total{reason="max_connections_per_ip"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    // The connections open before stay, over the lowered cap.
    let mut first = proxy_tests::Conn::over(idle.remove(0)).await;
    assert_eq!(first.get("app.example", "/").await.status, 200);

    // A new connection gets the 500 ms request-head deadline; the one opened before keeps 30 s.
    let mut half_after = connect_from([127, 0, 0, 4], http).await;
    half_after
        .write_all(b"GET / HTTP/1.1\r\nHost: app.example\r\n")
        .await
        .unwrap();
    let (closed, _) = closed_within(&mut half_after, Duration::from_secs(10)).await;
    assert!(closed, "a half-sent head after the reload times out");
    let (closed, _) = closed_within(&mut half_before, Duration::from_millis(200)).await;
    assert!(!closed, "the connection accepted before keeps its deadline");
    half_before.write_all(b"\r\n").await.unwrap();
    let (_, answer) = closed_within(&mut half_before, Duration::from_secs(2)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // The admin listener moves to another address, then goes.
    write("admin_address = \"127.0.0.2:0\"");
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let moved = listener_address(&env.status().await, "admin");
    assert_eq!(moved.ip(), std::net::IpAddr::from([127, 0, 0, 2]));
    assert_eq!(get(moved, "localhost", "/healthz").await.status, 200);
    wait_until_refused(admin).await;
    write("shutdown_timeout = \"300ms\"");
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let status = env.status().await;
    assert!(
        !status.data_planes[0]
            .listeners
            .iter()
            .any(|l| l.name == "admin"),
        "{status:?}"
    );
    wait_until_refused(moved).await;

    load.finish().await;

    // The drain deadline of the last reload (300 ms, not the 2 s proxyd started with) cuts a
    // request that takes 1.5 s.
    let before = app.hits();
    let slow = tokio::spawn(async move {
        let stream = connect_from([127, 0, 0, 5], http).await;
        proxy_tests::Conn::over(stream)
            .await
            .try_get("app.example", "/sleep/1500")
            .await
    });
    eventually("the slow request to reach the upstream", || async {
        (app.hits() > before).then_some(())
    })
    .await;
    drop((first, idle));
    env.stop_proxyd().await;
    assert_eq!(slow.await.unwrap(), None, "cut at the drain deadline");
    env.stop_controld().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_version_is_sent_again_until_it_applies_without_a_reload() {
    // Issue 20 §3: a version a data plane refused for a passing reason (here a port someone
    // else held) stayed refused until the next reload; now controld sends it again with
    // back-off, and the data plane converges by itself.
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start(&site("app.example", &app.url(), "")).await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = busy.local_addr().unwrap();
    env.write_config(
        &(site("app.example", &app.url(), "") + &listener("late", &address.to_string(), false)),
    );
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let status = env.status().await;
    assert!(!status.data_planes[0].in_sync, "{status:?}");
    // The port is free now: no reload, and yet the data plane serves version 2.
    drop(busy);
    eventually("the data plane to take version 2 by itself", || async {
        let status = env.status().await;
        status.data_planes[0].in_sync.then_some(())
    })
    .await;
    assert_eq!(env.status().await.data_planes[0].applied_version, 2);
    assert_eq!(get(address, "app.example", "/").await.status, 200);
    env.stop().await;
}
