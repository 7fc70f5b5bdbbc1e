//! The cache against a fake resolver that counts its lookups, with the clock passed in.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

use super::*;

/// Answers what the test last told it to, counting lookups; each lookup yields once first, so
/// that callers polled together are all waiting before it answers.
struct Fake {
    lookups: AtomicUsize,
    answer: Mutex<Result<Vec<SocketAddr>, String>>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            lookups: AtomicUsize::new(0),
            answer: Mutex::new(Err("not set".to_owned())),
        }
    }

    fn answer(&self, answer: Result<Vec<SocketAddr>, &str>) {
        *self.answer.lock().unwrap() = answer.map_err(str::to_owned);
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

impl Lookup for &Fake {
    async fn lookup(&self, _host: &str, _port: u16) -> io::Result<Vec<SocketAddr>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        let answer = self.answer.lock().unwrap().clone();
        answer.map_err(io::Error::other)
    }
}

fn addr(last: u8) -> SocketAddr {
    SocketAddr::from(([192, 0, 2, last], 80))
}

#[tokio::test]
async fn a_fresh_answer_is_not_looked_up_again() {
    let fake = Fake::new();
    let cache = Cache::new(&fake, 16);
    let t0 = Instant::now();
    fake.answer(Ok(vec![addr(1)]));
    assert_eq!(&*cache.resolve("api", 80, t0).await.unwrap(), [addr(1)]);
    fake.answer(Ok(vec![addr(2)]));
    let later = t0 + FRESH - Duration::from_millis(1);
    assert_eq!(&*cache.resolve("API", 80, later).await.unwrap(), [addr(1)]);
    assert_eq!(fake.lookups(), 1);
    // Another port is another name.
    assert_eq!(&*cache.resolve("api", 81, later).await.unwrap(), [addr(2)]);
    assert_eq!(fake.lookups(), 2);
}

#[tokio::test]
async fn an_expired_answer_is_looked_up_again() {
    let fake = Fake::new();
    let cache = Cache::new(&fake, 16);
    let t0 = Instant::now();
    fake.answer(Ok(vec![addr(1)]));
    cache.resolve("api", 80, t0).await.unwrap();
    fake.answer(Ok(vec![addr(2)]));
    let expired = t0 + FRESH;
    assert_eq!(
        &*cache.resolve("api", 80, expired).await.unwrap(),
        [addr(2)]
    );
    assert_eq!(fake.lookups(), 2);
    // The new answer is fresh from when it was looked up.
    let within = expired + FRESH - Duration::from_millis(1);
    assert_eq!(&*cache.resolve("api", 80, within).await.unwrap(), [addr(2)]);
    assert_eq!(fake.lookups(), 2);
}

#[tokio::test]
async fn a_failed_lookup_falls_back_to_a_stale_answer_for_a_while() {
    let fake = Fake::new();
    let cache = Cache::new(&fake, 16);
    let t0 = Instant::now();
    fake.answer(Ok(vec![addr(1)]));
    cache.resolve("api", 80, t0).await.unwrap();
    fake.answer(Err("resolver down"));
    let stale = t0 + FRESH + STALE - Duration::from_millis(1);
    assert_eq!(&*cache.resolve("api", 80, stale).await.unwrap(), [addr(1)]);
    // The failure is not cached: the next dial asks again.
    assert_eq!(&*cache.resolve("api", 80, stale).await.unwrap(), [addr(1)]);
    assert_eq!(fake.lookups(), 3);
    let too_old = t0 + FRESH + STALE;
    let e = cache.resolve("api", 80, too_old).await.unwrap_err();
    assert_eq!(e.to_string(), "resolver down");
    // Once the resolver is back, the new answer replaces the old.
    fake.answer(Ok(vec![addr(2)]));
    assert_eq!(
        &*cache.resolve("api", 80, too_old).await.unwrap(),
        [addr(2)]
    );
}

#[tokio::test]
async fn a_failed_lookup_without_an_answer_is_an_error_and_not_cached() {
    let fake = Fake::new();
    let cache = Cache::new(&fake, 16);
    let t0 = Instant::now();
    fake.answer(Err("no such host"));
    let e = cache.resolve("nowhere", 80, t0).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::Other);
    assert_eq!(e.to_string(), "no such host");
    assert_eq!(cache.len(), 0);
    fake.answer(Ok(vec![addr(1)]));
    assert_eq!(&*cache.resolve("nowhere", 80, t0).await.unwrap(), [addr(1)]);
    assert_eq!(fake.lookups(), 2);
}

#[tokio::test]
async fn an_empty_answer_is_not_cached() {
    let fake = Fake::new();
    let cache = Cache::new(&fake, 16);
    let t0 = Instant::now();
    fake.answer(Ok(vec![]));
    assert!(cache.resolve("api", 80, t0).await.unwrap().is_empty());
    assert!(cache.resolve("api", 80, t0).await.unwrap().is_empty());
    assert_eq!(fake.lookups(), 2);
    assert_eq!(cache.len(), 0);
}

#[tokio::test]
async fn concurrent_dials_share_one_lookup() {
    let fake = Fake::new();
    let cache = Cache::new(&fake, 16);
    let t0 = Instant::now();
    fake.answer(Ok(vec![addr(1)]));
    let (a, b, c) = tokio::join!(
        cache.resolve("api", 80, t0),
        cache.resolve("api", 80, t0),
        cache.resolve("api", 80, t0),
    );
    for addresses in [a, b, c] {
        assert_eq!(&*addresses.unwrap(), [addr(1)]);
    }
    assert_eq!(fake.lookups(), 1);
    // Nothing is left waiting: the next expiry looks up again.
    cache.resolve("api", 80, t0 + FRESH).await.unwrap();
    assert_eq!(fake.lookups(), 2);
}

#[tokio::test]
async fn a_dropped_lookup_is_taken_over() {
    let fake = Fake::new();
    let cache = Cache::new(&fake, 16);
    let t0 = Instant::now();
    fake.answer(Ok(vec![addr(1)]));
    // The first dial starts the lookup and is dropped (its connect timeout) before it answers.
    let mut first = Box::pin(cache.resolve("api", 80, t0));
    let polled = std::future::poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx))).await;
    assert!(polled.is_pending());
    drop(first);
    assert_eq!(&*cache.resolve("api", 80, t0).await.unwrap(), [addr(1)]);
    assert_eq!(fake.lookups(), 2);
}

#[tokio::test]
async fn the_cache_is_bounded_and_evicts_expired_names_first() {
    let fake = Fake::new();
    let cache = Cache::new(&fake, 2);
    let t0 = Instant::now();
    fake.answer(Ok(vec![addr(1)]));
    cache.resolve("old", 80, t0).await.unwrap();
    let t1 = t0 + FRESH + STALE;
    cache.resolve("a", 80, t1).await.unwrap();
    // Full: "old" is past any use and goes, "a" stays.
    cache.resolve("b", 80, t1).await.unwrap();
    assert_eq!(cache.len(), 2);
    assert_eq!(fake.lookups(), 3);
    cache.resolve("a", 80, t1).await.unwrap();
    cache.resolve("b", 80, t1).await.unwrap();
    assert_eq!(fake.lookups(), 3);
    // Full of usable answers: one of them goes.
    cache.resolve("c", 80, t1).await.unwrap();
    assert_eq!(cache.len(), 2);
    assert_eq!(fake.lookups(), 4);
}
