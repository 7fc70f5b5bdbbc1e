//! The data planes subscribed right now, what each serves, and waiting for their answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;
use tokio::time::Instant;

/// What a data plane said about itself and its snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plane {
    pub node_id: String,
    pub pid: u32,
    pub build_version: String,
    /// The version it reports serving (from Hello, then from each ACK or NACK); 0 = none.
    pub applied_version: u64,
    /// The last version it ACKed on this stream. Only an ACK counts as an answer: a Hello's
    /// version says nothing about a version published after it.
    pub acked_version: u64,
    /// The last version sent to it.
    pub sent_version: u64,
    /// The last refused version and why.
    pub last_nack: Option<(u64, String)>,
    /// (name, bound address).
    pub listeners: Vec<(String, String)>,
    pub connected_at_unix_ms: u64,
}

/// What one data plane did with a published version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaneResult {
    Acked,
    Nacked,
    TimedOut,
    Disconnected,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneOutcome {
    pub node_id: String,
    pub pid: u32,
    pub result: PlaneResult,
    pub serving_version: u64,
    pub error: String,
}

/// Registry of subscribed data planes. Every change bumps a watch so waiters wake up.
#[derive(Debug)]
pub struct DataPlanes {
    planes: Mutex<HashMap<u64, Plane>>,
    next_id: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Default for DataPlanes {
    fn default() -> Self {
        DataPlanes {
            planes: Mutex::default(),
            next_id: AtomicU64::new(1),
            changed: watch::channel(0).0,
        }
    }
}

/// Keeps a data plane registered; dropping it (the stream ended) removes it.
#[derive(Debug)]
pub struct Registration {
    planes: Arc<DataPlanes>,
    pub id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let removed = self.planes.lock().remove(&self.id);
        if let Some(p) = removed {
            tracing::info!(node_id = %p.node_id, pid = p.pid, "data plane disconnected");
        }
        self.planes.notify();
    }
}

impl DataPlanes {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Plane>> {
        // A panic while holding this lock cannot leave a plane half-updated: every update is a
        // single field assignment. Keep serving rather than propagate the poison.
        self.planes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Plane)) {
        if let Some(p) = self.lock().get_mut(&id) {
            f(p);
        }
        self.notify();
    }

    pub fn register(self: &Arc<Self>, plane: Plane) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        tracing::info!(node_id = %plane.node_id, pid = plane.pid, build = %plane.build_version,
            serving = plane.applied_version, "data plane subscribed");
        self.lock().insert(id, plane);
        self.notify();
        Registration {
            planes: Arc::clone(self),
            id,
        }
    }

    pub fn sent(&self, id: u64, version: u64) {
        self.update(id, |p| p.sent_version = version);
    }

    pub fn acked(&self, id: u64, version: u64, listeners: Vec<(String, String)>) {
        self.update(id, |p| {
            p.applied_version = version;
            p.acked_version = version;
            p.listeners = listeners;
            if p.last_nack.as_ref().is_some_and(|(v, _)| *v <= version) {
                p.last_nack = None;
            }
        });
    }

    pub fn nacked(&self, id: u64, version: u64, error: String, serving: u64) {
        self.update(id, |p| {
            tracing::warn!(node_id = %p.node_id, version, serving, %error, "data plane refused a snapshot");
            p.last_nack = Some((version, error));
            p.applied_version = serving;
        });
    }

    /// Every subscribed data plane, in subscription order.
    pub fn list(&self) -> Vec<Plane> {
        let planes = self.lock();
        let mut ids: Vec<_> = planes.keys().copied().collect();
        ids.sort_unstable();
        ids.iter()
            .filter_map(|id| planes.get(id).cloned())
            .collect()
    }

    /// Every subscribed data plane with its registry id, in subscription order.
    pub fn connected(&self) -> Vec<(u64, Plane)> {
        let planes = self.lock();
        let mut all: Vec<_> = planes.iter().map(|(id, p)| (*id, p.clone())).collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }

    /// Waits until each data plane of `waiting` (as [`DataPlanes::connected`] listed them) has
    /// applied or refused `version`, has gone away, or `deadline` passes; then says what each did.
    pub async fn wait_for(
        &self,
        version: u64,
        waiting: &[(u64, Plane)],
        deadline: Instant,
    ) -> Vec<PlaneOutcome> {
        let mut changes = self.changed.subscribe();
        let mut known: HashMap<u64, Plane> = waiting.iter().cloned().collect();
        loop {
            let pending = {
                let planes = self.lock();
                let mut pending = false;
                for (id, _) in waiting {
                    if let Some(p) = planes.get(id) {
                        pending |= answer(p, version).is_none();
                        known.insert(*id, p.clone());
                    }
                }
                pending
            };
            if !pending {
                break;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => break,
            }
        }
        let planes = self.lock();
        waiting
            .iter()
            .filter_map(|(id, _)| {
                let (plane, result) = match planes.get(id) {
                    Some(p) => (p, answer(p, version).unwrap_or(PlaneResult::TimedOut)),
                    None => (known.get(id)?, PlaneResult::Disconnected),
                };
                let error = match (&plane.last_nack, result) {
                    (Some((_, e)), PlaneResult::Nacked) => e.clone(),
                    _ => String::new(),
                };
                Some(PlaneOutcome {
                    node_id: plane.node_id.clone(),
                    pid: plane.pid,
                    result,
                    serving_version: plane.applied_version,
                    error,
                })
            })
            .collect()
    }
}

fn answer(p: &Plane, version: u64) -> Option<PlaneResult> {
    if p.acked_version >= version {
        Some(PlaneResult::Acked)
    } else if p.last_nack.as_ref().is_some_and(|(v, _)| *v >= version) {
        Some(PlaneResult::Nacked)
    } else {
        None
    }
}
