//! The one test harness: controld and proxyd on temporary sockets and 127.0.0.1 port 0, mock
//! upstreams that record what they received, HTTP helpers, and polling with deadlines.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test harness: a failed setup step should stop the test right there, loudly"
)]

pub mod backend;
mod client;
pub mod etcd;
pub mod fleet;
pub mod grpc_raw;
pub mod h2raw;
pub mod load;
pub mod pebble;
pub mod raw_http;
pub mod relay;
pub mod systemd_box;
pub mod tls;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use proto::v1 as pb;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

pub use client::{Answer, Conn, H2Conn, get, get_request};
pub use upstream::MockUpstream;

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(15);

pub type TestBody = BoxBody<Bytes, std::convert::Infallible>;

/// File descriptors this process has open now (the in-process daemons' and the test's own).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A controld and a proxyd running in this process, sharing a temporary directory.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    controld: Option<Daemon>,
    proxyd: Option<Daemon>,
    /// proxyd's plain-HTTP listener.
    pub http: SocketAddr,
    /// proxyd's admin listener, when the config has `proxy.admin_address`.
    pub admin: Option<SocketAddr>,
    /// proxyd's TLS listener named `https`, when the config has one ([`HTTPS_ON_PORT_0`]).
    pub https: Option<SocketAddr>,
    /// Extra lines for the fixed `[proxy]` table.
    proxy_keys: String,
    /// Extra lines for the fixed `[control]` table.
    control_keys: String,
    /// Extra `[[proxy.listeners]]` after the fixed `http` one.
    listeners: String,
    /// Tables after everything else (e.g. `[cluster]`).
    tables: String,
    /// How controld's ACME task runs; `None`: its defaults.
    acme: Option<controld::acme::AcmeOptions>,
}

/// What a [`TestEnv`] starts with besides the config body ([`TestEnv::start_setup`]).
#[derive(Default, Clone)]
pub struct Setup {
    /// Extra lines for the fixed `[proxy]` table (e.g. [`ADMIN_ON_PORT_0`]).
    pub proxy_keys: String,
    /// Extra lines for the fixed `[control]` table.
    pub control_keys: String,
    /// `[[proxy.listeners]]` tables after the fixed plain one (e.g. [`HTTPS_ON_PORT_0`]).
    pub listeners: String,
    /// Tables at the end of the file (e.g. `[cluster]`).
    pub tables: String,
    /// How controld's ACME task runs (a test clock, short back-off); `None`: the defaults.
    pub acme: Option<controld::acme::AcmeOptions>,
}

/// A clock for controld's ACME task that a test moves: real time plus an offset.
#[derive(Debug, Default)]
pub struct TestClock {
    offset_secs: std::sync::atomic::AtomicI64,
}

impl TestClock {
    /// Moves the clock so that it reads `at` now (and goes on from there).
    pub fn set(&self, at: std::time::SystemTime) {
        let now = std::time::SystemTime::now();
        let offset = match at.duration_since(now) {
            Ok(ahead) => i64::try_from(ahead.as_secs()).unwrap(),
            Err(behind) => -i64::try_from(behind.duration().as_secs()).unwrap(),
        };
        self.offset_secs
            .store(offset, std::sync::atomic::Ordering::SeqCst);
    }

    /// Back to real time.
    pub fn reset(&self) {
        self.offset_secs
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

impl controld::acme::Clock for TestClock {
    fn now(&self) -> std::time::SystemTime {
        let offset = self.offset_secs.load(std::sync::atomic::Ordering::SeqCst);
        let now = std::time::SystemTime::now();
        let delta = Duration::from_secs(offset.unsigned_abs());
        if offset >= 0 {
            now + delta
        } else {
            now - delta
        }
    }
}

/// `proxy_keys` for [`TestEnv::start_with`]: an admin listener on a free port.
pub const ADMIN_ON_PORT_0: &str = "admin_address = \"127.0.0.1:0\"";

/// `listeners` for [`TestEnv::start_with_listeners`]: a TLS listener `https` on a free port.
pub const HTTPS_ON_PORT_0: &str =
    "[[proxy.listeners]]\nname = \"https\"\naddress = \"127.0.0.1:0\"\ntls = true\n";

struct Daemon {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Daemon {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("daemon stops")
            .expect("daemon task");
    }
}

impl TestEnv {
    /// Starts both daemons with `body` (sites, limits, ...) and waits until proxyd serves
    /// version 1.
    pub async fn start(body: &str) -> TestEnv {
        TestEnv::start_with("", body).await
    }

    /// Like [`TestEnv::start`], with `proxy_keys` (e.g. [`ADMIN_ON_PORT_0`]) added to the fixed
    /// `[proxy]` table of this and every later config this environment writes.
    pub async fn start_with(proxy_keys: &str, body: &str) -> TestEnv {
        let mut env = TestEnv::paths_only();
        env.proxy_keys = proxy_keys.to_owned();
        env.launch(body).await
    }

    /// Like [`TestEnv::start`], with `control_keys` added to the fixed `[control]` table.
    pub async fn start_with_control(control_keys: &str, body: &str) -> TestEnv {
        let mut env = TestEnv::paths_only();
        env.control_keys = control_keys.to_owned();
        env.launch(body).await
    }

    /// Like [`TestEnv::start`], with `listeners` (`[[proxy.listeners]]` tables, e.g.
    /// [`HTTPS_ON_PORT_0`]) after the fixed plain listener `http`, in this and every later
    /// config this environment writes.
    pub async fn start_with_listeners(listeners: &str, body: &str) -> TestEnv {
        let mut env = TestEnv::paths_only();
        env.listeners = listeners.to_owned();
        env.launch(body).await
    }

    /// Like [`TestEnv::start`], with everything [`Setup`] holds.
    pub async fn start_setup(setup: Setup, body: &str) -> TestEnv {
        let mut env = TestEnv::paths_only();
        env.proxy_keys = setup.proxy_keys;
        env.control_keys = setup.control_keys;
        env.listeners = setup.listeners;
        env.tables = setup.tables;
        env.acme = setup.acme;
        env.launch(body).await
    }

    async fn launch(mut self, body: &str) -> TestEnv {
        self.write_config(body);
        self.start_controld().await;
        self.start_proxyd();
        let status = self.wait_for_applied(1).await;
        self.http = listener_address(&status, "http");
        self.admin = find_listener(&status, "admin");
        self.https = find_listener(&status, "https");
        self
    }

    /// Paths and config helpers only, for tests that run the daemons as processes.
    pub fn paths_only() -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("proxy.toml");
        let socket = dir.path().join("control.sock");
        TestEnv {
            config_path,
            socket,
            dir,
            controld: None,
            proxyd: None,
            http: ([0, 0, 0, 0], 0).into(),
            admin: None,
            https: None,
            proxy_keys: String::new(),
            control_keys: String::new(),
            listeners: String::new(),
            tables: String::new(),
            acme: None,
        }
    }

    /// proxyd's own admin socket (in-process proxyd serves it there).
    pub fn proxyd_socket(&self) -> PathBuf {
        self.dir.path().join("proxyd.sock")
    }

    /// Waits until something accepts connections on the control socket.
    pub async fn wait_for_socket(&self) {
        let socket = self.socket.clone();
        eventually("controld's socket", || {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(&socket)
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
    }

    /// The config file: `body` first (so it may start with top-level keys), then the fixed part
    /// (socket, state dir, `[proxy]` with this environment's extra keys, one listener on port 0,
    /// and this environment's extra listeners). `body` must not open `[control]` or `[proxy]`.
    pub fn config_text(&self, body: &str) -> String {
        format!(
            "{body}\n\n[control]\nsocket = \"{}\"\nstate_dir = \"{}\"\n{}\n[proxy]\nshutdown_timeout = \"2s\"\n{}\n\
             [[proxy.listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n{}\n{}",
            self.socket.display(),
            self.dir.path().join("state").display(),
            self.control_keys,
            match self.proxy_keys.as_str() {
                "" => String::new(),
                keys => format!("{keys}\n"),
            },
            self.listeners,
            self.tables,
        )
    }

    /// Replaces the extra lines of the fixed `[proxy]` table, for the configs written from now on.
    pub fn set_proxy_keys(&mut self, keys: &str) {
        keys.clone_into(&mut self.proxy_keys);
    }

    pub fn write_config(&self, body: &str) {
        std::fs::write(&self.config_path, self.config_text(body)).unwrap();
    }

    pub async fn start_controld(&mut self) {
        let shutdown = CancellationToken::new();
        let mut options = controld::Options::new(&self.config_path);
        if let Some(acme) = &self.acme {
            options.acme = acme.clone();
        }
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = controld::run(options, token).await {
                panic!("controld failed: {e}");
            }
        });
        self.controld = Some(Daemon { shutdown, task });
        let socket = self.socket.clone();
        eventually("controld's socket", || {
            let socket = socket.clone();
            async move {
                tokio::net::UnixStream::connect(&socket)
                    .await
                    .ok()
                    .map(|_| ())
            }
        })
        .await;
    }

    pub async fn stop_controld(&mut self) {
        if let Some(d) = self.controld.take() {
            d.stop().await;
        }
    }

    fn start_proxyd(&mut self) {
        let shutdown = CancellationToken::new();
        let mut options = proxyd::Options::new(&self.socket, "test-proxyd");
        options.admin_socket = Some(self.proxyd_socket());
        let task = tokio::spawn(proxyd::run(options, shutdown.clone()));
        self.proxyd = Some(Daemon { shutdown, task });
    }

    pub async fn stop_proxyd(&mut self) {
        if let Some(d) = self.proxyd.take() {
            d.stop().await;
        }
    }

    pub async fn admin(&self) -> pb::admin_client::AdminClient<tonic::transport::Channel> {
        let channel = proto::uds::connect(&self.socket, DEADLINE).await.unwrap();
        pb::admin_client::AdminClient::new(channel)
    }

    pub async fn status(&self) -> pb::StatusReply {
        self.admin()
            .await
            .status(pb::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    /// Waits until a data plane reports serving `version`.
    pub async fn wait_for_applied(&self, version: u64) -> pb::StatusReply {
        eventually(
            &format!("a data plane serving version {version}"),
            || async {
                let Ok(channel) = proto::uds::connect(&self.socket, DEADLINE).await else {
                    return None;
                };
                let status = pb::admin_client::AdminClient::new(channel)
                    .status(pb::StatusRequest {})
                    .await
                    .ok()?
                    .into_inner();
                status
                    .data_planes
                    .iter()
                    .any(|p| p.applied_version == version)
                    .then_some(status)
            },
        )
        .await
    }

    /// Runs the real proxyctl binary against this environment's socket.
    pub async fn proxyctl(&self, args: &[&str]) -> Output {
        tokio::process::Command::new(binary("proxyctl"))
            .args(args)
            .env("PROXYCTL_SOCKET", &self.socket)
            .env("PROXYCTL_DATA_PLANE_SOCKET", self.proxyd_socket())
            .output()
            .await
            .unwrap()
    }

    /// `proxyctl --json upgrade` of the proxyd on this environment's proxyd socket, which must
    /// succeed; returns the new proxyd's pid.
    pub async fn upgrade(&self) -> u32 {
        let out = self.proxyctl(&["--json", "upgrade"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        answer["new_pid"]
            .as_u64()
            .and_then(|pid| u32::try_from(pid).ok())
            .expect("new_pid in the answer")
    }

    /// GET `path` on proxyd's admin listener.
    pub async fn admin_get(&self, path: &str) -> Answer {
        let admin = self
            .admin
            .expect("no admin listener: start with TestEnv::start_with(ADMIN_ON_PORT_0, ..)");
        get(admin, "localhost", path).await
    }

    /// proxyd's `/metrics` page.
    pub async fn metrics(&self) -> String {
        let answer = self.admin_get("/metrics").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body
    }

    /// Stops proxyd, then controld.
    pub async fn stop(mut self) {
        self.stop_proxyd().await;
        self.stop_controld().await;
    }
}

/// One site for `host` with one upstream; `extra` goes inside the site's table.
pub fn site(host: &str, upstream: &str, extra: &str) -> String {
    format!("[[sites]]\nhostnames = [\"{host}\"]\nupstreams = [\"{upstream}\"]\n{extra}\n")
}

/// Waits until nothing accepts connections on `address` any more.
pub async fn wait_until_refused(address: SocketAddr) {
    eventually(&format!("{address} to refuse connections"), || async {
        tokio::net::TcpStream::connect(address)
            .await
            .is_err()
            .then_some(())
    })
    .await;
}

/// The address a data plane reports for listener `name`.
pub fn listener_address(status: &pb::StatusReply, name: &str) -> SocketAddr {
    find_listener(status, name).unwrap_or_else(|| panic!("no listener {name} in {status:?}"))
}

fn find_listener(status: &pb::StatusReply, name: &str) -> Option<SocketAddr> {
    status
        .data_planes
        .iter()
        .flat_map(|p| &p.listeners)
        .find(|l| l.name == name)
        .map(|l| l.address.parse().unwrap())
}

/// The value of one series in a Prometheus text page, e.g.
/// `metric(&text, r#"proxy_requests_total{site="a.example",status_class="2xx"}"#)`, with its
/// labels written in the order proxyd encodes them. `None` when the series is absent.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .split(' ')
            .next()?
            .parse()
            .ok()
    })
}

/// VmRSS of this process, in KiB: both daemons of a [`TestEnv`] run in it, so this covers
/// their memory.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// A workspace binary built next to the test executable (`cargo build --workspace --bins`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Text of a process's stdout and stderr, for assertions and failure messages.
pub fn output_text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A daemon running as a real process; killed if the test ends without stopping it.
pub struct Process {
    child: tokio::process::Child,
    /// stderr lines, for [`Process::start_logged`].
    lines: Option<tokio::sync::mpsc::UnboundedReceiver<String>>,
}

impl Process {
    /// Starts workspace binary `name` with `args`. Its logs are dropped unless
    /// `PROXY_TESTS_LOG` is set, to keep test output readable.
    pub fn start(name: &str, args: &[&str]) -> Process {
        Process::start_with_env(name, args, &[])
    }

    /// Like [`Process::start`], with extra environment variables.
    pub fn start_with_env(name: &str, args: &[&str], env: &[(&str, &Path)]) -> Process {
        let logs = || match std::env::var_os("PROXY_TESTS_LOG") {
            Some(_) => std::process::Stdio::inherit(),
            None => std::process::Stdio::null(),
        };
        let child = tokio::process::Command::new(binary(name))
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, *v)))
            .stdout(logs())
            .stderr(logs())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        Process { child, lines: None }
    }

    /// Like [`Process::start`], keeping its stderr (the daemons' logs) for
    /// [`Process::wait_for_log`].
    pub fn start_logged(name: &str, args: &[&str]) -> Process {
        Process::start_logged_under(&[], name, args)
    }

    /// Like [`Process::start_logged`], run through `wrapper`: a program and its arguments that
    /// exec the daemon (e.g. `["prlimit", "--nofile=64:64", "--"]`), so the pid is the daemon's.
    pub fn start_logged_under(wrapper: &[&str], name: &str, args: &[&str]) -> Process {
        use tokio::io::AsyncBufReadExt;
        let mut command = match wrapper {
            [] => tokio::process::Command::new(binary(name)),
            [program, wrapper_args @ ..] => {
                let mut command = tokio::process::Command::new(program);
                command.args(wrapper_args).arg(binary(name));
                command
            }
        };
        let mut child = command
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if std::env::var_os("PROXY_TESTS_LOG").is_some() {
                    eprintln!("{line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Process {
            child,
            lines: Some(rx),
        }
    }

    /// Waits for a log line containing every one of `needles`, and returns it.
    pub async fn wait_for_log(&mut self, needles: &[&str]) -> String {
        let lines = self
            .lines
            .as_mut()
            .expect("start the process with start_logged");
        let found = tokio::time::timeout(DEADLINE, async {
            while let Some(line) = lines.recv().await {
                if needles.iter().all(|n| line.contains(n)) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("no log line with {needles:?}"),
        }
    }

    /// Waits for proxyd's `listening` log line for listener `name` and returns its address.
    pub async fn wait_for_listener(&mut self, name: &str) -> SocketAddr {
        let line = self
            .wait_for_log(&["listening", &format!("\"{name}\"")])
            .await;
        let json: serde_json::Value = serde_json::from_str(&line).unwrap();
        json["fields"]["address"].as_str().unwrap().parse().unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    /// Sends `signal` ("HUP", "TERM", "KILL", ...) through the shell's kill.
    pub async fn signal(&self, signal: &str) {
        let status = tokio::process::Command::new("sh")
            .args(["-c", &format!("kill -{signal} {}", self.pid())])
            .status()
            .await
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn exit_code(&mut self) -> Option<i32> {
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("process exits")
            .unwrap()
            .code()
    }
}

/// Sends `raw` bytes on a fresh connection and returns everything the proxy wrote back until it
/// closed the connection or [`DEADLINE`] passed. For requests a well-behaved client cannot send.
pub async fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
