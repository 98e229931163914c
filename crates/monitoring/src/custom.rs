//! Custom metrics: user-defined queries with absolute bounds and a limit on how much worse than
//! the baseline the canary may be, and [`judge_custom`], which checks them.
//!
//! The rules, in order, for each metric:
//! 1. No canary value (not measured, empty result, NaN, infinite) -> inconclusive.
//! 2. Canary below `min` or above `max` -> fail.
//! 3. With `max_relative_change` and a baseline measurement: no baseline value -> inconclusive
//!    (the comparison was asked for and cannot be made); canary worse than the baseline by more
//!    than `max_relative_change x |baseline|` in the metric's bad direction -> fail.
//! 4. Otherwise pass. Without a baseline measurement at all (e.g. after promotion, when the old
//!    slot has no traffic) only the absolute bounds apply.
//!
//! Relative limits are relative to the baseline's magnitude, so a baseline of exactly 0 allows
//! no change at all in the bad direction: for metrics that sit at 0 (error counts), an absolute
//! `max` is the better bound.

use serde::{Deserialize, Serialize};

use crate::SlotMeasurement;

/// Which way is good for a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// e.g. throughput, cache hit ratio: a drop is bad.
    HigherIsBetter,
    /// e.g. latency, error ratio, memory: a rise is bad.
    LowerIsBetter,
}

/// A user-defined metric, measured by a source (its `query` is a template, see
/// [`crate::prometheus`]) and checked by [`judge_custom`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomMetric {
    /// Names the metric in measurements, checks and decisions.
    pub name: String,
    /// Query template; must evaluate to one number.
    pub query: String,
    pub direction: Direction,
    /// The canary fails below this.
    #[serde(default)]
    pub min: Option<f64>,
    /// The canary fails above this.
    #[serde(default)]
    pub max: Option<f64>,
    /// How much worse than the baseline the canary may be, as a fraction of the baseline's
    /// value: 0.1 = at most 10 % worse in the metric's bad direction.
    #[serde(default)]
    pub max_relative_change: Option<f64>,
}

impl CustomMetric {
    /// A metric without bounds yet, where higher values are worse.
    pub fn lower_is_better(name: impl Into<String>, query: impl Into<String>) -> Self {
        Self::new(name, query, Direction::LowerIsBetter)
    }

    /// A metric without bounds yet, where lower values are worse.
    pub fn higher_is_better(name: impl Into<String>, query: impl Into<String>) -> Self {
        Self::new(name, query, Direction::HigherIsBetter)
    }

    fn new(name: impl Into<String>, query: impl Into<String>, direction: Direction) -> Self {
        Self {
            name: name.into(),
            query: query.into(),
            direction,
            min: None,
            max: None,
            max_relative_change: None,
        }
    }

    pub fn with_min(mut self, min: f64) -> Self {
        self.min = Some(min);
        self
    }

    pub fn with_max(mut self, max: f64) -> Self {
        self.max = Some(max);
        self
    }

    pub fn with_max_relative_change(mut self, change: f64) -> Self {
        self.max_relative_change = Some(change);
        self
    }

    /// What is wrong with the definition (not with the query, which the source checks).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.name.trim().is_empty() {
            out.push("name is empty; give the metric a name to show in decisions".to_owned());
        }
        for (field, v) in [("min", self.min), ("max", self.max)] {
            if v.is_some_and(|v| !v.is_finite()) {
                out.push(format!("{field} must be a finite number"));
            }
        }
        if let (Some(min), Some(max)) = (self.min, self.max) {
            if min > max {
                out.push(format!("min {min} is above max {max}; no value could pass"));
            }
        }
        if let Some(r) = self.max_relative_change {
            if !r.is_finite() || r < 0.0 {
                out.push(format!(
                    "max_relative_change {r} must be a fraction of at least 0, e.g. 0.1 for 10 %"
                ));
            }
        }
        out
    }
}

/// The verdict on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckOutcome {
    Pass,
    Fail,
    /// Not enough data to say: never to be taken as a pass.
    Inconclusive,
}

/// The check of one custom metric, with the numbers it was based on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomCheck {
    pub name: String,
    pub canary: Option<f64>,
    pub baseline: Option<f64>,
    pub outcome: CheckOutcome,
    /// Why, with the numbers, e.g. "canary 0.132 is above max 0.1".
    pub reason: String,
}

/// Checks each of `metrics` for the canary (see the [module docs](self) for the rules). One
/// check per metric, in the order given.
pub fn judge_custom(
    metrics: &[CustomMetric],
    canary: &SlotMeasurement,
    baseline: Option<&SlotMeasurement>,
) -> Vec<CustomCheck> {
    metrics
        .iter()
        .map(|m| {
            let canary_value = value_of(canary, &m.name);
            let baseline_value = baseline.and_then(|b| value_of(b, &m.name));
            let (outcome, reason) = judge_one(m, canary_value, baseline.is_some(), baseline_value);
            CustomCheck {
                name: m.name.clone(),
                canary: canary_value,
                baseline: baseline_value,
                outcome,
                reason,
            }
        })
        .collect()
}

/// A metric's value in a measurement; not measured and not finite both count as no data.
fn value_of(m: &SlotMeasurement, name: &str) -> Option<f64> {
    m.custom.get(name).copied().flatten().filter(|v| v.is_finite())
}

fn judge_one(
    m: &CustomMetric,
    canary: Option<f64>,
    have_baseline: bool,
    baseline: Option<f64>,
) -> (CheckOutcome, String) {
    let Some(c) = canary else {
        return (
            CheckOutcome::Inconclusive,
            "no data for the canary (empty result or not a number)".to_owned(),
        );
    };
    if let Some(min) = m.min.filter(|&min| c < min) {
        return (
            CheckOutcome::Fail,
            format!("canary {} is below min {}", num(c), num(min)),
        );
    }
    if let Some(max) = m.max.filter(|&max| c > max) {
        return (
            CheckOutcome::Fail,
            format!("canary {} is above max {}", num(c), num(max)),
        );
    }
    let bounds = describe_bounds(m);
    let Some(allowed) = m.max_relative_change else {
        return (CheckOutcome::Pass, format!("canary {} {bounds}", num(c)));
    };
    if !have_baseline {
        return (
            CheckOutcome::Pass,
            format!("canary {} {bounds}; no baseline to compare with", num(c)),
        );
    }
    let Some(b) = baseline else {
        return (
            CheckOutcome::Inconclusive,
            format!("canary {} but no data for the baseline to compare with", num(c)),
        );
    };
    // How much worse the canary is, in the metric's bad direction; negative means better.
    let worse_by = match m.direction {
        Direction::LowerIsBetter => c - b,
        Direction::HigherIsBetter => b - c,
    };
    let limit = allowed * b.abs();
    let (worse_word, better_word) = match m.direction {
        Direction::LowerIsBetter => ("above", "below"),
        Direction::HigherIsBetter => ("below", "above"),
    };
    if worse_by > limit {
        let how_much = if b == 0.0 {
            format!("{} {worse_word} the baseline of 0", num(worse_by))
        } else {
            format!("{} % {worse_word} baseline {}", pct(worse_by / b.abs()), num(b))
        };
        return (
            CheckOutcome::Fail,
            format!("canary {} is {how_much} (allowed: {} %)", num(c), pct(allowed)),
        );
    }
    let relation = if worse_by > 0.0 {
        format!("{} % {worse_word}", pct(worse_by / b.abs()))
    } else if worse_by < 0.0 && b != 0.0 {
        format!("{} % {better_word}", pct(-worse_by / b.abs()))
    } else {
        "level with".to_owned()
    };
    (
        CheckOutcome::Pass,
        format!(
            "canary {} is {relation} baseline {} (allowed: {} % worse)",
            num(c),
            num(b),
            pct(allowed)
        ),
    )
}

fn describe_bounds(m: &CustomMetric) -> String {
    match (m.min, m.max) {
        (Some(min), Some(max)) => format!("is within [{}, {}]", num(min), num(max)),
        (Some(min), None) => format!("is at least min {}", num(min)),
        (None, Some(max)) => format!("is at most max {}", num(max)),
        (None, None) => "(no bounds set: recorded only)".to_owned(),
    }
}

/// A number for a reason: up to 4 significant decimals, no trailing zeros.
fn num(v: f64) -> String {
    let s = format!("{v:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// A fraction as a percentage for a reason, e.g. 0.125 -> "12.5".
fn pct(fraction: f64) -> String {
    num(fraction * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(values: &[(&str, Option<f64>)]) -> SlotMeasurement {
        SlotMeasurement {
            custom: values.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            ..SlotMeasurement::default()
        }
    }

    fn one(metric: CustomMetric, canary: Option<f64>, baseline: Option<Option<f64>>) -> CustomCheck {
        let c = m(&[(metric.name.as_str(), canary)]);
        let b = baseline.map(|v| m(&[(metric.name.as_str(), v)]));
        let mut checks = judge_custom(&[metric], &c, b.as_ref());
        assert_eq!(checks.len(), 1);
        checks.remove(0)
    }

    fn latency() -> CustomMetric {
        CustomMetric::lower_is_better("p50", "q")
            .with_max(500.0)
            .with_max_relative_change(0.1)
    }

    fn hit_ratio() -> CustomMetric {
        CustomMetric::higher_is_better("hits", "q")
            .with_min(0.5)
            .with_max_relative_change(0.1)
    }

    #[test]
    fn missing_canary_data_is_inconclusive() {
        for canary in [None, Some(f64::NAN), Some(f64::INFINITY)] {
            let c = one(latency(), canary, Some(Some(100.0)));
            assert_eq!(c.outcome, CheckOutcome::Inconclusive, "{canary:?}: {}", c.reason);
            assert_eq!(c.canary, None);
            assert!(c.reason.contains("no data for the canary"), "{}", c.reason);
        }
        // Not measured at all: same thing.
        let checks = judge_custom(&[latency()], &SlotMeasurement::default(), None);
        assert_eq!(checks[0].outcome, CheckOutcome::Inconclusive);
    }

    #[test]
    fn absolute_bounds_fail_whatever_the_baseline() {
        let c = one(latency(), Some(501.0), Some(Some(600.0)));
        assert_eq!(c.outcome, CheckOutcome::Fail);
        assert_eq!(c.reason, "canary 501 is above max 500");
        let c = one(hit_ratio(), Some(0.4), None);
        assert_eq!(c.outcome, CheckOutcome::Fail);
        assert_eq!(c.reason, "canary 0.4 is below min 0.5");
        // Bounds are inclusive.
        assert_eq!(one(latency(), Some(500.0), None).outcome, CheckOutcome::Pass);
        assert_eq!(one(hit_ratio(), Some(0.5), None).outcome, CheckOutcome::Pass);
    }

    #[test]
    fn worse_than_baseline_beyond_the_allowed_change_fails() {
        let c = one(latency(), Some(120.0), Some(Some(100.0)));
        assert_eq!(c.outcome, CheckOutcome::Fail);
        assert_eq!(c.reason, "canary 120 is 20 % above baseline 100 (allowed: 10 %)");
        assert_eq!((c.canary, c.baseline), (Some(120.0), Some(100.0)));

        let c = one(hit_ratio(), Some(0.7), Some(Some(0.9)));
        assert_eq!(c.outcome, CheckOutcome::Fail);
        assert_eq!(
            c.reason,
            "canary 0.7 is 22.2222 % below baseline 0.9 (allowed: 10 %)"
        );
    }

    #[test]
    fn within_the_allowed_change_or_better_passes() {
        let c = one(latency(), Some(109.0), Some(Some(100.0)));
        assert_eq!(c.outcome, CheckOutcome::Pass, "{}", c.reason);
        assert_eq!(
            c.reason,
            "canary 109 is 9 % above baseline 100 (allowed: 10 % worse)"
        );
        // Better in the good direction, however much: pass.
        let c = one(latency(), Some(10.0), Some(Some(100.0)));
        assert_eq!(c.outcome, CheckOutcome::Pass);
        assert_eq!(
            c.reason,
            "canary 10 is 90 % below baseline 100 (allowed: 10 % worse)"
        );
        let c = one(hit_ratio(), Some(0.99), Some(Some(0.9)));
        assert_eq!(c.outcome, CheckOutcome::Pass, "{}", c.reason);
        let c = one(hit_ratio(), Some(0.9), Some(Some(0.9)));
        assert_eq!(
            c.reason,
            "canary 0.9 is level with baseline 0.9 (allowed: 10 % worse)"
        );
    }

    #[test]
    fn negative_baselines_compare_by_magnitude() {
        // A higher-is-better metric around -10 (e.g. a margin): -10.5 is 5 % worse.
        let metric = CustomMetric::higher_is_better("margin", "q").with_max_relative_change(0.1);
        assert_eq!(
            one(metric.clone(), Some(-10.5), Some(Some(-10.0))).outcome,
            CheckOutcome::Pass
        );
        assert_eq!(
            one(metric, Some(-11.5), Some(Some(-10.0))).outcome,
            CheckOutcome::Fail
        );
    }

    #[test]
    fn a_zero_baseline_allows_no_change_in_the_bad_direction() {
        let metric = CustomMetric::lower_is_better("errs", "q").with_max_relative_change(0.5);
        let c = one(metric.clone(), Some(2.0), Some(Some(0.0)));
        assert_eq!(c.outcome, CheckOutcome::Fail);
        assert_eq!(c.reason, "canary 2 is 2 above the baseline of 0 (allowed: 50 %)");
        assert_eq!(
            one(metric, Some(0.0), Some(Some(0.0))).outcome,
            CheckOutcome::Pass
        );
    }

    #[test]
    fn without_a_baseline_only_absolute_bounds_apply() {
        let c = one(latency(), Some(450.0), None);
        assert_eq!(c.outcome, CheckOutcome::Pass);
        assert_eq!(
            c.reason,
            "canary 450 is at most max 500; no baseline to compare with"
        );
        assert_eq!(c.baseline, None);
    }

    #[test]
    fn a_baseline_without_data_is_inconclusive_when_a_comparison_is_asked_for() {
        for b in [None, Some(f64::NAN)] {
            let c = one(latency(), Some(100.0), Some(b));
            assert_eq!(c.outcome, CheckOutcome::Inconclusive, "{}", c.reason);
            assert!(c.reason.contains("no data for the baseline"), "{}", c.reason);
        }
        // Without a relative limit the baseline does not matter.
        let metric = CustomMetric::lower_is_better("p50", "q").with_max(500.0);
        let c = one(metric, Some(100.0), Some(None));
        assert_eq!(c.outcome, CheckOutcome::Pass);
        assert_eq!(c.reason, "canary 100 is at most max 500");
    }

    #[test]
    fn metrics_without_bounds_are_recorded_and_pass() {
        let c = one(
            CustomMetric::higher_is_better("rps", "q"),
            Some(3.0),
            Some(Some(9.0)),
        );
        assert_eq!(c.outcome, CheckOutcome::Pass);
        assert_eq!(c.reason, "canary 3 (no bounds set: recorded only)");
    }

    #[test]
    fn checks_come_in_metric_order() {
        let metrics = [latency(), hit_ratio()];
        let canary = m(&[("hits", Some(0.1)), ("p50", Some(1.0))]);
        let checks = judge_custom(&metrics, &canary, None);
        let got: Vec<(&str, CheckOutcome)> = checks.iter().map(|c| (c.name.as_str(), c.outcome)).collect();
        assert_eq!(got, [("p50", CheckOutcome::Pass), ("hits", CheckOutcome::Fail)]);
    }

    #[test]
    fn definitions_are_checked() {
        assert!(latency().problems().is_empty());
        let bad = CustomMetric::lower_is_better(" ", "q")
            .with_min(2.0)
            .with_max(1.0)
            .with_max_relative_change(-0.1);
        let problems = bad.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[1].contains("min 2 is above max 1"), "{problems:?}");
    }

    #[test]
    fn config_form() {
        let metric: CustomMetric = serde_json::from_str(
            r#"{"name": "p50", "query": "q", "direction": "lower_is_better", "max": 500, "max_relative_change": 0.1}"#,
        )
        .unwrap();
        assert_eq!(metric, latency());
        let err = serde_json::from_str::<CustomMetric>(r#"{"name": "p", "query": "q", "direction": "up"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("higher_is_better"), "{err}");
    }
}
