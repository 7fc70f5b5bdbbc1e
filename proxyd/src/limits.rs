//! Rate limiters: state that outlives snapshots. A limiter is keyed by its scope and its quota,
//! so a reload that leaves both unchanged keeps every client's budget; one that changes the quota
//! starts a fresh limiter.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::convert::RateQuota;

pub type Limiter = DefaultKeyedRateLimiter<IpAddr>;

/// Which clients share a budget: every site without its own limit shares the global one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Global,
    Site(String),
    /// A route's own limit: its site, prefix, methods and header matches.
    Route(String),
}

/// A limiter and its quota, as a compiled site holds it.
#[derive(Debug, Clone)]
pub struct SiteLimiter {
    limiter: Arc<Limiter>,
    /// Wakes the eviction task early.
    evict_soon: Arc<Notify>,
}

impl SiteLimiter {
    /// `Err(retry_after)` when `client` is over its budget. IPv6 clients are keyed by their /64:
    /// one host usually holds a whole /64, and keying by address would let it rotate through
    /// 2^64 fresh budgets.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        // Counting the tracked clients visits every shard of the map (a read lock on each,
        // which every core's checks then contend for): one check in `SIZE_CHECK_EVERY` on
        // each thread looks, which bounds the overshoot to that many new clients per thread.
        if size_check_due() && self.limiter.len() >= MAX_TRACKED_CLIENTS {
            // Over the cap between two eviction rounds: the eviction task runs early. The
            // request path never scans a limiter itself.
            self.evict_soon.notify_one();
        }
        self.limiter
            .check_key(&client_key(client))
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// How often (in checks, per thread) a check looks at how many clients its limiter tracks.
const SIZE_CHECK_EVERY: u32 = 256;

/// Whether this thread's check is the one in [`SIZE_CHECK_EVERY`] that counts.
fn size_check_due() -> bool {
    thread_local! {
        static CHECKS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    CHECKS.with(|checks| {
        let n = checks.get().wrapping_add(1);
        checks.set(n);
        n % SIZE_CHECK_EVERY == 0
    })
}

/// Clients one limiter tracks before it evicts idle ones on the request path instead of waiting
/// for the eviction task. Clients that are all still within their burst stay tracked, so this
/// is a soft cap: memory follows the clients that are really active.
pub const MAX_TRACKED_CLIENTS: usize = 100_000;

/// The rate-limit key of a client: its IPv4 address (IPv4-mapped IPv6 included), or its IPv6 /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !u128::from(u64::MAX),
            )),
        },
    }
}

/// Every live limiter, by scope and quota.
#[derive(Debug, Default)]
pub struct LimiterStore {
    limiters: Mutex<HashMap<(Scope, RateQuota), Arc<Limiter>>>,
    evict_soon: Arc<Notify>,
}

impl LimiterStore {
    fn lock(&self) -> MutexGuard<'_, HashMap<(Scope, RateQuota), Arc<Limiter>>> {
        self.limiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The limiter for `scope` at `quota`: the existing one if there is one.
    pub fn get(&self, scope: Scope, quota: RateQuota) -> SiteLimiter {
        let limiter = self
            .lock()
            .entry((scope, quota))
            .or_insert_with(|| {
                Arc::new(Limiter::keyed(
                    Quota::per_second(quota.requests_per_second).allow_burst(quota.burst),
                ))
            })
            .clone();
        SiteLimiter {
            limiter,
            evict_soon: self.evict_soon.clone(),
        }
    }

    /// Forgets limiters the new runtime no longer uses.
    pub fn retain(&self, in_use: &HashSet<(Scope, RateQuota)>) {
        self.lock().retain(|key, _| in_use.contains(key));
    }

    /// Drops the state of clients that are back to a full budget, and frees the memory; with
    /// `only_over_cap`, only in the limiters tracking [`MAX_TRACKED_CLIENTS`] or more.
    pub fn evict_idle(&self, only_over_cap: bool) -> usize {
        let limiters: Vec<_> = self.lock().values().cloned().collect();
        limiters
            .iter()
            .map(|l| {
                if !only_over_cap || l.len() >= MAX_TRACKED_CLIENTS {
                    l.retain_recent();
                    l.shrink_to_fit();
                }
                l.len()
            })
            .sum()
    }

    /// Evicts idle clients every `interval` until `shutdown`, and early (at most once a second)
    /// from a limiter a request found over its cap.
    pub async fn evict_until(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_early = tokio::time::Instant::now() - Duration::from_secs(1);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let tracked = self.evict_idle(false);
                    tracing::debug!(tracked, "evicted idle rate-limit keys");
                }
                () = self.evict_soon.notified() => {
                    // A flood of distinct clients must not turn eviction into a busy loop.
                    tokio::time::sleep_until(last_early + Duration::from_secs(1)).await;
                    last_early = tokio::time::Instant::now();
                    let tracked = self.evict_idle(true);
                    tracing::warn!(tracked, "rate limiter over its tracked-client cap; evicted idle clients early");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn quota(rps: u32, burst: u32) -> RateQuota {
        RateQuota {
            requests_per_second: NonZeroU32::new(rps).unwrap(),
            burst: NonZeroU32::new(burst).unwrap(),
        }
    }

    #[test]
    fn same_scope_and_quota_share_state_a_new_quota_starts_fresh() {
        let store = LimiterStore::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = store.get(Scope::Global, quota(1, 1));
        assert!(a.check(ip).is_ok());
        let again = store.get(Scope::Global, quota(1, 1));
        let retry = again.check(ip).unwrap_err();
        assert!(retry > Duration::ZERO && retry <= Duration::from_secs(1));

        let fresh = store.get(Scope::Global, quota(2, 1));
        assert!(fresh.check(ip).is_ok());
        let other_site = store.get(Scope::Site("b".into()), quota(1, 1));
        assert!(other_site.check(ip).is_ok());

        store.retain(&HashSet::from([(Scope::Global, quota(2, 1))]));
        assert!(
            store.get(Scope::Global, quota(1, 1)).check(ip).is_ok(),
            "a dropped limiter starts over"
        );
    }

    #[test]
    fn ipv6_clients_share_a_budget_per_64() {
        let store = LimiterStore::default();
        let l = store.get(Scope::Global, quota(1, 1));
        assert!(l.check("2001:db8:1:2::1".parse().unwrap()).is_ok());
        assert!(
            l.check("2001:db8:1:2:ffff::9".parse().unwrap()).is_err(),
            "same /64"
        );
        assert!(
            l.check("2001:db8:1:3::1".parse().unwrap()).is_ok(),
            "another /64"
        );
        assert!(l.check("::ffff:192.0.2.9".parse().unwrap()).is_ok());
        assert!(
            l.check("192.0.2.9".parse().unwrap()).is_err(),
            "mapped IPv4 is the IPv4 client"
        );
    }

    #[test]
    fn idle_keys_are_evicted() {
        let store = LimiterStore::default();
        let l = store.get(Scope::Global, quota(1000, 1));
        for i in 0..10u8 {
            let _ = l.check(IpAddr::from([192, 0, 2, i]));
        }
        // After 1 ms at 1000/s every client is back to a full budget.
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(store.evict_idle(false), 0);
    }
}
