//! `--json`: the stable, documented shape of every answer, for scripts.
//!
//! Proto types (and controld's own config types, for a local `check`) stop here: these structs
//! are converted from them and are the contract. One object per command:
//!
//! | command | object |
//! |---|---|
//! | `reload`, `rollback` | [`Reload`] |
//! | `check FILE` | [`Check`] |
//! | `check --remote FILE` | [`RemoteCheck`] |
//! | `config show` | [`ConfigShow`] |
//! | `status` | [`Status`] |
//! | `health` | [`Health`] |
//! | `shutdown` | [`Shutdown`] |
//! | `history` | [`History`] |
//! | `certs` | [`crate::certs::Certs`] |
//! | `version` | [`Version`] |
//!
//! Rules: fields are only ever added, never renamed, retyped or removed, so a script that reads
//! a field today reads it tomorrow; the order of the fields is not part of the contract. Enums
//! are lower-case strings (`"applied"`, `"unchanged"`, `"rejected"`, `"dry_run"`,
//! `"canary_stopped"`; `"acked"`,
//! `"nacked"`, `"timed_out"`, `"disconnected"`), with `"unspecified"` for a missing value and
//! `"unknown"` for a value newer than this proxyctl; times are Unix milliseconds; the optional
//! fields (`key_path`, `error`, `last_nack_version`, `last_nack_error`, `last_reload`, a history
//! entry's `uid`, `pid` and `diff`, `status`'s `control_plane` and `local_data_plane`, `health`'s
//! `reason`, `shutdown`'s `stopped`, a local `check`'s `sites` and `listeners`) are `null` when
//! absent. Lists are always present, `[]` when empty; `diff` is always an object. `rollback`
//! answers with the same object as `reload`; a diagnostic and a diff have the same shape in
//! every answer that holds one.
//! The exit code is the same as without `--json`; failures to reach a daemon, and a file
//! `check --remote` cannot read, go to stderr as text with nothing on stdout.

use proto::v1 as pb;
use serde::Serialize;

/// `proxyctl --json reload` and `proxyctl --json rollback`.
#[derive(Debug, Serialize)]
pub struct Reload {
    /// `applied`, `unchanged`, `rejected`, `dry_run` or `canary_stopped`.
    pub outcome: &'static str,
    /// The version serving before the reload.
    pub previous_version: u64,
    /// The version serving after it (equals `previous_version` unless `applied`).
    pub version: u64,
    /// The config file controld read.
    pub config_path: String,
    pub duration_ms: u64,
    /// Always present; empty lists when nothing changed.
    pub diff: Diff,
    /// One per changed static field (takes effect on restart).
    pub warnings: Vec<String>,
    /// Every problem in the file, when `rejected`.
    pub diagnostics: Vec<Diagnostic>,
    /// What each data plane did with the new version.
    pub data_planes: Vec<DataPlaneOutcome>,
    /// A staged rollout (`--canary`, fleets): what its canaries did; `null` without one.
    pub canary: Option<fleet::Canary>,
}

#[derive(Debug, Default, Serialize)]
pub struct Diff {
    /// Sites are named by their first hostname.
    pub sites_added: Vec<String>,
    pub sites_removed: Vec<String>,
    pub sites_modified: Vec<String>,
    pub limits_changed: Vec<FieldChange>,
    pub static_changed: Vec<FieldChange>,
    /// What changed inside each modified site, in the order of `sites_modified`; a site whose
    /// details controld did not send is missing.
    pub site_changes: Vec<SiteChange>,
}

#[derive(Debug, Serialize)]
pub struct FieldChange {
    /// Key path, e.g. `body_limit_bytes` or `rate_limit`; inside a site, e.g. `upstreams`,
    /// `routes["/api"].upstreams` or `tls.certificate`.
    pub field: String,
    pub old: String,
    pub new: String,
    /// For a list (`hostnames`, `upstreams`, `routes`, a route's `upstreams`): the items only
    /// `new` has; `[]` for a scalar. `old` and `new` hold the whole lists.
    pub added: Vec<String>,
    /// For a list: the items only `old` has; `[]` for a scalar.
    pub removed: Vec<String>,
}

/// The fields that changed inside one site.
#[derive(Debug, Serialize)]
pub struct SiteChange {
    /// The site's first hostname.
    pub site: String,
    pub changes: Vec<FieldChange>,
}

#[derive(Debug, Serialize)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when unknown.
    pub line: u32,
    pub column: u32,
    /// `null` for syntax errors.
    pub key_path: Option<String>,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct DataPlaneOutcome {
    pub node_id: String,
    pub pid: u32,
    /// `acked`, `nacked`, `timed_out` or `disconnected`.
    pub result: &'static str,
    /// The version the data plane serves now; 0 when it has none.
    pub serving_version: u64,
    /// The NACK's reason; `null` otherwise.
    pub error: Option<String>,
}

/// `proxyctl --json check FILE`: the file checked here, by the code controld itself runs.
#[derive(Debug, Serialize)]
pub struct Check {
    /// No diagnostics: the exit code is 0 exactly when this is true.
    pub valid: bool,
    /// Every problem in the file; `[]` when valid. A file that cannot be read is one diagnostic.
    pub diagnostics: Vec<Diagnostic>,
    /// How many sites the file declares; `null` when it is invalid.
    pub sites: Option<usize>,
    /// How many listeners (`[[proxy.listeners]]`) it declares; `null` when it is invalid.
    pub listeners: Option<usize>,
}

/// `proxyctl --json check --remote FILE`: what the running controld says about the file.
#[derive(Debug, Serialize)]
pub struct RemoteCheck {
    /// No diagnostics: the exit code is 0 exactly when this is true.
    pub valid: bool,
    /// The version serving now.
    pub current_version: u64,
    /// The version a reload of the file would publish; `current_version` when it would change
    /// nothing (and when the file is invalid).
    pub next_version: u64,
    /// What a reload would change (same shape as `reload`'s); empty lists when invalid.
    pub diff: Diff,
    /// One per static field it would change (takes effect on restart).
    pub warnings: Vec<String>,
    /// Every problem, named after FILE as given on the command line; `[]` when valid.
    pub diagnostics: Vec<Diagnostic>,
    /// The file's text hash: `reload --if-hash` publishes the config file only while it holds
    /// exactly this text.
    pub text_hash: String,
}

/// `proxyctl --json config show`: the serving version's config.
#[derive(Debug, Serialize)]
pub struct ConfigShow {
    /// The version serving now.
    pub version: u64,
    /// Hex SHA-256 of the serving snapshot's content.
    pub content_hash: String,
    /// The file controld reads on reload; it may differ from `config_text` after a rollback or
    /// an edit not reloaded yet.
    pub config_path: String,
    /// The text the serving version was built from, secret-looking values replaced by
    /// `<redacted>`; `""` when it is no longer in controld's history.
    pub config_text: String,
}

/// `proxyctl --json status`: what controld and the local proxyd said.
#[derive(Debug, Serialize)]
pub struct Status {
    /// `null` when controld did not answer (the reason goes to stderr).
    pub control_plane: Option<ControlPlane>,
    /// Every data plane connected to controld; `[]` when controld did not answer.
    pub data_planes: Vec<DataPlane>,
    /// The proxyd on `--data-plane-socket`, asked directly; `null` when it did not answer (no
    /// socket there: the data planes may run elsewhere).
    pub local_data_plane: Option<LocalDataPlane>,
    /// One line per certificate close to expiry, expired, or not issued after a failure (as
    /// `proxyctl certs` details them).
    pub certificate_warnings: Vec<String>,
    /// The fleet this host belongs to; `null` for a single host (or when controld did not
    /// answer).
    pub fleet: Option<Fleet>,
}

#[derive(Debug, Serialize)]
pub struct ControlPlane {
    pub pid: u32,
    pub build_version: String,
    pub config_path: String,
    pub version: u64,
    /// Hex SHA-256 of the serving snapshot's content.
    pub content_hash: String,
    pub started_at_unix_ms: u64,
    /// `null` when no reload was requested since controld started.
    pub last_reload: Option<LastReload>,
}

#[derive(Debug, Serialize)]
pub struct LastReload {
    pub at_unix_ms: u64,
    /// Same values as `Reload::outcome`.
    pub outcome: &'static str,
    /// One line: what changed, or the first diagnostic.
    pub summary: String,
    /// The version serving after that reload.
    pub version: u64,
}

#[derive(Debug, Serialize)]
pub struct DataPlane {
    pub node_id: String,
    pub pid: u32,
    pub build_version: String,
    pub applied_version: u64,
    pub desired_version: u64,
    pub in_sync: bool,
    /// The version it last refused and why; both `null` when it refused none.
    pub last_nack_version: Option<u64>,
    pub last_nack_error: Option<String>,
    pub listeners: Vec<Listener>,
    pub connected_at_unix_ms: u64,
}

#[derive(Debug, Serialize)]
pub struct Listener {
    pub name: String,
    /// `ip:port`, with the real port when the config asked for port 0.
    pub address: String,
}

/// What the local proxyd says about itself (`DataPlane.Status`).
#[derive(Debug, Serialize)]
pub struct LocalDataPlane {
    pub node_id: String,
    pub pid: u32,
    pub build_version: String,
    /// The version serving now; 0 when none.
    pub applied_version: u64,
    /// Hex SHA-256 of the serving snapshot's content.
    pub content_hash: String,
    /// Its Subscribe stream to controld is up.
    pub control_plane_connected: bool,
    /// Serving a snapshot saved by an earlier run, not (yet) confirmed by controld.
    pub from_saved_snapshot: bool,
    /// A snapshot is applied and the listeners are bound.
    pub ready: bool,
    /// A drain has begun.
    pub draining: bool,
    pub started_at_unix_ms: u64,
    /// Client connections open now.
    pub open_connections: u64,
    pub listeners: Vec<Listener>,
    pub upstreams: Vec<Upstream>,
}

#[derive(Debug, Serialize)]
pub struct Upstream {
    /// `scheme://host:port`.
    pub url: String,
    /// Gets traffic: passes its health checks and is not ejected.
    pub healthy: bool,
    /// Requests waiting for its response head now.
    pub outstanding: u64,
    /// The last failed TLS handshake with it, when one failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_tls_error: Option<String>,
}

/// `proxyctl --json health`.
#[derive(Debug, Serialize)]
pub struct Health {
    /// Ready and not draining: the exit code is 0 exactly when this is true.
    pub healthy: bool,
    /// The version serving now; 0 when none.
    pub applied_version: u64,
    pub control_plane_connected: bool,
    /// Why it is not healthy; `null` when it is.
    pub reason: Option<String>,
}

/// `proxyctl --json shutdown`.
#[derive(Debug, Serialize)]
pub struct Shutdown {
    /// The proxyd that is draining.
    pub node_id: String,
    pub pid: u32,
    /// How long in-flight requests may take to finish.
    pub deadline_ms: u64,
    /// With `--wait`: whether proxyd stopped within `--timeout`; `null` without `--wait`.
    pub stopped: Option<bool>,
}

/// `proxyctl --json version`: `{"proxyctl": "0.1.0"}`.
#[derive(Debug, Serialize)]
pub struct Version {
    pub proxyctl: &'static str,
}

/// The JSON (and human) name of a `ReloadOutcome` value.
pub fn outcome_name(outcome: i32) -> &'static str {
    match pb::ReloadOutcome::try_from(outcome) {
        Ok(pb::ReloadOutcome::Unspecified) => "unspecified",
        Ok(pb::ReloadOutcome::Applied) => "applied",
        Ok(pb::ReloadOutcome::Unchanged) => "unchanged",
        Ok(pb::ReloadOutcome::Rejected) => "rejected",
        Ok(pb::ReloadOutcome::DryRun) => "dry_run",
        Ok(pb::ReloadOutcome::CanaryStopped) => "canary_stopped",
        Err(_) => "unknown",
    }
}

/// The JSON name of a `DataPlaneResult` value.
pub fn result_name(result: i32) -> &'static str {
    match pb::DataPlaneResult::try_from(result) {
        Ok(pb::DataPlaneResult::Unspecified) => "unspecified",
        Ok(pb::DataPlaneResult::Acked) => "acked",
        Ok(pb::DataPlaneResult::Nacked) => "nacked",
        Ok(pb::DataPlaneResult::TimedOut) => "timed_out",
        Ok(pb::DataPlaneResult::Disconnected) => "disconnected",
        Err(_) => "unknown",
    }
}

fn non_empty(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

impl From<&pb::ReloadReply> for Reload {
    fn from(reply: &pb::ReloadReply) -> Self {
        Reload {
            outcome: outcome_name(reply.outcome),
            previous_version: reply.previous_version,
            version: reply.version,
            config_path: reply.config_path.clone(),
            duration_ms: reply.duration_ms,
            diff: reply.diff.as_ref().map(Diff::from).unwrap_or_default(),
            warnings: reply.warnings.clone(),
            diagnostics: reply.diagnostics.iter().map(Diagnostic::from).collect(),
            data_planes: reply
                .data_planes
                .iter()
                .map(DataPlaneOutcome::from)
                .collect(),
            canary: reply.canary.as_ref().map(fleet::Canary::from),
        }
    }
}

impl From<&pb::ConfigDiff> for Diff {
    fn from(diff: &pb::ConfigDiff) -> Self {
        Diff {
            sites_added: diff.sites_added.clone(),
            sites_removed: diff.sites_removed.clone(),
            sites_modified: diff.sites_modified.clone(),
            limits_changed: diff.limits_changed.iter().map(FieldChange::from).collect(),
            static_changed: diff.static_changed.iter().map(FieldChange::from).collect(),
            site_changes: diff
                .site_changes
                .iter()
                .map(|site| SiteChange {
                    site: site.site.clone(),
                    changes: site.changes.iter().map(FieldChange::from).collect(),
                })
                .collect(),
        }
    }
}

impl From<&pb::FieldChange> for FieldChange {
    fn from(change: &pb::FieldChange) -> Self {
        FieldChange {
            field: change.field.clone(),
            old: change.old_value.clone(),
            new: change.new_value.clone(),
            added: change.added.clone(),
            removed: change.removed.clone(),
        }
    }
}

impl From<&pb::Diagnostic> for Diagnostic {
    fn from(d: &pb::Diagnostic) -> Self {
        Diagnostic {
            file: d.file.clone(),
            line: d.line,
            column: d.column,
            key_path: non_empty(&d.key_path),
            message: d.message.clone(),
        }
    }
}

/// A diagnostic from a local check: the same shape as controld's.
impl From<&proxy_config::config::Diagnostic> for Diagnostic {
    fn from(d: &proxy_config::config::Diagnostic) -> Self {
        Diagnostic {
            file: d.file.display().to_string(),
            line: d.line,
            column: d.column,
            key_path: non_empty(&d.key_path),
            message: d.message.clone(),
        }
    }
}

impl RemoteCheck {
    /// `valid` is what the exit code says: see [`crate::check::remote_is_valid`].
    pub fn new(reply: &pb::ValidateReply, valid: bool) -> Self {
        RemoteCheck {
            valid,
            current_version: reply.current_version,
            next_version: reply.next_version,
            diff: reply.diff.as_ref().map(Diff::from).unwrap_or_default(),
            warnings: reply.warnings.clone(),
            diagnostics: reply.diagnostics.iter().map(Diagnostic::from).collect(),
            text_hash: reply.text_hash.clone(),
        }
    }
}

impl From<&pb::GetConfigReply> for ConfigShow {
    fn from(reply: &pb::GetConfigReply) -> Self {
        ConfigShow {
            version: reply.version,
            content_hash: reply.content_hash.clone(),
            config_path: reply.config_path.clone(),
            config_text: reply.config_text.clone(),
        }
    }
}

impl From<&pb::DataPlaneOutcome> for DataPlaneOutcome {
    fn from(dp: &pb::DataPlaneOutcome) -> Self {
        DataPlaneOutcome {
            node_id: dp.node_id.clone(),
            pid: dp.pid,
            result: result_name(dp.result),
            serving_version: dp.serving_version,
            error: non_empty(&dp.error),
        }
    }
}

impl Status {
    /// From controld's answer and the local proxyd's; either may be missing.
    pub fn new(
        control: Option<&pb::StatusReply>,
        local: Option<&pb::DataPlaneStatusReply>,
    ) -> Status {
        Status {
            control_plane: control
                .map(|reply| ControlPlane::from(&reply.control_plane.clone().unwrap_or_default())),
            data_planes: control
                .map(|reply| reply.data_planes.iter().map(DataPlane::from).collect())
                .unwrap_or_default(),
            local_data_plane: local.map(LocalDataPlane::from),
            certificate_warnings: Vec::new(),
            fleet: control.and_then(|reply| reply.fleet.as_ref().map(Fleet::from)),
        }
    }
}

impl From<&pb::ControlPlaneStatus> for ControlPlane {
    fn from(control: &pb::ControlPlaneStatus) -> Self {
        ControlPlane {
            pid: control.pid,
            build_version: control.build_version.clone(),
            config_path: control.config_path.clone(),
            version: control.version,
            content_hash: control.content_hash.clone(),
            started_at_unix_ms: control.started_at_unix_ms,
            last_reload: control
                .last_reload
                .as_ref()
                .filter(|last| last.at_unix_ms != 0)
                .map(|last| LastReload {
                    at_unix_ms: last.at_unix_ms,
                    outcome: outcome_name(last.outcome),
                    summary: last.summary.clone(),
                    version: last.version,
                }),
        }
    }
}

impl From<&pb::DataPlaneStatus> for DataPlane {
    fn from(dp: &pb::DataPlaneStatus) -> Self {
        let refused = dp.last_nack_version != 0;
        DataPlane {
            node_id: dp.node_id.clone(),
            pid: dp.pid,
            build_version: dp.build_version.clone(),
            applied_version: dp.applied_version,
            desired_version: dp.desired_version,
            in_sync: dp.in_sync,
            last_nack_version: refused.then_some(dp.last_nack_version),
            last_nack_error: refused.then(|| dp.last_nack_error.clone()),
            listeners: dp.listeners.iter().map(Listener::from).collect(),
            connected_at_unix_ms: dp.connected_at_unix_ms,
        }
    }
}

impl From<&pb::BoundListener> for Listener {
    fn from(l: &pb::BoundListener) -> Self {
        Listener {
            name: l.name.clone(),
            address: l.address.clone(),
        }
    }
}

impl From<&pb::DataPlaneStatusReply> for LocalDataPlane {
    fn from(dp: &pb::DataPlaneStatusReply) -> Self {
        LocalDataPlane {
            node_id: dp.node_id.clone(),
            pid: dp.pid,
            build_version: dp.build_version.clone(),
            applied_version: dp.applied_version,
            content_hash: dp.content_hash.clone(),
            control_plane_connected: dp.control_plane_connected,
            from_saved_snapshot: dp.from_saved_snapshot,
            ready: dp.ready,
            draining: dp.draining,
            started_at_unix_ms: dp.started_at_unix_ms,
            open_connections: dp.open_connections,
            listeners: dp.listeners.iter().map(Listener::from).collect(),
            upstreams: dp
                .upstreams
                .iter()
                .map(|u| Upstream {
                    url: u.url.clone(),
                    healthy: u.healthy,
                    outstanding: u.outstanding,
                    last_tls_error: (!u.last_tls_error.is_empty())
                        .then(|| u.last_tls_error.clone()),
                })
                .collect(),
        }
    }
}

mod fleet;
mod history;

pub use fleet::Fleet;
pub use history::History;

#[cfg(test)]
mod tests;
