//! controld's metrics: reloads by result, the last reload's success and time, the version it
//! serves and its data planes, each certificate's notAfter and ACME renewals by result, as
//! Prometheus text on `control.metrics_address` (`/metrics`), which follows reloads ([`listener`]).

mod listener;

pub use listener::{MetricsListener, Rebind};

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How a finished reload or rollback ended, as `proxy_reloads_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadResult {
    Applied,
    Unchanged,
    Rejected,
}

/// What `/metrics` reads of the control plane at scrape time: a narrow view, so that this
/// module depends on nothing of the reload flow (lib.rs, the composition root, provides it).
pub trait Source: Send + Sync + 'static {
    fn metrics(&self) -> &Metrics;
    fn view(&self) -> View;
}

/// The gauges read at scrape time.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The version serving now.
    pub version: u64,
    /// (site, certificate notAfter in Unix seconds) of the snapshot serving now.
    pub certificates: Vec<(String, u64)>,
    pub data_planes: usize,
    /// Data planes whose applied version is the serving one.
    pub data_planes_in_sync: usize,
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SiteLabels {
    site: String,
}

/// Counters that accumulate; gauges are read from the Reloader at scrape time.
pub struct Metrics {
    registry: Registry,
    reloads: Family<ResultLabels, Counter>,
    last_successful: Gauge,
    last_success_timestamp: Gauge<f64, AtomicU64>,
    version: Gauge,
    data_planes: Gauge,
    data_planes_in_sync: Gauge,
    certificate_not_after: Family<SiteLabels, Gauge>,
    renewals: Family<ResultLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut m = Metrics {
            registry: Registry::with_prefix("proxy"),
            reloads: Family::default(),
            last_successful: Gauge::default(),
            last_success_timestamp: Gauge::default(),
            version: Gauge::default(),
            data_planes: Gauge::default(),
            data_planes_in_sync: Gauge::default(),
            certificate_not_after: Family::default(),
            renewals: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "reloads",
            "Reloads and rollbacks, by result (applied, unchanged, rejected)",
            m.reloads.clone(),
        );
        r.register(
            "config_last_reload_successful",
            "1 when the last reload was applied or unchanged, 0 when it was rejected",
            m.last_successful.clone(),
        );
        r.register_with_unit(
            "config_last_reload_success_timestamp",
            "Unix time of the last successful reload (or of the start)",
            Unit::Seconds,
            m.last_success_timestamp.clone(),
        );
        r.register(
            "control_config_version",
            "The version controld serves",
            m.version.clone(),
        );
        r.register(
            "control_data_planes",
            "Data planes subscribed now",
            m.data_planes.clone(),
        );
        r.register(
            "control_data_planes_in_sync",
            "Subscribed data planes serving the current version",
            m.data_planes_in_sync.clone(),
        );
        r.register_with_unit(
            "certificate_not_after",
            "notAfter of the certificate each site serves, Unix time (files and ACME)",
            Unit::Seconds,
            m.certificate_not_after.clone(),
        );
        r.register(
            "certificate_renewals",
            "ACME issuance and renewal attempts, by result (success, failure)",
            m.renewals.clone(),
        );
        for result in ["success", "failure"] {
            m.renewals.get_or_create(&ResultLabels { result }).inc_by(0);
        }
        for result in ["applied", "unchanged", "rejected"] {
            m.reloads.get_or_create(&ResultLabels { result }).inc_by(0);
        }
        // Starting with a valid config counts as a success.
        m.last_successful.set(1);
        m.last_success_timestamp
            .set(unix_seconds(SystemTime::now()));
        m
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

impl Metrics {
    /// Counts a finished reload or rollback (dry runs are not counted).
    pub fn reloaded(&self, outcome: ReloadResult) {
        let result = match outcome {
            ReloadResult::Applied => "applied",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Rejected => "rejected",
        };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
        let ok = outcome != ReloadResult::Rejected;
        self.last_successful.set(i64::from(ok));
        if ok {
            self.last_success_timestamp
                .set(unix_seconds(SystemTime::now()));
        }
    }

    /// Counts a finished ACME attempt.
    pub fn renewed(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.renewals.get_or_create(&ResultLabels { result }).inc();
    }

    fn encode(&self, view: &View) -> Result<String, std::fmt::Error> {
        // Rebuilt at every scrape: a site that lost its certificate loses its series.
        self.certificate_not_after.clear();
        for (site, not_after) in &view.certificates {
            self.certificate_not_after
                .get_or_create(&SiteLabels { site: site.clone() })
                .set(i64::try_from(*not_after).unwrap_or(i64::MAX));
        }
        self.version
            .set(i64::try_from(view.version).unwrap_or(i64::MAX));
        self.data_planes
            .set(i64::try_from(view.data_planes).unwrap_or(i64::MAX));
        self.data_planes_in_sync
            .set(i64::try_from(view.data_planes_in_sync).unwrap_or(i64::MAX));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// How long a scrape being answered when its listener closes gets to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Serves `/metrics` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, source: Arc<dyn Source>, shutdown: CancellationToken) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors and similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let source = source.clone();
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let response = match req.uri().path() {
                "/metrics" => match source.metrics().encode(&source.view()) {
                    Ok(body) => {
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        r.headers_mut()
                            .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
                        r
                    }
                    Err(_) => status(StatusCode::INTERNAL_SERVER_ERROR),
                },
                _ => status(StatusCode::NOT_FOUND),
            };
            std::future::ready(Ok::<_, Infallible>(response))
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                () = shutdown.cancelled() => {}
            }
            // The listener closed (a reload moved it, or controld stops): a scrape being answered
            // is finished, an idle keep-alive connection closes now.
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        });
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!(
        "{}\n",
        code.canonical_reason().unwrap_or("error")
    ))));
    *r.status_mut() = code;
    r
}
