//! Upstreams as real deployments have them (issue 12): HTTPS backends with a private CA and
//! with mutual TLS, HTTP/2 over TLS and h2c, gRPC end to end through tonic's own client and
//! services, and routes that rewrite paths and edit headers.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use proxy_tests::backend::{Backend, BackendTls, GrpcBackend};
use proxy_tests::tls::TestCa;
use proxy_tests::{ADMIN_ON_PORT_0, Conn, MockUpstream, TestEnv, get, metric};

fn site(upstream: &str, extra: &str) -> String {
    format!(
        r#"
[[sites]]
hostnames = ["app.example"]
upstreams = ["{upstream}"]
{extra}
"#
    )
}

/// A TLS backend with a certificate from a private CA (for `names`), whose PEM is in `ca_file`;
/// with `mutual`, it requires client certificates from the same CA.
struct Private {
    ca: TestCa,
    dir: tempfile::TempDir,
    ca_file: std::path::PathBuf,
    backend: Backend,
}

impl Private {
    async fn start(name: &str, names: &[&str], alpn: &[&str], mutual: bool) -> Private {
        let ca = TestCa::new();
        let dir = tempfile::tempdir().unwrap();
        let cert = ca.issue(dir.path(), "backend", names);
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let backend = Backend::tls(
            name,
            BackendTls {
                certificate: &cert,
                alpn,
                client_ca: mutual.then_some(&ca),
            },
        )
        .await;
        Private {
            ca,
            dir,
            ca_file,
            backend,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_backend_with_a_private_ca_is_verified_and_failures_say_why() {
    let Private {
        ca: _ca,
        dir: _dir,
        ca_file,
        backend,
    } = Private::start("tls", &["backend.internal"], &["http/1.1"], false).await;

    // Verified against the CA, under the name the certificate has.
    let trusted = format!(
        r#"upstream_tls = {{ ca_file = "{}", server_name = "backend.internal" }}"#,
        ca_file.display()
    );
    let env = TestEnv::start_with(ADMIN_ON_PORT_0, &site(&backend.url(), &trusted)).await;
    let answer = get(env.http, "app.example", "/x").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, "backend tls HTTP/1.1");
    let seen = backend.seen();
    assert_eq!(seen[0].headers["host"], "app.example");
    assert_eq!(seen[0].uri, "/x");

    // The system's roots do not know the private CA: 502, and the reason is on record.
    env.write_config(&site(&backend.url(), ""));
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        proxy_tests::output_text(&out)
    );
    assert_eq!(get(env.http, "app.example", "/").await.status, 502);
    let metrics = env.metrics().await;
    let series = format!(
        "proxy_upstream_tls_failures_total{{upstream=\"{}\",reason=\"unknown_issuer\"}}",
        backend.url()
    );
    assert_eq!(metric(&metrics, &series), Some(1.0), "{metrics}");
    let status = env.proxyctl(&["status"]).await;
    let text = proxy_tests::output_text(&status);
    assert!(
        text.contains("LAST TLS ERROR") && text.contains("UnknownIssuer"),
        "{text}"
    );

    // The wrong name fails too, whatever CA.
    let wrong_name = format!(
        r#"upstream_tls = {{ ca_file = "{}", server_name = "other.internal" }}"#,
        ca_file.display()
    );
    env.write_config(&site(&backend.url(), &wrong_name));
    assert_eq!(env.proxyctl(&["reload"]).await.status.code(), Some(0));
    assert_eq!(get(env.http, "app.example", "/").await.status, 502);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_sends_the_client_certificate_the_backend_requires() {
    let Private {
        ca,
        dir,
        ca_file,
        backend,
    } = Private::start("mtls", &["127.0.0.1"], &["h2", "http/1.1"], true).await;
    let client = ca.issue(dir.path(), "client", &["proxy.internal"]);

    // Without a client certificate the backend ends the handshake.
    let no_client = format!(r#"upstream_tls = {{ ca_file = "{}" }}"#, ca_file.display());
    let env = TestEnv::start(&site(&backend.url(), &no_client)).await;
    assert_eq!(get(env.http, "app.example", "/").await.status, 502);

    let with_client = format!(
        r#"upstream_tls = {{ ca_file = "{}", client_cert_file = "{}", client_key_file = "{}" }}"#,
        ca_file.display(),
        client.cert_file.display(),
        client.key_file.display()
    );
    env.write_config(&site(&backend.url(), &with_client));
    assert_eq!(env.proxyctl(&["reload"]).await.status.code(), Some(0));
    let answer = get(env.http, "app.example", "/").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // `auto`: ALPN picked HTTP/2.
    assert_eq!(answer.body, "backend mtls HTTP/2.0");
    assert!(backend.seen().iter().all(|s| s.client_certificate));
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_reaches_backends_over_tls_and_with_prior_knowledge() {
    let Private {
        ca: _ca,
        dir: _dir,
        ca_file,
        backend: h2,
    } = Private::start("h2", &["127.0.0.1"], &["h2", "http/1.1"], false).await;
    let h2c = Backend::plain("h2c").await;
    let config = format!(
        r#"
[[sites]]
hostnames = ["tls.example"]
upstreams = ["{}"]
upstream_protocol = "http1"
upstream_tls = {{ ca_file = "{}" }}

[[sites.routes]]
path_prefix = "/h2/"
upstreams = ["{}"]
upstream_protocol = "h2"

[[sites]]
hostnames = ["plain.example"]
upstreams = ["{}"]
upstream_protocol = "h2c"
"#,
        h2.url(),
        ca_file.display(),
        h2.url(),
        h2c.url()
    );
    let env = TestEnv::start(&config).await;
    let mut conn = Conn::open(env.http).await;
    assert_eq!(
        conn.get("tls.example", "/").await.body,
        "backend h2 HTTP/1.1"
    );
    assert_eq!(
        conn.get("tls.example", "/h2/x").await.body,
        "backend h2 HTTP/2.0"
    );
    for _ in 0..3 {
        assert_eq!(
            conn.get("plain.example", "/").await.body,
            "backend h2c HTTP/2.0"
        );
    }
    // HTTP/2 carries the client's host as :authority.
    let seen = h2c.seen();
    assert_eq!(seen[0].uri.authority().unwrap().as_str(), "plain.example");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_goes_through_unary_streaming_and_errors_unchanged() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let backend = GrpcBackend::start().await;
    backend
        .health
        .set_service_status("svc", tonic_health::ServingStatus::Serving)
        .await;
    let env = TestEnv::start(&site(&backend.url(), r#"upstream_protocol = "h2c""#)).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", env.http))
        .unwrap()
        .origin("http://app.example".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel.clone());

    // Unary.
    let reply = health
        .check(HealthCheckRequest {
            service: "svc".into(),
        })
        .await
        .unwrap();
    assert_eq!(reply.get_ref().status(), ServingStatus::Serving);
    // The backend's error status (in trailers) arrives unchanged.
    let error = health
        .check(HealthCheckRequest {
            service: "unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::NotFound, "{error:?}");

    // Server streaming: a change on the backend arrives while the stream is open.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "svc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );
    backend
        .health
        .set_service_status("svc", tonic_health::ServingStatus::NotServing)
        .await;
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    // The stream survives a reload (and is not cut by the response timeout: it has its head).
    env.write_config(&site(
        &backend.url(),
        "upstream_protocol = \"h2c\"\nupstream_response_timeout = \"300ms\"",
    ));
    assert_eq!(env.proxyctl(&["reload"]).await.status.code(), Some(0));
    // Longer than the response timeout: what is measured is that the stream outlives it.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    backend
        .health
        .set_service_status("svc", tonic_health::ServingStatus::Serving)
        .await;
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    // Bidirectional streaming: server reflection, one request after another on one stream.
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut reflection = ServerReflectionClient::new(channel);
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    tx.send(ask.clone()).await.unwrap();
    let mut answers = reflection
        .server_reflection_info(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.message().await.unwrap().is_some());
    tx.send(ask).await.unwrap();
    assert!(answers.message().await.unwrap().is_some());
    drop(tx);
    assert!(answers.message().await.unwrap().is_none());

    // proxyd's own failures reach a gRPC client as gRPC statuses, not as HTML or text pages.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let dead_site = format!(
        r#"
[[sites]]
hostnames = ["dead.example"]
upstreams = ["{dead_url}"]
upstream_protocol = "h2c"
"#
    );
    env.write_config(&format!(
        "{}{dead_site}",
        site(&backend.url(), r#"upstream_protocol = "h2c""#)
    ));
    assert_eq!(env.proxyctl(&["reload"]).await.status.code(), Some(0));
    for (origin, code) in [
        ("http://dead.example", tonic::Code::Unavailable),
        ("http://nowhere.example", tonic::Code::Unimplemented),
    ] {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", env.http))
            .unwrap()
            .origin(origin.parse().unwrap())
            .connect()
            .await
            .unwrap();
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "svc".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{origin}: {status:?}");
        assert!(status.message().starts_with("proxyd: "), "{status:?}");
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_rewrite_paths_edit_headers_and_match_methods_and_headers() {
    let app = MockUpstream::start("app").await;
    let api = MockUpstream::start("api").await;
    let canary = MockUpstream::start("canary").await;
    let config = format!(
        r#"
[[sites]]
hostnames = ["app.example"]
upstreams = ["{app}"]
request_headers = {{ set = {{ "x-env" = "prod", "x-real-ip" = "{{client_ip}}" }}, remove = ["x-debug"] }}
response_headers = {{ remove = ["x-upstream"], add = {{ "x-edge" = "{{scheme}}://{{host}}" }} }}

[[sites.routes]]
path_prefix = "/api/"
upstreams = ["{api}"]
strip_prefix = true
request_headers = {{ add = {{ "x-route" = "api" }} }}

[[sites.routes]]
path_prefix = "/old/"
upstreams = ["{api}"]
rewrite = "/v2/"

[[sites.routes]]
path_prefix = "/"
upstreams = ["{canary}"]
match_headers = {{ "x-canary" = "1" }}

[[sites.routes]]
path_prefix = "/ping"
methods = ["GET", "HEAD"]
respond = {{ status = 200, body = "pong" }}
"#,
        app = app.url(),
        api = api.url(),
        canary = canary.url()
    );
    let env = TestEnv::start(&config).await;

    let mut conn = Conn::open(env.http).await;
    let request = http::Request::get("/api/users?page=2")
        .header("host", "app.example")
        .header("x-debug", "1")
        .body(proxy_tests::TestBody::default())
        .unwrap();
    let answer = conn.send(request).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.starts_with("upstream api"));
    assert_eq!(answer.headers["x-edge"], "http://app.example");
    let seen = &api.requests()[0];
    assert_eq!(seen.uri, "/users?page=2");
    assert_eq!(seen.headers["x-env"], "prod");
    assert_eq!(seen.headers["x-real-ip"], "127.0.0.1");
    assert_eq!(seen.headers["x-route"], "api");
    assert!(!seen.headers.contains_key("x-debug"));

    assert_eq!(conn.get("app.example", "/old/a/b?q=1").await.status, 200);
    assert_eq!(api.requests()[1].uri, "/v2/a/b?q=1");

    // Methods: GET answered by the route, POST falls through to the site's upstreams.
    assert_eq!(conn.get("app.example", "/ping").await.body, "pong");
    let post = http::Request::post("/ping")
        .header("host", "app.example")
        .body(proxy_tests::TestBody::default())
        .unwrap();
    assert!(conn.send(post).await.body.starts_with("upstream app"));

    // A header route comes before every path route.
    let canaried = http::Request::get("/api/users")
        .header("host", "app.example")
        .header("x-canary", "1")
        .body(proxy_tests::TestBody::default())
        .unwrap();
    assert!(
        conn.send(canaried)
            .await
            .body
            .starts_with("upstream canary")
    );
    assert_eq!(canary.requests()[0].uri, "/api/users");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_s_limits_and_timeout_override_the_site_s() {
    let app = MockUpstream::start("app").await;
    let config = format!(
        r#"
[[sites]]
hostnames = ["app.example"]
upstreams = ["{app}"]
upstream_response_timeout = "10s"

[[sites.routes]]
path_prefix = "/upload/"
upstreams = ["{app}"]
body_limit_bytes = 16

[[sites.routes]]
path_prefix = "/login"
upstreams = ["{app}"]
rate_limit = {{ requests_per_second = 1, burst = 2 }}

[[sites.routes]]
path_prefix = "/sleep/"
upstreams = ["{app}"]
upstream_response_timeout = "100ms"
"#,
        app = app.url()
    );
    let env = TestEnv::start(&config).await;
    let mut conn = Conn::open(env.http).await;
    let post = |path: &str, size: usize| {
        http::Request::post(path)
            .header("host", "app.example")
            .body(http_body_util::BodyExt::boxed(http_body_util::Full::new(
                bytes::Bytes::from(vec![b'x'; size]),
            )))
            .unwrap()
    };
    assert_eq!(conn.send(post("/upload/a", 16)).await.status, 200);
    assert_eq!(
        Conn::open(env.http)
            .await
            .send(post("/upload/a", 17))
            .await
            .status,
        413
    );
    // The site itself has no body limit this small.
    assert_eq!(
        Conn::open(env.http)
            .await
            .send(post("/other", 17))
            .await
            .status,
        200
    );

    // The route's quota: two at once, the third refused; the rest of the site is not limited.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(env.http, "app.example", "/login").await.status);
    }
    assert_eq!(statuses, [200, 200, 429]);
    for _ in 0..5 {
        assert_eq!(get(env.http, "app.example", "/").await.status, 200);
    }

    // The route's response timeout, far below the site's.
    assert_eq!(
        get(env.http, "app.example", "/sleep/2000").await.status,
        504
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_use_the_upstream_s_tls_settings() {
    let Private {
        ca: _ca,
        dir: _dir,
        ca_file,
        backend,
    } = Private::start("checked", &["127.0.0.1"], &["h2", "http/1.1"], false).await;
    let config = format!(
        "{}\n[sites.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n",
        site(
            &backend.url(),
            &format!(r#"upstream_tls = {{ ca_file = "{}" }}"#, ca_file.display())
        )
    );
    let env = TestEnv::start(&config).await;
    proxy_tests::eventually("a health check over TLS", || async {
        backend
            .seen()
            .iter()
            .any(|s| s.uri.path() == "/healthz")
            .then_some(())
    })
    .await;
    // Checks pass: the upstream keeps getting traffic.
    for _ in 0..3 {
        assert_eq!(get(env.http, "app.example", "/").await.status, 200);
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_upstream_connection_resumes_the_tls_session_of_an_earlier_one() {
    let Private {
        ca: _ca,
        dir: _dir,
        ca_file,
        backend,
    } = Private::start("resumed", &["127.0.0.1"], &["http/1.1"], false).await;
    let env = TestEnv::start(&site(
        &backend.url(),
        &format!(r#"upstream_tls = {{ ca_file = "{}" }}"#, ca_file.display()),
    ))
    .await;
    // The backend closes the connection after each answer: every request needs a new one.
    for _ in 0..3 {
        assert_eq!(get(env.http, "app.example", "/close").await.status, 200);
    }
    let resumed: Vec<bool> = backend.seen().iter().map(|s| s.resumed).collect();
    assert_eq!(
        resumed,
        [false, true, true],
        "a full handshake, then resumptions"
    );
    env.stop().await;
}
