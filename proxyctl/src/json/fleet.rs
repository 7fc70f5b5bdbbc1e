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
    /// While a staged rollout is at its canaries: they serve `desired_version`, every other
    /// node `stable_version`; `[]` and 0 otherwise.
    pub canary_nodes: Vec<String>,
    pub stable_version: u64,
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
            canary_nodes: f.canary_nodes.clone(),
            stable_version: f.stable_version,
        }
    }
}

/// A staged rollout's canaries, in `reload --json`'s `canary`.
#[derive(Debug, Serialize)]
pub struct Canary {
    pub nodes: Vec<String>,
    pub wait_ms: u64,
    pub max_5xx_rise: f64,
    /// Each canary's responses before the window (since its proxyd started) and in it.
    pub figures: Vec<CanaryFigures>,
    /// Why the rollout stopped, naming the node; `null` when it went on to every node.
    pub stopped: Option<String>,
    /// The version that put the previous content back; `null` when none was published.
    pub reverted_version: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct CanaryFigures {
    pub node: String,
    pub responses_before: u64,
    pub responses_5xx_before: u64,
    pub responses: u64,
    pub responses_5xx: u64,
    /// Its proxyd reported no figures (an older build): its 5xx ratio was not checked.
    pub no_figures: bool,
}

impl From<&pb::CanaryReport> for Canary {
    fn from(c: &pb::CanaryReport) -> Canary {
        Canary {
            nodes: c.nodes.clone(),
            wait_ms: c.wait_ms,
            max_5xx_rise: c.max_5xx_rise,
            figures: c
                .figures
                .iter()
                .map(|f| CanaryFigures {
                    node: f.node.clone(),
                    responses_before: f.responses_before,
                    responses_5xx_before: f.responses_5xx_before,
                    responses: f.responses,
                    responses_5xx: f.responses_5xx,
                    no_figures: f.no_figures,
                })
                .collect(),
            stopped: non_empty(&c.stopped),
            reverted_version: (c.reverted_version != 0).then_some(c.reverted_version),
        }
    }
}
