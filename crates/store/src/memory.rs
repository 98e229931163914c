//! The store in memory: the semantics of [`SqliteStore`](crate::SqliteStore) without a disk, for
//! tests and simulations. Nothing survives the process.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use cutover_core::rollout::{AppState, Event, Rollout};

use crate::{encode_commit, Store, StoreError, StoredEvent};

#[derive(Debug, Default)]
pub struct MemoryStore {
    apps: Mutex<BTreeMap<String, AppData>>,
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
}
