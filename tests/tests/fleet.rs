//! Fleets on a real etcd: Debian's `etcd-server` (3.4), three members on loopback
//! (`proxy_tests::etcd`). The fleet's keys as controld keeps them (`controld::cluster::store`):
//! one version counter advanced by transactions, node states under leases, watches; and the
//! faults the issue names: a member stopped, then the leader; etcd gone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::time::{Duration, Instant};

use controld::cluster::etcd::{Change, Etcd, EtcdError, Watched};
use controld::cluster::store::{Fleet, NodeState, PublishError, Published, Publisher};
use proxy_tests::etcd::EtcdCluster;
use proxy_tests::fleet::Hosts;
use proxy_tests::{DEADLINE, eventually};

/// One test at a time: each starts a three-member etcd (and most three hosts); ten at once on
/// two cores starve their elections and deadlines.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn fleet(cluster: &EtcdCluster, node: &str) -> Fleet {
    let etcd = Etcd::connect(&cluster.endpoints(), Duration::from_secs(2), None).unwrap();
    Fleet::new(etcd, "test", node)
}

fn by(source: &str) -> Publisher {
    Publisher {
        source: source.to_owned(),
        ..Publisher::default()
    }
}

/// Publishes `text`, retrying while etcd elects a leader (a publish in the middle of an
/// election fails with the reason; the caller may try again).
async fn publish_eventually(fleet: &Fleet, text: &str) -> u64 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match fleet.publish(text, &by("reload"), None, false, None).await {
            Ok(Published::New(v)) => return v.version,
            Ok(other) => panic!("{other:?}"),
            Err(e) if Instant::now() < deadline => {
                eprintln!("publish failed, trying again: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no publish within {DEADLINE:?}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn publishes_from_two_hosts_at_once_give_consecutive_versions_or_a_conflict_never_a_lost_one()
{
    let _serial = SERIAL.lock().await;
    let cluster = EtcdCluster::start(3).await;
    let (a, b) = (fleet(&cluster, "a"), fleet(&cluster, "b"));
    // Twenty publishes from each host at once, neither naming the version it expects: every
    // one lands, and the versions are 1 to 40 without a gap or a double.
    let run = |f: Fleet, tag: &'static str| {
        tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..20 {
                let text = format!("# {tag} {i}\n");
                match f
                    .publish(&text, &by("reload"), None, false, None)
                    .await
                    .unwrap()
                {
                    Published::New(v) => got.push((v.version, text)),
                    other => panic!("{other:?}"),
                }
            }
            got
        })
    };
    let (from_a, from_b) = (run(a.clone(), "a"), run(b.clone(), "b"));
    let mut all = from_a.await.unwrap();
    all.extend(from_b.await.unwrap());
    all.sort();
    let numbers: Vec<u64> = all.iter().map(|(v, _)| *v).collect();
    assert_eq!(numbers, (1..=40).collect::<Vec<_>>());
    for (version, text) in &all {
        let stored = a.version(*version).await.unwrap().unwrap();
        assert_eq!(&stored.text, text, "version {version}");
    }
    assert_eq!(a.history().await.unwrap().len(), 40);

    // Both naming version 40: one lands as 41, the other is told the fleet moved on.
    let reload = by("reload");
    let (ra, rb) = tokio::join!(
        a.publish("# a last\n", &reload, Some(40), false, None),
        b.publish("# b last\n", &reload, Some(40), false, None)
    );
    match (ra, rb) {
        (Ok(Published::New(v)), Err(PublishError::Conflict { now: 41 }))
        | (Err(PublishError::Conflict { now: 41 }), Ok(Published::New(v))) => {
            assert_eq!(v.version, 41);
        }
        other => panic!("{other:?}"),
    }
    // The text the fleet serves again is no new version.
    let head = a.head().await.unwrap().0.unwrap();
    let text = a.version(41).await.unwrap().unwrap().text;
    assert_eq!(
        b.publish(&text, &by("reload"), None, false, None)
            .await
            .unwrap(),
        Published::Unchanged(head)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_stopped_then_the_leader_publishes_go_on_and_no_version_is_lost() {
    let _serial = SERIAL.lock().await;
    let mut cluster = EtcdCluster::start(3).await;
    let a = fleet(&cluster, "a");
    assert_eq!(publish_eventually(&a, "# one\n").await, 1);

    let leader = cluster.wait_for_leader().await;
    let follower = (leader + 1) % 3;
    cluster.stop_member(follower).await;
    assert_eq!(publish_eventually(&a, "# two\n").await, 2);

    cluster.start_member(follower);
    cluster.wait_for_leader().await;
    let stopped = cluster.stop_leader().await;
    eprintln!("stopped the leader, member {stopped}");
    assert_eq!(publish_eventually(&a, "# three\n").await, 3);
    let mut texts = Vec::new();
    for entry in a.history().await.unwrap() {
        texts.push(a.version(entry.version).await.unwrap().unwrap().text);
    }
    assert_eq!(texts, ["# three\n", "# two\n", "# one\n"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_etcd_gone_a_publish_fails_at_once_naming_etcd_and_changes_nothing() {
    let _serial = SERIAL.lock().await;
    let mut cluster = EtcdCluster::start(3).await;
    let a = fleet(&cluster, "a");
    assert_eq!(publish_eventually(&a, "# one\n").await, 1);
    for i in 0..3 {
        cluster.stop_member(i).await;
    }
    let started = Instant::now();
    let error = a
        .publish("# two\n", &by("reload"), None, false, None)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(error, PublishError::Etcd(EtcdError::Unreachable { .. })),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains(&cluster.endpoints()[0]), "{text}");

    // Back: nothing was published meanwhile.
    for i in 0..3 {
        cluster.start_member(i);
    }
    cluster.wait_for_leader().await;
    let head = eventually("etcd back", || async { a.head().await.ok() }).await;
    assert_eq!(head.0.unwrap().version, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_lease_lapses_drops_out_and_a_watch_sees_each_version() {
    let _serial = SERIAL.lock().await;
    let cluster = EtcdCluster::start(3).await;
    let a = fleet(&cluster, "a");
    let b = fleet(&cluster, "b");

    // A watch on the head from the start sees every publish, in order.
    let (_, revision) = a.etcd().get(&a.key("head")).await.unwrap();
    let mut watch = a.etcd().watch(&a.key("head"), revision + 1).await.unwrap();
    for text in ["# one\n", "# two\n"] {
        publish_eventually(&b, text).await;
    }
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let watched = tokio::time::timeout(DEADLINE, watch.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        match watched {
            Watched::Changes { changes, .. } => {
                for change in changes {
                    let Change::Put(kv) = change else {
                        panic!("{change:?}")
                    };
                    let head: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
                    seen.push(head["version"].as_u64().unwrap());
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, [1, 2]);

    // Node states live as long as their lease.
    let lease = a.etcd().grant(Duration::from_secs(2)).await.unwrap();
    let state = NodeState {
        node: "a".into(),
        build: "test".into(),
        applied_version: 2,
        applied_hash: String::new(),
        tried_version: 2,
        error: String::new(),
        at_unix_ms: 0,
        instance: "one".into(),
        traffic: None,
    };
    a.record(&state, lease).await.unwrap();
    assert_eq!(b.nodes().await.unwrap(), [state]);
    // Not kept alive: gone within the TTL (and etcd's own lease checks).
    eventually("node a dropped out", || async {
        b.nodes().await.unwrap().is_empty().then_some(())
    })
    .await;
}

/// Three hosts (controld and proxyd each, in this process) in one fleet on the etcd cluster.
fn site(upstream: &str) -> String {
    format!("[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{upstream}\"]\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_on_any_host_is_applied_on_every_host_and_answers_for_each() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let hosts = Hosts::start(&site(&a.url()), "").await;

    // web-1 changes the site: every host serves it when the reload returns.
    hosts.hosts[0].write_config(&site(&b.url()));
    let out = hosts.hosts[0].proxyctl(&["--json", "reload"]).await;
    let text = proxy_tests::output_text(&out);
    assert!(out.status.success(), "{text}");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["outcome"], "applied", "{text}");
    assert_eq!(reply["version"], 1, "{text}");
    let mut nodes: Vec<(String, String)> = reply["data_planes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["node_id"].as_str().unwrap().to_owned(),
                p["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        [
            ("web-1".to_owned(), "acked".to_owned()),
            ("web-2".to_owned(), "acked".to_owned()),
            ("web-3".to_owned(), "acked".to_owned())
        ],
        "{text}"
    );
    for i in 0..3 {
        assert!(hosts.body(i).await.starts_with("upstream b"), "host {i}");
    }
    // Any host answers for the fleet: every node, what it serves, in sync.
    let out = hosts.hosts[1].proxyctl(&["status"]).await;
    let text = proxy_tests::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("fleet shop  version 1"), "{text}");
    for node in ["web-1", "web-2", "web-3"] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(node) && l.contains(" 1 (") && l.contains(" yes ")),
            "{node}: {text}"
        );
    }
    let out = hosts.hosts[2].proxyctl(&["--json", "status"]).await;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["fleet"]["desired_version"], 1, "{status}");
    assert_eq!(
        status["fleet"]["nodes"].as_array().unwrap().len(),
        3,
        "{status}"
    );

    // web-3, whose file still names upstream a, reloads: that is the fleet's version 2.
    let out = hosts.hosts[2].proxyctl(&["--json", "reload"]).await;
    let text = proxy_tests::output_text(&out);
    assert!(out.status.success(), "{text}");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["version"], 2, "{text}");
    for i in 0..3 {
        assert!(hosts.body(i).await.starts_with("upstream a"), "host {i}");
    }
    drop(hosts);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_etcd_gone_traffic_goes_on_a_reload_fails_at_once_and_every_node_converges_after() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let mut hosts = Hosts::start(&site(&a.url()), "").await;
    for i in 0..3 {
        hosts.etcd.stop_member(i).await;
    }
    // Traffic does not depend on etcd.
    for i in 0..3 {
        assert!(hosts.body(i).await.starts_with("upstream a"), "host {i}");
    }
    // A reload fails at once, names etcd, and changes nothing anywhere.
    hosts.hosts[0].write_config(&site(&b.url()));
    let started = Instant::now();
    let out = hosts.hosts[0].proxyctl(&["reload"]).await;
    let text = proxy_tests::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("etcd") && text.contains("unreachable"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    for i in 0..3 {
        assert!(hosts.body(i).await.starts_with("upstream a"), "host {i}");
    }

    // etcd back: the reload goes through, and every host serves it.
    for i in 0..3 {
        hosts.etcd.start_member(i);
    }
    hosts.etcd.wait_for_leader().await;
    let out = eventually("a reload once etcd is back", || async {
        let out = hosts.hosts[0].proxyctl(&["reload"]).await;
        out.status.success().then_some(out)
    })
    .await;
    let text = proxy_tests::output_text(&out);
    for i in 0..3 {
        let body = eventually("the new version everywhere", || async {
            let body = hosts.body(i).await;
            body.starts_with("upstream b").then_some(body)
        })
        .await;
        assert!(body.starts_with("upstream b"), "host {i}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_was_down_for_several_versions_catches_up_to_the_newest_and_is_not_waited_for()
{
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let c = proxy_tests::MockUpstream::start("c").await;
    let mut hosts = Hosts::start(&site(&a.url()), "").await;
    let watcher = Fleet::new(
        Etcd::connect(&hosts.etcd.endpoints(), Duration::from_secs(2), None).unwrap(),
        "shop",
        "watcher",
    );
    // web-3's controld stops (its proxyd serves on); once its lease lapses it is not live.
    hosts.hosts[2].stop_controld().await;
    eventually("web-3 no longer live", || async {
        let nodes = watcher.nodes().await.ok()?;
        (!nodes.iter().any(|n| n.node == "web-3")).then_some(())
    })
    .await;
    // Two versions meanwhile; each reload answers for the live nodes only, at once.
    for upstream in [&b, &c] {
        hosts.hosts[0].write_config(&site(&upstream.url()));
        let started = Instant::now();
        let out = hosts.hosts[0].proxyctl(&["--json", "reload"]).await;
        let text = proxy_tests::output_text(&out);
        assert!(out.status.success(), "{text}");
        assert!(started.elapsed() < Duration::from_secs(5), "{text}");
        assert!(!text.contains("web-3"), "{text}");
    }
    assert!(
        hosts.body(2).await.starts_with("upstream a"),
        "web-3 serves on"
    );
    // Back: web-3 goes to the newest version directly.
    hosts.hosts[2].start_controld().await;
    let body = eventually("web-3 caught up", || async {
        let body = hosts.body(2).await;
        body.starts_with("upstream c").then_some(body)
    })
    .await;
    assert!(body.starts_with("upstream c"));
    let web3 = eventually("web-3 recorded", || async {
        let nodes = watcher.nodes().await.ok()?;
        nodes
            .into_iter()
            .find(|n| n.node == "web-3" && n.applied_version == 2)
    })
    .await;
    assert_eq!(web3.tried_version, 2, "straight to the newest: {web3:?}");
    let history = watcher.history().await.unwrap();
    assert_eq!(history.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_whose_controld_dies_during_a_reload_is_reported_not_applied_and_catches_up_after_a_compaction()
 {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let mut hosts = Hosts::start(&site(&a.url()), "").await;
    // web-3's controld dies (no goodbye: its lease stays until it lapses), just as web-1
    // reloads.
    hosts.hosts[2].stop_controld().await;
    hosts.hosts[0].write_config(&site(&b.url()));
    let started = Instant::now();
    let out = hosts.hosts[0].proxyctl(&["--json", "reload"]).await;
    let text = proxy_tests::output_text(&out);
    assert!(!out.status.success(), "not every node applied it: {text}");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let web3 = reply["data_planes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["node_id"] == "web-3")
        .cloned()
        .unwrap_or_else(|| panic!("web-3 is reported: {text}"));
    assert_ne!(web3["result"], "acked", "{text}");
    // Not waited for past its lease (3 s).
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    assert!(hosts.body(0).await.starts_with("upstream b"));
    assert!(
        hosts.body(2).await.starts_with("upstream a"),
        "web-3's proxyd serves on"
    );

    // etcd compacts its history meanwhile: web-3 cannot resume a watch from where it was.
    let etcd = Etcd::connect(&hosts.etcd.endpoints(), Duration::from_secs(2), None).unwrap();
    let (_, revision) = etcd.get(b"/").await.unwrap();
    etcd.compact(revision).await.unwrap();

    // Back: it catches up to the fleet's version.
    hosts.hosts[2].start_controld().await;
    eventually("web-3 caught up", || async {
        hosts.body(2).await.starts_with("upstream b").then_some(())
    })
    .await;
    // Its row in the fleet follows once its controld has recorded what its proxyd applied.
    let host = &hosts.hosts[2];
    eventually("web-3 in sync in the fleet's status", || async {
        let out = host.proxyctl(&["status"]).await;
        let text = proxy_tests::output_text(&out);
        text.lines()
            .any(|l| l.starts_with("web-3") && l.contains(" yes "))
            .then_some(())
    })
    .await;
    // web-3's controld restarts again: its file still names upstream a, but it starts from the
    // fleet version it applied last, so its proxyd never goes back to a, not even for a moment.
    hosts.hosts[2].stop_controld().await;
    let http = hosts.hosts[2].http;
    let poll = tokio::spawn(async move {
        let mut seen = Vec::new();
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            seen.push(proxy_tests::get(http, "app.example", "/").await.body);
        }
        seen
    });
    hosts.hosts[2].start_controld().await;
    let seen = poll.await.unwrap();
    assert!(seen.len() > 10, "{}", seen.len());
    assert!(
        seen.iter().all(|b| b.starts_with("upstream b")),
        "{:?}",
        seen.iter().find(|b| !b.starts_with("upstream b"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn history_and_rollback_answer_for_the_fleet_from_any_host() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let hosts = Hosts::start(&site(&a.url()), "").await;
    for (host, upstream) in [(0, &b), (1, &a)] {
        hosts.hosts[host].write_config(&site(&upstream.url()));
        let out = hosts.hosts[host].proxyctl(&["reload"]).await;
        assert!(out.status.success(), "{}", proxy_tests::output_text(&out));
    }
    // web-3 lists the fleet's versions, each with the node it came from.
    let out = hosts.hosts[2].proxyctl(&["--json", "history"]).await;
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(history["current_version"], 2, "{history}");
    let nodes: Vec<&str> = history["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["web-2", "web-1"], "{history}");

    // A rollback on web-3 goes back to version 1 on every host, as version 3.
    let out = hosts.hosts[2].proxyctl(&["--json", "rollback"]).await;
    let text = proxy_tests::output_text(&out);
    assert!(out.status.success(), "{text}");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["version"], 3, "{text}");
    assert_eq!(reply["data_planes"].as_array().unwrap().len(), 3, "{text}");
    for i in 0..3 {
        assert!(hosts.body(i).await.starts_with("upstream b"), "host {i}");
    }
    let out = hosts.hosts[0].proxyctl(&["--json", "history"]).await;
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        history["entries"][0]["source"], "rollback to 1",
        "{history}"
    );
    assert_eq!(history["entries"][0]["node"], "web-3", "{history}");
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tls_with_a_client_certificate_a_fleet_works_and_without_one_etcd_refuses_and_says_so()
{
    let _serial = SERIAL.lock().await;
    let etcd = EtcdCluster::start_tls(3).await;
    let files = etcd.client_files().unwrap().clone();
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let cluster = |node: &str, client: bool| {
        let client = if client {
            format!(
                ", cert_file = \"{}\", key_file = \"{}\"",
                files.cert_file.display(),
                files.key_file.display()
            )
        } else {
            String::new()
        };
        format!(
            "[cluster]\netcd = {}\nname = \"tls\"\nnode = \"{node}\"\n\
             tls = {{ ca_file = \"{}\"{client} }}\n",
            etcd.toml_endpoints(),
            files.ca_file.display()
        )
    };
    let host = proxy_tests::TestEnv::start_setup(
        proxy_tests::Setup {
            tables: cluster("web-1", true),
            ..proxy_tests::Setup::default()
        },
        &site(&a.url()),
    )
    .await;
    host.write_config(&site(&b.url()));
    let out = host.proxyctl(&["--json", "reload"]).await;
    let text = proxy_tests::output_text(&out);
    assert!(out.status.success(), "{text}");
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["data_planes"][0]["node_id"], "web-1", "{text}");
    assert!(
        proxy_tests::get(host.http, "app.example", "/")
            .await
            .body
            .starts_with("upstream b")
    );

    // No client certificate: etcd refuses the handshake, and the reload says why.
    let other = proxy_tests::TestEnv::start_setup(
        proxy_tests::Setup {
            tables: cluster("web-2", false),
            ..proxy_tests::Setup::default()
        },
        &site(&a.url()),
    )
    .await;
    let out = other.proxyctl(&["reload"]).await;
    let text = proxy_tests::output_text(&out);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("nothing was published") && text.contains("etcd"),
        "{text}"
    );
    assert!(
        proxy_tests::get(other.http, "app.example", "/")
            .await
            .body
            .starts_with("upstream a"),
        "{text}"
    );
    eprintln!("{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_racing_a_reload_gives_consecutive_versions_and_every_host_serves_the_last() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let b = proxy_tests::MockUpstream::start("b").await;
    let c = proxy_tests::MockUpstream::start("c").await;
    let hosts = Hosts::start(&site(&a.url()), "").await;
    hosts.hosts[0].write_config(&site(&b.url()));
    let out = hosts.hosts[0].proxyctl(&["reload"]).await;
    assert!(out.status.success(), "{}", proxy_tests::output_text(&out));
    // web-1 reloads (to c) while web-2 rolls back to version 1 (upstream b): both land, one
    // after the other, neither lost.
    hosts.hosts[0].write_config(&site(&c.url()));
    let (reload, rollback) = tokio::join!(
        hosts.hosts[0].proxyctl(&["--json", "reload"]),
        hosts.hosts[1].proxyctl(&["--json", "rollback", "1"])
    );
    let versions: Vec<u64> = [&reload, &rollback]
        .iter()
        .map(|out| {
            let text = proxy_tests::output_text(out);
            assert!(out.status.success(), "{text}");
            let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            reply["version"].as_u64().unwrap()
        })
        .collect();
    let mut sorted = versions.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [2, 3], "{versions:?}");
    // Whichever came last serves on every host.
    let last_is_reload = versions[0] == 3;
    let expected = if last_is_reload {
        "upstream c"
    } else {
        "upstream b"
    };
    for i in 0..3 {
        let body = eventually("the last version everywhere", || async {
            let body = hosts.body(i).await;
            body.starts_with(expected).then_some(body)
        })
        .await;
        assert!(body.starts_with(expected), "host {i}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_host_under_a_live_node_s_name_is_refused_and_says_so() {
    let _serial = SERIAL.lock().await;
    let a = proxy_tests::MockUpstream::start("a").await;
    let hosts = Hosts::start(&site(&a.url()), "").await;
    // A clone of web-1 (same node name) joins.
    let clone = proxy_tests::TestEnv::start_setup(
        proxy_tests::Setup {
            tables: format!(
                "[cluster]\netcd = {}\nname = \"shop\"\nnode = \"web-1\"\nlease_ttl = \"3s\"\n",
                hosts.etcd.toml_endpoints()
            ),
            ..proxy_tests::Setup::default()
        },
        &site(&a.url()),
    )
    .await;
    let text = eventually("the clone told its name is taken", || async {
        let out = clone.proxyctl(&["status"]).await;
        let text = proxy_tests::output_text(&out);
        text.contains("another controld").then_some(text)
    })
    .await;
    assert!(
        text.contains("give each host its own [cluster] node"),
        "{text}"
    );
    // The fleet still lists one web-1: the first.
    let nodes = Fleet::new(
        Etcd::connect(&hosts.etcd.endpoints(), Duration::from_secs(2), None).unwrap(),
        "shop",
        "watcher",
    )
    .nodes()
    .await
    .unwrap();
    assert_eq!(nodes.iter().filter(|n| n.node == "web-1").count(), 1);
}
