//! Metrics as `/metrics` shows them: series, labels and what a forgotten site loses.

use super::*;

fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
}

#[test]
fn status_classes() {
    let class = |code: u16| status_class(StatusCode::from_u16(code).unwrap());
    assert_eq!(class(100), "1xx");
    assert_eq!(class(200), "2xx");
    assert_eq!(class(304), "3xx");
    assert_eq!(class(404), "4xx");
    assert_eq!(class(429), "4xx");
    assert_eq!(class(599), "5xx");
    assert_eq!(class(600), "other");
    assert_eq!(class(999), "other");
}

#[test]
fn requests_are_counted_by_site_and_class_with_no_site_as_dash() {
    let m = Metrics::new();
    let ms = Duration::from_millis(3);
    m.request_finished(Some("a.example"), StatusCode::OK, ms);
    m.request_finished(Some("a.example"), StatusCode::CREATED, ms);
    m.request_finished(None, StatusCode::NOT_FOUND, ms);
    m.request_failed(Some("a.example"), Failure::Upstream("timeout"));
    let text = m.encode().unwrap();
    let get = |series: &str| sample(&text, series);
    assert_eq!(
        get(r#"proxy_requests_total{site="a.example",status_class="2xx"}"#),
        Some("2")
    );
    assert_eq!(
        get(r#"proxy_requests_total{site="-",status_class="4xx"}"#),
        Some("1")
    );
    assert_eq!(
        get(r#"proxy_upstream_errors_total{site="a.example",kind="timeout"}"#),
        Some("1")
    );
    assert_eq!(
        get(r#"proxy_request_duration_seconds_bucket{le="0.005",site="a.example"}"#),
        Some("2")
    );
    assert_eq!(get(r#"proxy_snapshots_total{result="refused"}"#), Some("0"));
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn a_forgotten_site_loses_every_series_and_others_keep_theirs() {
    let m = Metrics::new();
    for site in ["gone.example", "kept.example"] {
        m.request_finished(Some(site), StatusCode::OK, Duration::ZERO);
        m.request_finished(Some(site), StatusCode::BAD_GATEWAY, Duration::ZERO);
        m.request_failed(Some(site), Failure::RateLimited);
        m.request_failed(Some(site), Failure::BodyTooLarge);
        m.request_failed(Some(site), Failure::Upstream("failed"));
    }
    m.forget_site("gone.example");
    let text = m.encode().unwrap();
    assert!(!text.contains("gone.example"), "{text}");
    assert_eq!(
        sample(
            &text,
            r#"proxy_requests_total{site="kept.example",status_class="5xx"}"#
        ),
        Some("1")
    );
    assert_eq!(
        sample(&text, r#"proxy_rate_limited_total{site="kept.example"}"#),
        Some("1")
    );
}

#[test]
fn snapshots_set_the_config_gauges() {
    let m = Metrics::new();
    m.snapshot_applied(7);
    m.snapshot_refused();
    let text = m.encode().unwrap();
    assert_eq!(sample(&text, "proxy_config_version"), Some("7"));
    assert_eq!(
        sample(&text, "proxy_config_last_apply_successful"),
        Some("0")
    );
    assert_eq!(
        sample(&text, r#"proxy_snapshots_total{result="applied"}"#),
        Some("1")
    );
    assert_eq!(
        sample(&text, r#"proxy_snapshots_total{result="refused"}"#),
        Some("1")
    );
    let stamp: f64 = sample(&text, "proxy_config_last_apply_success_timestamp_seconds")
        .unwrap()
        .parse()
        .unwrap();
    assert!(stamp > 1.6e9, "{stamp}");
}

#[tokio::test]
async fn in_flight_lasts_until_the_body_is_done() {
    let m = Metrics::new();
    let guard = m.in_flight();
    assert_eq!(m.in_flight.get(), 1);
    let response = until_body_ends(
        guard,
        Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
            b"not found",
        ))),
    );
    assert_eq!(
        m.in_flight.get(),
        1,
        "the head alone does not end the request"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(!body.is_empty());
    assert_eq!(m.in_flight.get(), 0);
}
