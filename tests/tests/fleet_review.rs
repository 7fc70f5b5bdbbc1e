//! The review of issue 21 (fleets), each finding a test: concurrent reloads leave every node on
//! the fleet's version; a restart that falls back to the file is not reported in sync;
//! followers are not blocked by the stale fleet part of their own file; a publish whose answer
//! was lost is told the truth; History from a read-only caller does not reach etcd per call.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use controld::cluster::etcd::Etcd;
use controld::cluster::store::{Fleet, PublishError, Published, Publisher};
use proxy_tests::etcd::EtcdCluster;
use proxy_tests::eventually;
use proxy_tests::fleet::{Hosts, watcher};
use proxy_tests::tls::{Issued, TestCa};

/// One test at a time: each starts a three-member etcd and three hosts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn site(upstream: &str, extra: &str) -> String {
    format!("[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{upstream}\"]\n{extra}\n")
}

fn tls_site(upstream: &str, issued: &Issued) -> String {
    format!(
        "{}[[sites]]\nhostnames = [\"secure.example\"]\nupstreams = [\"{upstream}\"]\n{}\n",
        site(upstream, ""),
        issued.site_tls()
    )
}

fn results(reply: &serde_json::Value) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = reply["data_planes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["node_id"].as_str().unwrap_or_default().to_owned(),
                p["result"].as_str().unwrap_or_default().to_owned(),
                p["error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Three hosts whose files name upstream a and certificate `old`; web-1 has published version
/// 1 with upstream b and certificate `new`, applied everywhere.
struct Rotated {
    hosts: Hosts,
    a: proxy_tests::MockUpstream,
    b: proxy_tests::MockUpstream,
    certs: tempfile::TempDir,
    old: Issued,
    new: Issued,
}

async fn rotated() -> Rotated {
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    let old = ca.issue(certs.path(), "old", &["secure.example"]);
    let new = ca.issue(certs.path(), "new", &["secure.example"]);
    let hosts = Hosts::start(&tls_site(&a.url(), &old), proxy_tests::HTTPS_ON_PORT_0).await;
    hosts.hosts[0].write_config(&tls_site(&b.url(), &new));
    let reply = hosts.reload(0).await;
    assert!(results(&reply).iter().all(|r| r.1 == "acked"), "{reply}");
    Rotated {
        hosts,
        a,
        b,
        certs,
        old,
        new,
    }
}

/// F1: a follower re-validates its own (stale, never-published) fleet part on every fleet
/// version: after a certificate rotation done through the fleet, the hosts whose file still
/// names the old certificate refuse every later version.
#[tokio::test(flavor = "multi_thread")]
async fn followers_are_not_blocked_by_the_stale_fleet_part_of_their_own_file() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    let old = ca.issue(certs.path(), "old", &["secure.example"]);
    let new = ca.issue(certs.path(), "new", &["secure.example"]);
    let hosts = Hosts::start(&tls_site(&a.url(), &old), proxy_tests::HTTPS_ON_PORT_0).await;

    // web-1 rotates the certificate for the fleet: applied everywhere.
    hosts.hosts[0].write_config(&tls_site(&a.url(), &new));
    let reply = hosts.reload(0).await;
    assert!(results(&reply).iter().all(|r| r.1 == "acked"), "{reply}");
    // The old certificate is removed from every host (no version names it any more).
    std::fs::remove_file(&old.cert_file).unwrap();
    std::fs::remove_file(&old.key_file).unwrap();

    // web-1 changes the upstream: every node should apply it.
    hosts.hosts[0].write_config(&tls_site(&b.url(), &new));
    let reply = hosts.reload(0).await;
    assert_eq!(
        results(&reply)
            .iter()
            .map(|r| r.1.as_str())
            .collect::<Vec<_>>(),
        ["acked", "acked", "acked"],
        "{reply}"
    );
}

/// F2: a controld restart whose kept fleet version does not check at that moment (here: its
/// certificate is briefly missing) falls back to the file's older fleet part, but the link
/// still claims the kept version: status says "in sync" and catch_up never re-applies.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_that_falls_back_to_the_file_is_not_reported_in_sync() {
    let _serial = SERIAL.lock().await;
    let Rotated {
        mut hosts,
        a: _a,
        b: _b,
        certs,
        old: _old,
        new,
    } = rotated().await;
    assert!(hosts.body(1).await.starts_with("upstream b"));

    // web-2's controld restarts while the new certificate is briefly unavailable.
    hosts.hosts[1].stop_controld().await;
    let hidden = certs.path().join("hidden.crt");
    std::fs::rename(&new.cert_file, &hidden).unwrap();
    // controld has decided what it starts from once its socket answers: the certificate can
    // come back at once.
    hosts.hosts[1].start_controld().await;
    std::fs::rename(&hidden, &new.cert_file).unwrap();
    // It recovers by itself: the version it could not apply is tried again.
    let body = eventually("web-2 back on the fleet's version", || async {
        let body = hosts.body(1).await;
        body.starts_with("upstream b").then_some(body)
    })
    .await;
    let out = hosts.hosts[1].proxyctl(&["status"]).await;
    let text = proxy_tests::output_text(&out);
    let in_sync = text
        .lines()
        .any(|l| l.starts_with("web-2") && l.contains(" yes "));
    eprintln!("web-2 serves {body:?}\n{text}");
    assert!(
        !(in_sync && body.starts_with("upstream a")),
        "web-2 serves the file's old version (upstream a) while status says it is in sync \
         with the fleet's version (upstream b), exit {:?}:\n{text}",
        out.status.code()
    );
}

/// A host whose file's fleet part went stale and no longer checks (here: it names a
/// certificate the fleet has since replaced and removed) still starts: from the fleet version
/// it applied last, with its file's host tables; it used to refuse to start.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_whose_file_no_longer_checks_starts_from_the_fleet_version_applied_last() {
    let _serial = SERIAL.lock().await;
    let Rotated {
        mut hosts,
        a,
        b: _b,
        certs: _certs,
        old,
        new,
    } = rotated().await;

    // web-2's file still names the old certificate, which is gone: the file does not check.
    hosts.hosts[1].stop_controld().await;
    std::fs::remove_file(&old.cert_file).unwrap();
    let check = controld::snapshot::load_checked(&hosts.hosts[1].config_path);
    assert!(check.is_err(), "the file itself does not check");
    hosts.hosts[1].start_controld().await;
    // Its proxyd (which served on meanwhile) back on the restarted controld.
    let status = eventually("web-2's proxyd subscribed again", || async {
        let status = hosts.hosts[1].status().await;
        (status.data_planes.len() == 1).then_some(status)
    })
    .await;
    let fleet = status.fleet.unwrap();
    let me = fleet.nodes.iter().find(|n| n.node == "web-2");
    assert!(
        me.is_some_and(|n| n.applied_version == 1 && n.in_sync),
        "{fleet:?}"
    );
    assert!(hosts.body(1).await.starts_with("upstream b"));
    // And it follows the fleet from there.
    hosts.hosts[2].write_config(&tls_site(&a.url(), &new));
    let reply = hosts.reload(2).await;
    assert!(results(&reply).iter().all(|r| r.1 == "acked"), "{reply}");
    let body = hosts.body(1).await;
    assert!(body.starts_with("upstream a"), "{body} {reply}");
}

/// F3: two reloads at once on two hosts: each host's own reload applies its version after
/// its follower applied the newer one, so the host steps back and stays behind the head.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reloads_on_two_hosts_leave_every_node_on_the_head() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let hosts = Hosts::start(&site(&a.url(), ""), "").await;
    let w = watcher(&hosts.etcd);
    for round in 0..40 {
        hosts.hosts[0].write_config(&site(&a.url(), &format!("# web-1 round {round}")));
        hosts.hosts[1].write_config(&site(&a.url(), &format!("# web-2 round {round}")));
        hosts.hosts[2].write_config(&site(&a.url(), &format!("# web-3 round {round}")));
        let _ = tokio::join!(
            hosts.hosts[0].proxyctl(&["reload"]),
            hosts.hosts[1].proxyctl(&["reload"]),
            hosts.hosts[2].proxyctl(&["reload"])
        );
        let head = w.head().await.unwrap().0.unwrap();
        let settled = async {
            loop {
                let nodes = w.nodes().await.unwrap();
                if nodes.len() == 3 && nodes.iter().all(|n| n.applied_version == head.version) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(8), settled)
            .await
            .is_err()
        {
            let nodes = w.nodes().await.unwrap();
            panic!(
                "round {round}: head is {} but nodes stay at {:?}",
                head.version,
                nodes
                    .iter()
                    .map(|n| (n.node.clone(), n.applied_version))
                    .collect::<Vec<_>>()
            );
        }
    }
}

/// A gRPC-aware proxy in front of one etcd member that forwards everything, but answers the
/// next Txn it forwards with UNAVAILABLE after etcd applied it (as a leader change or a
/// client-side timeout does: the outcome is unknown to the caller).
async fn lying_proxy(target: SocketAddr, lie: Arc<AtomicBool>) -> SocketAddr {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let lie = lie.clone();
            tokio::spawn(async move {
                let upstream = tokio::net::TcpStream::connect(target).await.unwrap();
                let (sender, conn) = hyper::client::conn::http2::handshake(
                    TokioExecutor::new(),
                    TokioIo::new(upstream),
                )
                .await
                .unwrap();
                tokio::spawn(conn);
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let mut sender = sender.clone();
                        let lie = lie.clone();
                        async move {
                            let txn = req.uri().path() == "/etcdserverpb.KV/Txn";
                            let resp = sender.send_request(req).await?;
                            if txn && lie.swap(false, Ordering::SeqCst) {
                                let _ = resp.into_body().collect().await;
                                let body: Body = Empty::<bytes::Bytes>::new()
                                    .map_err(|n: std::convert::Infallible| match n {})
                                    .boxed();
                                return Ok::<_, hyper::Error>(
                                    http::Response::builder()
                                        .status(200)
                                        .header("content-type", "application/grpc")
                                        .header("grpc-status", "14")
                                        .header("grpc-message", "injected: the answer was lost")
                                        .body(body)
                                        .unwrap(),
                                );
                            }
                            Ok(resp.map(|b| b.boxed()))
                        }
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// F4: a publish whose transaction landed but whose answer was lost is retried on the next
/// member by `Etcd::call`; the guard fails there (the head moved: by this very publish) and the
/// caller is told UNCHANGED (or, with --if-version, CONFLICT "nothing was published"), while its
/// text is the fleet's new version.
#[tokio::test(flavor = "multi_thread")]
async fn a_publish_whose_answer_was_lost_is_told_the_truth() {
    let _serial = SERIAL.lock().await;
    let cluster = EtcdCluster::start(3).await;
    let endpoints = cluster.endpoints();
    let target: SocketAddr = endpoints[0].trim_start_matches("http://").parse().unwrap();
    let lie = Arc::new(AtomicBool::new(false));
    let proxy = lying_proxy(target, lie.clone()).await;
    let through_proxy = || {
        let mut list = vec![format!("http://{proxy}")];
        list.extend(endpoints[1..].iter().cloned());
        Fleet::new(
            Etcd::connect(&list, Duration::from_secs(2), None).unwrap(),
            "test",
            "a",
        )
    };
    let by = Publisher {
        source: "reload".into(),
        ..Publisher::default()
    };

    // Plain publish: the caller must learn that it published version 1.
    lie.store(true, Ordering::SeqCst);
    let got = through_proxy()
        .publish("# one\n", &by, None, false, None)
        .await;
    let head = through_proxy().head().await.unwrap().0.unwrap();
    eprintln!("publish # one: {got:?}; head {head:?}");
    // With --if-version 1: the caller must not be told "nothing was published".
    lie.store(true, Ordering::SeqCst);
    let got2 = through_proxy()
        .publish("# two\n", &by, Some(1), false, None)
        .await;
    let head2 = through_proxy().head().await.unwrap().0.unwrap();
    eprintln!("publish # two --if-version 1: {got2:?}; head {head2:?}");
    assert_eq!(head.version, 1);
    assert!(
        matches!(got, Ok(Published::New(ref v)) if v.version == 1),
        "{got:?}"
    );
    assert_eq!(head2.version, 2);
    assert!(
        !matches!(got2, Err(PublishError::Conflict { .. })),
        "told 'nothing was published' while it published version 2: {got2:?}"
    );
}

/// Range requests etcd's members have served (from their /metrics).
async fn etcd_ranges(etcd: &EtcdCluster) -> f64 {
    let mut total = 0.0;
    for e in etcd.endpoints() {
        let addr: SocketAddr = e.trim_start_matches("http://").parse().unwrap();
        let text = proxy_tests::raw_exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n",
        )
        .await;
        for line in text.lines() {
            if line.starts_with("grpc_server_started_total")
                && line.contains("grpc_method=\"Range\"")
            {
                total += line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
            }
        }
    }
    total
}

/// F5: Admin.History (open to every caller of the socket) reads etcd twice per call, with no
/// sharing or bound (Status got a 1 s cache in 75bf442; History did not).
#[tokio::test(flavor = "multi_thread")]
async fn history_reads_of_a_read_only_caller_do_not_each_reach_etcd() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let hosts = Hosts::start(&site(&a.url(), ""), "").await;
    let before = etcd_ranges(&hosts.etcd).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut admin = hosts.hosts[0].admin().await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                admin
                    .history(proto::v1::HistoryRequest::default())
                    .await
                    .unwrap();
            }
        }));
    }
    let started = std::time::Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    let after = etcd_ranges(&hosts.etcd).await;
    eprintln!(
        "1000 History calls in {:?}: {} Range requests at etcd",
        started.elapsed(),
        after - before
    );
    assert!(
        after - before < 100.0,
        "{} Range requests for 1000 History calls",
        after - before
    );
}

/// Review finding: a node whose data planes could not answer the fleet's ACME challenge set
/// rewrote `acme/confirmed/<node>` on every watch event, its own write included: a write loop
/// on etcd for as long as its proxyd was down.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_a_data_plane_does_not_write_to_etcd_in_a_loop() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let mut hosts = Hosts::start(&site(&a.url(), ""), "").await;
    let w = watcher(&hosts.etcd);
    let set = |generation: u64, id: &str, challenges: &str| {
        format!(r#"{{"generation":{generation},"id":"{id}","challenges":[{challenges}]}}"#)
            .into_bytes()
    };
    w.etcd()
        .put(&w.key("acme/challenges"), set(1, "one", ""), 0)
        .await
        .unwrap();
    eventually("every node confirmed the set", || async {
        let (kvs, _) = w.etcd().prefix(&w.key("acme/confirmed/")).await.ok()?;
        (kvs.len() == 3).then_some(())
    })
    .await;
    hosts.hosts[2].stop_proxyd().await;
    w.etcd()
        .put(
            &w.key("acme/challenges"),
            set(
                2,
                "two",
                r#"{"type":"http-01","name":"x.example","token":"t","key_authorization":"t.k"}"#,
            ),
            0,
        )
        .await
        .unwrap();
    eventually("web-3 confirmed the new set", || async {
        let (kv, _) = w.etcd().get(&w.key("acme/confirmed/web-3")).await.ok()?;
        let c: serde_json::Value = serde_json::from_slice(&kv?.value).ok()?;
        (c["tried"] == "two").then_some(())
    })
    .await;
    // It says why it cannot answer (the issuer names it), once; then it is quiet.
    let (kv, _) = w.etcd().get(&w.key("acme/confirmed/web-3")).await.unwrap();
    let confirmed: serde_json::Value = serde_json::from_slice(&kv.unwrap().value).unwrap();
    assert_eq!(confirmed["set"], "one", "{confirmed}");
    assert_eq!(
        confirmed["error"], "no data plane is connected here",
        "{confirmed}"
    );
    // Every write under the fleet's prefix for 2 s, as etcd reports them.
    let mut watch = w.etcd().watch(&w.key(""), 0).await.unwrap();
    let quiet = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut written = 0;
    while let Ok(Some(Ok(watched))) = tokio::time::timeout_at(quiet, watch.recv()).await {
        if let controld::cluster::etcd::Watched::Changes { changes, .. } = watched {
            written += changes.len();
        }
    }
    assert!(written < 10, "{written} etcd writes within 2 s");
}
