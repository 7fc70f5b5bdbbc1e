//! The config file as written: serde structs that mirror the TOML, before any validation.
//!
//! Unknown keys are not silently ignored: the loader records every key no struct here names and
//! reports each as an error (see `config::load`), so these structs do not deny them one at a time.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct FileConfig {
    pub body_limit_bytes: Option<SizeValue>,
    pub trusted_proxies: Vec<String>,
    pub upstream_response_timeout: Option<String>,
    pub default_tls_site: Option<String>,
    pub merge_slashes: Option<bool>,
    pub escaped_slashes: Option<String>,
    pub upstream_limits: Option<UpstreamLimitsFile>,
    pub rate_limit: Option<RateLimitFile>,
    pub logging: LoggingFile,
    pub sites: Vec<SiteFile>,
    pub control: ControlFile,
    pub proxy: ProxyFile,
    pub acme: Option<AcmeFile>,
    pub cluster: Option<ClusterFile>,
}

/// `[cluster]`: this host's place in a fleet (never published, like `[control]` and `[proxy]`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ClusterFile {
    pub etcd: Vec<String>,
    pub name: Option<String>,
    pub node: Option<String>,
    pub lease_ttl: Option<String>,
    pub tls: Option<ClusterTlsFile>,
    pub key_file: Option<String>,
}

/// `[cluster] tls = { ... }`: client TLS to etcd.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ClusterTlsFile {
    pub ca_file: Option<String>,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// `[rate_limit]` and `sites[].rate_limit`: both keys are required when the table is present.
#[derive(Debug, Deserialize)]
pub struct RateLimitFile {
    pub requests_per_second: i64,
    pub burst: i64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct LoggingFile {
    pub level: Option<String>,
    pub format: Option<String>,
}

/// `[[sites]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SiteFile {
    pub hostnames: Vec<String>,
    pub upstreams: Vec<UpstreamEntry>,
    pub load_balancing: Option<String>,
    pub retries: Option<i64>,
    pub health_check: Option<HealthCheckFile>,
    pub passive_health: Option<PassiveHealthFile>,
    pub tls: Option<TlsFile>,
    pub https_redirect: Option<bool>,
    pub rate_limit: Option<RateLimitFile>,
    pub body_limit_bytes: Option<SizeValue>,
    pub upstream_response_timeout: Option<String>,
    pub upstream_limits: Option<UpstreamLimitsFile>,
    pub upstream_protocol: Option<String>,
    pub upstream_tls: Option<UpstreamTlsFile>,
    pub request_headers: Option<HeaderRulesFile>,
    pub response_headers: Option<HeaderRulesFile>,
    pub routes: Vec<RouteFile>,
}

/// `upstream_tls = { ... }` of a site or a route: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpstreamTlsFile {
    pub ca_file: Option<String>,
    pub server_name: Option<String>,
    pub client_cert_file: Option<String>,
    pub client_key_file: Option<String>,
}

/// `request_headers` / `response_headers` of a site or a route.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HeaderRulesFile {
    /// Header name → value; any names, so not checked for unknown keys.
    pub set: BTreeMap<String, String>,
    pub add: BTreeMap<String, String>,
    pub remove: Vec<String>,
}

/// `[upstream_limits]` and `sites[].upstream_limits`: circuit breakers of each upstream; a key
/// left out takes the global table's value, then the default.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpstreamLimitsFile {
    pub max_connections: Option<i64>,
    pub max_pending_requests: Option<i64>,
    pub max_requests: Option<i64>,
    pub max_idle_connections: Option<i64>,
}

/// `[[sites.routes]]`: a path prefix, what else a request must match, exactly one action, and
/// the route's own settings.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RouteFile {
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    /// Header name → exact value; any names, so not checked for unknown keys.
    pub match_headers: Option<BTreeMap<String, String>>,
    pub upstreams: Option<Vec<UpstreamEntry>>,
    pub redirect: Option<RedirectFile>,
    pub respond: Option<RespondFile>,
    pub strip_prefix: Option<bool>,
    pub rewrite: Option<String>,
    pub upstream_protocol: Option<String>,
    pub upstream_tls: Option<UpstreamTlsFile>,
    pub request_headers: Option<HeaderRulesFile>,
    pub response_headers: Option<HeaderRulesFile>,
    pub upstream_response_timeout: Option<String>,
    pub retries: Option<i64>,
    pub body_limit_bytes: Option<SizeValue>,
    pub rate_limit: Option<RateLimitFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RedirectFile {
    pub location: Option<String>,
    pub status: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RespondFile {
    pub status: Option<i64>,
    pub body: Option<String>,
    /// Header name → value; any names, so not checked for unknown keys.
    pub headers: BTreeMap<String, String>,
}

/// An upstream: `"http://host:port"`, or `{ url = "http://host:port", weight = 3 }`.
#[derive(Debug)]
pub enum UpstreamEntry {
    Url(String),
    Table(UpstreamTableFile),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UpstreamTableFile {
    pub url: Option<String>,
    pub weight: Option<i64>,
}

/// `[sites.health_check]`: active checks of every upstream of the site.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct HealthCheckFile {
    pub path: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
}

/// `[sites.passive_health]`: ejection after consecutive failures of real requests.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PassiveHealthFile {
    pub consecutive_failures: Option<i64>,
    pub cooldown: Option<String>,
}

impl<'de> Deserialize<'de> for UpstreamEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = UpstreamEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a URL or a table { url = "...", weight = N }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UpstreamEntry, E> {
                Ok(UpstreamEntry::Url(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<UpstreamEntry, A::Error> {
                UpstreamTableFile::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(UpstreamEntry::Table)
            }
        }
        deserializer.deserialize_any(EntryVisitor)
    }
}

/// `tls = "acme"` or `tls = { cert_file = "...", key_file = "..." }`.
#[derive(Debug)]
pub enum TlsFile {
    Mode(String),
    Files(TlsFilesFile),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct TlsFilesFile {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ControlFile {
    pub socket: Option<String>,
    pub state_dir: Option<String>,
    pub allowed_uids: Vec<i64>,
    pub allowed_gids: Vec<i64>,
    pub data_plane_users: Option<Vec<String>>,
    pub metrics_address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ProxyFile {
    pub shutdown_timeout: Option<String>,
    pub max_request_headers: Option<i64>,
    pub request_header_timeout: Option<String>,
    pub upstream_connect_timeout: Option<String>,
    pub upstream_idle_timeout: Option<String>,
    pub upstream_h2_ping_interval: Option<String>,
    pub upstream_h2_ping_timeout: Option<String>,
    pub max_request_header_bytes: Option<SizeValue>,
    pub admin_address: Option<String>,
    pub tls_session_resumption: Option<bool>,
    pub listeners: Vec<ListenerFile>,
    pub max_connections: Option<i64>,
    pub max_connections_per_ip: Option<i64>,
    pub http2_max_concurrent_streams: Option<i64>,
    pub http2_keepalive_interval: Option<String>,
    pub http2_keepalive_timeout: Option<String>,
    pub http2_idle_timeout: Option<String>,
    pub tunnel_idle_timeout: Option<String>,
    pub tcp_keepalive: Option<String>,
    pub tls_handshake_timeout: Option<String>,
    pub request_body_timeout: Option<String>,
    pub response_send_timeout: Option<String>,
    pub upstream_body_timeout: Option<String>,
    pub request_body_min_rate: Option<SizeValue>,
    pub response_min_rate: Option<SizeValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ListenerFile {
    pub name: Option<String>,
    pub address: Option<String>,
    pub tls: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AcmeFile {
    pub directory_url: Option<String>,
    pub contact: Vec<String>,
    pub challenge: Option<String>,
    pub ca_roots: Option<String>,
}

/// A size: a number of bytes, or a string such as "512k", "10m", "1g" (powers of 1024).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizeValue {
    Bytes(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#"a size in bytes (10485760) or a string such as "10m""#)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SizeValue, E> {
                Ok(SizeValue::Bytes(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeValue, E> {
                Ok(SizeValue::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

impl<'de> Deserialize<'de> for TlsFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TlsVisitor;
        impl<'de> Visitor<'de> for TlsVisitor {
            type Value = TlsFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""acme" or a table { cert_file = "...", key_file = "..." }"#)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TlsFile, E> {
                Ok(TlsFile::Mode(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TlsFile, A::Error> {
                TlsFilesFile::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(TlsFile::Files)
            }
        }
        deserializer.deserialize_any(TlsVisitor)
    }
}

/// The keys a table accepts, read from the serde derive itself so that the list of known keys
/// (used for "did you mean" hints) can never drift from the structs above.
pub fn known_keys(table: TableKind) -> &'static [&'static str] {
    match table {
        TableKind::Root => fields_of::<FileConfig>(),
        TableKind::RateLimit => fields_of::<RateLimitFile>(),
        TableKind::Logging => fields_of::<LoggingFile>(),
        TableKind::Site => fields_of::<SiteFile>(),
        TableKind::SiteTls => fields_of::<TlsFilesFile>(),
        TableKind::Control => fields_of::<ControlFile>(),
        TableKind::Proxy => fields_of::<ProxyFile>(),
        TableKind::Listener => fields_of::<ListenerFile>(),
        TableKind::Acme => fields_of::<AcmeFile>(),
        TableKind::Route => fields_of::<RouteFile>(),
        TableKind::Redirect => fields_of::<RedirectFile>(),
        TableKind::Respond => fields_of::<RespondFile>(),
        TableKind::Upstream => fields_of::<UpstreamTableFile>(),
        TableKind::HealthCheck => fields_of::<HealthCheckFile>(),
        TableKind::PassiveHealth => fields_of::<PassiveHealthFile>(),
        TableKind::UpstreamLimits => fields_of::<UpstreamLimitsFile>(),
        TableKind::UpstreamTls => fields_of::<UpstreamTlsFile>(),
        TableKind::HeaderRules => fields_of::<HeaderRulesFile>(),
    }
}

/// Which table of the file a key path points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Root,
    RateLimit,
    Logging,
    Site,
    SiteTls,
    Control,
    Proxy,
    Listener,
    Acme,
    Route,
    Redirect,
    Respond,
    Upstream,
    HealthCheck,
    PassiveHealth,
    UpstreamLimits,
    UpstreamTls,
    HeaderRules,
}

impl TableKind {
    /// The table that holds the last key of `parents` (a key path without array indexes).
    pub fn of(parents: &[&str]) -> Option<TableKind> {
        Some(match parents {
            [] => TableKind::Root,
            ["rate_limit"] | ["sites", "rate_limit"] | ["sites", "routes", "rate_limit"] => {
                TableKind::RateLimit
            }
            ["logging"] => TableKind::Logging,
            ["sites"] => TableKind::Site,
            ["sites", "tls"] => TableKind::SiteTls,
            ["control"] => TableKind::Control,
            ["proxy"] => TableKind::Proxy,
            ["proxy", "listeners"] => TableKind::Listener,
            ["acme"] => TableKind::Acme,
            ["sites", "routes"] => TableKind::Route,
            ["sites", "routes", "redirect"] => TableKind::Redirect,
            ["sites", "routes", "respond"] => TableKind::Respond,
            ["sites", "upstreams"] | ["sites", "routes", "upstreams"] => TableKind::Upstream,
            ["sites", "health_check"] => TableKind::HealthCheck,
            ["sites", "passive_health"] => TableKind::PassiveHealth,
            ["upstream_limits"] | ["sites", "upstream_limits"] => TableKind::UpstreamLimits,
            ["sites", "upstream_tls"] | ["sites", "routes", "upstream_tls"] => {
                TableKind::UpstreamTls
            }
            ["sites", "request_headers" | "response_headers"]
            | ["sites", "routes", "request_headers" | "response_headers"] => TableKind::HeaderRules,
            _ => return None,
        })
    }
}

/// Asks a derived `Deserialize` for its field names by feeding it a deserializer that records
/// them and stops.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct FieldsDeserializer<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for FieldsDeserializer<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("fields recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldsDeserializer(&mut fields));
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_come_from_the_structs() {
        assert!(known_keys(TableKind::RateLimit).contains(&"requests_per_second"));
        assert!(known_keys(TableKind::Root).contains(&"sites"));
        assert!(known_keys(TableKind::Listener).contains(&"address"));
        assert!(known_keys(TableKind::SiteTls).contains(&"key_file"));
    }
}
