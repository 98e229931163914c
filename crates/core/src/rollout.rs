//! The rollout state machine.
//!
//! [`AppState`] is everything cutover knows about one app: which slot is live, what each slot runs,
//! and the current (or last) rollout. [`handle`] is a pure function from a state, an input and the
//! current time to the next state, the actions to carry out, and the events to record. The
//! controller persists the new state and events *before* it carries out the actions, so after a
//! crash it knows what may have half-happened; [`Input::Recovered`] tells the machine what the
//! controller found when it came back.
//!
//! The route table is never an input or a free-standing piece of state: [`route_table`] derives it
//! from the app state, and every transition that changes traffic emits [`Action::ApplyRoutes`] with
//! the derived table. Start-up, steps, rollback and recovery all route through that one function.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::judge::{judge_named, JudgeMethod, Names, Outcome, Verdict, WindowStats};
use crate::policy::RolloutPolicy;
use crate::release::ReleaseSpec;
use crate::route::{Pool, RouteTable};
use crate::sequential::SequentialState;
use crate::slot::Slot;
use crate::time::Timestamp;

/// What one slot holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotState {
    pub release: Option<ReleaseSpec>,
    /// Addresses of the running instances; empty when stopped.
    pub backends: Vec<SocketAddr>,
    /// The rollout that put `release` here. A contract migration may run only once the live
    /// slot's release came with or after the rollout that applied its expand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_by: Option<u64>,
}

impl SlotState {
    pub fn version(&self) -> Option<&str> {
        self.release.as_ref().map(|r| r.version.as_str())
    }

    pub fn is_running(&self) -> bool {
        !self.backends.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppState {
    pub app: String,
    pub live: Slot,
    pub blue: SlotState,
    pub green: SlotState,
    pub rollout: Option<Rollout>,
    /// Id the next rollout gets.
    pub next_rollout_id: u64,
}

impl AppState {
    pub fn new(app: impl Into<String>) -> Self {
        AppState {
            app: app.into(),
            live: Slot::Blue,
            blue: SlotState::default(),
            green: SlotState::default(),
            rollout: None,
            next_rollout_id: 1,
        }
    }

    pub fn slot(&self, slot: Slot) -> &SlotState {
        match slot {
            Slot::Blue => &self.blue,
            Slot::Green => &self.green,
        }
    }

    pub fn slot_mut(&mut self, slot: Slot) -> &mut SlotState {
        match slot {
            Slot::Blue => &mut self.blue,
            Slot::Green => &mut self.green,
        }
    }

    /// The rollout still in progress, if any.
    pub fn active_rollout(&self) -> Option<&Rollout> {
        self.rollout.as_ref().filter(|r| !r.phase.is_terminal())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: u64,
    /// The slot the new release goes into.
    pub target: Slot,
    pub release: ReleaseSpec,
    pub policy: RolloutPolicy,
    pub phase: Phase,
    pub started_at: Timestamp,
    /// Version live when the rollout started.
    pub previous_version: Option<String>,
    /// Deploy-freeze overridden with `--force`.
    pub forced: bool,
    /// Failed analysis windows so far.
    pub failures: u32,
    /// Start of the first window judged as failed, for "time from first bad window to rollback".
    pub first_bad_window_at: Option<Timestamp>,
    /// The last verdict, for status displays.
    pub last_verdict: Option<Verdict>,
    /// The sequential judge's evidence so far (sequential method only).
    #[serde(default)]
    pub sequential: Option<SequentialState>,
    /// What users saw of the new release before the decision.
    #[serde(default)]
    pub exposure: Exposure,
}

/// What the new release's canary did to users, for status, history, webhooks and the demo.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Exposure {
    /// Start of the first analysis window in which the canary served a request (within one
    /// analysis interval of its first request).
    pub first_canary_request_at: Option<Timestamp>,
    /// Requests the canary served during the canary steps.
    pub canary_requests: u64,
    /// Of those, the ones the canary answered 5xx, and 4xx that count (see `ignore_status`):
    /// the judge's view. Users saw fewer of them where the proxy had the live slot answer a safe
    /// request the canary failed (`retry_canary_failures`).
    pub canary_server_errors: u64,
    pub canary_client_errors: u64,
    /// Distinct users the canary served (an estimate; where the source counts users).
    pub users_exposed: Option<u64>,
    /// When the rollout was decided: promoted, rolled back, aborted or failed.
    pub decided_at: Option<Timestamp>,
}

impl Exposure {
    /// Time from the canary's first request to the decision, the time users were exposed.
    pub fn first_canary_request_to_decision_ms(&self) -> Option<u64> {
        Some(self.decided_at?.millis_since(self.first_canary_request_at?))
    }

    /// Canary requests that failed (5xx, and 4xx that count).
    pub fn canary_failed_requests(&self) -> u64 {
        self.canary_server_errors + self.canary_client_errors
    }

    fn add_window(&mut self, stats: &WindowStats, window_started_at: Timestamp, ignore: &[u16]) {
        let c = &stats.canary;
        if c.requests > 0 && self.first_canary_request_at.is_none() {
            self.first_canary_request_at = Some(window_started_at);
        }
        self.canary_requests += c.requests;
        self.canary_server_errors += c.errors;
        self.canary_client_errors += c.counted_client_errors(ignore).unwrap_or(0);
        if let Some(users) = c.users {
            self.users_exposed = Some(self.users_exposed.unwrap_or(0).max(users));
        }
    }

    /// The exposure as event data.
    fn data(&self) -> ExposureData {
        ExposureData {
            first_canary_request_to_decision_ms: self.first_canary_request_to_decision_ms(),
            canary_requests: self.canary_requests,
            canary_failed_requests: self.canary_failed_requests(),
            users_exposed: self.users_exposed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Running the expand migrations the new release needs, before it starts. Nothing of the
    /// new release runs or serves yet; a failure fails the rollout.
    Migrating,
    /// Starting the release in the target slot and waiting for readiness.
    Provisioning {
        deadline: Timestamp,
    },
    /// Smoke checks and pre-warm against the target slot, before any user traffic.
    Verifying,
    /// Step `step` of the policy: its weight on the target slot, judged window by window.
    Canary {
        step: usize,
        window_started_at: Timestamp,
        /// Time spent in passing windows of this step.
        observed_ms: u64,
        inconclusive_in_row: u32,
        /// Canary requests judged in this step.
        #[serde(default)]
        step_requests: u64,
    },
    /// Asking the step gates (alerts, webhooks) before step `step` takes its weight; the traffic
    /// stays as the previous step left it.
    Gating {
        step: usize,
    },
    /// All steps passed; waiting for the confirm-promotion gate. Traffic stays at the weight of
    /// step `hold_step` (none: a blue-green rollout, nothing on the new slot yet).
    AwaitingConfirmation {
        hold_step: Option<usize>,
    },
    /// Waiting for a person at step `step`. `step_done` says whether the step's observation was
    /// complete (a manual pause step) so that `resume` moves on to the next one.
    Paused {
        step: usize,
        step_done: bool,
        reason: String,
    },
    /// All traffic on the target; the old slot warm until `until`, judged on absolute ceilings.
    Promoted {
        since: Timestamp,
        until: Timestamp,
        window_started_at: Timestamp,
    },
    Succeeded {
        at: Timestamp,
    },
    RolledBack {
        at: Timestamp,
        reason: String,
    },
    Aborted {
        at: Timestamp,
        reason: String,
    },
    Failed {
        at: Timestamp,
        reason: String,
    },
}

impl Phase {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Phase::Succeeded { .. } | Phase::RolledBack { .. } | Phase::Aborted { .. } | Phase::Failed { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Phase::Migrating => "migrating",
            Phase::Provisioning { .. } => "provisioning",
            Phase::Verifying => "verifying",
            Phase::Canary { .. } => "canary",
            Phase::Gating { .. } => "gating",
            Phase::AwaitingConfirmation { .. } => "awaiting_confirmation",
            Phase::Paused { .. } => "paused",
            Phase::Promoted { .. } => "promoted",
            Phase::Succeeded { .. } => "succeeded",
            Phase::RolledBack { .. } => "rolled_back",
            Phase::Aborted { .. } => "aborted",
            Phase::Failed { .. } => "failed",
        }
    }
}

/// A person's command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Promote,
    Pause,
    Resume,
    Abort,
    Rollback,
}

// One input per transition, moved once: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Input {
    /// Start a rollout of `release` into the idle slot.
    Deploy {
        release: ReleaseSpec,
        policy: RolloutPolicy,
        forced: bool,
        /// The app has expand migrations: run them before the release is provisioned.
        #[serde(default)]
        migrate: bool,
    },
    /// Time passed.
    Tick,
    /// The expand migrations ran (or there were none to run); `detail` says which.
    Migrated {
        detail: String,
    },
    /// An expand migration failed or was refused (linter, checksum, lock); nothing of the new
    /// release runs.
    MigrationFailed {
        reason: String,
    },
    /// Every instance of the target slot is running and ready at these addresses.
    Provisioned {
        backends: Vec<SocketAddr>,
    },
    ProvisionFailed {
        reason: String,
    },
    VerifyPassed {
        detail: String,
    },
    VerifyFailed {
        reason: String,
    },
    /// The measurements of the window that just ended.
    Window(WindowStats),
    Command(Command),
    /// The step gates allowed step `step`.
    GatesPassed {
        step: usize,
    },
    GatesFailed {
        step: usize,
        reason: String,
    },
    PromotionConfirmed {
        detail: String,
    },
    PromotionRejected {
        reason: String,
    },
    /// Nobody confirmed in time: a person decides.
    ConfirmationTimedOut {
        reason: String,
    },
    /// The target slot stopped running (its instances died).
    TargetDown {
        reason: String,
    },
    /// The controller restarted and probed the slots.
    Recovered {
        target_ready: bool,
        live_ready: bool,
        /// No instance of the target slot runs at all (a host crash took them), as opposed to
        /// instances that run but are not ready. A promoted release found gone is started again
        /// rather than rolled back: a crash is no verdict on it.
        #[serde(default)]
        target_gone: bool,
    },
    /// The live slot's instances were found gone (a host crash took them with cutover) and its
    /// recorded release was started again: these instances are ready.
    Restarted {
        slot: Slot,
        version: String,
        backends: Vec<SocketAddr>,
    },
    /// Starting the live slot's recorded release again failed; the controller retries.
    RestartFailed {
        slot: Slot,
        version: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Run the pending expand migrations of `release` and report [`Input::Migrated`] or
    /// [`Input::MigrationFailed`]. Safe to repeat: what was applied is not applied again.
    Migrate { release: ReleaseSpec },
    /// Start `release` in `slot` and report [`Input::Provisioned`] or [`Input::ProvisionFailed`].
    Provision {
        slot: Slot,
        release: ReleaseSpec,
        deadline: Timestamp,
    },
    /// Smoke checks and pre-warm against `slot`; report [`Input::VerifyPassed`] or `VerifyFailed`.
    Verify { slot: Slot },
    /// Make the router serve this table.
    ApplyRoutes(RouteTable),
    /// Ask the step gates before step `step` (weight `weight_bp`); report `GatesPassed` or
    /// `GatesFailed`.
    CheckGates { step: usize, weight_bp: u16 },
    /// Ask the confirm-promotion gate; report `PromotionConfirmed`, `PromotionRejected` or
    /// `ConfirmationTimedOut`.
    ConfirmPromotion,
    /// Stop the instances of `slot` (after its drain timeout when `drain`).
    Stop { slot: Slot, drain: bool },
}

use crate::event::{BackData, Deployed, ExposureData, JudgePause, PromotedData};
pub use crate::event::{Event, EventDetail};

#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub state: AppState,
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    /// Rollouts this transition finished and replaced in `state` (a deploy inside the rollback
    /// window closes the promoted rollout as succeeded): their history must be written too.
    pub ended: Vec<Rollout>,
}

/// Grace after the readiness deadline before the engine fails a provisioning nobody reported on.
pub const PROVISION_BACKSTOP_MS: u64 = 3_000;

/// An input that does not apply in the current state; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

/// The route table the app's state calls for.
pub fn route_table(state: &AppState) -> RouteTable {
    let pool = |s: &SlotState| Pool {
        version: s.version().unwrap_or_default().to_string(),
        backends: s.backends.clone(),
    };
    let canary_weight_bp = match state.active_rollout().map(|r| (&r.phase, &r.policy)) {
        Some((Phase::Canary { step, .. } | Phase::Paused { step, .. }, policy)) => {
            policy.steps.get(*step).map(|s| s.weight_bp).unwrap_or(0)
        }
        Some((Phase::Gating { step }, policy)) => step
            .checked_sub(1)
            .and_then(|s| policy.steps.get(s))
            .map(|s| s.weight_bp)
            .unwrap_or(0),
        Some((Phase::AwaitingConfirmation { hold_step: Some(s) }, policy)) => {
            policy.steps.get(*s).map(|s| s.weight_bp).unwrap_or(0)
        }
        _ => 0,
    };
    RouteTable {
        live: state.live,
        canary_weight_bp,
        blue: pool(&state.blue),
        green: pool(&state.green),
    }
}

/// Does the current phase want an analysis window judged now?
pub fn window_due(state: &AppState, now: Timestamp) -> bool {
    match state.active_rollout() {
        Some(r) => match &r.phase {
            Phase::Canary {
                window_started_at, ..
            }
            | Phase::Promoted {
                window_started_at, ..
            } => now.millis_since(*window_started_at) >= r.policy.analysis_interval_ms,
            _ => false,
        },
        None => false,
    }
}

struct Builder {
    state: AppState,
    actions: Vec<Action>,
    events: Vec<Event>,
    ended: Vec<Rollout>,
    now: Timestamp,
}

impl Builder {
    fn event(&mut self, message: impl Into<String>, detail: EventDetail) {
        let rollout_id = self.state.rollout.as_ref().map(|r| r.id);
        self.events.push(Event {
            at: self.now,
            rollout_id,
            message: message.into(),
            detail,
        });
    }

    fn apply_routes(&mut self) {
        let table = route_table(&self.state);
        self.actions.push(Action::ApplyRoutes(table));
    }

    fn rollout(&mut self) -> &mut Rollout {
        // Only called on paths that checked an active rollout exists.
        #[allow(clippy::expect_used)]
        self.state
            .rollout
            .as_mut()
            .expect("invariant: an active rollout exists on this path")
    }

    /// A transition applies at most one table, the one its final state calls for, at the point
    /// of its first route change (before any stop, so a slot drains before it is stopped).
    fn finish(mut self) -> Transition {
        let table = route_table(&self.state);
        let mut applied = false;
        self.actions.retain_mut(|a| match a {
            Action::ApplyRoutes(t) => {
                *t = table.clone();
                !std::mem::replace(&mut applied, true)
            }
            _ => true,
        });
        Transition {
            state: self.state,
            actions: self.actions,
            events: self.events,
            ended: self.ended,
        }
    }

    /// Ends the rollout with all traffic back on the old slot and the target stopped.
    fn back_to_old(&mut self, phase: Phase, message: String) {
        let now = self.now;
        let r = self.rollout();
        let target = r.target;
        let first_bad = r.first_bad_window_at;
        r.exposure.decided_at.get_or_insert(now);
        let data = BackData {
            exposure: r.exposure.data(),
            detection_to_rollback_ms: first_bad.map(|t| now.millis_since(t)),
        };
        let aborted = matches!(phase, Phase::Aborted { .. });
        r.phase = phase;
        self.state.live = target.other();
        self.state.slot_mut(target).backends.clear();
        self.apply_routes();
        self.actions.push(Action::Stop {
            slot: target,
            drain: true,
        });
        let detail = if aborted {
            EventDetail::Aborted(data)
        } else {
            EventDetail::RolledBack(data)
        };
        self.event(message, detail);
    }

    /// Ends the rollout as rolled back for `reason`, logging `message`.
    fn roll_back(&mut self, reason: String, message: String) {
        let now = self.now;
        self.back_to_old(Phase::RolledBack { at: now, reason }, message);
    }

    fn fail(&mut self, reason: String) {
        let now = self.now;
        let r = self.rollout();
        let target = r.target;
        r.phase = Phase::Failed {
            at: now,
            reason: reason.clone(),
        };
        r.exposure.decided_at.get_or_insert(now);
        self.state.slot_mut(target).backends.clear();
        self.state.slot_mut(target).release = None;
        self.apply_routes();
        self.actions.push(Action::Stop {
            slot: target,
            drain: false,
        });
        self.event(
            format!("rollout failed before any user traffic: {reason}"),
            EventDetail::Failed,
        );
    }

    /// Moves to step `index`, or to promotion when it is a 100 % step or past the last step.
    fn enter_step(&mut self, index: usize) {
        let r = self.rollout();
        let step = r.policy.steps.get(index).cloned();
        match step {
            Some(step) if step.weight_bp < 10_000 && r.policy.gate_steps => {
                r.phase = Phase::Gating { step: index };
                self.actions.push(Action::CheckGates {
                    step: index,
                    weight_bp: step.weight_bp,
                });
                self.event(
                    format!(
                        "asking the step gates before step {} ({:.2} %)",
                        index + 1,
                        f64::from(step.weight_bp) / 100.0
                    ),
                    EventDetail::Gating {
                        step: index,
                        weight_bp: step.weight_bp,
                    },
                );
            }
            Some(_) => self.start_step(index),
            None => self.before_promotion(index.checked_sub(1)),
        }
    }

    /// All steps passed: promote, or first wait for the confirmation gate.
    fn before_promotion(&mut self, hold_step: Option<usize>) {
        if self.rollout().policy.confirm_promotion {
            self.rollout().phase = Phase::AwaitingConfirmation { hold_step };
            self.actions.push(Action::ConfirmPromotion);
            self.event(
                "all steps passed; waiting for the promotion to be confirmed",
                EventDetail::AwaitingConfirmation,
            );
        } else {
            self.promote("all steps passed".into());
        }
    }

    fn start_step(&mut self, index: usize) {
        let now = self.now;
        let r = self.rollout();
        let step = r.policy.steps.get(index).cloned();
        match step {
            Some(step) if step.weight_bp < 10_000 => {
                r.phase = Phase::Canary {
                    step: index,
                    window_started_at: now,
                    observed_ms: 0,
                    inconclusive_in_row: 0,
                    step_requests: 0,
                };
                let total = r.policy.steps.len();
                self.apply_routes();
                self.event(
                    format!(
                        "step {} of {total}: {:.2} % of users on the new version for {} s",
                        index + 1,
                        f64::from(step.weight_bp) / 100.0,
                        step.duration_ms / 1000
                    ),
                    EventDetail::Step {
                        step: index,
                        weight_bp: step.weight_bp,
                        duration_ms: step.duration_ms,
                    },
                );
                if step.duration_ms == 0 {
                    self.step_done(index);
                }
            }
            _ => self.before_promotion(index.checked_sub(1)),
        }
    }

    fn step_done(&mut self, index: usize) {
        let pause = self.rollout().policy.steps.get(index).is_some_and(|s| s.pause);
        if pause {
            self.rollout().phase = Phase::Paused {
                step: index,
                step_done: true,
                reason: format!("step {} is a manual pause: resume or promote to go on", index + 1),
            };
            self.event(
                format!("waiting for a person after step {}", index + 1),
                EventDetail::Paused(None),
            );
        } else {
            self.enter_step(index + 1);
        }
    }

    fn promote(&mut self, why: String) {
        let now = self.now;
        let r = self.rollout();
        let target = r.target;
        let until = now.plus_ms(r.policy.rollback_window_ms);
        let window_s = r.policy.rollback_window_ms / 1000;
        r.phase = Phase::Promoted {
            since: now,
            until,
            window_started_at: now,
        };
        r.exposure.decided_at.get_or_insert(now);
        let data = PromotedData {
            exposure: r.exposure.data(),
            until,
        };
        self.state.live = target;
        self.apply_routes();
        let old = target.other();
        let warm = if self.state.slot(old).is_running() {
            format!("the old slot stays warm for {window_s} s for an instant rollback")
        } else {
            // The window still watches the release on absolute ceilings, but cannot undo it.
            format!("there is no old version to keep warm, so no rollback: it is watched for {window_s} s, and replaced by deploying another version")
        };
        self.event(
            format!("promoted ({why}): all traffic on {target}; {warm}"),
            EventDetail::Promoted(data),
        );
    }

    /// Ends the promoted rollout: the new release stays, the old slot is retired.
    fn succeed(&mut self) {
        self.settle(None);
    }

    /// [`Builder::succeed`], for `cause` when it is not the window's end (the only way a
    /// promoted rollout with nothing to go back to ends early).
    fn settle(&mut self, cause: Option<String>) {
        let now = self.now;
        let message = match self
            .state
            .active_rollout()
            .and_then(|r| nothing_to_go_back_to(&self.state, r))
        {
            Some(why) => match cause {
                Some(cause) => format!(
                    "{cause}; {why}: there is nothing to roll back to, so it stays live (supervised like any live slot) and the window ends"
                ),
                None => format!("the window is over: {why}, so there was no old slot to retire"),
            },
            None => format!(
                "rollback window over: the old slot {} is retired",
                self.rollout().target.other()
            ),
        };
        let r = self.rollout();
        let old = r.target.other();
        r.phase = Phase::Succeeded { at: now };
        let old_slot = self.state.slot_mut(old);
        old_slot.backends.clear();
        old_slot.release = None;
        self.apply_routes();
        self.actions.push(Action::Stop {
            slot: old,
            drain: true,
        });
        self.event(message, EventDetail::Succeeded);
    }
}

/// The next state for `input` at `now`. An input that makes no sense in the current state is
/// [`Rejected`] with a message saying why and what to do instead.
pub fn handle(state: &AppState, input: Input, now: Timestamp) -> Result<Transition, Rejected> {
    let mut b = Builder {
        state: state.clone(),
        actions: Vec::new(),
        events: Vec::new(),
        ended: Vec::new(),
        now,
    };
    let active = state.active_rollout().cloned();
    match (input, active) {
        (
            Input::Deploy {
                release,
                policy,
                forced,
                migrate,
            },
            None,
        ) => start_rollout(&mut b, release, policy, forced, migrate),
        (
            Input::Deploy {
                release,
                policy,
                forced,
                migrate,
            },
            Some(r),
        ) if matches!(r.phase, Phase::Promoted { .. }) => {
            // The next release needs the slot the old one keeps warm: the rollback window ends.
            b.event(
                format!(
                    "rollback window of rollout #{} closed early by the next deploy",
                    r.id
                ),
                EventDetail::WindowClosed,
            );
            b.succeed();
            start_rollout(&mut b, release, policy, forced, migrate);
        }
        (Input::Deploy { .. }, Some(r)) => {
            return Err(Rejected(format!(
                "rollout #{} of app {} ({} → {}) is still in phase {}; wait for it, or abort it first",
                r.id,
                state.app,
                r.previous_version.as_deref().unwrap_or("nothing"),
                r.release.version,
                r.phase.name()
            )));
        }
        (
            Input::Restarted {
                slot,
                version,
                backends,
            },
            active,
        ) => {
            restarted(&mut b, slot, &version, backends, active.as_ref())?;
        }
        (
            Input::RestartFailed {
                slot,
                version,
                reason,
            },
            active,
        ) => {
            b.events.push(Event {
                at: now,
                rollout_id: active.as_ref().map(|r| r.id),
                message: format!(
                    "starting {version} again in slot {slot}, whose instances were gone, failed: {reason}; retrying"
                ),
                detail: EventDetail::RestartFailed { slot, version },
            });
        }
        (Input::Recovered { .. } | Input::Tick, None) => {
            // Nothing in progress: make sure the router serves what the state says.
            b.apply_routes();
        }
        (_, None) => return Err(Rejected(format!("app {} has no rollout in progress", state.app))),
        (input, Some(r)) => on_active(&mut b, input, r)?,
    }
    Ok(b.finish())
}

/// Routes the instances that replaced a live slot found dead. Only the slot's own recorded
/// version qualifies, and never the target of a rollout (the rollout provisions that one).
fn restarted(
    b: &mut Builder,
    slot: Slot,
    version: &str,
    backends: Vec<SocketAddr>,
    active: Option<&Rollout>,
) -> Result<(), Rejected> {
    // A promoted target is the live slot: it may be restarted like any live slot.
    let provisioned_by_rollout =
        active.is_some_and(|r| r.target == slot && !matches!(r.phase, Phase::Promoted { .. }));
    if b.state.live != slot
        || b.state.slot(slot).version() != Some(version)
        || provisioned_by_rollout
        || backends.is_empty()
    {
        return Err(Rejected(format!(
            "slot {slot} of app {} no longer holds {version} as a live release; the restarted instances are not needed",
            b.state.app
        )));
    }
    let count = backends.len();
    b.state.slot_mut(slot).backends = backends;
    b.apply_routes();
    b.events.push(Event {
        at: b.now,
        rollout_id: active.map(|r| r.id),
        message: format!(
            "started {version} again in slot {slot}: its instances were gone when cutover came back \
             (a host crash?); {count} instance(s) ready and serving"
        ),
        detail: EventDetail::Restarted {
            slot,
            version: version.to_string(),
            instances: count,
        },
    });
    Ok(())
}

fn start_rollout(b: &mut Builder, release: ReleaseSpec, policy: RolloutPolicy, forced: bool, migrate: bool) {
    let now = b.now;
    let id = b.state.next_rollout_id;
    b.state.next_rollout_id += 1;
    let target = b.state.live.other();
    let previous_version = b.state.slot(b.state.live).version().map(str::to_string);
    let deadline = now.plus_ms(policy.readiness_deadline_ms);
    let had_old = b.state.slot(target).is_running();
    if let Some(previous) = b.state.rollout.take() {
        b.ended.push(previous);
    }
    let policy_method = policy.judge.method;
    let sequential_config = policy.judge.sequential.clone();
    b.state.rollout = Some(Rollout {
        id,
        target,
        release: release.clone(),
        policy,
        phase: if migrate {
            Phase::Migrating
        } else {
            Phase::Provisioning { deadline }
        },
        started_at: now,
        previous_version: previous_version.clone(),
        forced,
        failures: 0,
        first_bad_window_at: None,
        last_verdict: None,
        sequential: (policy_method == JudgeMethod::Sequential)
            .then(|| SequentialState::new(&sequential_config)),
        exposure: Exposure::default(),
    });
    *b.state.slot_mut(target) = SlotState {
        release: Some(release.clone()),
        backends: Vec::new(),
        deployed_by: Some(id),
    };
    // The target pool now names the new version (with no backends yet): the router learns it
    // at once, so its counters for the new release start from zero and it never serves a table
    // the state has moved past.
    b.apply_routes();
    if had_old {
        // Whatever still ran in the idle slot has had no traffic; it makes room now.
        b.actions.push(Action::Stop {
            slot: target,
            drain: false,
        });
    }
    if migrate {
        // The expand half runs before anything of the new release starts: the release may
        // need the new schema from its first request.
        b.actions.push(Action::Migrate {
            release: release.clone(),
        });
    } else {
        b.actions.push(Action::Provision {
            slot: target,
            release: release.clone(),
            deadline,
        });
    }
    let from = previous_version.unwrap_or_else(|| "nothing".into());
    b.event(
        format!(
            "rollout #{id}: {from} → {} in slot {target}{}",
            release.version,
            if forced {
                " (deploy freeze overridden with --force)"
            } else {
                ""
            }
        ),
        EventDetail::Deploy(Deployed {
            version: release.version.clone(),
            from: from.clone(),
            slot: target,
            forced,
        }),
    );
}

fn on_active(b: &mut Builder, input: Input, r: Rollout) -> Result<(), Rejected> {
    let now = b.now;
    // Promoted with nothing to go back to: nothing may roll it back.
    let stuck = nothing_to_go_back_to(&b.state, &r);
    match (input, &r.phase) {
        // The platform side reports a missed deadline itself, with the last probe and the log
        // tail; this is the backstop for a platform that never answers at all.
        (Input::Tick, Phase::Provisioning { deadline }) if now >= deadline.plus_ms(PROVISION_BACKSTOP_MS) => {
            b.fail(format!(
                "not ready within the readiness deadline of {} s (the platform never reported)",
                r.policy.readiness_deadline_ms / 1000
            ));
        }
        (Input::Tick, Phase::Promoted { until, .. }) if now >= *until => b.succeed(),
        (Input::Migrated { detail }, Phase::Migrating) => {
            // The readiness deadline counts from now: the migrations' time is not the release's.
            let deadline = now.plus_ms(r.policy.readiness_deadline_ms);
            b.rollout().phase = Phase::Provisioning { deadline };
            b.actions.push(Action::Provision {
                slot: r.target,
                release: r.release.clone(),
                deadline,
            });
            b.event(detail, EventDetail::Migrated);
        }
        (Input::MigrationFailed { reason }, Phase::Migrating) => {
            b.fail(format!(
                "the expand migrations failed, so {} never started: {reason}",
                r.release.version
            ));
        }
        (Input::Tick, _) => {}
        (Input::Provisioned { backends }, Phase::Provisioning { .. }) => {
            let n = backends.len();
            b.state.slot_mut(r.target).backends = backends;
            b.rollout().phase = Phase::Verifying;
            b.apply_routes();
            b.actions.push(Action::Verify { slot: r.target });
            b.event(
                format!(
                    "{} instance{} of {} ready in slot {}",
                    n,
                    if n == 1 { "" } else { "s" },
                    r.release.version,
                    r.target
                ),
                EventDetail::Ready,
            );
        }
        (Input::ProvisionFailed { reason }, Phase::Provisioning { .. }) => b.fail(reason),
        (Input::VerifyPassed { detail }, Phase::Verifying) => {
            // The detail says what was checked, including that nothing was: a prefix such as
            // "smoke checks passed" would be false when none are configured.
            b.event(detail, EventDetail::Verified);
            if b.state.slot(r.target.other()).is_running() {
                b.enter_step(0);
            } else {
                // Nothing serves users yet: there is no one to protect and nothing to compare with.
                b.promote("first release: nothing was live".into());
            }
        }
        (Input::VerifyFailed { reason }, Phase::Verifying) => b.fail(reason),
        (
            Input::Window(stats),
            Phase::Canary {
                step,
                window_started_at,
                observed_ms,
                inconclusive_in_row,
                step_requests,
            },
        ) => {
            let mut evidence = r.sequential.clone();
            b.rollout()
                .exposure
                .add_window(&stats, *window_started_at, &r.policy.judge.ignore_status);
            let window_requests = stats.canary.requests;
            let (new, old) = version_names(&r);
            let names = Names {
                canary: &new,
                baseline: &old,
            };
            let verdict = judge_named(&r.policy.judge, stats, evidence.as_mut(), names);
            b.rollout().sequential = evidence;
            let failures = count_failure(b, &verdict, *window_started_at);
            let (step, observed_ms, inconclusive_in_row) = (*step, *observed_ms, *inconclusive_in_row);
            let step_requests = step_requests + window_requests;
            let weight = r.policy.steps.get(step).map(|s| s.weight_bp).unwrap_or(0);
            let holding = format!("holding at {}", weight_text(weight));
            let limit = r.policy.failure_limit;
            let finding = verdict.summary.clone();
            // What the engine does with the verdict, decided before the decision is recorded so
            // that its sentence can say it, and carried out after, so that events read in order.
            let (action, next) = match verdict.outcome {
                Outcome::Pass => {
                    let observed = observed_ms + now.millis_since(*window_started_at);
                    let duration = r.policy.steps.get(step).map(|s| s.duration_ms).unwrap_or(0);
                    let sequential = r.policy.judge.method == JudgeMethod::Sequential;
                    // A step that sends no users to the canary (a 0 % soak) cannot see requests.
                    let min_requests = if sequential && weight > 0 {
                        r.policy.judge.min_step_requests
                    } else {
                        0
                    };
                    let enough = step_requests >= min_requests;
                    let done = (observed >= duration || verdict.complete_step) && enough && !verdict.hold;
                    if done {
                        (format!("step {} passed", step + 1), Next::StepDone)
                    } else if observed >= duration.saturating_add(r.policy.max_step_extension_ms) {
                        let why = if verdict.hold {
                            format!(
                                "step {} has run {} s past its {} s and the evidence against {new} has neither reached a rollback nor cleared ({:.0} % of the way to a rollback)",
                                step + 1,
                                (observed - duration) / 1000,
                                duration / 1000,
                                verdict.evidence_share * 100.0
                            )
                        } else {
                            format!(
                                "{new} served {step_requests} requests in step {}'s {} s, fewer than the {min_requests} needed to pass it",
                                step + 1,
                                observed / 1000
                            )
                        };
                        let reason = format!("{why}; never promoting blind: resume, promote or roll back");
                        ("pausing for a person".to_string(), Next::Pause(reason))
                    } else {
                        let extended = (observed >= duration && observed_ms < duration).then(|| {
                            let why = if verdict.hold {
                                finding.clone()
                            } else {
                                format!("{new} has served {step_requests} of the {min_requests} requests a step needs")
                            };
                            format!(
                                "step {} extended by up to {} s: {why}",
                                step + 1,
                                r.policy.max_step_extension_ms / 1000
                            )
                        });
                        let action = if verdict.hold {
                            holding.clone()
                        } else if !enough && observed >= duration {
                            format!("{holding} until the step has seen {min_requests} requests ({step_requests} so far)")
                        } else {
                            "going on".to_string()
                        };
                        let next = Next::Stay {
                            observed_ms: observed,
                            inconclusive_in_row: 0,
                            extended,
                        };
                        (action, next)
                    }
                }
                Outcome::Fail if verdict.conclusive => ("rolling back".to_string(), Next::RollBack),
                Outcome::Fail if failures > limit => (
                    format!("failed window {failures} of {}, rolling back", limit + 1),
                    Next::RollBack,
                ),
                Outcome::Fail => (
                    format!("failed window {failures} of {}, {holding}", limit + 1),
                    Next::Stay {
                        observed_ms,
                        inconclusive_in_row: 0,
                        extended: None,
                    },
                ),
                Outcome::Inconclusive => {
                    let in_row = inconclusive_in_row + 1;
                    if in_row > r.policy.inconclusive_limit {
                        let reason = format!(
                            "{in_row} windows in a row without a verdict, the last: {finding}; never promoting blind: resume, promote or roll back"
                        );
                        ("pausing for a person".to_string(), Next::Pause(reason))
                    } else {
                        let next = Next::Stay {
                            observed_ms,
                            inconclusive_in_row: in_row,
                            extended: None,
                        };
                        (holding.clone(), next)
                    }
                }
            };
            let (statistics, summary, hold) = (verdict.reason.clone(), verdict.summary.clone(), verdict.hold);
            record_verdict(b, verdict, &action, *window_started_at);
            match next {
                Next::StepDone => b.step_done(step),
                Next::Pause(reason) => {
                    b.rollout().phase = Phase::Paused {
                        step,
                        step_done: false,
                        reason: reason.clone(),
                    };
                    b.event(reason, EventDetail::Paused(Some(JudgePause { statistics })));
                }
                Next::Stay {
                    observed_ms,
                    inconclusive_in_row,
                    extended,
                } => {
                    if let Some(message) = extended {
                        b.event(
                            message,
                            EventDetail::StepExtended {
                                step,
                                hold,
                                step_requests,
                            },
                        );
                    }
                    b.rollout().phase = Phase::Canary {
                        step,
                        window_started_at: now,
                        observed_ms,
                        inconclusive_in_row,
                        step_requests,
                    };
                }
                Next::RollBack => {
                    // In plain words: the statistics are in the decision's data (`--verbose`).
                    let message = format!("rolled back automatically: {summary}");
                    b.roll_back(summary, message);
                }
            }
        }
        (
            Input::Window(stats),
            Phase::Promoted {
                since,
                until,
                window_started_at,
            },
        ) => {
            let (new, old) = version_names(&r);
            let names = Names {
                canary: &new,
                baseline: &old,
            };
            let verdict = judge_named(
                &r.policy.judge,
                WindowStats {
                    baseline: None,
                    latency: None,
                    unavailable: None,
                    external: Vec::new(),
                    ..stats
                },
                None,
                names,
            );
            let failures = count_failure(b, &verdict, *window_started_at);
            let limit = r.policy.failure_limit;
            let failed = verdict.outcome == Outcome::Fail;
            let roll_back = failed && failures > limit && stuck.is_none();
            let action = if roll_back {
                format!("failed window {failures} of {}, rolling back", limit + 1)
            } else if let (true, Some(why)) = (failed && failures > limit, &stuck) {
                format!("failed window {failures} of {}, but there is nothing to roll back to ({why}): {new} stays live", limit + 1)
            } else if failed {
                format!(
                    "failed window {failures} of {}, {new} stays live for now",
                    limit + 1
                )
            } else {
                // With nothing to go back to, the window watches but cannot roll back.
                let window = if stuck.is_some() {
                    "window"
                } else {
                    "rollback window"
                };
                let over = if now >= *until { "is over" } else { "goes on" };
                format!("the {window} {over}")
            };
            let summary = verdict.summary.clone();
            record_verdict(b, verdict, &action, *window_started_at);
            if roll_back {
                let message = format!("rolled back during the rollback window: {summary}");
                b.roll_back(summary, message);
            } else {
                b.rollout().phase = Phase::Promoted {
                    since: *since,
                    until: *until,
                    window_started_at: now,
                };
                if now >= *until {
                    b.succeed();
                }
            }
        }
        (Input::Window(_), _) => {}
        (Input::Command(command), phase) => on_command(b, command, &r, phase.clone())?,
        (Input::TargetDown { reason }, Phase::Promoted { .. }) if stuck.is_some() => {
            // Nothing to roll back to: the rollout ends with the release live, and the controller
            // supervises it like any live slot (starting it again once all its instances are gone).
            b.settle(Some(format!(
                "the new slot {} stopped running: {reason}",
                r.target
            )));
        }
        (
            Input::TargetDown { reason },
            Phase::Canary { .. }
            | Phase::Paused { .. }
            | Phase::Promoted { .. }
            | Phase::Gating { .. }
            | Phase::AwaitingConfirmation { .. },
        ) => {
            let reason = format!("the new slot {} stopped running: {reason}", r.target);
            b.roll_back(reason.clone(), format!("rolled back: {reason}"));
        }
        (Input::GatesPassed { step }, Phase::Gating { step: waiting }) if step == *waiting => {
            b.event(
                format!("step gates allow step {}", step + 1),
                EventDetail::GatesPassed,
            );
            b.start_step(step);
        }
        (Input::GatesFailed { step, reason }, Phase::Gating { step: waiting }) if step == *waiting => {
            let reason = format!("step gate before step {}: {reason}", step + 1);
            b.roll_back(reason.clone(), format!("rolled back: {reason}"));
        }
        (Input::PromotionConfirmed { detail }, Phase::AwaitingConfirmation { .. }) => {
            b.promote(format!("confirmed: {detail}"));
        }
        (Input::PromotionRejected { reason }, Phase::AwaitingConfirmation { .. }) => {
            let reason = format!("promotion rejected: {reason}");
            b.roll_back(reason.clone(), format!("rolled back: {reason}"));
        }
        (Input::ConfirmationTimedOut { reason }, Phase::AwaitingConfirmation { .. }) => {
            // Never promote unconfirmed, never roll back a canary nobody found fault with.
            b.event(
                format!("promotion not confirmed in time ({reason}): promote or roll back by hand"),
                EventDetail::ConfirmationTimedOut,
            );
        }
        (Input::TargetDown { reason }, Phase::Provisioning { .. } | Phase::Verifying) => {
            b.fail(format!("the new slot {} stopped running: {reason}", r.target));
        }
        (
            Input::Recovered {
                target_ready,
                live_ready,
                target_gone,
            },
            phase,
        ) => {
            b.event(
                format!(
                    "controller restarted in phase {}: new slot {}, old slot {}",
                    phase.name(),
                    if target_ready { "ready" } else { "not ready" },
                    if live_ready { "ready" } else { "not ready" }
                ),
                EventDetail::Recovered {
                    target_ready,
                    live_ready,
                },
            );
            match phase {
                Phase::Migrating => {
                    // Whatever ran before the crash is in the database's history (each
                    // migration commits with its history row): the rest runs now.
                    b.apply_routes();
                    b.actions.push(Action::Migrate {
                        release: r.release.clone(),
                    });
                }
                Phase::Provisioning { deadline } => {
                    // The platform re-adopts instances that survived, or starts them again.
                    b.state.slot_mut(r.target).backends.clear();
                    b.apply_routes();
                    b.actions.push(Action::Provision {
                        slot: r.target,
                        release: r.release.clone(),
                        deadline: *deadline,
                    });
                }
                Phase::Verifying => {
                    b.apply_routes();
                    b.actions.push(Action::Verify { slot: r.target });
                }
                Phase::Gating { step } if target_ready => {
                    let weight_bp = r.policy.steps.get(*step).map(|s| s.weight_bp).unwrap_or(0);
                    b.apply_routes();
                    b.actions.push(Action::CheckGates {
                        step: *step,
                        weight_bp,
                    });
                }
                Phase::AwaitingConfirmation { .. } if target_ready => {
                    b.apply_routes();
                    b.actions.push(Action::ConfirmPromotion);
                }
                Phase::Promoted { since, until, .. } if !target_ready && (target_gone || stuck.is_some()) => {
                    // It passed its canary and served everyone; the host died under it. The
                    // controller starts it again (it is the live slot) and the window goes on.
                    // Not ready with nothing to go back to: it stays, as the only release there is.
                    b.rollout().phase = Phase::Promoted {
                        since: *since,
                        until: *until,
                        window_started_at: now,
                    };
                    b.apply_routes();
                }
                Phase::Canary { .. }
                | Phase::Paused { .. }
                | Phase::Promoted { .. }
                | Phase::Gating { .. }
                | Phase::AwaitingConfirmation { .. }
                    if !target_ready =>
                {
                    let reason = "after a controller restart the new slot is not healthy".to_string();
                    b.roll_back(reason.clone(), format!("rolled back: {reason}"));
                }
                Phase::Canary {
                    step,
                    observed_ms,
                    inconclusive_in_row,
                    step_requests,
                    ..
                } => {
                    // Counts since the crash are lost with the process: the window starts afresh.
                    b.rollout().phase = Phase::Canary {
                        step: *step,
                        window_started_at: now,
                        observed_ms: *observed_ms,
                        inconclusive_in_row: *inconclusive_in_row,
                        step_requests: *step_requests,
                    };
                    b.apply_routes();
                }
                Phase::Promoted { since, until, .. } => {
                    b.rollout().phase = Phase::Promoted {
                        since: *since,
                        until: *until,
                        window_started_at: now,
                    };
                    b.apply_routes();
                }
                _ => b.apply_routes(),
            }
        }
        (input, phase) => {
            return Err(Rejected(format!(
                "{} does not apply to rollout #{} in phase {}",
                input_name(&input),
                r.id,
                phase.name()
            )));
        }
    }
    Ok(())
}

/// Why the promoted rollout `r` has nothing to go back to; `None` when it is not promoted or its
/// old slot still runs the release it replaced. A release is promoted without one when nothing
/// served users before it: the app's first release, or one promoted while the old slot's
/// instances were gone. Routing users back to that slot would answer every request 503.
fn nothing_to_go_back_to(state: &AppState, r: &Rollout) -> Option<String> {
    let old = r.target.other();
    if !matches!(r.phase, Phase::Promoted { .. }) || state.slot(old).is_running() {
        return None;
    }
    Some(match r.previous_version.as_deref() {
        None => format!("rollout #{} is the first release of {}", r.id, state.app),
        Some(previous) => format!(
            "rollout #{} went live while the old slot {old} ran nothing ({previous} was not running)",
            r.id
        ),
    })
}

/// What a canary window's verdict makes the engine do next.
enum Next {
    StepDone,
    /// The step goes on; `extended` announces that it runs past its duration, the first time.
    Stay {
        observed_ms: u64,
        inconclusive_in_row: u32,
        extended: Option<String>,
    },
    Pause(String),
    RollBack,
}

/// How the rollout's two versions are called in sentences for people.
fn version_names(r: &Rollout) -> (String, String) {
    let new = r.release.version.trim();
    let old = r.previous_version.as_deref().map(str::trim).unwrap_or("");
    match (new, old) {
        ("", "") => ("the canary".into(), "the baseline".into()),
        (new, "") => (new.into(), "the baseline".into()),
        ("", old) => ("the canary".into(), old.into()),
        // A redeploy of the same version: "v1 fails ..., v1 0 %" would say nothing.
        (new, old) if new == old => (format!("the new {new}"), format!("the live {old}")),
        (new, old) => (new.into(), old.into()),
    }
}

/// A canary weight for people: "5 %", "0.5 %".
fn weight_text(weight_bp: u16) -> String {
    format!("{} %", f64::from(weight_bp) / 100.0)
}

/// Counts a failed window; returns the failed windows so far.
fn count_failure(b: &mut Builder, verdict: &Verdict, window_started_at: Timestamp) -> u32 {
    let r = b.rollout();
    if verdict.outcome == Outcome::Fail {
        r.failures += 1;
        r.first_bad_window_at.get_or_insert(window_started_at);
    }
    r.failures
}

/// Records the verdict and its decision event: the plain sentence with what the engine does
/// (`action`) as the message, the verdict with its statistics (`reason`) as the data.
fn record_verdict(b: &mut Builder, mut verdict: Verdict, action: &str, window_started_at: Timestamp) {
    verdict.summary = format!("{}: {action}", verdict.summary);
    let message = verdict.summary.clone();
    b.rollout().last_verdict = Some(verdict.clone());
    b.event(
        message,
        EventDetail::Decision {
            verdict: Box::new(verdict),
            window_started_at,
        },
    );
}

fn on_command(b: &mut Builder, command: Command, r: &Rollout, phase: Phase) -> Result<(), Rejected> {
    let now = b.now;
    // Once promoted, an abort is a rollback too.
    if let (Command::Abort | Command::Rollback, Some(why)) = (command, nothing_to_go_back_to(&b.state, r)) {
        return Err(Rejected(format!(
            "{why}: there is nothing to roll back to; deploy another version instead"
        )));
    }
    let reject = |what: &str| {
        Err(Rejected(format!(
            "cannot {what} rollout #{} in phase {}",
            r.id,
            phase.name()
        )))
    };
    match (command, &phase) {
        (
            Command::Promote,
            Phase::Verifying
            | Phase::Canary { .. }
            | Phase::Paused { .. }
            | Phase::Gating { .. }
            | Phase::AwaitingConfirmation { .. },
        ) => {
            b.promote("by an operator".into());
        }
        (Command::Promote, Phase::Promoted { .. }) => b.succeed(),
        (Command::Promote, _) => return reject("promote"),
        (Command::Pause, Phase::Canary { step, .. }) => {
            let reason = "paused by an operator".to_string();
            b.rollout().phase = Phase::Paused {
                step: *step,
                step_done: false,
                reason: reason.clone(),
            };
            b.event(reason, EventDetail::Paused(None));
        }
        (Command::Pause, _) => return reject("pause"),
        (Command::Resume, Phase::Paused { step, step_done, .. }) => {
            b.event("resumed by an operator", EventDetail::Resumed);
            if *step_done {
                b.enter_step(step + 1);
            } else {
                b.rollout().phase = Phase::Canary {
                    step: *step,
                    window_started_at: now,
                    observed_ms: 0,
                    inconclusive_in_row: 0,
                    step_requests: 0,
                };
                b.apply_routes();
            }
        }
        (Command::Resume, _) => return reject("resume"),
        (Command::Abort, _) => {
            let reason = "aborted by an operator".to_string();
            b.back_to_old(
                Phase::Aborted {
                    at: now,
                    reason: reason.clone(),
                },
                reason,
            );
        }
        (Command::Rollback, _) => {
            let reason = "rolled back by an operator".to_string();
            b.roll_back(reason.clone(), reason);
        }
    }
    Ok(())
}

fn input_name(input: &Input) -> &'static str {
    match input {
        Input::Deploy { .. } => "deploy",
        Input::Tick => "tick",
        Input::Migrated { .. } => "migration result",
        Input::MigrationFailed { .. } => "migration failure",
        Input::Provisioned { .. } => "provisioned",
        Input::ProvisionFailed { .. } => "provision failure",
        Input::VerifyPassed { .. } => "verification",
        Input::VerifyFailed { .. } => "verification failure",
        Input::Window(_) => "window",
        Input::Command(_) => "command",
        Input::TargetDown { .. } => "target down",
        Input::GatesPassed { .. } | Input::GatesFailed { .. } => "a step gate result",
        Input::PromotionConfirmed { .. }
        | Input::PromotionRejected { .. }
        | Input::ConfirmationTimedOut { .. } => "a promotion confirmation",
        Input::Recovered { .. } => "recovery",
        Input::Restarted { .. } | Input::RestartFailed { .. } => "a restart of the live slot",
    }
}
