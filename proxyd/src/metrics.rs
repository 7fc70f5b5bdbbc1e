//! Metrics: one Prometheus registry for the life of the process. It lives beside the swapped
//! `Runtime`, never inside it, so a reload does not reset a counter; the request path records
//! into it and the admin listener encodes it for `/metrics`.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Response, StatusCode};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// Why proxyd answered a request itself, for the failures that have a counter of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    RateLimited,
    BodyTooLarge,
    /// An upstream failed the request: `unreachable`, `failed` or `timeout`.
    Upstream(&'static str),
}

/// The `site` label of a request no site matched (unknown or invalid host). Labels carry
/// configured site names only, never the raw Host header, so their number stays bounded.
pub const NO_SITE: &str = "-";

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every value of the `status_class` label.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Every value of the `kind` label of `proxy_upstream_errors_total`.
const UPSTREAM_ERROR_KINDS: [&str; 3] = ["unreachable", "failed", "timeout"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    site: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    site: String,
    status_class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    site: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SnapshotLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OverflowLabels {
    upstream: String,
    limit: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsFailureLabels {
    upstream: String,
    reason: &'static str,
}

/// Every value of the `reason` label of `proxy_upstream_tls_failures_total`.
pub const TLS_FAILURE_REASONS: [&str; 8] = [
    "unknown_issuer",
    "expired",
    "name_mismatch",
    "bad_certificate",
    "alert_received",
    "no_application_protocol",
    "protocol",
    "io",
];

/// Every value of the `kind` label of `proxy_timeouts_total` (docs/security.md).
pub const TIMEOUT_KINDS: [&str; 11] = [
    "first_bytes",
    "idle",
    "tls_handshake",
    "request_body",
    "request_body_rate",
    "response_send",
    "response_rate",
    "upstream_response",
    "upstream_body",
    "grpc_deadline",
    "tunnel_idle",
];

type DurationFamily = Family<SiteLabels, Latency>;

/// Every metric proxyd exports. Cheap handles (atomics behind `Arc`s) registered once.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, StripedCounter>,
    duration: DurationFamily,
    in_flight: StripedGauge,
    rate_limited: Family<SiteLabels, Counter>,
    body_too_large: Family<SiteLabels, Counter>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    config_version: Gauge,
    last_apply_successful: Gauge,
    last_apply_success_timestamp: Gauge<f64, AtomicU64>,
    snapshots: Family<SnapshotLabels, Counter>,
    upstream_healthy: Family<UpstreamLabels, Gauge>,
    retries: Family<SiteLabels, Counter>,
    control_plane_connected: Gauge,
    connections_open: StripedGauge,
    connections_idle: StripedGauge,
    connections_refused: Family<ReasonLabels, Counter>,
    timeouts: Family<KindLabels, Counter>,
    tls_handshakes: Family<KindLabels, Counter>,
    upstream_overflow: Family<OverflowLabels, Counter>,
    upstream_tls_failures: Family<TlsFailureLabels, Counter>,
    totals: totals::Totals,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("proxy"),
            requests: Family::default(),
            duration: Family::default(),
            in_flight: StripedGauge::default(),
            rate_limited: Family::default(),
            body_too_large: Family::default(),
            upstream_errors: Family::default(),
            config_version: Gauge::default(),
            last_apply_successful: Gauge::default(),
            last_apply_success_timestamp: Gauge::default(),
            snapshots: Family::default(),
            upstream_healthy: Family::default(),
            retries: Family::default(),
            control_plane_connected: Gauge::default(),
            connections_open: StripedGauge::default(),
            connections_idle: StripedGauge::default(),
            connections_refused: Family::default(),
            timeouts: Family::default(),
            tls_handshakes: Family::default(),
            upstream_overflow: Family::default(),
            upstream_tls_failures: Family::default(),
            totals: totals::Totals::default(),
        };
        m.register();
        for kind in TIMEOUT_KINDS {
            m.timeouts.get_or_create(&KindLabels { kind }).inc_by(0);
        }
        for kind in ["full", "resumed"] {
            m.tls_handshakes
                .get_or_create(&KindLabels { kind })
                .inc_by(0);
        }
        for reason in ["max_connections", "max_connections_per_ip"] {
            m.connections_refused
                .get_or_create(&ReasonLabels { reason })
                .inc_by(0);
        }
        // Both results exist from the start, so `rate()` and alerts see the first refusal.
        for result in ["applied", "refused"] {
            m.snapshots
                .get_or_create(&SnapshotLabels { result })
                .inc_by(0);
        }
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "requests",
            "Requests answered, by site and status class",
            self.requests.clone(),
        );
        r.register_with_unit(
            "request_duration",
            "Time from the request head to the response head, by site",
            Unit::Seconds,
            self.duration.clone(),
        );
        r.register(
            "requests_in_flight",
            "Requests whose response is not fully sent yet",
            self.in_flight.clone(),
        );
        r.register(
            "rate_limited",
            "Requests refused with 429 by a rate limit, by site",
            self.rate_limited.clone(),
        );
        r.register(
            "body_too_large",
            "Requests refused with 413 by a body limit, by site",
            self.body_too_large.clone(),
        );
        r.register(
            "upstream_errors",
            "Requests that failed at the upstream (unreachable, failed, timeout), by site",
            self.upstream_errors.clone(),
        );
        r.register(
            "config_version",
            "Version of the snapshot serving now; 0 before the first",
            self.config_version.clone(),
        );
        r.register(
            "config_last_apply_successful",
            "1 when the last snapshot received was applied, 0 when it was refused or none was applied yet",
            self.last_apply_successful.clone(),
        );
        r.register_with_unit(
            "config_last_apply_success_timestamp",
            "Unix time of the last applied snapshot",
            Unit::Seconds,
            self.last_apply_success_timestamp.clone(),
        );
        r.register(
            "upstream_healthy",
            "1 when the upstream gets traffic, 0 when a health check or passive ejection holds it back",
            self.upstream_healthy.clone(),
        );
        r.register(
            "retries",
            "Requests sent again to another upstream after a failure that was safe to retry, by site",
            self.retries.clone(),
        );
        r.register(
            "connections_open",
            "Client connections open now, on every listener",
            self.connections_open.clone(),
        );
        r.register(
            "connections_idle",
            "HTTP/1.1 client connections waiting for their next request with no buffers held",
            self.connections_idle.clone(),
        );
        r.register(
            "control_plane_connected",
            "1 while proxyd is subscribed to controld, 0 while it serves on without it",
            self.control_plane_connected.clone(),
        );
        r.register(
            "snapshots",
            "Snapshots received from controld, by result (applied, refused)",
            self.snapshots.clone(),
        );
        r.register(
            "connections_refused",
            "Client connections closed at accept by a cap, by reason (max_connections, max_connections_per_ip)",
            self.connections_refused.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes completed on client connections, full or resumed (a session ticket)",
            self.tls_handshakes.clone(),
        );
        r.register(
            "timeouts",
            "Connections and requests ended by a deadline, by kind",
            self.timeouts.clone(),
        );
        r.register(
            "upstream_overflow",
            "Requests refused with 503 by an upstream's circuit breaker, by upstream and limit",
            self.upstream_overflow.clone(),
        );
        r.register(
            "upstream_tls_failures",
            "TLS handshakes with upstreams that failed, by upstream and reason",
            self.upstream_tls_failures.clone(),
        );
    }

    /// A deadline of `kind` (one of [`TIMEOUT_KINDS`]) ended a connection or request.
    pub fn timed_out(&self, kind: &'static str) {
        self.timeouts.get_or_create(&KindLabels { kind }).inc();
    }

    /// A client's TLS handshake completed; `resumed`: on a session it had (a ticket).
    pub fn tls_handshake(&self, resumed: bool) {
        let kind = if resumed { "resumed" } else { "full" };
        self.tls_handshakes
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// A connection was closed at accept by the cap `reason`.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A circuit breaker of `upstream` refused a request at `limit`.
    pub fn upstream_overflow(&self, upstream: &str, limit: &'static str) {
        self.upstream_overflow
            .get_or_create(&OverflowLabels {
                upstream: upstream.to_owned(),
                limit,
            })
            .inc();
    }

    /// A TLS handshake with `upstream` failed for `reason` (one of [`TLS_FAILURE_REASONS`]).
    pub fn upstream_tls_failure(&self, upstream: &str, reason: &'static str) {
        self.upstream_tls_failures
            .get_or_create(&TlsFailureLabels {
                upstream: upstream.to_owned(),
                reason,
            })
            .inc();
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Counts a finished request: its status class and how long its response head took.
    /// `site` is `None` when no site matched.
    pub fn request_finished(&self, site: Option<&str>, status: StatusCode, elapsed: Duration) {
        let site = site.unwrap_or(NO_SITE);
        self.duration
            .get_or_create(&SiteLabels {
                site: site.to_owned(),
            })
            .observe(elapsed);
        self.requests
            .get_or_create(&RequestLabels {
                site: site.to_owned(),
                status_class: status_class(status),
            })
            .inc();
    }
}

impl Metrics {
    /// Counts a response of a configured site in the totals ([`Metrics::response_totals`]).
    /// Requests no site matched (anyone can send them) are not counted: they must not dilute a
    /// canary's 5xx ratio.
    pub fn count_response(&self, status: StatusCode) {
        self.totals.count(status);
    }

    /// Responses of the configured sites sent since this process started, every site together,
    /// and of them 5xx. Requests no site matched are not counted.
    pub fn response_totals(&self) -> (u64, u64) {
        self.totals.read()
    }

    /// Counts why proxyd answered a request itself, for the errors that have their own counter.
    pub fn request_failed(&self, site: Option<&str>, failure: Failure) {
        let site = site.unwrap_or(NO_SITE).to_owned();
        let kind = match failure {
            Failure::RateLimited => {
                self.rate_limited.get_or_create(&SiteLabels { site }).inc();
                return;
            }
            Failure::BodyTooLarge => {
                self.body_too_large
                    .get_or_create(&SiteLabels { site })
                    .inc();
                return;
            }
            Failure::Upstream(kind) => kind,
        };
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels { site, kind })
            .inc();
    }

    /// Whether `upstream` gets traffic now.
    pub fn upstream_health(&self, upstream: &str, healthy: bool) {
        self.upstream_healthy
            .get_or_create(&UpstreamLabels {
                upstream: upstream.to_owned(),
            })
            .set(i64::from(healthy));
    }

    /// Drops the series of an upstream no site uses any more.
    pub fn forget_upstream(&self, upstream: &str) {
        self.upstream_healthy.remove(&UpstreamLabels {
            upstream: upstream.to_owned(),
        });
        for limit in ["max_pending_requests", "max_requests"] {
            self.upstream_overflow.remove(&OverflowLabels {
                upstream: upstream.to_owned(),
                limit,
            });
        }
        for reason in TLS_FAILURE_REASONS {
            self.upstream_tls_failures.remove(&TlsFailureLabels {
                upstream: upstream.to_owned(),
                reason,
            });
        }
    }

    /// Counts a client connection as open until the guard drops.
    pub fn connection_opened(&self) -> ConnectionOpen {
        self.connections_open.inc();
        ConnectionOpen(self.connections_open.clone())
    }

    /// Counts a client connection as idle without buffers until the guard drops.
    pub fn connection_idle(&self) -> ConnectionOpen {
        self.connections_idle.inc();
        ConnectionOpen(self.connections_idle.clone())
    }

    pub fn open_connections(&self) -> u64 {
        u64::try_from(self.connections_open.get()).unwrap_or(0)
    }

    /// Whether the Subscribe stream to controld is up.
    pub fn control_plane(&self, connected: bool) {
        self.control_plane_connected.set(i64::from(connected));
    }

    /// A request was sent again to another upstream.
    pub fn retried(&self, site: &str) {
        self.retries
            .get_or_create(&SiteLabels {
                site: site.to_owned(),
            })
            .inc();
    }

    /// A snapshot was applied and `version` serves now.
    pub fn snapshot_applied(&self, version: u64) {
        self.config_version
            .set(i64::try_from(version).unwrap_or(i64::MAX));
        self.last_apply_successful.set(1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_apply_success_timestamp.set(now.as_secs_f64());
        self.snapshots
            .get_or_create(&SnapshotLabels { result: "applied" })
            .inc();
    }

    /// A snapshot was refused (NACK); the previous one keeps serving.
    pub fn snapshot_refused(&self) {
        self.last_apply_successful.set(0);
        self.snapshots
            .get_or_create(&SnapshotLabels { result: "refused" })
            .inc();
    }

    /// Drops every series labelled with `site`, so `/metrics` does not grow with each site a
    /// reload renames or removes. A request still running on the old runtime may record it
    /// once more; the next removal of that name, or a restart, drops it again.
    pub fn forget_site(&self, site: &str) {
        let labels = SiteLabels {
            site: site.to_owned(),
        };
        self.duration.remove(&labels);
        self.retries.remove(&labels);
        self.rate_limited.remove(&labels);
        self.body_too_large.remove(&labels);
        for status_class in STATUS_CLASSES {
            self.requests.remove(&RequestLabels {
                site: site.to_owned(),
                status_class,
            });
        }
        for kind in UPSTREAM_ERROR_KINDS {
            self.upstream_errors.remove(&UpstreamErrorLabels {
                site: site.to_owned(),
                kind,
            });
        }
    }

    /// Every metric in the OpenMetrics text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// "2xx" for 200 to 299, and so on; "other" for the 600 to 999 an upstream may send.
pub fn status_class(status: StatusCode) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

/// The index of `status`'s class in [`STATUS_CLASSES`].
fn status_class_index(status: StatusCode) -> usize {
    match status.as_u16() / 100 {
        class @ 1..=5 => usize::from(class - 1),
        _ => STATUS_CLASSES.len() - 1,
    }
}

/// Keeps a client connection counted in `proxy_connections_open` (or `_idle`).
pub struct ConnectionOpen(StripedGauge);

impl Drop for ConnectionOpen {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Holds one request in `proxy_requests_in_flight`; dropping it takes the request out.
#[must_use = "the request counts as in flight only while the guard lives"]
pub struct InFlight(StripedGauge);

/// Keeps `guard` alive until the response body has been sent or dropped, rather than only until
/// the response head is ready.
pub fn until_body_ends<G, B>(
    guard: G,
    response: Response<B>,
) -> Response<BoxBody<B::Data, B::Error>>
where
    G: Send + Sync + 'static,
    B: hyper::body::Body + Send + Sync + 'static,
{
    // The closure owns the guard: it is dropped with the body, which hyper does once the
    // last frame is written or the connection goes away.
    response.map(|body| {
        body.map_frame(move |frame| {
            let _guard: &G = &guard;
            frame
        })
        .boxed()
    })
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

mod latency;
mod site;
mod striped;
mod totals;

pub use site::SiteMetrics;

pub use latency::Latency;
pub use striped::{StripedCounter, StripedGauge};

#[cfg(test)]
mod tests;
