//! Following every key under a prefix, for proxies that route by tables kept in etcd.
//!
//! [`follow`] lists the prefix (a consistent snapshot at one revision), then watches it from the
//! next revision and hands the whole map, with the revision it is current at, to its callback
//! after every change: a follower applies a table as a whole, never a half-changed one.
//!
//! - A watch cut off (an etcd member died or restarted, the connection broke) is resumed from the
//!   revision after the last one seen, on the next endpoint: no change is missed or applied twice.
//! - A watch that etcd cancels because the revision it would resume from was compacted away
//!   is followed by a fresh list: the follower never keeps a map older than what it could have
//!   known, silently.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::client::{b64, number, prefix_end, unb64, Client, Connection};

/// Pause before the next attempt after a failure, doubling up to [`MAX_BACK_OFF`].
const FIRST_BACK_OFF: Duration = Duration::from_millis(100);
const MAX_BACK_OFF: Duration = Duration::from_secs(2);

/// The keys under the prefix (without it) and their values, as of `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: i64,
    pub keys: BTreeMap<String, String>,
    /// How many times the follower had to list again because its resume point was compacted.
    pub relists: u64,
    /// The keys the last change touched; `None` after a listing, when any key may have changed.
    /// Lets a follower of many keys update its own copy instead of copying the whole map.
    pub changed: Option<Vec<String>>,
}

fn text(value: Option<&Value>) -> String {
    unb64(value.and_then(Value::as_str).unwrap_or(""))
}

/// How a watch ended.
enum WatchEnd {
    /// etcd cancelled it: the resume revision was compacted; list again.
    Compacted,
    /// The connection ended or failed; resume from the next revision.
    Broken(String),
    /// The callback asked to stop.
    Stopped,
}

/// Follows `prefix` on the cluster at `endpoints` until `on_change` returns `false`; see the
/// module docs. `on_change` is called with the first snapshot and after every change.
pub async fn follow(client: &Client, prefix: &str, mut on_change: impl FnMut(&Snapshot) -> bool) {
    let http = client.connection().clone();
    let endpoints = client.endpoints().to_vec();
    let range_end = prefix_end(prefix);
    let mut endpoint = 0usize;
    let mut back_off = FIRST_BACK_OFF;
    let mut snapshot: Option<Snapshot> = None;
    let mut relists = 0;
    loop {
        let base = endpoints[endpoint % endpoints.len().max(1)]
            .trim_end_matches('/')
            .to_string();
        // A snapshot to start from: after a start or a compaction.
        let mut current = match snapshot.take() {
            Some(s) => s,
            None => match list(&http, &base, prefix, &range_end).await {
                Ok((revision, keys)) => {
                    let s = Snapshot {
                        revision,
                        keys,
                        relists,
                        changed: None,
                    };
                    if !on_change(&s) {
                        return;
                    }
                    back_off = FIRST_BACK_OFF;
                    s
                }
                Err(e) => {
                    tracing::warn!(endpoint = %base, error = %e, "etcd follower: listing failed; trying the next endpoint");
                    endpoint += 1;
                    tokio::time::sleep(back_off).await;
                    back_off = (back_off * 2).min(MAX_BACK_OFF);
                    continue;
                }
            },
        };
        match watch(&http, &base, prefix, &range_end, &mut current, &mut on_change).await {
            WatchEnd::Stopped => return,
            WatchEnd::Compacted => {
                relists += 1;
                tracing::warn!(
                    revision = current.revision,
                    "etcd follower: the revision to resume from was compacted; listing again"
                );
                snapshot = None;
            }
            WatchEnd::Broken(why) => {
                tracing::warn!(endpoint = %base, error = %why, revision = current.revision,
                    "etcd follower: the watch broke; resuming from the next revision on the next endpoint");
                endpoint += 1;
                snapshot = Some(current);
                tokio::time::sleep(back_off).await;
                back_off = (back_off * 2).min(MAX_BACK_OFF);
            }
        }
    }
}

async fn list(
    http: &Connection,
    base: &str,
    prefix: &str,
    range_end: &str,
) -> Result<(i64, BTreeMap<String, String>), String> {
    let body = json!({"key": b64(prefix), "range_end": b64(range_end)});
    let answer: Value = tokio::time::timeout(Duration::from_secs(5), http.post(base, "/v3/kv/range", &body))
        .await
        .map_err(|_| format!("{base}: no answer in 5 s"))??
        .error_for_status()
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let revision = number(answer.pointer("/header/revision"));
    let keys = answer
        .get("kvs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|kv| {
            let key = text(kv.get("key"));
            (
                key[prefix.len().min(key.len())..].to_string(),
                text(kv.get("value")),
            )
        })
        .collect();
    Ok((revision, keys))
}

async fn watch(
    http: &Connection,
    base: &str,
    prefix: &str,
    range_end: &str,
    current: &mut Snapshot,
    on_change: &mut impl FnMut(&Snapshot) -> bool,
) -> WatchEnd {
    let request = json!({"create_request": {
        "key": b64(prefix),
        "range_end": b64(range_end),
        "start_revision": (current.revision + 1).to_string(),
    }});
    let response = match http.post(base, "/v3/watch", &request).await {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => return WatchEnd::Broken(format!("watch answered {}", r.status())),
        Err(e) => return WatchEnd::Broken(e),
    };
    let mut body = response.bytes_stream();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return WatchEnd::Broken(e.to_string()),
        };
        pending.extend_from_slice(&chunk);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let Ok(message) = serde_json::from_slice::<Value>(&line) else {
                continue;
            };
            let Some(result) = message.get("result") else {
                return WatchEnd::Broken(format!("watch error: {message}"));
            };
            if number(result.get("compact_revision")) > 0 {
                return WatchEnd::Compacted;
            }
            if result.get("canceled").and_then(Value::as_bool) == Some(true) {
                let reason = result.get("cancel_reason").and_then(Value::as_str).unwrap_or("");
                if reason.contains("token") || reason.contains("permission") || reason.contains("auth") {
                    http.forget_token();
                }
                return WatchEnd::Broken(format!("watch cancelled: {result}"));
            }
            let events = result.get("events").and_then(Value::as_array);
            let Some(events) = events.filter(|e| !e.is_empty()) else {
                continue;
            };
            let mut changed = Vec::with_capacity(events.len());
            for event in events {
                let kv = event.get("kv").cloned().unwrap_or(Value::Null);
                let key = text(kv.get("key"));
                let key = key[prefix.len().min(key.len())..].to_string();
                changed.push(key.clone());
                if event.get("type").and_then(Value::as_str) == Some("DELETE") {
                    current.keys.remove(&key);
                } else {
                    current.keys.insert(key, text(kv.get("value")));
                }
                current.revision = current.revision.max(number(kv.get("mod_revision")));
            }
            // Not the header's revision: while catching up, etcd sends events in batches with
            // the current revision in the header, and resuming from it after a break would skip
            // the events of the batches not yet received.
            current.changed = Some(changed);
            if !on_change(current) {
                return WatchEnd::Stopped;
            }
        }
    }
    WatchEnd::Broken("the watch stream ended".into())
}
