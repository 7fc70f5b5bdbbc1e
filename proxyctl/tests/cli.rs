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
    ConfigDiff, DataPlaneOutcome, DataPlaneResult, HistoryEntry, HistoryReply, HistoryRequest,
    ReloadOutcome, ReloadReply, ReloadRequest, RollbackRequest, StatusReply, StatusRequest,
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

/// A controld stand-in that records every Reload request it gets. History and Rollback give
/// fixed answers: versions 1 and 2 (serving) exist, so only version 1 can be restored.
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

    async fn history(&self, _: Request<HistoryRequest>) -> Result<Response<HistoryReply>, Status> {
        Ok(Response::new(history()))
    }

    async fn rollback(
        &self,
        request: Request<RollbackRequest>,
    ) -> Result<Response<ReloadReply>, Status> {
        match request.get_ref().version {
            None | Some(1) => Ok(Response::new(rolled_back())),
            Some(version) => Err(Status::not_found(format!(
                "version {version} is not in the history"
            ))),
        }
    }
}

/// Version 2 (a reload by uid 1000, serving) and version 1 (startup).
fn history() -> HistoryReply {
    HistoryReply {
        entries: vec![
            HistoryEntry {
                version: 2,
                content_hash: "bb".into(),
                // 2026-11-21 19:40:01 UTC
                at_unix_ms: 1_795_290_001_000,
                source: "reload".into(),
                uid: Some(1000),
                pid: Some(4242),
                summary: "1 site added: a.example".into(),
            },
            HistoryEntry {
                version: 1,
                content_hash: "aa".into(),
                at_unix_ms: 1_795_289_400_000,
                source: "startup".into(),
                uid: None,
                pid: None,
                summary: "no content change".into(),
            },
        ],
        current_version: 2,
    }
}

/// Version 2 → 3 with version 1's content, applied by one data plane.
fn rolled_back() -> ReloadReply {
    ReloadReply {
        previous_version: 2,
        version: 3,
        diff: Some(ConfigDiff {
            sites_removed: vec!["a.example".into()],
            ..ConfigDiff::default()
        }),
        warnings: vec!["/etc/proxyd/proxy.toml differs from what now runs".into()],
        data_planes: vec![DataPlaneOutcome {
            node_id: "node-0".into(),
            pid: 100,
            result: DataPlaneResult::Acked as i32,
            serving_version: 3,
            error: String::new(),
        }],
        duration_ms: 5,
        ..applied(&[])
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
async fn a_refused_call_fails_with_one_line() {
    let env = Env::start(
        Answer::Deny("uid 1000 may not reload"),
        StatusReply::default(),
    )
    .await;
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "refused is failed, not unreachable"
    );
    assert_eq!(stderr(&out), "proxyctl: reload: uid 1000 may not reload\n");
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn history_lists_versions_newest_first() {
    let env = Env::start(Answer::Deny("unused"), StatusReply::default()).await;
    let out = env.proxyctl(&["history"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "VERSION  PUBLISHED                SOURCE   BY        SUMMARY\n\
         2*       2026-11-21 19:40:01 UTC  reload   uid 1000  1 site added: a.example\n\
         1        2026-11-21 19:30:00 UTC  startup  -         no content change\n"
    );
    let json = env.proxyctl(&["history", "--json"]).await;
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["current_version"], 2);
    assert_eq!(value["entries"][0]["uid"], 1000);
    assert_eq!(value["entries"][1]["pid"], serde_json::Value::Null);
}

#[tokio::test]
async fn rollback_restores_a_version_and_an_unknown_one_fails() {
    let env = Env::start(Answer::Deny("unused"), StatusReply::default()).await;
    let out = env.proxyctl(&["rollback", "1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "rolled back: version 2 → 3 (restores version 1; 1 site removed: a.example) in 5 ms\n\
         \x20 node-0 (pid 100): applied version 3\n\
         warning: /etc/proxyd/proxy.toml differs from what now runs\n"
    );

    let default = env.proxyctl(&["rollback", "--json"]).await;
    assert_eq!(default.status.code(), Some(0), "{}", stderr(&default));
    let value: serde_json::Value = serde_json::from_slice(&default.stdout).unwrap();
    assert_eq!(value["outcome"], "applied");
    assert_eq!(value["previous_version"], 2);
    assert_eq!(value["version"], 3);
    assert_eq!(
        value["warnings"],
        serde_json::json!(["/etc/proxyd/proxy.toml differs from what now runs"])
    );

    let unknown = env.proxyctl(&["rollback", "9"]).await;
    assert_eq!(
        unknown.status.code(),
        Some(1),
        "NOT_FOUND is a failed operation"
    );
    assert_eq!(
        stderr(&unknown),
        "proxyctl: rollback: version 9 is not in the history\n"
    );
    assert!(unknown.stdout.is_empty());
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

#[tokio::test]
async fn completions_and_help_need_no_daemon() {
    let nowhere = Path::new("/nonexistent/control.sock");
    let out = proxyctl(nowhere, &["completions", "bash"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("_proxyctl()"), "{}", stdout(&out));
    let out = proxyctl(nowhere, &["--help"]).await;
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    assert!(
        help.contains("Exit codes:") && help.contains("69  controld unreachable"),
        "{help}"
    );
    assert!(help.contains("rollback"), "{help}");
}
