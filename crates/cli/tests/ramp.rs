#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Guarded ramps of a flag with real processes: `cutover serve` with a flag service, its proxy
//! forwarding `new_session_validator` to the example app (which fails a share of the requests of
//! users with the flag on), traffic of 5000 users on loopback, and the `cutover` CLI ramping.

#[allow(dead_code)] // not every helper is used by every test binary
mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cutover_test_support::{http_client, wait_until, ChildProcess};
use serde_json::{json, Value};

use common::CUTOVER;

const TOKEN: &str = "ramp-test-admin-token";
const FLAG: &str = "new_session_validator";

/// A `cutover serve` over a state directory that outlives restarts, with one static app whose
/// backend is an example app started here.
struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    serve: Option<ChildProcess>,
    _backend: ChildProcess,
    admin: String,
    public: String,
}

impl Setup {
    fn new(flag_error_rate: f64, extra: &str) -> Setup {
        Setup::with_admin(flag_error_rate, extra, "127.0.0.1:0")
    }

    fn with_admin(flag_error_rate: f64, extra: &str, admin_listen: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(CUTOVER);
        cmd.args([
            "example-app",
            "--port",
            "0",
            "--flag-error-rate",
            &flag_error_rate.to_string(),
        ]);
        let mut backend = ChildProcess::spawn("example-app", cmd);
        let addr = backend.wait_for_stdout_line(Duration::from_secs(20), |line| {
            line.strip_prefix("cutover-example-app listening on http://")
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        });
        let keys = dir.path().join("flags.keys");
        common::private_file(&keys, "test ramp-test-api-key-0123456789\n");
        let config = dir.path().join("cutover.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
tick_ms = 50

[admin]
listen = "{admin_listen}"

[flags]
listen = "127.0.0.1:0"
api_keys_file = "{keys}"
{extra}

[[app]]
name = "web"
listen = "127.0.0.1:0"

[app.proxy.sticky]
user_key_header = "X-User-ID"

[app.flags]
forward = ["{FLAG}"]

[app.routes]
live = "blue"
canary_weight_bp = 0
blue = {{ version = "v1", backends = ["{addr}"] }}
green = {{ version = "", backends = [] }}
"#,
                keys = keys.display()
            ),
        )
        .unwrap();
        let mut setup = Setup {
            _dir: dir,
            config,
            serve: None,
            _backend: backend,
            admin: String::new(),
            public: String::new(),
        };
        setup.start();
        setup
    }

    fn start(&mut self) {
        let (serve, ready) = common::serve(&self.config, TOKEN);
        self.admin = format!("http://{}", ready["bound"]["admin"].as_str().unwrap());
        self.public = format!(
            "http://{}",
            ready["bound"]["apps"]["web"]["listen"].as_str().unwrap()
        );
        self.serve = Some(serve);
    }

    fn cli(&self, args: &[&str]) -> (i32, String) {
        common::cli(&self.admin, TOKEN, args)
    }

    /// Creates the flag, dark: off for everyone.
    async fn create_flag(&self) {
        let flag = json!({
            "key": FLAG, "type": "boolean", "variants": { "on": true, "off": false },
            "default_variant": "off", "owner": "team-auth", "expires": "2027-06-30",
            "description": "The new session validator",
        });
        let (status, text) = self
            .put_flag(json!({ "flag": flag, "reason": "ship dark", "expected_revision": 0 }))
            .await;
        assert_eq!(status, 200, "{text}");
    }

    /// `PUT /v1/flags/FLAG` with `body`: the status and the answer's text.
    async fn put_flag(&self, body: Value) -> (u16, String) {
        let r = http_client()
            .put(format!("{}/v1/flags/{FLAG}", self.admin))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> Value {
        http_client()
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn ramp(&self) -> Value {
        self.get(&format!("/v1/flags/{FLAG}/ramp")).await
    }
}

/// Requests of 5000 users as fast as one connection goes, until stopped or for 2 minutes.
struct Traffic {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(public: &str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n, url) = (
            Arc::clone(&stop),
            Arc::clone(&sent),
            format!("{public}/api/items"),
        );
        let task = tokio::spawn(async move {
            let client = http_client();
            let limit = tokio::time::Instant::now() + Duration::from_secs(120);
            let mut i: u64 = 0;
            while !s.load(Ordering::Relaxed) && tokio::time::Instant::now() < limit {
                let _ = client
                    .get(&url)
                    .header("X-User-ID", format!("user-{}", i % 5000))
                    // A client trying to choose its own variant: the proxy removes this.
                    .header("X-Cutover-Flags", format!("{FLAG}=off"))
                    .send()
                    .await;
                n.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        });
        Traffic { stop, sent, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.sent.load(Ordering::Relaxed)
    }
}

/// Webhook deliveries, as JSON bodies.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Value>>>);

impl Receiver {
    async fn start() -> (Receiver, std::net::SocketAddr) {
        let receiver = Receiver::default();
        let bodies = receiver.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let bodies = bodies.clone();
                async move {
                    bodies.0.lock().unwrap().push(body);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, addr)
    }

    fn phases(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| b["phase"].as_str().map(str::to_string))
            .collect()
    }
}

/// Waits for the running ramp to end, resuming it as its operator would when the judge paused it
/// on evidence that held a step (identical variants on a loaded machine can show a tail-latency
/// blip the sequential test holds on; the tests here are about the ramp's mechanics, and a pause
/// for a person is a correct outcome of such a blip). Returns the last exit code and all output.
fn wait_resuming_held_steps(setup: &Setup, first: (i32, String)) -> (i32, String) {
    let (mut code, mut out) = first;
    for _ in 0..3 {
        if code != 13 || !out.contains("has held step") {
            break;
        }
        let (resumed, text) = setup.cli(&["flag", "ramp", FLAG, "--resume"]);
        assert_eq!(resumed, 0, "{text}");
        let (next, text) = setup.cli(&["flag", "ramp", FLAG, "--status", "--wait"]);
        out.push_str(&text);
        code = next;
    }
    (code, out)
}

const FAST: [&str; 6] = ["--window", "1s", "--interval", "250ms", "--min-requests", "30"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_flag_is_ramped_to_every_user() {
    let setup = Setup::new(0.0, "");
    setup.create_flag().await;
    let traffic = Traffic::start(&setup.public);
    let mut args = vec![
        "flag",
        "ramp",
        FLAG,
        "--steps",
        "10,50,100",
        "--reason",
        "ship it",
        "--wait",
    ];
    args.extend(FAST);
    let (code, out) = wait_resuming_held_steps(&setup, setup.cli(&args));
    traffic.finish().await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("completed"), "{out}");
    let flag = setup.get(&format!("/v1/flags/{FLAG}")).await;
    assert_eq!(flag["enabled"], true, "{flag}");
    assert_eq!(
        flag["split"],
        json!([{ "variant": "on", "weight": 10000 }, { "variant": "off", "weight": 0 }])
    );
    // Every step was written as a change of the flag by the ramp, with its reason.
    let audit = setup.get(&format!("/v1/flags/{FLAG}/audit")).await;
    let by_ramp: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["who"] == "guarded-ramp")
        .collect();
    assert_eq!(by_ramp.len(), 3, "{audit:#}");
    assert!(
        by_ramp[0]["why"].as_str().unwrap().contains("ship it"),
        "{audit:#}"
    );
    // A second ramp may not take the variant from users who have it.
    let (code, out) = setup.cli(&[
        "flag", "ramp", FLAG, "--steps", "10,100", "--window", "1s", "--reason", "again",
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("gives \"on\" to 100.00 % of users now"), "{out}");
    // The proxy counted requests per variant, and no client chose its own.
    let metrics = http_client()
        .get(format!("{}/metrics", setup.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "cutover_flag_requests_total{{app=\"web\",flag=\"{FLAG}\",variant=\"on\",code_class=\"2xx\"}}"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_that_fails_five_percent_of_its_requests_is_killed_and_the_webhooks_hear_it() {
    let (receiver, addr) = Receiver::start().await;
    let hook = format!(
        "\n[[flags.webhook]]\nname = \"flags-channel\"\nurl = \"http://{addr}/hook\"\nevents = [\"flag\"]\n"
    );
    let setup = Setup::new(0.05, &hook);
    setup.create_flag().await;
    let traffic = Traffic::start(&setup.public);
    let mut args = vec![
        "flag",
        "ramp",
        FLAG,
        "--steps",
        "20,50,100",
        "--reason",
        "try the validator",
        "--wait",
    ];
    args.extend(["--window", "2s", "--interval", "250ms", "--min-requests", "30"]);
    let (code, out) = setup.cli(&args);
    let sent = traffic.finish().await;
    eprintln!("{out}");
    assert_eq!(code, 10, "exit 10: the judge killed the flag\n{out}");
    let flag = setup.get(&format!("/v1/flags/{FLAG}")).await;
    assert_eq!(flag["enabled"], false, "{flag}");
    // Killed and back at 0 %: an unkill later gives the bad variant to nobody.
    assert_eq!(
        flag["split"][0],
        json!({ "variant": "on", "weight": 0 }),
        "{flag}"
    );
    let ramp = setup.ramp().await;
    assert_eq!(ramp["phase"]["phase"], "killed", "{ramp:#}");
    let reason = ramp["phase"]["reason"].as_str().unwrap();
    assert!(reason.contains("flagged"), "{reason}");
    assert!(ramp["flagged_failures"].as_u64().unwrap() > 0, "{ramp:#}");
    // Never beyond the first step: the evidence held the step until the kill.
    assert_eq!(
        ramp["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"] == "step")
            .count(),
        1,
        "{ramp:#}"
    );
    let audit = setup.get(&format!("/v1/flags/{FLAG}/audit")).await;
    let last = audit.as_array().unwrap().last().unwrap();
    assert_eq!(
        (last["who"].as_str(), last["after"]["enabled"].as_bool()),
        (Some("guarded-ramp"), Some(false))
    );
    wait_until("the webhook hears the kill", Duration::from_secs(10), || async {
        receiver.phases().iter().any(|p| p == "flag_killed")
    })
    .await;
    assert!(
        receiver.phases().iter().any(|p| p == "flag_ramp_step"),
        "{:?}",
        receiver.phases()
    );
    assert!(sent > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_without_enough_evidence_pauses_for_a_person() {
    let setup = Setup::new(0.0, "");
    setup.create_flag().await;
    let traffic = Traffic::start(&setup.public);
    // Far more flagged requests than the step can see within its extension: never ramp blind.
    let (code, out) = setup.cli(&[
        "flag",
        "ramp",
        FLAG,
        "--steps",
        "5,100",
        "--window",
        "1s",
        "--interval",
        "250ms",
        "--max-extension",
        "1s",
        "--min-requests",
        "100000000",
        "--reason",
        "try",
        "--wait",
    ]);
    assert_eq!(code, 13, "exit 13: paused\n{out}");
    assert!(out.contains("fewer than the 100000000 needed"), "{out}");
    let flag = setup.get(&format!("/v1/flags/{FLAG}")).await;
    assert_eq!(
        flag["split"][0],
        json!({ "variant": "on", "weight": 500 }),
        "the split stays at the step: {flag}"
    );
    // A person's change of the split would fight the ramp: refused while it is paused.
    let mut changed = flag.clone();
    changed["split"] = json!([{ "variant": "on", "weight": 10000 }]);
    let (status, text) = setup
        .put_flag(json!({ "flag": changed, "reason": "by hand" }))
        .await;
    assert_eq!(status, 409);
    assert!(text.contains("being ramped"));
    // So would a new default variant: a kill would give everyone the variant being ramped.
    let mut changed = flag.clone();
    changed["default_variant"] = json!("on");
    let (status, _) = setup
        .put_flag(json!({ "flag": changed, "reason": "by hand" }))
        .await;
    assert_eq!(status, 409);
    // What the ramp does not rest on may change.
    let mut changed = flag.clone();
    changed["description"] = json!("The new session validator, now with a better description");
    let (status, text) = setup
        .put_flag(json!({ "flag": changed, "reason": "wording" }))
        .await;
    assert_eq!(status, 200, "{text}");
    let (code, out) = setup.cli(&["flag", "ramp", FLAG, "--resume"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(setup.ramp().await["phase"]["phase"], "running");
    let (code, out) = setup.cli(&["flag", "ramp", FLAG, "--abort", "--reason", "not today"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("aborted"), "{out}");
    let (code, out) = setup.cli(&["flag", "ramp", FLAG, "--resume"]);
    assert_eq!(code, 3, "nothing to resume: {out}");
    traffic.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_survives_kill_9_of_the_server_and_resumes() {
    let mut setup = Setup::new(0.0, "");
    setup.create_flag().await;
    let traffic = Traffic::start(&setup.public);
    let (code, out) = setup.cli(&[
        "flag",
        "ramp",
        FLAG,
        "--steps",
        "10,25,50,100",
        "--window",
        "2s",
        "--interval",
        "250ms",
        "--min-requests",
        "30",
        "--reason",
        "through a crash",
    ]);
    assert_eq!(code, 0, "{out}");
    wait_until(
        "the ramp reaches its second step",
        Duration::from_secs(30),
        || async { setup.ramp().await["phase"]["step"].as_u64().unwrap_or(0) >= 1 },
    )
    .await;
    let before = setup.ramp().await;
    traffic.finish().await;
    setup.serve.take().unwrap().kill();
    setup.start();
    let after_restart = setup.ramp().await;
    assert_eq!(after_restart["id"], before["id"]);
    assert!(
        after_restart["phase"]["step"].as_u64() >= before["phase"]["step"].as_u64(),
        "{after_restart:#}"
    );
    let traffic = Traffic::start(&setup.public);
    let (code, out) =
        wait_resuming_held_steps(&setup, setup.cli(&["flag", "ramp", FLAG, "--status", "--wait"]));
    traffic.finish().await;
    assert_eq!(code, 0, "the ramp completes after the restart\n{out}");
    let flag = setup.get(&format!("/v1/flags/{FLAG}")).await;
    assert_eq!(
        flag["split"][0],
        json!({ "variant": "on", "weight": 10000 }),
        "{flag}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramp_is_judged_from_prometheus_when_configured() {
    // Prometheus must know where to scrape before cutover starts: a port free a moment ago.
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], cutover_test_support::free_port()));
    let prometheus = cutover_test_support::monitoring::Prometheus::start(
        &[("cutover", admin, "/metrics")],
        Duration::from_secs(1),
    )
    .await;
    let setup = Setup::with_admin(
        0.3,
        &format!("\n[flags.prometheus]\nurl = \"{}\"\n", prometheus.url),
        &admin.to_string(),
    );
    setup.create_flag().await;
    let traffic = Traffic::start(&setup.public);
    let (code, out) = setup.cli(&[
        "flag",
        "ramp",
        FLAG,
        "--steps",
        "30,100",
        "--window",
        "20s",
        "--interval",
        "3s",
        "--min-requests",
        "30",
        "--reason",
        "judged by Prometheus",
        "--wait",
    ]);
    traffic.finish().await;
    assert_eq!(code, 10, "killed from Prometheus's numbers\n{out}");
    let ramp = setup.ramp().await;
    let judged: Vec<&Value> = ramp["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["verdict"].is_object())
        .collect();
    assert!(!judged.is_empty(), "{ramp:#}");
    // Windows from Prometheus carry no user counts (the proxy's counters always do).
    for d in judged {
        assert!(d["verdict"]["stats"]["canary"]["users"].is_null(), "{d:#}");
    }
}
