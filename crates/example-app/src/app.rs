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
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;

const X_APP_VERSION: HeaderName = HeaderName::from_static("x-app-version");
const X_APP_INSTANCE: HeaderName = HeaderName::from_static("x-app-instance");
const X_USER_ID: HeaderName = HeaderName::from_static("x-user-id");
const X_SEEN_USER_ID: HeaderName = HeaderName::from_static("x-seen-user-id");

const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

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

pub struct App {
    root_body: Bytes,
    page_body: Bytes,
    version: HeaderValue,
    instance: HeaderValue,
    faults: Faults,
    faults_active: bool,
    fail_ready: bool,
    ready: AtomicBool,
    requests: AtomicU64,
}

impl App {
    pub fn new(
        app: &str,
        version: &str,
        slot: &str,
        port: u16,
        faults: Faults,
        fail_ready: bool,
    ) -> Result<Self> {
        let root = serde_json::json!({
            "app": app,
            "version": version,
            "slot": slot,
            "instance": port,
        });
        let root_body = Bytes::from(serde_json::to_vec(&root).context("encoding the / body")?);
        let page_body = Bytes::from(format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{app} {version}</title></head>\n\
             <body><h1>{app}</h1><p>version <b id=\"version\">{version}</b>, slot <b id=\"slot\">{slot}</b>, \
             instance {port}</p></body></html>\n",
            app = html_escape(app),
            version = html_escape(version),
            slot = html_escape(slot),
        ));
        let version_header = HeaderValue::from_str(version)
            .with_context(|| format!("--version-label {version:?} cannot be sent as an HTTP header"))?;
        Ok(Self {
            root_body,
            page_body,
            version: version_header,
            instance: HeaderValue::from(port),
            faults_active: faults.any(),
            faults,
            fail_ready,
            ready: AtomicBool::new(true),
            requests: AtomicU64::new(0),
        })
    }

    fn stamp(&self, headers: &mut HeaderMap) {
        headers.insert(X_APP_VERSION, self.version.clone());
        headers.insert(X_APP_INSTANCE, self.instance.clone());
    }

    fn count(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
}

type AppState = &'static App;

pub fn router(app: AppState) -> Router {
    let others = Router::new()
        .route("/page", get(page))
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/control/ready", post(set_ready))
        .route("/control/requests", get(request_count))
        .route("/slow", get(slow))
        .route("/sse", get(sse))
        .route("/ws", get(ws))
        .route("/echo", any(echo))
        .route("/headers", get(echo))
        .route("/status/{code}", get(status))
        .route("/bytes", get(bytes_route))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app, count_and_stamp));

    let hot = get(api).fallback(api_method_not_allowed);
    Router::new()
        .route("/", hot.clone())
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
    if app.faults_active && app.faults.apply().await {
        let mut resp = Response::new(Body::from(Bytes::from_static(b"injected error\n")));
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        resp.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
        app.stamp(resp.headers_mut());
        return resp;
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

async fn page(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"))],
        app.page_body.clone(),
    )
}

async fn live() -> &'static str {
    "ok"
}

async fn ready(State(app): State<AppState>) -> impl IntoResponse {
    if !app.fail_ready && app.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
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
    Json(serde_json::json!({ "requests": app.requests.load(Ordering::Relaxed) }))
}

#[derive(Deserialize)]
struct SlowParams {
    ms: Option<u64>,
}

async fn slow(Query(p): Query<SlowParams>) -> &'static str {
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
