//! External monitoring for cutover: metrics of a slot over an observation window from a metric
//! system, checks of user-defined metrics against bounds and the baseline, and the alert gate
//! that keeps a rollout from starting while people are being paged.
//!
//! [`MetricSource`] has two implementations: [`PrometheusSource`] here, and
//! `cutover_router::CounterSource`, which reads a router's own per-slot counters (the built-in
//! proxy's, with latency histograms; HAProxy's; nginx's access log). The controller measures every
//! window through this one trait. The rest of this crate is for systems that live elsewhere: a
//! Prometheus that scrapes cutover's admin `/metrics` (or the app's own metrics), and an
//! Alertmanager that knows what is on fire.
//!
//! # Sources and gates
//!
//! - [`MetricSource`]: one trait for anything that can say how a slot did over a window. It
//!   returns a [`SlotMeasurement`]: request count, error count, p99 latency and any custom
//!   metrics.
//! - [`PrometheusSource`] ([`prometheus`]): runs one PromQL instant query per metric, evaluated
//!   at the window's end, with `{app}`, `{slot}`, `{version}` and `{interval}` (the window's
//!   length) substituted into the configured templates. The defaults read the metrics cutover
//!   itself exports (`cutover_requests_total`, `cutover_request_duration_seconds`), so pointing
//!   a Prometheus at cutover's `/metrics` is all the configuration needed. Each query must
//!   aggregate to one series; more is an error, because silently picking one of several series
//!   would judge the wrong thing.
//! - [`judge_custom`] ([`custom`]): checks custom metrics of the canary against absolute bounds
//!   and against the baseline slot (at most N % worse in the metric's bad direction).
//! - [`AlertGate`] ([`alertmanager`]): asks Alertmanager (API v2) for active, unsilenced,
//!   uninhibited alerts matching the configured matchers; any such alert blocks a rollout, and
//!   [`describe`] says which ones in the refusal reason.
//!
//! # No data is not good news
//!
//! Every value in a [`SlotMeasurement`] is an `Option`. `None` means the metric system had no
//! answer: an empty result (no series matched, e.g. the slot got no traffic or the labels are
//! wrong), `NaN` (e.g. a quantile over zero observations) or an infinity (e.g. a quantile that
//! falls in the `+Inf` bucket). Judges treat `None` as *inconclusive*, never as a pass: a
//! rollout whose numbers cannot be read extends its window and then waits for a person; it is
//! never promoted blind. [`judge_custom`] follows the same rule.
//!
//! # Failures and retries
//!
//! Requests to Prometheus and Alertmanager have a timeout per attempt (`timeout_ms`) and are
//! retried `retries` times (so `retries + 1` attempts at most) with exponential backoff starting
//! at `retry_backoff_ms`, but only when another attempt can help: connection failures, timeouts,
//! HTTP 5xx, 408 and 429, and Prometheus API errors of type `timeout`, `canceled`, `internal` or
//! `unavailable`. A rejected query (HTTP 400 `bad_data`, 422 `execution`) fails at once: it
//! would fail the same way every time. The final error ([`MetricError::Query`],
//! [`GateError::Query`]) carries the query, the number of attempts and the last failure, and
//! says what to check.

// Errors carry the query, the URL and the last failure so the decision log can say what went
// wrong; they occur at most once per query and window, so their size costs nothing that boxing
// would save, and boxing would make them clumsier to match.
#![allow(clippy::result_large_err)]

pub mod alertmanager;
pub mod custom;
mod http;
pub mod prometheus;

use std::collections::BTreeMap;

use async_trait::async_trait;
use cutover_core::{Slot, Timestamp};
use serde::{Deserialize, Serialize};

pub use alertmanager::{describe, ActiveAlert, AlertGate, AlertGateConfig, GateError, MatchOp, Matcher};
pub use custom::{judge_custom, CheckOutcome, CustomCheck, CustomMetric, Direction};
pub use http::RequestFailure;
pub use prometheus::{
    FlagPrometheusConfig, PrometheusConfig, PrometheusSource, RangeSeries, Sample, Templates,
};

/// The window of one slot to measure: the release `version` of `app` running in `slot`, over
/// `(from, to]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowQuery {
    pub app: String,
    pub slot: Slot,
    pub version: String,
    pub from: Timestamp,
    pub to: Timestamp,
}

/// What a source measured for one slot over one window. `None`: no data (see the crate docs),
/// which a judge must treat as inconclusive.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SlotMeasurement {
    /// Requests answered in the window.
    pub requests: Option<f64>,
    /// Of those, the ones that count as errors (by default: 5xx responses).
    pub errors: Option<f64>,
    /// Of those, the 4xx responses (none of them the client's own fault: see
    /// [`cutover_core::ClientFault`]). `None` when the source cannot tell; the judge then judges
    /// 5xx and latency only.
    #[serde(default)]
    pub client_errors: Option<f64>,
    /// Responses of the codes of [`cutover_core::TRACKED_CODES`] by code, when the source tells
    /// them apart: for naming codes in decisions and ignoring some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<BTreeMap<u16, f64>>,
    /// Distinct users the release served so far and, of those, the users who got a 4xx
    /// (estimates, since the release started, not per window), when the source counts users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_with_client_errors: Option<f64>,
    /// 99th percentile latency in milliseconds.
    pub p99_ms: Option<f64>,
    /// Custom metrics by [`CustomMetric::name`].
    pub custom: BTreeMap<String, Option<f64>>,
    /// Request counts per latency bucket over the window, in the layout of
    /// [`cutover_core::histogram`], when the source keeps a histogram (the built-in proxy does,
    /// Prometheus does not). With it the sequential judge also tests latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_buckets: Option<Vec<u64>>,
}

/// Anything that can measure a slot over a window.
///
/// Two kinds exist. A *query* source (Prometheus) can measure any past window it is asked about.
/// A *counter* source (the routers' own counters) can only difference its counters between two
/// readings: it takes the first reading when told a window starts ([`MetricSource::start_window`])
/// and measures from there, whatever `from` says. The controller calls `start_window` at the start
/// of every window, so both kinds see the same windows.
#[async_trait]
pub trait MetricSource: Send + Sync + std::fmt::Debug {
    async fn measure(&self, q: &WindowQuery) -> Result<SlotMeasurement, MetricError>;

    /// Measures one window's canary and, when given, its baseline. Sources that read every slot
    /// at once (a router's counters) override it to read once.
    async fn measure_window(
        &self,
        canary: &WindowQuery,
        baseline: Option<&WindowQuery>,
    ) -> (
        Result<SlotMeasurement, MetricError>,
        Option<Result<SlotMeasurement, MetricError>>,
    ) {
        let canary = self.measure(canary).await;
        let baseline = match baseline {
            Some(q) => Some(self.measure(q).await),
            None => None,
        };
        (canary, baseline)
    }

    /// A new analysis window starts at `at`. Query sources need not care.
    async fn start_window(&self, _at: Timestamp) {}
}

/// Why a measurement could not be taken.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricError {
    /// The source's configuration is unusable; `field` names the setting.
    #[error("metric source setting `{field}`: {reason}")]
    Config { field: String, reason: String },
    /// The metric system did not answer the query successfully, `attempts` times in a row.
    #[error(
        "query for {metric} against {url} failed after {attempts} attempt(s): {last_error}; {hint}; query: {query}",
        hint = .last_error.hint()
    )]
    Query {
        /// Which metric: `requests`, `errors`, `p99_ms` or `custom metric NAME`.
        metric: String,
        url: String,
        /// The query as sent, placeholders substituted.
        query: String,
        attempts: u32,
        last_error: RequestFailure,
    },
    /// The query returned several series where one number was needed.
    #[error(
        "query for {metric} returned {series} series (e.g. {example}); it must aggregate to one \
         series, e.g. wrap it in sum(...); query: {query}"
    )]
    NotOneSeries {
        metric: String,
        query: String,
        series: usize,
        /// The labels of the first series, to show what was not aggregated away.
        example: String,
    },
    /// The source could not read its counters, or they do not cover the window (the slot's
    /// version changed or its counters restarted since the window began).
    #[error("{source_name}: {reason}")]
    Counters { source_name: String, reason: String },
    /// The query returned something other than an instant vector or a scalar.
    #[error(
        "query for {metric} returned a {result_type} result; it must return an instant vector or a \
         scalar (wrap a range selector such as x[5m] in increase(...) or rate(...)); query: {query}"
    )]
    UnexpectedResult {
        metric: String,
        query: String,
        result_type: String,
    },
}
