//! A latency histogram whose observations take no lock and share no cache line across cores
//! (mostly). prometheus_client's `Histogram` keeps each series behind a mutex, so every request
//! of a site took the same lock at its end: requests serialized across cores on it
//! (`bench/contention` measures both). Here each thread counts in one of [`STRIPES`] stripes,
//! each on cache lines of its own; a scrape adds them up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the buckets, in seconds; a last bucket takes the rest (+Inf).
pub const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The same bounds in microseconds, for an integer comparison per observation.
const BOUNDS_MICROS: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// Stripes per series: threads beyond it share one, 2 per stripe on 16 cores.
pub const STRIPES: usize = 8;

/// Cheap to clone: clones share the series.
#[derive(Debug, Clone, Default)]
pub struct Latency(Arc<[Counts; STRIPES]>);

/// One stripe, aligned so that no two stripes share a cache line (or the adjacent line the
/// prefetcher pulls along).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Counts {
    /// Per bucket, not cumulative; the last is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// This thread's stripe.
fn stripe() -> usize {
    crate::stripes::thread_index() % STRIPES
}

impl Latency {
    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_MICROS
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(BOUNDS_MICROS.len());
        let Some(counts) = self.0.get(stripe()) else {
            return;
        };
        if let Some(b) = counts.buckets.get(bucket) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        counts.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl TypedMetric for Latency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let stripes = self.0.iter();
        let buckets: Vec<(f64, u64)> = BUCKETS
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .enumerate()
            .map(|(i, bound)| {
                let n = stripes
                    .clone()
                    .filter_map(|s| s.buckets.get(i))
                    .map(|b| b.load(Ordering::Relaxed))
                    .sum();
                (bound, n)
            })
            .collect();
        // The sum is read apart from the buckets: a scrape during traffic may see them a
        // request apart, as with any lock-free histogram.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let micros: u64 = stripes.map(|s| s.sum_micros.load(Ordering::Relaxed)).sum();
        let sum = micros as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_encode_as_prometheus_does() {
        let latency = Latency::default();
        latency.observe(Duration::from_micros(500));
        latency.observe(Duration::from_millis(1));
        latency.observe(Duration::from_millis(30));
        latency.observe(Duration::from_secs(60));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("d", "durations", latency);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "d_bucket{le=\"0.001\"} 2",
            "d_bucket{le=\"0.025\"} 2",
            "d_bucket{le=\"0.05\"} 3",
            "d_bucket{le=\"10.0\"} 3",
            "d_bucket{le=\"+Inf\"} 4",
            "d_count 4",
            "d_sum 60.0315",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
