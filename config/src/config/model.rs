//! The validated configuration: types that cannot hold a wrong value. Built only by
//! `config::validate`; everything downstream (reloader, snapshot, diff) works on these.

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

mod cluster;
mod routing;

pub use cluster::*;
pub use routing::*;

/// A whole, valid config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub dynamic: DynamicConfig,
    pub statics: StaticConfig,
}

impl Config {
    /// One warning per certificate that expires within [`super::EXPIRY_WARNING`] of `now`: the
    /// sites' own, then the client certificates they and their routes show upstreams.
    pub fn certificate_warnings(&self, now: SystemTime) -> Vec<String> {
        let sites = self.dynamic.sites.iter().filter_map(|s| {
            let certificate = s.tls.certificate()?;
            super::certs::expiry_warning(s.name(), certificate, now)
        });
        let clients = self.dynamic.sites.iter().flat_map(|s| {
            let own = client_certificate(&s.upstream).map(|c| (String::new(), c));
            let routes = s.routes.iter().filter_map(|r| match &r.action {
                RouteAction::Proxy(proxy) => client_certificate(&proxy.upstream)
                    .map(|c| (format!(" route {}", r.label()), c)),
                _ => None,
            });
            own.into_iter().chain(routes).filter_map(move |(route, c)| {
                let what = format!(
                    "the upstream client certificate of site {}{route}",
                    s.name()
                );
                super::certs::expiry_warning_of(&what, c, now)
            })
        });
        sites.chain(clients).collect()
    }
}

/// The part applied live on every reload: the heart of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicConfig {
    pub sites: Vec<Site>,
    /// `None`: no rate limit unless a site sets its own.
    pub rate_limit: Option<RateLimit>,
    pub body_limit_bytes: u64,
    /// Peers whose forwarding headers are kept.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// For sites without their own.
    pub upstream_response_timeout: Duration,
    /// A tracing filter directive ("info", "proxyd=debug,warn").
    pub log_level: String,
    /// The name (first hostname) of the site with TLS whose certificate a handshake without a
    /// known SNI gets; `None`: such handshakes fail.
    pub default_tls_site: Option<String>,
    /// Runs of `/` in request paths are merged before routing.
    pub merge_slashes: bool,
    /// What an encoded slash (`%2F`) in a request path gets.
    pub escaped_slashes: EscapedSlashes,
    /// `[upstream_limits]`: the circuit breakers of upstreams of sites without their own.
    pub upstream_limits: UpstreamLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// 400 Bad Request.
    Reject,
    /// Routed and forwarded as `%2F`, never decoded.
    Keep,
}

impl EscapedSlashes {
    pub fn as_str(self) -> &'static str {
        match self {
            EscapedSlashes::Reject => "reject",
            EscapedSlashes::Keep => "keep",
        }
    }
}

/// Circuit breakers of each upstream (Envoy's per-cluster limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamLimits {
    pub max_connections: u32,
    pub max_pending_requests: u32,
    pub max_requests: u32,
    pub max_idle_connections: u32,
}

impl fmt::Display for UpstreamLimits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "max_connections {}, max_pending_requests {}, max_requests {}, max_idle_connections {}",
            self.max_connections,
            self.max_pending_requests,
            self.max_requests,
            self.max_idle_connections
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    /// Never empty; unique across all sites.
    pub hostnames: Vec<Hostname>,
    /// The default route's upstreams (path prefix "/"); may be empty when `routes` is not.
    pub upstreams: Vec<Upstream>,
    /// How every route of the site balances and checks its upstreams.
    pub pool: PoolConfig,
    /// Path-prefix routes, in file order; prefixes unique within the site.
    pub routes: Vec<Route>,
    pub tls: SiteTls,
    /// Plain-HTTP requests get a 308 to https:// when the site has a certificate.
    pub https_redirect: bool,
    pub rate_limit: Option<RateLimit>,
    pub body_limit_bytes: Option<u64>,
    pub upstream_response_timeout: Option<Duration>,
    /// How the site's routes reach their upstreams (a route may override each field).
    pub upstream: UpstreamConnection,
    /// Applied to every proxied request, before a route's own.
    pub request_headers: HeaderRules,
    /// Applied to every proxied response, before a route's own.
    pub response_headers: HeaderRules,
}

fn client_certificate(connection: &UpstreamConnection) -> Option<&Certificate> {
    let client = connection.tls.as_ref()?.client_certificate.as_ref()?;
    Some(&client.certificate)
}

impl Site {
    /// How reports and diffs name a site: its first hostname.
    pub fn name(&self) -> &str {
        self.hostnames.first().map(Hostname::as_str).unwrap_or("")
    }
}

/// Requests whose path starts with `path_prefix` (and that have one of `methods` and every one
/// of `match_headers`, when set) get `action`. Unique within the site by prefix, methods and
/// match headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub path_prefix: String,
    /// Upper case, sorted; empty: every method.
    pub methods: Vec<String>,
    /// Name (lower case) → exact value, sorted by name; empty: no header condition.
    pub match_headers: Vec<(String, String)>,
    pub action: RouteAction,
    /// Overrides of the site's (else the global) settings; `None`: the site's.
    pub rate_limit: Option<RateLimit>,
    pub body_limit_bytes: Option<u64>,
}

impl Route {
    /// How reports and diffs name a route: `/api`, with its methods and match headers when it
    /// has any (`/api GET,HEAD x-canary=1`). A header value that looks secret is left out.
    pub fn label(&self) -> String {
        let mut label = self.path_prefix.clone();
        if !self.methods.is_empty() {
            label.push(' ');
            label.push_str(&self.methods.join(","));
        }
        for (name, value) in &self.match_headers {
            let value = if crate::redact::header_looks_secret(name) {
                "<redacted>"
            } else {
                value
            };
            label.push_str(&format!(" {name}={value}"));
        }
        label
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteAction {
    /// Boxed: far larger than the other actions (its TLS settings hold certificates).
    Proxy(Box<ProxyRoute>),
    /// `location` may hold {scheme}, {host} and {path}.
    Redirect { location: String, status: u16 },
    Respond {
        status: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
}

/// An upstream and its share of the traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub url: UpstreamUrl,
    /// 1 unless the site balances with weighted round robin.
    pub weight: u32,
}

impl Upstream {
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.url.fmt(f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub load_balancing: LoadBalancing,
    /// Further upstreams tried when one fails in a way that is safe to retry.
    pub retries: u32,
    pub health_check: Option<HealthCheck>,
    /// `None`: requests never eject an upstream.
    pub passive_health: Option<PassiveHealth>,
    /// The site's own `upstream_limits`, or the global ones.
    pub limits: UpstreamLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancing {
    RoundRobin,
    WeightedRoundRobin,
    /// Power of two choices on outstanding requests.
    LeastRequests,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    pub consecutive_failures: u32,
    pub cooldown: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SiteTls {
    None,
    /// Read from the files at every load, and checked.
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
        certificate: Certificate,
    },
    /// Issued and renewed through ACME by controld (`crate::acme`); the certificate is not part
    /// of the config but of the ACME overlay of the snapshot.
    Acme,
}

impl SiteTls {
    /// The certificate the site serves, when it has one.
    pub fn certificate(&self) -> Option<&Certificate> {
        match self {
            SiteTls::Files { certificate, .. } => Some(certificate),
            SiteTls::None | SiteTls::Acme => None,
        }
    }
}

/// A certificate chain and its private key, checked: readable PEM, the key matches the leaf; for
/// a site's files also: the leaf's names cover every hostname of the site, not expired.
/// Its `Debug` leaves the key out.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    /// The leaf's subjectAltName DNS names, lower case (`*.example.com` for a wildcard).
    pub names: Vec<String>,
    /// As read from `cert_file`: leaf first, then intermediates.
    pub chain_pem: String,
    /// As read from `key_file`. Secret: never logged, never shown by GetConfig.
    pub key_pem: String,
    /// The leaf's notBefore.
    pub not_before: SystemTime,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
    /// The leaf's serial number, hex.
    pub serial: String,
}

impl Certificate {
    /// The SHA-256 fingerprint of the leaf (the first certificate of `chain_pem`), as
    /// [`sha256_fingerprint`] writes it; `None` when the chain holds no readable certificate,
    /// which a checked `Certificate` never does.
    pub fn fingerprint(&self) -> Option<String> {
        use rustls_pki_types::pem::PemObject;
        let leaf =
            rustls_pki_types::CertificateDer::from_pem_slice(self.chain_pem.as_bytes()).ok()?;
        Some(sha256_fingerprint(&leaf))
    }
}

/// SHA-256 of a certificate's DER as upper-case hex pairs joined by `:`, the way
/// `openssl x509 -noout -fingerprint -sha256` prints it.
pub fn sha256_fingerprint(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("serial", &self.serial)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests_per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// A lower-case DNS name without port or trailing dot, or a wildcard `*.example.com` that matches
/// exactly one more label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

impl Hostname {
    /// Checks and normalizes (lower-cases) a hostname.
    pub fn parse(raw: &str) -> Result<Hostname, String> {
        let name = raw.to_ascii_lowercase();
        if name.is_empty() || name.len() > 253 {
            return Err(format!(
                "invalid hostname {raw:?}: must be 1 to 253 characters"
            ));
        }
        let labels = match name.strip_prefix("*.") {
            Some(rest) if rest.contains('.') => rest,
            Some(_) => {
                return Err(format!(
                    "invalid hostname {raw:?}: a wildcard needs at least two labels after \"*.\""
                ));
            }
            None => &name,
        };
        for label in labels.split('.') {
            let valid = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !valid {
                return Err(format!(
                    "invalid hostname {raw:?}: labels are 1 to 63 letters, digits or '-', \
                     separated by '.', without a port"
                ));
            }
        }
        Ok(Hostname(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An upstream origin: `http://host:port` or `https://host:port`, normalized (explicit port,
/// no path).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamUrl(String);

impl UpstreamUrl {
    pub fn parse(raw: &str) -> Result<UpstreamUrl, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("invalid upstream URL {raw:?}: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "invalid upstream URL {raw:?}: the scheme must be http or https"
            ));
        }
        let Some(host) = url.host_str() else {
            return Err(format!("invalid upstream URL {raw:?}: no host"));
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!(
                "invalid upstream URL {raw:?}: credentials are not allowed in the URL"
            ));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "invalid upstream URL {raw:?}: only scheme, host and port are allowed (no path or query)"
            ));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        Ok(UpstreamUrl(format!("{}://{}:{}", url.scheme(), host, port)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        self.0.split_once("://").map_or("", |(scheme, _)| scheme)
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Settings that take effect only when a daemon starts. A reload that changes one applies the
/// dynamic part and warns, naming each changed field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConfig {
    pub control: ControlConfig,
    pub proxy: ProxyConfig,
    pub log_format: LogFormat,
    pub acme: Option<AcmeConfig>,
    /// This host's place in a fleet; `None`: a single host, as before.
    pub cluster: Option<ClusterConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Besides root and controld's own user: who may make changing calls and subscribe.
    pub allowed_uids: Vec<u32>,
    /// Primary groups (as SO_PEERCRED reports them) allowed the same.
    pub allowed_gids: Vec<u32>,
    /// Users (names, or uids as digits) that run data planes: they may Subscribe and make no
    /// other call, read-only ones included.
    pub data_plane_users: Vec<String>,
    /// Where controld serves `/metrics`; `None`: nowhere.
    pub metrics_address: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    pub shutdown_timeout: Duration,
    pub max_request_headers: u32,
    pub request_header_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    /// Silence on an HTTP/2 upstream connection with requests open before it is PINGed.
    pub upstream_h2_ping_interval: Duration,
    /// How long that PING may go unanswered before the connection is closed.
    pub upstream_h2_ping_timeout: Duration,
    pub max_request_header_bytes: u64,
    pub admin_address: Option<SocketAddr>,
    /// Clients may resume a TLS session (TLS 1.3 tickets, the TLS 1.2 session cache) rather
    /// than run a full handshake.
    pub tls_session_resumption: bool,
    /// Never empty; names and addresses unique.
    pub listeners: Vec<ListenerConfig>,
    /// Caps and deadlines on client connections.
    pub limits: ConnectionLimits,
}

/// What one client connection may hold and for how long (docs/security.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: u32,
    /// `None`: no per-client cap.
    pub max_connections_per_ip: Option<u32>,
    pub http2_max_concurrent_streams: u32,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    pub http2_idle_timeout: Duration,
    pub tunnel_idle_timeout: Duration,
    pub tcp_keepalive: Duration,
    pub tls_handshake_timeout: Duration,
    pub request_body_timeout: Duration,
    pub response_send_timeout: Duration,
    pub upstream_body_timeout: Duration,
    /// Bytes per second a request body must average once `request_body_timeout` has passed;
    /// 0: no minimum.
    pub request_body_min_rate: u64,
    /// Bytes per second a response must average while it waits on the client, once
    /// `response_send_timeout` has passed; 0: no minimum.
    pub response_min_rate: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub address: SocketAddr,
    pub tls: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    pub directory_url: String,
    pub contact: Vec<String>,
    pub challenge: AcmeChallenge,
    pub ca_roots: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    Http01,
    TlsAlpn01,
}

impl AcmeChallenge {
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::Http01 => "http-01",
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_normalized_and_checked() {
        assert_eq!(
            Hostname::parse("WWW.Example.com").unwrap().as_str(),
            "www.example.com"
        );
        assert!(Hostname::parse("example.com:80").is_err());
        assert!(Hostname::parse("-bad.example").is_err());
        assert!(Hostname::parse("a..b").is_err());
        assert!(Hostname::parse("").is_err());
        assert_eq!(
            Hostname::parse("*.Example.com").unwrap().as_str(),
            "*.example.com"
        );
        assert!(Hostname::parse("*.com").is_err());
        assert!(Hostname::parse("a.*.example.com").is_err());
        assert!(Hostname::parse("*").is_err());
    }

    #[test]
    fn upstream_urls_are_normalized_and_checked() {
        assert_eq!(
            UpstreamUrl::parse("http://127.0.0.1").unwrap().as_str(),
            "http://127.0.0.1:80"
        );
        assert_eq!(
            UpstreamUrl::parse("https://up.internal/").unwrap().as_str(),
            "https://up.internal:443"
        );
        assert!(UpstreamUrl::parse("ftp://x").is_err());
        assert!(UpstreamUrl::parse("http://x/path").is_err());
        assert!(UpstreamUrl::parse("http://u:p@x").is_err());
        assert!(UpstreamUrl::parse("127.0.0.1:80").is_err());
    }
}
