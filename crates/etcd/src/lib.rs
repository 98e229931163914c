//! cutover's state in etcd, for a fleet of cutover processes on several hosts.
//!
//! [`EtcdStore`] implements [`cutover_store::Store`] with the semantics of the SQLite store (it
//! passes the same conformance suite), every write one etcd transaction:
//!
//! - **Compare and swap.** A commit compares the mod revision of the app's state key with the one
//!   it read, so two writers of one app cannot interleave: the second re-reads and tries again.
//!   Flag changes compare the flag set's revision key the same way.
//! - **Fencing.** A store made with [`EtcdStore::fenced`] adds to every write the comparison
//!   "the leader key holds my identity". A controller that lost its leadership (its lease
//!   expired, another took over) can therefore never commit: its write fails as
//!   [`StoreError::NotLeader`] and changes nothing, so a stale leader cannot move traffic.
//!
//! # Why etcd's JSON gateway, not gRPC
//!
//! The gateway (`/v3/kv/...`) is part of every etcd server since 3.3, speaks the same v3 API, and
//! needs only the HTTP client the workspace already has. The gRPC client crates need protobuf
//! code generation (a `protoc` at build time) and tonic. The gateway's cost is JSON encoding of a
//! few requests per rollout step, which is nothing next to a consensus round trip.
//!
//! # Keys (under the store's prefix, `/cutover/` by default)
//!
//! | key | value |
//! | --- | --- |
//! | `apps/<app>/state` | the app's state (JSON) |
//! | `apps/<app>/events/<seq, 20 digits>` | one stored event |
//! | `apps/<app>/rollouts/<id, 20 digits>` | one rollout of the history |
//! | `appnames/<app>` | empty: lists the apps without reading their events |
//! | `flags/revision` | the flag set's revision |
//! | `flags/live/<key>`, `flags/last/<key>` | a live flag; the last revision a key ever had |
//! | `flags/audit/<seq, 20 digits>` | one audit record |
//! | `ramps/<flag>/<id, 20 digits>` | one guarded ramp |

mod client;
pub mod election;
pub mod follow;

use cutover_core::rollout::{AppState, Event, Rollout};
use cutover_flags::ramp::Ramp;
use cutover_flags::Flag;
use cutover_store::backend::{check_change, check_commit, encode_flag, encode_ramp, plan_change};
use cutover_store::{FlagChange, FlagChangeRecord, FlagSet, Store, StoreError, StoredEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use client::{b64, number, Client, ClientOptions, Connection, EtcdError, Kv};
use client::{delete, mod_revision_is, put, value_is, PAGE};

/// The operations and comparisons of a transaction ([`Client::txn`]).
pub mod client_ops {
    pub use crate::client::{delete, mod_revision_is, put, value_is};
}
pub use election::{Election, Leadership};

/// Attempts of one write when other writers keep winning the compare and swap.
const WRITE_ATTEMPTS: usize = 20;

/// The leader key and the identity a fenced store writes as.
#[derive(Debug, Clone)]
struct Fence {
    key: String,
    identity: String,
}

/// The state in etcd; see the module docs.
#[derive(Debug)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    fence: Option<Fence>,
}

fn io(e: EtcdError) -> StoreError {
    StoreError::Io(e.to_string())
}

/// A pause of 1 to 8 ms after losing a compare and swap: without it, two writers sharing one
/// client can lose to each other in lockstep, the faster one always a step ahead.
fn back_off() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::thread::sleep(std::time::Duration::from_micros(1000 + u64::from(nanos % 7000)));
}

fn seq_key(n: u64) -> String {
    format!("{n:020}")
}

impl EtcdStore {
    /// A store of the cluster at `endpoints` under `prefix` (e.g. `/cutover/`), unfenced.
    pub fn new(endpoints: Vec<String>, prefix: &str) -> Result<EtcdStore, StoreError> {
        Ok(EtcdStore::with_client(
            Client::new(endpoints).map_err(io)?,
            prefix,
        ))
    }

    /// A store through `client` (with its TLS and credentials) under `prefix`, unfenced.
    pub fn with_client(client: Client, prefix: &str) -> EtcdStore {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        EtcdStore {
            client,
            prefix,
            fence: None,
        }
    }

    /// This store, writing only while `leader_key` holds `identity`.
    pub fn fenced(mut self, leader_key: &str, identity: &str) -> EtcdStore {
        self.fence = Some(Fence {
            key: leader_key.to_string(),
            identity: identity.to_string(),
        });
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Runs `txn` with the fence's comparison added; tells a lost fence from a lost race.
    fn write(
        &self,
        mut compare: Vec<serde_json::Value>,
        ops: Vec<serde_json::Value>,
    ) -> Result<bool, StoreError> {
        if let Some(fence) = &self.fence {
            compare.push(value_is(&fence.key, &fence.identity));
        }
        if self.client.txn(compare, ops).map_err(io)? {
            return Ok(true);
        }
        if let Some(fence) = &self.fence {
            let holder = self.client.get(&fence.key).map_err(io)?;
            if holder.as_ref().map(|(v, _)| v.as_str()) != Some(fence.identity.as_str()) {
                return Err(StoreError::NotLeader {
                    reason: format!(
                        "this cutover ({}) is not the leader (the leader key {} holds {}); the leader writes the state",
                        fence.identity,
                        fence.key,
                        holder.map_or_else(|| "nothing".to_string(), |(v, _)| format!("{v:?}"))
                    ),
                });
            }
        }
        Ok(false)
    }

    fn read_json<T: DeserializeOwned>(&self, key: &str, app: &str) -> Result<Option<(T, i64)>, StoreError> {
        let Some((text, revision)) = self.client.get(key).map_err(io)? else {
            return Ok(None);
        };
        let value = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            app: app.to_string(),
            reason: format!("etcd key {key}: {e}; restore it from a backup or delete it"),
        })?;
        Ok(Some((value, revision)))
    }

    /// Every value under `prefix` from `from` on, parsed, in key order, until `keep` has
    /// accepted `limit` of them.
    fn scan<T: DeserializeOwned>(
        &self,
        prefix: &str,
        from: &str,
        limit: usize,
        app: &str,
        mut keep: impl FnMut(&T) -> bool,
    ) -> Result<Vec<T>, StoreError> {
        let mut out = Vec::new();
        let mut from = from.to_string();
        let mut revision = 0;
        while out.len() < limit {
            let (page, at) = self
                .client
                .range(prefix, &from, PAGE, false, revision)
                .map_err(io)?;
            // Every page at the revision of the first: one consistent reading.
            revision = at;
            let full = page.len() == PAGE;
            for kv in &page {
                let value: T = serde_json::from_str(&kv.value).map_err(|e| StoreError::Corrupt {
                    app: app.to_string(),
                    reason: format!("etcd key {}: {e}", kv.key),
                })?;
                if keep(&value) {
                    out.push(value);
                    if out.len() == limit {
                        break;
                    }
                }
            }
            match page.last() {
                Some(last) if full => from = format!("{}\0", last.key),
                _ => break,
            }
        }
        Ok(out)
    }

    fn to_json<T: Serialize>(value: &T, app: &str) -> Result<String, StoreError> {
        serde_json::to_string(value).map_err(|e| StoreError::Unstorable {
            app: app.to_string(),
            reason: e.to_string(),
        })
    }

    fn lost_race(what: &str) -> StoreError {
        StoreError::Io(format!(
            "{what}: other writers kept changing it ({WRITE_ATTEMPTS} attempts); two controllers may be running without leader election"
        ))
    }
}

impl Store for EtcdStore {
    fn load(&self, app: &str) -> Result<Option<AppState>, StoreError> {
        Ok(self
            .read_json::<AppState>(&self.key(&format!("apps/{app}/state")), app)?
            .map(|(s, _)| s))
    }

    fn apps(&self) -> Result<Vec<String>, StoreError> {
        let prefix = self.key("appnames/");
        let names = self.client.range_all(&prefix, 0).map_err(io)?;
        Ok(names
            .into_iter()
            .map(|kv| kv.key[prefix.len()..].to_string())
            .collect())
    }

    fn commit_ending(
        &self,
        state: &AppState,
        events: &[Event],
        ended: &[Rollout],
    ) -> Result<Vec<StoredEvent>, StoreError> {
        check_commit(state, events, ended)?;
        let app = &state.app;
        let state_key = self.key(&format!("apps/{app}/state"));
        let events_prefix = self.key(&format!("apps/{app}/events/"));
        let state_json = Self::to_json(state, app)?;
        for _ in 0..WRITE_ATTEMPTS {
            let revision = self.client.get(&state_key).map_err(io)?.map_or(0, |(_, r)| r);
            let (last, _) = self
                .client
                .range(&events_prefix, &events_prefix, 1, true, 0)
                .map_err(io)?;
            let last_seq: u64 = last
                .first()
                .and_then(|kv| kv.key[events_prefix.len()..].parse().ok())
                .unwrap_or(0);
            let stored: Vec<StoredEvent> = events
                .iter()
                .zip(last_seq + 1..)
                .map(|(event, seq)| StoredEvent {
                    seq,
                    app: app.clone(),
                    event: event.clone(),
                })
                .collect();
            let mut ops = vec![
                put(&state_key, &state_json),
                put(&self.key(&format!("appnames/{app}")), ""),
            ];
            for e in &stored {
                ops.push(put(
                    &format!("{events_prefix}{}", seq_key(e.seq)),
                    &Self::to_json(e, app)?,
                ));
            }
            for r in ended.iter().chain(&state.rollout) {
                let key = self.key(&format!("apps/{app}/rollouts/{}", seq_key(r.id)));
                ops.push(put(&key, &Self::to_json(r, app)?));
            }
            if self.write(vec![mod_revision_is(&state_key, revision)], ops)? {
                return Ok(stored);
            }
            back_off();
        }
        Err(Self::lost_race(&format!("saving the state of app {app}")))
    }

    fn events(
        &self,
        app: &str,
        rollout_id: Option<u64>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let prefix = self.key(&format!("apps/{app}/events/"));
        let from = format!("{prefix}{}", seq_key(after.saturating_add(1)));
        self.scan(&prefix, &from, limit, app, |e: &StoredEvent| {
            rollout_id.is_none() || e.event.rollout_id == rollout_id
        })
    }

    fn rollouts(&self, app: &str, limit: usize) -> Result<Vec<Rollout>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let prefix = self.key(&format!("apps/{app}/rollouts/"));
        let (page, _) = self.client.range(&prefix, &prefix, limit, true, 0).map_err(io)?;
        page.iter()
            .map(|kv| {
                serde_json::from_str(&kv.value).map_err(|e| StoreError::Corrupt {
                    app: app.to_string(),
                    reason: format!("etcd key {}: {e}", kv.key),
                })
            })
            .collect()
    }

    fn flags(&self) -> Result<FlagSet, StoreError> {
        let revision_key = self.key("flags/revision");
        let prefix = self.key("flags/live/");
        // The set's revision and its flags, read at one etcd revision.
        let (found, at) = self
            .client
            .range(&revision_key, &revision_key, 1, false, 0)
            .map_err(io)?;
        let revision = found.first().and_then(|kv| kv.value.parse().ok()).unwrap_or(0);
        let flags = self
            .client
            .range_all(&prefix, at)
            .map_err(io)?
            .iter()
            .map(|kv| {
                serde_json::from_str::<Flag>(&kv.value).map_err(|e| StoreError::Corrupt {
                    app: "(flags)".into(),
                    reason: format!("etcd key {}: {e}", kv.key),
                })
            })
            .collect::<Result<Vec<Flag>, StoreError>>()?;
        Ok(FlagSet { revision, flags })
    }

    fn change_flag(&self, change: &FlagChange) -> Result<FlagChangeRecord, StoreError> {
        check_change(change)?;
        let key = change.key.as_str();
        let revision_key = self.key("flags/revision");
        let live_key = self.key(&format!("flags/live/{key}"));
        let last_key = self.key(&format!("flags/last/{key}"));
        for _ in 0..WRITE_ATTEMPTS {
            let (set_revision, set_mod) = match self.client.get(&revision_key).map_err(io)? {
                Some((v, m)) => (v.parse::<u64>().unwrap_or(0), m),
                None => (0, 0),
            };
            let before: Option<Flag> = self.read_json(&live_key, "(flags)")?.map(|(f, _)| f);
            let last_revision = self
                .client
                .get(&last_key)
                .map_err(io)?
                .and_then(|(v, _)| v.parse().ok())
                .unwrap_or(0);
            let planned = plan_change(change, before.as_ref(), last_revision)?;
            let next = set_revision + 1;
            let record = FlagChangeRecord {
                seq: next,
                key: key.to_string(),
                at: change.at,
                who: change.who.clone(),
                why: change.why.clone(),
                before: before.clone(),
                after: planned.after.clone(),
            };
            let mut ops = vec![
                put(&revision_key, &next.to_string()),
                put(&last_key, &planned.revision.to_string()),
                put(
                    &self.key(&format!("flags/audit/{}", seq_key(next))),
                    &Self::to_json(&record, "(flags)")?,
                ),
            ];
            match &planned.after {
                Some(after) => ops.push(put(&live_key, &encode_flag(after)?)),
                None => ops.push(delete(&live_key)),
            }
            if self.write(vec![mod_revision_is(&revision_key, set_mod)], ops)? {
                return Ok(record);
            }
            back_off();
        }
        Err(Self::lost_race(&format!("changing flag {key}")))
    }

    fn flag_audit(
        &self,
        key: Option<&str>,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<FlagChangeRecord>, StoreError> {
        let prefix = self.key("flags/audit/");
        let from = format!("{prefix}{}", seq_key(after_seq.saturating_add(1)));
        self.scan(&prefix, &from, limit, "(flags)", |r: &FlagChangeRecord| {
            key.is_none_or(|k| r.key == k)
        })
    }

    fn ramps(&self) -> Result<Vec<Ramp>, StoreError> {
        let prefix = self.key("ramps/");
        let all: Vec<Ramp> = self.scan(&prefix, &prefix, usize::MAX, "(flags)", |_| true)?;
        // Keys sort by flag, then id: the last of each flag is its latest.
        let mut latest: std::collections::BTreeMap<String, Ramp> = std::collections::BTreeMap::new();
        for ramp in all {
            latest.insert(ramp.flag.clone(), ramp);
        }
        Ok(latest.into_values().collect())
    }

    fn save_ramp(&self, ramp: &Ramp) -> Result<(), StoreError> {
        let json = encode_ramp(ramp)?;
        let key = self.key(&format!("ramps/{}/{}", ramp.flag, seq_key(ramp.id)));
        if self.write(Vec::new(), vec![put(&key, &json)])? {
            Ok(())
        } else {
            Err(StoreError::Io(format!(
                "saving ramp {} of flag {} was not applied",
                ramp.id, ramp.flag
            )))
        }
    }
}
