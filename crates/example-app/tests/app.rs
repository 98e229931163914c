#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use cutover_test_support::{http_client, wait_until, ExampleApp};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn spawn(version: &str, args: &[&str]) -> ExampleApp {
    ExampleApp::spawn_bin(
        Path::new(env!("CARGO_BIN_EXE_cutover-example-app")),
        version,
        args,
    )
}

async fn get_json(client: &reqwest::Client, url: String) -> serde_json::Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn root_reports_identity_in_body_and_headers() {
    let app = spawn("v1.2.3", &["--slot", "blue", "--app", "shop"]);
    let client = http_client();

    let resp = client
        .get(app.url("/"))
        .header("x-user-id", "user-7")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-app-version"], "v1.2.3");
    assert_eq!(resp.headers()["x-app-instance"], app.port().to_string().as_str());
    assert_eq!(resp.headers()["x-seen-user-id"], "user-7");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"app": "shop", "version": "v1.2.3", "slot": "blue", "instance": app.port()})
    );

    let resp = client.get(app.url("/api/hello")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-seen-user-id").is_none());
    assert_eq!(resp.json::<serde_json::Value>().await.unwrap(), body);

    // Every response, errors included, says which instance produced it.
    for (path, status) in [("/nope", 404), ("/status/503", 503), ("/health/live", 200)] {
        let resp = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        assert_eq!(resp.headers()["x-app-version"], "v1.2.3", "{path}");
        assert_eq!(
            resp.headers()["x-app-instance"],
            app.port().to_string().as_str(),
            "{path}"
        );
    }
    let resp = client.post(app.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["x-app-version"], "v1.2.3");

    let page = client
        .get(app.url("/page"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("v1.2.3"), "{page}");
}

#[tokio::test]
async fn readiness_can_be_switched_at_runtime_and_requests_are_counted() {
    let app = spawn("v1", &[]);
    let client = http_client();
    let ready_status = || async {
        client
            .get(app.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status()
    };

    assert_eq!(ready_status().await, 200);
    let resp = client
        .post(app.url("/control/ready?value=false"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(ready_status().await, 503);
    assert_eq!(
        client.get(app.url("/health/live")).send().await.unwrap().status(),
        200
    );
    client
        .post(app.url("/control/ready?value=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready_status().await, 200);

    let bad = client
        .post(app.url("/control/ready?value=maybe"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    // 3 readiness checks + 1 liveness check; /control/* calls are not counted.
    let counted = get_json(&client, app.url("/control/requests")).await;
    assert_eq!(counted, serde_json::json!({"requests": 4, "slow_in_progress": 0}));
    client.get(app.url("/")).send().await.unwrap();
    let counted = get_json(&client, app.url("/control/requests")).await;
    assert_eq!(counted["requests"], 5);
}

#[tokio::test]
async fn fail_ready_flag_keeps_readiness_failing() {
    let app = spawn("v1", &["--fail-ready"]);
    let client = http_client();
    let resp = client.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.text().await.unwrap(), "not ready: --fail-ready is set");
    client
        .post(app.url("/control/ready?value=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        client
            .get(app.url("/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        client.get(app.url("/health/live")).send().await.unwrap().status(),
        200
    );
    assert_eq!(client.get(app.url("/")).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn faults_hit_only_api_routes() {
    let app = spawn("v1", &["--error-rate", "1", "--latency-ms", "150"]);
    let client = http_client();

    for path in ["/", "/api/hello", "/api/orders/7"] {
        let started = Instant::now();
        let resp = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 500, "{path}");
        assert_eq!(resp.headers()["x-app-version"], "v1", "{path}");
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{path} skipped the latency"
        );
    }
    for path in [
        "/health/live",
        "/health/ready",
        "/headers",
        "/status/200",
        "/page",
    ] {
        let resp = client.get(app.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
}

#[test]
fn invalid_fault_settings_are_rejected_naming_the_flag() {
    let bin = env!("CARGO_BIN_EXE_cutover-example-app");
    for (args, flag) in [
        (&["--error-rate", "1.5"][..], "--error-rate"),
        (&["--slow-rate=-0.1"][..], "--slow-rate"),
        (&["--latency-jitter-ms", "soon"][..], "--latency-jitter-ms"),
        (&["--slow-rate", "0.5"][..], "--slow-ms"),
    ] {
        let out = std::process::Command::new(bin)
            .args(["--port", "0"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(out.stdout.is_empty(), "{args:?} started serving");
        assert!(
            stderr.contains(flag),
            "error for {args:?} does not name {flag}: {stderr}"
        );
    }
}

#[tokio::test]
async fn sse_events_are_sent_one_by_one() {
    let app = spawn("v1", &[]);
    let client = http_client();

    // With a long interval, the first event can only arrive in time if it is flushed
    // by itself rather than buffered with the rest of the stream.
    let resp = client
        .get(app.url("/sse?events=3&interval_ms=60000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("first SSE event was not flushed")
        .expect("SSE stream ended before the first event")
        .unwrap();
    assert_eq!(&first[..], b"data: event 0\n\n");
    drop(stream);

    let all = client
        .get(app.url("/sse?events=3&interval_ms=10"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(all, "data: event 0\n\ndata: event 1\n\ndata: event 2\n\n");
}

#[tokio::test]
async fn websocket_echoes_text_and_binary() {
    let app = spawn("v1", &[]);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr))
        .await
        .unwrap();

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );

    ws.close(None).await.unwrap();
    // The server answers the close handshake; after that the stream ends.
    while let Some(msg) = ws.next().await {
        match msg {
            Ok(Message::Close(_)) => {}
            Ok(other) => panic!("unexpected message after close: {other:?}"),
            Err(e) => panic!("close handshake failed: {e}"),
        }
    }
}

#[tokio::test]
async fn echo_and_bytes_report_what_was_sent() {
    let app = spawn("v1", &[]);
    let client = http_client();

    let resp = client
        .post(app.url("/echo?x=1"))
        .header("X-Forwarded-For", "10.1.2.3")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["uri"], "/echo?x=1");
    assert_eq!(echo["body_len"], 7);
    assert_eq!(echo["body"], "payload");
    assert_eq!(echo["headers"]["x-forwarded-for"], "10.1.2.3");

    let headers = get_json(&client, app.url("/headers")).await;
    assert_eq!(headers["body_len"], 0);
    assert!(headers["headers"]["host"].is_string(), "{headers}");

    for n in [0usize, 10, 200_000] {
        let resp = client
            .get(app.url(&format!("/bytes?n={n}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.content_length(), Some(n as u64));
        let body = resp.bytes().await.unwrap();
        assert_eq!(body.len(), n);
        assert!(body.iter().all(|&b| b == b'x'));
    }
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let mut app = spawn("v1", &[]);
    let client = http_client();

    let slow = tokio::spawn({
        let client = client.clone();
        let url = app.url("/slow?ms=700");
        async move {
            let resp = client.get(url).send().await.unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    });
    wait_until(
        "the slow request to reach the app",
        Duration::from_secs(10),
        || {
            let client = client.clone();
            let url = app.url("/control/requests");
            async move { get_json(&client, url).await["requests"] == 1 }
        },
    )
    .await;

    let status = tokio::task::spawn_blocking(move || app.terminate())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    let (code, body) = slow.await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(body, "slow done");
}

#[tokio::test]
async fn crash_after_exits_with_code_3() {
    let mut app = spawn("v1", &["--crash-after-secs", "1"]);
    let resp = http_client().get(app.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let status = tokio::task::spawn_blocking(move || app.process().wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(3), "{status}");
}
