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
//!
//! Errors are JSON: `{"error": "...", "errors": [{"field": "...", "message": "..."}]}` with 400 for
//! invalid input (and no change made), 401 without a valid token, 404 for an unknown app.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use cutover_core::{FieldError, RouteTable, Slot};
use cutover_proxy::{AppProxy, MetricsSummary};
use serde::Serialize;

/// What the admin API works on.
#[derive(Debug)]
pub struct AdminState {
    pub apps: BTreeMap<String, Arc<AppProxy>>,
    pub token: String,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/apps", get(list_apps))
        .route("/v1/apps/{app}/routes", get(get_routes).put(put_routes))
        .route("/v1/apps/{app}/metrics", get(app_metrics))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
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
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
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

fn authorize(state: &AdminState, headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if constant_time_eq::constant_time_eq(t.as_bytes(), state.token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "the bearer token is wrong; use the admin token of this server",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "changes need the admin token: send `Authorization: Bearer <token>`",
        )),
    }
}

async fn metrics(State(state): State<Arc<AdminState>>) -> impl IntoResponse {
    let text = cutover_proxy::prometheus::render(state.apps.values().map(|a| a.as_ref()));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
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
    Json(state.apps.values().map(|a| routes_view(a)).collect())
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
    let app = find_app(&state, &app)?;
    let deserializer = &mut serde_json::Deserializer::from_slice(&body);
    let route: RouteTable = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let mut err = ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid route table; nothing was changed",
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
    })?;
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
