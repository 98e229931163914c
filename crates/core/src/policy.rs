//! How a rollout proceeds: its steps, how often it is judged, and how much failure it tolerates.

use serde::{Deserialize, Serialize};

use crate::judge::JudgeConfig;
use crate::validate::FieldError;

/// One step of a rollout: a share of users on the new slot, observed for `duration_ms`. With
/// `pause`, the rollout then waits for a person (`resume` or `promote`) before the next step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub weight_bp: u16,
    #[serde(default)]
    pub duration_ms: u64,
    #[serde(default)]
    pub pause: bool,
}

impl Step {
    pub fn new(weight_bp: u16, duration_ms: u64) -> Self {
        Step {
            weight_bp,
            duration_ms,
            pause: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolloutPolicy {
    /// Steps in order. The first step with weight 10 000 is the promotion; steps after it are
    /// ignored. Without such a step the rollout is promoted after the last one.
    pub steps: Vec<Step>,
    /// Length of one analysis window.
    pub analysis_interval_ms: u64,
    /// Failed windows tolerated in one rollout; one more rolls back.
    pub failure_limit: u32,
    /// Inconclusive windows in a row tolerated in one step; one more pauses for a person.
    pub inconclusive_limit: u32,
    /// How long a step may run past its duration while evidence of a regression builds or its
    /// canary requests are too few to pass it (sequential judge); then it pauses for a person.
    pub max_step_extension_ms: u64,
    /// After promotion the old slot stays warm this long, with analysis, for an instant rollback.
    pub rollback_window_ms: u64,
    /// Time allowed for a new release to become ready.
    pub readiness_deadline_ms: u64,
    pub judge: JudgeConfig,
    /// Ask the step gates (alerts, vetoing webhooks) before every step; the server sets this when
    /// any are configured.
    pub gate_steps: bool,
    /// Wait for the confirm-promotion webhooks before promoting; set by the server likewise.
    pub confirm_promotion: bool,
    /// How long the confirm-promotion gate waits before a person must decide.
    pub confirm_timeout_ms: u64,
}

impl Default for RolloutPolicy {
    fn default() -> Self {
        RolloutPolicy {
            steps: vec![
                Step::new(500, 60_000),
                Step::new(2_500, 60_000),
                Step::new(5_000, 60_000),
                Step::new(10_000, 0),
            ],
            analysis_interval_ms: 10_000,
            failure_limit: 1,
            inconclusive_limit: 3,
            max_step_extension_ms: 300_000,
            rollback_window_ms: 600_000,
            readiness_deadline_ms: 60_000,
            judge: JudgeConfig::default(),
            gate_steps: false,
            confirm_promotion: false,
            confirm_timeout_ms: 600_000,
        }
    }
}

impl RolloutPolicy {
    /// Plain blue-green: everything at once, then post-promotion analysis in the rollback window.
    pub fn blue_green() -> Self {
        RolloutPolicy {
            steps: vec![Step::new(10_000, 0)],
            ..RolloutPolicy::default()
        }
    }

    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if self.steps.is_empty() {
            errors.push(FieldError::new(
                format!("{prefix}steps"),
                "needs at least one step",
            ));
        }
        let mut previous = 0;
        for (i, step) in self.steps.iter().enumerate() {
            if step.weight_bp > 10_000 {
                errors.push(FieldError::new(
                    format!("{prefix}steps[{i}].weight_bp"),
                    format!("{} is above 10000 (100 %)", step.weight_bp),
                ));
            }
            if step.weight_bp < previous {
                errors.push(FieldError::new(
                    format!("{prefix}steps[{i}].weight_bp"),
                    format!(
                        "{} is below the previous step's {previous}: weights only grow, so users never flip back",
                        step.weight_bp
                    ),
                ));
            }
            previous = step.weight_bp;
            if step.weight_bp < 10_000 && step.duration_ms == 0 && !step.pause {
                errors.push(FieldError::new(
                    format!("{prefix}steps[{i}].duration_ms"),
                    "a canary step needs an observation window (duration_ms > 0) or pause = true",
                ));
            }
        }
        for (field, value) in [
            ("analysis_interval_ms", self.analysis_interval_ms),
            ("readiness_deadline_ms", self.readiness_deadline_ms),
        ] {
            if value == 0 {
                errors.push(FieldError::new(
                    format!("{prefix}{field}"),
                    "must be greater than 0",
                ));
            }
        }
        errors.extend(self.judge.validate(&format!("{prefix}judge.")));
        errors
    }
}
