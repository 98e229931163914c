//! A store that can be closed to writes for good: what a server hands its state over with.
//!
//! When `cutover serve --upgrade` takes over, the old process keeps running for a while to drain
//! its connections, and some of its tasks (a provisioning that was waiting for instances, a
//! metric window) may still try to commit a transition. Once the new process owns the state,
//! such a commit would be a second writer deciding about the same rollout. [`Fenced::fence`]
//! returns only when no write is in progress, and every write after it is refused: the successor
//! may start writing as soon as it returns.

use std::sync::{PoisonError, RwLock};

use cutover_core::rollout::{AppState, Event, Rollout};
use cutover_flags::ramp::Ramp;

use crate::{FlagChange, FlagChangeRecord, FlagSet, Store, StoreError, StoredEvent};

/// Wraps a store; reads always pass, writes pass until [`Fenced::fence`].
#[derive(Debug)]
pub struct Fenced<S> {
    inner: S,
    /// `Some(pid)` of the successor once fenced. Writers hold the read lock for their whole
    /// write, so taking the write lock to set it waits for the writes in progress.
    fenced: RwLock<Option<u32>>,
}

impl<S: Store> Fenced<S> {
    pub fn new(inner: S) -> Self {
        Fenced {
            inner,
            fenced: RwLock::new(None),
        }
    }

    /// Refuses every later write, after the writes in progress have finished.
    pub fn fence(&self, successor: u32) {
        *self.fenced.write().unwrap_or_else(PoisonError::into_inner) = Some(successor);
    }

    pub fn is_fenced(&self) -> bool {
        self.fenced
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    fn write<T>(&self, f: impl FnOnce(&S) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let guard = self.fenced.read().unwrap_or_else(PoisonError::into_inner);
        match *guard {
            Some(successor) => Err(StoreError::Fenced { successor }),
            None => f(&self.inner),
        }
    }
}

impl<S: Store> Store for Fenced<S> {
    fn load(&self, app: &str) -> Result<Option<AppState>, StoreError> {
        self.inner.load(app)
    }

    fn apps(&self) -> Result<Vec<String>, StoreError> {
        self.inner.apps()
    }

    fn commit_ending(
        &self,
        state: &AppState,
        events: &[Event],
        ended: &[Rollout],
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.write(|s| s.commit_ending(state, events, ended))
    }

    fn events(
        &self,
        app: &str,
        rollout_id: Option<u64>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.inner.events(app, rollout_id, after, limit)
    }

    fn rollouts(&self, app: &str, limit: usize) -> Result<Vec<Rollout>, StoreError> {
        self.inner.rollouts(app, limit)
    }

    fn flags(&self) -> Result<FlagSet, StoreError> {
        self.inner.flags()
    }

    fn change_flag(&self, change: &FlagChange) -> Result<FlagChangeRecord, StoreError> {
        self.write(|s| s.change_flag(change))
    }

    fn flag_audit(
        &self,
        key: Option<&str>,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<FlagChangeRecord>, StoreError> {
        self.inner.flag_audit(key, after_seq, limit)
    }

    fn ramps(&self) -> Result<Vec<Ramp>, StoreError> {
        self.inner.ramps()
    }

    fn save_ramp(&self, ramp: &Ramp) -> Result<(), StoreError> {
        self.write(|s| s.save_ramp(ramp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[test]
    fn passes_the_store_conformance_suite_until_fenced() {
        crate::conformance::run_all(&|| Box::new(Fenced::new(MemoryStore::default())) as Box<dyn Store>);
    }

    #[test]
    fn a_fenced_store_refuses_writes_and_still_reads() {
        let store = Fenced::new(MemoryStore::default());
        let state = AppState::new("web");
        store.commit(&state, &[]).unwrap();
        store.fence(42);
        assert!(store.is_fenced());
        let error = store.commit(&state, &[]).unwrap_err();
        assert!(matches!(error, StoreError::Fenced { successor: 42 }), "{error}");
        assert!(error.to_string().contains("pid 42"), "{error}");
        assert!(store.load("web").unwrap().is_some());
    }
}
