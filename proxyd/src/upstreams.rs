//! Upstream state that outlives snapshots: health, ejections and outstanding requests, keyed by
//! the upstream's URL and its circuit-breaker limits, and the active health checks that update
//! it. A reload that keeps an upstream keeps its state; one that removes it (or changes its
//! limits) drops the state, its checks and its metrics.

mod breaker;
mod connect;
mod pool;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

pub use breaker::CircuitOpen;
pub use connect::{TlsConnector, system_roots};
pub use pool::{Error as PoolError, PooledBody, Protocol};

use crate::convert::{
    ConnectionKey, ConnectionSpec, HealthCheckSpec, PassiveHealthSpec, StaticSpec, UpstreamLimits,
    UpstreamSpec, WeightedUpstream,
};
use crate::metrics::Metrics;
use breaker::Breaker;
use pool::Pool;

/// What identifies an upstream's state: its URL, its circuit-breaker limits and how it is
/// connected to.
pub type UpstreamKey = (String, UpstreamLimits, ConnectionKey);

/// The error of a body in flight (a client's, an upstream's).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type proxyd sends upstream.
pub type UpstreamBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// An empty request body.
pub fn empty_body() -> UpstreamBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// The upstream timeouts until a snapshot sets them.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// One upstream's live state, shared by every route and site that uses it.
pub struct Upstream {
    /// Its own connection pool: kept with the upstream across reloads, and dropped with it, which
    /// closes its idle connections at once.
    pub pool: Pool,
    breaker: Arc<Breaker>,
    /// Its metrics label and store key.
    pub name: String,
    outstanding: AtomicUsize,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` until which passive health keeps it out; 0 = not ejected.
    ejected_until_ms: AtomicU64,
    /// Set by active health checks; true when there are none.
    checks_pass: AtomicBool,
    epoch: Instant,
    metrics: Arc<Metrics>,
    /// The last failed TLS handshake's error, for `proxyctl status`.
    last_tls_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("available", &self.available())
            .field("outstanding", &self.outstanding())
            .finish()
    }
}

impl Upstream {
    fn new(
        spec: UpstreamSpec,
        connection: &ConnectionSpec,
        limits: UpstreamLimits,
        metrics: Arc<Metrics>,
        timeouts: Arc<pool::Timeouts>,
    ) -> Upstream {
        let name = spec.to_string();
        metrics.upstream_health(&name, true);
        let breaker = Arc::new(Breaker::new(limits));
        let pool = Pool::new(
            spec.scheme.clone(),
            spec.authority.clone(),
            pool::Settings {
                timeouts,
                max_idle: limits.max_idle_connections,
                protocol: connection.protocol,
                tls: connection.tls.as_ref().map(|t| t.connector.clone()),
            },
            breaker.clone(),
        );
        Upstream {
            pool,
            breaker,
            name,
            outstanding: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            checks_pass: AtomicBool::new(true),
            epoch: Instant::now(),
            metrics,
            last_tls_error: Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether its connections may be HTTP/2 (and so carry `te: trailers`).
    pub fn may_speak_h2(&self) -> bool {
        self.pool.may_speak_h2()
    }

    /// Whether it should get traffic now.
    pub fn available(&self) -> bool {
        self.checks_pass.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= self.now_ms()
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Counts a request as outstanding until the guard drops; refused when `max_requests` are
    /// outstanding already.
    pub fn start(self: &Arc<Self>) -> Result<Outstanding, CircuitOpen> {
        let before = self.outstanding.fetch_add(1, Ordering::Relaxed);
        let outstanding = Outstanding(self.clone());
        if before >= self.breaker.limits().max_requests {
            return Err(CircuitOpen {
                limit: "max_requests",
            });
        }
        Ok(outstanding)
    }

    /// The upstream answered (any status: a 5xx is the application's answer, not a transport
    /// failure).
    pub fn succeeded(&self) {
        // Read first: a store on every request would pass the line between cores even when
        // nothing failed.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// The exchange failed (connect error, reset, timeout). Enough failures in a row eject it
    /// for the cooldown.
    pub fn failed(&self, passive: Option<PassiveHealthSpec>) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(passive) = passive else { return };
        if failures >= passive.consecutive_failures {
            let until = self
                .now_ms()
                .saturating_add(u64::try_from(passive.cooldown.as_millis()).unwrap_or(u64::MAX));
            self.ejected_until_ms.store(until, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, failures, cooldown = ?passive.cooldown, "upstream ejected");
            self.metrics.upstream_health(&self.name, false);
            let (metrics, name) = (self.metrics.clone(), self.name.clone());
            // Report it back once the cooldown ends (the ejection itself ends by time alone).
            tokio::spawn(async move {
                tokio::time::sleep(passive.cooldown).await;
                metrics.upstream_health(&name, true);
            });
        }
    }

    /// A TLS handshake with it failed: counted by reason, and the error kept for status.
    pub fn tls_failed(&self, reason: &'static str, error: String) {
        tracing::warn!(upstream = %self.name, %error, "TLS handshake with upstream failed");
        self.metrics.upstream_tls_failure(&self.name, reason);
        *self
            .last_tls_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(error);
    }

    /// The last failed TLS handshake's error, if any.
    pub fn last_tls_error(&self) -> Option<String> {
        self.last_tls_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_checks_pass(&self, pass: bool) {
        if self.checks_pass.swap(pass, Ordering::Relaxed) != pass {
            if pass {
                tracing::info!(upstream = %self.name, "upstream healthy again");
            } else {
                tracing::warn!(upstream = %self.name, "upstream failed its health checks");
            }
            self.metrics.upstream_health(&self.name, pass);
        }
    }
}

/// Keeps a request counted in [`Upstream::outstanding`].
#[derive(Debug)]
pub struct Outstanding(Arc<Upstream>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An upstream as `proxyctl status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub url: String,
    /// Gets traffic now.
    pub available: bool,
    pub outstanding: usize,
    pub last_tls_error: Option<String>,
}

/// The key of `upstream`'s state under `limits`.
pub fn key(upstream: &WeightedUpstream, limits: UpstreamLimits) -> UpstreamKey {
    (upstream.spec.to_string(), limits, upstream.connection.key())
}

/// Every live upstream and the health checks running against them.
pub struct UpstreamStore {
    upstreams: Mutex<HashMap<UpstreamKey, Arc<Upstream>>>,
    checks: Mutex<HashMap<(UpstreamKey, HealthCheckSpec), CancellationToken>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    /// Shared by every upstream's pool.
    timeouts: Arc<pool::Timeouts>,
}

impl UpstreamStore {
    pub fn new(metrics: Arc<Metrics>, shutdown: CancellationToken) -> UpstreamStore {
        UpstreamStore {
            upstreams: Mutex::default(),
            checks: Mutex::default(),
            metrics,
            shutdown,
            timeouts: Arc::new(pool::Timeouts::new(
                DEFAULT_CONNECT_TIMEOUT,
                DEFAULT_IDLE_TIMEOUT,
            )),
        }
    }

    /// Sets every upstream's connect and idle timeouts, for the next dial and checkout.
    pub fn configure(&self, statics: &StaticSpec) {
        self.timeouts.set(
            statics.upstream_connect_timeout,
            statics.upstream_idle_timeout,
        );
        let (interval, timeout) = statics.upstream_h2_ping;
        self.timeouts.set_h2_ping(interval, timeout);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<UpstreamKey, Arc<Upstream>>> {
        self.upstreams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state of `upstream` with `limits`: the existing one if a previous snapshot had it.
    pub fn get(&self, upstream: &WeightedUpstream, limits: UpstreamLimits) -> Arc<Upstream> {
        self.lock()
            .entry(key(upstream, limits))
            .or_insert_with(|| {
                Arc::new(Upstream::new(
                    upstream.spec.clone(),
                    &upstream.connection,
                    limits,
                    self.metrics.clone(),
                    self.timeouts.clone(),
                ))
            })
            .clone()
    }

    /// Every live upstream, sorted by URL.
    pub fn list(&self) -> Vec<Listed> {
        let mut list: Vec<_> = self
            .lock()
            .values()
            .map(|u| Listed {
                url: u.name.clone(),
                available: u.available(),
                outstanding: u.outstanding(),
                last_tls_error: u.last_tls_error(),
            })
            .collect();
        list.sort_by(|a, b| a.url.cmp(&b.url));
        list
    }

    /// Keeps the state of the upstreams in `in_use`, drops the others (and their metrics), and
    /// runs exactly the health checks in `checks`.
    pub fn retain(
        &self,
        in_use: &HashSet<UpstreamKey>,
        checks: &HashSet<(UpstreamKey, HealthCheckSpec)>,
    ) {
        let mut upstreams = self.lock();
        let mut removed = Vec::new();
        upstreams.retain(|key, _| {
            let keep = in_use.contains(key);
            if !keep {
                removed.push(key.0.clone());
            }
            keep
        });
        // The health series is per URL: it goes when no state for the URL is left.
        for name in removed {
            if !upstreams.keys().any(|(kept, _, _)| *kept == name) {
                self.metrics.forget_upstream(&name);
            }
        }
        drop(upstreams);
        let mut running = self.checks.lock().unwrap_or_else(|e| e.into_inner());
        running.retain(|key, token| {
            let keep = checks.contains(key);
            if !keep {
                token.cancel();
            }
            keep
        });
        let checked: HashSet<&UpstreamKey> = checks.iter().map(|(key, _)| key).collect();
        for (key, upstream) in self.lock().iter() {
            if !checked.contains(key) {
                // No check any more: nothing holds it back but passive health.
                upstream.set_checks_pass(true);
            }
        }
        for key in checks {
            if running.contains_key(key) {
                continue;
            }
            let Some(upstream) = self.lock().get(&key.0).cloned() else {
                continue;
            };
            let token = self.shutdown.child_token();
            tokio::spawn(check_until(upstream, key.1.clone(), token.clone()));
            running.insert(key.clone(), token);
        }
    }
}

/// Checks `upstream` every interval until `stop`, flipping it at the thresholds.
async fn check_until(upstream: Arc<Upstream>, check: HealthCheckSpec, stop: CancellationToken) {
    let (mut passes, mut fails) = (0u32, 0u32);
    let mut tick = tokio::time::interval(check.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A fresh connection each time, as a new client's would be.
        let ok = upstream.pool.probe(&check.path, check.timeout).await;
        if ok {
            (passes, fails) = (passes.saturating_add(1), 0);
            if passes >= check.healthy_threshold {
                upstream.set_checks_pass(true);
            }
        } else {
            (passes, fails) = (0, fails.saturating_add(1));
            if fails >= check.unhealthy_threshold {
                upstream.set_checks_pass(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> Arc<Upstream> {
        let spec = UpstreamSpec {
            scheme: http::uri::Scheme::HTTP,
            authority: "127.0.0.1:1".parse().unwrap(),
        };
        Arc::new(Upstream::new(
            spec,
            &ConnectionSpec::default(),
            UpstreamLimits::default(),
            Arc::new(Metrics::new()),
            Arc::new(pool::Timeouts::new(
                DEFAULT_CONNECT_TIMEOUT,
                DEFAULT_IDLE_TIMEOUT,
            )),
        ))
    }

    #[tokio::test]
    async fn consecutive_failures_eject_for_the_cooldown_and_a_success_resets_the_count() {
        let u = upstream();
        let passive = Some(PassiveHealthSpec {
            consecutive_failures: 3,
            cooldown: Duration::from_millis(50),
        });
        u.failed(passive);
        u.failed(passive);
        u.succeeded();
        u.failed(passive);
        u.failed(passive);
        assert!(u.available(), "the success in between reset the count");
        u.failed(passive);
        assert!(!u.available());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(u.available(), "back after the cooldown");
        u.failed(None);
        u.failed(None);
        u.failed(None);
        u.failed(None);
        assert!(u.available(), "without passive health nothing ejects");
    }

    #[test]
    fn outstanding_requests_are_counted_until_the_guard_drops() {
        let u = upstream();
        let a = u.start().unwrap();
        let b = u.start().unwrap();
        assert_eq!(u.outstanding(), 2);
        drop(a);
        assert_eq!(u.outstanding(), 1);
        drop(b);
        assert_eq!(u.outstanding(), 0);
    }
}
