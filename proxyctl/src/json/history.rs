//! `proxyctl --json history`.

use proto::v1 as pb;
use serde::Serialize;

use super::{Diff, non_empty};

/// `proxyctl --json history`.
#[derive(Debug, Serialize)]
pub struct History {
    /// The version serving now.
    pub current_version: u64,
    /// Newest first; controld keeps the last 50.
    pub entries: Vec<HistoryEntry>,
}

#[derive(Debug, Serialize)]
pub struct HistoryEntry {
    pub version: u64,
    /// Hex SHA-256 of the version's content.
    pub content_hash: String,
    /// When it was published.
    pub at_unix_ms: u64,
    /// `startup`, `reload`, `sighup` or `rollback to N`.
    pub source: String,
    /// Who asked over the socket; `null` for startup and SIGHUP.
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    /// What changed against the version before it.
    pub summary: String,
    /// `config` (a reload, rollback or startup) or `certificate` (only what ACME adds); empty
    /// from a controld older than kinds.
    pub kind: String,
    /// The same in detail, shaped like `reload`'s `diff`; `null` for versions published at
    /// startup or by ACME, and for those recorded by a controld that did not keep it.
    pub diff: Option<Diff>,
    /// In a fleet, the node it was published from; `null` on a single host.
    pub node: Option<String>,
}

impl From<&pb::HistoryReply> for History {
    fn from(reply: &pb::HistoryReply) -> Self {
        History {
            current_version: reply.current_version,
            entries: reply
                .entries
                .iter()
                .map(|entry| HistoryEntry {
                    version: entry.version,
                    content_hash: entry.content_hash.clone(),
                    at_unix_ms: entry.at_unix_ms,
                    source: entry.source.clone(),
                    uid: entry.uid,
                    pid: entry.pid,
                    summary: entry.summary.clone(),
                    kind: entry.kind.clone(),
                    diff: entry.diff.as_ref().map(Diff::from),
                    node: non_empty(&entry.node),
                })
                .collect(),
        }
    }
}
