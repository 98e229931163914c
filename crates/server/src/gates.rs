//! Gates and notifications around a rollout: what must agree before it starts, before each step
//! and before promotion, and who is told what happened. The controller asks through this trait;
//! the monitoring and notification adapters implement it.

use std::time::Duration;

use cutover_core::rollout::Rollout;
use cutover_core::ReleaseSpec;
use cutover_store::StoredEvent;

/// The answer of the confirm-promotion gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    Confirmed(String),
    Rejected(String),
    TimedOut(String),
}

#[async_trait::async_trait]
pub trait Gates: Send + Sync + std::fmt::Debug {
    /// Whether any step gate is configured (alert gate, vetoing step webhooks).
    fn has_step_gates(&self) -> bool {
        false
    }

    /// Whether promotions wait for confirmation.
    fn has_confirmation(&self) -> bool {
        false
    }

    /// Before a rollout starts; an error says why it may not.
    async fn before_rollout(&self, _app: &str, _release: &ReleaseSpec) -> Result<(), String> {
        Ok(())
    }

    /// Before step `step` takes `weight_bp`; an error fails the step.
    async fn before_step(
        &self,
        _app: &str,
        _rollout: &Rollout,
        _step: usize,
        _weight_bp: u16,
    ) -> Result<(), String> {
        Ok(())
    }

    async fn confirm_promotion(&self, _app: &str, _rollout: &Rollout, _timeout: Duration) -> Confirmation {
        Confirmation::Confirmed("no confirmation gate".into())
    }

    /// An event was recorded; tell whoever wants to know. Must not block.
    fn notify(&self, _app: &str, _event: &StoredEvent, _rollout: Option<&Rollout>) {}
}

/// No gates, nobody told.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoGates;

#[async_trait::async_trait]
impl Gates for NoGates {}

/// The gates of one app as configured: webhooks (notifications, vetoes, confirmations) and,
/// optionally, an alert gate.
#[derive(Debug, Clone)]
pub struct ConfiguredGates {
    notifier: Option<cutover_notify::Notifier>,
    alerts: Option<cutover_monitoring::AlertGate>,
    step_vetoes: bool,
    rollout_vetoes: bool,
    confirmation: bool,
}

impl ConfiguredGates {
    /// Adds an alert gate: matching firing alerts block a rollout's start and fail its steps.
    pub fn with_alert_gate(mut self, gate: Option<cutover_monitoring::AlertGate>) -> Self {
        self.alerts = gate;
        self
    }

    /// Firing alerts that block, described; an Alertmanager that cannot be asked blocks too.
    async fn alerts_block(&self) -> Result<(), String> {
        let Some(gate) = &self.alerts else { return Ok(()) };
        match gate.check().await {
            Ok(alerts) if alerts.is_empty() => Ok(()),
            Ok(alerts) => Err(gate.describe(&alerts)),
            Err(e) => Err(format!(
                "the alert gate could not check Alertmanager, so it blocks: {e}"
            )),
        }
    }

    pub fn new(hooks: Vec<cutover_notify::WebhookConfig>) -> Result<Self, cutover_notify::NotifyError> {
        use cutover_notify::EventKind;
        let vetoes = |kind: EventKind| hooks.iter().any(|h| h.can_veto && h.subscribes_to(kind));
        let step_vetoes = vetoes(EventKind::Step);
        let rollout_vetoes = vetoes(EventKind::PreRollout);
        let confirmation = hooks.iter().any(|h| h.subscribes_to(EventKind::ConfirmPromotion));
        let notifier = if hooks.is_empty() {
            None
        } else {
            Some(cutover_notify::Notifier::from_env(hooks)?)
        };
        Ok(ConfiguredGates {
            notifier,
            alerts: None,
            step_vetoes,
            rollout_vetoes,
            confirmation,
        })
    }

    fn event(
        kind: cutover_notify::EventKind,
        app: &str,
        rollout: Option<&Rollout>,
        message: String,
    ) -> cutover_notify::WebhookEvent {
        let mut e = cutover_notify::WebhookEvent::new(kind, app, message, now());
        if let Some(r) = rollout {
            e.rollout_id = Some(r.id);
            e.version = Some(r.release.version.clone());
            e.previous_version = r.previous_version.clone();
            e.phase = Some(r.phase.name().to_string());
        }
        e
    }
}

fn now() -> cutover_core::Timestamp {
    use cutover_core::Clock;
    crate::SystemClock.now()
}

#[async_trait::async_trait]
impl Gates for ConfiguredGates {
    fn has_step_gates(&self) -> bool {
        self.step_vetoes || self.alerts.is_some()
    }

    fn has_confirmation(&self) -> bool {
        self.confirmation
    }

    async fn before_rollout(&self, app: &str, release: &ReleaseSpec) -> Result<(), String> {
        self.alerts_block().await?;
        let Some(n) = &self.notifier else { return Ok(()) };
        let mut e = Self::event(
            cutover_notify::EventKind::PreRollout,
            app,
            None,
            format!("about to deploy {}", release.version),
        );
        e.version = Some(release.version.clone());
        if !self.rollout_vetoes {
            n.notify(e);
            return Ok(());
        }
        match n.gate(e).await {
            cutover_notify::GateDecision::Allow => Ok(()),
            other => Err(other.to_string()),
        }
    }

    async fn before_step(
        &self,
        app: &str,
        rollout: &Rollout,
        step: usize,
        weight_bp: u16,
    ) -> Result<(), String> {
        // Firing alerts fail the step before any webhook is asked.
        self.alerts_block().await?;
        let Some(n) = &self.notifier else { return Ok(()) };
        let mut e = Self::event(
            cutover_notify::EventKind::Step,
            app,
            Some(rollout),
            format!(
                "step {}: {:.2} % of users on {}",
                step + 1,
                f64::from(weight_bp) / 100.0,
                rollout.release.version
            ),
        );
        e.step = Some(step);
        e.weight_bp = Some(weight_bp);
        match n.gate(e).await {
            cutover_notify::GateDecision::Allow => Ok(()),
            other => Err(other.to_string()),
        }
    }

    async fn confirm_promotion(&self, app: &str, rollout: &Rollout, timeout: Duration) -> Confirmation {
        let Some(n) = &self.notifier else {
            return Confirmation::Confirmed("no confirmation webhook".into());
        };
        let e = Self::event(
            cutover_notify::EventKind::ConfirmPromotion,
            app,
            Some(rollout),
            format!(
                "confirm the promotion of {} to all users",
                rollout.release.version
            ),
        );
        match n.confirm(e, timeout).await {
            cutover_notify::GateDecision::Allow => {
                Confirmation::Confirmed("confirmed by every webhook".into())
            }
            d @ cutover_notify::GateDecision::Veto { .. } => Confirmation::Rejected(d.to_string()),
            d @ cutover_notify::GateDecision::TimedOut { .. } => Confirmation::TimedOut(d.to_string()),
        }
    }

    fn notify(&self, app: &str, event: &StoredEvent, rollout: Option<&Rollout>) {
        use cutover_core::event::EventDetail;
        use cutover_notify::EventKind;
        let Some(n) = &self.notifier else { return };
        let mut every = Self::event(EventKind::Event, app, rollout, event.event.message.clone());
        // The log's own time, so receivers see the same clock as the event log.
        every.at_ms = event.event.at.as_millis();
        every.data = serde_json::to_value(event).unwrap_or_default();
        n.notify(every);
        let detail = &event.event.detail;
        let lifecycle: &[EventKind] = match detail {
            // With step gates, the gate itself told every step hook.
            EventDetail::Step { .. } if !self.has_step_gates() => &[EventKind::Step],
            EventDetail::RolledBack(_) => &[EventKind::Rollback, EventKind::PostRollout],
            EventDetail::Succeeded | EventDetail::Aborted(_) | EventDetail::Failed => {
                &[EventKind::PostRollout]
            }
            _ => &[],
        };
        for kind in lifecycle {
            let mut e = Self::event(*kind, app, rollout, event.event.message.clone());
            e.at_ms = event.event.at.as_millis();
            e.data = event.event.data();
            if let (Some(r), EventKind::Rollback | EventKind::PostRollout) = (rollout, kind) {
                // What users saw before the decision, for whoever is told the outcome.
                if !e.data.is_object() {
                    e.data = serde_json::json!({});
                }
                e.data["exposure"] = serde_json::to_value(&r.exposure).unwrap_or_default();
                e.data["first_canary_request_to_decision_ms"] =
                    serde_json::json!(r.exposure.first_canary_request_to_decision_ms());
            }
            if let EventDetail::Step { step, weight_bp, .. } = detail {
                e.step = Some(*step);
                e.weight_bp = Some(*weight_bp);
            }
            n.notify(e);
        }
    }
}
