//! The hardening settings of a snapshot: caps and deadlines on client connections, circuit
//! breakers of upstreams, and how request paths are normalized. Each has a default that holds
//! when the snapshot leaves it at 0 (an older controld), chosen after Envoy's edge defaults,
//! HAProxy and nginx (docs/security.md lists them).

use std::time::Duration;

use proto::v1 as pb;

/// What one client connection may hold and for how long; static, from the first snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Client connections open at once, all listeners and tunnels together.
    pub max_connections: usize,
    /// Client connections open at once from one address (IPv6: /64); `None`: no cap.
    pub max_connections_per_ip: Option<usize>,
    pub http2_max_concurrent_streams: u32,
    pub http2_keepalive_interval: Duration,
    pub http2_keepalive_timeout: Duration,
    /// An HTTP/2 connection with no open stream for this long is closed (GOAWAY).
    pub http2_idle_timeout: Duration,
    /// An Upgrade tunnel that passes no byte either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// TCP keepalive idle time on accepted sockets.
    pub tcp_keepalive: Duration,
    /// From the accept to the end of the TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Longest pause between two reads of a request body.
    pub request_body_timeout: Duration,
    /// Longest a client may leave a response unread.
    pub response_send_timeout: Duration,
    /// Longest pause between two reads of an upstream's response body.
    pub upstream_body_timeout: Duration,
    /// Bytes per second a request body must average after `request_body_timeout`; `None`: no
    /// minimum.
    pub request_body_min_rate: Option<u64>,
    /// Bytes per second a response must average while it waits on the client, after
    /// `response_send_timeout`; `None`: no minimum.
    pub response_min_rate: Option<u64>,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
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
            request_body_min_rate: Some(1024),
            response_min_rate: Some(1024),
        }
    }
}

impl From<Option<pb::ConnectionLimits>> for ConnectionLimits {
    fn from(wire: Option<pb::ConnectionLimits>) -> ConnectionLimits {
        let d = ConnectionLimits::default();
        let Some(w) = wire else { return d };
        let count = |n: u32, default: usize| match n {
            0 => default,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let rate = |rate: u64, default: Option<u64>| match rate {
            0 => default,
            u64::MAX => None,
            n => Some(n),
        };
        let ms = |ms: u64, default: Duration| match ms {
            0 => default,
            ms => Duration::from_millis(ms),
        };
        ConnectionLimits {
            max_connections: count(w.max_connections, d.max_connections),
            max_connections_per_ip: match w.max_connections_per_ip {
                0 => d.max_connections_per_ip,
                u32::MAX => None,
                n => usize::try_from(n).ok(),
            },
            http2_max_concurrent_streams: match w.http2_max_concurrent_streams {
                0 => d.http2_max_concurrent_streams,
                n => n,
            },
            http2_keepalive_interval: ms(w.http2_keepalive_interval_ms, d.http2_keepalive_interval),
            http2_keepalive_timeout: ms(w.http2_keepalive_timeout_ms, d.http2_keepalive_timeout),
            http2_idle_timeout: ms(w.http2_idle_timeout_ms, d.http2_idle_timeout),
            tunnel_idle_timeout: ms(w.tunnel_idle_timeout_ms, d.tunnel_idle_timeout),
            tcp_keepalive: ms(w.tcp_keepalive_ms, d.tcp_keepalive),
            tls_handshake_timeout: ms(w.tls_handshake_timeout_ms, d.tls_handshake_timeout),
            request_body_timeout: ms(w.request_body_timeout_ms, d.request_body_timeout),
            response_send_timeout: ms(w.response_send_timeout_ms, d.response_send_timeout),
            upstream_body_timeout: ms(w.upstream_body_timeout_ms, d.upstream_body_timeout),
            request_body_min_rate: rate(w.request_body_min_rate, d.request_body_min_rate),
            response_min_rate: rate(w.response_min_rate, d.response_min_rate),
        }
    }
}

/// Circuit breakers of one upstream, as Envoy has them per cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamLimits {
    pub max_connections: usize,
    pub max_pending_requests: usize,
    pub max_requests: usize,
    pub max_idle_connections: usize,
}

impl Default for UpstreamLimits {
    fn default() -> UpstreamLimits {
        UpstreamLimits {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_idle_connections: 128,
        }
    }
}

impl From<Option<pb::UpstreamLimits>> for UpstreamLimits {
    fn from(wire: Option<pb::UpstreamLimits>) -> UpstreamLimits {
        let d = UpstreamLimits::default();
        let Some(w) = wire else { return d };
        let count = |n: u32, default: usize| match n {
            0 => default,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        UpstreamLimits {
            max_connections: count(w.max_connections, d.max_connections),
            max_pending_requests: count(w.max_pending_requests, d.max_pending_requests),
            max_requests: count(w.max_requests, d.max_requests),
            max_idle_connections: count(w.max_idle_connections, d.max_idle_connections),
        }
    }
}

/// How request paths are normalized before routing (`crate::http::path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    pub merge_slashes: bool,
    /// `%2F` is kept encoded instead of refused.
    pub keep_escaped_slashes: bool,
}

impl Default for PathRules {
    fn default() -> PathRules {
        PathRules {
            merge_slashes: true,
            keep_escaped_slashes: false,
        }
    }
}

impl PathRules {
    pub fn from_wire(merge_slashes: Option<bool>, escaped: i32) -> Result<PathRules, String> {
        let keep_escaped_slashes = match pb::EscapedSlashes::try_from(escaped) {
            Ok(pb::EscapedSlashes::Unspecified | pb::EscapedSlashes::Reject) => false,
            Ok(pb::EscapedSlashes::Keep) => true,
            Err(_) => return Err(format!("unknown escaped_slashes value {escaped}")),
        };
        Ok(PathRules {
            merge_slashes: merge_slashes.unwrap_or(true),
            keep_escaped_slashes,
        })
    }
}
