//! Log-linear latency histogram over nanoseconds.
//!
//! Values below 256 ns are counted exactly; above that, every power of two is
//! split into 128 equal buckets, so a bucket spans at most 1/128 of its lower
//! bound. Percentiles report the bucket's midpoint, i.e. within ±0.4% of the
//! true value (well under 1%). Min, max and the mean are exact.

use std::time::Duration;

const SUB: u64 = 128; // buckets per power of two (2^7)
const SUB_BITS: u32 = 7;
const EXACT: u64 = 2 * SUB; // 0..256 ns counted one per bucket
const MAX_EXP: u32 = 40; // values clamp at 2^41 ns (~36 min)
const BUCKETS: usize = (EXACT + (MAX_EXP as u64 - SUB_BITS as u64) * SUB) as usize;

#[derive(Clone)]
pub struct Hist {
    counts: Vec<u64>,
    n: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let e = (63 - v.leading_zeros()).min(MAX_EXP); // floor(log2 v) >= 8
    if e == MAX_EXP && v >> e > 1 {
        return BUCKETS - 1;
    }
    let shift = e - SUB_BITS; // >= 1
    let m = (v >> shift) - SUB; // 0..128
    let i = EXACT + (shift as u64 - 1) * SUB + m;
    (i as usize).min(BUCKETS - 1)
}

/// Lower bound and width of bucket `i`.
fn bucket(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < EXACT {
        return (i, 1);
    }
    let shift = (i - EXACT) / SUB + 1;
    let m = (i - EXACT) % SUB + SUB;
    (m << shift, 1u64 << shift)
}

impl Hist {
    pub fn new() -> Self {
        Hist {
            counts: Vec::new(), // allocated on first record
            n: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    pub fn record(&mut self, d: Duration) {
        let v = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        self.counts[index(v)] += 1;
        self.n += 1;
        self.sum_ns += v as u128;
        self.min_ns = self.min_ns.min(v);
        self.max_ns = self.max_ns.max(v);
    }

    pub fn merge(&mut self, o: &Hist) {
        if o.n == 0 {
            return;
        }
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
        }
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += *b;
        }
        self.n += o.n;
        self.sum_ns += o.sum_ns;
        self.min_ns = self.min_ns.min(o.min_ns);
        self.max_ns = self.max_ns.max(o.max_ns);
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// The value at quantile `q` (0..=1) in ns, clamped to [min, max]; 0 when empty.
    pub fn quantile_ns(&self, q: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0u64;
        for (i, c) in self.counts.iter().enumerate() {
            seen += *c;
            if seen >= rank {
                let (lo, w) = bucket(i);
                let mid = lo as f64 + (w as f64 - 1.0) / 2.0;
                return mid.clamp(self.min_ns as f64, self.max_ns as f64);
            }
        }
        self.max_ns as f64
    }

    /// The non-empty buckets as `[index, count]` pairs, for a report that merges runs (bucket
    /// `i` spans what `bucket(i)` says; `bench/lib/report.py` has the same mapping).
    pub fn sparse_json(&self) -> String {
        let pairs: Vec<String> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| format!("[{i},{c}]"))
            .collect();
        format!("[{}]", pairs.join(","))
    }

    pub fn max_ns(&self) -> u64 {
        if self.n == 0 { 0 } else { self.max_ns }
    }

    pub fn min_ns(&self) -> u64 {
        if self.n == 0 { 0 } else { self.min_ns }
    }

    pub fn mean_ns(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            self.sum_ns as f64 / self.n as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_and_error_bound() {
        let mut v = 0u64;
        while v < (1u64 << 41) {
            let i = index(v);
            let (lo, w) = bucket(i);
            assert!(lo <= v && v < lo + w, "v={v} i={i} lo={lo} w={w}");
            if v >= EXACT {
                assert!((w as f64) / (lo as f64) <= 1.0 / 128.0 + 1e-12);
            }
            v = v + 1 + v / 97;
        }
        assert!(index(u64::MAX) == BUCKETS - 1);
    }

    #[test]
    fn quantiles() {
        let mut h = Hist::new();
        for us in 1..=1000u64 {
            h.record(Duration::from_micros(us));
        }
        let p50 = h.quantile_ns(0.5) / 1000.0;
        let p99 = h.quantile_ns(0.99) / 1000.0;
        assert!((p50 - 500.0).abs() / 500.0 < 0.01, "{p50}");
        assert!((p99 - 990.0).abs() / 990.0 < 0.01, "{p99}");
        assert_eq!(h.max_ns(), 1_000_000);
        assert!((h.mean_ns() - 500_500.0).abs() < 1.0);
    }
}
