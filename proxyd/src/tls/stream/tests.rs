//! The stream against rustls's own client (tokio-rustls, rustls's buffered API).

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

fn configs(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["stream.test".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.der().to_vec()))
        .unwrap();
    let client = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), Arc::new(client))
}

/// A handshake between a `TlsStream` and tokio-rustls's client (rustls's buffered API).
async fn pair(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
    let (server, client) = configs(versions);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::try_from("stream.test").unwrap(), tcp)
            .await
            .unwrap()
    };
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        let conn = UnbufferedServerConnection::new(server).unwrap();
        let mut stream = TlsStream::new(conn, tcp, Vec::new());
        std::future::poll_fn(|cx| stream.poll_handshake(cx))
            .await
            .unwrap();
        stream
    };
    tokio::join!(accept, connect)
}

/// A TLS 1.3 pair whose client has read everything the server sent after the handshake (its
/// session tickets, then one byte): nothing is left in flight.
async fn settled_pair() -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
    let (mut server, mut client) = pair(&[&rustls::version::TLS13]).await;
    server.write_all(b"x").await.unwrap();
    server.flush().await.unwrap();
    let mut x = [0; 1];
    client.read_exact(&mut x).await.unwrap();
    (server, client)
}

fn holds_no_buffer(stream: &TlsStream) -> bool {
    stream.incoming.capacity() == 0
        && stream.outgoing.capacity() == 0
        && stream.plaintext.capacity() == 0
}

#[tokio::test]
async fn large_and_small_writes_cross_both_ways_and_an_idle_stream_holds_no_buffer() {
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let (mut server, mut client) = pair(versions).await;
        // 1 MiB each way, at once: neither side reads until it has written everything,
        // so the socket fills and writes wait.
        let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let (to_server, to_client) = (big.clone(), big.clone());
        let server_side = async {
            let mut got = vec![0; to_server.len()];
            let (mut read, mut write) = tokio::io::split(&mut server);
            let reading = read.read_exact(&mut got);
            let writing = async {
                write.write_all(&to_client).await.unwrap();
                write.flush().await.unwrap();
            };
            let (read, ()) = tokio::join!(reading, writing);
            read.unwrap();
            got
        };
        let client_side = async {
            let mut got = vec![0; big.len()];
            let (mut read, mut write) = tokio::io::split(&mut client);
            let writing = async {
                write.write_all(&big).await.unwrap();
                write.flush().await.unwrap();
            };
            let (read, ()) = tokio::join!(read.read_exact(&mut got), writing);
            read.unwrap();
            got
        };
        let (at_server, at_client) = tokio::join!(server_side, client_side);
        assert!(at_server == to_server && at_client == big, "{versions:?}");

        // A small request and its answer; then, waiting, the stream holds no buffer.
        client.write_all(b"ping").await.unwrap();
        client.flush().await.unwrap();
        let mut ping = [0; 4];
        server.read_exact(&mut ping).await.unwrap();
        server.write_all(b"pong").await.unwrap();
        server.flush().await.unwrap();
        let mut pong = [0; 4];
        client.read_exact(&mut pong).await.unwrap();
        assert_eq!((&ping, &pong), (b"ping", b"pong"));
        let mut more = [0; 1];
        let read =
            tokio::time::timeout(std::time::Duration::from_millis(50), server.read(&mut more))
                .await;
        assert!(read.is_err(), "nothing to read");
        assert!(holds_no_buffer(&server), "{versions:?}");
        assert!(!server.buffered());
    }
}

#[tokio::test]
async fn a_client_key_update_is_answered_and_traffic_goes_on() {
    let (mut server, mut client) = pair(&[&rustls::version::TLS13]).await;
    for round in 0..3u8 {
        client.get_mut().1.refresh_traffic_keys().unwrap();
        client.write_all(&[round; 100]).await.unwrap();
        client.flush().await.unwrap();
        let mut got = [0; 100];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [round; 100]);
        server.write_all(&[round + 10; 100]).await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [round + 10; 100]);
    }
}

#[tokio::test]
async fn close_notify_ends_reads_and_shutdown_sends_one() {
    let (mut server, mut client) = pair(&[&rustls::version::TLS13]).await;
    client.write_all(b"last").await.unwrap();
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"last");
    // Still writable after the client's close_notify; then ours.
    server.write_all(b"bye").await.unwrap();
    server.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
    assert!(server.write_all(b"more").await.is_err());
}

#[tokio::test]
async fn an_end_of_stream_without_close_notify_is_an_error() {
    // The client has read what the server sent (its tickets too), so that its close is a
    // plain end of stream rather than a reset.
    let (mut server, client) = settled_pair().await;
    let (tcp, _) = client.into_inner();
    drop(tcp);
    let mut got = Vec::new();
    let e = server.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
}

#[tokio::test]
async fn garbage_after_the_handshake_is_an_error_and_an_alert() {
    let (mut server, client) = pair(&[&rustls::version::TLS13]).await;
    let (mut tcp, _) = client.into_inner();
    // An application-data record that does not decrypt.
    tcp.write_all(&[23, 3, 3, 0, 32]).await.unwrap();
    tcp.write_all(&[0xAB; 32]).await.unwrap();
    let mut got = [0; 16];
    let e = server.read(&mut got).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
    // The alert record (encrypted, TLS 1.3: type 23 on the wire).
    let mut alert = [0; 5];
    tcp.read_exact(&mut alert).await.unwrap();
    assert_eq!(alert[0], 23, "{alert:?}");
}

#[tokio::test]
async fn a_client_hello_of_several_records_in_one_read_is_accepted() {
    let (mut server, client) = configs(&[&rustls::version::TLS13]);
    Arc::get_mut(&mut server).unwrap().alpn_protocols = vec![b"http/1.1".to_vec()];
    // 100 ALPN names of 200 bytes: a ClientHello of about 20 KB, two records, one write.
    let mut client = Arc::unwrap_or_clone(client);
    client.alpn_protocols = (0..100)
        .map(|i| format!("x{i:03}{}", "y".repeat(196)).into_bytes())
        .chain([b"http/1.1".to_vec()])
        .collect();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("stream.test").unwrap(), tcp)
            .await
            .unwrap()
    };
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        // The whole ClientHello is in the socket before it is read.
        let mut incoming = Vec::new();
        let hello = crate::tls::read_client_hello(&tcp, &mut incoming)
            .await
            .unwrap();
        assert_eq!(hello.client_hello().alpn().unwrap().count(), 101);
        drop(hello);
        assert!(incoming.len() > 20_000, "{}", incoming.len());
        crate::tls::handshake(server, tcp, incoming).await.unwrap()
    };
    let (server, client) = tokio::join!(accept, connect);
    assert_eq!(server.connection().alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
}

#[tokio::test]
async fn many_small_records_come_in_few_reads_and_vectored_writes_arrive_in_order() {
    let (mut server, mut client) = pair(&[&rustls::version::TLS13]).await;
    // 1,000 records of one byte each, all sent before the server reads.
    for i in 0..1000u32 {
        client.write_all(&[(i % 256) as u8]).await.unwrap();
        client.flush().await.unwrap();
    }
    client.write_all(b"!").await.unwrap();
    client.flush().await.unwrap();
    let mut got = Vec::new();
    let mut reads = 0;
    let mut buf = [0; 4096];
    while got.last() != Some(&b'!') {
        let n = server.read(&mut buf).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
        reads += 1;
    }
    let sent: Vec<u8> = (0..1000u32)
        .map(|i| (i % 256) as u8)
        .chain([b'!'])
        .collect();
    assert_eq!(got, sent);
    assert!(reads < 50, "{reads} reads for 1,001 records");

    // Several slices at once: each its records, in order.
    let slices = [&b"head "[..], &[], &b"and "[..], &b"body"[..]];
    let bufs: Vec<io::IoSlice<'_>> = slices.iter().map(|s| io::IoSlice::new(s)).collect();
    assert!(server.is_write_vectored());
    let n = server.write_vectored(&bufs).await.unwrap();
    assert_eq!(n, 13);
    server.flush().await.unwrap();
    let mut got = [0; 13];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"head and body");
}

/// The TLS records in `raw` up to and including the first whose length is `last_len`: the
/// length of each.
fn record_lengths(raw: &[u8], last_len: usize) -> Option<Vec<usize>> {
    let mut lengths = Vec::new();
    let mut at = 0;
    while raw.len() >= at + 5 {
        let len = usize::from(u16::from_be_bytes([raw[at + 3], raw[at + 4]]));
        if raw.len() < at + 5 + len {
            return None;
        }
        lengths.push(len);
        at += 5 + len;
        if len == last_len {
            return Some(lengths);
        }
    }
    None
}

#[tokio::test]
async fn small_slices_of_a_vectored_write_share_one_record() {
    // Past the handshake and its session tickets: what the client reads next is raw.
    let (mut server, mut client) = settled_pair().await;

    // hyper's chunk: size line, data, CRLF; then a write of its own, one byte, as a marker.
    let slices = [&b"5\r\n"[..], &[], &b"hello"[..], &b"\r\n"[..]];
    let bufs: Vec<io::IoSlice<'_>> = slices.iter().map(|s| io::IoSlice::new(s)).collect();
    assert_eq!(server.write_vectored(&bufs).await.unwrap(), 10);
    server.write_all(b"!").await.unwrap();
    server.flush().await.unwrap();
    // TLS 1.3 application data: plaintext + content type (1) + AEAD tag (16).
    let marker = 1 + 1 + 16;
    let tcp = &mut client.get_mut().0;
    let mut raw = Vec::new();
    let lengths = loop {
        if let Some(lengths) = record_lengths(&raw, marker) {
            break lengths;
        }
        let mut buf = [0; 1024];
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed; got {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    };
    assert_eq!(
        lengths,
        [10 + 1 + 16, marker],
        "one record for the three slices"
    );
}

#[tokio::test]
async fn a_vectored_write_of_small_and_large_slices_arrives_in_order() {
    let (mut server, mut client) = pair(&[&rustls::version::TLS13]).await;
    // A slice of a record's size or more goes as it is, after what was staged before it.
    let big = vec![7u8; MAX_FRAGMENT + 100];
    let bufs = [
        io::IoSlice::new(b"ab"),
        io::IoSlice::new(&big),
        io::IoSlice::new(b"cd"),
    ];
    let n = server.write_vectored(&bufs).await.unwrap();
    assert_eq!(n, 2 + big.len() + 2);
    server.flush().await.unwrap();
    let mut got = vec![0; n];
    client.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..2], b"ab");
    assert!(got[2..2 + big.len()].iter().all(|&b| b == 7));
    assert_eq!(&got[2 + big.len()..], b"cd");
}
