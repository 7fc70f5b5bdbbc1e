//! Sites as the data plane checks them: hostnames, routes and their actions, upstream pools and
//! their bounds. Part of the snapshot's edge ([`super`]): nothing here trusts a value it
//! allocates by.

use std::num::NonZeroU32;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use proto::v1 as pb;

use super::{
    ConnectionSpec, HeaderRules, Rewrite, SiteCertificate, UpstreamLimits, connection,
    header_rules, quota, rewrite,
};

/// Bounds on values the runtime allocates by, checked whoever sent the snapshot (controld
/// applies the same rules to the file).
pub use proto::{FRAMING_HEADERS, MAX_TOTAL_WEIGHT, MAX_UPSTREAM_WEIGHT as MAX_WEIGHT};
pub const MAX_RETRIES: u32 = 5;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSpec {
    pub hostnames: Vec<String>,
    /// Longest prefix first; the site's default upstreams are the route for "/".
    pub routes: Vec<RouteSpec>,
    pub pool: PoolSpec,
    pub rate_limit: Option<RateQuota>,
    pub body_limit_bytes: Option<u64>,
    pub upstream_response_timeout: Option<Duration>,
    /// `None`: no TLS handshake gets this site (no TLS, or no certificate yet).
    pub certificate: Option<SiteCertificate>,
    /// Plain-HTTP requests are redirected to https:// when the site has a certificate.
    pub https_redirect: bool,
}

/// An upstream, its share of a route's traffic, and how the route connects to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedUpstream {
    pub spec: UpstreamSpec,
    pub weight: u32,
    pub connection: ConnectionSpec,
}

/// How a site's routes balance and check their upstreams.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolSpec {
    pub policy: Policy,
    pub retries: u32,
    pub health_check: Option<HealthCheckSpec>,
    pub passive: Option<PassiveHealthSpec>,
    /// Circuit breakers of each upstream of the site.
    pub limits: UpstreamLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Policy {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastRequests,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheckSpec {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealthSpec {
    pub consecutive_failures: u32,
    pub cooldown: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub path_prefix: String,
    /// Only these methods match; empty = every method.
    pub methods: Vec<http::Method>,
    /// Only requests with each of these headers, with exactly this value, match.
    pub match_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Overrides of the site's.
    pub rate_limit: Option<RateQuota>,
    pub body_limit_bytes: Option<u64>,
    pub action: ActionSpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionSpec {
    Proxy(ProxySpec),
    Answer(Answer),
}

/// A route that proxies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySpec {
    /// Never empty.
    pub upstreams: Vec<WeightedUpstream>,
    pub rewrite: Rewrite,
    /// The site's rules, then the route's (empty ones left out).
    pub request_headers: Vec<HeaderRules>,
    pub response_headers: Vec<HeaderRules>,
    /// Overrides of the site's.
    pub upstream_response_timeout: Option<Duration>,
    pub retries: Option<u32>,
}

/// A route action proxyd answers itself; the runtime uses it as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Redirect {
        location: String,
        status: http::StatusCode,
    },
    Respond {
        status: http::StatusCode,
        body: bytes::Bytes,
        headers: http::HeaderMap,
    },
}

impl SiteSpec {
    /// Every upstream any route of the site proxies to.
    pub fn upstreams(&self) -> impl Iterator<Item = &WeightedUpstream> {
        self.routes.iter().flat_map(|r| match &r.action {
            ActionSpec::Proxy(proxy) => proxy.upstreams.as_slice(),
            _ => &[],
        })
    }

    /// Sites are named by their first hostname, as controld names them.
    pub fn name(&self) -> &str {
        self.hostnames.first().map(String::as_str).unwrap_or("")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamSpec {
    pub scheme: Scheme,
    pub authority: Authority,
}

impl UpstreamSpec {
    pub fn host(&self) -> &str {
        self.authority.host()
    }

    pub fn port(&self) -> u16 {
        self.authority.port_u16().unwrap_or(80)
    }
}

impl std::fmt::Display for UpstreamSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// A per-client-IP quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateQuota {
    pub requests_per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

pub(super) fn site_spec(site: pb::Site) -> Result<SiteSpec, String> {
    // An enum value this build does not know means the snapshot asks for something it cannot do.
    match pb::SiteTls::try_from(site.tls) {
        Ok(pb::SiteTls::None | pb::SiteTls::Files | pb::SiteTls::Acme) => {}
        Ok(pb::SiteTls::Unspecified) | Err(_) => {
            return Err(format!("unknown TLS mode {}", site.tls));
        }
    }
    if site.hostnames.is_empty() {
        return Err("no hostnames".to_owned());
    }
    for h in &site.hostnames {
        if !valid_hostname(h) {
            return Err(format!("invalid hostname {h:?}"));
        }
    }
    let site_rules = SiteRules {
        connection: site.upstream.as_ref(),
        request: header_rules(site.request_headers.as_ref(), true)?,
        response: header_rules(site.response_headers.as_ref(), false)?,
    };
    let mut routes = site
        .routes
        .into_iter()
        .map(|r| route(r, &site_rules))
        .collect::<Result<Vec<_>, _>>()?;
    if !site.upstreams.is_empty() {
        let upstreams = weighted(
            &site.upstreams,
            &site.upstream_weights,
            site_rules.connection,
            None,
        )?;
        routes.push(RouteSpec {
            path_prefix: "/".to_owned(),
            methods: Vec::new(),
            match_headers: Vec::new(),
            rate_limit: None,
            body_limit_bytes: None,
            action: ActionSpec::Proxy(ProxySpec {
                upstreams,
                rewrite: Rewrite::Keep,
                request_headers: site_rules.request_list(HeaderRules::default()),
                response_headers: site_rules.response_list(HeaderRules::default()),
                upstream_response_timeout: None,
                retries: None,
            }),
        });
    }
    if routes.is_empty() {
        return Err("no upstreams and no routes".to_owned());
    }
    // Routes that match on headers first, then the longest prefix, then those limited to some
    // methods ahead of those for all.
    routes.sort_by_key(|r| {
        (
            r.match_headers.is_empty(),
            std::cmp::Reverse(r.path_prefix.len()),
            r.methods.is_empty(),
        )
    });
    let rate_limit = site
        .rate_limit
        .map(|r| quota(r, "rate_limit"))
        .transpose()
        .map_err(|e| e.to_string())?;
    Ok(SiteSpec {
        hostnames: site.hostnames,
        routes,
        pool: pool(site.pool)?,
        rate_limit,
        body_limit_bytes: site.body_limit_bytes,
        upstream_response_timeout: site
            .upstream_response_timeout_ms
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis),
        // Filled from the snapshot's certificates by `sites`.
        certificate: None,
        https_redirect: site.https_redirect.unwrap_or(true),
    })
}

/// Lower-case DNS names, or `*.` followed by one.
fn valid_hostname(h: &str) -> bool {
    let name = h.strip_prefix("*.").unwrap_or(h);
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// What a site gives each of its proxying routes.
struct SiteRules<'a> {
    connection: Option<&'a pb::UpstreamConnection>,
    request: HeaderRules,
    response: HeaderRules,
}

impl SiteRules<'_> {
    fn request_list(&self, route: HeaderRules) -> Vec<HeaderRules> {
        [self.request.clone(), route]
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect()
    }

    fn response_list(&self, route: HeaderRules) -> Vec<HeaderRules> {
        [self.response.clone(), route]
            .into_iter()
            .filter(|r| !r.is_empty())
            .collect()
    }
}

fn route(r: pb::Route, site: &SiteRules<'_>) -> Result<RouteSpec, String> {
    use pb::route::Action;
    let prefix = r.path_prefix.clone();
    let methods = r
        .methods
        .iter()
        .map(|m| {
            http::Method::from_bytes(m.as_bytes())
                .map_err(|_| format!("route {prefix:?}: invalid method {m:?}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let match_headers = r
        .match_headers
        .iter()
        .map(|h| {
            match (
                http::HeaderName::from_bytes(h.name.as_bytes()),
                http::HeaderValue::from_str(&h.value),
            ) {
                (Ok(name), Ok(value)) => Ok((name, value)),
                _ => Err(format!(
                    "route {prefix:?}: invalid match_headers entry {:?}",
                    h.name
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let rate_limit = r
        .rate_limit
        .map(|q| quota(q, "rate_limit"))
        .transpose()
        .map_err(|e| format!("route {prefix:?}: {e}"))?;
    if r.retries.is_some_and(|n| n > MAX_RETRIES) {
        return Err(format!("route {prefix:?}: retries (at most {MAX_RETRIES})"));
    }
    if !prefix.starts_with('/') {
        return Err(format!("route {prefix:?}: a path prefix starts with '/'"));
    }
    let status = |code: u32| {
        u16::try_from(code)
            .ok()
            .and_then(|c| http::StatusCode::from_u16(c).ok())
            .ok_or_else(|| format!("route {prefix:?}: invalid status {code}"))
    };
    let proxying = matches!(&r.action, Some(Action::Upstreams(_)));
    let extras = r.strip_prefix
        || r.rewrite.is_some()
        || r.upstream.is_some()
        || r.request_headers.is_some()
        || r.response_headers.is_some()
        || r.upstream_response_timeout_ms.is_some()
        || r.retries.is_some();
    if extras && !proxying {
        return Err(format!(
            "route {prefix:?}: upstream settings on a route that does not proxy"
        ));
    }
    let action = match r.action {
        Some(Action::Upstreams(ref list)) if !list.urls.is_empty() => {
            let in_route = |e: String| format!("route {prefix:?}: {e}");
            ActionSpec::Proxy(ProxySpec {
                upstreams: weighted(
                    &list.urls,
                    &list.weights,
                    site.connection,
                    r.upstream.as_ref(),
                )
                .map_err(in_route)?,
                rewrite: rewrite(&r).map_err(in_route)?,
                request_headers: site.request_list(
                    header_rules(r.request_headers.as_ref(), true).map_err(in_route)?,
                ),
                response_headers: site.response_list(
                    header_rules(r.response_headers.as_ref(), false).map_err(in_route)?,
                ),
                upstream_response_timeout: r
                    .upstream_response_timeout_ms
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis),
                retries: r.retries,
            })
        }
        Some(Action::Upstreams(_)) => return Err(format!("route {prefix:?}: no upstreams")),
        Some(Action::Redirect(redirect)) => {
            let status = status(redirect.status)?;
            if !status.is_redirection() {
                return Err(format!(
                    "route {prefix:?}: {status} is not a redirect status"
                ));
            }
            ActionSpec::Answer(Answer::Redirect {
                location: redirect.location,
                status,
            })
        }
        Some(Action::Respond(respond)) => {
            let mut headers = http::HeaderMap::new();
            for h in respond.headers {
                let name = http::HeaderName::from_bytes(h.name.as_bytes());
                let value = http::HeaderValue::from_str(&h.value);
                let (Ok(name), Ok(value)) = (name, value) else {
                    return Err(format!("route {prefix:?}: invalid header {:?}", h.name));
                };
                // proxyd frames its own answers: a header that changes framing or the
                // connection would corrupt the response stream.
                if FRAMING_HEADERS.contains(&name.as_str()) {
                    return Err(format!(
                        "route {prefix:?}: header {:?} is set by proxyd itself",
                        h.name
                    ));
                }
                headers.append(name, value);
            }
            ActionSpec::Answer(Answer::Respond {
                status: status(respond.status)?,
                body: respond.body.into(),
                headers,
            })
        }
        // A route action this build does not know: refuse rather than guess.
        None => return Err(format!("route {prefix:?}: no action this proxyd knows")),
    };
    Ok(RouteSpec {
        path_prefix: prefix,
        methods,
        match_headers,
        rate_limit,
        body_limit_bytes: r.body_limit_bytes,
        action,
    })
}

/// URLs with their weights (index for index; none = all 1).
fn weighted(
    urls: &[String],
    weights: &[u32],
    site: Option<&pb::UpstreamConnection>,
    route: Option<&pb::UpstreamConnection>,
) -> Result<Vec<WeightedUpstream>, String> {
    if !weights.is_empty() && weights.len() != urls.len() {
        return Err(format!(
            "{} weights for {} upstreams",
            weights.len(),
            urls.len()
        ));
    }
    // The weighted schedule holds one entry per unit of weight: bound it, whatever sent it.
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total > MAX_TOTAL_WEIGHT {
        return Err(format!(
            "upstream weights add up to {total}; at most {MAX_TOTAL_WEIGHT}"
        ));
    }
    urls.iter()
        .enumerate()
        .map(|(i, url)| {
            let weight = weights.get(i).copied().unwrap_or(1);
            if weight == 0 || weight > MAX_WEIGHT {
                return Err(format!(
                    "upstream {url:?}: weight {weight} (must be 1 to {MAX_WEIGHT})"
                ));
            }
            let spec = upstream(url)?;
            let connection = connection(site, route, spec.scheme == Scheme::HTTPS)
                .map_err(|e| format!("upstream {url:?}: {e}"))?;
            Ok(WeightedUpstream {
                spec,
                weight,
                connection,
            })
        })
        .collect()
}

fn pool(pool: Option<pb::UpstreamPool>) -> Result<PoolSpec, String> {
    let Some(pool) = pool else {
        return Ok(PoolSpec::default());
    };
    let policy = match pb::LoadBalancing::try_from(pool.load_balancing) {
        Ok(pb::LoadBalancing::RoundRobin) => Policy::RoundRobin,
        Ok(pb::LoadBalancing::WeightedRoundRobin) => Policy::WeightedRoundRobin,
        Ok(pb::LoadBalancing::LeastRequests) => Policy::LeastRequests,
        Ok(pb::LoadBalancing::Unspecified) | Err(_) => {
            return Err(format!(
                "unknown load balancing policy {}",
                pool.load_balancing
            ));
        }
    };
    let health_check = match pool.health_check {
        None => None,
        Some(h) if h.interval_ms == 0 || h.timeout_ms == 0 || !h.path.starts_with('/') => {
            return Err("invalid health check".to_owned());
        }
        Some(h) => Some(HealthCheckSpec {
            path: h.path,
            interval: Duration::from_millis(h.interval_ms),
            timeout: Duration::from_millis(h.timeout_ms),
            healthy_threshold: h.healthy_threshold.max(1),
            unhealthy_threshold: h.unhealthy_threshold.max(1),
        }),
    };
    if pool.retries > MAX_RETRIES {
        return Err(format!("retries {} (at most {MAX_RETRIES})", pool.retries));
    }
    let passive = pool
        .passive_health
        .filter(|p| p.consecutive_failures > 0)
        .map(|p| PassiveHealthSpec {
            consecutive_failures: p.consecutive_failures,
            cooldown: Duration::from_millis(p.cooldown_ms),
        });
    Ok(PoolSpec {
        policy,
        retries: pool.retries,
        health_check,
        passive,
        limits: pool.limits.into(),
    })
}

fn upstream(raw: &str) -> Result<UpstreamSpec, String> {
    let uri: http::Uri = raw
        .parse()
        .map_err(|e| format!("invalid upstream {raw:?}: {e}"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
        return Err(format!(
            "invalid upstream {raw:?}: expected scheme://host:port"
        ));
    };
    if *scheme != Scheme::HTTP && *scheme != Scheme::HTTPS {
        return Err(format!(
            "upstream {raw:?}: the scheme must be http:// or https://"
        ));
    }
    Ok(UpstreamSpec {
        scheme: scheme.clone(),
        authority: authority.clone(),
    })
}
