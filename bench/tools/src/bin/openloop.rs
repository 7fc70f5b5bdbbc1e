//! openloop: open-loop HTTP/1.1 keep-alive load with coordinated-omission-free latencies.
//!
//! Schedule. Request slot k (k = 0, 1, 2, ...) is due at `t0 + k / rate`. There
//! are C connections, each with its own task; connection i owns the slots
//! i, i+C, i+2C, ... and sends them one after another on its keep-alive
//! connection. A slot's latency is measured from its *intended* time to the end
//! of its response, so when a connection is still busy with an earlier slot
//! (the server is slow) that wait counts, as it would for a real client
//! arriving on schedule (no coordinated omission).
//!
//! Timer precision. tokio's timer wheel has 1 ms granularity (and epoll_wait a
//! millisecond timeout), so `tokio::time::sleep_until` would wake a sender up
//! to ~1 ms after its slot and that slop would be measured as server latency.
//! Instead each connection task has its own Linux timerfd (CLOCK_MONOTONIC, the
//! clock `std::time::Instant` uses) registered with the runtime's epoll through
//! `AsyncFd`, armed with an absolute deadline in ns: epoll returns when the
//! hrtimer fires (no 1 ms rounding, no timer slack). The CPU wake-up itself
//! still costs something (measured ~50 µs on the 2-vCPU Firecracker VM this
//! was written on, more when the CPU is contended), so the timerfd is armed
//! `--spin-us` (default 100 µs) *before* the slot, and the task then yields in
//! a loop until the slot's Instant: `tokio::task::yield_now` (the runtime polls
//! epoll with a zero timeout and runs the other connections) plus
//! `std::thread::yield_now` (sched_yield, so a server thread waiting for this
//! CPU runs at once; without it, a pure spin sharing a CPU with the server
//! delayed the server by whole scheduler ticks: p90 ~100 ms at 10k req/s).
//! Cost: at most `spin-us` of busy CPU per request (measured +0.2 s CPU over a
//! 5 s run at 1,000 req/s), and the send starts within ~1 µs of its slot on an
//! idle CPU. `--spin-us 0` turns the spin off (timerfd only). `--busy` keeps the
//! runtime polling all the time (a full core), which also removes the wake-up
//! cost from response arrival; it is off by default. Whatever lateness remains
//! is counted in the latency (latency is always response end minus intended
//! time) and is also reported as `timer_lag_*`: send time minus intended time,
//! over the slots whose connection was idle and waiting, so the generator's
//! own lateness can be told from the server's. Do not run it under SCHED_FIFO
//! (chrt -f) with spinning on: the spin then starves a server sharing its CPU.
//!
//! Runtime: a current_thread tokio runtime by default (the load generator gets
//! one CPU); `--threads N` uses a multi-thread runtime with N workers.
//!
//! Warmup: slots in the first `--warmup` seconds are sent but not recorded.
//! End: slots of the measured window still queued after the window ends (the
//! server fell behind) are still sent and recorded until `--timeout` after the
//! window; any not started by then count as errors (`unsent`).
//! Errors: an I/O error, a malformed response or a request taking longer than
//! `--timeout` counts as one error for that slot; the connection is dropped
//! and reopened for the next slot. A response with `Connection: close` is
//! counted normally and the connection reopened for the next slot.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bench_tools::args::{self, Args, ParseError};
use bench_tools::hist::Hist;
use bench_tools::http1::{HttpConn, get_request};
use bench_tools::net::{self, ErrorLog, Stream, TlsTarget};
use rustix::time::{
    ClockId, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, clock_gettime,
    timerfd_create, timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Default busy-wait before each slot, after the timerfd wake-up (see the file comment).
const DEFAULT_SPIN_US: u64 = 100;

const USAGE: &str = "\
usage: openloop --url http[s]://HOST:PORT/PATH --rate R --duration SECONDS --connections C
                [--host HOSTHEADER] [--warmup SECONDS] [--threads N] [--timeout SECONDS]
                [--sni NAME] [--spin-us 100] [--busy]

Open-loop HTTP/1.1 keep-alive GET load: R requests per second in total on C
connections (connection i sends slots i, i+C, ...). Latency is measured from
each request's scheduled time to the end of its response. Prints one JSON line:
{\"sent\",\"ok\",\"errors\",\"non2xx\",\"p50_us\",\"p90_us\",\"p99_us\",\"p999_us\",
 \"max_us\",\"mean_us\",\"rate\",\"duration_s\", ..., \"hist\"}: hist is the
latency histogram's non-empty buckets as [index, count] pairs (see hist.rs),
so that a report can merge runs.

  --url          target; https:// trusts any certificate
  --host         Host header (default: the URL's host[:port])
  --rate         requests per second, total (> 0)
  --duration     measured seconds (after the warmup)
  --connections  keep-alive connections (default 1)
  --warmup       seconds sent but not recorded (default 1)
  --threads      tokio worker threads (default 1: current_thread runtime)
  --timeout      per-request timeout and end-of-run drain, seconds (default 5)
  --sni          TLS server name (default: the --host name without port)
  --spin-us      busy-wait this long before each slot after the timer wake-up
                 (default 100; 0 = none)
  --busy         keep the runtime polling (a full CPU) for the lowest wake-up latency";

struct Plan {
    addr: SocketAddr,
    tls: Option<TlsTarget>,
    request: Vec<u8>,
    t0: Instant,
    interval_ns: f64,
    total: u64,
    warm: u64,
    conns: u64,
    hard_end: Instant,
    timeout: Duration,
    spin: Duration,
}

impl Plan {
    fn slot_time(&self, k: u64) -> Instant {
        self.t0 + Duration::from_nanos((k as f64 * self.interval_ns).round() as u64)
    }
}

#[derive(Default)]
struct Stats {
    sent: u64,
    ok: u64,
    non2xx: u64,
    errors: u64,
    unsent: u64,
    latency: Hist,
    timer_lag: Hist,
    errs: ErrorLog,
}

impl Stats {
    fn merge(&mut self, o: &Stats) {
        self.sent += o.sent;
        self.ok += o.ok;
        self.non2xx += o.non2xx;
        self.errors += o.errors;
        self.unsent += o.unsent;
        self.latency.merge(&o.latency);
        self.timer_lag.merge(&o.timer_lag);
        self.errs.merge(&o.errs);
    }
}

/// Sleeps until an `Instant` with ns precision: a CLOCK_MONOTONIC timerfd
/// polled by the runtime's epoll (see the file comment).
struct SlotTimer {
    fd: AsyncFd<OwnedFd>,
    base_instant: Instant,
    base_ns: i128,
}

impl SlotTimer {
    fn new() -> io::Result<SlotTimer> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        // `with_interest` is deprecated in favour of the `unsafe` `register_with_interest`
        // because a generic `T: AsRawFd` could swap its fd while registered; an
        // `OwnedFd` that we own and never replace cannot, so the safe call is sound here
        // (and keeps `forbid(unsafe_code)`).
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(fd, Interest::READABLE)?;
        // Instant::now() reads CLOCK_MONOTONIC too; pair the two readings once.
        let base_instant = Instant::now();
        let ts = clock_gettime(ClockId::Monotonic);
        let base_ns = ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128;
        Ok(SlotTimer {
            fd,
            base_instant,
            base_ns,
        })
    }

    /// Waits on the timerfd until `spin` before `deadline`, then yields in a
    /// loop (letting the runtime poll I/O and run other tasks) until `deadline`.
    async fn sleep_until(&self, deadline: Instant, spin: Duration) -> io::Result<()> {
        if let Some(wake) = deadline.checked_sub(spin)
            && Instant::now() < wake
        {
            self.wait_timerfd(wake).await?;
        }
        while Instant::now() < deadline {
            // Let the runtime poll I/O and run other connections, then let the
            // kernel run another thread waiting for this CPU (the server, on a
            // small machine): a pure user-space spin would delay it by a tick.
            tokio::task::yield_now().await;
            std::thread::yield_now();
        }
        Ok(())
    }

    async fn wait_timerfd(&self, deadline: Instant) -> io::Result<()> {
        let abs = self.base_ns
            + deadline
                .saturating_duration_since(self.base_instant)
                .as_nanos() as i128;
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec: (abs / 1_000_000_000) as i64,
                tv_nsec: (abs % 1_000_000_000) as _,
            },
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::ABSTIME, &spec)?;
        loop {
            let mut guard = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            match guard.try_io(|fd| {
                rustix::io::read(fd.get_ref(), &mut expirations).map_err(io::Error::from)
            }) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

async fn connection(plan: Arc<Plan>, id: u64, first: Stream) -> io::Result<Stats> {
    let timer = SlotTimer::new()?;
    let mut st = Stats::default();
    let mut conn = Some(HttpConn::new(first));
    let mut k = id;
    while k < plan.total {
        let intended = plan.slot_time(k);
        let recorded = k >= plan.warm;
        k += plan.conns;
        let now = Instant::now();
        if now >= plan.hard_end {
            if recorded {
                st.sent += 1;
                st.errors += 1;
                st.unsent += 1;
            }
            continue;
        }
        let idle = now < intended;
        if idle {
            timer.sleep_until(intended, plan.spin).await?;
        }
        if recorded && idle {
            st.timer_lag
                .record(Instant::now().saturating_duration_since(intended));
        }
        let res = tokio::time::timeout(plan.timeout, async {
            if conn.is_none() {
                conn = Some(HttpConn::new(
                    net::connect(plan.addr, plan.tls.as_ref()).await?,
                ));
            }
            match conn.as_mut() {
                Some(c) => c.request(&plan.request).await,
                None => Err(io::Error::other("no connection")),
            }
        })
        .await;
        let done = Instant::now();
        let res = res
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out")));
        match res {
            Ok(resp) => {
                if resp.close {
                    conn = None;
                }
                if recorded {
                    st.sent += 1;
                    if (200..300).contains(&resp.status) {
                        st.ok += 1;
                    } else {
                        st.non2xx += 1;
                    }
                    st.latency.record(done.saturating_duration_since(intended));
                }
            }
            Err(e) => {
                conn = None; // reopened for the next slot
                if recorded {
                    st.sent += 1;
                    st.errors += 1;
                    st.errs.add(e);
                }
            }
        }
    }
    Ok(st)
}

fn fail(msg: &str) -> ! {
    eprintln!("openloop: {msg}");
    std::process::exit(1);
}

fn main() {
    let args = match Args::parse(
        std::env::args().skip(1),
        &[
            "url",
            "host",
            "rate",
            "duration",
            "connections",
            "warmup",
            "threads",
            "timeout",
            "sni",
            "spin-us",
        ],
        &["busy"],
    ) {
        Ok(a) => a,
        Err(ParseError::Help) => {
            println!("{USAGE}");
            return;
        }
        Err(ParseError::Bad(m)) => {
            eprintln!("openloop: {m}\n\n{USAGE}");
            std::process::exit(1);
        }
    };
    let cfg = (|| -> Result<_, String> {
        let url: String = args.required("url")?;
        let rate: f64 = args.required("rate")?;
        if !(rate.is_finite() && rate > 0.0) {
            return Err("--rate must be > 0".into());
        }
        let duration = args::seconds(args.required("duration")?, "duration")?;
        let warmup = args::seconds(args.get("warmup")?.unwrap_or(1.0), "warmup")?;
        let timeout = args::seconds(args.get("timeout")?.unwrap_or(5.0), "timeout")?;
        let conns: u64 = args.get("connections")?.unwrap_or(1);
        let threads: usize = args.get("threads")?.unwrap_or(1);
        let spin = Duration::from_micros(args.get("spin-us")?.unwrap_or(DEFAULT_SPIN_US));
        if conns == 0 || threads == 0 {
            return Err("--connections and --threads must be >= 1".into());
        }
        let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else {
            return Err(format!(
                "--url {url:?}: only http:// and https:// are supported"
            ));
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            return Err(format!("--url {url:?}: no host"));
        }
        let connect_to = if authority.starts_with('[')
            || authority
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:{}", if tls { 443 } else { 80 })
        };
        let host = args.str("host").unwrap_or(authority).to_string();
        let sni = match args.str("sni") {
            Some(s) => s.to_string(),
            None => {
                let h = host.trim_start_matches('[');
                let h = match h.find(']') {
                    Some(i) => &h[..i],
                    None => h.rsplit_once(':').map_or(h, |(n, _)| n),
                };
                h.to_string()
            }
        };
        Ok((
            connect_to,
            path.to_string(),
            host,
            tls,
            sni,
            rate,
            duration,
            warmup,
            timeout,
            conns,
            threads,
            spin,
        ))
    })();
    let (connect_to, path, host, tls, sni, rate, duration, warmup, timeout, conns, threads, spin) =
        cfg.unwrap_or_else(|m| fail(&m));

    let busy = args.flag("busy");
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let rt = rt.unwrap_or_else(|e| fail(&format!("tokio runtime: {e}")));

    let stats = rt.block_on(async {
        let addr = net::resolve(&connect_to).await.unwrap_or_else(|m| fail(&m));
        let tls = if tls {
            Some(TlsTarget::new(&sni, true).unwrap_or_else(|m| fail(&m)))
        } else {
            None
        };
        // Open every connection before the schedule starts.
        let mut first = Vec::with_capacity(conns as usize);
        for _ in 0..conns {
            match tokio::time::timeout(timeout, net::connect(addr, tls.as_ref())).await {
                Ok(Ok(s)) => first.push(s),
                Ok(Err(e)) => fail(&format!("connecting to {addr}: {e}")),
                Err(_) => fail(&format!("connecting to {addr}: timed out")),
            }
        }
        let interval_ns = 1e9 / rate;
        let warm = (warmup.as_secs_f64() * rate).round() as u64;
        let total = warm + (duration.as_secs_f64() * rate).round() as u64;
        let t0 = Instant::now() + Duration::from_millis(20);
        let plan = Arc::new(Plan {
            addr,
            tls,
            request: get_request(&path, &host),
            t0,
            interval_ns,
            total,
            warm,
            conns,
            hard_end: t0 + warmup + duration + timeout,
            timeout,
            spin,
        });
        let tasks: Vec<_> = first
            .into_iter()
            .enumerate()
            .map(|(i, s)| tokio::spawn(connection(Arc::clone(&plan), i as u64, s)))
            .collect();
        if busy {
            // Keep the runtime polling (epoll with a zero timeout) instead of
            // sleeping, so neither slot timers nor responses wait for a CPU wake-up.
            for _ in 0..threads {
                tokio::spawn(async {
                    loop {
                        tokio::task::yield_now().await;
                    }
                });
            }
        }
        let mut all = Stats::default();
        for t in tasks {
            match t.await {
                Ok(Ok(s)) => all.merge(&s),
                Ok(Err(e)) => fail(&format!("timer: {e}")),
                Err(e) => fail(&format!("connection task: {e}")),
            }
        }
        all
    });

    stats.errs.report("openloop", "requests");
    if stats.unsent > 0 {
        eprintln!(
            "openloop: {} scheduled requests were never sent (server too far behind; counted as errors)",
            stats.unsent
        );
    }
    let us = |ns: f64| (ns / 100.0).round() / 10.0; // µs with one decimal
    let h = &stats.latency;
    let lag = &stats.timer_lag;
    let d = duration.as_secs_f64();
    println!(
        "{{\"sent\":{},\"ok\":{},\"errors\":{},\"non2xx\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"mean_us\":{},\"rate\":{},\"duration_s\":{},\"min_us\":{},\"unsent\":{},\"achieved_rps\":{},\"connections\":{},\"timer_lag_p50_us\":{},\"timer_lag_p99_us\":{},\"timer_lag_max_us\":{},\"min_ns\":{},\"max_ns\":{},\"hist\":{}}}",
        stats.sent,
        stats.ok,
        stats.errors,
        stats.non2xx,
        us(h.quantile_ns(0.50)),
        us(h.quantile_ns(0.90)),
        us(h.quantile_ns(0.99)),
        us(h.quantile_ns(0.999)),
        us(h.max_ns() as f64),
        us(h.mean_ns()),
        rate,
        d,
        us(h.min_ns() as f64),
        stats.unsent,
        if d > 0.0 {
            ((h.count() as f64 / d) * 10.0).round() / 10.0
        } else {
            0.0
        },
        conns,
        us(lag.quantile_ns(0.50)),
        us(lag.quantile_ns(0.99)),
        us(lag.max_ns() as f64),
        h.min_ns(),
        h.max_ns(),
        h.sparse_json(),
    );
}
