//! End to end: a config edit travels file → controld → proxyd and shows in traffic; a bad edit
//! or a refused snapshot leaves traffic exactly as it was.

#![allow(clippy::unwrap_used, reason = "tests")]

use proxy_tests::{Conn, MockUpstream, TestEnv, get, output_text};

fn site(host: &str, upstream: &str) -> String {
    format!("[[sites]]\nhostnames = [\"{host}\"]\nupstreams = [\"{upstream}\"]\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_moves_new_requests_to_the_new_upstream_and_keeps_open_connections() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let env = TestEnv::start(&site("app.example", &a.url())).await;

    let mut kept = Conn::open(env.http).await;
    let before = kept.get("app.example", "/hello?x=1").await;
    assert_eq!(before.status, 200);
    assert!(before.body.starts_with("upstream a"), "{before:?}");
    let seen = &a.requests()[0];
    assert_eq!(seen.uri.path_and_query().unwrap().as_str(), "/hello?x=1");
    assert_eq!(seen.headers["host"], "app.example");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");

    env.write_config(&site("app.example", &b.url()));
    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with("reloaded: version 1 → 2 (1 site modified: app.example) in "),
        "{text}"
    );
    assert!(text.contains("test-proxyd (pid"), "{text}");

    let fresh = get(env.http, "app.example", "/").await;
    assert!(fresh.body.starts_with("upstream b"), "{fresh:?}");
    // The connection opened before the reload is still usable, and routes by the new snapshot.
    assert!(!kept.is_closed());
    let after = kept.get("app.example", "/").await;
    assert_eq!(after.status, 200);
    assert!(after.body.starts_with("upstream b"), "{after:?}");
    assert_eq!(a.hits(), 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_edit_is_rejected_with_its_diagnostics_and_traffic_is_unchanged() {
    let a = MockUpstream::start("a").await;
    let env = TestEnv::start(&site("app.example", &a.url())).await;

    env.write_config(
        &(site("app.example", "ftp://127.0.0.1:1")
            + "[rate_limit]\nrequests_per_second = 0\nburst = 1\n"),
    );
    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let config = env.config_path.display().to_string();
    assert!(
        text.contains(&format!(
            "{config}:3:14: sites[0].upstreams[0]: invalid upstream URL \"ftp://127.0.0.1:1\""
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{config}:5:23: rate_limit.requests_per_second: must be greater than 0"
        )),
        "{text}"
    );
    assert!(
        text.contains("reload rejected: version 1 is still serving"),
        "{text}"
    );

    let answer = get(env.http, "app.example", "/").await;
    assert!(answer.body.starts_with("upstream a"), "{answer:?}");
    let status = env.status().await;
    assert_eq!(status.control_plane.unwrap().version, 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_proxyd_refuses_is_nacked_and_the_old_version_keeps_serving() {
    let a = MockUpstream::start("a").await;
    let env = TestEnv::start(&site("app.example", &a.url())).await;

    // Valid for controld, but this data plane cannot resolve the upstream's host (RFC 2606 .invalid).
    env.write_config(&site("app.example", "http://upstream.invalid:8080"));
    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("reload published version 2, but not every data plane applied it"),
        "{text}"
    );
    assert!(text.contains("refused: upstream http://upstream.invalid:8080: host \"upstream.invalid\" does not resolve"), "{text}");
    assert!(text.contains("still serving version 1"), "{text}");

    let answer = get(env.http, "app.example", "/").await;
    assert!(answer.body.starts_with("upstream a"), "{answer:?}");

    let out = env.proxyctl(&["status", "--json"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "a data plane out of sync is degraded: {}",
        output_text(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["control_plane"]["version"], 2);
    let plane = &json["data_planes"][0];
    assert_eq!(
        (
            plane["applied_version"].as_u64(),
            plane["in_sync"].as_bool()
        ),
        (Some(1), Some(false))
    );
    assert_eq!(plane["last_nack_version"], 2);

    // Fixing the file heals it: the next version applies.
    env.write_config(&site("app.example", &a.url()));
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let out = env.proxyctl(&["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_hosts_get_404_and_dead_upstreams_502_without_touching_anything_else() {
    let a = MockUpstream::start("a").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let body = site("app.example", &a.url()) + &site("dead.example", &format!("http://{closed}"));
    let env = TestEnv::start(&body).await;

    let answer = get(env.http, "other.example", "/").await;
    assert_eq!(answer.status, 404);
    let answer = get(env.http, "dead.example", "/").await;
    assert_eq!(answer.status, 502);
    assert_eq!(
        a.hits(),
        0,
        "neither request may reach another site's upstream"
    );
    assert_eq!(get(env.http, "APP.example:80", "/").await.status, 200);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_no_op_reload_changes_nothing_and_force_publishes_again() {
    let a = MockUpstream::start("a").await;
    let env = TestEnv::start(&site("app.example", &a.url())).await;

    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with("unchanged: version 1 already matches"),
        "{text}"
    );

    let out = env.proxyctl(&["reload", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(env.status().await.control_plane.unwrap().version, 1);

    let out = env.proxyctl(&["--json", "reload", "--force"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["outcome"].as_str(), json["version"].as_u64()),
        (Some("applied"), Some(2))
    );
    assert_eq!(json["data_planes"][0]["result"], "acked");
    env.wait_for_applied(2).await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_upstream_address_gets_new_connections_and_the_old_ones_close() {
    let old = MockUpstream::start("old").await;
    let new = MockUpstream::start("new").await;
    // A long pool idle timeout: the old connection must close because its upstream is gone,
    // not because it idled out.
    let env = TestEnv::start_with(
        "upstream_idle_timeout = \"5m\"",
        &site("app.example", &old.url()),
    )
    .await;
    for _ in 0..3 {
        assert!(
            get(env.http, "app.example", "/")
                .await
                .body
                .starts_with("upstream old")
        );
    }
    assert_eq!(
        (old.connections(), old.open_connections()),
        (1, 1),
        "one pooled connection, reused"
    );

    env.write_config(&site("app.example", &new.url()));
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        get(env.http, "app.example", "/")
            .await
            .body
            .starts_with("upstream new")
    );
    proxy_tests::eventually("the old upstream's idle connection to close", || async {
        (old.open_connections() == 0).then_some(())
    })
    .await;
    assert_eq!(new.connections(), 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_restores_the_earlier_routing_and_history_shows_who_did_what() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let env = TestEnv::start(&site("app.example", &a.url())).await;
    env.write_config(&site("app.example", &b.url()));
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert!(
        get(env.http, "app.example", "/")
            .await
            .body
            .starts_with("upstream b")
    );

    let out = env.proxyctl(&["rollback", "1"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.starts_with(
            "rolled back: version 2 → 3 (restores version 1; 1 site modified: app.example)"
        ),
        "{text}"
    );
    assert!(text.contains("differs from what now runs"), "{text}");
    assert!(
        get(env.http, "app.example", "/")
            .await
            .body
            .starts_with("upstream a")
    );

    let out = env.proxyctl(&["--json", "history"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["current_version"], 3);
    let sources: Vec<_> = json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["source"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sources, ["rollback to 1", "reload", "startup"]);
    assert_eq!(json["entries"][0]["uid"], 0, "the caller's uid is recorded");

    let out = env.proxyctl(&["rollback", "42"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(output_text(&out).contains("version 42 is not in the history"));

    // The next reload publishes the file again.
    let out = env.proxyctl(&["reload"]).await;
    assert!(
        output_text(&out).starts_with("reloaded: version 3 → 4"),
        "{}",
        output_text(&out)
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_reloads_from_several_processes_end_in_one_consistent_version() {
    let a = MockUpstream::start("a").await;
    let env = TestEnv::start(&site("app.example", &a.url())).await;
    let mut runs = Vec::new();
    for _ in 0..6 {
        runs.push(
            tokio::process::Command::new(proxy_tests::binary("proxyctl"))
                .args(["--json", "reload", "--force"])
                .env("PROXYCTL_SOCKET", &env.socket)
                .output(),
        );
    }
    let mut versions = Vec::new();
    for run in runs {
        let out = run.await.unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        versions.push((
            json["previous_version"].as_u64().unwrap(),
            json["version"].as_u64().unwrap(),
        ));
    }
    versions.sort_unstable();
    // Serialized: each reload went from the previous one's version to the next.
    assert_eq!(versions, (1..=6).map(|v| (v, v + 1)).collect::<Vec<_>>());
    let status = env.wait_for_applied(7).await;
    assert_eq!(status.control_plane.unwrap().version, 7);
    assert!(status.data_planes[0].in_sync);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_shutdown_go_to_the_data_plane_itself() {
    let a = MockUpstream::start("a").await;
    let env = TestEnv::start(&site("app.example", &a.url())).await;
    let out = env.proxyctl(&["status"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("proxyd test-proxyd") && text.contains("controld connected  ready"),
        "{text}"
    );
    let mut open = Conn::open(env.http).await;
    assert_eq!(open.get("app.example", "/").await.status, 200);
    let out = env.proxyctl(&["--json", "status"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["local_data_plane"]["open_connections"], 1, "{json}");
    drop(open);
    let out = env.proxyctl(&["--json", "health"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["healthy"].as_bool(), json["applied_version"].as_u64()),
        (Some(true), Some(1))
    );

    let out = env.proxyctl(&["shutdown", "--wait"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("draining: proxyd test-proxyd") && text.contains("stopped"),
        "{text}"
    );
    let out = env.proxyctl(&["health"]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "not running any more: {}",
        output_text(&out)
    );
    env.stop().await;
}
