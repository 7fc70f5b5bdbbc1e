//! The daemons' life cycle as real processes: graceful drain on SIGTERM, the data plane
//! outliving the control plane, and booting from a saved snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use proxy_tests::{
    Conn, MockUpstream, Process, TestEnv, eventually, get, listener_address, output_text,
    wait_until_refused,
};

fn site(upstream: &str) -> String {
    format!("[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{upstream}\"]\n")
}

/// controld and proxyd as processes on `env`'s config; proxyd saves snapshots in `state`.
async fn start(env: &TestEnv, state: &str) -> (Process, Process, SocketAddr) {
    let config = env.config_path.to_str().unwrap().to_owned();
    let socket = env.socket.to_str().unwrap().to_owned();
    let controld = Process::start("controld", &["--config", &config]);
    let proxyd = Process::start_logged(
        "proxyd",
        &[
            "--control-socket",
            &socket,
            "--state-dir",
            state,
            "--admin-socket",
            &admin_socket(env),
        ],
    );
    let status = env.wait_for_applied(1).await;
    (controld, proxyd, listener_address(&status, "http"))
}

/// proxyd started again on its saved snapshot in `state`, with controld down; its http listener.
async fn boot_from_saved(env: &TestEnv, state: &str) -> (Process, SocketAddr) {
    let socket = env.socket.to_str().unwrap().to_owned();
    let mut proxyd = Process::start_logged(
        "proxyd",
        &[
            "--control-socket",
            &socket,
            "--state-dir",
            state,
            "--admin-socket",
            &admin_socket(env),
        ],
    );
    let line = proxyd.wait_for_log(&["listening", "\"http\""]).await;
    let http = listening_address(&line);
    proxyd.wait_for_log(&["serving the saved snapshot"]).await;
    (proxyd, http)
}

/// proxyd's own admin socket in `env`'s directory.
fn admin_socket(env: &TestEnv) -> String {
    env.dir
        .path()
        .join("proxyd.sock")
        .to_str()
        .unwrap()
        .to_owned()
}

/// The address in a `listening` log line of listener `http`.
fn listening_address(line: &str) -> SocketAddr {
    let json: serde_json::Value = serde_json::from_str(line).unwrap();
    json["fields"]["address"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_in_flight_requests_finish_and_refuses_new_connections() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::paths_only();
    env.write_config(&site(&app.url())); // shutdown_timeout = "2s"
    let state = env.dir.path().join("proxyd-state");
    let (_controld, mut proxyd, http) = start(&env, state.to_str().unwrap()).await;

    let slow: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(http, "app.example", "/sleep/800").await }))
        .collect();
    eventually("the slow requests to reach the upstream", || async {
        (app.hits() == 3).then_some(())
    })
    .await;
    proxyd.signal("TERM").await;
    wait_until_refused(http).await;
    for request in slow {
        let answer = request.await.unwrap();
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    assert_eq!(proxyd.exit_code().await, Some(0));
}

/// Starts both daemons with a request stuck at the upstream, sends proxyd `signal`, and
/// returns how long proxyd took to exit (with code 0) and what the stuck client received.
async fn stop_with_a_stuck_request(signal: &str) -> (Duration, String) {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::paths_only();
    env.write_config(&site(&app.url())); // shutdown_timeout = "2s"
    let state = env.dir.path().join("proxyd-state");
    let (_controld, mut proxyd, http) = start(&env, state.to_str().unwrap()).await;

    let stuck = tokio::spawn(proxy_tests::raw_exchange(
        http,
        b"GET /sleep/60000 HTTP/1.1\r\nHost: app.example\r\n\r\n",
    ));
    eventually("the stuck request to reach the upstream", || async {
        (app.hits() == 1).then_some(())
    })
    .await;
    let started = Instant::now();
    proxyd.signal(signal).await;
    assert_eq!(proxyd.exit_code().await, Some(0));
    let took = started.elapsed();
    let answer = tokio::time::timeout(Duration::from_secs(5), stuck)
        .await
        .expect("the client is cut")
        .unwrap();
    (took, answer)
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_longer_than_the_drain_deadline_are_cut_and_proxyd_exits() {
    let (took, answer) = stop_with_a_stuck_request("TERM").await;
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "drain took {took:?}"
    );
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_controld_under_load_fails_no_request_and_proxyd_resyncs() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::paths_only();
    env.write_config(&site(&app.url()));
    let state = env.dir.path().join("proxyd-state");
    let (mut controld, _proxyd, http) = start(&env, state.to_str().unwrap()).await;

    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = tokio::spawn({
        let (stop, done, failed) = (stop.clone(), done.clone(), failed.clone());
        async move {
            // One keep-alive connection throughout: a re-sync must not close it.
            let mut conn = Conn::open(http).await;
            while !stop.load(Ordering::SeqCst) {
                if conn.get("app.example", "/").await.status != 200 {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    eventually("load to flow", || async {
        (done.load(Ordering::SeqCst) > 20).then_some(())
    })
    .await;
    controld.signal("KILL").await;
    controld.exit_code().await;
    let at_kill = done.load(Ordering::SeqCst);
    eventually("load to go on without controld", || async {
        (done.load(Ordering::SeqCst) > at_kill + 50).then_some(())
    })
    .await;

    let config = env.config_path.to_str().unwrap().to_owned();
    let _controld = Process::start("controld", &["--config", &config]);
    // Same file, same content: controld keeps version 1 and proxyd re-syncs to it.
    let status = env.wait_for_applied(1).await;
    assert!(status.data_planes[0].in_sync);
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "{} requests, some failed",
        done.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn proxyd_restarted_while_controld_is_down_serves_its_saved_snapshot() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::paths_only();
    env.write_config(&site(&app.url()));
    let state = env.dir.path().join("proxyd-state");
    let state = state.to_str().unwrap();
    let (mut controld, mut proxyd, http) = start(&env, state).await;
    assert_eq!(get(http, "app.example", "/").await.status, 200);

    controld.signal("KILL").await;
    controld.exit_code().await;
    proxyd.signal("TERM").await;
    assert_eq!(proxyd.exit_code().await, Some(0));

    let (mut proxyd, http) = boot_from_saved(&env, state).await;
    let answer = get(http, "app.example", "/").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(answer.body.starts_with("upstream app"));
    // proxyd's own admin socket answers while controld is down, and says what it serves.
    let local = local_status(&env).await;
    assert_eq!(
        (
            local.applied_version,
            local.from_saved_snapshot,
            local.control_plane_connected,
            local.ready
        ),
        (1, true, false, true)
    );
    let out = env.proxyctl(&["status"]).await;
    let text = output_text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "controld down is degraded: {text}"
    );
    assert!(
        text.contains("controld   not running") && text.contains("serving a saved snapshot"),
        "{text}"
    );
    let out = env.proxyctl(&["health"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "it serves: {}",
        output_text(&out)
    );

    // controld comes back with a new version: it replaces the saved one.
    let other = MockUpstream::start("other").await;
    env.write_config(&site(&other.url()));
    let config = env.config_path.to_str().unwrap().to_owned();
    let _controld = Process::start("controld", &["--config", &config]);
    env.wait_for_applied(2).await;
    assert!(
        get(http, "app.example", "/")
            .await
            .body
            .starts_with("upstream other")
    );
    let local = local_status(&env).await;
    assert_eq!(
        (
            local.applied_version,
            local.from_saved_snapshot,
            local.control_plane_connected
        ),
        (2, false, true)
    );

    // Drain through the admin socket: proxyd stops like on SIGTERM.
    let channel = proto::uds::connect(Path::new(&admin_socket(&env)), proxy_tests::DEADLINE)
        .await
        .unwrap();
    let reply = proto::v1::data_plane_client::DataPlaneClient::new(channel)
        .drain(proto::v1::DrainRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.deadline_ms, 2000);
    assert_eq!(proxyd.exit_code().await, Some(0));
    assert!(
        !Path::new(&admin_socket(&env)).exists(),
        "the admin socket is removed on exit"
    );
}

/// proxyd's answer on its own admin socket.
async fn local_status(env: &TestEnv) -> proto::v1::DataPlaneStatusReply {
    let channel = proto::uds::connect(Path::new(&admin_socket(env)), proxy_tests::DEADLINE)
        .await
        .unwrap();
    proto::v1::data_plane_client::DataPlaneClient::new(channel)
        .status(proto::v1::DataPlaneStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_stops_fast_without_waiting_for_the_drain() {
    let (took, answer) = stop_with_a_stuck_request("INT").await;
    assert!(
        took < Duration::from_millis(1500),
        "a fast stop does not wait for the 2 s drain: {took:?}"
    );
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_controld_that_lost_its_state_is_met_by_content_not_by_version_number() {
    // Issue 20 §3: proxyd serves version 1 (upstream a) and saves it; controld loses its state
    // directory and starts again, its version 1 now upstream b. Before, proxyd applied b but
    // did not save it (same number), status said "in sync" whatever it served, and the next
    // cold boot served a again.
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let env = TestEnv::paths_only();
    env.write_config(&site(&a.url()));
    let state = env.dir.path().join("proxyd-state");
    let state = state.to_str().unwrap();
    let (mut controld, mut proxyd, http) = start(&env, state).await;
    assert!(
        get(http, "app.example", "/")
            .await
            .body
            .starts_with("upstream a")
    );

    controld.signal("TERM").await;
    controld.exit_code().await;
    std::fs::remove_dir_all(env.dir.path().join("state")).unwrap();
    env.write_config(&site(&b.url()));
    let config = env.config_path.to_str().unwrap().to_owned();
    let mut controld = Process::start("controld", &["--config", &config]);
    env.wait_for_socket().await;
    let status = eventually("proxyd to serve controld's version 1 content", || async {
        let status = env.status().await;
        let in_sync = status.data_planes.first().is_some_and(|p| p.in_sync);
        (in_sync
            && get(http, "app.example", "/")
                .await
                .body
                .starts_with("upstream b"))
        .then_some(status)
    })
    .await;
    let control = status.control_plane.unwrap();
    assert_eq!(control.version, 1);
    assert_eq!(
        status.data_planes[0].applied_content_hash,
        control.content_hash
    );

    // What it saved is what it serves: a cold boot without controld serves b.
    controld.signal("TERM").await;
    controld.exit_code().await;
    proxyd.signal("TERM").await;
    assert_eq!(proxyd.exit_code().await, Some(0));
    let (_proxyd, http) = boot_from_saved(&env, state).await;
    let answer = get(http, "app.example", "/").await;
    assert!(answer.body.starts_with("upstream b"), "{answer:?}");
}
