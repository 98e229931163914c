//! The sequential judge: anytime-valid tests of the canary against the baseline.
//!
//! Each *stream* counts events that should be no more frequent on the canary than on the baseline:
//! 5xx responses, and requests slower than the baseline's p90 and p99 plus a margin that matters
//! (the thresholds come from the baseline's own earlier windows, so they are fixed before the data
//! they judge). In a window the
//! canary served `n_c` requests with `x` events and the baseline `n_b` requests with `y` events.
//! If both slots behave the same, then given the `m = x + y` events, `x` follows the hypergeometric
//! distribution of `m` draws from `n_c + n_b` requests of which `n_c` are the canary's, whatever
//! the true rate. Under an odds ratio `ψ` (canary worse when `ψ > 1`) it follows Fisher's
//! noncentral hypergeometric distribution, so the likelihood ratio of a window is
//! `ψ^x / E₀[ψ^X]`, exactly, for Bernoulli requests at any rate and any traffic split.
//!
//! The product of these ratios over windows is a test martingale under "the canary is no worse",
//! and so is a mixture of them over a grid of `ψ` from the smallest regression that matters up
//! to 50. By Ville's inequality the chance that the mixture *ever* exceeds `1/α` when the canary is
//! no worse is at most `α`: the judge may look after every window, as often as it likes, without
//! inflating false rollbacks (this is the mixture sequential probability ratio test of the kind
//! Lindon et al., 2022, use for software deployments, made exact by conditioning on the events).
//! The budget `α` is split evenly over the streams and the ceiling test (a one-sample mixture
//! test of "the error rate is above the absolute ceiling", so that a ceiling too is judged on
//! evidence rather than on one small window).
//!
//! The same construction with `ψ` below a margin tests "the canary is not worse than the margin";
//! when every stream passes it the step may end early (off by default).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::histogram::{bucket_index, bucket_upper_micros, count_above, quantile_bucket, LATENCY_BUCKETS};
use crate::status::TRACKED_CODES;
use crate::validate::FieldError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SequentialConfig {
    /// Chance of rolling back a canary that is no worse than the baseline, over a whole rollout.
    pub alpha: f64,
    /// Smallest relative increase of the error odds worth a rollback (1.5 = 50 % more errors).
    pub min_error_ratio: f64,
    /// Smallest absolute increase of the error rate worth a rollback (0.001 = 0.1 points).
    pub min_error_increase: f64,
    /// Baseline latency quantiles whose exceedances are compared (requests slower than the
    /// baseline's p90, p99).
    pub latency_quantiles: Vec<f64>,
    /// Smallest relative increase of slow requests worth a rollback.
    pub min_latency_ratio: f64,
    /// A request counts as slow only above the baseline quantile times `1 +` this: a shift
    /// worth a rollback scales with the service (20 % of a 10 ms p99 is 2 ms, of a 500 ms one
    /// 100 ms), so a doubled p99 is caught on a fast service and on a slow one alike.
    pub min_latency_increase_ratio: f64,
    /// ... plus this absolute floor, below the resolution that matters (the histogram's own
    /// resolution is 6.25 %).
    pub min_latency_increase_ms: f64,
    /// Smallest relative increase of the 4xx odds worth a rollback.
    pub min_client_error_ratio: f64,
    /// Smallest absolute increase of the 4xx share worth a rollback (0.002 = 0.2 points).
    pub min_client_error_increase: f64,
    /// A 4xx regression needs at least this many distinct canary users with a 4xx, where the
    /// source counts users: one client failing its own requests over and over is not a
    /// regression of the release.
    pub min_client_error_users: u64,
    /// A step does not end while the evidence of a regression on any stream is at or above
    /// `bar ^ hold_exponent` (0.5: its square root); it is extended instead, up to the policy's
    /// `max_step_extension_ms`. 1 turns holding off.
    pub hold_exponent: f64,
    /// Baseline requests needed before latency thresholds are trusted.
    pub latency_calibration_requests: u64,
    /// End a step early once every stream shows the canary is not worse than `margin_ratio`.
    pub early_step_completion: bool,
    pub margin_ratio: f64,
}

impl Default for SequentialConfig {
    fn default() -> Self {
        SequentialConfig {
            alpha: 0.005,
            min_error_ratio: 1.5,
            min_error_increase: 0.001,
            latency_quantiles: vec![0.9, 0.99, 0.999],
            min_latency_ratio: 1.5,
            min_latency_increase_ratio: 0.2,
            min_latency_increase_ms: 0.5,
            min_client_error_ratio: 1.5,
            min_client_error_increase: 0.002,
            min_client_error_users: 3,
            hold_exponent: 0.5,
            latency_calibration_requests: 200,
            early_step_completion: false,
            margin_ratio: 1.5,
        }
    }
}

impl SequentialConfig {
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut check = |field: &str, ok: bool, what: &str| {
            if !ok {
                errors.push(FieldError::new(format!("{prefix}{field}"), what.to_string()));
            }
        };
        check(
            "alpha",
            self.alpha.is_finite() && self.alpha > 0.0 && self.alpha < 0.5,
            "must be between 0 and 0.5",
        );
        check(
            "min_error_ratio",
            self.min_error_ratio.is_finite() && self.min_error_ratio > 1.0 && self.min_error_ratio < 50.0,
            "must be above 1 and below 50",
        );
        check(
            "min_error_increase",
            self.min_error_increase.is_finite() && (0.0..1.0).contains(&self.min_error_increase),
            "must be between 0 and 1",
        );
        check(
            "min_latency_ratio",
            self.min_latency_ratio.is_finite()
                && self.min_latency_ratio > 1.0
                && self.min_latency_ratio < 50.0,
            "must be above 1 and below 50",
        );
        check(
            "min_latency_increase_ms",
            self.min_latency_increase_ms.is_finite() && self.min_latency_increase_ms >= 0.0,
            "must be a finite number, not negative",
        );
        check(
            "min_latency_increase_ratio",
            self.min_latency_increase_ratio.is_finite()
                && (0.0..=10.0).contains(&self.min_latency_increase_ratio),
            "must be between 0 and 10 (0.2 = 20 % above the baseline's quantile)",
        );
        check(
            "min_client_error_ratio",
            self.min_client_error_ratio.is_finite()
                && self.min_client_error_ratio > 1.0
                && self.min_client_error_ratio < 50.0,
            "must be above 1 and below 50",
        );
        check(
            "min_client_error_increase",
            self.min_client_error_increase.is_finite()
                && (0.0..1.0).contains(&self.min_client_error_increase),
            "must be between 0 and 1",
        );
        check(
            "hold_exponent",
            self.hold_exponent.is_finite() && self.hold_exponent > 0.0 && self.hold_exponent <= 1.0,
            "must be above 0 and at most 1 (1 turns holding off)",
        );
        check(
            "margin_ratio",
            self.margin_ratio.is_finite() && self.margin_ratio > 1.0 && self.margin_ratio < 50.0,
            "must be above 1 and below 50",
        );
        check(
            "latency_quantiles",
            self.latency_quantiles
                .iter()
                .all(|q| q.is_finite() && *q > 0.0 && *q < 1.0)
                && self.latency_quantiles.len() <= 4,
            "must be at most 4 quantiles, each between 0 and 1",
        );
        errors
    }

    /// The bar every e-value must reach: `α` split evenly over the streams and the ceiling test.
    pub fn bar(&self, client_errors: bool) -> f64 {
        let streams = 1 + usize::from(client_errors) + self.latency_quantiles.len();
        (streams + 1) as f64 / self.alpha
    }
}

/// Grid of odds ratios of the mixture: geometric from `lo` to `hi`, equal prior weights.
fn grid(lo: f64, hi: f64) -> Vec<f64> {
    const K: usize = 16;
    (0..K)
        .map(|k| lo * (hi / lo).powf(k as f64 / (K - 1) as f64))
        .collect()
}

fn log_sum_exp(values: impl Iterator<Item = f64>) -> f64 {
    let values: Vec<f64> = values.collect();
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return max;
    }
    max + values.iter().map(|v| (v - max).exp()).sum::<f64>().ln()
}

/// `ln` of the likelihood ratio of `x` canary events among `m` under odds ratio `ψ` against
/// `ψ = 1`, for every `ψ` of `psis`, with `n_c` canary and `n_b` baseline requests.
fn log_likelihood_ratios(x: u64, m: u64, n_c: u64, n_b: u64, psis: &[f64]) -> Vec<f64> {
    let lo = m.saturating_sub(n_b);
    let hi = m.min(n_c);
    if m == 0 || lo >= hi {
        // No events, or only one possible split: the window says nothing.
        return vec![0.0; psis.len()];
    }
    // Unnormalised log hypergeometric weights by the ratio of successive terms.
    let mut lw = Vec::with_capacity((hi - lo + 1) as usize);
    let mut w = 0.0;
    for u in lo..=hi {
        lw.push(w);
        if u < hi {
            let (uf, mf, ncf, nbf) = (u as f64, m as f64, n_c as f64, n_b as f64);
            w += ((ncf - uf) * (mf - uf)).ln() - ((uf + 1.0) * (nbf - mf + uf + 1.0)).ln();
        }
    }
    let norm = log_sum_exp(lw.iter().copied());
    psis.iter()
        .map(|psi| {
            let lp = psi.ln();
            let log_e = log_sum_exp(
                lw.iter()
                    .enumerate()
                    .map(|(i, w)| w + (lo + i as u64) as f64 * lp),
            ) - norm;
            x as f64 * lp - log_e
        })
        .collect()
}

/// An e-value as it is kept and shown: overwhelming evidence overflows `exp` to infinity, which
/// JSON cannot hold (it becomes `null`, and the state file would not read back); the largest
/// finite number says the same thing to every comparison with a bar.
pub fn finite_e(e: f64) -> f64 {
    if e.is_nan() {
        1.0
    } else {
        e.min(f64::MAX)
    }
}

/// The evidence gathered on one stream since the rollout's canary phase began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    pub name: String,
    /// Cumulative log likelihood ratio per odds ratio of the "worse" grid.
    pub worse: Vec<f64>,
    /// Same for the "not worse than the margin" grid.
    pub not_worse: Vec<f64>,
    pub canary_events: u64,
    pub canary_requests: u64,
    pub baseline_events: u64,
    pub baseline_requests: u64,
}

impl StreamState {
    fn new(name: &str) -> Self {
        StreamState {
            name: name.to_string(),
            worse: vec![0.0; 16],
            not_worse: vec![0.0; 16],
            canary_events: 0,
            canary_requests: 0,
            baseline_events: 0,
            baseline_requests: 0,
        }
    }

    fn update(&mut self, x: u64, n_c: u64, y: u64, n_b: u64, worse_grid: &[f64], margin_grid: &[f64]) {
        if n_c == 0 || n_b == 0 {
            return;
        }
        for (acc, l) in self
            .worse
            .iter_mut()
            .zip(log_likelihood_ratios(x, x + y, n_c, n_b, worse_grid))
        {
            *acc += l;
        }
        // Non-inferiority: null is ψ = margin; alternatives below it. The ratio against the null
        // is LR(ψ) / LR(margin) in terms of ratios against ψ = 1.
        let lrs = log_likelihood_ratios(x, x + y, n_c, n_b, margin_grid);
        let margin_lr = lrs.last().copied().unwrap_or(0.0);
        for (acc, l) in self.not_worse.iter_mut().zip(lrs.iter()) {
            *acc += l - margin_lr;
        }
        self.canary_events += x;
        self.canary_requests += n_c;
        self.baseline_events += y;
        self.baseline_requests += n_b;
    }

    /// The mixture e-value for "the canary is worse".
    pub fn e_worse(&self) -> f64 {
        finite_e((log_sum_exp(self.worse.iter().copied()) - (self.worse.len() as f64).ln()).exp())
    }

    /// The mixture e-value for "the canary is not worse than the margin".
    pub fn e_not_worse(&self) -> f64 {
        // The last grid point is the margin itself (ratio 1 against the null): excluded.
        let n = self.not_worse.len().saturating_sub(1).max(1);
        finite_e((log_sum_exp(self.not_worse.iter().take(n).copied()) - (n as f64).ln()).exp())
    }
}

/// The sequential judge's memory across windows, persisted with the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequentialState {
    pub streams: Vec<StreamState>,
    /// One-sample tests of "error rate above the ceiling", canary and baseline.
    #[serde(default)]
    pub ceiling: Option<CeilingState>,
    /// Baseline latency histogram of all windows so far: where the latency thresholds come from.
    #[serde(default)]
    pub baseline_latency: Vec<u64>,
    /// The 4xx family: all counted 4xx first, then one member per 4xx code counted one by one.
    /// Its evidence is the average of its members' (an average of test martingales is one), so
    /// a rise of one code stands out of a noisy background of others. Empty until first used.
    #[serde(default)]
    pub client_errors: Vec<StreamState>,
}

impl SequentialState {
    pub fn new(config: &SequentialConfig) -> Self {
        let mut streams = vec![StreamState::new("errors")];
        for q in &config.latency_quantiles {
            streams.push(StreamState::new(&format!("slower than baseline p{}", q * 100.0)));
        }
        SequentialState {
            streams,
            ceiling: None,
            baseline_latency: vec![0; LATENCY_BUCKETS],
            client_errors: Vec::new(),
        }
    }
}

/// Evidence that a slot's error rate is above an absolute ceiling: a mixture over rates above it
/// of Bernoulli likelihood ratios against the ceiling, a test supermartingale for any rate at or
/// below the ceiling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CeilingState {
    pub ceiling: f64,
    pub canary: Vec<f64>,
    pub baseline: Vec<f64>,
    pub canary_events: u64,
    pub canary_requests: u64,
    pub baseline_events: u64,
    pub baseline_requests: u64,
}

/// Rates above `ceiling` the mixture spreads over.
fn ceiling_grid(ceiling: f64) -> Vec<f64> {
    let hi = 0.98_f64.max(ceiling * 1.2);
    grid(ceiling * 1.2, hi).into_iter().map(|p| p.min(0.99)).collect()
}

impl CeilingState {
    fn new(ceiling: f64) -> Self {
        CeilingState {
            ceiling,
            canary: vec![0.0; 16],
            baseline: vec![0.0; 16],
            canary_events: 0,
            canary_requests: 0,
            baseline_events: 0,
            baseline_requests: 0,
        }
    }

    fn add(acc: &mut [f64], ceiling: f64, events: u64, n: u64) {
        let p0 = ceiling.clamp(1e-9, 1.0 - 1e-9);
        for (a, p1) in acc.iter_mut().zip(ceiling_grid(ceiling)) {
            *a += events as f64 * (p1 / p0).ln() + (n - events) as f64 * ((1.0 - p1) / (1.0 - p0)).ln();
        }
    }

    fn e(acc: &[f64]) -> f64 {
        finite_e((log_sum_exp(acc.iter().copied()) - (acc.len() as f64).ln()).exp())
    }
}

/// Result of the ceiling test for one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CeilingReport {
    pub ceiling: f64,
    pub canary_rate: f64,
    pub canary_rate_ci95: (f64, f64),
    pub baseline_rate: f64,
    pub e_canary: f64,
    pub e_baseline: f64,
    pub bar: f64,
    pub canary_over: bool,
    pub baseline_over: bool,
}

/// Adds a window to the ceiling evidence of both slots.
pub fn observe_ceiling(
    state: &mut SequentialState,
    ceiling: f64,
    bar: f64,
    w: &WindowCounts<'_>,
) -> Option<CeilingReport> {
    if !(ceiling > 0.0 && ceiling < 0.8) {
        return None;
    }
    let c = state.ceiling.get_or_insert_with(|| CeilingState::new(ceiling));
    CeilingState::add(&mut c.canary, c.ceiling, w.canary_errors, w.canary_requests);
    CeilingState::add(&mut c.baseline, c.ceiling, w.baseline_errors, w.baseline_requests);
    c.canary_events += w.canary_errors;
    c.canary_requests += w.canary_requests;
    c.baseline_events += w.baseline_errors;
    c.baseline_requests += w.baseline_requests;
    let rate = |e: u64, n: u64| if n == 0 { 0.0 } else { e as f64 / n as f64 };
    let (e_canary, e_baseline) = (CeilingState::e(&c.canary), CeilingState::e(&c.baseline));
    Some(CeilingReport {
        ceiling: c.ceiling,
        canary_rate: rate(c.canary_events, c.canary_requests),
        canary_rate_ci95: wilson(c.canary_events, c.canary_requests),
        baseline_rate: rate(c.baseline_events, c.baseline_requests),
        e_canary,
        e_baseline,
        bar,
        canary_over: e_canary >= bar,
        baseline_over: e_baseline >= bar,
    })
}

/// What one stream showed, for the decision record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    pub name: String,
    /// Latency threshold of the window (for latency streams), in milliseconds.
    pub threshold_ms: Option<f64>,
    pub window_canary: (u64, u64),
    pub window_baseline: (u64, u64),
    pub canary_rate: f64,
    pub canary_rate_ci95: (f64, f64),
    pub baseline_rate: f64,
    pub baseline_rate_ci95: (f64, f64),
    /// Events and requests of each slot over the rollout so far, behind the rates: a sentence
    /// for people gives counts where there are too few requests for a rate to mean much.
    #[serde(default)]
    pub rollout_canary: (u64, u64),
    #[serde(default)]
    pub rollout_baseline: (u64, u64),
    /// Mixture e-value for "worse", and the bar it must reach (`streams / α`).
    pub e_worse: f64,
    pub e_not_worse: f64,
    pub bar: f64,
    pub worse: bool,
    pub not_worse: bool,
    /// For the 4xx family: its codes, most suspicious first, with the rates over the rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<CodeReport>,
}

/// One status code of the 4xx family over the rollout so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CodeReport {
    pub code: u16,
    pub canary_events: u64,
    pub canary_rate: f64,
    pub baseline_events: u64,
    pub baseline_rate: f64,
    pub e_worse: f64,
}

/// Wilson score interval at 95 %.
pub fn wilson(events: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (events as f64, n as f64);
    let z = 1.959_963_984_540_054_f64;
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// One window's input: events and requests per slot, and the latency histograms.
#[derive(Debug, Clone, Copy)]
pub struct WindowCounts<'a> {
    pub canary_requests: u64,
    pub canary_errors: u64,
    pub canary_latency: &'a [u64],
    pub baseline_requests: u64,
    pub baseline_errors: u64,
    pub baseline_latency: &'a [u64],
    /// The 4xx counts, when they are judged and the source counts them.
    pub client_errors: Option<ClientErrorCounts<'a>>,
}

/// Responses per status code.
pub type CodeCounts = BTreeMap<u16, u64>;

/// One window's 4xx: counted ones per slot (ignored codes left out), and per code where known.
#[derive(Debug, Clone, Copy)]
pub struct ClientErrorCounts<'a> {
    pub canary: u64,
    pub baseline: u64,
    /// Per tracked code, canary and baseline; `None` when the source cannot tell codes apart.
    pub codes: Option<(&'a CodeCounts, &'a CodeCounts)>,
    /// Codes that never count.
    pub ignore: &'a [u16],
}

/// The 4xx codes with a member of their own in the family.
fn client_error_codes(ignore: &[u16]) -> Vec<u16> {
    TRACKED_CODES
        .iter()
        .copied()
        .filter(|c| (400..500).contains(c) && !ignore.contains(c))
        .collect()
}

/// Adds a window to the evidence; returns a report per stream.
pub fn observe(
    config: &SequentialConfig,
    state: &mut SequentialState,
    bar: f64,
    w: WindowCounts<'_>,
) -> Vec<StreamReport> {
    let worse_grid = |min: f64| grid(min, 50.0);
    let margin_grid = grid(0.2, config.margin_ratio);
    let mut reports = Vec::new();

    // Errors.
    let err_grid = worse_grid(config.min_error_ratio);
    let s = &mut state.streams[0];
    s.update(
        w.canary_errors,
        w.canary_requests,
        w.baseline_errors,
        w.baseline_requests,
        &err_grid,
        &margin_grid,
    );
    reports.push(report(
        s,
        None,
        (w.canary_errors, w.canary_requests),
        (w.baseline_errors, w.baseline_requests),
        bar,
        config.min_error_increase,
    ));

    if let Some(ce) = w.client_errors {
        reports.push(observe_client_errors(config, state, bar, &w, ce, &margin_grid));
    }

    // Latency: thresholds from the baseline's earlier windows only, scaled to the service.
    let calibrated: u64 = state.baseline_latency.iter().sum();
    let lat_grid = worse_grid(config.min_latency_ratio);
    for (i, q) in config.latency_quantiles.iter().enumerate() {
        let floor_us = (config.min_latency_increase_ms * 1000.0) as u64;
        let scale = 1.0 + config.min_latency_increase_ratio;
        let threshold = (calibrated >= config.latency_calibration_requests)
            .then(|| quantile_bucket(&state.baseline_latency, *q))
            .flatten()
            .map(|idx| {
                let slow_us = (bucket_upper_micros(idx) as f64 * scale) as u64 + floor_us;
                bucket_index(slow_us.saturating_sub(1))
            });
        let s = &mut state.streams[i + 1];
        let (x, y, ms) = match threshold {
            Some(idx) if !w.canary_latency.is_empty() && !w.baseline_latency.is_empty() => {
                let x = count_above(w.canary_latency, idx);
                let y = count_above(w.baseline_latency, idx);
                s.update(
                    x,
                    w.canary_requests,
                    y,
                    w.baseline_requests,
                    &lat_grid,
                    &margin_grid,
                );
                (x, y, Some(bucket_upper_micros(idx) as f64 / 1000.0))
            }
            _ => (0, 0, None),
        };
        reports.push(report(
            s,
            ms,
            (x, w.canary_requests),
            (y, w.baseline_requests),
            bar,
            0.0,
        ));
    }
    for (acc, c) in state.baseline_latency.iter_mut().zip(w.baseline_latency) {
        *acc += c;
    }
    reports
}

/// Adds a window to the 4xx family; reports the family as one stream.
fn observe_client_errors(
    config: &SequentialConfig,
    state: &mut SequentialState,
    bar: f64,
    w: &WindowCounts<'_>,
    ce: ClientErrorCounts<'_>,
    margin_grid: &[f64],
) -> StreamReport {
    let codes = client_error_codes(ce.ignore);
    if state.client_errors.len() != codes.len() + 1 {
        state.client_errors = std::iter::once(StreamState::new("4xx"))
            .chain(codes.iter().map(|c| StreamState::new(&c.to_string())))
            .collect();
    }
    let worse = grid(config.min_client_error_ratio, 50.0);
    state.client_errors[0].update(
        ce.canary,
        w.canary_requests,
        ce.baseline,
        w.baseline_requests,
        &worse,
        margin_grid,
    );
    if let Some((canary, baseline)) = ce.codes {
        for (member, code) in state.client_errors[1..].iter_mut().zip(&codes) {
            let x = canary.get(code).copied().unwrap_or(0).min(w.canary_requests);
            let y = baseline.get(code).copied().unwrap_or(0).min(w.baseline_requests);
            member.update(x, w.canary_requests, y, w.baseline_requests, &worse, margin_grid);
        }
    }
    let family = &state.client_errors;
    let members = family.len() as f64;
    let e_worse = family.iter().map(StreamState::e_worse).sum::<f64>() / members;
    let rate = |e: u64, n: u64| if n == 0 { 0.0 } else { e as f64 / n as f64 };
    let mut code_reports: Vec<CodeReport> = family[1..]
        .iter()
        .zip(&codes)
        .filter(|(m, _)| m.canary_events + m.baseline_events > 0)
        .map(|(m, code)| CodeReport {
            code: *code,
            canary_events: m.canary_events,
            canary_rate: rate(m.canary_events, m.canary_requests),
            baseline_events: m.baseline_events,
            baseline_rate: rate(m.baseline_events, m.baseline_requests),
            e_worse: m.e_worse(),
        })
        .collect();
    code_reports.sort_by(|a, b| b.e_worse.total_cmp(&a.e_worse));
    // What matters is the biggest rise, of all 4xx or of one code.
    let agg = &family[0];
    let rise = code_reports
        .iter()
        .map(|c| c.canary_rate - c.baseline_rate)
        .chain(std::iter::once(
            rate(agg.canary_events, agg.canary_requests) - rate(agg.baseline_events, agg.baseline_requests),
        ))
        .fold(f64::NEG_INFINITY, f64::max);
    let mut r = report(
        agg,
        None,
        (ce.canary, w.canary_requests),
        (ce.baseline, w.baseline_requests),
        bar,
        0.0,
    );
    // Early completion ("not worse") is judged on all 4xx together (`report` did).
    r.e_worse = e_worse;
    r.worse = e_worse >= bar && rise >= config.min_client_error_increase;
    r.codes = code_reports;
    r
}

fn report(
    s: &StreamState,
    threshold_ms: Option<f64>,
    canary: (u64, u64),
    baseline: (u64, u64),
    bar: f64,
    min_increase: f64,
) -> StreamReport {
    let rate = |e: u64, n: u64| if n == 0 { 0.0 } else { e as f64 / n as f64 };
    let canary_rate = rate(s.canary_events, s.canary_requests);
    let baseline_rate = rate(s.baseline_events, s.baseline_requests);
    let e_worse = s.e_worse();
    let e_not_worse = s.e_not_worse();
    StreamReport {
        name: s.name.clone(),
        threshold_ms,
        window_canary: canary,
        window_baseline: baseline,
        canary_rate,
        canary_rate_ci95: wilson(s.canary_events, s.canary_requests),
        baseline_rate,
        baseline_rate_ci95: wilson(s.baseline_events, s.baseline_requests),
        rollout_canary: (s.canary_events, s.canary_requests),
        rollout_baseline: (s.baseline_events, s.baseline_requests),
        e_worse,
        e_not_worse,
        bar,
        // A significant difference smaller than what matters is not a reason to roll back.
        worse: e_worse >= bar && canary_rate - baseline_rate >= min_increase,
        not_worse: e_not_worse >= bar,
        codes: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_likelihood_ratio_is_one_on_average_under_the_null() {
        // E0[LR] = 1 exactly: sum over x of P0(x) * LR(x) with the hypergeometric P0.
        let (n_c, n_b, m) = (30u64, 70u64, 12u64);
        let psis = [0.5, 2.0, 5.0];
        let lo = m.saturating_sub(n_b);
        let hi = m.min(n_c);
        let mut p0 = Vec::new();
        let mut w = 0.0f64;
        for u in lo..=hi {
            p0.push(w);
            if u < hi {
                let (uf, mf) = (u as f64, m as f64);
                w += ((n_c as f64 - uf) * (mf - uf)).ln() - ((uf + 1.0) * (n_b as f64 - mf + uf + 1.0)).ln();
            }
        }
        let norm = log_sum_exp(p0.iter().copied());
        for (k, psi) in psis.iter().enumerate() {
            let mean: f64 = (lo..=hi)
                .map(|x| {
                    (p0[(x - lo) as usize] - norm).exp()
                        * log_likelihood_ratios(x, m, n_c, n_b, &psis)[k].exp()
                })
                .sum();
            assert!((mean - 1.0).abs() < 1e-9, "psi {psi}: E0[LR] = {mean}");
        }
    }

    #[test]
    fn wilson_intervals_contain_the_estimate() {
        let (lo, hi) = wilson(5, 100);
        assert!(lo < 0.05 && 0.05 < hi && lo > 0.01 && hi < 0.12, "{lo} {hi}");
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }
}
