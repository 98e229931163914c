#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Webhooks against a real HTTP receiver (axum on 127.0.0.1:0) that records every request and
//! answers from a per-path script.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use cutover_core::Timestamp;
use cutover_notify::{
    verify_signature, EventKind, Format, GateDecision, Notifier, NotifyError, WebhookConfig, WebhookEvent,
};
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// The receiver

#[derive(Clone)]
enum Reply {
    Status(u16, String),
    /// Never answer: the request stays open until the client gives up.
    Hang,
}

fn status(code: u16) -> Reply {
    Reply::Status(code, String::new())
}

fn status_body(code: u16, body: &str) -> Reply {
    Reply::Status(code, body.to_string())
}

struct Script {
    first: VecDeque<Reply>,
    then: Reply,
}

struct Request {
    headers: HeaderMap,
    body: Bytes,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<HashMap<String, Vec<Request>>>,
    scripts: Mutex<HashMap<String, Script>>,
}

struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let path = uri.path().to_string();
    shared
        .requests
        .lock()
        .unwrap()
        .entry(path.clone())
        .or_default()
        .push(Request { headers, body });
    let reply = {
        let mut scripts = shared.scripts.lock().unwrap();
        match scripts.get_mut(&path) {
            Some(script) => script.first.pop_front().unwrap_or_else(|| script.then.clone()),
            None => status(200),
        }
    };
    match reply {
        Reply::Status(code, body) => (StatusCode::from_u16(code).unwrap(), body),
        Reply::Hang => std::future::pending().await,
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .fallback(record)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, shared, server }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `path` answers `first` in order, then `then` forever.
    fn script(&self, path: &str, first: Vec<Reply>, then: Reply) {
        self.shared.scripts.lock().unwrap().insert(
            path.to_string(),
            Script {
                first: first.into(),
                then,
            },
        );
    }

    fn take(&self, path: &str) -> Vec<Request> {
        self.shared
            .requests
            .lock()
            .unwrap()
            .remove(path)
            .unwrap_or_default()
    }

    fn count(&self, path: &str) -> usize {
        self.shared.requests.lock().unwrap().get(path).map_or(0, Vec::len)
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers

const SECRET: &str = "s3cret-value-never-logged";

/// Fast settings: tests must not wait on production backoffs.
fn hook(name: &str, url: String) -> WebhookConfig {
    let mut hook = WebhookConfig::new(name, url);
    hook.timeout_ms = 2_000;
    hook.retries = 3;
    hook.retry_backoff_ms = 5;
    hook
}

fn secrets(name: &str) -> Option<String> {
    (name == "HOOK_SECRET").then(|| SECRET.to_string())
}

fn notifier(hooks: Vec<WebhookConfig>) -> Notifier {
    Notifier::new(hooks, secrets).unwrap()
}

fn event(kind: EventKind) -> WebhookEvent {
    let mut event = WebhookEvent::new(
        kind,
        "shop",
        format!("{kind} of v2"),
        Timestamp::from_millis(1_700_000_000_000),
    );
    event.rollout_id = Some(42);
    event.version = Some("v2".into());
    event.previous_version = Some("v1".into());
    event.phase = Some("canary".into());
    event.step = Some(1);
    event.weight_bp = Some(2_500);
    event.data = json!({"kind": kind.as_str()});
    event
}

fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/gone")
}

const FLUSH: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Delivery

#[tokio::test]
async fn every_kind_is_delivered_with_the_documented_json_and_headers() {
    let receiver = Receiver::start().await;
    let mut audit = hook("audit", receiver.url("/audit"));
    audit.events = EventKind::ALL.iter().map(|k| k.as_str().to_string()).collect();
    audit.secret_env = Some("HOOK_SECRET".into());
    let mut rollbacks = hook("rollbacks", receiver.url("/rollbacks"));
    rollbacks.events = vec!["rollback".into()];
    let defaults = hook("defaults", receiver.url("/defaults"));
    let notifier = notifier(vec![audit, rollbacks, defaults]);

    for kind in EventKind::ALL {
        notifier.notify(event(kind));
    }
    notifier.flush(FLUSH).await.unwrap();

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let mut seen = Vec::new();
    for request in receiver.take("/audit") {
        let kind = request.header("x-cutover-event").unwrap().to_string();
        let parsed = EventKind::parse(&kind).unwrap();
        assert_eq!(request.json(), serde_json::to_value(event(parsed)).unwrap());
        assert_eq!(request.json()["type"], kind);
        assert_eq!(request.json()["weight_bp"], 2_500);
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(
            request.header("user-agent"),
            Some(concat!("cutover/", env!("CARGO_PKG_VERSION")))
        );
        let timestamp = request.header("x-cutover-timestamp").unwrap();
        assert!(
            timestamp.parse::<u64>().unwrap().abs_diff(now) < 60,
            "{timestamp}"
        );
        let signature = request.header("x-cutover-signature").unwrap();
        assert!(signature.starts_with("sha256="), "{signature}");
        assert!(verify_signature(SECRET, timestamp, &request.body, signature));
        assert!(!verify_signature(
            "wrong secret",
            timestamp,
            &request.body,
            signature
        ));
        let delivery = request.header("x-cutover-delivery").unwrap();
        assert_eq!(delivery.len(), 32);
        assert!(delivery.chars().all(|c| c.is_ascii_hexdigit()));
        seen.push(parsed);
    }
    seen.sort_by_key(|k| k.as_str());
    let mut all = EventKind::ALL.to_vec();
    all.sort_by_key(|k| k.as_str());
    assert_eq!(seen, all);

    // Subscriptions filter, and an unsigned hook carries no signature.
    let rollbacks = receiver.take("/rollbacks");
    assert_eq!(rollbacks.len(), 1);
    assert_eq!(rollbacks[0].json()["type"], "rollback");
    assert_eq!(rollbacks[0].header("x-cutover-signature"), None);
    assert!(rollbacks[0].header("x-cutover-timestamp").is_some());

    // By default every kind but confirm_promotion.
    let mut defaults: Vec<String> = receiver
        .take("/defaults")
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect();
    defaults.sort();
    assert_eq!(
        defaults,
        ["event", "flag", "post_rollout", "pre_rollout", "rollback", "step"]
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_success_with_one_delivery_id() {
    let receiver = Receiver::start().await;
    receiver.script("/flaky", vec![status(500), status(502)], status(200));
    let mut flaky = hook("flaky", receiver.url("/flaky"));
    flaky.secret_env = Some("HOOK_SECRET".into());
    let notifier = notifier(vec![flaky]);

    notifier.notify(event(EventKind::Step));
    notifier.flush(FLUSH).await.unwrap();

    let attempts = receiver.take("/flaky");
    assert_eq!(attempts.len(), 3);
    let id = attempts[0].header("x-cutover-delivery").unwrap();
    for attempt in &attempts {
        assert_eq!(attempt.header("x-cutover-delivery"), Some(id));
        // Each attempt is signed afresh and verifies on its own.
        let timestamp = attempt.header("x-cutover-timestamp").unwrap();
        let signature = attempt.header("x-cutover-signature").unwrap();
        assert!(verify_signature(SECRET, timestamp, &attempt.body, signature));
    }
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let receiver = Receiver::start().await;
    receiver.script("/bad", vec![], status_body(400, "bad request"));
    let notifier = notifier(vec![hook("bad", receiver.url("/bad"))]);

    notifier.notify(event(EventKind::PostRollout));
    notifier.flush(FLUSH).await.unwrap();

    assert_eq!(receiver.count("/bad"), 1);
}

/// Collects formatted log lines of the current thread (tokio tests run on one thread).
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn failures_are_logged_with_the_hook_name_but_no_secret_or_url_token() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let receiver = Receiver::start().await;
    let path = "/services/T000/B000/URLTOKEN123";
    receiver.script(path, vec![], status_body(503, "maintenance"));
    let mut down = hook("status-page", receiver.url(path));
    down.retries = 2;
    down.secret_env = Some("HOOK_SECRET".into());
    let unreachable = hook("nobody-home", closed_port_url());
    let notifier = notifier(vec![down, unreachable]);

    notifier.notify(event(EventKind::Rollback));
    notifier.flush(FLUSH).await.unwrap();
    assert_eq!(receiver.count(path), 3, "1 attempt + 2 retries");

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let failed: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("webhook delivery failed"))
        .collect();
    assert_eq!(failed.len(), 2, "{logs}");
    assert!(failed.iter().any(|l| l.contains("status-page")
        && l.contains("503 Service Unavailable: maintenance")
        && l.contains("attempts=3")));
    assert!(failed.iter().any(|l| l.contains("nobody-home")
        && l.contains("unreachable: cannot connect")
        && l.contains("attempts=4")));
    assert!(!logs.contains(SECRET), "{logs}");
    assert!(!logs.contains("URLTOKEN123"), "{logs}");
}

#[tokio::test]
async fn a_hanging_receiver_is_cut_at_the_timeout() {
    let receiver = Receiver::start().await;
    receiver.script("/hang", vec![], Reply::Hang);
    let mut slow = hook("slow", receiver.url("/hang"));
    slow.timeout_ms = 200;
    slow.retries = 1;
    let notifier = notifier(vec![slow]);

    let started = Instant::now();
    notifier.notify(event(EventKind::Event));
    notifier.flush(FLUSH).await.unwrap();
    let elapsed = started.elapsed();

    assert_eq!(receiver.count("/hang"), 2);
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1_500), "{elapsed:?}");
}

#[tokio::test]
async fn flush_reports_deliveries_still_running() {
    let receiver = Receiver::start().await;
    receiver.script("/hang", vec![], Reply::Hang);
    let mut slow = hook("slow", receiver.url("/hang"));
    slow.timeout_ms = 10_000;
    let notifier = notifier(vec![slow]);

    notifier.notify(event(EventKind::Event));
    assert_eq!(notifier.in_flight(), 1);
    let err = notifier.flush(Duration::from_millis(50)).await.unwrap_err();
    assert!(
        matches!(err, NotifyError::FlushTimedOut { pending: 1, .. }),
        "{err}"
    );
}

#[test]
fn notify_outside_a_runtime_drops_the_event_without_panicking() {
    let notifier = notifier(vec![hook("x", "http://127.0.0.1:9/".into())]);
    notifier.notify(event(EventKind::Step));
    assert_eq!(notifier.in_flight(), 0);
}

#[tokio::test]
async fn slack_format_has_text_and_blocks() {
    let receiver = Receiver::start().await;
    let mut chat = hook("chat", receiver.url("/slack"));
    chat.format = Format::Slack;
    let notifier = notifier(vec![chat]);

    let mut rollback = event(EventKind::Rollback);
    rollback.message = "error rate 5.1 % vs 0.1 % on blue".into();
    notifier.notify(rollback);
    notifier.flush(FLUSH).await.unwrap();

    let requests = receiver.take("/slack");
    assert_eq!(requests.len(), 1);
    let body = requests[0].json();
    assert_eq!(body["text"], "[shop] rollback: error rate 5.1 % vs 0.1 % on blue");
    assert_eq!(body["blocks"][0]["type"], "section");
    assert!(body["blocks"][1]["elements"][0]["text"]
        .as_str()
        .unwrap()
        .contains("weight 25 %"));
    assert_eq!(requests[0].header("x-cutover-event"), Some("rollback"));
}

// ---------------------------------------------------------------------------------------------
// Veto gates

fn veto_hook(name: &str, url: String) -> WebhookConfig {
    let mut hook = hook(name, url);
    hook.can_veto = true;
    hook
}

#[tokio::test]
async fn a_veto_hook_answering_409_stops_the_rollout() {
    let receiver = Receiver::start().await;
    receiver.script("/board", vec![], status_body(409, "deploy freeze until 18:00"));
    let notifier = notifier(vec![veto_hook("change-board", receiver.url("/board"))]);

    let decision = notifier.gate(event(EventKind::PreRollout)).await;

    assert_eq!(
        decision,
        GateDecision::Veto {
            hook: "change-board".into(),
            reason: "409 Conflict: deploy freeze until 18:00".into(),
        }
    );
    assert_eq!(receiver.count("/board"), 1, "a 4xx is an answer, not retried");
}

#[tokio::test]
async fn a_veto_hook_answering_204_allows() {
    let receiver = Receiver::start().await;
    receiver.script("/ci", vec![], status(204));
    let notifier = notifier(vec![veto_hook("ci", receiver.url("/ci"))]);

    assert_eq!(notifier.gate(event(EventKind::Step)).await, GateDecision::Allow);
    let requests = receiver.take("/ci");
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].json()["type"], "step");
}

#[tokio::test]
async fn a_veto_hook_failing_after_retries_vetoes_and_an_unreachable_one_fails_closed() {
    let receiver = Receiver::start().await;
    receiver.script("/down", vec![], status(503));
    let mut down = veto_hook("down", receiver.url("/down"));
    down.retries = 2;
    let decision = notifier(vec![down]).gate(event(EventKind::Step)).await;
    assert_eq!(
        decision,
        GateDecision::Veto {
            hook: "down".into(),
            reason: "503 Service Unavailable".into(),
        }
    );
    assert_eq!(receiver.count("/down"), 3);

    let mut gone = veto_hook("gone", closed_port_url());
    gone.retries = 1;
    match notifier(vec![gone]).gate(event(EventKind::PreRollout)).await {
        GateDecision::Veto { hook, reason } => {
            assert_eq!(hook, "gone");
            assert!(reason.starts_with("unreachable: cannot connect"), "{reason}");
            assert!(!reason.contains("/gone"), "no URL in reasons: {reason}");
        }
        other => panic!("expected a veto, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hanging_veto_hook_vetoes_at_its_timeout() {
    let receiver = Receiver::start().await;
    receiver.script("/hang", vec![], Reply::Hang);
    let mut slow = veto_hook("slow", receiver.url("/hang"));
    slow.timeout_ms = 150;
    slow.retries = 0;
    let notifier = notifier(vec![slow]);

    let started = Instant::now();
    let decision = notifier.gate(event(EventKind::Step)).await;
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        decision,
        GateDecision::Veto {
            hook: "slow".into(),
            reason: "unreachable: timed out after 150 ms".into(),
        }
    );
}

#[tokio::test]
async fn a_veto_reason_quotes_the_first_200_characters() {
    let receiver = Receiver::start().await;
    let long = format!("{}{}", "x".repeat(200), "y".repeat(300));
    receiver.script("/long", vec![], status_body(422, &long));
    let notifier = notifier(vec![veto_hook("long", receiver.url("/long"))]);

    match notifier.gate(event(EventKind::Step)).await {
        GateDecision::Veto { reason, .. } => {
            assert_eq!(reason, format!("422 Unprocessable Entity: {}…", "x".repeat(200)));
        }
        other => panic!("expected a veto, got {other:?}"),
    }
}

#[tokio::test]
async fn a_hook_without_can_veto_never_vetoes_but_still_gets_the_event() {
    let receiver = Receiver::start().await;
    receiver.script("/ci", vec![], status(200));
    receiver.script("/chat", vec![], status(500));
    let mut chat = hook("chat", receiver.url("/chat"));
    chat.retries = 1;
    let notifier = notifier(vec![veto_hook("ci", receiver.url("/ci")), chat]);

    assert_eq!(
        notifier.gate(event(EventKind::PreRollout)).await,
        GateDecision::Allow
    );
    notifier.flush(FLUSH).await.unwrap();
    assert_eq!(receiver.count("/ci"), 1);
    assert_eq!(
        receiver.count("/chat"),
        2,
        "notified in the background, with its retry"
    );
}

#[tokio::test]
async fn a_gate_asks_only_veto_hooks_subscribed_to_a_vetoable_kind() {
    let receiver = Receiver::start().await;
    receiver.script("/steps", vec![], status(409));
    let mut steps_only = veto_hook("steps-only", receiver.url("/steps"));
    steps_only.events = vec!["step".into(), "rollback".into()];
    let notifier = notifier(vec![steps_only]);

    // Not subscribed to pre_rollout: not asked.
    assert_eq!(
        notifier.gate(event(EventKind::PreRollout)).await,
        GateDecision::Allow
    );
    assert_eq!(receiver.count("/steps"), 0);
    // A rollback cannot be vetoed: the hook is only told.
    assert_eq!(
        notifier.gate(event(EventKind::Rollback)).await,
        GateDecision::Allow
    );
    notifier.flush(FLUSH).await.unwrap();
    assert_eq!(receiver.count("/steps"), 1);
    // A step can.
    assert!(matches!(
        notifier.gate(event(EventKind::Step)).await,
        GateDecision::Veto { .. }
    ));
}

// ---------------------------------------------------------------------------------------------
// Promotion confirmation

fn confirm_hook(name: &str, url: String) -> WebhookConfig {
    let mut hook = hook(name, url);
    hook.events = vec!["confirm_promotion".into()];
    hook
}

#[tokio::test]
async fn confirm_waits_through_not_yet_until_approved() {
    let receiver = Receiver::start().await;
    receiver.script(
        "/approve",
        vec![status_body(409, "waiting for alice"), status(425)],
        status(200),
    );
    let notifier = notifier(vec![confirm_hook("approvals", receiver.url("/approve"))]);

    let decision = notifier
        .confirm(event(EventKind::ConfirmPromotion), Duration::from_secs(10))
        .await;

    assert_eq!(decision, GateDecision::Allow);
    let asks = receiver.take("/approve");
    assert_eq!(asks.len(), 3);
    // One delivery id across the polls: the receiver can tell it is the same request.
    let id = asks[0].header("x-cutover-delivery");
    assert!(asks.iter().all(|a| a.header("x-cutover-delivery") == id));
    assert_eq!(asks[0].json()["type"], "confirm_promotion");
}

#[tokio::test]
async fn confirm_answered_403_is_rejected() {
    let receiver = Receiver::start().await;
    receiver.script(
        "/approve",
        vec![status(503)],
        status_body(403, "rejected by alice"),
    );
    let notifier = notifier(vec![confirm_hook("approvals", receiver.url("/approve"))]);

    let decision = notifier
        .confirm(event(EventKind::ConfirmPromotion), Duration::from_secs(10))
        .await;

    assert_eq!(
        decision,
        GateDecision::Veto {
            hook: "approvals".into(),
            reason: "403 Forbidden: rejected by alice".into(),
        }
    );
    assert_eq!(receiver.count("/approve"), 2);
}

#[tokio::test]
async fn confirm_never_approved_times_out_on_time() {
    let receiver = Receiver::start().await;
    receiver.script("/approve", vec![], status(503));
    let notifier = notifier(vec![confirm_hook("approvals", receiver.url("/approve"))]);

    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let decision = notifier
        .confirm(event(EventKind::ConfirmPromotion), timeout)
        .await;
    let elapsed = started.elapsed();

    assert_eq!(
        decision,
        GateDecision::TimedOut {
            hook: "approvals".into()
        }
    );
    assert!(elapsed >= timeout, "{elapsed:?}");
    assert!(elapsed < timeout + Duration::from_millis(500), "{elapsed:?}");
    assert!(receiver.count("/approve") >= 3, "asked repeatedly");
}

#[tokio::test]
async fn confirm_does_not_wait_past_its_timeout_for_a_hanging_receiver() {
    let receiver = Receiver::start().await;
    receiver.script("/approve", vec![], Reply::Hang);
    let mut approvals = confirm_hook("approvals", receiver.url("/approve"));
    approvals.timeout_ms = 10_000;
    let notifier = notifier(vec![approvals]);

    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let decision = notifier
        .confirm(event(EventKind::ConfirmPromotion), timeout)
        .await;
    let elapsed = started.elapsed();

    assert!(matches!(decision, GateDecision::TimedOut { .. }), "{decision:?}");
    assert!(elapsed < timeout + Duration::from_millis(500), "{elapsed:?}");
}

#[tokio::test]
async fn confirm_needs_every_hook() {
    let receiver = Receiver::start().await;
    receiver.script("/ci", vec![], status(200));
    receiver.script("/human", vec![], status(409));
    let notifier = notifier(vec![
        confirm_hook("ci", receiver.url("/ci")),
        confirm_hook("human", receiver.url("/human")),
    ]);

    let decision = notifier
        .confirm(event(EventKind::ConfirmPromotion), Duration::from_millis(300))
        .await;

    assert_eq!(decision, GateDecision::TimedOut { hook: "human".into() });
    assert_eq!(receiver.count("/ci"), 1, "an approval is not asked again");
}

#[tokio::test]
async fn confirm_without_hooks_has_nobody_to_ask() {
    let receiver = Receiver::start().await;
    let notifier = notifier(vec![hook("audit", receiver.url("/audit"))]);
    assert!(!notifier.has_hooks_for(EventKind::ConfirmPromotion));
    let decision = notifier
        .confirm(event(EventKind::ConfirmPromotion), Duration::from_secs(1))
        .await;
    assert_eq!(decision, GateDecision::Allow);
    assert_eq!(receiver.count("/audit"), 0);
}

// ---------------------------------------------------------------------------------------------
// Construction and secrecy

#[test]
fn configuration_errors_are_reported_together() {
    let mut unsigned = hook("a", "http://127.0.0.1:9/".into());
    unsigned.secret_env = Some("MISSING_SECRET".into());
    let mut duplicate = hook("a", "gopher://127.0.0.1/".into());
    duplicate.events = vec!["deploy".into()];

    let err = Notifier::new(vec![unsigned, duplicate], secrets).unwrap_err();
    let NotifyError::Invalid(errors) = &err else {
        panic!("expected invalid configuration, got {err}");
    };
    let fields: Vec<&str> = errors.errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "webhooks[0].secret_env",
            "webhooks[1].url",
            "webhooks[1].events[0]",
            "webhooks[1].name",
        ]
    );
    let text = err.to_string();
    assert!(text.contains("MISSING_SECRET is not set or empty"), "{text}");
}

#[test]
fn debug_output_shows_no_secret_and_no_url_token() {
    let mut signed = hook(
        "chat",
        "https://hooks.slack.com/services/T000/B000/URLTOKEN123".into(),
    );
    signed.secret_env = Some("HOOK_SECRET".into());
    let notifier = notifier(vec![signed.clone()]);

    for debug in [
        format!("{notifier:?}"),
        format!("{signed:?}"),
        format!("{notifier:#?}"),
    ] {
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(!debug.contains("URLTOKEN123"), "{debug}");
        assert!(debug.contains("chat"), "{debug}");
    }
    assert!(format!("{notifier:?}").contains("Secret(<redacted>)"));
}
