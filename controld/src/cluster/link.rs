//! This host's link to its fleet: the etcd client, the fleet's keys, this node's lease and the
//! state it last recorded.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::etcd::Etcd;
use super::store::{Fleet, NodeState, PublishError};
use super::tls;
use crate::config::ClusterConfig;

/// How long one etcd call may take.
pub(super) const ETCD_TIMEOUT: Duration = Duration::from_secs(3);

/// The first wait before following again after etcd failed; doubles to [`RETRY_MAX`].
pub(super) const RETRY_FIRST: Duration = Duration::from_millis(200);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(10);

/// This host's link to its fleet.
pub struct Link {
    pub(super) fleet: Fleet,
    pub(super) config: ClusterConfig,
    /// controld's state directory: the last fleet version applied here is kept there.
    pub(super) state_dir: PathBuf,
    /// The lease this node's state is attached to; 0 while it has none.
    pub(super) lease: AtomicI64,
    /// What this node serves, as last recorded (or about to be).
    pub(super) state: std::sync::Mutex<NodeState>,
    /// Why etcd refuses this node's records (another controld is live under its name); shown
    /// by `Admin.Status`.
    pub(super) refused: std::sync::Mutex<Option<String>>,
    /// The fleet's head names this node a canary of a staged rollout: it records its traffic.
    pub(super) canary_member: AtomicBool,
    /// Taken by every record of this node's state, across its write.
    pub(super) record_turn: tokio::sync::Mutex<()>,
    /// Taken by every apply of a fleet version here (a reload's, the follower's).
    pub(super) apply_turn: tokio::sync::Mutex<()>,
    /// The last read of the fleet's history for `Admin.History`, and when it started.
    pub(super) history_cache: Arc<tokio::sync::Mutex<Option<HistoryRead>>>,
    /// The last read of the fleet's state for `Admin.Status`, and when it started.
    pub(super) status_cache: Arc<tokio::sync::Mutex<Option<StatusRead>>>,
}

/// A read of the fleet's state and when it was made.
pub(super) type StatusRead = (std::time::Instant, proto::v1::FleetStatus);

/// A read of the fleet's history and when it was made.
pub(super) type HistoryRead = (
    std::time::Instant,
    Result<proto::v1::HistoryReply, super::store::PublishError>,
);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("fleet", &self.config.name)
            .field("node", &self.config.node)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link to the fleet `config` names; connects lazily (etcd may be down now). It starts
    /// from the fleet version this host applied last (kept in `state_dir`), if any.
    /// `resumed`: the fleet version (number and hash) controld started from, when it started
    /// from the one this host applied last ([`super::resume`]); `None`: from its file.
    pub fn new(
        config: &ClusterConfig,
        state_dir: &std::path::Path,
        resumed: Option<(u64, String)>,
    ) -> Result<Link, String> {
        let tls = config.tls.as_ref().map(tls::client_config).transpose()?;
        let etcd = Etcd::connect(&config.etcd, ETCD_TIMEOUT, tls).map_err(|e| e.to_string())?;
        let applied = resumed;
        Ok(Link {
            fleet: Fleet::new(etcd, &config.name, &config.node),
            config: config.clone(),
            state_dir: state_dir.to_owned(),
            lease: AtomicI64::new(0),
            state: std::sync::Mutex::new(NodeState {
                node: config.node.clone(),
                build: proto::BUILD_VERSION.to_owned(),
                applied_version: applied.as_ref().map_or(0, |a| a.0),
                applied_hash: applied.map(|a| a.1).unwrap_or_default(),
                tried_version: 0,
                error: String::new(),
                at_unix_ms: 0,
                instance: instance(state_dir),
                traffic: None,
            }),
            refused: std::sync::Mutex::new(None),
            canary_member: AtomicBool::new(false),
            apply_turn: tokio::sync::Mutex::new(()),
            record_turn: tokio::sync::Mutex::new(()),
            history_cache: Arc::default(),
            status_cache: Arc::default(),
        })
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// Records this node's state, attached to its lease (granted first when it has none).
    pub(super) async fn record(
        &self,
        change: impl FnOnce(&mut NodeState),
    ) -> Result<(), PublishError> {
        // Records land in etcd in the order their states were taken: an apply's and a canary's
        // traffic report never overtake each other.
        let _turn = self.record_turn.lock().await;
        let state = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            change(&mut state);
            state.at_unix_ms = crate::reloader::unix_ms(std::time::SystemTime::now());
            state.clone()
        };
        let mut lease = self.lease.load(Ordering::Acquire);
        if lease == 0 {
            lease = self.fleet.etcd().grant(self.config.lease_ttl).await?;
            self.lease.store(lease, Ordering::Release);
        }
        let recorded = self.fleet.record(&state, lease).await;
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = match &recorded {
            Err(e @ PublishError::DuplicateNode { .. }) => {
                tracing::error!(error = %e, "this node cannot record itself in the fleet");
                Some(e.to_string())
            }
            _ => None,
        };
        // What Status showed is stale now.
        if let Ok(mut cached) = self.status_cache.try_lock() {
            *cached = None;
        }
        recorded
    }

    /// Keeps the lease alive until `shutdown`; a lease that lapsed (etcd was away longer than
    /// its TTL) is replaced, and the state recorded again under the new one.
    pub(super) async fn keep_alive(self: Arc<Self>, shutdown: CancellationToken) {
        let every = self.config.lease_ttl / 3;
        let mut wait = RETRY_FIRST;
        loop {
            let lease = self.lease.load(Ordering::Acquire);
            let stopped = if lease == 0 {
                match self.record(|_| {}).await {
                    Ok(()) => None,
                    Err(e) => Some(e.to_string()),
                }
            } else {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    e = self.fleet.etcd().keep_alive(lease, every) => {
                        // Whatever broke, the next round starts with a new lease.
                        self.lease.store(0, Ordering::Release);
                        Some(e.to_string())
                    }
                }
            };
            if let Some(reason) = stopped {
                tracing::warn!(node = self.node(), %reason, "the fleet lease was lost; taking a new one");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(RETRY_MAX);
            } else {
                wait = RETRY_FIRST;
            }
        }
    }
}

/// This host's instance id: random, made once and kept in the state directory, so that a
/// controld that restarts is the same node, and a second host that took the same node name
/// (a clone) is not.
fn instance(state_dir: &std::path::Path) -> String {
    const FILE: &str = "fleet-instance";
    if let Ok(kept) = std::fs::read_to_string(state_dir.join(FILE)) {
        let kept = kept.trim();
        if !kept.is_empty() && kept.len() <= 64 {
            return kept.to_owned();
        }
    }
    let made = format!("{:016x}", fastrand::u64(..));
    if let Err(e) = crate::state::write_atomically(state_dir, FILE, made.as_bytes()) {
        tracing::warn!(error = %e, "cannot keep this node's instance id; a restart will look like another host until the old lease lapses");
    }
    made
}
