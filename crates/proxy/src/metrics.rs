//! Per-pool traffic metrics, recorded without locks on the hot path.
//!
//! Every counter is a relaxed atomic. A reader takes a [`MetricsSnapshot`] (a consistent-enough
//! copy: each counter is exact, the set is not one instant) and a judge compares two snapshots with
//! [`MetricsSnapshot::since`] to get the counts of a window.
//!
//! Latency goes into the log-linear histogram of [`cutover_core::histogram`] (within 6.25 %, from
//! 1 µs to about 67 s): fine enough for p50/p95/p99 from 100 µs to 60 s, and the same layout the
//! judge reads.
//!
//! Responses are counted by status class and, for the common failures, by code
//! ([`TRACKED_CODES`]). Requests that failed by the client's fault ([`ClientFault`]) are counted
//! apart and in nothing else: not in the classes, the codes or the latency. Distinct users are
//! estimated from a hash of their key ([`UserSketch`]), overall and among those who got a 4xx.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use cutover_core::histogram::bucket_index;
pub use cutover_core::histogram::{bucket_upper_micros, LATENCY_BUCKETS};
use cutover_core::status::{tracked_index, ClientFault, TRACKED_CODES};

/// Number of codes counted one by one.
pub const TRACKED: usize = TRACKED_CODES.len();
/// Number of kinds of client fault.
pub const CLIENT_FAULTS: usize = ClientFault::ALL.len();

/// Status classes counted: 1xx to 5xx.
pub const STATUS_CLASSES: usize = 5;

/// Live counters of one pool (one slot running one version of one app).
#[derive(Debug)]
pub struct PoolMetrics {
    /// Unique per object: tells readers whether two snapshots come from the same counters.
    series: u64,
    requests: [AtomicU64; STATUS_CLASSES],
    codes: [AtomicU64; TRACKED],
    client_faults: [AtomicU64; CLIENT_FAULTS],
    users: UserSketch,
    users_with_client_errors: UserSketch,
    latency: Box<[AtomicU64]>,
    latency_sum_micros: AtomicU64,
    in_flight: AtomicI64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connect_failures: AtomicU64,
    retries: AtomicU64,
    failovers: AtomicU64,
}

impl Default for PoolMetrics {
    fn default() -> Self {
        static NEXT_SERIES: AtomicU64 = AtomicU64::new(1);
        PoolMetrics {
            series: NEXT_SERIES.fetch_add(1, Ordering::Relaxed),
            requests: Default::default(),
            codes: Default::default(),
            client_faults: Default::default(),
            users: UserSketch::default(),
            users_with_client_errors: UserSketch::default(),
            latency: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            latency_sum_micros: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
        }
    }
}

impl PoolMetrics {
    /// Distinct for every `PoolMetrics` made in this process: snapshots with equal series come
    /// from the same counters and may be subtracted.
    pub fn series(&self) -> u64 {
        self.series
    }

    /// Records an answered request: its status (as the client saw it), its latency to the
    /// response head, and the hash of its user's key (see [`cutover_core::Bucketer::hash`]).
    pub fn record(&self, status: u16, latency: Duration, user: u64) {
        let class = usize::from(status / 100).clamp(1, STATUS_CLASSES) - 1;
        self.requests[class].fetch_add(1, Ordering::Relaxed);
        if status >= 400 {
            if let Some(i) = tracked_index(status) {
                self.codes[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.users.insert(user);
        if class == 3 {
            self.users_with_client_errors.insert(user);
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket_index(micros)].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Records a request that failed by its client's fault: counted here and nowhere else.
    pub fn record_client_fault(&self, fault: ClientFault) {
        self.client_faults[fault.index()].fetch_add(1, Ordering::Relaxed);
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

    /// A request this pool failed (or could not take) was served by the other slot.
    pub fn failed_over(&self) {
        self.failovers.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            requests_by_class: std::array::from_fn(|i| load(&self.requests[i])),
            codes: std::array::from_fn(|i| load(&self.codes[i])),
            client_faults: std::array::from_fn(|i| load(&self.client_faults[i])),
            users: self.users.estimate(),
            users_with_client_errors: self.users_with_client_errors.estimate(),
            latency_buckets: self.latency.iter().map(load).collect(),
            latency_sum_micros: load(&self.latency_sum_micros),
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0) as u64,
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
            connect_failures: load(&self.connect_failures),
            retries: load(&self.retries),
            failovers: load(&self.failovers),
        }
    }
}

/// Cumulative counts of a pool at one moment, or (after [`MetricsSnapshot::since`]) the counts of
/// a window between two moments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Requests by status class: index 0 is 1xx, 4 is 5xx. Client faults are not among them.
    pub requests_by_class: [u64; STATUS_CLASSES],
    /// Requests per code of [`TRACKED_CODES`].
    pub codes: [u64; TRACKED],
    /// Requests that failed by the client's fault, per [`ClientFault::index`].
    pub client_faults: [u64; CLIENT_FAULTS],
    /// Distinct users served since the counters started (an estimate; a gauge: not subtracted
    /// by `since`).
    pub users: u64,
    /// Of those, the users who got at least one 4xx (an estimate; a gauge).
    pub users_with_client_errors: u64,
    /// Counts per latency bucket; see [`bucket_upper_micros`].
    pub latency_buckets: Vec<u64>,
    pub latency_sum_micros: u64,
    /// Requests in flight when the snapshot was taken (a gauge: not subtracted by `since`).
    pub in_flight: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connect_failures: u64,
    pub retries: u64,
    /// Requests this pool failed or could not take that the other slot served instead.
    pub failovers: u64,
}

impl MetricsSnapshot {
    /// The counts accumulated between `mark` (taken earlier from the same pool) and `self`.
    pub fn since(&self, mark: &MetricsSnapshot) -> MetricsSnapshot {
        MetricsSnapshot {
            requests_by_class: std::array::from_fn(|i| {
                self.requests_by_class[i].saturating_sub(mark.requests_by_class[i])
            }),
            codes: std::array::from_fn(|i| self.codes[i].saturating_sub(mark.codes[i])),
            client_faults: std::array::from_fn(|i| {
                self.client_faults[i].saturating_sub(mark.client_faults[i])
            }),
            users: self.users,
            users_with_client_errors: self.users_with_client_errors,
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
            failovers: self.failovers.saturating_sub(mark.failovers),
        }
    }

    pub fn total_requests(&self) -> u64 {
        self.requests_by_class.iter().sum()
    }

    pub fn server_errors(&self) -> u64 {
        self.requests_by_class[4]
    }

    /// 4xx answers (of the backend, or of the proxy for reasons that are not the client's).
    pub fn client_errors(&self) -> u64 {
        self.requests_by_class[3]
    }

    /// Counts of the tracked codes that occurred, by code.
    pub fn code_counts(&self) -> std::collections::BTreeMap<u16, u64> {
        TRACKED_CODES
            .iter()
            .zip(self.codes)
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| (*c, n))
            .collect()
    }

    /// Client faults that occurred, by kind.
    pub fn client_fault_counts(&self) -> std::collections::BTreeMap<&'static str, u64> {
        ClientFault::ALL
            .iter()
            .zip(self.client_faults)
            .filter(|(_, n)| *n > 0)
            .map(|(f, n)| (f.as_str(), n))
            .collect()
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
            client_error_rate: (self.total_requests() > 0)
                .then(|| self.client_errors() as f64 / self.total_requests() as f64),
            codes: self.code_counts(),
            client_faults: self.client_fault_counts(),
            users: self.users,
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
            failovers: self.failovers,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricsSummary {
    pub requests: u64,
    pub requests_by_class: [u64; STATUS_CLASSES],
    /// Share of requests answered 5xx.
    pub error_rate: Option<f64>,
    /// Share of requests answered 4xx.
    pub client_error_rate: Option<f64>,
    /// Tracked 4xx and 5xx codes that occurred.
    pub codes: std::collections::BTreeMap<u16, u64>,
    /// Requests that failed by the client's fault, by kind: in no other count.
    pub client_faults: std::collections::BTreeMap<&'static str, u64>,
    /// Distinct users served (estimated).
    pub users: u64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub latency_mean_ms: Option<f64>,
    pub in_flight: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub connect_failures: u64,
    pub retries: u64,
    pub failovers: u64,
}

/// Distinct users, estimated by linear counting over 65 536 bits of their keys' hashes: within a
/// few percent up to tens of thousands of users, for 8 KiB per sketch. A bit already set is only
/// read, so the common case (a returning user) writes nothing.
#[derive(Debug)]
pub struct UserSketch {
    bits: Box<[AtomicU64]>,
}

const SKETCH_WORDS: usize = 1024;
const SKETCH_BITS: f64 = (SKETCH_WORDS * 64) as f64;

impl Default for UserSketch {
    fn default() -> Self {
        UserSketch {
            bits: (0..SKETCH_WORDS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl UserSketch {
    pub fn insert(&self, hash: u64) {
        // Bits 40..56 of the hash: independent of the low bits that choose the user's bucket, so
        // the canary's users spread over the whole sketch.
        let bit = (hash >> 40) & 0xffff;
        let (word, mask) = ((bit >> 6) as usize, 1u64 << (bit & 63));
        if let Some(w) = self.bits.get(word) {
            if w.load(Ordering::Relaxed) & mask == 0 {
                w.fetch_or(mask, Ordering::Relaxed);
            }
        }
    }

    pub fn estimate(&self) -> u64 {
        let zeros: u32 = self
            .bits
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_zeros())
            .sum();
        let zeros = f64::from(zeros.max(1));
        (SKETCH_BITS * (SKETCH_BITS / zeros).ln()).round() as u64
    }
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
            m.record(200, Duration::from_millis(10), 1);
        }
        let mark = m.snapshot();
        m.record(503, Duration::from_millis(500), 2);
        m.record(200, Duration::from_millis(1000), 3);
        let all = m.snapshot();
        let p50 = all.latency_quantile(0.5).unwrap().as_secs_f64();
        assert!((0.010..0.0107).contains(&p50), "p50 {p50}");
        let p99 = all.latency_quantile(0.99).unwrap().as_secs_f64();
        assert!((0.5..0.54).contains(&p99), "p99 {p99}");
        let window = all.since(&mark);
        assert_eq!(window.total_requests(), 2);
        assert_eq!(window.server_errors(), 1);
        assert_eq!(window.error_rate(), Some(0.5));
        assert_eq!(window.code_counts().get(&503), Some(&1));
    }

    #[test]
    fn client_faults_count_nowhere_else() {
        let m = PoolMetrics::default();
        let b = cutover_core::Bucketer::new(0);
        m.record(401, Duration::from_millis(1), b.hash(b"alice"));
        m.record(418, Duration::from_millis(1), b.hash(b"bob"));
        m.record_client_fault(ClientFault::Malformed);
        m.record_client_fault(ClientFault::Aborted);
        let s = m.snapshot();
        assert_eq!(s.total_requests(), 2);
        assert_eq!(s.client_errors(), 2);
        assert_eq!(s.server_errors(), 0);
        assert_eq!(s.code_counts(), [(401, 1)].into_iter().collect());
        assert_eq!(s.client_fault_counts().get("malformed"), Some(&1));
        assert_eq!(s.client_fault_counts().get("aborted"), Some(&1));
        assert_eq!(s.latency_buckets.iter().sum::<u64>(), 2);
        assert_eq!(s.users, 2);
        assert_eq!(s.users_with_client_errors, 2);
    }

    #[test]
    fn users_are_counted_once_each_within_a_few_percent() {
        let sketch = UserSketch::default();
        let b = cutover_core::Bucketer::new(3);
        for n in [0u64, 1, 100, 5_000, 30_000] {
            let sketch_n = UserSketch::default();
            for i in 0..n {
                let h = b.hash(format!("user-{i}").as_bytes());
                sketch_n.insert(h);
                sketch_n.insert(h);
            }
            let got = sketch_n.estimate() as f64;
            assert!(
                (got - n as f64).abs() <= (n as f64 * 0.03).max(1.0),
                "{n} users estimated as {got}"
            );
        }
        assert_eq!(sketch.estimate(), 0);
    }
}
