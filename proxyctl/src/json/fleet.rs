//! `proxyctl --json status`'s `fleet`: a fleet as controld read it from etcd.

use proto::v1 as pb;
use serde::Serialize;

use super::non_empty;

/// A fleet as controld read it from etcd.
#[derive(Debug, Serialize)]
pub struct Fleet {
    pub name: String,
    /// This host.
    pub node: String,
    /// The fleet's version now; 0 before the first publish or when etcd was not read.
    pub desired_version: u64,
    pub desired_hash: String,
    /// Every live node.
    pub nodes: Vec<FleetNode>,
    /// Why etcd could not be read (`nodes` then holds this host alone); `null` when it was.
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct FleetNode {
    pub node: String,
    pub applied_version: u64,
    pub applied_hash: String,
    pub in_sync: bool,
    pub last_seen_unix_ms: u64,
    /// The fleet version it last tried, and why it does not serve it (`null`: it does).
    pub tried_version: u64,
    pub error: Option<String>,
    pub build: String,
}

impl From<&pb::FleetStatus> for Fleet {
    fn from(f: &pb::FleetStatus) -> Fleet {
        Fleet {
            name: f.name.clone(),
            node: f.node.clone(),
            desired_version: f.desired_version,
            desired_hash: f.desired_hash.clone(),
            nodes: f
                .nodes
                .iter()
                .map(|n| FleetNode {
                    node: n.node.clone(),
                    applied_version: n.applied_version,
                    applied_hash: n.applied_hash.clone(),
                    in_sync: n.in_sync,
                    last_seen_unix_ms: n.last_seen_unix_ms,
                    tried_version: n.tried_version,
                    error: non_empty(&n.error),
                    build: n.build.clone(),
                })
                .collect(),
            error: non_empty(&f.error),
        }
    }
}
