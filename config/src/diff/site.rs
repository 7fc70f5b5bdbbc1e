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
    route_changes(&old.routes, routes, &mut out);
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

/// `routes`, when routes were added or removed (each named by its label and what it does); then,
/// for each route both sides have, each changed field: `routes["/api"].upstreams`,
/// `routes["/api GET"].strip_prefix`, or `routes["/api"]` when its action changed.
///
/// Routes are paired by label (prefix, methods, match headers); a route left unpaired on both
/// sides with the same prefix, once each, is the same route whose methods or match headers
/// changed.
fn route_changes(old: &[Route], new: &[Route], out: &mut Vec<FieldChange>) {
    // Keyed by what tells routes apart (not by label, which hides secret header values), so
    // that pairing costs O(routes).
    type Key<'a> = (&'a str, &'a [String], &'a [(String, String)]);
    fn key(r: &Route) -> Key<'_> {
        (&r.path_prefix, &r.methods, &r.match_headers)
    }
    let old_keys: HashMap<Key<'_>, &Route> = old.iter().map(|r| (key(r), r)).collect();
    let new_keys: HashSet<Key<'_>> = new.iter().map(key).collect();
    let unpaired_old: Vec<&Route> = old.iter().filter(|r| !new_keys.contains(&key(r))).collect();
    let unpaired_new: Vec<&Route> = new
        .iter()
        .filter(|r| !old_keys.contains_key(&key(r)))
        .collect();
    // Unpaired routes by prefix: (old, new).
    let mut by_prefix: HashMap<&str, (Vec<&Route>, Vec<&Route>)> = HashMap::new();
    for r in &unpaired_old {
        by_prefix.entry(&r.path_prefix).or_default().0.push(r);
    }
    for r in &unpaired_new {
        by_prefix.entry(&r.path_prefix).or_default().1.push(r);
    }
    let changed_condition = |r: &Route| matches!(by_prefix.get(r.path_prefix.as_str()), Some((o, n)) if o.len() == 1 && n.len() == 1);
    let mut pairs: Vec<(&Route, &Route)> = Vec::new();
    for route in new {
        if let Some(before) = old_keys.get(&key(route)) {
            pairs.push((before, route));
        } else if changed_condition(route) {
            pairs.push((by_prefix[route.path_prefix.as_str()].0[0], route));
        }
    }
    let added: Vec<&Route> = unpaired_new
        .into_iter()
        .filter(|r| !changed_condition(r))
        .collect();
    let removed: Vec<&Route> = unpaired_old
        .into_iter()
        .filter(|r| !changed_condition(r))
        .collect();
    let prefixes = |routes: &[Route]| -> Vec<String> {
        routes.iter().map(|r| r.path_prefix.clone()).collect()
    };
    if !added.is_empty() || !removed.is_empty() || prefixes(old) != prefixes(new) {
        let labels =
            |routes: &[Route]| -> Vec<String> { routes.iter().map(Route::label).collect() };
        let described = |routes: &[&Route]| -> Vec<String> {
            routes
                .iter()
                .map(|r| format!("{} ({})", r.label(), action(&r.action)))
                .collect()
        };
        out.push(FieldChange {
            field: "routes".to_owned(),
            added: described(&added),
            removed: described(&removed),
            old: joined(&labels(old)),
            new: joined(&labels(new)),
        });
    }
    for (before, route) in pairs {
        if before != route {
            one_route_changes(before, route, out);
        }
    }
}

/// The changed fields of a route both sides have.
fn one_route_changes(old: &Route, new: &Route, out: &mut Vec<FieldChange>) {
    // Without `..` for the same reason as `Site` in `changes`.
    let Route {
        path_prefix: _,
        methods,
        match_headers,
        action: new_action,
        rate_limit,
        body_limit_bytes,
    } = new;
    let field = format!("routes[{:?}]", new.label());
    let headers = |h: &[(String, String)]| -> Vec<String> {
        h.iter()
            .map(|(name, value)| header_item(name, value))
            .collect()
    };
    out.extend(list(
        format!("{field}.methods"),
        old.methods.clone(),
        methods.clone(),
    ));
    out.extend(list(
        format!("{field}.match_headers"),
        headers(&old.match_headers),
        headers(match_headers),
    ));
    match (&old.action, new_action) {
        (RouteAction::Proxy(was), RouteAction::Proxy(now)) => {
            proxy_route_changes(&field, was, now, out)
        }
        (was, now) if was != now => out.push(distinct(field.clone(), action(was), action(now))),
        _ => {}
    }
    out.extend(scalar(
        format!("{field}.rate_limit"),
        or_site(old.rate_limit.as_ref(), rate),
        or_site(rate_limit.as_ref(), rate),
    ));
    out.extend(scalar(
        format!("{field}.body_limit_bytes"),
        or_site(old.body_limit_bytes.as_ref(), u64::to_string),
        or_site(body_limit_bytes.as_ref(), u64::to_string),
    ));
}

fn proxy_route_changes(
    field: &str,
    old: &ProxyRoute,
    new: &ProxyRoute,
    out: &mut Vec<FieldChange>,
) {
    let ProxyRoute {
        upstreams,
        path,
        upstream,
        request_headers,
        response_headers,
        upstream_response_timeout,
        retries,
    } = new;
    out.extend(list(
        format!("{field}.upstreams"),
        upstream_items(&old.upstreams),
        upstream_items(upstreams),
    ));
    let strip = |p: &PathRewrite| (*p == PathRewrite::StripPrefix).to_string();
    let rewrite = |p: &PathRewrite| match p {
        PathRewrite::Replace(to) => to.clone(),
        _ => "none".to_owned(),
    };
    out.extend(scalar(
        format!("{field}.strip_prefix"),
        strip(&old.path),
        strip(path),
    ));
    out.extend(scalar(
        format!("{field}.rewrite"),
        rewrite(&old.path),
        rewrite(path),
    ));
    connection_changes(&format!("{field}."), &old.upstream, upstream, SITE, out);
    out.extend(header_changes(
        &format!("{field}.request_headers"),
        &old.request_headers,
        request_headers,
    ));
    out.extend(header_changes(
        &format!("{field}.response_headers"),
        &old.response_headers,
        response_headers,
    ));
    out.extend(scalar(
        format!("{field}.upstream_response_timeout"),
        or_site(old.upstream_response_timeout.as_ref(), duration),
        or_site(upstream_response_timeout.as_ref(), duration),
    ));
    out.extend(scalar(
        format!("{field}.retries"),
        or_site(old.retries.as_ref(), u32::to_string),
        or_site(retries.as_ref(), u32::to_string),
    ));
}

/// `upstream_protocol` and `upstream_tls` (after `prefix`); `unset` reads for a value not set.
fn connection_changes(
    prefix: &str,
    old: &UpstreamConnection,
    new: &UpstreamConnection,
    unset: &str,
    out: &mut Vec<FieldChange>,
) {
    let protocol = |c: &UpstreamConnection| {
        c.protocol
            .map_or_else(|| unset.to_owned(), |p| p.as_str().to_owned())
    };
    out.extend(scalar(
        format!("{prefix}upstream_protocol"),
        protocol(old),
        protocol(new),
    ));
    if old.tls != new.tls {
        let tls = |t: &Option<UpstreamTls>| match t {
            Some(t) => upstream_tls(t),
            None if unset == SITE => SITE.to_owned(),
            None => "system roots".to_owned(),
        };
        out.push(distinct(
            format!("{prefix}upstream_tls"),
            tls(&old.tls),
            tls(&new.tls),
        ));
    }
}

/// `ca /etc/ca.pem (2 certificates), server_name api.internal, client certificate sha256
/// 3F:A1:0C:77…9A:01 expires 2027-01-01`: never the key.
fn upstream_tls(tls: &UpstreamTls) -> String {
    let mut parts = Vec::new();
    match &tls.ca {
        Some(ca) => parts.push(format!(
            "ca {} ({} certificate{})",
            ca.file.display(),
            ca.count,
            if ca.count == 1 { "" } else { "s" }
        )),
        None => parts.push("system roots".to_owned()),
    }
    if let Some(name) = &tls.server_name {
        parts.push(format!("server_name {name}"));
    }
    if let Some(client) = &tls.client_certificate {
        parts.push(format!(
            "client certificate {} {}",
            client.cert_file.display(),
            describe_certificate(&client.certificate)
        ));
    }
    parts.join(", ")
}

/// `remove x-debug; set x-env: prod; add x-via: edge`, or `none`; a secret-looking value reads
/// `<redacted>`.
fn header_changes(field: &str, old: &HeaderRules, new: &HeaderRules) -> Option<FieldChange> {
    (old != new).then(|| distinct(field.to_owned(), header_rules(old), header_rules(new)))
}

fn header_rules(rules: &HeaderRules) -> String {
    let mut parts = Vec::new();
    if !rules.remove.is_empty() {
        parts.push(format!("remove {}", rules.remove.join(", ")));
    }
    for (verb, headers) in [("set", &rules.set), ("add", &rules.add)] {
        if !headers.is_empty() {
            let items: Vec<String> = headers.iter().map(|(n, v)| header_item(n, v)).collect();
            parts.push(format!("{verb} {}", items.join(", ")));
        }
    }
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join("; ")
    }
}

/// `name: value`, the value `<redacted>` when the name looks secret.
fn header_item(name: &str, value: &str) -> String {
    let value = if header_looks_secret(name) {
        "<redacted>"
    } else {
        value
    };
    format!("{name}: {value}")
}

/// A change whose renderings may hide the difference (a redacted header value, a long body,
/// a certificate file's other content): the new value then says that it changed.
fn distinct(field: String, old: String, new: String) -> FieldChange {
    let new = if old == new {
        format!("{new} (content changed)")
    } else {
        new
    };
    FieldChange {
        field,
        old,
        new,
        ..FieldChange::default()
    }
}

/// `upstreams http://a:80, http://b:80`, `redirect 308 https://{host}{path}`, or
/// `respond 503 "down for maintenance" [retry-after: 60]`.
fn action(action: &RouteAction) -> String {
    match action {
        RouteAction::Proxy(proxy) => {
            format!("upstreams {}", upstream_items(&proxy.upstreams).join(", "))
        }
        RouteAction::Redirect { location, status } => format!("redirect {status} {location}"),
        RouteAction::Respond {
            status,
            body,
            headers,
        } => {
            let mut text = format!("respond {status}");
            // Debug-quoted, so a newline in it cannot break a line of output.
            if body.chars().count() > MAX_SHOWN_BODY {
                text.push_str(&format!(" ({}-byte body)", body.len()));
            } else if !body.is_empty() {
                text.push_str(&format!(" {body:?}"));
            }
            if !headers.is_empty() {
                let headers: Vec<String> = headers.iter().map(|(n, v)| header_item(n, v)).collect();
                text.push_str(&format!(" [{}]", headers.join(", ")));
            }
            text
        }
    }
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
