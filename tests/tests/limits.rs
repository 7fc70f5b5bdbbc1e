//! Body and rate limits, end to end: refused before the upstream sees anything, and limiter
//! state that survives reloads which did not change it.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::convert::Infallible;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use proxy_tests::{Conn, MockUpstream, TestEnv, get, output_text};
use tokio_stream::wrappers::ReceiverStream;

fn site(upstream: &str, extra: &str) -> String {
    format!("[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{upstream}\"]\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_declared_length_over_the_limit_is_413_before_any_upstream_contact() {
    let a = MockUpstream::start("a").await;
    let env = TestEnv::start(&site(&a.url(), "body_limit_bytes = 1024")).await;

    let mut conn = Conn::open(env.http).await;
    let request = Request::post("/upload")
        .header("host", "app.example")
        .body(
            Full::new(Bytes::from(vec![b'x'; 1025]))
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .unwrap();
    let answer = conn.send(request).await;
    assert_eq!(answer.status, 413);
    assert_eq!(
        (a.hits(), a.connections()),
        (0, 0),
        "the upstream must not be contacted"
    );

    let request = Request::post("/upload")
        .header("host", "app.example")
        .body(
            Full::new(Bytes::from(vec![b'x'; 1024]))
                .map_err(|e: Infallible| match e {})
                .boxed(),
        )
        .unwrap();
    let answer = Conn::open(env.http).await.send(request).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(a.requests()[0].body.as_ref().unwrap().len(), 1024);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_body_that_crosses_the_limit_is_cut_and_answered_413() {
    let a = MockUpstream::start("a").await;
    let env = TestEnv::start(&site(&a.url(), "body_limit_bytes = \"1k\"")).await;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(8);
    let request = Request::post("/stream")
        .header("host", "app.example")
        .body(StreamBody::new(ReceiverStream::new(rx)).boxed())
        .unwrap();
    let sender = tokio::spawn(async move {
        // Chunked, no Content-Length: the limit can only be found while streaming.
        for _ in 0..8 {
            if tx
                .send(Ok(Frame::data(Bytes::from(vec![b'y'; 512]))))
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let answer = Conn::open(env.http).await.send(request).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    sender.abort();
    for r in a.requests() {
        assert!(
            r.body.as_ref().is_none_or(|b| b.len() <= 1024),
            "the upstream got more than the limit: {r:?}"
        );
    }
    assert_eq!(
        get(env.http, "app.example", "/").await.status,
        200,
        "the proxy still serves"
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rate_limits_answer_429_and_survive_reloads_that_did_not_change_them() {
    let a = MockUpstream::start("a").await;
    let limits = "[rate_limit]\nrequests_per_second = 1\nburst = 3\n";
    let env = TestEnv::start(&(site(&a.url(), "") + limits)).await;

    let mut conn = Conn::open(env.http).await;
    for i in 0..3 {
        assert_eq!(
            conn.get("app.example", "/").await.status,
            200,
            "request {i} is within the burst"
        );
    }
    let limited = conn.get("app.example", "/").await;
    assert_eq!(limited.status, 429);
    let retry_after: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(a.hits(), 3);

    // Another site appears; the limit did not change, so this client's budget is still spent.
    let other =
        "[[sites]]\nhostnames = [\"other.example\"]\nupstreams = [\"http://127.0.0.1:1\"]\n";
    env.write_config(&(site(&a.url(), "") + limits + other));
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(
        get(env.http, "app.example", "/").await.status,
        429,
        "limiter state survives the reload"
    );

    // A new quota is a new limiter.
    env.write_config(&(site(&a.url(), "") + "[rate_limit]\nrequests_per_second = 1\nburst = 5\n"));
    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("rate_limit 1/s burst 3 → 1/s burst 5"),
        "{text}"
    );
    assert_eq!(get(env.http, "app.example", "/").await.status, 200);

    // A site with its own limit has its own budget.
    env.write_config(
        &(site(
            &a.url(),
            "rate_limit = { requests_per_second = 1, burst = 1 }",
        )),
    );
    let out = env.proxyctl(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(get(env.http, "app.example", "/").await.status, 200);
    assert_eq!(get(env.http, "app.example", "/").await.status, 429);
    env.stop().await;
}
