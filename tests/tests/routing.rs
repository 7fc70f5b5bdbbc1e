//! Routing end to end: exact and wildcard hosts, longest path prefix, redirects and fixed
//! responses, and nothing outside the config ever dialed.

#![allow(clippy::unwrap_used, reason = "tests")]

use proxy_tests::{MockUpstream, TestEnv, get, raw_exchange};

#[tokio::test(flavor = "multi_thread")]
async fn hosts_and_path_prefixes_pick_the_route() {
    let web = MockUpstream::start("web").await;
    let api = MockUpstream::start("api").await;
    let v2 = MockUpstream::start("v2").await;
    let wild = MockUpstream::start("wild").await;
    let body = format!(
        r#"
[[sites]]
hostnames = ["example.com"]
upstreams = ["{web}"]

[[sites.routes]]
path_prefix = "/api"
upstreams = ["{api}"]

[[sites.routes]]
path_prefix = "/api/v2"
upstreams = ["{v2}"]

[[sites.routes]]
path_prefix = "/old"
redirect = {{ location = "https://{{host}}/new{{path}}", status = 301 }}

[[sites.routes]]
path_prefix = "/ping"
respond = {{ status = 200, body = "pong", headers = {{ content-type = "text/plain", x-served-by = "proxyd" }} }}

[[sites]]
hostnames = ["*.example.com"]
upstreams = ["{wild}"]

[[sites]]
hostnames = ["routes-only.example"]
[[sites.routes]]
path_prefix = "/only"
respond = {{ status = 204 }}
"#,
        web = web.url(),
        api = api.url(),
        v2 = v2.url(),
        wild = wild.url()
    );
    let env = TestEnv::start(&body).await;
    let body_of = |answer: proxy_tests::Answer| answer.body;

    assert!(body_of(get(env.http, "example.com", "/").await).starts_with("upstream web"));
    assert!(body_of(get(env.http, "example.com", "/api/users").await).starts_with("upstream api"));
    assert!(
        body_of(get(env.http, "example.com", "/api/v2/users").await).starts_with("upstream v2")
    );
    assert_eq!(
        api.requests()[0].uri.path(),
        "/api/users",
        "the path reaches the upstream unchanged"
    );

    let moved = get(env.http, "example.com", "/old/page?x=1").await;
    assert_eq!(moved.status, 301);
    assert_eq!(
        moved.headers["location"],
        "https://example.com/new/old/page?x=1"
    );

    let pong = get(env.http, "example.com", "/ping").await;
    assert_eq!((pong.status.as_u16(), pong.body.as_str()), (200, "pong"));
    assert_eq!(pong.headers["x-served-by"], "proxyd");

    // A wildcard matches one more label, and an exact name wins over it.
    assert!(body_of(get(env.http, "www.example.com", "/").await).starts_with("upstream wild"));
    assert_eq!(get(env.http, "a.b.example.com", "/").await.status, 404);

    assert_eq!(
        get(env.http, "routes-only.example", "/only/x").await.status,
        204
    );
    assert_eq!(
        get(env.http, "routes-only.example", "/elsewhere")
            .await
            .status,
        404
    );
    assert_eq!(web.hits() + api.hits() + v2.hits() + wild.hits(), 4);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_outside_the_config_is_ever_dialed() {
    let app = MockUpstream::start("app").await;
    // The would-be target of an open-proxy request: it must never see a connection.
    let target = MockUpstream::start("target").await;
    let env = TestEnv::start(&format!(
        "[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{}\"]\n",
        app.url()
    ))
    .await;
    let t = target.addr;

    let absolute = format!("GET http://{t}/ HTTP/1.1\r\nHost: {t}\r\nConnection: close\r\n\r\n");
    assert!(
        raw_exchange(env.http, absolute.as_bytes())
            .await
            .starts_with("HTTP/1.1 404")
    );
    let connect = format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\nConnection: close\r\n\r\n");
    assert!(
        raw_exchange(env.http, connect.as_bytes())
            .await
            .starts_with("HTTP/1.1 405")
    );
    let mismatch =
        "GET http://app.example/ HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n";
    assert!(
        raw_exchange(env.http, mismatch.as_bytes())
            .await
            .starts_with("HTTP/1.1 400")
    );
    let two_hosts =
        "GET / HTTP/1.1\r\nHost: app.example\r\nHost: other.example\r\nConnection: close\r\n\r\n";
    assert!(
        raw_exchange(env.http, two_hosts.as_bytes())
            .await
            .starts_with("HTTP/1.1 400")
    );
    let agreeing =
        "GET http://app.example/x HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n";
    assert!(
        raw_exchange(env.http, agreeing.as_bytes())
            .await
            .starts_with("HTTP/1.1 200")
    );

    assert_eq!(
        target.connections(),
        0,
        "the proxy dialed a host outside its config"
    );
    assert_eq!(app.hits(), 1, "only the agreeing request reaches the site");
    env.stop().await;
}
