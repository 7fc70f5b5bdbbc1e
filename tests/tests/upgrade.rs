//! Zero-downtime upgrades (issue 13): `proxyctl upgrade` replaces proxyd, a real process, with a
//! new one that takes its listening sockets and snapshot, while clients keep connecting and
//! requesting; none is refused and none fails.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use proxy_tests::{
    Conn, MockUpstream, Process, TestEnv, binary, eventually, listener_address, output_text,
};

fn site(upstream: &str) -> String {
    format!("[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{upstream}\"]\n")
}

/// controld and a first proxyd, as real processes, serving `app.example` from a mock upstream;
/// proxyd gets its admin socket and `extra` arguments.
struct Host {
    env: TestEnv,
    _upstream: MockUpstream,
    _controld: Process,
    proxyd: Process,
    admin: std::path::PathBuf,
    http: std::net::SocketAddr,
}

impl Host {
    async fn start(extra: &[&str]) -> Host {
        let upstream = MockUpstream::start("a").await;
        let env = TestEnv::paths_only();
        env.write_config(&site(&upstream.url()));
        let admin = env.proxyd_socket();
        let controld = Process::start("controld", &["--config", env.config_path.to_str().unwrap()]);
        let mut args = vec![
            "--control-socket",
            env.socket.to_str().unwrap(),
            "--admin-socket",
            admin.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let proxyd = Process::start("proxyd", &args);
        let http = listener_address(&env.wait_for_applied(1).await, "http");
        Host {
            env,
            _upstream: upstream,
            _controld: controld,
            proxyd,
            admin,
            http,
        }
    }
}

/// Kills the proxyd processes `proxyctl upgrade` started (they are not this test's children)
/// should the test end early.
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            if alive(*pid) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
        }
    }
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// Writes `text` into a tunnel to the echoing upstream and reads it back.
async fn echo(tunnel: &mut tokio::net::TcpStream, text: &[u8]) -> Option<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tunnel.write_all(text).await.ok()?;
    let mut back = vec![0u8; text.len()];
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tunnel.read_exact(&mut back),
    )
    .await
    .ok()?
    .ok()?;
    Some(back)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrades_under_load_refuse_no_connection_and_fail_no_request() {
    let Host {
        env,
        proxyd: mut first,
        admin,
        http,
        // Bound, so that they live to the end of the test.
        _upstream,
        _controld,
    } = Host::start(&["--node-id", "edge-1", "--log-format", "text"]).await;
    let mut reaper = Reaper(Vec::new());
    let baseline_fds = open_fds(first.pid());

    // Steady load: new connections, and requests on kept-alive ones, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for worker in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // A fresh connection each time: a refused connect is a failure.
                let Ok(tcp) = tokio::net::TcpStream::connect(http).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let mut conn = Conn::over(tcp).await;
                let requests = if worker % 2 == 0 { 1 } else { 5 };
                for _ in 0..requests {
                    match conn.try_get("app.example", "/").await {
                        Some(200) => ok.fetch_add(1, Ordering::Relaxed),
                        // The old process closed this kept-alive connection while draining
                        // between two requests (Connection: close on the last answer): the
                        // client opens a new one, as clients do.
                        None if conn.is_closed() => break,
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            }
        }));
    }

    // And HTTP/2 (h2c): one connection carrying request after request, reopened when the old
    // process sends it away (GOAWAY: the requests it did not take are safe to send again, as
    // every HTTP/2 client does).
    for _ in 0..2 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(tcp) = tokio::net::TcpStream::connect(http).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let Ok((mut sender, connection)) = hyper::client::conn::http2::handshake(
                    hyper_util::rt::TokioExecutor::new(),
                    hyper_util::rt::TokioIo::new(tcp),
                )
                .await
                else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                tokio::spawn(connection);
                while !stop.load(Ordering::Relaxed) {
                    let request = http::Request::get("http://app.example/")
                        .body(http_body_util::Empty::<bytes::Bytes>::new())
                        .unwrap();
                    match sender.send_request(request).await {
                        Ok(response) if response.status() == 200 => {
                            let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) if e.is_canceled() || e.is_closed() || sender.is_closed() => break,
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }

    let mut serving = first.pid();
    for round in 0..10 {
        let before = ok.load(Ordering::Relaxed);
        let out = env
            .proxyctl(&[
                "--json",
                "--data-plane-socket",
                admin.to_str().unwrap(),
                "upgrade",
                "--binary",
                binary("proxyd").to_str().unwrap(),
            ])
            .await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "round {round}: {}",
            output_text(&out)
        );
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(answer["old_pid"], serving);
        let next = u32::try_from(answer["new_pid"].as_u64().unwrap()).unwrap();
        reaper.0.push(next);
        assert_eq!(answer["node_id"], "edge-1");
        // The old process drains and exits; the load goes on meanwhile.
        let old = serving;
        eventually("the old proxyd to exit", || async {
            (!alive(old)).then_some(())
        })
        .await;
        serving = next;
        eventually("requests served by the new proxyd", || async {
            (ok.load(Ordering::Relaxed) > before + 20).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{} requests succeeded",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(
        first.exit_code().await,
        Some(0),
        "the first proxyd drained and exited 0"
    );

    // controld sees one data plane for the node, the last one, serving the same version.
    let status = eventually("one data plane for edge-1", || async {
        let status = env.status().await;
        let planes: Vec<_> = status
            .data_planes
            .iter()
            .filter(|p| p.node_id == "edge-1")
            .collect();
        (planes.len() == 1 && planes[0].pid == serving).then_some(status)
    })
    .await;
    assert_eq!(status.data_planes[0].applied_version, 1);
    // The descriptors held are back to what the first process held.
    eventually("descriptors back to the baseline", || async {
        (open_fds(serving) <= baseline_fds + 2).then_some(())
    })
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &serving.to_string()])
        .status();
    eventually("the last proxyd to exit", || async {
        (!alive(serving)).then_some(())
    })
    .await;
    assert!(!admin.exists(), "the last proxyd removes the admin socket");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_successor_that_fails_leaves_the_old_proxyd_serving() {
    let Host {
        env,
        mut proxyd,
        admin,
        http,
        // Bound, so that they live to the end of the test.
        _upstream,
        _controld,
    } = Host::start(&[]).await;

    // Not a proxyd: it exits at once.
    let out = env
        .proxyctl(&[
            "--data-plane-socket",
            admin.to_str().unwrap(),
            "upgrade",
            "--binary",
            "/bin/false",
        ])
        .await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("exited") && text.contains("serves on"),
        "{text}"
    );
    assert_eq!(proxy_tests::get(http, "app.example", "/").await.status, 200);
    let out = env
        .proxyctl(&["--data-plane-socket", admin.to_str().unwrap(), "health"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    proxyd.signal("TERM").await;
    assert_eq!(proxyd.exit_code().await, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_listener_moved_by_reload_is_handed_to_the_successor() {
    let Host {
        env,
        proxyd: mut first,
        // Bound, so that they live to the end of the test.
        _upstream,
        _controld,
        ..
    } = Host::start(&[]).await;
    let mut reaper = Reaper(Vec::new());
    let with_admin = |address: &str| {
        let text = env.config_text(&site(&_upstream.url())).replace(
            "[proxy]\n",
            &format!("[proxy]\nadmin_address = \"{address}\"\n"),
        );
        std::fs::write(&env.config_path, text).unwrap();
    };
    // Added, then moved to another address, by reload (port 0: the kernel picks the port, so
    // only a hand-over can keep it).
    with_admin("127.0.0.1:0");
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    with_admin("127.0.0.2:0");
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let moved = listener_address(&env.status().await, "admin");
    assert_eq!(moved.ip(), std::net::IpAddr::from([127, 0, 0, 2]));

    let next = env.upgrade().await;
    reaper.0.push(next);
    assert_eq!(first.exit_code().await, Some(0));
    let status = eventually("the successor alone", || async {
        let status = env.status().await;
        (status.data_planes.len() == 1 && status.data_planes[0].pid == next).then_some(status)
    })
    .await;
    assert_eq!(listener_address(&status, "admin"), moved, "the same socket");
    assert_eq!(
        proxy_tests::get(moved, "localhost", "/healthz")
            .await
            .status,
        200
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_of_the_old_proxyd_lives_on_until_its_drain_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // One thread: the current-thread scheduler serves, hands over and drains too.
    let Host {
        env,
        proxyd: mut first,
        http,
        // Bound, so that they live to the end of the test.
        _upstream,
        _controld,
        ..
    } = Host::start(&["--worker-threads", "1"]).await;
    let mut reaper = Reaper(Vec::new());

    let mut tunnel = tokio::net::TcpStream::connect(http).await.unwrap();
    tunnel
        .write_all(b"GET /chat HTTP/1.1\r\nHost: app.example\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = vec![0u8; 1024];
    let n = tunnel.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    assert_eq!(echo(&mut tunnel, b"before").await.unwrap(), b"before");

    let started = std::time::Instant::now();
    let next = env.upgrade().await;
    reaper.0.push(next);
    // The old process drains but its tunnel goes on...
    assert_eq!(echo(&mut tunnel, b"during").await.unwrap(), b"during");
    assert_eq!(proxy_tests::get(http, "app.example", "/").await.status, 200);
    // ...until its drain deadline (2 s, `proxy.shutdown_timeout`), when the old process exits.
    assert_eq!(first.exit_code().await, Some(0));
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(1500),
        "the old proxyd waited for its tunnel: {:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tunnel.read_to_end(&mut rest),
    )
    .await;
    assert!(closed.is_ok(), "the tunnel closed with the old process");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &next.to_string()])
        .status();
    eventually("the new proxyd to exit", || async {
        (!alive(next)).then_some(())
    })
    .await;
}

/// `proxyd --master`, as the systemd unit runs it, without systemd: upgrades keep the master's
/// pid and replace its worker; a successor that refuses the snapshot it is handed leaves the
/// old worker serving, its admin socket file in place; the master stops its workers on SIGTERM.
#[tokio::test(flavor = "multi_thread")]
async fn a_master_keeps_its_pid_across_upgrades_and_survives_a_successor_that_refuses_the_snapshot()
{
    // The upstream by a name that only the master's mount namespace resolves (an /etc/hosts
    // bound over the real one): a successor given the real file cannot resolve it, and so
    // refuses the snapshot it is handed, as a build that rejects the serving config would.
    // Mount namespaces need root; without it the test says so and checks the rest.
    let root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let upstream = MockUpstream::start("a").await;
    let env = TestEnv::paths_only();
    let with_name = env.dir.path().join("hosts.with-name");
    let without_name = env.dir.path().join("hosts.without-name");
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    std::fs::write(&without_name, &hosts).unwrap();
    std::fs::write(&with_name, format!("{hosts}\n127.0.0.1 proxytestbackend\n")).unwrap();
    let backend = if root {
        "proxytestbackend"
    } else {
        "127.0.0.1"
    };
    env.write_config(&site(&format!("http://{backend}:{}", upstream.addr.port())));
    let admin = env.proxyd_socket();
    let _controld = Process::start("controld", &["--config", env.config_path.to_str().unwrap()]);
    let hosts_over = |file: &std::path::Path| {
        format!(
            "mount --bind {} /etc/hosts && exec \"$0\" \"$@\"",
            file.display()
        )
    };
    let in_namespace = hosts_over(&with_name);
    let wrapper: Vec<&str> = if root {
        vec![
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &in_namespace,
        ]
    } else {
        eprintln!("not root: the refused snapshot is not tried (it needs a mount namespace)");
        vec![]
    };
    let mut master = Process::start_logged_under(
        &wrapper,
        "proxyd",
        &[
            "--master",
            "--control-socket",
            env.socket.to_str().unwrap(),
            "--admin-socket",
            admin.to_str().unwrap(),
        ],
    );
    let http = listener_address(&env.wait_for_applied(1).await, "http");
    let data_plane = ["--data-plane-socket", admin.to_str().unwrap()];
    // `proxyctl --json upgrade`: (old worker, new worker).
    let upgrade = |binary: Option<std::path::PathBuf>| {
        let env = &env;
        async move {
            let mut args = vec![data_plane[0], data_plane[1], "--json", "upgrade"];
            let binary = binary.map(|b| b.display().to_string());
            if let Some(b) = &binary {
                args.extend(["--binary", b.as_str()]);
            }
            let out = env.proxyctl(&args).await;
            let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            (
                out.status.code(),
                answer["old_pid"].as_u64(),
                answer["new_pid"].as_u64(),
                output_text(&out),
            )
        }
    };

    // Clients that connect to master.sock and say nothing do not hold the master up.
    let master_socket = admin.with_file_name("master.sock");
    let mut idle = Vec::new();
    for _ in 0..30 {
        idle.push(
            tokio::net::UnixStream::connect(&master_socket)
                .await
                .unwrap(),
        );
    }

    // Upgrades: new workers, the same master.
    let started = std::time::Instant::now();
    let (code, first, mut serving, text) = upgrade(None).await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "an upgrade beside 30 silent clients took {:?}",
        started.elapsed()
    );
    drop(idle);
    assert_eq!(code, Some(0), "{text}");
    assert_ne!(
        first,
        Some(u64::from(master.pid())),
        "the master serves through a worker"
    );
    let (code, old, new, text) = upgrade(None).await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(old, serving);
    assert_ne!(new, serving);
    serving = new;
    assert!(alive(master.pid()), "the master keeps its pid");
    assert_eq!(proxy_tests::get(http, "app.example", "/").await.status, 200);

    // A successor that cannot resolve the upstream refuses the handed snapshot (without root:
    // one that is not a proxyd at all).
    let wrapper = env.dir.path().join("proxyd-without-the-name");
    let script = if root {
        format!(
            "#!/bin/sh\nexec unshare -m --propagation private sh -c '{}' {} \"$@\"\n",
            hosts_over(&without_name),
            binary("proxyd").display()
        )
    } else {
        "#!/bin/sh\nexit 3\n".to_owned()
    };
    std::fs::write(&wrapper, script).unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (code, _, _, text) = upgrade(Some(wrapper)).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("before serving") && text.contains("serves on"),
        "{text}"
    );
    assert!(
        admin.exists(),
        "the failed successor left the admin socket file"
    );
    assert_eq!(proxy_tests::get(http, "app.example", "/").await.status, 200);

    // The old worker served on; the master upgrades from its own binary again, not the
    // failed one.
    let (code, old, new, text) = upgrade(None).await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(old, serving, "the old worker served on");
    serving = new;

    master.signal("TERM").await;
    assert_eq!(master.exit_code().await, Some(0));
    let gone = u32::try_from(serving.unwrap()).unwrap();
    eventually("the workers to exit with the master", || async {
        (!alive(gone)).then_some(())
    })
    .await;
    assert!(!admin.exists(), "the last worker removes the admin socket");
}

/// Issue 19 #11: two hand-overs at once both got the sockets, and both successors accepted on
/// them. A second `Handover` is refused while one is under way; once that one fails (its
/// successor goes away), the next is served.
#[tokio::test(flavor = "multi_thread")]
async fn one_hand_over_at_a_time() {
    use proto::v1 as pb;
    let Host {
        env: _env,
        proxyd: _proxyd,
        admin,
        http,
        _upstream,
        _controld,
    } = Host::start(&[]).await;
    let dir = admin.parent().unwrap();
    let handover = |name: &str| {
        let socket_path = dir.join(name);
        let admin = admin.clone();
        async move {
            let channel = proto::uds::connect(&admin, std::time::Duration::from_secs(5))
                .await
                .unwrap();
            pb::data_plane_client::DataPlaneClient::new(channel)
                .handover(pb::HandoverRequest {
                    socket_path: socket_path.display().to_string(),
                    pid: std::process::id(),
                    build_version: "test".into(),
                })
                .await
        }
    };
    // A successor that receives the sockets and then says nothing.
    let first = std::os::unix::net::UnixListener::bind(dir.join("first.sock")).unwrap();
    handover("first.sock").await.expect("the first hand-over");
    let (held, _) = first.accept().unwrap();

    let second = std::os::unix::net::UnixListener::bind(dir.join("second.sock")).unwrap();
    let refused = handover("second.sock").await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(refused.message().contains("under way"), "{refused:?}");

    // The first successor goes away without serving: the old proxyd serves on, and hands over
    // to the next one that asks.
    drop(held);
    let answered = eventually("a hand-over after the first one failed", || async {
        handover("second.sock").await.ok()
    })
    .await;
    assert!(answered.get_ref().pid > 0);
    let (held, _) = second.accept().unwrap();
    drop(held);
    assert_eq!(proxy_tests::get(http, "app.example", "/").await.status, 200);
}

/// Third review of issue 18: a new worker told to stop while it takes over (a stop queued
/// behind the upgrade) took over all the same and then stopped, leaving nothing serving. It
/// never takes over now: the old worker serves on and the master with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_successor_stopped_during_its_take_over_leaves_the_old_worker_serving() {
    let Host {
        env,
        proxyd: master,
        admin,
        http,
        _upstream,
        _controld,
    } = {
        // `Host::start` with `--master`: the first worker serves once version 1 applies.
        Host::start(&["--master"]).await
    };
    let children = |pid: u32| -> Vec<u32> {
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    let old = eventually("the first worker", || async {
        children(master.pid()).first().copied()
    })
    .await;
    // The old worker, stopped, cannot answer the new one: the take-over waits.
    let signal = |sig: &str, pid: u32| {
        std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
    };
    signal("-STOP", old);
    // SIGHUP: an upgrade with no answer to wait for (proxyctl would first ask the stopped
    // worker who it is).
    signal("-HUP", master.pid());
    let new = eventually("the new worker", || async {
        children(master.pid()).into_iter().find(|p| *p != old)
    })
    .await;
    // It asked for the sockets (its inbox is bound, its signal handlers long installed).
    let inbox = std::path::PathBuf::from(format!("{}.handover.{new}", admin.display()));
    eventually("the new worker's inbox", || async {
        inbox.exists().then_some(())
    })
    .await;
    signal("-TERM", new);
    signal("-CONT", old);
    eventually("the new worker gone", || async {
        (!alive(new)).then_some(())
    })
    .await;
    assert!(alive(old), "the old worker serves on");
    assert!(alive(master.pid()), "and the master with it");
    assert_eq!(proxy_tests::get(http, "app.example", "/").await.status, 200);
    drop(env);
}
