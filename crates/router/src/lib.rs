//! Where an app's traffic is split between its two slots. One trait, [`Router`], with one module
//! per backend:
//!
//! - [`builtin`]: cutover's own proxy ([`cutover_proxy::AppProxy`]), in process.
//! - [`haproxy`]: an HAProxy the team already runs, driven through its runtime API.
//! - [`nginx`]: an nginx the team already runs, driven by rendering its configuration and
//!   reloading it.
//!
//! Every backend passes the same conformance suite (`conformance`, behind the `conformance`
//! feature): weighted split, sticky users, switch and rollback, drain, no failed request across
//! repeated switches under load, and recovery after the router process restarts.
//!
//! # What a router promises
//!
//! - [`Router::apply`] returns once the router routes by the table, and only after reading it
//!   back: a router that accepted a change it does not show is an error, not a success.
//! - Users are sticky by a hash of their key into 10 000 buckets; the canary takes the buckets
//!   below its weight, so raising the weight only ever moves users from the live slot to the
//!   canary. Each router hashes in its own way (the built-in proxy with seeded XXH3, HAProxy with
//!   its own converters, nginx with `split_clients`), so a user's bucket is not the same under two
//!   routers; only the promises are.
//! - A slot that loses its weight drains: requests in flight finish, new ones go elsewhere.
//! - [`Router::applied`] reads the routing state back *from the router*, not from memory, so the
//!   controller can tell a router that lost its state (HAProxy forgets runtime changes on a
//!   reload) and apply the table again.
//! - [`Router::counters`] gives cumulative per-slot counts for the judge; [`CounterSource`] turns
//!   them into a [`cutover_monitoring::MetricSource`].

pub mod builtin;
#[cfg(feature = "conformance")]
pub mod conformance;
mod counters;
pub mod haproxy;
pub mod nginx;

use std::time::Duration;

use async_trait::async_trait;
use cutover_core::RouteTable;
use serde::{Deserialize, Serialize};

pub use builtin::BuiltinRouter;
pub use counters::CounterSource;

/// Why a router could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The table itself is unusable (it failed validation, or this router cannot express it).
    #[error("{router}: route table refused: {reason}")]
    Refused { router: String, reason: String },
    /// The router could not be reached or did not do what it was told.
    #[error("{router}: {reason}")]
    Unavailable { router: String, reason: String },
    /// The change went through, but reading it back showed something else.
    #[error("{router}: after applying, the router shows {found} instead of {wanted}; {hint}")]
    NotApplied {
        router: String,
        wanted: String,
        found: String,
        hint: String,
    },
}

/// Cumulative counts of one slot, as the router sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotCounters {
    /// The release the counts belong to (empty for an idle slot).
    pub version: String,
    /// Identifies one run of the counters: it changes whenever they start again from zero (a new
    /// version in the slot, an HAProxy reload, a rotated log). Counts of two readings with
    /// different series cannot be subtracted.
    pub series: u64,
    /// Requests answered, whatever their status.
    pub requests: u64,
    /// Of those, the 5xx responses.
    pub server_errors: u64,
    /// Of those, the 4xx responses, when the router tells them apart.
    #[serde(default)]
    pub client_errors: Option<u64>,
    /// Responses of the codes of [`cutover_core::TRACKED_CODES`], code by code, when the router
    /// tells them apart (codes that never occurred may be missing).
    #[serde(default)]
    pub codes: Option<std::collections::BTreeMap<u16, u64>>,
    /// Distinct users the release served so far, and of those the users who got a 4xx
    /// (estimates), when the router counts users.
    #[serde(default)]
    pub users: Option<u64>,
    #[serde(default)]
    pub users_with_client_errors: Option<u64>,
    /// Requests per latency bucket ([`cutover_core::histogram`]) when the router measures
    /// latency per request.
    pub latency_buckets: Option<Vec<u64>>,
    /// Requests in flight now, when the router knows.
    pub in_flight: Option<u64>,
}

/// A slot's counts in the form people read: totals, error rate, latency quantiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SlotSummary {
    pub requests: u64,
    pub server_errors: u64,
    /// Share of requests answered 5xx; `None` without requests.
    pub error_rate: Option<f64>,
    /// Share of requests answered 4xx; `None` without requests or when the router cannot tell.
    #[serde(default)]
    pub client_error_rate: Option<f64>,
    /// The common 4xx and 5xx codes that occurred, when the router tells them apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codes: Option<std::collections::BTreeMap<u16, u64>>,
    /// Distinct users served (estimated), when the router counts users.
    #[serde(default)]
    pub users: Option<u64>,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub in_flight: Option<u64>,
}

impl SlotCounters {
    pub fn summary(&self) -> SlotSummary {
        let quantile = |q: f64| {
            self.latency_buckets
                .as_deref()
                .and_then(|b| cutover_core::histogram::quantile_bucket(b, q))
                .map(|i| cutover_core::histogram::bucket_upper_micros(i) as f64 / 1000.0)
        };
        SlotSummary {
            requests: self.requests,
            server_errors: self.server_errors,
            error_rate: (self.requests > 0).then(|| self.server_errors as f64 / self.requests as f64),
            client_error_rate: self
                .client_errors
                .filter(|_| self.requests > 0)
                .map(|c| c as f64 / self.requests as f64),
            codes: self.codes.clone(),
            users: self.users,
            latency_p50_ms: quantile(0.50),
            latency_p95_ms: quantile(0.95),
            latency_p99_ms: quantile(0.99),
            in_flight: self.in_flight,
        }
    }
}

/// Applies route tables to where traffic flows, reads them back, and counts per slot.
#[async_trait]
pub trait Router: Send + Sync + std::fmt::Debug {
    /// What this router is, for messages: `"built-in proxy"`, `"haproxy (/run/haproxy.sock)"`.
    fn describe(&self) -> String;

    /// Routes by `table` from now on, verified by reading it back. A refused or failed change
    /// leaves the router as it was, as far as the router allows (see each backend).
    async fn apply(&self, table: &RouteTable) -> Result<(), RouterError>;

    /// The table the router routes by now, read back from it.
    async fn applied(&self) -> Result<RouteTable, RouterError>;

    /// Cumulative counts of each slot, indexed by [`cutover_core::Slot::index`].
    async fn counters(&self) -> Result<[SlotCounters; 2], RouterError>;

    /// How long a slot that lost its traffic may keep serving the requests it had.
    fn drain_timeout(&self) -> Duration;

    /// Whether traffic may still reach `slot`, asked before the slot is stopped: the applied
    /// table gives it weight. A router that cannot be read does not block a stop here; a router
    /// that may route by more than one table at once (a fleet of proxies) answers `true` unless
    /// it knows every copy has moved on.
    async fn still_routes(&self, slot: cutover_core::Slot) -> bool {
        matches!(self.applied().await,
            Ok(t) if t.weight_of(slot) > 0 && !t.pool(slot).version.is_empty())
    }

    /// Makes the router route by `wanted` again if it lost that state (a restart or a reload).
    /// Returns whether it had to. Called by the controller on its ticks.
    async fn reconcile(&self, wanted: &RouteTable) -> Result<bool, RouterError> {
        if self.applied().await.ok().as_ref() == Some(wanted) {
            return Ok(false);
        }
        self.apply(wanted).await?;
        Ok(true)
    }
}
