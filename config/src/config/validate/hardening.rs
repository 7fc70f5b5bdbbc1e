//! The hardening keys: connection caps and deadlines (`[proxy]`, static), upstream circuit
//! breakers (`[upstream_limits]` and per site, dynamic) and path normalization (dynamic).
//! Defaults follow Envoy's edge recommendations, HAProxy and nginx; docs/security.md says why.

use std::time::Duration;

use super::super::file::{FileConfig, ProxyFile, SizeValue, UpstreamLimitsFile};
use super::super::locate::KeyPath;
use super::super::model::{ConnectionLimits, EscapedSlashes, UpstreamLimits};
use super::{Problems, timeout_or};

pub const DEFAULT_CONNECTION_LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 10_000,
    max_connections_per_ip: Some(256),
    http2_max_concurrent_streams: 100,
    http2_keepalive_interval: Duration::from_secs(60),
    http2_keepalive_timeout: Duration::from_secs(20),
    http2_idle_timeout: Duration::from_secs(180),
    tunnel_idle_timeout: Duration::from_secs(900),
    tcp_keepalive: Duration::from_secs(60),
    tls_handshake_timeout: Duration::from_secs(10),
    request_body_timeout: Duration::from_secs(60),
    response_send_timeout: Duration::from_secs(60),
    upstream_body_timeout: Duration::from_secs(60),
    request_body_min_rate: 1024,
    response_min_rate: 1024,
};

pub const DEFAULT_UPSTREAM_LIMITS: UpstreamLimits = UpstreamLimits {
    max_connections: 1024,
    max_pending_requests: 1024,
    max_requests: 1024,
    max_idle_connections: 128,
};

/// A whole number in `min..=max`, or the default with a problem.
fn bounded(
    value: Option<i64>,
    default: u32,
    min: u32,
    max: u32,
    at: KeyPath,
    p: &mut Problems,
) -> u32 {
    match value {
        None => default,
        Some(n) => match u32::try_from(n) {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                p.push(at, format!("must be {min} to {max} (got {n})"));
                default
            }
        },
    }
}

/// Bytes per second, as a size (`"1k"`); 0 turns the minimum off.
fn rate(value: &Option<SizeValue>, default: u64, at: KeyPath, p: &mut Problems) -> u64 {
    let Some(value) = value else { return default };
    match super::parse_size(value) {
        Ok(n) if n <= 1 << 40 => n,
        Ok(n) => {
            p.push(
                at,
                format!("must be at most 1024g bytes per second (got {n})"),
            );
            default
        }
        Err(e) => {
            p.push(at, e);
            default
        }
    }
}

/// `[proxy]`'s connection caps and deadlines.
pub fn connection_limits(file: &ProxyFile, at: &KeyPath, p: &mut Problems) -> ConnectionLimits {
    let d = DEFAULT_CONNECTION_LIMITS;
    let per_ip = match file.max_connections_per_ip {
        None => d.max_connections_per_ip,
        // 0 turns the cap off.
        Some(0) => None,
        Some(n) => Some(bounded(
            Some(n),
            256,
            1,
            1_000_000,
            at.key("max_connections_per_ip"),
            p,
        )),
    };
    let time = |text: &Option<String>, default: Duration, key: &str, p: &mut Problems| {
        timeout_or(text, default, at.key(key), p)
    };
    let limits = ConnectionLimits {
        max_connections: bounded(
            file.max_connections,
            d.max_connections,
            1,
            10_000_000,
            at.key("max_connections"),
            p,
        ),
        max_connections_per_ip: per_ip,
        http2_max_concurrent_streams: bounded(
            file.http2_max_concurrent_streams,
            d.http2_max_concurrent_streams,
            1,
            10_000,
            at.key("http2_max_concurrent_streams"),
            p,
        ),
        http2_keepalive_interval: time(
            &file.http2_keepalive_interval,
            d.http2_keepalive_interval,
            "http2_keepalive_interval",
            p,
        ),
        http2_keepalive_timeout: time(
            &file.http2_keepalive_timeout,
            d.http2_keepalive_timeout,
            "http2_keepalive_timeout",
            p,
        ),
        http2_idle_timeout: time(
            &file.http2_idle_timeout,
            d.http2_idle_timeout,
            "http2_idle_timeout",
            p,
        ),
        tunnel_idle_timeout: time(
            &file.tunnel_idle_timeout,
            d.tunnel_idle_timeout,
            "tunnel_idle_timeout",
            p,
        ),
        tcp_keepalive: time(&file.tcp_keepalive, d.tcp_keepalive, "tcp_keepalive", p),
        tls_handshake_timeout: time(
            &file.tls_handshake_timeout,
            d.tls_handshake_timeout,
            "tls_handshake_timeout",
            p,
        ),
        request_body_timeout: time(
            &file.request_body_timeout,
            d.request_body_timeout,
            "request_body_timeout",
            p,
        ),
        response_send_timeout: time(
            &file.response_send_timeout,
            d.response_send_timeout,
            "response_send_timeout",
            p,
        ),
        upstream_body_timeout: time(
            &file.upstream_body_timeout,
            d.upstream_body_timeout,
            "upstream_body_timeout",
            p,
        ),
        request_body_min_rate: rate(
            &file.request_body_min_rate,
            d.request_body_min_rate,
            at.key("request_body_min_rate"),
            p,
        ),
        response_min_rate: rate(
            &file.response_min_rate,
            d.response_min_rate,
            at.key("response_min_rate"),
            p,
        ),
    };
    if let Some(per_ip) = limits.max_connections_per_ip
        && per_ip > limits.max_connections
    {
        p.push(
            at.key("max_connections_per_ip"),
            format!(
                "{per_ip} is more than max_connections ({})",
                limits.max_connections
            ),
        );
    }
    if limits.tcp_keepalive < Duration::from_secs(1) {
        p.push(
            at.key("tcp_keepalive"),
            "must be at least 1s (TCP counts whole seconds)",
        );
    }
    limits
}

/// Circuit breakers: each key of `table`, else of `fallback`, else the default.
pub fn upstream_limits(
    table: Option<&UpstreamLimitsFile>,
    fallback: UpstreamLimits,
    at: &KeyPath,
    p: &mut Problems,
) -> UpstreamLimits {
    let Some(t) = table else { return fallback };
    let limits = UpstreamLimits {
        max_connections: bounded(
            t.max_connections,
            fallback.max_connections,
            1,
            1_000_000,
            at.key("max_connections"),
            p,
        ),
        max_pending_requests: bounded(
            t.max_pending_requests,
            fallback.max_pending_requests,
            1,
            1_000_000,
            at.key("max_pending_requests"),
            p,
        ),
        max_requests: bounded(
            t.max_requests,
            fallback.max_requests,
            1,
            1_000_000,
            at.key("max_requests"),
            p,
        ),
        max_idle_connections: bounded(
            t.max_idle_connections,
            fallback.max_idle_connections,
            1,
            1_000_000,
            at.key("max_idle_connections"),
            p,
        ),
    };
    let mut limits = limits;
    if t.max_idle_connections.is_none() {
        // Inherited: never more idle connections than may be open.
        limits.max_idle_connections = limits.max_idle_connections.min(limits.max_connections);
    } else if limits.max_idle_connections > limits.max_connections {
        p.push(
            at.key("max_idle_connections"),
            format!(
                "{} is more than max_connections ({})",
                limits.max_idle_connections, limits.max_connections
            ),
        );
    }
    limits
}

/// `merge_slashes` and `escaped_slashes`.
pub fn paths(file: &FileConfig, p: &mut Problems) -> (bool, EscapedSlashes) {
    let escaped = match file.escaped_slashes.as_deref() {
        None | Some("reject") => EscapedSlashes::Reject,
        Some("keep") => EscapedSlashes::Keep,
        Some(other) => {
            p.push(
                KeyPath::root().key("escaped_slashes"),
                format!("invalid value {other:?}: expected \"reject\" or \"keep\""),
            );
            EscapedSlashes::Reject
        }
    };
    (file.merge_slashes.unwrap_or(true), escaped)
}
