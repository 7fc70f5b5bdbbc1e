//! HTTP/2 conformance by an independent client: h2spec, every case of RFC 7540/7541, over TLS
//! (ALPN h2) and h2c (prior knowledge), plus `--strict`: every case over TLS, every case but one
//! ([`SHARED_PORT_CASE`]) over h2c. h2spec cannot be downloaded on a test
//! machine; it comes as a static build in `../shared/tools/` (its README has the recipe) or on
//! PATH. Without it the test says it was skipped; with it, any failed case fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::path::PathBuf;

use proxy_tests::tls::TestCa;
use proxy_tests::{HTTPS_ON_PORT_0, MockUpstream, TestEnv};

/// `../shared/tools/h2spec` beside the checkout, or `h2spec` on PATH.
fn h2spec() -> Option<PathBuf> {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()?
        .to_owned();
    let shared = repo.join("../shared/tools/h2spec");
    if shared.is_file() {
        return Some(shared);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("h2spec"))
        .find(|p| p.is_file())
}

/// The one case a port shared by HTTP/1.1 and h2c cannot pass: h2spec sends
/// `INVALID CONNECTION PREFACE\r\n\r\n` and wants an HTTP/2 GOAWAY, but on a plain listener
/// that is an HTTP/1.1 request with an unknown method, answered as one (on TLS, ALPN says
/// h2, and the GOAWAY comes).
const SHARED_PORT_CASE: &str = "Sends invalid connection preface";

/// Runs h2spec against `addr`: its summary line, and the names of the cases that failed.
async fn run(binary: &PathBuf, addr: SocketAddr, tls: bool, strict: bool) -> (String, Vec<String>) {
    let mut command = tokio::process::Command::new(binary);
    command
        .args(["-h", "localhost", "-p", &addr.port().to_string()])
        .args(["-o", "5"]);
    if tls {
        command.args(["-t", "-k"]);
    }
    if strict {
        command.arg("--strict");
    }
    let out = command.output().await.expect("h2spec runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // The last line: "146 tests, 146 passed, 0 skipped, 0 failed".
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains(" tests, "))
        .unwrap_or("no summary")
        .to_owned();
    // The failures are listed again after "Failures:", one "× N: description" line each.
    let failed = text
        .split_once("Failures:")
        .map(|(_, list)| {
            list.lines()
                .filter_map(|l| l.trim().strip_prefix("× "))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    (summary, failed)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_h2spec_case_passes_over_tls_and_h2c() {
    let Some(binary) = h2spec() else {
        eprintln!("skipped: h2spec is neither in ../shared/tools nor on PATH");
        return;
    };
    let app = MockUpstream::start("app").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    // h2spec sends no SNI, and `:authority: localhost:PORT` with `-h localhost` (controld
    // checks a certificate's DNS names, so not 127.0.0.1). h2c is served, not redirected.
    let cert = ca.issue(certs.path(), "local", &["localhost"]);
    let body = format!(
        "default_tls_site = \"localhost\"\n[[sites]]\nhostnames = [\"localhost\"]\nupstreams = [\"{}\"]\n\
         https_redirect = false\n{}\n",
        app.url(),
        cert.site_tls()
    );
    let env = TestEnv::start_with_listeners(HTTPS_ON_PORT_0, &body).await;
    let https = env.https.unwrap();
    for (what, addr, tls, strict) in [
        ("TLS", https, true, false),
        ("TLS --strict", https, true, true),
        ("h2c", env.http, false, false),
        ("h2c --strict", env.http, false, true),
    ] {
        let (summary, failed) = run(&binary, addr, tls, strict).await;
        eprintln!("h2spec {what}: {summary}");
        let allowed = |case: &String| !tls && case.ends_with(SHARED_PORT_CASE);
        let unexpected: Vec<_> = failed.iter().filter(|c| !allowed(c)).collect();
        assert!(
            unexpected.is_empty() && summary.contains(" tests, "),
            "h2spec {what}: {summary}; failed: {unexpected:?}"
        );
    }
    env.stop().await;
}
