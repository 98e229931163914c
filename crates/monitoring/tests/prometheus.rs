//! `PrometheusSource` against a real Prometheus (started per test on an ephemeral loopback port)
//! scraping a tiny exporter whose counters the test sets, and against fake Prometheus servers
//! that fail on cue to pin down retries. `./scripts/test` installs Prometheus; without it these
//! tests fail rather than skip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use cutover_core::{Slot, Timestamp};
use cutover_monitoring::{
    judge_custom, CheckOutcome, CustomMetric, MetricError, MetricSource, PrometheusConfig, PrometheusSource,
    RequestFailure, WindowQuery,
};
use cutover_test_support::free_port;
use cutover_test_support::monitoring::Prometheus;

/// Scrapes often, so a test waits a fraction of a second for its numbers.
const SCRAPE_INTERVAL: Duration = Duration::from_millis(250);
/// How long Prometheus may take to scrape what a test expects.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(20);
/// Upper bounds of the exporter's latency histogram, in seconds.
const BOUNDS: [f64; 5] = [0.05, 0.1, 0.25, 0.5, 1.0];

/// Counters of one (slot, version) of app `web`, as cutover's proxy exports them.
#[derive(Debug, Default, Clone)]
struct SlotCounters {
    ok: u64,
    errors: u64,
    /// 4xx responses by code.
    codes: BTreeMap<u16, u64>,
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [u64; BOUNDS.len() + 1],
    sum_secs: f64,
}

/// An HTTP server exposing `cutover_requests_total` and `cutover_request_duration_seconds` in
/// the Prometheus text format, with values the test controls.
#[derive(Clone)]
struct Exporter {
    addr: SocketAddr,
    slots: Arc<Mutex<BTreeMap<(String, String), SlotCounters>>>,
}

impl Exporter {
    async fn start() -> Exporter {
        let slots: Arc<Mutex<BTreeMap<(String, String), SlotCounters>>> = Arc::default();
        let shared = Arc::clone(&slots);
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let slots = Arc::clone(&shared);
                async move { render(&slots.lock().unwrap()) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Exporter { addr, slots }
    }

    /// Adds 4xx responses by code.
    fn record_codes(&self, slot: &str, version: &str, codes: &[(u16, u64)]) {
        let mut slots = self.slots.lock().unwrap();
        let c = slots.entry((slot.to_owned(), version.to_owned())).or_default();
        for (code, n) in codes {
            *c.codes.entry(*code).or_default() += n;
        }
    }

    /// Adds `ok` 2xx and `errors` 5xx responses, and `latencies` as (seconds, count).
    fn record(&self, slot: &str, version: &str, ok: u64, errors: u64, latencies: &[(f64, u64)]) {
        let mut slots = self.slots.lock().unwrap();
        let c = slots.entry((slot.to_owned(), version.to_owned())).or_default();
        c.ok += ok;
        c.errors += errors;
        for &(secs, n) in latencies {
            let i = BOUNDS.iter().position(|&b| secs <= b).unwrap_or(BOUNDS.len());
            c.buckets[i] += n;
            c.sum_secs += secs * n as f64;
        }
    }
}

fn render(slots: &BTreeMap<(String, String), SlotCounters>) -> String {
    let mut out = String::from("# TYPE cutover_requests_total counter\n");
    for ((slot, version), c) in slots {
        let labels = format!(r#"app="web",slot="{slot}",version="{version}""#);
        writeln!(
            out,
            r#"cutover_requests_total{{{labels},code_class="2xx"}} {}"#,
            c.ok
        )
        .unwrap();
        writeln!(
            out,
            r#"cutover_requests_total{{{labels},code_class="5xx"}} {}"#,
            c.errors
        )
        .unwrap();
        let total: u64 = c.codes.values().sum();
        writeln!(
            out,
            r#"cutover_requests_total{{{labels},code_class="4xx"}} {total}"#
        )
        .unwrap();
    }
    out.push_str("# TYPE cutover_responses_by_code_total counter\n");
    for ((slot, version), c) in slots {
        let labels = format!(r#"app="web",slot="{slot}",version="{version}""#);
        // Like cutover, every counted code always has its series (here two of them).
        for code in [401u16, 404] {
            let n = c.codes.get(&code).copied().unwrap_or(0);
            writeln!(
                out,
                r#"cutover_responses_by_code_total{{{labels},code="{code}"}} {n}"#
            )
            .unwrap();
        }
    }
    out.push_str("# TYPE cutover_request_duration_seconds histogram\n");
    for ((slot, version), c) in slots {
        let labels = format!(r#"app="web",slot="{slot}",version="{version}""#);
        let mut cumulative = 0;
        for (i, n) in c.buckets.iter().enumerate() {
            cumulative += n;
            let le = BOUNDS.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
            writeln!(
                out,
                r#"cutover_request_duration_seconds_bucket{{{labels},le="{le}"}} {cumulative}"#
            )
            .unwrap();
        }
        writeln!(
            out,
            "cutover_request_duration_seconds_sum{{{labels}}} {}",
            c.sum_secs
        )
        .unwrap();
        writeln!(
            out,
            "cutover_request_duration_seconds_count{{{labels}}} {cumulative}"
        )
        .unwrap();
    }
    out
}

fn window(slot: Slot, version: &str, to: Timestamp) -> WindowQuery {
    WindowQuery {
        app: "web".into(),
        slot,
        version: version.into(),
        // Longer than the test's Prometheus has been running, so the window starts before its
        // first scrape.
        from: Timestamp::from_millis(to.as_millis() - 300_000),
        to,
    }
}

fn assert_close(got: Option<f64>, want: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no data, expected {want}"));
    assert!((got - want).abs() < 1e-6, "{what}: got {got}, expected {want}");
}

/// An exporter with the given (slot, version) series at zero, a Prometheus scraping it, and a
/// source for that Prometheus; returns once Prometheus has scraped the zeros, so that increases
/// recorded afterwards fall inside a window.
async fn setup(
    series: &[(&str, &str)],
    config: impl FnOnce(&mut PrometheusConfig),
) -> (Exporter, Prometheus, PrometheusSource) {
    let exporter = Exporter::start().await;
    for (slot, version) in series {
        exporter.record(slot, version, 0, 0, &[]);
    }
    let prometheus = Prometheus::start(&[("cutover", exporter.addr, "/metrics")], SCRAPE_INTERVAL).await;
    let want = (series.len() * 3) as f64;
    prometheus
        .wait_for(
            "count(cutover_requests_total)",
            |s| s.first().is_some_and(|s| s.value == want),
            SCRAPE_DEADLINE,
        )
        .await;
    let mut c = PrometheusConfig::new(&prometheus.url);
    config(&mut c);
    let source = PrometheusSource::new(c).unwrap();
    (exporter, prometheus, source)
}

/// Waits until Prometheus has scraped a total of `total` requests and returns the time of that
/// scrape. Evaluating a window exactly at a scrape leaves `increase` nothing to extrapolate, so
/// the expected numbers are exact.
async fn scraped(prometheus: &Prometheus, total: f64) -> Timestamp {
    prometheus
        .wait_for(
            "sum(cutover_requests_total)",
            |s| s.first().is_some_and(|s| s.value == total),
            SCRAPE_DEADLINE,
        )
        .await;
    let at = prometheus
        .wait_for(
            "max(timestamp(cutover_requests_total))",
            |s| s.len() == 1,
            SCRAPE_DEADLINE,
        )
        .await;
    Timestamp::from_millis((at[0].value * 1000.0).round() as u64)
}

#[tokio::test]
async fn measures_requests_errors_latency_and_custom_metrics_per_slot() {
    let error_ratio = CustomMetric::lower_is_better(
        "error_ratio",
        r#"sum(increase(cutover_requests_total{slot="{slot}",version="{version}",code_class="5xx"}[{interval}])) / sum(increase(cutover_requests_total{slot="{slot}",version="{version}"}[{interval}]))"#,
    )
    .with_max(0.02);
    let metrics = vec![error_ratio];
    let custom = metrics.clone();
    let (exporter, prometheus, source) =
        setup(&[("green", "v2"), ("blue", "v1")], move |c| c.custom = custom).await;

    // Green: 100 requests, 5 failed; 98 fast, 2 slow, so p99 falls in (0.1, 0.25]: 175 ms.
    exporter.record("green", "v2", 95, 5, &[(0.03, 98), (0.2, 2)]);
    // Blue: 200 requests, all fine and fast: p99 is 99 % into the first bucket, 49.5 ms.
    exporter.record("blue", "v1", 200, 0, &[(0.03, 200)]);
    let at = scraped(&prometheus, 300.0).await;

    let source: &dyn MetricSource = &source;
    let green = source.measure(&window(Slot::Green, "v2", at)).await.unwrap();
    assert_close(green.requests, 100.0, "green requests");
    assert_close(green.errors, 5.0, "green errors");
    assert_close(green.p99_ms, 175.0, "green p99");
    assert_close(green.custom["error_ratio"], 0.05, "green error ratio");

    let blue = source.measure(&window(Slot::Blue, "v1", at)).await.unwrap();
    assert_close(blue.requests, 200.0, "blue requests");
    assert_close(blue.errors, 0.0, "blue errors");
    assert_close(blue.p99_ms, 49.5, "blue p99");
    assert_close(blue.custom["error_ratio"], 0.0, "blue error ratio");

    let checks = judge_custom(&metrics, &green, Some(&blue));
    assert_eq!(checks[0].outcome, CheckOutcome::Fail, "{}", checks[0].reason);
    assert_eq!(checks[0].reason, "canary 0.05 is above max 0.02");
    let checks = judge_custom(&metrics, &blue, None);
    assert_eq!(checks[0].outcome, CheckOutcome::Pass, "{}", checks[0].reason);

    // The same numbers as a chart: one series per code class, the last point at the scrape.
    let prom = PrometheusSource::new(PrometheusConfig::new(&prometheus.url)).unwrap();
    let series = prom
        .query_range(
            r#"cutover_requests_total{slot="green"}"#,
            Timestamp::from_millis(at.as_millis() - 60_000),
            at,
            SCRAPE_INTERVAL,
        )
        .await
        .unwrap();
    let last: BTreeMap<&str, Option<f64>> = series
        .iter()
        .map(|s| (s.labels["code_class"].as_str(), s.points.last().unwrap().1))
        .collect();
    assert_eq!(
        last,
        BTreeMap::from([("2xx", Some(95.0)), ("4xx", Some(0.0)), ("5xx", Some(5.0))])
    );
    assert_eq!(series[0].points.last().unwrap().0, at);
    // Points from the first scrape (still zero) on: at least two, one scrape interval apart.
    assert!(series[0].points.len() > 1, "{series:?}");
    assert_eq!(series[0].points[0].1, Some(0.0), "{series:?}");
}

/// The 4xx the judge compares with the baseline's, and the codes behind them, from cutover's own
/// exported series.
#[tokio::test]
async fn measures_4xx_and_their_codes_per_slot() {
    let (exporter, prometheus, source) = setup(&[("green", "v2"), ("blue", "v1")], |_| {}).await;
    exporter.record("green", "v2", 90, 0, &[(0.03, 100)]);
    exporter.record_codes("green", "v2", &[(401, 7), (404, 3)]);
    exporter.record("blue", "v1", 200, 0, &[(0.03, 200)]);
    let at = scraped(&prometheus, 300.0).await;
    let green = source.measure(&window(Slot::Green, "v2", at)).await.unwrap();
    assert_close(green.requests, 100.0, "green requests");
    assert_close(green.client_errors, 10.0, "green 4xx");
    let codes = green.codes.clone().unwrap();
    assert_close(codes.get(&401).copied(), 7.0, "green 401s");
    assert_close(codes.get(&404).copied(), 3.0, "green 404s");
    let blue = source.measure(&window(Slot::Blue, "v1", at)).await.unwrap();
    assert_close(blue.client_errors, 0.0, "blue 4xx");
    assert_close(blue.codes.unwrap().get(&401).copied(), 0.0, "blue 401s");

    // Turned off, they are not asked.
    let quiet = PrometheusSource::new(PrometheusConfig {
        client_errors_query: Some(String::new()),
        codes_query: None,
        ..PrometheusConfig::new(&prometheus.url)
    })
    .unwrap();
    let m = quiet.measure(&window(Slot::Green, "v2", at)).await.unwrap();
    assert_eq!((m.client_errors, m.codes), (None, None));
}

#[tokio::test]
async fn no_data_is_none_and_queries_must_aggregate_to_one_series() {
    let (exporter, prometheus, source) = setup(&[("green", "v2"), ("blue", "v1")], |_| {}).await;
    exporter.record("green", "v2", 10, 0, &[(0.03, 10)]);
    let at = scraped(&prometheus, 10.0).await;

    // No series for this version at all: empty results.
    let m = source.measure(&window(Slot::Green, "v9", at)).await.unwrap();
    assert_eq!((m.requests, m.errors, m.p99_ms), (None, None, None), "{m:?}");

    // Series that exist but saw no traffic: zero requests, and a quantile of nothing is NaN.
    let m = source.measure(&window(Slot::Blue, "v1", at)).await.unwrap();
    assert_eq!(
        (m.requests, m.errors, m.p99_ms),
        (Some(0.0), Some(0.0), None),
        "{m:?}"
    );

    // +Inf (a quantile in the +Inf bucket, say) is no number either.
    let inf = source.query_value("inf", "1/0", at).await.unwrap();
    assert_eq!(inf, None);

    // One series per code class: which one would be judged? Refused, with the fix.
    let query = r#"increase(cutover_requests_total{slot="green"}[1m])"#;
    let err = source.query_value("requests", query, at).await.unwrap_err();
    match &err {
        MetricError::NotOneSeries { series, example, .. } => {
            assert_eq!(*series, 3);
            assert!(example.contains("code_class"), "{example}");
        }
        other => panic!("expected NotOneSeries, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains("wrap it in sum(...)") && text.contains(query),
        "{text}"
    );

    // A bare range selector is not a number.
    let err = source
        .query_value("requests", "cutover_requests_total[1m]", at)
        .await
        .unwrap_err();
    assert!(matches!(err, MetricError::UnexpectedResult { .. }), "{err:?}");

    // A real Prometheus rejecting a query: reported at once, naming the query.
    let err = source.query_value("requests", "sum(", at).await.unwrap_err();
    match &err {
        MetricError::Query {
            attempts, last_error, ..
        } => {
            assert_eq!(*attempts, 1, "a bad query was retried: {err}");
            assert!(
                matches!(last_error, RequestFailure::Api { status: 400, error_type, .. } if error_type == "bad_data"),
                "{last_error:?}"
            );
        }
        other => panic!("expected Query, got {other:?}"),
    }
    assert!(err.to_string().contains("fix the query"), "{err}");
}

/// A stand-in for Prometheus that answers the n-th request with `script[n]` (the last entry
/// repeats), or never answers when the status is 0; counts requests.
async fn fake_prometheus(script: Vec<(u16, &'static str)>) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = Router::new().route(
        "/api/v1/query",
        get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let (status, body) = script[n.min(script.len() - 1)];
            async move {
                if status == 0 {
                    std::future::pending::<()>().await;
                }
                (StatusCode::from_u16(status).unwrap(), body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

const ANSWER_42: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1700000000,"42"]}]}}"#;
const UNAVAILABLE: &str = "Service Unavailable";

fn source(url: &str, retries: u32, timeout_ms: u64) -> PrometheusSource {
    let mut c = PrometheusConfig::new(url);
    c.retries = retries;
    c.retry_backoff_ms = 20;
    c.timeout_ms = timeout_ms;
    PrometheusSource::new(c).unwrap()
}

#[tokio::test]
async fn a_retry_gets_past_transient_failures() {
    let (url, hits) = fake_prometheus(vec![(503, UNAVAILABLE), (503, UNAVAILABLE), (200, ANSWER_42)]).await;
    let value = source(&url, 2, 2000)
        .query_value("requests", "sum(x)", Timestamp::from_millis(1))
        .await
        .unwrap();
    assert_eq!(value, Some(42.0));
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn retries_stop_at_the_configured_count() {
    let (url, hits) = fake_prometheus(vec![(503, UNAVAILABLE), (503, UNAVAILABLE), (200, ANSWER_42)]).await;
    let err = source(&url, 1, 2000)
        .query_value("requests", "sum(x)", Timestamp::from_millis(1))
        .await
        .unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    match &err {
        MetricError::Query {
            attempts,
            last_error,
            query,
            ..
        } => {
            assert_eq!(*attempts, 2);
            assert_eq!(query, "sum(x)");
            assert!(
                matches!(last_error, RequestFailure::Status { status: 503, body } if body == UNAVAILABLE)
            );
        }
        other => panic!("expected Query, got {other:?}"),
    }
}

#[tokio::test]
async fn api_errors_are_retried_only_when_transient() {
    let (url, hits) = fake_prometheus(vec![
        (
            503,
            r#"{"status":"error","errorType":"unavailable","error":"starting up"}"#,
        ),
        (200, ANSWER_42),
    ])
    .await;
    let value = source(&url, 2, 2000)
        .query_value("requests", "sum(x)", Timestamp::from_millis(1))
        .await
        .unwrap();
    assert_eq!((value, hits.load(Ordering::SeqCst)), (Some(42.0), 2));

    let (url, hits) = fake_prometheus(vec![(
        422,
        r#"{"status":"error","errorType":"execution","error":"many-to-many matching not allowed"}"#,
    )])
    .await;
    let err = source(&url, 2, 2000)
        .query_value("requests", "a / b", Timestamp::from_millis(1))
        .await
        .unwrap_err();
    assert_eq!(hits.load(Ordering::SeqCst), 1, "{err}");
    assert!(err.to_string().contains("many-to-many"), "{err}");
}

#[tokio::test]
async fn a_hanging_prometheus_times_out_on_every_attempt() {
    let (url, hits) = fake_prometheus(vec![(0, "")]).await;
    let started = Instant::now();
    let err = source(&url, 1, 150)
        .query_value("requests", "sum(x)", Timestamp::from_millis(1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            MetricError::Query {
                attempts: 2,
                last_error: RequestFailure::Timeout { ms: 150 },
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    // Two timeouts and one backoff, not a hang.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_unreachable_prometheus_is_an_error_after_the_retries() {
    // Nothing listens there (the port was free a moment ago).
    let url = format!("http://127.0.0.1:{}", free_port());
    let started = Instant::now();
    let q = window(Slot::Green, "v2", Timestamp::from_millis(1_700_000_000_000));
    let err = source(&url, 2, 2000).measure(&q).await.unwrap_err();
    match &err {
        MetricError::Query {
            attempts,
            last_error: RequestFailure::Transport(_),
            url: at,
            ..
        } => {
            assert_eq!(*attempts, 3);
            assert_eq!(at, &url);
        }
        other => panic!("expected a transport failure, got {other:?}"),
    }
    // Backoffs of 20 ms and 40 ms were observed.
    assert!(started.elapsed() >= Duration::from_millis(60));
    let text = err.to_string();
    assert!(text.contains("after 3 attempt(s)"), "{text}");
    assert!(text.contains("check that the server runs at that URL"), "{text}");
    assert!(
        text.contains("cutover_requests_total"),
        "the query is missing: {text}"
    );
}
