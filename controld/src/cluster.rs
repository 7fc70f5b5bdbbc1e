//! Fleets: one config for many hosts, kept in etcd (DESIGN §14, issue 21, docs/fleets.md).
//!
//! Every host runs controld and proxyd as a single host does; its controld also belongs to a
//! fleet (`[cluster]`). A reload on any host splits the file into the fleet's part and the
//! host's tables ([`proxy_config::fleet`]), publishes the fleet's part as the fleet's next
//! version, applies it here, and waits until every live node has applied it or said why not.
//! Each controld follows the fleet's head ([`follow`]): every new version is joined to the
//! host's own tables and reloaded locally, and the outcome recorded under the node's lease.

pub mod etcd;
pub mod store;
mod tls;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{ClusterConfig, Config};
use crate::dataplanes::{PlaneOutcome, PlaneResult};
use crate::reloader::{Origin, Outcome, ReloadOptions, ReloadReport, Reloader};
use etcd::{Etcd, Watched};
use store::{Fleet, NodeState, PublishError, Published, Publisher};

/// How long one etcd call may take.
const ETCD_TIMEOUT: Duration = Duration::from_secs(3);

/// The first wait before following again after etcd failed; doubles to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// This host's link to its fleet.
pub struct Link {
    fleet: Fleet,
    config: ClusterConfig,
    /// controld's state directory: the last fleet version applied here is kept there.
    state_dir: PathBuf,
    /// The lease this node's state is attached to; 0 while it has none.
    lease: AtomicI64,
    /// What this node serves, as last recorded (or about to be).
    state: std::sync::Mutex<NodeState>,
}

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
    pub fn new(config: &ClusterConfig, state_dir: &std::path::Path) -> Result<Link, String> {
        let tls = config.tls.as_ref().map(tls::client_config).transpose()?;
        let etcd = Etcd::connect(&config.etcd, ETCD_TIMEOUT, tls).map_err(|e| e.to_string())?;
        let applied = load_applied(state_dir);
        Ok(Link {
            fleet: Fleet::new(etcd, &config.name, &config.node),
            config: config.clone(),
            state_dir: state_dir.to_owned(),
            lease: AtomicI64::new(0),
            state: std::sync::Mutex::new(NodeState {
                node: config.node.clone(),
                build: proto::BUILD_VERSION.to_owned(),
                applied_version: applied.as_ref().map_or(0, |a| a.version),
                applied_hash: applied.map(|a| a.hash).unwrap_or_default(),
                tried_version: 0,
                error: String::new(),
                at_unix_ms: 0,
            }),
        })
    }

    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// Records this node's state, attached to its lease (granted first when it has none).
    async fn record(&self, change: impl FnOnce(&mut NodeState)) -> Result<(), PublishError> {
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
        self.fleet.record(&state, lease).await
    }

    /// Keeps the lease alive until `shutdown`; a lease that lapsed (etcd was away longer than
    /// its TTL) is replaced, and the state recorded again under the new one.
    async fn keep_alive(self: Arc<Self>, shutdown: CancellationToken) {
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

/// Publishes the config file's fleet part as the fleet's next version, applies it here, and
/// waits until every live node has applied it or said why not: what `proxyctl reload` does on
/// any host of a fleet.
pub async fn reload(reloader: &Reloader, link: &Link, options: ReloadOptions) -> ReloadReport {
    let started = std::time::Instant::now();
    let (_, text) = match reloader.read_file().await {
        Ok(read) => read,
        Err(e) => {
            let current = reloader.current();
            return ReloadReport {
                diagnostics: e.diagnostics(reloader.config_path()),
                ..report_of(current.version)
            };
        }
    };
    if let Some(expected) = &options.if_text_hash
        && crate::snapshot::text_hash(&text) != *expected
    {
        return ReloadReport {
            outcome: Outcome::FileChanged,
            ..report_of(reloader.current().version)
        };
    }
    let split = match proxy_config::fleet::split(&text) {
        Ok(split) => split,
        Err(e) => {
            return ReloadReport {
                diagnostics: vec![crate::config::Diagnostic {
                    key_path: String::new(),
                    file: reloader.config_path().to_owned(),
                    line: u32::try_from(e.line).unwrap_or(u32::MAX),
                    column: 1,
                    message: e.message,
                }],
                ..report_of(reloader.current().version)
            };
        }
    };
    // Checked here first, as this host would serve it: an invalid file publishes nothing.
    let (head, _) = match link.fleet.head().await {
        Ok(head) => head,
        Err(e) => return unreachable_report(reloader, &e),
    };
    let previous = head.as_ref().map_or(0, |h| h.version);
    if options.if_version.is_some_and(|v| v != previous) {
        return ReloadReport {
            outcome: Outcome::Conflict,
            version: previous,
            previous_version: previous,
            ..report_of(previous)
        };
    }
    let (diagnostics, diff) = reloader
        .check_text(text.clone(), reloader.config_path().to_owned())
        .await;
    if !diagnostics.is_empty() {
        return ReloadReport {
            diagnostics,
            ..report_of(previous)
        };
    }
    let publisher = Publisher {
        source: options.origin.source.clone(),
        uid: options.origin.uid,
        pid: options.origin.pid,
        summary: diff.summary(),
    };
    publish_and_wait(
        reloader,
        link,
        &split.fleet,
        &publisher,
        (options.if_version, options.force),
        previous,
        started,
    )
    .await
}

/// Publishes `fleet_text` as the fleet's next version (`expected`: only while the fleet is at
/// that version; `force`: even when the fleet serves that text), applies it here, and waits for
/// every node live when it was published.
async fn publish_and_wait(
    reloader: &Reloader,
    link: &Link,
    fleet_text: &str,
    publisher: &Publisher,
    (expected, force): (Option<u64>, bool),
    previous: u64,
    started: std::time::Instant,
) -> ReloadReport {
    let published = link
        .fleet
        .publish(fleet_text, publisher, expected, force)
        .await;
    let (version, hash, new) = match published {
        Ok(Published::New(v)) => (v.version, v.hash, true),
        Ok(Published::Unchanged(head)) => (head.version, head.hash, false),
        Err(PublishError::Conflict { now }) => {
            return ReloadReport {
                outcome: Outcome::Conflict,
                version: now,
                ..report_of(previous)
            };
        }
        Err(e) => return unreachable_report(reloader, &e),
    };
    tracing::info!(version, node = link.node(), new, source = %publisher.source, "fleet version published");
    // The waiting list: the nodes live now (this one included once it records).
    let nodes = link.fleet.nodes().await.unwrap_or_default();
    let local = apply(
        reloader,
        link,
        version,
        &hash,
        fleet_text,
        &publisher.source,
    )
    .await;
    let deadline = tokio::time::Instant::now() + reloader.ack_timeout() + Duration::from_secs(2);
    let mut waiting: Vec<String> = nodes.into_iter().map(|n| n.node).collect();
    if !waiting.iter().any(|n| n == link.node()) {
        waiting.push(link.node().to_owned());
    }
    let outcomes = wait_for_nodes(link, version, &hash, &waiting, deadline).await;
    ReloadReport {
        outcome: if new {
            Outcome::Applied
        } else {
            Outcome::Unchanged
        },
        previous_version: previous,
        version,
        diagnostics: local.diagnostics,
        diff: local.diff,
        warnings: local.warnings,
        data_planes: outcomes,
        duration: started.elapsed(),
    }
}

/// Why a fleet rollback could not be attempted.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("version {0} is not in the fleet's history (etcd keeps the last {kept})", kept = store::KEPT_VERSIONS)]
    UnknownVersion(u64),
    #[error("there is no earlier fleet version to roll back to")]
    NothingEarlier,
    #[error(transparent)]
    Etcd(#[from] PublishError),
}

/// Publishes fleet version `version` (`None`: the one before the fleet's version now) again,
/// as the fleet's next version, applied on every node like a reload. Checked on this host
/// first: rules may have tightened since.
pub async fn rollback(
    reloader: &Reloader,
    link: &Link,
    version: Option<u64>,
    origin: &Origin,
) -> Result<ReloadReport, RollbackError> {
    let started = std::time::Instant::now();
    let (head, _) = link.fleet.head().await?;
    let now = head.as_ref().map_or(0, |h| h.version);
    let target = match version {
        Some(v) => v,
        None => {
            let history = link.fleet.history().await?;
            let serving = head.as_ref().map(|h| h.hash.clone()).unwrap_or_default();
            // The newest version with other content than the fleet serves.
            history
                .iter()
                .find(|e| e.version < now && e.hash != serving)
                .map(|e| e.version)
                .ok_or(RollbackError::NothingEarlier)?
        }
    };
    let old = link
        .fleet
        .version(target)
        .await?
        .ok_or(RollbackError::UnknownVersion(target))?;
    let host = match reloader.read_file().await {
        Ok((_, text)) => proxy_config::fleet::split(&text).map(|s| s.host),
        Err(e) => Err(proxy_config::fleet::SplitError {
            line: 0,
            message: e.to_string(),
        }),
    };
    let host = match host {
        Ok(host) => host,
        Err(e) => {
            return Ok(ReloadReport {
                diagnostics: vec![crate::config::Diagnostic {
                    key_path: String::new(),
                    file: reloader.config_path().to_owned(),
                    line: u32::try_from(e.line).unwrap_or(u32::MAX),
                    column: 1,
                    message: format!("this host's tables: {}", e.message),
                }],
                ..report_of(now)
            });
        }
    };
    let name = PathBuf::from(format!("fleet-version-{target}.toml"));
    let (diagnostics, diff) = reloader
        .check_text(proxy_config::fleet::join(&old.text, &host), name)
        .await;
    if !diagnostics.is_empty() {
        return Ok(ReloadReport {
            diagnostics,
            ..report_of(now)
        });
    }
    let publisher = Publisher {
        source: format!("rollback to {target}"),
        uid: origin.uid,
        pid: origin.pid,
        summary: diff.summary(),
    };
    Ok(publish_and_wait(
        reloader,
        link,
        &old.text,
        &publisher,
        (None, true),
        now,
        started,
    )
    .await)
}

/// What `Admin.History` answers in a fleet: the fleet's versions, newest first.
pub async fn history(link: &Link) -> Result<proto::v1::HistoryReply, PublishError> {
    let (head, _) = link.fleet.head().await?;
    let entries = link.fleet.history().await?;
    Ok(proto::v1::HistoryReply {
        current_version: head.map_or(0, |h| h.version),
        entries: entries
            .into_iter()
            .map(|e| proto::v1::HistoryEntry {
                version: e.version,
                content_hash: e.hash,
                at_unix_ms: e.at_unix_ms,
                source: e.source,
                uid: e.uid,
                pid: e.pid,
                summary: e.summary,
                kind: "config".to_owned(),
                diff: None,
                node: e.node,
            })
            .collect(),
    })
}

fn report_of(version: u64) -> ReloadReport {
    ReloadReport {
        outcome: Outcome::Rejected,
        previous_version: version,
        version,
        diagnostics: Vec::new(),
        diff: Default::default(),
        warnings: Vec::new(),
        data_planes: Vec::new(),
        duration: Duration::ZERO,
    }
}

/// A reload or rollback that could not reach etcd: rejected, with the reason.
pub fn unreachable(reloader: &Reloader, e: &PublishError) -> ReloadReport {
    unreachable_report(reloader, e)
}

/// A reload that could not reach etcd: rejected, with the reason, and nothing changed.
fn unreachable_report(reloader: &Reloader, e: &PublishError) -> ReloadReport {
    // etcd with `--client-cert-auth` closes the connection of a client without a certificate
    // after the handshake, which reads as a broken pipe: say what is likely.
    let hint = reloader
        .fleet()
        .filter(|link| {
            matches!(e, PublishError::Etcd(etcd::EtcdError::Unreachable { .. }))
                && link.config.etcd.iter().any(|u| u.starts_with("https://"))
                && link
                    .config
                    .tls
                    .as_ref()
                    .is_some_and(|t| t.cert_file.is_none())
        })
        .map(|_| {
            " (this host presents no client certificate: if etcd runs with --client-cert-auth, \
             set cert_file and key_file in [cluster] tls)"
        })
        .unwrap_or_default();
    ReloadReport {
        diagnostics: vec![crate::config::Diagnostic {
            key_path: "cluster.etcd".to_owned(),
            file: reloader.config_path().to_owned(),
            line: 0,
            column: 0,
            message: format!("nothing was published: {e}{hint}"),
        }],
        ..report_of(reloader.current().version)
    }
}

/// Applies fleet version `version` (its text `fleet_text`) here: joined to this host's tables
/// from the config file, reloaded, and the outcome recorded for the fleet.
async fn apply(
    reloader: &Reloader,
    link: &Link,
    version: u64,
    hash: &str,
    fleet_text: &str,
    why: &str,
) -> ReloadReport {
    let host = match reloader.read_file().await {
        Ok((_, text)) => proxy_config::fleet::split(&text).map(|s| s.host),
        Err(e) => Err(proxy_config::fleet::SplitError {
            line: 0,
            message: e.to_string(),
        }),
    };
    let report = match host {
        Ok(host) => {
            let text = proxy_config::fleet::join(fleet_text, &host);
            let name = PathBuf::from(format!("fleet-version-{version}.toml"));
            let origin = Origin {
                source: format!("fleet version {version} ({why})"),
                uid: None,
                pid: None,
            };
            reloader.reload_text(text, name, origin).await
        }
        Err(e) => ReloadReport {
            diagnostics: vec![crate::config::Diagnostic {
                key_path: String::new(),
                file: reloader.config_path().to_owned(),
                line: u32::try_from(e.line).unwrap_or(u32::MAX),
                column: 1,
                message: format!("this host's tables: {}", e.message),
            }],
            ..report_of(reloader.current().version)
        },
    };
    let error = local_problem(&report);
    if !error.is_empty() {
        tracing::warn!(version, node = link.node(), %error, "this node does not serve the fleet version");
    }
    if error.is_empty() {
        let applied = Applied {
            version,
            hash: hash.to_owned(),
            text: fleet_text.to_owned(),
        };
        let dir = link.state_dir.clone();
        let saved = tokio::task::spawn_blocking(move || save_applied(&dir, &applied)).await;
        if let Ok(Err(e)) = saved {
            tracing::warn!(version, error = %e, "cannot keep the applied fleet version in the state directory; a restart starts from the config file's");
        }
    }
    let recorded = link
        .record(|state| {
            state.tried_version = version;
            if error.is_empty() {
                state.applied_version = version;
                state.applied_hash = hash.to_owned();
            }
            state.error = error.clone();
        })
        .await;
    if let Err(e) = recorded {
        tracing::warn!(version, error = %e, "cannot record this node's state in etcd");
    }
    report
}

/// Why this host does not serve what `report` tried, in one line; empty when it does.
fn local_problem(report: &ReloadReport) -> String {
    if let Some(d) = report.diagnostics.first() {
        return d.to_string();
    }
    report
        .data_planes
        .iter()
        .find(|p| p.result != PlaneResult::Acked)
        .map(|p| {
            format!(
                "data plane {}: {:?}{}",
                p.node_id,
                p.result,
                if p.error.is_empty() {
                    String::new()
                } else {
                    format!(": {}", p.error)
                }
            )
        })
        .unwrap_or_default()
}

/// Waits until each node of `waiting` has recorded `version` applied (or tried with an error),
/// has dropped out (its lease lapsed), or `deadline` passes.
async fn wait_for_nodes(
    link: &Link,
    version: u64,
    hash: &str,
    waiting: &[String],
    deadline: tokio::time::Instant,
) -> Vec<PlaneOutcome> {
    let prefix = link.fleet.key("nodes/");
    let mut latest: BTreeMap<String, Option<NodeState>> =
        waiting.iter().map(|n| (n.clone(), None)).collect();
    let answered = |s: &NodeState| {
        (s.applied_version >= version && (s.applied_version > version || s.applied_hash == hash))
            || (s.tried_version >= version && !s.error.is_empty())
    };
    loop {
        let Ok((kvs, revision)) = link.fleet.etcd().prefix(&prefix).await else {
            break;
        };
        let mut present = std::collections::BTreeSet::new();
        for kv in &kvs {
            if let Ok(state) = serde_json::from_slice::<NodeState>(&kv.value) {
                present.insert(state.node.clone());
                if let Some(slot) = latest.get_mut(&state.node) {
                    *slot = Some(state);
                }
            }
        }
        for (node, state) in &mut latest {
            if !present.contains(node) {
                *state = None;
            }
        }
        if latest.values().all(|s| s.as_ref().is_none_or(answered)) {
            break;
        }
        let Ok(mut watch) = link.fleet.etcd().watch(&prefix, revision + 1).await else {
            break;
        };
        // Any change under nodes/: read them all again.
        match tokio::time::timeout_at(deadline, watch.recv()).await {
            Err(_) => break,
            Ok(Some(Ok(Watched::Changes { .. }))) => {}
            Ok(_) => {
                // The watch broke: read everything again, after a breath.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
            }
        }
    }
    latest
        .into_iter()
        .map(|(node, state)| match state {
            None => PlaneOutcome {
                node_id: node,
                pid: 0,
                result: PlaneResult::Disconnected,
                serving_version: 0,
                error: "not live (its lease lapsed, or it never recorded a state)".to_owned(),
            },
            Some(s) => {
                let result = if s.applied_version >= version
                    && (s.applied_version > version || s.applied_hash == hash)
                {
                    PlaneResult::Acked
                } else if s.tried_version >= version && !s.error.is_empty() {
                    PlaneResult::Nacked
                } else {
                    PlaneResult::TimedOut
                };
                PlaneOutcome {
                    node_id: node,
                    pid: 0,
                    result,
                    serving_version: s.applied_version,
                    error: if result == PlaneResult::Acked {
                        String::new()
                    } else {
                        s.error
                    },
                }
            }
        })
        .collect()
}

/// Follows the fleet until `shutdown`: every new head is applied here, and this node's lease
/// kept alive. etcd unreachable: this host serves on, and follows again when etcd answers
/// (from the head then: a node that was away for several versions goes to the newest).
pub async fn follow(reloader: Arc<Reloader>, link: Arc<Link>, shutdown: CancellationToken) {
    tokio::spawn(link.clone().keep_alive(shutdown.clone()));
    let mut wait = RETRY_FIRST;
    loop {
        let followed = tokio::select! {
            () = shutdown.cancelled() => return,
            r = follow_once(&reloader, &link) => r,
        };
        if let Err(e) = followed {
            tracing::warn!(node = link.node(), error = %e, retry_in = ?wait,
                "cannot follow the fleet; serving the last version applied");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// Applies the head if this node does not serve it, then every head after it, until the watch
/// breaks (an error) or the revisions it would resume from were compacted (Ok: start over).
async fn follow_once(reloader: &Reloader, link: &Link) -> Result<(), PublishError> {
    let head_key = link.fleet.key("head");
    let (kv, revision) = link.fleet.etcd().get(&head_key).await?;
    if kv.is_some() {
        catch_up(reloader, link).await?;
    }
    let mut watch = link.fleet.etcd().watch(&head_key, revision + 1).await?;
    while let Some(watched) = watch.recv().await {
        match watched? {
            Watched::Changes { .. } => catch_up(reloader, link).await?,
            Watched::Compacted { .. } => return Ok(()),
        }
    }
    Ok(())
}

/// Applies the fleet's head here unless this node serves it already.
async fn catch_up(reloader: &Reloader, link: &Link) -> Result<(), PublishError> {
    let (Some(head), _) = link.fleet.head().await? else {
        return Ok(());
    };
    let serving = {
        let state = link.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.applied_version, state.applied_hash.clone())
    };
    if serving == (head.version, head.hash.clone()) {
        return Ok(());
    }
    let Some(version) = link.fleet.version(head.version).await? else {
        return Ok(());
    };
    apply(
        reloader,
        link,
        version.version,
        &version.hash,
        &version.text,
        &format!("published on {}", version.node),
    )
    .await;
    Ok(())
}

/// The fleet as `Admin.Status` shows it: its head and every live node. etcd unreachable: the
/// reason, and this node alone as it last recorded itself.
pub async fn status(link: &Link) -> proto::v1::FleetStatus {
    use proto::v1 as pb;
    let node = |s: NodeState, desired: (u64, &str)| pb::FleetNode {
        in_sync: s.applied_version == desired.0 && s.applied_hash == desired.1,
        node: s.node,
        applied_version: s.applied_version,
        applied_hash: s.applied_hash,
        last_seen_unix_ms: s.at_unix_ms,
        error: s.error,
        tried_version: s.tried_version,
        build: s.build,
    };
    let read = async {
        let (head, _) = link.fleet.head().await?;
        let nodes = link.fleet.nodes().await?;
        Ok::<_, PublishError>((head, nodes))
    };
    match tokio::time::timeout(ETCD_TIMEOUT, read).await {
        Ok(Ok((head, nodes))) => {
            let (version, hash) = head.map_or((0, String::new()), |h| (h.version, h.hash));
            pb::FleetStatus {
                name: link.config.name.clone(),
                node: link.node().to_owned(),
                desired_version: version,
                nodes: nodes
                    .into_iter()
                    .map(|s| node(s, (version, &hash)))
                    .collect(),
                desired_hash: hash,
                error: String::new(),
            }
        }
        failed => {
            let error = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => format!(
                    "etcd did not answer within {}",
                    humantime::format_duration(ETCD_TIMEOUT)
                ),
            };
            let own = link.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
            pb::FleetStatus {
                name: link.config.name.clone(),
                node: link.node().to_owned(),
                desired_version: 0,
                desired_hash: String::new(),
                nodes: vec![node(own, (0, ""))],
                error,
            }
        }
    }
}

/// The fleet version this host applied last, kept in the state directory so that a controld
/// that restarts serves it (with this host's tables as the file has them now), not the fleet
/// part of its config file, which may be older.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Applied {
    version: u64,
    hash: String,
    text: String,
}

const APPLIED_FILE: &str = "fleet-applied.json";

fn load_applied(state_dir: &std::path::Path) -> Option<Applied> {
    let bytes = std::fs::read(state_dir.join(APPLIED_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn save_applied(state_dir: &std::path::Path, applied: &Applied) -> Result<(), crate::Error> {
    let bytes = serde_json::to_vec(applied).unwrap_or_default();
    crate::state::write_atomically(state_dir, APPLIED_FILE, &bytes)
}

/// What controld starts with in a fleet: the fleet version it applied last joined to this
/// file's host tables, when it kept one and that still checks; else the file as it is.
pub fn resume(config: Config, text: &str, path: &std::path::Path) -> (Config, String) {
    let Some(cluster) = config.statics.cluster.as_ref() else {
        return (config, text.to_owned());
    };
    let Some(applied) = load_applied(&config.statics.control.state_dir) else {
        return (config, text.to_owned());
    };
    let host = match proxy_config::fleet::split(text) {
        Ok(split) => split.host,
        Err(e) => {
            tracing::warn!(error = %e, "cannot split the config file; starting from it as it is");
            return (config, text.to_owned());
        }
    };
    let joined = proxy_config::fleet::join(&applied.text, &host);
    let name = path.with_file_name(format!("fleet-version-{}.toml", applied.version));
    let checked = crate::config::parse(&joined, &name)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            match crate::snapshot::data_plane_refusal(&crate::snapshot::Content::build(&c), &name) {
                Some(refused) => Err(refused.to_string()),
                None => Ok(c),
            }
        });
    match checked {
        Ok(resumed) if resumed.statics.cluster.as_ref() == Some(cluster) => {
            tracing::info!(
                version = applied.version,
                "starting from the fleet version applied last"
            );
            (resumed, joined)
        }
        Ok(_) => (config, text.to_owned()),
        Err(e) => {
            tracing::warn!(version = applied.version, error = %e,
                "the fleet version applied last no longer checks with this host's tables; starting from the config file");
            (config, text.to_owned())
        }
    }
}
