//! Happy Eyeballs against real sockets on 127.0.0.1: a listener that answers, a closed port that
//! refuses, and a listener that drops SYNs.

use std::net::{Ipv4Addr, Ipv6Addr};

use tokio::net::TcpListener;
use tokio::time::timeout;

use super::*;

/// Far more than any of these dials needs, far less than a SYN to a blackholed address takes to
/// give up (over a minute on Linux) or than its first retransmit plus the rest (1 s, then 3 s).
const GENEROUS: Duration = Duration::from_secs(3);

/// A listener that accepts connections into its queue (never taken off it; the kernel completes
/// the handshake anyway).
async fn working() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

/// An address on 127.0.0.1 that refuses connections: a port just bound and released.
fn refusing() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// An address that answers nothing, like a broken route: a listener with backlog 0 whose accept
/// queue is full of connections it never accepts. Linux drops a SYN to such a listener, and the
/// client retransmits it for over a minute. Returns the listener and the queued connections
/// (both to be kept alive) and the address, once a connect to it has been seen to hang.
async fn blackholed() -> (socket2::Socket, Vec<TcpStream>, SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .unwrap();
    listener.listen(0).unwrap();
    let address = listener.local_addr().unwrap().as_socket().unwrap();
    let mut queued = Vec::new();
    for _ in 0..16 {
        // A connect on loopback completes at once or not at all; 200 ms is only a margin.
        match timeout(Duration::from_millis(200), TcpStream::connect(address)).await {
            Ok(connected) => queued.push(connected.unwrap()),
            Err(_) => return (listener, queued, address),
        }
    }
    panic!("connects to a listener with a full accept queue still complete; no blackhole here");
}

#[tokio::test]
async fn a_blackholed_first_address_does_not_hold_up_the_next() {
    let (_listener, _queued, blackholed) = blackholed().await;
    let (_working, working) = working().await;
    let tcp = timeout(GENEROUS, connect_any(&[blackholed, working]))
        .await
        .expect("the second address was not tried while the first hung")
        .unwrap();
    assert_eq!(tcp.peer_addr().unwrap(), working);
    assert!(tcp.nodelay().unwrap());
}

#[tokio::test]
async fn a_refused_address_moves_on_to_the_next_at_once() {
    let (_working, working) = working().await;
    // With an hour between attempts, only the failure itself can start the second one.
    let addresses = [refusing(), working];
    let dial = connect_staggered(&addresses, Duration::from_secs(3600));
    let tcp = timeout(GENEROUS, dial).await.unwrap().unwrap();
    assert_eq!(tcp.peer_addr().unwrap(), working);
}

#[tokio::test]
async fn a_hung_attempt_keeps_running_after_a_later_one_fails() {
    let (_listener, _queued, blackholed) = blackholed().await;
    // Both attempts start at once and the second is refused at once; that must end nothing while
    // the first runs. (A thing that must not happen needs a window to not happen in.)
    let addresses = [blackholed, refusing()];
    let dial = connect_staggered(&addresses, Duration::ZERO);
    assert!(timeout(Duration::from_millis(300), dial).await.is_err());
}

#[tokio::test]
async fn when_every_address_fails_the_last_error_is_returned() {
    let e = connect_any(&[refusing(), refusing()]).await.unwrap_err();
    let DialError::Tcp(e) = e else {
        panic!("not a TCP error: {e}")
    };
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(matches!(connect_any(&[]).await, Err(DialError::Tcp(_))));
}

#[tokio::test]
async fn a_name_is_resolved_and_dialed() {
    let (_working, working) = working().await;
    // localhost may resolve to ::1 first, where nothing listens: that refusal moves on to
    // 127.0.0.1.
    let authority: Authority = format!("localhost:{}", working.port()).parse().unwrap();
    let by_name = timeout(GENEROUS, tcp(&authority, 80))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_name.peer_addr().unwrap(), working);
    assert!(by_name.nodelay().unwrap());
    let literal: Authority = working.to_string().parse().unwrap();
    let by_ip = timeout(GENEROUS, tcp(&literal, 80)).await.unwrap().unwrap();
    assert_eq!(by_ip.peer_addr().unwrap(), working);
}

#[test]
fn families_are_interleaved_starting_with_the_first() {
    let v6 = |n: u16| SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n), 80));
    let v4 = |n: u8| SocketAddr::from((Ipv4Addr::new(192, 0, 2, n), 80));
    assert_eq!(
        interleave(&[v6(1), v6(2), v6(3), v4(1), v4(2)]),
        [v6(1), v4(1), v6(2), v4(2), v6(3)]
    );
    assert_eq!(
        interleave(&[v4(1), v6(1), v6(2), v4(2)]),
        [v4(1), v6(1), v4(2), v6(2)]
    );
    assert_eq!(interleave(&[v4(1), v4(2)]), [v4(1), v4(2)]);
    assert!(interleave(&[]).is_empty());
}
