//! What `Admin.Status` and `Admin.History` answer in a fleet, read from etcd.

use super::link::{ETCD_TIMEOUT, Link};
use super::store::{NodeState, PublishError};

/// What `Admin.History` answers in a fleet: the fleet's versions, newest first. Read as
/// `Admin.Status` reads the fleet: by a task of its own, shared by the calls that arrive while
/// it runs and for [`STATUS_FRESH`] after.
pub async fn history(link: &Link) -> Result<proto::v1::HistoryReply, PublishError> {
    let cache = link.history_cache.clone();
    let fleet = link.fleet.clone();
    let asked = std::time::Instant::now();
    let read = tokio::spawn(async move {
        let mut cached = cache.lock_owned().await;
        if let Some((at, reply)) = cached.as_ref()
            && (*at >= asked || at.elapsed() < STATUS_FRESH)
        {
            return reply.clone();
        }
        let started = std::time::Instant::now();
        let reply = read_history(&fleet).await;
        *cached = Some((started, reply.clone()));
        reply
    });
    read.await.unwrap_or_else(|e| {
        Err(PublishError::Corrupt {
            key: "history".to_owned(),
            reason: e.to_string(),
        })
    })
}

async fn read_history(
    fleet: &super::store::Fleet,
) -> Result<proto::v1::HistoryReply, PublishError> {
    let (head, _) = fleet.head().await?;
    let entries = fleet.history().await?;
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

/// How long a read of the fleet's state serves `Admin.Status` (open to every caller of the
/// socket): at most one read of etcd per this, however many ask. Short: `status` right after a
/// reload must show it.
const STATUS_FRESH: std::time::Duration = std::time::Duration::from_millis(100);

/// The fleet as `Admin.Status` shows it: its head and every live node. etcd unreachable: the
/// reason, and this node alone as it last recorded itself. Read by a task of its own (callers
/// that hang up do not start one read each), and kept for [`STATUS_FRESH`].
pub async fn status(link: &Link) -> proto::v1::FleetStatus {
    let cache = link.status_cache.clone();
    let fleet = link.fleet.clone();
    let name = link.config.name.clone();
    let own = link.state.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let asked = std::time::Instant::now();
    let read = tokio::spawn(async move {
        let mut cached = cache.lock_owned().await;
        // A read that started after this call arrived, or a very recent one, answers it.
        if let Some((at, status)) = cached.as_ref()
            && (*at >= asked || at.elapsed() < STATUS_FRESH)
        {
            return status.clone();
        }
        let started = std::time::Instant::now();
        let status = read_status(&fleet, name, own).await;
        *cached = Some((started, status.clone()));
        status
    });
    let refused = link
        .refused
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match read.await {
        // This node's records are refused: say so first.
        Ok(mut status) => {
            if let Some(refused) = refused {
                status.error = if status.error.is_empty() {
                    refused
                } else {
                    format!("{refused}; {}", status.error)
                };
            }
            status
        }
        Err(e) => proto::v1::FleetStatus {
            name: link.config.name.clone(),
            node: link.node().to_owned(),
            error: format!("reading the fleet's state failed: {e}"),
            ..Default::default()
        },
    }
}

async fn read_status(
    fleet: &super::store::Fleet,
    name: String,
    own: NodeState,
) -> proto::v1::FleetStatus {
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
        let (head, _) = fleet.head().await?;
        let nodes = fleet.nodes().await?;
        Ok::<_, PublishError>((head, nodes))
    };
    match tokio::time::timeout(ETCD_TIMEOUT, read).await {
        Ok(Ok((head, nodes))) => {
            let nodes = nodes
                .into_iter()
                .map(|s| {
                    let target = head.as_ref().map_or((0, ""), |h| h.target_for(&s.node));
                    let (v, h) = (target.0, target.1.to_owned());
                    node(s, (v, &h))
                })
                .collect();
            let (version, hash) = head
                .as_ref()
                .map_or((0, String::new()), |h| (h.version, h.hash.clone()));
            let canary = head.and_then(|h| h.canary);
            pb::FleetStatus {
                name,
                node: fleet.node().to_owned(),
                desired_version: version,
                nodes,
                desired_hash: hash,
                error: String::new(),
                stable_version: canary.as_ref().map_or(0, |c| c.stable_version),
                stable_hash: canary
                    .as_ref()
                    .map(|c| c.stable_hash.clone())
                    .unwrap_or_default(),
                canary_nodes: canary.map(|c| c.nodes).unwrap_or_default(),
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
            pb::FleetStatus {
                name,
                node: fleet.node().to_owned(),
                desired_version: 0,
                desired_hash: String::new(),
                nodes: vec![node(own, (0, ""))],
                error,
                ..Default::default()
            }
        }
    }
}
