//! gRPC calls and their deadlines (issue 19 #14): the route's response-head timeout does not
//! kill a quiet server stream (grpc-go sends its headers with the first message), a call's
//! deadline is its `grpc-timeout` capped by the route's timeout, answered DEADLINE_EXCEEDED,
//! and a deadline the client chose never ejects the upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::time::Duration;

use proxy_tests::backend::H2Backend;
use proxy_tests::{Answer, Conn, TestEnv, get_request};

fn grpc_call(timeout: Option<&'static str>) -> http::Request<proxy_tests::TestBody> {
    let mut request = get_request("grpc.example", "/pkg.Service/Watch");
    *request.method_mut() = http::Method::POST;
    let headers = request.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    if let Some(timeout) = timeout {
        headers.insert("grpc-timeout", http::HeaderValue::from_static(timeout));
    }
    request
}

async fn start(backend: &H2Backend, route_timeout: &str) -> TestEnv {
    TestEnv::start(&format!(
        "[[sites]]\nhostnames = [\"grpc.example\"]\nupstreams = [\"{}\"]\n\
         upstream_protocol = \"h2c\"\nupstream_response_timeout = \"{route_timeout}\"\n\
         passive_health = {{ consecutive_failures = 1, cooldown = \"60s\" }}\n",
        backend.url()
    ))
    .await
}

fn grpc_status(answer: &Answer) -> Option<&str> {
    answer
        .headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_stream_outlives_the_route_s_head_timeout() {
    let backend = H2Backend::start(100).await;
    let env = start(&backend, "300ms").await;
    let mut conn = Conn::open(env.http).await;
    let call = conn.send(grpc_call(None));
    tokio::pin!(call);
    // Well past the route's 300 ms, the call still waits for its first message.
    assert!(
        tokio::time::timeout(Duration::from_millis(1500), &mut call)
            .await
            .is_err(),
        "the head timeout ended a gRPC stream"
    );
    assert_eq!(backend.in_progress(), 1);
    backend.release();
    let answer = call.await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, "held");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_s_grpc_timeout_is_its_deadline_capped_by_the_route_s() {
    let backend = H2Backend::start(100).await;
    let env = start(&backend, "30s").await;
    let mut conn = Conn::open(env.http).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), conn.send(grpc_call(Some("200m"))))
        .await
        .expect("the call's own deadline was ignored");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        grpc_status(&answer),
        Some("4"),
        "DEADLINE_EXCEEDED: {answer:?}"
    );
    // The client's deadline is not the upstream's failure: with ejection after one failure,
    // the next call still reaches it.
    let second = conn.send(grpc_call(Some("200m")));
    let answer = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .unwrap();
    assert_eq!(
        grpc_status(&answer),
        Some("4"),
        "not UNAVAILABLE (14) from an ejected upstream: {answer:?}"
    );
    env.stop().await;

    // A longer grpc-timeout than the route allows: the route's timeout.
    let backend = H2Backend::start(100).await;
    let env = start(&backend, "300ms").await;
    let mut conn = Conn::open(env.http).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), conn.send(grpc_call(Some("1H"))))
        .await
        .expect("the route's cap was ignored");
    assert_eq!(grpc_status(&answer), Some("4"), "{answer:?}");
    env.stop().await;
}
