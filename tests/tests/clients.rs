//! controld's API from an independent gRPC implementation: Python's grpcio with
//! grpcio-reflection (`tests/clients/admin_client.py`, the example docs/api.md points to) lists
//! the services through reflection v1 and v1alpha, builds its message classes from the
//! descriptors it fetched, and makes the documented deploy calls. No tonic on the client side.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::path::PathBuf;
use std::process::Output;

use proxy_tests::{MockUpstream, TestEnv, output_text};
use serde_json::Value;

fn site(upstream: &str) -> String {
    format!("[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{upstream}\"]\n")
}

/// The PyPI packages the client needs; scripts/test.sh installs them.
const PACKAGES: &str = "'grpcio>=1.60' 'grpcio-reflection>=1.60' 'protobuf>=5.26'";

/// What the client imports, and the protobuf it needs (`always_print_fields_with_no_presence`).
const IMPORTS: &str = "import grpc, grpc_reflection, google.protobuf as p\n\
    assert tuple(map(int, p.__version__.split('.')[:2])) >= (5, 26), 'protobuf ' + p.__version__";

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("clients/admin_client.py")
}

/// Fails (never skips) when python3 or its gRPC packages are missing: a missing package must
/// not turn into a green run that tested nothing.
fn require_python() {
    let out = std::process::Command::new("python3")
        .args(["-c", IMPORTS])
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed for this test: {e}"));
    assert!(
        out.status.success(),
        "python3 lacks the gRPC packages this test needs (or has too old a protobuf); \
         scripts/test.sh installs them, or: \
         python3 -m pip install {PACKAGES}\n{}",
        output_text(&out)
    );
}

/// Runs the Python client on `env`'s control socket with `args`.
async fn client(env: &TestEnv, args: &[&str]) -> Output {
    client_with(env, &[], args).await
}

async fn client_with(env: &TestEnv, options: &[&str], args: &[&str]) -> Output {
    require_python();
    let out = tokio::process::Command::new("python3")
        .arg(script())
        .args(options)
        .arg(&env.socket)
        .args(args)
        .output();
    tokio::time::timeout(proxy_tests::DEADLINE * 4, out)
        .await
        .expect("the Python client finishes")
        .unwrap()
}

/// The reply of a call that must succeed.
async fn call(env: &TestEnv, method: &str, request: &Value) -> Value {
    let out = client(env, &["call", method, &request.to_string()]).await;
    assert!(out.status.success(), "{method}: {}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A uint64 field as the proto3 JSON mapping writes it: a decimal string.
fn uint(value: &Value) -> u64 {
    match value {
        Value::String(s) => s.parse().unwrap(),
        other => other
            .as_u64()
            .unwrap_or_else(|| panic!("not a uint64: {other}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_v1_and_v1alpha_both_list_every_service_with_its_file() {
    let a = MockUpstream::start("a").await;
    let env = TestEnv::start(&site(&a.url())).await;
    for version in ["v1", "v1alpha"] {
        let out = client(&env, &["list", "--reflection", version]).await;
        let text = output_text(&out);
        assert!(out.status.success(), "{version}: {text}");
        for expected in [
            "proxy.v1.Admin\tproxy/v1/control.proto",
            "proxy.v1.Control\tproxy/v1/control.proto",
            "grpc.health.v1.Health\t",
            "grpc.reflection.v1.ServerReflection\t",
            "grpc.reflection.v1alpha.ServerReflection\t",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(expected)),
                "{version}: no {expected:?} in\n{text}"
            );
        }
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_documented_deploy_calls_work_from_python() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let env = TestEnv::start(&site(&a.url())).await;

    // Validate a bad candidate: every problem, located in the candidate's file name.
    let bad =
        env.config_text(&(site("ftp://x") + "[rate_limit]\nrequests_per_second = 0\nburst = 1\n"));
    let reply = call(
        &env,
        "proxy.v1.Admin/Validate",
        &serde_json::json!({"config_text": bad, "file_name": "next.toml"}),
    )
    .await;
    assert_eq!(reply["valid"], false, "{reply}");
    let diagnostics = reply["diagnostics"].as_array().unwrap();
    assert!(diagnostics.len() >= 2, "{reply}");
    for d in diagnostics {
        assert_eq!(d["file"], "next.toml", "{d}");
        assert!(uint(&d["line"]) >= 1 && uint(&d["column"]) >= 1, "{d}");
    }
    assert!(
        diagnostics
            .iter()
            .any(|d| d["key_path"] == "sites[0].upstreams[0]"),
        "{reply}"
    );

    // Validate a good one: the version a reload of it would publish.
    let good = env.config_text(&site(&b.url()));
    let reply = call(
        &env,
        "proxy.v1.Admin/Validate",
        &serde_json::json!({"config_text": good, "file_name": "next.toml"}),
    )
    .await;
    assert_eq!(reply["valid"], true, "{reply}");
    assert_eq!(
        (
            uint(&reply["current_version"]),
            uint(&reply["next_version"])
        ),
        (1, 2)
    );

    // Another writer publishes first; the reload that expected version 1 is refused.
    let out = env.proxyctl(&["reload", "--force"]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    std::fs::write(&env.config_path, &good).unwrap();
    let out = client(
        &env,
        &["call", "proxy.v1.Admin/Reload", r#"{"if_version": 1}"#],
    )
    .await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("error: FAILED_PRECONDITION: version is now 2"),
        "{text}"
    );
    assert!(
        proxy_tests::get(env.http, "app.example", "/")
            .await
            .body
            .starts_with("upstream a"),
        "nothing was reloaded"
    );

    // With the version that is serving, it is applied, by every data plane.
    let reply = call(
        &env,
        "proxy.v1.Admin/Reload",
        &serde_json::json!({"if_version": 2}),
    )
    .await;
    assert_eq!(reply["outcome"], "RELOAD_OUTCOME_APPLIED", "{reply}");
    assert_eq!(
        (uint(&reply["previous_version"]), uint(&reply["version"])),
        (2, 3)
    );
    let planes = reply["data_planes"].as_array().unwrap();
    assert_eq!(planes.len(), 1, "{reply}");
    assert_eq!(uint(&planes[0]["serving_version"]), 3, "{reply}");
    assert!(
        proxy_tests::get(env.http, "app.example", "/")
            .await
            .body
            .starts_with("upstream b")
    );

    // GetConfig: the running version and the text it was built from.
    let reply = call(&env, "proxy.v1.Admin/GetConfig", &serde_json::json!({})).await;
    assert_eq!(uint(&reply["version"]), 3, "{reply}");
    assert!(
        reply["config_text"].as_str().unwrap().contains(&b.url()),
        "{reply}"
    );
    assert_eq!(
        reply["snapshot"]["dynamic"]["sites"][0]["hostnames"][0], "app.example",
        "{reply}"
    );
    // History: the versions, newest first (like GetConfig, one encoded reply shared by every
    // caller: the same bytes twice).
    let reply = call(&env, "proxy.v1.Admin/History", &serde_json::json!({})).await;
    assert_eq!(uint(&reply["current_version"]), 3, "{reply}");
    assert_eq!(uint(&reply["entries"][0]["version"]), 3, "{reply}");
    assert_eq!(
        call(&env, "proxy.v1.Admin/History", &serde_json::json!({})).await,
        reply
    );
    env.stop().await;
}

/// The trap docs/api.md warns about: with the socket path as `:authority` (what grpcio sends
/// over `unix:` by default), the HTTP/2 layer resets the stream; "localhost" works.
#[tokio::test(flavor = "multi_thread")]
async fn the_socket_path_as_authority_is_refused_and_localhost_works() {
    let a = MockUpstream::start("a").await;
    let env = TestEnv::start(&site(&a.url())).await;
    let path = env.socket.to_str().unwrap().to_owned();
    let out = client_with(
        &env,
        &["--authority", &path],
        &["call", "proxy.v1.Admin/Status"],
    )
    .await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("error: INTERNAL"), "{text}");

    let reply = call(&env, "proxy.v1.Admin/Status", &serde_json::json!({})).await;
    assert_eq!(uint(&reply["control_plane"]["version"]), 1, "{reply}");
    env.stop().await;
}
