//! Upstream pools end to end: load-balancing distribution, passive ejection and recovery,
//! active health checks, 503 when nothing is healthy, safe retries, and health state carried
//! across reloads.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::{Duration, Instant};

use proxy_tests::{ADMIN_ON_PORT_0, MockUpstream, TestEnv, eventually, get, metric, output_text};

fn site(upstreams: &str, extra: &str) -> String {
    format!("[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [{upstreams}]\n{extra}\n")
}

fn quoted(upstreams: &[&MockUpstream]) -> String {
    upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.url()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which upstream answered: the mock's name from its body.
async fn who(env: &TestEnv) -> String {
    let answer = get(env.http, "app.example", "/").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body.split(' ').nth(1).unwrap_or_default().to_owned()
}

/// Like [`who`], whatever the status (while a sick upstream still answers 503 itself).
async fn who_any(env: &TestEnv) -> String {
    let answer = get(env.http, "app.example", "/").await;
    answer.body.split(' ').nth(1).unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_weighted_and_least_requests_spread_the_load() {
    let (a, b, c) = (
        MockUpstream::start("a").await,
        MockUpstream::start("b").await,
        MockUpstream::start("c").await,
    );
    let env = TestEnv::start(&site(&quoted(&[&a, &b, &c]), "")).await;
    for _ in 0..30 {
        who(&env).await;
    }
    assert_eq!((a.hits(), b.hits(), c.hits()), (10, 10, 10), "round robin");

    let weighted = format!("\"{}\", {{ url = \"{}\", weight = 3 }}", a.url(), b.url());
    env.write_config(&site(
        &weighted,
        "load_balancing = \"weighted_round_robin\"",
    ));
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let (a0, b0) = (a.hits(), b.hits());
    for _ in 0..40 {
        who(&env).await;
    }
    assert_eq!((a.hits() - a0, b.hits() - b0), (10, 30), "weights 1:3");

    env.write_config(&site(
        &quoted(&[&a, &b, &c]),
        "load_balancing = \"least_requests\"",
    ));
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let before = [a.hits(), b.hits(), c.hits()];
    for _ in 0..60 {
        who(&env).await;
    }
    let after = [a.hits(), b.hits(), c.hits()];
    for (i, (x, y)) in before.iter().zip(after).enumerate() {
        assert!(
            y - x >= 5,
            "least_requests starved upstream {i}: {before:?} → {after:?}"
        );
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_upstream_is_ejected_retried_around_and_recovers_after_the_cooldown() {
    let live = MockUpstream::start("live").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let upstreams = format!("\"http://{dead}\", \"{}\"", live.url());
    let extra = "retries = 1\n[sites.passive_health]\nconsecutive_failures = 2\ncooldown = \"1s\"";
    let env = TestEnv::start_with(ADMIN_ON_PORT_0, &site(&upstreams, extra)).await;

    // Connect failures are retried on the other upstream: no client sees them.
    for _ in 0..10 {
        assert_eq!(who(&env).await, "live");
    }
    let page = env.metrics().await;
    let dead_health = format!("proxy_upstream_healthy{{upstream=\"http://{dead}\"}}");
    assert_eq!(
        metric(&page, &dead_health),
        Some(0.0),
        "ejected after 2 failures:\n{page}"
    );
    let retries = metric(&page, "proxy_retries_total{site=\"app.example\"}").unwrap();
    assert!(
        (1.0..=3.0).contains(&retries),
        "an ejected upstream is not tried: {retries}"
    );

    // It comes back: after the cooldown it gets traffic again.
    let back = MockUpstream::start_on("back", dead).await;
    eventually("the recovered upstream to get traffic", || async {
        (who(&env).await == "back").then_some(())
    })
    .await;
    assert!(back.hits() >= 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn active_health_checks_take_an_upstream_out_and_back_and_survive_reloads() {
    let good = MockUpstream::start("good").await;
    let sick = MockUpstream::start("sick").await;
    let checks = "[sites.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\
                  healthy_threshold = 1\nunhealthy_threshold = 2";
    let env = TestEnv::start(&site(&quoted(&[&good, &sick]), checks)).await;
    eventually("both upstreams to serve", || async {
        (who(&env).await == "sick").then_some(())
    })
    .await;
    assert!(
        sick.requests().iter().any(|r| r.uri.path() == "/healthz"),
        "the check hits its path"
    );

    sick.set_status(503);
    eventually("the sick upstream to be taken out", || async {
        let mut all_good = true;
        for _ in 0..6 {
            all_good &= who_any(&env).await == "good";
        }
        all_good.then_some(())
    })
    .await;

    // A reload that keeps the upstream keeps its health: no traffic to it right after.
    let other =
        "[[sites]]\nhostnames = [\"other.example\"]\nupstreams = [\"http://127.0.0.1:1\"]\n";
    env.write_config(&(site(&quoted(&[&good, &sick]), checks) + other));
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let sick_hits = sick
        .requests()
        .iter()
        .filter(|r| r.uri.path() != "/healthz")
        .count();
    for _ in 0..6 {
        assert_eq!(who(&env).await, "good");
    }
    assert_eq!(
        sick.requests()
            .iter()
            .filter(|r| r.uri.path() != "/healthz")
            .count(),
        sick_hits
    );

    sick.set_status(200);
    eventually("the sick upstream to be back", || async {
        (who(&env).await == "sick").then_some(())
    })
    .await;
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_healthy_is_503_at_once_and_bodies_are_never_sent_twice() {
    let sick = MockUpstream::start("sick").await;
    sick.set_status(500);
    let checks = "[sites.health_check]\npath = \"/\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 1";
    let env = TestEnv::start(&site(&quoted(&[&sick]), checks)).await;
    eventually("503 once the only upstream is unhealthy", || async {
        let started = Instant::now();
        let answer = get(env.http, "app.example", "/").await;
        (answer.status == 503 && started.elapsed() < Duration::from_secs(1)).then_some(())
    })
    .await;
    env.stop().await;

    // A POST with a body to a dead upstream is not retried (the body is gone); one without is.
    let live = MockUpstream::start("live").await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let upstreams = format!("\"http://{dead}\", \"{}\"", live.url());
    let env = TestEnv::start(&site(
        &upstreams,
        "retries = 1\n[sites.passive_health]\nconsecutive_failures = 0",
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let raw = "POST /p HTTP/1.1\r\nHost: app.example\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        statuses.push(proxy_tests::raw_exchange(env.http, raw.as_bytes()).await[9..12].to_owned());
    }
    assert!(statuses.contains(&"502".to_owned()), "{statuses:?}");
    assert!(statuses.contains(&"200".to_owned()), "{statuses:?}");
    for _ in 0..4 {
        let raw = "POST /p HTTP/1.1\r\nHost: app.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert!(
            proxy_tests::raw_exchange(env.http, raw.as_bytes())
                .await
                .starts_with("HTTP/1.1 200")
        );
    }
    assert!(live.requests().iter().all(|r| r.body.is_some()));
    env.stop().await;
}
