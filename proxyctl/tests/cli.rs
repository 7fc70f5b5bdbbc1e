//! The real proxyctl binary against a fake controld on a temporary Unix socket: flags reach the
//! server, answers reach stdout, and every outcome maps to its exit code (DESIGN §8).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step should stop the test right there"
)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::v1::admin_server::{Admin, AdminServer};
use proto::v1::{
    DataPlaneOutcome, DataPlaneResult, ReloadOutcome, ReloadReply, ReloadRequest, StatusReply,
    StatusRequest,
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

/// What the fake answers to Reload.
#[derive(Clone)]
enum Answer {
    Reply(Box<ReloadReply>),
    Deny(&'static str),
    Stall,
}

/// Every Reload request the fake got, with its `grpc-timeout` header.
type Seen = Arc<Mutex<Vec<(ReloadRequest, Option<String>)>>>;

/// A controld stand-in that records every Reload request it gets.
struct Fake {
    reload: Answer,
    status: StatusReply,
    seen: Seen,
}

#[tonic::async_trait]
impl Admin for Fake {
    async fn reload(
        &self,
        request: Request<ReloadRequest>,
    ) -> Result<Response<ReloadReply>, Status> {
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.seen
            .lock()
            .unwrap()
            .push((*request.get_ref(), deadline));
        match &self.reload {
            Answer::Reply(reply) => Ok(Response::new(ReloadReply::clone(reply))),
            Answer::Deny(why) => Err(Status::permission_denied(*why)),
            Answer::Stall => std::future::pending().await,
        }
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(self.status.clone()))
    }
}

struct Env {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    seen: Seen,
}

impl Env {
    async fn start(reload: Answer, status: StatusReply) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("control.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let seen = Arc::default();
        let fake = Fake {
            reload,
            status,
            seen: Arc::clone(&seen),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AdminServer::new(fake))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
        Env {
            _dir: dir,
            socket,
            seen,
        }
    }

    async fn proxyctl(&self, args: &[&str]) -> Output {
        proxyctl(&self.socket, args).await
    }
}

/// Runs the binary with `PROXYCTL_SOCKET` pointing at `socket`.
async fn proxyctl(socket: &Path, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_proxyctl"));
    command.args(args).env("PROXYCTL_SOCKET", socket);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn applied(results: &[DataPlaneResult]) -> ReloadReply {
    ReloadReply {
        outcome: ReloadOutcome::Applied as i32,
        previous_version: 1,
        version: 2,
        data_planes: results
            .iter()
            .enumerate()
            .map(|(i, result)| DataPlaneOutcome {
                node_id: format!("node-{i}"),
                pid: 100 + u32::try_from(i).unwrap(),
                result: *result as i32,
                serving_version: if *result == DataPlaneResult::Acked {
                    2
                } else {
                    1
                },
                error: String::new(),
            })
            .collect(),
        duration_ms: 7,
        config_path: "/etc/proxyd/proxy.toml".into(),
        ..ReloadReply::default()
    }
}

#[tokio::test]
async fn applied_reload_prints_the_change_and_exits_0() {
    let env = Env::start(
        Answer::Reply(Box::new(applied(&[DataPlaneResult::Acked]))),
        StatusReply::default(),
    )
    .await;
    let out = env
        .proxyctl(&["reload", "--force", "--timeout", "3s"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "reloaded: version 1 → 2 (no content change) in 7 ms\n  node-0 (pid 100): applied version 2\n"
    );
    let seen = env.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].0,
        ReloadRequest {
            dry_run: false,
            force: true
        }
    );
    assert!(seen[0].1.is_some(), "the deadline travels to controld");
}

#[tokio::test]
async fn a_data_plane_that_did_not_apply_fails_the_reload() {
    let reply = applied(&[DataPlaneResult::Acked, DataPlaneResult::TimedOut]);
    let env = Env::start(Answer::Reply(Box::new(reply)), StatusReply::default()).await;
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("  node-1 (pid 101): timed out; serving version 1\n"));
}

#[tokio::test]
async fn json_and_the_socket_flag_work_after_the_subcommand() {
    let env = Env::start(
        Answer::Reply(Box::new(applied(&[]))),
        StatusReply::default(),
    )
    .await;
    let socket = env.socket.to_str().unwrap();
    let out = proxyctl(
        Path::new("/nonexistent"),
        &["reload", "--dry-run", "--json", "--socket", socket],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["outcome"], "applied");
    assert_eq!(value["version"], 2);
    assert_eq!(value["data_planes"], serde_json::json!([]));
    assert!(env.seen.lock().unwrap()[0].0.dry_run);
}

#[tokio::test]
async fn status_is_degraded_without_data_planes() {
    let env = Env::start(Answer::Deny("unused"), StatusReply::default()).await;
    let out = env.proxyctl(&["status"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).ends_with("last reload  none since start\nno data plane connected\n"));
}

#[tokio::test]
async fn a_refused_call_is_unreachable_with_one_line() {
    let env = Env::start(
        Answer::Deny("uid 1000 may not reload"),
        StatusReply::default(),
    )
    .await;
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(69));
    let err = stderr(&out);
    assert!(
        err.starts_with("proxyctl: reload failed: controld at "),
        "{err}"
    );
    assert!(err.contains("uid 1000 may not reload"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn a_silent_controld_hits_the_deadline() {
    let env = Env::start(Answer::Stall, StatusReply::default()).await;
    let started = std::time::Instant::now();
    let out = env.proxyctl(&["--timeout", "300ms", "reload"]).await;
    assert_eq!(out.status.code(), Some(69));
    assert!(
        stderr(&out).contains("no answer from controld"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_missing_daemon_is_3_for_status_and_69_for_reload() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let status = proxyctl(&socket, &["status"]).await;
    assert_eq!(status.status.code(), Some(3));
    assert!(stderr(&status).ends_with("No such file or directory (is controld running?)\n"));
    let reload = proxyctl(&socket, &["--json", "reload"]).await;
    assert_eq!(reload.status.code(), Some(69));
    assert!(reload.stdout.is_empty(), "errors never go to stdout");
}

#[tokio::test]
async fn usage_errors_exit_2() {
    let out = proxyctl(Path::new("/nonexistent"), &["reload", "--bogus"]).await;
    assert_eq!(out.status.code(), Some(2));
}
