//! How a route reaches its upstreams (protocol, TLS) and edits what passes (header rules), as
//! the data plane checks them. A route's settings override its site's field by field.

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use proto::v1 as pb;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

pub use crate::upstreams::Protocol;
use crate::upstreams::TlsConnector;

use super::FRAMING_HEADERS;

/// Protocol and TLS of a route's upstream connections. Part of an upstream's identity: a
/// change gets new connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSpec {
    pub protocol: Protocol,
    /// For https:// upstreams; `None` for http:// ones.
    pub tls: Option<UpstreamTls>,
}

/// What identifies a [`ConnectionSpec`]: the snapshot's fields (their SHA-256, so that no key
/// material sits in a map key that might be printed), not the rustls config built from them
/// (which holds a session cache).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectionKey {
    protocol: Protocol,
    tls: Option<[u8; 32]>,
}

impl ConnectionSpec {
    pub fn key(&self) -> ConnectionKey {
        use sha2::Digest;
        ConnectionKey {
            protocol: self.protocol,
            tls: self.tls.as_ref().map(|t| {
                let mut digest = sha2::Sha256::new();
                for field in [
                    &t.wire.ca_pem,
                    &t.wire.server_name,
                    &t.wire.client_cert_pem,
                    &t.wire.client_key_pem,
                ] {
                    // Length-prefixed, so that no two field lists hash alike.
                    digest.update((field.len() as u64).to_be_bytes());
                    digest.update(field.as_bytes());
                }
                digest.finalize().into()
            }),
        }
    }
}

impl Default for ConnectionSpec {
    fn default() -> Self {
        ConnectionSpec {
            protocol: Protocol::Auto,
            tls: None,
        }
    }
}

/// TLS to https:// upstreams, as the snapshot says it and as rustls uses it.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The snapshot's fields (what identifies it).
    wire: Arc<pb::UpstreamTls>,
    pub connector: TlsConnector,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client key stays out.
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.connector.server_name)
            .field("custom_roots", &!self.wire.ca_pem.is_empty())
            .field("client_certificate", &!self.wire.client_cert_pem.is_empty())
            .finish()
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.wire == other.wire
    }
}

impl Eq for UpstreamTls {}

/// The protocol a route asks for: its own, else its site's; `None` = unspecified.
fn protocol(value: i32) -> Result<Option<Protocol>, String> {
    Ok(match pb::UpstreamProtocol::try_from(value) {
        Ok(pb::UpstreamProtocol::Unspecified) => None,
        Ok(pb::UpstreamProtocol::Http1) => Some(Protocol::Http1),
        Ok(pb::UpstreamProtocol::H2) => Some(Protocol::H2),
        Ok(pb::UpstreamProtocol::H2c) => Some(Protocol::H2c),
        Ok(pb::UpstreamProtocol::Auto) => Some(Protocol::Auto),
        Err(_) => return Err(format!("unknown upstream protocol {value}")),
    })
}

/// The settings for upstreams of `scheme` on a route: the route's fields, else the site's.
pub fn connection(
    site: Option<&pb::UpstreamConnection>,
    route: Option<&pb::UpstreamConnection>,
    https: bool,
) -> Result<ConnectionSpec, String> {
    let chosen = match (
        route.map(|r| protocol(r.protocol)).transpose()?.flatten(),
        site.map(|s| protocol(s.protocol)).transpose()?.flatten(),
    ) {
        (Some(p), _) | (None, Some(p)) => p,
        (None, None) => Protocol::Auto,
    };
    match (chosen, https) {
        (Protocol::H2, false) => {
            return Err(
                "upstream_protocol h2 needs https:// upstreams (h2c is HTTP/2 without TLS)".into(),
            );
        }
        (Protocol::H2c, true) => {
            return Err(
                "upstream_protocol h2c needs http:// upstreams (h2 is HTTP/2 over TLS)".into(),
            );
        }
        _ => {}
    }
    if !https {
        return Ok(ConnectionSpec {
            protocol: chosen,
            tls: None,
        });
    }
    let wire = route
        .and_then(|r| r.tls.as_ref())
        .or_else(|| site.and_then(|s| s.tls.as_ref()))
        .cloned()
        .unwrap_or_default();
    Ok(ConnectionSpec {
        protocol: chosen,
        tls: Some(upstream_tls(wire, chosen)?),
    })
}

fn upstream_tls(wire: pb::UpstreamTls, protocol: Protocol) -> Result<UpstreamTls, String> {
    let roots = if wire.ca_pem.is_empty() {
        crate::upstreams::system_roots()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(wire.ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("upstream_tls CA: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("upstream_tls CA: {e}"))?;
        }
        if roots.is_empty() {
            return Err("upstream_tls CA: no certificate".into());
        }
        Arc::new(roots)
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("upstream TLS: {e}"))?
        .with_root_certificates(roots);
    let mut config = match (
        wire.client_cert_pem.is_empty(),
        wire.client_key_pem.is_empty(),
    ) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let chain = CertificateDer::pem_slice_iter(wire.client_cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("upstream_tls client certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(wire.client_key_pem.as_bytes())
                .map_err(|_| "upstream_tls client key: no readable private key".to_owned())?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("upstream_tls client certificate: {e}"))?
        }
        _ => {
            return Err(
                "upstream_tls: a client certificate needs its key, and the other way round".into(),
            );
        }
    };
    config.alpn_protocols = protocol.alpn();
    let server_name = if wire.server_name.is_empty() {
        None
    } else {
        Some(
            ServerName::try_from(wire.server_name.clone())
                .map_err(|_| format!("upstream_tls: invalid server name {:?}", wire.server_name))?,
        )
    };
    Ok(UpstreamTls {
        wire: Arc::new(wire),
        connector: TlsConnector {
            config: Arc::new(config),
            server_name,
        },
    })
}

/// One piece of a header value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    ClientIp,
    RequestId,
    Host,
    Scheme,
}

/// A header value, fixed or with placeholders filled per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Template {
    Fixed(HeaderValue),
    Filled(Vec<Piece>),
}

/// Edits to a message's headers, applied as remove, set, add.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderRules {
    pub remove: Vec<HeaderName>,
    pub set: Vec<(HeaderName, Template)>,
    pub add: Vec<(HeaderName, Template)>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// Checks a snapshot's rules: valid names and values, nothing that frames the message or
/// belongs to one hop, known placeholders.
pub fn header_rules(wire: Option<&pb::HeaderRules>, request: bool) -> Result<HeaderRules, String> {
    let Some(wire) = wire else {
        return Ok(HeaderRules::default());
    };
    let name = |raw: &str, may_be_host: bool| {
        let name = HeaderName::from_bytes(raw.as_bytes())
            .map_err(|_| format!("header rules: invalid header name {raw:?}"))?;
        let host_upstream = name == http::header::HOST && request && may_be_host;
        if FRAMING_HEADERS.contains(&name.as_str()) && !host_upstream {
            return Err(format!("header rules: {raw:?} cannot be changed this way"));
        }
        Ok(name)
    };
    let pairs = |list: &[pb::Header], may_be_host: bool| {
        list.iter()
            .map(|h| Ok((name(&h.name, may_be_host)?, template(&h.name, &h.value)?)))
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(HeaderRules {
        remove: wire
            .remove
            .iter()
            .map(|n| name(n, false))
            .collect::<Result<_, _>>()?,
        set: pairs(&wire.set, true)?,
        add: pairs(&wire.add, false)?,
    })
}

/// A header value with its placeholders. Errors name the header, never quote the value: it may
/// be a credential, and NACK texts reach logs and `proxyctl status`.
fn template(header: &str, raw: &str) -> Result<Template, String> {
    if !raw.contains('{') {
        return HeaderValue::from_str(raw)
            .map(Template::Fixed)
            .map_err(|_| format!("header rules: invalid value for header {header:?}"));
    }
    let mut pieces = Vec::new();
    let mut rest = raw;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Text(rest[..open].to_owned()));
        }
        let Some(close) = rest[open..].find('}') else {
            return Err(format!(
                "header rules: unclosed placeholder in the value of header {header:?}"
            ));
        };
        pieces.push(match &rest[open + 1..open + close] {
            "client_ip" => Piece::ClientIp,
            "request_id" => Piece::RequestId,
            "host" => Piece::Host,
            "scheme" => Piece::Scheme,
            other => return Err(format!("header rules: unknown placeholder {{{other}}}")),
        });
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    for piece in &pieces {
        if let Piece::Text(text) = piece
            && HeaderValue::from_str(text).is_err()
        {
            return Err(format!("header rules: invalid value for header {header:?}"));
        }
    }
    Ok(Template::Filled(pieces))
}

/// How a route changes the path it sends upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Rewrite {
    #[default]
    Keep,
    /// The matched prefix goes.
    Strip,
    /// The matched prefix is replaced by this.
    Replace(String),
}

pub fn rewrite(route: &pb::Route) -> Result<Rewrite, String> {
    match (&route.rewrite, route.strip_prefix) {
        (None, false) => Ok(Rewrite::Keep),
        (None, true) => Ok(Rewrite::Strip),
        (Some(_), true) => Err("strip_prefix and rewrite together".into()),
        // A valid path of its own (`<`, `"`, controls are not): one that is not could only be
        // dropped for the original path at request time.
        (Some(to), false)
            if to.starts_with('/')
                && !to.contains(['?', '#', ' '])
                && http::uri::PathAndQuery::try_from(to.as_str()).is_ok() =>
        {
            Ok(Rewrite::Replace(to.clone()))
        }
        (Some(to), false) => Err(format!("invalid rewrite {to:?}")),
    }
}
