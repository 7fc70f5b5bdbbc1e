//! sd_notify as systemd sees it: the daemons' messages on a test NOTIFY_SOCKET.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use proxy_tests::{DEADLINE, MockUpstream, Process, TestEnv};
use tokio::net::UnixDatagram;

fn site(upstream: &str) -> String {
    format!("[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{upstream}\"]\n")
}

/// The next datagram on `socket`, as text.
async fn next(socket: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, socket.recv(&mut buf))
        .await
        .expect("a notification")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn controld_and_proxyd_tell_systemd_when_they_are_ready_reloading_and_stopping() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::paths_only();
    env.write_config(&site(&app.url()));
    let notify_path = env.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let config = env.config_path.to_str().unwrap().to_owned();

    let mut controld = Process::start_with_env(
        "controld",
        &["--config", &config],
        &[("NOTIFY_SOCKET", &notify_path)],
    );
    let ready = next(&notify).await;
    assert!(
        ready.contains("READY=1") && ready.contains("STATUS=serving config version 1"),
        "{ready}"
    );

    controld.signal("HUP").await;
    let reloading = next(&notify).await;
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    let reloaded = next(&notify).await;
    assert!(
        reloaded.contains("READY=1") && reloaded.contains("STATUS=serving config version 1"),
        "{reloaded}"
    );

    // A rejected reload is still followed by READY=1, with the failure as STATUS.
    std::fs::write(&env.config_path, "not = [valid").unwrap();
    controld.signal("HUP").await;
    assert!(next(&notify).await.contains("RELOADING=1"));
    let rejected = next(&notify).await;
    assert!(
        rejected.contains("READY=1")
            && rejected.contains("STATUS=reload rejected; serving config version 1"),
        "{rejected}"
    );
    env.write_config(&site(&app.url()));

    let socket = env.socket.to_str().unwrap().to_owned();
    let mut proxyd = Process::start_with_env(
        "proxyd",
        &["--control-socket", &socket, "--admin-socket", ""],
        &[("NOTIFY_SOCKET", &notify_path)],
    );
    let ready = next(&notify).await;
    assert!(
        ready.contains("READY=1") && ready.contains("STATUS=serving config version 1"),
        "{ready}"
    );

    proxyd.signal("TERM").await;
    assert!(next(&notify).await.contains("STOPPING=1"));
    assert_eq!(proxyd.exit_code().await, Some(0));
    controld.signal("TERM").await;
    assert!(next(&notify).await.contains("STOPPING=1"));
    assert_eq!(controld.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxyd_that_takes_over_tells_systemd_it_is_the_main_process_now() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::paths_only();
    env.write_config(&site(&app.url()));
    let notify_path = env.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let config = env.config_path.to_str().unwrap().to_owned();
    let socket = env.socket.to_str().unwrap().to_owned();
    let admin = env.proxyd_socket();
    let _controld = Process::start("controld", &["--config", &config]);
    let mut old = Process::start_with_env(
        "proxyd",
        &[
            "--control-socket",
            &socket,
            "--admin-socket",
            admin.to_str().unwrap(),
        ],
        &[("NOTIFY_SOCKET", &notify_path)],
    );
    assert!(next(&notify).await.contains("READY=1"));

    // proxyctl runs without NOTIFY_SOCKET (as it may under ExecReload): the new proxyd gets
    // the old one's environment.
    let out = env
        .proxyctl(&[
            "--json",
            "--data-plane-socket",
            admin.to_str().unwrap(),
            "upgrade",
        ])
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        proxy_tests::output_text(&out)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new_pid = answer["new_pid"].as_u64().unwrap();
    let mut seen = Vec::new();
    let main_pid = loop {
        let message = next(&notify).await;
        if message.contains("MAINPID=") {
            break message;
        }
        seen.push(message);
    };
    assert!(
        main_pid.contains(&format!("MAINPID={new_pid}")) && main_pid.contains("READY=1"),
        "{main_pid} (after {seen:?})"
    );
    // The old process drains and says so, and exits 0.
    assert_eq!(old.exit_code().await, Some(0));
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &new_pid.to_string()])
        .status();
}
