//! Routes and shared state.
//!
//! `/` and `/api/*` are the benchmark hot path: they build their response by hand from
//! bytes prepared at startup and go through no middleware. Every other route shares one
//! middleware that counts requests and stamps the identity headers.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Form, Json, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;

use crate::dependency::Dependency;
use crate::session::{self, Session, SessionStore, StoreError};

const X_APP_VERSION: HeaderName = HeaderName::from_static("x-app-version");
const X_APP_INSTANCE: HeaderName = HeaderName::from_static("x-app-instance");
const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
const X_SEEN_USER_ID: HeaderName = HeaderName::from_static("x-seen-user-id");

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
/// Expires the session cookie in the browser (the name is `session::COOKIE_NAME`).
const CLEAR_COOKIE: HeaderValue =
    HeaderValue::from_static("example_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");

/// Bound on session store calls made while answering a request. Longer than SQLite's
/// busy timeout and Redis's command timeout, so a lock held by another instance or a
/// stuck Redis surfaces as the store's own error.
const STORE_TIMEOUT: Duration = Duration::from_secs(10);
/// Each `/health/ready` check must answer within this.
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest user name `/login` accepts.
const MAX_USER_CHARS: usize = 64;

/// `/bytes` refuses to generate more than this, so a typo cannot exhaust the machine.
const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// `/bytes` bodies are slices of this one static buffer, so they cost no allocation.
static FILLER: [u8; 64 * 1024] = [b'x'; 64 * 1024];
/// `/echo` reports the body text only up to this size; larger bodies are just counted.
const ECHO_BODY_TEXT_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub error_rate: f64,
    pub latency_ms: u64,
    pub jitter_ms: u64,
    pub slow_rate: f64,
    pub slow_ms: u64,
}

impl Faults {
    fn any(&self) -> bool {
        self.error_rate > 0.0 || self.latency_ms > 0 || self.jitter_ms > 0 || self.slow_rate > 0.0
    }

    /// Sleeps for the configured latency; returns whether this request should fail.
    async fn apply(&self) -> bool {
        let mut delay = self.latency_ms;
        if self.jitter_ms > 0 {
            delay += rand::random_range(0..=self.jitter_ms);
        }
        if self.slow_rate > 0.0 && rand::random::<f64>() < self.slow_rate {
            delay += self.slow_ms;
        }
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        self.error_rate > 0.0 && rand::random::<f64>() < self.error_rate
    }
}

/// What [`App::new`] needs; see `Options` for what each setting does.
pub struct Settings {
    pub app: String,
    pub version: String,
    pub slot: String,
    pub port: u16,
    pub faults: Faults,
    pub fail_ready: bool,
    pub sessions: Option<SessionStore>,
    pub reject_old_sessions: bool,
    pub ready_dependency: Option<Dependency>,
    pub flags: FlagSettings,
    pub users: Option<crate::users::UsersDb>,
}

/// The `new_session_validator` flag, as the proxy forwards it.
#[derive(Debug, Clone)]
pub struct FlagSettings {
    /// The header cutover's proxy forwards flag variants in (`flag=variant, ...`).
    pub header: HeaderName,
    /// Share of `/` and `/api/*` requests of users with the flag on answered 500.
    pub error_rate: f64,
}

/// The flag that switches on the new session validator, which rejects every existing session:
/// the incompatible-session bug, shipped dark and turned on per user.
pub const NEW_SESSION_VALIDATOR: &str = "new_session_validator";

impl FlagSettings {
    /// Whether the request's user has `new_session_validator` on (variant `on`).
    fn new_validator_on(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(&self.header)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(flag, variant)| flag == NEW_SESSION_VALIDATOR && variant == "on")
    }

    /// Whether this request fails because its user has the flag on (`--flag-error-rate`).
    fn fails(&self, headers: &HeaderMap) -> bool {
        self.error_rate > 0.0 && self.new_validator_on(headers) && rand::random::<f64>() < self.error_rate
    }
}

pub struct App {
    root_body: Bytes,
    /// `/page` up to the per-visitor session section.
    page_head: String,
    /// The whole `/page` when there is no session store, so nothing varies.
    page_static: Bytes,
    version: HeaderValue,
    version_label: String,
    instance: HeaderValue,
    faults: Faults,
    faults_active: bool,
    fail_ready: bool,
    ready: AtomicBool,
    requests: AtomicU64,
    /// `/slow` requests being served now; tests read it to know a slow request has arrived.
    slow_in_progress: AtomicU64,
    sessions: Option<SessionStore>,
    reject_old_sessions: bool,
    ready_dependency: Option<Dependency>,
    flags: FlagSettings,
    users: Option<crate::users::UsersDb>,
}

impl App {
    pub fn new(s: Settings) -> Result<Self> {
        let Settings {
            app,
            version,
            slot,
            port,
            faults,
            fail_ready,
            sessions,
            reject_old_sessions,
            ready_dependency,
            flags,
            users,
        } = s;
        let root = serde_json::json!({
            "app": app,
            "version": version,
            "slot": slot,
            "instance": port,
        });
        let root_body = Bytes::from(serde_json::to_vec(&root).context("encoding the / body")?);
        let mut page_head = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{app} {version}</title></head>\n\
             <body><h1>{app}</h1><p>version <b id=\"version\">{version}</b>, slot <b id=\"slot\">{slot}</b>, \
             instance {port}</p>\n",
            app = html_escape(&app),
            version = html_escape(&version),
            slot = html_escape(&slot),
        );
        if sessions.is_none() {
            page_head.push_str(
                "<p id=\"session\">Sessions are off: no <code>--session-store</code> configured.</p>\n",
            );
        }
        let version_header = HeaderValue::from_str(&version)
            .with_context(|| format!("--version-label {version:?} cannot be sent as an HTTP header"))?;
        let page_static = Bytes::from(format!("{page_head}{PAGE_TAIL}"));
        Ok(Self {
            root_body,
            page_head,
            page_static,
            version: version_header,
            version_label: version,
            instance: HeaderValue::from(port),
            faults_active: faults.any(),
            faults,
            fail_ready,
            ready: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            slow_in_progress: AtomicU64::new(0),
            sessions,
            reject_old_sessions,
            ready_dependency,
            flags,
            users,
        })
    }

    fn stamp(&self, headers: &mut HeaderMap) {
        headers.insert(X_APP_VERSION, self.version.clone());
        headers.insert(X_APP_INSTANCE, self.instance.clone());
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The 500 that `--error-rate` injects into `/` and `/api/*`.
    fn injected_error(&self) -> Response {
        let mut resp = Response::new(Body::from(Bytes::from_static(b"injected error\n")));
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        resp.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
        self.stamp(resp.headers_mut());
        resp
    }
}

/// Links to the routes worth clicking, then the end of the page.
const PAGE_TAIL: &str = "<p><a href=\"/page\">reload</a> \u{b7} <a href=\"/\">/</a> \u{b7} \
    <a href=\"/api/me\">/api/me</a> \u{b7} <a href=\"/health/ready\">/health/ready</a></p>\n\
    </body></html>\n";

type AppState = &'static App;

pub fn router(app: AppState) -> Router {
    let others = Router::new()
        .route("/page", get(page))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/control/ready", post(set_ready))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/control/requests", get(request_count))
        .route("/slow", get(slow))
        .route("/sse", get(sse))
        .route("/ws", get(ws))
        .route("/echo", any(echo))
        .route("/headers", get(echo))
        .route("/status/{code}", get(status))
        .route("/bytes", get(bytes_route))
        .route("/users", post(add_user))
        .route("/users/{id}", get(get_user))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app, count_and_stamp));

    let hot = get(api).fallback(api_method_not_allowed);
    Router::new()
        .route("/", hot.clone())
        .route("/api/me", get(me).fallback(api_method_not_allowed))
        .route("/api/{*rest}", hot)
        .merge(others)
        .with_state(app)
}

async fn count_and_stamp(State(app): State<AppState>, req: Request, next: Next) -> Response {
    // Health-check tests read this counter through /control/*, so those reads must not
    // move it.
    if !req.uri().path().starts_with("/control/") {
        app.count();
    }
    let mut resp = next.run(req).await;
    app.stamp(resp.headers_mut());
    resp
}

async fn api(State(app): State<AppState>, req: Request) -> Response {
    app.count();
    if app.faults_active && app.faults.apply().await || app.flags.fails(req.headers()) {
        return app.injected_error();
    }
    let mut resp = Response::new(Body::from(app.root_body.clone()));
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, APPLICATION_JSON);
    app.stamp(headers);
    if let Some(user) = req.headers().get(X_USER_ID) {
        headers.insert(X_SEEN_USER_ID, user.clone());
    }
    resp
}

async fn api_method_not_allowed(State(app): State<AppState>) -> Response {
    app.count();
    let mut resp = (StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n").into_response();
    app.stamp(resp.headers_mut());
    resp
}

async fn not_found() -> impl IntoResponse {
    (StatusCode::NOT_FOUND, "not found\n")
}

async fn live() -> &'static str {
    "ok"
}

async fn ready(State(app): State<AppState>) -> Response {
    let mut failed = Vec::new();
    if app.fail_ready {
        failed.push("--fail-ready is set".to_owned());
    }
    if !app.ready.load(Ordering::Relaxed) {
        failed.push("switched off through /control/ready".to_owned());
    }
    // Both checks wait on something outside this process, so they run side by side
    // and a slow one costs at most one timeout.
    let store = async {
        let store = app.sessions.as_ref()?;
        let e = store.ping(READY_CHECK_TIMEOUT).await.err()?;
        Some(format!("session store: {e}"))
    };
    let dependency = async {
        let dep = app.ready_dependency.as_ref()?;
        match tokio::time::timeout(READY_CHECK_TIMEOUT, dep.check()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("dependency {dep}: {e}")),
            Err(_) => Some(format!(
                "dependency {dep}: no answer within {READY_CHECK_TIMEOUT:?}"
            )),
        }
    };
    let (store, dependency) = tokio::join!(store, dependency);
    failed.extend(store);
    failed.extend(dependency);
    if failed.is_empty() {
        (StatusCode::OK, "ready").into_response()
    } else {
        tracing::debug!(checks = %failed.join("; "), "not ready");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}", failed.join("; ")),
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct ReadyParams {
    value: bool,
}

async fn set_ready(State(app): State<AppState>, Query(p): Query<ReadyParams>) -> String {
    app.ready.store(p.value, Ordering::Relaxed);
    tracing::info!(ready = p.value, "readiness switched at runtime");
    format!("ready={}", p.value)
}

async fn request_count(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "requests": app.requests.load(Ordering::Relaxed),
        "slow_in_progress": app.slow_in_progress.load(Ordering::Relaxed),
    }))
}

#[derive(Deserialize)]
struct SlowParams {
    ms: Option<u64>,
}

async fn slow(State(app): State<AppState>, Query(p): Query<SlowParams>) -> &'static str {
    /// Counts the request as in progress until it ends, however it ends.
    struct InProgress<'a>(&'a AtomicU64);
    impl Drop for InProgress<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    app.slow_in_progress.fetch_add(1, Ordering::Relaxed);
    let _in_progress = InProgress(&app.slow_in_progress);
    tokio::time::sleep(Duration::from_millis(p.ms.unwrap_or(1000))).await;
    "slow done"
}

#[derive(Deserialize)]
struct SseParams {
    events: Option<u64>,
    interval_ms: Option<u64>,
}

async fn sse(Query(p): Query<SseParams>) -> impl IntoResponse {
    let events = p.events.unwrap_or(10);
    let interval = Duration::from_millis(p.interval_ms.unwrap_or(100));
    // One body frame per event: hyper flushes whenever the stream is pending, so each
    // event leaves as its own chunk instead of waiting for the end of the stream.
    let stream = futures_util::stream::unfold(0u64, move |k| async move {
        if k >= events {
            return None;
        }
        if k > 0 {
            tokio::time::sleep(interval).await;
        }
        Some((
            Ok::<_, Infallible>(Bytes::from(format!("data: event {k}\n\n"))),
            k + 1,
        ))
    });
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Asks buffering proxies (nginx and friends) to pass events through at once.
            (
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(stream),
    )
}

async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(echo_socket)
}

async fn echo_socket(mut socket: WebSocket) {
    // Ping/pong and the close handshake are answered by the library on the next
    // read, so the loop only has to keep reading until the stream ends.
    while let Some(Ok(msg)) = socket.recv().await {
        if matches!(msg, Message::Text(_) | Message::Binary(_)) && socket.send(msg).await.is_err() {
            break;
        }
    }
}

async fn echo(req: Request) -> Response {
    let (parts, body) = req.into_parts();
    // Counted as it streams rather than buffered, so large uploads through the proxy
    // can be checked without holding them in memory.
    let mut len = 0usize;
    let mut text = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                if len + chunk.len() <= ECHO_BODY_TEXT_LIMIT {
                    text.extend_from_slice(&chunk);
                }
                len += chunk.len();
            }
            Err(e) => return (StatusCode::BAD_REQUEST, format!("reading body: {e}\n")).into_response(),
        }
    }
    let body_text = if len <= ECHO_BODY_TEXT_LIMIT {
        String::from_utf8(text).ok()
    } else {
        None
    };

    let mut headers = serde_json::Map::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        match headers.get_mut(name.as_str()) {
            Some(serde_json::Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                headers.insert(
                    name.as_str().to_owned(),
                    serde_json::Value::String(value.into_owned()),
                );
            }
        }
    }
    Json(serde_json::json!({
        "method": parts.method.as_str(),
        "uri": parts.uri.to_string(),
        "http_version": format!("{:?}", parts.version),
        "body_len": len,
        "body": body_text,
        "headers": headers,
    }))
    .into_response()
}

async fn status(Path(code): Path<u16>) -> Response {
    match StatusCode::from_u16(code) {
        // 1xx are not final responses; sending one as such would wedge the client.
        Ok(status) if code >= 200 => (status, format!("status {code}")).into_response(),
        _ => (
            StatusCode::BAD_REQUEST,
            format!("unsupported status code {code}\n"),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct BytesParams {
    n: Option<u64>,
}

async fn bytes_route(Query(p): Query<BytesParams>) -> Response {
    let n = p.n.unwrap_or(1024).min(MAX_BYTES);
    let body = if n <= FILLER.len() as u64 {
        Body::from(Bytes::from_static(&FILLER[..n as usize]))
    } else {
        let chunks = futures_util::stream::unfold(n, |left| async move {
            if left == 0 {
                return None;
            }
            let take = left.min(FILLER.len() as u64);
            Some((
                Ok::<_, Infallible>(Bytes::from_static(&FILLER[..take as usize])),
                left - take,
            ))
        });
        Body::from_stream(chunks)
    };
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    // A streamed body has no size hint; the explicit length keeps hyper from switching
    // to chunked encoding, so clients and proxies see a plain sized body.
    headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
    resp
}

/// What the session cookie of a request amounts to.
enum Visitor {
    NoStore,
    Anonymous,
    /// Logged in, but by a version that `--reject-old-sessions` does not accept.
    Rejected(Session),
    LoggedIn(Session),
    StoreFailed(StoreError),
}

async fn visitor(app: &App, headers: &HeaderMap) -> Visitor {
    let Some(store) = &app.sessions else {
        return Visitor::NoStore;
    };
    // A cookie we could not have issued is answered without asking the store.
    let Some(id) = session_cookie(headers).filter(|id| session::is_well_formed_id(id)) else {
        return Visitor::Anonymous;
    };
    match store.get(STORE_TIMEOUT, id.to_owned()).await {
        Ok(None) => Visitor::Anonymous,
        Ok(Some(s)) if app.reject_old_sessions && s.issued_by_version != app.version_label => {
            Visitor::Rejected(s)
        }
        Ok(Some(s)) => Visitor::LoggedIn(s),
        Err(e) => Visitor::StoreFailed(e),
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == session::COOKIE_NAME)
        .map(|(_, value)| value.trim_matches('"'))
}

/// JSON answer for the session routes, which must never be cached: the same URL
/// answers differently per cookie.
fn session_json(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(CACHE_CONTROL, NO_STORE)], Json(body)).into_response()
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    session_json(status, serde_json::json!({ "error": message.into() }))
}

fn no_store_response() -> Response {
    json_error(StatusCode::SERVICE_UNAVAILABLE, "no session store configured")
}

fn store_failed_response(e: &StoreError) -> Response {
    json_error(StatusCode::SERVICE_UNAVAILABLE, format!("session store: {e}"))
}

/// Whether the request came from the HTML form on `/page`, which expects to be sent
/// back to the page rather than handed JSON.
fn is_form_post(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

fn back_to_page() -> Response {
    (
        StatusCode::SEE_OTHER,
        [(LOCATION, HeaderValue::from_static("/page"))],
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginBody {
    user: String,
}

fn validate_user(user: &str) -> Result<&str, &'static str> {
    let user = user.trim();
    if user.is_empty() {
        return Err("user must not be empty");
    }
    if user.chars().count() > MAX_USER_CHARS {
        return Err("user is longer than 64 characters");
    }
    if user.chars().any(char::is_control) {
        return Err("user must not contain control characters");
    }
    Ok(user)
}

async fn login(State(app): State<AppState>, req: Request) -> Response {
    let Some(store) = &app.sessions else {
        return no_store_response();
    };
    let form = is_form_post(req.headers());
    let body = if form {
        Form::<LoginBody>::from_request(req, &())
            .await
            .map(|f| f.0)
            .map_err(|r| (r.status(), r.body_text()))
    } else {
        Json::<LoginBody>::from_request(req, &())
            .await
            .map(|j| j.0)
            .map_err(|r| (r.status(), r.body_text()))
    };
    let body = match body {
        Ok(body) => body,
        Err((status, text)) => return json_error(status, text),
    };
    let user = match validate_user(&body.user) {
        Ok(user) => user.to_owned(),
        Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
    };
    let session = match store.create(STORE_TIMEOUT, user, app.version_label.clone()).await {
        Ok(session) => session,
        Err(e) => return store_failed_response(&e),
    };
    tracing::info!(user = %session.user, "logged in");
    let mut resp = if form {
        back_to_page()
    } else {
        session_json(
            StatusCode::OK,
            serde_json::json!({ "user": session.user, "session": session.id }),
        )
    };
    // The id is 32 hex digits, so it is always a valid header value; failing here
    // would mean a bug in id generation, answered as a 500 rather than a panic.
    match HeaderValue::from_str(&format!(
        "{}={}; Path=/; HttpOnly; SameSite=Lax",
        session::COOKIE_NAME,
        session.id
    )) {
        Ok(cookie) => {
            resp.headers_mut().insert(SET_COOKIE, cookie);
            resp
        }
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("session id cannot be sent as a cookie: {e}"),
        ),
    }
}

async fn logout(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let Some(store) = &app.sessions else {
        return no_store_response();
    };
    let removed = match session_cookie(&headers).filter(|id| session::is_well_formed_id(id)) {
        Some(id) => match store.delete(STORE_TIMEOUT, id.to_owned()).await {
            Ok(removed) => removed,
            Err(e) => return store_failed_response(&e),
        },
        None => false,
    };
    let mut resp = if is_form_post(&headers) {
        back_to_page()
    } else {
        session_json(StatusCode::OK, serde_json::json!({ "logged_out": removed }))
    };
    resp.headers_mut().insert(SET_COOKIE, CLEAR_COOKIE);
    resp
}

/// `/api/me`: an `/api/*` route, so it takes the same faults as the others, and like
/// them it is outside the shared middleware and stamps its own headers.
async fn me(State(app): State<AppState>, headers: HeaderMap) -> Response {
    app.count();
    if app.faults_active && app.faults.apply().await || app.flags.fails(&headers) {
        return app.injected_error();
    }
    let visitor = match visitor(app, &headers).await {
        // The bug the flag ships dark: the new validator cannot read any existing session.
        Visitor::LoggedIn(s) if app.flags.new_validator_on(&headers) => Visitor::Rejected(s),
        v => v,
    };
    let mut resp = match visitor {
        Visitor::NoStore => no_store_response(),
        Visitor::Anonymous => json_error(StatusCode::UNAUTHORIZED, "not logged in"),
        Visitor::Rejected(s) if app.flags.new_validator_on(&headers) => json_error(
            StatusCode::UNAUTHORIZED,
            format!(
                "session issued by {} is not accepted by the new session validator ({NEW_SESSION_VALIDATOR} is on)",
                s.issued_by_version
            ),
        ),
        Visitor::Rejected(s) => json_error(
            StatusCode::UNAUTHORIZED,
            format!(
                "session issued by {} is not accepted by {}",
                s.issued_by_version, app.version_label
            ),
        ),
        Visitor::LoggedIn(s) => session_json(
            StatusCode::OK,
            serde_json::json!({
                "user": s.user,
                "issued_by": s.issued_by_version,
                "served_by": app.version_label,
            }),
        ),
        Visitor::StoreFailed(e) => store_failed_response(&e),
    };
    app.stamp(resp.headers_mut());
    resp
}

async fn page(State(app): State<AppState>, headers: HeaderMap) -> Response {
    const HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");
    const LOGIN_FORM: &str = "<form method=\"post\" action=\"/login\">\
        <input name=\"user\" placeholder=\"user\" required maxlength=\"64\"> \
        <button>Log in</button></form>\n";
    let section = match visitor(app, &headers).await {
        Visitor::NoStore => return ([(CONTENT_TYPE, HTML)], app.page_static.clone()).into_response(),
        Visitor::Anonymous => format!("<p id=\"session\">Not logged in.</p>\n{LOGIN_FORM}"),
        Visitor::Rejected(s) => format!(
            "<p id=\"session\">Your session was issued by {} and is not accepted by {}.</p>\n{LOGIN_FORM}",
            html_escape(&s.issued_by_version),
            html_escape(&app.version_label),
        ),
        Visitor::LoggedIn(s) => format!(
            "<p id=\"session\">Logged in as <b id=\"user\">{}</b>, session issued by {}, served by {}.</p>\n\
             <form method=\"post\" action=\"/logout\"><button>Log out</button></form>\n",
            html_escape(&s.user),
            html_escape(&s.issued_by_version),
            html_escape(&app.version_label),
        ),
        Visitor::StoreFailed(e) => format!(
            "<p id=\"session\">Session store unavailable: {}</p>\n",
            html_escape(&e.to_string())
        ),
    };
    (
        [(CONTENT_TYPE, HTML), (CACHE_CONTROL, NO_STORE)],
        format!("{}{section}{PAGE_TAIL}", app.page_head),
    )
        .into_response()
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[derive(Debug, Deserialize)]
struct NewUser {
    name: String,
}

/// `POST /users?name=NAME`: adds a user with this version's columns (`--users-schema`).
async fn add_user(State(app): State<AppState>, Query(user): Query<NewUser>) -> Response {
    let Some(users) = &app.users else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no --users-db configured\n").into_response();
    };
    if user.name.is_empty() || user.name.chars().count() > MAX_USER_CHARS {
        return (
            StatusCode::BAD_REQUEST,
            format!("name must be 1 to {MAX_USER_CHARS} characters\n"),
        )
            .into_response();
    }
    match users.insert(&user.name).await {
        Ok(id) => (StatusCode::CREATED, Json(serde_json::json!({ "id": id }))).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("users database: {e}\n"),
        )
            .into_response(),
    }
}

/// `GET /users/ID`: the user's name, read from this version's column.
async fn get_user(State(app): State<AppState>, Path(id): Path<i64>) -> Response {
    let Some(users) = &app.users else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no --users-db configured\n").into_response();
    };
    match users.get(id).await {
        Ok(Some(name)) => Json(serde_json::json!({ "id": id, "name": name, "schema": format!("{:?}", users.schema()).to_lowercase() })).into_response(),
        Ok(None) => (StatusCode::NOT_FOUND, "no such user\n").into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("users database: {e}\n")).into_response(),
    }
}
