//! Guarded ramps: a flag's new variant given to a growing share of users, step by step, each step
//! judged like a canary's by the same judge (requests of users in the new variant against those of
//! users not in it), and the flag killed the moment the judge finds the new code path worse.
//!
//! Like the rollout engine this is a pure state machine: [`Ramp::handle`] takes an input and the
//! time and returns what to do; the server persists the ramp and only then acts, so a ramp
//! survives a crash of the server at any point (see [`Ramp::weight`] for how it is reconciled).
//!
//! Decisions, made here and written down in ARCHITECTURE.md:
//! - The split a ramp writes is `[new variant: w, control variant: 10 000 − w]`, new variant
//!   first: a user's bucket is below `w` or not, so raising `w` only adds users to the new
//!   variant (monotone, as flagd's `fractional` buckets are ordered). The control variant is the
//!   flag's default variant unless named.
//! - A failed verdict kills the flag (every user gets the default variant), it does not merely
//!   stop the ramp: a worse code path must stop hurting users at once.
//! - Inconclusive evidence pauses for a person, never ramps on blind, as rollouts do.
//! - `abort` stops the ramp where it is and leaves the split as it stands; killing is
//!   `cutover flag kill`. A flag killed or changed by a person during a ramp ends the ramp
//!   (aborted, with the reason): the person's change wins over the machine's plan.

use cutover_core::judge::{judge_named, JudgeConfig, JudgeMethod, Names, Outcome, Verdict, WindowStats};
use cutover_core::sequential::SequentialState;
use cutover_core::{FieldError, Timestamp};
use serde::{Deserialize, Serialize};

/// The whole range of a split, in basis points.
pub const FULL: u16 = 10_000;

/// Decisions kept per ramp (the oldest go first): a long ramp must not grow without bound.
pub const MAX_DECISIONS: usize = 500;

/// Decisions that keep their verdict's numbers (the latest); older ones keep their sentence. A
/// ramp is saved at every window, so its size is written again and again.
pub const DETAILED_DECISIONS: usize = 20;

/// How a ramp proceeds, as asked for by `cutover flag ramp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RampPlan {
    /// Share of users in the new variant at each step, in basis points, increasing.
    pub steps_bp: Vec<u16>,
    /// How long each step is observed before the next.
    pub step_ms: u64,
    /// Length of one analysis window.
    pub interval_ms: u64,
    /// How long a step may run past `step_ms` while evidence builds or flagged requests are too
    /// few to pass it; then the ramp pauses for a person.
    pub max_extension_ms: u64,
    /// Inconclusive windows in a row tolerated in one step; one more pauses.
    pub inconclusive_limit: u32,
    /// The variant being ramped up.
    pub variant: String,
    /// The variant everyone else gets (by default the flag's default variant).
    pub control: String,
    pub judge: JudgeConfig,
}

impl RampPlan {
    /// Every problem of the plan for `flag`, with the CLI's names for the fields.
    pub fn problems(&self, flag: &crate::Flag) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.steps_bp.is_empty() {
            errors.push(FieldError::new(
                "steps",
                "give at least one step, e.g. --steps 1,5,25,50,100",
            ));
        }
        if self.steps_bp.iter().any(|s| *s == 0 || *s > FULL) {
            errors.push(FieldError::new(
                "steps",
                "every step is a percentage above 0 and at most 100",
            ));
        }
        if self.steps_bp.windows(2).any(|w| w[0] >= w[1]) {
            errors.push(FieldError::new(
                "steps",
                "steps must increase: a ramp only ever adds users to the new variant",
            ));
        }
        const MAX_MS: u64 = 30 * 86_400_000;
        if self.step_ms < 1000 || self.step_ms > MAX_MS {
            errors.push(FieldError::new("window", "must be from 1s to 30 days"));
        }
        if self.max_extension_ms > MAX_MS {
            errors.push(FieldError::new("max_extension", "must be at most 30 days"));
        }
        if self.interval_ms < 100 || self.interval_ms > self.step_ms.max(100) {
            errors.push(FieldError::new(
                "interval",
                "must be at least 100ms and at most the step's window",
            ));
        }
        let known = || flag.variants.keys().cloned().collect::<Vec<_>>().join(", ");
        if !flag.variants.contains_key(&self.variant) {
            errors.push(FieldError::new(
                "variant",
                format!(
                    "{:?} is not a variant of flag {}; its variants: {}",
                    self.variant,
                    flag.key,
                    known()
                ),
            ));
        }
        if !flag.variants.contains_key(&self.control) {
            errors.push(FieldError::new(
                "control",
                format!(
                    "{:?} is not a variant of flag {}; its variants: {}",
                    self.control,
                    flag.key,
                    known()
                ),
            ));
        }
        if self.variant == flag.default_variant {
            errors.push(FieldError::new(
                "variant",
                format!(
                    "{:?} is the flag's default variant, which a kill gives to everyone; ramp up another variant",
                    self.variant
                ),
            ));
        } else if self.variant == self.control {
            errors.push(FieldError::new(
                "variant",
                format!(
                    "{:?} is also the control variant (the flag's default); name the new variant to ramp up",
                    self.variant
                ),
            ));
        }
        if !flag.enabled {
            errors.push(FieldError::new(
                "flag",
                format!("flag {} is killed; `cutover flag unkill` it first (at 0 %, a ramp starts from its first step)", flag.key),
            ));
        }
        errors.extend(self.judge.validate("judge."));
        errors
    }

    /// The split of step `step` (0-based): the new variant first, so raising the weight only adds
    /// users to it.
    pub fn split(&self, weight_bp: u16) -> Vec<crate::SplitEntry> {
        vec![
            crate::SplitEntry {
                variant: self.variant.clone(),
                weight: u32::from(weight_bp),
            },
            crate::SplitEntry {
                variant: self.control.clone(),
                weight: u32::from(FULL - weight_bp.min(FULL)),
            },
        ]
    }
}

/// Where a ramp is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum RampPhase {
    /// Step `step` is being observed.
    Running {
        step: usize,
        window_started_at: Timestamp,
        /// Time of this step observed in windows so far.
        observed_ms: u64,
        inconclusive_in_row: u32,
        /// Flagged requests seen in this step.
        step_requests: u64,
    },
    /// Waiting for a person: `resume` continues step `step`, `abort` ends the ramp.
    Paused { step: usize, reason: String },
    /// The last step passed.
    Completed { at: Timestamp },
    /// The judge found the new variant worse: the flag was killed.
    Killed { at: Timestamp, reason: String },
    /// Ended by a person, or by a change of the flag from outside the ramp.
    Aborted { at: Timestamp, reason: String },
}

impl RampPhase {
    pub fn name(&self) -> &'static str {
        match self {
            RampPhase::Running { .. } => "running",
            RampPhase::Paused { .. } => "paused",
            RampPhase::Completed { .. } => "completed",
            RampPhase::Killed { .. } => "killed",
            RampPhase::Aborted { .. } => "aborted",
        }
    }

    pub fn is_over(&self) -> bool {
        matches!(
            self,
            RampPhase::Completed { .. } | RampPhase::Killed { .. } | RampPhase::Aborted { .. }
        )
    }
}

/// One decision of the ramp, with its numbers and a sentence for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RampDecision {
    pub at: Timestamp,
    /// The step (0-based) the decision was made in.
    pub step: usize,
    /// `pass`, `fail`, `inconclusive` for verdicts; `step`, `paused`, `resumed`, `completed`,
    /// `killed`, `aborted` for what the ramp did.
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

/// A guarded ramp of one flag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ramp {
    /// The flag's key; one ramp per flag at a time.
    pub flag: String,
    /// Counts the ramps of this flag, from 1.
    pub id: u64,
    pub plan: RampPlan,
    pub phase: RampPhase,
    pub started_at: Timestamp,
    pub started_by: String,
    pub reason: String,
    /// The sequential judge's memory over the whole ramp (sequential method).
    #[serde(default)]
    pub evidence: Option<SequentialState>,
    /// Failed windows so far (threshold method: one more than `judge.failure_limit`... see
    /// [`Ramp::handle`]).
    #[serde(default)]
    pub failures: u32,
    /// Flagged requests and failed flagged requests (5xx, and the 4xx the judge counts) over the
    /// ramp: how many were hurt.
    #[serde(default)]
    pub flagged_requests: u64,
    #[serde(default)]
    pub flagged_failures: u64,
    /// Distinct flagged users (an estimate from the source), at the last window.
    #[serde(default)]
    pub flagged_users: Option<u64>,
    #[serde(default)]
    pub decisions: Vec<RampDecision>,
    /// Set by the server while the ramp's last decision is saved but not yet carried out.
    #[serde(default)]
    pub unapplied: bool,
}

/// What a ramp is told.
// Windows are the common input and are made once per interval; boxing them would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum RampInput {
    /// One analysis window: the new variant's requests as the canary, the others' as baseline.
    Window(WindowStats),
    Resume,
    Abort {
        reason: String,
    },
    /// The flag was changed from outside the ramp (killed, its split rewritten, archived).
    FlagChanged {
        reason: String,
    },
}

/// What the server must do for a ramp, after persisting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RampAction {
    /// Write the split of this weight to the flag.
    SetWeight(u16),
    /// Kill the flag, with this reason in its audit record.
    Kill(String),
    /// Tell the webhooks: `event` (`flag_ramp_step`, `flag_ramp_paused`, `flag_ramp_completed`,
    /// `flag_killed`, `flag_ramp_aborted`) with a message.
    Notify { event: &'static str, message: String },
}

/// A ramp input in a phase that does not take it: the reason, for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RampRejected(pub String);

fn pct(bp: u16) -> String {
    let p = f64::from(bp) / 100.0;
    if bp.is_multiple_of(100) {
        format!("{p:.0} %")
    } else {
        format!("{p} %")
    }
}

/// The judge speaks of canary and baseline; in a ramp they are the users in the new variant and
/// everyone else.
fn in_ramp_words(reason: &str) -> String {
    reason
        .replace("canary", "flagged")
        .replace("baseline", "unflagged")
        .replace("over the rollout", "over the ramp")
        .replace("false-rollback", "false-kill")
        .replace("way to a rollback", "way to a kill")
}

impl Ramp {
    /// A new ramp, at its first step; the caller persists it, then writes the first weight.
    pub fn start(
        flag: &str,
        id: u64,
        plan: RampPlan,
        now: Timestamp,
        who: &str,
        reason: &str,
    ) -> (Ramp, Vec<RampAction>) {
        let evidence = (plan.judge.method == JudgeMethod::Sequential)
            .then(|| SequentialState::new(&plan.judge.sequential));
        let first = plan.steps_bp.first().copied().unwrap_or(FULL);
        let mut ramp = Ramp {
            flag: flag.to_string(),
            id,
            phase: RampPhase::Running {
                step: 0,
                window_started_at: now,
                observed_ms: 0,
                inconclusive_in_row: 0,
                step_requests: 0,
            },
            started_at: now,
            started_by: who.to_string(),
            reason: reason.to_string(),
            evidence,
            failures: 0,
            flagged_requests: 0,
            flagged_failures: 0,
            flagged_users: None,
            decisions: Vec::new(),
            unapplied: false,
            plan,
        };
        let message = format!(
            "ramp of flag {} to variant {:?} started: steps {}, each observed {} s; step 1: {} of users",
            ramp.flag,
            ramp.plan.variant,
            ramp.plan
                .steps_bp
                .iter()
                .map(|s| pct(*s))
                .collect::<Vec<_>>()
                .join(", "),
            ramp.plan.step_ms / 1000,
            pct(first)
        );
        ramp.decide(now, 0, "step", message.clone(), None);
        let actions = vec![
            RampAction::SetWeight(first),
            RampAction::Notify {
                event: "flag_ramp_step",
                message,
            },
        ];
        (ramp, actions)
    }

    /// The weight the flag's split must have now: that of the current step while running or
    /// paused, the last step's once completed. `None` once killed or aborted (the split is then
    /// whatever it was left at). After a restart the server writes this weight again, so a crash
    /// between persisting a step and writing its split loses nothing.
    pub fn weight(&self) -> Option<u16> {
        match &self.phase {
            RampPhase::Running { step, .. } | RampPhase::Paused { step, .. } => {
                self.plan.steps_bp.get(*step).copied()
            }
            RampPhase::Completed { .. } => self.plan.steps_bp.last().copied(),
            RampPhase::Killed { .. } | RampPhase::Aborted { .. } => None,
        }
    }

    /// The current step, 0-based.
    pub fn step(&self) -> Option<usize> {
        match &self.phase {
            RampPhase::Running { step, .. } | RampPhase::Paused { step, .. } => Some(*step),
            _ => None,
        }
    }

    /// Whether an analysis window is due at `now`.
    pub fn window_due(&self, now: Timestamp) -> bool {
        match &self.phase {
            RampPhase::Running {
                window_started_at, ..
            } => now.millis_since(*window_started_at) >= self.plan.interval_ms,
            _ => false,
        }
    }

    /// When the current window started (for the metric source's first reading).
    pub fn window_started_at(&self) -> Option<Timestamp> {
        match &self.phase {
            RampPhase::Running {
                window_started_at, ..
            } => Some(*window_started_at),
            _ => None,
        }
    }

    fn decide(&mut self, at: Timestamp, step: usize, kind: &str, message: String, verdict: Option<Verdict>) {
        if self.decisions.len() >= MAX_DECISIONS {
            self.decisions.remove(0);
        }
        self.decisions.push(RampDecision {
            at,
            step,
            kind: kind.to_string(),
            message,
            verdict,
        });
        let detailed = self.decisions.len().saturating_sub(DETAILED_DECISIONS);
        if let Some(old) = detailed.checked_sub(1).and_then(|i| self.decisions.get_mut(i)) {
            old.verdict = None;
        }
    }

    /// Takes `input` at `now`; returns what to do, or why the input does not apply now (the ramp
    /// is then unchanged).
    pub fn handle(&mut self, input: RampInput, now: Timestamp) -> Result<Vec<RampAction>, RampRejected> {
        let phase = self.phase.clone();
        match (input, phase) {
            (
                RampInput::Window(stats),
                RampPhase::Running {
                    step,
                    window_started_at,
                    observed_ms,
                    inconclusive_in_row,
                    step_requests,
                },
            ) => Ok(self.on_window(
                stats,
                now,
                step,
                window_started_at,
                observed_ms,
                inconclusive_in_row,
                step_requests,
            )),
            (RampInput::Window(_), _) => Ok(Vec::new()),
            (RampInput::Resume, RampPhase::Paused { step, .. }) => {
                self.phase = RampPhase::Running {
                    step,
                    window_started_at: now,
                    observed_ms: 0,
                    inconclusive_in_row: 0,
                    step_requests: 0,
                };
                // A person looked and chose to go on: what paused the ramp (an outage that hit
                // both sides, say) must not pause it again. The evidence starts over; the error
                // bound holds for the new test as for the first.
                self.evidence = (self.plan.judge.method == JudgeMethod::Sequential)
                    .then(|| SequentialState::new(&self.plan.judge.sequential));
                self.failures = 0;
                let message = format!(
                    "ramp of flag {} resumed at step {}; the judge's evidence starts over",
                    self.flag,
                    step + 1
                );
                self.decide(now, step, "resumed", message, None);
                Ok(Vec::new())
            }
            (RampInput::Resume, phase) => Err(RampRejected(format!(
                "the ramp of flag {} is {}, not paused: nothing to resume",
                self.flag,
                phase.name()
            ))),
            (RampInput::Abort { reason } | RampInput::FlagChanged { reason }, phase) if !phase.is_over() => {
                let step = self.step().unwrap_or(0);
                let message = format!(
                    "ramp of flag {} aborted at step {} ({} of users in {:?}, left as it is): {reason}",
                    self.flag,
                    step + 1,
                    self.weight().map_or("-".to_string(), pct),
                    self.plan.variant
                );
                self.phase = RampPhase::Aborted { at: now, reason };
                self.decide(now, step, "aborted", message.clone(), None);
                Ok(vec![RampAction::Notify {
                    event: "flag_ramp_aborted",
                    message,
                }])
            }
            (RampInput::Abort { .. }, phase) => Err(RampRejected(format!(
                "the ramp of flag {} is already over ({})",
                self.flag,
                phase.name()
            ))),
            (RampInput::FlagChanged { .. }, _) => Ok(Vec::new()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_window(
        &mut self,
        stats: WindowStats,
        now: Timestamp,
        step: usize,
        window_started_at: Timestamp,
        observed_ms: u64,
        inconclusive_in_row: u32,
        step_requests: u64,
    ) -> Vec<RampAction> {
        let window_requests = stats.canary.requests;
        if stats.unavailable.is_none() {
            self.flagged_requests += stats.canary.requests;
            // What users saw fail: 5xx and the 4xx the judge counts.
            self.flagged_failures += stats.canary.errors
                + stats
                    .canary
                    .counted_client_errors(&self.plan.judge.ignore_status)
                    .unwrap_or(0);
            if stats.canary.users.is_some() {
                self.flagged_users = stats.canary.users;
            }
        }
        let mut evidence = self.evidence.take();
        // Plain words first, naming the variant: "variant \"on\" fails 4.6 % of requests with a
        // 5xx, everyone else 0.10 %"; the statistics stay in the verdict's reason.
        let variant = format!("variant {:?}", self.plan.variant);
        let names = Names {
            canary: &variant,
            baseline: "everyone else",
        };
        let mut verdict = judge_named(&self.plan.judge, stats, evidence.as_mut(), names);
        self.evidence = evidence;
        verdict.reason = in_ramp_words(&verdict.reason);
        // A ramp ends in a kill, not a rollback: the plain sentence says so too.
        verdict.summary = verdict.summary.replace("way to a rollback", "way to a kill");
        let summary = verdict.summary.clone();
        let weight = self.plan.steps_bp.get(step).copied().unwrap_or(FULL);
        let kind = match verdict.outcome {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Inconclusive => "inconclusive",
        };
        if verdict.outcome == Outcome::Fail {
            self.failures += 1;
        }
        self.decide(
            now,
            step,
            kind,
            format!("step {} ({}): {summary}", step + 1, pct(weight)),
            // The latency histograms are not serialised: the decision keeps counts and sentence.
            Some(verdict.clone()),
        );
        let step_requests = step_requests + window_requests;
        let running = |observed_ms, inconclusive_in_row| RampPhase::Running {
            step,
            window_started_at: now,
            observed_ms,
            inconclusive_in_row,
            step_requests,
        };
        match verdict.outcome {
            Outcome::Fail => {
                let sequential = self.plan.judge.method == JudgeMethod::Sequential;
                // The threshold method tolerates one failed window, as rollouts do by default.
                if verdict.conclusive || !sequential && self.failures > 1 {
                    let reason = format!(
                        "guarded ramp of flag {}: variant {:?} is worse for the flagged users at {} of users: {summary}",
                        self.flag,
                        self.plan.variant,
                        pct(weight),
                    );
                    self.phase = RampPhase::Killed {
                        at: now,
                        reason: reason.clone(),
                    };
                    let message = format!(
                        "flag {} killed automatically after {:.1} s of ramp, {} flagged requests ({} failed): {summary}",
                        self.flag,
                        now.millis_since(self.started_at) as f64 / 1000.0,
                        self.flagged_requests,
                        self.flagged_failures,
                    );
                    self.decide(now, step, "killed", message.clone(), None);
                    return vec![
                        RampAction::Kill(reason),
                        RampAction::Notify {
                            event: "flag_killed",
                            message,
                        },
                    ];
                }
                self.phase = running(observed_ms, 0);
                Vec::new()
            }
            Outcome::Inconclusive => {
                let in_row = inconclusive_in_row + 1;
                if in_row > self.plan.inconclusive_limit {
                    return self.pause(
                        now,
                        step,
                        format!(
                            "{in_row} windows in a row without a verdict, the last: {summary}; never ramping blind: resume or abort",
                        ),
                    );
                }
                self.phase = running(observed_ms, in_row);
                Vec::new()
            }
            Outcome::Pass => {
                let observed = observed_ms + now.millis_since(window_started_at);
                let min = if self.plan.judge.method == JudgeMethod::Sequential {
                    self.plan.judge.min_step_requests
                } else {
                    0
                };
                let enough = step_requests >= min;
                if observed >= self.plan.step_ms && enough && !verdict.hold {
                    return self.next_step(now, step, step_requests);
                }
                if observed >= self.plan.step_ms.saturating_add(self.plan.max_extension_ms) {
                    let why = if verdict.hold {
                        format!(
                            "evidence that variant {:?} is worse has held step {} for {} s beyond its {} s ({:.0} % of the way to a kill)",
                            self.plan.variant,
                            step + 1,
                            (observed - self.plan.step_ms) / 1000,
                            self.plan.step_ms / 1000,
                            verdict.evidence_share * 100.0
                        )
                    } else {
                        format!(
                            "step {} saw {step_requests} flagged requests in {} s, fewer than the {min} needed to judge it",
                            step + 1,
                            observed / 1000
                        )
                    };
                    return self.pause(now, step, format!("{why}; never ramping blind: resume or abort"));
                }
                self.phase = running(observed, 0);
                Vec::new()
            }
        }
    }

    fn pause(&mut self, now: Timestamp, step: usize, reason: String) -> Vec<RampAction> {
        self.phase = RampPhase::Paused {
            step,
            reason: reason.clone(),
        };
        let message = format!("ramp of flag {} paused at step {}: {reason}", self.flag, step + 1);
        self.decide(now, step, "paused", message.clone(), None);
        vec![RampAction::Notify {
            event: "flag_ramp_paused",
            message,
        }]
    }

    fn next_step(&mut self, now: Timestamp, step: usize, step_requests: u64) -> Vec<RampAction> {
        let passed = self.plan.steps_bp.get(step).copied().unwrap_or(FULL);
        let next = step + 1;
        match self.plan.steps_bp.get(next).copied() {
            Some(weight) => {
                self.phase = RampPhase::Running {
                    step: next,
                    window_started_at: now,
                    observed_ms: 0,
                    inconclusive_in_row: 0,
                    step_requests: 0,
                };
                let message = format!(
                    "flag {}: step {} ({}) passed on {step_requests} flagged requests; step {}: {} of users",
                    self.flag,
                    step + 1,
                    pct(passed),
                    next + 1,
                    pct(weight)
                );
                self.decide(now, next, "step", message.clone(), None);
                vec![
                    RampAction::SetWeight(weight),
                    RampAction::Notify {
                        event: "flag_ramp_step",
                        message,
                    },
                ]
            }
            None => {
                self.phase = RampPhase::Completed { at: now };
                let message = format!(
                    "ramp of flag {} completed: variant {:?} serves {} of users ({} flagged requests judged, {} failed)",
                    self.flag,
                    self.plan.variant,
                    pct(passed),
                    self.flagged_requests,
                    self.flagged_failures
                );
                self.decide(now, step, "completed", message.clone(), None);
                vec![RampAction::Notify {
                    event: "flag_ramp_completed",
                    message,
                }]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cutover_core::judge::SlotWindow;

    fn flag() -> crate::Flag {
        toml::from_str(
            r#"
key = "new_session_validator"
type = "boolean"
variants = { on = true, off = false }
default_variant = "off"
owner = "team-auth"
description = "The new session validator"
expires = "2027-03-31"
"#,
        )
        .unwrap()
    }

    fn plan() -> RampPlan {
        RampPlan {
            steps_bp: vec![100, 2500, 10_000],
            step_ms: 60_000,
            interval_ms: 10_000,
            max_extension_ms: 60_000,
            inconclusive_limit: 3,
            variant: "on".into(),
            control: "off".into(),
            judge: JudgeConfig::default(),
        }
    }

    fn window(flagged: (u64, u64), unflagged: (u64, u64)) -> RampInput {
        RampInput::Window(WindowStats {
            canary: SlotWindow::new(flagged.0, flagged.1, None),
            baseline: Some(SlotWindow::new(unflagged.0, unflagged.1, None)),
            duration_ms: 10_000,
            ..WindowStats::default()
        })
    }

    fn t(s: u64) -> Timestamp {
        Timestamp::from_millis(s * 1000)
    }

    #[test]
    fn a_plan_with_every_problem_reports_them_all() {
        let mut p = plan();
        p.steps_bp = vec![500, 100, 0];
        p.variant = "maybe".into();
        p.step_ms = 10;
        let fields: Vec<String> = p.problems(&flag()).iter().map(|e| e.field.clone()).collect();
        for wanted in ["steps", "window", "variant"] {
            assert!(fields.iter().any(|f| f == wanted), "{wanted}: {fields:?}");
        }
        assert_eq!(plan().problems(&flag()), vec![]);
    }

    #[test]
    fn a_good_variant_is_ramped_to_the_last_step() {
        let (mut ramp, actions) = Ramp::start("f", 1, plan(), t(0), "admin", "try it");
        assert_eq!(actions[0], RampAction::SetWeight(100));
        let mut weights = vec![100];
        let mut now = 0;
        while !ramp.phase.is_over() {
            now += 10;
            for a in ramp.handle(window((100, 0), (1000, 1)), t(now)).unwrap() {
                if let RampAction::SetWeight(w) = a {
                    weights.push(w);
                }
            }
            assert!(now < 1000, "{:?}", ramp.phase);
        }
        assert_eq!(weights, vec![100, 2500, 10_000]);
        assert!(matches!(ramp.phase, RampPhase::Completed { .. }));
        assert_eq!(ramp.weight(), Some(10_000));
    }

    #[test]
    fn a_variant_that_fails_five_percent_of_its_requests_is_killed() {
        let (mut ramp, _) = Ramp::start("f", 1, plan(), t(0), "admin", "try it");
        let mut now = 0;
        loop {
            now += 10;
            let actions = ramp.handle(window((200, 10), (5000, 2)), t(now)).unwrap();
            if let Some(RampAction::Kill(reason)) = actions.first() {
                assert!(reason.contains("flagged"), "{reason}");
                break;
            }
            assert!(now < 600, "not killed: {:?}", ramp.decisions.last());
        }
        assert!(matches!(ramp.phase, RampPhase::Killed { .. }));
        assert_eq!(ramp.weight(), None);
        assert!(ramp.flagged_failures > 0);
        // In plain words, naming the variant, and in a ramp's terms: a kill, never a rollback.
        for d in &ramp.decisions {
            assert!(!d.message.contains("rollback"), "{}", d.message);
        }
        let killed = ramp.decisions.iter().find(|d| d.kind == "fail").unwrap();
        assert!(
            killed.message.contains("variant \"on\" fails"),
            "{}",
            killed.message
        );
    }

    #[test]
    fn building_evidence_is_told_in_a_ramps_terms() {
        let (mut ramp, _) = Ramp::start("f", 1, plan(), t(0), "admin", "try it");
        let mut building = None;
        for i in 1..=60 {
            if ramp.handle(window((100, 2), (5000, 10)), t(i * 10)).is_err() {
                break;
            }
            building = ramp
                .decisions
                .iter()
                .find(|d| d.message.contains("of the way to a"))
                .map(|d| d.message.clone());
            if building.is_some() {
                break;
            }
        }
        let message = building.expect("a decision with evidence building");
        assert!(message.contains("of the way to a kill"), "{message}");
    }

    #[test]
    fn no_flagged_traffic_pauses_for_a_person_and_resume_continues() {
        let (mut ramp, _) = Ramp::start("f", 1, plan(), t(0), "admin", "try it");
        let mut now = 0;
        while !matches!(ramp.phase, RampPhase::Paused { .. }) {
            now += 10;
            ramp.handle(window((0, 0), (1000, 0)), t(now)).unwrap();
            assert!(now < 600, "{:?}", ramp.phase);
        }
        let RampPhase::Paused { reason, .. } = &ramp.phase else {
            unreachable!()
        };
        assert!(reason.contains("flagged requests"), "{reason}");
        assert_eq!(ramp.weight(), Some(100));
        ramp.handle(RampInput::Resume, t(now)).unwrap();
        assert_eq!(ramp.step(), Some(0));
        assert_eq!(
            ramp.evidence,
            Some(SequentialState::new(&ramp.plan.judge.sequential))
        );
        assert!(ramp.handle(RampInput::Resume, t(now)).is_err());
    }

    #[test]
    fn unavailable_metrics_pause_after_the_limit() {
        let (mut ramp, _) = Ramp::start("f", 1, plan(), t(0), "admin", "try it");
        for i in 1..=4 {
            let stats = WindowStats {
                unavailable: Some("no proxy forwards the flag".into()),
                ..WindowStats::default()
            };
            ramp.handle(RampInput::Window(stats), t(i * 10)).unwrap();
        }
        assert!(matches!(ramp.phase, RampPhase::Paused { .. }), "{:?}", ramp.phase);
    }

    #[test]
    fn a_person_s_change_ends_the_ramp_and_leaves_the_split() {
        let (mut ramp, _) = Ramp::start("f", 1, plan(), t(0), "admin", "try it");
        let actions = ramp
            .handle(
                RampInput::FlagChanged {
                    reason: "killed by admin".into(),
                },
                t(5),
            )
            .unwrap();
        assert!(matches!(
            actions[0],
            RampAction::Notify {
                event: "flag_ramp_aborted",
                ..
            }
        ));
        assert_eq!(ramp.weight(), None);
        assert!(ramp
            .handle(RampInput::Abort { reason: "x".into() }, t(6))
            .is_err());
    }

    #[test]
    fn the_split_puts_the_new_variant_first() {
        let s = plan().split(2500);
        assert_eq!((s[0].variant.as_str(), s[0].weight), ("on", 2500));
        assert_eq!((s[1].variant.as_str(), s[1].weight), ("off", 7500));
    }
}
