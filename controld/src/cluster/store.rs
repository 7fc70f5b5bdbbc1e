//! What a fleet keeps in etcd, under `/proxy/fleets/<name>/`:
//!
//! - `head`: the fleet's version now, `{"version": N, "hash": H}`. The one version counter:
//!   every publish advances it in a transaction guarded by its last revision, so two publishes
//!   at once give two consecutive versions (or a conflict when the caller named the version it
//!   expected), never a lost or duplicated one. During a staged rollout it also names the
//!   canaries and the version every other node keeps serving meanwhile (`canary`).
//! - `versions/<N, 20 digits>`: each version: the fleet's config text (the file without the
//!   host's tables), its hash, who published it, from which node, when. The last
//!   [`KEPT_VERSIONS`] are kept.
//! - `log/<N, 20 digits>`: the same without the text, for `history` (a few hundred bytes each,
//!   where a version may hold megabytes).
//! - `nodes/<node>`: what each node serves, under the node's lease: a node whose controld is
//!   gone drops out when its lease lapses.

use serde::{Deserialize, Serialize};

use super::etcd::{Etcd, EtcdError};

/// Versions kept in etcd; older ones are deleted by the publish that pushes them out.
pub const KEPT_VERSIONS: u64 = 50;

/// How many times a publish that lost a race to another publish reads the head again and
/// retries, when the caller did not name the version it expects (each loss is another
/// writer's success, so this bounds only a storm of publishes).
const PUBLISH_TRIES: usize = 64;

/// The fleet's version now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub version: u64,
    pub hash: String,
    /// A staged rollout at its canaries: only they serve `version` yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// A staged rollout at its canaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// The canaries, by node name.
    pub nodes: Vec<String>,
    /// What every other node serves meanwhile: the version before.
    pub stable_version: u64,
    pub stable_hash: String,
}

impl Head {
    /// The version `node` is to serve: the head's, or during a staged rollout the stable one
    /// for a node that is not a canary.
    pub fn target_for(&self, node: &str) -> (u64, &str) {
        match &self.canary {
            Some(c) if !c.nodes.iter().any(|n| n == node) => (c.stable_version, &c.stable_hash),
            _ => (self.version, &self.hash),
        }
    }
}

/// One published version of the fleet's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetVersion {
    pub version: u64,
    /// SHA-256 (hex) of `text`.
    pub hash: String,
    /// The fleet's part of the config: the file without the host's tables.
    pub text: String,
    pub at_unix_ms: u64,
    /// "reload", "rollback to N", ...
    pub source: String,
    /// The node it was published from.
    pub node: String,
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    pub summary: String,
    /// Random, one per publish: how a publish whose answer was lost recognizes its own version.
    #[serde(default)]
    pub publish_id: String,
}

/// A version as `history` lists it: [`FleetVersion`] without its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetEntry {
    pub version: u64,
    pub hash: String,
    pub at_unix_ms: u64,
    pub source: String,
    pub node: String,
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    pub summary: String,
}

impl From<&FleetVersion> for FleetEntry {
    fn from(v: &FleetVersion) -> FleetEntry {
        FleetEntry {
            version: v.version,
            hash: v.hash.clone(),
            at_unix_ms: v.at_unix_ms,
            source: v.source.clone(),
            node: v.node.clone(),
            uid: v.uid,
            pid: v.pid,
            summary: v.summary.clone(),
        }
    }
}

/// What one node serves, as its controld recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub node: String,
    pub build: String,
    /// The fleet version it serves (0: none yet) and that version's hash.
    pub applied_version: u64,
    pub applied_hash: String,
    /// The fleet version it last tried, and why it could not serve it (empty: it does).
    pub tried_version: u64,
    pub error: String,
    pub at_unix_ms: u64,
    /// Random, one per controld process: two hosts that took the same node name tell each
    /// other apart by it.
    #[serde(default)]
    pub instance: String,
    /// While this node is a canary: its data planes' responses since they started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
}

/// Responses sent by a node's data planes since they started, every site together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub responses: u64,
    pub responses_5xx: u64,
}

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// A new version.
    New(FleetVersion),
    /// The head already holds this text: nothing was written.
    Unchanged(Head),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PublishError {
    /// The caller named the version it expected and the fleet has moved on.
    #[error(
        "the fleet's version is now {now}: another writer published first; nothing was published"
    )]
    Conflict { now: u64 },
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("etcd holds something this controld cannot read at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// Another controld, alive, records itself under this node's name.
    #[error(
        "another controld (instance {other}) is live as node {node:?}: give each host its own \
         [cluster] node (the default is the host name, which cloned machines share)"
    )]
    DuplicateNode { node: String, other: String },
    /// A staged rollout needs a version before it, for every other node to keep serving.
    #[error(
        "a staged rollout needs an earlier fleet version for the other nodes to keep serving; publish the first version without --canary"
    )]
    NoStableVersion,
    /// A version larger than etcd takes in one request.
    #[error(
        "the fleet's config would take {bytes} bytes in etcd, more than the {MAX_VERSION_BYTES} \
         one version may (etcd refuses requests over 1.5 MiB by default): keep the fleet's part \
         of the config smaller; nothing was published"
    )]
    TooLarge { bytes: usize },
}

/// The most one version may take in etcd (its record and its history entry are written in one
/// transaction, and etcd's default `--max-request-bytes` is 1.5 MiB).
pub const MAX_VERSION_BYTES: usize = 1024 * 1024;

/// Who publishes, for the version's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Publisher {
    pub source: String,
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    pub summary: String,
}

/// One fleet's keys in etcd, as one node sees them.
#[derive(Debug, Clone)]
pub struct Fleet {
    etcd: Etcd,
    prefix: String,
    node: String,
}

/// SHA-256 of `text`, hex: a fleet version's hash.
pub fn text_hash(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Fleet {
    pub fn new(etcd: Etcd, name: &str, node: &str) -> Fleet {
        Fleet {
            etcd,
            prefix: format!("/proxy/fleets/{name}/"),
            node: node.to_owned(),
        }
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The full key of `rest` under this fleet.
    pub fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }

    fn version_key(&self, version: u64) -> Vec<u8> {
        self.key(&format!("versions/{version:020}"))
    }

    fn log_key(&self, version: u64) -> Vec<u8> {
        self.key(&format!("log/{version:020}"))
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<T, PublishError> {
        serde_json::from_slice(value).map_err(|e| PublishError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: e.to_string(),
        })
    }

    /// The fleet's version now (`None`: nothing was published yet), and the revision of its
    /// last change.
    pub async fn head(&self) -> Result<(Option<Head>, i64), PublishError> {
        let key = self.key("head");
        let (kv, _) = self.etcd.get(&key).await?;
        match kv {
            None => Ok((None, 0)),
            Some(kv) => Ok((Some(self.decode(&key, &kv.value)?), kv.mod_revision)),
        }
    }

    /// Version `version`, if etcd still keeps it.
    pub async fn version(&self, version: u64) -> Result<Option<FleetVersion>, PublishError> {
        let key = self.version_key(version);
        let (kv, _) = self.etcd.get(&key).await?;
        kv.map(|kv| self.decode(&key, &kv.value)).transpose()
    }

    /// The versions etcd keeps, newest first, without their texts.
    pub async fn history(&self) -> Result<Vec<FleetEntry>, PublishError> {
        let (kvs, _) = self.etcd.prefix(&self.key("log/")).await?;
        let mut entries = kvs
            .iter()
            .map(|kv| self.decode::<FleetEntry>(&kv.key, &kv.value))
            .collect::<Result<Vec<_>, _>>()?;
        entries.reverse();
        Ok(entries)
    }

    /// Publishes `text` as the fleet's next version. With `expected`, only while the fleet's
    /// version is still that one ([`PublishError::Conflict`] otherwise); without, a publish
    /// that loses a race to another reads the head again and goes after it. Unless `force`,
    /// a text the head already holds publishes nothing.
    pub async fn publish(
        &self,
        text: &str,
        publisher: &Publisher,
        expected: Option<u64>,
        force: bool,
        canary: Option<&[String]>,
    ) -> Result<Published, PublishError> {
        let hash = text_hash(text);
        let publish_id = format!("{:016x}", fastrand::u64(..));
        let mut tries = 0;
        // A transaction whose answer was lost (a timeout, a leader change) may have been
        // applied: then the head holds this text because of it, and it is this publish's.
        let mut maybe_applied: Option<u64> = None;
        loop {
            tries += 1;
            let (head, revision) = self.head().await?;
            let now = head.as_ref().map_or(0, |h| h.version);
            if let Some(mine) = maybe_applied.filter(|v| *v == now)
                && head.as_ref().is_some_and(|h| h.hash == hash)
                && let Some(version) = self.version(mine).await?
                && version.publish_id == publish_id
            {
                return Ok(Published::New(version));
            }
            if expected.is_some_and(|e| e != now) {
                return Err(PublishError::Conflict { now });
            }
            if let Some(head) = head
                .as_ref()
                .filter(|h| h.hash == hash && !force && h.canary.is_none())
            {
                return Ok(Published::Unchanged(head.clone()));
            }
            let canary = match (canary, &head) {
                (None, _) => None,
                (Some(_), None) => return Err(PublishError::NoStableVersion),
                (Some(nodes), Some(head)) => {
                    // A rollout over one still at its canaries keeps the stable version, and
                    // the earlier canaries among its own: they serve a newer version than the
                    // stable one already, and a node never steps back.
                    let (stable_version, stable_hash, mut all) = match &head.canary {
                        Some(c) => (c.stable_version, c.stable_hash.clone(), c.nodes.clone()),
                        None => (head.version, head.hash.clone(), Vec::new()),
                    };
                    for node in nodes {
                        if !all.contains(node) {
                            all.push(node.clone());
                        }
                    }
                    Some(Canary {
                        nodes: all,
                        stable_version,
                        stable_hash,
                    })
                }
            };
            let version = FleetVersion {
                version: now + 1,
                hash: hash.clone(),
                text: text.to_owned(),
                at_unix_ms: unix_ms(),
                source: publisher.source.clone(),
                node: self.node.clone(),
                uid: publisher.uid,
                pid: publisher.pid,
                summary: publisher.summary.clone(),
                publish_id: publish_id.clone(),
            };
            let head = Head {
                version: version.version,
                hash: hash.clone(),
                canary,
            };
            let record = json(&version);
            if record.len() > MAX_VERSION_BYTES {
                return Err(PublishError::TooLarge {
                    bytes: record.len(),
                });
            }
            let puts = vec![
                (self.key("head"), json(&head)),
                (self.version_key(version.version), record),
                (
                    self.log_key(version.version),
                    json(&FleetEntry::from(&version)),
                ),
            ];
            let deletes = version
                .version
                .checked_sub(KEPT_VERSIONS)
                .filter(|old| *old > 0)
                .map(|old| vec![self.version_key(old), self.log_key(old)])
                .unwrap_or_default();
            let written = match self
                .etcd
                .put_if(&self.key("head"), revision, puts, deletes)
                .await
            {
                Ok(written) => written,
                Err(e) if tries < PUBLISH_TRIES => {
                    tracing::info!(error = %e, version = version.version, "a fleet publish may not have landed; reading the head again");
                    maybe_applied = Some(version.version);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match written {
                Some(_) => return Ok(Published::New(version)),
                None if expected.is_some() || tries >= PUBLISH_TRIES => {
                    let now = self.head().await?.0.map_or(0, |h| h.version);
                    return Err(PublishError::Conflict { now });
                }
                // Another writer went first: after it, with a little jitter so that two
                // writers do not meet again in step.
                None => {
                    let jitter = std::time::Duration::from_millis(fastrand::u64(0..5));
                    tokio::time::sleep(jitter).await;
                }
            }
        }
    }

    /// Ends the staged rollout of `version` with `hash`: every node is to serve it now.
    /// `false` when the head moved on (another publish superseded the rollout).
    pub async fn promote(&self, version: u64, hash: &str) -> Result<bool, PublishError> {
        let (head, revision) = self.head().await?;
        let Some(head) = head.filter(|h| h.version == version && h.hash == hash) else {
            return Ok(false);
        };
        if head.canary.is_none() {
            return Ok(true);
        }
        let promoted = Head {
            canary: None,
            ..head
        };
        let key = self.key("head");
        let written = self
            .etcd
            .put_if(
                &key,
                revision,
                vec![(key.clone(), json(&promoted))],
                Vec::new(),
            )
            .await?;
        Ok(written.is_some())
    }

    /// Records what this node serves, attached to `lease` (so that it lapses with the node);
    /// refused while another controld (another instance) is live under the same name.
    pub async fn record(&self, state: &NodeState, lease: i64) -> Result<(), PublishError> {
        let key = self.key(&format!("nodes/{}", self.node));
        if let (Some(kv), _) = self.etcd.get(&key).await?
            && let Ok(other) = serde_json::from_slice::<NodeState>(&kv.value)
            && !other.instance.is_empty()
            && other.instance != state.instance
        {
            return Err(PublishError::DuplicateNode {
                node: self.node.clone(),
                other: other.instance,
            });
        }
        self.etcd.put(&key, json(state), lease).await?;
        Ok(())
    }

    /// Every live node's state, by node name.
    pub async fn nodes(&self) -> Result<Vec<NodeState>, PublishError> {
        let (kvs, _) = self.etcd.prefix(&self.key("nodes/")).await?;
        kvs.iter()
            .map(|kv| self.decode::<NodeState>(&kv.key, &kv.value))
            .collect()
    }
}

/// A record as JSON (the records here always serialize).
fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}
