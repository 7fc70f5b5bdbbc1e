//! Cross-core contention on proxyd's request path. Each item is run by one thread and then by
//! THREADS threads (16 by default) at once, ITERATIONS requests per thread; printed are the
//! requests per second of each and the scaling from one thread to many (on a 2-core machine, 2.0
//! is perfect):
//!
//! - a site's latency histogram: prometheus_client's `Histogram` (a mutex per series, what
//!   proxyd used before) against proxyd's lock-free `Latency`;
//! - a site's rate limiter: governor's keyed limiter with its size counted on every check
//!   (`DashMap::len`, a read lock on every shard, what proxyd did before) against proxyd's
//!   `SiteLimiter::check` (the size counted once in 256 checks per thread);
//! - an upstream's idle HTTP/1.1 connections: one mutex-guarded stack per upstream (before)
//!   against a stack per thread (`Striped`), a connection taken and given back per request;
//! - the counters every request bumps (its site's requests, the requests in flight, its
//!   upstream's outstanding requests): prometheus_client's, an atomic each (before), against
//!   proxyd's striped ones; the upstream's outstanding count stays one atomic in both (its
//!   `max_requests` limit and the least-requests balancer read the whole count);
//! - everything shared a request touches, together, with and without a rate limit.
//!
//! Usage: cargo run --release -- [THREADS] [ITERATIONS]. On a machine with fewer cores than
//! threads the figures show the lock convoys (a thread preempted while it holds the lock) as
//! well as the cache-line transfers; `perf c2c record` on a many-core machine shows those.

use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use proxyd::contention::{Latency, LimiterStore, Scope, Striped, StripedCounter, StripedGauge};
use proxyd::convert::RateQuota;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(16);
    let iterations: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    println!(
        "1 thread, then {threads} threads, x {iterations} requests each; {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<44} {:>12} {:>12} {:>8}",
        "",
        "1 thread",
        format!("{threads} threads"),
        "scaling"
    );
    let bench = |what: &str, op: &(dyn Fn(usize, u64) + Sync)| {
        let one = rate(run(1, iterations, op));
        let many = rate(run(threads, iterations, op));
        println!(
            "{what:<44} {one:>7.2} M/s {many:>7.2} M/s {:>7.2}x",
            many / one
        );
    };
    let elapsed = Duration::from_micros(1234);

    let histogram = Histogram::new(BUCKETS);
    bench("histogram: prometheus_client (mutex)", &|_, _| {
        histogram.observe(elapsed.as_secs_f64())
    });
    let latency = Latency::default();
    bench("histogram: proxyd Latency (stripes)", &|_, _| {
        latency.observe(elapsed)
    });

    let keyed = keyed_limiter();
    bench("rate limit: governor + len() per check", &|thread, i| {
        let _ = keyed.len() >= 100_000;
        let _ = keyed.check_key(&client(thread, i));
    });
    let store = LimiterStore::default();
    let limiter = store.get(Scope::Site("bench".into()), QUOTA);
    bench("rate limit: proxyd SiteLimiter::check", &|thread, i| {
        let _ = limiter.check(client(thread, i));
    });

    let one_stack = idle_stack();
    bench("idle connections: one stack (mutex)", &|_, _| {
        checkout_and_back(&one_stack)
    });
    let stacks: Striped<Mutex<Vec<u64>>> = Striped::new(16);
    for stack in stacks.iter() {
        lock(stack).extend(0..64);
    }
    bench("idle connections: a stack per thread", &|_, _| {
        checkout_and_back(stacks.mine())
    });

    let counters = Counters::default();
    bench("counters: one atomic each", &|_, _| counters.bump(|| ()));
    let striped = StripedCounters::default();
    bench("counters: striped", &|_, _| striped.bump(|| ()));
    let (histogram, keyed, one_stack) = (Histogram::new(BUCKETS), keyed_limiter(), idle_stack());
    bench("a request's shared state, before", &|thread, i| {
        let _ = keyed.len() >= 100_000;
        let _ = keyed.check_key(&client(thread, i));
        counters.bump(|| checkout_and_back(&one_stack));
        histogram.observe(elapsed.as_secs_f64());
    });
    let latency = Latency::default();
    let limiter = store.get(Scope::Site("bench2".into()), QUOTA);
    bench("a request's shared state, now", &|thread, i| {
        let _ = limiter.check(client(thread, i));
        striped.bump(|| checkout_and_back(stacks.mine()));
        latency.observe(elapsed);
    });
    // A site without a rate limit, as the harness's (bench/run.sh).
    bench("the same without a rate limit, before", &|_, _| {
        counters.bump(|| checkout_and_back(&one_stack));
        histogram.observe(elapsed.as_secs_f64());
    });
    bench("the same without a rate limit, now", &|_, _| {
        striped.bump(|| checkout_and_back(stacks.mine()));
        latency.observe(elapsed);
    });
}

const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A budget no client exhausts: every check passes, as most do.
const QUOTA: RateQuota = RateQuota {
    requests_per_second: NonZeroU32::MAX,
    burst: NonZeroU32::MAX,
};

fn keyed_limiter() -> DefaultKeyedRateLimiter<IpAddr> {
    DefaultKeyedRateLimiter::<IpAddr>::keyed(
        Quota::per_second(QUOTA.requests_per_second).allow_burst(QUOTA.burst),
    )
}

/// One of 1,024 clients per thread.
fn client(thread: usize, i: u64) -> IpAddr {
    let [_, _, a, b] = ((thread as u32) << 10 | (i % 1024) as u32).to_be_bytes();
    IpAddr::V4(Ipv4Addr::new(10, thread as u8, a & 0x03, b))
}

fn idle_stack() -> Mutex<Vec<u64>> {
    Mutex::new((0..64).collect())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection taken at the request's start and given back at its end.
fn checkout_and_back(stack: &Mutex<Vec<u64>>) {
    let conn = lock(stack).pop();
    if let Some(conn) = conn {
        lock(stack).push(conn);
    }
}

/// The counters every request bumps, shared by every thread (prometheus_client's counter and
/// gauge are an atomic each; proxyd's upstream keeps its outstanding requests in one).
#[derive(Default)]
struct Counters {
    requests: Counter,
    in_flight: Gauge,
    outstanding: AtomicUsize,
}

impl Counters {
    fn bump(&self, exchange: impl FnOnce()) {
        self.in_flight.inc();
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        exchange();
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        self.in_flight.dec();
        self.requests.inc();
    }
}

/// The same, striped as proxyd counts them now; an upstream's outstanding requests stay one
/// atomic (its `max_requests` limit and the least-requests balancer read the whole count).
#[derive(Default)]
struct StripedCounters {
    requests: StripedCounter,
    in_flight: StripedGauge,
    outstanding: AtomicUsize,
}

impl StripedCounters {
    fn bump(&self, exchange: impl FnOnce()) {
        self.in_flight.inc();
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        exchange();
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
        self.in_flight.dec();
        self.requests.inc();
    }
}

/// Runs `op` `iterations` times on each of `threads` threads at once; the wall time and the
/// operations.
fn run(threads: usize, iterations: u64, op: &(dyn Fn(usize, u64) + Sync)) -> (Duration, u64) {
    let barrier = Arc::new(Barrier::new(threads + 1));
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
        Instant::now()
    });
    (wall.elapsed(), threads as u64 * iterations)
}

/// Millions of operations per second.
fn rate((wall, ops): (Duration, u64)) -> f64 {
    ops as f64 / wall.as_secs_f64() / 1e6
}
