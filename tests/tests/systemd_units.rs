//! deploy/'s units under a real systemd (systemd 252 as PID 1 of a container, booted by
//! `tests/systemd/box.sh`; units and binaries installed by `deploy/install.sh`), driven with
//! `systemctl` and `journalctl` as an operator drives them, with traffic from this host
//! throughout. Each test boots its own box; they share the host's loopback, so every port is
//! picked free here. The figures each test prints (`--nocapture`) are the ones
//! deploy/README.md gives.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proxy_tests::load::Load;
use proxy_tests::systemd_box::{BINARIES, SystemdBox};
use proxy_tests::{Conn, MockUpstream, output_text};

/// The longest a `systemctl reload proxyd` may take (issue 18).
const RELOAD_WITHIN: Duration = Duration::from_secs(5);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config for the box: `app.example` on a free port, the admin listener on another.
fn config(http: u16, upstream: &str, extra_control: &str) -> String {
    format!(
        r#"[[sites]]
hostnames = ["app.example"]
upstreams = ["{upstream}"]

[control]
socket = "/run/controld/control.sock"
state_dir = "/var/lib/controld"
{extra_control}
[proxy]
shutdown_timeout = "10s"
admin_address = "127.0.0.1:{admin}"

[[proxy.listeners]]
name = "http"
address = "127.0.0.1:{http}"
"#,
        admin = free_port()
    )
}

/// Writes /etc/proxyd/proxy.toml in the box, as an operator would (root:controld 0640).
async fn write_config(b: &SystemdBox, text: &str) {
    b.ok(&format!(
        "cat > /etc/proxyd/proxy.toml.new <<'EOF'\n{text}EOF\n\
         chgrp controld /etc/proxyd/proxy.toml.new && chmod 0640 /etc/proxyd/proxy.toml.new && \
         mv /etc/proxyd/proxy.toml.new /etc/proxyd/proxy.toml"
    ))
    .await;
}

/// One GET for `app.example` on a new connection: its status, or `None`.
async fn get(addr: SocketAddr) -> Option<u16> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    Conn::over(tcp).await.try_get("app.example", "/").await
}

async fn serves(addr: SocketAddr, within: Duration) {
    let deadline = Instant::now() + within;
    while get(addr).await != Some(200) {
        assert!(Instant::now() < deadline, "{addr} does not serve");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Installs the config and starts both units; the address proxyd serves on.
async fn start(b: &SystemdBox, upstream: &MockUpstream) -> SocketAddr {
    let http = free_port();
    write_config(b, &config(http, &upstream.url(), "")).await;
    b.ok("systemctl enable --now controld proxyd").await;
    let addr = SocketAddr::from(([127, 0, 0, 1], http));
    serves(addr, Duration::from_secs(15)).await;
    addr
}

/// `systemctl reload proxyd` after a new binary was installed at ExecStart's path.
async fn upgrade(b: &SystemdBox) -> Duration {
    b.ok(&format!(
        "install -m 0755 {BINARIES}/proxyd /usr/local/bin/proxyd"
    ))
    .await;
    let (out, took) = b.timed("systemctl reload proxyd").await;
    assert!(
        out.status.success(),
        "systemctl reload proxyd: {}\n{}",
        output_text(&out),
        b.journal().await
    );
    took
}

/// The newest worker of proxyd's master runs the binary now at /usr/local/bin/proxyd.
async fn new_binary_serves(b: &SystemdBox) {
    b.ok(
        "m=$(systemctl show -p MainPID --value proxyd); w=$(pgrep -n -P \"$m\" -x proxyd); \
         [ \"$(stat -Lc %i /proc/$w/exe)\" = \"$(stat -c %i /usr/local/bin/proxyd)\" ]",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn systemctl_reload_upgrades_proxyd_under_load_and_systemd_keeps_supervising_it() {
    let upstream = MockUpstream::start("app").await;
    let Some(b) = SystemdBox::up("proxy-reload").await else {
        return;
    };
    let addr = start(&b, &upstream).await;
    let main_pid = b.property("proxyd", "MainPID").await;
    let load = Load::start(addr, "app.example", Duration::from_millis(10));

    let first = Instant::now();
    let mut times = Vec::new();
    for _ in 0..5 {
        let took = upgrade(&b).await;
        assert!(
            took < RELOAD_WITHIN,
            "systemctl reload proxyd took {took:?}"
        );
        times.push(took);
    }
    new_binary_serves(&b).await;
    assert_eq!(
        b.property("proxyd", "MainPID").await,
        main_pid,
        "systemd supervises the same main process"
    );

    // 60 s after the first upgrade (the stop timeout that used to fire was 45 s): still the
    // same service, never restarted. Traffic runs on meanwhile.
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(first.elapsed())).await;
    let state = b
        .ok("systemctl show -p ActiveState -p SubState -p NRestarts -p Result proxyd")
        .await;
    assert!(
        state.contains("ActiveState=active")
            && state.contains("SubState=running")
            && state.contains("NRestarts=0")
            && state.contains("Result=success"),
        "{state}\n{}",
        b.journal().await
    );
    let seen = load.finish(20).await;
    eprintln!(
        "figures: 5 × systemctl reload proxyd: {times:?}; {} requests answered, {} failed; {state:?} 60 s later",
        seen.ok, seen.failed
    );
    assert_eq!(seen.failed, 0, "{:?}", seen.failures);

    // `systemctl stop` drains an in-flight request, after the upgrades too.
    let before = upstream.hits();
    let slow = tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        Conn::over(tcp)
            .await
            .try_get("app.example", "/sleep/2000")
            .await
    });
    // The upstream has its head (the load is over: nothing else arrives).
    while upstream.hits() == before {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (out, took) = b.timed("systemctl stop proxyd").await;
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        slow.await.unwrap(),
        Some(200),
        "the in-flight request finished"
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "stop took {took:?}: it waits for the request, within shutdown_timeout"
    );
    eprintln!(
        "figures: systemctl stop proxyd with a 2 s request in flight: {took:?}, answered 200"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_upgrades_leave_the_old_proxyd_serving_and_a_killed_one_is_restarted_from_its_saved_snapshot()
 {
    let upstream = MockUpstream::start("app").await;
    let Some(b) = SystemdBox::up("proxy-failures").await else {
        return;
    };
    let addr = start(&b, &upstream).await;
    let load = Load::start(addr, "app.example", Duration::from_millis(10));

    // controld down: the upgrade hands the snapshot over all the same.
    b.ok("systemctl stop controld").await;
    let took = upgrade(&b).await;
    assert!(
        took < RELOAD_WITHIN,
        "upgrade with controld down took {took:?}"
    );
    new_binary_serves(&b).await;
    eprintln!("figures: systemctl reload proxyd with controld stopped: {took:?}");

    // Successors that crash, or hang (the timeout shortened in a drop-in, as `systemctl edit`
    // writes one): the reload fails with the reason, the old worker serves on, the unit stays.
    let serving = b
        .ok("pgrep -n -P $(systemctl show -p MainPID --value proxyd) -x proxyd")
        .await;
    b.ok("mkdir -p /etc/systemd/system/proxyd.service.d && printf '[Service]\\nExecReload=\\nExecReload=/usr/local/bin/proxyctl --data-plane-socket /run/proxyd/admin.sock upgrade --timeout 3s\\n' > /etc/systemd/system/proxyd.service.d/timeout.conf && systemctl daemon-reload").await;
    for (what, script, reason) in [
        (
            "crashes",
            "#!/bin/sh\nexit 3\n",
            "exited with status 3 before serving",
        ),
        (
            "hangs",
            "#!/bin/sh\nexec sleep 600\n",
            "did not serve in time",
        ),
    ] {
        b.ok(&format!(
            "printf '{}' > /usr/local/bin/proxyd.new && chmod 0755 /usr/local/bin/proxyd.new && mv /usr/local/bin/proxyd.new /usr/local/bin/proxyd",
            script.replace('\n', "\\n")
        ))
        .await;
        let (out, took) = b.timed("systemctl reload proxyd").await;
        assert!(
            !out.status.success(),
            "a successor that {what}: the reload fails"
        );
        b.wait_for(
            &format!("the reason a successor that {what} failed, in the journal"),
            &format!("journalctl -u proxyd --no-pager | grep -q '{reason}'"),
            Duration::from_secs(5),
        )
        .await;
        let state = b
            .ok("systemctl show -p ActiveState -p NRestarts proxyd")
            .await;
        assert!(
            state.contains("ActiveState=active") && state.contains("NRestarts=0"),
            "{what}: {state}"
        );
        assert_eq!(
            b.ok("pgrep -n -P $(systemctl show -p MainPID --value proxyd) -x proxyd")
                .await,
            serving,
            "{what}: the old worker serves on"
        );
        // Its admin socket works (a failed successor must not remove its file).
        b.ok("proxyctl --data-plane-socket /run/proxyd/admin.sock health")
            .await;
        eprintln!("figures: systemctl reload proxyd, successor {what}: failed after {took:?}");
    }
    let seen = load.finish(20).await;
    eprintln!(
        "figures: upgrades with controld down and two failed ones: {} requests answered, {} failed",
        seen.ok, seen.failed
    );
    assert_eq!(seen.failed, 0, "{:?}", seen.failures);

    // A working binary again, an upgrade, then kill -9: systemd restarts the unit, and the new
    // proxyd serves the snapshot it saved (controld is still down).
    upgrade(&b).await;
    // And a SIGTERM to the worker alone (not through systemd): a failure too, not a stop.
    let worker = "$(pgrep -n -P $(systemctl show -p MainPID --value proxyd) -x proxyd)";
    let master = "$(systemctl show -p MainPID --value proxyd)";
    for (target, signal, pid) in [
        ("the serving worker", "KILL", worker),
        ("the master", "KILL", master),
        ("the serving worker alone", "TERM", worker),
    ] {
        let restarts: u32 = b.property("proxyd", "NRestarts").await.parse().unwrap();
        b.ok(&format!("kill -{signal} {pid}")).await;
        b.wait_for(
            &format!("systemd to restart proxyd after kill -{signal} of {target}"),
            &format!(
                "[ \"$(systemctl show -p NRestarts --value proxyd)\" = {} ] && systemctl is-active -q proxyd",
                restarts + 1
            ),
            Duration::from_secs(30),
        )
        .await;
        serves(addr, Duration::from_secs(10)).await;
        b.wait_for(
            "the restarted proxyd to serve its saved snapshot",
            "journalctl -u proxyd --no-pager -o cat \
             _PID=$(pgrep -n -P $(systemctl show -p MainPID --value proxyd) -x proxyd) \
             | grep -q 'serving the saved snapshot'",
            Duration::from_secs(5),
        )
        .await;
        eprintln!(
            "figures: kill -{signal} of {target}: restarted (NRestarts {})",
            restarts + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn upgrades_and_restarts_under_socket_activation_refuse_no_connection() {
    let upstream = MockUpstream::start("app").await;
    let Some(b) = SystemdBox::up("proxy-socket").await else {
        return;
    };
    let http = free_port();
    write_config(&b, &config(http, &upstream.url(), "")).await;
    // The socket unit's address, changed the way deploy/README.md says: a drop-in.
    b.ok(&format!(
        "mkdir -p /etc/systemd/system/proxyd.socket.d && \
         printf '[Socket]\\nListenStream=\\nListenStream=127.0.0.1:{http}\\n' > /etc/systemd/system/proxyd.socket.d/listen.conf && \
         systemctl daemon-reload && systemctl enable --now controld proxyd.socket && systemctl start proxyd"
    ))
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], http));
    serves(addr, Duration::from_secs(15)).await;
    b.ok("journalctl -u proxyd --no-pager | grep -q 'socket passed by systemd'")
        .await;

    let load = Load::start(addr, "app.example", Duration::from_millis(10));
    let mut times = Vec::new();
    for _ in 0..2 {
        let took = upgrade(&b).await;
        assert!(took < RELOAD_WITHIN, "{took:?}");
        times.push(took);
    }
    new_binary_serves(&b).await;
    // A restart too: systemd holds the socket, connections wait in its backlog.
    let (out, restart) = b.timed("systemctl restart proxyd").await;
    assert!(out.status.success(), "{}", output_text(&out));
    let seen = load.finish(20).await;
    eprintln!(
        "figures: socket activation: 2 × systemctl reload proxyd {times:?}, systemctl restart proxyd {restart:?}; {} requests answered, {} failed",
        seen.ok, seen.failed
    );
    assert_eq!(seen.failed, 0, "{:?}", seen.failures);
    assert_eq!(b.property("proxyd", "NRestarts").await, "0");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_units_keep_their_promises() {
    let upstream = MockUpstream::start("app").await;
    let Some(b) = SystemdBox::up("proxy-promises").await else {
        return;
    };
    let http = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], http));

    // A bad config at start: controld fails once, is not restarted, and says why.
    write_config(
        &b,
        "[[sites]]\nhostnames = [\"app.example\"]\nupstream = []\n",
    )
    .await;
    let out = b.sh("systemctl start controld").await;
    assert!(!out.status.success());
    // A unit that restarts passes through `activating (auto-restart)`, and is `failed` only at
    // the start limit (then with NRestarts above 0): `failed` with none means it was not retried.
    b.wait_for(
        "controld to be failed",
        "[ \"$(systemctl show -p ActiveState --value controld)\" = failed ]",
        Duration::from_secs(15),
    )
    .await;
    let state = b
        .ok("systemctl show -p ActiveState -p NRestarts -p ExecMainStatus -p StatusText controld")
        .await;
    assert!(
        state.contains("ActiveState=failed")
            && state.contains("NRestarts=0")
            && state.contains("ExecMainStatus=78")
            && state.contains("StatusText=refused to start"),
        "{state}"
    );
    b.ok("systemctl status controld --no-pager -l | grep -q 'unknown key'")
        .await;

    // A first boot with controld down and nothing saved: proxyd is ready at once, and says it
    // waits; it serves as soon as controld answers.
    let (out, took) = b.timed("systemctl start proxyd").await;
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(took < Duration::from_secs(10), "proxyd start took {took:?}");
    b.ok("systemctl show -p StatusText --value proxyd | grep -q 'waiting for controld'")
        .await;
    write_config(&b, &config(http, &upstream.url(), "")).await;
    b.ok("systemctl start controld").await;
    serves(addr, Duration::from_secs(15)).await;
    eprintln!("figures: proxyd started with controld down and nothing saved: active in {took:?}");

    // Separate users: proxyd's may subscribe (it serves) and nothing else; controld's state is
    // out of its sight.
    assert_eq!(b.property("controld", "User").await, "controld");
    assert_eq!(b.property("proxyd", "User").await, "proxyd");
    let out = b
        .sh("setpriv --reuid=proxyd --regid=proxyd --groups=controld proxyctl --socket /run/controld/control.sock status")
        .await;
    assert!(
        !out.status.success() && output_text(&out).contains("only subscribe"),
        "{}",
        output_text(&out)
    );
    let out = b
        .sh("setpriv --reuid=proxyd --regid=proxyd --groups=controld proxyctl --socket /run/controld/control.sock rollback 1")
        .await;
    assert!(!out.status.success(), "{}", output_text(&out));
    // (Entered as root, who may list even an inaccessible directory: it is empty there.)
    b.ok("[ -n \"$(ls -A /var/lib/controld)\" ] && \
          [ -z \"$(nsenter -t $(pgrep -n -P $(systemctl show -p MainPID --value proxyd) -x proxyd) -m ls -A /var/lib/controld)\" ]")
        .await;
    // root may do everything.
    b.ok("proxyctl --socket /run/controld/control.sock status")
        .await;

    // `systemctl reload controld` with a rejected config fails, the reason in the journal.
    write_config(
        &b,
        "[[sites]]\nhostnames = [\"app.example\"]\nupstream = []\n",
    )
    .await;
    let out = b.sh("systemctl reload controld").await;
    assert!(!out.status.success(), "a rejected config fails the reload");
    b.ok("journalctl -u controld --no-pager | grep -q 'unknown key'")
        .await;
    assert_eq!(b.property("controld", "ActiveState").await, "active");
    serves(addr, Duration::from_secs(5)).await;

    // Operator edits are drop-ins, and install.sh (as an upgrade re-runs it) leaves them.
    b.ok("mkdir -p /etc/systemd/system/proxyd.service.d && printf '[Service]\\nEnvironment=EDITED=yes\\n' > /etc/systemd/system/proxyd.service.d/override.conf && systemctl daemon-reload")
        .await;
    b.ok(&format!(
        "bash /opt/src/deploy/install.sh --binaries {BINARIES} >/dev/null 2>&1"
    ))
    .await;
    assert!(
        b.property("proxyd", "Environment")
            .await
            .contains("EDITED=yes"),
        "the drop-in survived install.sh"
    );

    // How exposed each unit is, as systemd rates it (deploy/README.md gives the figures).
    for unit in ["controld", "proxyd"] {
        let rating = b
            .ok(&format!(
                "systemd-analyze security --no-pager {unit} | tail -n 1"
            ))
            .await;
        eprintln!("figures: systemd-analyze security {unit}: {rating}");
        let score: f64 = rating
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap_or(10.0);
        assert!(score <= 3.0, "{unit}: {rating}");
    }
}
