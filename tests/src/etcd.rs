//! A real etcd cluster for the fleet tests: Debian's `etcd-server` (3.4; scripts/test.sh
//! installs it), three members on free loopback ports, each with its data in a temporary
//! directory. Members can be stopped and started again, the leader found and stopped.

use std::path::PathBuf;
use std::time::Duration;

use proto::etcd::etcdserverpb as pb;

use crate::pebble::free_port;
use crate::{DEADLINE, eventually};

/// Whether etcd is installed; a test that needs it fails with this hint when it is not.
pub fn installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("etcd").is_file()))
}

/// One member: its ports and, while it runs, its process.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    process: Option<tokio::process::Child>,
}

/// A running etcd cluster; every member is killed when it is dropped.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster has a leader.
    pub async fn start(size: usize) -> EtcdCluster {
        assert!(
            installed(),
            "etcd is not on PATH: install the Debian package `etcd-server` (scripts/test.sh \
             does when it is missing)"
        );
        let dir = tempfile::tempdir().unwrap();
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                process: None,
            })
            .collect();
        let mut cluster = EtcdCluster { dir, members };
        for i in 0..size {
            cluster.start_member(i);
        }
        cluster.wait_for_leader().await;
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` (again: it keeps its data directory).
    pub fn start_member(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let data: PathBuf = self.dir.path().join(&self.members[i].name);
        let member = &mut self.members[i];
        assert!(member.process.is_none(), "member {i} runs already");
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let logs = || match std::env::var_os("PROXY_TESTS_LOG") {
            Some(_) => std::process::Stdio::inherit(),
            None => std::process::Stdio::null(),
        };
        let child = tokio::process::Command::new("etcd")
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "proxy-tests"])
            // Fast elections on loopback: a stopped leader is replaced within a second.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdout(logs())
            .stderr(logs())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        member.process = Some(child);
    }

    /// Stops member `i` (SIGKILL: as a crash).
    pub async fn stop_member(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].process.take() {
            let _ = child.kill().await;
        }
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The `[cluster] etcd = [...]` value for these members.
    pub fn toml_endpoints(&self) -> String {
        let quoted: Vec<String> = self.endpoints().iter().map(|e| format!("{e:?}")).collect();
        format!("[{}]", quoted.join(", "))
    }

    /// Member `i`'s status, if it answers.
    async fn status(&self, i: usize) -> Option<pb::StatusResponse> {
        let endpoint = format!("http://127.0.0.1:{}", self.members[i].client_port);
        let channel = tonic::transport::Endpoint::from_shared(endpoint)
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(1))
            .connect()
            .await
            .ok()?;
        pb::maintenance_client::MaintenanceClient::new(channel)
            .status(pb::StatusRequest {})
            .await
            .ok()
            .map(tonic::Response::into_inner)
    }

    /// The index of the member that leads now; waits until one does.
    pub async fn wait_for_leader(&self) -> usize {
        eventually("an etcd leader", || async {
            for i in 0..self.members.len() {
                if self.members[i].process.is_none() {
                    continue;
                }
                if let Some(s) = self.status(i).await
                    && s.leader != 0
                    && s.header.is_some_and(|h| h.member_id == s.leader)
                {
                    return Some(i);
                }
            }
            None
        })
        .await
    }

    /// Stops the leader; the index it had.
    pub async fn stop_leader(&mut self) -> usize {
        let leader = self.wait_for_leader().await;
        self.stop_member(leader).await;
        leader
    }
}

/// How long the tests wait on etcd at most.
pub const ETCD_DEADLINE: Duration = DEADLINE;
