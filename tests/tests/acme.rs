//! ACME end to end against Pebble: a site with `tls = "acme"` gets its certificate through
//! HTTP-01 and TLS-ALPN-01, proxyd serves it and a client verifies it against Pebble's root;
//! the account and certificates persist in the state directory; renewal swaps the certificate
//! under open connections; and the faults: no CA, a CA unreachable or untrusted (each named in
//! the error), bad nonces, a full state directory.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::v1 as pb;
use proxy_tests::pebble::{Pebble, PebbleOptions, certificate_status, client_config};
use proxy_tests::{
    Answer, Conn, HTTPS_ON_PORT_0, MockUpstream, Setup, TestClock, TestEnv, eventually, output_text,
};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const HOST: &str = "acme.test";

/// A proxyd and controld with a TLS listener, Pebble validating against them, and the site
/// `acme.test` switched to `tls = "acme"` by a reload.
struct AcmeTest {
    env: TestEnv,
    pebble: Pebble,
    app: MockUpstream,
    clock: Arc<TestClock>,
    challenge: &'static str,
}

fn site(app: &MockUpstream, tls: bool) -> String {
    format!(
        "[[sites]]\nhostnames = [\"{HOST}\"]\nupstreams = [\"{}\"]\n{}\n",
        app.url(),
        if tls { "tls = \"acme\"" } else { "" }
    )
}

impl AcmeTest {
    async fn start(challenge: &'static str, nonce_reject: u8) -> AcmeTest {
        AcmeTest::start_with(challenge, nonce_reject, true, |_| {}).await
    }

    /// Like [`AcmeTest::start`]; with `ca_up` false Pebble is stopped before the reload, and
    /// `before_reload` runs on the environment just before it.
    async fn start_with(
        challenge: &'static str,
        nonce_reject: u8,
        ca_up: bool,
        before_reload: impl FnOnce(&TestEnv),
    ) -> AcmeTest {
        let mut test = AcmeTest::prepare(challenge, nonce_reject).await;
        if !ca_up {
            test.pebble.kill().await;
        }
        before_reload(&test.env);
        test.write_config(true);
        let started = std::time::Instant::now();
        let out = test.env.proxyctl(&["reload"]).await;
        assert!(out.status.success(), "{}", output_text(&out));
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a reload does not wait for the CA"
        );
        test
    }

    /// proxyd and controld serving the site on plain HTTP, and Pebble: the site is not
    /// switched to ACME yet.
    async fn prepare(challenge: &'static str, nonce_reject: u8) -> AcmeTest {
        let app = MockUpstream::start("app").await;
        let clock = Arc::new(TestClock::default());
        let setup = Setup {
            listeners: HTTPS_ON_PORT_0.to_owned(),
            control_keys: "metrics_address = \"127.0.0.1:0\"".to_owned(),
            acme: Some(controld::acme::AcmeOptions {
                clock: clock.clone(),
                recheck: Duration::from_millis(100),
                backoff_initial: Duration::from_millis(300),
                backoff_max: Duration::from_secs(2),
                attempt_timeout: Duration::from_secs(60),
            }),
            ..Setup::default()
        };
        // Pebble must know proxyd's ports, so proxyd comes first, with the site on plain HTTP.
        let env = TestEnv::start_setup(setup, &site(&app, false)).await;
        let pebble = Pebble::start(PebbleOptions {
            http_port: env.http.port(),
            tls_port: env.https.unwrap().port(),
            nonce_reject,
            ports: None,
        })
        .await;
        AcmeTest {
            env,
            pebble,
            app,
            clock,
            challenge,
        }
    }

    fn write_config(&self, tls: bool) {
        let acme = self.pebble.acme_section(self.challenge);
        self.env
            .write_config(&format!("{}\n{acme}", site(&self.app, tls)));
    }

    /// GET / for `acme.test` over a fresh TLS connection verified against `roots`.
    async fn https_get(&self, roots: &RootCertStore) -> Option<Answer> {
        let stream = connect(&self.env, roots).await.ok()?;
        Some(Conn::over(stream).await.get(HOST, "/").await)
    }

    /// Waits until proxyd serves `acme.test` over HTTPS with a certificate Pebble's root
    /// verifies, and returns that certificate's serial.
    async fn wait_for_certificate(&self) -> String {
        let roots = self.pebble.root().await;
        let deadline = tokio::time::Instant::now() + proxy_tests::DEADLINE;
        while self.certificate().await.not_after_unix == 0 {
            let status = self.certificate().await;
            assert!(
                tokio::time::Instant::now() < deadline,
                "no certificate issued: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let answer = eventually("an ACME certificate served by proxyd", || async {
            self.https_get(&roots).await.filter(|a| a.status == 200)
        })
        .await;
        assert!(answer.body.starts_with("upstream app"), "{answer:?}");
        self.certificate().await.serial
    }

    /// What `Admin.Certificates` says about `acme.test`.
    async fn certificate(&self) -> pb::CertificateStatus {
        certificate_status(&self.env, HOST).await
    }

    /// controld's `/metrics` page.
    async fn controld_metrics(&self) -> String {
        let status = self.env.status().await;
        let address = status
            .control_plane
            .unwrap()
            .metrics_address
            .parse()
            .unwrap();
        let answer = proxy_tests::get(address, "localhost", "/metrics").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body
    }

    fn state(&self, path: &str) -> std::path::PathBuf {
        self.env.dir.path().join("state/acme").join(path)
    }
}

async fn connect(env: &TestEnv, roots: &RootCertStore) -> std::io::Result<TlsStream<TcpStream>> {
    proxy_tests::tls::connect(env.https.unwrap(), HOST, client_config(roots)).await
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread")]
async fn http01_issues_a_certificate_that_proxyd_serves_and_pebbles_root_verifies() {
    let mut t = AcmeTest::start("http-01", 0).await;
    let serial = t.wait_for_certificate().await;

    let status = t.certificate().await;
    assert_eq!(status.source, "acme");
    assert_eq!(status.names, vec![HOST.to_owned()]);
    assert!(status.last_error.is_empty(), "{status:?}");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(status.not_after_unix > now, "{status:?}");
    assert!(status.next_renewal_unix > now, "{status:?}");
    assert!(
        status.next_renewal_unix < status.not_after_unix,
        "{status:?}"
    );

    // Visible to operators: proxyctl certs, and controld's metrics.
    let out = t.env.proxyctl(&["certs"]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let text = output_text(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with(HOST) && l.contains("acme") && l.ends_with(" -")),
        "{text}"
    );
    let metrics = t.controld_metrics().await;
    let not_after = proxy_tests::metric(
        &metrics,
        "proxy_certificate_not_after_seconds{site=\"acme.test\"}",
    );
    assert_eq!(not_after, Some(status.not_after_unix as f64), "{metrics}");
    let renewed = proxy_tests::metric(
        &metrics,
        "proxy_certificate_renewals_total{result=\"success\"}",
    );
    assert_eq!(renewed, Some(1.0), "{metrics}");

    // Stored with tight permissions: one account, one certificate.
    assert_eq!(mode(&t.state("")), 0o700);
    let accounts: Vec<_> = std::fs::read_dir(t.state(""))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("account-"))
        .collect();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(mode(&accounts[0].path()), 0o600);
    assert_eq!(mode(&t.state("certs/acme.test.pem")), 0o600);
    let stored = std::fs::read_to_string(t.state("certs/acme.test.pem")).unwrap();
    assert!(stored.contains("BEGIN CERTIFICATE") && stored.contains("PRIVATE KEY"));

    // The challenge is gone from the snapshot once the certificate is in.
    let config = t
        .env
        .admin()
        .await
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    let snapshot = config.snapshot.unwrap();
    assert!(snapshot.acme_challenges.is_empty(), "{snapshot:?}");
    assert_eq!(snapshot.certificates[0].source, "acme");
    assert!(
        snapshot.certificates[0].key_pem.is_empty(),
        "GetConfig shows no key"
    );

    // A restarted controld serves the stored certificate from its first version on, without
    // asking the CA: Pebble is gone.
    let roots = t.pebble.root().await;
    t.pebble.kill().await;
    t.env.stop_controld().await;
    t.env.start_controld().await;
    assert_eq!(t.certificate().await.serial, serial);
    let answer = t.https_get(&roots).await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    t.env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_plane_that_refuses_the_config_still_answers_the_challenge() {
    // Issue 20 §3: challenges went out as config versions, so a data plane that refused the
    // config (an upstream its DNS cannot resolve) failed every issuance, for every site. Now
    // they travel apart from versions and are answered whatever config the data plane serves.
    let t = AcmeTest::prepare("http-01", 0).await;
    let broken = "[[sites]]\nhostnames = [\"broken.test\"]\n\
                  upstreams = [\"http://no-such-host.invalid:8080\"]\n";
    let acme = t.pebble.acme_section(t.challenge);
    t.env
        .write_config(&format!("{}\n{broken}\n{acme}", site(&t.app, true)));
    let out = t.env.proxyctl(&["reload"]).await;
    let text = output_text(&out);
    assert!(
        !out.status.success() && text.contains("does not resolve"),
        "{text}"
    );
    let issued = eventually("a certificate issued", || async {
        let status = t.certificate().await;
        (status.not_after_unix != 0).then_some(status)
    })
    .await;
    assert_eq!(issued.source, "acme");
    assert!(issued.last_error.is_empty(), "{issued:?}");
    // The data plane still refuses the config, and serves the one before it.
    let status = t.env.status().await;
    let plane = &status.data_planes[0];
    assert!(
        plane.last_nack_error.contains("does not resolve"),
        "{plane:?}"
    );
    assert!(!plane.in_sync, "{plane:?}");
    t.env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alpn01_issues_a_certificate_through_the_tls_listener() {
    let t = AcmeTest::start("tls-alpn-01", 0).await;
    t.wait_for_certificate().await;
    assert_eq!(t.certificate().await.source, "acme");
    // Validated on the TLS listener only: the plain one never saw an ACME request.
    assert!(
        t.app
            .requests()
            .iter()
            .all(|r| !r.uri.path().starts_with("/.well-known/")),
        "{:?}",
        t.app.requests()
    );
    // A handshake offering acme-tls/1 for a name without a pending challenge is refused.
    let mut config = client_config(&t.pebble.root().await);
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    assert!(
        proxy_tests::tls::connect(t.env.https.unwrap(), HOST, config)
            .await
            .is_err()
    );
    t.env.stop().await;
}

/// The leaf certificate of `stream`, DER.
fn leaf(stream: &TlsStream<TcpStream>) -> Vec<u8> {
    proxy_tests::tls::presented(stream).as_ref().to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn renewal_replaces_the_certificate_without_dropping_open_connections() {
    let t = AcmeTest::start("http-01", 0).await;
    let first = t.wait_for_certificate().await;
    let roots = t.pebble.root().await;
    let account = std::fs::read_dir(t.state(""))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with("account-"))
        .unwrap()
        .path();
    let account_before = std::fs::read(&account).unwrap();
    let stored_first = std::fs::read(t.state("certs/acme.test.pem")).unwrap();

    // A connection open across the renewal.
    let stream = connect(&t.env, &roots).await.unwrap();
    let old_leaf = leaf(&stream);
    let mut open = Conn::over(stream).await;
    assert_eq!(open.get(HOST, "/").await.status, 200);

    // Due for renewal: the clock moves to the renewal time controld reports.
    let due = t.certificate().await.next_renewal_unix;
    t.clock.set(UNIX_EPOCH + Duration::from_secs(due + 1));
    let renewed = eventually("a renewed certificate", || async {
        let status = t.certificate().await;
        (!status.serial.is_empty() && status.serial != first).then_some(status)
    })
    .await;
    t.clock.reset();
    assert!(renewed.last_error.is_empty(), "{renewed:?}");

    // New handshakes get the new certificate; the open connection goes on.
    let stream = connect(&t.env, &roots).await.unwrap();
    assert_ne!(
        leaf(&stream),
        old_leaf,
        "a new handshake gets the renewed certificate"
    );
    assert_eq!(Conn::over(stream).await.get(HOST, "/").await.status, 200);
    assert!(!open.is_closed());
    assert_eq!(
        open.get(HOST, "/").await.status,
        200,
        "the open connection survived"
    );

    // The account was made once; the renewed certificate is stored beside the previous one.
    assert_eq!(std::fs::read(&account).unwrap(), account_before);
    assert_ne!(
        std::fs::read(t.state("certs/acme.test.pem")).unwrap(),
        stored_first
    );
    assert!(t.state("certs/acme.test.prev.pem").exists());
    let metrics = t.controld_metrics().await;
    let renewals = proxy_tests::metric(
        &metrics,
        "proxy_certificate_renewals_total{result=\"success\"}",
    );
    assert!(renewals.unwrap() >= 2.0, "{metrics}");
    t.env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_ca_reloads_work_errors_show_and_retries_back_off_across_restarts() {
    let mut t = AcmeTest::start_with("http-01", 0, false, |_| {}).await;
    // The site serves on plain HTTP meanwhile; reloads keep working.
    let answer = proxy_tests::get(t.env.http, HOST, "/").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let failing = eventually("two failed attempts", || async {
        let status = t.certificate().await;
        (status.failures >= 2).then_some(status)
    })
    .await;
    assert!(
        failing.last_error.starts_with(&format!(
            "creating the ACME account: cannot connect to {}: connection refused",
            t.pebble.directory_url()
        )),
        "{failing:?}"
    );
    assert!(
        failing.next_renewal_unix >= failing.last_error_unix,
        "{failing:?}"
    );
    let out = t.env.proxyctl(&["reload", "--force"]).await;
    assert!(out.status.success(), "{}", output_text(&out));
    let out = t.env.proxyctl(&["certs"]).await;
    let text = output_text(&out);
    assert!(
        text.contains("none yet") && text.contains("failed)"),
        "{text}"
    );
    let out = t.env.proxyctl(&["status"]).await;
    assert!(
        output_text(&out).contains("warning: certificate of acme.test NOT issued yet"),
        "{}",
        output_text(&out)
    );

    // The back-off survives a restart: the failures are counted on, not from zero.
    let backoff = std::fs::read_to_string(t.state("backoff.json")).unwrap();
    assert!(backoff.contains(HOST), "{backoff}");
    t.env.stop_controld().await;
    t.env.start_controld().await;
    let status = t.certificate().await;
    assert!(status.failures >= failing.failures, "{status:?}");

    // The CA comes back: the next attempt succeeds.
    t.pebble.restart().await;
    t.wait_for_certificate().await;
    assert_eq!(t.certificate().await.failures, 0);
    t.env.stop().await;
}

/// A TLS server on 127.0.0.1 that presents `chain` and answers nothing: a CA endpoint whose
/// certificate controld's client refuses.
async fn tls_server(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    (address, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_or_untrusted_ca_is_named_in_the_error() {
    let app = MockUpstream::start("app").await;
    let setup = Setup {
        listeners: HTTPS_ON_PORT_0.to_owned(),
        acme: Some(controld::acme::AcmeOptions {
            clock: Arc::new(TestClock::default()),
            recheck: Duration::from_millis(100),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(500),
            attempt_timeout: Duration::from_secs(20),
        }),
        ..Setup::default()
    };
    let env = TestEnv::start_setup(setup, &site(&app, false)).await;
    let dir = env.dir.path();

    // A CA certificate served as the server's own: the mistake of pointing a test CA's
    // endpoint at the CA's certificate and key. And a proper leaf, from a CA not trusted.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let (ca_as_leaf, ca_server) = tls_server(
        vec![ca.der().clone()],
        PrivateKeyDer::Pkcs8(ca_key.serialize_der().into()),
    )
    .await;
    let leaf = proxy_tests::tls::TestCa::new().issue(dir, "leaf", &["127.0.0.1"]);
    let (untrusted, leaf_server) = tls_server(
        CertificateDer::pem_file_iter(&leaf.cert_file)
            .unwrap()
            .map(Result::unwrap)
            .collect(),
        PrivateKeyDer::from_pem_file(&leaf.key_file).unwrap(),
    )
    .await;
    let closed = proxy_tests::pebble::free_port();

    let cases = [
        (
            format!("https://127.0.0.1:{closed}/dir"),
            format!(
                "creating the ACME account: cannot connect to https://127.0.0.1:{closed}/dir: \
                 connection refused"
            ),
        ),
        (
            format!("https://{ca_as_leaf}/dir"),
            format!(
                "creating the ACME account: cannot connect to https://{ca_as_leaf}/dir: TLS: the \
                 server presents a CA certificate as its own"
            ),
        ),
        (
            format!("https://{untrusted}/dir"),
            format!(
                "creating the ACME account: cannot connect to https://{untrusted}/dir: TLS: the \
                 server's certificate is not trusted (unknown issuer); is acme.ca_roots the CA \
                 that signed it?"
            ),
        ),
    ];
    for (directory_url, expected) in cases {
        let acme = proxy_tests::pebble::acme_section(&directory_url, &ca_file, "http-01");
        env.write_config(&format!("{}\n{acme}", site(&app, true)));
        // A change of [acme] alone changes no snapshot: forced, so the next attempt uses it.
        let out = env.proxyctl(&["reload", "--force"]).await;
        assert!(out.status.success(), "{}", output_text(&out));
        let deadline = tokio::time::Instant::now() + proxy_tests::DEADLINE;
        loop {
            let status = certificate_status(&env, HOST).await;
            if status.last_error.starts_with(&expected) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {expected:?}, got {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = env.proxyctl(&["certs"]).await;
        let text = output_text(&out);
        assert!(text.contains(&expected), "{text}");
    }
    ca_server.abort();
    leaf_server.abort();
    env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ca_rejecting_half_of_the_nonces_still_issues() {
    let t = AcmeTest::start("http-01", 50).await;
    t.wait_for_certificate().await;
    t.env.stop().await;
}

/// A small tmpfs mounted at a path for the length of a test (needs root, as on CI).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Option<Tmpfs> {
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(path.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_directory_keeps_the_old_files_reports_and_a_later_retry_succeeds() {
    let mut mounted = None;
    let t = AcmeTest::start_with("http-01", 0, true, |env| {
        let acme = env.dir.path().join("state/acme");
        mounted = Tmpfs::mount(&acme, "512k");
        if mounted.is_some() {
            std::fs::create_dir(acme.join("certs")).unwrap();
        }
    })
    .await;
    let Some(_tmpfs) = mounted else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        t.env.stop().await;
        return;
    };
    let first = t.wait_for_certificate().await;
    let stored = std::fs::read(t.state("certs/acme.test.pem")).unwrap();

    // Fill the file system to the last byte.
    let filler = t.state("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
    }
    let due = t.certificate().await.next_renewal_unix;
    t.clock.set(UNIX_EPOCH + Duration::from_secs(due + 1));
    let failed = eventually("a failed renewal", || async {
        let status = t.certificate().await;
        (status.failures >= 1).then_some(status)
    })
    .await;
    assert!(
        failed.last_error.contains("No space left on device"),
        "{failed:?}"
    );
    assert_eq!(failed.serial, first, "the valid certificate keeps serving");
    assert_eq!(
        std::fs::read(t.state("certs/acme.test.pem")).unwrap(),
        stored
    );
    let roots = t.pebble.root().await;
    assert_eq!(t.https_get(&roots).await.unwrap().status, 200);

    // Room again: the next retry stores and serves a new certificate.
    std::fs::remove_file(&filler).unwrap();
    let renewed = eventually("a renewal after the disk has room", || async {
        let status = t.certificate().await;
        (status.serial != first && status.failures == 0).then_some(status)
    })
    .await;
    t.clock.reset();
    assert!(renewed.last_error.is_empty());
    assert_eq!(t.https_get(&roots).await.unwrap().status, 200);
    t.env.stop().await;
}
