//! A real etcd cluster for the fleet tests: Debian's `etcd-server` (3.4; scripts/test.sh
//! installs it), three members on free loopback ports, each with its data in a temporary
//! directory. Members can be stopped and started again, the leader found and stopped. With
//! [`EtcdCluster::start_tls`], clients speak TLS and must present a certificate of the test CA.

use std::path::PathBuf;
use std::time::Duration;

use proto::etcd::etcdserverpb as pb;

use crate::pebble::free_port;
use crate::{DEADLINE, eventually};

/// Starts tried, on new ports each, before a test gives up on etcd.
const START_ATTEMPTS: usize = 3;

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
    /// Plain HTTP `/health` (etcd's `--listen-metrics-urls`).
    metrics_port: u16,
    process: Option<tokio::process::Child>,
}

/// The files a client of a TLS cluster uses: the CA, and a client certificate and key.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A running etcd cluster; every member is killed when it is dropped.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    /// Set for a TLS cluster: the server's certificate and key, and what clients use.
    tls: Option<(crate::tls::Issued, ClientFiles)>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until the cluster has a leader.
    pub async fn start(size: usize) -> EtcdCluster {
        EtcdCluster::start_with(size, false).await
    }

    /// Like [`EtcdCluster::start`], with TLS for clients (`https://` URLs) and client
    /// certificates required (`--client-cert-auth`).
    pub async fn start_tls(size: usize) -> EtcdCluster {
        EtcdCluster::start_with(size, true).await
    }

    async fn start_with(size: usize, tls: bool) -> EtcdCluster {
        assert!(
            installed(),
            "etcd is not on PATH: install the Debian package `etcd-server` (scripts/test.sh \
             does when it is missing)"
        );
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let mut cluster = EtcdCluster::new(size, tls);
            for i in 0..size {
                cluster.start_member(i);
            }
            match cluster.until_healthy().await {
                Ok(()) => {
                    if cluster.tls.is_none() {
                        cluster.wait_for_leader().await;
                    }
                    return cluster;
                }
                // Killed on drop; the next attempt takes other ports.
                Err(why) => failures.push(why),
            }
        }
        panic!(
            "etcd did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n\n")
        );
    }

    /// Members on free ports (none started), with their certificates for a TLS cluster.
    fn new(size: usize, tls: bool) -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let members = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                metrics_port: free_port(),
                process: None,
            })
            .collect();
        let tls = tls.then(|| {
            let ca = crate::tls::TestCa::new();
            let server = ca.issue(dir.path(), "etcd-server", &["127.0.0.1", "localhost"]);
            let client = ca.issue(dir.path(), "etcd-client", &["controld"]);
            let ca_file = dir.path().join("etcd-ca.pem");
            std::fs::write(&ca_file, ca.pem()).unwrap();
            (
                server,
                ClientFiles {
                    ca_file,
                    cert_file: client.cert_file,
                    key_file: client.key_file,
                },
            )
        });
        EtcdCluster { dir, members, tls }
    }

    /// Waits until a member says it is healthy; an error, with the end of each member's log,
    /// when one exits first (a port taken meanwhile by another test) or none is within
    /// [`DEADLINE`].
    async fn until_healthy(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            for m in self.members.iter().filter(|m| m.process.is_some()) {
                if health(m.metrics_port).await {
                    return Ok(());
                }
            }
            let exited = self.members.iter_mut().find_map(|m| {
                let status = m.process.as_mut()?.try_wait().ok()??;
                Some(format!("{} exited ({status})", m.name))
            });
            let why = match exited {
                Some(why) => why,
                None if tokio::time::Instant::now() >= deadline => {
                    format!("no member healthy within {DEADLINE:?}")
                }
                None => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let logs: Vec<String> = self
                .members
                .iter()
                .map(|m| {
                    let log = std::fs::read_to_string(self.log_path(&m.name)).unwrap_or_default();
                    let lines: Vec<&str> = log.lines().collect();
                    let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
                    format!("{}:\n  {tail}", m.name)
                })
                .collect();
            return Err(format!(
                "{why}; the end of each member's log:\n{}",
                logs.join("\n")
            ));
        }
    }

    fn log_path(&self, member: &str) -> PathBuf {
        self.dir.path().join(format!("{member}.log"))
    }

    /// What a client of this TLS cluster uses; `None` for a plain one.
    pub fn client_files(&self) -> Option<&ClientFiles> {
        self.tls.as_ref().map(|(_, client)| client)
    }

    /// Waits until a member says it is healthy (it has a leader).
    pub async fn wait_healthy(&self) {
        eventually("a healthy etcd", || async {
            for m in self.members.iter().filter(|m| m.process.is_some()) {
                if health(m.metrics_port).await {
                    return Some(());
                }
            }
            None
        })
        .await;
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
        let log_path = self.log_path(&self.members[i].name);
        let tls = self.tls.clone();
        let member = &mut self.members[i];
        assert!(member.process.is_none(), "member {i} runs already");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let metrics = format!("http://127.0.0.1:{}", member.metrics_port);
        let tls_args: Vec<String> = match &tls {
            None => Vec::new(),
            Some((server, client)) => vec![
                "--cert-file".into(),
                server.cert_file.display().to_string(),
                "--key-file".into(),
                server.key_file.display().to_string(),
                "--trusted-ca-file".into(),
                client.ca_file.display().to_string(),
                "--client-cert-auth".into(),
            ],
        };
        // Its log goes to a file beside the data (appended to across restarts), shown when the
        // cluster does not start; to the test's output with PROXY_TESTS_LOG.
        let logs = || match std::env::var_os("PROXY_TESTS_LOG") {
            Some(_) => std::process::Stdio::inherit(),
            None => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_or_else(|_| std::process::Stdio::null(), std::process::Stdio::from),
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
            .args(["--listen-metrics-urls", &metrics])
            .args(&tls_args)
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
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://127.0.0.1:{}", m.client_port))
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

/// Whether the member whose metrics listen on `port` says it is healthy (`GET /health`); any
/// failure is a no.
async fn health(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        Some(String::from_utf8_lossy(&answer).contains("\"health\":\"true\""))
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
