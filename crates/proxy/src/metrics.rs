//! Per-pool traffic metrics, recorded without locks on the hot path.
//!
//! Every counter is a relaxed atomic. A reader takes a [`MetricsSnapshot`] (a consistent-enough
//! copy: each counter is exact, the set is not one instant) and a judge compares two snapshots with
//! [`MetricsSnapshot::since`] to get the counts of a window.
//!
//! Latency goes into the log-linear histogram of [`cutover_core::histogram`] (within 6.25 %, from
//! 1 µs to about 67 s): fine enough for p50/p95/p99 from 100 µs to 60 s, and the same layout the
//! judge reads.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use cutover_core::histogram::bucket_index;
pub use cutover_core::histogram::{bucket_upper_micros, LATENCY_BUCKETS};

/// Status classes counted: 1xx to 5xx.
pub const STATUS_CLASSES: usize = 5;

/// Live counters of one pool (one slot running one version of one app).
#[derive(Debug)]
pub struct PoolMetrics {
    /// Unique per object: tells readers whether two snapshots come from the same counters.
    series: u64,
    requests: [AtomicU64; STATUS_CLASSES],
    latency: Box<[AtomicU64]>,
    latency_sum_micros: AtomicU64,
    in_flight: AtomicI64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connect_failures: AtomicU64,
    retries: AtomicU64,
}

impl Default for PoolMetrics {
    fn default() -> Self {
        static NEXT_SERIES: AtomicU64 = AtomicU64::new(1);
        PoolMetrics {
            series: NEXT_SERIES.fetch_add(1, Ordering::Relaxed),
            requests: Default::default(),
            latency: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            latency_sum_micros: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }
}

impl PoolMetrics {
    /// Distinct for every `PoolMetrics` made in this process: snapshots with equal series come
    /// from the same counters and may be subtracted.
    pub fn series(&self) -> u64 {
        self.series
    }

    /// Records a finished request: its status (as the client saw it) and its latency to the end of
    /// the response body.
    pub fn record(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, STATUS_CLASSES) - 1;
        self.requests[class].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket_index(micros)].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn request_finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn add_bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    pub fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            requests_by_class: std::array::from_fn(|i| load(&self.requests[i])),
            latency_buckets: self.latency.iter().map(load).collect(),
            latency_sum_micros: load(&self.latency_sum_micros),
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
            connect_failures: load(&self.connect_failures),
            retries: load(&self.retries),
        }
    }
}

/// Cumulative counts of a pool at one moment, or (after [`MetricsSnapshot::since`]) the counts of
/// a window between two moments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Requests by status class: index 0 is 1xx, 4 is 5xx.
    pub requests_by_class: [u64; STATUS_CLASSES],
    /// Counts per latency bucket; see [`bucket_upper_micros`].
    pub latency_buckets: Vec<u64>,
    pub latency_sum_micros: u64,
    /// Requests in flight when the snapshot was taken (a gauge: not subtracted by `since`).
    pub in_flight: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connect_failures: u64,
    pub retries: u64,
}

impl MetricsSnapshot {
    /// The counts accumulated between `mark` (taken earlier from the same pool) and `self`.
    pub fn since(&self, mark: &MetricsSnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            requests_by_class: std::array::from_fn(|i| {
                self.requests_by_class[i].saturating_sub(mark.requests_by_class[i])
            }),
            latency_buckets: self
                .latency_buckets
                .iter()
                .zip(mark.latency_buckets.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            latency_sum_micros: self.latency_sum_micros.saturating_sub(mark.latency_sum_micros),
            in_flight: self.in_flight,
            bytes_in: self.bytes_in.saturating_sub(mark.bytes_in),
            bytes_out: self.bytes_out.saturating_sub(mark.bytes_out),
            connect_failures: self.connect_failures.saturating_sub(mark.connect_failures),
            retries: self.retries.saturating_sub(mark.retries),
        }
    }

    pub fn total_requests(&self) -> u64 {
        self.requests_by_class.iter().sum()
    }

    pub fn server_errors(&self) -> u64 {
        self.requests_by_class[4]
    }

    /// Share of requests answered 5xx; `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        let total = self.total_requests();
        (total > 0).then(|| self.server_errors() as f64 / total as f64)
    }

    /// The `q`-quantile (0..=1) of latency, as the upper bound of the bucket that holds it, so the
    /// figure errs high by at most 6.25 %. `None` without requests.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.latency_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.latency_buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(Duration::from_micros(bucket_upper_micros(i)));
            }
        }
        None
    }

    /// Requests whose latency was at most `micros` (counting whole buckets below that bound).
    pub fn count_at_most_micros(&self, micros: u64) -> u64 {
        self.latency_buckets
            .iter()
            .enumerate()
            .take_while(|(i, _)| bucket_upper_micros(*i) <= micros)
            .map(|(_, c)| c)
            .sum()
    }

    /// A compact form for the admin API: totals and quantiles rather than raw buckets.
    pub fn summary(&self) -> MetricsSummary {
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        MetricsSummary {
            requests: self.total_requests(),
            requests_by_class: self.requests_by_class,
            error_rate: self.error_rate(),
            latency_p50_ms: ms(self.latency_quantile(0.50)),
            latency_p95_ms: ms(self.latency_quantile(0.95)),
            latency_p99_ms: ms(self.latency_quantile(0.99)),
            latency_mean_ms: (self.total_requests() > 0)
                .then(|| self.latency_sum_micros as f64 / 1000.0 / self.total_requests() as f64),
            in_flight: self.in_flight,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            connect_failures: self.connect_failures,
            retries: self.retries,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSummary {
    pub requests: u64,
    pub requests_by_class: [u64; STATUS_CLASSES],
    pub error_rate: Option<f64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_mean_ms: Option<f64>,
    pub in_flight: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connect_failures: u64,
    pub retries: u64,
}

/// Bucket bounds, in seconds, of the histogram exported to Prometheus: a coarse, conventional
/// subset of the fine buckets, so dashboards get few series and the judge keeps full resolution.
pub const PROMETHEUS_BOUNDS_SECS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0, 60.0,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_windows() {
        let m = PoolMetrics::default();
        for _ in 0..98 {
            m.record(200, Duration::from_millis(10));
        }
        let mark = m.snapshot();
        m.record(503, Duration::from_millis(500));
        m.record(200, Duration::from_millis(1000));
        let all = m.snapshot();
        let p50 = all.latency_quantile(0.5).unwrap().as_secs_f64();
        assert!((0.010..0.0107).contains(&p50), "p50 {p50}");
        let p99 = all.latency_quantile(0.99).unwrap().as_secs_f64();
        assert!((0.5..0.54).contains(&p99), "p99 {p99}");
        let window = all.since(&mark);
        assert_eq!(window.total_requests(), 2);
        assert_eq!(window.server_errors(), 1);
        assert_eq!(window.error_rate(), Some(0.5));
    }
}
