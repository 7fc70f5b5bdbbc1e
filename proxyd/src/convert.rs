//! The edge of the data plane: a snapshot from the wire becomes a validated [`Spec`] here, with
//! `TryFrom`, or is refused with a reason that goes back to controld in a NACK. No other module
//! reads snapshot fields.

mod certs;
mod limits;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use proto::v1 as pb;

/// The name under which the ACK reports the admin listener; no `[[proxy.listeners]]` may use it.
pub use proto::ADMIN_LISTENER_NAME;

#[cfg(test)]
pub use certs::test_certificate;
pub use certs::{Challenges, SiteCertificate};
pub use limits::{ConnectionLimits, PathRules, UpstreamLimits};

/// A snapshot proxyd has checked and can compile into a runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub version: u64,
    pub hash: String,
    pub statics: StaticSpec,
    pub sites: Vec<SiteSpec>,
    pub rate_limit: Option<RateQuota>,
    pub body_limit_bytes: u64,
    /// For sites without their own.
    pub upstream_response_timeout: Duration,
    /// Peers whose forwarding headers are kept.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub log_level: String,
    /// The name of the site whose certificate a handshake without a known SNI gets.
    pub default_tls_site: Option<String>,
    /// The ACME challenges to answer.
    pub challenges: Challenges,
    /// How request paths are normalized before routing.
    pub paths: PathRules,
}

/// Settings proxyd takes from the first snapshot it applies and keeps until it restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticSpec {
    pub listeners: Vec<ListenerSpec>,
    pub shutdown_timeout: Duration,
    /// Header fields a request head may have; more is answered 431.
    pub max_request_headers: usize,
    /// Bytes a request head may take; more is answered 431.
    pub max_request_header_bytes: usize,
    /// Where `/healthz`, `/readyz` and `/metrics` are served; `None`: nowhere.
    pub admin_address: Option<SocketAddr>,
    /// How long a client may take to send a request head.
    pub request_header_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub upstream_idle_timeout: Duration,
    /// Caps and deadlines on client connections.
    pub limits: ConnectionLimits,
}

/// Used when a snapshot leaves the request-head limits at 0.
const DEFAULT_MAX_REQUEST_HEADERS: usize = 100;
const DEFAULT_MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;
const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
const DEFAULT_UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// hyper's read buffer cannot be smaller.
const MIN_HEADER_BYTES: usize = 8192;
/// Bounds on values the runtime allocates by, checked whoever sent the snapshot (controld
/// applies the same rules to the file).
pub const MAX_WEIGHT: u32 = 1000;
pub const MAX_TOTAL_WEIGHT: u64 = 100_000;
pub const MAX_RETRIES: u32 = 5;
/// Headers a `respond` route may not set: proxyd frames its answers itself.
pub const FRAMING_HEADERS: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "host",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    /// Terminates TLS.
    pub tls: bool,
}

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

/// An upstream and its share of a route's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedUpstream {
    pub spec: UpstreamSpec,
    pub weight: u32,
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
    pub action: ActionSpec,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionSpec {
    /// Never empty.
    Proxy(Vec<WeightedUpstream>),
    Answer(Answer),
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
    pub fn upstreams(&self) -> impl Iterator<Item = &UpstreamSpec> {
        self.routes
            .iter()
            .flat_map(|r| match &r.action {
                ActionSpec::Proxy(upstreams) => upstreams.as_slice(),
                _ => &[],
            })
            .map(|u| &u.spec)
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

/// Why proxyd refuses a snapshot. The text goes back to controld in the NACK.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotError {
    #[error("snapshot {version} has no {field}")]
    Missing { version: u64, field: &'static str },
    #[error("listener {name:?}: invalid address {address:?}")]
    ListenerAddress { name: String, address: String },
    #[error("listener name {name:?} is reserved for the admin listener")]
    ReservedListenerName { name: String },
    #[error("invalid admin address {address:?}: expected ip:port")]
    AdminAddress { address: String },
    #[error("certificate of site {site:?}: {reason}")]
    Certificate { site: String, reason: String },
    #[error("ACME challenge for {name:?}: {reason}")]
    Challenge { name: String, reason: String },
    #[error("default_tls_site {site:?} is not the name of a site")]
    DefaultTlsSite { site: String },
    #[error("sites[{index}]: {reason}")]
    Site { index: usize, reason: String },
    #[error("hostname {hostname:?} appears in more than one site")]
    DuplicateHostname { hostname: String },
    #[error("trusted_proxies: invalid CIDR {cidr:?}")]
    TrustedProxy { cidr: String },
    #[error("{field}: a rate limit needs requests_per_second > 0 and burst > 0")]
    RateLimit { field: String },
    #[error("paths: {reason}")]
    Paths { reason: String },
}

impl TryFrom<pb::Snapshot> for Spec {
    type Error = SnapshotError;

    fn try_from(s: pb::Snapshot) -> Result<Spec, SnapshotError> {
        let version = s.version;
        let statics = s.static_settings.ok_or(SnapshotError::Missing {
            version,
            field: "static settings",
        })?;
        let dynamic = s.dynamic.ok_or(SnapshotError::Missing {
            version,
            field: "dynamic config",
        })?;
        let listeners = statics
            .listeners
            .into_iter()
            .map(listener)
            .collect::<Result<Vec<_>, _>>()?;
        if listeners.is_empty() {
            return Err(SnapshotError::Missing {
                version,
                field: "listener",
            });
        }
        let certificates = certs::by_site(&s.certificates)?;
        let challenges = certs::challenges(&s.acme_challenges)?;
        let sites = sites(dynamic.sites, certificates)?;
        let default_tls_site = match dynamic.default_tls_site {
            name if name.is_empty() => None,
            name if sites.iter().any(|s| s.name() == name) => Some(name),
            site => return Err(SnapshotError::DefaultTlsSite { site }),
        };
        Ok(Spec {
            version,
            hash: s.content_hash,
            statics: StaticSpec {
                listeners,
                shutdown_timeout: Duration::from_millis(statics.shutdown_timeout_ms),
                max_request_headers: match statics.max_request_headers {
                    0 => DEFAULT_MAX_REQUEST_HEADERS,
                    n => usize::try_from(n).unwrap_or(DEFAULT_MAX_REQUEST_HEADERS),
                },
                max_request_header_bytes: match statics.max_request_header_bytes {
                    0 => DEFAULT_MAX_REQUEST_HEADER_BYTES,
                    n => usize::try_from(n)
                        .unwrap_or(usize::MAX)
                        .max(MIN_HEADER_BYTES),
                },
                admin_address: admin_address(statics.admin_address)?,
                request_header_timeout: millis_or(
                    statics.request_header_timeout_ms,
                    DEFAULT_REQUEST_HEADER_TIMEOUT,
                ),
                upstream_connect_timeout: millis_or(
                    statics.upstream_connect_timeout_ms,
                    DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
                ),
                upstream_idle_timeout: millis_or(
                    statics.upstream_idle_timeout_ms,
                    DEFAULT_UPSTREAM_IDLE_TIMEOUT,
                ),
                limits: statics.connection_limits.into(),
            },
            sites,
            rate_limit: dynamic
                .rate_limit
                .map(|r| quota(r, "rate_limit"))
                .transpose()?,
            body_limit_bytes: dynamic.body_limit_bytes,
            upstream_response_timeout: millis_or(
                dynamic.upstream_response_timeout_ms,
                DEFAULT_UPSTREAM_RESPONSE_TIMEOUT,
            ),
            trusted_proxies: dynamic
                .trusted_proxies
                .iter()
                .map(|t| {
                    t.parse()
                        .map_err(|_| SnapshotError::TrustedProxy { cidr: t.clone() })
                })
                .collect::<Result<_, _>>()?,
            log_level: dynamic.log_level,
            default_tls_site,
            challenges,
            paths: PathRules::from_wire(dynamic.merge_slashes, dynamic.escaped_slashes)
                .map_err(|reason| SnapshotError::Paths { reason })?,
        })
    }
}

/// The sites, each with its certificate; a hostname in two sites, or a certificate for no site,
/// refuses the snapshot.
fn sites(
    list: Vec<pb::Site>,
    mut certificates: HashMap<String, SiteCertificate>,
) -> Result<Vec<SiteSpec>, SnapshotError> {
    let mut seen = HashSet::new();
    let mut sites = Vec::with_capacity(list.len());
    for (index, site) in list.into_iter().enumerate() {
        let mut site = site_spec(site).map_err(|reason| SnapshotError::Site { index, reason })?;
        for h in &site.hostnames {
            if !seen.insert(h.clone()) {
                return Err(SnapshotError::DuplicateHostname {
                    hostname: h.clone(),
                });
            }
        }
        site.certificate = certificates.remove(site.name());
        sites.push(site);
    }
    if let Some(site) = certificates.into_keys().next() {
        return Err(SnapshotError::Certificate {
            site,
            reason: "no site has this name".to_owned(),
        });
    }
    Ok(sites)
}

/// A timeout from the wire; 0 means "the default".
fn millis_or(ms: u64, default: Duration) -> Duration {
    match ms {
        0 => default,
        ms => Duration::from_millis(ms),
    }
}

fn listener(l: pb::Listener) -> Result<ListenerSpec, SnapshotError> {
    // The ACK reports the admin listener under this name.
    if l.name == ADMIN_LISTENER_NAME {
        return Err(SnapshotError::ReservedListenerName { name: l.name });
    }
    match l.address.parse() {
        Ok(address) => Ok(ListenerSpec {
            name: l.name,
            address,
            tls: l.tls,
        }),
        Err(_) => Err(SnapshotError::ListenerAddress {
            name: l.name,
            address: l.address,
        }),
    }
}

/// Empty means no admin listener.
fn admin_address(text: String) -> Result<Option<SocketAddr>, SnapshotError> {
    if text.is_empty() {
        return Ok(None);
    }
    match text.parse() {
        Ok(address) => Ok(Some(address)),
        Err(_) => Err(SnapshotError::AdminAddress { address: text }),
    }
}

fn quota(r: pb::RateLimit, field: &str) -> Result<RateQuota, SnapshotError> {
    match (
        NonZeroU32::new(r.requests_per_second),
        NonZeroU32::new(r.burst),
    ) {
        (Some(requests_per_second), Some(burst)) => Ok(RateQuota {
            requests_per_second,
            burst,
        }),
        _ => Err(SnapshotError::RateLimit {
            field: field.to_owned(),
        }),
    }
}

fn site_spec(site: pb::Site) -> Result<SiteSpec, String> {
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
    let mut routes = site
        .routes
        .into_iter()
        .map(route)
        .collect::<Result<Vec<_>, _>>()?;
    if !site.upstreams.is_empty() {
        let upstreams = weighted(&site.upstreams, &site.upstream_weights)?;
        routes.push(RouteSpec {
            path_prefix: "/".to_owned(),
            action: ActionSpec::Proxy(upstreams),
        });
    }
    if routes.is_empty() {
        return Err("no upstreams and no routes".to_owned());
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
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

fn route(r: pb::Route) -> Result<RouteSpec, String> {
    use pb::route::Action;
    let prefix = r.path_prefix;
    if !prefix.starts_with('/') {
        return Err(format!("route {prefix:?}: a path prefix starts with '/'"));
    }
    let status = |code: u32| {
        u16::try_from(code)
            .ok()
            .and_then(|c| http::StatusCode::from_u16(c).ok())
            .ok_or_else(|| format!("route {prefix:?}: invalid status {code}"))
    };
    let action = match r.action {
        Some(Action::Upstreams(list)) if !list.urls.is_empty() => {
            ActionSpec::Proxy(weighted(&list.urls, &list.weights)?)
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
        action,
    })
}

/// URLs with their weights (index for index; none = all 1).
fn weighted(urls: &[String], weights: &[u32]) -> Result<Vec<WeightedUpstream>, String> {
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
            Ok(WeightedUpstream {
                spec: upstream(url)?,
                weight,
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
    if *scheme != Scheme::HTTP {
        return Err(format!(
            "upstream {raw:?}: this proxyd build speaks only http:// to upstreams"
        ));
    }
    Ok(UpstreamSpec {
        scheme: scheme.clone(),
        authority: authority.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> pb::Snapshot {
        pb::Snapshot {
            version: 3,
            content_hash: "h".into(),
            static_settings: Some(pb::StaticSettings {
                listeners: vec![pb::Listener {
                    name: "http".into(),
                    address: "127.0.0.1:0".into(),
                    tls: false,
                }],
                shutdown_timeout_ms: 1500,
                admin_address: String::new(),
                log_format: "json".into(),
                max_request_headers: 0,
                max_request_header_bytes: 1,
                request_header_timeout_ms: 0,
                upstream_connect_timeout_ms: 250,
                upstream_idle_timeout_ms: 0,
                connection_limits: None,
            }),
            dynamic: Some(pb::DynamicConfig {
                sites: vec![pb::Site {
                    hostnames: vec!["a.example".into()],
                    upstreams: vec!["http://127.0.0.1:9000".into()],
                    rate_limit: Some(pb::RateLimit {
                        requests_per_second: 1,
                        burst: 2,
                    }),
                    body_limit_bytes: Some(10),
                    tls: pb::SiteTls::None.into(),
                    routes: vec![pb::Route {
                        path_prefix: "/api".into(),
                        action: Some(pb::route::Action::Respond(pb::FixedResponse {
                            status: 204,
                            body: String::new(),
                            headers: vec![pb::Header {
                                name: "x-a".into(),
                                value: "1".into(),
                            }],
                        })),
                    }],
                    upstream_response_timeout_ms: Some(700),
                    upstream_weights: vec![],
                    https_redirect: None,
                    pool: Some(pb::UpstreamPool {
                        load_balancing: pb::LoadBalancing::LeastRequests.into(),
                        retries: 2,
                        health_check: None,
                        passive_health: Some(pb::PassiveHealth {
                            consecutive_failures: 0,
                            cooldown_ms: 5,
                        }),
                        limits: None,
                    }),
                }],
                rate_limit: None,
                upstream_response_timeout_ms: 0,
                body_limit_bytes: 100,
                trusted_proxies: vec!["10.0.0.0/8".into(), "::1/128".into()],
                log_level: "info".into(),
                default_tls_site: String::new(),
                merge_slashes: None,
                escaped_slashes: 0,
            }),
            certificates: vec![],
            acme_challenges: vec![],
        }
    }

    /// `snapshot()` with a TLS listener and a certificate for its site.
    fn tls_snapshot() -> pb::Snapshot {
        let mut s = snapshot();
        s.static_settings.as_mut().unwrap().listeners[0].tls = true;
        s.dynamic.as_mut().unwrap().sites[0].tls = pb::SiteTls::Files.into();
        let (chain_pem, key_pem) = certs::test_pem(&["a.example"]);
        s.certificates = vec![pb::Certificate {
            site: "a.example".into(),
            names: vec!["a.example".into()],
            chain_pem,
            key_pem,
            not_after_unix: 4_000_000_000,
            source: "files".into(),
        }];
        s
    }

    #[test]
    fn acme_challenges_convert_and_unknown_kinds_are_refused() {
        let mut s = snapshot();
        // As controld builds it: with the critical acmeIdentifier extension.
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).unwrap();
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&[7; 32])];
        let certificate_pem = params.self_signed(&key).unwrap().pem();
        let key_pem = key.serialize_pem();
        s.acme_challenges = vec![
            pb::AcmeChallenge {
                r#type: pb::AcmeChallengeType::Http01.into(),
                name: "a.example".into(),
                token: "tok-EN_1".into(),
                key_authorization: "tok-EN_1.thumb".into(),
                ..Default::default()
            },
            pb::AcmeChallenge {
                r#type: pb::AcmeChallengeType::TlsAlpn01.into(),
                name: "A.example".into(),
                certificate_pem,
                key_pem,
                ..Default::default()
            },
        ];
        let spec = Spec::try_from(s.clone()).unwrap();
        assert_eq!(spec.challenges.http["tok-EN_1"], "tok-EN_1.thumb");
        assert!(spec.challenges.tls_alpn.contains_key("a.example"));

        let mut bad = s.clone();
        bad.acme_challenges[0].token = "../x".into();
        assert!(matches!(
            Spec::try_from(bad),
            Err(SnapshotError::Challenge { .. })
        ));
        let mut unknown = s;
        unknown.acme_challenges[0].r#type = 99;
        let err = Spec::try_from(unknown).unwrap_err();
        assert!(err.to_string().contains("unknown challenge type"), "{err}");
    }

    #[test]
    fn tls_listeners_and_certificates_convert() {
        let mut s = tls_snapshot();
        s.dynamic.as_mut().unwrap().default_tls_site = "a.example".into();
        s.dynamic.as_mut().unwrap().sites[0].https_redirect = Some(false);
        let spec = Spec::try_from(s).unwrap();
        assert!(spec.statics.listeners[0].tls);
        let site = &spec.sites[0];
        let certificate = site.certificate.as_ref().unwrap();
        assert_eq!(certificate.names, ["a.example"]);
        assert_eq!(certificate.key.cert.len(), 1);
        assert!(!site.https_redirect);
        assert_eq!(spec.default_tls_site.as_deref(), Some("a.example"));
        assert!(
            !format!("{spec:?}").contains("PRIVATE KEY"),
            "Debug shows no key"
        );
        assert!(
            Spec::try_from(snapshot()).unwrap().sites[0].https_redirect,
            "absent means on"
        );
    }

    #[test]
    fn a_bad_certificate_refuses_the_snapshot() {
        // A key from another pair.
        let mut s = tls_snapshot();
        s.certificates[0].key_pem = certs::test_pem(&["a.example"]).1;
        let e = Spec::try_from(s).unwrap_err().to_string();
        assert_eq!(
            e,
            "certificate of site \"a.example\": the private key does not match the certificate"
        );
        assert!(!e.contains("BEGIN"), "no key material in the NACK");

        let mut s = tls_snapshot();
        s.certificates[0].key_pem = "junk".into();
        assert!(
            Spec::try_from(s)
                .unwrap_err()
                .to_string()
                .contains("no usable private key")
        );

        let mut s = tls_snapshot();
        s.certificates[0].chain_pem = String::new();
        assert!(
            Spec::try_from(s)
                .unwrap_err()
                .to_string()
                .contains("no certificate in the chain")
        );

        let mut s = tls_snapshot();
        s.certificates[0].site = "b.example".into();
        assert_eq!(
            Spec::try_from(s).unwrap_err().to_string(),
            "certificate of site \"b.example\": no site has this name"
        );

        let mut s = tls_snapshot();
        let twice = s.certificates[0].clone();
        s.certificates.push(twice);
        assert!(
            Spec::try_from(s)
                .unwrap_err()
                .to_string()
                .contains("more than one certificate")
        );

        let mut s = tls_snapshot();
        s.dynamic.as_mut().unwrap().default_tls_site = "nope.example".into();
        assert!(matches!(
            Spec::try_from(s),
            Err(SnapshotError::DefaultTlsSite { .. })
        ));
    }

    #[test]
    fn a_good_snapshot_converts() {
        let spec = Spec::try_from(snapshot()).unwrap();
        assert_eq!(spec.statics.shutdown_timeout, Duration::from_millis(1500));
        let prefixes: Vec<_> = spec.sites[0]
            .routes
            .iter()
            .map(|r| r.path_prefix.as_str())
            .collect();
        assert_eq!(prefixes, ["/api", "/"], "longest prefix first");
        let upstreams: Vec<_> = spec.sites[0].upstreams().map(ToString::to_string).collect();
        assert_eq!(upstreams, ["http://127.0.0.1:9000"]);
        assert_eq!(spec.sites[0].rate_limit.unwrap().burst.get(), 2);
        assert_eq!(spec.trusted_proxies.len(), 2);
        let pool = &spec.sites[0].pool;
        assert_eq!(
            (pool.policy, pool.retries, pool.passive),
            (Policy::LeastRequests, 2, None),
            "0 failures: no ejection"
        );
        assert_eq!(
            spec.statics.request_header_timeout,
            Duration::from_secs(30),
            "0 means the default"
        );
        assert_eq!(
            spec.statics.upstream_connect_timeout,
            Duration::from_millis(250)
        );
        assert_eq!(spec.upstream_response_timeout, Duration::from_secs(60));
        assert_eq!(
            spec.sites[0].upstream_response_timeout,
            Some(Duration::from_millis(700))
        );
        assert_eq!(spec.statics.max_request_headers, 100, "0 means the default");
        assert_eq!(
            spec.statics.max_request_header_bytes, 8192,
            "never below hyper's minimum"
        );
        assert_eq!(spec.statics.admin_address, None, "empty means none");

        let mut s = snapshot();
        s.static_settings.as_mut().unwrap().admin_address = "127.0.0.1:9901".into();
        let spec = Spec::try_from(s).unwrap();
        assert_eq!(
            spec.statics.admin_address,
            Some(SocketAddr::from(([127, 0, 0, 1], 9901)))
        );
    }

    #[test]
    fn values_that_would_exhaust_memory_or_corrupt_framing_are_refused() {
        let refused = |edit: &dyn Fn(&mut pb::Snapshot)| {
            let mut s = snapshot();
            edit(&mut s);
            Spec::try_from(s).unwrap_err().to_string()
        };
        let e = refused(&|s| {
            let site = &mut s.dynamic.as_mut().unwrap().sites[0];
            site.upstream_weights = vec![u32::MAX];
        });
        assert!(e.contains("weight"), "{e}");
        let e = refused(&|s| {
            let site = &mut s.dynamic.as_mut().unwrap().sites[0];
            site.upstreams = (0..200).map(|i| format!("http://127.0.0.{i}:80")).collect();
            site.upstream_weights = vec![1000; 200];
        });
        assert!(e.contains("add up to 200000"), "{e}");
        for name in [
            "content-length",
            "Transfer-Encoding",
            "connection",
            "upgrade",
        ] {
            let e = refused(&|s| {
                let route = &mut s.dynamic.as_mut().unwrap().sites[0].routes[0];
                if let Some(pb::route::Action::Respond(r)) = &mut route.action {
                    r.headers.push(pb::Header {
                        name: name.into(),
                        value: "1".into(),
                    });
                }
            });
            assert!(e.contains("set by proxyd itself"), "{name}: {e}");
        }
        let e = refused(&|s| {
            let site = &mut s.dynamic.as_mut().unwrap().sites[0];
            site.pool.as_mut().unwrap().retries = 1_000_000;
        });
        assert!(e.contains("retries"), "{e}");
        let e = refused(&|s| s.dynamic.as_mut().unwrap().escaped_slashes = 9);
        assert!(e.contains("escaped_slashes"), "{e}");
    }

    #[test]
    fn hardening_settings_default_when_absent_and_convert_when_set() {
        let spec = Spec::try_from(snapshot()).unwrap();
        assert_eq!(spec.statics.limits, ConnectionLimits::default());
        assert_eq!(spec.sites[0].pool.limits, UpstreamLimits::default());
        assert_eq!(spec.paths, PathRules::default());

        let mut s = snapshot();
        s.static_settings.as_mut().unwrap().connection_limits = Some(pb::ConnectionLimits {
            max_connections: 5,
            max_connections_per_ip: u32::MAX,
            http2_idle_timeout_ms: 1500,
            ..Default::default()
        });
        s.dynamic.as_mut().unwrap().escaped_slashes = pb::EscapedSlashes::Keep.into();
        s.dynamic.as_mut().unwrap().merge_slashes = Some(false);
        let spec = Spec::try_from(s).unwrap();
        assert_eq!(spec.statics.limits.max_connections, 5);
        assert_eq!(spec.statics.limits.max_connections_per_ip, None, "no cap");
        assert_eq!(
            spec.statics.limits.http2_idle_timeout,
            Duration::from_millis(1500)
        );
        assert_eq!(
            spec.statics.limits.http2_max_concurrent_streams, 100,
            "0 is the default"
        );
        assert!(spec.paths.keep_escaped_slashes && !spec.paths.merge_slashes);
    }

    #[test]
    fn what_this_build_cannot_do_is_refused() {
        let mut s = snapshot();
        s.dynamic.as_mut().unwrap().sites[0].tls = 42;
        assert_eq!(
            Spec::try_from(s).unwrap_err().to_string(),
            "sites[0]: unknown TLS mode 42"
        );

        let mut s = snapshot();
        s.dynamic.as_mut().unwrap().sites[0].upstreams = vec!["https://127.0.0.1:1".into()];
        assert!(
            Spec::try_from(s)
                .unwrap_err()
                .to_string()
                .contains("only http://")
        );

        let mut s = snapshot();
        let site = s.dynamic.as_ref().unwrap().sites[0].clone();
        s.dynamic.as_mut().unwrap().sites.push(site);
        assert!(matches!(
            Spec::try_from(s),
            Err(SnapshotError::DuplicateHostname { .. })
        ));

        let mut s = snapshot();
        s.dynamic.as_mut().unwrap().rate_limit = Some(pb::RateLimit {
            requests_per_second: 0,
            burst: 1,
        });
        assert!(matches!(
            Spec::try_from(s),
            Err(SnapshotError::RateLimit { .. })
        ));

        let mut s = snapshot();
        s.dynamic.as_mut().unwrap().sites[0].routes[0].action = None;
        assert!(
            Spec::try_from(s)
                .unwrap_err()
                .to_string()
                .contains("no action this proxyd knows")
        );

        let mut s = snapshot();
        s.dynamic.as_mut().unwrap().trusted_proxies = vec!["10.0.0.0/33".into()];
        assert!(matches!(
            Spec::try_from(s),
            Err(SnapshotError::TrustedProxy { .. })
        ));

        let mut s = snapshot();
        s.static_settings.as_mut().unwrap().listeners[0].name = "admin".into();
        assert_eq!(
            Spec::try_from(s).unwrap_err().to_string(),
            "listener name \"admin\" is reserved for the admin listener"
        );

        let mut s = snapshot();
        s.static_settings.as_mut().unwrap().admin_address = "localhost:9901".into();
        assert!(matches!(
            Spec::try_from(s),
            Err(SnapshotError::AdminAddress { .. })
        ));

        let mut s = snapshot();
        s.dynamic.as_mut().unwrap().sites[0]
            .pool
            .as_mut()
            .unwrap()
            .load_balancing = 9;
        assert!(
            Spec::try_from(s)
                .unwrap_err()
                .to_string()
                .contains("unknown load balancing policy 9")
        );

        let mut s = snapshot();
        s.dynamic.as_mut().unwrap().sites[0].upstream_weights = vec![1, 2];
        assert!(
            Spec::try_from(s)
                .unwrap_err()
                .to_string()
                .contains("2 weights for 1 upstreams")
        );

        let mut s = snapshot();
        s.dynamic = None;
        assert!(matches!(
            Spec::try_from(s),
            Err(SnapshotError::Missing { .. })
        ));
    }
}
