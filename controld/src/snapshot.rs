//! Builds the wire snapshot from a validated config: the only place controld's model becomes
//! proto types for the data plane.

use std::collections::BTreeMap;

use proto::v1 as pb;
use sha2::{Digest, Sha256};

use crate::config::{
    Certificate, Config, ConnectionLimits, Diagnostic, EscapedSlashes, HeaderRules, LoadBalancing,
    LoadError, PathRewrite, PoolConfig, RateLimit, Route, RouteAction, Site, SiteTls, Upstream,
    UpstreamConnection, UpstreamProtocol, covers,
};

/// What ACME adds to a snapshot beyond the config: the certificates it issued. Only the
/// Reloader changes it, and every change is a new version. (The challenges it is completing are
/// not config: [`crate::challenges`].)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcmeOverlay {
    /// By site name. A certificate goes into the snapshot only while its site says
    /// `tls = "acme"` and the certificate covers every hostname of the site.
    pub certificates: BTreeMap<String, Certificate>,
}

/// Why a data plane of this build would refuse `content`: proxyd's own conversion of it (all
/// of a snapshot's checks but DNS and binding) as a diagnostic, located at the file.
pub fn data_plane_refusal(content: &Content, file: &std::path::Path) -> Option<Diagnostic> {
    let refused = proxyd::convert::Spec::try_from(content.snapshot.clone()).err()?;
    Some(Diagnostic {
        key_path: String::new(),
        file: file.to_owned(),
        line: 0,
        column: 0,
        message: format!("the data plane would refuse this config: {refused}"),
    })
}

/// The hash that names a config file's text: SHA-256, hex. Validate returns it for a candidate;
/// a reload with `if_text_hash` publishes the file only if its text still has it.
pub fn text_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Loads the config at `path` as controld starts from it: read, parse, validate, and the
/// snapshot it makes checked as a data plane would check it ([`data_plane_refusal`]).
pub fn load_checked(path: &std::path::Path) -> Result<(Config, String), LoadError> {
    let (config, text) = crate::config::load_with_text(path)?;
    if let Some(refused) = data_plane_refusal(&Content::build(&config), path) {
        return Err(LoadError::Invalid(vec![refused]));
    }
    Ok((config, text))
}

/// A snapshot's content without its version, and the hash that identifies that content.
#[derive(Debug, Clone)]
pub struct Content {
    pub snapshot: pb::Snapshot,
    pub hash: String,
}

impl Content {
    /// Builds the snapshot content for `config` alone (no ACME certificates).
    pub fn build(config: &Config) -> Content {
        Content::build_with(config, &AcmeOverlay::default())
    }

    /// Builds the snapshot content for `config` with what ACME adds. The hash covers everything
    /// proxyd receives except the version, so two files that differ only in comments or key
    /// order hash the same.
    pub fn build_with(config: &Config, acme: &AcmeOverlay) -> Content {
        let statics = &config.statics;
        let dynamic = &config.dynamic;
        let mut snapshot = pb::Snapshot {
            version: 0,
            content_hash: String::new(),
            static_settings: Some(pb::StaticSettings {
                listeners: statics
                    .proxy
                    .listeners
                    .iter()
                    .map(|l| pb::Listener {
                        name: l.name.clone(),
                        address: l.address.to_string(),
                        tls: l.tls,
                    })
                    .collect(),
                shutdown_timeout_ms: u64::try_from(statics.proxy.shutdown_timeout.as_millis())
                    .unwrap_or(u64::MAX),
                admin_address: statics
                    .proxy
                    .admin_address
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                log_format: statics.log_format.as_str().to_owned(),
                max_request_headers: statics.proxy.max_request_headers,
                max_request_header_bytes: statics.proxy.max_request_header_bytes,
                request_header_timeout_ms: millis(statics.proxy.request_header_timeout),
                upstream_connect_timeout_ms: millis(statics.proxy.upstream_connect_timeout),
                upstream_idle_timeout_ms: millis(statics.proxy.upstream_idle_timeout),
                upstream_h2_ping_interval_ms: millis(statics.proxy.upstream_h2_ping_interval),
                upstream_h2_ping_timeout_ms: millis(statics.proxy.upstream_h2_ping_timeout),
                disable_tls_session_resumption: !statics.proxy.tls_session_resumption,
                connection_limits: Some(connection_limits(&statics.proxy.limits)),
            }),
            dynamic: Some(pb::DynamicConfig {
                sites: dynamic.sites.iter().map(site).collect(),
                rate_limit: dynamic.rate_limit.map(rate_limit),
                body_limit_bytes: dynamic.body_limit_bytes,
                log_level: dynamic.log_level.clone(),
                upstream_response_timeout_ms: millis(dynamic.upstream_response_timeout),
                trusted_proxies: dynamic
                    .trusted_proxies
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                default_tls_site: dynamic.default_tls_site.clone().unwrap_or_default(),
                merge_slashes: Some(dynamic.merge_slashes),
                escaped_slashes: match dynamic.escaped_slashes {
                    EscapedSlashes::Reject => pb::EscapedSlashes::Reject,
                    EscapedSlashes::Keep => pb::EscapedSlashes::Keep,
                }
                .into(),
            }),
            certificates: dynamic
                .sites
                .iter()
                .filter_map(|s| certificate(s, acme))
                .collect(),
            // Sent apart, as `AcmeChallenges` (they are not config).
            acme_challenges: Vec::new(),
        };
        let hash = hex(&Sha256::digest(prost::Message::encode_to_vec(&snapshot)));
        snapshot.content_hash = hash.clone();
        Content { snapshot, hash }
    }

    /// The snapshot as sent, stamped with `version`.
    pub fn versioned(&self, version: u64) -> pb::Snapshot {
        pb::Snapshot {
            version,
            ..self.snapshot.clone()
        }
    }
}

fn site(site: &Site) -> pb::Site {
    pb::Site {
        hostnames: site
            .hostnames
            .iter()
            .map(|h| h.as_str().to_owned())
            .collect(),
        upstreams: urls(&site.upstreams),
        upstream_weights: weights(&site.upstreams),
        pool: Some(pool(&site.pool)),
        rate_limit: site.rate_limit.map(rate_limit),
        body_limit_bytes: site.body_limit_bytes,
        tls: match &site.tls {
            SiteTls::None => pb::SiteTls::None,
            SiteTls::Files { .. } => pb::SiteTls::Files,
            SiteTls::Acme => pb::SiteTls::Acme,
        }
        .into(),
        routes: site.routes.iter().map(route).collect(),
        upstream_response_timeout_ms: site.upstream_response_timeout.map(millis),
        // Only the non-default value is sent, so sites without the key hash as before.
        https_redirect: (!site.https_redirect).then_some(false),
        // Absent keys stay absent on the wire, so sites without them hash as before.
        upstream: connection(&site.upstream),
        request_headers: header_rules(&site.request_headers),
        response_headers: header_rules(&site.response_headers),
    }
}

/// `None` when neither the protocol nor TLS is set.
fn connection(c: &UpstreamConnection) -> Option<pb::UpstreamConnection> {
    if c.is_empty() {
        return None;
    }
    let protocol = match c.protocol {
        None => pb::UpstreamProtocol::Unspecified,
        Some(UpstreamProtocol::Http1) => pb::UpstreamProtocol::Http1,
        Some(UpstreamProtocol::H2) => pb::UpstreamProtocol::H2,
        Some(UpstreamProtocol::H2c) => pb::UpstreamProtocol::H2c,
        Some(UpstreamProtocol::Auto) => pb::UpstreamProtocol::Auto,
    };
    Some(pb::UpstreamConnection {
        protocol: protocol.into(),
        tls: c.tls.as_ref().map(|t| {
            let client = t.client_certificate.as_ref().map(|c| &c.certificate);
            pb::UpstreamTls {
                ca_pem: t.ca.as_ref().map(|ca| ca.pem.clone()).unwrap_or_default(),
                server_name: t.server_name.clone().unwrap_or_default(),
                client_cert_pem: client.map(|c| c.chain_pem.clone()).unwrap_or_default(),
                client_key_pem: client.map(|c| c.key_pem.clone()).unwrap_or_default(),
            }
        }),
    })
}

/// `None` when there are no rules.
fn header_rules(rules: &HeaderRules) -> Option<pb::HeaderRules> {
    (!rules.is_empty()).then(|| pb::HeaderRules {
        remove: rules.remove.clone(),
        set: headers(&rules.set),
        add: headers(&rules.add),
    })
}

fn headers(list: &[(String, String)]) -> Vec<pb::Header> {
    list.iter()
        .map(|(name, value)| pb::Header {
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

/// The site's certificate and key, when it has one: from its files, or issued through ACME (and
/// covering every hostname of the site).
fn certificate(site: &Site, acme: &AcmeOverlay) -> Option<pb::Certificate> {
    let (c, source) = match &site.tls {
        SiteTls::Acme => {
            let c = acme.certificates.get(site.name())?;
            let covered = site
                .hostnames
                .iter()
                .all(|h| c.names.iter().any(|n| covers(n, h.as_str())));
            (c, if covered { "acme" } else { return None })
        }
        tls => (tls.certificate()?, "files"),
    };
    Some(pb::Certificate {
        site: site.name().to_owned(),
        names: c.names.clone(),
        chain_pem: c.chain_pem.clone(),
        key_pem: c.key_pem.clone(),
        not_after_unix: c
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        source: source.to_owned(),
    })
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn urls(upstreams: &[Upstream]) -> Vec<String> {
    upstreams.iter().map(|u| u.as_str().to_owned()).collect()
}

/// Empty when every weight is 1, so that unweighted sites hash as before.
fn weights(upstreams: &[Upstream]) -> Vec<u32> {
    if upstreams.iter().all(|u| u.weight == 1) {
        return Vec::new();
    }
    upstreams.iter().map(|u| u.weight).collect()
}

fn pool(pool: &PoolConfig) -> pb::UpstreamPool {
    pb::UpstreamPool {
        load_balancing: match pool.load_balancing {
            LoadBalancing::RoundRobin => pb::LoadBalancing::RoundRobin,
            LoadBalancing::WeightedRoundRobin => pb::LoadBalancing::WeightedRoundRobin,
            LoadBalancing::LeastRequests => pb::LoadBalancing::LeastRequests,
        }
        .into(),
        retries: pool.retries,
        health_check: pool.health_check.as_ref().map(|h| pb::HealthCheck {
            path: h.path.clone(),
            interval_ms: millis(h.interval),
            timeout_ms: millis(h.timeout),
            healthy_threshold: h.healthy_threshold,
            unhealthy_threshold: h.unhealthy_threshold,
        }),
        passive_health: pool.passive_health.map(|p| pb::PassiveHealth {
            consecutive_failures: p.consecutive_failures,
            cooldown_ms: millis(p.cooldown),
        }),
        limits: Some(pb::UpstreamLimits {
            max_connections: pool.limits.max_connections,
            max_pending_requests: pool.limits.max_pending_requests,
            max_requests: pool.limits.max_requests,
            max_idle_connections: pool.limits.max_idle_connections,
        }),
    }
}

fn connection_limits(l: &ConnectionLimits) -> pb::ConnectionLimits {
    pb::ConnectionLimits {
        max_connections: l.max_connections,
        // u32::MAX on the wire: no cap (0 would mean proxyd's default).
        max_connections_per_ip: l.max_connections_per_ip.unwrap_or(u32::MAX),
        http2_max_concurrent_streams: l.http2_max_concurrent_streams,
        http2_keepalive_interval_ms: millis(l.http2_keepalive_interval),
        http2_keepalive_timeout_ms: millis(l.http2_keepalive_timeout),
        http2_idle_timeout_ms: millis(l.http2_idle_timeout),
        tunnel_idle_timeout_ms: millis(l.tunnel_idle_timeout),
        tcp_keepalive_ms: millis(l.tcp_keepalive),
        tls_handshake_timeout_ms: millis(l.tls_handshake_timeout),
        request_body_timeout_ms: millis(l.request_body_timeout),
        response_send_timeout_ms: millis(l.response_send_timeout),
        upstream_body_timeout_ms: millis(l.upstream_body_timeout),
        // u64::MAX on the wire: no minimum (0 would mean proxyd's default).
        request_body_min_rate: match l.request_body_min_rate {
            0 => u64::MAX,
            n => n,
        },
        response_min_rate: match l.response_min_rate {
            0 => u64::MAX,
            n => n,
        },
    }
}

fn route(route: &Route) -> pb::Route {
    use pb::route::Action;
    let mut out = pb::Route {
        path_prefix: route.path_prefix.clone(),
        methods: route.methods.clone(),
        match_headers: headers(&route.match_headers),
        body_limit_bytes: route.body_limit_bytes,
        rate_limit: route.rate_limit.map(rate_limit),
        ..Default::default()
    };
    let action = match &route.action {
        RouteAction::Proxy(proxy) => {
            match &proxy.path {
                PathRewrite::Keep => {}
                PathRewrite::StripPrefix => out.strip_prefix = true,
                PathRewrite::Replace(to) => out.rewrite = Some(to.clone()),
            }
            out.upstream = connection(&proxy.upstream);
            out.request_headers = header_rules(&proxy.request_headers);
            out.response_headers = header_rules(&proxy.response_headers);
            out.upstream_response_timeout_ms = proxy.upstream_response_timeout.map(millis);
            out.retries = proxy.retries;
            Action::Upstreams(pb::UpstreamList {
                urls: urls(&proxy.upstreams),
                weights: weights(&proxy.upstreams),
            })
        }
        RouteAction::Redirect { location, status } => Action::Redirect(pb::Redirect {
            location: location.clone(),
            status: u32::from(*status),
        }),
        RouteAction::Respond {
            status,
            body,
            headers: list,
        } => Action::Respond(pb::FixedResponse {
            status: u32::from(*status),
            body: body.clone(),
            headers: headers(list),
        }),
    };
    out.action = Some(action);
    out
}

fn rate_limit(rl: RateLimit) -> pb::RateLimit {
    pb::RateLimit {
        requests_per_second: rl.requests_per_second.get(),
        burst: rl.burst.get(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
