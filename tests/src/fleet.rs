//! Three hosts of one fleet ("shop": web-1, web-2, web-3), each a controld and a proxyd, on a
//! three-member etcd of their own.

use std::time::Duration;

use controld::cluster::etcd::Etcd;
use controld::cluster::store::Fleet;

use crate::etcd::EtcdCluster;
use crate::{Setup, TestEnv, eventually};

pub struct Hosts {
    pub etcd: EtcdCluster,
    pub hosts: Vec<TestEnv>,
}

/// The fleet's keys as a node named "watcher" sees them (it never records itself).
pub fn watcher(etcd: &EtcdCluster) -> Fleet {
    #[allow(clippy::unwrap_used, reason = "test helper; loopback endpoints")]
    let client = Etcd::connect(&etcd.endpoints(), Duration::from_secs(2), None).unwrap();
    Fleet::new(client, "shop", "watcher")
}

impl Hosts {
    /// Starts etcd and the three hosts with `body` (and `listeners` after the plain one), and
    /// returns when each node is live in etcd.
    pub async fn start(body: &str, listeners: &str) -> Hosts {
        let setup = Setup {
            listeners: listeners.to_owned(),
            ..Setup::default()
        };
        Hosts::start_with(body, &setup, "").await
    }

    /// As [`Hosts::start`], each host from `setup` (its `tables` replaced by `[cluster]`, with
    /// `cluster_keys` added to it).
    pub async fn start_with(body: &str, setup: &Setup, cluster_keys: &str) -> Hosts {
        let etcd = EtcdCluster::start(3).await;
        let mut hosts = Vec::new();
        for node in ["web-1", "web-2", "web-3"] {
            let setup = Setup {
                tables: format!(
                    "[cluster]\netcd = {}\nname = \"shop\"\nnode = \"{node}\"\nlease_ttl = \"3s\"\n{cluster_keys}\n",
                    etcd.toml_endpoints()
                ),
                ..setup.clone()
            };
            hosts.push(TestEnv::start_setup(setup, body).await);
        }
        let w = watcher(&etcd);
        eventually("three live nodes", || async {
            (w.nodes().await.ok()?.len() == 3).then_some(())
        })
        .await;
        Hosts { etcd, hosts }
    }

    /// What host `i`'s proxyd answers for app.example.
    pub async fn body(&self, i: usize) -> String {
        crate::get(self.hosts[i].http, "app.example", "/")
            .await
            .body
    }

    /// `proxyctl --json reload` on host `i`, its reply.
    pub async fn reload(&self, i: usize) -> serde_json::Value {
        let out = self.hosts[i].proxyctl(&["--json", "reload"]).await;
        let text = crate::output_text(&out);
        eprintln!("reload on web-{}: {text}", i + 1);
        #[allow(clippy::panic, reason = "test helper")]
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("{text}"))
    }
}
