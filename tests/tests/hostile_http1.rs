//! Hostile HTTP/1 input, one attack per file in `tests/cases/http1/` (format:
//! `tests/cases/README.md`): each case's bytes go to proxyd on a fresh connection, then the
//! suite checks what the client got, exactly what the upstream received, that the upstream is
//! still counted healthy, and that an ordinary request is still served.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proxy_tests::raw_http::{self, Reply};
use proxy_tests::upstream::Recorded;
use proxy_tests::{ADMIN_ON_PORT_0, DEADLINE, MockUpstream, TestEnv, eventually, metric};
use serde::Deserialize;

/// How long a case may take to get its first response (or see the connection close).
const CASE_DEADLINE: Duration = Duration::from_secs(5);

/// How long a request head the upstream already counted may take to finish its body.
const SETTLE_DEADLINE: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    /// Sent as its UTF-8 bytes, after `${repeat:N:text}` expansion.
    request: String,
    /// Shut the client's write side down after the request.
    #[serde(default)]
    half_close: bool,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    /// Acceptable statuses of the first response.
    #[serde(default)]
    status: OneOrMany<u16>,
    /// The connection closing with no response is acceptable.
    #[serde(default)]
    closed: bool,
    /// Headers the first response must have, with these values.
    #[serde(default)]
    response_headers: BTreeMap<String, String>,
    /// Acceptable numbers of request heads the upstream received from this case.
    upstream_requests: OneOrMany<usize>,
    upstream_method: Option<String>,
    upstream_path: Option<String>,
    upstream_body: Option<String>,
    #[serde(default)]
    upstream_headers: BTreeMap<String, String>,
    #[serde(default)]
    upstream_headers_absent: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl<T: PartialEq> OneOrMany<T> {
    fn values(&self) -> &[T] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }
}

/// `${repeat:N:text}` becomes `text` N times, for requests too long to write out.
fn expand(request: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = request;
    while let Some(start) = rest.find("${repeat:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "${repeat:".len()..];
        let (count, after) = after.split_once(':').ok_or("`${repeat:` without `N:`")?;
        let (text, after) = after.split_once('}').ok_or("`${repeat:` without `}`")?;
        let count: usize = count
            .parse()
            .map_err(|_| format!("bad repeat count {count:?}"))?;
        out.push_str(&text.repeat(count));
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cases/http1")
}

/// Every case file, sorted by name; a file that does not load is an `Err` to report.
fn load_cases() -> Vec<(String, Result<Case, String>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let case = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| toml::from_str::<Case>(&text).map_err(|e| e.to_string()))
                .and_then(|case| validate(&case).map(|()| case));
            (name, case)
        })
        .collect()
}

fn validate(case: &Case) -> Result<(), String> {
    let e = &case.expect;
    if e.status.values().is_empty() && !e.closed {
        return Err("expect needs `status`, `closed = true`, or both".into());
    }
    let about_first = e.upstream_method.is_some()
        || e.upstream_path.is_some()
        || e.upstream_body.is_some()
        || !e.upstream_headers.is_empty();
    if about_first && !e.upstream_requests.values().iter().all(|n| *n >= 1) {
        return Err("upstream_method/path/body/headers need upstream_requests >= 1".into());
    }
    expand(&case.request).map(|_| ())
}

/// A proxyd with the suite's one site in front of a recording upstream.
struct Stage {
    upstream: MockUpstream,
    env: TestEnv,
    /// The upstream's `proxy_upstream_healthy` series.
    healthy: String,
}

impl Stage {
    async fn start() -> Stage {
        let upstream = MockUpstream::start("app").await;
        // One counted fault ejects the upstream for the rest of the suite, so a fault wrongly
        // blamed on it shows up as the case that caused it.
        let config = format!(
            r#"
[[sites]]
hostnames = ["a.test"]
upstreams = ["{0}"]

[sites.passive_health]
consecutive_failures = 1
cooldown = "1h"

[[sites.routes]]
path_prefix = "/admin"
respond = {{ status = 403, body = "blocked" }}

[[sites.routes]]
path_prefix = "/api"
upstreams = ["{0}"]
rewrite = "/v2/"
"#,
            upstream.url()
        );
        let env = TestEnv::start_with(ADMIN_ON_PORT_0, &config).await;
        let healthy = format!("proxy_upstream_healthy{{upstream=\"{}\"}}", upstream.url());
        eventually("the upstream's health series", || async {
            (metric(&env.metrics().await, &healthy) == Some(1.0)).then_some(())
        })
        .await;
        Stage {
            upstream,
            env,
            healthy,
        }
    }
}

/// What one case found wrong, and whether the proxy is left unfit for the next case.
struct Verdict {
    problems: Vec<String>,
    broken: bool,
}

async fn run_case(stage: &Stage, index: usize, case: &Case) -> Verdict {
    let (up, e) = (&stage.upstream, &case.expect);
    let mut problems = Vec::new();
    let hits_before = up.hits();
    let records_before = up.requests().len();

    let request = expand(&case.request).unwrap();
    let reply = raw_http::exchange(
        stage.env.http,
        request.as_bytes(),
        case.half_close,
        CASE_DEADLINE,
    )
    .await;
    check_client(e, &reply, &mut problems);

    // An ordinary request after the case: the proxy still serves, and whatever the case sent
    // upstream has arrived by the time this one is answered.
    let probe =
        format!("GET /?probe={index} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n");
    let probe = raw_http::exchange(stage.env.http, probe.as_bytes(), false, DEADLINE).await;
    let probe_served = matches!(&probe, Reply::Response { status: 200, body, .. }
        if body.starts_with(b"upstream app"));
    if !probe_served {
        problems.push(format!(
            "afterwards GET / was not served by the upstream: {probe}"
        ));
    }
    let count = (up.hits() - hits_before).saturating_sub(usize::from(probe_served));
    if !e.upstream_requests.values().contains(&count) {
        problems.push(format!(
            "upstream: expected {:?} requests, got {count}: {:?}",
            e.upstream_requests.values(),
            summary(&case_records(up, records_before, index).await)
        ));
    } else if let Some(first) = case_records(up, records_before, index).await.first() {
        check_first(e, first, &mut problems);
    }

    let healthy = metric(&stage.env.metrics().await, &stage.healthy);
    if healthy != Some(1.0) {
        problems.push(format!(
            "upstream no longer healthy: {} = {healthy:?}",
            stage.healthy
        ));
    }
    Verdict {
        problems,
        broken: !probe_served || healthy != Some(1.0),
    }
}

/// What the client got against `status`, `closed` and `response_headers`.
fn check_client(e: &Expect, reply: &Reply, problems: &mut Vec<String>) {
    let client_ok = match reply {
        Reply::Response { status, .. } => e.status.values().contains(status),
        Reply::Closed => e.closed,
        Reply::Incomplete(_) => false,
    };
    if !client_ok {
        let mut wanted: Vec<String> = e.status.values().iter().map(u16::to_string).collect();
        if e.closed {
            wanted.push("closed".into());
        }
        problems.push(format!(
            "client: expected {}, got {reply}",
            wanted.join(" or ")
        ));
    }
    if let Reply::Response { head, .. } = reply {
        for (name, want) in &e.response_headers {
            let got = response_header(head, name);
            if got != Some(want.as_str()) {
                problems.push(format!(
                    "response header {name}: expected {want:?}, got {got:?}"
                ));
            }
        }
    }
}

/// The requests this case sent upstream (not the probe), once every counted head has its
/// body whole or broken, or [`SETTLE_DEADLINE`] passed.
async fn case_records(up: &MockUpstream, before: usize, index: usize) -> Vec<Recorded> {
    let deadline = tokio::time::Instant::now() + SETTLE_DEADLINE;
    while up.requests().len() < up.hits() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let probe = format!("probe={index}");
    up.requests()
        .into_iter()
        .skip(before)
        .filter(|r| r.uri.query() != Some(probe.as_str()))
        .collect()
}

/// The value of header `name` in a response head as received.
fn response_header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

fn summary(records: &[Recorded]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{} {}", r.method, r.uri))
        .collect()
}

fn check_first(e: &Expect, first: &Recorded, problems: &mut Vec<String>) {
    if let Some(method) = &e.upstream_method
        && first.method.as_str() != method
    {
        problems.push(format!(
            "upstream method: expected {method}, got {}",
            first.method
        ));
    }
    let path = first.uri.path_and_query().map_or("", |p| p.as_str());
    if let Some(want) = &e.upstream_path
        && path != want
    {
        problems.push(format!("upstream path: expected {want:?}, got {path:?}"));
    }
    if let Some(want) = &e.upstream_body {
        match &first.body {
            Some(body) if body == want.as_bytes() => {}
            Some(body) => problems.push(format!(
                "upstream body: expected {want:?}, got {:?}",
                String::from_utf8_lossy(body)
            )),
            None => problems.push(format!(
                "upstream body: expected {want:?}, got a broken body"
            )),
        }
    }
    for (name, want) in &e.upstream_headers {
        let got = first
            .headers
            .get(name.as_str())
            .map(|v| v.to_str().unwrap_or("<binary>"));
        if got != Some(want.as_str()) {
            problems.push(format!(
                "upstream header {name}: expected {want:?}, got {got:?}"
            ));
        }
    }
    for name in &e.upstream_headers_absent {
        if let Some(v) = first.headers.get(name.as_str()) {
            problems.push(format!(
                "upstream header {name} should be absent, got {v:?}"
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_http1_case_file_holds() {
    let cases = load_cases();
    assert!(
        !cases.is_empty(),
        "no case files in {}",
        cases_dir().display()
    );
    let mut stage = Stage::start().await;
    let mut failures = Vec::new();
    for (index, (name, case)) in cases.iter().enumerate() {
        let case = match case {
            Ok(case) => case,
            Err(e) => {
                failures.push(format!("{name}: does not load: {e}"));
                continue;
            }
        };
        let verdict = run_case(&stage, index, case).await;
        if !verdict.problems.is_empty() {
            failures.push(format!(
                "{name} ({}):\n    {}",
                case.description,
                verdict.problems.join("\n    ")
            ));
        }
        if verdict.broken {
            // Later cases get a proxy and an upstream as fresh as the first one had.
            let Stage { env, .. } = stage;
            env.stop().await;
            stage = Stage::start().await;
        }
    }
    stage.env.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {} hostile HTTP/1 cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn repeat_expands_in_place() {
    assert_eq!(expand("a${repeat:3:b\r\n}c").unwrap(), "ab\r\nb\r\nb\r\nc");
    assert_eq!(expand("plain").unwrap(), "plain");
    assert!(expand("${repeat:x:b}").is_err());
}
