//! The data planes subscribed right now, what each serves, and waiting for their answers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// How long a reload waits for a data plane that disconnected during its wait to come back
/// (proxyd reconnects after 100 ms, then backs off): one that does is the same data plane, and
/// its answer counts.
const RECONNECT_GRACE: Duration = Duration::from_secs(2);

/// What a data plane said about itself and its snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plane {
    pub node_id: String,
    pub pid: u32,
    pub build_version: String,
    /// The version it reports serving (from Hello, then from each ACK or NACK); 0 = none.
    pub applied_version: u64,
    /// The content hash of what it serves; empty when it has none, or said none (an older
    /// proxyd). A number stands for content only within one controld's history.
    pub applied_hash: String,
    /// The last version it ACKed on this stream. Only an ACK counts as an answer: a Hello's
    /// version says nothing about a version published after it.
    pub acked_version: u64,
    /// The content hash of that ACK (empty from an older proxyd).
    pub acked_hash: String,
    /// The last version sent to it.
    pub sent_version: u64,
    /// The last refused version and why.
    pub last_nack: Option<(u64, String)>,
    /// (name, bound address).
    pub listeners: Vec<(String, String)>,
    pub connected_at_unix_ms: u64,
    /// It answers ACME challenges sent apart from snapshots (it said so in its Hello).
    pub answers_challenges: bool,
    /// The last challenge generation it answers, and what it could not take of it (empty:
    /// nothing refused).
    pub challenges_applied: u64,
    pub challenges_error: String,
    /// Its responses since it started, and of them 5xx, as it last reported (`None`: not yet,
    /// or an older proxyd).
    pub traffic: Option<(u64, u64)>,
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
    /// Per registration: wakes its stream to send the current snapshot again.
    resend: Mutex<HashMap<u64, Arc<Notify>>>,
    next_id: AtomicU64,
    changed: watch::Sender<u64>,
}

impl Default for DataPlanes {
    fn default() -> Self {
        DataPlanes {
            planes: Mutex::default(),
            resend: Mutex::default(),
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
    /// Notified when a reload wants the current snapshot sent to this data plane again.
    pub resend: Arc<Notify>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.planes
            .resend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
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

    /// Wakes on every change of the registry (a data plane subscribed, answered, left).
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
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
        let resend = Arc::new(Notify::new());
        self.resend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, resend.clone());
        self.notify();
        Registration {
            planes: Arc::clone(self),
            id,
            resend,
        }
    }

    /// Asks the stream of registration `id` to send the current snapshot, `version`, again;
    /// an earlier refusal of it is forgotten so that the answer to this sending is waited for.
    pub fn resend(&self, id: u64, version: u64) {
        self.update(id, |p| {
            if p.last_nack.as_ref().is_some_and(|(v, _)| *v == version) {
                p.last_nack = None;
            }
        });
        if let Some(notify) = self
            .resend
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            notify.notify_one();
        }
    }

    pub fn sent(&self, id: u64, version: u64) {
        self.update(id, |p| p.sent_version = version);
    }

    pub fn acked(&self, id: u64, version: u64, listeners: Vec<(String, String)>) {
        self.acked_content(id, version, String::new(), listeners);
    }

    /// An ACK of `version` whose content hash is `hash` (empty: not said).
    pub fn acked_content(
        &self,
        id: u64,
        version: u64,
        hash: String,
        listeners: Vec<(String, String)>,
    ) {
        self.update(id, |p| {
            p.applied_version = version;
            p.applied_hash = hash.clone();
            p.acked_version = version;
            p.acked_hash = hash;
            p.listeners = listeners;
            if p.last_nack.as_ref().is_some_and(|(v, _)| *v <= version) {
                p.last_nack = None;
            }
        });
    }

    pub fn nacked(&self, id: u64, version: u64, error: String, serving: u64) {
        self.nacked_content(id, version, error, serving, String::new());
    }

    /// The data plane answers the challenges of `generation`; `error`: those it could not take.
    pub fn challenges_applied(&self, id: u64, generation: u64, error: String) {
        self.update(id, |p| {
            p.challenges_applied = generation;
            p.challenges_error = error;
        });
    }

    /// The data plane's traffic since it started. Nobody waits on it: no wake-up.
    pub fn traffic(&self, id: u64, responses: u64, responses_5xx: u64) {
        if let Some(p) = self.lock().get_mut(&id) {
            p.traffic = Some((responses, responses_5xx));
        }
    }

    /// The traffic of every connected data plane that reported it, summed; `None` when none
    /// did.
    pub fn traffic_total(&self) -> Option<(u64, u64)> {
        self.lock()
            .values()
            .filter_map(|p| p.traffic)
            .reduce(|a, b| (a.0.saturating_add(b.0), a.1.saturating_add(b.1)))
    }

    /// A NACK; the data plane goes on serving `serving` with content `serving_hash`.
    pub fn nacked_content(
        &self,
        id: u64,
        version: u64,
        error: String,
        serving: u64,
        serving_hash: String,
    ) {
        self.update(id, |p| {
            tracing::warn!(node_id = %p.node_id, version, serving, %error, "data plane refused a snapshot");
            p.last_nack = Some((version, error));
            p.applied_version = serving;
            p.applied_hash = serving_hash;
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
    ///
    /// A data plane is known by its node id: one that reconnects during the wait (within
    /// [`RECONNECT_GRACE`]) is the same data plane, and its answer on the new stream counts.
    /// Data planes that subscribe during the wait are not waited for, but the ones that have
    /// answered `version` by the end are reported too.
    pub async fn wait_for(
        &self,
        version: u64,
        waiting: &[(u64, Plane)],
        deadline: Instant,
    ) -> Vec<PlaneOutcome> {
        self.wait_for_content(version, "", waiting, deadline).await
    }

    /// [`DataPlanes::wait_for`] `version` with content `hash`: an ACK of that number for other
    /// content (empty `hash`: any) is no answer.
    pub async fn wait_for_content(
        &self,
        version: u64,
        hash: &str,
        waiting: &[(u64, Plane)],
        deadline: Instant,
    ) -> Vec<PlaneOutcome> {
        let answered = self
            .wait_until(waiting, deadline, |p| answer(p, version, hash))
            .await;
        answered
            .into_iter()
            .map(|(plane, result)| outcome(&plane, result))
            .collect()
    }

    /// Waits until each data plane of `waiting` answers challenge generation `generation` (or
    /// a later one), has gone away, or `deadline` passes, as [`DataPlanes::wait_for_content`]
    /// waits for a version. A data plane that cannot answer challenges sent apart from
    /// snapshots (an older proxyd) is refused at once.
    pub async fn wait_for_challenges(
        &self,
        generation: u64,
        waiting: &[(u64, Plane)],
        deadline: Instant,
    ) -> Vec<PlaneOutcome> {
        let answered = self
            .wait_until(waiting, deadline, |p| {
                if !p.answers_challenges {
                    Some(PlaneResult::Nacked)
                } else if p.challenges_applied >= generation {
                    Some(if p.challenges_error.is_empty() {
                        PlaneResult::Acked
                    } else {
                        PlaneResult::Nacked
                    })
                } else {
                    None
                }
            })
            .await;
        answered
            .into_iter()
            .map(|(plane, result)| {
                let error = match result {
                    PlaneResult::Nacked if !plane.answers_challenges => format!(
                        "proxyd {} answers ACME challenges only inside snapshots; upgrade it \
                         to this controld's build",
                        plane.build_version
                    ),
                    PlaneResult::Nacked => plane.challenges_error.clone(),
                    _ => String::new(),
                };
                PlaneOutcome {
                    node_id: plane.node_id.clone(),
                    pid: plane.pid,
                    result,
                    serving_version: plane.applied_version,
                    error,
                }
            })
            .collect()
    }

    /// Waits until `answered` says something of each data plane of `waiting`, each has gone
    /// away, or `deadline` passes; then says what each did (its last state, and
    /// [`PlaneResult::TimedOut`] or [`PlaneResult::Disconnected`] when it said nothing).
    ///
    /// A data plane is known by its node id: one that reconnects during the wait (within
    /// [`RECONNECT_GRACE`]) is the same data plane, and its answer on the new stream counts.
    /// Data planes that subscribe during the wait are not waited for, but the ones that have
    /// answered by the end are reported too.
    async fn wait_until(
        &self,
        waiting: &[(u64, Plane)],
        deadline: Instant,
        answered: impl Fn(&Plane) -> Option<PlaneResult>,
    ) -> Vec<(Plane, PlaneResult)> {
        let mut changes = self.changed.subscribe();
        // Registrations after the publish: every id above the ones waited for.
        let first_new_id = waiting.iter().map(|(id, _)| id + 1).max().unwrap_or(0);
        // The last state seen of each node, for the report of one that went away.
        let mut known: HashMap<&str, Plane> = waiting
            .iter()
            .map(|(_, p)| (p.node_id.as_str(), p.clone()))
            .collect();
        let mut missing_since: HashMap<&str, Instant> = HashMap::new();
        // One entry per node, in the order given (an old stream not yet noticed gone may list a
        // node twice).
        let mut nodes: Vec<&str> = Vec::new();
        for (_, p) in waiting {
            if !nodes.contains(&p.node_id.as_str()) {
                nodes.push(p.node_id.as_str());
            }
        }
        loop {
            let now = Instant::now();
            let mut pending = false;
            let mut next_grace_end: Option<Instant> = None;
            {
                let planes = self.lock();
                for &node in &nodes {
                    match newest(&planes, node) {
                        Some(p) => {
                            missing_since.remove(node);
                            pending |= answered(p).is_none();
                            known.insert(node, p.clone());
                        }
                        None => {
                            let since = *missing_since.entry(node).or_insert(now);
                            let grace_end = since + RECONNECT_GRACE;
                            if grace_end > now {
                                pending = true;
                                next_grace_end =
                                    Some(next_grace_end.map_or(grace_end, |g| g.min(grace_end)));
                            }
                        }
                    }
                }
            }
            if !pending {
                break;
            }
            let wake = next_grace_end.map_or(deadline, |g| g.min(deadline));
            match tokio::time::timeout_at(wake, changes.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => break,
                Err(_) if wake >= deadline => break,
                Err(_) => continue,
            }
        }
        let planes = self.lock();
        let mut outcomes: Vec<(Plane, PlaneResult)> = nodes
            .iter()
            .filter_map(|&node| {
                let (plane, result) = match newest(&planes, node) {
                    Some(p) => (p, answered(p).unwrap_or(PlaneResult::TimedOut)),
                    None => (known.get(node)?, PlaneResult::Disconnected),
                };
                Some((plane.clone(), result))
            })
            .collect();
        // Newcomers that answered this version (a NACK from one must not go unreported).
        let mut joined: Vec<(&u64, &Plane)> = planes
            .iter()
            .filter(|(id, p)| **id >= first_new_id && !known.contains_key(p.node_id.as_str()))
            .collect();
        joined.sort_unstable_by_key(|(id, _)| **id);
        for (_, p) in joined {
            if let Some(result) = answered(p) {
                outcomes.push((p.clone(), result));
            }
        }
        outcomes
    }
}

/// The newest registration of `node` (a reconnect registers anew before the old stream is
/// noticed gone).
fn newest<'a>(planes: &'a HashMap<u64, Plane>, node: &str) -> Option<&'a Plane> {
    planes
        .iter()
        .filter(|(_, p)| p.node_id == node)
        .max_by_key(|(id, _)| **id)
        .map(|(_, p)| p)
}

impl Plane {
    /// Whether it serves `version` with content `hash` (as far as it said: an older proxyd
    /// sends no hash, and its number is taken at its word).
    pub fn serves(&self, version: u64, hash: &str) -> bool {
        self.applied_version == version
            && (self.applied_hash.is_empty() || hash.is_empty() || self.applied_hash == hash)
    }
}

fn outcome(plane: &Plane, result: PlaneResult) -> PlaneOutcome {
    let error = match (&plane.last_nack, result) {
        (Some((_, e)), PlaneResult::Nacked) => e.clone(),
        _ => String::new(),
    };
    PlaneOutcome {
        node_id: plane.node_id.clone(),
        pid: plane.pid,
        result,
        serving_version: plane.applied_version,
        error,
    }
}

fn answer(p: &Plane, version: u64, hash: &str) -> Option<PlaneResult> {
    let same_content = hash.is_empty() || p.acked_hash.is_empty() || p.acked_hash == hash;
    if p.acked_version > version || (p.acked_version == version && same_content) {
        Some(PlaneResult::Acked)
    } else if p.last_nack.as_ref().is_some_and(|(v, _)| *v >= version) {
        Some(PlaneResult::Nacked)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plane(node: &str) -> Plane {
        Plane {
            node_id: node.into(),
            pid: 1,
            build_version: "test".into(),
            applied_version: 1,
            applied_hash: String::new(),
            acked_version: 1,
            acked_hash: String::new(),
            sent_version: 1,
            last_nack: None,
            listeners: vec![],
            connected_at_unix_ms: 0,
            answers_challenges: true,
            challenges_applied: 0,
            traffic: None,
            challenges_error: String::new(),
        }
    }

    #[tokio::test]
    async fn a_data_plane_that_reconnects_during_the_wait_is_the_same_one_and_newcomers_count() {
        let planes: Arc<DataPlanes> = Arc::default();
        let first = planes.register(plane("dp-1"));
        let waiting = planes.connected();
        let waiter = {
            let planes = planes.clone();
            tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(10);
                planes.wait_for(2, &waiting, deadline).await
            })
        };
        // dp-1 drops its stream and subscribes again, then applies version 2 on the new one; a
        // data plane that was not there at publish time refuses it.
        drop(first);
        let again = planes.register(plane("dp-1"));
        let newcomer = planes.register(plane("dp-2"));
        planes.nacked(newcomer.id, 2, "bad".into(), 1);
        planes.acked(again.id, 2, vec![]);
        let outcomes = waiter.await.unwrap();
        let results: Vec<_> = outcomes
            .iter()
            .map(|o| (o.node_id.as_str(), o.result))
            .collect();
        assert_eq!(
            results,
            [("dp-1", PlaneResult::Acked), ("dp-2", PlaneResult::Nacked)]
        );
    }

    #[tokio::test]
    async fn one_that_does_not_come_back_is_disconnected_after_the_grace() {
        let planes: Arc<DataPlanes> = Arc::default();
        let gone = planes.register(plane("dp-1"));
        let waiting = planes.connected();
        drop(gone);
        let started = Instant::now();
        let deadline = started + Duration::from_secs(10);
        let outcomes = planes.wait_for(2, &waiting, deadline).await;
        assert_eq!(outcomes[0].result, PlaneResult::Disconnected);
        let waited = started.elapsed();
        assert!(
            waited >= RECONNECT_GRACE && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }
}
