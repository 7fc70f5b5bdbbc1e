//! controld's API as deploy pipelines use it, through the real socket: Validate, optimistic
//! concurrency on Reload, GetConfig, reflection and the standard health service.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use proto::v1 as pb;
use proxy_tests::{MockUpstream, TestEnv, binary};

fn site(upstream: &str) -> String {
    format!("[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{upstream}\"]\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_changes_nothing_and_reports_like_controld_check() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let env = TestEnv::start(&site(&a.url())).await;
    let mut admin = env.admin().await;

    let good = env.config_text(&site(&b.url()));
    let reply = admin
        .validate(pb::ValidateRequest {
            config_text: good,
            file_name: "next.toml".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.valid && reply.diagnostics.is_empty(), "{reply:?}");
    assert_eq!((reply.current_version, reply.next_version), (1, 2));
    assert_eq!(reply.diff.unwrap().sites_modified, ["app.example"]);

    let bad =
        env.config_text(&(site("ftp://x") + "[rate_limit]\nrequests_per_second = 0\nburst = 1\n"));
    let reply = admin
        .validate(pb::ValidateRequest {
            config_text: bad.clone(),
            file_name: "next.toml".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.valid);
    let got: Vec<String> = reply
        .diagnostics
        .iter()
        .map(|d| {
            format!(
                "{}:{}:{}: {}: {}",
                d.file, d.line, d.column, d.key_path, d.message
            )
        })
        .collect();
    // The same lines `controld check` prints for the same text.
    let path = env.dir.path().join("next.toml");
    std::fs::write(&path, &bad).unwrap();
    let out = std::process::Command::new(binary("controld"))
        .args(["check", "--config", "next.toml"])
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let expected: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(got, expected);

    // Nothing was published.
    assert_eq!(env.status().await.control_plane.unwrap().version, 1);
    assert!(
        proxy_tests::get(env.http, "app.example", "/")
            .await
            .body
            .starts_with("upstream a")
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_writers_racing_on_the_same_version_exactly_one_wins() {
    let a = MockUpstream::start("a").await;
    let env = TestEnv::start(&site(&a.url())).await;
    let request = || pb::ReloadRequest {
        dry_run: false,
        force: true,
        if_version: Some(1),
        if_text_hash: None,
        ..Default::default()
    };
    let (mut one, mut two) = (env.admin().await, env.admin().await);
    let (first, second) = tokio::join!(one.reload(request()), two.reload(request()));
    let results = [first, second];
    let won: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let lost: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!((won.len(), lost.len()), (1, 1), "{results:?}");
    assert_eq!(won[0].get_ref().version, 2);
    assert_eq!(lost[0].code(), tonic::Code::FailedPrecondition);
    assert!(
        lost[0].message().starts_with("version is now 2"),
        "{}",
        lost[0].message()
    );
    assert_eq!(env.status().await.control_plane.unwrap().version, 2);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn get_config_never_shows_key_material() {
    let app = MockUpstream::start("app").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = proxy_tests::tls::TestCa::new();
    let cert = ca.issue(certs.path(), "site", &["secure.example"]);
    let key_pem = std::fs::read_to_string(&cert.key_file).unwrap();
    let key_body = key_pem.lines().nth(1).unwrap().to_owned();
    let body = format!(
        "[[sites]]\nhostnames = [\"secure.example\"]\nupstreams = [\"{}\"]\n{}\n",
        app.url(),
        cert.site_tls()
    );
    let env = TestEnv::start_with_listeners(proxy_tests::HTTPS_ON_PORT_0, &body).await;
    let reply = env
        .admin()
        .await
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.version, 1);
    assert!(
        reply.config_text.contains("key_file"),
        "the path is config, not a secret"
    );
    let snapshot = reply.snapshot.unwrap();
    let shown = &snapshot.certificates[0];
    assert_eq!(shown.site, "secure.example");
    assert!(
        shown.chain_pem.contains("BEGIN CERTIFICATE"),
        "the chain is public"
    );
    assert_eq!(shown.key_pem, "", "the key is cleared");
    let everything = format!("{}{snapshot:?}{}", reply.config_text, shown.chain_pem);
    assert!(
        !everything.contains("PRIVATE KEY") && !everything.contains(&key_body),
        "{everything}"
    );
    // proxyd got the key all the same: it serves the site over TLS.
    let stream = proxy_tests::tls::connect(
        env.https.unwrap(),
        "secure.example",
        ca.client(&["http/1.1"], false),
    )
    .await
    .unwrap();
    let answer = proxy_tests::Conn::over(stream)
        .await
        .get("secure.example", "/")
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_the_services_and_health_says_serving() {
    let a = MockUpstream::start("a").await;
    let env = TestEnv::start(&site(&a.url())).await;
    let channel = proto::uds::connect(&env.socket, proxy_tests::DEADLINE)
        .await
        .unwrap();

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("{response:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "proxy.v1.Admin",
        "proxy.v1.Control",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{names:?}");
    }

    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(channel);
    for service in ["", "proxy.v1.Admin"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    env.stop().await;
}

/// Runs deploy/examples/deploy.sh against `env` with `candidate` (config text).
async fn deploy(env: &TestEnv, candidate: &str) -> std::process::Output {
    let path = env.dir.path().join("candidate.toml");
    std::fs::write(&path, candidate).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/deploy.sh");
    tokio::process::Command::new("bash")
        .arg(script)
        .arg(&path)
        .arg(&env.config_path)
        .env("PROXYCTL", binary("proxyctl"))
        .env("PROXYCTL_SOCKET", &env.socket)
        .env("PROXYCTL_DATA_PLANE_SOCKET", env.proxyd_socket())
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reference_deploy_script_deploys_and_rolls_back_while_traffic_flows() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let env = TestEnv::start(&site(&a.url())).await;

    // Steady traffic throughout: not one request may fail.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = tokio::spawn({
        let (stop, http) = (stop.clone(), env.http);
        async move {
            let mut failures = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if proxy_tests::get(http, "app.example", "/").await.status != 200 {
                    failures += 1;
                }
            }
            failures
        }
    });

    let out = deploy(&env, &env.config_text(&site(&b.url()))).await;
    let text = proxy_tests::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("deployed: version 1 → 2"), "{text}");
    assert!(
        proxy_tests::get(env.http, "app.example", "/")
            .await
            .body
            .starts_with("upstream b")
    );
    assert_eq!(
        std::fs::read_to_string(&env.config_path).unwrap(),
        env.config_text(&site(&b.url()))
    );

    // Valid for controld, refused by the data plane (its upstream does not resolve).
    let refused = env.config_text(&site("http://upstream.invalid:80"));
    let out = deploy(&env, &refused).await;
    let text = proxy_tests::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("rolled back to the config of version 2"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(&env.config_path).unwrap(),
        env.config_text(&site(&b.url())),
        "the file is restored"
    );
    let status = env.wait_for_applied(4).await;
    assert!(
        status.data_planes[0].in_sync,
        "the rollback (version 4) runs everywhere"
    );
    assert!(
        proxy_tests::get(env.http, "app.example", "/")
            .await
            .body
            .starts_with("upstream b")
    );

    // An invalid candidate changes nothing at all.
    let out = deploy(&env, "this is not toml").await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        proxy_tests::output_text(&out)
    );
    assert_eq!(env.status().await.control_plane.unwrap().version, 4);

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(load.await.unwrap(), 0, "requests failed during the deploys");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_deploys_raced_leave_the_winner_s_config_and_the_loser_touches_nothing() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let c = MockUpstream::start("c").await;
    let env = TestEnv::start(&site(&a.url())).await;
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/deploy.sh");
    // Hold the deploy lock while both validate against version 1, so that they truly race.
    let lock = format!("{}.deploy-lock", env.config_path.display());
    let mut holder = tokio::process::Command::new("flock")
        .args([lock.as_str(), "-c", "echo locked; cat"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut locked = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut locked)
        .await
        .unwrap();
    assert_eq!(locked.trim(), "locked");

    let mut deploys = Vec::new();
    for (name, upstream) in [("b", &b), ("c", &c)] {
        let path = env.dir.path().join(format!("candidate-{name}.toml"));
        std::fs::write(&path, env.config_text(&site(&upstream.url()))).unwrap();
        let mut child = tokio::process::Command::new("bash")
            .arg(&script)
            .arg(&path)
            .arg(&env.config_path)
            .env("PROXYCTL", binary("proxyctl"))
            .env("PROXYCTL_SOCKET", &env.socket)
            .env("PROXYCTL_DATA_PLANE_SOCKET", env.proxyd_socket())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until it has validated; keep the rest of its output.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        while !seen.contains("validated against version 1") {
            let mut line = String::new();
            assert!(stderr.read_line(&mut line).await.unwrap() > 0, "{seen}");
            seen.push_str(&line);
        }
        deploys.push((name, path, child, stderr, seen));
    }
    drop(holder.stdin.take());
    holder.wait().await.unwrap();

    let mut outcomes = Vec::new();
    for (name, path, mut child, mut stderr, mut seen) in deploys {
        stderr.read_to_string(&mut seen).await.unwrap();
        let code = child.wait().await.unwrap().code();
        outcomes.push((name, path, code, seen));
    }
    let winner = outcomes
        .iter()
        .find(|o| o.2 == Some(0))
        .expect("one deploy won");
    let loser = outcomes
        .iter()
        .find(|o| o.2 == Some(4))
        .expect("the other got exit 4");
    assert!(
        loser.3.contains("nothing was changed"),
        "the loser says it changed nothing: {}",
        loser.3
    );
    // The running config is the winner's candidate, published once; the loser's is nowhere.
    assert_eq!(
        std::fs::read_to_string(&env.config_path).unwrap(),
        std::fs::read_to_string(&winner.1).unwrap()
    );
    let status = env.wait_for_applied(2).await;
    assert_eq!(
        status.control_plane.unwrap().version,
        2,
        "one version published"
    );
    let served = proxy_tests::get(env.http, "app.example", "/").await.body;
    assert!(
        served.starts_with(&format!("upstream {}", winner.0)),
        "{served}"
    );
    // Neither left a temporary or backup file behind.
    let leftovers: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".deploy.") || n.contains("before-deploy"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_names_the_validated_text_publishes_only_that_text() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let c = MockUpstream::start("c").await;
    let env = TestEnv::start(&site(&a.url())).await;
    let mut admin = env.admin().await;
    let candidate = env.config_text(&site(&b.url()));
    let validated = admin
        .validate(pb::ValidateRequest {
            config_text: candidate.clone(),
            file_name: "candidate.toml".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(validated.valid);
    assert_eq!(validated.text_hash.len(), 64, "{validated:?}");
    let reload = |hash: &str| pb::ReloadRequest {
        dry_run: false,
        force: false,
        if_version: Some(1),
        if_text_hash: Some(hash.to_owned()),
        ..Default::default()
    };
    // Someone else's file in place of the candidate: refused, nothing published.
    env.write_config(&site(&c.url()));
    let refused = admin
        .reload(reload(&validated.text_hash))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("not the one validated"),
        "{refused:?}"
    );
    assert_eq!(env.status().await.control_plane.unwrap().version, 1);
    // proxyctl says so with its conflict code.
    std::fs::write(&env.config_path, &candidate).unwrap();
    let out = env
        .proxyctl(&["reload", "--if-version", "1", "--if-hash", "0000"])
        .await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        proxy_tests::output_text(&out)
    );
    // The validated text: published.
    let applied = admin
        .reload(reload(&validated.text_hash))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(applied.version, 2);
    assert!(
        proxy_tests::get(env.http, "app.example", "/")
            .await
            .body
            .starts_with("upstream b")
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_racing_a_plain_reload_keeps_the_candidate_it_installed() {
    // Review of issue 20: a plain reload (`systemctl reload controld`) between the deploy's
    // install and its own reload published the candidate; the deploy then restored the old file
    // and said nothing was published, and the next reload silently undid the deploy.
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let env = TestEnv::start(&site(&a.url())).await;
    let wrapper = env.dir.path().join("proxyctl-racing");
    std::fs::write(
        &wrapper,
        format!(
            "#!/usr/bin/env bash\n\
             # Someone reloads just before the deploy's own reload.\n\
             if [[ \" $* \" == *\" --if-hash \"* ]]; then {0} reload >/dev/null 2>&1; fi\n\
             exec {0} \"$@\"\n",
            binary("proxyctl").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let candidate = env.config_text(&site(&b.url()));
    let path = env.dir.path().join("candidate.toml");
    std::fs::write(&path, &candidate).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/deploy.sh");
    let out = tokio::process::Command::new("bash")
        .arg(script)
        .arg(&path)
        .arg(&env.config_path)
        .env("PROXYCTL", &wrapper)
        .env("PROXYCTL_SOCKET", &env.socket)
        .env("PROXYCTL_DATA_PLANE_SOCKET", env.proxyd_socket())
        .output()
        .await
        .unwrap();
    let text = proxy_tests::output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        std::fs::read_to_string(&env.config_path).unwrap(),
        candidate,
        "{text}"
    );
    // The next plain reload changes nothing: the candidate stays.
    let out = env.proxyctl(&["reload"]).await;
    assert!(
        proxy_tests::output_text(&out).contains("unchanged"),
        "{}",
        proxy_tests::output_text(&out)
    );
    assert!(
        proxy_tests::get(env.http, "app.example", "/")
            .await
            .body
            .starts_with("upstream b")
    );
    env.stop().await;
}
