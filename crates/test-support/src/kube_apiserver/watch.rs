//! Watches: a stream of JSON lines `{"type":..,"object":..}`.
//!
//! The start is taken under the store's lock together with the subscription to live changes,
//! so a watch neither misses nor repeats a change: from resource version N it replays the
//! history after N; with none (or "0") it first sends ADDED for every current object; with
//! `sendInitialEvents=true` it does the same and then a BOOKMARK marked
//! `k8s.io/initial-events-end`. A start older than the last compaction, or a watch that falls
//! too far behind, gets one ERROR event with a 410 `Expired` Status, and the stream ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::resources::RESOURCES;
use super::selector::{FieldSelector, LabelSelector};
use super::store::{Event, EventType};
use super::Shared;

/// How often a watch that asked for bookmarks gets one.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

pub(crate) struct WatchRequest {
    pub res: usize,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    pub resource_version: Option<String>,
    pub bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Option<Duration>,
}

impl WatchRequest {
    fn selects(&self, object: &Value) -> bool {
        self.labels.matches(&object["metadata"]["labels"]) && self.fields.matches(object)
    }

    /// How this watch sees a change, if at all: a modification that moves an object into or
    /// out of the selection is an ADDED or a DELETED, as on a real server.
    fn view<'e>(&self, event: &'e Event) -> Option<(&'static str, &'e Value)> {
        if event.res != self.res || self.namespace.as_ref().is_some_and(|ns| *ns != event.namespace) {
            return None;
        }
        let now = self.selects(&event.object);
        let kind = match event.kind {
            EventType::Added | EventType::Deleted => now.then_some(event.kind)?,
            EventType::Modified => {
                let before = event.previous.as_ref().is_some_and(|p| self.selects(p));
                match (before, now) {
                    (true, true) => EventType::Modified,
                    (false, true) => EventType::Added,
                    (true, false) => EventType::Deleted,
                    (false, false) => return None,
                }
            }
        };
        Some((kind.as_str(), &event.object))
    }

    fn bookmark(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let rt = &RESOURCES[self.res];
        let mut object = json!({
            "kind": rt.kind,
            "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
        });
        if initial_events_end {
            object["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line("BOOKMARK", &object)
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut text = format!("{{\"type\":\"{kind}\",\"object\":{object}}}");
    text.push('\n');
    Bytes::from(text)
}

fn expired(requested: u64, oldest: u64) -> Bytes {
    let status = ApiError::new(
        410,
        "Expired",
        format!("too old resource version: {requested} ({oldest})"),
    )
    .status();
    line("ERROR", &status)
}

/// Starts a watch; the lines arrive on the returned channel, which closes when the watch ends.
pub(crate) fn start(shared: &Arc<Shared>, req: WatchRequest) -> Result<mpsc::Receiver<Bytes>, ApiError> {
    let from: Option<u64> = match req.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?,
        ),
    };
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let mut first: Vec<Bytes> = Vec::new();
    let (live, mut last_rv) = {
        let state = shared.lock();
        match from {
            Some(n) if n < state.compacted && !req.send_initial_events => {
                first.push(expired(n, state.compacted));
                // Send it and end.
                let _ = tx.try_send(first.remove(0));
                return Ok(rx);
            }
            Some(n) if !req.send_initial_events => {
                for event in state.history.iter().filter(|e| e.rv > n) {
                    if let Some((kind, object)) = req.view(event) {
                        first.push(line(kind, object));
                    }
                }
            }
            _ => {
                for object in state.list(req.res, req.namespace.as_deref()) {
                    if req.selects(object) {
                        first.push(line("ADDED", object));
                    }
                }
                if req.send_initial_events {
                    first.push(req.bookmark(state.rv, true));
                }
            }
        }
        (state.live.subscribe(), state.rv)
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let mut live = live;
        let mut shutdown = shared.shutdown.subscribe();
        for line in first {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = req
            .timeout
            .and_then(|t| tokio::time::Instant::now().checked_add(t));
        let mut bookmarks = tokio::time::interval(BOOKMARK_INTERVAL);
        bookmarks.tick().await;
        loop {
            let until_deadline = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                received = live.recv() => match received {
                    Ok(event) => {
                        if event.rv <= last_rv {
                            continue;
                        }
                        last_rv = event.rv;
                        if let Some((kind, object)) = req.view(&event) {
                            if tx.send(line(kind, object)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        let oldest = shared.lock().compacted;
                        let _ = tx.send(expired(last_rv, oldest)).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = bookmarks.tick(), if req.bookmarks => {
                    // Everything up to `current` is in the channel already (changes are sent
                    // under the lock), so after draining it the bookmark is exact.
                    let current = shared.lock().rv;
                    loop {
                        match live.try_recv() {
                            Ok(event) => {
                                if event.rv <= last_rv {
                                    continue;
                                }
                                last_rv = event.rv;
                                if let Some((kind, object)) = req.view(&event) {
                                    if tx.send(line(kind, object)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Lagged(_)) => {
                                let oldest = shared.lock().compacted;
                                let _ = tx.send(expired(last_rv, oldest)).await;
                                return;
                            }
                            Err(TryRecvError::Closed) => return,
                        }
                    }
                    last_rv = last_rv.max(current);
                    if tx.send(req.bookmark(last_rv, false)).await.is_err() {
                        return;
                    }
                }
                _ = until_deadline => return,
                _ = tx.closed() => return,
                _ = shutdown.changed() => return,
            }
        }
    });
    Ok(rx)
}
