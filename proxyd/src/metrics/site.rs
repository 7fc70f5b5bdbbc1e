//! A site's request series, resolved once per runtime.

use std::time::Duration;

use http::StatusCode;

use super::{
    Latency, Metrics, RequestLabels, STATUS_CLASSES, SiteLabels, StripedCounter, status_class_index,
};

/// A site's request series, resolved once per runtime rather than looked up by label on every
/// request (a label lookup copies the site name and hashes it). A series still appears only
/// when first used.
#[derive(Debug, Default)]
pub struct SiteMetrics {
    requests: [std::sync::OnceLock<StripedCounter>; STATUS_CLASSES.len()],
    duration: std::sync::OnceLock<Latency>,
}

impl SiteMetrics {
    /// Counts a finished request of the site named `site`, as [`Metrics::request_finished`].
    pub fn request_finished(
        &self,
        metrics: &Metrics,
        site: &str,
        status: StatusCode,
        elapsed: Duration,
    ) {
        self.duration
            .get_or_init(|| {
                metrics
                    .duration
                    .get_or_create(&SiteLabels {
                        site: site.to_owned(),
                    })
                    .clone()
            })
            .observe(elapsed);
        let class = status_class_index(status);
        if let Some(counter) = self.requests.get(class) {
            counter
                .get_or_init(|| {
                    metrics
                        .requests
                        .get_or_create(&RequestLabels {
                            site: site.to_owned(),
                            status_class: STATUS_CLASSES[class],
                        })
                        .clone()
                })
                .inc();
        }
    }
}
