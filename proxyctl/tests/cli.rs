//! The real proxyctl binary against a fake controld and a fake proxyd (its DataPlane service) on
//! temporary Unix sockets: flags reach the servers, answers reach stdout, and every outcome maps
//! to its exit code (DESIGN §8).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed setup step should stop the test right there"
)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::v1::admin_server::{Admin, AdminServer};
use proto::v1::data_plane_server::{DataPlane, DataPlaneServer};
use proto::v1::{
    BoundListener, CertificateStatus, CertificatesReply, CertificatesRequest, ConfigDiff,
    ControlPlaneStatus, DataPlaneOutcome, DataPlaneResult, DataPlaneStatus, DataPlaneStatusReply,
    DataPlaneStatusRequest, Diagnostic, DrainReply, DrainRequest, GetConfigReply, GetConfigRequest,
    HistoryEntry, HistoryReply, HistoryRequest, ReloadOutcome, ReloadReply, ReloadRequest,
    RollbackRequest, ShutdownReply, ShutdownRequest, Snapshot, StatusReply, StatusRequest,
    UpstreamStatus, ValidateReply, ValidateRequest,
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

/// Every Validate request the fake got.
type Validated = Arc<Mutex<Vec<ValidateRequest>>>;

/// The version the fake's Reload, Validate and GetConfig take as serving.
const SERVING: u64 = 4;

/// A controld stand-in that records every Reload and Validate request it gets. History and
/// Rollback give fixed answers: versions 1 and 2 (serving) exist, so only version 1 can be
/// restored. Reload with an `if_version` other than [`SERVING`] is refused the way controld
/// refuses it; Validate finds a text with `not-a-url` in it invalid, any other valid
/// ([`validated`]); GetConfig answers [`running_config`].
struct Fake {
    reload: Answer,
    status: StatusReply,
    /// Certificates answers this; empty (no site has TLS) unless a test says otherwise.
    certificates: CertificatesReply,
    seen: Seen,
    validated: Validated,
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
            .push((request.get_ref().clone(), deadline));
        if let Some(expected) = request.get_ref().if_version
            && expected != SERVING
        {
            return Err(Status::failed_precondition(format!(
                "version is now {SERVING}: another writer published first; nothing was reloaded"
            )));
        }
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

    async fn validate(
        &self,
        request: Request<ValidateRequest>,
    ) -> Result<Response<ValidateReply>, Status> {
        let request = request.into_inner();
        self.validated.lock().unwrap().push(request.clone());
        if request.config_text.contains("not-a-url") {
            return Ok(Response::new(rejected_candidate(&request.file_name)));
        }
        Ok(Response::new(validated()))
    }

    async fn get_config(
        &self,
        _: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigReply>, Status> {
        Ok(Response::new(running_config()))
    }

    async fn shutdown(
        &self,
        _: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownReply>, Status> {
        Ok(Response::new(ShutdownReply { version: SERVING }))
    }

    async fn certificates(
        &self,
        _: Request<CertificatesRequest>,
    ) -> Result<Response<CertificatesReply>, Status> {
        Ok(Response::new(self.certificates.clone()))
    }
}

/// Two certificates: `a.example` from files with 200 days left, `b.example` through ACME with 5
/// days left and a failing renewal.
fn certificates() -> CertificatesReply {
    const NOW: u64 = 1_900_000_000;
    const DAY: u64 = 86_400;
    CertificatesReply {
        now_unix: NOW,
        certificates: vec![
            CertificateStatus {
                site: "a.example".into(),
                hostnames: vec!["a.example".into()],
                source: "files".into(),
                names: vec!["a.example".into()],
                not_after_unix: NOW + 200 * DAY,
                serial: "01".into(),
                ..Default::default()
            },
            CertificateStatus {
                site: "b.example".into(),
                hostnames: vec!["b.example".into(), "www.b.example".into()],
                source: "acme".into(),
                names: vec!["b.example".into(), "www.b.example".into()],
                not_after_unix: NOW + 5 * DAY + 3600,
                next_renewal_unix: NOW + 600,
                last_error: "connection refused".into(),
                last_error_unix: NOW - 60,
                failures: 3,
                state: "waiting".into(),
                serial: "0abc".into(),
            },
        ],
    }
}

/// A valid candidate: version 4 would become 5 by adding `b.example`, and one static field
/// would change.
fn validated() -> ValidateReply {
    ValidateReply {
        valid: true,
        diagnostics: Vec::new(),
        diff: Some(ConfigDiff {
            sites_added: vec!["b.example".into()],
            ..ConfigDiff::default()
        }),
        warnings: vec![
            "control.allowed_uids changed from none to 1000: needs a restart of controld".into(),
        ],
        current_version: SERVING,
        next_version: SERVING + 1,
        text_hash: "ab12".into(),
    }
}

/// An invalid candidate: one problem, in the file the request named.
fn rejected_candidate(file_name: &str) -> ValidateReply {
    ValidateReply {
        valid: false,
        diagnostics: vec![Diagnostic {
            key_path: "sites[0].upstreams[0]".into(),
            file: file_name.into(),
            line: 3,
            column: 13,
            message: "invalid URL: relative URL without a base".into(),
        }],
        diff: Some(ConfigDiff::default()),
        warnings: Vec::new(),
        current_version: SERVING,
        next_version: SERVING,
        text_hash: "cd34".into(),
    }
}

/// Version 4's config as GetConfig returns it.
fn running_config() -> GetConfigReply {
    GetConfigReply {
        version: SERVING,
        content_hash: "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
        config_text: "[[sites]]\nhostnames = [\"a.example\"]\n".into(),
        snapshot: Some(Snapshot {
            version: SERVING,
            ..Snapshot::default()
        }),
        config_path: "/etc/proxyd/proxy.toml".into(),
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
                kind: "config".into(),
                diff: None,
                node: String::new(),
            },
            HistoryEntry {
                version: 1,
                content_hash: "aa".into(),
                at_unix_ms: 1_795_289_400_000,
                source: "startup".into(),
                uid: None,
                pid: None,
                summary: "no content change".into(),
                kind: "config".into(),
                diff: None,
                node: String::new(),
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

/// What the fake proxyd answers to Drain.
#[derive(Clone, Copy)]
enum Drain {
    /// Starts the drain with this deadline (ms) and keeps serving.
    Start(u64),
    /// Starts the drain, then stops serving 200 ms later, the way proxyd exits.
    StartThenExit(u64),
    Deny(&'static str),
}

/// A proxyd stand-in for its own DataPlane socket; counts the Drain calls.
struct FakeDataPlane {
    status: DataPlaneStatusReply,
    drain: Drain,
    drains: Arc<AtomicUsize>,
    exit: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

#[tonic::async_trait]
impl DataPlane for FakeDataPlane {
    async fn status(
        &self,
        _: Request<DataPlaneStatusRequest>,
    ) -> Result<Response<DataPlaneStatusReply>, Status> {
        Ok(Response::new(self.status.clone()))
    }

    async fn drain(&self, _: Request<DrainRequest>) -> Result<Response<DrainReply>, Status> {
        self.drains.fetch_add(1, Ordering::SeqCst);
        let deadline_ms = match self.drain {
            Drain::Deny(why) => return Err(Status::permission_denied(why)),
            Drain::Start(deadline_ms) => deadline_ms,
            Drain::StartThenExit(deadline_ms) => {
                if let Some(exit) = self.exit.lock().unwrap().take() {
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = exit.send(());
                    });
                }
                deadline_ms
            }
        };
        Ok(Response::new(DrainReply { deadline_ms }))
    }

    async fn handover(
        &self,
        _: Request<proto::v1::HandoverRequest>,
    ) -> Result<Response<proto::v1::HandoverReply>, Status> {
        Err(Status::unimplemented("the fake hands nothing over"))
    }
}

/// A temporary directory with room for both sockets; each fake is started on demand, so that a
/// test can leave either daemon "not running" (its socket file missing).
struct Env {
    dir: tempfile::TempDir,
    socket: PathBuf,
    data_plane_socket: PathBuf,
    seen: Seen,
    validated: Validated,
    drains: Arc<AtomicUsize>,
}

impl Env {
    /// controld only; no proxyd socket.
    async fn start(reload: Answer, status: StatusReply) -> Env {
        let env = Env::empty();
        env.serve_admin(reload, status, CertificatesReply::default());
        env
    }

    /// controld only, answering Certificates with `certificates`.
    async fn with_certificates(status: StatusReply, certificates: CertificatesReply) -> Env {
        let env = Env::empty();
        env.serve_admin(Answer::Deny("unused"), status, certificates);
        env
    }

    /// Neither daemon running.
    fn empty() -> Env {
        let dir = tempfile::tempdir().unwrap();
        Env {
            socket: dir.path().join("control.sock"),
            data_plane_socket: dir.path().join("admin.sock"),
            dir,
            seen: Arc::default(),
            validated: Arc::default(),
            drains: Arc::default(),
        }
    }

    fn serve_admin(&self, reload: Answer, status: StatusReply, certificates: CertificatesReply) {
        let listener = tokio::net::UnixListener::bind(&self.socket).unwrap();
        let fake = Fake {
            reload,
            status,
            certificates,
            seen: Arc::clone(&self.seen),
            validated: Arc::clone(&self.validated),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AdminServer::new(fake))
                .serve_with_incoming(UnixListenerStream::new(listener)),
        );
    }

    fn serve_data_plane(&self, status: DataPlaneStatusReply, drain: Drain) {
        let listener = tokio::net::UnixListener::bind(&self.data_plane_socket).unwrap();
        let (exit, exited) = tokio::sync::oneshot::channel::<()>();
        let fake = FakeDataPlane {
            status,
            drain,
            drains: Arc::clone(&self.drains),
            exit: Mutex::new(Some(exit)),
        };
        let socket = self.data_plane_socket.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(DataPlaneServer::new(fake))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = exited.await;
                })
                .await;
            // proxyd removes its socket when it exits.
            let _ = std::fs::remove_file(socket);
        });
    }

    async fn proxyctl(&self, args: &[&str]) -> Output {
        run(&self.socket, &self.data_plane_socket, args).await
    }
}

/// Runs the binary with `PROXYCTL_SOCKET` pointing at `socket` and no proxyd socket.
async fn proxyctl(socket: &Path, args: &[&str]) -> Output {
    run(socket, Path::new("/nonexistent/proxyd/admin.sock"), args).await
}

/// Runs the binary with both sockets set through the environment.
async fn run(socket: &Path, data_plane_socket: &Path, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_proxyctl"));
    command
        .args(args)
        .env("PROXYCTL_SOCKET", socket)
        .env("PROXYCTL_DATA_PLANE_SOCKET", data_plane_socket);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// controld at version 4 with `edge-1` connected and in sync.
fn fleet() -> StatusReply {
    StatusReply {
        control_plane: Some(ControlPlaneStatus {
            config_path: "/etc/proxyd/proxy.toml".into(),
            version: 4,
            content_hash: "ab12".into(),
            pid: 811,
            build_version: "0.1.0".into(),
            started_at_unix_ms: 1_795_290_000_000,
            last_reload: None,
            metrics_address: String::new(),
        }),
        data_planes: vec![DataPlaneStatus {
            node_id: "edge-1".into(),
            pid: 812,
            build_version: "0.1.0".into(),
            applied_version: 4,
            desired_version: 4,
            in_sync: true,
            listeners: vec![http_listener()],
            connected_at_unix_ms: 1_795_290_000_500,
            ..DataPlaneStatus::default()
        }],
        fleet: None,
    }
}

fn http_listener() -> BoundListener {
    BoundListener {
        name: "http".into(),
        address: "127.0.0.1:8080".into(),
    }
}

/// proxyd `edge-1` serving version 4, connected to controld and ready, with one upstream.
fn local() -> DataPlaneStatusReply {
    DataPlaneStatusReply {
        node_id: "edge-1".into(),
        pid: 812,
        build_version: "0.1.0".into(),
        applied_version: 4,
        content_hash: "ab12".into(),
        control_plane_connected: true,
        from_saved_snapshot: false,
        listeners: vec![http_listener()],
        upstreams: vec![UpstreamStatus {
            url: "http://10.0.0.5:8080".into(),
            healthy: true,
            outstanding: 2,
            last_tls_error: String::new(),
        }],
        ready: true,
        draining: false,
        started_at_unix_ms: 1_795_290_000_100,
        open_connections: 0,
    }
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
            force: true,
            if_version: None,
            if_text_hash: None,
            ..Default::default()
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
    let note = format!(
        "last reload  none since start\nno data plane connected\n\
         note: no data plane socket at {}\n",
        env.data_plane_socket.display()
    );
    assert!(stdout(&out).ends_with(&note), "{}", stdout(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

#[tokio::test]
async fn status_without_a_local_data_plane_is_todays_and_healthy() {
    let env = Env::start(Answer::Deny("unused"), fleet()).await;
    let out = env.proxyctl(&["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "controld   pid 811  v0.1.0  version 4  config /etc/proxyd/proxy.toml\n\
         last reload  none since start\n\
         DATA PLANE  PID  APPLIED  DESIRED  IN SYNC  LISTENERS\n\
         edge-1      812  4        4        yes      http=127.0.0.1:8080\n"
    );
    assert!(out.stderr.is_empty(), "a missing proxyd socket is no error");
}

#[tokio::test]
async fn status_with_both_adds_this_data_plane() {
    let env = Env::start(Answer::Deny("unused"), fleet()).await;
    env.serve_data_plane(local(), Drain::Start(30_000));
    let out = env.proxyctl(&["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "controld   pid 811  v0.1.0  version 4  config /etc/proxyd/proxy.toml\n\
         last reload  none since start\n\
         DATA PLANE  PID  APPLIED  DESIRED  IN SYNC  LISTENERS\n\
         edge-1      812  4        4        yes      http=127.0.0.1:8080\n\
         \n\
         proxyd edge-1  pid 812  version 4  controld connected  ready\n\
         listeners  http=127.0.0.1:8080  (0 open connections)\n\
         UPSTREAM              HEALTHY  OUTSTANDING\n\
         http://10.0.0.5:8080  yes      2\n"
    );

    let json = env.proxyctl(&["status", "--json"]).await;
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["control_plane"]["version"], 4);
    assert_eq!(value["data_planes"][0]["node_id"], "edge-1");
    assert_eq!(value["local_data_plane"]["node_id"], "edge-1");
    assert_eq!(value["local_data_plane"]["ready"], true);
    assert_eq!(
        value["local_data_plane"]["upstreams"],
        serde_json::json!([{"url": "http://10.0.0.5:8080", "healthy": true, "outstanding": 2}])
    );
}

#[tokio::test]
async fn status_is_degraded_when_the_local_data_plane_is_not_ready() {
    let env = Env::start(Answer::Deny("unused"), fleet()).await;
    let mut starting = local();
    starting.ready = false;
    env.serve_data_plane(starting, Drain::Start(30_000));
    let out = env.proxyctl(&["status"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("proxyd edge-1  pid 812  version 4  controld connected  NOT ready\n"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test]
async fn status_with_controld_down_shows_the_data_plane_and_is_degraded() {
    let env = Env::empty();
    let mut cut_off = local();
    cut_off.control_plane_connected = false;
    cut_off.from_saved_snapshot = true;
    env.serve_data_plane(cut_off, Drain::Start(30_000));
    let out = env.proxyctl(&["status"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "controld   not running (or unreachable at {})\n\
             \n\
             proxyd edge-1  pid 812  version 4  controld NOT connected  \
             serving a saved snapshot  ready\n\
             listeners  http=127.0.0.1:8080  (0 open connections)\n\
             UPSTREAM              HEALTHY  OUTSTANDING\n\
             http://10.0.0.5:8080  yes      2\n",
            env.socket.display()
        )
    );
    assert!(
        stderr(&out).contains("(is controld running?)"),
        "{}",
        stderr(&out)
    );

    let json = env.proxyctl(&["--json", "status"]).await;
    assert_eq!(json.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["control_plane"], serde_json::Value::Null);
    assert_eq!(value["data_planes"], serde_json::json!([]));
    assert_eq!(value["local_data_plane"]["control_plane_connected"], false);
    assert_eq!(value["local_data_plane"]["from_saved_snapshot"], true);
}

#[tokio::test]
async fn health_is_0_when_ready() {
    let env = Env::empty();
    env.serve_data_plane(local(), Drain::Start(30_000));
    let out = env.proxyctl(&["health"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "ok: serving version 4\n");
    let json = env.proxyctl(&["health", "--json"]).await;
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["healthy"], true);
    assert_eq!(value["applied_version"], 4);
    assert_eq!(value["control_plane_connected"], true);
}

#[tokio::test]
async fn health_is_1_when_not_ready_or_draining() {
    let env = Env::empty();
    let mut starting = local();
    starting.ready = false;
    starting.applied_version = 0;
    env.serve_data_plane(starting, Drain::Start(30_000));
    let out = env.proxyctl(&["health"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "not ready: no snapshot applied yet\n");
    let json = env.proxyctl(&["health", "--json"]).await;
    assert_eq!(json.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["healthy"], false);
    assert_eq!(value["reason"], "not ready: no snapshot applied yet");

    let draining_env = Env::empty();
    let mut draining = local();
    draining.draining = true;
    draining_env.serve_data_plane(draining, Drain::Start(30_000));
    let out = draining_env.proxyctl(&["health"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "draining: proxyd edge-1 is shutting down\n");
}

#[tokio::test]
async fn health_is_3_without_proxyd_even_with_controld() {
    let env = Env::start(Answer::Deny("unused"), fleet()).await;
    let out = env.proxyctl(&["health"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr(&out),
        format!(
            "proxyctl: cannot reach proxyd at {}: No such file or directory \
             (is proxyd running?)\n",
            env.data_plane_socket.display()
        )
    );
}

#[tokio::test]
async fn shutdown_starts_the_drain() {
    let env = Env::empty();
    env.serve_data_plane(local(), Drain::Start(30_000));
    let out = env.proxyctl(&["shutdown"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "draining: proxyd edge-1 stops accepting; in-flight requests have up to 30s to finish\n"
    );
    assert_eq!(env.drains.load(Ordering::SeqCst), 1);

    let json = env.proxyctl(&["shutdown", "--json"]).await;
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"node_id": "edge-1", "pid": 812, "deadline_ms": 30_000,
                           "stopped": null})
    );
}

#[tokio::test]
async fn shutdown_wait_returns_once_proxyd_has_exited() {
    let env = Env::empty();
    env.serve_data_plane(local(), Drain::StartThenExit(5_000));
    let out = env
        .proxyctl(&["shutdown", "--wait", "--timeout", "10s"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "draining: proxyd edge-1 stops accepting; in-flight requests have up to 5s to finish\n\
         stopped\n"
    );
    // Gone now: health and shutdown say "not running".
    assert_eq!(env.proxyctl(&["health"]).await.status.code(), Some(3));
    assert_eq!(env.proxyctl(&["shutdown"]).await.status.code(), Some(3));
}

#[tokio::test]
async fn shutdown_wait_fails_when_proxyd_outlives_the_timeout() {
    let env = Env::empty();
    env.serve_data_plane(local(), Drain::Start(30_000));
    let out = env
        .proxyctl(&["shutdown", "--wait", "--timeout", "300ms", "--json"])
        .await;
    assert_eq!(out.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["stopped"], false);
    assert!(
        stderr(&out).contains("still accepts connections after 300ms"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn shutdown_refused_is_1_and_missing_is_3() {
    let env = Env::empty();
    env.serve_data_plane(local(), Drain::Deny("uid 1000 may not drain proxyd"));
    let out = env.proxyctl(&["shutdown"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        "proxyctl: shutdown: uid 1000 may not drain proxyd\n"
    );
    assert!(out.stdout.is_empty());

    let nothing = Env::empty();
    let out = nothing.proxyctl(&["shutdown"]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).ends_with("(is proxyd running?)\n"),
        "{}",
        stderr(&out)
    );
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
    assert!(
        help.contains("health")
            && help.contains("shutdown")
            && help.contains("--data-plane-socket"),
        "{help}"
    );
    assert!(
        help.contains("proxyctl check --remote")
            && help.contains("--if-version")
            && help.contains("proxyctl config show"),
        "{help}"
    );
}

/// A valid config with one site, and one whose upstream is no URL.
const VALID_CONFIG: &str = "[[proxy.listeners]]\nname = \"http\"\naddress = \"127.0.0.1:8080\"\n\n\
                            [[sites]]\nhostnames = [\"b.example\"]\n\
                            upstreams = [\"http://127.0.0.1:9000\"]\n";
const INVALID_CONFIG: &str =
    "[[sites]]\nhostnames = [\"b.example\"]\nupstreams = [\"not-a-url\"]\n";

#[tokio::test]
async fn check_remote_shows_what_a_reload_would_change() {
    let env = Env::start(Answer::Deny("unused"), StatusReply::default()).await;
    let file = env.dir.path().join("new.toml");
    std::fs::write(&file, VALID_CONFIG).unwrap();
    let file = file.to_str().unwrap();

    let out = env.proxyctl(&["check", "--remote", file]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "valid: version 4 would become 5 (1 site added: b.example)\n\
         warning: control.allowed_uids changed from none to 1000: needs a restart of controld\n"
    );
    let seen = env.validated.lock().unwrap().clone();
    assert_eq!(
        seen,
        [ValidateRequest {
            config_text: VALID_CONFIG.into(),
            file_name: file.into(),
        }],
        "the text and the name as given travel to controld"
    );

    let json = env.proxyctl(&["--json", "check", "--remote", file]).await;
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "valid": true,
            "current_version": 4,
            "next_version": 5,
            "diff": {"sites_added": ["b.example"], "sites_removed": [], "sites_modified": [],
                     "limits_changed": [], "static_changed": [], "site_changes": []},
            "warnings": ["control.allowed_uids changed from none to 1000: needs a restart of controld"],
            "diagnostics": [],
            "text_hash": "ab12"
        })
    );
}

#[tokio::test]
async fn check_remote_of_an_invalid_file_exits_1_with_every_problem() {
    let env = Env::start(Answer::Deny("unused"), StatusReply::default()).await;
    let dir = env.dir.path();
    std::fs::write(dir.join("bad.toml"), INVALID_CONFIG).unwrap();
    // Relative to the working directory: the diagnostics name FILE as given.
    let run_in = |args: &'static [&'static str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_proxyctl"));
        command
            .args(args)
            .current_dir(dir)
            .env("PROXYCTL_SOCKET", &env.socket);
        tokio::task::spawn_blocking(move || command.output().unwrap())
    };
    let out = run_in(&["check", "--remote", "bad.toml"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "bad.toml:3:13: sites[0].upstreams[0]: invalid URL: relative URL without a base\n\
         invalid (1 problem): a reload of it would be rejected; version 4 would keep serving\n"
    );
    assert!(out.stderr.is_empty(), "{}", stderr(&out));

    let json = run_in(&["check", "--remote", "bad.toml", "--json"])
        .await
        .unwrap();
    assert_eq!(json.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["valid"], false);
    assert_eq!(value["next_version"], 4);
    assert_eq!(
        value["diagnostics"],
        serde_json::json!([{"file": "bad.toml", "line": 3, "column": 13,
                            "key_path": "sites[0].upstreams[0]",
                            "message": "invalid URL: relative URL without a base"}])
    );
}

#[tokio::test]
async fn check_remote_of_a_missing_file_is_1_and_asks_nobody() {
    let env = Env::start(Answer::Deny("unused"), StatusReply::default()).await;
    let missing = env.dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    let out = env
        .proxyctl(&["--json", "check", "--remote", missing])
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "proxyctl: check: reading {missing}: No such file or directory
"
        )
    );
    assert!(out.stdout.is_empty());
    assert!(env.validated.lock().unwrap().is_empty());
}

#[tokio::test]
async fn check_remote_without_controld_is_69() {
    let env = Env::empty();
    let file = env.dir.path().join("new.toml");
    std::fs::write(&file, VALID_CONFIG).unwrap();
    let out = env
        .proxyctl(&["check", "--remote", file.to_str().unwrap()])
        .await;
    assert_eq!(out.status.code(), Some(69), "not 3: that is status-only");
    assert!(
        stderr(&out).ends_with(
            "(is controld running?)
"
        ),
        "{}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn check_without_remote_needs_no_daemon() {
    let env = Env::empty();
    let good = env.dir.path().join("good.toml");
    std::fs::write(&good, VALID_CONFIG).unwrap();
    let good = good.to_str().unwrap();
    let out = env.proxyctl(&["check", good]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        format!(
            "{good}: ok (1 sites, 1 listeners)
"
        )
    );
    let json = env.proxyctl(&["check", good, "--json"]).await;
    assert_eq!(json.status.code(), Some(0));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"valid": true, "diagnostics": [], "sites": 1, "listeners": 1})
    );

    let bad = env.dir.path().join("bad.toml");
    std::fs::write(&bad, INVALID_CONFIG).unwrap();
    let bad = bad.to_str().unwrap();
    let out = env.proxyctl(&["check", bad]).await;
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains(&format!("{bad}:3:")) && text.contains(": sites[0].upstreams[0]: "),
        "{text}"
    );
    let json = env.proxyctl(&["check", bad, "--json"]).await;
    assert_eq!(json.status.code(), Some(1));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["valid"], false);
    assert_eq!(value["sites"], serde_json::Value::Null);
    assert_eq!(value["diagnostics"][0]["file"], bad);
}

#[tokio::test]
async fn reload_if_version_conflict_fails_with_controlds_message() {
    let env = Env::start(
        Answer::Reply(Box::new(applied(&[DataPlaneResult::Acked]))),
        StatusReply::default(),
    )
    .await;
    let out = env.proxyctl(&["reload", "--if-version", "3"]).await;
    assert_eq!(out.status.code(), Some(4), "a conflict, not unreachable");
    assert_eq!(
        stderr(&out),
        "proxyctl: reload: version is now 4: another writer published first; \
         nothing was reloaded\n"
    );
    assert!(out.stdout.is_empty());

    let json = env
        .proxyctl(&["--json", "reload", "--if-version", "3"])
        .await;
    assert_eq!(json.status.code(), Some(4));
    assert!(json.stdout.is_empty(), "errors never go to stdout");

    let out = env.proxyctl(&["reload", "--if-version", "4"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let seen: Vec<_> = env
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(request, _)| request.if_version)
        .collect();
    assert_eq!(seen, [Some(3), Some(3), Some(4)]);
}

#[tokio::test]
async fn config_show_prints_the_serving_text() {
    let env = Env::start(Answer::Deny("unused"), StatusReply::default()).await;
    let out = env.proxyctl(&["config", "show"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "# version 4 (sha256 0123456789ab) from /etc/proxyd/proxy.toml\n\
         [[sites]]\n\
         hostnames = [\"a.example\"]\n"
    );

    let json = env.proxyctl(&["config", "show", "--json"]).await;
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        value,
        serde_json::json!({
            "version": 4,
            "content_hash": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "config_path": "/etc/proxyd/proxy.toml",
            "config_text": "[[sites]]\nhostnames = [\"a.example\"]\n"
        })
    );

    let nowhere = Env::empty();
    let out = nowhere.proxyctl(&["config", "show"]).await;
    assert_eq!(out.status.code(), Some(69));
}

#[tokio::test]
async fn certs_lists_every_certificate_and_status_flags_the_one_close_to_expiry() {
    let env = Env::with_certificates(fleet(), certificates()).await;
    let out = env.proxyctl(&["certs"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("SITE")
            && lines[0].contains("DAYS LEFT")
            && lines[0].contains("NEXT RENEWAL"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("a.example") && lines[1].contains("files"),
        "{text}"
    );
    assert!(
        lines[2].starts_with("b.example")
            && lines[2].contains("acme")
            && lines[2].contains("connection refused (3 failed)"),
        "{text}"
    );

    let out = env.proxyctl(&["--json", "certs"]).await;
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["certificates"][1]["source"], "acme");
    assert_eq!(value["certificates"][1]["days_left"], 5);
    assert_eq!(value["certificates"][1]["failures"], 3);
    assert_eq!(
        value["certificates"][0]["last_error"],
        serde_json::Value::Null
    );

    let out = env.proxyctl(&["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "warning: certificate of b.example expires in 5 days (2030-03-22 18:46:40 UTC); \
             last renewal error: connection refused"
        ),
        "{}",
        stdout(&out)
    );
    let out = env.proxyctl(&["--json", "status"]).await;
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["certificate_warnings"].as_array().unwrap().len(), 1);
}
