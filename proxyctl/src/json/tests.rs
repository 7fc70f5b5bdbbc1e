use serde_json::{Value, json};

use super::*;
use crate::fixtures::{self, nacked};

fn to_value<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

#[test]
fn reload_reply_shape() {
    let mut reply = fixtures::applied();
    reply.warnings = vec!["proxy.admin_address changed".into()];
    reply
        .data_planes
        .push(nacked("node-b", 4713, "bad cert", 3));
    assert_eq!(
        to_value(&Reload::from(&reply)),
        json!({
            "outcome": "applied",
            "previous_version": 3,
            "version": 4,
            "config_path": "/etc/proxyd/proxy.toml",
            "duration_ms": 12,
            "canary": null,
            "diff": {
                "sites_added": ["a.example"],
                "sites_removed": [],
                "sites_modified": ["b.example"],
                "limits_changed": [{"field": "rate_limit.burst", "old": "200", "new": "300",
                                    "added": [], "removed": []}],
                "static_changed": [],
                "site_changes": []
            },
            "warnings": ["proxy.admin_address changed"],
            "diagnostics": [],
            "data_planes": [
                {"node_id": "node-a", "pid": 4712, "result": "acked",
                 "serving_version": 4, "error": null},
                {"node_id": "node-b", "pid": 4713, "result": "nacked",
                 "serving_version": 3, "error": "bad cert"}
            ]
        })
    );
}

#[test]
fn site_changes_carry_each_field_with_its_items() {
    let mut reply = fixtures::applied();
    reply.diff = Some(fixtures::detailed_diff());
    let value = to_value(&Reload::from(&reply));
    assert_eq!(value["diff"]["sites_modified"], json!(["b.example"]));
    assert_eq!(
        value["diff"]["site_changes"],
        json!([{
            "site": "b.example",
            "changes": [
                {"field": "upstreams",
                 "old": "http://10.0.0.1:80, http://10.0.0.2:80",
                 "new": "http://10.0.0.2:80, http://10.0.0.3:80",
                 "added": ["http://10.0.0.3:80"], "removed": ["http://10.0.0.1:80"]},
                {"field": "routes[\"/api\"].upstreams", "old": "http://a:80", "new": "http://b:80",
                 "added": ["http://b:80"], "removed": ["http://a:80"]},
                {"field": "rate_limit", "old": "10/s burst 5", "new": "20/s burst 10",
                 "added": [], "removed": []},
                {"field": "tls.certificate",
                 "old": "files sha256 3F:A1:0C:77…9A:01 expires 2027-01-01",
                 "new": "files sha256 77:00:12:AB…00:01 expires 2027-06-01",
                 "added": [], "removed": []}
            ]
        }])
    );
    // The same shape in check --remote and in the history.
    let remote = pb::ValidateReply {
        diff: Some(fixtures::detailed_diff()),
        ..fixtures::validated()
    };
    assert_eq!(
        to_value(&RemoteCheck::new(&remote, true))["diff"],
        value["diff"]
    );
    let mut history = fixtures::history();
    history.entries[0].diff = Some(fixtures::detailed_diff());
    let entries = &to_value(&History::from(&history))["entries"];
    assert_eq!(entries[0]["diff"], value["diff"]);
    assert_eq!(entries[1]["diff"], Value::Null);
}

#[test]
fn rejected_reply_lists_diagnostics_and_an_empty_diff() {
    let value = to_value(&Reload::from(&fixtures::rejected()));
    assert_eq!(value["outcome"], "rejected");
    assert_eq!(value["diff"]["sites_added"], json!([]));
    assert_eq!(
        value["diagnostics"],
        json!([
            {"file": "/etc/proxyd/proxy.toml", "line": 14, "column": 15,
             "key_path": "sites[2].upstreams[0]",
             "message": "invalid URL: relative URL without a base"},
            {"file": "/etc/proxyd/proxy.toml", "line": 0, "column": 0,
             "key_path": null, "message": "expected `=`"}
        ])
    );
}

#[test]
fn enum_names_are_lower_case() {
    let outcomes: Vec<_> = (0..=6).map(outcome_name).collect();
    assert_eq!(
        outcomes,
        [
            "unspecified",
            "applied",
            "unchanged",
            "rejected",
            "dry_run",
            "canary_stopped",
            "unknown"
        ]
    );
    let results: Vec<_> = (0..=5).map(result_name).collect();
    assert_eq!(
        results,
        [
            "unspecified",
            "acked",
            "nacked",
            "timed_out",
            "disconnected",
            "unknown"
        ]
    );
}

#[test]
fn status_reply_shape() {
    let mut reply = fixtures::status();
    reply.data_planes[0].last_nack_version = 5;
    reply.data_planes[0].last_nack_error = "bad cert".into();
    assert_eq!(
        to_value(&Status::new(Some(&reply), None)),
        json!({
            "certificate_warnings": [],
            "control_plane": {
                "pid": 4711,
                "build_version": "0.1.0",
                "config_path": "/etc/proxyd/proxy.toml",
                "version": 4,
                "content_hash": "ab12",
                "started_at_unix_ms": 1_795_290_000_000_u64,
                "last_reload": {
                    "at_unix_ms": 1_795_290_001_250_u64,
                    "outcome": "applied",
                    "summary": "1 site modified: b.example",
                    "version": 4
                }
            },
            "data_planes": [{
                "node_id": "node-a",
                "pid": 4712,
                "build_version": "0.1.0",
                "applied_version": 4,
                "desired_version": 4,
                "in_sync": true,
                "last_nack_version": 5,
                "last_nack_error": "bad cert",
                "listeners": [{"name": "http", "address": "127.0.0.1:8080"}],
                "connected_at_unix_ms": 1_795_290_000_500_u64
            }],
            "local_data_plane": null,
            "fleet": null
        })
    );
}

#[test]
fn status_without_reload_or_nack_uses_null() {
    let mut reply = fixtures::status();
    if let Some(control) = reply.control_plane.as_mut() {
        control.last_reload = None;
    }
    let value = to_value(&Status::new(Some(&reply), None));
    assert_eq!(value["control_plane"]["last_reload"], Value::Null);
    assert_eq!(value["data_planes"][0]["last_nack_version"], Value::Null);
    assert_eq!(value["data_planes"][0]["last_nack_error"], Value::Null);
}

#[test]
fn status_with_the_local_data_plane_adds_it() {
    let value = to_value(&Status::new(
        Some(&fixtures::status()),
        Some(&fixtures::local()),
    ));
    // What was there before is unchanged.
    assert_eq!(
        value["control_plane"],
        to_value(&Status::new(Some(&fixtures::status()), None))["control_plane"]
    );
    assert_eq!(value["data_planes"][0]["node_id"], "node-a");
    assert_eq!(
        value["local_data_plane"],
        json!({
            "node_id": "edge-1",
            "pid": 812,
            "build_version": "0.1.0",
            "applied_version": 4,
            "content_hash": "ab12",
            "control_plane_connected": true,
            "from_saved_snapshot": false,
            "ready": true,
            "draining": false,
            "started_at_unix_ms": 1_795_290_000_100_u64,
            "open_connections": 0,
            "listeners": [
                {"name": "http", "address": "127.0.0.1:8080"},
                {"name": "admin", "address": "127.0.0.1:9901"}
            ],
            "upstreams": [
                {"url": "http://10.0.0.5:8080", "healthy": true, "outstanding": 3},
                {"url": "http://10.0.0.6:8080", "healthy": false, "outstanding": 0}
            ]
        })
    );
}

#[test]
fn status_with_controld_down_has_null_control_plane_and_no_data_planes() {
    let value = to_value(&Status::new(None, Some(&fixtures::local())));
    assert_eq!(value["control_plane"], Value::Null);
    assert_eq!(value["data_planes"], json!([]));
    assert_eq!(value["local_data_plane"]["node_id"], "edge-1");
    let keys: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "certificate_warnings",
            "control_plane",
            "data_planes",
            "fleet",
            "local_data_plane"
        ]
    );
}

#[test]
fn history_shape() {
    let mut reply = fixtures::history();
    reply.entries.truncate(2);
    reply.entries[1].pid = None;
    assert_eq!(
        to_value(&History::from(&reply)),
        json!({
            "current_version": 7,
            "entries": [
                {"version": 7, "content_hash": "hash7", "at_unix_ms": 1_795_290_001_000_u64,
                 "source": "rollback to 5", "uid": 0, "pid": 812,
                 "summary": "1 site modified: a.example", "kind": "config", "diff": null,
                 "node": null},
                {"version": 6, "content_hash": "hash6", "at_unix_ms": 1_795_289_940_000_u64,
                 "source": "reload", "uid": 1000, "pid": null,
                 "summary": "rate_limit 10/s burst 5 → none", "kind": "config", "diff": null,
                 "node": null}
            ]
        })
    );
}

#[test]
fn startup_entries_have_null_uid_and_pid_and_empty_history_an_empty_list() {
    let value = to_value(&History::from(&fixtures::history()));
    assert_eq!(value["entries"][2]["source"], "startup");
    assert_eq!(value["entries"][2]["uid"], Value::Null);
    assert_eq!(value["entries"][2]["pid"], Value::Null);
    let empty = to_value(&History::from(&proto::v1::HistoryReply::default()));
    assert_eq!(empty, json!({"current_version": 0, "entries": []}));
}

#[test]
fn version_shape() {
    assert_eq!(
        to_value(&Version { proxyctl: "0.1.0" }),
        json!({"proxyctl": "0.1.0"})
    );
}

#[test]
fn remote_check_shape() {
    let reply = fixtures::validated();
    assert_eq!(
        to_value(&RemoteCheck::new(&reply, true)),
        json!({
            "valid": true,
            "current_version": 4,
            "next_version": 5,
            "diff": {
                "sites_added": ["a.example"],
                "sites_removed": [],
                "sites_modified": ["b.example"],
                "limits_changed": [{"field": "rate_limit.burst", "old": "200", "new": "300",
                                    "added": [], "removed": []}],
                "static_changed": [],
                "site_changes": []
            },
            "warnings": ["control.allowed_uids changed from none to 1000: needs a restart of controld"],
            "diagnostics": [],
            "text_hash": "3f2a"
        })
    );
}

#[test]
fn remote_check_invalid_lists_diagnostics_like_reload() {
    let mut reply = fixtures::invalid();
    reply.diff = None;
    let value = to_value(&RemoteCheck::new(&reply, false));
    assert_eq!(value["valid"], false);
    assert_eq!(value["current_version"], 4);
    assert_eq!(value["next_version"], 4);
    assert_eq!(
        value["diff"],
        json!({"sites_added": [], "sites_removed": [], "sites_modified": [],
               "limits_changed": [], "static_changed": [], "site_changes": []})
    );
    assert_eq!(
        value["diagnostics"],
        json!([
            {"file": "new.toml", "line": 7, "column": 14, "key_path": "sites[0].upstreams[0]",
             "message": "invalid URL: relative URL without a base"},
            {"file": "", "line": 0, "column": 0, "key_path": "rate_limit.burst",
             "message": "must be > 0"}
        ])
    );
}

#[test]
fn local_diagnostics_have_the_same_shape() {
    let local = proxy_config::config::Diagnostic {
        key_path: String::new(),
        file: "proxy.toml".into(),
        line: 3,
        column: 1,
        message: "expected `=`".into(),
    };
    assert_eq!(
        to_value(&Diagnostic::from(&local)),
        json!({"file": "proxy.toml", "line": 3, "column": 1, "key_path": null,
               "message": "expected `=`"})
    );
    assert_eq!(
        to_value(&Check {
            valid: false,
            diagnostics: vec![Diagnostic::from(&local)],
            sites: None,
            listeners: None,
        }),
        json!({"valid": false,
               "diagnostics": [{"file": "proxy.toml", "line": 3, "column": 1, "key_path": null,
                                "message": "expected `=`"}],
               "sites": null, "listeners": null})
    );
}

#[test]
fn config_show_shape_leaves_the_snapshot_out() {
    assert_eq!(
        to_value(&ConfigShow::from(&fixtures::config())),
        json!({
            "version": 4,
            "content_hash": "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12",
            "config_path": "/etc/proxyd/proxy.toml",
            "config_text": "[[sites]]\nhostnames = [\"a.example\"]\nupstreams = [\"http://10.0.0.5:8080\"]\n"
        })
    );
    let mut gone = fixtures::config();
    gone.config_text = String::new();
    assert_eq!(to_value(&ConfigShow::from(&gone))["config_text"], "");
}
