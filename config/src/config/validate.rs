//! Turns the file as written into the validated model, collecting every problem with its key
//! path instead of stopping at the first.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::certs;
use super::file::{
    FileConfig, HealthCheckFile, ListenerFile, RateLimitFile, RouteFile, SiteFile, SizeValue,
    TlsFile, UpstreamEntry,
};
use super::locate::KeyPath;
use super::model::*;

mod hardening;
mod routes;
mod sites;
mod statics;
mod tls;
mod upstream;

pub use hardening::DEFAULT_UPSTREAM_LIMITS;
use routes::routes;
use sites::sites;
use statics::{acme, cluster, control, proxy};
use tls::default_tls_site;

/// Default `body_limit_bytes`: 10 MiB.
pub const DEFAULT_BODY_LIMIT_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_SOCKET: &str = "/run/controld/control.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/controld";
/// The user `deploy/proxyd.service` runs proxyd as: `control.data_plane_users` when unset.
pub const DEFAULT_DATA_PLANE_USER: &str = "proxyd";
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Further upstreams tried when one fails safely (connect errors, idempotent requests).
pub const DEFAULT_RETRIES: u32 = 1;
/// Like Envoy's outlier detection: five failures in a row eject an upstream for a while.
pub const DEFAULT_PASSIVE_HEALTH: PassiveHealth = PassiveHealth {
    consecutive_failures: 5,
    cooldown: Duration::from_secs(10),
};
/// How long a client may take to send a request head (slowloris protection).
pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Below the keep-alive timeouts common upstream servers use (nginx 75 s, Apache 5 s, Node 5 s),
/// so proxyd closes an idle pooled connection before the upstream does.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Above grpc-go's default keepalive enforcement (a client that PINGs a silent connection more
/// often than every 5 minutes is sent GOAWAY `too_many_pings`).
pub const DEFAULT_UPSTREAM_H2_PING_INTERVAL: Duration = Duration::from_secs(300);
pub const DEFAULT_UPSTREAM_H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
pub const DEFAULT_UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Header fields a request head may have (nginx and HAProxy allow about 100).
pub const DEFAULT_MAX_REQUEST_HEADERS: u32 = 100;
/// Bytes a request head may take: 64 KiB, like HAProxy's default buffer.
pub const DEFAULT_MAX_REQUEST_HEADER_BYTES: u64 = 64 * 1024;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// A problem found by validation, before it is located in the file.
#[derive(Debug)]
pub struct Problem {
    pub path: KeyPath,
    pub message: String,
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, path: KeyPath, message: impl Into<String>) {
        self.0.push(Problem {
            path,
            message: message.into(),
        });
    }
}

/// What validation needs besides the file itself, read beforehand: validation does no I/O.
#[derive(Debug)]
pub struct Inputs<'a> {
    /// Certificates are checked against this moment.
    pub now: SystemTime,
    /// The contents of the certificate files the config names ([`certs::read_files`]).
    pub files: &'a certs::Files,
}

/// Validates all of `file` against `inputs`; returns every problem found. Pure: no file, no
/// clock, no network.
pub fn validate(file: FileConfig, inputs: &Inputs<'_>) -> Result<Config, Vec<Problem>> {
    let mut p = Problems::default();
    let root = KeyPath::root();

    let body_limit_bytes = match &file.body_limit_bytes {
        Some(size) => body_limit(size, &root.key("body_limit_bytes"), &mut p),
        None => DEFAULT_BODY_LIMIT_BYTES,
    };
    let rate_limit = file
        .rate_limit
        .as_ref()
        .and_then(|rl| rate_limit(rl, &root.key("rate_limit"), &mut p));
    let log_level = file
        .logging
        .level
        .clone()
        .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned());
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&log_level) {
        p.push(
            root.key("logging").key("level"),
            format!("invalid log level {log_level:?}: {e}"),
        );
    }
    let log_format = match file.logging.format.as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            p.push(
                root.key("logging").key("format"),
                format!("invalid log format {other:?}: expected \"json\" or \"text\""),
            );
            LogFormat::Json
        }
    };

    let statics = StaticConfig {
        control: control(&file, &mut p),
        proxy: proxy(&file, &mut p),
        log_format,
        acme: acme(&file, &mut p),
        cluster: cluster(&file, &mut p),
    };
    let upstream_limits = hardening::upstream_limits(
        file.upstream_limits.as_ref(),
        DEFAULT_UPSTREAM_LIMITS,
        &root.key("upstream_limits"),
        &mut p,
    );
    let (merge_slashes, escaped_slashes) = hardening::paths(&file, &mut p);
    let sites = sites(&file.sites, &statics, upstream_limits, inputs, &mut p);
    let default_tls_site = file
        .default_tls_site
        .as_deref()
        .and_then(|name| default_tls_site(name, &file.sites, &mut p));
    let trusted_proxies = trusted_proxies(&file, &mut p);
    let upstream_response_timeout = match &file.upstream_response_timeout {
        Some(t) => positive_duration(t, root.key("upstream_response_timeout"), &mut p),
        None => DEFAULT_UPSTREAM_RESPONSE_TIMEOUT,
    };

    if !p.0.is_empty() {
        return Err(p.0);
    }
    Ok(Config {
        dynamic: DynamicConfig {
            sites,
            rate_limit,
            body_limit_bytes,
            trusted_proxies,
            upstream_response_timeout,
            log_level,
            default_tls_site,
            merge_slashes,
            escaped_slashes,
            upstream_limits,
        },
        statics,
    })
}

fn body_limit(size: &SizeValue, path: &KeyPath, p: &mut Problems) -> u64 {
    match parse_size(size) {
        Ok(0) => {
            p.push(path.clone(), "must be greater than 0");
            0
        }
        Ok(n) => n,
        Err(e) => {
            p.push(path.clone(), e);
            0
        }
    }
}

/// Parses a size: bytes, or a number followed by k, m or g (powers of 1024; "kb", "kib", "mb",
/// "mib", ... and upper case are accepted too).
pub fn parse_size(size: &SizeValue) -> Result<u64, String> {
    let text = match size {
        SizeValue::Bytes(n) => {
            return u64::try_from(*n)
                .map_err(|_| format!("invalid size {n}: must not be negative"));
        }
        SizeValue::Text(t) => t,
    };
    let invalid = || {
        format!(
            "invalid size {text:?}: expected a number of bytes, or a number followed by k, m or g (\"10m\")"
        )
    };
    let lower = text.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (digits, unit) = lower.split_at(digits_end);
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(invalid()),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

fn rate_limit(rl: &RateLimitFile, path: &KeyPath, p: &mut Problems) -> Option<RateLimit> {
    let positive = |value: i64, key: &str, p: &mut Problems| {
        let n = u32::try_from(value).ok().and_then(NonZeroU32::new);
        if n.is_none() {
            p.push(
                path.key(key),
                format!(
                    "must be greater than 0 and at most {} (got {value})",
                    u32::MAX
                ),
            );
        }
        n
    };
    let requests_per_second = positive(rl.requests_per_second, "requests_per_second", p);
    let burst = positive(rl.burst, "burst", p);
    Some(RateLimit {
        requests_per_second: requests_per_second?,
        burst: burst?,
    })
}

/// An HTTP token (RFC 9110 §5.6.2), as header names and methods are.
pub(super) fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What is wrong with `path` as the path of a request (a route's prefix, a rewrite target, a
/// health check's path): it starts with '/', and holds only what a URI path may (RFC 3986:
/// letters, digits, `-._~!$&'()*+,;=:@/` and `%` escapes), with a query after '?' when
/// `query` allows one. With `normalized`, it is also as proxyd routes it: no empty segment
/// (`//`), no dot segment, no escaped letter, digit or `-._~` (proxyd decodes those before
/// routing, so a prefix holding one would never match).
pub(super) fn request_path_problem(path: &str, query: bool, normalized: bool) -> Option<String> {
    if !path.starts_with('/') {
        return Some("it starts with '/'".to_owned());
    }
    let (path_part, query_part) = match path.split_once('?') {
        Some((p, q)) if query => (p, Some(q)),
        Some(_) => return Some("it has no '?' (a query)".to_owned()),
        None => (path, None),
    };
    let allowed = |b: u8, extra: &[u8]| {
        b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b) || extra.contains(&b)
    };
    // A prefix is matched against request paths as they arrive, and browsers send some bytes
    // RFC 3986 reserves unescaped (Next.js asset paths have `[slug]`): hyper takes them, so a
    // prefix may hold them too.
    let extra: &[u8] = match (query, normalized) {
        (true, _) => b"?",
        (false, true) => b"[]|^{}\"`",
        (false, false) => b"",
    };
    let bytes = path.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'?' && query {
            continue;
        }
        if !allowed(b, extra) {
            let shown = if b.is_ascii_graphic() {
                format!("'{}'", b as char)
            } else if b.is_ascii() {
                format!("byte 0x{b:02x}")
            } else {
                "a non-ASCII character (write it %-escaped, as UTF-8)".to_owned()
            };
            return Some(format!("{shown} is not allowed in a URI path"));
        }
        if b == b'%' {
            let hex = |j: usize| bytes.get(j).is_some_and(u8::is_ascii_hexdigit);
            if !(hex(i + 1) && hex(i + 2)) {
                return Some("a '%' starts a two-digit hex escape".to_owned());
            }
        }
    }
    if query_part.is_some_and(|q| q.contains('#')) {
        return Some("it has no '#'".to_owned());
    }
    if normalized {
        if path_part.contains("//") {
            return Some(
                "an empty segment ('//'): requests are routed with slashes merged".to_owned(),
            );
        }
        if path_part
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        {
            return Some(
                "a dot segment: requests are routed with '.' and '..' resolved".to_owned(),
            );
        }
        for (i, _) in path_part.match_indices('%') {
            let hex = path_part.get(i + 1..i + 3).unwrap_or("");
            let Ok(b) = u8::from_str_radix(hex, 16) else {
                continue;
            };
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                return Some(
                    "an escaped letter, digit or '-._~': requests are routed with those decoded"
                        .to_owned(),
                );
            }
            if hex.bytes().any(|h| h.is_ascii_lowercase()) {
                return Some(format!(
                    "'%{hex}': requests are routed with escapes in upper case (write '%{}')",
                    hex.to_ascii_uppercase()
                ));
            }
            if matches!(b, b'/' | b'\\' | 0) {
                return Some(format!(
                    "'%{hex}': a request path with an escaped slash, backslash or NUL is refused \
                     or routed as a separator, so this prefix would never match"
                ));
            }
        }
    }
    None
}

/// A duration, in whole milliseconds or more: snapshots carry milliseconds, so `"999us"` would
/// reach the data plane as 0 (refused, or its default), and `"1500us"` as 1 ms.
fn duration(text: &str, path: KeyPath, p: &mut Problems) -> Duration {
    match humantime::parse_duration(text) {
        Ok(d) if d.subsec_nanos() % 1_000_000 != 0 => {
            p.push(
                path,
                format!(
                    "invalid duration {text:?}: the smallest unit is 1ms (write \"{}ms\")",
                    d.as_millis().max(1)
                ),
            );
            Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1))
        }
        Ok(d) => d,
        Err(e) => {
            p.push(path, format!("invalid duration {text:?}: {e} (write it with a unit, like \"30s\" or \"1m 30s\")"));
            Duration::ZERO
        }
    }
}

/// A duration that must be more than zero (a zero timeout would fail every request).
fn positive_duration(text: &str, path: KeyPath, p: &mut Problems) -> Duration {
    let d = duration(text, path.clone(), p);
    if d.is_zero() && humantime::parse_duration(text).is_ok() {
        p.push(path, "must be greater than 0");
    }
    d
}

fn timeout_or(
    text: &Option<String>,
    default: Duration,
    path: KeyPath,
    p: &mut Problems,
) -> Duration {
    text.as_deref()
        .map_or(default, |t| positive_duration(t, path, p))
}

fn socket_addr(text: &str, path: KeyPath, p: &mut Problems) -> Option<SocketAddr> {
    match text.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            p.push(path, format!("invalid address {text:?}: expected ip:port, like \"0.0.0.0:80\" or \"[::]:443\""));
            None
        }
    }
}

fn non_empty_path(text: Option<&str>, default: &str, path: KeyPath, p: &mut Problems) -> PathBuf {
    let text = text.unwrap_or(default);
    if text.is_empty() {
        p.push(path, "must not be empty");
    }
    PathBuf::from(text)
}

fn trusted_proxies(file: &FileConfig, p: &mut Problems) -> Vec<ipnet::IpNet> {
    let at = KeyPath::root().key("trusted_proxies");
    let mut nets = Vec::new();
    for (i, text) in file.trusted_proxies.iter().enumerate() {
        // A bare address is a /32 or /128.
        let parsed = text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => nets.push(net.trunc()),
            Err(_) => p.push(
                at.index(i),
                format!(
                    "invalid CIDR {text:?}: expected an address or a network like \"10.0.0.0/8\""
                ),
            ),
        }
    }
    nets
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size(&SizeValue::Bytes(1024)), Ok(1024));
        assert_eq!(parse_size(&SizeValue::Text("10m".into())), Ok(10 << 20));
        assert_eq!(parse_size(&SizeValue::Text("512KiB".into())), Ok(512 << 10));
        assert_eq!(parse_size(&SizeValue::Text("1g".into())), Ok(1 << 30));
        assert_eq!(parse_size(&SizeValue::Text("2048".into())), Ok(2048));
        assert!(parse_size(&SizeValue::Text("10x".into())).is_err());
        assert!(parse_size(&SizeValue::Text("m".into())).is_err());
        assert!(parse_size(&SizeValue::Bytes(-1)).is_err());
        assert!(parse_size(&SizeValue::Text("99999999999999g".into())).is_err());
    }
}
