//! Hand-built proto values for the unit tests: replies shaped the way controld (and, for
//! [`local`], proxyd's own socket) sends them.

use proto::v1::{
    BoundListener, ConfigDiff, ControlPlaneStatus, DataPlaneOutcome, DataPlaneResult,
    DataPlaneStatus, DataPlaneStatusReply, Diagnostic, FieldChange, GetConfigReply, HistoryEntry,
    HistoryReply, LastReload, ReloadOutcome, ReloadReply, SiteChange, Snapshot, StatusReply,
    UpstreamStatus, ValidateReply,
};

pub fn change(field: &str, old: &str, new: &str) -> FieldChange {
    FieldChange {
        field: field.into(),
        old_value: old.into(),
        new_value: new.into(),
        ..FieldChange::default()
    }
}

/// A change of a list: `added` and `removed` items, whole lists in the values.
pub fn list_change(field: &str, old: &str, new: &str, added: &str, removed: &str) -> FieldChange {
    FieldChange {
        added: vec![added.into()],
        removed: vec![removed.into()],
        ..change(field, old, new)
    }
}

/// [`diff`], with what changed inside `b.example`.
pub fn detailed_diff() -> ConfigDiff {
    ConfigDiff {
        site_changes: vec![SiteChange {
            site: "b.example".into(),
            changes: vec![
                list_change(
                    "upstreams",
                    "http://10.0.0.1:80, http://10.0.0.2:80",
                    "http://10.0.0.2:80, http://10.0.0.3:80",
                    "http://10.0.0.3:80",
                    "http://10.0.0.1:80",
                ),
                list_change(
                    "routes[\"/api\"].upstreams",
                    "http://a:80",
                    "http://b:80",
                    "http://b:80",
                    "http://a:80",
                ),
                change("rate_limit", "10/s burst 5", "20/s burst 10"),
                change(
                    "tls.certificate",
                    "files sha256 3F:A1:0C:77…9A:01 expires 2027-01-01",
                    "files sha256 77:00:12:AB…00:01 expires 2027-06-01",
                ),
            ],
        }],
        ..diff()
    }
}

/// One site added, one modified, one limit changed.
pub fn diff() -> ConfigDiff {
    ConfigDiff {
        sites_added: vec!["a.example".into()],
        sites_modified: vec!["b.example".into()],
        limits_changed: vec![change("rate_limit.burst", "200", "300")],
        ..ConfigDiff::default()
    }
}

pub fn data_plane(node: &str, pid: u32, result: DataPlaneResult, serving: u64) -> DataPlaneOutcome {
    DataPlaneOutcome {
        node_id: node.into(),
        pid,
        result: result as i32,
        serving_version: serving,
        error: String::new(),
    }
}

pub fn nacked(node: &str, pid: u32, error: &str, serving: u64) -> DataPlaneOutcome {
    DataPlaneOutcome {
        error: error.into(),
        ..data_plane(node, pid, DataPlaneResult::Nacked, serving)
    }
}

/// Version 3 → 4, applied by one data plane in 12 ms.
pub fn applied() -> ReloadReply {
    ReloadReply {
        outcome: ReloadOutcome::Applied as i32,
        previous_version: 3,
        version: 4,
        diagnostics: Vec::new(),
        diff: Some(diff()),
        warnings: Vec::new(),
        data_planes: vec![data_plane("node-a", 4712, DataPlaneResult::Acked, 4)],
        duration_ms: 12,
        config_path: "/etc/proxyd/proxy.toml".into(),
        canary: None,
    }
}

/// Two diagnostics; version 3 stays.
pub fn rejected() -> ReloadReply {
    ReloadReply {
        outcome: ReloadOutcome::Rejected as i32,
        previous_version: 3,
        version: 3,
        diagnostics: vec![
            Diagnostic {
                key_path: "sites[2].upstreams[0]".into(),
                file: "/etc/proxyd/proxy.toml".into(),
                line: 14,
                column: 15,
                message: "invalid URL: relative URL without a base".into(),
            },
            Diagnostic {
                key_path: String::new(),
                file: "/etc/proxyd/proxy.toml".into(),
                line: 0,
                column: 0,
                message: "expected `=`".into(),
            },
        ],
        diff: None,
        data_planes: Vec::new(),
        duration_ms: 1,
        ..applied()
    }
}

/// controld at version 4 with one data plane in sync.
pub fn status() -> StatusReply {
    StatusReply {
        control_plane: Some(ControlPlaneStatus {
            config_path: "/etc/proxyd/proxy.toml".into(),
            version: 4,
            content_hash: "ab12".into(),
            pid: 4711,
            build_version: "0.1.0".into(),
            started_at_unix_ms: 1_795_290_000_000,
            last_reload: Some(LastReload {
                // 2026-11-21 19:40:01.250 UTC
                at_unix_ms: 1_795_290_001_250,
                outcome: ReloadOutcome::Applied as i32,
                summary: "1 site modified: b.example".into(),
                version: 4,
            }),
            metrics_address: String::new(),
        }),
        data_planes: vec![DataPlaneStatus {
            node_id: "node-a".into(),
            pid: 4712,
            build_version: "0.1.0".into(),
            applied_version: 4,
            desired_version: 4,
            in_sync: true,
            last_nack_version: 0,
            last_nack_error: String::new(),
            listeners: vec![BoundListener {
                name: "http".into(),
                address: "127.0.0.1:8080".into(),
            }],
            connected_at_unix_ms: 1_795_290_000_500,
            applied_content_hash: String::new(),
        }],
        fleet: None,
    }
}

/// Versions 7 (a rollback to 5, serving), 6 (a reload by uid 1000) and 5 (startup), newest first.
pub fn history() -> HistoryReply {
    let entry =
        |version: u64, at_unix_ms: u64, source: &str, uid, pid, summary: &str| HistoryEntry {
            version,
            content_hash: format!("hash{version}"),
            at_unix_ms,
            source: source.into(),
            uid,
            pid,
            summary: summary.into(),
            kind: "config".into(),
            diff: None,
            node: String::new(),
        };
    HistoryReply {
        entries: vec![
            // 2026-11-21 19:40:01 UTC
            entry(
                7,
                1_795_290_001_000,
                "rollback to 5",
                Some(0),
                Some(812),
                "1 site modified: a.example",
            ),
            entry(
                6,
                1_795_289_940_000,
                "reload",
                Some(1000),
                Some(4242),
                "rate_limit 10/s burst 5 → none",
            ),
            entry(
                5,
                1_795_289_400_000,
                "startup",
                None,
                None,
                "no content change",
            ),
        ],
        current_version: 7,
    }
}

/// The local proxyd `edge-1` serving version 4, connected to controld and ready, with two
/// upstreams of which one is ejected.
pub fn local() -> DataPlaneStatusReply {
    DataPlaneStatusReply {
        node_id: "edge-1".into(),
        pid: 812,
        build_version: "0.1.0".into(),
        applied_version: 4,
        content_hash: "ab12".into(),
        control_plane_connected: true,
        from_saved_snapshot: false,
        listeners: vec![
            BoundListener {
                name: "http".into(),
                address: "127.0.0.1:8080".into(),
            },
            BoundListener {
                name: "admin".into(),
                address: "127.0.0.1:9901".into(),
            },
        ],
        upstreams: vec![
            UpstreamStatus {
                url: "http://10.0.0.5:8080".into(),
                healthy: true,
                outstanding: 3,
                last_tls_error: String::new(),
            },
            UpstreamStatus {
                url: "http://10.0.0.6:8080".into(),
                healthy: false,
                outstanding: 0,
                last_tls_error: String::new(),
            },
        ],
        ready: true,
        draining: false,
        started_at_unix_ms: 1_795_290_000_100,
        open_connections: 0,
    }
}

/// `Admin.Validate` finds the candidate valid: version 4 would become 5 with [`diff`], and one
/// static field would change.
pub fn validated() -> ValidateReply {
    ValidateReply {
        valid: true,
        diagnostics: Vec::new(),
        diff: Some(diff()),
        warnings: vec![
            "control.allowed_uids changed from none to 1000: needs a restart of controld".into(),
        ],
        current_version: 4,
        next_version: 5,
        text_hash: "3f2a".into(),
    }
}

/// `Admin.Validate` finds two problems in `new.toml`; the second one has no file of its own.
pub fn invalid() -> ValidateReply {
    ValidateReply {
        valid: false,
        diagnostics: vec![
            Diagnostic {
                key_path: "sites[0].upstreams[0]".into(),
                file: "new.toml".into(),
                line: 7,
                column: 14,
                message: "invalid URL: relative URL without a base".into(),
            },
            Diagnostic {
                key_path: "rate_limit.burst".into(),
                file: String::new(),
                line: 0,
                column: 0,
                message: "must be > 0".into(),
            },
        ],
        diff: Some(ConfigDiff::default()),
        warnings: Vec::new(),
        current_version: 4,
        next_version: 4,
        text_hash: "9c1e".into(),
    }
}

/// `Admin.GetConfig` at version 4, its text still in the history.
pub fn config() -> GetConfigReply {
    GetConfigReply {
        version: 4,
        content_hash: "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12".into(),
        config_text:
            "[[sites]]\nhostnames = [\"a.example\"]\nupstreams = [\"http://10.0.0.5:8080\"]\n"
                .into(),
        snapshot: Some(Snapshot {
            version: 4,
            ..Snapshot::default()
        }),
        config_path: "/etc/proxyd/proxy.toml".into(),
    }
}
