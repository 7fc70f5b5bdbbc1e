//! TLS for the end-to-end tests: a test CA that issues site certificates into a directory (rcgen,
//! ring), and a client (tokio-rustls) that trusts only that CA, with control over SNI, ALPN and
//! protocol versions.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SerialNumber};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A 2048-bit RSA key, for tests only (ring cannot generate RSA keys). Not a secret.
pub const RSA_TEST_KEY: &str = include_str!("testdata/rsa-2048-test-only.key");

/// A CA that exists for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    next_serial: AtomicU64,
}

/// A certificate the CA issued, written to disk.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The leaf, to compare with what a server presented.
    pub der: CertificateDer<'static>,
}

impl Issued {
    /// `tls = { cert_file = "...", key_file = "..." }` for a site.
    pub fn site_tls(&self) -> String {
        format!(
            "tls = {{ cert_file = \"{}\", key_file = \"{}\" }}",
            self.cert_file.display(),
            self.key_file.display()
        )
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "proxy tests CA");
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            issuer: Issuer::new(params, key),
            pem,
            next_serial: AtomicU64::new(1),
        }
    }

    /// The CA's certificate, PEM: what a client trusts.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Issues an ECDSA P-256 certificate for `names` (a fresh serial each time) and writes the
    /// chain and key as `<stem>.crt` / `<stem>.key` in `dir`, replacing what was there.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str]) -> Issued {
        self.issue_with(dir, stem, names, KeyPair::generate().unwrap())
    }

    /// Like [`TestCa::issue`], with the RSA test key.
    pub fn issue_rsa(&self, dir: &Path, stem: &str, names: &[&str]) -> Issued {
        self.issue_with(dir, stem, names, KeyPair::from_pem(RSA_TEST_KEY).unwrap())
    }

    fn issue_with(&self, dir: &Path, stem: &str, names: &[&str], key: KeyPair) -> Issued {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from(serial));
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_file = dir.join(format!("{stem}.crt"));
        let key_file = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_file, format!("{}{}", cert.pem(), self.pem)).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        Issued {
            cert_file,
            key_file,
            der: cert.der().clone(),
        }
    }

    /// A client config trusting only this CA, offering `alpn`; TLS 1.2 only when `tls12_only`.
    pub fn client(&self, alpn: &[&str], tls12_only: bool) -> ClientConfig {
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }

    /// A client config that checks the certificate against this CA for the name `expected`
    /// whatever SNI it sends (or none, with `enable_sni = false`): to see which certificate a
    /// server falls back to.
    pub fn client_expecting(&self, expected: &str) -> ClientConfig {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(self.roots()), provider())
            .build()
            .unwrap();
        let verifier = ExpectName {
            inner,
            name: ServerName::try_from(expected.to_owned()).unwrap(),
        };
        let mut config = self.client(&["http/1.1"], false);
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(verifier));
        config
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap())
            .unwrap();
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Connects to `addr` and runs the client handshake, sending `server_name` as SNI (unless the
/// config disables SNI). A fresh config per call means no session resumption.
pub async fn connect(
    addr: std::net::SocketAddr,
    server_name: &str,
    config: ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The leaf certificate the server presented.
pub fn presented(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// The ALPN protocol negotiated, as text.
pub fn alpn(stream: &TlsStream<TcpStream>) -> Option<String> {
    stream
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned())
}

/// Verifies as for `name`, whatever name the connection was opened with.
#[derive(Debug)]
struct ExpectName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for ExpectName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
