//! Steady HTTP/1.1 traffic through the proxy while something happens to it (an upgrade, a
//! restart): new connections, and requests on kept-alive ones, counted and with each failure
//! described.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Conn;

/// The load's clients, running until [`Load::finish`].
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

/// What a load saw.
#[derive(Debug)]
pub struct Seen {
    pub ok: usize,
    pub failed: usize,
    /// The first failures, described.
    pub failures: Vec<String>,
}

impl Load {
    /// Four clients on `addr` for `host`: two open a connection per request, two send five
    /// requests on each connection they open; each pauses `pace` between requests.
    pub fn start(addr: SocketAddr, host: &str, pace: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..4)
            .map(|client| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                let host = host.to_owned();
                tokio::spawn(async move {
                    let per_connection = if client % 2 == 0 { 1 } else { 5 };
                    while !stop.load(Ordering::Relaxed) {
                        let fail = |what: String| {
                            failures
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(what);
                        };
                        // A refused connection is a failure.
                        let tcp = match tokio::net::TcpStream::connect(addr).await {
                            Ok(tcp) => tcp,
                            Err(e) => {
                                fail(format!("connect: {e}"));
                                tokio::time::sleep(pace).await;
                                continue;
                            }
                        };
                        let mut conn = Conn::over(tcp).await;
                        for _ in 0..per_connection {
                            match conn.try_get(&host, "/").await {
                                Some(200) => {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                }
                                // A drained process closed this kept-alive connection between
                                // two requests (`Connection: close` on the last answer): the
                                // client opens a new one, as clients do.
                                None if conn.is_closed() => break,
                                other => fail(format!("GET /: {other:?}")),
                            }
                            tokio::time::sleep(pace).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            clients,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits for `more` answered requests past now, so that the load provably outlived what
    /// came before; then stops the clients and says what they saw.
    pub async fn finish(self, more: usize) -> Seen {
        let target = self.ok() + more;
        let deadline = tokio::time::Instant::now() + crate::DEADLINE;
        while self.ok() < target && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            let _ = client.await;
        }
        let failures =
            std::mem::take(&mut *self.failures.lock().unwrap_or_else(|e| e.into_inner()));
        Seen {
            ok: self.ok.load(Ordering::Relaxed),
            failed: failures.len(),
            failures: failures.into_iter().take(10).collect(),
        }
    }
}
