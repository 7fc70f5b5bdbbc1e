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

/// What one h2spec run reported.
struct Report {
    /// The last line: "146 tests, 146 passed, 0 skipped, 0 failed".
    summary: String,
    /// Each failed case: its id for h2spec's command line (`http2/5.1/8`) and its description.
    failed: Vec<(String, String)>,
    /// h2spec's account of the failures: what each case expected and what it got.
    details: String,
}

/// Runs every h2spec case against `addr`.
async fn run(binary: &PathBuf, addr: SocketAddr, tls: bool, strict: bool) -> Report {
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
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains(" tests, "))
        .unwrap_or("no summary")
        .to_owned();
    let details = text
        .split_once("Failures:")
        .map(|(_, list)| list.to_owned())
        .unwrap_or_default();
    Report {
        summary,
        failed: failed_cases(&details),
        details,
    }
}

/// The failed cases of h2spec's "Failures:" list, where each "× N: description" line sits under
/// its spec ("Hypertext Transfer Protocol Version 2 (HTTP/2)") and section ("5.1. Stream
/// States"): `("http2/5.1/8", "closed: Sends a DATA frame after sending RST_STREAM frame")`.
fn failed_cases(details: &str) -> Vec<(String, String)> {
    let (mut spec, mut section) = ("", "");
    let mut failed = Vec::new();
    for line in details.lines() {
        let trimmed = line.trim();
        if let Some(case) = trimmed.strip_prefix("× ") {
            let (number, description) = case.split_once(": ").unwrap_or((case, ""));
            failed.push((format!("{spec}/{section}/{number}"), description.to_owned()));
        } else if !line.starts_with(' ') && !trimmed.is_empty() {
            spec = match trimmed {
                t if t.starts_with("Generic") => "generic",
                t if t.starts_with("HPACK") => "hpack",
                _ => "http2",
            };
        } else if let Some((number, _)) = trimmed.split_once(". ")
            && number.chars().all(|c| c.is_ascii_digit() || c == '.')
            && !number.is_empty()
        {
            section = number;
        }
    }
    failed
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
        let report = run(&binary, addr, tls, strict).await;
        eprintln!("h2spec {what}: {}", report.summary);
        let unexpected: Vec<_> = report
            .failed
            .iter()
            .filter(|(_, description)| tls || description != SHARED_PORT_CASE)
            .collect();
        assert!(
            unexpected.is_empty() && report.summary.contains(" tests, "),
            "h2spec {what}: {}; failed: {unexpected:?}\n{}",
            report.summary,
            report.details
        );
    }
    env.stop().await;
}

#[test]
fn failed_cases_are_named_by_their_h2spec_ids() {
    let details = "
Generic tests for HTTP/2 server
  3. Frame Definitions
    3.5. SETTINGS
      × 1: Sends a SETTINGS frame
        -> The endpoint MUST accept it.

Hypertext Transfer Protocol Version 2 (HTTP/2)
  5. Streams and Multiplexing
    5.1. Stream States
      × 8: closed: Sends a DATA frame after sending RST_STREAM frame
           Expected: GOAWAY Frame (Error Code: STREAM_CLOSED)
             Actual: DATA Frame (length:24, flags:0x01, stream_id:1)
  6. Frame Definitions
    6.9. WINDOW_UPDATE
      6.9.1. The Flow-Control Window
        × 3: Sends multiple WINDOW_UPDATE frames

HPACK: Header Compression for HTTP/2
  2. Compression Process Overview
    × 1: Sends a indexed header field representation
";
    let ids: Vec<_> = failed_cases(details)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        ids,
        ["generic/3.5/1", "http2/5.1/8", "http2/6.9.1/3", "hpack/2/1"]
    );
}
