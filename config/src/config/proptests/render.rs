//! Test-only: writes a validated [`Config`] back as TOML, every key explicit, so that parsing the
//! result must give the same model (the round-trip property). The TOML itself is written by the
//! `toml` crate, so quoting and escaping are its, not ours.

use std::path::Path;
use std::time::Duration;

use toml::{Table, Value};

use super::super::model::*;

/// The whole config as TOML text.
pub fn render(config: &Config) -> String {
    let d = &config.dynamic;
    let s = &config.statics;
    let mut root = Table::new();
    root.insert("body_limit_bytes".into(), size(d.body_limit_bytes));
    if let Some(rl) = d.rate_limit {
        root.insert("rate_limit".into(), rate_limit(rl));
    }
    root.insert(
        "trusted_proxies".into(),
        strings(d.trusted_proxies.iter().map(ToString::to_string)),
    );
    root.insert(
        "upstream_response_timeout".into(),
        duration(d.upstream_response_timeout),
    );
    if let Some(site) = &d.default_tls_site {
        root.insert("default_tls_site".into(), site.as_str().into());
    }
    root.insert("merge_slashes".into(), d.merge_slashes.into());
    root.insert("escaped_slashes".into(), d.escaped_slashes.as_str().into());
    root.insert("upstream_limits".into(), upstream_limits(d.upstream_limits));
    let mut logging = Table::new();
    logging.insert("level".into(), d.log_level.as_str().into());
    logging.insert("format".into(), s.log_format.as_str().into());
    root.insert("logging".into(), logging.into());
    root.insert(
        "sites".into(),
        Value::Array(d.sites.iter().map(site).collect()),
    );
    root.insert("control".into(), control(&s.control));
    root.insert("proxy".into(), proxy(&s.proxy));
    if let Some(acme) = &s.acme {
        root.insert("acme".into(), self::acme(acme));
    }
    toml::to_string(&root).expect("a validated model is TOML")
}

fn site(site: &Site) -> Value {
    let mut t = Table::new();
    t.insert(
        "hostnames".into(),
        strings(site.hostnames.iter().map(ToString::to_string)),
    );
    t.insert("upstreams".into(), upstreams(&site.upstreams));
    let pool = &site.pool;
    let policy = match pool.load_balancing {
        LoadBalancing::RoundRobin => "round_robin",
        LoadBalancing::WeightedRoundRobin => "weighted_round_robin",
        LoadBalancing::LeastRequests => "least_requests",
    };
    t.insert("load_balancing".into(), policy.into());
    t.insert("retries".into(), int(pool.retries));
    if let Some(h) = &pool.health_check {
        let mut check = Table::new();
        check.insert("path".into(), h.path.as_str().into());
        check.insert("interval".into(), duration(h.interval));
        check.insert("timeout".into(), duration(h.timeout));
        check.insert("healthy_threshold".into(), int(h.healthy_threshold));
        check.insert("unhealthy_threshold".into(), int(h.unhealthy_threshold));
        t.insert("health_check".into(), check.into());
    }
    let mut passive = Table::new();
    match pool.passive_health {
        // Zero failures turns passive health off.
        None => {
            passive.insert("consecutive_failures".into(), int(0));
        }
        Some(p) => {
            passive.insert("consecutive_failures".into(), int(p.consecutive_failures));
            passive.insert("cooldown".into(), duration(p.cooldown));
        }
    }
    t.insert("passive_health".into(), passive.into());
    t.insert("upstream_limits".into(), upstream_limits(pool.limits));
    t.insert(
        "routes".into(),
        Value::Array(site.routes.iter().map(route).collect()),
    );
    match &site.tls {
        SiteTls::None => {}
        SiteTls::Acme => {
            t.insert("tls".into(), "acme".into());
        }
        SiteTls::Files {
            cert_file,
            key_file,
            ..
        } => {
            let mut files = Table::new();
            files.insert("cert_file".into(), path(cert_file));
            files.insert("key_file".into(), path(key_file));
            t.insert("tls".into(), files.into());
        }
    }
    t.insert("https_redirect".into(), site.https_redirect.into());
    if let Some(rl) = site.rate_limit {
        t.insert("rate_limit".into(), rate_limit(rl));
    }
    if let Some(bytes) = site.body_limit_bytes {
        t.insert("body_limit_bytes".into(), size(bytes));
    }
    if let Some(timeout) = site.upstream_response_timeout {
        t.insert("upstream_response_timeout".into(), duration(timeout));
    }
    if let Some(protocol) = site.upstream.protocol {
        t.insert("upstream_protocol".into(), protocol.as_str().into());
    }
    header_rules(&mut t, "request_headers", &site.request_headers);
    header_rules(&mut t, "response_headers", &site.response_headers);
    t.into()
}

/// `request_headers` / `response_headers`, when not empty. (`upstream_tls` names files, which
/// the generated configs do not have, so it is not written back.)
fn header_rules(t: &mut Table, key: &str, rules: &HeaderRules) {
    if rules.is_empty() {
        return;
    }
    let pairs = |list: &[(String, String)]| -> Table {
        list.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect()
    };
    let mut r = Table::new();
    r.insert("set".into(), pairs(&rules.set).into());
    r.insert("add".into(), pairs(&rules.add).into());
    r.insert(
        "remove".into(),
        Value::Array(rules.remove.iter().map(|n| n.as_str().into()).collect()),
    );
    t.insert(key.into(), r.into());
}

fn route(route: &Route) -> Value {
    let mut t = Table::new();
    t.insert("path_prefix".into(), route.path_prefix.as_str().into());
    if !route.methods.is_empty() {
        t.insert(
            "methods".into(),
            Value::Array(route.methods.iter().map(|m| m.as_str().into()).collect()),
        );
    }
    if !route.match_headers.is_empty() {
        let headers: Table = route
            .match_headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        t.insert("match_headers".into(), headers.into());
    }
    if let Some(rl) = route.rate_limit {
        t.insert("rate_limit".into(), rate_limit(rl));
    }
    if let Some(bytes) = route.body_limit_bytes {
        t.insert("body_limit_bytes".into(), size(bytes));
    }
    match &route.action {
        RouteAction::Proxy(proxy) => {
            t.insert("upstreams".into(), upstreams(&proxy.upstreams));
            match &proxy.path {
                PathRewrite::Keep => {}
                PathRewrite::StripPrefix => {
                    t.insert("strip_prefix".into(), true.into());
                }
                PathRewrite::Replace(to) => {
                    t.insert("rewrite".into(), to.as_str().into());
                }
            }
            if let Some(protocol) = proxy.upstream.protocol {
                t.insert("upstream_protocol".into(), protocol.as_str().into());
            }
            header_rules(&mut t, "request_headers", &proxy.request_headers);
            header_rules(&mut t, "response_headers", &proxy.response_headers);
            if let Some(timeout) = proxy.upstream_response_timeout {
                t.insert("upstream_response_timeout".into(), duration(timeout));
            }
            if let Some(n) = proxy.retries {
                t.insert("retries".into(), int(n));
            }
        }
        RouteAction::Redirect { location, status } => {
            let mut r = Table::new();
            r.insert("location".into(), location.as_str().into());
            r.insert("status".into(), int(*status));
            t.insert("redirect".into(), r.into());
        }
        RouteAction::Respond {
            status,
            body,
            headers,
        } => {
            let mut r = Table::new();
            r.insert("status".into(), int(*status));
            r.insert("body".into(), body.as_str().into());
            let headers: Table = headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
                .collect();
            r.insert("headers".into(), headers.into());
            t.insert("respond".into(), r.into());
        }
    }
    t.into()
}

/// Plain URLs where the weight is 1, tables where it is not: both forms get written.
fn upstreams(list: &[Upstream]) -> Value {
    Value::Array(
        list.iter()
            .map(|u| match u.weight {
                1 => u.as_str().into(),
                weight => {
                    let mut t = Table::new();
                    t.insert("url".into(), u.as_str().into());
                    t.insert("weight".into(), int(weight));
                    t.into()
                }
            })
            .collect(),
    )
}

fn control(c: &ControlConfig) -> Value {
    let mut t = Table::new();
    t.insert("socket".into(), path(&c.socket));
    t.insert("state_dir".into(), path(&c.state_dir));
    t.insert(
        "allowed_uids".into(),
        Value::Array(c.allowed_uids.iter().map(|n| int(*n)).collect()),
    );
    t.insert(
        "allowed_gids".into(),
        Value::Array(c.allowed_gids.iter().map(|n| int(*n)).collect()),
    );
    if let Some(addr) = c.metrics_address {
        t.insert("metrics_address".into(), addr.to_string().into());
    }
    t.into()
}

fn proxy(p: &ProxyConfig) -> Value {
    let mut t = Table::new();
    t.insert("shutdown_timeout".into(), duration(p.shutdown_timeout));
    t.insert("max_request_headers".into(), int(p.max_request_headers));
    t.insert(
        "request_header_timeout".into(),
        duration(p.request_header_timeout),
    );
    t.insert(
        "upstream_connect_timeout".into(),
        duration(p.upstream_connect_timeout),
    );
    t.insert(
        "upstream_idle_timeout".into(),
        duration(p.upstream_idle_timeout),
    );
    t.insert(
        "upstream_h2_ping_interval".into(),
        duration(p.upstream_h2_ping_interval),
    );
    t.insert(
        "upstream_h2_ping_timeout".into(),
        duration(p.upstream_h2_ping_timeout),
    );
    t.insert(
        "max_request_header_bytes".into(),
        size(p.max_request_header_bytes),
    );
    if let Some(addr) = p.admin_address {
        t.insert("admin_address".into(), addr.to_string().into());
    }
    t.insert(
        "tls_session_resumption".into(),
        p.tls_session_resumption.into(),
    );
    let listeners = p.listeners.iter().map(|l| {
        let mut t = Table::new();
        t.insert("name".into(), l.name.as_str().into());
        t.insert("address".into(), l.address.to_string().into());
        t.insert("tls".into(), l.tls.into());
        Value::from(t)
    });
    t.insert("listeners".into(), Value::Array(listeners.collect()));
    let l = &p.limits;
    t.insert("max_connections".into(), int(l.max_connections));
    // Zero turns the per-client cap off.
    t.insert(
        "max_connections_per_ip".into(),
        int(l.max_connections_per_ip.unwrap_or(0)),
    );
    t.insert(
        "http2_max_concurrent_streams".into(),
        int(l.http2_max_concurrent_streams),
    );
    for (key, value) in [
        ("http2_keepalive_interval", l.http2_keepalive_interval),
        ("http2_keepalive_timeout", l.http2_keepalive_timeout),
        ("http2_idle_timeout", l.http2_idle_timeout),
        ("tunnel_idle_timeout", l.tunnel_idle_timeout),
        ("tcp_keepalive", l.tcp_keepalive),
        ("tls_handshake_timeout", l.tls_handshake_timeout),
        ("request_body_timeout", l.request_body_timeout),
        ("response_send_timeout", l.response_send_timeout),
        ("upstream_body_timeout", l.upstream_body_timeout),
    ] {
        t.insert(key.into(), duration(value));
    }
    t.insert(
        "request_body_min_rate".into(),
        size(l.request_body_min_rate),
    );
    t.insert("response_min_rate".into(), size(l.response_min_rate));
    t.into()
}

fn acme(a: &AcmeConfig) -> Value {
    let mut t = Table::new();
    t.insert("directory_url".into(), a.directory_url.as_str().into());
    t.insert("contact".into(), strings(a.contact.iter().cloned()));
    t.insert("challenge".into(), a.challenge.as_str().into());
    if let Some(roots) = &a.ca_roots {
        t.insert("ca_roots".into(), path(roots));
    }
    t.into()
}

fn rate_limit(rl: RateLimit) -> Value {
    let mut t = Table::new();
    t.insert(
        "requests_per_second".into(),
        int(rl.requests_per_second.get()),
    );
    t.insert("burst".into(), int(rl.burst.get()));
    t.into()
}

fn upstream_limits(l: UpstreamLimits) -> Value {
    let mut t = Table::new();
    t.insert("max_connections".into(), int(l.max_connections));
    t.insert("max_pending_requests".into(), int(l.max_pending_requests));
    t.insert("max_requests".into(), int(l.max_requests));
    t.insert("max_idle_connections".into(), int(l.max_idle_connections));
    t.into()
}

fn int(n: impl Into<i64>) -> Value {
    Value::Integer(n.into())
}

/// Sizes as strings of digits: a size may exceed what a TOML integer holds ("16777216g").
fn size(bytes: u64) -> Value {
    bytes.to_string().into()
}

fn duration(d: Duration) -> Value {
    humantime::format_duration(d).to_string().into()
}

fn path(p: &Path) -> Value {
    p.to_string_lossy().into_owned().into()
}

fn strings(items: impl Iterator<Item = String>) -> Value {
    Value::Array(items.map(Value::String).collect())
}
