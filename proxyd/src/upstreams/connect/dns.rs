//! Upstream host names to addresses for dialing: the system resolver behind a small process-wide
//! cache, so a busy upstream is not looked up on every new connection and a resolver outage of
//! up to a minute does not take down upstreams that resolved before it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

/// How long an answer is used without asking again. getaddrinfo does not say how long the
/// records may be kept (their TTL), so this is a short bound of our own: it spares the resolver
/// a lookup per connection, yet follows a DNS change within seconds.
pub const FRESH: Duration = Duration::from_secs(5);

/// How long past `FRESH` an answer still stands in when the resolver fails; after that the
/// failure is the caller's.
pub const STALE: Duration = Duration::from_secs(60);

/// Names kept at most: upstream names come from the config, so this is far more than a
/// deployment uses, and bounds the memory if one ever churns.
const CAPACITY: usize = 1024;

/// Something that turns a host and port into addresses: the system resolver, or a test's fake.
pub trait Lookup: Send + Sync {
    fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send;
}

/// getaddrinfo, through tokio (on its blocking threads).
pub struct System;

impl Lookup for System {
    async fn lookup(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// The process-wide cache every dial goes through.
pub fn system() -> &'static Cache<System> {
    static CACHE: OnceLock<Cache<System>> = OnceLock::new();
    CACHE.get_or_init(|| Cache::new(System, CAPACITY))
}

/// What one lookup gave, shared by everyone who waited for it. `io::Error` does not clone, so a
/// failure is handed to each waiter as a copy of its kind and message.
type Outcome = Result<Arc<[SocketAddr]>, (io::ErrorKind, String)>;

/// One name's cached answer and the lookup in progress for it, if any.
#[derive(Default)]
struct Slot {
    answer: Option<Answer>,
    /// Dials that find no fresh answer wait on this one lookup rather than each calling
    /// getaddrinfo. If the dial running the lookup is dropped (its connect timeout), a waiter
    /// takes the lookup over (`OnceCell::get_or_init`).
    pending: Option<Arc<OnceCell<Outcome>>>,
}

struct Answer {
    addresses: Arc<[SocketAddr]>,
    resolved: Instant,
}

impl Answer {
    fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.resolved)
    }
}

/// Answers by (host, port), fresh for `FRESH`, kept for `STALE` more as a fallback. Failures are
/// never cached. The lock is held only to read or update the map, never across a lookup.
pub struct Cache<L> {
    lookup: L,
    capacity: usize,
    slots: Mutex<HashMap<(String, u16), Slot>>,
}

impl<L: Lookup> Cache<L> {
    pub fn new(lookup: L, capacity: usize) -> Cache<L> {
        Cache {
            lookup,
            capacity: capacity.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The addresses of `host` as of `now`: a fresh cached answer, else a new lookup (shared with
    /// concurrent callers for the same name); when that fails, an answer at most `STALE` past
    /// its freshness, with a warning. An empty answer is returned but not cached.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        now: Instant,
    ) -> io::Result<Arc<[SocketAddr]>> {
        let key = (host.to_ascii_lowercase(), port);
        let pending = {
            let mut slots = self.lock();
            if let Some(answer) = slots.get(&key).and_then(|slot| slot.answer.as_ref())
                && answer.age(now) < FRESH
            {
                return Ok(answer.addresses.clone());
            }
            match slots.get(&key).and_then(|slot| slot.pending.clone()) {
                Some(pending) => pending,
                None => {
                    let pending = Arc::new(OnceCell::new());
                    if !slots.contains_key(&key) {
                        evict(&mut slots, self.capacity, now);
                    }
                    slots.entry(key.clone()).or_default().pending = Some(pending.clone());
                    pending
                }
            }
        };
        let outcome = pending
            .get_or_init(|| async {
                match self.lookup.lookup(host, port).await {
                    Ok(addresses) => Ok(Arc::from(addresses)),
                    Err(e) => Err((e.kind(), e.to_string())),
                }
            })
            .await;
        self.settle(&key, &pending, outcome, now)
    }

    /// Records what the lookup gave (the first waiter back does, once per lookup) and picks what
    /// this caller gets.
    fn settle(
        &self,
        key: &(String, u16),
        pending: &Arc<OnceCell<Outcome>>,
        outcome: &Outcome,
        now: Instant,
    ) -> io::Result<Arc<[SocketAddr]>> {
        let error =
            |(kind, message): &(io::ErrorKind, String)| io::Error::new(*kind, message.clone());
        let mut slots = self.lock();
        // A slot evicted while its lookup ran is not put back: the next dial looks up again.
        let Some(slot) = slots.get_mut(key) else {
            return outcome.as_ref().map(Arc::clone).map_err(error);
        };
        let first = slot
            .pending
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, pending));
        if first {
            slot.pending = None;
        }
        let result = match outcome {
            Ok(addresses) => {
                if first && !addresses.is_empty() {
                    slot.answer = Some(Answer {
                        addresses: addresses.clone(),
                        resolved: now,
                    });
                }
                Ok(addresses.clone())
            }
            Err(e) => match slot.answer.as_ref() {
                Some(answer) if answer.age(now) < FRESH + STALE => {
                    if first {
                        tracing::warn!(
                            host = %key.0,
                            port = key.1,
                            error = %e.1,
                            age_secs = answer.age(now).as_secs(),
                            "resolving an upstream failed; using its last addresses"
                        );
                    }
                    Ok(answer.addresses.clone())
                }
                _ => Err(error(e)),
            },
        };
        // Nothing to keep (a failure, an empty answer): the name takes no room.
        if slot.answer.is_none() && slot.pending.is_none() {
            slots.remove(key);
        }
        result
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(String, u16), Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Makes room for one more name: drops every answer too old to stand in, then, if still full,
/// one name, preferring one with no lookup in progress.
fn evict(slots: &mut HashMap<(String, u16), Slot>, capacity: usize, now: Instant) {
    if slots.len() < capacity {
        return;
    }
    slots.retain(|_, slot| {
        slot.pending.is_some()
            || slot
                .answer
                .as_ref()
                .is_some_and(|answer| answer.age(now) < FRESH + STALE)
    });
    while slots.len() >= capacity {
        let victim = slots
            .iter()
            .find(|(_, slot)| slot.pending.is_none())
            .or_else(|| slots.iter().next())
            .map(|(key, _)| key.clone());
        match victim {
            Some(key) => slots.remove(&key),
            None => return,
        };
    }
}

#[cfg(test)]
mod tests;
