//! What a client connection has in progress, for the deadlines of the connection that serves
//! it: requests (the HTTP/2 idle timeout waits for none to be in progress), and responses on
//! their way to the client (a client that takes them slower than `response_min_rate` loses the
//! connection: a response body that hyper does not poll cannot time itself, and it holds an
//! upstream connection and a `max_requests` place meanwhile). It also tells an HTTP/1.1
//! connection when it may give its buffers back while it waits ([`Activity::park_due`]).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Requests in progress on one client connection, and since when it has had none: the HTTP/2
/// idle timeout reads it.
#[derive(Debug)]
pub struct Activity {
    active: AtomicUsize,
    /// Request bodies still being read from the client and forwarded: a response can end
    /// before its request's body (an upstream that answers early and reads on).
    bodies: AtomicUsize,
    /// Milliseconds since `start` when a forwarded request body last moved.
    body_moved_ms: AtomicU64,
    /// Requests started on the connection, ever.
    started: AtomicU64,
    /// A write to the client is blocked (the client does not read): bytes may wait in hyper's
    /// write buffer.
    write_blocked: AtomicBool,
    /// Milliseconds since `start` when the last request ended.
    idle_since_ms: AtomicU64,
    start: Instant,
    /// Responses that have handed the client a part and have more to come.
    deliveries: Mutex<Vec<Weak<Delivery>>>,
    delivery_added: tokio::sync::Notify,
}

/// Holds one request in [`Activity`] until dropped (with the response body).
#[derive(Debug)]
pub struct ActiveRequest {
    activity: Arc<Activity>,
    /// Its response's delivery, once a first part of several was handed out.
    delivery: Option<Arc<Delivery>>,
}

/// How a response's delivery to the client goes.
#[derive(Debug)]
struct Delivery {
    started: Instant,
    /// Bytes handed to the client so far.
    bytes: AtomicU64,
    /// Milliseconds since `started` when a part was handed out and not taken yet;
    /// `NOT_WAITING` while the response waits on its upstream instead.
    handed_ms: AtomicU64,
}

const NOT_WAITING: u64 = u64::MAX;

impl Delivery {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// Whether the client has kept the part it was handed for `grace` while the whole response
    /// averaged less than `min_rate`; else when to look again (`None`: not waiting on the
    /// client).
    fn judge(&self, grace: Duration, min_rate: u64) -> Result<Option<Instant>, ()> {
        let handed = self.handed_ms.load(Ordering::Acquire);
        if handed == NOT_WAITING {
            return Ok(None);
        }
        let now = self.now_ms();
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let bytes = self.bytes.load(Ordering::Relaxed);
        // The rate falls under the minimum once the elapsed time exceeds what the bytes buy.
        let bought_ms = bytes.saturating_mul(1000) / min_rate.max(1);
        let due = handed.saturating_add(grace_ms).max(bought_ms);
        if now >= due {
            return Err(());
        }
        Ok(Some(self.started + Duration::from_millis(due)))
    }
}

impl ActiveRequest {
    /// Its response handed the client a part (`bytes` in all so far) and has more to come.
    pub fn delivery_handed(&mut self, bytes: u64) {
        let delivery = self.delivery.get_or_insert_with(|| {
            let delivery = Arc::new(Delivery {
                started: Instant::now(),
                bytes: AtomicU64::new(0),
                handed_ms: AtomicU64::new(NOT_WAITING),
            });
            let mut deliveries = self
                .activity
                .deliveries
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            deliveries.retain(|d| d.strong_count() > 0);
            deliveries.push(Arc::downgrade(&delivery));
            drop(deliveries);
            self.activity.delivery_added.notify_waiters();
            delivery
        });
        delivery.bytes.store(bytes, Ordering::Relaxed);
        let now = delivery.now_ms();
        delivery.handed_ms.store(now, Ordering::Release);
    }

    /// The client took what it was handed: the response waits on its upstream again.
    pub fn delivery_taken(&self) {
        if let Some(delivery) = &self.delivery {
            delivery.handed_ms.store(NOT_WAITING, Ordering::Release);
        }
    }
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            active: AtomicUsize::new(0),
            bodies: AtomicUsize::new(0),
            body_moved_ms: AtomicU64::new(0),
            started: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            start: Instant::now(),
            deliveries: Mutex::default(),
            delivery_added: tokio::sync::Notify::new(),
        }
    }

    pub fn request_started(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::Relaxed);
        ActiveRequest {
            activity: self.clone(),
            delivery: None,
        }
    }

    /// Resolves once a response has waited on the client for `grace` with its whole delivery
    /// slower than `min_rate` bytes per second: the client is too slow to keep the connection.
    pub async fn slow_reader(&self, grace: Duration, min_rate: u64) {
        loop {
            let added = self.delivery_added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            let (next, watching) = {
                let mut deliveries = self.deliveries.lock().unwrap_or_else(|e| e.into_inner());
                deliveries.retain(|d| d.strong_count() > 0);
                let mut next: Option<Instant> = None;
                for delivery in deliveries.iter().filter_map(Weak::upgrade) {
                    match delivery.judge(grace, min_rate) {
                        Err(()) => return,
                        Ok(Some(at)) => next = Some(next.map_or(at, |n| n.min(at))),
                        Ok(None) => {}
                    }
                }
                (next, !deliveries.is_empty())
            };
            match (next, watching) {
                // Nothing on its way to the client: no timer until a response registers (an
                // idle keep-alive connection costs no wake-ups).
                (None, false) => added.await,
                // A response that waits on its upstream now may wait on the client later: look
                // again after the grace at the latest.
                (next, _) => {
                    let recheck = next.unwrap_or_else(|| Instant::now() + grace);
                    tokio::select! {
                        () = tokio::time::sleep_until(recheck.into()) => {}
                        () = &mut added => {}
                    }
                }
            }
        }
    }

    /// How long the connection has been without a request; `None` while one is in progress (its
    /// response or its request body).
    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 || self.bodies.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(self.since(&self.idle_since_ms))
    }

    /// Holds the connection busy while a request body is forwarded, until it ends or is dropped.
    pub fn body_open(self: &Arc<Self>) -> BodyOpen {
        self.bodies.fetch_add(1, Ordering::AcqRel);
        let open = BodyOpen {
            activity: self.clone(),
        };
        open.moved();
        open
    }

    /// Requests started on the connection so far.
    pub fn requests_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Whether a write to the client is blocked now (set by the socket's wrapper).
    pub fn set_write_blocked(&self, blocked: bool) {
        self.write_blocked.store(blocked, Ordering::Relaxed);
    }

    /// What the connection's deadlines call for next, once it is due (one timer for all):
    ///
    /// - [`Due::Idle`]: no request in progress (nor a request body) for `idle_timeout`;
    /// - [`Due::Park`], with `park` = (delay, requests started before the round): an HTTP/1.1
    ///   connection may be taken back from hyper and wait for its next request without buffers.
    ///   A request started in the round (so a head hyper holds half-read is not handed over
    ///   again and again, each time with a fresh header timeout), none in progress and none for
    ///   the delay, no request body still forwarded (its rest would be read as a request), and
    ///   nothing waiting to be written to the client;
    /// - [`Due::BodyStalled`]: every response is done, but a request body still forwarded has
    ///   not moved for `body_timeout` (an upstream that answered early and stopped reading):
    ///   nothing else would ever end the connection.
    pub async fn due(
        &self,
        idle_timeout: Duration,
        park: Option<(Duration, u64)>,
        body_timeout: Duration,
    ) -> Due {
        // While requests are in progress nothing wakes this when they end: look again at the
        // shortest of the deadlines (1 s when parking).
        let busy_wait = park.map_or(idle_timeout, |(after, _)| after.min(idle_timeout));
        loop {
            let mut wait = busy_wait.min(body_timeout);
            if self.active.load(Ordering::Acquire) == 0 {
                if self.bodies.load(Ordering::Acquire) > 0 {
                    let stalled = self.since(&self.body_moved_ms);
                    if stalled >= body_timeout {
                        return Due::BodyStalled;
                    }
                    wait = body_timeout - stalled;
                } else {
                    let idle = self.since(&self.idle_since_ms);
                    if idle >= idle_timeout {
                        return Due::Idle;
                    }
                    wait = idle_timeout - idle;
                    if let Some((after, started_before)) = park {
                        let ready = self.requests_started() > started_before
                            && !self.write_blocked.load(Ordering::Relaxed);
                        if ready && idle >= after {
                            return Due::Park;
                        }
                        // Not ready yet: look again after the delay.
                        wait = wait.min(if ready { after - idle } else { after });
                    }
                }
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// How long ago the instant in `ms` (milliseconds since `start`) was.
    fn since(&self, ms: &AtomicU64) -> Duration {
        let at = Duration::from_millis(ms.load(Ordering::Acquire));
        self.start.elapsed().saturating_sub(at)
    }

    /// When the connection will have been idle for `timeout`: `None` when it has been already.
    /// With something in progress, `timeout` from now (to be asked again then).
    pub fn idle_deadline(&self, timeout: Duration) -> Option<tokio::time::Instant> {
        let wait = match self.idle_for() {
            Some(idle) if idle >= timeout => return None,
            Some(idle) => timeout - idle,
            None => timeout,
        };
        Some(tokio::time::Instant::now() + wait)
    }
}

impl Activity {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Something in progress ended now.
    fn mark_idle_since(&self) {
        self.idle_since_ms.store(self.now_ms(), Ordering::Release);
    }
}

/// What [`Activity::due`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Idle,
    Park,
    BodyStalled,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.activity.mark_idle_since();
        self.activity.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request body being forwarded ([`Activity::body_open`]).
#[derive(Debug)]
pub struct BodyOpen {
    activity: Arc<Activity>,
}

impl BodyOpen {
    /// The body moved (a frame read from the client).
    pub fn moved(&self) {
        let activity = &self.activity;
        activity
            .body_moved_ms
            .store(activity.now_ms(), Ordering::Release);
    }
}

impl Drop for BodyOpen {
    fn drop(&mut self) {
        self.activity.mark_idle_since();
        self.activity.bodies.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_counts_from_the_end_of_the_last_request() {
        let activity = Arc::new(Activity::new());
        let request = activity.request_started();
        assert!(activity.idle_for().is_none());
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(request);
        assert!(activity.idle_for().unwrap() < Duration::from_millis(200));
        // Idle for 300 ms from the end of the request, not from its start.
        let deadline = activity.idle_deadline(Duration::from_millis(300)).unwrap();
        let left = deadline - tokio::time::Instant::now();
        assert!(left > Duration::from_millis(100), "{left:?}");
        assert!(left <= Duration::from_millis(300), "{left:?}");
        assert!(activity.idle_deadline(Duration::ZERO).is_none());
        // Busy: asked again a whole timeout later.
        let _request = activity.request_started();
        let deadline = activity.idle_deadline(Duration::from_secs(60)).unwrap();
        assert!(deadline - tokio::time::Instant::now() > Duration::from_secs(59));
    }
}
