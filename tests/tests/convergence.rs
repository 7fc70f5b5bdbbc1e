//! A reload converges or says why: a data plane out of sync is sent the serving version again by
//! the next reload (even one that changes nothing), and a snapshot far past tonic's 4 MiB
//! default still reaches every data plane.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use proxy_tests::tls::TestCa;
use proxy_tests::{HTTPS_ON_PORT_0, MockUpstream, TestEnv, eventually, get, output_text};

fn site(host: &str, upstream: &str) -> String {
    format!("[[sites]]\nhostnames = [\"{host}\"]\nupstreams = [\"{upstream}\"]\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unchanged_reload_resends_to_a_data_plane_behind_and_succeeds_only_when_it_applies() {
    let app = MockUpstream::start("app").await;
    // A port the test holds: a second listener there cannot be bound yet.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let env = TestEnv::start(&site("a.test", &app.url())).await;

    // The admin listener follows the config live: proxyd cannot bind the held port, so it
    // refuses the snapshot and serves on with the previous one.
    let with_admin = env.config_text(&site("a.test", &app.url())).replace(
        "[proxy]\n",
        &format!("[proxy]\nadmin_address = \"127.0.0.1:{port}\"\n"),
    );
    std::fs::write(&env.config_path, with_admin).unwrap();
    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("refused"), "{text}");
    let node = eventually("the data plane's refusal", || async {
        let status = env.status().await;
        status
            .data_planes
            .iter()
            .find(|p| p.last_nack_version == 2)
            .map(|p| p.node_id.clone())
    })
    .await;
    assert_eq!(get(env.http, "a.test", "/").await.status, 200, "serves on");

    // Before: "unchanged", exit 0, while it served nothing new. Now the version is sent again
    // and its answer reported.
    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("unchanged"), "{text}");
    assert!(text.contains("sent again"), "{text}");
    assert!(text.contains(&node), "{text}");
    assert!(text.contains("refused"), "{text}");

    // Once the port is free, the next reload converges: proxyd binds the admin listener.
    drop(held);
    let out = env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let admin = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(get(admin, "localhost", "/healthz").await.status, 200);
    let out = env.proxyctl(&["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));

    env.stop().await;
}

/// 12 sites, each chain padded with 1,500 copies of the CA certificate (under the 1 MiB a
/// certificate file may have): about 10 MiB of PEM in the snapshot.
fn big_sites(app: &MockUpstream, dir: &std::path::Path, ca: &TestCa) -> String {
    let mut body = String::new();
    let mut pem_bytes = 0;
    for i in 0..12 {
        let host = format!("s{i}.test");
        let issued = ca.issue(dir, &format!("s{i}"), &[&host]);
        let chain = std::fs::read_to_string(&issued.cert_file).unwrap();
        let padded = chain + &ca.pem().repeat(1500);
        pem_bytes += padded.len();
        std::fs::write(&issued.cert_file, padded).unwrap();
        body += &format!("{}{}\n", site(&host, &app.url()), issued.site_tls());
    }
    assert!(pem_bytes > 8 << 20, "{pem_bytes} bytes");
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_far_larger_than_4_mib_reaches_the_data_plane() {
    let app = MockUpstream::start("app").await;
    let certs = tempfile::tempdir().unwrap();
    let ca = TestCa::new();
    let body = big_sites(&app, certs.path(), &ca);
    let env = TestEnv::start_with_listeners(HTTPS_ON_PORT_0, &body).await;
    let status = env.status().await;
    assert!(
        status.data_planes.iter().all(|p| p.applied_version == 1),
        "{status:?}"
    );
    assert_eq!(get(env.http, "s3.test", "/").await.status, 308);
    env.stop().await;
}
