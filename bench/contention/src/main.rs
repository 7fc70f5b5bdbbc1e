//! Cross-core contention on proxyd's request path: THREADS threads (16 by default) each end
//! ITERATIONS requests of one site, and the time per request is printed for
//!
//! - the site's latency histogram: prometheus_client's `Histogram` (a mutex per series, what
//!   proxyd used before) against proxyd's lock-free `Latency`;
//! - the site's rate limiter: governor's keyed limiter with its size counted on every check
//!   (`DashMap::len`, a read lock on every shard, what proxyd did before) against proxyd's
//!   `SiteLimiter::check` (the size counted once in 256 checks per thread).
//!
//! Usage: cargo run --release -- [THREADS] [ITERATIONS]. On a machine with fewer cores than
//! threads the figures show the lock convoys (a thread preempted while it holds the lock), not
//! cache-line transfers; `perf c2c record` on a many-core machine shows those.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota};
use prometheus_client::metrics::histogram::Histogram;
use proxyd::contention::{Latency, LimiterStore, Scope};
use proxyd::convert::RateQuota;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let iterations: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    println!(
        "{threads} threads x {iterations} requests, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let elapsed = Duration::from_micros(1234);

    let histogram = Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]);
    report(
        "histogram: prometheus_client (mutex)",
        run(threads, iterations, |_, _| {
            histogram.observe(elapsed.as_secs_f64())
        }),
    );
    let latency = Latency::default();
    report(
        "histogram: proxyd Latency (atomics)",
        run(threads, iterations, |_, _| latency.observe(elapsed)),
    );

    // A budget no client exhausts: every check passes, as most do.
    let quota = RateQuota {
        requests_per_second: NonZeroU32::MAX,
        burst: NonZeroU32::MAX,
    };
    let keyed = DefaultKeyedRateLimiter::<IpAddr>::keyed(
        Quota::per_second(quota.requests_per_second).allow_burst(quota.burst),
    );
    report(
        "rate limit: governor + len() per check",
        run(threads, iterations, |thread, i| {
            let _ = keyed.len() >= 100_000;
            let _ = keyed.check_key(&client(thread, i));
        }),
    );
    let store = LimiterStore::default();
    let limiter = store.get(Scope::Site("bench".into()), quota);
    report(
        "rate limit: proxyd SiteLimiter::check",
        run(threads, iterations, |thread, i| {
            let _ = limiter.check(client(thread, i));
        }),
    );
}

/// One of 1,024 clients per thread.
fn client(thread: usize, i: u64) -> IpAddr {
    let [_, _, a, b] = ((thread as u32) << 10 | (i % 1024) as u32).to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(10, thread as u8, a & 0x03, b))
}

/// Runs `op` `iterations` times on each of `threads` threads at once; the wall time.
fn run(threads: usize, iterations: u64, op: impl Fn(usize, u64) + Sync) -> (Duration, u64) {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let op = &op;
    let wall = std::thread::scope(|scope| {
        for thread in 0..threads {
            let barrier = barrier.clone();
            scope.spawn(move || {
                barrier.wait();
                for i in 0..iterations {
                    op(thread, i);
                }
            });
        }
        barrier.wait();
        let started = Instant::now();
        started
    });
    (wall.elapsed(), threads as u64 * iterations)
}

fn report(what: &str, (wall, ops): (Duration, u64)) {
    let ns = wall.as_nanos() as f64 / ops as f64;
    let rate = ops as f64 / wall.as_secs_f64() / 1e6;
    println!("{what:<42} {ns:>8.1} ns/request (wall)   {rate:>7.2} M requests/s");
}
