//! `[cluster]`: this host's place in a fleet (docs/fleets.md).

use std::path::PathBuf;
use std::time::Duration;

/// `[cluster]`: the fleet this host belongs to, and how it reaches etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd's client URLs (`http://host:port` or `https://host:port`), at least one.
    pub etcd: Vec<String>,
    /// The fleet: the prefix of every key it keeps in etcd.
    pub name: String,
    /// This host in the fleet.
    pub node: String,
    /// How long this node stays listed after its controld was last heard from.
    pub lease_ttl: Duration,
    /// Client TLS to etcd; required for `https://` endpoints.
    pub tls: Option<ClusterTls>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    /// The CA etcd's server certificates chain to.
    pub ca_file: PathBuf,
    /// This host's client certificate and key, when etcd asks for one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}
