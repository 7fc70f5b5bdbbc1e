//! Let's Encrypt's test CA, Pebble (Debian package `pebble`; scripts/test.sh installs it), for
//! the ACME tests: Pebble and `pebble-challtestsrv` as its DNS (every name resolves to
//! 127.0.0.1) on free loopback ports, with an HTTPS certificate for Pebble made by a test CA,
//! and Pebble's validation pointed at proxyd's plain and TLS listeners.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::tls::{self, TestCa};
use crate::{Conn, DEADLINE};

/// Whether Pebble is installed; a test that needs it fails with this hint when it is not.
pub fn installed() -> bool {
    which("pebble") && which("pebble-challtestsrv")
}

fn which(binary: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(binary).is_file()))
}

/// How to run Pebble.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// Where Pebble's validator dials HTTP-01 challenges: proxyd's plain listener port.
    pub http_port: u16,
    /// Where it dials TLS-ALPN-01 challenges: proxyd's TLS listener port.
    pub tls_port: u16,
    /// `PEBBLE_WFE_NONCEREJECT`: the percentage of valid nonces Pebble rejects (0 by default
    /// here, so that only the test that wants bad nonces gets them).
    pub nonce_reject: u8,
    /// Pebble's own ports; `None`: free ones. A test that restarts Pebble passes the old ones.
    pub ports: Option<PebblePorts>,
}

/// The ports Pebble and its DNS listen on.
#[derive(Debug, Clone, Copy)]
pub struct PebblePorts {
    pub acme: u16,
    pub management: u16,
    pub dns: u16,
    pub challtestsrv_management: u16,
}

impl PebblePorts {
    /// Ports that are free now (TCP, and UDP too for DNS).
    pub fn free() -> PebblePorts {
        PebblePorts {
            acme: free_port(),
            management: free_port(),
            dns: free_dns_port(),
            challtestsrv_management: free_port(),
        }
    }
}

/// A running Pebble with its DNS; both are killed when it is dropped.
pub struct Pebble {
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    nonce_reject: u8,
    ca: TestCa,
    pebble: Option<tokio::process::Child>,
    dns: tokio::process::Child,
    pub ports: PebblePorts,
    /// The test CA's certificate, which Pebble's HTTPS chains to: `acme.ca_roots`.
    pub ca_roots: PathBuf,
}

impl Pebble {
    /// Starts Pebble and its DNS, waiting until Pebble's directory answers. With free ports
    /// (`options.ports` unset), a start whose Pebble or DNS exits at once (a port taken
    /// meanwhile by another test's connection) is tried again on other free ports.
    pub async fn start(options: PebbleOptions) -> Pebble {
        assert!(
            installed(),
            "pebble and pebble-challtestsrv are not on PATH: install the Debian package `pebble` \
             (scripts/test.sh does)"
        );
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let ports = options.ports.unwrap_or_else(PebblePorts::free);
            match Pebble::try_start(&options, ports).await {
                Ok(pebble) => return pebble,
                Err(why) if options.ports.is_none() => failures.push(why),
                Err(why) => panic!("Pebble did not start on {ports:?}: {why}"),
            }
        }
        panic!("Pebble did not start in {START_ATTEMPTS} attempts: {failures:#?}");
    }

    async fn try_start(options: &PebbleOptions, ports: PebblePorts) -> Result<Pebble, String> {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let issued = ca.issue(dir.path(), "pebble", &["localhost", "127.0.0.1"]);
        let ca_roots = dir.path().join("ca.pem");
        std::fs::write(&ca_roots, ca.pem()).unwrap();
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{}", ports.acme),
                "managementListenAddress": format!("127.0.0.1:{}", ports.management),
                "certificate": issued.cert_file,
                "privateKey": issued.key_file,
                "httpPort": options.http_port,
                "tlsPort": options.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        let config_path = dir.path().join("pebble-config.json");
        std::fs::write(&config_path, config.to_string()).unwrap();

        let dns_log = dir.path().join("challtestsrv.log");
        let mut dns = command("pebble-challtestsrv", &dns_log)
            .args([
                "-dns01",
                &format!("127.0.0.1:{}", ports.dns),
                "-management",
                &format!("127.0.0.1:{}", ports.challtestsrv_management),
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .spawn()
            .unwrap();
        let management = SocketAddr::from(([127, 0, 0, 1], ports.challtestsrv_management));
        let resolver = SocketAddr::from(([127, 0, 0, 1], ports.dns));
        // Both its management API and its DNS: with its DNS port taken, it logs the failure
        // and serves on without DNS.
        let up = until_serving(&mut dns, &dns_log, || async move {
            tokio::net::TcpStream::connect(management).await.ok()?;
            dns_answers(resolver).await.then_some(())
        })
        .await;
        if let Err(why) = up {
            let _ = dns.kill().await;
            return Err(format!("pebble-challtestsrv: {why}"));
        }
        let mut pebble = Pebble {
            _dir: dir,
            config_path,
            nonce_reject: options.nonce_reject,
            ca,
            pebble: None,
            dns,
            ports,
            ca_roots,
        };
        pebble.spawn_pebble().await.map(|()| pebble)
    }

    async fn spawn_pebble(&mut self) -> Result<(), String> {
        let log = self._dir.path().join("pebble.log");
        let mut child = command("pebble", &log)
            .args(["-config", &self.config_path.display().to_string()])
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.ports.dns)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", self.nonce_reject.to_string())
            .spawn()
            .unwrap();
        let this = &*self;
        let up = until_serving(&mut child, &log, || async {
            let answer =
                tokio::time::timeout(Duration::from_secs(2), this.get(this.ports.acme, "/dir"))
                    .await
                    .ok()??;
            (answer.status == 200).then_some(())
        })
        .await;
        match up {
            Ok(()) => {
                self.pebble = Some(child);
                Ok(())
            }
            Err(why) => {
                let _ = child.kill().await;
                Err(format!("pebble: {why}"))
            }
        }
    }

    /// Starts Pebble again after [`Pebble::kill`], on the same ports (with a new root CA and
    /// no memory of accounts: Pebble keeps nothing).
    pub async fn restart(&mut self) {
        self.kill().await;
        if let Err(why) = self.spawn_pebble().await {
            panic!("Pebble did not start again on {:?}: {why}", self.ports);
        }
    }

    /// GET `path` over HTTPS on Pebble's `port`, trusting the test CA.
    async fn get(&self, port: u16, path: &str) -> Option<crate::Answer> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = tls::connect(addr, "localhost", self.ca.client(&["http/1.1"], false))
            .await
            .ok()?;
        Some(Conn::over(stream).await.get("localhost", path).await)
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.ports.acme)
    }

    /// An `[acme]` section for this Pebble, with `challenge` ("http-01" or "tls-alpn-01").
    pub fn acme_section(&self, challenge: &str) -> String {
        acme_section(&self.directory_url(), &self.ca_roots, challenge)
    }

    /// Pebble's root CA (made anew at every start), from its management API: what a client
    /// verifies proxyd's ACME certificate against.
    pub async fn root(&self) -> RootCertStore {
        let answer = self
            .get(self.ports.management, "/roots/0")
            .await
            .expect("Pebble's management API answers");
        assert_eq!(answer.status, 200, "{answer:?}");
        let mut roots = RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(answer.body.as_bytes()) {
            roots.add(der.unwrap()).unwrap();
        }
        assert!(!roots.is_empty(), "no root in {:?}", answer.body);
        roots
    }

    /// Kills Pebble (its DNS keeps running), as a CA that went away.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.dns.start_kill();
        if let Some(child) = &mut self.pebble {
            let _ = child.start_kill();
        }
    }
}

/// An `[acme]` section for the CA at `directory_url`, trusting `ca_roots` for its HTTPS.
pub fn acme_section(directory_url: &str, ca_roots: &std::path::Path, challenge: &str) -> String {
    format!(
        "[acme]\ndirectory_url = \"{directory_url}\"\ncontact = [\"mailto:ops@example.com\"]\n\
         challenge = \"{challenge}\"\nca_roots = \"{}\"\n",
        ca_roots.display()
    )
}

/// How many times [`Pebble::start`] tries free ports.
const START_ATTEMPTS: usize = 3;

/// Polls `check` every 20 ms until it answers, while `child` runs: an error with the end of
/// `log` when the child exits first or [`DEADLINE`] passes.
async fn until_serving<F, Fut>(
    child: &mut tokio::process::Child,
    log: &std::path::Path,
    mut check: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if check().await.is_some() {
            return Ok(());
        }
        let tail = || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(10)..].join("\n")
        };
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited ({status}); its log ends:\n{}", tail()));
        }
        // A port taken meanwhile: it says so, and may serve on without it.
        if std::fs::read_to_string(log).is_ok_and(|text| text.contains("address already in use")) {
            return Err(format!("a port is taken; its log ends:\n{}", tail()));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "not serving after {DEADLINE:?}; its log ends:\n{}",
                tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether a DNS server answers an A query for `pebble.test` on `resolver` (UDP) within 200 ms.
async fn dns_answers(resolver: SocketAddr) -> bool {
    let Ok(socket) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
        return false;
    };
    // Id 0x5050, recursion desired, one question: pebble.test, type A, class IN.
    let query =
        b"\x50\x50\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06pebble\x04test\x00\x00\x01\x00\x01";
    if socket.send_to(query, resolver).await.is_err() {
        return false;
    }
    let mut answer = [0; 512];
    match tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut answer)).await {
        Ok(Ok((n, _))) => n >= 12 && answer[..2] == query[..2],
        _ => false,
    }
}

/// `binary` with its output in `log` (or this process's, with `PROXY_TESTS_LOG` set).
fn command(binary: &str, log: &std::path::Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(binary);
    match std::env::var_os("PROXY_TESTS_LOG") {
        Some(_) => {
            c.stdout(std::process::Stdio::inherit())
                .stderr(std::process::Stdio::inherit());
        }
        None => {
            let file = std::fs::File::create(log).unwrap();
            c.stdout(file.try_clone().unwrap()).stderr(file);
        }
    }
    c.kill_on_drop(true);
    c
}

/// A TCP port free now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free for both UDP and TCP (DNS uses both).
fn free_dns_port() -> u16 {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
        assert!(std::time::Instant::now() < deadline, "no free DNS port");
    }
}

/// What `Admin.Certificates` of `env`'s controld says about `site` (empty while it has none).
pub async fn certificate_status(env: &crate::TestEnv, site: &str) -> proto::v1::CertificateStatus {
    #[allow(clippy::unwrap_used, reason = "test helper")]
    let reply = env
        .admin()
        .await
        .certificates(proto::v1::CertificatesRequest {})
        .await
        .unwrap()
        .into_inner();
    reply
        .certificates
        .into_iter()
        .find(|c| c.site == site)
        .unwrap_or_default()
}

/// A TLS client (HTTP/1.1) that trusts `roots` alone: Pebble's, for what ACME issued.
pub fn client_config(roots: &RootCertStore) -> rustls::ClientConfig {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    #[allow(clippy::unwrap_used, reason = "test helper; the defaults are valid")]
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}
