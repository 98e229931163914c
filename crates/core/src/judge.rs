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

/// The judge's decision on one window, with the numbers behind it and sentences for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub outcome: Outcome,
    /// The statistics behind the decision: rates with their intervals, e-values and bars.
    pub reason: String,
    /// The decision in plain words, versions by name where the caller gave them ("v2 fails
    /// 4.6 % of requests with a 5xx, v1 0 %"). The rollout engine adds what it does about it
    /// ("...: rolling back") before it records the verdict. Empty in verdicts recorded before
    /// it existed.
    #[serde(default)]
    pub summary: String,
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

/// What the two sides of a comparison are called in sentences for people: the versions where
/// the caller knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Names<'a> {
    pub canary: &'a str,
    pub baseline: &'a str,
}

impl Default for Names<'static> {
    fn default() -> Self {
        Names {
            canary: "the canary",
            baseline: "the baseline",
        }
    }
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

/// Fewer requests than this and a rate says less than the counts: "1 of 1 requests", never
/// "100.0 %".
const FEW_REQUESTS: u64 = 20;

/// A measured share of requests for people: one decimal from 1 %, two below, and exact ends.
fn percent(x: f64) -> String {
    let p = x * 100.0;
    if p <= 0.0 {
        "0 %".into()
    } else if p >= 100.0 {
        "100 %".into()
    } else if p < 0.005 {
        "< 0.01 %".into()
    } else if p < 0.995 {
        format!("{p:.2} %")
    } else if p >= 99.95 {
        // Rounding would claim every request.
        "> 99.9 %".into()
    } else {
        format!("{p:.1} %")
    }
}

/// A configured limit (a ceiling, a weight) as people wrote it: "5 %", "0.5 %", no trailing
/// zeros.
fn limit_pct(x: f64) -> String {
    format!("{} %", (x * 10_000.0).round() / 100.0)
}

/// A latency for people: tenths below 10 ms, whole milliseconds below a second, then seconds.
fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1} ms")
    } else if ms < 1000.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

/// "1 request", "340 requests".
fn count_requests(n: u64) -> String {
    if n == 1 {
        "1 request".into()
    } else {
        format!("{n} requests")
    }
}

/// A status code with its reason phrase (RFC 9110), for the codes counted one by one.
fn code_name(code: u16) -> String {
    let phrase = match code {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return code.to_string(),
    };
    format!("{code} {phrase}")
}

/// Some of a slot's requests, said as a rate, or as counts when there are too few requests for
/// a rate.
#[derive(Debug, Clone, Copy)]
struct Share {
    events: u64,
    requests: u64,
    rate: f64,
}

impl Share {
    fn new(events: u64, requests: u64) -> Share {
        let rate = if requests == 0 {
            0.0
        } else {
            events as f64 / requests as f64
        };
        Share {
            events,
            requests,
            rate,
        }
    }

    /// A known rate whose requests are `requests` (a code's share of the 4xx family).
    fn with_rate(events: u64, requests: u64, rate: f64) -> Share {
        Share {
            events,
            requests,
            rate,
        }
    }

    fn few(&self) -> bool {
        self.requests < FEW_REQUESTS
    }

    /// "4.6 %", or "1 of 1".
    fn short(&self) -> String {
        if self.requests == 0 {
            "no requests".into()
        } else if self.few() {
            format!("{} of {}", self.events, self.requests)
        } else {
            percent(self.rate)
        }
    }

    /// "4.6 % of requests", or "1 of 1 requests".
    fn of_requests(&self) -> String {
        if self.few() {
            format!("{} of {} requests", self.events, self.requests)
        } else {
            format!("{} of requests", percent(self.rate))
        }
    }

    /// "4.6 % of its requests", or "1 of its 1 requests".
    fn of_its_requests(&self) -> String {
        if self.few() {
            format!("{} of its {} requests", self.events, self.requests)
        } else {
            format!("{} of its requests", percent(self.rate))
        }
    }
}

/// One reason for a verdict, twice: the statistics, and the same in plain words.
#[derive(Debug, Clone)]
struct Finding {
    /// What it is about ("5xx", "4xx", "latency"; empty: nothing shared with another finding).
    /// Two findings about the same thing (a ceiling and a comparison both broken by the 5xx)
    /// are two statistics but one sentence for people.
    topic: &'static str,
    reason: String,
    plain: String,
}

/// What the judge found in a window, by how it weighs on the verdict.
#[derive(Debug, Default)]
struct Findings {
    /// Failures of a sequential test, whose error bound already holds.
    conclusive: Vec<Finding>,
    failures: Vec<Finding>,
    inconclusive: Vec<Finding>,
    /// Said alongside a pass.
    notes: Vec<Finding>,
    /// Said before a pass, whose numbers they explain (4xx that one client brought on itself).
    caveats: Vec<Finding>,
}

fn join_reasons(found: &[Finding]) -> String {
    found
        .iter()
        .map(|f| f.reason.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The plain sentences, the first of each topic only.
fn join_plain(found: &[Finding]) -> String {
    let mut said: Vec<&str> = Vec::new();
    let mut parts = Vec::new();
    for f in found {
        if !f.topic.is_empty() {
            if said.contains(&f.topic) {
                continue;
            }
            said.push(f.topic);
        }
        parts.push(f.plain.as_str());
    }
    parts.join("; ")
}

/// The topic of a sequential stream's finding.
fn topic_of(r: &StreamReport) -> &'static str {
    match r.name.as_str() {
        "errors" => "5xx",
        "4xx" => "4xx",
        _ => "latency",
    }
}

/// Judges one window, calling the slots "the canary" and "the baseline" in its sentences.
/// `evidence` is the sequential judge's memory of earlier windows of this rollout (ignored by
/// the threshold method; pass `None` where no baseline is compared).
pub fn judge(config: &JudgeConfig, stats: WindowStats, evidence: Option<&mut SequentialState>) -> Verdict {
    judge_named(config, stats, evidence, Names::default())
}

/// [`judge`], with the slots called by `names` in the verdict's summary.
pub fn judge_named(
    config: &JudgeConfig,
    stats: WindowStats,
    evidence: Option<&mut SequentialState>,
    names: Names<'_>,
) -> Verdict {
    let canary = stats.canary.clone();
    let baseline = stats
        .baseline
        .clone()
        .filter(|b| b.requests >= config.min_requests);
    let mut checks = Vec::new();
    let mut found = Findings::default();
    let verdict = |outcome, found: &[Finding], checks, conclusive, sequential: Vec<StreamReport>| Verdict {
        outcome,
        reason: join_reasons(found),
        summary: join_plain(found),
        stats: stats.clone(),
        checks,
        conclusive,
        complete_step: false,
        sequential,
        evidence_share: 0.0,
        hold: false,
    };
    let c_name = names.canary;
    if let Some(why) = &stats.unavailable {
        let unmeasured = Finding {
            topic: "",
            reason: format!("no measurements for this window: {why}"),
            plain: format!("could not measure this window ({why})"),
        };
        return verdict(Outcome::Inconclusive, &[unmeasured], checks, false, Vec::new());
    }
    for e in &stats.external {
        match e.outcome {
            Outcome::Fail => found.failures.push(Finding {
                topic: "",
                reason: format!("{}: {}", e.name, e.reason),
                plain: format!("{c_name} fails the custom check {} ({})", e.name, e.reason),
            }),
            Outcome::Inconclusive => found.inconclusive.push(Finding {
                topic: "",
                reason: format!("{}: {}", e.name, e.reason),
                plain: format!(
                    "the custom check {} could not judge {c_name} ({})",
                    e.name, e.reason
                ),
            }),
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
        names,
        &mut checks,
        &mut found,
    );

    let mut reports = Vec::new();
    let mut evidence_share = 0.0f64;
    // The evidence nearest the bar that did not reach it, said plainly: what a held step waits on.
    let mut leading: Option<(f64, String)> = None;
    let mut lead = |share: f64, what: &dyn Fn() -> String| {
        evidence_share = evidence_share.max(share);
        if share > 0.0 && leading.as_ref().is_none_or(|(s, _)| share > *s) {
            leading = Some((share, what()));
        }
    };
    match config.method {
        JudgeMethod::Threshold => {
            if canary.requests >= config.min_requests {
                ratios(config, &canary, baseline.as_ref(), names, &mut checks, &mut found);
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
                    found.notes.push(Finding {
                        topic: "",
                        reason: format!(
                            "4xx not judged: the metric source does not tell codes apart, so ignore_status {ignore:?} cannot be applied"
                        ),
                        plain: format!(
                            "4xx not judged (the metric source does not tell codes apart, so it cannot leave out {})",
                            ignore.iter().map(|c| code_name(*c)).collect::<Vec<_>>().join(", ")
                        ),
                    });
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
                    let (cs, bs) = state
                        .ceiling
                        .as_ref()
                        .map(|s| {
                            (
                                Share::new(s.canary_events, s.canary_requests),
                                Share::new(s.baseline_events, s.baseline_requests),
                            )
                        })
                        .unwrap_or((Share::new(0, 0), Share::new(0, 0)));
                    let outcome = match (c.canary_over, c.baseline_over) {
                        (false, _) => Outcome::Pass,
                        (true, true) => {
                            found.inconclusive.push(Finding {
                                topic: "5xx",
                                reason: format!(
                                    "canary error rate {} is above the ceiling {}, but the baseline's {} is too: baseline unhealthy too",
                                    pct(c.canary_rate),
                                    pct(c.ceiling),
                                    pct(c.baseline_rate)
                                ),
                                plain: both_failing(names, cs, bs, c.ceiling),
                            });
                            Outcome::Inconclusive
                        }
                        (true, false) => {
                            found.conclusive.push(Finding {
                                topic: "5xx",
                                reason: format!(
                                    "canary 5xx rate {} [{} – {}] is above the ceiling {}, e-value {} ≥ {:.0}",
                                    pct(c.canary_rate),
                                    pct(c.canary_rate_ci95.0),
                                    pct(c.canary_rate_ci95.1),
                                    pct(c.ceiling),
                                    e_value(c.e_canary),
                                    c.bar
                                ),
                                plain: over_error_ceiling(names, cs, Some(bs), c.ceiling),
                            });
                            Outcome::Fail
                        }
                    };
                    if !c.baseline_over {
                        lead(share(c.e_canary), &|| {
                            format!(
                                "5xx: {c_name} {} against a {} ceiling",
                                cs.short(),
                                limit_pct(c.ceiling)
                            )
                        });
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
                            let u = users.unwrap_or(0);
                            found.caveats.push(Finding {
                                topic: "",
                                reason: format!(
                                    "4xx evidence e = {:.0} comes from {u} canary user(s), fewer than the {min_users} a regression needs",
                                    r.e_worse,
                                ),
                                plain: format!(
                                    "{}, but only {u} user{} got them (a regression needs {min_users}): one client, not the release",
                                    plain_regression(r, names, config),
                                    if u == 1 { "" } else { "s" }
                                ),
                            });
                            continue;
                        }
                    }
                    if !r.worse {
                        let r = &*r;
                        lead(share(r.e_worse), &|| stream_brief(r, names, config));
                    }
                }
                for r in reports.iter().filter(|r| r.worse) {
                    found.conclusive.push(Finding {
                        topic: topic_of(r),
                        reason: describe_regression(r, config.sequential.alpha),
                        plain: plain_regression(r, names, config),
                    });
                    lead(1.0, &|| String::new());
                }
            }
        }
    }
    if !found.conclusive.is_empty() || !found.failures.is_empty() {
        let conclusive = !found.conclusive.is_empty();
        let mut all = std::mem::take(&mut found.conclusive);
        all.append(&mut found.failures);
        let mut v = verdict(Outcome::Fail, &all, checks, conclusive, reports);
        v.evidence_share = evidence_share;
        return v;
    }
    if !found.inconclusive.is_empty() {
        let mut v = verdict(Outcome::Inconclusive, &found.inconclusive, checks, false, reports);
        v.evidence_share = evidence_share;
        return v;
    }
    if !sequential_on && canary.requests < config.min_requests {
        let too_few = Finding {
            topic: "",
            reason: format!(
                "canary served {} requests in the window, fewer than the {} needed to judge",
                canary.requests, config.min_requests
            ),
            plain: format!(
                "not enough traffic to judge yet ({} of {} requests in this window)",
                canary.requests, config.min_requests
            ),
        };
        return verdict(Outcome::Inconclusive, &[too_few], checks, false, reports);
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
    let notes = found
        .notes
        .iter()
        .chain(&found.caveats)
        .map(|n| format!("; {}", n.reason))
        .collect::<String>();
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
    let plain = if hold {
        let what = leading.map(|(_, what)| format!("{what}; ")).unwrap_or_default();
        format!(
            "evidence against {c_name} is building ({what}{:.0} % of the way to a rollback)",
            evidence_share * 100.0
        )
    } else {
        // Only the threshold method compares a window with the baseline's; otherwise, without
        // the sequential evidence, only the ceilings were checked.
        let compared = baseline
            .as_ref()
            .filter(|_| config.method == JudgeMethod::Threshold);
        plain_pass(
            config,
            &stats,
            compared,
            &reports,
            complete_step,
            evidence_share,
            names,
        )
    };
    let plain = if found.caveats.is_empty() {
        plain
    } else {
        format!("otherwise {plain}")
    };
    let plain = found
        .caveats
        .iter()
        .map(|n| n.plain.clone())
        .chain(std::iter::once(plain))
        .chain(found.notes.iter().map(|n| n.plain.clone()))
        .collect::<Vec<_>>()
        .join("; ");
    let pass = Finding {
        topic: "",
        reason,
        plain,
    };
    let mut v = verdict(Outcome::Pass, &[pass], checks, false, reports);
    v.complete_step = complete_step;
    v.evidence_share = evidence_share;
    v.hold = hold;
    v
}

/// A passing window in plain words: how the canary compares, with the numbers people look at.
fn plain_pass(
    config: &JudgeConfig,
    stats: &WindowStats,
    compared: Option<&SlotWindow>,
    reports: &[StreamReport],
    complete_step: bool,
    evidence_share: f64,
    names: Names<'_>,
) -> String {
    let (c_name, b_name) = (names.canary, names.baseline);
    let canary = &stats.canary;
    let p99 = |c: Option<f64>, b: Option<f64>| match (c, b) {
        (Some(c), Some(b)) => format!(", p99 {} vs {}", millis(c), millis(b)),
        _ => String::new(),
    };
    // The sequential judge: the rollout's evidence so far, with the last window's p99.
    if let Some(errors) = reports.first() {
        let requests = errors.rollout_canary.1;
        if requests < config.min_step_requests {
            return format!(
                "not enough traffic to judge yet ({requests} of {} requests)",
                config.min_step_requests
            );
        }
        let share = |(e, n): (u64, u64)| Share::new(e, n).short();
        let client = reports
            .iter()
            .find(|r| r.name == "4xx")
            .map(|r| {
                format!(
                    ", 4xx {} vs {}",
                    share(r.rollout_canary),
                    share(r.rollout_baseline)
                )
            })
            .unwrap_or_default();
        let numbers = format!(
            "5xx {} vs {}{client}{}, {}",
            share(errors.rollout_canary),
            share(errors.rollout_baseline),
            p99(canary.p99_ms, stats.baseline.as_ref().and_then(|b| b.p99_ms)),
            count_requests(requests)
        );
        // Some evidence of a regression, short of holding the step: "looks as good" beside
        // 3 % against 1 % would read false.
        let some_evidence = evidence_share >= config.sequential.hold_exponent / 2.0;
        return if complete_step {
            format!(
                "{c_name} is shown to be no worse than {b_name} on every measure ({numbers}), so the step can end early"
            )
        } else if some_evidence {
            format!(
                "{c_name} is not clearly worse than {b_name} yet ({numbers}; {:.0} % of the way to a rollback)",
                evidence_share * 100.0
            )
        } else {
            format!("{c_name} looks as good as {b_name} so far ({numbers})")
        };
    }
    let c_err = Share::new(canary.errors, canary.requests);
    if let Some(b) = compared {
        let ignore = &config.ignore_status;
        let client = canary
            .counted_client_errors(ignore)
            .zip(b.counted_client_errors(ignore))
            .filter(|_| config.client_errors)
            .map(|(c, bc)| {
                format!(
                    ", 4xx {} vs {}",
                    Share::new(c, canary.requests).short(),
                    Share::new(bc, b.requests).short()
                )
            })
            .unwrap_or_default();
        return format!(
            "{c_name} looks as good as {b_name} in this window (5xx {} vs {}{client}{}, {})",
            c_err.short(),
            Share::new(b.errors, b.requests).short(),
            p99(canary.p99_ms, b.p99_ms),
            count_requests(canary.requests)
        );
    }
    let p99 = match (canary.p99_ms, config.max_p99_ms) {
        (Some(p), Some(ceiling)) => format!(", p99 {} against a {} ceiling", millis(p), millis(ceiling)),
        (Some(p), None) => format!(", p99 {}", millis(p)),
        (None, _) => String::new(),
    };
    let uncompared = match &stats.baseline {
        Some(b) if b.requests > 0 && b.requests < config.min_requests => format!(
            "; {b_name} served only {} requests, too few to compare with",
            b.requests
        ),
        _ => String::new(),
    };
    format!(
        "{c_name} stays under its ceilings (5xx {} against a {} ceiling{p99}, {}){uncompared}",
        c_err.short(),
        limit_pct(config.max_error_rate),
        count_requests(canary.requests)
    )
}

/// "v2 and v1 are both failing (...)": a ceiling the baseline breaks too is the environment's.
fn both_failing(names: Names<'_>, canary: Share, baseline: Share, ceiling: f64) -> String {
    let (c, b) = (names.canary, names.baseline);
    format!(
        "{c} and {b} are both failing (5xx {} and {}, ceiling {}): {b} is unhealthy too",
        canary.short(),
        baseline.short(),
        limit_pct(ceiling)
    )
}

fn over_error_ceiling(names: Names<'_>, canary: Share, baseline: Option<Share>, ceiling: f64) -> String {
    let (c, b) = (names.canary, names.baseline);
    let against = baseline
        .map(|s| format!(" ({b} {})", s.short()))
        .unwrap_or_default();
    format!(
        "{c} fails {} with a 5xx, above the {} ceiling{against}",
        canary.of_requests(),
        limit_pct(ceiling)
    )
}

/// The codes of a 4xx regression worth naming: those the canary answers more often, most
/// telling first.
fn rising_codes(r: &StreamReport) -> Vec<&sequential::CodeReport> {
    r.codes
        .iter()
        .filter(|c| c.canary_rate > c.baseline_rate && c.e_worse > 1.0)
        .collect()
}

/// The latency stream's quantile ("p99") from its name ("slower than baseline p99").
fn quantile_label(r: &StreamReport) -> &str {
    r.name.strip_prefix("slower than baseline ").unwrap_or(&r.name)
}

/// A stream that shows a regression, in plain words.
fn plain_regression(r: &StreamReport, names: Names<'_>, config: &JudgeConfig) -> String {
    let (c, b) = (names.canary, names.baseline);
    let cs = Share::new(r.rollout_canary.0, r.rollout_canary.1);
    let bs = Share::new(r.rollout_baseline.0, r.rollout_baseline.1);
    match r.name.as_str() {
        "errors" => format!("{c} fails {} with a 5xx, {b} {}", cs.of_requests(), bs.short()),
        "4xx" => {
            let codes = rising_codes(r);
            let code_share = |events, requests, rate| Share::with_rate(events, requests, rate);
            match codes.as_slice() {
                [] => format!("{c} answers {} with a 4xx, {b} {}", cs.of_requests(), bs.short()),
                [one] => format!(
                    "{c} answers {} with {}, {b} {}",
                    code_share(one.canary_events, cs.requests, one.canary_rate).of_requests(),
                    code_name(one.code),
                    code_share(one.baseline_events, bs.requests, one.baseline_rate).short()
                ),
                [one, two, ..] => format!(
                    "{c} answers {} with {} and {} with {}, {b} {} and {}",
                    code_share(one.canary_events, cs.requests, one.canary_rate).of_requests(),
                    code_name(one.code),
                    code_share(two.canary_events, cs.requests, two.canary_rate).short(),
                    code_name(two.code),
                    code_share(one.baseline_events, bs.requests, one.baseline_rate).short(),
                    code_share(two.baseline_events, bs.requests, two.baseline_rate).short()
                ),
            }
        }
        _ => {
            let threshold = r
                .threshold_ms
                .map(|ms| format!("{}, ", millis(ms)))
                .unwrap_or_default();
            format!(
                "{c} is slower: {} take longer than {threshold}{b}'s {} plus {} ({b}: {})",
                cs.of_its_requests(),
                quantile_label(r),
                limit_pct(config.sequential.min_latency_increase_ratio),
                bs.short()
            )
        }
    }
}

/// A stream's comparison in a few words, for evidence that is building.
fn stream_brief(r: &StreamReport, names: Names<'_>, config: &JudgeConfig) -> String {
    let (c, b) = (names.canary, names.baseline);
    let cs = Share::new(r.rollout_canary.0, r.rollout_canary.1);
    let bs = Share::new(r.rollout_baseline.0, r.rollout_baseline.1);
    match r.name.as_str() {
        "errors" => format!("5xx: {c} {}, {b} {}", cs.short(), bs.short()),
        "4xx" => match rising_codes(r).first() {
            Some(code) => format!(
                "{}: {c} {}, {b} {}",
                code_name(code.code),
                Share::with_rate(code.canary_events, cs.requests, code.canary_rate).short(),
                Share::with_rate(code.baseline_events, bs.requests, code.baseline_rate).short()
            ),
            None => format!("4xx: {c} {}, {b} {}", cs.short(), bs.short()),
        },
        _ => format!(
            "requests slower than {b}'s {} plus {}: {c} {}, {b} {}",
            quantile_label(r),
            limit_pct(config.sequential.min_latency_increase_ratio),
            cs.short(),
            bs.short()
        ),
    }
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
    names: Names<'_>,
    checks: &mut Vec<Check>,
    found: &mut Findings,
) {
    if canary.requests == 0 {
        return;
    }
    let (c_name, b_name) = (names.canary, names.baseline);
    if error_ceiling {
        let c_err = canary.error_rate().unwrap_or(0.0);
        let b_err = baseline.and_then(|b| b.error_rate());
        let c_share = Share::new(canary.errors, canary.requests);
        let b_share = baseline.map(|b| Share::new(b.errors, b.requests));
        let over = c_err > config.max_error_rate;
        let baseline_over = b_err.is_some_and(|b| b > config.max_error_rate);
        let outcome = match (over, baseline_over, b_share) {
            (false, _, _) => Outcome::Pass,
            (true, true, Some(b_share)) => {
                found.inconclusive.push(Finding {
                    topic: "5xx",
                    reason: format!(
                        "canary error rate {} is above the ceiling {}, but the baseline's {} is too: baseline unhealthy too",
                        pct(c_err),
                        pct(config.max_error_rate),
                        pct(b_err.unwrap_or(0.0))
                    ),
                    plain: both_failing(names, c_share, b_share, config.max_error_rate),
                });
                Outcome::Inconclusive
            }
            (true, _, _) if canary.requests < config.min_requests => Outcome::Pass,
            (true, _, _) => {
                found.failures.push(Finding {
                    topic: "5xx",
                    reason: format!(
                        "canary error rate {} ({} of {}) is above the ceiling {}",
                        pct(c_err),
                        canary.errors,
                        canary.requests,
                        pct(config.max_error_rate)
                    ),
                    plain: over_error_ceiling(names, c_share, b_share, config.max_error_rate),
                });
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
        let outcome = match (over, b_p99.filter(|b| *b > ceiling)) {
            (false, _) => Outcome::Pass,
            (true, Some(b)) => {
                found.inconclusive.push(Finding {
                    topic: "latency",
                    reason: format!(
                        "canary p99 {c:.1} ms is above the ceiling {ceiling:.1} ms, but the baseline's is too: baseline unhealthy too"
                    ),
                    plain: format!(
                        "{c_name} and {b_name} are both slow (p99 {} and {}, ceiling {}): {b_name} is unhealthy too",
                        millis(c),
                        millis(b),
                        millis(ceiling)
                    ),
                });
                Outcome::Inconclusive
            }
            (true, None) => {
                let against = b_p99
                    .map(|b| format!(" ({b_name} {})", millis(b)))
                    .unwrap_or_default();
                found.failures.push(Finding {
                    topic: "latency",
                    reason: format!("canary p99 {c:.1} ms is above the ceiling {ceiling:.1} ms"),
                    plain: format!(
                        "{c_name} is too slow: its p99 is {}, above the {} ceiling{against}",
                        millis(c),
                        millis(ceiling)
                    ),
                });
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

/// The 4xx code the canary answers most often beyond the baseline in one window, if known.
fn top_rising_code(canary: &SlotWindow, baseline: &SlotWindow, ignore: &[u16]) -> Option<u16> {
    let (c, b) = (canary.codes.as_ref()?, baseline.codes.as_ref()?);
    let rate = |codes: &BTreeMap<u16, u64>, code: u16, n: u64| {
        codes.get(&code).copied().unwrap_or(0) as f64 / n.max(1) as f64
    };
    c.keys()
        .copied()
        .filter(|code| (400..500).contains(code) && !ignore.contains(code))
        .map(|code| {
            let rise = rate(c, code, canary.requests) - rate(b, code, baseline.requests);
            (code, rise)
        })
        .filter(|(_, rise)| *rise > 0.0)
        .max_by(|x, y| x.1.total_cmp(&y.1))
        .map(|(code, _)| code)
}

/// The threshold method's comparisons with the baseline.
fn ratios(
    config: &JudgeConfig,
    canary: &SlotWindow,
    baseline: Option<&SlotWindow>,
    names: Names<'_>,
    checks: &mut Vec<Check>,
    found: &mut Findings,
) {
    let Some(b) = baseline else { return };
    let (c_name, b_name) = (names.canary, names.baseline);
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
            let mostly = top_rising_code(canary, b, ignore)
                .map(|code| format!(" (mostly {})", code_name(code)))
                .unwrap_or_default();
            found.failures.push(Finding {
                topic: "4xx",
                reason: format!(
                    "canary 4xx rate {} is above baseline {} × {} + {} = {}",
                    pct(c_rate),
                    pct(b_rate),
                    config.max_error_ratio,
                    pct(config.error_rate_slack),
                    pct(limit)
                ),
                plain: format!(
                    "{c_name} answers {} with a 4xx{mostly}, {b_name} {} (at most {} allowed)",
                    Share::new(c4, canary.requests).of_requests(),
                    Share::new(b4, b.requests).short(),
                    percent(limit)
                ),
            });
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
            found.failures.push(Finding {
                topic: "5xx",
                reason: format!(
                    "canary error rate {} is above baseline {} × {} + {} = {}",
                    pct(c_err),
                    pct(b_err),
                    config.max_error_ratio,
                    pct(config.error_rate_slack),
                    pct(limit)
                ),
                plain: format!(
                    "{c_name} fails {} with a 5xx, {b_name} {} (at most {} allowed)",
                    Share::new(canary.errors, canary.requests).of_requests(),
                    Share::new(b.errors, b.requests).short(),
                    percent(limit)
                ),
            });
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
            found.failures.push(Finding {
                topic: "latency",
                reason: format!(
                    "canary p99 {c:.1} ms is above baseline {bp:.1} ms × {} + {} ms = {limit:.1} ms",
                    config.max_p99_ratio, config.p99_slack_ms
                ),
                plain: format!(
                    "{c_name} is slower: its p99 is {}, {b_name}'s {} (at most {} allowed)",
                    millis(c),
                    millis(bp),
                    millis(limit)
                ),
            });
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

    // The plain summaries, one per path of `judge`, with the versions by name.

    const V: Names<'static> = Names {
        canary: "v2",
        baseline: "v1",
    };

    /// Feeds `windows` copies of a window to the judge as v2 against v1; the last verdict.
    fn named(config: &JudgeConfig, stats: WindowStats, windows: usize) -> Verdict {
        let mut state = SequentialState::new(&config.sequential);
        let mut last = None;
        for _ in 0..windows {
            last = Some(judge_named(config, stats.clone(), Some(&mut state), V));
        }
        last.unwrap()
    }

    fn slots(canary: SlotWindow, baseline: Option<SlotWindow>) -> WindowStats {
        WindowStats {
            canary,
            baseline,
            duration_ms: 10_000,
            ..WindowStats::default()
        }
    }

    fn slot(requests: u64, errors: u64, p99_ms: f64) -> SlotWindow {
        SlotWindow::new(requests, errors, Some(p99_ms))
    }

    fn says(v: &Verdict, outcome: Outcome, summary: &str) {
        assert_eq!(v.outcome, outcome, "{}", v.reason);
        assert_eq!(v.summary, summary, "statistics: {}", v.reason);
    }

    #[test]
    fn the_threshold_methods_decisions_in_plain_words() {
        let t = JudgeConfig::threshold();
        let cases: [(SlotWindow, Option<SlotWindow>, Outcome, &str); 8] = [
            (
                slot(5, 0, 10.0),
                Some(slot(500, 0, 10.0)),
                Outcome::Inconclusive,
                "not enough traffic to judge yet (5 of 20 requests in this window)",
            ),
            (
                slot(100, 0, 12.0),
                Some(slot(2000, 2, 11.0)),
                Outcome::Pass,
                "v2 looks as good as v1 in this window (5xx 0 % vs 0.10 %, p99 12 ms vs 11 ms, 100 requests)",
            ),
            (
                slot(100, 10, 10.0),
                Some(slot(2000, 2, 10.0)),
                Outcome::Fail,
                // Above the ceiling and above the baseline: two statistics, one sentence.
                "v2 fails 10.0 % of requests with a 5xx, above the 5 % ceiling (v1 0.10 %)",
            ),
            (
                slot(100, 3, 10.0),
                Some(slot(2000, 2, 10.0)),
                Outcome::Fail,
                "v2 fails 3.0 % of requests with a 5xx, v1 0.10 % (at most 1.2 % allowed)",
            ),
            (
                slot(100, 10, 10.0),
                Some(slot(2000, 300, 10.0)),
                Outcome::Inconclusive,
                "v2 and v1 are both failing (5xx 10.0 % and 15.0 %, ceiling 5 %): v1 is unhealthy too",
            ),
            (
                slot(100, 0, 80.0),
                Some(slot(2000, 0, 20.0)),
                Outcome::Fail,
                "v2 is slower: its p99 is 80 ms, v1's 20 ms (at most 55 ms allowed)",
            ),
            (
                slot(100, 0, 80.0),
                None,
                Outcome::Pass,
                "v2 stays under its ceilings (5xx 0 % against a 5 % ceiling, p99 80 ms, 100 requests)",
            ),
            (
                slot(100, 3, 90.0),
                Some(slot(5, 0, 10.0)),
                Outcome::Pass,
                "v2 stays under its ceilings (5xx 3.0 % against a 5 % ceiling, p99 90 ms, 100 requests); v1 served only 5 requests, too few to compare with",
            ),
        ];
        for (canary, baseline, outcome, summary) in cases {
            says(
                &judge_named(&t, slots(canary, baseline), None, V),
                outcome,
                summary,
            );
        }
        // A 4xx rise names its main code.
        let v = judge_named(
            &t,
            slots(
                with_codes(200, 0, &[(401, 80)]),
                Some(with_codes(3800, 0, &[(401, 8)])),
            ),
            None,
            V,
        );
        says(
            &v,
            Outcome::Fail,
            "v2 answers 40.0 % of requests with a 4xx (mostly 401 Unauthorized), v1 0.21 % (at most 1.4 % allowed)",
        );
        // The p99 ceiling, and a baseline above it too.
        let ceiling = JudgeConfig {
            max_p99_ms: Some(500.0),
            ..JudgeConfig::threshold()
        };
        let v = judge_named(
            &ceiling,
            slots(slot(200, 0, 812.0), Some(slot(2000, 0, 120.0))),
            None,
            V,
        );
        says(
            &v,
            Outcome::Fail,
            "v2 is too slow: its p99 is 812 ms, above the 500 ms ceiling (v1 120 ms)",
        );
        let v = judge_named(
            &ceiling,
            slots(slot(200, 0, 812.0), Some(slot(2000, 0, 790.0))),
            None,
            V,
        );
        says(
            &v,
            Outcome::Inconclusive,
            "v2 and v1 are both slow (p99 812 ms and 790 ms, ceiling 500 ms): v1 is unhealthy too",
        );
    }

    #[test]
    fn sequential_failures_in_plain_words_per_stream() {
        let d = JudgeConfig::default();
        let v = named(&d, slots(slot(100, 8, 12.0), Some(slot(1900, 2, 11.0))), 2);
        says(
            &v,
            Outcome::Fail,
            "v2 fails 8.0 % of requests with a 5xx, v1 0.11 %",
        );
        assert!(v.conclusive && v.reason.contains("e-value"), "{}", v.reason);

        let v = named(&d, slots(slot(200, 40, 12.0), Some(slot(1800, 36, 11.0))), 2);
        says(
            &v,
            Outcome::Fail,
            "v2 fails 20.0 % of requests with a 5xx, above the 5 % ceiling (v1 2.0 %)",
        );
        let v = named(&d, slots(slot(200, 40, 12.0), Some(slot(1800, 360, 11.0))), 3);
        says(
            &v,
            Outcome::Inconclusive,
            "v2 and v1 are both failing (5xx 20.0 % and 20.0 %, ceiling 5 %): v1 is unhealthy too",
        );

        let canary = with_codes(200, 0, &[(401, 80), (410, 4)]);
        let baseline = with_codes(3800, 0, &[(401, 8), (410, 76)]);
        let v = named(&d, slots(canary, Some(baseline)), 2);
        says(
            &v,
            Outcome::Fail,
            "v2 answers 40.0 % of requests with 401 Unauthorized, v1 0.21 %",
        );
        let canary = with_codes(200, 0, &[(429, 60), (403, 30)]);
        let baseline = with_codes(3800, 0, &[(429, 8), (403, 4)]);
        let v = named(&d, slots(canary, Some(baseline)), 2);
        says(
            &v,
            Outcome::Fail,
            "v2 answers 30.0 % of requests with 429 Too Many Requests and 15.0 % with 403 Forbidden, v1 0.21 % and 0.11 %",
        );

        // Latency: 31 % of the canary's requests at 40 ms, 1 % of the baseline's at 30 ms, the
        // rest of both at 10 ms.
        let p99 = JudgeConfig {
            sequential: SequentialConfig {
                latency_quantiles: vec![0.99],
                ..SequentialConfig::default()
            },
            ..JudgeConfig::default()
        };
        let histogram = |fast: u64, slow: u64, slow_ms: u64| {
            let mut h = vec![0u64; crate::histogram::LATENCY_BUCKETS];
            h[crate::histogram::bucket_index(10_000)] += fast;
            h[crate::histogram::bucket_index(slow_ms * 1000)] += slow;
            h
        };
        let stats = WindowStats {
            latency: Some(std::sync::Arc::new(LatencyPair {
                canary: histogram(69, 31, 40),
                baseline: histogram(1980, 20, 30),
            })),
            ..slots(slot(100, 0, 40.0), Some(slot(2000, 0, 30.0)))
        };
        let v = named(&p99, stats, 3);
        says(
            &v,
            Outcome::Fail,
            "v2 is slower: 31.0 % of its requests take longer than 13 ms, v1's p99 plus 20 % (v1: 1.0 %)",
        );
    }

    #[test]
    fn passes_and_holds_in_plain_words() {
        let d = JudgeConfig::default();
        let v = named(&d, slots(slot(100, 1, 12.0), Some(slot(1900, 19, 11.0))), 5);
        says(
            &v,
            Outcome::Pass,
            "v2 looks as good as v1 so far (5xx 1.0 % vs 1.0 %, p99 12 ms vs 11 ms, 500 requests)",
        );
        let v = named(&d, slots(slot(12, 0, 12.0), Some(slot(1900, 2, 11.0))), 1);
        says(
            &v,
            Outcome::Pass,
            "not enough traffic to judge yet (12 of 50 requests)",
        );

        // One request, and it failed: counts, never "100.00 %" (nor "100.0 %").
        let v = named(&d, slots(slot(1, 1, 12.0), Some(slot(1900, 2, 11.0))), 1);
        says(
            &v,
            Outcome::Pass,
            "not enough traffic to judge yet (1 of 50 requests)",
        );
        let one = JudgeConfig {
            min_step_requests: 1,
            ..JudgeConfig::default()
        };
        let v = named(&one, slots(slot(1, 1, 12.0), Some(slot(1900, 2, 11.0))), 1);
        says(
            &v,
            Outcome::Pass,
            "v2 is not clearly worse than v1 yet (5xx 1 of 1 vs 0.11 %, p99 12 ms vs 11 ms, 1 request; 37 % of the way to a rollback)",
        );
        assert!(!v.summary.contains("100"), "{}", v.summary);

        // Evidence building: below the hold, "not clearly worse"; at the hold, "building".
        let mut state = SequentialState::new(&d.sequential);
        let mut seen = Vec::new();
        for _ in 0..20 {
            let stats = slots(
                SlotWindow::new(100, 3, None),
                Some(SlotWindow::new(1900, 19, None)),
            );
            let v = judge_named(&d, stats, Some(&mut state), V);
            let held = v.hold;
            seen.push(v.summary);
            if held {
                break;
            }
        }
        assert_eq!(
            seen[2],
            "v2 is not clearly worse than v1 yet (5xx 3.0 % vs 1.0 %, 300 requests; 31 % of the way to a rollback)"
        );
        assert_eq!(
            seen.last().map(String::as_str),
            Some("evidence against v2 is building (5xx: v2 3.0 %, v1 1.0 %; 62 % of the way to a rollback)")
        );

        let early = JudgeConfig {
            sequential: SequentialConfig {
                early_step_completion: true,
                latency_quantiles: vec![],
                ..SequentialConfig::default()
            },
            ..JudgeConfig::default()
        };
        let v = named(
            &early,
            slots(slot(5000, 50, 12.0), Some(slot(5000, 50, 11.0))),
            10,
        );
        assert!(v.complete_step);
        says(
            &v,
            Outcome::Pass,
            "v2 is shown to be no worse than v1 on every measure (5xx 1.0 % vs 1.0 %, p99 12 ms vs 11 ms, 50000 requests), so the step can end early",
        );
    }

    #[test]
    fn a_few_users_4xx_and_unjudged_4xx_in_plain_words() {
        let d = JudgeConfig::default();
        let mut canary = with_codes(200, 0, &[(404, 80)]);
        canary.users = Some(50);
        canary.users_with_client_errors = Some(1);
        let v = named(&d, slots(canary, Some(with_codes(3800, 0, &[(404, 8)]))), 5);
        says(
            &v,
            Outcome::Pass,
            "v2 answers 40.0 % of requests with 404 Not Found, v1 0.21 %, but only 1 user got them (a regression needs 3): one client, not the release; \
             otherwise v2 looks as good as v1 so far (5xx 0 % vs 0 %, 4xx 40.0 % vs 0.21 %, 1000 requests)",
        );
        let ignoring = JudgeConfig {
            ignore_status: vec![404],
            ..JudgeConfig::default()
        };
        let uncoded = |w: SlotWindow| SlotWindow { codes: None, ..w };
        let stats = slots(
            uncoded(with_codes(200, 0, &[(404, 80)])),
            Some(uncoded(with_codes(3800, 0, &[(404, 8)]))),
        );
        says(
            &named(&ignoring, stats, 5),
            Outcome::Pass,
            "v2 looks as good as v1 so far (5xx 0 % vs 0 %, 1000 requests); 4xx not judged (the metric source does not tell codes apart, so it cannot leave out 404 Not Found)",
        );
    }

    #[test]
    fn unmeasured_windows_and_custom_checks_in_plain_words() {
        let d = JudgeConfig::default();
        let base = slots(slot(200, 0, 12.0), Some(slot(2000, 0, 11.0)));
        let v = named(
            &d,
            WindowStats {
                unavailable: Some("Prometheus answered 503".into()),
                ..base.clone()
            },
            1,
        );
        says(
            &v,
            Outcome::Inconclusive,
            "could not measure this window (Prometheus answered 503)",
        );
        let check = |outcome, reason: &str| ExternalCheck {
            name: "availability".into(),
            outcome,
            reason: reason.into(),
        };
        let v = named(
            &d,
            WindowStats {
                external: vec![check(Outcome::Fail, "canary 0.4 is below min 0.5")],
                ..base.clone()
            },
            1,
        );
        says(
            &v,
            Outcome::Fail,
            "v2 fails the custom check availability (canary 0.4 is below min 0.5)",
        );
        let v = named(
            &d,
            WindowStats {
                external: vec![check(Outcome::Inconclusive, "no data for the canary")],
                ..base
            },
            1,
        );
        says(
            &v,
            Outcome::Inconclusive,
            "the custom check availability could not judge v2 (no data for the canary)",
        );
    }

    #[test]
    fn without_names_the_slots_are_the_canary_and_the_baseline() {
        let v = sequential(&JudgeConfig::default(), (100, 8), (1900, 2), 2);
        assert_eq!(
            v.summary,
            "the canary fails 8.0 % of requests with a 5xx, the baseline 0.11 %"
        );
    }

    #[test]
    fn shares_for_people() {
        let cases = [
            (0.0, "0 %"),
            (0.00004, "< 0.01 %"),
            (0.0021, "0.21 %"),
            (0.00996, "1.0 %"),
            (0.046, "4.6 %"),
            (0.4, "40.0 %"),
            (0.99996, "> 99.9 %"),
            (1.0, "100 %"),
        ];
        for (x, text) in cases {
            assert_eq!(percent(x), text, "{x}");
        }
        assert_eq!(Share::new(1, 1).of_requests(), "1 of 1 requests");
        assert_eq!(Share::new(3, 19).short(), "3 of 19");
        assert_eq!(Share::new(4, 20).short(), "20.0 %");
        assert_eq!(limit_pct(0.05), "5 %");
        assert_eq!(limit_pct(0.005), "0.5 %");
        assert_eq!(millis(3.06), "3.1 ms");
        assert_eq!(millis(1250.0), "1.25 s");
        assert_eq!(code_name(429), "429 Too Many Requests");
        assert_eq!(code_name(418), "418");
    }

    #[test]
    fn verdicts_recorded_before_the_summary_still_read() {
        // A verdict as an older cutover stored it: no summary, no rollout counts in its streams.
        let old = serde_json::json!({
            "outcome": "fail",
            "reason": "5xx: canary 8.00 % [4.98 % – 12.60 %] against baseline 0.11 %",
            "stats": { "canary": { "requests": 100, "errors": 8, "p99_ms": null }, "baseline": null, "duration_ms": 5000 },
            "checks": [],
            "conclusive": true,
            "sequential": [{
                "name": "errors", "threshold_ms": null,
                "window_canary": [8, 100], "window_baseline": [2, 1900],
                "canary_rate": 0.08, "canary_rate_ci95": [0.0498, 0.126],
                "baseline_rate": 0.0011, "baseline_rate_ci95": [0.0004, 0.0027],
                "e_worse": 5.2e15, "e_not_worse": 0.1, "bar": 1200.0, "worse": true, "not_worse": false
            }]
        });
        let v: Verdict = serde_json::from_value(old).unwrap();
        assert_eq!((v.outcome, v.summary.as_str()), (Outcome::Fail, ""));
        assert_eq!(v.sequential[0].rollout_canary, (0, 0));
        // And a new one carries both sentences.
        let v = sequential(&JudgeConfig::default(), (100, 8), (1900, 2), 2);
        let json = serde_json::to_value(&v).unwrap();
        assert!(
            json["summary"].as_str().unwrap().starts_with("the canary fails"),
            "{json}"
        );
        assert!(json["reason"].as_str().unwrap().contains("e-value"), "{json}");
    }
}
