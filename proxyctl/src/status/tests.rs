use proto::v1::ReloadOutcome;

use super::*;
use crate::fixtures;

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
