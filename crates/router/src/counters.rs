//! A router's own counters as a metric source: a window is the difference between the reading
//! taken when it started and the reading when it is measured.

// MetricError is large (it carries the query and the last failure, see cutover-monitoring); it
// occurs at most once per slot and window, so boxing it would save nothing.
#![allow(clippy::result_large_err)]

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use cutover_core::histogram::{bucket_upper_micros, quantile_bucket};
use cutover_core::Timestamp;
use cutover_monitoring::{MetricError, MetricSource, SlotMeasurement, WindowQuery};

use crate::{Router, SlotCounters};

/// Measures windows from [`Router::counters`]. This is how the built-in proxy's metrics reach the
/// judge, with latency histograms; HAProxy's counters and nginx's access log come the same way.
#[derive(Debug)]
pub struct CounterSource {
    router: Arc<dyn Router>,
    /// The reading at the start of the current window; `None` before the first window or when
    /// the router could not be read then.
    start: Mutex<Option<[SlotCounters; 2]>>,
}

impl CounterSource {
    pub fn new(router: Arc<dyn Router>) -> Self {
        CounterSource {
            router,
            start: Mutex::new(None),
        }
    }

    fn unavailable(&self, reason: String) -> MetricError {
        MetricError::Counters {
            source_name: format!("counters of the {}", self.router.describe()),
            reason,
        }
    }
}

#[async_trait]
impl MetricSource for CounterSource {
    async fn start_window(&self, _at: Timestamp) {
        let reading = match self.router.counters().await {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "could not read the router's counters at the start of a window");
                None
            }
        };
        *self.start.lock().unwrap_or_else(PoisonError::into_inner) = reading;
    }

    async fn measure(&self, q: &WindowQuery) -> Result<SlotMeasurement, MetricError> {
        let now = self.read_now().await?;
        self.difference(&now, q)
    }

    /// Both slots from one reading of the router.
    async fn measure_window(
        &self,
        canary: &WindowQuery,
        baseline: Option<&WindowQuery>,
    ) -> (
        Result<SlotMeasurement, MetricError>,
        Option<Result<SlotMeasurement, MetricError>>,
    ) {
        match self.read_now().await {
            Ok(now) => (
                self.difference(&now, canary),
                baseline.map(|q| self.difference(&now, q)),
            ),
            Err(e) => (Err(e.clone()), baseline.map(|_| Err(e))),
        }
    }
}

impl CounterSource {
    async fn read_now(&self) -> Result<[SlotCounters; 2], MetricError> {
        self.router.counters().await.map_err(|e| {
            // The source's name already says which router: its reason alone, not the name twice.
            self.unavailable(match e {
                crate::RouterError::Unavailable { reason, .. } => reason,
                other => other.to_string(),
            })
        })
    }

    /// The counts of `q`'s slot between the window's first reading and `now`.
    fn difference(&self, now: &[SlotCounters; 2], q: &WindowQuery) -> Result<SlotMeasurement, MetricError> {
        let start = self
            .start
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| self.unavailable("the window's first reading is missing".to_string()))?;
        let (before, after) = (&start[q.slot.index()], &now[q.slot.index()]);
        if after.version != q.version {
            return Err(self.unavailable(format!(
                "slot {} runs version {:?}, not {:?}",
                q.slot, after.version, q.version
            )));
        }
        let started_fresh = before.series != after.series || before.version != after.version;
        if started_fresh || after.requests < before.requests {
            // The counters restarted inside the window: what they hold now is part of it, but
            // not all, so the window says nothing reliable.
            return Err(self.unavailable(format!(
                "the counters of slot {} restarted during the window (a reload or a new version)",
                q.slot
            )));
        }
        let latency_buckets = match (&before.latency_buckets, &after.latency_buckets) {
            (Some(b), Some(a)) => Some(
                a.iter()
                    .zip(b.iter().chain(std::iter::repeat(&0)))
                    .map(|(a, b)| a.saturating_sub(*b))
                    .collect::<Vec<u64>>(),
            ),
            _ => None,
        };
        let p99_ms = latency_buckets
            .as_deref()
            .and_then(|b| quantile_bucket(b, 0.99))
            .map(|i| bucket_upper_micros(i) as f64 / 1000.0);
        let codes = match (&before.codes, &after.codes) {
            (Some(b), Some(a)) => Some(
                a.iter()
                    .map(|(code, n)| (*code, n.saturating_sub(b.get(code).copied().unwrap_or(0)) as f64))
                    .filter(|(_, n)| *n > 0.0)
                    .collect(),
            ),
            _ => None,
        };
        Ok(SlotMeasurement {
            requests: Some((after.requests - before.requests) as f64),
            errors: Some(after.server_errors.saturating_sub(before.server_errors) as f64),
            client_errors: match (before.client_errors, after.client_errors) {
                (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64),
                _ => None,
            },
            codes,
            users: after.users.map(|u| u as f64),
            users_with_client_errors: after.users_with_client_errors.map(|u| u as f64),
            p99_ms,
            custom: Default::default(),
            latency_buckets,
        })
    }
}
