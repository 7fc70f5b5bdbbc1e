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
pub use hardening::DEFAULT_UPSTREAM_LIMITS;

/// Default `body_limit_bytes`: 10 MiB.
pub const DEFAULT_BODY_LIMIT_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_SOCKET: &str = "/run/controld/control.sock";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/controld";
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
pub const DEFAULT_UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Header fields a request head may have (nginx and HAProxy allow about 100).
pub const DEFAULT_MAX_REQUEST_HEADERS: u32 = 100;
/// Bytes a request head may take: 64 KiB, like HAProxy's default buffer.
pub const DEFAULT_MAX_REQUEST_HEADER_BYTES: u64 = 64 * 1024;
/// The most weight one list of upstreams may carry (proxyd refuses more, too).
const MAX_TOTAL_WEIGHT: i64 = 100_000;
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

/// Validates all of `file`; returns every problem found.
pub fn validate(file: FileConfig) -> Result<Config, Vec<Problem>> {
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
    };
    let upstream_limits = hardening::upstream_limits(
        file.upstream_limits.as_ref(),
        DEFAULT_UPSTREAM_LIMITS,
        &root.key("upstream_limits"),
        &mut p,
    );
    let (merge_slashes, escaped_slashes) = hardening::paths(&file, &mut p);
    // Certificates are read and checked against this moment.
    let sites = sites(
        &file.sites,
        &statics,
        upstream_limits,
        SystemTime::now(),
        &mut p,
    );
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

fn duration(text: &str, path: KeyPath, p: &mut Problems) -> Duration {
    match humantime::parse_duration(text) {
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

fn control(file: &FileConfig, p: &mut Problems) -> ControlConfig {
    let at = KeyPath::root().key("control");
    let socket = non_empty_path(
        file.control.socket.as_deref(),
        DEFAULT_SOCKET,
        at.key("socket"),
        p,
    );
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        p.push(
            at.key("socket"),
            format!("a Unix socket path may have at most {MAX_SOCKET_PATH} bytes"),
        );
    }
    let state_dir = non_empty_path(
        file.control.state_dir.as_deref(),
        DEFAULT_STATE_DIR,
        at.key("state_dir"),
        p,
    );
    let ids = |values: &[i64], key: &str, p: &mut Problems| -> Vec<u32> {
        let mut ids = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match u32::try_from(*v) {
                Ok(id) => ids.push(id),
                Err(_) => p.push(
                    at.key(key).index(i),
                    format!("invalid id {v}: must be 0 to {}", u32::MAX),
                ),
            }
        }
        ids
    };
    let allowed_uids = ids(&file.control.allowed_uids, "allowed_uids", p);
    let allowed_gids = ids(&file.control.allowed_gids, "allowed_gids", p);
    let metrics_address = file
        .control
        .metrics_address
        .as_deref()
        .and_then(|text| socket_addr(text, at.key("metrics_address"), p));
    ControlConfig {
        socket,
        state_dir,
        allowed_uids,
        allowed_gids,
        metrics_address,
    }
}

fn proxy(file: &FileConfig, p: &mut Problems) -> ProxyConfig {
    let at = KeyPath::root().key("proxy");
    let shutdown_timeout = match &file.proxy.shutdown_timeout {
        Some(text) => duration(text, at.key("shutdown_timeout"), p),
        None => DEFAULT_SHUTDOWN_TIMEOUT,
    };
    let admin_address = file
        .proxy
        .admin_address
        .as_deref()
        .and_then(|text| socket_addr(text, at.key("admin_address"), p));
    if file.proxy.listeners.is_empty() {
        p.push(
            at.key("listeners"),
            "at least one [[proxy.listeners]] is required",
        );
    }
    let mut names = HashMap::new();
    let mut addresses = HashMap::new();
    let mut listeners = Vec::new();
    for (i, l) in file.proxy.listeners.iter().enumerate() {
        let lp = at.key("listeners").index(i);
        if let Some(listener) = listener(l, &lp, p) {
            if let Some(first) = names.insert(listener.name.clone(), i) {
                p.push(
                    lp.key("name"),
                    format!(
                        "listener name {:?} is already used by proxy.listeners[{first}]",
                        listener.name
                    ),
                );
            }
            // Port 0 asks the kernel for a free port: two such listeners do not collide.
            if listener.address.port() != 0
                && let Some(first) = addresses.insert(listener.address, i)
            {
                p.push(
                    lp.key("address"),
                    format!(
                        "address {} is already used by proxy.listeners[{first}]",
                        listener.address
                    ),
                );
            }
            listeners.push(listener);
        }
    }
    let max_request_headers = match file.proxy.max_request_headers {
        None => DEFAULT_MAX_REQUEST_HEADERS,
        Some(n) => match u32::try_from(n) {
            Ok(n @ 1..=10_000) => n,
            _ => {
                p.push(
                    at.key("max_request_headers"),
                    format!("must be 1 to 10000 (got {n})"),
                );
                DEFAULT_MAX_REQUEST_HEADERS
            }
        },
    };
    let max_request_header_bytes = match &file.proxy.max_request_header_bytes {
        None => DEFAULT_MAX_REQUEST_HEADER_BYTES,
        Some(size) => match parse_size(size) {
            // hyper's read buffer cannot be smaller than 8 KiB.
            Ok(n @ 8192..=16_777_216) => n,
            Ok(n) => {
                p.push(
                    at.key("max_request_header_bytes"),
                    format!("must be 8k to 16m (got {n} bytes)"),
                );
                DEFAULT_MAX_REQUEST_HEADER_BYTES
            }
            Err(e) => {
                p.push(at.key("max_request_header_bytes"), e);
                DEFAULT_MAX_REQUEST_HEADER_BYTES
            }
        },
    };
    if let Some(admin) = admin_address
        && admin.port() != 0
        && let Some(first) = addresses.get(&admin)
    {
        p.push(
            at.key("admin_address"),
            format!("address {admin} is already used by proxy.listeners[{first}]"),
        );
    }
    ProxyConfig {
        shutdown_timeout,
        max_request_headers,
        request_header_timeout: timeout_or(
            &file.proxy.request_header_timeout,
            DEFAULT_REQUEST_HEADER_TIMEOUT,
            at.key("request_header_timeout"),
            p,
        ),
        upstream_connect_timeout: timeout_or(
            &file.proxy.upstream_connect_timeout,
            DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            at.key("upstream_connect_timeout"),
            p,
        ),
        upstream_idle_timeout: timeout_or(
            &file.proxy.upstream_idle_timeout,
            DEFAULT_UPSTREAM_IDLE_TIMEOUT,
            at.key("upstream_idle_timeout"),
            p,
        ),
        max_request_header_bytes,
        admin_address,
        listeners,
        limits: hardening::connection_limits(&file.proxy, &at, p),
    }
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

fn listener(l: &ListenerFile, at: &KeyPath, p: &mut Problems) -> Option<ListenerConfig> {
    let name = match l.name.as_deref() {
        None => {
            p.push(at.clone(), "missing key `name`");
            None
        }
        Some(n)
            if n.is_empty()
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            p.push(
                at.key("name"),
                format!("invalid listener name {n:?}: use letters, digits, '-' or '_'"),
            );
            None
        }
        Some(n) if n == proto::ADMIN_LISTENER_NAME => {
            p.push(
                at.key("name"),
                format!(
                    "listener name {n:?} is reserved: proxyd reports its admin listener (proxy.admin_address) under it"
                ),
            );
            None
        }
        Some(n) => Some(n.to_owned()),
    };
    let address = match l.address.as_deref() {
        None => {
            p.push(at.clone(), "missing key `address`");
            None
        }
        Some(text) => socket_addr(text, at.key("address"), p),
    };
    Some(ListenerConfig {
        name: name?,
        address: address?,
        tls: l.tls,
    })
}

fn acme(file: &FileConfig, p: &mut Problems) -> Option<AcmeConfig> {
    let acme = file.acme.as_ref()?;
    let at = KeyPath::root().key("acme");
    let directory_url = match acme.directory_url.as_deref() {
        None => {
            p.push(at.clone(), "missing key `directory_url`");
            String::new()
        }
        Some(text) => {
            match url::Url::parse(text) {
                Ok(u) if matches!(u.scheme(), "https" | "http") => {}
                _ => p.push(
                    at.key("directory_url"),
                    format!("invalid URL {text:?}: expected an https:// (or http://) URL"),
                ),
            }
            text.to_owned()
        }
    };
    for (i, c) in acme.contact.iter().enumerate() {
        if !c.starts_with("mailto:") || c.len() <= "mailto:".len() {
            p.push(
                at.key("contact").index(i),
                format!("invalid contact {c:?}: expected \"mailto:ops@example.com\""),
            );
        }
    }
    let challenge = match acme.challenge.as_deref() {
        None | Some("http-01") => AcmeChallenge::Http01,
        Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
        Some(other) => {
            p.push(
                at.key("challenge"),
                format!("invalid challenge {other:?}: expected \"http-01\" or \"tls-alpn-01\""),
            );
            AcmeChallenge::Http01
        }
    };
    let ca_roots = acme
        .ca_roots
        .as_deref()
        .map(|r| non_empty_path(Some(r), "", at.key("ca_roots"), p));
    Some(AcmeConfig {
        directory_url,
        contact: acme.contact.clone(),
        challenge,
        ca_roots,
    })
}

fn sites(
    files: &[SiteFile],
    statics: &StaticConfig,
    upstream_limits: UpstreamLimits,
    now: SystemTime,
    p: &mut Problems,
) -> Vec<Site> {
    let mut seen: HashMap<Hostname, KeyPath> = HashMap::new();
    let mut sites = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let at = KeyPath::root().key("sites").index(i);
        let limits = hardening::upstream_limits(
            file.upstream_limits.as_ref(),
            upstream_limits,
            &at.key("upstream_limits"),
            p,
        );
        if let Some(site) = site(file, &at, statics, now, &mut seen, p) {
            let mut site = site;
            site.pool.limits = limits;
            sites.push(site);
        }
    }
    sites
}

fn site(
    file: &SiteFile,
    at: &KeyPath,
    statics: &StaticConfig,
    now: SystemTime,
    seen: &mut HashMap<Hostname, KeyPath>,
    p: &mut Problems,
) -> Option<Site> {
    if file.hostnames.is_empty() {
        p.push(at.clone(), "a site needs at least one entry in `hostnames`");
    }
    let mut hostnames = Vec::new();
    for (j, raw) in file.hostnames.iter().enumerate() {
        let hp = at.key("hostnames").index(j);
        match Hostname::parse(raw) {
            Ok(h) => match seen.get(&h) {
                Some(first) => p.push(
                    hp,
                    format!("hostname {:?} is already used by {first}", h.as_str()),
                ),
                None => {
                    seen.insert(h.clone(), hp);
                    hostnames.push(h);
                }
            },
            Err(e) => p.push(hp, e),
        }
    }
    if file.upstreams.is_empty() && file.routes.is_empty() {
        p.push(
            at.clone(),
            "a site needs `upstreams`, at least one [[sites.routes]], or both",
        );
    }
    let upstreams = upstream_list(&file.upstreams, &at.key("upstreams"), p);
    let routes = routes(&file.routes, &at.key("routes"), !upstreams.is_empty(), p);
    let pool = pool(file, at, p);
    let weighted = upstreams
        .iter()
        .chain(routes.iter().flat_map(|r| match &r.action {
            RouteAction::Proxy(list) => list.as_slice(),
            _ => &[],
        }));
    if pool.load_balancing != LoadBalancing::WeightedRoundRobin
        && weighted.clone().any(|u| u.weight != 1)
    {
        p.push(
            at.key("load_balancing"),
            "upstream weights need load_balancing = \"weighted_round_robin\"",
        );
    }
    let tls = site_tls(file.tls.as_ref(), &at.key("tls"), statics, p);
    let tls = with_certificate(tls, &hostnames, &at.key("tls"), now, p);
    let rate_limit = file
        .rate_limit
        .as_ref()
        .and_then(|rl| rate_limit(rl, &at.key("rate_limit"), p));
    let body_limit_bytes = file
        .body_limit_bytes
        .as_ref()
        .map(|s| body_limit(s, &at.key("body_limit_bytes"), p));
    let upstream_response_timeout = file
        .upstream_response_timeout
        .as_deref()
        .map(|t| positive_duration(t, at.key("upstream_response_timeout"), p));
    Some(Site {
        hostnames,
        upstreams,
        pool,
        routes,
        tls,
        https_redirect: file.https_redirect.unwrap_or(true),
        rate_limit,
        body_limit_bytes,
        upstream_response_timeout,
    })
}

fn upstream_list(entries: &[UpstreamEntry], at: &KeyPath, p: &mut Problems) -> Vec<Upstream> {
    let mut upstreams = Vec::new();
    let mut distinct = HashSet::new();
    let total: i64 = entries
        .iter()
        .map(|e| match e {
            UpstreamEntry::Table(t) => t.weight.unwrap_or(1).clamp(0, 1000),
            UpstreamEntry::Url(_) => 1,
        })
        .sum();
    if total > MAX_TOTAL_WEIGHT {
        // proxyd allocates a schedule entry per unit of weight.
        p.push(
            at.clone(),
            format!("the weights add up to {total}; at most {MAX_TOTAL_WEIGHT}"),
        );
    }
    for (j, entry) in entries.iter().enumerate() {
        let (raw, weight, url_at) = match entry {
            UpstreamEntry::Url(raw) => (Some(raw), None, at.index(j)),
            UpstreamEntry::Table(t) => (t.url.as_ref(), t.weight, at.index(j).key("url")),
        };
        let Some(raw) = raw else {
            p.push(at.index(j), "missing key `url`");
            continue;
        };
        let weight = match weight {
            None => 1,
            Some(w @ 1..=1000) => w as u32,
            Some(w) => {
                p.push(
                    at.index(j).key("weight"),
                    format!("must be 1 to 1000 (got {w})"),
                );
                1
            }
        };
        match UpstreamUrl::parse(raw) {
            Ok(u) if !distinct.insert(u.clone()) => {
                p.push(url_at, format!("upstream {u} is listed twice"))
            }
            Ok(url) => upstreams.push(Upstream { url, weight }),
            Err(e) => p.push(url_at, e),
        }
    }
    upstreams
}

/// Load balancing, retries and health checking of a site.
fn pool(file: &SiteFile, at: &KeyPath, p: &mut Problems) -> PoolConfig {
    let load_balancing = match file.load_balancing.as_deref() {
        None | Some("round_robin") => LoadBalancing::RoundRobin,
        Some("weighted_round_robin") => LoadBalancing::WeightedRoundRobin,
        Some("least_requests") => LoadBalancing::LeastRequests,
        Some(other) => {
            p.push(
                at.key("load_balancing"),
                format!(
                    "invalid policy {other:?}: expected \"round_robin\", \"weighted_round_robin\" \
                     or \"least_requests\""
                ),
            );
            LoadBalancing::RoundRobin
        }
    };
    let retries = match file.retries {
        None => DEFAULT_RETRIES,
        Some(n @ 0..=5) => n as u32,
        Some(n) => {
            p.push(at.key("retries"), format!("must be 0 to 5 (got {n})"));
            DEFAULT_RETRIES
        }
    };
    let health_check = file
        .health_check
        .as_ref()
        .map(|h| health_check(h, &at.key("health_check"), p));
    let passive_health = match &file.passive_health {
        None => Some(DEFAULT_PASSIVE_HEALTH),
        Some(f) => {
            let pat = at.key("passive_health");
            let failures = count(
                f.consecutive_failures,
                5,
                0,
                &pat.key("consecutive_failures"),
                p,
            );
            let cooldown = timeout_or(
                &f.cooldown,
                DEFAULT_PASSIVE_HEALTH.cooldown,
                pat.key("cooldown"),
                p,
            );
            (failures > 0).then_some(PassiveHealth {
                consecutive_failures: failures,
                cooldown,
            })
        }
    };
    PoolConfig {
        load_balancing,
        retries,
        health_check,
        passive_health,
        // Set by `sites`, which knows the global table.
        limits: DEFAULT_UPSTREAM_LIMITS,
    }
}

fn health_check(file: &HealthCheckFile, at: &KeyPath, p: &mut Problems) -> HealthCheck {
    let path = file.path.clone().unwrap_or_else(|| "/".to_owned());
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        p.push(
            at.key("path"),
            format!("invalid path {path:?}: it starts with '/' and has no spaces"),
        );
    }
    let interval = timeout_or(
        &file.interval,
        Duration::from_secs(5),
        at.key("interval"),
        p,
    );
    let timeout = timeout_or(&file.timeout, Duration::from_secs(2), at.key("timeout"), p);
    if timeout > interval {
        p.push(at.key("timeout"), "must not be longer than `interval`");
    }
    HealthCheck {
        path,
        interval,
        timeout,
        healthy_threshold: count(
            file.healthy_threshold,
            2,
            1,
            &at.key("healthy_threshold"),
            p,
        ),
        unhealthy_threshold: count(
            file.unhealthy_threshold,
            3,
            1,
            &at.key("unhealthy_threshold"),
            p,
        ),
    }
}

/// A small count: `default` when absent, `min` to 100 otherwise.
fn count(value: Option<i64>, default: u32, min: u32, at: &KeyPath, p: &mut Problems) -> u32 {
    match value {
        None => default,
        Some(n) if (i64::from(min)..=100).contains(&n) => n as u32,
        Some(n) => {
            p.push(at.clone(), format!("must be {min} to 100 (got {n})"));
            default
        }
    }
}

/// `has_default`: the site's own `upstreams` already route "/".
fn routes(files: &[RouteFile], at: &KeyPath, has_default: bool, p: &mut Problems) -> Vec<Route> {
    let mut prefixes: HashMap<&str, usize> = HashMap::new();
    let mut routes = Vec::new();
    for (i, file) in files.iter().enumerate() {
        let rp = at.index(i);
        let prefix = match file.path_prefix.as_deref() {
            None => {
                p.push(rp.clone(), "missing key `path_prefix`");
                continue;
            }
            Some(prefix) if !prefix.starts_with('/') || prefix.contains(char::is_whitespace) => {
                p.push(
                    rp.key("path_prefix"),
                    format!("invalid path prefix {prefix:?}: it starts with '/' and has no spaces"),
                );
                continue;
            }
            Some(prefix) => prefix,
        };
        if prefix == "/" && has_default {
            p.push(
                rp.key("path_prefix"),
                "path prefix \"/\" is already routed by the site's `upstreams`",
            );
        }
        if let Some(first) = prefixes.insert(prefix, i) {
            p.push(
                rp.key("path_prefix"),
                format!(
                    "path prefix {prefix:?} is already routed by {}",
                    at.index(first)
                ),
            );
        }
        if let Some(action) = route_action(file, &rp, p) {
            routes.push(Route {
                path_prefix: prefix.to_owned(),
                action,
            });
        }
    }
    routes
}

fn route_action(file: &RouteFile, at: &KeyPath, p: &mut Problems) -> Option<RouteAction> {
    let given = [
        file.upstreams.is_some(),
        file.redirect.is_some(),
        file.respond.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        p.push(
            at.clone(),
            "a route needs exactly one of `upstreams`, `redirect` or `respond`",
        );
        return None;
    }
    if let Some(raws) = &file.upstreams {
        if raws.is_empty() {
            p.push(at.key("upstreams"), "must not be empty");
        }
        return Some(RouteAction::Proxy(upstream_list(
            raws,
            &at.key("upstreams"),
            p,
        )));
    }
    if let Some(r) = &file.redirect {
        let location = r.location.clone().unwrap_or_default();
        if location.is_empty() {
            p.push(
                at.key("redirect"),
                "`location` is required, e.g. \"https://{host}{path}\"",
            );
        }
        let status = r.status.unwrap_or(308);
        if ![301, 302, 303, 307, 308].contains(&status) {
            p.push(
                at.key("redirect").key("status"),
                format!("invalid redirect status {status}: use 301, 302, 303, 307 or 308"),
            );
        }
        let status = u16::try_from(status).unwrap_or(308);
        return Some(RouteAction::Redirect { location, status });
    }
    let r = file.respond.as_ref()?;
    let status = r.status.unwrap_or(200);
    if !(200..=599).contains(&status) {
        p.push(
            at.key("respond").key("status"),
            format!("invalid status {status}: must be 200 to 599"),
        );
    }
    for (name, value) in &r.headers {
        if FRAMING_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            p.push(
                at.key("respond").key("headers").key(name),
                format!("header {name:?} is set by proxyd itself (it frames its own answers)"),
            );
            continue;
        }
        let valid = http_token(name)
            && value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        if !valid {
            p.push(
                at.key("respond").key("headers").key(name),
                format!("invalid header {name:?}: names are tokens, values printable ASCII"),
            );
        }
    }
    Some(RouteAction::Respond {
        status: u16::try_from(status).unwrap_or(200),
        body: r.body.clone().unwrap_or_default(),
        headers: r
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect(),
    })
}

/// Headers a `respond` route may not set (proxyd refuses a snapshot with them, too).
const FRAMING_HEADERS: [&str; 9] = [
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

/// An HTTP token (RFC 9110 §5.6.2), as header names are.
fn http_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// What a site's `tls` asks for, before its certificate files are read.
enum TlsWanted {
    None,
    Files {
        cert_file: PathBuf,
        key_file: PathBuf,
    },
    Acme,
}

fn site_tls(
    tls: Option<&TlsFile>,
    at: &KeyPath,
    statics: &StaticConfig,
    p: &mut Problems,
) -> TlsWanted {
    let tls = match tls {
        None => return TlsWanted::None,
        Some(TlsFile::Mode(mode)) if mode == "acme" => {
            if statics.acme.is_none() {
                p.push(at.clone(), "tls = \"acme\" needs an [acme] section");
            }
            TlsWanted::Acme
        }
        Some(TlsFile::Mode(other)) => {
            p.push(at.clone(), format!("invalid tls {other:?}: expected \"acme\" or {{ cert_file = \"...\", key_file = \"...\" }}"));
            return TlsWanted::None;
        }
        Some(TlsFile::Files(files)) => {
            let mut file = |value: &Option<String>, key: &str| match value.as_deref() {
                Some(v) if !v.is_empty() => PathBuf::from(v),
                _ => {
                    p.push(
                        at.key(key),
                        format!("`{key}` is required and must not be empty"),
                    );
                    PathBuf::new()
                }
            };
            let cert_file = file(&files.cert_file, "cert_file");
            let key_file = file(&files.key_file, "key_file");
            TlsWanted::Files {
                cert_file,
                key_file,
            }
        }
    };
    if !statics.proxy.listeners.iter().any(|l| l.tls) {
        p.push(
            at.clone(),
            "this site wants TLS, but no [[proxy.listeners]] has tls = true",
        );
    }
    tls
}

/// Reads and checks the certificate files of a site that names them (not when a path is
/// already wrong); each problem is reported at the site's `tls`.
fn with_certificate(
    tls: TlsWanted,
    hostnames: &[Hostname],
    at: &KeyPath,
    now: SystemTime,
    p: &mut Problems,
) -> SiteTls {
    match tls {
        TlsWanted::None => SiteTls::None,
        TlsWanted::Acme => {
            // http-01 and tls-alpn-01 prove control of one name; a wildcard needs dns-01.
            if let Some(h) = hostnames.iter().find(|h| h.as_str().starts_with("*.")) {
                p.push(
                    at.clone(),
                    format!(
                        "tls = \"acme\" cannot cover the wildcard {h}: http-01 and tls-alpn-01 \
                         validate single names; give this site certificate files"
                    ),
                );
            }
            SiteTls::Acme
        }
        TlsWanted::Files {
            cert_file,
            key_file,
        } => {
            if cert_file.as_os_str().is_empty() || key_file.as_os_str().is_empty() {
                return SiteTls::None;
            }
            match certs::load(&cert_file, &key_file, hostnames, now) {
                Ok(certificate) => SiteTls::Files {
                    cert_file,
                    key_file,
                    certificate,
                },
                Err(problems) => {
                    for problem in problems {
                        p.push(at.clone(), problem);
                    }
                    SiteTls::None
                }
            }
        }
    }
}

/// `default_tls_site` names a site with `tls` by one of its hostnames; the snapshot carries the
/// site's name (its first hostname).
fn default_tls_site(name: &str, files: &[SiteFile], p: &mut Problems) -> Option<String> {
    let at = KeyPath::root().key("default_tls_site");
    let Some(site) = files
        .iter()
        .find(|s| s.hostnames.iter().any(|h| h.eq_ignore_ascii_case(name)))
    else {
        p.push(at, format!("no site has the hostname {name:?}"));
        return None;
    };
    let site_name = site.hostnames.first()?.to_ascii_lowercase();
    if site.tls.is_none() {
        p.push(
            at,
            format!("site {site_name} has no `tls`, so it has no certificate to offer"),
        );
        return None;
    }
    Some(site_name)
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
