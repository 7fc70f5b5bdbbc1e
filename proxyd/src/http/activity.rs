//! What a client connection has in progress, for the deadlines of the connection that serves
//! it: requests (the HTTP/2 idle timeout waits for none to be in progress).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Requests in progress on one client connection, and since when it has had none: the HTTP/2
/// idle timeout reads it.
#[derive(Debug)]
pub struct Activity {
    active: AtomicUsize,
    /// Milliseconds since `start` when the last request ended.
    idle_since_ms: AtomicU64,
    start: Instant,
}

/// Holds one request in [`Activity`] until dropped (with the response body).
#[derive(Debug)]
pub struct ActiveRequest(Arc<Activity>);

impl Activity {
    pub fn new() -> Activity {
        Activity {
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            start: Instant::now(),
        }
    }

    pub fn request_started(self: &Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::AcqRel);
        ActiveRequest(self.clone())
    }

    /// How long the connection has been without a request; `None` while one is in progress.
    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.start.elapsed().saturating_sub(since))
    }

    /// Resolves once the connection has been idle for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let wait = match self.idle_for() {
                Some(idle) if idle >= timeout => return,
                Some(idle) => timeout - idle,
                None => timeout,
            };
            tokio::time::sleep(wait).await;
        }
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        let now = u64::try_from(self.0.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.idle_since_ms.store(now, Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
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
        let started = Instant::now();
        activity.idle(Duration::from_millis(300)).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
    }
}
