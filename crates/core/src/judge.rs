//! The judge: one analysis window of the canary against the live slot (the baseline).
//!
//! Two methods share the absolute ceilings (5xx rate, optionally p99): a ceiling the canary breaks
//! fails the window, unless the baseline breaks it too, which is the environment's problem, not the
//! canary's: then the window is inconclusive with the reason "baseline unhealthy too".
//!
//! - `threshold`: each window on its own, `canary <= baseline * ratio + slack` for the 5xx rate and
//!   p99. Simple and familiar (Flagger, Argo Rollouts), but every look at noisy numbers is a new
//!   chance of a false alarm, hence `failure_limit`.
//! - `sequential` (default): the anytime-valid tests of [`crate::sequential`], accumulating evidence
//!   over the whole canary phase, with a false-rollback rate of at most `alpha` however often it
//!   looks. Its rejection is conclusive: the rollout rolls back at once.
//!
//! Too few canary requests make a window inconclusive, never a pass.

use serde::{Deserialize, Serialize};

use crate::sequential::{self, SequentialConfig, SequentialState, StreamReport, WindowCounts};
use crate::validate::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JudgeMethod {
    Threshold,
    #[default]
    Sequential,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeConfig {
    pub method: JudgeMethod,
    /// Fewest canary requests in a window for it to count as a pass.
    pub min_requests: u64,
    /// Absolute ceiling of the canary's 5xx rate (0.05 = 5 %).
    pub max_error_rate: f64,
    /// Threshold method: canary 5xx rate may be at most baseline × this + `error_rate_slack`.
    pub max_error_ratio: f64,
    pub error_rate_slack: f64,
    /// Absolute ceiling of the canary's p99 latency, if any.
    pub max_p99_ms: Option<f64>,
    /// Threshold method: canary p99 may be at most baseline × this + `p99_slack_ms`.
    pub max_p99_ratio: f64,
    pub p99_slack_ms: f64,
    pub sequential: SequentialConfig,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            method: JudgeMethod::default(),
            min_requests: 20,
            max_error_rate: 0.05,
            max_error_ratio: 2.0,
            error_rate_slack: 0.01,
            max_p99_ms: None,
            max_p99_ratio: 1.5,
            p99_slack_ms: 25.0,
            sequential: SequentialConfig::default(),
        }
    }
}

impl JudgeConfig {
    /// The threshold method with default settings.
    pub fn threshold() -> Self {
        JudgeConfig {
            method: JudgeMethod::Threshold,
            ..JudgeConfig::default()
        }
    }

    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        let mut check = |field: &str, ok: bool, what: &str| {
            if !ok {
                errors.push(FieldError::new(format!("{prefix}{field}"), what.to_string()));
            }
        };
        let finite = |v: f64| v.is_finite();
        let e = &self;
        check(
            "max_error_rate",
            finite(e.max_error_rate) && (0.0..=1.0).contains(&e.max_error_rate),
            "must be between 0 and 1",
        );
        check(
            "max_error_ratio",
            finite(e.max_error_ratio) && e.max_error_ratio >= 1.0,
            "must be a finite number of at least 1",
        );
        check(
            "error_rate_slack",
            finite(e.error_rate_slack) && (0.0..=1.0).contains(&e.error_rate_slack),
            "must be between 0 and 1",
        );
        check(
            "max_p99_ratio",
            finite(e.max_p99_ratio) && e.max_p99_ratio >= 1.0,
            "must be a finite number of at least 1",
        );
        check(
            "p99_slack_ms",
            finite(e.p99_slack_ms) && e.p99_slack_ms >= 0.0,
            "must be a finite number, not negative",
        );
        check(
            "max_p99_ms",
            e.max_p99_ms.is_none_or(|v| finite(v) && v > 0.0),
            "must be a finite number greater than 0",
        );
        check("min_requests", self.min_requests > 0, "must be greater than 0");
        errors.extend(self.sequential.validate(&format!("{prefix}sequential.")));
        errors
    }
}

/// What one slot did in one window.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SlotWindow {
    pub requests: u64,
    pub errors: u64,
    pub p99_ms: Option<f64>,
}

impl SlotWindow {
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }
}

/// A window's measurements: the canary's and, while it has traffic, the live slot's.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct WindowStats {
    pub canary: SlotWindow,
    pub baseline: Option<SlotWindow>,
    pub duration_ms: u64,
    /// Latency histograms of the window (layout of [`crate::histogram`]); the sequential judge
    /// compares slow requests with them. Not kept in the event log.
    #[serde(skip)]
    pub latency: Option<std::sync::Arc<LatencyPair>>,
    /// The metric source could not measure the window (Prometheus down, say): inconclusive,
    /// with this as the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    /// Checks made outside the judge (custom business metrics), folded into the verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external: Vec<ExternalCheck>,
}

/// A check of a metric the judge does not know (logins per second, checkout success), made by a
/// metric source and judged here like the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalCheck {
    pub name: String,
    pub outcome: Outcome,
    pub reason: String,
}

/// Latency histograms of both slots in one window.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LatencyPair {
    pub canary: Vec<u64>,
    pub baseline: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
}

/// One comparison the judge made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub canary: Option<f64>,
    pub baseline: Option<f64>,
    pub threshold: Option<f64>,
    pub outcome: Outcome,
}

/// The judge's decision on one window, with the numbers behind it and a sentence for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: String,
    pub stats: WindowStats,
    pub checks: Vec<Check>,
    /// A failure that needs no second window: the sequential test's error bound already holds.
    #[serde(default)]
    pub conclusive: bool,
    /// Evidence enough that the canary is not worse than the margin: the step may end now.
    #[serde(default)]
    pub complete_step: bool,
    /// The sequential tests, stream by stream, with estimates, intervals, e-values and bars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sequential: Vec<StreamReport>,
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

/// Judges one window. `evidence` is the sequential judge's memory of earlier windows of this
/// rollout (ignored by the threshold method; pass `None` where no baseline is compared).
pub fn judge(config: &JudgeConfig, stats: WindowStats, evidence: Option<&mut SequentialState>) -> Verdict {
    let canary = stats.canary;
    let baseline = stats.baseline.filter(|b| b.requests >= config.min_requests);
    let mut checks = Vec::new();
    let mut failures = Vec::new();
    let mut inconclusive = Vec::new();
    if let Some(why) = &stats.unavailable {
        let reason = format!("no measurements for this window: {why}");
        return Verdict {
            outcome: Outcome::Inconclusive,
            reason,
            stats: stats.clone(),
            checks,
            conclusive: false,
            complete_step: false,
            sequential: Vec::new(),
        };
    }
    for e in &stats.external {
        match e.outcome {
            Outcome::Fail => failures.push(format!("{}: {}", e.name, e.reason)),
            Outcome::Inconclusive => inconclusive.push(format!("{}: {}", e.name, e.reason)),
            Outcome::Pass => {}
        }
        checks.push(Check {
            name: e.name.clone(),
            canary: None,
            baseline: None,
            threshold: None,
            outcome: e.outcome,
        });
    }
    let sequential_errors = config.method == JudgeMethod::Sequential
        && evidence.is_some()
        && stats.baseline.is_some_and(|b| b.requests > 0);
    ceilings(
        config,
        canary,
        baseline,
        !sequential_errors,
        &mut checks,
        &mut failures,
        &mut inconclusive,
    );

    let mut reports = Vec::new();
    let mut conclusive: Vec<String> = Vec::new();
    match config.method {
        JudgeMethod::Threshold => {
            if canary.requests >= config.min_requests {
                ratios(config, canary, baseline, &mut checks, &mut failures);
            }
        }
        JudgeMethod::Sequential => {
            if let (Some(state), Some(b)) = (evidence, stats.baseline.filter(|b| b.requests > 0)) {
                let empty = Vec::new();
                let (cl, bl) = match &stats.latency {
                    Some(pair) => (&pair.canary, &pair.baseline),
                    None => (&empty, &empty),
                };
                let counts = WindowCounts {
                    canary_requests: canary.requests,
                    canary_errors: canary.errors,
                    canary_latency: cl,
                    baseline_requests: b.requests,
                    baseline_errors: b.errors,
                    baseline_latency: bl,
                };
                if let Some(c) =
                    sequential::observe_ceiling(&config.sequential, state, config.max_error_rate, &counts)
                {
                    let outcome = match (c.canary_over, c.baseline_over) {
                        (false, _) => Outcome::Pass,
                        (true, true) => {
                            inconclusive.push(format!(
                                "canary error rate {} is above the ceiling {}, but the baseline's {} is too: baseline unhealthy too",
                                pct(c.canary_rate),
                                pct(c.ceiling),
                                pct(c.baseline_rate)
                            ));
                            Outcome::Inconclusive
                        }
                        (true, false) => {
                            conclusive.push(format!(
                                "canary error rate {} [{} – {}] is above the ceiling {}, e-value {:.0} ≥ {:.0}",
                                pct(c.canary_rate),
                                pct(c.canary_rate_ci95.0),
                                pct(c.canary_rate_ci95.1),
                                pct(c.ceiling),
                                c.e_canary,
                                c.bar
                            ));
                            Outcome::Fail
                        }
                    };
                    checks.push(Check {
                        name: "error_rate_ceiling".into(),
                        canary: Some(c.canary_rate),
                        baseline: Some(c.baseline_rate),
                        threshold: Some(c.ceiling),
                        outcome,
                    });
                }
                reports = sequential::observe(&config.sequential, state, counts);
                for r in reports.iter().filter(|r| r.worse) {
                    conclusive.push(format!(
                        "{}: canary {} [{} – {}] against baseline {} [{} – {}] over the rollout, e-value {:.0} ≥ {:.0} (false-rollback rate ≤ {})",
                        r.name,
                        pct(r.canary_rate),
                        pct(r.canary_rate_ci95.0),
                        pct(r.canary_rate_ci95.1),
                        pct(r.baseline_rate),
                        pct(r.baseline_rate_ci95.0),
                        pct(r.baseline_rate_ci95.1),
                        r.e_worse,
                        r.bar,
                        config.sequential.alpha
                    ));
                }
            }
        }
    }

    let verdict = |outcome, reason: String, checks, conclusive, complete_step, sequential| Verdict {
        outcome,
        reason,
        stats: stats.clone(),
        checks,
        conclusive,
        complete_step,
        sequential,
    };
    if !conclusive.is_empty() {
        failures.splice(0..0, conclusive);
        return verdict(Outcome::Fail, failures.join("; "), checks, true, false, reports);
    }
    if !failures.is_empty() {
        return verdict(Outcome::Fail, failures.join("; "), checks, false, false, reports);
    }
    if !inconclusive.is_empty() {
        return verdict(
            Outcome::Inconclusive,
            inconclusive.join("; "),
            checks,
            false,
            false,
            reports,
        );
    }
    if canary.requests < config.min_requests {
        let reason = format!(
            "canary served {} requests in the window, fewer than the {} needed to judge",
            canary.requests, config.min_requests
        );
        return verdict(Outcome::Inconclusive, reason, checks, false, false, reports);
    }
    let c_err = canary.error_rate().unwrap_or(0.0);
    let against = match (stats.baseline, baseline) {
        (_, Some(b)) => format!(
            "against baseline {} and p99 {}",
            pct(b.error_rate().unwrap_or(0.0)),
            b.p99_ms
                .map(|p| format!("{p:.1} ms"))
                .unwrap_or_else(|| "-".into())
        ),
        (Some(b), None) => format!(
            "baseline served only {} requests: absolute ceilings only",
            b.requests
        ),
        (None, None) => "absolute ceilings only (no baseline traffic)".into(),
    };
    let evidence = if reports.is_empty() {
        String::new()
    } else {
        let strongest = reports.iter().map(|r| r.e_worse).fold(0.0, f64::max);
        format!(
            "; strongest evidence of a regression e = {strongest:.2}, bar {:.0}",
            reports[0].bar
        )
    };
    let complete_step =
        config.sequential.early_step_completion && !reports.is_empty() && reports.iter().all(|r| r.not_worse);
    let early = if complete_step {
        "; not worse than the margin on every stream: step complete"
    } else {
        ""
    };
    let reason = format!(
        "canary error rate {} and p99 {} over {} requests, {against}{evidence}{early}",
        pct(c_err),
        canary
            .p99_ms
            .map(|p| format!("{p:.1} ms"))
            .unwrap_or_else(|| "-".into()),
        canary.requests
    );
    verdict(Outcome::Pass, reason, checks, false, complete_step, reports)
}

/// Absolute ceilings, each excused when the baseline breaks it too.
fn ceilings(
    config: &JudgeConfig,
    canary: SlotWindow,
    baseline: Option<SlotWindow>,
    error_ceiling: bool,
    checks: &mut Vec<Check>,
    failures: &mut Vec<String>,
    inconclusive: &mut Vec<String>,
) {
    if canary.requests == 0 {
        return;
    }
    if error_ceiling {
        let c_err = canary.error_rate().unwrap_or(0.0);
        let b_err = baseline.and_then(|b| b.error_rate());
        let over = c_err > config.max_error_rate;
        let baseline_over = b_err.is_some_and(|b| b > config.max_error_rate);
        let outcome = match (over, baseline_over) {
            (false, _) => Outcome::Pass,
            (true, true) => {
                inconclusive.push(format!(
                    "canary error rate {} is above the ceiling {}, but the baseline's {} is too: baseline unhealthy too",
                    pct(c_err),
                    pct(config.max_error_rate),
                    pct(b_err.unwrap_or(0.0))
                ));
                Outcome::Inconclusive
            }
            (true, false) if canary.requests < config.min_requests => Outcome::Pass,
            (true, false) => {
                failures.push(format!(
                    "canary error rate {} ({} of {}) is above the ceiling {}",
                    pct(c_err),
                    canary.errors,
                    canary.requests,
                    pct(config.max_error_rate)
                ));
                Outcome::Fail
            }
        };
        checks.push(Check {
            name: "error_rate_ceiling".into(),
            canary: Some(c_err),
            baseline: b_err,
            threshold: Some(config.max_error_rate),
            outcome,
        });
    }
    let c_p99 = canary.p99_ms;
    let b_p99 = baseline.and_then(|b| b.p99_ms);
    if let (Some(ceiling), Some(c)) = (config.max_p99_ms, c_p99) {
        let over = c > ceiling && canary.requests >= config.min_requests;
        let baseline_over = b_p99.is_some_and(|b| b > ceiling);
        let outcome = match (over, baseline_over) {
            (false, _) => Outcome::Pass,
            (true, true) => {
                inconclusive.push(format!(
                    "canary p99 {c:.1} ms is above the ceiling {ceiling:.1} ms, but the baseline's is too: baseline unhealthy too"
                ));
                Outcome::Inconclusive
            }
            (true, false) => {
                failures.push(format!(
                    "canary p99 {c:.1} ms is above the ceiling {ceiling:.1} ms"
                ));
                Outcome::Fail
            }
        };
        checks.push(Check {
            name: "p99_ceiling".into(),
            canary: Some(c),
            baseline: b_p99,
            threshold: Some(ceiling),
            outcome,
        });
    }
}

/// The threshold method's comparisons with the baseline.
fn ratios(
    config: &JudgeConfig,
    canary: SlotWindow,
    baseline: Option<SlotWindow>,
    checks: &mut Vec<Check>,
    failures: &mut Vec<String>,
) {
    let Some(b) = baseline else { return };
    let c_err = canary.error_rate().unwrap_or(0.0);
    if let Some(b_err) = b.error_rate() {
        let limit = b_err * config.max_error_ratio + config.error_rate_slack;
        let outcome = if c_err > limit {
            Outcome::Fail
        } else {
            Outcome::Pass
        };
        if outcome == Outcome::Fail {
            failures.push(format!(
                "canary error rate {} is above baseline {} × {} + {} = {}",
                pct(c_err),
                pct(b_err),
                config.max_error_ratio,
                pct(config.error_rate_slack),
                pct(limit)
            ));
        }
        checks.push(Check {
            name: "error_rate_vs_baseline".into(),
            canary: Some(c_err),
            baseline: Some(b_err),
            threshold: Some(limit),
            outcome,
        });
    }
    // A p99 of fewer than 100 requests is their maximum: too noisy to compare.
    let p99s = (canary.requests >= 100 && b.requests >= 100).then_some((canary.p99_ms, b.p99_ms));
    if let Some((Some(c), Some(bp))) = p99s {
        let limit = bp * config.max_p99_ratio + config.p99_slack_ms;
        let outcome = if c > limit { Outcome::Fail } else { Outcome::Pass };
        if outcome == Outcome::Fail {
            failures.push(format!(
                "canary p99 {c:.1} ms is above baseline {bp:.1} ms × {} + {} ms = {limit:.1} ms",
                config.max_p99_ratio, config.p99_slack_ms
            ));
        }
        checks.push(Check {
            name: "p99_vs_baseline".into(),
            canary: Some(c),
            baseline: Some(bp),
            threshold: Some(limit),
            outcome,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sequential::{SequentialConfig, SequentialState};

    fn window(c: (u64, u64, f64), b: Option<(u64, u64, f64)>) -> WindowStats {
        let w = |(requests, errors, p99): (u64, u64, f64)| SlotWindow {
            requests,
            errors,
            p99_ms: Some(p99),
        };
        WindowStats {
            canary: w(c),
            baseline: b.map(w),
            duration_ms: 10_000,
            latency: None,
            unavailable: None,
            external: Vec::new(),
        }
    }

    fn check(c: (u64, u64, f64), b: Option<(u64, u64, f64)>) -> (Outcome, String) {
        let v = judge(&JudgeConfig::threshold(), window(c, b), None);
        (v.outcome, v.reason)
    }

    #[test]
    fn each_decision_path() {
        type Slot = (u64, u64, f64);
        let cases: [(Slot, Option<Slot>, Outcome, &str); 8] = [
            (
                (5, 0, 10.0),
                Some((500, 0, 10.0)),
                Outcome::Inconclusive,
                "canary served 5 requests",
            ),
            (
                (100, 0, 10.0),
                Some((2000, 2, 10.0)),
                Outcome::Pass,
                "canary error rate 0.00 %",
            ),
            (
                (100, 10, 10.0),
                Some((2000, 2, 10.0)),
                Outcome::Fail,
                "above the ceiling 5.00 %",
            ),
            (
                (100, 3, 10.0),
                Some((2000, 2, 10.0)),
                Outcome::Fail,
                "above baseline 0.10 % × 2 + 1.00 %",
            ),
            (
                (100, 10, 10.0),
                Some((2000, 300, 10.0)),
                Outcome::Inconclusive,
                "baseline unhealthy too",
            ),
            (
                (100, 0, 80.0),
                Some((2000, 0, 20.0)),
                Outcome::Fail,
                "canary p99 80.0 ms is above baseline 20.0 ms",
            ),
            (
                (100, 0, 40.0),
                Some((2000, 0, 20.0)),
                Outcome::Pass,
                "against baseline",
            ),
            ((100, 0, 80.0), None, Outcome::Pass, "absolute ceilings only"),
        ];
        for (c, b, outcome, reason) in cases {
            let (got, text) = check(c, b);
            assert_eq!(got, outcome, "{c:?} vs {b:?}: {text}");
            assert!(text.contains(reason), "{c:?} vs {b:?}: {text:?} lacks {reason:?}");
        }
    }

    #[test]
    fn a_baseline_with_too_few_requests_is_not_compared() {
        let v = judge(
            &JudgeConfig::threshold(),
            window((100, 3, 90.0), Some((5, 0, 10.0))),
            None,
        );
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
        assert!(
            v.reason.contains("baseline served only 5 requests"),
            "{}",
            v.reason
        );
    }

    /// Feeds `windows` identical windows to the sequential judge; returns the last verdict.
    fn sequential(config: &JudgeConfig, canary: (u64, u64), baseline: (u64, u64), windows: usize) -> Verdict {
        let mut state = SequentialState::new(&config.sequential);
        let w = |(requests, errors): (u64, u64)| SlotWindow {
            requests,
            errors,
            p99_ms: None,
        };
        let mut last = None;
        for _ in 0..windows {
            let stats = WindowStats {
                canary: w(canary),
                baseline: Some(w(baseline)),
                duration_ms: 5_000,
                latency: None,
                unavailable: None,
                external: Vec::new(),
            };
            last = Some(judge(config, stats, Some(&mut state)));
        }
        last.unwrap()
    }

    #[test]
    fn sequential_decision_paths() {
        let config = JudgeConfig::default();
        // Strong evidence of more errors: conclusive failure naming the stream, with intervals.
        let v = sequential(&config, (100, 8), (1900, 2), 2);
        assert_eq!((v.outcome, v.conclusive), (Outcome::Fail, true), "{}", v.reason);
        assert!(v.reason.starts_with("errors: canary 8.00 % ["), "{}", v.reason);
        assert!(v.sequential[0].worse && v.sequential[0].e_worse >= v.sequential[0].bar);
        // The same rates: a pass that reports the evidence so far.
        let v = sequential(&config, (100, 1), (1900, 19), 5);
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
        assert!(
            v.reason.contains("strongest evidence of a regression e = "),
            "{}",
            v.reason
        );
        // Too few canary requests: inconclusive, never a pass.
        let v = sequential(&config, (5, 0), (1900, 2), 1);
        assert_eq!(v.outcome, Outcome::Inconclusive, "{}", v.reason);
        // Both slots above the ceiling: the environment, not the canary.
        let v = sequential(&config, (200, 40), (1800, 360), 3);
        assert_eq!(v.outcome, Outcome::Inconclusive, "{}", v.reason);
        assert!(v.reason.contains("baseline unhealthy too"), "{}", v.reason);
        // Only the canary above the ceiling: conclusive.
        let v = sequential(
            &JudgeConfig {
                max_error_rate: 0.05,
                ..config.clone()
            },
            (200, 40),
            (1800, 36),
            2,
        );
        assert!(
            v.conclusive && v.reason.contains("above the ceiling 5.00 %"),
            "{}",
            v.reason
        );
        // A significant but tiny difference is not worth a rollback.
        let tiny = JudgeConfig {
            sequential: SequentialConfig {
                min_error_increase: 0.01,
                ..SequentialConfig::default()
            },
            ..config.clone()
        };
        let v = sequential(&tiny, (20_000, 40), (20_000, 10), 3);
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
    }

    #[test]
    fn early_step_completion_needs_evidence_of_no_regression() {
        let off = JudgeConfig::default();
        let on = JudgeConfig {
            sequential: SequentialConfig {
                early_step_completion: true,
                latency_quantiles: vec![],
                ..SequentialConfig::default()
            },
            ..JudgeConfig::default()
        };
        assert!(
            !sequential(&off, (2000, 2), (2000, 2), 10).complete_step,
            "off by default"
        );
        assert!(
            !sequential(&on, (50, 0), (950, 1), 1).complete_step,
            "one small window is not enough"
        );
        let v = sequential(&on, (5000, 50), (5000, 50), 10);
        assert!(v.complete_step, "{}", v.reason);
        assert!(v.reason.contains("step complete"), "{}", v.reason);
    }
}
