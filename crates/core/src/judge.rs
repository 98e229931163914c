//! The threshold judge: one analysis window of the canary against the live slot.
//!
//! Each check compares the canary with an absolute ceiling and, when the baseline served enough
//! requests, with the baseline: `canary <= baseline * ratio + slack`. Too few canary requests make
//! the window inconclusive, never a pass. A ceiling the baseline breaches too is the environment's
//! problem, not the canary's: the window is inconclusive with the reason "baseline unhealthy too".

use serde::{Deserialize, Serialize};

use crate::validate::FieldError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThresholdJudgeConfig {
    /// Fewest requests a slot must serve in a window for its numbers to count.
    pub min_requests: u64,
    /// Absolute ceiling of the canary's 5xx rate (0.05 = 5 %).
    pub max_error_rate: f64,
    /// Canary 5xx rate may be at most baseline × this + `error_rate_slack`.
    pub max_error_ratio: f64,
    pub error_rate_slack: f64,
    /// Absolute ceiling of the canary's p99 latency, if any.
    pub max_p99_ms: Option<f64>,
    /// Canary p99 may be at most baseline × this + `p99_slack_ms`.
    pub max_p99_ratio: f64,
    pub p99_slack_ms: f64,
}

impl Default for ThresholdJudgeConfig {
    fn default() -> Self {
        ThresholdJudgeConfig {
            min_requests: 20,
            max_error_rate: 0.05,
            max_error_ratio: 2.0,
            error_rate_slack: 0.01,
            max_p99_ms: None,
            max_p99_ratio: 1.5,
            p99_slack_ms: 25.0,
        }
    }
}

impl ThresholdJudgeConfig {
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
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct WindowStats {
    pub canary: SlotWindow,
    pub baseline: Option<SlotWindow>,
    pub duration_ms: u64,
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
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

pub fn judge(config: &ThresholdJudgeConfig, stats: WindowStats) -> Verdict {
    let canary = stats.canary;
    let verdict = |outcome, reason: String, checks| Verdict {
        outcome,
        reason,
        stats,
        checks,
    };
    if canary.requests < config.min_requests {
        return verdict(
            Outcome::Inconclusive,
            format!(
                "canary served {} requests in the window, fewer than the {} needed to judge",
                canary.requests, config.min_requests
            ),
            Vec::new(),
        );
    }
    let baseline = stats.baseline.filter(|b| b.requests >= config.min_requests);
    let mut checks = Vec::new();
    let mut failures = Vec::new();
    let mut inconclusive = Vec::new();

    let c_err = canary.error_rate().unwrap_or(0.0);
    let b_err = baseline.and_then(|b| b.error_rate());
    // Absolute ceiling on errors.
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
    if let Some(b) = b_err {
        let limit = b * config.max_error_ratio + config.error_rate_slack;
        let outcome = if c_err > limit {
            Outcome::Fail
        } else {
            Outcome::Pass
        };
        if outcome == Outcome::Fail {
            failures.push(format!(
                "canary error rate {} is above baseline {} × {} + {} = {}",
                pct(c_err),
                pct(b),
                config.max_error_ratio,
                pct(config.error_rate_slack),
                pct(limit)
            ));
        }
        checks.push(Check {
            name: "error_rate_vs_baseline".into(),
            canary: Some(c_err),
            baseline: Some(b),
            threshold: Some(limit),
            outcome,
        });
    }

    let c_p99 = canary.p99_ms;
    let b_p99 = baseline.and_then(|b| b.p99_ms);
    if let (Some(ceiling), Some(c)) = (config.max_p99_ms, c_p99) {
        let over = c > ceiling;
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
    if let (Some(c), Some(b)) = (c_p99, b_p99) {
        let limit = b * config.max_p99_ratio + config.p99_slack_ms;
        let outcome = if c > limit { Outcome::Fail } else { Outcome::Pass };
        if outcome == Outcome::Fail {
            failures.push(format!(
                "canary p99 {c:.1} ms is above baseline {b:.1} ms × {} + {} ms = {limit:.1} ms",
                config.max_p99_ratio, config.p99_slack_ms
            ));
        }
        checks.push(Check {
            name: "p99_vs_baseline".into(),
            canary: Some(c),
            baseline: Some(b),
            threshold: Some(limit),
            outcome,
        });
    }

    if !failures.is_empty() {
        return verdict(Outcome::Fail, failures.join("; "), checks);
    }
    if !inconclusive.is_empty() {
        return verdict(Outcome::Inconclusive, inconclusive.join("; "), checks);
    }
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
    verdict(
        Outcome::Pass,
        format!(
            "canary error rate {} and p99 {} over {} requests, {against}",
            pct(c_err),
            c_p99.map(|p| format!("{p:.1} ms")).unwrap_or_else(|| "-".into()),
            canary.requests
        ),
        checks,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
        }
    }

    fn check(c: (u64, u64, f64), b: Option<(u64, u64, f64)>) -> (Outcome, String) {
        let v = judge(&ThresholdJudgeConfig::default(), window(c, b));
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
            &ThresholdJudgeConfig::default(),
            window((100, 3, 90.0), Some((5, 0, 10.0))),
        );
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
        assert!(
            v.reason.contains("baseline served only 5 requests"),
            "{}",
            v.reason
        );
    }
}
