use std::path::Path;

use proto::v1::ReloadOutcome;

use super::*;
use crate::fixtures;

/// controld's part alone, as `status` printed it before it asked the local proxyd too.
fn render(reply: &StatusReply) -> String {
    output::lines(&control_lines(reply))
}

fn exit(reply: &StatusReply) -> Exit {
    control_exit(reply)
}

fn report(control: Option<StatusReply>, local: Local) -> Report {
    Report {
        control,
        control_socket: Path::new("/run/controld/control.sock").to_owned(),
        local,
        certificates: None,
    }
}

fn absent() -> Local {
    Local::Absent {
        socket: Path::new("/run/proxyd/admin.sock").to_owned(),
    }
}

#[test]
fn healthy_fleet_renders_as_a_table() {
    let reply = fixtures::status();
    assert_eq!(
        render(&reply),
        "controld   pid 4711  v0.1.0  version 4  config /etc/proxyd/proxy.toml\n\
         last reload  2026-11-21 19:40:01 UTC  applied  version 4  (1 site modified: b.example)\n\
         DATA PLANE  PID   APPLIED  DESIRED  IN SYNC  LISTENERS\n\
         node-a      4712  4        4        yes      http=127.0.0.1:8080\n"
    );
    assert_eq!(exit(&reply), Exit::Ok);
}

#[test]
fn a_refusing_data_plane_is_degraded_and_explained() {
    let mut reply = fixtures::status();
    let mut second = reply.data_planes[0].clone();
    second.node_id = "node-b-long-name".into();
    second.applied_version = 3;
    second.desired_version = 4;
    second.in_sync = false;
    second.last_nack_version = 4;
    second.last_nack_error = "cannot load certificate\nfor a.example".into();
    second.listeners.clear();
    reply.data_planes.push(second);
    let text = render(&reply);
    assert!(
        text.ends_with(
            "DATA PLANE        PID   APPLIED  DESIRED  IN SYNC  LISTENERS\n\
             node-a            4712  4        4        yes      http=127.0.0.1:8080\n\
             node-b-long-name  4712  3        4        no       -\n\
             node-b-long-name refused version 4: cannot load certificate; for a.example\n"
        ),
        "{text}"
    );
    assert_eq!(exit(&reply), Exit::Failed);
}

#[test]
fn no_data_plane_is_degraded() {
    let mut reply = fixtures::status();
    reply.data_planes.clear();
    assert!(render(&reply).ends_with("\nno data plane connected\n"));
    assert_eq!(exit(&reply), Exit::Failed);
}

#[test]
fn last_reload_none_since_start() {
    assert_eq!(last_reload_line(None), "last reload  none since start");
    let zero = LastReload::default();
    assert_eq!(
        last_reload_line(Some(&zero)),
        "last reload  none since start"
    );
    let rejected = LastReload {
        at_unix_ms: 1000,
        outcome: ReloadOutcome::Rejected as i32,
        summary: String::new(),
        version: 2,
    };
    assert_eq!(
        last_reload_line(Some(&rejected)),
        "last reload  1970-01-01 00:00:01 UTC  rejected  version 2"
    );
}

#[test]
fn several_listeners_are_listed() {
    let mut dp = fixtures::status().data_planes[0].clone();
    dp.listeners.push(proto::v1::BoundListener {
        name: "https".into(),
        address: "[::1]:8443".into(),
    });
    assert_eq!(listeners(&dp), "http=127.0.0.1:8080, https=[::1]:8443");
}

const LOCAL_SECTION: &str = "\n\
    proxyd edge-1  pid 812  version 4  controld connected  ready\n\
    listeners  http=127.0.0.1:8080, admin=127.0.0.1:9901  (0 open connections)\n\
    UPSTREAM              HEALTHY  OUTSTANDING\n\
    http://10.0.0.5:8080  yes      3\n\
    http://10.0.0.6:8080  no       0\n";

#[test]
fn both_answering_adds_the_local_section_after_todays_table() {
    let report = report(Some(fixtures::status()), Local::Answered(fixtures::local()));
    assert_eq!(
        report.render(),
        format!("{}{LOCAL_SECTION}", render(&fixtures::status()))
    );
    assert_eq!(report.exit(), Exit::Ok);
}

#[test]
fn the_local_line_names_every_state_that_needs_attention() {
    let mut dp = fixtures::local();
    assert_eq!(
        local_line(&dp),
        "proxyd edge-1  pid 812  version 4  controld connected  ready"
    );
    dp.control_plane_connected = false;
    dp.from_saved_snapshot = true;
    assert_eq!(
        local_line(&dp),
        "proxyd edge-1  pid 812  version 4  controld NOT connected  serving a saved snapshot  ready"
    );
    dp.draining = true;
    assert!(local_line(&dp).ends_with("  serving a saved snapshot  draining"));
    let starting = proto::v1::DataPlaneStatusReply {
        node_id: "edge-2".into(),
        pid: 9,
        ..Default::default()
    };
    assert_eq!(
        local_line(&starting),
        "proxyd edge-2  pid 9  no version yet  controld NOT connected  NOT ready"
    );
}

#[test]
fn the_upstream_table_lines_up_and_is_left_out_without_upstreams() {
    let dp = fixtures::local();
    assert_eq!(
        upstream_table(&dp.upstreams),
        [
            "UPSTREAM              HEALTHY  OUTSTANDING",
            "http://10.0.0.5:8080  yes      3",
            "http://10.0.0.6:8080  no       0",
        ]
    );
    let mut bare = dp;
    bare.upstreams.clear();
    bare.listeners.clear();
    assert_eq!(
        local_section(&bare),
        [
            "proxyd edge-1  pid 812  version 4  controld connected  ready",
            "listeners  -  (0 open connections)",
        ]
    );
}

#[test]
fn controld_down_but_proxyd_answering_is_degraded() {
    let mut dp = fixtures::local();
    dp.control_plane_connected = false;
    let down = report(None, Local::Answered(dp));
    let text = down.render();
    assert!(
        text.starts_with(
            "controld   not running (or unreachable at /run/controld/control.sock)\n\n\
             proxyd edge-1  pid 812  version 4  controld NOT connected  ready\n"
        ),
        "{text}"
    );
    assert_eq!(down.exit(), Exit::Failed);
    // Even a perfectly healthy local data plane cannot make up for controld.
    let healthy_local = report(None, Local::Answered(fixtures::local()));
    assert_eq!(healthy_local.exit(), Exit::Failed);
}

fn report_with_local(dp: proto::v1::DataPlaneStatusReply) -> Report {
    report(Some(fixtures::status()), Local::Answered(dp))
}

#[test]
fn a_local_data_plane_that_is_not_serving_or_cut_off_degrades_the_status() {
    let mut not_ready = fixtures::local();
    not_ready.ready = false;
    assert_eq!(report_with_local(not_ready).exit(), Exit::Failed);
    let mut cut_off = fixtures::local();
    cut_off.control_plane_connected = false;
    assert_eq!(report_with_local(cut_off).exit(), Exit::Failed);
    let mut draining = fixtures::local();
    draining.draining = true;
    assert_eq!(report_with_local(draining).exit(), Exit::Failed);
    // A healthy local data plane does not hide a lagging one elsewhere.
    let mut lagging = fixtures::status();
    lagging.data_planes[0].in_sync = false;
    let report = report(Some(lagging), Local::Answered(fixtures::local()));
    assert_eq!(report.exit(), Exit::Failed);
}

#[test]
fn a_missing_local_socket_keeps_todays_output_and_exit() {
    let healthy = report(Some(fixtures::status()), absent());
    assert_eq!(healthy.render(), render(&fixtures::status()));
    assert_eq!(healthy.exit(), Exit::Ok);
    let mut lagging = fixtures::status();
    lagging.data_planes[0].in_sync = false;
    assert_eq!(report(Some(lagging), absent()).exit(), Exit::Failed);
}

#[test]
fn a_missing_local_socket_is_noted_only_without_any_data_plane() {
    let mut empty = fixtures::status();
    empty.data_planes.clear();
    let report = report(Some(empty), absent());
    assert!(
        report.render().ends_with(
            "no data plane connected\nnote: no data plane socket at /run/proxyd/admin.sock\n"
        ),
        "{}",
        report.render()
    );
    assert_eq!(report.exit(), Exit::Failed);
}

#[test]
fn a_local_data_plane_that_fails_is_noted_but_does_not_decide() {
    let report = report(
        Some(fixtures::status()),
        Local::Failed {
            reason: "cannot reach proxyd at /run/proxyd/admin.sock: Permission denied".into(),
        },
    );
    assert!(report.render().ends_with(
        "node-a      4712  4        4        yes      http=127.0.0.1:8080\n\
         note: cannot reach proxyd at /run/proxyd/admin.sock: Permission denied\n"
    ));
    assert_eq!(report.exit(), Exit::Ok);
}

#[test]
fn a_fleet_lists_every_node_and_why_one_does_not_serve_the_fleet_s_version() {
    use proto::v1::{FleetNode, FleetStatus};
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_290_010);
    let node = |name: &str, applied: u64, in_sync: bool, error: &str| FleetNode {
        node: name.into(),
        applied_version: applied,
        applied_hash: format!("{applied}abcdef0123456789"),
        in_sync,
        last_seen_unix_ms: 1_795_290_008_000,
        error: error.into(),
        tried_version: 3,
        build: "0.1.0".into(),
    };
    let fleet = FleetStatus {
        name: "shop".into(),
        node: "web-1".into(),
        desired_version: 3,
        desired_hash: "3abcdef0123456789".into(),
        nodes: vec![
            node("web-1", 3, true, ""),
            node(
                "web-2",
                2,
                false,
                "upstream http://db:80: host \"db\" does not resolve",
            ),
        ],
        error: String::new(),
        ..Default::default()
    };
    assert_eq!(
        fleet_lines(&fleet, now),
        [
            "fleet shop  version 3 (3abcdef0)  this host: web-1",
            "NODE   APPLIED       DESIRED  IN SYNC  LAST SEEN",
            "web-1  3 (3abcdef0)  3        yes      2s ago",
            "web-2  2 (2abcdef0)  3        no       2s ago",
            "web-2: does not serve version 3: upstream http://db:80: host \"db\" does not resolve",
        ]
    );
    // A staged rollout at its canaries: web-2 is to serve 3, web-1 the stable 2.
    let rollout = FleetStatus {
        canary_nodes: vec!["web-2".into()],
        stable_version: 2,
        nodes: vec![node("web-1", 2, true, ""), node("web-2", 3, true, "")],
        ..fleet.clone()
    };
    assert_eq!(
        fleet_lines(&rollout, now),
        [
            "fleet shop  version 3 (3abcdef0)  this host: web-1",
            "staged rollout: version 3 on its canaries (web-2) first; the others keep version 2 meanwhile",
            "NODE   APPLIED       DESIRED  IN SYNC  LAST SEEN",
            "web-1  2 (2abcdef0)  2        yes      2s ago",
            "web-2  3 (3abcdef0)  3        yes      2s ago",
        ]
    );
    let unreachable = FleetStatus {
        error: "etcd (http://10.0.0.1:2379) is unreachable: tcp connect error".into(),
        nodes: vec![node("web-1", 2, false, "")],
        ..fleet
    };
    let lines = fleet_lines(&unreachable, now);
    assert!(lines[0].contains("etcd unreachable"), "{lines:?}");
    assert!(lines[2].starts_with("web-1  2 (2abcdef0)  ?"), "{lines:?}");
}
