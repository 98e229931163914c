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
//! Both judge every failure a user sees: 5xx answers, and 4xx answers beyond the baseline's own
//! share (a release that logs everyone out answers 401s). A client's own failures (malformed or
//! abandoned requests) never reach the judge: the proxy counts them apart
//! ([`crate::status::ClientFault`]).
//!
//! Too few canary requests make a threshold window inconclusive, never a pass. The sequential
//! judge accumulates evidence over windows, so a window with few requests adds what it has; the
//! rollout engine then holds a step until it has seen `min_step_requests` canary requests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::sequential::{
    self, ClientErrorCounts, SequentialConfig, SequentialState, StreamReport, WindowCounts,
};
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
    /// Fewest canary requests in a window for it to count as a pass (threshold method), and
    /// fewest baseline requests for a baseline to be compared.
    pub min_requests: u64,
    /// Fewest canary requests a step must have seen before it may pass (sequential method).
    pub min_step_requests: u64,
    /// Judge the canary's 4xx share against the baseline's (besides 5xx and latency).
    pub client_errors: bool,
    /// 4xx codes that never count (for example 404 on a service whose clients probe paths).
    /// Must be codes counted one by one ([`crate::TRACKED_CODES`]).
    pub ignore_status: Vec<u16>,
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
            min_step_requests: 50,
            client_errors: true,
            ignore_status: Vec::new(),
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
        for (i, code) in self.ignore_status.iter().enumerate() {
            if !(400..500).contains(code) || crate::status::tracked_index(*code).is_none() {
                let tracked: Vec<String> = crate::TRACKED_CODES
                    .iter()
                    .filter(|c| (400..500).contains(*c))
                    .map(|c| c.to_string())
                    .collect();
                errors.push(FieldError::new(
                    format!("{prefix}ignore_status[{i}]"),
                    format!(
                        "{code} is not a 4xx code counted one by one; use one of {}",
                        tracked.join(", ")
                    ),
                ));
            }
        }
        errors.extend(self.sequential.validate(&format!("{prefix}sequential.")));
        errors
    }
}

/// What one slot did in one window.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SlotWindow {
    pub requests: u64,
    /// 5xx answers.
    pub errors: u64,
    pub p99_ms: Option<f64>,
    /// 4xx answers (none of them a client's own fault), when the source counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_errors: Option<u64>,
    /// Answers of the codes of [`crate::TRACKED_CODES`], when the source tells them apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<BTreeMap<u16, u64>>,
    /// Distinct users the release served so far and, of those, the ones who got a 4xx
    /// (estimates since the release started, not per window), when the source counts users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_with_client_errors: Option<u64>,
}

impl SlotWindow {
    /// A window of `requests` with `errors` 5xx and nothing else known.
    pub fn new(requests: u64, errors: u64, p99_ms: Option<f64>) -> Self {
        SlotWindow {
            requests,
            errors,
            p99_ms,
            ..SlotWindow::default()
        }
    }

    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }

    /// The 4xx that count: all of them but the `ignore`d codes. `None` when the source does not
    /// count 4xx, or some codes are to be ignored and it cannot tell codes apart.
    pub fn counted_client_errors(&self, ignore: &[u16]) -> Option<u64> {
        let all = self.client_errors?;
        if ignore.is_empty() {
            return Some(all.min(self.requests));
        }
        let codes = self.codes.as_ref()?;
        let ignored: u64 = ignore.iter().filter_map(|c| codes.get(c)).sum();
        Some(all.saturating_sub(ignored).min(self.requests))
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
    /// How far the strongest evidence of a regression has come towards the bar, as
    /// `ln e / ln bar` (0: none, 0.5: the square root of the bar, 1: a rollback). The engine
    /// holds a step while it is at or above `hold_exponent`.
    #[serde(default)]
    pub evidence_share: f64,
    /// The evidence is building: the step must not end yet (sequential method).
    #[serde(default)]
    pub hold: bool,
}

fn pct(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

/// An e-value for people: whole numbers up to a million, then powers of ten.
fn e_value(e: f64) -> String {
    if e < 1e6 {
        format!("{e:.0}")
    } else {
        format!("{e:.1e}")
    }
}

/// Judges one window. `evidence` is the sequential judge's memory of earlier windows of this
/// rollout (ignored by the threshold method; pass `None` where no baseline is compared).
pub fn judge(config: &JudgeConfig, stats: WindowStats, evidence: Option<&mut SequentialState>) -> Verdict {
    let canary = stats.canary.clone();
    let baseline = stats
        .baseline
        .clone()
        .filter(|b| b.requests >= config.min_requests);
    let mut checks = Vec::new();
    let mut failures = Vec::new();
    let mut inconclusive = Vec::new();
    let verdict = |outcome, reason: String, checks, conclusive, sequential: Vec<StreamReport>| Verdict {
        outcome,
        reason,
        stats: stats.clone(),
        checks,
        conclusive,
        complete_step: false,
        sequential,
        evidence_share: 0.0,
        hold: false,
    };
    if let Some(why) = &stats.unavailable {
        let reason = format!("no measurements for this window: {why}");
        return verdict(Outcome::Inconclusive, reason, checks, false, Vec::new());
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
    let sequential_baseline = stats.baseline.as_ref().filter(|b| b.requests > 0);
    let sequential_on =
        config.method == JudgeMethod::Sequential && evidence.is_some() && sequential_baseline.is_some();
    ceilings(
        config,
        &canary,
        baseline.as_ref(),
        !sequential_on,
        &mut checks,
        &mut failures,
        &mut inconclusive,
    );

    let mut reports = Vec::new();
    let mut conclusive: Vec<String> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut evidence_share = 0.0f64;
    match config.method {
        JudgeMethod::Threshold => {
            if canary.requests >= config.min_requests {
                ratios(config, &canary, baseline.as_ref(), &mut checks, &mut failures);
            }
        }
        JudgeMethod::Sequential => {
            if let (Some(state), Some(b)) = (evidence, sequential_baseline) {
                let empty = Vec::new();
                let (cl, bl) = match &stats.latency {
                    Some(pair) => (&pair.canary, &pair.baseline),
                    None => (&empty, &empty),
                };
                let ignore = &config.ignore_status[..];
                if config.client_errors
                    && !ignore.is_empty()
                    && canary.client_errors.is_some()
                    && (canary.codes.is_none() || b.codes.is_none())
                {
                    notes.push(format!(
                        "4xx not judged: the metric source does not tell codes apart, so ignore_status {ignore:?} cannot be applied"
                    ));
                }
                let client_errors = match (
                    config.client_errors,
                    canary.counted_client_errors(ignore),
                    b.counted_client_errors(ignore),
                ) {
                    (true, Some(c), Some(bc)) => Some(ClientErrorCounts {
                        canary: c,
                        baseline: bc,
                        codes: canary.codes.as_ref().zip(b.codes.as_ref()),
                        ignore,
                    }),
                    _ => None,
                };
                let counts = WindowCounts {
                    canary_requests: canary.requests,
                    canary_errors: canary.errors,
                    canary_latency: cl,
                    baseline_requests: b.requests,
                    baseline_errors: b.errors,
                    baseline_latency: bl,
                    client_errors,
                };
                let bar = config.sequential.bar(config.client_errors);
                let share = |e: f64| if e > 1.0 { e.ln() / bar.ln() } else { 0.0 };
                if let Some(c) = sequential::observe_ceiling(state, config.max_error_rate, bar, &counts) {
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
                                "canary 5xx rate {} [{} – {}] is above the ceiling {}, e-value {} ≥ {:.0}",
                                pct(c.canary_rate),
                                pct(c.canary_rate_ci95.0),
                                pct(c.canary_rate_ci95.1),
                                pct(c.ceiling),
                                e_value(c.e_canary),
                                c.bar
                            ));
                            Outcome::Fail
                        }
                    };
                    if !c.baseline_over {
                        evidence_share = evidence_share.max(share(c.e_canary));
                    }
                    checks.push(Check {
                        name: "error_rate_ceiling".into(),
                        canary: Some(c.canary_rate),
                        baseline: Some(c.baseline_rate),
                        threshold: Some(c.ceiling),
                        outcome,
                    });
                }
                reports = sequential::observe(&config.sequential, state, bar, counts);
                for r in reports.iter_mut() {
                    if r.name == "4xx" && r.worse {
                        // One client failing its own requests again and again is not the release.
                        let users = canary.users_with_client_errors;
                        let min_users = config.sequential.min_client_error_users;
                        if users.is_some_and(|u| u < min_users) {
                            r.worse = false;
                            notes.push(format!(
                                "4xx evidence e = {:.0} comes from {} canary user(s), fewer than the {min_users} a regression needs",
                                r.e_worse,
                                users.unwrap_or(0)
                            ));
                            continue;
                        }
                    }
                    if !r.worse {
                        evidence_share = evidence_share.max(share(r.e_worse));
                    }
                }
                for r in reports.iter().filter(|r| r.worse) {
                    conclusive.push(describe_regression(r, config.sequential.alpha));
                    evidence_share = evidence_share.max(1.0);
                }
            }
        }
    }

    if !conclusive.is_empty() {
        failures.splice(0..0, conclusive);
        let mut v = verdict(Outcome::Fail, failures.join("; "), checks, true, reports);
        v.evidence_share = evidence_share;
        return v;
    }
    if !failures.is_empty() {
        let mut v = verdict(Outcome::Fail, failures.join("; "), checks, false, reports);
        v.evidence_share = evidence_share;
        return v;
    }
    if !inconclusive.is_empty() {
        let mut v = verdict(
            Outcome::Inconclusive,
            inconclusive.join("; "),
            checks,
            false,
            reports,
        );
        v.evidence_share = evidence_share;
        return v;
    }
    if !sequential_on && canary.requests < config.min_requests {
        let reason = format!(
            "canary served {} requests in the window, fewer than the {} needed to judge",
            canary.requests, config.min_requests
        );
        return verdict(Outcome::Inconclusive, reason, checks, false, reports);
    }
    let c_err = canary.error_rate().unwrap_or(0.0);
    let c_4xx = canary
        .counted_client_errors(&config.ignore_status)
        .filter(|_| canary.requests > 0)
        .map(|c| format!(", 4xx {}", pct(c as f64 / canary.requests as f64)))
        .unwrap_or_default();
    let against = match (&stats.baseline, &baseline) {
        (_, Some(b)) => format!(
            "baseline 5xx {}{} and p99 {}",
            pct(b.error_rate().unwrap_or(0.0)),
            b.counted_client_errors(&config.ignore_status)
                .filter(|_| b.requests > 0)
                .map(|c| format!(", 4xx {}", pct(c as f64 / b.requests as f64)))
                .unwrap_or_default(),
            b.p99_ms
                .map(|p| format!("{p:.1} ms"))
                .unwrap_or_else(|| "-".into())
        ),
        (Some(b), None) if sequential_on => format!("baseline {} requests", b.requests),
        (Some(b), None) => format!(
            "baseline served only {} requests: absolute ceilings only",
            b.requests
        ),
        (None, None) => "absolute ceilings only (no baseline traffic)".into(),
    };
    let hold = sequential_on && evidence_share >= config.sequential.hold_exponent;
    let evidence_text = if reports.is_empty() {
        String::new()
    } else if hold {
        format!(
            "; evidence of a regression is building ({:.0} % of the way to a rollback): the step is held",
            evidence_share * 100.0
        )
    } else {
        format!(
            "; no sign of a regression ({:.0} % of the way to a rollback)",
            evidence_share * 100.0
        )
    };
    let notes = notes.iter().map(|n| format!("; {n}")).collect::<String>();
    let complete_step = config.sequential.early_step_completion
        && !hold
        && !reports.is_empty()
        && reports.iter().all(|r| r.not_worse);
    let early = if complete_step {
        "; not worse than the margin on every stream: step complete"
    } else {
        ""
    };
    let reason = format!(
        "canary 5xx {}{c_4xx} and p99 {} over {} requests, against {against}{evidence_text}{notes}{early}",
        pct(c_err),
        canary
            .p99_ms
            .map(|p| format!("{p:.1} ms"))
            .unwrap_or_else(|| "-".into()),
        canary.requests
    );
    let mut v = verdict(Outcome::Pass, reason, checks, false, reports);
    v.complete_step = complete_step;
    v.evidence_share = evidence_share;
    v.hold = hold;
    v
}

/// A sentence for a stream that shows a regression, naming the codes behind a 4xx one.
fn describe_regression(r: &StreamReport, alpha: f64) -> String {
    let codes: Vec<String> = r
        .codes
        .iter()
        .filter(|c| c.canary_rate > c.baseline_rate && c.e_worse > 1.0)
        .take(3)
        .map(|c| {
            format!(
                "{}: canary {} against baseline {}",
                c.code,
                pct(c.canary_rate),
                pct(c.baseline_rate)
            )
        })
        .collect();
    let codes = if codes.is_empty() {
        String::new()
    } else {
        format!(" ({})", codes.join(", "))
    };
    let name = match r.name.as_str() {
        "errors" => "5xx",
        other => other,
    };
    format!(
        "{name}: canary {} [{} – {}] against baseline {} [{} – {}] over the rollout{codes}, e-value {} ≥ {:.0} (false-rollback rate ≤ {})",
        pct(r.canary_rate),
        pct(r.canary_rate_ci95.0),
        pct(r.canary_rate_ci95.1),
        pct(r.baseline_rate),
        pct(r.baseline_rate_ci95.0),
        pct(r.baseline_rate_ci95.1),
        e_value(r.e_worse),
        r.bar,
        alpha
    )
}

/// Absolute ceilings, each excused when the baseline breaks it too.
fn ceilings(
    config: &JudgeConfig,
    canary: &SlotWindow,
    baseline: Option<&SlotWindow>,
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
    canary: &SlotWindow,
    baseline: Option<&SlotWindow>,
    checks: &mut Vec<Check>,
    failures: &mut Vec<String>,
) {
    let Some(b) = baseline else { return };
    let ignore = &config.ignore_status[..];
    if let (true, Some(c4), Some(b4)) = (
        config.client_errors,
        canary.counted_client_errors(ignore),
        b.counted_client_errors(ignore),
    ) {
        let (c_rate, b_rate) = (
            c4 as f64 / canary.requests.max(1) as f64,
            b4 as f64 / b.requests.max(1) as f64,
        );
        let limit = b_rate * config.max_error_ratio + config.error_rate_slack;
        let outcome = if c_rate > limit {
            failures.push(format!(
                "canary 4xx rate {} is above baseline {} × {} + {} = {}",
                pct(c_rate),
                pct(b_rate),
                config.max_error_ratio,
                pct(config.error_rate_slack),
                pct(limit)
            ));
            Outcome::Fail
        } else {
            Outcome::Pass
        };
        checks.push(Check {
            name: "client_error_rate_vs_baseline".into(),
            canary: Some(c_rate),
            baseline: Some(b_rate),
            threshold: Some(limit),
            outcome,
        });
    }
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
        let w = |(requests, errors, p99): (u64, u64, f64)| SlotWindow::new(requests, errors, Some(p99));
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
                "canary 5xx 0.00 %",
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
        let w = |(requests, errors): (u64, u64)| SlotWindow::new(requests, errors, None);
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
        assert!(v.reason.starts_with("5xx: canary 8.00 % ["), "{}", v.reason);
        assert!(v.sequential[0].worse && v.sequential[0].e_worse >= v.sequential[0].bar);
        // The same rates: a pass that reports the evidence so far.
        let v = sequential(&config, (100, 1), (1900, 19), 5);
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
        assert!(v.reason.contains("no sign of a regression"), "{}", v.reason);
        // Few canary requests: their evidence counts; the engine holds the step until it has
        // seen `min_step_requests`.
        let v = sequential(&config, (5, 0), (1900, 2), 1);
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
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

    /// A slot's window with 4xx codes.
    fn with_codes(requests: u64, errors: u64, codes: &[(u16, u64)]) -> SlotWindow {
        let codes: BTreeMap<u16, u64> = codes.iter().copied().collect();
        SlotWindow {
            client_errors: Some(
                codes
                    .iter()
                    .filter(|(c, _)| (400..500).contains(*c))
                    .map(|(_, n)| n)
                    .sum(),
            ),
            codes: Some(codes),
            ..SlotWindow::new(requests, errors, None)
        }
    }

    fn sequential_4xx(
        config: &JudgeConfig,
        canary: &SlotWindow,
        baseline: &SlotWindow,
        windows: usize,
    ) -> Verdict {
        let mut state = SequentialState::new(&config.sequential);
        let mut last = None;
        for _ in 0..windows {
            let stats = WindowStats {
                canary: canary.clone(),
                baseline: Some(baseline.clone()),
                duration_ms: 5_000,
                ..WindowStats::default()
            };
            last = Some(judge(config, stats, Some(&mut state)));
        }
        last.unwrap()
    }

    #[test]
    fn a_rise_of_any_4xx_code_is_a_regression_and_the_decision_names_it() {
        let config = JudgeConfig::default();
        for code in [401u16, 403, 404, 429, 400, 422] {
            let canary = with_codes(200, 0, &[(code, 80), (410, 4)]);
            let baseline = with_codes(3800, 0, &[(code, 8), (410, 76)]);
            let v = sequential_4xx(&config, &canary, &baseline, 2);
            assert_eq!(
                (v.outcome, v.conclusive),
                (Outcome::Fail, true),
                "{code}: {}",
                v.reason
            );
            assert!(v.reason.starts_with("4xx: canary"), "{code}: {}", v.reason);
            assert!(
                v.reason
                    .contains(&format!("{code}: canary 40.00 % against baseline 0.21 %")),
                "{code}: {}",
                v.reason
            );
        }
    }

    #[test]
    fn the_baselines_own_4xx_background_is_not_a_regression() {
        let config = JudgeConfig::default();
        let canary = with_codes(200, 0, &[(404, 10), (401, 2)]);
        let baseline = with_codes(3800, 0, &[(404, 190), (401, 38)]);
        let v = sequential_4xx(&config, &canary, &baseline, 30);
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
        assert!(v.reason.contains("4xx 6.00 %"), "{}", v.reason);
    }

    #[test]
    fn ignored_codes_never_count() {
        let canary = with_codes(200, 0, &[(404, 80)]);
        let baseline = with_codes(3800, 0, &[(404, 8)]);
        let ignoring = JudgeConfig {
            ignore_status: vec![404],
            ..JudgeConfig::default()
        };
        let v = sequential_4xx(&ignoring, &canary, &baseline, 5);
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
        let off = JudgeConfig {
            client_errors: false,
            ..JudgeConfig::default()
        };
        assert_eq!(sequential_4xx(&off, &canary, &baseline, 5).outcome, Outcome::Pass);
        assert_eq!(
            sequential_4xx(&JudgeConfig::default(), &canary, &baseline, 5).outcome,
            Outcome::Fail
        );
        // A source that cannot tell codes apart cannot leave some out: said, not guessed.
        let uncoded = |w: &SlotWindow| SlotWindow {
            codes: None,
            ..w.clone()
        };
        let v = sequential_4xx(&ignoring, &uncoded(&canary), &uncoded(&baseline), 5);
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
        assert!(v.reason.contains("4xx not judged"), "{}", v.reason);
        let bad = JudgeConfig {
            ignore_status: vec![404, 418, 503],
            ..JudgeConfig::default()
        };
        let errors = bad.validate("judge.");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["judge.ignore_status[1]", "judge.ignore_status[2]"],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("401"), "{errors:?}");
    }

    #[test]
    fn one_client_failing_its_own_requests_is_not_a_regression() {
        let config = JudgeConfig::default();
        let mut canary = with_codes(200, 0, &[(404, 80)]);
        let baseline = with_codes(3800, 0, &[(404, 8)]);
        canary.users = Some(50);
        canary.users_with_client_errors = Some(1);
        let v = sequential_4xx(&config, &canary, &baseline, 5);
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
        assert!(v.reason.contains("from 1 canary user(s)"), "{}", v.reason);
        canary.users_with_client_errors = Some(12);
        assert_eq!(
            sequential_4xx(&config, &canary, &baseline, 5).outcome,
            Outcome::Fail
        );
    }

    #[test]
    fn evidence_building_holds_the_step() {
        let config = JudgeConfig::default();
        // Three times the baseline's 5xx on a small canary: before the evidence reaches the bar,
        // it passes its square root, and the verdict holds the step.
        let mut state = SequentialState::new(&config.sequential);
        let mut held = None;
        for _ in 0..200 {
            let stats = WindowStats {
                canary: SlotWindow::new(100, 3, None),
                baseline: Some(SlotWindow::new(1900, 19, None)),
                duration_ms: 5_000,
                ..WindowStats::default()
            };
            let v = judge(&config, stats, Some(&mut state));
            if v.outcome == Outcome::Fail {
                break;
            }
            if v.hold {
                held = Some(v);
            }
        }
        let v = held.expect("some window held the step before the rollback");
        assert_eq!(v.outcome, Outcome::Pass, "{}", v.reason);
        assert!(
            (0.5..1.0).contains(&v.evidence_share),
            "{} {}",
            v.evidence_share,
            v.reason
        );
        assert!(v.reason.contains("the step is held"), "{}", v.reason);
        let calm = sequential(&config, (100, 0), (1900, 2), 3);
        assert!(!calm.hold && calm.evidence_share < 0.5, "{}", calm.reason);
    }
}
