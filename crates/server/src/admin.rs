//! The admin API: JSON over HTTP, loopback by default, a bearer token for every change.
//!
//! | method | path | what |
//! |---|---|---|
//! | GET | `/healthz` | liveness of the server |
//! | GET | `/metrics` | Prometheus text of every app |
//! | GET | `/v1/apps` | every app with its route table |
//! | GET | `/v1/apps/{app}/routes` | the app's route table and its generation |
//! | PUT | `/v1/apps/{app}/routes` | replace the route table (token) |
//! | GET | `/v1/apps/{app}/metrics` | per-slot counters, quantiles and backend health |
//! | POST | `/v1/apps/{app}/deploy` | start a rollout (token); body `{"version", "command"?, "env"?, "secrets"?, "instances"?, "force"?}` |
//! | GET | `/v1/apps/{app}/status` | phase, weights, per-slot live metrics, latest decisions |
//! | POST | `/v1/apps/{app}/promote` (`pause`, `resume`, `abort`, `rollback`) | operator commands (token); `?rollout=ID`: only if `ID` is still the current rollout, else 409 |
//! | GET | `/v1/apps/{app}/history` | past rollouts, newest first (`?limit=`) |
//! | GET | `/v1/apps/{app}/events` | the event log (`?after=SEQ&rollout=ID&limit=`) |
//! | GET | `/v1/apps/{app}/events/stream` | the event log live, as server-sent events (`?after=SEQ`, or `Last-Event-ID`) |
//! | GET | `/`, `/ui/` | the dashboard ([`crate::dashboard`], `docs/dashboard.md`) |
//! | GET | `/v1/status` | every app at a glance ([`crate::api::Overview`]) |
//! | GET | `/v1/apps/{app}/series` | per-slot traffic of the last ten minutes, a point a second |
//! | GET | `/v1/stream` | every app's events and a traffic sample a second, as server-sent events |
//! | GET | `/v1/auth` | 204 with a valid token, 401 without: for the dashboard's token form |
//!
//! The answers are the types of [`crate::api`], which the CLI reads back.
//!
//! A release's environment is never shown, to anyone, token or not: wherever a release appears
//! (status, history, the answers of commands) each value of its `env` reads `"<redacted>"` and
//! only the names show. `env` takes values (`{"DB_PASSWORD": "..."}`); `secrets` takes references
//! that the server resolves each time the instances start (`{"DB_PASSWORD":
//! "file:/run/secrets/db"}` or `"env:DB_PASSWORD"`, a variable of the server's environment), and
//! shows them as given. A deploy whose reference cannot be read now, or that names cutover's own
//! variables (`env:CUTOVER_*`), is refused with 400 naming the `secrets.NAME` field. See
//! [`cutover_core::release`].
//!
//! Errors are JSON: `{"error": "...", "errors": [{"field": "...", "message": "..."}]}` with 400 for
//! invalid input (and no change made), 401 without a valid token, 404 for an unknown app, 409 for
//! a command the current state does not allow (a second deploy, a frozen window, ...).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use cutover_core::rollout::{Command, Rollout};
use cutover_core::{FieldError, Redacted, RouteTable, Slot};
use cutover_proxy::{AppProxy, MetricsSummary};
use serde::{Deserialize, Serialize};

use crate::controller::{Controller, ControllerError, DeployRequest};

#[path = "admin_logs.rs"]
mod admin_logs;

/// What the admin API works on.
#[derive(Debug)]
pub struct AdminState {
    pub apps: BTreeMap<String, Arc<AppProxy>>,
    pub controllers: BTreeMap<String, Arc<Controller>>,
    pub token: String,
    /// Further admin tokens with names (`[admin] tokens_file`), for audit records of who changed
    /// a flag; `token` is named [`ADMIN`].
    pub named_tokens: Vec<crate::flags::ApiKey>,
    /// The flag service, when `[flags]` is configured.
    pub flags: Option<Arc<crate::flags::FlagService>>,
    /// The guarded ramps of flags, with the flag service.
    pub ramps: Option<Arc<crate::ramps::RampRunner>>,
    /// The dashboard's series and live feed.
    pub live: Arc<crate::dashboard::Live>,
    /// The listener is on loopback only: requests must name a loopback host (see
    /// [`crate::dashboard::loopback_host_only`]).
    pub loopback_only: bool,
    /// In a fleet (`[store] kind = "etcd"`): where status reads the proxies.
    pub fleet: Option<FleetHandle>,
}

/// What the admin API needs to show a fleet.
#[derive(Debug, Clone)]
pub struct FleetHandle {
    pub client: cutover_etcd::Client,
    pub keys: crate::fleet::Keys,
    pub lease_ms: u64,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{app}/routes", get(get_routes).put(put_routes))
        .route("/v1/apps/{app}/metrics", get(app_metrics))
        .route("/v1/apps/{app}/deploy", post(deploy))
        .route("/v1/apps/{app}/status", get(status))
        .route("/v1/apps/{app}/history", get(history))
        .route("/v1/apps/{app}/events", get(events))
        .route("/v1/apps/{app}/events/stream", get(event_stream))
        .route("/v1/apps/{app}/logs", get(admin_logs::app_logs))
        .route("/v1/apps/{app}/migrations", get(migrations))
        .route("/v1/apps/{app}/migrations/contract", post(contract_migrations))
        .route("/v1/apps/{app}/migrations/repair", post(repair_migration))
        .route("/v1/apps/{app}/{command}", post(command))
        .route("/v1/flags", get(list_flags))
        .route(
            "/v1/flags/{key}",
            get(get_flag).put(put_flag).delete(archive_flag),
        )
        .route("/v1/flags/{key}/audit", get(flag_audit))
        .route("/v1/flags/{key}/ramp", get(get_ramp).post(start_ramp))
        .route("/v1/flags/{key}/ramp/{command}", post(ramp_command))
        .route("/v1/flags/{key}/{switch}", post(switch_flag))
        .route("/v1/ramps", get(list_ramps))
        .merge(crate::dashboard::routes())
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no such endpoint: {}; the API is under /v1/apps (see the README's admin API)",
                    uri.path()
                ),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::dashboard::loopback_host_only,
        ))
        // Answers echo input (an unknown name in an error): never let a browser sniff them as HTML.
        .layer(axum::middleware::map_response(
            |mut response: Response| async move {
                response.headers_mut().insert(
                    header::X_CONTENT_TYPE_OPTIONS,
                    axum::http::HeaderValue::from_static("nosniff"),
                );
                response
            },
        ))
        .with_state(state)
}

#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    error: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            errors: Vec::new(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

fn find_app(state: &AdminState, name: &str) -> Result<Arc<AppProxy>, ApiError> {
    state.apps.get(name).cloned().ok_or_else(|| {
        let known: Vec<&str> = state.apps.keys().map(String::as_str).collect();
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no app named {name:?}; known apps: {}", known.join(", ")),
        )
    })
}

/// A query string that does not parse is a 400 in JSON like every other API error, naming the
/// parameter, rather than axum's plain-text answer.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q).map_err(|e| {
        let mut error = ApiError::new(StatusCode::BAD_REQUEST, "invalid query string");
        error.errors.push(FieldError::new("query", e.body_text()));
        error
    })
}

/// The token of an `Authorization: Bearer <token>` header, if the request has one.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme is case-insensitive (RFC 9110 §11.1): `bearer` is as good as `Bearer`.
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// The name of the admin token the request carries (for audit records), or 401.
pub(crate) fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<String, ApiError> {
    match bearer_token(headers) {
        Some(t) => {
            // Both are compared whatever the first gave, in constant time each: timing tells
            // nothing of which token matched.
            let main = constant_time_eq::constant_time_eq(t.as_bytes(), state.token.as_bytes());
            let named = crate::flags::matching_key(&state.named_tokens, t);
            named
                .or(main.then_some(ADMIN))
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "the bearer token is wrong; use an admin token of this server",
                    )
                })
        }
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this request needs the admin token (changes, and instance logs): send `Authorization: Bearer <token>`",
        )),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let mut text = cutover_proxy::prometheus::render(state.apps.values().map(|a| a.as_ref()));
    text.push_str(&cutover_proxy::prometheus::render_flags(
        state.apps.values().map(|a| a.as_ref()),
    ));
    if let Some(ramps) = &state.ramps {
        use std::fmt::Write;
        let _ = writeln!(
            text,
            "# HELP cutover_flag_stale 1 for each flag that should leave the code: past its expiry date, or settled on one variant.\n# TYPE cutover_flag_stale gauge"
        );
        for s in ramps.stale() {
            let _ = writeln!(
                text,
                "cutover_flag_stale{{flag=\"{}\",why=\"{}\"}} 1",
                s.key,
                s.staleness.kind()
            );
        }
    }
    text.push_str(&rollout_info(&state).await);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
}

/// Deployment markers: which version each slot runs and in what role, so dashboards and alert
/// rules can tell a regression that came with a deploy.
async fn rollout_info(state: &AdminState) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "# HELP cutover_rollout_info Release in each slot and its role: live, idle, or the phase of the rollout bringing it in.\n# TYPE cutover_rollout_info gauge\n",
    );
    for (name, controller) in &state.controllers {
        let app = controller.state().await;
        let active = app.active_rollout();
        for slot in Slot::ALL {
            let Some(version) = app.slot(slot).version() else {
                continue;
            };
            let phase = match active {
                Some(r) if r.target == slot => r.phase.name(),
                _ if slot == app.live => "live",
                _ => "idle",
            };
            let _ = writeln!(
                out,
                "cutover_rollout_info{{app=\"{name}\",slot=\"{slot}\",version=\"{}\",phase=\"{phase}\"}} 1",
                version.replace('\\', "\\\\").replace('"', "\\\"")
            );
        }
    }
    out
}

#[derive(Debug, Serialize)]
struct RoutesView {
    app: String,
    generation: u64,
    route: RouteTable,
}

fn routes_view(app: &AppProxy) -> RoutesView {
    let table = app.table();
    RoutesView {
        app: app.name.clone(),
        generation: table.generation,
        route: table.route.clone(),
    }
}

async fn list_apps(State(state): State<Arc<AdminState>>) -> Json<Vec<RoutesView>> {
    let mut views: Vec<RoutesView> = state.apps.values().map(|a| routes_view(a)).collect();
    // Apps whose proxy is not this process (an external router, a fleet's proxies): the table
    // their state calls for; generation 0 says no proxy here counts its changes.
    for (name, controller) in &state.controllers {
        if !state.apps.contains_key(name) {
            views.push(RoutesView {
                app: name.clone(),
                generation: 0,
                route: cutover_core::rollout::route_table(&controller.state().await),
            });
        }
    }
    views.sort_by(|a, b| a.app.cmp(&b.app));
    Json(views)
}

async fn get_routes(
    State(state): State<Arc<AdminState>>,
    Path(app): Path<String>,
) -> Result<Json<RoutesView>, ApiError> {
    let app = find_app(&state, &app)?;
    Ok(Json(routes_view(&app)))
}

async fn put_routes(
    State(state): State<Arc<AdminState>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<RoutesView>, ApiError> {
    authorize(&state, &headers)?;
    if state.controllers.contains_key(&app) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("app {app} is managed by its rollouts; use deploy, promote or rollback instead of setting routes"),
        ));
    }
    let app = find_app(&state, &app)?;
    let route: RouteTable = parse_json(&body, "route table")?;
    app.apply(route).map_err(|e| {
        let mut err = ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid route table; nothing was changed",
        );
        err.errors = e.errors;
        err
    })?;
    Ok(Json(routes_view(&app)))
}

#[derive(Debug, Serialize)]
struct SlotMetrics {
    slot: Slot,
    version: String,
    weight_bp: u16,
    metrics: MetricsSummary,
    backends: Vec<BackendView>,
}

#[derive(Debug, Serialize)]
struct BackendView {
    addr: String,
    healthy: bool,
    ejected: bool,
    in_flight: usize,
    idle_connections: usize,
}

async fn app_metrics(
    State(state): State<Arc<AdminState>>,
    Path(app): Path<String>,
) -> Result<Json<Vec<SlotMetrics>>, ApiError> {
    let app = find_app(&state, &app)?;
    let table = app.table();
    Ok(Json(
        table
            .pools
            .iter()
            .map(|p| SlotMetrics {
                slot: p.slot,
                version: p.version.clone(),
                weight_bp: p.weight_bp,
                metrics: p.metrics.snapshot().summary(),
                backends: p
                    .backends
                    .iter()
                    .map(|b| BackendView {
                        addr: b.addr.to_string(),
                        healthy: b.is_healthy(),
                        ejected: b.is_ejected(),
                        in_flight: b.in_flight(),
                        idle_connections: b.idle_connections(),
                    })
                    .collect(),
            })
            .collect(),
    ))
}

fn find_controller(state: &AdminState, name: &str) -> Result<Arc<Controller>, ApiError> {
    if let Some(c) = state.controllers.get(name) {
        return Ok(Arc::clone(c));
    }
    find_app(state, name)?;
    Err(ApiError::new(
        StatusCode::CONFLICT,
        format!("app {name} has no platform: it is routed by its route table only (set [app] platform = \"local\" to deploy)"),
    ))
}

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> Self {
        match e {
            ControllerError::Rejected(_) | ControllerError::Frozen { .. } => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            ControllerError::Invalid(v) => {
                let mut err = ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid deploy request; nothing was started",
                );
                err.errors = v.errors;
                err
            }
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    let deserializer = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let mut err = ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid {what}; nothing was changed"),
        );
        err.errors.push(FieldError::new(
            if field == "." || field == "?" {
                "body".to_string()
            } else {
                field
            },
            inner.to_string(),
        ));
        err
    })
}

#[derive(Debug, Serialize)]
struct Deployed {
    app: String,
    rollout_id: u64,
}

async fn deploy(
    State(state): State<Arc<AdminState>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Deployed>), ApiError> {
    authorize(&state, &headers)?;
    let controller = find_controller(&state, &app)?;
    let request: DeployRequest = parse_json(&body, "deploy request")?;
    let rollout_id = controller.deploy(request).await?;
    Ok((StatusCode::ACCEPTED, Json(Deployed { app, rollout_id })))
}

#[derive(Debug, Deserialize)]
struct CommandQuery {
    /// Act only if this is still the app's current rollout (409 otherwise).
    rollout: Option<u64>,
}

async fn command(
    State(state): State<Arc<AdminState>>,
    Path((app, command)): Path<(String, String)>,
    q: Result<Query<CommandQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<crate::controller::StatusView>, ApiError> {
    let q = query(q)?;
    let command = match command.as_str() {
        "promote" => Command::Promote,
        "pause" => Command::Pause,
        "resume" => Command::Resume,
        "abort" => Command::Abort,
        "rollback" => Command::Rollback,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no command {other:?}; commands are promote, pause, resume, abort and rollback"),
            ))
        }
    };
    authorize(&state, &headers)?;
    let controller = find_controller(&state, &app)?;
    controller.command_for(command, q.rollout).await?;
    Ok(Json(controller.status().await?))
}

async fn migrations(
    State(state): State<Arc<AdminState>>,
    Path(app): Path<String>,
) -> Result<Json<crate::migrations::MigrationsView>, ApiError> {
    let controller = find_controller(&state, &app)?;
    Ok(Json(controller.migrations().await?))
}

#[derive(Debug, Serialize)]
struct Contracted {
    app: String,
    result: String,
}

async fn contract_migrations(
    State(state): State<Arc<AdminState>>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Contracted>, ApiError> {
    authorize(&state, &headers)?;
    let controller = find_controller(&state, &app)?;
    let result = controller.contract().await?.summary;
    Ok(Json(Contracted { app, result }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RepairRequest {
    /// `NNNN_name` or `NNNN`.
    name: String,
    /// Whose directory holds the file as it should be accepted; default: the live release's.
    #[serde(default)]
    version: Option<String>,
}

#[derive(Debug, Serialize)]
struct Repaired {
    app: String,
    repaired: Vec<String>,
}

async fn repair_migration(
    State(state): State<Arc<AdminState>>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Repaired>, ApiError> {
    authorize(&state, &headers)?;
    let controller = find_controller(&state, &app)?;
    let request: RepairRequest = parse_json(&body, "repair request")?;
    let repaired = controller
        .repair_migration(&request.name, request.version.as_deref())
        .await?;
    Ok(Json(Repaired { app, repaired }))
}

async fn status(
    State(state): State<Arc<AdminState>>,
    Path(app): Path<String>,
) -> Result<Json<crate::controller::StatusView>, ApiError> {
    let controller = find_controller(&state, &app)?;
    let mut view = controller.status().await?;
    if let Some(fleet) = &state.fleet {
        // The fleet's part of status is what it is right now; etcd being unreachable is said
        // in it rather than failing the whole status.
        view.fleet = Some(
            crate::fleet::status(&fleet.client, &fleet.keys, &app, fleet.lease_ms)
                .await
                .unwrap_or_else(|e| crate::fleet::FleetStatus {
                    leader: None,
                    generation: None,
                    proxies: Vec::new(),
                    error: Some(e),
                }),
        );
    }
    Ok(Json(view))
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn history(
    State(state): State<Arc<AdminState>>,
    Path(app): Path<String>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Vec<Redacted<Rollout>>>, ApiError> {
    let q = query(q)?;
    let controller = find_controller(&state, &app)?;
    let rollouts = controller
        .store()
        .rollouts(&app, q.limit.unwrap_or(20).min(1000))
        .map_err(ControllerError::from)?;
    Ok(Json(rollouts.into_iter().map(Redacted::new).collect()))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<u64>,
    rollout: Option<u64>,
    limit: Option<usize>,
}

async fn events(
    State(state): State<Arc<AdminState>>,
    Path(app): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<cutover_store::StoredEvent>>, ApiError> {
    let q = query(q)?;
    let controller = find_controller(&state, &app)?;
    let events = controller
        .store()
        .events(
            &app,
            q.rollout,
            q.after.unwrap_or(0),
            q.limit.unwrap_or(1000).min(10_000),
        )
        .map_err(ControllerError::from)?;
    Ok(Json(events))
}

/// The event log from `after`, then live. Events missed while the subscriber lagged are read back
/// from the store, so a client sees every event exactly once and in order.
async fn event_stream(
    State(state): State<Arc<AdminState>>,
    Path(app): Path<String>,
    q: Result<Query<EventsQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>>, ApiError> {
    let q = query(q)?;
    let controller = find_controller(&state, &app)?;
    let receiver = controller.subscribe();
    // A browser's EventSource reconnects by itself to the same URL, saying in `Last-Event-ID`
    // what it saw last: it resumes from there, not from the URL's `after` again.
    let last_seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let start = q.after.unwrap_or(0).max(last_seen.unwrap_or(0));
    let stream = futures_util::stream::unfold(
        (controller, receiver, start, std::collections::VecDeque::new()),
        |(controller, mut receiver, mut last, mut pending)| async move {
            loop {
                if let Some(e) = pending.pop_front() {
                    let e: cutover_store::StoredEvent = e;
                    if e.seq <= last {
                        continue;
                    }
                    last = e.seq;
                    let data = serde_json::to_string(&e).unwrap_or_default();
                    let sse = SseEvent::default()
                        .id(e.seq.to_string())
                        .event(e.event.kind())
                        .data(data);
                    return Some((Ok(sse), (controller, receiver, last, pending)));
                }
                // Catch up from the store first; then wait for live events.
                let app = controller.name().to_string();
                match controller.store().events(&app, None, last, 1000) {
                    Ok(batch) if !batch.is_empty() => {
                        pending.extend(batch);
                        continue;
                    }
                    Ok(_) => {}
                    Err(_) => return None,
                }
                match receiver.recv().await {
                    // Anything out of order is read back from the store at the top of the loop.
                    Ok(e) if e.seq == last + 1 => pending.push_back(e),
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

// ===== flags =====

fn flag_service(state: &AdminState) -> Result<&Arc<crate::flags::FlagService>, ApiError> {
    state.flags.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this server has no flag service; add a [flags] table to its configuration",
        )
    })
}

impl From<crate::flags::FlagError> for ApiError {
    fn from(e: crate::flags::FlagError) -> Self {
        use crate::flags::FlagError;
        match e {
            FlagError::Invalid(v) => {
                let mut err = ApiError::new(StatusCode::BAD_REQUEST, "invalid flag; nothing was changed");
                err.errors = v.errors;
                err
            }
            FlagError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            FlagError::Store(cutover_store::StoreError::Conflict { .. }) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            FlagError::Store(cutover_store::StoreError::NoSuchFlag { .. }) => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
}

/// The name of the main admin token in audit records; the tokens of `[admin] tokens_file` carry
/// their own.
pub const ADMIN: &str = "admin";

#[derive(Debug, Serialize)]
struct FlagsView {
    revision: u64,
    flags: Vec<cutover_flags::Flag>,
    /// The flags that should leave the code, and why.
    stale: Vec<crate::flags::StaleFlag>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FlagsQuery {
    /// Only the stale flags.
    #[serde(default)]
    stale: bool,
}

async fn list_flags(
    State(state): State<Arc<AdminState>>,
    q: Result<Query<FlagsQuery>, QueryRejection>,
) -> Result<Json<FlagsView>, ApiError> {
    let q = query(q)?;
    let index = flag_service(&state)?.index();
    let stale = state.ramps.as_ref().map(|r| r.stale()).unwrap_or_default();
    let flags = index
        .flags()
        .filter(|f| !q.stale || stale.iter().any(|s| s.key == f.key))
        .cloned()
        .collect();
    Ok(Json(FlagsView {
        revision: index.revision,
        flags,
        stale,
    }))
}

async fn get_flag(
    State(state): State<Arc<AdminState>>,
    Path(key): Path<String>,
) -> Result<Json<cutover_flags::Flag>, ApiError> {
    let index = flag_service(&state)?.index();
    index
        .get(&key)
        .cloned()
        .map(Json)
        .ok_or_else(|| crate::flags::FlagError::NotFound(key).into())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutFlag {
    flag: cutover_flags::Flag,
    reason: String,
    /// The revision the change was made from: refused (409) if the flag changed meanwhile.
    #[serde(default)]
    expected_revision: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Why {
    #[serde(default)]
    reason: String,
}

fn require_reason(reason: &str) -> Result<(), ApiError> {
    if reason.trim().is_empty() {
        let mut err = ApiError::new(
            StatusCode::BAD_REQUEST,
            "every flag change needs a reason; nothing was changed",
        );
        err.errors
            .push(FieldError::new("reason", "missing: say why (--reason)"));
        return Err(err);
    }
    Ok(())
}

async fn put_flag(
    State(state): State<Arc<AdminState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<cutover_store::FlagChangeRecord>, ApiError> {
    let who = authorize(&state, &headers)?;
    let service = flag_service(&state)?;
    let put: PutFlag = parse_json(&body, "flag change")?;
    require_reason(&put.reason)?;
    if let Some(ramps) = &state.ramps {
        ramps.check_change(&key, Some(&put.flag)).await?;
    }
    let record = service
        .change(&key, Some(put.flag), put.expected_revision, &who, &put.reason)
        .await?;
    Ok(Json(record))
}

async fn archive_flag(
    State(state): State<Arc<AdminState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    q: Result<Query<Why>, QueryRejection>,
) -> Result<Json<cutover_store::FlagChangeRecord>, ApiError> {
    let who = authorize(&state, &headers)?;
    let service = flag_service(&state)?;
    let why = query(q)?;
    require_reason(&why.reason)?;
    if let Some(ramps) = &state.ramps {
        ramps.check_change(&key, None).await?;
    }
    Ok(Json(service.change(&key, None, None, &who, &why.reason).await?))
}

async fn switch_flag(
    State(state): State<Arc<AdminState>>,
    Path((key, switch)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<cutover_store::FlagChangeRecord>, ApiError> {
    let who = authorize(&state, &headers)?;
    let service = flag_service(&state)?;
    let enabled = match switch.as_str() {
        "kill" => false,
        "unkill" => true,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no flag command {other:?}; use kill or unkill"),
            ))
        }
    };
    let why: Why = if body.is_empty() {
        Why::default()
    } else {
        parse_json(&body, "flag command")?
    };
    require_reason(&why.reason)?;
    Ok(Json(service.set_enabled(&key, enabled, &who, &why.reason).await?))
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn flag_audit(
    State(state): State<Arc<AdminState>>,
    Path(key): Path<String>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Vec<cutover_store::FlagChangeRecord>>, ApiError> {
    let q = query(q)?;
    let service = flag_service(&state)?;
    let records = service
        .audit(Some(&key), q.after.unwrap_or(0), q.limit.unwrap_or(100).min(1000))
        .map_err(crate::flags::FlagError::from)?;
    Ok(Json(records))
}

// ===== guarded ramps =====

fn ramp_runner(state: &AdminState) -> Result<&Arc<crate::ramps::RampRunner>, ApiError> {
    state.ramps.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "this server has no flag service; add a [flags] table to its configuration",
        )
    })
}

impl From<crate::ramps::RampError> for ApiError {
    fn from(e: crate::ramps::RampError) -> Self {
        use crate::ramps::RampError;
        match e {
            RampError::Invalid(v) => {
                let mut err = ApiError::new(StatusCode::BAD_REQUEST, "invalid ramp; nothing was started");
                err.errors = v.errors;
                err
            }
            RampError::NoFlag(_) | RampError::NoRamp(_) => {
                ApiError::new(StatusCode::NOT_FOUND, e.to_string())
            }
            RampError::Rejected(_) | RampError::Busy(..) => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            RampError::Flag(f) => f.into(),
            RampError::Store(s) => crate::flags::FlagError::Store(s).into(),
        }
    }
}

async fn list_ramps(
    State(state): State<Arc<AdminState>>,
) -> Result<Json<Vec<crate::ramps::RampView>>, ApiError> {
    Ok(Json(ramp_runner(&state)?.all().await))
}

async fn get_ramp(
    State(state): State<Arc<AdminState>>,
    Path(key): Path<String>,
) -> Result<Json<crate::ramps::RampView>, ApiError> {
    Ok(Json(ramp_runner(&state)?.get(&key).await?))
}

async fn start_ramp(
    State(state): State<Arc<AdminState>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<crate::ramps::RampView>, ApiError> {
    let who = authorize(&state, &headers)?;
    let runner = ramp_runner(&state)?;
    let request: crate::ramps::StartRamp = parse_json(&body, "ramp")?;
    Ok(Json(runner.start(&key, &request, &who).await?))
}

async fn ramp_command(
    State(state): State<Arc<AdminState>>,
    Path((key, command)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<crate::ramps::RampView>, ApiError> {
    authorize(&state, &headers)?;
    let runner = ramp_runner(&state)?;
    let why: Why = if body.is_empty() {
        Why::default()
    } else {
        parse_json(&body, "ramp command")?
    };
    let input = match command.as_str() {
        "resume" => cutover_flags::ramp::RampInput::Resume,
        "abort" => {
            require_reason(&why.reason)?;
            cutover_flags::ramp::RampInput::Abort { reason: why.reason }
        }
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no ramp command {other:?}; use resume or abort"),
            ))
        }
    };
    Ok(Json(runner.command(&key, input).await?))
}
