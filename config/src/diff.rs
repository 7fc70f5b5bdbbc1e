//! What changed between two configs: the typed diff a reload reports, logs and records in the
//! history, down to each field of each modified site ([`site`]).

mod site;

use std::collections::BTreeMap;

use proto::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::config::{Config, RateLimit, Site, StaticConfig};

/// One changed field, with both values rendered for people (never a secret).
///
/// Serialized into the history (`state_dir/history/<version>.json`): fields are only added, each
/// with a default, so that every entry ever written still loads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FieldChange {
    /// Key path: `rate_limit`, `upstreams`, `routes["/api"].upstreams`, `tls.certificate`.
    pub field: String,
    pub old: String,
    pub new: String,
    /// For a list: the items only `new` has. `old` and `new` still hold the whole lists.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<String>,
    /// For a list: the items only `old` has.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
}

impl FieldChange {
    /// `upstreams: + http://c:80  - http://a:80` for a list that gained or lost items, else
    /// `rate_limit: 10/s burst 5 → 20/s burst 10`. The one text form of a change: controld's log
    /// and proxyctl's output both use it.
    pub fn describe(&self) -> String {
        if self.added.is_empty() && self.removed.is_empty() {
            return format!(
                "{}: {} → {}",
                self.field,
                or_unset(&self.old),
                or_unset(&self.new)
            );
        }
        let items: Vec<String> = self
            .added
            .iter()
            .map(|a| format!("+ {a}"))
            .chain(self.removed.iter().map(|r| format!("- {r}")))
            .collect();
        format!("{}: {}", self.field, items.join("  "))
    }
}

fn or_unset(value: &str) -> &str {
    if value.is_empty() { "(unset)" } else { value }
}

/// What changed inside one modified site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SiteChange {
    /// The site's first hostname.
    pub site: String,
    pub changes: Vec<FieldChange>,
}

impl SiteChange {
    /// Every change on one line, for a log: `upstreams: + http://c:80; retries: 1 → 2`.
    pub fn describe(&self) -> String {
        self.changes
            .iter()
            .map(FieldChange::describe)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Sites are named by their first hostname. Serialized into the history like [`FieldChange`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConfigDiff {
    pub sites_added: Vec<String>,
    pub sites_removed: Vec<String>,
    pub sites_modified: Vec<String>,
    /// Settings outside sites that apply live: global limits, the log level, `[proxy]` (proxyd)
    /// and `control.metrics_address` (controld).
    pub limits_changed: Vec<FieldChange>,
    /// Settings that take effect only when a daemon restarts.
    pub static_changed: Vec<FieldChange>,
    /// The fields that changed inside each modified site, in the order of `sites_modified`.
    pub site_changes: Vec<SiteChange>,
}

impl ConfigDiff {
    pub fn between(old: &Config, new: &Config) -> ConfigDiff {
        let old_sites: BTreeMap<&str, &Site> =
            old.dynamic.sites.iter().map(|s| (s.name(), s)).collect();
        let new_sites: BTreeMap<&str, &Site> =
            new.dynamic.sites.iter().map(|s| (s.name(), s)).collect();
        let mut diff = ConfigDiff::default();
        for (name, site) in &new_sites {
            match old_sites.get(name) {
                None => diff.sites_added.push((*name).to_owned()),
                Some(old) if old != site => {
                    diff.sites_modified.push((*name).to_owned());
                    let changes = site::changes(old, site);
                    if !changes.is_empty() {
                        diff.site_changes.push(SiteChange {
                            site: (*name).to_owned(),
                            changes,
                        });
                    }
                }
                Some(_) => {}
            }
        }
        diff.sites_removed = old_sites
            .keys()
            .filter(|n| !new_sites.contains_key(*n))
            .map(|n| (*n).to_owned())
            .collect();
        diff.limits_changed = changes(&limit_fields(old), &limit_fields(new));
        diff.static_changed = changes(&static_fields(&old.statics), &static_fields(&new.statics));
        diff
    }

    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }

    /// One line for logs and status: "1 site added: a.example; rate_limit 10/s burst 5 → none".
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for (verb, names) in [
            ("added", &self.sites_added),
            ("removed", &self.sites_removed),
            ("modified", &self.sites_modified),
        ] {
            if !names.is_empty() {
                let noun = if names.len() == 1 { "site" } else { "sites" };
                parts.push(format!(
                    "{} {noun} {verb}: {}",
                    names.len(),
                    names.join(", ")
                ));
            }
        }
        parts.extend(
            self.limits_changed
                .iter()
                .map(|c| format!("{} {} → {}", c.field, c.old, c.new)),
        );
        parts.extend(
            self.static_changed
                .iter()
                .map(|c| format!("{} changed (restart needed)", c.field)),
        );
        if parts.is_empty() {
            "no content change".to_owned()
        } else {
            parts.join("; ")
        }
    }

    /// One warning per changed static field: the daemon that must restart for it, or, for
    /// `acme.*`, that controld's ACME task applies it (the data planes never see it).
    pub fn static_warnings(&self) -> Vec<String> {
        self.static_changed
            .iter()
            .map(|c| match restarts(&c.field) {
                Some(daemon) => format!(
                    "{} changed from {} to {}: needs a restart of {daemon}",
                    c.field, c.old, c.new
                ),
                None => format!(
                    "{} changed from {} to {}: applied by controld's ACME task from its next \
                     attempt (nothing changes for the data planes)",
                    c.field, c.old, c.new
                ),
            })
            .collect()
    }

    pub fn to_proto(&self) -> pb::ConfigDiff {
        let fields = |v: &[FieldChange]| v.iter().map(FieldChange::to_proto).collect();
        pb::ConfigDiff {
            sites_added: self.sites_added.clone(),
            sites_removed: self.sites_removed.clone(),
            sites_modified: self.sites_modified.clone(),
            limits_changed: fields(&self.limits_changed),
            static_changed: fields(&self.static_changed),
            site_changes: self
                .site_changes
                .iter()
                .map(|s| pb::SiteChange {
                    site: s.site.clone(),
                    changes: fields(&s.changes),
                })
                .collect(),
        }
    }
}

impl FieldChange {
    pub fn to_proto(&self) -> pb::FieldChange {
        pb::FieldChange {
            field: self.field.clone(),
            old_value: self.old.clone(),
            new_value: self.new.clone(),
            added: self.added.clone(),
            removed: self.removed.clone(),
        }
    }
}

/// A change as it came over the wire, for [`FieldChange::describe`] (proxyctl renders with it).
impl From<&pb::FieldChange> for FieldChange {
    fn from(c: &pb::FieldChange) -> Self {
        FieldChange {
            field: c.field.clone(),
            old: c.old_value.clone(),
            new: c.new_value.clone(),
            added: c.added.clone(),
            removed: c.removed.clone(),
        }
    }
}

/// The daemon that must restart for a changed static field to apply: controld for
/// `control.*` and `logging.format`; `None` for `acme.*`, which controld applies on every
/// accepted reload. (proxyd applies all of `[proxy]` live, and controld
/// `control.metrics_address`: neither is a static field.)
pub fn restarts(field: &str) -> Option<&'static str> {
    if field.starts_with("acme.") {
        None
    } else {
        Some("controld")
    }
}

/// The static fields that differ between `running` and `wanted`.
pub fn static_changes(running: &StaticConfig, wanted: &StaticConfig) -> Vec<FieldChange> {
    changes(&static_fields(running), &static_fields(wanted))
}

fn changes(old: &[(&'static str, String)], new: &[(&'static str, String)]) -> Vec<FieldChange> {
    old.iter()
        .zip(new)
        .filter(|(o, n)| o.1 != n.1)
        .map(|(o, n)| FieldChange {
            field: o.0.to_owned(),
            old: o.1.clone(),
            new: n.1.clone(),
            ..FieldChange::default()
        })
        .collect()
}

fn human(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn rate(rl: Option<RateLimit>) -> String {
    match rl {
        Some(rl) => format!("{}/s burst {}", rl.requests_per_second, rl.burst),
        None => "none".to_owned(),
    }
}

fn limit_fields(c: &Config) -> Vec<(&'static str, String)> {
    [
        ("body_limit_bytes", c.dynamic.body_limit_bytes.to_string()),
        ("rate_limit", rate(c.dynamic.rate_limit)),
        ("logging.level", c.dynamic.log_level.clone()),
        ("trusted_proxies", list(&c.dynamic.trusted_proxies)),
        (
            "upstream_response_timeout",
            human(c.dynamic.upstream_response_timeout),
        ),
        (
            "default_tls_site",
            c.dynamic
                .default_tls_site
                .clone()
                .unwrap_or_else(|| "none".to_owned()),
        ),
        ("merge_slashes", c.dynamic.merge_slashes.to_string()),
        (
            "escaped_slashes",
            c.dynamic.escaped_slashes.as_str().to_owned(),
        ),
        ("upstream_limits", c.dynamic.upstream_limits.to_string()),
        // Applied live by proxyd: added listeners are bound, removed ones drain.
        ("proxy.listeners", listener_list(&c.statics)),
    ]
    .into_iter()
    .chain(proxy_fields(&c.statics))
    // Applied live by controld itself (never sent to data planes): the new address is bound
    // before the reload commits, and a bind failure rejects the reload.
    .chain([(
        "control.metrics_address",
        c.statics
            .control
            .metrics_address
            .map_or_else(|| "none".to_owned(), |a| a.to_string()),
    )])
    .collect()
}

/// `[proxy]`'s settings, which proxyd applies live: the admin listener moves, the drain deadline
/// holds from the next drain, and the rest applies to the connections accepted after the reload
/// (the upstream timeouts: to the next dial and checkout).
fn proxy_fields(s: &StaticConfig) -> Vec<(&'static str, String)> {
    let none = || "none".to_owned();
    vec![
        (
            "proxy.shutdown_timeout",
            humantime::format_duration(s.proxy.shutdown_timeout).to_string(),
        ),
        (
            "proxy.admin_address",
            s.proxy.admin_address.map_or_else(none, |a| a.to_string()),
        ),
        (
            "proxy.tls_session_resumption",
            s.proxy.tls_session_resumption.to_string(),
        ),
        (
            "proxy.max_request_headers",
            s.proxy.max_request_headers.to_string(),
        ),
        (
            "proxy.max_request_header_bytes",
            s.proxy.max_request_header_bytes.to_string(),
        ),
        (
            "proxy.request_header_timeout",
            human(s.proxy.request_header_timeout),
        ),
        (
            "proxy.upstream_connect_timeout",
            human(s.proxy.upstream_connect_timeout),
        ),
        (
            "proxy.upstream_idle_timeout",
            human(s.proxy.upstream_idle_timeout),
        ),
        (
            "proxy.upstream_h2_ping_interval",
            human(s.proxy.upstream_h2_ping_interval),
        ),
        (
            "proxy.upstream_h2_ping_timeout",
            human(s.proxy.upstream_h2_ping_timeout),
        ),
        (
            "proxy.max_connections",
            s.proxy.limits.max_connections.to_string(),
        ),
        (
            "proxy.max_connections_per_ip",
            s.proxy
                .limits
                .max_connections_per_ip
                .map_or_else(|| "off".to_owned(), |n| n.to_string()),
        ),
        (
            "proxy.http2_max_concurrent_streams",
            s.proxy.limits.http2_max_concurrent_streams.to_string(),
        ),
        (
            "proxy.http2_keepalive_interval",
            human(s.proxy.limits.http2_keepalive_interval),
        ),
        (
            "proxy.http2_keepalive_timeout",
            human(s.proxy.limits.http2_keepalive_timeout),
        ),
        (
            "proxy.http2_idle_timeout",
            human(s.proxy.limits.http2_idle_timeout),
        ),
        (
            "proxy.tunnel_idle_timeout",
            human(s.proxy.limits.tunnel_idle_timeout),
        ),
        ("proxy.tcp_keepalive", human(s.proxy.limits.tcp_keepalive)),
        (
            "proxy.tls_handshake_timeout",
            human(s.proxy.limits.tls_handshake_timeout),
        ),
        (
            "proxy.request_body_timeout",
            human(s.proxy.limits.request_body_timeout),
        ),
        (
            "proxy.response_send_timeout",
            human(s.proxy.limits.response_send_timeout),
        ),
        (
            "proxy.upstream_body_timeout",
            human(s.proxy.limits.upstream_body_timeout),
        ),
        (
            "proxy.request_body_min_rate",
            format!("{} B/s", s.proxy.limits.request_body_min_rate),
        ),
        (
            "proxy.response_min_rate",
            format!("{} B/s", s.proxy.limits.response_min_rate),
        ),
    ]
}

/// `http=0.0.0.0:80, https=0.0.0.0:443 (tls)`.
fn listener_list(s: &StaticConfig) -> String {
    s.proxy
        .listeners
        .iter()
        .map(|l| {
            format!(
                "{}={}{}",
                l.name,
                l.address,
                if l.tls { " (tls)" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn static_fields(s: &StaticConfig) -> Vec<(&'static str, String)> {
    let acme = s.acme.as_ref();
    let cluster = s.cluster.as_ref();
    let none = || "none".to_owned();
    vec![
        ("control.socket", s.control.socket.display().to_string()),
        (
            "control.state_dir",
            s.control.state_dir.display().to_string(),
        ),
        ("control.allowed_uids", list(&s.control.allowed_uids)),
        ("control.allowed_gids", list(&s.control.allowed_gids)),
        (
            "control.data_plane_users",
            list(&s.control.data_plane_users),
        ),
        ("logging.format", s.log_format.as_str().to_owned()),
        (
            "acme.directory_url",
            acme.map_or_else(none, |a| a.directory_url.clone()),
        ),
        ("acme.contact", acme.map_or_else(none, |a| list(&a.contact))),
        (
            "acme.challenge",
            acme.map_or_else(none, |a| a.challenge.as_str().to_owned()),
        ),
        (
            "acme.ca_roots",
            acme.and_then(|a| a.ca_roots.as_ref())
                .map_or_else(none, |p| p.display().to_string()),
        ),
        ("cluster.etcd", cluster.map_or_else(none, |c| list(&c.etcd))),
        (
            "cluster.name",
            cluster.map_or_else(none, |c| c.name.clone()),
        ),
        (
            "cluster.node",
            cluster.map_or_else(none, |c| c.node.clone()),
        ),
        (
            "cluster.lease_ttl",
            cluster.map_or_else(none, |c| human(c.lease_ttl)),
        ),
    ]
}

#[cfg(test)]
mod tests;
