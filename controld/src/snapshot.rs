//! Builds the wire snapshot from a validated config: the only place controld's model becomes
//! proto types for the data plane.

use proto::v1 as pb;
use sha2::{Digest, Sha256};

use crate::config::{
    Config, LoadBalancing, PoolConfig, RateLimit, Route, RouteAction, Site, SiteTls, Upstream,
};

/// A snapshot's content without its version, and the hash that identifies that content.
#[derive(Debug, Clone)]
pub struct Content {
    pub snapshot: pb::Snapshot,
    pub hash: String,
}

impl Content {
    /// Builds the snapshot content for `config`. The hash covers everything proxyd receives except
    /// the version, so two files that differ only in comments or key order hash the same.
    pub fn build(config: &Config) -> Content {
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
            }),
            certificates: dynamic.sites.iter().filter_map(certificate).collect(),
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
    }
}

/// The site's certificate and key, when it has one.
fn certificate(site: &Site) -> Option<pb::Certificate> {
    let c = site.tls.certificate()?;
    Some(pb::Certificate {
        site: site.name().to_owned(),
        names: c.names.clone(),
        chain_pem: c.chain_pem.clone(),
        key_pem: c.key_pem.clone(),
        not_after_unix: c
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        source: "files".to_owned(),
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
    }
}

fn route(route: &Route) -> pb::Route {
    use pb::route::Action;
    let action = match &route.action {
        RouteAction::Proxy(upstreams) => Action::Upstreams(pb::UpstreamList {
            urls: urls(upstreams),
            weights: weights(upstreams),
        }),
        RouteAction::Redirect { location, status } => Action::Redirect(pb::Redirect {
            location: location.clone(),
            status: u32::from(*status),
        }),
        RouteAction::Respond {
            status,
            body,
            headers,
        } => Action::Respond(pb::FixedResponse {
            status: u32::from(*status),
            body: body.clone(),
            headers: headers
                .iter()
                .map(|(name, value)| pb::Header {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
        }),
    };
    pb::Route {
        path_prefix: route.path_prefix.clone(),
        action: Some(action),
    }
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
