#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The dashboard in a real browser (Debian's headless Chromium through chromedriver): it follows
//! a rollout live, refuses changes without the token whatever the page does, rolls back with it,
//! reconnects by itself after a restart of the server, and passes axe-core's accessibility
//! checks. Screenshots of every view go to `target/artefacts/dashboard/`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cutover_server::api::{Overview, Series, StatusView};
use cutover_test_support::browser::Browser;
use cutover_test_support::{free_port, http_client, wait_until, ChildProcess, Load};
use serde_json::{json, Value};

mod common;

use common::CUTOVER;
const TOKEN: &str = "dashboard-test-token";

struct Server {
    dir: tempfile::TempDir,
    config: PathBuf,
    process: Option<ChildProcess>,
    admin: String,
    public: String,
}

impl Server {
    /// A server with one app (`web`, the example app on the local platform) and feature flags,
    /// its admin API on a fixed port so that a restarted server answers at the same address.
    fn start() -> Server {
        let dir = tempfile::Builder::new()
            .prefix("cutover-dashboard-test-")
            .tempdir()
            .unwrap();
        let keys = dir.path().join("flags.keys");
        common::private_file(&keys, "dashboard-test flag-key-0123456789abcdef\n");
        let sessions = dir.path().join("sessions.db");
        let config = dir.path().join("cutover.toml");
        let admin_port = free_port();
        std::fs::write(
            &config,
            format!(
                r#"
[server]
tick_ms = 50

[admin]
listen = "127.0.0.1:{admin_port}"

[flags]
listen = "127.0.0.1:0"
api_keys_file = "{keys}"

[[app]]
name = "web"
listen = "127.0.0.1:0"
platform = "local"
stop_grace_ms = 2000

[app.release]
command = "exec '{CUTOVER}' example-app --port {{port}} --version-label {{version}} --session-store '{sessions}'"

[app.readiness]
interval_ms = 50

[app.proxy]
drain_timeout_ms = 300

[app.proxy.sticky]
user_key_header = "X-User-ID"

[app.proxy.health_check]
interval_ms = 100

[app.rollout]
steps = [{{ weight_bp = 2000, duration_ms = 120000 }}, {{ weight_bp = 5000, duration_ms = 120000 }}, {{ weight_bp = 10000 }}]
analysis_interval_ms = 500
inconclusive_limit = 1000
rollback_window_ms = 300
readiness_deadline_ms = 8000

[app.rollout.judge]
min_requests = 5
"#,
                keys = keys.display(),
                sessions = sessions.display(),
            ),
        )
        .unwrap();
        let mut server = Server {
            dir,
            config,
            process: None,
            admin: format!("http://127.0.0.1:{admin_port}"),
            public: String::new(),
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let (process, ready) = common::serve(&self.config, TOKEN);
        self.public = format!(
            "http://{}",
            ready["bound"]["apps"]["web"]["listen"].as_str().unwrap()
        );
        self.process = Some(process);
    }

    fn cli(&self, args: &[&str]) -> (i32, String) {
        common::cli(&self.admin, TOKEN, args)
    }

    async fn status(&self) -> StatusView {
        let value = cutover_test_support::get_json(&format!("{}/v1/apps/web/status", self.admin)).await;
        serde_json::from_value(value).unwrap()
    }

    async fn deploy(&self, version: &str) {
        let response = http_client()
            .post(format!("{}/v1/apps/web/deploy", self.admin))
            .bearer_auth(TOKEN)
            .json(&json!({ "version": version }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    }

    async fn wait_phase(&self, phase: &str) {
        wait_until(&format!("phase {phase}"), Duration::from_secs(30), || async {
            self.status()
                .await
                .rollout()
                .is_some_and(|r| r.phase.name() == phase)
        })
        .await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The server first, or it would start the live slot's instances again.
        drop(self.process.take());
        common::kill_instances(self.dir.path());
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// Runs `script` (which calls `done(value)`) in the page and returns the value.
async fn in_page(browser: &Browser, script: &str) -> Value {
    browser.client().execute_async(script, Vec::new()).await.unwrap()
}

async fn assert_accessible(browser: &Browser, view: &str) {
    let violations = browser.serious_accessibility_violations().await;
    assert!(
        violations.is_empty(),
        "serious accessibility violations in the {view} view:\n{}",
        serde_json::to_string_pretty(&violations).unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_follows_a_rollout_rolls_back_with_the_token_and_survives_a_restart() {
    let mut server = Server::start();
    let flags = server.dir.path().join("flags.toml");
    std::fs::write(
        &flags,
        r#"
[[flag]]
key = "new-checkout"
type = "boolean"
variants = { on = true, off = false }
default_variant = "off"
owner = "team-payments"
description = "The new checkout flow"
expires = 2027-03-31
"#,
    )
    .unwrap();
    let (code, out) = server.cli(&[
        "flag",
        "apply",
        flags.to_str().unwrap(),
        "--reason",
        "dashboard test",
    ]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = server.cli(&["deploy", "web", "v1"]);
    assert_eq!(code, 0, "{out}");
    server.wait_phase("succeeded").await;
    let live = server.status().await.live;
    let target = live.other();
    let load = Load::start(&server.public);

    let browser = Browser::start(1280, 900).await;
    browser.goto(&format!("{}/", server.admin)).await;
    browser
        .wait_text("connection", Duration::from_secs(10), |t| t == "live")
        .await;
    wait_until("the overview lists web", Duration::from_secs(10), || async {
        browser
            .eval("return document.querySelectorAll('[data-testid=\"app-row\"][data-app=\"web\"]').length;")
            .await
            == json!(1)
    })
    .await;
    browser.screenshot("overview").await;
    assert_accessible(&browser, "overview").await;

    browser.goto(&format!("{}/ui/#/apps/web", server.admin)).await;
    browser
        .wait_text("connection", Duration::from_secs(10), |t| t == "live")
        .await;
    browser
        .wait_text(&format!("weight-{live}"), Duration::from_secs(10), |t| {
            t == "100 %"
        })
        .await;
    browser
        .wait_text("live-version", Duration::from_secs(5), |t| t == "v1")
        .await;
    // Read-only until a token is given: no controls.
    assert_eq!(browser.text("mode").await.as_deref(), Some("read-only"));
    assert!(!browser.visible("control-rollback").await);

    // A deploy: the page follows the canary's first step by itself, pushed by the server.
    server.deploy("v2").await;
    let (_, waited) = browser
        .wait_text(&format!("weight-{target}"), Duration::from_secs(20), |t| {
            t == "20 %"
        })
        .await;
    let seen_at = now_ms();
    let events: Vec<cutover_store::StoredEvent> = serde_json::from_value(
        cutover_test_support::get_json(&format!("{}/v1/apps/web/events?limit=10000", server.admin)).await,
    )
    .unwrap();
    let step_at = events
        .iter()
        .rev()
        .find(|e| matches!(e.event.detail, cutover_core::event::EventDetail::Step { .. }))
        .map(|e| e.event.at.as_millis())
        .unwrap();
    // A figure, not a condition (tests check behaviour): how long the page took to show the
    // step after the server wrote it, measured from the browser's side of the poll.
    eprintln!(
        "dashboard: the step was visible in the page {} ms after the server recorded it (polled every 20 ms; {waited:?} after the deploy)",
        seen_at.saturating_sub(step_at)
    );
    assert_eq!(browser.text("phase").await.as_deref(), Some("canary"));
    // Charts need a few samples of the canary's traffic.
    wait_until("samples of both slots", Duration::from_secs(10), || async {
        let series: Series = serde_json::from_value(
            cutover_test_support::get_json(&format!("{}/v1/apps/web/series", server.admin)).await,
        )
        .unwrap();
        series
            .points
            .iter()
            .filter(|p| p.slots.iter().all(|s| s.requests > 0))
            .count()
            >= 3
    })
    .await;
    browser.screenshot("app-canary").await;
    assert_accessible(&browser, "app").await;

    // Without the token the server refuses, whatever the page sends.
    let refused = in_page(
        &browser,
        "const done = arguments[arguments.length - 1];
         fetch('/v1/apps/web/rollback', { method: 'POST' }).then(r => done(r.status), e => done(String(e)));",
    )
    .await;
    assert_eq!(refused, json!(401));
    // A wrong token is refused and not kept.
    browser.type_into("token-input", "not-the-token").await;
    browser.click("token-submit").await;
    browser
        .wait_text("error", Duration::from_secs(5), |t| !t.is_empty())
        .await;
    assert_eq!(browser.text("mode").await.as_deref(), Some("read-only"));
    assert!(!browser.visible("control-rollback").await);

    // With the token: roll back, after a confirmation.
    browser.type_into("token-input", TOKEN).await;
    browser.click("token-submit").await;
    browser
        .wait_text("mode", Duration::from_secs(5), |t| t == "admin")
        .await;
    let kept = browser
        .eval(
            "return { cookie: document.cookie, url: location.href, local: JSON.stringify(localStorage), \
             session: Object.keys(sessionStorage).map(k => sessionStorage.getItem(k)).join(' ') };",
        )
        .await;
    assert_eq!(kept["cookie"], "", "the token must never be a cookie");
    assert!(!kept["url"].as_str().unwrap().contains(TOKEN), "{kept}");
    assert!(!kept["local"].as_str().unwrap().contains(TOKEN), "{kept}");
    assert!(
        kept["session"].as_str().unwrap().contains(TOKEN),
        "kept for the tab: {kept}"
    );
    wait_until("the rollback button", Duration::from_secs(5), || async {
        browser.visible("control-rollback").await
    })
    .await;
    browser.click("control-rollback").await;
    wait_until("the confirmation", Duration::from_secs(5), || async {
        browser.visible("confirm").await
    })
    .await;
    browser.screenshot("app-confirm-rollback").await;
    assert_accessible(&browser, "confirmation dialog").await;
    // Cancelling changes nothing.
    browser.click("cancel").await;
    assert_eq!(server.status().await.rollout().unwrap().phase.name(), "canary");
    browser.click("control-rollback").await;
    wait_until("the confirmation", Duration::from_secs(5), || async {
        browser.visible("confirm").await
    })
    .await;
    browser.click("confirm").await;
    browser
        .wait_text("phase", Duration::from_secs(10), |t| t == "rolled_back")
        .await;
    browser
        .wait_text(&format!("weight-{target}"), Duration::from_secs(5), |t| {
            t == "0 %"
        })
        .await;
    browser
        .wait_text(&format!("weight-{live}"), Duration::from_secs(5), |t| {
            t == "100 %"
        })
        .await;
    assert_eq!(
        server.status().await.rollout().unwrap().phase.name(),
        "rolled_back"
    );

    browser
        .goto(&format!("{}/ui/#/apps/web/history", server.admin))
        .await;
    wait_until("the history", Duration::from_secs(10), || async {
        browser
            .eval("return document.body.textContent.includes('rolled back by an operator');")
            .await
            == json!(true)
    })
    .await;
    browser.screenshot("history").await;
    assert_accessible(&browser, "history").await;

    browser.goto(&format!("{}/ui/#/flags", server.admin)).await;
    wait_until("the flags", Duration::from_secs(10), || async {
        browser
            .eval("return document.body.textContent.includes('new-checkout');")
            .await
            == json!(true)
    })
    .await;
    browser.screenshot("flags").await;
    assert_accessible(&browser, "flags").await;

    // A restart of the server: the open page reconnects by itself and follows the next rollout.
    browser.goto(&format!("{}/ui/#/apps/web", server.admin)).await;
    browser
        .wait_text("connection", Duration::from_secs(10), |t| t == "live")
        .await;
    drop(server.process.take());
    browser
        .wait_text("connection", Duration::from_secs(10), |t| t != "live")
        .await;
    server.run();
    browser
        .wait_text("connection", Duration::from_secs(20), |t| t == "live")
        .await;
    server.deploy("v3").await;
    browser
        .wait_text(&format!("weight-{target}"), Duration::from_secs(20), |t| {
            t == "20 %"
        })
        .await;
    // And a reload shows the same.
    browser.client().refresh().await.unwrap();
    browser
        .wait_text(&format!("weight-{target}"), Duration::from_secs(10), |t| {
            t == "20 %"
        })
        .await;
    browser
        .wait_text("phase", Duration::from_secs(5), |t| t == "canary")
        .await;

    // On a phone: nothing wider than the screen.
    browser.client().set_window_size(390, 844).await.unwrap();
    wait_until("the phone layout", Duration::from_secs(5), || async {
        browser
            .eval("return window.innerWidth;")
            .await
            .as_u64()
            .unwrap_or(0)
            <= 400
    })
    .await;
    let overflow = browser
        .eval("return document.documentElement.scrollWidth - window.innerWidth;")
        .await;
    browser.screenshot("app-phone").await;
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page scrolls sideways on a phone by {overflow} px"
    );
    assert_accessible(&browser, "app on a phone").await;

    // A confirmation left open while another rollout replaces the one it was for is closed,
    // and nothing is sent: "promote v3" must never promote v4.
    browser.client().set_window_size(1280, 900).await.unwrap();
    wait_until("the promote button", Duration::from_secs(10), || async {
        browser.visible("control-promote").await
    })
    .await;
    browser.click("control-promote").await;
    wait_until("the confirmation", Duration::from_secs(5), || async {
        browser.visible("confirm").await
    })
    .await;
    let (code, out) = server.cli(&["abort", "web"]);
    assert_eq!(code, 0, "{out}");
    server.deploy("v4").await;
    server.wait_phase("canary").await;
    wait_until(
        "the stale confirmation to close",
        Duration::from_secs(10),
        || async { !browser.visible("confirm").await },
    )
    .await;
    let now = server.status().await;
    let rollout = now.rollout().unwrap();
    assert_eq!(
        (rollout.release.version.as_str(), rollout.phase.name()),
        ("v4", "canary")
    );

    let (code, out) = server.cli(&["abort", "web"]);
    assert_eq!(code, 0, "{out}");
    browser.close().await;
    load.finish().await;
}

/// What the browser test cannot see: the headers, the refusals and the types of the answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_served_under_a_strict_policy_and_its_api_reads_back_as_types() {
    let server = Server::start();
    let client = http_client();
    for path in ["/", "/ui", "/ui/"] {
        let page = client
            .get(format!("{}{path}", server.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200, "{path}");
        let csp = page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{csp}");
        }
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(page.headers()["x-content-type-options"], "nosniff");
        let html = page.text().await.unwrap();
        assert!(html.contains("/ui/dashboard.js"), "{html}");
    }
    for (file, kind) in [
        ("dashboard.js", "text/javascript"),
        ("dashboard.css", "text/css"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let asset = client
            .get(format!("{}/ui/{file}", server.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(asset.status(), 200, "{file}");
        assert!(asset.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with(kind));
    }
    assert_eq!(
        client
            .get(format!("{}/ui/../cutover.toml", server.admin))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // The token check the page makes.
    let auth = |token: Option<&'static str>| {
        let mut request = client.get(format!("{}/v1/auth", server.admin));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(auth(None).await, 401);
    assert_eq!(auth(Some("wrong")).await, 401);
    assert_eq!(auth(Some(TOKEN)).await, 204);

    // A page elsewhere that points its own name at 127.0.0.1 reads nothing.
    for host in ["evil.example", "evil.example:80", "localhost.evil.example"] {
        let rebound = client
            .get(format!("{}/v1/status", server.admin))
            .header("Host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status(), 421, "{host}");
    }
    for host in ["localhost", "127.0.0.1:1", "[::1]:9180"] {
        let ok = client
            .get(format!("{}/v1/status", server.admin))
            .header("Host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{host}");
    }

    let overview: Overview =
        serde_json::from_value(cutover_test_support::get_json(&format!("{}/v1/status", server.admin)).await)
            .unwrap();
    assert_eq!(overview.apps.len(), 1);
    assert!(overview.apps[0].managed);
    assert!(overview.apps[0].rollout.is_none());
    let (code, out) = server.cli(&["deploy", "web", "v1"]);
    assert_eq!(code, 0, "{out}");
    let overview: Overview =
        serde_json::from_value(cutover_test_support::get_json(&format!("{}/v1/status", server.admin)).await)
            .unwrap();
    let web = &overview.apps[0];
    assert_eq!(web.live_version.as_deref(), Some("v1"));
    assert_eq!(web.rollout.as_ref().unwrap().version, "v1");
    assert_eq!(web.weights[&web.live.to_string()], 10_000);

    // The feed starts with hello, then pushes samples.
    let mut feed = client
        .get(format!("{}/v1/stream", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(feed.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(text.contains("event: sample") && text.contains("event: heartbeat"))
        && tokio::time::Instant::now() < deadline
    {
        if let Ok(Some(chunk)) = tokio::time::timeout(Duration::from_secs(5), feed.chunk())
            .await
            .unwrap()
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    assert!(text.starts_with("event: hello\n"), "{text}");
    let hello: cutover_server::api::Hello =
        serde_json::from_str(text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert_eq!(hello.started_at, overview.started_at);
    let sample = text
        .split("\n\n")
        .find(|block| block.starts_with("event: sample"))
        .and_then(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .unwrap();
    let sample: cutover_server::api::Sample = serde_json::from_str(sample).unwrap();
    assert_eq!(sample.app, "web");
    assert_eq!(sample.point.slots.len(), 2);

    // The app's own event stream resumes after Last-Event-ID, as a browser's EventSource sends it
    // when it reconnects by itself (the URL's `after` is the smaller one here).
    let mut resumed = client
        .get(format!("{}/v1/apps/web/events/stream?after=1", server.admin))
        .header("Last-Event-ID", "3")
        .send()
        .await
        .unwrap();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resumed.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.starts_with("id: 4\n"), "{text}");

    let missing = client
        .get(format!("{}/v1/apps/nope/series", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["x-content-type-options"], "nosniff");
    let body: cutover_server::api::ErrorBody = missing.json().await.unwrap();
    assert!(body.error.contains("no app nope"), "{}", body.error);

    // A command for a rollout that is no longer the current one is refused and changes nothing:
    // who confirmed "promote v1" must not promote the v2 that replaced it.
    server.deploy("v2").await;
    server.wait_phase("canary").await;
    let command = |name: &'static str, rollout: u64| {
        let request = client
            .post(format!("{}/v1/apps/web/{name}?rollout={rollout}", server.admin))
            .bearer_auth(TOKEN);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (code, body) = command("promote", 1).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("rollout #1 is no longer the current rollout") && body.contains("v1 → v2"),
        "{body}"
    );
    assert_eq!(server.status().await.rollout().unwrap().phase.name(), "canary");
    let (code, body) = command("pause", 2).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(server.status().await.rollout().unwrap().phase.name(), "paused");
    let (code, body) = command("abort", 2).await;
    assert_eq!(code, 200, "{body}");
}
