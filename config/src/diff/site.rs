//! What changed inside one site that both configs have: each changed field, named by its key
//! path, with both values rendered for people. Part of [`super::ConfigDiff::between`]; never
//! renders a secret (a certificate is its fingerprint and expiry, a secret-looking header value
//! `<redacted>`).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{FieldChange, human};
use crate::config::{
    Certificate, HeaderRules, HealthCheck, LoadBalancing, PassiveHealth, PathRewrite, PoolConfig,
    ProxyRoute, RateLimit, Route, RouteAction, Site, SiteTls, Upstream, UpstreamConnection,
    UpstreamLimits, UpstreamTls,
};
use crate::redact::header_looks_secret;
use routes::{connection_changes, distinct, header_changes};

mod routes;

/// Shown for a per-site setting the site does not set: the global one applies.
const GLOBAL: &str = "global";

/// Shown for a per-route setting the route does not set: the site's applies.
const SITE: &str = "site's";

/// A `respond` body longer than this is shown by its size only.
const MAX_SHOWN_BODY: usize = 40;

/// Every changed field of the site, in a fixed order: names, upstreams, routes, pool, TLS, limits.
pub(super) fn changes(old: &Site, new: &Site) -> Vec<FieldChange> {
    // Destructured without `..`: a field added to `Site` does not compile here until the diff
    // says how it changes, so a modified site never shows up without its details.
    let Site {
        hostnames,
        upstreams,
        pool,
        routes,
        tls,
        https_redirect,
        rate_limit,
        body_limit_bytes,
        upstream_response_timeout,
        upstream,
        request_headers,
        response_headers,
    } = new;
    let mut out = Vec::new();
    let names = |h: &[crate::config::Hostname]| h.iter().map(ToString::to_string).collect();
    out.extend(list("hostnames", names(&old.hostnames), names(hostnames)));
    out.extend(list(
        "upstreams",
        upstream_items(&old.upstreams),
        upstream_items(upstreams),
    ));
    routes::route_changes(&old.routes, routes, &mut out);
    pool_changes(&old.pool, pool, &mut out);
    connection_changes("", &old.upstream, upstream, "auto", &mut out);
    out.extend(header_changes(
        "request_headers",
        &old.request_headers,
        request_headers,
    ));
    out.extend(header_changes(
        "response_headers",
        &old.response_headers,
        response_headers,
    ));
    tls_changes(&old.tls, tls, &mut out);
    out.extend(scalar(
        "https_redirect",
        old.https_redirect.to_string(),
        https_redirect.to_string(),
    ));
    out.extend(scalar(
        "rate_limit",
        or_global(old.rate_limit.as_ref(), rate),
        or_global(rate_limit.as_ref(), rate),
    ));
    out.extend(scalar(
        "body_limit_bytes",
        or_global(old.body_limit_bytes.as_ref(), u64::to_string),
        or_global(body_limit_bytes.as_ref(), u64::to_string),
    ));
    out.extend(scalar(
        "upstream_response_timeout",
        or_global(old.upstream_response_timeout.as_ref(), duration),
        or_global(upstream_response_timeout.as_ref(), duration),
    ));
    out
}

/// A change when the two renderings differ.
fn scalar(field: impl Into<String>, old: String, new: String) -> Option<FieldChange> {
    (old != new).then(|| FieldChange {
        field: field.into(),
        old,
        new,
        ..FieldChange::default()
    })
}

/// A change of a list: the items only one side has, and both whole lists. A list whose order
/// alone changed has neither added nor removed items, and reads `old → new`.
fn list(field: impl Into<String>, old: Vec<String>, new: Vec<String>) -> Option<FieldChange> {
    if old == new {
        return None;
    }
    Some(FieldChange {
        field: field.into(),
        added: new.iter().filter(|i| !old.contains(i)).cloned().collect(),
        removed: old.iter().filter(|i| !new.contains(i)).cloned().collect(),
        old: joined(&old),
        new: joined(&new),
    })
}

fn joined(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// `http://a:80`, with its weight when it has one other than 1 (so a weight change reads as
/// the old entry removed and the new one added).
fn upstream_items(upstreams: &[Upstream]) -> Vec<String> {
    upstreams
        .iter()
        .map(|u| match u.weight {
            1 => u.to_string(),
            w => format!("{u} weight {w}"),
        })
        .collect()
}

fn pool_changes(old: &PoolConfig, new: &PoolConfig, out: &mut Vec<FieldChange>) {
    // Without `..` for the same reason as `Site` in `changes`.
    let PoolConfig {
        load_balancing,
        retries,
        health_check,
        passive_health,
        limits,
    } = new;
    out.extend(scalar(
        "load_balancing",
        policy(old.load_balancing).to_owned(),
        policy(*load_balancing).to_owned(),
    ));
    out.extend(scalar(
        "retries",
        old.retries.to_string(),
        retries.to_string(),
    ));
    match (&old.health_check, health_check) {
        (Some(was), Some(now)) => out.extend(sub_fields(
            "health_check",
            &health_fields(was),
            &health_fields(now),
        )),
        (was, now) => out.extend(scalar(
            "health_check",
            was.as_ref().map_or_else(off, health),
            now.as_ref().map_or_else(off, health),
        )),
    }
    match (&old.passive_health, passive_health) {
        (Some(was), Some(now)) => out.extend(sub_fields(
            "passive_health",
            &passive_fields(was),
            &passive_fields(now),
        )),
        (was, now) => out.extend(scalar(
            "passive_health",
            was.as_ref().map_or_else(off, passive),
            now.as_ref().map_or_else(off, passive),
        )),
    }
    out.extend(sub_fields(
        "upstream_limits",
        &limit_fields(&old.limits),
        &limit_fields(limits),
    ));
}

/// `table.key` for each key whose value differs.
fn sub_fields(table: &str, old: &[(&str, String)], new: &[(&str, String)]) -> Vec<FieldChange> {
    old.iter()
        .zip(new)
        .filter_map(|((key, was), (_, now))| {
            scalar(format!("{table}.{key}"), was.clone(), now.clone())
        })
        .collect()
}

fn policy(lb: LoadBalancing) -> &'static str {
    match lb {
        LoadBalancing::RoundRobin => "round_robin",
        LoadBalancing::WeightedRoundRobin => "weighted_round_robin",
        LoadBalancing::LeastRequests => "least_requests",
    }
}

fn off() -> String {
    "off".to_owned()
}

/// `/healthz every 5s, timeout 1s, healthy 2, unhealthy 3`.
fn health(h: &HealthCheck) -> String {
    format!(
        "{} every {}, timeout {}, healthy {}, unhealthy {}",
        h.path,
        human(h.interval),
        human(h.timeout),
        h.healthy_threshold,
        h.unhealthy_threshold
    )
}

fn health_fields(h: &HealthCheck) -> [(&'static str, String); 5] {
    let HealthCheck {
        path,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
    } = h;
    [
        ("path", path.clone()),
        ("interval", human(*interval)),
        ("timeout", human(*timeout)),
        ("healthy_threshold", healthy_threshold.to_string()),
        ("unhealthy_threshold", unhealthy_threshold.to_string()),
    ]
}

/// `eject after 5 failures for 30s`.
fn passive(p: &PassiveHealth) -> String {
    format!(
        "eject after {} failures for {}",
        p.consecutive_failures,
        human(p.cooldown)
    )
}

fn passive_fields(p: &PassiveHealth) -> [(&'static str, String); 2] {
    let PassiveHealth {
        consecutive_failures,
        cooldown,
    } = p;
    [
        ("consecutive_failures", consecutive_failures.to_string()),
        ("cooldown", human(*cooldown)),
    ]
}

fn limit_fields(l: &UpstreamLimits) -> [(&'static str, String); 4] {
    let UpstreamLimits {
        max_connections,
        max_pending_requests,
        max_requests,
        max_idle_connections,
    } = l;
    [
        ("max_connections", max_connections.to_string()),
        ("max_pending_requests", max_pending_requests.to_string()),
        ("max_requests", max_requests.to_string()),
        ("max_idle_connections", max_idle_connections.to_string()),
    ]
}

/// `tls.certificate` when the source or the certificate changed; `tls.cert_file` and
/// `tls.key_file` when a site keeps its files but moves them.
fn tls_changes(old: &SiteTls, new: &SiteTls, out: &mut Vec<FieldChange>) {
    if let (
        SiteTls::Files {
            cert_file: old_cert,
            key_file: old_key,
            ..
        },
        SiteTls::Files {
            cert_file,
            key_file,
            ..
        },
    ) = (old, new)
    {
        out.extend(scalar("tls.cert_file", path(old_cert), path(cert_file)));
        out.extend(scalar("tls.key_file", path(old_key), path(key_file)));
    }
    if old.certificate() != new.certificate() || source(old) != source(new) {
        out.push(distinct(
            "tls.certificate".to_owned(),
            certificate(old),
            certificate(new),
        ));
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn source(tls: &SiteTls) -> &'static str {
    match tls {
        SiteTls::None => "none",
        SiteTls::Files { .. } => "files",
        SiteTls::Acme => "acme",
    }
}

/// `none`, `acme`, or `files sha256 3F:A1:0C:77…9A:01 expires 2027-01-01`. ACME certificates are
/// not part of the config (controld issues them), so an ACME site reads `acme` only.
fn certificate(tls: &SiteTls) -> String {
    match tls.certificate() {
        Some(c) => format!("{} {}", source(tls), describe_certificate(c)),
        None => source(tls).to_owned(),
    }
}

/// `sha256 3F:A1:0C:77…9A:01 expires 2027-01-01`: the fingerprint shortened to its first four and
/// last two bytes, enough to tell two certificates apart at a glance and to match the output of
/// `openssl x509 -fingerprint -sha256`.
fn describe_certificate(c: &Certificate) -> String {
    let fingerprint = c
        .fingerprint()
        .map_or_else(|| "unknown".to_owned(), |f| short_fingerprint(&f));
    format!("sha256 {fingerprint} expires {}", date(c.not_after))
}

/// `3F:A1:0C:77…9A:01` from a full `AA:BB:...` fingerprint.
fn short_fingerprint(full: &str) -> String {
    let bytes: Vec<&str> = full.split(':').collect();
    if bytes.len() <= 6 {
        return full.to_owned();
    }
    format!(
        "{}…{}",
        bytes[..4].join(":"),
        bytes[bytes.len() - 2..].join(":")
    )
}

/// `2027-01-01` (UTC). humantime refuses (and would panic on) a time before 1970 or after 9999;
/// an X.509 date can be either, so those are spelled out instead.
fn date(t: SystemTime) -> String {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) if d < Duration::from_secs(253_402_300_800) => {
            let mut text = humantime::format_rfc3339_seconds(t).to_string();
            text.truncate(10);
            text
        }
        Ok(_) => "after 9999".to_owned(),
        Err(_) => "before 1970".to_owned(),
    }
}

fn rate(rl: &RateLimit) -> String {
    format!("{}/s burst {}", rl.requests_per_second, rl.burst)
}

fn duration(d: &Duration) -> String {
    human(*d)
}

fn or_site<T>(value: Option<&T>, render: impl Fn(&T) -> String) -> String {
    value.map_or_else(|| SITE.to_owned(), render)
}

fn or_global<T>(value: Option<&T>, render: impl Fn(&T) -> String) -> String {
    value.map_or_else(|| GLOBAL.to_owned(), render)
}

#[cfg(test)]
mod tests;
