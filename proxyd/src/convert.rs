//! The edge of the data plane: a snapshot from the wire becomes a validated [`Spec`] here, with
//! `TryFrom`, or is refused with a reason that goes back to controld in a NACK. No other module
//! reads snapshot fields.

mod certs;
mod limits;
mod site;
mod upstream;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use proto::v1 as pb;

/// The name under which the ACK reports the admin listener; no `[[proxy.listeners]]` may use it.
pub use proto::ADMIN_LISTENER_NAME;

#[cfg(test)]
pub use certs::test_certificate;
pub use certs::{Challenges, SiteCertificate};
pub use limits::{ConnectionLimits, PathRules, UpstreamLimits};
use site::site_spec;
pub use site::*;
pub use upstream::*;

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

/// The process-wide settings of a snapshot (`static_settings` on the wire, a historical name):
/// listeners, admin listener, drain deadline and per-connection settings. Applied from every
/// snapshot; the connections accepted after it get the new ones.
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
    /// Clients may resume TLS sessions.
    pub tls_session_resumption: bool,
    /// How long a client may take to send a request head.
    pub request_header_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub upstream_idle_timeout: Duration,
    /// Silence on an HTTP/2 upstream connection with requests open before it is PINGed, and
    /// how long the PING may go unanswered.
    pub upstream_h2_ping: (Duration, Duration),
    /// Caps and deadlines on client connections.
    pub limits: ConnectionLimits,
}

/// Used when a snapshot leaves the request-head limits at 0.
const DEFAULT_MAX_REQUEST_HEADERS: usize = 100;
const DEFAULT_MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;
const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// As controld's (above grpc-go's keepalive enforcement, 5 minutes by default).
pub const DEFAULT_UPSTREAM_H2_PING_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_UPSTREAM_H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
const DEFAULT_UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// hyper's read buffer cannot be smaller.
const MIN_HEADER_BYTES: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub name: String,
    pub address: SocketAddr,
    /// Terminates TLS.
    pub tls: bool,
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
                tls_session_resumption: !statics.disable_tls_session_resumption,
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
                upstream_h2_ping: (
                    millis_or(
                        statics.upstream_h2_ping_interval_ms,
                        DEFAULT_UPSTREAM_H2_PING_INTERVAL,
                    ),
                    millis_or(
                        statics.upstream_h2_ping_timeout_ms,
                        DEFAULT_UPSTREAM_H2_PING_TIMEOUT,
                    ),
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

#[cfg(test)]
mod tests;
