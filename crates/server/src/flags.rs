//! The flag service: flags kept in the store, evaluated from an in-memory index that every change
//! replaces whole (the next evaluation sees a change entirely or not at all), served to
//! OpenFeature clients over OFREP on their own listener with read-only API keys, and changed
//! through the admin API with an audit record per change.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cutover_core::{Clock, ValidationErrors};
use cutover_flags::ofrep::{self, FlagIndex, Reply};
use cutover_flags::Flag;
use cutover_store::{FlagChange, FlagChangeRecord, Store, StoreError};
use tokio::sync::broadcast;

/// Where OFREP clients are told to listen for changes.
pub const EVENTS_PATH: &str = "/ofrep/v1/events";

/// The shortest API key accepted, as for the admin token.
pub const MIN_KEY_LEN: usize = crate::MIN_TOKEN_LEN;

#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    #[error("{0}")]
    Invalid(ValidationErrors),
    #[error("no flag {0:?}; `cutover flag list` shows the flags")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A client of the OFREP listener: a name (for logs) and its key (never shown).
#[derive(Clone)]
pub struct ApiKey {
    pub name: String,
    key: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("keys file {path}: {source}; check the path and its permissions")]
    Io { path: String, source: std::io::Error },
    #[error(
        "keys file {path} can be read by others (mode {mode:o}): anyone on this host could \
         read the keys; run `chmod 600 {path}`"
    )]
    Open { path: String, mode: u32 },
    #[error("keys file {path}:{line}: {problem}")]
    Line {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("keys file {path} has no key; add a line `NAME KEY` (an OFREP API keys file that is missing is generated)")]
    Empty { path: String },
}

/// The API keys of `path` (`NAME KEY` per line, `#` comments), or a new file with one key named
/// `default` when there is none. The file must be private, like the admin token's.
pub fn load_api_keys(path: &Path) -> Result<(Vec<ApiKey>, bool), KeysError> {
    let display = path.display().to_string();
    let io = |source| KeysError::Io {
        path: display.clone(),
        source,
    };
    let text = match crate::read_secret_file(path).map_err(io)? {
        crate::SecretFile::Text(text) => text,
        crate::SecretFile::Open { mode } => return Err(KeysError::Open { path: display, mode }),
        crate::SecretFile::Missing => {
            let key = crate::random_secret();
            crate::create_secret_file(path, &format!("default {key}")).map_err(io)?;
            return Ok((
                vec![ApiKey {
                    name: "default".into(),
                    key,
                }],
                true,
            ));
        }
    };
    parse_keys(&text, &display).map(|keys| (keys, false))
}

/// Named tokens from `path` (`NAME TOKEN` per line, `#` comments), which must exist and be
/// private: the admin API's further tokens, each recorded by name in the flag audit.
pub fn load_named_tokens(path: &Path) -> Result<Vec<ApiKey>, KeysError> {
    let display = path.display().to_string();
    match crate::read_secret_file(path).map_err(|source| KeysError::Io {
        path: display.clone(),
        source,
    })? {
        crate::SecretFile::Text(text) => parse_keys(&text, &display),
        crate::SecretFile::Open { mode } => Err(KeysError::Open { path: display, mode }),
        crate::SecretFile::Missing => Err(KeysError::Io {
            path: display,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        }),
    }
}

/// The name of the key of `keys` that `given` is. Every key is compared, in constant time each,
/// so timing tells nothing of which matched.
pub fn matching_key<'k>(keys: &'k [ApiKey], given: &str) -> Option<&'k str> {
    let mut found = None;
    for k in keys {
        if constant_time_eq::constant_time_eq(given.as_bytes(), k.key.as_bytes()) {
            found = Some(k.name.as_str());
        }
    }
    found
}

/// `NAME KEY` lines: every key at least [`MIN_KEY_LEN`] characters, names unique, at least one.
fn parse_keys(text: &str, display: &str) -> Result<Vec<ApiKey>, KeysError> {
    let display = display.to_string();
    let mut keys: Vec<ApiKey> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let problem = |problem: String| KeysError::Line {
            path: display.clone(),
            line: i + 1,
            problem,
        };
        let mut parts = line.split_whitespace();
        let (Some(name), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(problem("write `NAME KEY`: a name, a space, the key".into()));
        };
        if key.chars().count() < MIN_KEY_LEN {
            return Err(problem(format!(
                "the key of {name} has fewer than {MIN_KEY_LEN} characters; use a longer one \
                 (e.g. `openssl rand -hex 32`)"
            )));
        }
        if keys.iter().any(|k| k.name == name) {
            return Err(problem(format!(
                "{name} is named twice; give each key its own name (audit records carry it)"
            )));
        }
        keys.push(ApiKey {
            name: name.to_string(),
            key: key.to_string(),
        });
    }
    if keys.is_empty() {
        return Err(KeysError::Empty { path: display });
    }
    Ok(keys)
}

/// The default place of the API keys file: beside the admin token.
pub fn default_keys_path(config_dir: &Path) -> PathBuf {
    config_dir.join(".cutover").join("flags.keys")
}

#[derive(Debug)]
pub struct FlagService {
    index: ArcSwap<FlagIndex>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    changes: broadcast::Sender<u64>,
    keys: Vec<ApiKey>,
    /// Serialises changes, so the index is always reloaded after the change it follows.
    writing: tokio::sync::Mutex<()>,
    /// When each flag last changed, from the audit: how long a settled flag has been settled.
    last_changed: std::sync::Mutex<std::collections::HashMap<String, cutover_core::Timestamp>>,
}

/// A flag that should leave the code, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StaleFlag {
    pub key: String,
    pub owner: String,
    #[serde(flatten)]
    pub staleness: cutover_flags::hygiene::Staleness,
    pub message: String,
}

impl FlagService {
    pub fn load(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        keys: Vec<ApiKey>,
    ) -> Result<Arc<Self>, StoreError> {
        let set = store.flags()?;
        let mut last_changed = std::collections::HashMap::new();
        let mut after = 0;
        loop {
            let page = store.flag_audit(None, after, 1000)?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for record in &page {
                last_changed.insert(record.key.clone(), record.at);
            }
        }
        Ok(Arc::new(FlagService {
            index: ArcSwap::from_pointee(FlagIndex::new(set.revision, set.flags)),
            store,
            clock,
            changes: broadcast::channel(64).0,
            keys,
            writing: tokio::sync::Mutex::new(()),
            last_changed: std::sync::Mutex::new(last_changed),
        }))
    }

    /// The flags that should leave the code now: past their expiry date, or settled on one
    /// variant for `settled_after_days`.
    pub fn stale(&self, settled_after_days: u32) -> Vec<StaleFlag> {
        let now = self.clock.now();
        let today = cutover_flags::hygiene::date_of(now);
        // Read under the lock, not copied: a few map lookups, nothing that waits.
        let last_changed = self
            .last_changed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.index()
            .flags()
            .filter_map(|flag| {
                let staleness = cutover_flags::hygiene::staleness(
                    flag,
                    last_changed.get(&flag.key).copied(),
                    now,
                    today,
                    settled_after_days,
                )?;
                Some(StaleFlag {
                    key: flag.key.clone(),
                    owner: flag.owner.clone(),
                    message: staleness.describe(),
                    staleness,
                })
            })
            .collect()
    }

    /// The flags evaluations read now.
    pub fn index(&self) -> Arc<FlagIndex> {
        self.index.load_full()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn audit(
        &self,
        key: Option<&str>,
        after: u64,
        limit: usize,
    ) -> Result<Vec<FlagChangeRecord>, StoreError> {
        self.store.flag_audit(key, after, limit)
    }

    /// Replaces (or, with `after = None`, archives) flag `key`: validated, stored with its audit
    /// record, then made visible to every evaluation at once, and announced to OFREP clients.
    pub async fn change(
        &self,
        key: &str,
        after: Option<Flag>,
        expected_revision: Option<u64>,
        who: &str,
        why: &str,
    ) -> Result<FlagChangeRecord, FlagError> {
        if let Some(flag) = &after {
            let mut problems = flag.problems("flag");
            if flag.key != key {
                problems.push(cutover_core::FieldError::new(
                    "flag.key",
                    format!("{:?} differs from the flag named in the path ({key:?})", flag.key),
                ));
            }
            ValidationErrors::check(problems).map_err(FlagError::Invalid)?;
        }
        let _writing = self.writing.lock().await;
        let record = self.store.change_flag(&FlagChange {
            key: key.to_string(),
            after,
            expected_revision,
            who: who.to_string(),
            why: why.to_string(),
            at: self.clock.now(),
        })?;
        self.last_changed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.to_string(), record.at);
        let set = self.store.flags()?;
        let revision = set.revision;
        self.index.store(Arc::new(FlagIndex::new(revision, set.flags)));
        let _ = self.changes.send(revision);
        tracing::info!(flag = key, who, why, revision, "flag changed");
        Ok(record)
    }

    /// Sets `enabled` of flag `key` (the kill switch) and records why.
    pub async fn set_enabled(
        &self,
        key: &str,
        enabled: bool,
        who: &str,
        why: &str,
    ) -> Result<FlagChangeRecord, FlagError> {
        let mut flag = self
            .index()
            .get(key)
            .cloned()
            .ok_or_else(|| FlagError::NotFound(key.to_string()))?;
        let revision = flag.revision;
        flag.enabled = enabled;
        self.change(key, Some(flag), Some(revision), who, why).await
    }

    /// The name of the API key in `headers` (`X-API-Key`, or `Authorization: Bearer`).
    fn client(&self, headers: &HeaderMap) -> Option<&str> {
        let given = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .or_else(|| crate::admin::bearer_token(headers))?;
        matching_key(&self.keys, given)
    }
}

impl cutover_proxy::FlagSource for FlagService {
    fn index(&self) -> Arc<FlagIndex> {
        FlagService::index(self)
    }
}

/// The OFREP listener's routes.
pub fn ofrep_router(service: Arc<FlagService>) -> Router {
    Router::new()
        .route("/ofrep/v1/evaluate/flags/{key}", post(evaluate_one))
        .route("/ofrep/v1/evaluate/flags", post(evaluate_all))
        .route(EVENTS_PATH, get(events))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({ "errorDetails": "not an OFREP endpoint; see /ofrep/v1/evaluate/flags" })),
            )
        })
        .with_state(service)
}

fn unauthorized(headers: &HeaderMap) -> Response {
    let details = if headers.contains_key("x-api-key") || headers.contains_key(header::AUTHORIZATION) {
        "the API key is wrong"
    } else {
        "send an API key of this flag service in X-API-Key (or Authorization: Bearer)"
    };
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({ "errorDetails": details })),
    )
        .into_response()
}

/// The request body, at most one byte past the limit (so an oversized one is recognised).
async fn body_of(request: Request) -> Vec<u8> {
    match axum::body::to_bytes(request.into_body(), ofrep::MAX_REQUEST_BYTES + 1).await {
        Ok(bytes) => bytes.to_vec(),
        // Longer than the limit: a body the evaluation refuses with its size.
        Err(_) => vec![b' '; ofrep::MAX_REQUEST_BYTES + 1],
    }
}

fn reply(r: Reply) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match r.body {
        Some(body) => (
            status,
            [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            body,
        )
            .into_response(),
        None => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = status;
            response
        }
    };
    if let Some(etag) = r.etag.and_then(|e| HeaderValue::from_str(&e).ok()) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

async fn evaluate_one(
    State(service): State<Arc<FlagService>>,
    UrlPath(key): UrlPath<String>,
    request: Request,
) -> Response {
    if service.client(request.headers()).is_none() {
        return unauthorized(request.headers());
    }
    let body = body_of(request).await;
    reply(ofrep::evaluate_one(&service.index(), &key, &body))
}

async fn evaluate_all(State(service): State<Arc<FlagService>>, request: Request) -> Response {
    if service.client(request.headers()).is_none() {
        return unauthorized(request.headers());
    }
    let if_none_match = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = body_of(request).await;
    reply(ofrep::evaluate_all(
        &service.index(),
        &body,
        if_none_match.as_deref(),
        Some(EVENTS_PATH),
    ))
}

/// Change notifications (OFREP event streams): one `refetchEvaluation` per change of the flag
/// set, carrying its revision as the ETag hint.
async fn events(State(service): State<Arc<FlagService>>, headers: HeaderMap) -> Response {
    if service.client(&headers).is_none() {
        return unauthorized(&headers);
    }
    let receiver = service.subscribe();
    // A comment first: the client knows it is subscribed (and a proxy in between flushes).
    let greeting = futures_util::stream::once(async {
        Ok::<_, Infallible>(SseEvent::default().comment("subscribed to flag changes"))
    });
    let changes = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let data = match receiver.recv().await {
            Ok(revision) => serde_json::json!({ "type": "refetchEvaluation", "etag": revision.to_string() }),
            // Missed some: one re-fetch covers them all.
            Err(broadcast::error::RecvError::Lagged(_)) => serde_json::json!({ "type": "refetchEvaluation" }),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        let event = SseEvent::default().event("message").data(data.to_string());
        Some((Ok::<_, Infallible>(event), receiver))
    });
    let stream = futures_util::StreamExt::chain(greeting, changes);
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
