//! proxyd's admin listener end to end: health and readiness, and `/metrics` counting real
//! traffic by site and status class, across reloads that keep, remove or refuse things; and
//! controld's `/metrics`, whose listener follows `control.metrics_address` across reloads.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::convert::Infallible;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use proxy_tests::{
    ADMIN_ON_PORT_0, Conn, MockUpstream, TestEnv, eventually, get, metric, output_text, site,
    wait_until_refused,
};

/// `proxy_requests_total` of `site` and `class` on `text`.
fn requests(text: &str, site: &str, class: &str) -> Option<f64> {
    metric(
        text,
        &format!("proxy_requests_total{{site=\"{site}\",status_class=\"{class}\"}}"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_the_admin_listener_in_status() {
    let a = MockUpstream::start("a").await;
    let mut env = TestEnv::start_with(ADMIN_ON_PORT_0, &site("app.example", &a.url(), "")).await;
    let admin = env.admin.expect("the ACK reports the admin listener");
    assert_ne!(admin.port(), 0);

    let health = env.admin_get("/healthz").await;
    assert_eq!(
        (health.status.as_u16(), health.body.as_str()),
        (200, "ok\n")
    );
    assert_eq!(env.admin_get("/readyz").await.status, 200);
    assert_eq!(env.admin_get("/nothing-here").await.status, 404);
    let metrics = env.admin_get("/metrics").await;
    assert_eq!(
        metrics.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(metrics.body.ends_with("# EOF\n"), "{}", metrics.body);

    let out = env.proxyctl(&["status"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains(&format!("admin={admin}")), "{text}");

    env.stop_proxyd().await;
    assert!(
        tokio::net::TcpStream::connect(admin).await.is_err(),
        "the admin listener closes with proxyd"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_site_and_status_class() {
    let a = MockUpstream::start("a").await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let body = site("app.example", &a.url(), "")
        + &site("dead.example", &format!("http://{closed}"), "")
        + &site(
            "limited.example",
            &a.url(),
            "rate_limit = { requests_per_second = 1, burst = 1 }\nbody_limit_bytes = 8",
        );
    let env = TestEnv::start_with(ADMIN_ON_PORT_0, &body).await;

    let mut conn = Conn::open(env.http).await;
    for _ in 0..3 {
        assert_eq!(conn.get("app.example", "/").await.status, 200);
    }
    for host in ["unknown.example", "another.example"] {
        assert_eq!(conn.get(host, "/").await.status, 404);
    }
    assert_eq!(conn.get("dead.example", "/").await.status, 502);
    let upload = Request::post("/")
        .header("host", "limited.example")
        .body(
            Full::new(Bytes::from_static(b"more than eight bytes"))
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .unwrap();
    assert_eq!(Conn::open(env.http).await.send(upload).await.status, 413);
    assert_eq!(get(env.http, "limited.example", "/").await.status, 429);

    let text = env.metrics().await;
    assert_eq!(requests(&text, "app.example", "2xx"), Some(3.0), "{text}");
    assert_eq!(requests(&text, "-", "4xx"), Some(2.0), "{text}");
    assert_eq!(requests(&text, "dead.example", "5xx"), Some(1.0), "{text}");
    assert_eq!(
        requests(&text, "limited.example", "4xx"),
        Some(2.0),
        "{text}"
    );
    let series = |s: &str| metric(&text, s);
    assert_eq!(
        series(r#"proxy_upstream_errors_total{site="dead.example",kind="unreachable"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(r#"proxy_body_too_large_total{site="limited.example"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(r#"proxy_rate_limited_total{site="limited.example"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(r#"proxy_request_duration_seconds_count{site="app.example"}"#),
        Some(3.0)
    );
    assert_eq!(
        series(r#"proxy_request_duration_seconds_bucket{le="+Inf",site="app.example"}"#),
        Some(3.0)
    );
    assert_eq!(series("proxy_config_version"), Some(1.0));
    assert_eq!(series("proxy_config_last_apply_successful"), Some(1.0));
    assert!(
        !text.contains("unknown.example"),
        "a raw Host header never becomes a label: {text}"
    );
    // A response is in flight until hyper has dropped its body, which may trail the client's
    // read of the last byte by a moment.
    eventually("no request in flight", || async {
        (metric(&env.metrics().await, "proxy_requests_in_flight") == Some(0.0)).then_some(())
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_survive_reloads_and_a_removed_sites_series_disappear() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let env = TestEnv::start_with(
        ADMIN_ON_PORT_0,
        &(site("app.example", &a.url(), "") + &site("old.example", &a.url(), "")),
    )
    .await;
    for _ in 0..2 {
        assert_eq!(get(env.http, "app.example", "/").await.status, 200);
    }
    assert_eq!(get(env.http, "old.example", "/").await.status, 200);
    let before = env.metrics().await;
    assert_eq!(requests(&before, "old.example", "2xx"), Some(1.0));

    // app.example changes upstream, old.example goes, new.example comes.
    env.write_config(&(site("app.example", &b.url(), "") + &site("new.example", &b.url(), "")));
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let text = env.metrics().await;
    assert_eq!(metric(&text, "proxy_config_version"), Some(2.0), "{text}");
    assert_eq!(
        requests(&text, "app.example", "2xx"),
        Some(2.0),
        "counters survive the reload: {text}"
    );
    assert!(!text.contains("old.example"), "{text}");
    assert_eq!(
        metric(&text, "proxy_control_plane_connected"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"proxy_snapshots_total{result="applied"}"#),
        Some(2.0)
    );

    assert!(
        get(env.http, "app.example", "/")
            .await
            .body
            .starts_with("upstream b")
    );
    let text = env.metrics().await;
    assert_eq!(requests(&text, "app.example", "2xx"), Some(3.0), "{text}");

    // A snapshot proxyd refuses changes no counter but the refusal's own.
    env.write_config(&site("app.example", "http://upstream.invalid:8080", ""));
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let text = env.metrics().await;
    let series = |s: &str| metric(&text, s);
    assert_eq!(series("proxy_config_version"), Some(2.0), "{text}");
    assert_eq!(series("proxy_config_last_apply_successful"), Some(0.0));
    assert_eq!(
        series(r#"proxy_snapshots_total{result="refused"}"#),
        Some(1.0)
    );
    assert_eq!(requests(&text, "app.example", "2xx"), Some(3.0));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn controld_exports_reloads_by_result_and_its_data_planes() {
    let app = MockUpstream::start("app").await;
    let site = site("app.example", &app.url(), "");
    let env = TestEnv::start_with_control("metrics_address = \"127.0.0.1:0\"", &site).await;
    let address: std::net::SocketAddr = env
        .status()
        .await
        .control_plane
        .unwrap()
        .metrics_address
        .parse()
        .unwrap();
    let page = || async { get(address, "localhost", "/metrics").await.body };

    let text = page().await;
    assert_eq!(
        metric(&text, "proxy_control_config_version"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "proxy_control_data_planes"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "proxy_control_data_planes_in_sync"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"proxy_reloads_total{result="applied"}"#),
        Some(0.0),
        "{text}"
    );

    let out = env.proxyctl(&["reload", "--force"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    std::fs::write(&env.config_path, "broken = [").unwrap();
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));

    let text = page().await;
    assert_eq!(
        metric(&text, r#"proxy_reloads_total{result="applied"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"proxy_reloads_total{result="rejected"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "proxy_config_last_reload_successful"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "proxy_control_config_version"),
        Some(2.0),
        "{text}"
    );
    assert!(
        text.contains("proxy_config_last_reload_success_timestamp_seconds"),
        "{text}"
    );
    env.stop().await;
}

/// Writes `body` with `control.metrics_address` set to `address`, or without it.
fn write_with_metrics(env: &TestEnv, body: &str, address: Option<&str>) {
    let key = address.map_or_else(String::new, |a| format!("metrics_address = \"{a}\"\n"));
    let text = env
        .config_text(body)
        .replace("[control]\n", &format!("[control]\n{key}"));
    std::fs::write(&env.config_path, text).unwrap();
}

/// Where controld says it serves `/metrics` now.
async fn controld_metrics_address(env: &TestEnv) -> Option<std::net::SocketAddr> {
    let address = env.status().await.control_plane.unwrap().metrics_address;
    (!address.is_empty()).then(|| address.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn controld_metrics_are_added_moved_and_removed_by_reload_and_a_busy_address_refused() {
    let app = MockUpstream::start("app").await;
    let body = site("app.example", &app.url(), "");
    let env = TestEnv::start(&body).await;
    assert_eq!(controld_metrics_address(&env).await, None);
    let env_ref = &env;
    let reload = move || async move {
        let out = env_ref.proxyctl(&["reload"]).await;
        (out.status.code(), output_text(&out))
    };

    // Added by a reload, on a free port: served at once, with no restart asked for.
    write_with_metrics(&env, &body, Some("127.0.0.1:0"));
    let (code, text) = reload().await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("control.metrics_address"), "{text}");
    assert!(!text.contains("needs a restart"), "{text}");
    let first = controld_metrics_address(&env)
        .await
        .expect("a metrics listener");
    assert_ne!(first.port(), 0);
    let answer = get(first, "localhost", "/metrics").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        metric(&answer.body, "proxy_control_config_version"),
        Some(2.0),
        "{}",
        answer.body
    );

    // Moved: the new address answers, the old one stops accepting.
    write_with_metrics(&env, &body, Some("127.0.0.2:0"));
    let (code, text) = reload().await;
    assert_eq!(code, Some(0), "{text}");
    let second = controld_metrics_address(&env)
        .await
        .expect("a metrics listener");
    assert_eq!(second.ip(), std::net::Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(get(second, "localhost", "/metrics").await.status, 200);
    wait_until_refused(first).await;

    // An address in use: the reload is rejected naming the key, and nothing moves.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = busy.local_addr().unwrap();
    write_with_metrics(&env, &body, Some(&taken.to_string()));
    let (code, text) = reload().await;
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("control.metrics_address") && text.contains(&taken.to_string()),
        "{text}"
    );
    let status = env.status().await;
    assert_eq!(status.control_plane.unwrap().version, 3);
    assert_eq!(controld_metrics_address(&env).await, Some(second));
    assert_eq!(get(second, "localhost", "/metrics").await.status, 200);
    drop(busy);

    // Removed: nothing listens.
    write_with_metrics(&env, &body, None);
    let (code, text) = reload().await;
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(controld_metrics_address(&env).await, None);
    wait_until_refused(second).await;
    env.stop().await;
}
