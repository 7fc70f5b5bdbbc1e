//! Circuit breakers of one upstream, as Envoy has them per cluster: at most `max_connections`
//! open at once (a request that needs one more waits as *pending*), at most
//! `max_pending_requests` waiting, at most `max_requests` outstanding. Past a limit a request
//! gets 503 at once and `proxy_upstream_overflow_total` counts it; it never counts against the
//! upstream's health, since the upstream did nothing wrong.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::convert::UpstreamLimits;

/// A request refused by a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open: {limit} reached")]
pub struct CircuitOpen {
    /// The limit's config key.
    pub limit: &'static str,
}

/// One upstream's connection and pending counts.
#[derive(Debug)]
pub struct Breaker {
    limits: UpstreamLimits,
    connections: Arc<Semaphore>,
    pending: AtomicUsize,
}

impl Breaker {
    pub fn new(limits: UpstreamLimits) -> Breaker {
        Breaker {
            limits,
            connections: Arc::new(Semaphore::new(
                limits.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            pending: AtomicUsize::new(0),
        }
    }

    pub fn limits(&self) -> &UpstreamLimits {
        &self.limits
    }

    /// A place for one more connection if one is free now; never waits.
    pub(super) fn try_connection(&self) -> Option<OwnedSemaphorePermit> {
        self.connections.clone().try_acquire_owned().ok()
    }

    /// A place for one more connection: at once, or after waiting as a pending request.
    pub(super) async fn connection(&self) -> Result<OwnedSemaphorePermit, CircuitOpen> {
        if let Ok(permit) = self.connections.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let overflow = CircuitOpen {
            limit: "max_pending_requests",
        };
        // The place is given back however the wait ends: with a connection, or dropped when
        // the request is cancelled (its deadline, a client gone). A decrement after the
        // `await` alone leaked one place per cancelled waiter, until every request got 503.
        let pending = Pending::take(&self.pending);
        if pending.before >= self.limits.max_pending_requests {
            return Err(overflow);
        }
        let waited = self.connections.clone().acquire_owned().await;
        drop(pending);
        waited.map_err(|_| overflow)
    }

    /// Whether requests wait for a place under `max_connections`.
    pub(super) fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed) > 0
    }

    /// Connections open now.
    #[cfg(test)]
    fn open_connections(&self) -> usize {
        self.limits
            .max_connections
            .saturating_sub(self.connections.available_permits())
    }
}

/// One place among the pending requests, given back when dropped.
struct Pending<'a> {
    count: &'a AtomicUsize,
    /// How many were pending before this one.
    before: usize,
}

impl<'a> Pending<'a> {
    fn take(count: &'a AtomicUsize) -> Pending<'a> {
        let before = count.fetch_add(1, Ordering::AcqRel);
        Pending { count, before }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_past_the_limit_wait_and_pending_past_its_limit_are_refused() {
        let breaker = Arc::new(Breaker::new(UpstreamLimits {
            max_connections: 1,
            max_pending_requests: 1,
            ..UpstreamLimits::default()
        }));
        let first = breaker.connection().await.unwrap();
        assert_eq!(breaker.open_connections(), 1);
        let b = breaker.clone();
        let waiting = tokio::spawn(async move { b.connection().await.map(drop) });
        // The waiter holds the one pending place (poll until it does).
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while breaker.pending.load(Ordering::Acquire) == 0 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        assert_eq!(
            breaker.connection().await.unwrap_err().limit,
            "max_pending_requests"
        );
        drop(first);
        waiting.await.unwrap().unwrap();
        assert_eq!(breaker.open_connections(), 0);
    }

    /// Issue 19 #4: waiters cancelled by a deadline gave their pending place back never, and
    /// after `max_pending_requests` of them every request that had to wait got 503 at once.
    #[tokio::test]
    async fn cancelled_waiters_give_their_pending_place_back() {
        let breaker = Arc::new(Breaker::new(UpstreamLimits {
            max_connections: 1,
            max_pending_requests: 1,
            ..UpstreamLimits::default()
        }));
        let first = breaker.connection().await.unwrap();
        for _ in 0..4 {
            let cancelled =
                tokio::time::timeout(std::time::Duration::from_millis(10), breaker.connection())
                    .await;
            assert!(
                cancelled.is_err(),
                "it waited, and its deadline ended the wait"
            );
            assert_eq!(breaker.pending.load(Ordering::Acquire), 0);
        }
        // A request that must wait still may, and gets the connection once it is free.
        let b = breaker.clone();
        let waiting = tokio::spawn(async move { b.connection().await.map(drop) });
        while breaker.pending.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        drop(first);
        waiting.await.unwrap().unwrap();
    }
}
