//! TLS termination end to end: certificates from files picked by SNI from the current snapshot,
//! ALPN h2 and HTTP/1.1, TLS 1.2 and 1.3, ECDSA and RSA, certificate swaps on reload, 421 for
//! another site's host, plain HTTP redirected to https://, and bad pairs refused by reload.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy_tests::tls::{self, Issued, TestCa};
use proxy_tests::{Conn, HTTPS_ON_PORT_0, MockUpstream, TestEnv, get, output_text};

/// A `[[sites]]` table on `hostnames` with `cert` as its TLS, and `extra` keys.
fn site(hostnames: &[&str], upstream: &MockUpstream, cert: &Issued, extra: &str) -> String {
    let names: Vec<String> = hostnames.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "[[sites]]\nhostnames = [{}]\nupstreams = [\"{}\"]\n{}\n{extra}\n",
        names.join(", "),
        upstream.url(),
        cert.site_tls()
    )
}

/// Two TLS sites, `a.test` (upstream "a") and `b.test` (upstream "b"), each with its own
/// certificate from one test CA.
struct TwoSites {
    env: TestEnv,
    ca: TestCa,
    cert_a: Issued,
    cert_b: Issued,
    a: MockUpstream,
    b: MockUpstream,
    /// Holds the certificate files.
    _certs: tempfile::TempDir,
}

impl TwoSites {
    async fn start() -> TwoSites {
        let a = MockUpstream::start("a").await;
        let b = MockUpstream::start("b").await;
        let certs = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let cert_a = ca.issue(certs.path(), "a", &["a.test"]);
        let cert_b = ca.issue(certs.path(), "b", &["b.test"]);
        let body = format!(
            "{}{}",
            site(&["a.test"], &a, &cert_a, ""),
            site(&["b.test"], &b, &cert_b, "")
        );
        let env = TestEnv::start_with_listeners(HTTPS_ON_PORT_0, &body).await;
        TwoSites {
            env,
            ca,
            cert_a,
            cert_b,
            a,
            b,
            _certs: certs,
        }
    }
}

/// GET `path` for `host` over a fresh TLS connection with SNI `host`, HTTP/1.1.
async fn https_get(env: &TestEnv, ca: &TestCa, host: &str, path: &str) -> proxy_tests::Answer {
    let stream = tls::connect(env.https.unwrap(), host, ca.client(&["http/1.1"], false))
        .await
        .unwrap();
    Conn::over(stream).await.get(host, path).await
}

#[tokio::test(flavor = "multi_thread")]
async fn https_serves_exact_and_wildcard_names_with_a_certificate_the_ca_verifies() {
    let app = MockUpstream::start("app").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let cert = ca.issue(certs.path(), "secure", &["secure.test", "*.wild.test"]);
    let body = site(&["secure.test", "*.wild.test"], &app, &cert, "");
    let env = TestEnv::start_with_listeners(HTTPS_ON_PORT_0, &body).await;

    for host in ["secure.test", "a.wild.test"] {
        let stream = tls::connect(env.https.unwrap(), host, ca.client(&["http/1.1"], false))
            .await
            .unwrap();
        assert_eq!(tls::presented(&stream), cert.der);
        assert_eq!(tls::alpn(&stream).as_deref(), Some("http/1.1"));
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let answer = Conn::over(stream).await.get(host, "/hello").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.body.starts_with("upstream app"), "{answer:?}");
    }
    let seen = &app.requests()[0];
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert!(
        seen.headers["forwarded"]
            .to_str()
            .unwrap()
            .ends_with("proto=https"),
        "{:?}",
        seen.headers["forwarded"]
    );
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn alpn_negotiates_h2_and_http2_works_over_tls() {
    let app = MockUpstream::start("app").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let cert = ca.issue(certs.path(), "secure", &["secure.test"]);
    let env =
        TestEnv::start_with_listeners(HTTPS_ON_PORT_0, &site(&["secure.test"], &app, &cert, ""))
            .await;

    let config = ca.client(&["h2", "http/1.1"], false);
    let stream = tls::connect(env.https.unwrap(), "secure.test", config)
        .await
        .unwrap();
    assert_eq!(tls::alpn(&stream).as_deref(), Some("h2"));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let request = http::Request::get(format!("https://secure.test/h2/{i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.version(), http::Version::HTTP_2);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"upstream app"), "{body:?}");
    }
    assert_eq!(app.requests()[2].uri.path(), "/h2/2");
    assert_eq!(app.requests()[2].headers["x-forwarded-proto"], "https");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sni_picks_the_certificate_of_the_site() {
    // Every field bound: the upstreams and the certificate files must live to the end.
    let TwoSites {
        env,
        ca,
        cert_a,
        cert_b,
        a: _a,
        b: _b,
        _certs,
    } = TwoSites::start().await;

    for (host, cert, upstream) in [("a.test", &cert_a, "a"), ("b.test", &cert_b, "b")] {
        let stream = tls::connect(env.https.unwrap(), host, ca.client(&["http/1.1"], false))
            .await
            .unwrap();
        assert_eq!(tls::presented(&stream), cert.der, "SNI {host}");
        let answer = Conn::over(stream).await.get(host, "/").await;
        assert!(
            answer.body.starts_with(&format!("upstream {upstream}")),
            "{answer:?}"
        );
    }
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_sni_fails_the_handshake_unless_a_default_site_is_set() {
    let app = MockUpstream::start("app").await;
    let pending = MockUpstream::start("pending").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let cert = ca.issue(certs.path(), "secure", &["secure.test"]);
    // An ACME site has no certificate yet: plain HTTP only, its handshakes fail like an unknown
    // name's.
    let acme = format!(
        "[[sites]]\nhostnames = [\"pending.test\"]\nupstreams = [\"{}\"]\ntls = \"acme\"\n\n\
         [acme]\ndirectory_url = \"https://acme.invalid/directory\"\n",
        pending.url()
    );
    let body = |top: &str| format!("{top}\n{}{acme}", site(&["secure.test"], &app, &cert, ""));
    let env = TestEnv::start_with_listeners(HTTPS_ON_PORT_0, &body("")).await;
    let https = env.https.unwrap();

    for sni in ["unknown.test", "pending.test"] {
        let refused = tls::connect(https, sni, ca.client(&["http/1.1"], false)).await;
        let Err(error) = refused else {
            panic!("SNI {sni}: the handshake should fail");
        };
        let error = error.to_string();
        assert!(error.contains("UnrecognisedName"), "SNI {sni}: {error}");
    }
    let mut no_sni = ca.client_expecting("secure.test");
    no_sni.enable_sni = false;
    assert!(tls::connect(https, "secure.test", no_sni).await.is_err());
    let plain = get(env.http, "pending.test", "/").await;
    assert!(plain.body.starts_with("upstream pending"), "{plain:?}");

    env.write_config(&body("default_tls_site = \"secure.test\""));
    let out = env.proxyctl(&["reload"]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    for sni in ["unknown.test", "pending.test"] {
        let stream = tls::connect(https, sni, ca.client_expecting("secure.test"))
            .await
            .unwrap();
        assert_eq!(tls::presented(&stream), cert.der, "SNI {sni}");
    }
    let mut no_sni = ca.client_expecting("secure.test");
    no_sni.enable_sni = false;
    let stream = tls::connect(https, "secure.test", no_sni).await.unwrap();
    assert_eq!(tls::presented(&stream), cert.der, "no SNI");
    let answer = Conn::over(stream).await.get("secure.test", "/").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_certificate_applies_to_the_next_handshake_and_open_connections_keep_theirs() {
    let app = MockUpstream::start("app").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let old = ca.issue(certs.path(), "secure", &["secure.test"]);
    let body = site(&["secure.test"], &app, &old, "");
    let env = TestEnv::start_with_listeners(HTTPS_ON_PORT_0, &body).await;
    let https = env.https.unwrap();

    let stream = tls::connect(https, "secure.test", ca.client(&["http/1.1"], false))
        .await
        .unwrap();
    assert_eq!(tls::presented(&stream), old.der);
    let mut before = Conn::over(stream).await;
    assert_eq!(before.get("secure.test", "/1").await.status, 200);

    // Same files, new certificate (new serial and key): a renewal.
    let new = ca.issue(certs.path(), "secure", &["secure.test"]);
    assert_ne!(new.der, old.der);
    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert!(
        out.status.success() && text.contains("1 site modified: secure.test"),
        "{text}"
    );

    let stream = tls::connect(https, "secure.test", ca.client(&["http/1.1"], false))
        .await
        .unwrap();
    assert_eq!(tls::presented(&stream), new.der, "the next handshake");
    assert_eq!(
        Conn::over(stream)
            .await
            .get("secure.test", "/2")
            .await
            .status,
        200
    );
    // The connection from before the reload still works, on the certificate it negotiated.
    let again = before.get("secure.test", "/3").await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(app.requests().len(), 3);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_for_another_site_on_a_tls_connection_gets_421() {
    let TwoSites {
        env,
        ca,
        cert_a: _,
        cert_b: _,
        a,
        b,
        _certs,
    } = TwoSites::start().await;

    let stream = tls::connect(
        env.https.unwrap(),
        "a.test",
        ca.client(&["http/1.1"], false),
    )
    .await
    .unwrap();
    let mut conn = Conn::over(stream).await;
    let misdirected = conn.get("b.test", "/").await;
    assert_eq!(misdirected.status, 421, "{misdirected:?}");
    // A gRPC call too gets the 421 (not a gRPC status in a 200): browsers retry grpc-web on a
    // 421 alone.
    let mut grpc = proxy_tests::get_request("b.test", "/pkg.Service/Call");
    grpc.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc-web+proto"),
    );
    let misdirected = conn.send(grpc).await;
    assert_eq!(misdirected.status, 421, "{misdirected:?}");
    assert!(!misdirected.headers.contains_key("grpc-status"));
    assert!(b.requests().is_empty(), "nothing reached site b");
    assert!(a.requests().is_empty(), "nor site a");
    let right = conn.get("a.test", "/").await;
    assert_eq!(right.status, 200, "the connection stays usable");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_is_redirected_to_https_even_under_the_acme_prefix_and_opted_out_sites_are_not()
{
    let app = MockUpstream::start("app").await;
    let kept = MockUpstream::start("kept").await;
    let plain = MockUpstream::start("plain").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let cert = ca.issue(certs.path(), "secure", &["secure.test"]);
    let opted_out = ca.issue(certs.path(), "kept", &["kept.test"]);
    let body = format!(
        "{}{}[[sites]]\nhostnames = [\"plain.test\"]\nupstreams = [\"{}\"]\n",
        site(&["secure.test"], &app, &cert, ""),
        site(&["kept.test"], &kept, &opted_out, "https_redirect = false"),
        plain.url()
    );
    let env = TestEnv::start_with_listeners(HTTPS_ON_PORT_0, &body).await;

    let moved = get(env.http, "secure.test:8080", "/a/b?c=1").await;
    assert_eq!(moved.status, 308, "{moved:?}");
    assert_eq!(moved.headers["location"], "https://secure.test/a/b?c=1");
    // Only a challenge pending now skips the redirect (the ACME tests answer pending ones);
    // any other path under the prefix is an ordinary request.
    let challenge = get(env.http, "secure.test", "/.well-known/acme-challenge/token").await;
    assert_eq!(challenge.status, 308, "{challenge:?}");
    assert_eq!(
        challenge.headers["location"],
        "https://secure.test/.well-known/acme-challenge/token"
    );
    assert_eq!(app.requests().len(), 0, "nothing was proxied in plain HTTP");

    let answer = get(env.http, "kept.test", "/").await;
    assert!(answer.body.starts_with("upstream kept"), "{answer:?}");
    let answer = get(env.http, "plain.test", "/").await;
    assert!(answer.body.starts_with("upstream plain"), "{answer:?}");
    // The redirect's target answers.
    let secure = https_get(&env, &ca, "secure.test", "/a/b?c=1").await;
    assert_eq!(secure.status, 200, "{secure:?}");
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_pairs_are_rejected_by_reload_with_located_diagnostics_and_traffic_is_unchanged() {
    let app = MockUpstream::start("app").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let good = ca.issue(certs.path(), "good", &["secure.test"]);
    let env =
        TestEnv::start_with_listeners(HTTPS_ON_PORT_0, &site(&["secure.test"], &app, &good, ""))
            .await;

    // The key of another pair.
    let other = ca.issue(certs.path(), "other", &["secure.test"]);
    let mismatched = Issued {
        key_file: other.key_file.clone(),
        ..good.clone()
    };
    // A certificate that does not name one of the site's hostnames.
    let narrow = ca.issue(certs.path(), "narrow", &["secure.test"]);
    let cases = [
        (
            site(&["secure.test"], &app, &mismatched, ""),
            "does not match the certificate",
        ),
        (
            site(&["secure.test", "www.secure.test"], &app, &narrow, ""),
            "does not cover www.secure.test",
        ),
    ];
    for (body, problem) in cases {
        env.write_config(&body);
        let out = env.proxyctl(&["reload"]).await;
        let text = output_text(&out);
        assert_eq!(out.status.code(), Some(1), "{text}");
        let located = format!("{}:4:7: sites[0].tls: ", env.config_path.display());
        assert!(
            text.contains(&located) && text.contains(problem),
            "{text} should hold {located:?}…{problem:?}"
        );
        assert!(
            text.contains("reload rejected: version 1 is still serving"),
            "{text}"
        );
        assert!(!text.contains("PRIVATE KEY"), "{text}");

        let stream = tls::connect(env.https.unwrap(), "secure.test", ca.client(&[], false))
            .await
            .unwrap();
        assert_eq!(tls::presented(&stream), good.der, "still the good pair");
        let answer = Conn::over(stream).await.get("secure.test", "/").await;
        assert_eq!(answer.status, 200);
    }
    assert_eq!(env.status().await.control_plane.unwrap().version, 1);
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls12_works_with_ecdsa_and_rsa_certificates() {
    let a = MockUpstream::start("a").await;
    let b = MockUpstream::start("b").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let ecdsa = ca.issue(certs.path(), "ecdsa", &["ecdsa.test"]);
    let rsa = ca.issue_rsa(certs.path(), "rsa", &["rsa.test"]);
    let body = format!(
        "{}{}",
        site(&["ecdsa.test"], &a, &ecdsa, ""),
        site(&["rsa.test"], &b, &rsa, "")
    );
    let env = TestEnv::start_with_listeners(HTTPS_ON_PORT_0, &body).await;

    for (host, cert, tls12_only) in [
        ("ecdsa.test", &ecdsa, true),
        ("rsa.test", &rsa, true),
        ("rsa.test", &rsa, false),
    ] {
        let config = ca.client(&["h2", "http/1.1"], tls12_only);
        let stream = tls::connect(env.https.unwrap(), host, config)
            .await
            .unwrap();
        let expected = if tls12_only {
            rustls::ProtocolVersion::TLSv1_2
        } else {
            rustls::ProtocolVersion::TLSv1_3
        };
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        assert_eq!(tls::presented(&stream), cert.der, "{host}");
        assert_eq!(tls::alpn(&stream).as_deref(), Some("h2"));
    }
    let stream = tls::connect(
        env.https.unwrap(),
        "rsa.test",
        ca.client(&["http/1.1"], true),
    )
    .await
    .unwrap();
    let answer = Conn::over(stream).await.get("rsa.test", "/").await;
    assert!(answer.body.starts_with("upstream b"), "{answer:?}");
    env.stop().await;
}
