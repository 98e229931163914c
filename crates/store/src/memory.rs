//! The store in memory: the semantics of [`SqliteStore`](crate::SqliteStore) without a disk, for
//! tests and simulations. Nothing survives the process.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use cutover_core::rollout::{AppState, Event, Rollout};
use cutover_flags::Flag;

use crate::flags::{check_change, encode_flag, encode_ramp, plan_change};
use crate::{encode_commit, FlagChange, FlagChangeRecord, FlagSet, Store, StoreError, StoredEvent};

#[derive(Debug, Default)]
pub struct MemoryStore {
    apps: Mutex<BTreeMap<String, AppData>>,
    flags: Mutex<FlagData>,
}

#[derive(Debug, Default)]
struct FlagData {
    set_revision: u64,
    /// Live flags by key; archiving removes the entry, as the SQLite store deletes the row.
    flags: BTreeMap<String, Flag>,
    /// The last revision of every key ever changed, archived ones included.
    last_revisions: BTreeMap<String, u64>,
    /// In order; the record with seq `n` is at index `n - 1`.
    audit: Vec<FlagChangeRecord>,
    /// Every ramp by flag and id.
    ramps: BTreeMap<(String, u64), cutover_flags::ramp::Ramp>,
}

#[derive(Debug)]
struct AppData {
    state: AppState,
    /// In order; the event with seq `n` is at index `n - 1`.
    events: Vec<StoredEvent>,
    rollouts: BTreeMap<u64, Rollout>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, AppData>> {
        // `commit` validates everything before it touches the map, so a panic elsewhere while the
        // lock was held cannot have left an app half-updated: the data is still good to use.
        self.apps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_flags(&self) -> MutexGuard<'_, FlagData> {
        // As for `lock`: `change_flag` decides everything before it writes, and its writes cannot
        // panic midway.
        self.flags.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Store for MemoryStore {
    fn load(&self, app: &str) -> Result<Option<AppState>, StoreError> {
        Ok(self.lock().get(app).map(|d| d.state.clone()))
    }

    fn apps(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock().keys().cloned().collect())
    }

    fn commit_ending(
        &self,
        state: &AppState,
        events: &[Event],
        ended: &[Rollout],
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // Only for its checks: the memory store refuses exactly what the SQLite store refuses.
        encode_commit(state, events, ended)?;
        let mut apps = self.lock();
        let data = apps.entry(state.app.clone()).or_insert_with(|| AppData {
            state: state.clone(),
            events: Vec::new(),
            rollouts: BTreeMap::new(),
        });
        data.state = state.clone();
        let first = data.events.len() as u64 + 1;
        let stored: Vec<StoredEvent> = events
            .iter()
            .zip(first..)
            .map(|(event, seq)| StoredEvent {
                seq,
                app: state.app.clone(),
                event: event.clone(),
            })
            .collect();
        data.events.extend(stored.iter().cloned());
        for r in ended.iter().chain(&state.rollout) {
            data.rollouts.insert(r.id, r.clone());
        }
        Ok(stored)
    }

    fn events(
        &self,
        app: &str,
        rollout_id: Option<u64>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let apps = self.lock();
        let Some(data) = apps.get(app) else {
            return Ok(Vec::new());
        };
        let start = usize::try_from(after)
            .unwrap_or(usize::MAX)
            .min(data.events.len());
        Ok(data.events[start..]
            .iter()
            .filter(|e| rollout_id.is_none() || e.event.rollout_id == rollout_id)
            .take(limit)
            .cloned()
            .collect())
    }

    fn rollouts(&self, app: &str, limit: usize) -> Result<Vec<Rollout>, StoreError> {
        Ok(self
            .lock()
            .get(app)
            .map(|d| d.rollouts.values().rev().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    fn flags(&self) -> Result<FlagSet, StoreError> {
        let data = self.lock_flags();
        Ok(FlagSet {
            revision: data.set_revision,
            flags: data.flags.values().cloned().collect(),
        })
    }

    fn change_flag(&self, change: &FlagChange) -> Result<FlagChangeRecord, StoreError> {
        check_change(change)?;
        let mut data = self.lock_flags();
        let key = change.key.as_str();
        let before = data.flags.get(key).cloned();
        let last_revision = data.last_revisions.get(key).copied().unwrap_or(0);
        let planned = plan_change(change, before.as_ref(), last_revision)?;
        if let Some(after) = &planned.after {
            // Only for its checks: the memory store refuses exactly what the SQLite store refuses.
            encode_flag(after)?;
        }
        data.set_revision += 1;
        data.last_revisions.insert(key.to_string(), planned.revision);
        match &planned.after {
            Some(after) => {
                data.flags.insert(key.to_string(), after.clone());
            }
            None => {
                data.flags.remove(key);
            }
        }
        let record = FlagChangeRecord {
            seq: data.audit.len() as u64 + 1,
            key: key.to_string(),
            at: change.at,
            who: change.who.clone(),
            why: change.why.clone(),
            before,
            after: planned.after,
        };
        data.audit.push(record.clone());
        Ok(record)
    }

    fn flag_audit(
        &self,
        key: Option<&str>,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<FlagChangeRecord>, StoreError> {
        let data = self.lock_flags();
        let start = usize::try_from(after_seq)
            .unwrap_or(usize::MAX)
            .min(data.audit.len());
        Ok(data.audit[start..]
            .iter()
            .filter(|r| key.is_none_or(|k| r.key == k))
            .take(limit)
            .cloned()
            .collect())
    }

    fn ramps(&self) -> Result<Vec<cutover_flags::ramp::Ramp>, StoreError> {
        let data = self.lock_flags();
        let mut latest: BTreeMap<&str, &cutover_flags::ramp::Ramp> = BTreeMap::new();
        for ((flag, _), ramp) in &data.ramps {
            // Ordered by (flag, id): the last of each flag wins.
            latest.insert(flag, ramp);
        }
        Ok(latest.into_values().cloned().collect())
    }

    fn save_ramp(&self, ramp: &cutover_flags::ramp::Ramp) -> Result<(), StoreError> {
        let json = encode_ramp(ramp)?;
        // What is kept is what reads back, as in the SQLite store.
        let stored = serde_json::from_str(&json).map_err(|e| StoreError::UnstorableFlag {
            key: ramp.flag.clone(),
            reason: e.to_string(),
        })?;
        self.lock_flags()
            .ramps
            .insert((ramp.flag.clone(), ramp.id), stored);
        Ok(())
    }
}
