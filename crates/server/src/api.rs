//! The admin API's answers as types. The server writes them; the CLI, the demo and tests read
//! them back with the same types, and the dashboard reads their JSON. Each derives both
//! `Serialize` and `Deserialize`, so a change of shape breaks the build of every reader, not a
//! user's script. The JSON is documented in `docs/api.md`; events in `docs/events.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use cutover_core::event::EventDetail;
use cutover_core::judge::Outcome;
use cutover_core::rollout::{self, Phase};
use cutover_core::{Redacted, Slot, Timestamp};
use cutover_router::SlotSummary;
use cutover_store::StoredEvent;
use serde::{Deserialize, Serialize};

/// `GET /v1/apps/{app}/status`: one app now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusView {
    pub app: String,
    pub live: Slot,
    /// Weight of each slot in basis points, by slot name (`blue`, `green`).
    pub weights: BTreeMap<String, u16>,
    /// Environment values redacted: the names show, the values never do.
    pub rollout: Option<Redacted<rollout::Rollout>>,
    pub slots: Vec<SlotView>,
    /// The last ten `decision` events of the current rollout, oldest first.
    pub recent_decisions: Vec<StoredEvent>,
    pub now: Timestamp,
    /// In a fleet: the leader, the stored table's generation and every proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::FleetStatus>,
}

impl StatusView {
    /// The current (or last) rollout.
    pub fn rollout(&self) -> Option<&rollout::Rollout> {
        self.rollout.as_ref().map(Redacted::get)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotView {
    pub slot: Slot,
    pub version: Option<String>,
    pub backends: Vec<SocketAddr>,
    /// Counts since the slot's release started, as the router sees them; `None` when the router
    /// could not be read.
    pub metrics: Option<SlotSummary>,
}

/// `GET /v1/status`: every app at a glance, for the dashboard's first page and `cutover apps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Overview {
    /// The server's version (`cutover --version`).
    pub version: String,
    /// When this server process started: a reader that sees it change knows the server restarted.
    pub started_at: Timestamp,
    pub apps: Vec<AppSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppSummary {
    pub app: String,
    /// `false`: routed by a route table only (no platform, so no rollouts).
    pub managed: bool,
    pub live: Slot,
    pub live_version: Option<String>,
    /// Basis points by slot name.
    pub weights: BTreeMap<String, u16>,
    /// The current or last rollout; `None` before the first.
    pub rollout: Option<RolloutSummary>,
    pub last_decision: Option<DecisionSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutSummary {
    pub id: u64,
    pub version: String,
    pub previous_version: Option<String>,
    pub target: Slot,
    /// The phase's name (`canary`, `rolled_back`, ...).
    pub phase: String,
    /// 0-based step, in the phases that have one.
    pub step: Option<usize>,
    pub steps: usize,
    pub started_at: Timestamp,
    /// The reason of a rollout that ended other than by success, or of a pause.
    pub reason: Option<String>,
}

impl RolloutSummary {
    pub fn of(r: &rollout::Rollout) -> RolloutSummary {
        let (step, reason) = match &r.phase {
            Phase::Canary { step, .. } | Phase::Gating { step } => (Some(*step), None),
            Phase::Paused { step, reason, .. } => (Some(*step), Some(reason.clone())),
            Phase::AwaitingConfirmation { hold_step } => (*hold_step, None),
            Phase::RolledBack { reason, .. }
            | Phase::Aborted { reason, .. }
            | Phase::Failed { reason, .. } => (None, Some(reason.clone())),
            _ => (None, None),
        };
        RolloutSummary {
            id: r.id,
            version: r.release.version.clone(),
            previous_version: r.previous_version.clone(),
            target: r.target,
            phase: r.phase.name().to_string(),
            step,
            steps: r.policy.steps.len(),
            started_at: r.started_at,
            reason,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionSummary {
    pub at: Timestamp,
    pub outcome: Outcome,
    /// The plain sentence.
    pub summary: String,
    /// The window passed, but the step is held: evidence of a regression is building.
    #[serde(default)]
    pub hold: bool,
    /// The window had enough evidence to decide on its own.
    #[serde(default)]
    pub conclusive: bool,
}

impl AppSummary {
    /// The summary of a managed app, from its status.
    pub fn of_status(status: &StatusView) -> AppSummary {
        AppSummary {
            app: status.app.clone(),
            managed: true,
            live: status.live,
            live_version: status
                .slots
                .iter()
                .find(|s| s.slot == status.live)
                .and_then(|s| s.version.clone()),
            weights: status.weights.clone(),
            rollout: status.rollout().map(RolloutSummary::of),
            last_decision: status
                .recent_decisions
                .last()
                .and_then(|e| match &e.event.detail {
                    EventDetail::Decision { verdict, .. } => Some(DecisionSummary {
                        at: e.event.at,
                        outcome: verdict.outcome,
                        summary: verdict.summary.clone(),
                        hold: verdict.hold,
                        conclusive: verdict.conclusive,
                    }),
                    _ => None,
                }),
        }
    }
}

/// `GET /v1/apps/{app}/series`: per-slot traffic over the last minutes, one point per interval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    pub app: String,
    pub interval_ms: u64,
    /// Oldest first.
    pub points: Vec<SeriesPoint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    /// The end of the interval.
    pub at: Timestamp,
    pub slots: Vec<SlotSample>,
}

/// One slot's traffic in one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SlotSample {
    pub slot: Slot,
    pub version: Option<String>,
    pub weight_bp: u16,
    pub requests: u64,
    /// Requests per second over the interval.
    pub rps: f64,
    pub errors_5xx: u64,
    /// `None` when the router does not tell 4xx apart.
    pub errors_4xx: Option<u64>,
    /// Fractions of `requests` (0 without requests).
    pub error_rate_5xx: f64,
    pub error_rate_4xx: Option<f64>,
    /// `None` without requests, or when the router does not measure latency.
    pub p99_ms: Option<f64>,
}

/// The `sample` event of `GET /v1/stream`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub app: String,
    pub point: SeriesPoint,
}

/// The `hello` event of `GET /v1/stream`, first on every connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub version: String,
    pub started_at: Timestamp,
}

/// Every error answer of the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What was wrong and what to do.
    pub error: String,
    /// Field by field, where the request had several problems.
    #[serde(default)]
    pub errors: Vec<cutover_core::FieldError>,
}
