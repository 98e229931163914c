#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The data plane against real example-app processes on ephemeral loopback ports.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cutover_core::{Pool, RouteTable, Slot};
use cutover_proxy::{AppProxy, ListenerKind, ProxySettings};
use cutover_test_support::{http_client, wait_until, ExampleApp};
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const PREVIEW_TOKEN: &str = "preview-token-0123456789";

struct Proxy {
    app: Arc<AppProxy>,
    public: SocketAddr,
    preview: SocketAddr,
    shutdown: CancellationToken,
}

impl Proxy {
    async fn start(settings: ProxySettings, route: RouteTable) -> Proxy {
        let app = AppProxy::new("web", settings, route).unwrap();
        let shutdown = CancellationToken::new();
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let preview = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (public_addr, preview_addr) = (public.local_addr().unwrap(), preview.local_addr().unwrap());
        for (listener, kind) in [(public, ListenerKind::Public), (preview, ListenerKind::Preview)] {
            tokio::spawn(cutover_proxy::serve(
                listener,
                Arc::clone(&app),
                kind,
                None,
                shutdown.clone(),
                Duration::from_secs(5),
            ));
        }
        Proxy {
            app,
            public: public_addr,
            preview: preview_addr,
            shutdown,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.public)
    }

    fn set_weight(&self, weight: u16) {
        let mut route = self.app.route();
        route.canary_weight_bp = weight;
        self.app.apply(route).unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.app.retire_all();
    }
}

fn settings() -> ProxySettings {
    let mut s = ProxySettings::default();
    s.sticky.user_key_header = Some("X-User-ID".into());
    s.preview.token = Some(PREVIEW_TOKEN.into());
    s.health_check.interval_ms = 50;
    s.health_check.timeout_ms = 1000;
    s.health_check.healthy_threshold = 1;
    s.health_check.unhealthy_threshold = 1;
    s
}

/// A loopback port with nothing behind it: bound, then closed.
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn route(blue: &[&ExampleApp], green: &[&ExampleApp], weight: u16) -> RouteTable {
    let pool = |apps: &[&ExampleApp]| Pool {
        version: apps.first().map(|a| a.version.clone()).unwrap_or_default(),
        backends: apps.iter().map(|a| a.addr).collect(),
    };
    RouteTable {
        live: Slot::Blue,
        canary_weight_bp: weight,
        blue: pool(blue),
        green: pool(green),
    }
}

fn version(r: &reqwest::Response) -> String {
    r.headers()
        .get("x-app-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string()
}

async fn version_for_user(client: &reqwest::Client, proxy: &Proxy, user: &str) -> String {
    let r = client
        .get(proxy.url("/"))
        .header("X-User-ID", user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "request for {user} failed");
    version(&r)
}

#[tokio::test]
async fn weighted_split_is_within_statistical_tolerance() {
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let proxy = Proxy::start(settings(), route(&[&v1], &[&v2], 2_000)).await;
    let client = http_client();
    let n = 2_000;
    let mut on_v2 = 0;
    for u in 0..n {
        if version_for_user(&client, &proxy, &format!("user-{u}")).await == "v2" {
            on_v2 += 1;
        }
    }
    let share = f64::from(on_v2) / f64::from(n);
    // 20 % expected; 5 standard deviations of a binomial share over 2000 users is 4.5 points.
    assert!(
        (share - 0.20).abs() < 0.045,
        "observed canary share {share}, configured 0.20"
    );
}

#[tokio::test]
async fn sticky_users_never_leave_the_canary_while_the_weight_grows() {
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let proxy = Proxy::start(settings(), route(&[&v1], &[&v2], 0)).await;
    let client = http_client();
    let mut on_canary: HashSet<u32> = HashSet::new();
    for weight in [0u16, 100, 500, 2_500, 5_000, 9_000, 10_000] {
        proxy.set_weight(weight);
        for u in 0..300u32 {
            let first = version_for_user(&client, &proxy, &format!("user-{u}")).await;
            let again = version_for_user(&client, &proxy, &format!("user-{u}")).await;
            assert_eq!(
                first, again,
                "user-{u} changed version within one step at weight {weight}"
            );
            if first == "v2" {
                on_canary.insert(u);
            } else {
                assert!(
                    !on_canary.contains(&u),
                    "user-{u} went back to v1 at weight {weight}"
                );
            }
        }
    }
    assert_eq!(on_canary.len(), 300, "at 100 % everybody is on the canary");
}

#[tokio::test]
async fn a_bucket_cookie_is_issued_to_anonymous_clients_and_honoured() {
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let proxy = Proxy::start(settings(), route(&[&v1], &[&v2], 5_000)).await;
    let client = http_client();
    let mut seen = HashMap::new();
    for _ in 0..40 {
        let first = client.get(proxy.url("/")).send().await.unwrap();
        let set_cookie = first
            .headers()
            .get("set-cookie")
            .expect("a bucket cookie")
            .to_str()
            .unwrap()
            .to_string();
        assert!(set_cookie.starts_with("cutover_bucket="), "{set_cookie}");
        for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(set_cookie.contains(attribute), "{set_cookie} lacks {attribute}");
        }
        let cookie = set_cookie.split(';').next().unwrap().to_string();
        let v = version(&first);
        for _ in 0..5 {
            let r = client
                .get(proxy.url("/"))
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap();
            assert!(
                r.headers().get("set-cookie").is_none(),
                "no new cookie for a client that has one"
            );
            assert_eq!(version(&r), v, "client with {cookie} changed version");
        }
        *seen.entry(v).or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "at 50 % both versions serve some anonymous clients: {seen:?}"
    );
}

#[tokio::test]
async fn preview_listener_and_token_header_reach_the_idle_slot() {
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let proxy = Proxy::start(settings(), route(&[&v1], &[&v2], 0)).await;
    let client = http_client();
    let r = client
        .get(format!("http://{}/", proxy.preview))
        .send()
        .await
        .unwrap();
    assert_eq!(
        version(&r),
        "v2",
        "the preview listener serves the slot that is not live"
    );

    let with = |value: &str| {
        client
            .get(proxy.url("/headers"))
            .header("x-cutover-preview", value.to_string())
            .send()
    };
    assert_eq!(
        version(&with(&format!("green:{PREVIEW_TOKEN}")).await.unwrap()),
        "v2"
    );
    for wrong in ["green:not-the-token-at-all", "green", "green:", "purple:x"] {
        let r = with(wrong).await.unwrap();
        assert_eq!(version(&r), "v1", "header {wrong:?} must be ignored");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["headers"].get("x-cutover-preview").is_none(),
            "the header is stripped: {body}"
        );
    }
}

#[tokio::test]
async fn unhealthy_backends_are_taken_out_and_readmitted() {
    let (a, b) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v1", &[]));
    let proxy = Proxy::start(settings(), route(&[&a, &b], &[], 0)).await;
    let client = http_client();
    let backend_a = || Arc::clone(&proxy.app.table().pool(Slot::Blue).backends[0]);
    client
        .post(a.url("/control/ready?value=false"))
        .send()
        .await
        .unwrap();
    wait_until("backend a marked unhealthy", Duration::from_secs(10), || async {
        !backend_a().is_healthy()
    })
    .await;
    for _ in 0..50 {
        let r = client.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(
            r.headers()["x-app-instance"].to_str().unwrap(),
            b.port().to_string()
        );
    }
    client
        .post(a.url("/control/ready?value=true"))
        .send()
        .await
        .unwrap();
    wait_until("backend a readmitted", Duration::from_secs(10), || async {
        backend_a().is_healthy()
    })
    .await;
    wait_until(
        "a request reaches backend a again",
        Duration::from_secs(10),
        || async {
            let r = client.get(proxy.url("/")).send().await.unwrap();
            r.headers()["x-app-instance"].to_str().unwrap() == a.port().to_string()
        },
    )
    .await;
}

#[tokio::test]
async fn a_request_that_cannot_connect_is_retried_on_another_backend() {
    let live = ExampleApp::spawn("v1", &[]);
    let dead = closed_port();
    let mut s = settings();
    s.health_check.enabled = false;
    let mut table = route(&[&live], &[], 0);
    table.blue.backends.insert(0, dead);
    let proxy = Proxy::start(s, table).await;
    let client = http_client();
    for i in 0..30 {
        let r = client
            .post(proxy.url("/echo"))
            .body(format!("payload {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["body_len"], format!("payload {i}").len());
    }
    let pool = proxy.app.table();
    let pool = pool.pool(Slot::Blue);
    let snapshot = pool.metrics.snapshot();
    assert!(snapshot.connect_failures >= 1, "the dead backend was tried");
    assert_eq!(snapshot.server_errors(), 0);
    assert!(pool.backends[0].is_ejected(), "the dead backend is ejected");
}

#[tokio::test]
async fn a_slot_losing_traffic_drains_its_in_flight_requests() {
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let proxy = Proxy::start(settings(), route(&[&v1], &[&v2], 0)).await;
    let client = http_client();
    // Warm a keep-alive connection to blue, then start a slow request on it.
    assert_eq!(version(&client.get(proxy.url("/")).send().await.unwrap()), "v1");
    let slow = tokio::spawn({
        let (client, url) = (client.clone(), proxy.url("/slow?ms=1500"));
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status(), version(&r), r.text().await.unwrap())
        }
    });
    let blue = Arc::clone(&proxy.app.table().pool(Slot::Blue).backends[0]);
    wait_until(
        "the slow request is in flight",
        Duration::from_secs(10),
        || async { blue.in_flight() == 1 },
    )
    .await;
    proxy.set_weight(10_000);
    assert_eq!(
        blue.idle_connections(),
        0,
        "idle connections to the drained slot are closed"
    );
    for _ in 0..20 {
        assert_eq!(version(&client.get(proxy.url("/")).send().await.unwrap()), "v2");
    }
    let (status, v, body) = slow.await.unwrap();
    assert_eq!(
        (status.as_u16(), v.as_str(), body.as_str()),
        (200, "v1", "slow done")
    );
    assert_eq!(
        blue.idle_connections(),
        0,
        "the finished request's connection was not kept"
    );
}

#[tokio::test]
async fn requests_still_running_after_the_drain_timeout_are_cut() {
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let mut s = settings();
    s.drain_timeout_ms = 200;
    let proxy = Proxy::start(s, route(&[&v1], &[&v2], 0)).await;
    let client = http_client();
    let response = client
        .get(proxy.url("/sse?events=100&interval_ms=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(version(&response), "v1");
    let mut stream = response.bytes_stream();
    assert!(stream.next().await.unwrap().is_ok());
    proxy.set_weight(10_000);
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(chunk) = stream.next().await {
            if chunk.is_err() {
                return "cut";
            }
        }
        "ended"
    })
    .await
    .expect("the stream ends once the drain timeout passes");
    assert_eq!(
        outcome, "cut",
        "a stream of 100 events at 100 ms cannot end on its own in time"
    );
}

#[tokio::test]
async fn server_sent_events_stream_through_unbuffered() {
    let v1 = ExampleApp::spawn("v1", &[]);
    let proxy = Proxy::start(settings(), route(&[&v1], &[], 0)).await;
    // The second event comes a minute after the first: a buffering proxy would hold the first.
    let response = http_client()
        .get(proxy.url("/sse?events=2&interval_ms=60000"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("the first event arrives long before the stream ends")
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("data: event 0"),
        "{first:?}"
    );
}

#[tokio::test]
async fn websockets_pass_through() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let v1 = ExampleApp::spawn("v1", &[]);
    let proxy = Proxy::start(settings(), route(&[&v1], &[], 0)).await;
    let (mut ws, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", proxy.public))
        .await
        .unwrap();
    assert_eq!(response.status(), 101);
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}").into())).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn forwarded_headers_are_set_and_hop_by_hop_headers_removed() {
    let v1 = ExampleApp::spawn("v1", &[]);
    let proxy = Proxy::start(settings(), route(&[&v1], &[], 0)).await;
    let r = http_client()
        .get(proxy.url("/headers"))
        .header("x-forwarded-for", "203.0.113.9")
        .header("connection", "x-private-hop")
        .header("x-private-hop", "secret")
        .header("te", "trailers")
        .header("x-user-id", "u1")
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    let h = &body["headers"];
    assert_eq!(h["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], proxy.public.to_string());
    assert_eq!(h["x-user-id"], "u1");
    for gone in ["x-private-hop", "te", "connection"] {
        assert!(h.get(gone).is_none(), "{gone} must not reach the backend: {h}");
    }
}

#[tokio::test]
async fn limits_and_timeouts_answer_with_clear_statuses() {
    let v1 = ExampleApp::spawn("v1", &[]);
    let mut s = settings();
    s.max_request_body_bytes = 1024;
    s.response_timeout_ms = 300;
    let proxy = Proxy::start(s, route(&[&v1], &[], 0)).await;
    let client = http_client();
    let r = client
        .post(proxy.url("/echo"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = client.get(proxy.url("/slow?ms=5000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    let r = client
        .post(proxy.url("/echo"))
        .body(vec![b'x'; 512])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Pointing users at an empty slot is refused, and the table stays as it was.
    let before = proxy.app.route();
    let mut table = before.clone();
    table.green.backends = table.blue.backends.clone();
    table.blue.backends.clear();
    let errors = proxy.app.apply(table).unwrap_err();
    assert_eq!(errors.errors[0].field, "blue.backends", "{errors}");
    assert_eq!(proxy.app.route(), before);
}

#[tokio::test]
async fn http2_cleartext_clients_are_served() {
    let v1 = ExampleApp::spawn("v1", &[]);
    let proxy = Proxy::start(settings(), route(&[&v1], &[], 0)).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let r = client.get(proxy.url("/headers")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(version(&r), "v1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body["headers"]["host"],
        proxy.public.to_string(),
        "the :authority becomes Host upstream"
    );
}

#[tokio::test]
async fn metrics_follow_traffic_and_render_as_prometheus_text() {
    let (v1, v2) = (
        ExampleApp::spawn("v1", &[]),
        ExampleApp::spawn("v2", &["--error-rate", "1"]),
    );
    let proxy = Proxy::start(settings(), route(&[&v1], &[&v2], 10_000)).await;
    let client = http_client();
    let mark = proxy.app.table().pool(Slot::Green).metrics.snapshot();
    for _ in 0..10 {
        client.get(proxy.url("/")).send().await.unwrap();
    }
    let window = proxy
        .app
        .table()
        .pool(Slot::Green)
        .metrics
        .snapshot()
        .since(&mark);
    assert_eq!(window.total_requests(), 10);
    assert_eq!(window.server_errors(), 10);
    assert!(window.latency_quantile(0.99).is_some());

    let text = cutover_proxy::prometheus::render([proxy.app.as_ref()]);
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text");
    let errors = scrape
        .samples
        .iter()
        .find(|s| {
            s.metric == "cutover_requests_total"
                && s.labels.get("slot") == Some("green")
                && s.labels.get("version") == Some("v2")
                && s.labels.get("code_class") == Some("5xx")
        })
        .expect("a 5xx series for green");
    assert!(
        matches!(errors.value, prometheus_parse::Value::Counter(v) if v == 10.0),
        "{:?}",
        errors.value
    );
}

/// The proxy's own HTTP/1.1 client: bodies of unknown length go chunked and arrive whole, bodyless
/// responses (HEAD, 204, 304) end where they must, and one warm connection serves request after
/// request.
#[tokio::test]
async fn upstream_framing_and_connection_reuse() {
    let v1 = ExampleApp::spawn("v1", &[]);
    let proxy = Proxy::start(settings(), route(&[&v1], &[], 0)).await;
    let client = http_client();

    // A streamed body without a length reaches the backend chunked and whole.
    let pieces: Vec<Result<&'static str, std::io::Error>> = vec![Ok("hello "), Ok("chunked "), Ok("world")];
    let r = client
        .post(proxy.url("/echo"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echoed: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echoed["body"], "hello chunked world", "{echoed}");
    assert_eq!(echoed["headers"]["transfer-encoding"], "chunked", "{echoed}");

    // An empty POST keeps its Content-Length: 0.
    let r = client.post(proxy.url("/echo")).body("").send().await.unwrap();
    let echoed: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echoed["headers"]["content-length"], "0", "{echoed}");

    // Bodyless responses end at the head, and the connection goes on serving.
    for _ in 0..3 {
        let r = client.head(proxy.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.bytes().await.unwrap().is_empty());
        let r = client.get(proxy.url("/status/204")).send().await.unwrap();
        assert_eq!(r.status(), 204);
        let r = client.get(proxy.url("/status/304")).send().await.unwrap();
        assert_eq!(r.status(), 304);
    }
    for i in 0..50 {
        let r = client.get(proxy.url("/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        r.bytes().await.unwrap();
    }
    // Sequential requests need one upstream connection, kept warm between them.
    let backend = Arc::clone(&proxy.app.table().pool(Slot::Blue).backends[0]);
    wait_until(
        "the warm connection is back in the pool",
        Duration::from_secs(5),
        || {
            let backend = Arc::clone(&backend);
            async move { backend.idle_connections() >= 1 }
        },
    )
    .await;
    assert!(
        backend.idle_connections() <= 2,
        "{} idle connections",
        backend.idle_connections()
    );
}

/// One response read off a raw connection: status, headers (lower-case names), body.
async fn read_response(
    reader: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> (u16, HashMap<String, String>, Vec<u8>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    let status: u16 = line
        .split(' ')
        .nth(1)
        .unwrap_or_else(|| panic!("status line {line:?}"))
        .parse()
        .unwrap();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.unwrap();
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').unwrap();
        headers.insert(name.to_ascii_lowercase(), value.trim().to_string());
    }
    let mut body = Vec::new();
    if let Some(length) = headers.get("content-length") {
        body.resize(length.parse().unwrap(), 0);
        reader.read_exact(&mut body).await.unwrap();
    } else if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        loop {
            line.clear();
            reader.read_line(&mut line).await.unwrap();
            let size = usize::from_str_radix(line.trim_end(), 16).unwrap();
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await.unwrap();
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else if status >= 200 && status != 204 && status != 304 {
        reader.read_to_end(&mut body).await.unwrap();
    }
    (status, headers, body)
}

async fn raw_connection(proxy: &Proxy) -> tokio::io::BufReader<tokio::net::TcpStream> {
    tokio::io::BufReader::new(tokio::net::TcpStream::connect(proxy.public).await.unwrap())
}

async fn send(reader: &mut tokio::io::BufReader<tokio::net::TcpStream>, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    reader.get_mut().write_all(bytes).await.unwrap();
}

async fn closed(reader: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> bool {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    matches!(
        tokio::time::timeout(Duration::from_secs(10), reader.read_to_end(&mut rest)).await,
        Ok(Ok(0))
    )
}

/// The proxy's own HTTP/1.1 server, on the wire: pipelining, chunked and 100-continue request
/// bodies, HTTP/1.0, bad heads, and idle connections closed when the listener stops.
#[tokio::test]
async fn clients_are_served_http1_to_the_letter() {
    let v1 = ExampleApp::spawn("v1", &[]);
    let proxy = Proxy::start(settings(), route(&[&v1], &[], 0)).await;

    // Two pipelined requests are answered in order on one connection.
    let mut c = raw_connection(&proxy).await;
    send(
        &mut c,
        b"GET /headers HTTP/1.1\r\nhost: a\r\nx-n: 1\r\n\r\nGET /headers HTTP/1.1\r\nhost: a\r\nx-n: 2\r\n\r\n",
    )
    .await;
    for n in ["1", "2"] {
        let (status, headers, body) = read_response(&mut c).await;
        assert_eq!(status, 200);
        assert!(headers.contains_key("date"), "{headers:?}");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["headers"]["x-n"], n, "{body}");
    }

    // A chunked request body, with an extension and a trailer, arrives whole.
    send(
        &mut c,
        b"POST /echo HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
    )
    .await;
    let (status, _, body) = read_response(&mut c).await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["body"], "hello world", "{body}");

    // Expect: 100-continue gets its interim response before the body is sent.
    send(
        &mut c,
        b"PUT /echo HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n",
    )
    .await;
    let (status, _, _) = read_response(&mut c).await;
    assert_eq!(status, 100);
    send(&mut c, b"data").await;
    let (status, _, body) = read_response(&mut c).await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["body"], "data", "{body}");
    assert!(body["headers"].get("expect").is_none(), "{body}");

    // `Connection: close` is honoured after the response.
    send(&mut c, b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n").await;
    let (status, headers, _) = read_response(&mut c).await;
    assert_eq!((status, headers["connection"].as_str()), (200, "close"));
    assert!(closed(&mut c).await);

    // HTTP/1.0 without keep-alive: one response, then the connection ends.
    let mut c = raw_connection(&proxy).await;
    send(&mut c, b"GET / HTTP/1.0\r\n\r\n").await;
    let (status, headers, _) = read_response(&mut c).await;
    assert_eq!((status, headers["connection"].as_str()), (200, "close"));
    assert!(closed(&mut c).await);
    // It names no host, but the backend is spoken to in HTTP/1.1: it gets the app's name.
    let mut c = raw_connection(&proxy).await;
    send(&mut c, b"GET /echo HTTP/1.0\r\n\r\n").await;
    let (status, _, body) = read_response(&mut c).await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["headers"]["host"], "web", "{body}");

    // Heads that are not HTTP/1.1, or too big, are refused with a status and a close.
    for (head, expect) in [
        (b"GET / HTTP/1.1\r\nbad header\r\n\r\n".to_vec(), 400),
        (
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n".to_vec(),
            400,
        ),
        (
            format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "a".repeat(70_000)).into_bytes(),
            431,
        ),
    ] {
        let mut c = raw_connection(&proxy).await;
        send(&mut c, &head).await;
        let (status, headers, _) = read_response(&mut c).await;
        assert_eq!(
            (status, headers.get("connection").map(String::as_str)),
            (expect, Some("close")),
            "{headers:?}"
        );
        assert!(closed(&mut c).await);
    }

    // A request body over the limit is refused, and the client reads the 413 rather than a reset.
    let mut small = settings();
    small.max_request_body_bytes = 10;
    let limited = Proxy::start(small, route(&[&v1], &[], 0)).await;
    let mut c = raw_connection(&limited).await;
    let mut request = b"POST /echo HTTP/1.1\r\nhost: a\r\ncontent-length: 100000\r\n\r\n".to_vec();
    request.extend(std::iter::repeat_n(b'x', 100_000));
    send(&mut c, &request).await;
    let (status, headers, _) = read_response(&mut c).await;
    assert_eq!((status, headers["connection"].as_str()), (413, "close"));
    // With `Expect: 100-continue` the 413 comes first, never a 100 Continue for a body that will
    // be refused.
    let mut c = raw_connection(&limited).await;
    send(
        &mut c,
        b"POST /echo HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 100000\r\n\r\n",
    )
    .await;
    let (status, headers, _) = read_response(&mut c).await;
    assert_eq!((status, headers["connection"].as_str()), (413, "close"));

    // A stopping listener closes idle keep-alive connections at once, and busy ones after their
    // response, which says so.
    let mut idle = raw_connection(&proxy).await;
    send(&mut idle, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let (status, _, _) = read_response(&mut idle).await;
    assert_eq!(status, 200);
    let mut busy = raw_connection(&proxy).await;
    send(&mut busy, b"GET /slow?ms=500 HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let metrics = Arc::clone(&proxy.app.table().pool(Slot::Blue).metrics);
    wait_until("the slow request is in flight", Duration::from_secs(5), || {
        let metrics = Arc::clone(&metrics);
        async move { metrics.snapshot().in_flight == 1 }
    })
    .await;
    proxy.shutdown.cancel();
    assert!(closed(&mut idle).await, "the idle connection was closed");
    let (status, headers, _) = read_response(&mut busy).await;
    assert_eq!((status, headers["connection"].as_str()), (200, "close"));
    assert!(
        closed(&mut busy).await,
        "the busy connection was closed after its response"
    );
}

/// What a client does wrong is its own failure: a malformed chunked body (400), an upload it
/// abandons (499, logged), an upload too slow to finish (408). None of it counts in the slot's
/// requests, errors or latency; each counts as a client fault, and the connection is closed.
#[tokio::test]
async fn the_clients_own_failures_never_count_against_a_slot() {
    let v1 = ExampleApp::spawn("v1", &[]);
    let mut s = settings();
    s.response_timeout_ms = 500;
    let proxy = Proxy::start(s, route(&[&v1], &[], 0)).await;
    // Every user in variant "on" of a forwarded flag: its counters must not see the faults either.
    let on: cutover_flags::Flag = serde_json::from_value(serde_json::json!({
        "key": "f", "type": "boolean", "variants": { "on": true, "off": false },
        "default_variant": "off", "owner": "t", "description": "d", "expires": "2099-01-01",
        "split": [{ "variant": "on", "weight": 1 }],
    }))
    .unwrap();
    proxy
        .app
        .forward_flags(Arc::new(cutover_proxy::FlagForwarding::new(
            Arc::new(FixedFlags(Arc::new(cutover_flags::ofrep::FlagIndex::new(
                1,
                [on],
            )))),
            vec!["f".into()],
            cutover_proxy::flags::DEFAULT_HEADER,
        )));
    let head = |extra: &str| {
        format!("POST /echo HTTP/1.1\r\nHost: web\r\nX-User-ID: attacker\r\n{extra}\r\n").into_bytes()
    };

    // An invalid chunk size.
    let mut c = raw_connection(&proxy).await;
    let mut bytes = head("Transfer-Encoding: chunked\r\n");
    bytes.extend_from_slice(b"zz\r\nhello\r\n0\r\n\r\n");
    send(&mut c, &bytes).await;
    let (status, headers, _) = read_response(&mut c).await;
    assert_eq!(status, 400, "{headers:?}");
    assert!(closed(&mut c).await, "the connection closes after a broken body");

    // An upload abandoned half way.
    let mut c = raw_connection(&proxy).await;
    let mut bytes = head("Content-Length: 65536\r\n");
    bytes.extend_from_slice(&[b'x'; 4096]);
    send(&mut c, &bytes).await;
    drop(c);

    // An upload that stalls until the proxy gives up on it.
    let mut c = raw_connection(&proxy).await;
    let mut bytes = head("Content-Length: 65536\r\n");
    bytes.extend_from_slice(&[b'x'; 1024]);
    send(&mut c, &bytes).await;
    let (status, _, _) = read_response(&mut c).await;
    assert_eq!(status, 408);

    let client = http_client();
    for _ in 0..5 {
        let r = client.post(proxy.url("/echo")).body("fine").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let table = proxy.app.table();
    let pool = table.pool(Slot::Blue);
    wait_until(
        "the abandoned upload to be counted",
        Duration::from_secs(10),
        || async { pool.metrics.snapshot().client_faults.iter().sum::<u64>() >= 3 },
    )
    .await;
    let s = pool.metrics.snapshot();
    let faults = s.client_fault_counts();
    assert_eq!(faults.get("malformed"), Some(&1), "{faults:?}");
    assert_eq!(faults.get("aborted"), Some(&1), "{faults:?}");
    assert_eq!(faults.get("too_slow"), Some(&1), "{faults:?}");
    assert_eq!(
        s.total_requests(),
        5,
        "only the good requests count: {:?}",
        s.requests_by_class
    );
    assert_eq!((s.server_errors(), s.client_errors()), (0, 0));
    assert_eq!(s.latency_buckets.iter().sum::<u64>(), 5);
    let variants = proxy.app.flag_forwarding().unwrap().traffic.snapshot("f");
    assert_eq!(variants.len(), 1);
    let (variant, _, flagged) = &variants[0];
    assert_eq!(variant, "on");
    assert_eq!(
        (
            flagged.total_requests(),
            flagged.client_errors(),
            flagged.server_errors()
        ),
        (5, 0, 0),
        "only the good requests count for the variant too"
    );
    let text = cutover_proxy::prometheus::render([&*proxy.app]);
    assert!(
        text.contains(
            r#"cutover_client_faults_total{app="web",slot="blue",version="v1",reason="malformed"} 1"#
        ),
        "{text}"
    );
}

/// A flag index that never changes.
#[derive(Debug)]
struct FixedFlags(Arc<cutover_flags::ofrep::FlagIndex>);

impl cutover_proxy::FlagSource for FixedFlags {
    fn index(&self) -> Arc<cutover_flags::ofrep::FlagIndex> {
        Arc::clone(&self.0)
    }
}

/// A user of a slot whose every backend refuses connections (a canary that just crashed) is
/// served by the other slot: nothing of the request reached a backend, so nothing is replayed.
#[tokio::test]
async fn a_request_no_backend_of_its_slot_can_take_goes_to_the_other_slot() {
    let live = ExampleApp::spawn("v1", &[]);
    let dead = closed_port();
    let mut s = settings();
    s.health_check.enabled = false;
    let mut table = route(&[&live], &[], 10_000);
    table.green = Pool {
        version: "v2".into(),
        backends: vec![dead],
    };
    let proxy = Proxy::start(s, table).await;
    let client = http_client();
    for i in 0..20 {
        let r = client
            .post(proxy.url("/echo"))
            .header("X-User-ID", format!("user-{i}"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(version(&r), "v1");
    }
    let table = proxy.app.table();
    let green = table.pool(Slot::Green).metrics.snapshot();
    assert!(green.connect_failures >= 1, "the dead canary was tried first");
    assert_eq!(green.total_requests(), 0, "no answer counted against the canary");
    assert_eq!(table.pool(Slot::Blue).metrics.snapshot().total_requests(), 20);
}

/// A safe request the canary fails is answered by the live slot: users see the old version's
/// answer, the judge still sees the canary's failure. Unsafe requests and preview requests get
/// the canary's own answer.
#[tokio::test]
async fn the_live_slot_answers_safe_requests_the_canary_failed() {
    let v1 = ExampleApp::spawn("v1", &[]);
    // Every answer of the canary fails, after 200 ms.
    let v2 = ExampleApp::spawn("v2", &["--error-rate", "1", "--latency-ms", "200"]);
    let proxy = Proxy::start(settings(), route(&[&v1], &[&v2], 10_000)).await;
    let client = http_client();
    for i in 0..10 {
        let r = client
            .get(proxy.url("/"))
            .header("X-User-ID", format!("user-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(version(&r), "v1");
    }
    let r = client
        .post(proxy.url("/"))
        .header("X-User-ID", "user-1")
        .body("not safe to send twice")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), version(&r)),
        (405, "v2".to_string()),
        "a POST is never sent twice"
    );
    let r = client
        .get(proxy.url("/"))
        .header("X-User-ID", "user-2")
        .body("a GET with a body: sent once, or the retry would go without it")
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), version(&r)), (500, "v2".to_string()));
    let r = client
        .get(proxy.url("/"))
        .header("X-Cutover-Preview", format!("green:{PREVIEW_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status().as_u16(), version(&r)),
        (500, "v2".to_string()),
        "testers see the canary as it is"
    );

    let table = proxy.app.table();
    let green = table.pool(Slot::Green).metrics.snapshot();
    assert_eq!(
        (green.server_errors(), green.client_errors()),
        (12, 1),
        "every canary failure counts against it"
    );
    assert_eq!(green.failovers, 10);
    let blue = table.pool(Slot::Blue).metrics.snapshot();
    assert_eq!(blue.total_requests(), 10);
    let p99 = blue.latency_quantile(0.99).unwrap();
    assert!(
        p99 < Duration::from_millis(150),
        "the live slot's latency is its own, not the canary's 200 ms before it: {p99:?}"
    );

    let mut off = settings();
    off.retry_canary_failures = false;
    let proxy = Proxy::start(off, route(&[&v1], &[&v2], 10_000)).await;
    let r = client
        .get(proxy.url("/"))
        .header("X-User-ID", "u")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500, "retry_canary_failures = false");
}

/// A canary that dies with a safe request in flight: the request reached it, but nothing came
/// back, so the live slot answers it instead of the user getting a 502.
#[tokio::test]
async fn a_safe_request_in_flight_when_the_canary_dies_is_answered_by_the_live_slot() {
    let v1 = ExampleApp::spawn("v1", &[]);
    let mut v2 = ExampleApp::spawn("v2", &[]);
    let mut s = settings();
    s.health_check.enabled = false;
    let proxy = Proxy::start(s, route(&[&v1], &[&v2], 10_000)).await;
    let client = http_client();
    let request = tokio::spawn({
        let url = proxy.url("/slow?ms=3000");
        let client = client.clone();
        async move { client.get(url).header("X-User-ID", "u1").send().await.unwrap() }
    });
    let v2_control = v2.url("/control/requests");
    wait_until(
        "the slow request to reach the canary",
        Duration::from_secs(10),
        || {
            let (client, url) = (client.clone(), v2_control.clone());
            async move {
                let r: serde_json::Value = client.get(url).send().await.unwrap().json().await.unwrap();
                r["slow_in_progress"] == 1
            }
        },
    )
    .await;
    v2.kill();
    let r = request.await.unwrap();
    assert_eq!((r.status().as_u16(), version(&r)), (200, "v1".to_string()));
    let table = proxy.app.table();
    let green = table.pool(Slot::Green).metrics.snapshot();
    assert_eq!(
        (green.server_errors(), green.failovers),
        (1, 1),
        "the canary's failure counts against it"
    );
}

/// A request must name one valid site: a `Host` (or absolute-form authority) that is not one is
/// refused with 400, as nginx does, and so is `CONNECT`, which a reverse proxy would otherwise
/// forward as `CONNECT /`. Each refusal counts as the client's fault, never against the slot;
/// valid hosts pass, and an absolute-form target's authority is the Host the backend sees.
#[tokio::test]
async fn requests_naming_no_valid_site_are_refused_as_the_clients_fault() {
    let v1 = ExampleApp::spawn("v1", &[]);
    let proxy = Proxy::start(settings(), route(&[&v1], &[], 0)).await;
    let refused = [
        "GET /headers HTTP/1.1\r\nHost: a b\r\n\r\n",
        "GET /headers HTTP/1.1\r\nHost:\r\n\r\n",
        "GET /headers HTTP/1.1\r\nHost: evil.com/../x\r\n\r\n",
        "GET /headers HTTP/1.1\r\nHost: a@b\r\n\r\n",
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        "GET http://a@b/headers HTTP/1.1\r\nHost: b\r\n\r\n",
        "GET example.com:80 HTTP/1.1\r\nHost: example.com\r\n\r\n",
    ];
    for head in refused {
        let mut c = raw_connection(&proxy).await;
        send(&mut c, head.as_bytes()).await;
        let (status, headers, _) = read_response(&mut c).await;
        assert_eq!(
            (status, headers.get("connection").map(String::as_str)),
            (400, Some("close")),
            "{head:?}"
        );
        assert!(closed(&mut c).await, "{head:?}");
    }
    for host in ["example.com", "example.com:8080", "127.0.0.1:1", "[::1]:80"] {
        let mut c = raw_connection(&proxy).await;
        send(
            &mut c,
            format!("GET /headers HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        )
        .await;
        let (status, _, body) = read_response(&mut c).await;
        assert_eq!(status, 200, "{host}");
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["headers"]["host"], host, "{body}");
    }
    // RFC 9112 §3.2.2: the target's authority wins over the Host header.
    let mut c = raw_connection(&proxy).await;
    send(
        &mut c,
        b"GET http://example.com:8080/headers HTTP/1.1\r\nHost: other.example\r\n\r\n",
    )
    .await;
    let (status, _, body) = read_response(&mut c).await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["headers"]["host"], "example.com:8080", "{body}");
    assert_eq!(body["uri"], "/headers", "{body}");

    let metrics = proxy.app.table().pool(Slot::Blue).metrics.snapshot();
    assert_eq!(
        metrics.client_fault_counts().get("malformed"),
        Some(&(refused.len() as u64)),
        "{:?}",
        metrics.client_fault_counts()
    );
    assert_eq!(
        (metrics.total_requests(), metrics.client_errors()),
        (5, 0),
        "only the valid requests count for the slot"
    );
}

/// HTTP/2 requests go through the same check: hyper's server hands them to the same handler.
#[tokio::test]
async fn http2_requests_naming_no_valid_site_are_refused_too() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let v1 = ExampleApp::spawn("v1", &[]);
    let proxy = Proxy::start(settings(), route(&[&v1], &[], 0)).await;
    let stream = tokio::net::TcpStream::connect(proxy.public).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut status_of = |method: http::Method, uri: &str| {
        let request = http::Request::builder()
            .method(method)
            .uri(uri)
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let sent = sender.send_request(request);
        async move { sent.await.unwrap().status().as_u16() }
    };
    assert_eq!(status_of(http::Method::CONNECT, "example.com:443").await, 400);
    assert_eq!(status_of(http::Method::GET, "http://a@b/headers").await, 400);
    assert_eq!(
        status_of(http::Method::GET, "http://example.com:8080/headers").await,
        200
    );
    let metrics = proxy.app.table().pool(Slot::Blue).metrics.snapshot();
    assert_eq!(metrics.client_fault_counts().get("malformed"), Some(&2));
    assert_eq!((metrics.total_requests(), metrics.client_errors()), (1, 0));
}

/// A loopback backend that answers each request on a connection with `head` and then `length`
/// bytes written 64 KiB at a time; counts the connections that ended (a write failed, or the
/// peer closed while it waited for the next request).
struct RawBackend {
    addr: SocketAddr,
    ended: Arc<std::sync::atomic::AtomicUsize>,
}

impl RawBackend {
    async fn start(head: &'static str, length: usize) -> RawBackend {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ended = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&ended);
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let chunk = vec![b'x'; 64 * 1024];
                    let mut request = Vec::new();
                    let served = async {
                        loop {
                            // One request head at a time (requests have no body here).
                            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                                let mut buf = [0u8; 4096];
                                let n = stream.read(&mut buf).await?;
                                if n == 0 {
                                    return Ok::<(), std::io::Error>(());
                                }
                                request.extend_from_slice(&buf[..n]);
                            }
                            request.clear();
                            stream.write_all(head.as_bytes()).await?;
                            let mut left = length;
                            while left > 0 {
                                let n = left.min(chunk.len());
                                stream.write_all(&chunk[..n]).await?;
                                left -= n;
                            }
                        }
                    };
                    let _ = served.await;
                    counter.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawBackend { addr, ended }
    }

    fn ended(&self) -> usize {
        self.ended.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn route(&self) -> RouteTable {
        RouteTable {
            live: Slot::Blue,
            canary_weight_bp: 0,
            blue: Pool {
                version: "raw".into(),
                backends: vec![self.addr],
            },
            green: Pool::default(),
        }
    }
}

fn raw_backend_settings() -> ProxySettings {
    let mut s = settings();
    // The raw backend answers every request with its one response: no health checks.
    s.health_check.enabled = false;
    s
}

/// nginx's `send_timeout`: a client that asks for a huge response and reads none of it is cut
/// once a write to it has made no progress for `send_timeout_ms`, and the backend connection
/// feeding it is closed with it (not held, not pooled). The cut is the client's fault.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_and_frees_its_backend_connection() {
    const LENGTH: usize = 1 << 30;
    let backend = RawBackend::start("HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n", LENGTH).await;
    let mut s = raw_backend_settings();
    s.send_timeout_ms = 300;
    let proxy = Proxy::start(s, backend.route()).await;
    let mut c = raw_connection(&proxy).await;
    send(&mut c, b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n").await;
    // The client reads nothing: the socket buffers on both sides fill, the proxy's write stalls.
    wait_until(
        "the backend connection to be closed by the proxy",
        Duration::from_secs(20),
        || async { backend.ended() == 1 },
    )
    .await;
    let table = proxy.app.table();
    let pool = table.pool(Slot::Blue);
    wait_until("the request to finish", Duration::from_secs(5), || async {
        pool.metrics.snapshot().in_flight == 0
    })
    .await;
    let metrics = pool.metrics.snapshot();
    assert_eq!(metrics.client_fault_counts().get("too_slow"), Some(&1));
    assert_eq!((metrics.server_errors(), metrics.client_errors()), (0, 0));
    assert_eq!(
        pool.backends[0].idle_connections(),
        0,
        "a half-read connection is not pooled"
    );
    // The client finds its connection closed once it reads what was buffered for it.
    use tokio::io::AsyncReadExt;
    let mut received = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let end = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the client connection is closed");
    assert!(received < LENGTH, "the response was cut ({received} bytes)");

    // A client that reads slowly but steadily is served to the end, though the whole response
    // takes it longer than the send timeout: the timeout bounds a stall, not the response.
    const SMALL: usize = 2 << 20;
    let small = RawBackend::start("HTTP/1.1 200 OK\r\ncontent-length: 2097152\r\n\r\n", SMALL).await;
    let mut s = raw_backend_settings();
    s.send_timeout_ms = 300;
    let proxy = Proxy::start(s, small.route()).await;
    let mut c = raw_connection(&proxy).await;
    send(&mut c, b"GET /big HTTP/1.1\r\nhost: a\r\n\r\n").await;
    let started = std::time::Instant::now();
    // 32 KiB every 10 ms, about 3 MB/s: some 700 ms for the whole response.
    let mut pace = tokio::time::interval(Duration::from_millis(10));
    let mut raw = Vec::new();
    let mut piece = vec![0u8; 32 * 1024];
    let complete = |raw: &[u8]| {
        raw.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .is_some_and(|head| raw.len() >= head + 4 + SMALL)
    };
    while !complete(&raw) {
        pace.tick().await;
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut piece))
            .await
            .expect("the response keeps coming")
            .unwrap();
        assert_ne!(n, 0, "cut after {} bytes", raw.len());
        raw.extend_from_slice(&piece[..n]);
    }
    assert!(raw.starts_with(b"HTTP/1.1 200 OK\r\n"));
    assert!(
        started.elapsed() > Duration::from_millis(300),
        "the slow read outlasted the send timeout"
    );
}

/// The same over HTTP/2 (h2c), which hyper writes: a client that stops reading its socket loses
/// the connection after `send_timeout_ms`, and the backend connection of its stream is closed.
/// The client here opens every window as wide as it goes, so flow control does not stop the
/// response before the socket does.
#[tokio::test]
async fn an_http2_client_that_stops_reading_is_cut_and_frees_its_backend_connection() {
    use tokio::io::AsyncWriteExt;
    let backend = RawBackend::start("HTTP/1.1 200 OK\r\ncontent-length: 1073741824\r\n\r\n", 1 << 30).await;
    let mut s = raw_backend_settings();
    s.send_timeout_ms = 300;
    let proxy = Proxy::start(s, backend.route()).await;
    let mut c = tokio::net::TcpStream::connect(proxy.public).await.unwrap();
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 2^31 - 1.
    out.extend(frame(0x4, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
    // The connection's window to 2^31 - 1 too.
    out.extend(frame(0x8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()));
    // HEADERS, END_STREAM | END_HEADERS: GET http://a/ in HPACK (static indices, one literal).
    out.extend(frame(0x1, 0x5, 1, &[0x82, 0x86, 0x84, 0x01, 1, b'a']));
    c.write_all(&out).await.unwrap();
    wait_until(
        "the backend connection to be closed by the proxy",
        Duration::from_secs(20),
        || async { backend.ended() == 1 },
    )
    .await;
    let table = proxy.app.table();
    let pool = table.pool(Slot::Blue);
    wait_until("the request to finish", Duration::from_secs(5), || async {
        pool.metrics.snapshot().in_flight == 0
    })
    .await;
    assert_eq!(pool.metrics.snapshot().server_errors(), 0);
}

/// A backend response with both `Transfer-Encoding: chunked` and `Content-Length` is framed by
/// the coding, and reaches the client without the length: forwarding `Content-Length: 5` with
/// the 11 decoded bytes would let the client read the rest as the next response.
#[tokio::test]
async fn a_response_framed_by_its_coding_loses_its_length() {
    let backend = RawBackend::start(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\nb\r\nhello world\r\n0\r\n\r\n",
        0,
    )
    .await;
    let proxy = Proxy::start(raw_backend_settings(), backend.route()).await;
    let mut c = raw_connection(&proxy).await;
    for _ in 0..2 {
        send(&mut c, b"GET / HTTP/1.1\r\nhost: a\r\n\r\n").await;
        let (status, headers, body) = read_response(&mut c).await;
        assert_eq!(status, 200);
        assert!(!headers.contains_key("content-length"), "{headers:?}");
        assert_eq!(body, b"hello world");
    }
}

/// Backends that leave the route table are freed (their health checks stop, their pools go)
/// once their drain ends: tables of the largest size put and removed again and again leave
/// nothing behind.
#[tokio::test]
async fn backends_that_leave_the_table_are_freed() {
    let settings = ProxySettings {
        drain_timeout_ms: 50,
        ..ProxySettings::default()
    };
    let small = RouteTable {
        live: Slot::Blue,
        canary_weight_bp: 0,
        blue: Pool {
            version: "v1".into(),
            backends: vec!["127.0.0.1:9".parse().unwrap()],
        },
        green: Pool {
            version: String::new(),
            backends: Vec::new(),
        },
    };
    let app = AppProxy::new("web", settings, small.clone()).unwrap();
    for round in 0..3u8 {
        let mut big = small.clone();
        big.green = Pool {
            version: format!("v{}", round + 2),
            backends: (0..cutover_core::route::MAX_BACKENDS_PER_SLOT)
                .map(|i| SocketAddr::from(([127, 2 + round, (i / 250) as u8, (i % 250) as u8], 9)))
                .collect(),
        };
        app.apply(big).unwrap();
        let added: Vec<std::sync::Weak<cutover_proxy::backend::Backend>> = app
            .table()
            .pool(Slot::Green)
            .backends
            .iter()
            .map(Arc::downgrade)
            .collect();
        assert_eq!(added.len(), cutover_core::route::MAX_BACKENDS_PER_SLOT);
        app.apply(small.clone()).unwrap();
        wait_until(
            &format!("round {round}: the removed backends are freed"),
            Duration::from_secs(10),
            || {
                let alive = added.iter().filter(|b| b.strong_count() > 0).count();
                async move { alive == 0 }
            },
        )
        .await;
    }
}
