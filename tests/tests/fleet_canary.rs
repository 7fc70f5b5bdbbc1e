//! Staged rollouts (`proxyctl reload --canary`) on three real hosts and a real three-member
//! etcd: the canaries first, the others on the version before meanwhile; a canary that degrades
//! (its proxyd's own 5xx counters) or refuses stops the rollout and gets the previous content
//! back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::time::{Duration, Instant};

use proxy_tests::eventually;
use proxy_tests::fleet::{Hosts, watcher};

/// One test at a time: each starts a three-member etcd and three hosts.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn site(upstream: &str) -> String {
    format!("[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{upstream}\"]\n")
}

/// The site answering 503 itself: a release that breaks it.
fn broken_site() -> String {
    "[[sites]]\nhostnames = [\"app.example\"]\n\n[[sites.routes]]\npath_prefix = \"/\"\n\
     respond = { status = 503, body = \"broken\\n\" }\n"
        .to_owned()
}

/// Runs `proxyctl --json reload ARGS` on host `i` in the background: its exit code and reply.
fn reload_in_background(
    hosts: &Hosts,
    i: usize,
    args: &[&str],
) -> tokio::task::JoinHandle<(Option<i32>, serde_json::Value, String)> {
    let mut command = vec!["--json".to_owned(), "reload".to_owned()];
    command.extend(args.iter().map(|a| (*a).to_owned()));
    let proxyctl = proxy_tests::binary("proxyctl");
    let socket = hosts.hosts[i].socket.clone();
    tokio::spawn(async move {
        let out = tokio::process::Command::new(proxyctl)
            .args(&command)
            .env("PROXYCTL_SOCKET", &socket)
            .output()
            .await
            .unwrap();
        let text = proxy_tests::output_text(&out);
        let reply = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{text}"));
        (out.status.code(), reply, text)
    })
}

/// Publishes the hosts' file as version 1: a rollout needs a version before it.
async fn first_version(hosts: &Hosts) {
    let reply = hosts.reload(0).await;
    assert_eq!(reply["outcome"], "applied", "{reply}");
    assert_eq!(reply["version"], 1, "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_rollout_reaches_the_canary_first_and_every_node_after_its_window() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let hosts = Hosts::start(&site(&a.url()), "").await;
    first_version(&hosts).await;

    // A canary that is not a live node: nothing is published.
    let out = hosts.hosts[0]
        .proxyctl(&["reload", "--canary", "web-9"])
        .await;
    let text = proxy_tests::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "canary \"web-9\" is not a live node of the fleet (live: web-1, web-2, web-3)"
        ),
        "{text}"
    );

    hosts.hosts[0].write_config(&site(&b.url()));
    let rollout = reload_in_background(&hosts, 0, &["--canary", "web-2", "--canary-wait", "4s"]);
    // web-2 serves the new version while web-1 (where the reload runs) and web-3 keep the
    // version before; status says so from any host.
    eventually("web-2 serves version 2", || async {
        hosts.body(1).await.starts_with("upstream b").then_some(())
    })
    .await;
    for i in [0, 2] {
        assert!(hosts.body(i).await.starts_with("upstream a"), "host {i}");
    }
    let out = hosts.hosts[2].proxyctl(&["--json", "status"]).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["fleet"]["canary_nodes"],
        serde_json::json!(["web-2"]),
        "{status}"
    );
    assert_eq!(status["fleet"]["stable_version"], 1, "{status}");
    assert_eq!(status["fleet"]["desired_version"], 2, "{status}");
    let in_sync: Vec<bool> = status["fleet"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["in_sync"].as_bool().unwrap())
        .collect();
    assert_eq!(
        in_sync,
        [true, true, true],
        "each node serves what it should: {status}"
    );
    // Traffic on the canary in its window: counted, all 2xx.
    for _ in 0..20 {
        assert!(hosts.body(1).await.starts_with("upstream b"));
        assert!(hosts.body(2).await.starts_with("upstream a"));
    }

    let (code, reply, text) = rollout.await.unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(reply["outcome"], "applied", "{text}");
    assert_eq!(reply["version"], 2, "{text}");
    let canary = &reply["canary"];
    assert_eq!(canary["nodes"], serde_json::json!(["web-2"]), "{text}");
    assert_eq!(canary["stopped"], serde_json::Value::Null, "{text}");
    let figures = &canary["figures"][0];
    assert_eq!(figures["node"], "web-2", "{text}");
    assert!(figures["responses"].as_u64().unwrap() >= 20, "{text}");
    assert_eq!(figures["responses_5xx"], 0, "{text}");
    let acked = reply["data_planes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["result"] == "acked")
        .count();
    assert_eq!(acked, 3, "{text}");
    for i in 0..3 {
        assert!(hosts.body(i).await.starts_with("upstream b"), "host {i}");
    }
    let out = hosts.hosts[1].proxyctl(&["--json", "status"]).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["fleet"]["canary_nodes"],
        serde_json::json!([]),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_whose_5xx_ratio_rises_stops_the_rollout_and_gets_the_previous_content_back() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let hosts = Hosts::start(&site(&a.url()), "").await;
    first_version(&hosts).await;
    // Some healthy traffic on the canary-to-be before: its ratio before is 0%.
    for _ in 0..10 {
        assert!(hosts.body(0).await.starts_with("upstream a"));
    }

    hosts.hosts[0].write_config(&broken_site());
    let rollout = reload_in_background(&hosts, 0, &["--canary", "1", "--canary-wait", "4s"]);
    // `--canary 1` is the first live node by name: web-1, where the reload runs.
    eventually("web-1 serves the broken version", || async {
        (hosts.body(0).await == "broken\n").then_some(())
    })
    .await;
    for _ in 0..20 {
        assert_eq!(hosts.body(0).await, "broken\n");
        // The others never see it.
        assert!(hosts.body(1).await.starts_with("upstream a"));
        assert!(hosts.body(2).await.starts_with("upstream a"));
    }

    let (code, reply, text) = rollout.await.unwrap();
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(reply["outcome"], "canary_stopped", "{text}");
    let stopped = reply["canary"]["stopped"].as_str().unwrap();
    // (A response or two of the version before may fall in the window: its start is the
    // canary's figures as last reported when it applied, up to a second old.)
    assert!(stopped.starts_with("canary web-1: 5xx ratio "), "{text}");
    assert!(
        stopped.contains("in the window") && stopped.contains("0.0% before"),
        "{text}"
    );
    let figures = &reply["canary"]["figures"][0];
    assert!(
        figures["responses_before"].as_u64().unwrap() >= 10,
        "{text}"
    );
    assert!(figures["responses_5xx"].as_u64().unwrap() >= 19, "{text}");
    assert_eq!(reply["canary"]["reverted_version"], 3, "{text}");
    assert_eq!(reply["version"], 3, "{text}");
    for i in 0..3 {
        assert!(hosts.body(i).await.starts_with("upstream a"), "host {i}");
    }
    // The history says what happened: 2 published for the canary, 3 put 1's content back.
    let history = watcher(&hosts.etcd).history().await.unwrap();
    assert_eq!(history[0].version, 3);
    assert_eq!(history[0].source, "canary of 2 reverted");
    assert_eq!(
        history[0].hash, history[2].hash,
        "version 3 is version 1's content"
    );

    // The same without --json: one line says why, naming the node.
    hosts.hosts[0].write_config(&broken_site());
    let out = hosts.hosts[0]
        .proxyctl(&["reload", "--canary", "web-1", "--canary-wait", "2s"])
        .await;
    let text = proxy_tests::output_text(&out);
    // No traffic in this window: nothing to judge, the rollout goes on.
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("canaries web-1 served it for 2s first"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_that_refuses_the_version_stops_the_rollout_at_once() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let hosts = Hosts::start(&site(&a.url()), "").await;
    first_version(&hosts).await;

    // web-3's own tables no longer parse: it cannot serve any new version.
    let broken = hosts.hosts[2]
        .config_text(&site(&a.url()))
        .replace("shutdown_timeout = \"2s\"", "shutdown_timeout = \"soon\"");
    std::fs::write(&hosts.hosts[2].config_path, broken).unwrap();
    hosts.hosts[0].write_config(&site(&b.url()));
    let started = std::time::Instant::now();
    let (code, reply, text) =
        reload_in_background(&hosts, 0, &["--canary", "web-3", "--canary-wait", "30s"])
            .await
            .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a refusal stops the rollout without waiting out the window: {text}"
    );
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(reply["outcome"], "canary_stopped", "{text}");
    let stopped = reply["canary"]["stopped"].as_str().unwrap();
    assert!(
        stopped.starts_with("canary web-3 refused version 2"),
        "{text}"
    );
    assert!(stopped.contains("shutdown_timeout"), "{text}");
    for i in 0..3 {
        assert!(hosts.body(i).await.starts_with("upstream a"), "host {i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_host_refuses_a_staged_rollout_and_publishes_nothing() {
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let env = proxy_tests::TestEnv::start(&site(&a.url())).await;
    env.write_config(&site(&b.url()));
    let out = env.proxyctl(&["reload", "--canary", "1"]).await;
    let text = proxy_tests::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("a staged rollout (--canary) is for fleets"),
        "{text}"
    );
    assert_eq!(env.status().await.control_plane.unwrap().version, 1);
    // A window without canaries is a usage error, caught before anything is sent.
    let out = env.proxyctl(&["reload", "--canary-wait", "5s"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        proxy_tests::output_text(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_whose_proxyd_stops_in_the_window_stops_the_rollout() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let mut hosts = Hosts::start(&site(&a.url()), "").await;
    first_version(&hosts).await;
    hosts.hosts[0].write_config(&site(&b.url()));
    let rollout = reload_in_background(&hosts, 0, &["--canary", "web-2", "--canary-wait", "8s"]);
    eventually("web-2 serves version 2", || async {
        hosts.body(1).await.starts_with("upstream b").then_some(())
    })
    .await;
    // Its controld has recorded that it serves version 2 (its proxyd's ACK), so the rollout
    // is in the window: a proxyd gone before its ACK is a refusal, another test's case.
    eventually("web-2 recorded as serving version 2", || async {
        let out = hosts.hosts[0].proxyctl(&["--json", "status"]).await;
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        status["fleet"]["nodes"]
            .as_array()?
            .iter()
            .any(|n| n["node"] == "web-2" && n["applied_version"] == 2)
            .then_some(())
    })
    .await;
    // Its proxyd goes (crashed under the new version, say): nothing left to judge it on.
    hosts.hosts[1].stop_proxyd().await;
    let (code, reply, text) = rollout.await.unwrap();
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(reply["outcome"], "canary_stopped", "{text}");
    assert!(
        reply["canary"]["stopped"]
            .as_str()
            .unwrap()
            .starts_with("canary web-2: its proxyd stopped serving in the window"),
        "{text}"
    );
    for i in [0, 2] {
        assert!(hosts.body(i).await.starts_with("upstream a"), "host {i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clearly_degraded_canary_stops_the_rollout_before_its_window_ends_whatever_else_it_serves()
 {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let hosts = Hosts::start(&site(&a.url()), "").await;
    first_version(&hosts).await;
    hosts.hosts[0].write_config(&broken_site());
    let started = Instant::now();
    let rollout = reload_in_background(&hosts, 0, &["--canary", "web-1", "--canary-wait", "60s"]);
    eventually("web-1 serves the broken version", || async {
        (hosts.body(0).await == "broken\n").then_some(())
    })
    .await;
    // Requests for a host no site serves (anyone can send them) do not dilute its ratio.
    let mut conn = proxy_tests::Conn::open(hosts.hosts[0].http).await;
    for _ in 0..500 {
        assert_eq!(conn.get("nothing.example", "/").await.status, 404);
    }
    for _ in 0..30 {
        assert_eq!(hosts.body(0).await, "broken\n");
    }
    let (code, reply, text) = rollout.await.unwrap();
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(reply["outcome"], "canary_stopped", "{text}");
    assert!(
        reply["canary"]["stopped"]
            .as_str()
            .unwrap()
            .starts_with("canary web-1: 5xx ratio 100.0% in the window"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped at once, not after the 60 s window: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_over_one_still_at_its_canaries_keeps_the_earlier_canaries_among_its_own() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let c = proxy_tests::MockUpstream::start("c").await;
    let hosts = Hosts::start(&site(&a.url()), "").await;
    first_version(&hosts).await;
    hosts.hosts[0].write_config(&site(&b.url()));
    let first = reload_in_background(&hosts, 0, &["--canary", "web-2", "--canary-wait", "30s"]);
    eventually("web-2 serves b", || async {
        hosts.body(1).await.starts_with("upstream b").then_some(())
    })
    .await;
    hosts.hosts[2].write_config(&site(&c.url()));
    let second = reload_in_background(&hosts, 2, &["--canary", "web-3", "--canary-wait", "3s"]);
    // web-2 (a canary of the first) is one of the second's: it goes forward to c, never back;
    // web-1 keeps the stable version meanwhile.
    eventually("web-2 and web-3 serve c", || async {
        (hosts.body(1).await.starts_with("upstream c")
            && hosts.body(2).await.starts_with("upstream c"))
        .then_some(())
    })
    .await;
    assert!(hosts.body(0).await.starts_with("upstream a"));
    let out = hosts.hosts[0].proxyctl(&["--json", "status"]).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        status["fleet"]["canary_nodes"],
        serde_json::json!(["web-2", "web-3"]),
        "{status}"
    );
    assert!(
        status["fleet"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["in_sync"] == true),
        "{status}"
    );
    let (code, reply, text) = second.await.unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        reply["canary"]["nodes"],
        serde_json::json!(["web-2", "web-3"])
    );
    let (_, reply, text) = first.await.unwrap();
    assert_eq!(reply["outcome"], "canary_stopped", "{text}");
    assert!(
        reply["canary"]["stopped"]
            .as_str()
            .unwrap()
            .starts_with("superseded"),
        "{text}"
    );
    for i in 0..3 {
        assert!(hosts.body(i).await.starts_with("upstream c"), "host {i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_is_not_stopped_by_an_earlier_rollout_s_canary_that_left_the_fleet() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let c = proxy_tests::MockUpstream::start("c").await;
    let mut hosts = Hosts::start(&site(&a.url()), "").await;
    first_version(&hosts).await;
    // A rollout whose controld died in its window (here: published as it does, and no one
    // watches it): the head stays at its canary web-2.
    let w = watcher(&hosts.etcd);
    w.publish(
        &site(&b.url()),
        &controld::cluster::store::Publisher::default(),
        None,
        true,
        Some(&["web-2".to_owned()]),
    )
    .await
    .unwrap();
    eventually("web-2 serves b", || async {
        hosts.body(1).await.starts_with("upstream b").then_some(())
    })
    .await;
    // web-2 is taken out of the fleet (decommissioned, or down): its lease lapses.
    hosts.hosts[1].stop_controld().await;
    eventually("web-2 is no longer live", || async {
        let nodes = w.nodes().await.ok()?;
        (!nodes.iter().any(|n| n.node == "web-2")).then_some(())
    })
    .await;
    hosts.hosts[2].write_config(&site(&c.url()));
    let (code, reply, text) =
        reload_in_background(&hosts, 2, &["--canary", "web-3", "--canary-wait", "2s"])
            .await
            .unwrap();
    assert_eq!(
        code,
        Some(0),
        "a healthy rollout naming only live web-3 was stopped: {text}"
    );
    assert_eq!(reply["outcome"], "applied", "{text}");
}
