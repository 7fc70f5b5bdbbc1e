//! TLS session resumption, seen by an independent client: OpenSSL's `s_client` saves the
//! session proxyd gives it (TLS 1.3 tickets) and offers it on its next connection; proxyd counts
//! full and resumed handshakes apart (`proxy_tls_handshakes_total{kind}`), which the benchmark
//! harness reads to tell which rate it measured. With `proxy.tls_session_resumption = false`
//! (applied by a reload) every handshake is a full one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use std::process::Stdio;

use proxy_tests::tls::TestCa;
use proxy_tests::{
    ADMIN_ON_PORT_0, HTTPS_ON_PORT_0, MockUpstream, Setup, TestEnv, metric, output_text,
};
use tokio::io::AsyncWriteExt;

/// `openssl s_client` to `env`'s TLS listener for `secure.test`, one request, its output.
async fn s_client(env: &TestEnv, session: &std::path::Path, resume: bool) -> String {
    let address = env.https.unwrap().to_string();
    let mut command = tokio::process::Command::new("openssl");
    command
        .args([
            "s_client",
            "-connect",
            &address,
            "-servername",
            "secure.test",
        ])
        .args(["-tls1_3", "-ign_eof"])
        .arg(if resume { "-sess_in" } else { "-sess_out" })
        .arg(session)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .expect("the `openssl` command (Debian package openssl; scripts/test.sh installs it)");
    let mut stdin = child.stdin.take().unwrap();
    // A whole exchange, so that the tickets sent after the handshake are read before it ends.
    stdin
        .write_all(b"GET / HTTP/1.1\r\nHost: secure.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(proxy_tests::DEADLINE, child.wait_with_output())
        .await
        .expect("s_client ends when proxyd closes")
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_resumes_its_session_and_proxyd_counts_full_and_resumed_handshakes() {
    let app = MockUpstream::start("app").await;
    let ca = TestCa::new();
    let certs = tempfile::tempdir().unwrap();
    let cert = ca.issue(certs.path(), "secure", &["secure.test"]);
    let body = format!(
        "[[sites]]\nhostnames = [\"secure.test\"]\nupstreams = [\"{}\"]\n{}\n",
        app.url(),
        cert.site_tls()
    );
    let setup = Setup {
        listeners: HTTPS_ON_PORT_0.to_owned(),
        proxy_keys: ADMIN_ON_PORT_0.to_owned(),
        ..Setup::default()
    };
    let mut env = TestEnv::start_setup(setup, &body).await;
    let session = certs.path().join("session.pem");

    let first = s_client(&env, &session, false).await;
    assert!(first.contains("upstream app"), "{first}");
    assert!(first.contains("New, TLSv1.3"), "{first}");
    let second = s_client(&env, &session, true).await;
    assert!(second.contains("upstream app"), "{second}");
    assert!(second.contains("Reused, TLSv1.3"), "{second}");

    let metrics = env.metrics().await;
    assert_eq!(handshakes(&metrics, "full"), 1.0, "{metrics}");
    assert_eq!(handshakes(&metrics, "resumed"), 1.0, "{metrics}");
    // A session saved and not used yet (rustls's TLS 1.3 tickets are single-use): it would
    // resume now.
    let unused = certs.path().join("unused.pem");
    let third = s_client(&env, &unused, false).await;
    assert!(third.contains("New, TLSv1.3"), "{third}");

    // Resumption off, live: that session is refused.
    env.set_proxy_keys(&format!(
        "{ADMIN_ON_PORT_0}\ntls_session_resumption = false"
    ));
    env.write_config(&body);
    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("proxy.tls_session_resumption"), "{text}");
    let refused = s_client(&env, &unused, true).await;
    assert!(refused.contains("upstream app"), "{refused}");
    assert!(refused.contains("New, TLSv1.3"), "{refused}");
    let metrics = env.metrics().await;
    assert_eq!(handshakes(&metrics, "full"), 3.0, "{metrics}");
    assert_eq!(handshakes(&metrics, "resumed"), 1.0, "{metrics}");
}

fn handshakes(metrics: &str, kind: &str) -> f64 {
    metric(
        metrics,
        &format!("proxy_tls_handshakes_total{{kind=\"{kind}\"}}"),
    )
    .unwrap_or(-1.0)
}
