//! sd_notify as systemd sees it: the daemons' messages on a test NOTIFY_SOCKET.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use proxy_tests::{DEADLINE, MockUpstream, Process, TestEnv, eventually};
use tokio::net::UnixDatagram;

fn site(upstream: &str) -> String {
    format!("[[sites]]\nhostnames = [\"app.example\"]\nupstreams = [\"{upstream}\"]\n")
}

/// The next datagram on `socket`, as text.
async fn next(socket: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(DEADLINE, socket.recv(&mut buf))
        .await
        .expect("a notification")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn controld_and_proxyd_tell_systemd_when_they_are_ready_reloading_and_stopping() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::paths_only();
    env.write_config(&site(&app.url()));
    let notify_path = env.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let config = env.config_path.to_str().unwrap().to_owned();

    let mut controld = Process::start_with_env(
        "controld",
        &["--config", &config],
        &[("NOTIFY_SOCKET", &notify_path)],
    );
    let ready = next(&notify).await;
    assert!(
        ready.contains("READY=1") && ready.contains("STATUS=serving config version 1"),
        "{ready}"
    );

    controld.signal("HUP").await;
    let reloading = next(&notify).await;
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    let reloaded = next(&notify).await;
    assert!(
        reloaded.contains("READY=1") && reloaded.contains("STATUS=serving config version 1"),
        "{reloaded}"
    );

    // A rejected reload is still followed by READY=1, with the failure as STATUS.
    std::fs::write(&env.config_path, "not = [valid").unwrap();
    controld.signal("HUP").await;
    assert!(next(&notify).await.contains("RELOADING=1"));
    let rejected = next(&notify).await;
    assert!(
        rejected.contains("READY=1")
            && rejected.contains("STATUS=reload rejected; serving config version 1"),
        "{rejected}"
    );
    env.write_config(&site(&app.url()));

    let socket = env.socket.to_str().unwrap().to_owned();
    let mut proxyd = Process::start_with_env(
        "proxyd",
        &["--control-socket", &socket, "--admin-socket", ""],
        &[("NOTIFY_SOCKET", &notify_path)],
    );
    let ready = next(&notify).await;
    assert!(
        ready.contains("READY=1") && ready.contains("STATUS=serving config version 1"),
        "{ready}"
    );

    proxyd.signal("TERM").await;
    assert!(next(&notify).await.contains("STOPPING=1"));
    assert_eq!(proxyd.exit_code().await, Some(0));
    controld.signal("TERM").await;
    assert!(next(&notify).await.contains("STOPPING=1"));
    assert_eq!(controld.exit_code().await, Some(0));
}

/// Issue 18: a proxyd that systemd runs without `--master` (a unit from before it) is not
/// upgraded by a new process of proxyctl's: systemd could not supervise it. The upgrade fails
/// with what to do instead, and the running proxyd serves on, untouched. (Upgrades under a real
/// systemd, through the master, are tests/tests/systemd_units.rs.)
#[tokio::test(flavor = "multi_thread")]
async fn a_proxyd_run_by_systemd_without_a_master_is_not_upgraded_behind_systemds_back() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::paths_only();
    env.write_config(&site(&app.url()));
    let notify_path = env.dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let config = env.config_path.to_str().unwrap().to_owned();
    let socket = env.socket.to_str().unwrap().to_owned();
    let admin = env.proxyd_socket();
    let _controld = Process::start("controld", &["--config", &config]);
    let mut old = Process::start_with_env(
        "proxyd",
        &[
            "--control-socket",
            &socket,
            "--admin-socket",
            admin.to_str().unwrap(),
        ],
        &[("NOTIFY_SOCKET", &notify_path)],
    );
    // READY=1 may come first with "waiting for controld", if proxyd asked before controld
    // listened: wait for the snapshot.
    while !next(&notify).await.contains("STATUS=serving") {}

    let out = env
        .proxyctl(&["--data-plane-socket", admin.to_str().unwrap(), "upgrade"])
        .await;
    let text = proxy_tests::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("without --master") && text.contains("systemctl restart proxyd"),
        "{text}"
    );
    let out = env
        .proxyctl(&["--data-plane-socket", admin.to_str().unwrap(), "health"])
        .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "it serves on: {}",
        proxy_tests::output_text(&out)
    );
    old.signal("TERM").await;
    assert_eq!(old.exit_code().await, Some(0));
}

/// A stand-in for systemd's socket units, written to sd_listen_fds(3): it binds two listening
/// sockets, then runs the command after it as many times as `STARTS` says, one after the
/// other, each with the sockets as fds 3 and 4 and `LISTEN_FDS`, `LISTEN_PID` and
/// `LISTEN_FDNAMES` set; before each restart it waits for the file `GO` to appear, so that a
/// test can act while nothing serves. The sockets stay open in it throughout, as systemd keeps
/// them. What it does (the ports, each pid started and exited) it appends to the file `STATUS`.
const SOCKET_UNIT: &str = r#"
import fcntl, os, socket, sys, time
def status(line):
    with open(os.environ["STATUS"], "a") as f:
        f.write(line + "\n")
socks = []
for _ in range(2):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    socks.append(s)
status("ports " + " ".join(str(s.getsockname()[1]) for s in socks))
for start in range(int(os.environ["STARTS"])):
    if start > 0:
        while not os.path.exists(os.environ["GO"]):
            time.sleep(0.01)
        os.unlink(os.environ["GO"])
    pid = os.fork()
    if pid == 0:
        # PR_SET_PDEATHSIG, SIGKILL: proxyd dies with the unit (a failed test kills the unit).
        import ctypes
        ctypes.CDLL(None).prctl(1, 9)
        high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD, 100) for s in socks]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i)
            os.set_inheritable(3 + i, True)
        os.environ["LISTEN_FDS"] = str(len(socks))
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDNAMES"] = "http:proxyd.socket"
        os.execv(sys.argv[1], sys.argv[1:])
    status(f"started {pid}")
    _, code = os.waitpid(pid, 0)
    status(f"exited {pid} status {code}")
"#;

/// A GET sent on a new connection to `port` (connected and sent when this returns), and its
/// answer, whenever proxyd gets to it; empty if the connection is closed unanswered.
async fn queued_get(port: u16) -> tokio::task::JoinHandle<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the socket unit's socket takes connections");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn proxyd_serves_the_sockets_systemd_passed_and_they_queue_connections_across_restarts() {
    let app = MockUpstream::start("app").await;
    let env = TestEnv::paths_only();
    let go = env.dir.path().join("go");
    let status = env.dir.path().join("unit-status");
    let socket = env.socket.to_str().unwrap().to_owned();
    // Runs the socket unit with STARTS, GO and STATUS added to the environment, through sh.
    let script = format!(
        "STARTS=2 GO='{}' STATUS='{}' exec python3 -c \"$0\" \"$@\"",
        go.display(),
        status.display()
    );
    let mut unit = Process::start_logged_under(
        &["sh", "-c", &script, SOCKET_UNIT],
        "proxyd",
        &["--control-socket", &socket, "--admin-socket", ""],
    );
    let ports: Vec<u16> = unit_status(&status, "ports ", 0)
        .await
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    let first = started(&status, 0).await;

    // `http` takes the socket named like it (the config's port 0 notwithstanding); `web` the
    // unnamed one, by its address.
    let config = env.config_text(&site(&app.url()))
        + &format!(
            "\n[[proxy.listeners]]\nname = \"web\"\naddress = \"127.0.0.1:{}\"\n",
            ports[1]
        );
    std::fs::write(&env.config_path, config).unwrap();

    // Before proxyd has a config, connections queue on the sockets; once it serves, they are
    // answered.
    let early = queued_get(ports[0]).await;
    let _controld = Process::start("controld", &["--config", env.config_path.to_str().unwrap()]);
    assert!(early.await.unwrap().starts_with("HTTP/1.1 200"));
    assert!(
        queued_get(ports[1])
            .await
            .await
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );

    // proxyd stops; while none runs, both sockets take connections, and the next proxyd
    // answers them.
    signal(first, "TERM").await;
    assert_eq!(
        unit_status(&status, "exited ", 0).await,
        format!("{first} status 0")
    );
    // Connected and sent while no proxyd runs (a refused connection fails the test here).
    let during = [queued_get(ports[0]).await, queued_get(ports[1]).await];
    std::fs::write(&go, "").unwrap();
    let second = started(&status, 1).await;
    for answer in during {
        let answer = answer.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    signal(second, "TERM").await;
    assert_eq!(unit.exit_code().await, Some(0));
}

/// The rest of the `nth` line (from 0) starting with `prefix` in the socket unit's status
/// file, once there is one.
async fn unit_status(path: &std::path::Path, prefix: &str, nth: usize) -> String {
    eventually(&format!("the socket unit's {prefix:?} line"), || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // Whole lines only: the unit may be writing the next one.
        let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        whole
            .lines()
            .filter_map(|line| line.strip_prefix(prefix))
            .nth(nth)
            .map(str::to_owned)
    })
    .await
}

/// The pid of the `nth` proxyd (from 0) the socket unit started.
async fn started(path: &std::path::Path, nth: usize) -> u32 {
    let pid = unit_status(path, "started ", nth).await;
    pid.parse().expect("a pid after \"started\"")
}

async fn signal(pid: u32, signal: &str) {
    let status = tokio::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());
}
