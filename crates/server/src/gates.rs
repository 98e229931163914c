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
