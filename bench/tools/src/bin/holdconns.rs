//! holdconns: open N keep-alive connections (plain or TLS), send one GET on
//! each and read its response, print `ready M`, then hold them all idle until
//! stdin reaches EOF or SIGTERM/SIGINT arrives.
//!
//! The held connections are just streams in a Vec: no task reads them while
//! they are idle, so each costs a socket plus (for TLS) the rustls session
//! state, nothing more. Exit status: 0 when all N succeeded, 2 when some
//! failed (errors summarised on stderr; `ready M` still printed with the
//! number that succeeded), 1 for bad arguments or a setup failure.
//! At exit it reports on stderr how many of the held connections the server
//! had closed meanwhile.
//!
//! It raises its own RLIMIT_NOFILE soft limit to the hard limit at start.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_tools::args::{self, Args, ParseError};
use bench_tools::http1::{HttpConn, get_request};
use bench_tools::net::{self, ErrorLog, Stream, TlsTarget};
use rustix::process::{Resource, getrlimit, setrlimit};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const USAGE: &str = "\
usage: holdconns --addr HOST:PORT --count N [--host HOSTHEADER] [--path /]
                 [--tls] [--sni NAME] [--no-resume] [--h2] [--concurrency 256]
                 [--timeout SECONDS] [--ignore-stdin]

Opens N connections (TLS with --tls, trusting any certificate, ALPN http/1.1),
sends `GET PATH HTTP/1.1` with Host on each and reads the response, at most
--concurrency connection attempts in flight. Then prints `ready M` (M = number
that succeeded) and holds them idle until stdin reaches EOF or SIGTERM/SIGINT.
Exit 0 if all N succeeded, 2 if some failed, 1 on bad arguments.

  --addr          where to connect
  --count         number of connections
  --host          Host header (default: --addr)
  --path          request path (default /)
  --tls           TLS; --sni sets the server name (default: --host without port)
  --no-resume     no TLS session resumption (default: rustls' session cache)
  --h2            HTTP/2 with prior knowledge (h2c; not with --tls): one GET on
                  each connection, which then stays open answering the server's
                  PINGs and SETTINGS
  --concurrency   connection attempts in flight at once (default 256)
  --timeout       per-connection limit for connect+handshake+response (default 10 s)
  --ignore-stdin  hold until a signal only (for stdin at /dev/null, e.g. `cmd &`)";

fn fail(msg: &str) -> ! {
    eprintln!("holdconns: {msg}");
    std::process::exit(1);
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; warns when that is below `need`.
fn raise_nofile(need: u64) {
    let lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum; // None = unlimited
    if lim.current != hard {
        let new = rustix::process::Rlimit {
            current: hard,
            maximum: hard,
        };
        if let Err(e) = setrlimit(Resource::Nofile, new) {
            eprintln!("holdconns: raising RLIMIT_NOFILE to the hard limit failed: {e}");
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    if let Some(n) = now
        && n < need
    {
        eprintln!(
            "holdconns: RLIMIT_NOFILE is {n} (hard limit {}), too low for {need} connections; raise the hard limit (ulimit -Hn)",
            hard.map_or("unlimited".to_string(), |h| h.to_string())
        );
    }
}

/// A connection held open.
enum Held {
    Http1(Stream),
    /// The request handle (its connection lives while it does) and the task driving the
    /// connection, which ends when the server closes it.
    H2c {
        _client: h2::client::SendRequest<bytes::Bytes>,
        driver: tokio::task::JoinHandle<()>,
    },
}

/// Opens an h2c connection (prior knowledge), makes one GET and reads its response.
async fn open_h2c(addr: SocketAddr, host: &str, path: &str) -> io::Result<Held> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (client, connection) = h2::client::handshake(tcp).await.map_err(io::Error::other)?;
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.map_err(io::Error::other)?;
    let request = http::Request::get(format!("http://{host}{path}"))
        .body(())
        .map_err(io::Error::other)?;
    let (response, _) = client
        .send_request(request, true)
        .map_err(io::Error::other)?;
    let response = response.await.map_err(io::Error::other)?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(io::Error::other)?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    if !(200..400).contains(&status) {
        return Err(io::Error::other(format!("status {status}")));
    }
    Ok(Held::H2c {
        _client: client,
        driver,
    })
}

async fn open_one(addr: SocketAddr, tls: Option<&TlsTarget>, req: &[u8]) -> io::Result<Held> {
    let mut c = HttpConn::new(net::connect(addr, tls).await?);
    let resp = c.request(req).await?;
    if resp.close {
        return Err(io::Error::other(format!(
            "server closed the connection after the response (status {})",
            resp.status
        )));
    }
    if !(200..400).contains(&resp.status) {
        // Still a used keep-alive connection: keep it, but say so once.
        static WARNED: std::sync::Once = std::sync::Once::new();
        let s = resp.status;
        WARNED.call_once(|| eprintln!("holdconns: note: response status {s} (connection kept)"));
    }
    Ok(Held::Http1(c.into_inner()))
}

/// Whether the peer has closed `held` (EOF or reset seen by the runtime).
fn peer_closed(held: &Held) -> bool {
    let s = match held {
        Held::Http1(s) => s,
        Held::H2c { driver, .. } => return driver.is_finished(),
    };
    let mut b = [0u8; 64];
    match s.tcp().try_read(&mut b) {
        Ok(0) => true,
        Ok(_) => false, // data (e.g. a TLS ticket or close_notify): check again
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

fn main() {
    let args = match Args::parse(
        std::env::args().skip(1),
        &[
            "addr",
            "count",
            "host",
            "path",
            "sni",
            "concurrency",
            "timeout",
        ],
        &["tls", "no-resume", "ignore-stdin", "h2"],
    ) {
        Ok(a) => a,
        Err(ParseError::Help) => {
            println!("{USAGE}");
            return;
        }
        Err(ParseError::Bad(m)) => {
            eprintln!("holdconns: {m}\n\n{USAGE}");
            std::process::exit(1);
        }
    };
    let parsed = (|| -> Result<_, String> {
        let addr: String = args.required("addr")?;
        let count: u64 = args.required("count")?;
        let conc: usize = args.get("concurrency")?.unwrap_or(256);
        if conc == 0 {
            return Err("--concurrency must be >= 1".into());
        }
        let timeout = args::seconds(args.get("timeout")?.unwrap_or(10.0), "timeout")?;
        let host = args.str("host").unwrap_or(&addr).to_string();
        let path = args.str("path").unwrap_or("/").to_string();
        if !path.starts_with('/') && path != "*" {
            return Err(format!("--path {path:?} must start with /"));
        }
        let sni = args.str("sni").map(str::to_string).unwrap_or_else(|| {
            let h = host.trim_start_matches('[');
            match h.find(']') {
                Some(i) => h[..i].to_string(),
                None => h.rsplit_once(':').map_or(h, |(n, _)| n).to_string(),
            }
        });
        Ok((addr, count, conc, timeout, host, path, sni))
    })();
    let (addr, count, conc, timeout, host, path, sni) = parsed.unwrap_or_else(|m| fail(&m));
    let tls_on = args.flag("tls");
    let h2c = args.flag("h2");
    if h2c && tls_on {
        fail("--h2 is h2c (prior knowledge): not with --tls");
    }
    let resume = !args.flag("no-resume");
    let ignore_stdin = args.flag("ignore-stdin");

    raise_nofile(count + 64);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("tokio runtime: {e}")));

    let code = rt.block_on(async move {
        // Signal handlers first, so a SIGTERM during the connect phase is not fatal-by-default.
        let mut term = signal(SignalKind::terminate()).unwrap_or_else(|e| fail(&format!("SIGTERM handler: {e}")));
        let mut int = signal(SignalKind::interrupt()).unwrap_or_else(|e| fail(&format!("SIGINT handler: {e}")));

        let sockaddr = net::resolve(&addr).await.unwrap_or_else(|m| fail(&m));
        let tls = if tls_on {
            Some(TlsTarget::new(&sni, resume).unwrap_or_else(|m| fail(&m)))
        } else {
            None
        };
        let req: Arc<[u8]> = get_request(&path, &host).into();
        let sem = Arc::new(Semaphore::new(conc));
        let started = Instant::now();

        let mut set = JoinSet::new();
        for _ in 0..count {
            let sem = Arc::clone(&sem);
            let tls = tls.clone();
            let req = Arc::clone(&req);
            let (host, path) = (host.clone(), path.clone());
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.map_err(|e| io::Error::other(e.to_string()))?;
                let open = async {
                    if h2c {
                        open_h2c(sockaddr, &host, &path).await
                    } else {
                        open_one(sockaddr, tls.as_ref(), &req).await
                    }
                };
                match tokio::time::timeout(timeout, open).await {
                    Ok(r) => r,
                    Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out (connect, handshake or response)")),
                }
            });
        }
        let mut held: Vec<Held> = Vec::with_capacity(count as usize);
        let mut errs = ErrorLog::default();
        let mut interrupted = false;
        loop {
            tokio::select! {
                r = set.join_next() => match r {
                    None => break,
                    Some(Ok(Ok(s))) => held.push(s),
                    Some(Ok(Err(e))) => errs.add(e),
                    Some(Err(e)) => errs.add(format!("task: {e}")),
                },
                _ = term.recv() => { interrupted = true; break; }
                _ = int.recv() => { interrupted = true; break; }
            }
        }
        if interrupted {
            eprintln!("holdconns: signal during the connect phase; {} of {count} open, exiting", held.len());
            return 2;
        }
        // Connections the server closed after answering (e.g. it ran out of
        // connection slots and dropped idle keep-alive ones) do not count as ready.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = held.len();
        held.retain(|s| !peer_closed(s));
        for _ in held.len()..before {
            errs.add("closed by the server after its response, before ready");
        }
        let failed = errs.total;
        errs.report("holdconns", "connections");
        eprintln!(
            "holdconns: {} of {count} connections open and answered in {:.2} s",
            held.len(),
            started.elapsed().as_secs_f64()
        );
        {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "ready {}", held.len());
            let _ = out.flush();
        }

        // Hold until stdin EOF or a signal.
        let stdin_eof = async {
            if ignore_stdin {
                std::future::pending::<()>().await;
            }
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 512];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let why = tokio::select! {
            _ = stdin_eof => "stdin closed",
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        // Let the runtime's driver see pending readiness before checking.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let closed = held.iter().filter(|s| peer_closed(s)).count();
        eprintln!(
            "holdconns: {why}; {} of {} held connections still open ({closed} closed by the server meanwhile)",
            held.len() - closed,
            held.len()
        );
        if failed > 0 { 2 } else { 0 }
    });
    // Exit without dropping the runtime: a blocking stdin read may still be pending.
    let _ = io::stdout().flush();
    std::process::exit(code);
}
