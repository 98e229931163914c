//! The web dashboard and the endpoints it reads: the page itself (embedded in the binary: no
//! Node, no CDN, nothing fetched at run time), `GET /v1/status` (every app at a glance),
//! `GET /v1/apps/{app}/series` (per-slot traffic of the last ten minutes), `GET /v1/stream` (the
//! live feed: every app's events and a traffic sample a second) and `GET /v1/auth` (is this
//! token good?).
//!
//! The page is a client of the admin API like the CLI: it reads without a token and sends the
//! token, entered by the person, as a bearer header on changes, which the API checks whatever
//! the page does. It is served with a Content-Security-Policy that allows nothing but its own
//! files (no inline script or style, no other origin), and the admin listener refuses requests
//! whose `Host` is a name other than `localhost` while it listens on loopback only, so a web
//! page elsewhere cannot read the API through a DNS name it points at 127.0.0.1.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cutover_core::rollout::route_table;
use cutover_core::{Clock, Slot, Timestamp};
use cutover_router::SlotCounters;
use cutover_store::StoredEvent;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::admin::{AdminState, ApiError};
use crate::api::{AppSummary, Hello, Overview, Sample, Series, SeriesPoint, SlotSample};
use crate::controller::Controller;

/// How often `/v1/stream` says it is alive when nothing else happens.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// One point a second, ten minutes of them.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
const SERIES_POINTS: usize = 600;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../assets/dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("../assets/dashboard/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../assets/dashboard/dashboard.css");
const FAVICON_SVG: &str = include_str!("../assets/dashboard/favicon.svg");

/// The dashboard's live data: the series of every app and the feed of new samples.
pub struct Live {
    pub started_at: Timestamp,
    clock: Arc<dyn Clock>,
    series: Mutex<BTreeMap<String, VecDeque<SeriesPoint>>>,
    samples: broadcast::Sender<Sample>,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("started_at", &self.started_at)
            .finish_non_exhaustive()
    }
}

impl Live {
    pub fn new(clock: Arc<dyn Clock>, shutdown: CancellationToken) -> Arc<Live> {
        Arc::new(Live {
            started_at: clock.now(),
            clock,
            series: Mutex::new(BTreeMap::new()),
            samples: broadcast::channel(256).0,
            shutdown,
        })
    }

    fn record(&self, app: &str, point: SeriesPoint) {
        {
            let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
            let points = series.entry(app.to_string()).or_default();
            if points.len() == SERIES_POINTS {
                points.pop_front();
            }
            points.push_back(point.clone());
        }
        // Nobody listening is fine.
        let _ = self.samples.send(Sample {
            app: app.to_string(),
            point,
        });
    }

    fn series(&self, app: &str) -> Vec<SeriesPoint> {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series
            .get(app)
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Samples every managed app's router once a [`SAMPLE_INTERVAL`] until shutdown.
pub async fn sample(live: Arc<Live>, controllers: BTreeMap<String, Arc<Controller>>, clock: Arc<dyn Clock>) {
    let mut last: BTreeMap<String, [SlotCounters; 2]> = BTreeMap::new();
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_at = clock.now();
    loop {
        tokio::select! {
            _ = live.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let now = clock.now();
        let elapsed_ms = now.millis_since(last_at).max(1);
        last_at = now;
        for (name, controller) in &controllers {
            let Some(counters) = controller.counters().await else {
                continue;
            };
            let state = controller.state().await;
            let routes = route_table(&state);
            let previous = last.insert(name.clone(), counters.clone());
            let slots = Slot::ALL
                .iter()
                .map(|slot| {
                    let now_counts = &counters[slot.index()];
                    let before = previous.as_ref().map(|p| &p[slot.index()]);
                    slot_sample(
                        *slot,
                        state.slot(*slot).version().map(str::to_string),
                        routes.weight_of(*slot),
                        before,
                        now_counts,
                        elapsed_ms,
                    )
                })
                .collect();
            live.record(name, SeriesPoint { at: now, slots });
        }
    }
}

/// One slot's traffic between two readings of its counters. Counters that started again
/// (another series: a new release in the slot, a reload of the router) count from zero.
pub fn slot_sample(
    slot: Slot,
    version: Option<String>,
    weight_bp: u16,
    before: Option<&SlotCounters>,
    now: &SlotCounters,
    elapsed_ms: u64,
) -> SlotSample {
    let zero = SlotCounters::default();
    let before = match before {
        Some(b) if b.series == now.series && b.requests <= now.requests => b,
        // The first reading has no interval to speak of: it counts nothing.
        None => now,
        Some(_) => &zero,
    };
    let requests = now.requests - before.requests;
    let errors_5xx = now.server_errors.saturating_sub(before.server_errors);
    let errors_4xx = now
        .client_errors
        .map(|c| c.saturating_sub(before.client_errors.unwrap_or(0)));
    let share = |n: u64| {
        if requests == 0 {
            0.0
        } else {
            n as f64 / requests as f64
        }
    };
    let p99_ms = match (&now.latency_buckets, &before.latency_buckets) {
        (Some(now_b), before_b) if requests > 0 => {
            let diff: Vec<u64> = now_b
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    n.saturating_sub(before_b.as_ref().and_then(|b| b.get(i)).copied().unwrap_or(0))
                })
                .collect();
            cutover_core::histogram::quantile_bucket(&diff, 0.99)
                .map(|i| cutover_core::histogram::bucket_upper_micros(i) as f64 / 1000.0)
        }
        _ => None,
    };
    SlotSample {
        slot,
        version,
        weight_bp,
        requests,
        rps: requests as f64 * 1000.0 / elapsed_ms as f64,
        errors_5xx,
        errors_4xx,
        error_rate_5xx: share(errors_5xx),
        error_rate_4xx: errors_4xx.map(share),
        p99_ms,
    }
}

pub fn routes() -> Router<Arc<AdminState>> {
    Router::new()
        .route("/", get(index))
        .route("/ui", get(index))
        .route("/ui/", get(index))
        .route("/ui/{file}", get(asset))
        .route("/v1/status", get(overview))
        .route("/v1/auth", get(auth))
        .route("/v1/stream", get(stream))
        .route("/v1/apps/{app}/series", get(series))
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The files change with the binary only; a browser asks again after an upgrade.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX_HTML)
}

async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    match file.as_str() {
        "dashboard.js" => Ok(page("text/javascript; charset=utf-8", DASHBOARD_JS)),
        "dashboard.css" => Ok(page("text/css; charset=utf-8", DASHBOARD_CSS)),
        "favicon.svg" => Ok(page("image/svg+xml", FAVICON_SVG)),
        "" | "index.html" => Ok(page("text/html; charset=utf-8", INDEX_HTML)),
        other => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no dashboard file {other:?}; the dashboard is at /ui/"),
        )),
    }
}

async fn overview(State(state): State<Arc<AdminState>>) -> Result<Json<Overview>, ApiError> {
    let mut apps = Vec::new();
    // Apps with a proxy here, and apps with only a controller here (an external router, or a
    // fleet's leader, whose proxies run elsewhere).
    let names: std::collections::BTreeSet<&String> =
        state.apps.keys().chain(state.controllers.keys()).collect();
    for name in names {
        match (state.controllers.get(name), state.apps.get(name)) {
            (Some(controller), _) => {
                let status = controller.status().await.map_err(ApiError::from)?;
                apps.push(AppSummary::of_status(&status));
            }
            (None, None) => {}
            (None, Some(app)) => {
                let table = app.table();
                let route = &table.route;
                apps.push(AppSummary {
                    app: name.clone(),
                    managed: false,
                    live: route.live,
                    live_version: Some(route.pool(route.live).version.clone()).filter(|v| !v.is_empty()),
                    weights: Slot::ALL
                        .iter()
                        .map(|s| (s.to_string(), route.weight_of(*s)))
                        .collect(),
                    rollout: None,
                    last_decision: None,
                });
            }
        }
    }
    Ok(Json(Overview {
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: state.live.started_at,
        apps,
    }))
}

async fn auth(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Result<StatusCode, ApiError> {
    crate::admin::authorize(&state, &headers)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn series(
    State(state): State<Arc<AdminState>>,
    Path(app): Path<String>,
) -> Result<Json<Series>, ApiError> {
    if !state.controllers.contains_key(&app) {
        let why = if state.apps.contains_key(&app) {
            format!("app {app} is routed by its route table only: it has no rollouts, and no per-slot series")
        } else {
            format!("no app {app}; GET /v1/status lists the apps")
        };
        return Err(ApiError::new(StatusCode::NOT_FOUND, why));
    }
    Ok(Json(Series {
        points: state.live.series(&app),
        app,
        interval_ms: u64::try_from(SAMPLE_INTERVAL.as_millis()).unwrap_or(u64::MAX),
    }))
}

/// What the feed sends next.
enum FeedItem {
    Event(StoredEvent),
    /// Every [`HEARTBEAT`]: a reader that hears nothing for longer knows the feed is stuck.
    Heartbeat,
    Sample(Sample),
    /// Some were missed (a slow reader): the reader should read everything again.
    Resync,
    Closed,
}

/// `GET /v1/stream`: `hello` first, then `event` for each new event of any app, `sample` for
/// each app's traffic every second, `heartbeat` every 5 s, and `resync` when this connection
/// fell behind and missed some (read everything again). Ends at shutdown; browsers reconnect by
/// themselves. (Keep-alive comments are invisible to a page's script; the heartbeat is not.)
async fn stream(
    State(state): State<Arc<AdminState>>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, std::convert::Infallible>>> {
    let events: Vec<broadcast::Receiver<StoredEvent>> =
        state.controllers.values().map(|c| c.subscribe()).collect();
    let samples = state.live.samples.subscribe();
    let hello = Hello {
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at: state.live.started_at,
    };
    let first = SseEvent::default()
        .event("hello")
        .data(serde_json::to_string(&hello).unwrap_or_default());
    let live = Arc::clone(&state.live);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = futures_util::stream::unfold(
        (events, samples, live, heartbeat),
        |(mut events, mut samples, live, mut heartbeat)| async move {
            let next = {
                let mut waiting: Vec<futures_util::future::BoxFuture<'_, FeedItem>> = events
                    .iter_mut()
                    .map(|r| {
                        async move {
                            match r.recv().await {
                                Ok(e) => FeedItem::Event(e),
                                Err(broadcast::error::RecvError::Lagged(_)) => FeedItem::Resync,
                                // The controller is gone: so is the server.
                                Err(broadcast::error::RecvError::Closed) => FeedItem::Closed,
                            }
                        }
                        .boxed()
                    })
                    .collect();
                waiting.push(
                    async {
                        match samples.recv().await {
                            Ok(s) => FeedItem::Sample(s),
                            Err(broadcast::error::RecvError::Lagged(_)) => FeedItem::Resync,
                            Err(broadcast::error::RecvError::Closed) => FeedItem::Closed,
                        }
                    }
                    .boxed(),
                );
                tokio::select! {
                    _ = live.shutdown.cancelled() => FeedItem::Closed,
                    _ = heartbeat.tick() => FeedItem::Heartbeat,
                    // Receiving from a broadcast channel is cancel-safe: the others lose nothing.
                    (next, _, _) = futures_util::future::select_all(waiting) => next,
                }
            };
            let sse = match next {
                FeedItem::Event(e) => SseEvent::default()
                    .event("event")
                    .data(serde_json::to_string(&e).unwrap_or_default()),
                FeedItem::Sample(s) => SseEvent::default()
                    .event("sample")
                    .data(serde_json::to_string(&s).unwrap_or_default()),
                FeedItem::Resync => SseEvent::default().event("resync").data("{}"),
                FeedItem::Heartbeat => SseEvent::default()
                    .event("heartbeat")
                    .data(format!("{{\"at\":{}}}", live.clock.now().as_millis())),
                FeedItem::Closed => return None,
            };
            Some((Ok(sse), (events, samples, live, heartbeat)))
        },
    );
    let stream =
        futures_util::stream::once(async move { Ok::<_, std::convert::Infallible>(first) }).chain(feed);
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// While the admin listener is on loopback only, refuses requests whose `Host` names anything
/// but a loopback address or `localhost`: a page on another site that points its own DNS name
/// at 127.0.0.1 (DNS rebinding) must not read the API from a person's browser.
pub async fn loopback_host_only(
    State(state): State<Arc<AdminState>>,
    request: Request,
    next: Next,
) -> Response {
    if state.loopback_only {
        let hosts = request.headers().get_all(header::HOST);
        if hosts.iter().count() > 1 {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "the request has more than one Host header; send one",
            )
            .into_response();
        }
        // A request without a Host (HTTP/1.0, a script) is not a browser's: browsers always send one.
        if let Some(host) = hosts.iter().next() {
            if !is_loopback_host(host.to_str().unwrap_or("")) {
                return ApiError::new(
                    StatusCode::MISDIRECTED_REQUEST,
                    "the admin API listens on loopback and answers only requests for localhost, 127.0.0.1 or [::1]; \
                     connect to one of those (an SSH tunnel, say)",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

/// `localhost`, `x.localhost`, or a loopback IP, with or without a port.
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // `[addr]` or `[addr]:port`, nothing else after the bracket.
        match rest.split_once(']') {
            Some((addr, "")) => addr,
            Some((addr, port))
                if port
                    .strip_prefix(':')
                    .is_some_and(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())) =>
            {
                addr
            }
            _ => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(h, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                h
            } else {
                host
            }
        })
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn counters(series: u64, requests: u64, errors: u64, client: u64, buckets: Vec<u64>) -> SlotCounters {
        SlotCounters {
            version: "v1".into(),
            series,
            requests,
            server_errors: errors,
            client_errors: Some(client),
            latency_buckets: Some(buckets),
            ..SlotCounters::default()
        }
    }

    #[test]
    fn a_sample_is_the_difference_of_two_readings() {
        let before = counters(1, 100, 1, 2, vec![100, 0, 0]);
        let now = counters(1, 300, 11, 4, vec![250, 0, 50]);
        let s = slot_sample(Slot::Blue, Some("v1".into()), 500, Some(&before), &now, 2000);
        assert_eq!(s.requests, 200);
        assert_eq!(s.rps, 100.0);
        assert_eq!(s.errors_5xx, 10);
        assert_eq!(s.error_rate_5xx, 0.05);
        assert_eq!(s.errors_4xx, Some(2));
        assert_eq!(s.error_rate_4xx, Some(0.01));
        // A quarter of the interval's requests were in the slow bucket: p99 is there.
        assert_eq!(
            s.p99_ms,
            Some(cutover_core::histogram::bucket_upper_micros(2) as f64 / 1000.0)
        );
    }

    #[test]
    fn counters_that_started_again_count_from_zero_and_a_first_reading_counts_nothing() {
        let before = counters(1, 1000, 0, 0, vec![1000]);
        let now = counters(2, 30, 3, 0, vec![30]);
        let s = slot_sample(Slot::Green, None, 0, Some(&before), &now, 1000);
        assert_eq!((s.requests, s.errors_5xx), (30, 3));
        let first = slot_sample(Slot::Green, None, 0, None, &now, 1000);
        assert_eq!((first.requests, first.rps, first.p99_ms), (0, 0.0, None));
        let idle = slot_sample(Slot::Green, None, 0, Some(&now), &now, 1000);
        assert_eq!((idle.error_rate_5xx, idle.p99_ms), (0.0, None));
    }

    /// The page's policy allows no inline code: a handler attribute, an inline script or style,
    /// or code built from strings would be refused by the browser, and is refused here first.
    #[test]
    fn the_assets_hold_no_inline_code_and_fetch_nothing_from_elsewhere() {
        let html = INDEX_HTML.to_ascii_lowercase();
        for (i, part) in html.split("<script").enumerate().skip(1) {
            let tag = part.split('>').next().unwrap_or("");
            assert!(
                tag.contains("src=\"/ui/"),
                "inline or foreign script #{i}: <script{tag}>"
            );
        }
        assert!(!html.contains(" style="), "an inline style attribute");
        assert!(!html.contains("<style"), "an inline style element");
        let attributes = regex_free_handlers(&html);
        assert!(attributes.is_empty(), "inline event handlers: {attributes:?}");
        for text in [INDEX_HTML, DASHBOARD_JS, DASHBOARD_CSS, FAVICON_SVG] {
            for foreign in ["http://", "https://", "//cdn", "@import"] {
                // The SVG namespace is a name, not an address.
                let hits = text.replace("http://www.w3.org/", "").matches(foreign).count();
                assert_eq!(
                    hits, 0,
                    "{foreign} in an asset: everything the page loads is its own"
                );
            }
        }
        let code_of = |text: &str| {
            text.lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let js = code_of(DASHBOARD_JS);
        for code in [
            "eval(",
            "new Function",
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "localStorage",
            "document.cookie",
        ] {
            assert!(!js.contains(code), "{code} in dashboard.js");
        }
    }

    /// ` onclick=`, ` onload=`, ...: attribute names starting with `on` in the HTML.
    fn regex_free_handlers(html: &str) -> Vec<String> {
        html.split(|c: char| c.is_whitespace())
            .filter(|w| {
                w.starts_with("on")
                    && w.contains('=')
                    && w[2..]
                        .split('=')
                        .next()
                        .is_some_and(|n| n.chars().all(|c| c.is_ascii_alphabetic()))
            })
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn only_loopback_names_pass_the_host_check() {
        for ok in [
            "localhost",
            "localhost:9180",
            "127.0.0.1:9180",
            "127.1.2.3",
            "[::1]:9180",
            "[::1]",
            "app.localhost:80",
            "LOCALHOST.",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:9180",
            "10.0.0.1",
            "localhost.evil.example",
            "[::2]:1",
            "",
            "127.0.0.1.evil.example",
            "[::1].evil.example",
            "[::1]evil",
            "[::1]:",
            "[::1",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }
}
