//! A TCP relay on 127.0.0.1 port 0 in front of a backend, standing in for a NAT or a load
//! balancer between proxyd and its upstream: [`Relay::blackhole`] makes the flows it relays
//! now go silent without a FIN or a reset (both sides stay open, nothing gets through), as a
//! NAT that dropped its mapping does; flows opened later are relayed again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct Relay {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Cancelled to blackhole the flows open now; replaced for the next ones.
    current: Arc<std::sync::Mutex<CancellationToken>>,
    shutdown: CancellationToken,
}

impl Relay {
    pub async fn start(backend: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let current = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let shutdown = CancellationToken::new();
        let relay = Relay {
            addr,
            accepted: accepted.clone(),
            current: current.clone(),
            shutdown: shutdown.clone(),
        };
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    () = shutdown.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                let silenced = current.lock().unwrap().clone();
                let stop = shutdown.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(backend).await else {
                        return;
                    };
                    relay_flow(client, server, silenced, stop).await;
                });
            }
        });
        relay
    }

    /// The flows open now go silent; later ones are relayed.
    pub fn blackhole(&self) {
        let mut current = self.current.lock().unwrap();
        current.cancel();
        *current = CancellationToken::new();
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn relay_flow(
    client: TcpStream,
    server: TcpStream,
    silenced: CancellationToken,
    stop: CancellationToken,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = pipe(&mut client_read, &mut server_write, &silenced);
    let down = pipe(&mut server_read, &mut client_write, &silenced);
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        () = stop.cancelled() => {}
    }
}

/// Copies until EOF; once `silenced`, reads and drops everything (the peer's kernel still
/// acknowledges it, as a blackholing middlebox's would not, but no byte gets through).
async fn pipe(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    silenced: &CancellationToken,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                if !silenced.is_cancelled() {
                    let _ = to.shutdown().await;
                } else {
                    // Silent: hold the flow open without a FIN.
                    std::future::pending::<()>().await;
                }
                return;
            }
            Ok(n) => n,
        };
        if silenced.is_cancelled() {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
