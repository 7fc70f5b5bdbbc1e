//! The upstream side of sites and routes: how proxyd connects to upstreams (protocol, TLS), the
//! header rules applied on the way there and back, and what a proxying route changes (path,
//! overrides of its site's settings).

use std::path::PathBuf;
use std::time::Duration;

use super::{Certificate, Upstream};

/// `upstream_protocol`: how requests travel to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 over TLS: https:// upstreams only.
    H2,
    /// HTTP/2 with prior knowledge over plain TCP: http:// upstreams only.
    H2c,
    /// https://: ALPN picks h2 or HTTP/1.1; http://: HTTP/1.1. The default.
    Auto,
}

impl UpstreamProtocol {
    /// Every value, as written in the file.
    pub const ALL: [UpstreamProtocol; 4] = [
        UpstreamProtocol::Http1,
        UpstreamProtocol::H2,
        UpstreamProtocol::H2c,
        UpstreamProtocol::Auto,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::Auto => "auto",
        }
    }
}

/// How a site's (or a route's) requests reach their upstreams. On a route, each field the route
/// leaves `None` is its site's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamConnection {
    /// `None`: not set here (a route: the site's; a site: auto).
    pub protocol: Option<UpstreamProtocol>,
    /// `None`: not set here (a route: the site's; a site: the system's roots, the URL's host).
    pub tls: Option<UpstreamTls>,
}

impl UpstreamConnection {
    pub fn is_empty(&self) -> bool {
        self.protocol.is_none() && self.tls.is_none()
    }
}

/// `upstream_tls`: TLS to https:// upstreams, its files read and checked at every load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamTls {
    /// `None`: the system's roots.
    pub ca: Option<CaCertificates>,
    /// SNI and the name the upstream's certificate is verified against, lower case; `None`: the
    /// URL's host.
    pub server_name: Option<String>,
    /// Mutual TLS; `None`: no client certificate.
    pub client_certificate: Option<ClientCertificate>,
}

/// `upstream_tls.ca_file`, read: at least one certificate, each parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCertificates {
    pub file: PathBuf,
    /// The file's text (PEM).
    pub pem: String,
    /// How many certificates it holds.
    pub count: usize,
}

/// `upstream_tls.client_cert_file` and `client_key_file`, read and checked: readable PEM, the
/// key matches the leaf, not expired. Its `Debug` (the certificate's) leaves the key out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub certificate: Certificate,
}

/// `request_headers` / `response_headers`: applied in the order remove, set, add. Names lower
/// case; values may hold `{client_ip}`, `{request_id}`, `{host}` and `{scheme}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// In file order.
    pub remove: Vec<String>,
    /// In the order of their names.
    pub set: Vec<(String, String)>,
    /// In the order of their names.
    pub add: Vec<(String, String)>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// What a proxying route does to the path it sends upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PathRewrite {
    /// The path as requested.
    #[default]
    Keep,
    /// `strip_prefix = true`: the matched prefix removed ("/" when nothing is left).
    StripPrefix,
    /// `rewrite = "/v2/"`: the matched prefix replaced by this (starts with '/').
    Replace(String),
}

/// A route that proxies: its upstreams, its path rewrite, and its overrides of the site's
/// upstream settings (`None` / empty: the site's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyRoute {
    /// Never empty.
    pub upstreams: Vec<Upstream>,
    pub path: PathRewrite,
    pub upstream: UpstreamConnection,
    /// Applied after the site's.
    pub request_headers: HeaderRules,
    /// Applied after the site's.
    pub response_headers: HeaderRules,
    pub upstream_response_timeout: Option<Duration>,
    pub retries: Option<u32>,
}
