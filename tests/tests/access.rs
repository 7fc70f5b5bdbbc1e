//! Access control on the control socket: peer credentials decide who may change things, and
//! every changing call is audited.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::os::unix::fs::{MetadataExt, PermissionsExt};

use proxy_tests::{MockUpstream, TestEnv, binary, output_text};

/// Runs proxyctl as uid/gid 65534 (nobody) through setpriv.
async fn proxyctl_as_nobody(env: &TestEnv, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(binary("proxyctl"))
        .arg("--socket")
        .arg(&env.socket)
        .args(args)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_trusted_users_may_reload_while_anyone_who_connects_may_read() {
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    let has_setpriv = std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_ok();
    if !is_root || !has_setpriv {
        eprintln!("skipped: needs root and setpriv to run a client as another user");
        return;
    }
    let app = MockUpstream::start("app").await;
    let env = TestEnv::start(&format!(
        "[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{}\"]\n",
        app.url()
    ))
    .await;
    assert_eq!(
        std::fs::metadata(&env.socket).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let out = proxyctl_as_nobody(&env, &["status"]).await;
    assert_ne!(
        out.status.code(),
        Some(0),
        "0660 keeps other users out: {}",
        output_text(&out)
    );

    // Widen the file modes: now only the peer-credential check stands in the way.
    std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&env.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = proxyctl_as_nobody(&env, &["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let out = proxyctl_as_nobody(&env, &["reload", "--dry-run", "--force"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "a dry run changes nothing: {}",
        output_text(&out)
    );

    let out = proxyctl_as_nobody(&env, &["reload", "--force"]).await;
    let text = output_text(&out);
    assert_ne!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("Reload is not allowed for uid 65534"),
        "{text}"
    );
    assert_eq!(
        env.status().await.control_plane.unwrap().version,
        1,
        "nothing was published"
    );

    let out = env.proxyctl(&["reload", "--force"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "root may: {}",
        output_text(&out)
    );
    env.stop().await;
}
