//! Hostile input on a TLS listener: fragmented and trickled ClientHellos, garbage, plaintext
//! HTTP, truncated and stalled handshakes, missing and unknown SNI, and hellos that offer only
//! versions older than TLS 1.2. Each gets a handshake, an alert or a prompt close, never
//! anything else, and a normal HTTPS client is served afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proxy_tests::tls::{self, Issued, TestCa};
use proxy_tests::{Conn, HTTPS_ON_PORT_0, MockUpstream, TestEnv};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// proxyd's fixed TLS handshake deadline (`proxyd::tls::HANDSHAKE_TIMEOUT`, documented in
/// docs/configuration.md, "TLS listeners").
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

/// How soon a connection the proxy has given up on must be closed.
const PROMPTLY: Duration = Duration::from_secs(2);

/// TLS record content types.
const HANDSHAKE: u8 = 0x16;
const ALERT: u8 = 0x15;

/// Alert descriptions (RFC 8446 §6).
const ILLEGAL_PARAMETER: u8 = 47;
const PROTOCOL_VERSION: u8 = 70;
const UNRECOGNIZED_NAME: u8 = 112;

/// Two TLS sites, `a.test` and `b.test`, on one upstream, each with its own certificate.
struct Fixture {
    env: TestEnv,
    ca: TestCa,
    cert_a: Issued,
    cert_b: Issued,
    _app: MockUpstream,
    _certs: tempfile::TempDir,
}

impl Fixture {
    /// With `default_site`, `default_tls_site` names `b.test`.
    async fn start(default_site: bool) -> Fixture {
        let app = MockUpstream::start("app").await;
        let certs = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let cert_a = ca.issue(certs.path(), "a", &["a.test"]);
        let cert_b = ca.issue(certs.path(), "b", &["b.test"]);
        let site = |host: &str, cert: &Issued| {
            format!(
                "[[sites]]\nhostnames = [\"{host}\"]\nupstreams = [\"{}\"]\n{}\n",
                app.url(),
                cert.site_tls()
            )
        };
        let top = if default_site {
            "default_tls_site = \"b.test\"\n"
        } else {
            ""
        };
        let body = format!(
            "{top}{}{}",
            site("a.test", &cert_a),
            site("b.test", &cert_b)
        );
        let env = TestEnv::start_with_listeners(HTTPS_ON_PORT_0, &body).await;
        Fixture {
            env,
            ca,
            cert_a,
            cert_b,
            _app: app,
            _certs: certs,
        }
    }

    fn https(&self) -> SocketAddr {
        self.env.https.unwrap()
    }

    /// A normal HTTPS GET for `a.test` through `addr` (the listener, or a relay in front of it)
    /// is answered by the upstream.
    async fn assert_serves_through(&self, addr: SocketAddr) {
        let stream = tls::connect(addr, "a.test", self.ca.client(&["http/1.1"], false))
            .await
            .expect("a normal handshake succeeds");
        assert_eq!(tls::presented(&stream), self.cert_a.der);
        let answer = Conn::over(stream).await.get("a.test", "/after").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert!(answer.body.starts_with("upstream app"), "{answer:?}");
    }

    async fn assert_serves(&self) {
        self.assert_serves_through(self.https()).await;
    }

    /// The exact ClientHello record(s) a well-behaved rustls client sends for `sni`.
    fn client_hello(&self, sni: &str) -> Vec<u8> {
        let config = Arc::new(self.ca.client(&["h2", "http/1.1"], false));
        let name = ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(config, name).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }
}

/// What a connection received, and whether and when the proxy closed it.
#[derive(Debug)]
struct Reply {
    bytes: Vec<u8>,
    /// EOF or a reset, as opposed to still open when the wait ended.
    closed: bool,
    /// From the start of the wait to the close (or the end of the wait).
    after: Duration,
}

impl Reply {
    /// The alert descriptions, when everything received is plaintext alert records (none at
    /// all is fine too); `None` when anything else came back.
    fn only_alerts(&self) -> Option<Vec<u8>> {
        let mut rest = self.bytes.as_slice();
        let mut alerts = Vec::new();
        while !rest.is_empty() {
            match rest {
                [ALERT, 0x03, _, 0x00, 0x02, _level, description, tail @ ..] => {
                    alerts.push(*description);
                    rest = tail;
                }
                _ => return None,
            }
        }
        Some(alerts)
    }

    /// Closed within [`PROMPTLY`], with nothing but alerts (at most one) on the wire.
    fn assert_refused_promptly(&self, what: &str) {
        assert!(
            self.closed && self.after < PROMPTLY,
            "{what}: not closed promptly: {self:?}"
        );
        let alerts = self.only_alerts();
        assert!(
            alerts.is_some(),
            "{what}: more than an alert came back: {self:?}"
        );
        let alerts = alerts.unwrap();
        assert!(alerts.len() <= 1, "{what}: {alerts:?}");
    }

    /// Closed within [`PROMPTLY`] after exactly one fatal alert `description`.
    fn assert_alert(&self, what: &str, description: u8) {
        self.assert_refused_promptly(what);
        assert_eq!(
            self.only_alerts(),
            Some(vec![description]),
            "{what}: {self:?}"
        );
        assert_eq!(self.bytes[5], 2, "{what}: the alert is fatal");
    }
}

/// Reads from `stream` until the peer closes it or `wait` passes.
async fn read_until_closed(stream: &mut TcpStream, wait: Duration) -> Reply {
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(wait, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    Reply {
        bytes,
        closed,
        after: started.elapsed(),
    }
}

/// Sends `raw` on a fresh connection to `addr` and waits (up to 5 s) for the proxy to close it.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The proxy may close before reading everything; a failed write is its answer too.
    let _ = stream.write_all(raw).await;
    read_until_closed(&mut stream, Duration::from_secs(5)).await
}

/// How a relay delivers the client's first TLS record (its ClientHello) to the proxy.
#[derive(Debug, Clone, Copy)]
enum Delivery {
    /// Re-framed as one TLS record per byte of handshake data, sent at once.
    OneByteRecords,
    /// Unchanged, one TCP write (and segment: `TCP_NODELAY`, a pause between) per byte.
    OneBytePerWrite,
}

/// A one-connection TCP relay to `target` that reshapes the first record from the client as
/// `delivery` says and passes everything else through untouched.
async fn relay(target: SocketAddr, delivery: Delivery) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut server = TcpStream::connect(target).await.unwrap();
        server.set_nodelay(true).unwrap();
        let (record, rest) = first_record(&mut client).await;
        match delivery {
            Delivery::OneByteRecords => {
                server.write_all(&one_byte_records(&record)).await.unwrap();
            }
            Delivery::OneBytePerWrite => {
                for byte in &record {
                    server.write_all(&[*byte]).await.unwrap();
                    // A slow client, not synchronisation: gives each byte its own segment.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        server.write_all(&rest).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    });
    addr
}

/// Reads one whole TLS record from `stream`: the record, and whatever came after it.
async fn first_record(stream: &mut TcpStream) -> (Vec<u8>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if buf.len() >= 5 {
            let len = 5 + usize::from(u16::from_be_bytes([buf[3], buf[4]]));
            if buf.len() >= len {
                let rest = buf.split_off(len);
                return (buf, rest);
            }
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the client closed before its first record");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// `record` re-framed as one record per payload byte, with the same type and version.
fn one_byte_records(record: &[u8]) -> Vec<u8> {
    let (header, payload) = record.split_at(5);
    assert_eq!(header[0], HANDSHAKE);
    payload
        .iter()
        .flat_map(|byte| [header[0], header[1], header[2], 0, 1, *byte])
        .collect()
}

/// `len` bytes from a fixed xorshift sequence: random-looking, the same on every run.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// What a hand-built ClientHello offers.
struct Hello<'a> {
    record_version: u16,
    legacy_version: u16,
    /// The supported_versions extension (TLS 1.3 style), when sent.
    supported_versions: Option<&'a [u16]>,
    sni: Option<&'a [u8]>,
    cipher_suites: &'a [u16],
}

/// ECDHE and RSA-key-exchange CBC and GCM suites every TLS 1.0–1.2 client offers.
const OLD_SUITES: [u16; 6] = [0xc013, 0xc014, 0xc009, 0x002f, 0x0035, 0xc02f];

/// A ClientHello record built by hand, for hellos a well-behaved client cannot send.
fn hand_built(hello: &Hello<'_>) -> Vec<u8> {
    let mut extensions = Vec::new();
    if let Some(name) = hello.sni {
        let mut entry = vec![0u8];
        push_u16_prefixed(&mut entry, name);
        let mut list = Vec::new();
        push_u16_prefixed(&mut list, &entry);
        push_extension(&mut extensions, 0x0000, &list);
    }
    // supported_groups: x25519, secp256r1; ec_point_formats: uncompressed.
    push_extension(&mut extensions, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]);
    push_extension(&mut extensions, 0x000b, &[1, 0]);
    // signature_algorithms: ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256.
    push_extension(&mut extensions, 0x000d, &[0, 6, 4, 3, 8, 4, 4, 1]);
    if let Some(versions) = hello.supported_versions {
        let list: Vec<u8> = versions.iter().flat_map(|v| v.to_be_bytes()).collect();
        let mut body = vec![u8::try_from(list.len()).unwrap()];
        body.extend_from_slice(&list);
        push_extension(&mut extensions, 0x002b, &body);
    }
    let suites: Vec<u8> = hello
        .cipher_suites
        .iter()
        .flat_map(|s| s.to_be_bytes())
        .collect();
    let mut body = hello.legacy_version.to_be_bytes().to_vec();
    body.extend_from_slice(&noise(7, 32)); // random
    body.push(0); // no session id
    push_u16_prefixed(&mut body, &suites);
    body.extend_from_slice(&[1, 0]); // compression: null only
    push_u16_prefixed(&mut body, &extensions);

    let len = u32::try_from(body.len()).unwrap().to_be_bytes();
    let mut message = vec![1, len[1], len[2], len[3]]; // client_hello
    message.extend_from_slice(&body);
    let mut record = vec![HANDSHAKE];
    record.extend_from_slice(&hello.record_version.to_be_bytes());
    push_u16_prefixed(&mut record, &message);
    record
}

fn push_u16_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap().to_be_bytes());
    out.extend_from_slice(bytes);
}

fn push_extension(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
    out.extend_from_slice(&kind.to_be_bytes());
    push_u16_prefixed(out, body);
}

/// A TLS 1.3 and 1.2 ClientHello with `sni` (none when `None`).
fn modern_hello(sni: Option<&[u8]>) -> Vec<u8> {
    hand_built(&Hello {
        record_version: 0x0301,
        legacy_version: 0x0303,
        supported_versions: Some(&[0x0304, 0x0303]),
        sni,
        cipher_suites: &[0x1301, 0x1302, 0xc02b, 0xc02f],
    })
}

/// An SSLv2-format CLIENT-HELLO (the 2-byte-header "compatible" hello) claiming `version`.
fn sslv2_hello(version: u16) -> Vec<u8> {
    // SSL_CK_RC4_128_WITH_MD5, SSL_CK_DES_192_EDE3_CBC_WITH_MD5, TLS_RSA_WITH_AES_128_CBC_SHA.
    let specs = [0x01, 0x00, 0x80, 0x07, 0x00, 0xc0, 0x00, 0x00, 0x2f];
    let challenge = noise(11, 16);
    let mut body = vec![1]; // CLIENT-HELLO
    body.extend_from_slice(&version.to_be_bytes());
    body.extend_from_slice(&u16::try_from(specs.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&[0, 0]); // no session id
    body.extend_from_slice(&u16::try_from(challenge.len()).unwrap().to_be_bytes());
    body.extend_from_slice(&specs);
    body.extend_from_slice(&challenge);
    let len = u16::try_from(body.len()).unwrap() | 0x8000;
    let mut record = len.to_be_bytes().to_vec();
    record.extend_from_slice(&body);
    record
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_hello_in_one_byte_records_still_handshakes_and_is_served() {
    let f = Fixture::start(false).await;
    let relayed = relay(f.https(), Delivery::OneByteRecords).await;
    f.assert_serves_through(relayed).await;
    f.assert_serves().await;
    f.env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_hello_one_byte_per_tcp_write_still_handshakes_and_is_served() {
    let f = Fixture::start(false).await;
    let relayed = relay(f.https(), Delivery::OneBytePerWrite).await;
    f.assert_serves_through(relayed).await;
    f.assert_serves().await;
    f.env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_plaintext_http_are_closed_promptly_with_at_most_an_alert() {
    let f = Fixture::start(false).await;
    let mut random = noise(0x5eed, 2048);
    // Not a TLS content type, so that the noise is garbage from its first byte.
    random[0] = 0xfe;
    let mut fake_hello = vec![HANDSHAKE, 0x03, 0x01, 0x01, 0x00, 0x01, 0x00, 0x00, 0xfc];
    fake_hello.extend_from_slice(&noise(0xbad, 252));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", random),
        ("zeros", vec![0; 64]),
        (
            "plaintext HTTP",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        ("a handshake record holding noise", fake_hello),
        (
            "a record longer than TLS allows",
            vec![HANDSHAKE, 3, 3, 0xff, 0xff, 1, 0],
        ),
        ("an alert before any hello", vec![ALERT, 3, 3, 0, 2, 2, 40]),
        (
            "application data before any hello",
            vec![0x17, 3, 3, 0, 3, 1, 2, 3],
        ),
    ];
    for (what, bytes) in cases {
        let reply = exchange(f.https(), &bytes).await;
        reply.assert_refused_promptly(what);
        assert!(
            !String::from_utf8_lossy(&reply.bytes).contains("HTTP/"),
            "{what}: {reply:?}"
        );
        f.assert_serves().await;
    }
    f.env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_client_hello_then_close_is_closed_promptly() {
    let f = Fixture::start(false).await;
    let hello = f.client_hello("a.test");
    for cut in [1, 3, 5, hello.len() / 2, hello.len() - 1] {
        let mut stream = TcpStream::connect(f.https()).await.unwrap();
        stream.write_all(&hello[..cut]).await.unwrap();
        stream.shutdown().await.unwrap();
        let reply = read_until_closed(&mut stream, Duration::from_secs(5)).await;
        reply.assert_refused_promptly(&format!("{cut} of {} bytes", hello.len()));
        f.assert_serves().await;
    }
    // Gone entirely (no FIN handshake to wait for): nothing to observe but that the proxy serves.
    let mut stream = TcpStream::connect(f.https()).await.unwrap();
    stream.write_all(&hello[..hello.len() / 2]).await.unwrap();
    drop(stream);
    f.assert_serves().await;
    f.env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_handshake_is_closed_by_the_deadline_while_others_are_served() {
    let f = Fixture::start(false).await;
    let hello = f.client_hello("a.test");
    let mut partial = TcpStream::connect(f.https()).await.unwrap();
    partial.write_all(&hello[..hello.len() / 2]).await.unwrap();
    let mut silent = TcpStream::connect(f.https()).await.unwrap();
    // A whole ClientHello, then nothing: the server's flight is answered by no Finished.
    let mut unfinished = TcpStream::connect(f.https()).await.unwrap();
    unfinished.write_all(&hello).await.unwrap();
    let started = Instant::now();
    let wait = HANDSHAKE_DEADLINE + Duration::from_secs(3);
    let stalled = async {
        tokio::join!(
            read_until_closed(&mut partial, wait),
            read_until_closed(&mut silent, wait),
            read_until_closed(&mut unfinished, wait)
        )
    };
    let served = async {
        // A handful of normal clients while the two handshakes hang.
        for _ in 0..5 {
            f.assert_serves().await;
        }
        started.elapsed()
    };
    let ((partial, silent, unfinished), served_within) = tokio::join!(stalled, served);
    assert!(
        served_within < Duration::from_secs(5),
        "normal clients waited behind stalled ones: {served_within:?}"
    );
    for (what, reply) in [
        ("a partial ClientHello", &partial),
        ("silence", &silent),
        ("no Finished", &unfinished),
    ] {
        assert!(
            reply.closed,
            "{what}: still open after the deadline: {reply:?}"
        );
        assert!(
            reply.after >= HANDSHAKE_DEADLINE - Duration::from_millis(500),
            "{what}: closed before the handshake deadline: {reply:?}"
        );
    }
    assert!(partial.only_alerts().is_some(), "{partial:?}");
    assert!(silent.only_alerts().is_some(), "{silent:?}");
    assert!(
        unfinished.bytes.starts_with(&[HANDSHAKE]),
        "the server's flight came first: {unfinished:?}"
    );
    f.assert_serves().await;
    f.env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_sni_and_unknown_sni_get_unrecognized_name_without_a_default_site() {
    let f = Fixture::start(false).await;
    let no_sni = modern_hello(None);
    exchange(f.https(), &no_sni)
        .await
        .assert_alert("no SNI", UNRECOGNIZED_NAME);
    f.assert_serves().await;

    let strange: [&[u8]; 5] = [
        b"unknown.test",
        b"a.test.evil",
        b"evil.a.test",
        b"a.test\0.evil",
        &[b'x'; 255],
    ];
    for sni in strange {
        let hello = modern_hello(Some(sni));
        let what = format!("SNI {:?}", String::from_utf8_lossy(sni));
        let reply = exchange(f.https(), &hello).await;
        // A name that is not a valid DNS name is refused by rustls's parser first, with its own
        // alert; either way no handshake.
        reply.assert_refused_promptly(&what);
        assert!(
            matches!(
                reply.only_alerts().as_deref(),
                Some([UNRECOGNIZED_NAME | ILLEGAL_PARAMETER])
            ),
            "{what}: {reply:?}"
        );
        f.assert_serves().await;
    }
    let refused = tls::connect(f.https(), "unknown.test", f.ca.client(&[], false)).await;
    let error = refused
        .expect_err("unknown SNI must not handshake")
        .to_string();
    assert!(error.contains("UnrecognisedName"), "{error}");
    f.assert_serves().await;
    f.env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_sni_and_unknown_sni_get_the_default_site_certificate() {
    let f = Fixture::start(true).await;
    let mut no_sni = f.ca.client_expecting("b.test");
    no_sni.enable_sni = false;
    let stream = tls::connect(f.https(), "b.test", no_sni).await.unwrap();
    assert_eq!(tls::presented(&stream), f.cert_b.der, "no SNI");
    let answer = Conn::over(stream).await.get("b.test", "/").await;
    assert_eq!(answer.status, 200, "{answer:?}");

    for sni in ["unknown.test", "evil.a.test"] {
        let stream = tls::connect(f.https(), sni, f.ca.client_expecting("b.test"))
            .await
            .unwrap();
        assert_eq!(tls::presented(&stream), f.cert_b.der, "SNI {sni}");
        // The connection belongs to site b: a request for a's host is misdirected.
        let answer = Conn::over(stream).await.get("a.test", "/").await;
        assert_eq!(answer.status, 421, "SNI {sni}: {answer:?}");
    }
    // Case and a trailing dot do not make a name unknown.
    for sni in ["A.TEST", "a.test."] {
        let stream = tls::connect(f.https(), sni, f.ca.client_expecting("a.test"))
            .await
            .unwrap();
        assert_eq!(tls::presented(&stream), f.cert_a.der, "SNI {sni}");
    }
    f.assert_serves().await;
    f.env.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hellos_offering_only_versions_before_tls12_get_protocol_version_and_no_handshake() {
    let f = Fixture::start(true).await;
    let old = |record_version, legacy_version, supported_versions| {
        hand_built(&Hello {
            record_version,
            legacy_version,
            supported_versions,
            sni: Some(b"a.test"),
            cipher_suites: &OLD_SUITES,
        })
    };
    let cases: Vec<(&str, Vec<u8>, Option<u8>)> = vec![
        ("TLS 1.1", old(0x0301, 0x0302, None), Some(PROTOCOL_VERSION)),
        ("TLS 1.0", old(0x0301, 0x0301, None), Some(PROTOCOL_VERSION)),
        ("SSL 3.0", old(0x0300, 0x0300, None), Some(PROTOCOL_VERSION)),
        (
            "supported_versions 1.1 and 1.0 only",
            old(0x0301, 0x0303, Some(&[0x0302, 0x0301])),
            Some(PROTOCOL_VERSION),
        ),
        // Not TLS records at all: refused by the record layer, with or without an alert.
        ("an SSLv2 hello for SSL 2.0", sslv2_hello(0x0002), None),
        (
            "an SSLv2-format hello for TLS 1.0",
            sslv2_hello(0x0301),
            None,
        ),
        (
            "an SSLv2-format hello for TLS 1.2",
            sslv2_hello(0x0303),
            None,
        ),
    ];
    for (what, hello, alert) in cases {
        let reply = exchange(f.https(), &hello).await;
        match alert {
            Some(description) => reply.assert_alert(what, description),
            None => reply.assert_refused_promptly(what),
        }
        assert!(
            !reply.bytes.starts_with(&[HANDSHAKE]),
            "{what}: the server answered with a handshake: {reply:?}"
        );
        f.assert_serves().await;
    }
    f.env.stop().await;
}

/// Issue 19 #10: on TLS, ALPN decides the protocol. A connection that agreed on `http/1.1` and
/// sends the HTTP/2 preface is an HTTP/1.1 connection (it gets no HTTP/2 frame); one that
/// agreed on `h2` is HTTP/2 whatever it sends (h2spec's `http2/3.5/2` over TLS, in
/// tests/tests/h2spec.rs, sends it a bad preface and gets GOAWAY).
#[tokio::test(flavor = "multi_thread")]
async fn alpn_decides_the_protocol_on_tls() {
    let f = Fixture::start(false).await;
    let mut stream = tls::connect(f.https(), "a.test", f.ca.client(&["http/1.1"], false))
        .await
        .unwrap();
    assert_eq!(tls::alpn(&stream).as_deref(), Some("http/1.1"));
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    // An HTTP/2 server's first frame is SETTINGS: 3 bytes of length, then type 4.
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 "),
        "an HTTP/1.1 connection answered {:?}",
        String::from_utf8_lossy(&answer)
    );
    f.env.stop().await;
}
