//! The daemons as real processes: exit codes, signals, and the control socket's life cycle.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::path::Path;
use std::time::Duration;

use proxy_tests::{
    DEADLINE, MockUpstream, Process, TestEnv, binary, eventually, get, listener_address,
    output_text,
};

fn site(upstream: &str) -> String {
    format!("[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{upstream}\"]\n")
}

async fn controld_check(config: &Path) -> std::process::Output {
    tokio::process::Command::new(binary("controld"))
        .args(["check", "--config"])
        .arg(config)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn controld_check_and_a_bad_start_use_the_documented_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[[proxy.listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = controld_check(&good).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[proxy.listeners]]\nnme = \"http\"\naddress = \"nowhere\"\n",
    )
    .unwrap();
    let out = controld_check(&bad).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "bad.toml:2:1: proxy.listeners[0].nme: unknown key `nme`; did you mean `name`?"
        ),
        "{text}"
    );
    assert!(
        text.contains("bad.toml:3:11: proxy.listeners[0].address: invalid address \"nowhere\""),
        "{text}"
    );

    let mut start = Process::start("controld", &["--config", bad.to_str().unwrap()]);
    assert_eq!(start.exit_code().await, Some(78));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_sigterm_stops_controld_and_proxyd_serves_on() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    // TestEnv gives the paths and the config text; the daemons run as processes here.
    let env = TestEnv::paths_only();
    env.write_config(&site(&a.url()));
    let config = env.config_path.to_str().unwrap().to_owned();
    let socket = env.socket.to_str().unwrap().to_owned();
    let mut controld = Process::start("controld", &["--config", &config]);
    let mut proxyd = Process::start(
        "proxyd",
        &[
            "--control-socket",
            &socket,
            "--node-id",
            "edge-1",
            "--admin-socket",
            "",
        ],
    );
    let status = env.wait_for_applied(1).await;
    let http = listener_address(&status, "http");
    assert!(
        get(http, "app.example", "/")
            .await
            .body
            .starts_with("upstream a")
    );

    env.write_config(&site(&b.url()));
    controld.signal("HUP").await;
    env.wait_for_applied(2).await;
    assert!(
        get(http, "app.example", "/")
            .await
            .body
            .starts_with("upstream b")
    );

    controld.signal("TERM").await;
    assert_eq!(controld.exit_code().await, Some(0));
    assert!(
        !env.socket.exists(),
        "a clean stop removes the control socket"
    );
    // The data plane does not depend on the control plane being alive.
    for _ in 0..20 {
        assert_eq!(get(http, "app.example", "/").await.status, 200);
    }

    proxyd.signal("TERM").await;
    assert_eq!(proxyd.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_socket_is_never_stolen_and_a_stale_one_is_replaced() {
    let env = TestEnv::paths_only();
    env.write_config(&site("http://127.0.0.1:1"));
    let config = env.config_path.to_str().unwrap().to_owned();
    let mut first = Process::start("controld", &["--config", &config]);
    env.wait_for_socket().await;

    let mut second = Process::start("controld", &["--config", &config]);
    assert_eq!(
        second.exit_code().await,
        Some(1),
        "a second controld must not take the socket over"
    );
    assert_eq!(
        env.status().await.control_plane.unwrap().pid,
        first.pid(),
        "the first one still answers"
    );

    first.signal("KILL").await;
    first.exit_code().await;
    assert!(env.socket.exists(), "kill -9 leaves a stale socket behind");
    let mut third = Process::start("controld", &["--config", &config]);
    let pid = third.pid();
    eventually(
        "the new controld to answer on the replaced socket",
        || async {
            let channel = proto::uds::connect(&env.socket, proxy_tests::DEADLINE)
                .await
                .ok()?;
            let reply = proto::v1::admin_client::AdminClient::new(channel)
                .status(proto::v1::StatusRequest {})
                .await
                .ok()?;
            (reply.into_inner().control_plane?.pid == pid).then_some(())
        },
    )
    .await;
    third.signal("TERM").await;
    assert_eq!(third.exit_code().await, Some(0));
}

/// Issue 20 §4: the audit line of a changing call is written by the task that does the work,
/// so a caller that hangs up before the answer (a short `--timeout`) cannot erase it.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_whose_caller_hung_up_is_still_audited() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let env = TestEnv::paths_only();
    env.write_config(&site(&a.url()));
    let config = env.config_path.to_str().unwrap().to_owned();
    let mut controld = Process::start_logged("controld", &["--config", &config]);
    eventually("controld's socket", || async {
        proto::uds::connect(&env.socket, DEADLINE).await.ok()
    })
    .await;
    // A data plane that never answers: the reload waits for it (10 s).
    let _silent = proxy_tests::grpc_raw::Subscriber::hello(&env, "silent").await;
    env.write_config(&site(&b.url()));
    let started = std::time::Instant::now();
    let out = env.proxyctl(&["--timeout", "1s", "reload"]).await;
    assert_eq!(out.status.code(), Some(69), "{}", output_text(&out));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the caller gave up"
    );
    let line = controld
        .wait_for_log(&["audit", "Reload", "version 1 → 2"])
        .await;
    assert!(line.contains("\"uid\""), "{line}");
    controld.signal("TERM").await;
    assert_eq!(controld.exit_code().await, Some(0));
}
