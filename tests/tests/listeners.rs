//! Listeners follow the config live (issue 13 §2): a reload binds a listener it adds, drains one
//! it removes, refuses the whole snapshot when a new one cannot be bound, and applies a `tls`
//! change to new connections without closing the socket, all while traffic goes on.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use proxy_tests::tls::TestCa;
use proxy_tests::{MockUpstream, TestEnv, eventually, get, listener_address, output_text};

fn listener(name: &str, address: &str, tls: bool) -> String {
    format!("\n[[proxy.listeners]]\nname = \"{name}\"\naddress = \"{address}\"\ntls = {tls}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn listeners_are_added_moved_switched_to_tls_and_removed_by_reload_under_load() {
    let app = MockUpstream::start("app").await;
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let cert = ca.issue(dir.path(), "site", &["app.example"]);
    let site = format!(
        "[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{}\"]\nhttps_redirect = false\n{}\n",
        app.url(),
        cert.site_tls()
    );
    // A site with a certificate needs a TLS listener: `https` stays throughout.
    let env = TestEnv::start_with_listeners(proxy_tests::HTTPS_ON_PORT_0, &site).await;
    let status = env.status().await;
    let http = listener_address(&status, "http");
    let write =
        |extra: &str| std::fs::write(&env.config_path, env.config_text(&site) + extra).unwrap();

    // Steady load on the listener that stays.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if get(http, "app.example", "/").await.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };

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
    eventually("the old address to refuse connections", || async {
        tokio::net::TcpStream::connect(extra)
            .await
            .is_err()
            .then_some(())
    })
    .await;
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
    eventually("the removed listener to refuse connections", || async {
        tokio::net::TcpStream::connect(extra)
            .await
            .is_err()
            .then_some(())
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 0);
    env.stop().await;
}
