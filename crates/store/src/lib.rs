//! Persistence of every app's state and event log. One trait, [`Store`], with one module per
//! backend; every backend passes the same conformance suite.
//!
//! - [`SqliteStore`]: the real thing, one SQLite file per cutover.
//! - [`MemoryStore`]: the same semantics in memory, for tests and simulations.
//! - `conformance` (with the `conformance` feature): the behaviour every backend must have, as
//!   functions another crate's tests can run against its own backend.

use cutover_core::rollout::{AppState, Event, Rollout};
use cutover_flags::ramp::Ramp;
use serde::{Deserialize, Serialize};

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod fenced;
mod flags;
mod memory;
mod sqlite;

pub use fenced::Fenced;

/// For backends in other crates (etcd): the checks every backend runs before it writes, so that
/// all of them refuse exactly the same states, flags and ramps.
pub mod backend {
    pub use crate::flags::{check_change, encode_flag, encode_ramp, plan_change, PlannedChange};

    /// Refuses a commit that would not read back, as [`crate::Store::commit_ending`] must.
    pub fn check_commit(
        state: &cutover_core::rollout::AppState,
        events: &[cutover_core::rollout::Event],
        ended: &[cutover_core::rollout::Rollout],
    ) -> Result<(), crate::StoreError> {
        crate::encode_commit(state, events, ended).map(|_| ())
    }
}
pub use flags::{FlagChange, FlagChangeRecord, FlagSet};
pub use memory::MemoryStore;
pub use sqlite::SqliteStore;

/// An event as stored: with its position in the app's log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Increases by one per event of the app, from 1.
    pub seq: u64,
    pub app: String,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// This process handed the state over to another one (`cutover serve --upgrade`) and may no
    /// longer write it; see [`Fenced`].
    #[error(
        "the state was handed over to another cutover serve (pid {successor}); this one no longer writes it"
    )]
    Fenced { successor: u32 },
    /// This process is not (or no longer) the one that may write the shared state: another
    /// controller holds the leadership. Nothing was written.
    #[error("not written: {reason}")]
    NotLeader { reason: String },
    /// The state file could not be opened or set up; `reason` says why and what to do.
    #[error("state file {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("state file {path} has schema version {found}, newer than this cutover understands ({supported}); upgrade cutover")]
    TooNew {
        path: String,
        found: u32,
        supported: u32,
    },
    /// For backends without a file of their own; the SQLite store reports [`StoreError::Database`].
    #[error("storage failed: {0}")]
    Io(String),
    /// Stored data that cannot be read back. `reason` names where it is and what to do.
    #[error("stored data of app {app} is unreadable: {reason}")]
    Corrupt { app: String, reason: String },
    /// The database refused or failed an operation on an open state file.
    #[error("state file {path}: {action} failed: {reason}; {hint}")]
    Database {
        path: String,
        /// What the store was doing, e.g. "saving the state of app web".
        action: String,
        reason: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// A commit was refused before anything was written: the state or an event could not be
    /// stored in a form that reads back. Nothing changed.
    #[error("cannot store the state of app {app}: {reason}")]
    Unstorable { app: String, reason: String },
    /// A flag change was refused before anything was written: it names another flag than its
    /// key, or the flag could not be stored in a form that reads back. Nothing changed.
    #[error("cannot store flag {key}: {reason}")]
    UnstorableFlag { key: String, reason: String },
    /// A compare-and-swap flag change found another revision than the caller read: someone
    /// changed the flag in between. Nothing changed.
    #[error("flag {key} was changed since it was read (expected revision {expected}, found {found}; 0 means it does not exist): re-read the flag, apply your change to it and retry")]
    Conflict { key: String, expected: u64, found: u64 },
    /// A change archived a flag that is not stored. Nothing changed.
    #[error(
        "flag {key} does not exist (never created, or already archived); list the flags to see which exist"
    )]
    NoSuchFlag { key: String },
    /// Stored flag data that cannot be read back. `key` is the flag it belongs to (`None` for the
    /// flag set's own bookkeeping); `reason` names where it is and what to do.
    #[error("stored flags are unreadable: {reason}")]
    CorruptFlags { key: Option<String>, reason: String },
}

/// Durable state. `commit` is atomic: after a crash either the new state and all its events are
/// there, or none of it.
///
/// The methods block (the SQLite store waits for the disk on `commit`) but are short; async callers
/// can call them inline for the odd transition or move them to `spawn_blocking` under load.
pub trait Store: Send + Sync + std::fmt::Debug {
    fn load(&self, app: &str) -> Result<Option<AppState>, StoreError>;

    /// Apps with stored state, sorted by name.
    fn apps(&self) -> Result<Vec<String>, StoreError>;

    /// Persists `state` and appends `events` to its app's log, in one transaction; returns the
    /// stored events with their sequence numbers. The rollout in `state`, if any, is also recorded
    /// in the app's rollout history (replacing the earlier record of the same id).
    ///
    /// A state that would not read back (see [`StoreError::Unstorable`]) is refused and nothing
    /// is written: storing it would leave an app that cannot be loaded after a restart.
    fn commit(&self, state: &AppState, events: &[Event]) -> Result<Vec<StoredEvent>, StoreError> {
        self.commit_ending(state, events, &[])
    }

    /// [`Store::commit`], also recording `ended`: rollouts the transition finished and replaced
    /// in `state` (the promoted rollout that a deploy inside its rollback window closes, say).
    /// Without them their history record would keep the phase it had before it ended.
    fn commit_ending(
        &self,
        state: &AppState,
        events: &[Event],
        ended: &[Rollout],
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// Events of `app` with `seq > after`, oldest first, at most `limit`; only those of
    /// `rollout_id` when given.
    fn events(
        &self,
        app: &str,
        rollout_id: Option<u64>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError>;

    /// The latest `limit` rollouts of `app`, newest first.
    fn rollouts(&self, app: &str, limit: usize) -> Result<Vec<Rollout>, StoreError>;

    /// Every flag that is not archived, sorted by key, and the revision of the set, read at one
    /// instant: the revision is that of exactly these flags.
    fn flags(&self) -> Result<FlagSet, StoreError>;

    /// Writes `change.after` (or archives `change.key` when it is `None`) with the flag's next
    /// revision, bumps the set's revision and appends the audit record, in one transaction;
    /// returns the record.
    ///
    /// Refused, with nothing written: [`StoreError::Conflict`] when `expected_revision` is set and
    /// differs from the stored flag's revision (0 if there is none); [`StoreError::NoSuchFlag`]
    /// when archiving a flag that is not stored; [`StoreError::UnstorableFlag`] when the new
    /// flag's key is not `change.key`. The flag itself is not validated: the caller does that.
    ///
    /// A flag's revision is one more than the last revision it had, archived or not, so a flag
    /// created again after archiving never repeats a revision a client may still hold.
    fn change_flag(&self, change: &FlagChange) -> Result<FlagChangeRecord, StoreError>;

    /// Audit records with `seq > after_seq`, oldest first, at most `limit`; only those of `key`
    /// when given.
    fn flag_audit(
        &self,
        key: Option<&str>,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<FlagChangeRecord>, StoreError>;

    /// The latest guarded ramp of every flag that has had one (archived flags included), sorted
    /// by flag key.
    fn ramps(&self) -> Result<Vec<Ramp>, StoreError>;

    /// Writes `ramp` over the stored record of the same flag and id, or adds it. A ramp that would
    /// not read back is refused with [`StoreError::UnstorableFlag`] and nothing is written.
    fn save_ramp(&self, ramp: &Ramp) -> Result<(), StoreError>;
}

/// One event as columns.
#[derive(Debug)]
pub(crate) struct EventRow {
    pub at_ms: i64,
    pub rollout_id: Option<i64>,
    pub data_json: String,
}

/// A rollout as columns.
#[derive(Debug)]
pub(crate) struct RolloutRow {
    pub id: i64,
    pub version: String,
    pub phase: &'static str,
    pub started_at_ms: i64,
    pub json: String,
}

/// A commit encoded for storage and checked to read back. Every backend goes through this, so a
/// state one backend refuses is refused by all of them.
#[derive(Debug)]
pub(crate) struct EncodedCommit {
    pub state_json: String,
    pub events: Vec<EventRow>,
    /// The state's rollout and the ones that ended in this commit, each to be written over the
    /// earlier record of its id.
    pub rollouts: Vec<RolloutRow>,
}

pub(crate) fn encode_commit(
    state: &AppState,
    events: &[Event],
    ended: &[Rollout],
) -> Result<EncodedCommit, StoreError> {
    let app = &state.app;
    let unstorable = |reason: String| StoreError::Unstorable {
        app: app.clone(),
        reason,
    };
    let state_json = serde_json::to_string(state).map_err(|e| {
        unstorable(format!(
            "it does not serialise to JSON ({e}); this is a bug in cutover"
        ))
    })?;
    // serde_json writes non-finite floats (say an infinite threshold in a policy) as `null`, which
    // then fails to parse: such a state would save fine and brick the app at the next start.
    if let Err(e) = serde_json::from_str::<AppState>(&state_json) {
        return Err(unstorable(format!(
            "it would not read back ({e}); check the rollout policy for infinite or NaN numbers"
        )));
    }
    let events = events
        .iter()
        .map(|e| {
            Ok(EventRow {
                at_ms: to_i64(app, "event time", e.at.as_millis())?,
                rollout_id: e
                    .rollout_id
                    .map(|id| to_i64(app, "event rollout id", id))
                    .transpose()?,
                data_json: serde_json::to_string(&e.data()).map_err(|err| {
                    unstorable(format!(
                        "the data of event {:?} does not serialise to JSON ({err}); this is a bug in cutover",
                        e.kind()
                    ))
                })?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let rollouts = ended
        .iter()
        .filter(|r| state.rollout.as_ref().is_none_or(|current| current.id != r.id))
        .chain(&state.rollout)
        .map(|r| {
            Ok(RolloutRow {
                id: to_i64(app, "rollout id", r.id)?,
                version: r.release.version.clone(),
                phase: r.phase.name(),
                started_at_ms: to_i64(app, "rollout start time", r.started_at.as_millis())?,
                json: serde_json::to_string(r).map_err(|e| {
                    unstorable(format!(
                        "rollout #{} does not serialise to JSON ({e}); this is a bug in cutover",
                        r.id
                    ))
                })?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(EncodedCommit {
        state_json,
        events,
        rollouts,
    })
}

/// SQLite integers are signed; anything past `i64::MAX` is a corrupted value, not a real time or id.
fn to_i64(app: &str, what: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Unstorable {
        app: app.to_string(),
        reason: format!("{what} {value} is beyond the largest storable integer; this is a bug in cutover"),
    })
}

/// Parses a stored state and checks it belongs where it was found. `location` says where the JSON
/// came from, for the error message.
pub(crate) fn decode_state(app: &str, json: &str, location: &str) -> Result<AppState, StoreError> {
    let state: AppState = serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        app: app.to_string(),
        reason: format!(
            "its state in {location} is not a valid app state ({e}); restore the file from a backup, or delete the app's row to start it afresh"
        ),
    })?;
    if state.app != app {
        return Err(StoreError::Corrupt {
            app: app.to_string(),
            reason: format!(
                "its state in {location} is that of app {:?}; the file was edited by hand or is damaged: restore it from a backup",
                state.app
            ),
        });
    }
    Ok(state)
}
