#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Whole rollouts with real processes: `cutover serve` with the local process platform and SQLite
//! state, the `cutover` CLI as the client, the example app as the service, load on loopback.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cutover_test_support::{get_json, http_client, wait_until, wait_until_sync, ChildProcess, Load};
use serde_json::Value;

mod common;

use common::CUTOVER;
const TOKEN: &str = "rollout-test-token";

/// Settings a test may change in the generated configuration.
struct Setup {
    steps: &'static str,
    rollback_window_ms: u64,
    verify: &'static str,
    extra: String,
    rollout_extra: &'static str,
    admin_listen: String,
    analysis_interval_ms: u64,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            steps: r#"[{ weight_bp = 2500, duration_ms = 600 }, { weight_bp = 5000, duration_ms = 600 }, { weight_bp = 10000 }]"#,
            rollback_window_ms: 500,
            verify: r#"smoke = [{ path = "/health/ready" }]"#,
            extra: String::new(),
            rollout_extra: "",
            admin_listen: "127.0.0.1:0".into(),
            analysis_interval_ms: 200,
        }
    }
}

/// A `cutover serve` over a state directory that outlives restarts of the server.
struct Cluster {
    dir: tempfile::TempDir,
    config: PathBuf,
    serve: Option<ChildProcess>,
    admin: String,
    public: String,
}

impl Cluster {
    fn new(setup: Setup) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("cutover-rollout-test-")
            .tempdir()
            .unwrap();
        let sessions = dir.path().join("sessions.db");
        let config = dir.path().join("cutover.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
tick_ms = 50

[admin]
listen = "{admin_listen}"

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
steps = {steps}
analysis_interval_ms = {analysis_interval_ms}
failure_limit = 1
inconclusive_limit = 20
rollback_window_ms = {rollback}
readiness_deadline_ms = 4000
{rollout_extra}

[app.rollout.judge]
min_requests = 5

[app.verify]
{verify}

{extra}
"#,
                sessions = sessions.display(),
                steps = setup.steps,
                rollback = setup.rollback_window_ms,
                verify = setup.verify,
                extra = setup.extra,
                rollout_extra = setup.rollout_extra,
                admin_listen = setup.admin_listen,
                analysis_interval_ms = setup.analysis_interval_ms,
            ),
        )
        .unwrap();
        let mut cluster = Cluster {
            dir,
            config,
            serve: None,
            admin: String::new(),
            public: String::new(),
        };
        cluster.start();
        cluster
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

    fn kill9(&mut self) {
        let mut serve = self.serve.take().unwrap();
        serve.kill();
    }

    fn cli(&self, args: &[&str]) -> (i32, String) {
        common::cli(&self.admin, TOKEN, args)
    }

    fn deploy(&self, version: &str, extra_args: &str) -> (i32, String) {
        let mut args = vec!["deploy", "web", version];
        let cmd;
        if !extra_args.is_empty() {
            let sessions = self.dir.path().join("sessions.db");
            cmd = format!(
                "exec '{CUTOVER}' example-app --port {{port}} --version-label {{version}} --session-store '{}' {extra_args}",
                sessions.display()
            );
            args.extend(["--cmd", cmd.as_str()]);
        }
        self.cli(&args)
    }

    /// GET of an admin API path, as JSON.
    async fn get_json(&self, path: &str) -> Value {
        get_json(&format!("{}{path}", self.admin)).await
    }

    async fn status(&self) -> Value {
        self.get_json("/v1/apps/web/status").await
    }

    async fn phase(&self) -> String {
        self.status().await["rollout"]["phase"]["phase"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    }

    async fn wait_phase(&self, phase: &str) {
        wait_until(&format!("phase {phase}"), Duration::from_secs(30), || async {
            self.phase().await == phase
        })
        .await;
    }

    async fn post(&self, command: &str) -> u16 {
        http_client()
            .post(format!("{}/v1/apps/web/{command}", self.admin))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn deploy_async(&self, version: &str, command: Option<String>) -> u16 {
        http_client()
            .post(format!("{}/v1/apps/web/deploy", self.admin))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({ "version": version, "command": command }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// A host crash: the server and every instance killed at once.
    fn crash_host(&mut self) {
        let instances = self.instance_pids();
        self.kill9();
        for pid in &instances {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
        wait_until_sync("the instances are dead", Duration::from_secs(10), || {
            self.instance_pids().is_empty()
        });
    }

    /// Waits until every one of a few users is served `version` with a 200.
    async fn wait_served_by(&self, version: &str) {
        let want = format!("200 {version}");
        wait_until(
            &format!("{version} serves everyone"),
            Duration::from_secs(30),
            || async { versions_seen(&self.public, 5).await.iter().all(|s| *s == want) },
        )
        .await;
    }

    /// v1 released, then v2 promoted inside its rollback window: both slots run.
    async fn v2_promoted_with_v1_warm(&self) {
        assert_eq!(self.deploy("v1", "").0, 0);
        self.wait_phase("promoted").await;
        assert_eq!(self.post("promote").await, 200, "close v1's window");
        self.wait_phase("succeeded").await;
        assert_eq!(self.deploy_async("v2", None).await, 202);
        self.wait_phase("canary").await;
        assert_eq!(self.post("promote").await, 200);
        self.wait_phase("promoted").await;
    }

    /// PIDs of the example-app processes of this cluster (their command line names its directory).
    fn instance_pids(&self) -> Vec<u32> {
        common::instance_pids(self.dir.path())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut serve) = self.serve.take() {
            serve.kill();
        }
        // Instances outlive the server by design; the test cleans up what it started.
        common::kill_instances(self.dir.path());
    }
}

/// Sticky users hitting the public listener until dropped; counts failures by version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_release_is_promoted_and_a_bad_one_rolled_back() {
    let cluster = Cluster::new(Setup::default());
    let (code, out) = cluster.deploy("v1", "");
    assert_eq!(code, 0, "first release: {out}");
    // The event stream replays the log from the start and goes on live.
    let stream = http_client()
        .get(format!("{}/v1/apps/web/events/stream?after=0", cluster.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut stream = stream.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("event: promoted") {
        let chunk = tokio::time::timeout(
            Duration::from_secs(20),
            futures_util::StreamExt::next(&mut stream),
        )
        .await
        .expect("events arrive")
        .unwrap()
        .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: deploy") && seen.contains("id: 1"), "{seen}");
    drop(stream);
    let load = Load::start(&cluster.public);

    let (code, out) = cluster.deploy("v2", "");
    assert_eq!(code, 0, "a healthy release is promoted: {out}");
    assert!(out.contains("step 1 of 3: 25.00 %"), "{out}");
    cluster.wait_phase("succeeded").await;

    let (code, out) = cluster.deploy("v3", "--error-rate 0.5");
    assert_eq!(code, 10, "a failing release is rolled back: {out}");
    assert!(
        out.contains("rolled back automatically: v3 fails") && out.contains("requests with a 5xx"),
        "{out}"
    );
    let (sent, failed) = load.finish().await;
    assert!(sent > 100, "the load ran: {sent}");

    let status = cluster.status().await;
    let target = status["rollout"]["target"].as_str().unwrap().to_string();
    assert_eq!(
        status["weights"][&target], 0,
        "no traffic left on the rolled-back slot: {status}"
    );
    for _ in 0..20 {
        let r = http_client()
            .get(format!("{}/", cluster.public))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-app-version"], "v2");
    }
    // The failed canary's instances go once its drain timeout passed: one slot's instances remain.
    wait_until(
        "the bad release's instances are stopped",
        Duration::from_secs(20),
        || async { cluster.instance_pids().len() == 1 },
    )
    .await;
    assert!(
        failed * 20 < sent,
        "a bounded share of requests failed: {failed} of {sent}"
    );

    let metrics = http_client()
        .get(format!("{}/metrics", cluster.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(",version=\"v2\",phase=\"live\"} 1"),
        "deployment marker of the live release:\n{metrics}"
    );

    let (code, out) = cluster.cli(&["history", "web"]);
    assert_eq!(code, 0);
    for line in ["rolled_back", "succeeded"] {
        assert!(out.contains(line), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_never_becomes_ready_fails_with_its_log() {
    let cluster = Cluster::new(Setup::default());
    assert_eq!(cluster.deploy("v1", "").0, 0);
    let (code, out) = cluster.deploy("v2", "--fail-ready");
    assert_eq!(code, 12, "{out}");
    let history: Value = cluster.get_json("/v1/apps/web/history").await;
    let reason = history[0]["phase"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("not ready within the readiness deadline"),
        "{reason}"
    );
    assert!(
        reason.contains("last probe of /health/ready: status 503"),
        "{reason}"
    );
    assert!(
        reason.contains("--- last lines of the instance log ---"),
        "{reason}"
    );
    assert!(
        reason.contains("cutover-example-app") || reason.contains("serving"),
        "the log tail is there: {reason}"
    );
    let status = cluster.status().await;
    assert_eq!(
        status["weights"][status["live"].as_str().unwrap()],
        10_000,
        "no traffic shifted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_smoke_check_tears_the_slot_down_before_any_traffic() {
    let cluster = Cluster::new(Setup {
        verify: r#"smoke = [{ path = "/api/hello", expect_status = 200, body_contains = "version" }]"#,
        ..Setup::default()
    });
    assert_eq!(cluster.deploy("v1", "").0, 0);
    let (code, out) = cluster.deploy("v2", "--error-rate 1");
    assert_eq!(code, 12, "{out}");
    assert!(out.contains("expected status 200, got 500"), "{out}");
    assert!(!out.contains("step "), "no step was entered: {out}");
    wait_until("the new slot is torn down", Duration::from_secs(20), || async {
        cluster.instance_pids().len() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rollout_at_a_time_and_freeze_windows_need_force() {
    let cluster = Cluster::new(Setup {
        steps: r#"[{ weight_bp = 2500, duration_ms = 60000 }, { weight_bp = 10000 }]"#,
        extra: "[[app.freeze]]\nname = \"always\"\nfrom = \"00:00\"\nto = \"23:59\"\n\n[[app.freeze]]\nname = \"last minute\"\nfrom = \"23:59\"\nto = \"00:00\"".into(),
        ..Setup::default()
    });
    let (code, out) = cluster.deploy("v1", "");
    assert_eq!(code, 3, "frozen: {out}");
    assert!(out.contains("frozen now by \"always\""), "{out}");
    let (code, out) = cluster.cli(&["deploy", "web", "v1", "--force"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("deploy freeze overridden with --force"), "{out}");
    assert_eq!(
        cluster.deploy_async("v2", None).await,
        409,
        "frozen without force"
    );
    let (code, _) = cluster.cli(&["deploy", "web", "v2", "--force", "--no-follow"]);
    assert_eq!(code, 0);
    cluster.wait_phase("canary").await;
    let (code, out) = cluster.cli(&["deploy", "web", "v3", "--force"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("rollout #2 of app web (v1 → v2) is still in phase canary"),
        "{out}"
    );
    let (code, out) = cluster.cli(&["abort", "web"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(cluster.phase().await, "aborted");
}

/// A CI job must not hang on a rollout that waits for a person: `deploy` exits 13 at a pause
/// (the rollout stays paused in the server), `--wait` follows on through it (here until
/// `--timeout` gives up with 14 while the rollout goes on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_exits_13_when_the_rollout_waits_for_a_person_and_14_after_its_timeout() {
    let cluster = Cluster::new(Setup {
        steps: r#"[{ weight_bp = 2500, duration_ms = 600, pause = true }, { weight_bp = 5000, duration_ms = 60000 }, { weight_bp = 10000 }]"#,
        ..Setup::default()
    });
    let (code, out) = cluster.deploy("v1", "");
    assert_eq!(code, 0, "first release: {out}");
    let load = Load::start(&cluster.public);
    let (code, out) = cluster.deploy("v2", "");
    assert_eq!(code, 13, "paused for a person: {out}");
    assert!(
        out.contains("waits for a person") && out.contains("cutover resume web"),
        "{out}"
    );
    assert_eq!(cluster.phase().await, "paused", "the rollout stays where it was");
    let (code, out) = cluster.cli(&["resume", "web"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = cluster.cli(&["abort", "web"]);
    assert_eq!(code, 0, "{out}");

    let started = std::time::Instant::now();
    let (code, out) = cluster.cli(&["deploy", "web", "v3", "--wait", "--timeout", "2"]);
    assert_eq!(code, 14, "{out}");
    assert!(out.contains("goes on in the server"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_ne!(cluster.phase().await, "aborted", "v3's rollout goes on");
    let (code, out) = cluster.cli(&["abort", "web"]);
    assert_eq!(code, 0, "{out}");
    let (_, failed) = load.finish().await;
    assert_eq!(failed, 0);
    let (code, out) = cluster.cli(&["deploy", "web", "v4", "--no-follow", "--wait"]);
    assert_eq!(code, 2, "--no-follow and --wait contradict each other: {out}");
}

/// The incident the product exists for: v2 rejects the sessions v1 issued, so every logged-in
/// user it serves gets a 401 (no 5xx at all). The judge sees the 4xx rise against the baseline's
/// own share, rolls back, and names the code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_logs_users_out_is_rolled_back_on_its_401s() {
    let cluster = Cluster::new(Setup::default());
    let (code, out) = cluster.deploy("v1", "");
    assert_eq!(code, 0, "first release: {out}");
    let client = http_client();
    let mut users = Vec::new();
    for i in 0..200 {
        let user = format!("user-{i}");
        let r = client
            .post(format!("{}/login", cluster.public))
            .header("X-User-ID", &user)
            .json(&serde_json::json!({ "user": user }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "login of {user}: {}", r.status());
        let cookie = r.headers()["set-cookie"].to_str().unwrap();
        users.push((user, cookie.split(';').next().unwrap().to_string()));
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, public, client) = (Arc::clone(&stop), cluster.public.clone(), client.clone());
        tokio::spawn(async move {
            let limit = std::time::Instant::now() + Duration::from_secs(60);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < limit {
                let (user, cookie) = &users[i % users.len()];
                let _ = client
                    .get(format!("{public}/api/me"))
                    .header("X-User-ID", user)
                    .header("Cookie", cookie)
                    .send()
                    .await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let (code, out) = cluster.deploy("v2", "--reject-old-sessions");
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(code, 10, "rolled back: {out}");
    assert!(
        out.contains("rolled back automatically: v2 answers") && out.contains("with 401 Unauthorized"),
        "{out}"
    );
    let status = cluster.status().await;
    let exposure = &status["rollout"]["exposure"];
    assert!(exposure["canary_requests"].as_u64().unwrap() > 0, "{status}");
    assert!(exposure["canary_client_errors"].as_u64().unwrap() > 0, "{status}");
    assert!(exposure["decided_at"].as_u64().is_some(), "{status}");
}

/// A compromised app must not find cutover's secrets in its environment: instances get PATH and
/// the like, the release's own variables and cutover's facts, never the admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_get_an_explicit_environment_without_cutovers_secrets() {
    let smoke_env = tempfile::NamedTempFile::new().unwrap();
    let verify = format!("command = \"env > '{}'\"", smoke_env.path().display());
    let cluster = Cluster::new(Setup {
        verify: Box::leak(verify.into_boxed_str()),
        ..Setup::default()
    });
    let (code, out) = cluster.cli(&["deploy", "web", "v1", "--env", "GREETING=hello"]);
    assert_eq!(code, 0, "{out}");
    let pids = cluster.instance_pids();
    assert!(!pids.is_empty());
    for pid in pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let vars: Vec<String> = environ
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).to_string())
            .collect();
        let names: Vec<&str> = vars
            .iter()
            .filter_map(|v| v.split_once('='))
            .map(|(k, _)| k)
            .collect();
        assert!(
            !vars.iter().any(|v| v.contains(TOKEN)),
            "the admin token leaked into instance {pid}: {names:?}"
        );
        assert!(!names.contains(&"CUTOVER_ADMIN_TOKEN"), "{names:?}");
        for wanted in [
            "PATH",
            "PORT",
            "CUTOVER_APP",
            "CUTOVER_SLOT",
            "CUTOVER_VERSION",
            "GREETING",
        ] {
            assert!(
                names.contains(&wanted),
                "{wanted} missing from instance {pid}: {names:?}"
            );
        }
    }
    // The smoke command too.
    let smoke = std::fs::read_to_string(smoke_env.path()).unwrap();
    assert!(smoke.contains("TARGET_URL="), "the smoke command ran: {smoke}");
    assert!(
        !smoke.contains(TOKEN) && !smoke.contains("CUTOVER_ADMIN_TOKEN"),
        "the admin token leaked into the smoke command: {smoke}"
    );
}

/// `kill -9` of the server in each phase, then a restart: the rollout resumes where it was or
/// rolls back; the routes follow the persisted state; no instance is orphaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_every_phase_then_restart() {
    for phase in ["provisioning", "verifying", "canary", "paused", "promoted"] {
        let mut cluster = Cluster::new(Setup {
            steps: r#"[{ weight_bp = 2500, duration_ms = 60000 }, { weight_bp = 10000 }]"#,
            rollback_window_ms: 60_000,
            verify: r#"command = "sleep 1.5""#,
            ..Setup::default()
        });
        assert_eq!(cluster.deploy("v1", "").0, 0, "{phase}: first release");
        // Finish v1's rollback window at once so the next rollout may start.
        assert_eq!(cluster.post("promote").await, 200);
        cluster.wait_phase("succeeded").await;

        // A release that takes a moment to start, so provisioning can be caught.
        let slow = format!(
            "sleep 1.5; exec '{CUTOVER}' example-app --port {{port}} --version-label {{version}} --session-store '{}'",
            cluster.dir.path().join("sessions.db").display()
        );
        assert_eq!(cluster.deploy_async("v2", Some(slow)).await, 202);
        match phase {
            "provisioning" | "verifying" | "canary" => cluster.wait_phase(phase).await,
            "paused" => {
                cluster.wait_phase("canary").await;
                assert_eq!(cluster.post("pause").await, 200);
            }
            "promoted" => {
                cluster.wait_phase("canary").await;
                assert_eq!(cluster.post("promote").await, 200);
            }
            _ => unreachable!(),
        }
        assert_eq!(cluster.phase().await, phase);
        cluster.kill9();
        cluster.start();

        // After the restart: the same rollout, in the same phase or moving on from it.
        let status = cluster.status().await;
        assert_eq!(status["rollout"]["id"], 2, "{phase}: {status}");
        let after = cluster.phase().await;
        let allowed: &[&str] = match phase {
            "provisioning" => &["provisioning", "verifying", "canary"],
            "verifying" => &["verifying", "canary"],
            "canary" => &["canary"],
            "paused" => &["paused"],
            "promoted" => &["promoted"],
            _ => unreachable!(),
        };
        assert!(allowed.contains(&after.as_str()), "{phase}: resumed as {after}");

        // The proxy serves what the persisted state says.
        let routes: Value = cluster.get_json("/v1/apps/web/routes").await;
        let weights = &status["weights"];
        let live = routes["route"]["live"].as_str().unwrap();
        let canary_weight = routes["route"]["canary_weight_bp"].as_u64().unwrap();
        assert_eq!(
            weights[live].as_u64().unwrap() + canary_weight,
            10_000,
            "{phase}: {routes} vs {status}"
        );

        // Finish the rollout by hand and check nothing was orphaned.
        if after == "paused" {
            assert_eq!(cluster.post("resume").await, 200);
        }
        if after != "promoted" {
            cluster.wait_phase("canary").await;
            assert_eq!(cluster.post("promote").await, 200);
        }
        for _ in 0..10 {
            let r = http_client()
                .get(format!("{}/", cluster.public))
                .send()
                .await
                .unwrap();
            assert_eq!(
                (
                    r.status().as_u16(),
                    r.headers()["x-app-version"].to_str().unwrap()
                ),
                (200, "v2"),
                "{phase}"
            );
        }
        assert_eq!(
            cluster.post("promote").await,
            200,
            "{phase}: end the rollback window"
        );
        cluster.wait_phase("succeeded").await;
        wait_until(
            &format!("{phase}: only v2's instance is left"),
            Duration::from_secs(20),
            || async { cluster.instance_pids().len() == 1 },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_slot_that_dies_after_a_restart_is_rolled_back() {
    let mut cluster = Cluster::new(Setup {
        steps: r#"[{ weight_bp = 2500, duration_ms = 60000 }, { weight_bp = 10000 }]"#,
        ..Setup::default()
    });
    assert_eq!(cluster.deploy("v1", "").0, 0);
    cluster.wait_phase("succeeded").await;
    assert_eq!(cluster.deploy_async("v2", None).await, 202);
    cluster.wait_phase("canary").await;
    let before: Vec<u32> = cluster.instance_pids();
    cluster.kill9();
    // The new release dies while the controller is down.
    let status_pid = before.iter().max().copied().unwrap();
    Command::new("kill")
        .args(["-KILL", &status_pid.to_string()])
        .status()
        .unwrap();
    cluster.start();
    wait_until("the rollout is rolled back", Duration::from_secs(30), || async {
        let p = cluster.phase().await;
        p == "rolled_back"
    })
    .await;
    let r = http_client()
        .get(format!("{}/", cluster.public))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["x-app-version"],
        "v1",
        "traffic never stays on a slot that is not running"
    );
}

/// A webhook receiver: records every request; `/veto` refuses step 2, `/confirm` answers
/// "not yet" until told what to answer.
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    confirm_answer: Arc<std::sync::atomic::AtomicU16>,
}

impl Receiver {
    async fn start() -> (Receiver, std::net::SocketAddr) {
        use axum::routing::post;
        let receiver = Receiver::default();
        receiver.confirm_answer.store(409, Ordering::SeqCst);
        let r = receiver.clone();
        let app = axum::Router::new().route(
            "/{hook}",
            post(
                move |axum::extract::Path(hook): axum::extract::Path<String>, body: axum::body::Bytes| {
                    let r = r.clone();
                    async move {
                        let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        r.seen.lock().unwrap().push((hook.clone(), json.clone()));
                        let status = match hook.as_str() {
                            "veto" if json["step"] == 1 => 409,
                            "confirm" => r.confirm_answer.load(Ordering::SeqCst),
                            _ => 204,
                        };
                        axum::http::StatusCode::from_u16(status).unwrap()
                    }
                },
            ),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, addr)
    }

    fn types(&self, hook: &str) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(h, _)| h == hook)
            .map(|(_, j)| j["type"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}

fn webhooks(addr: std::net::SocketAddr, veto: bool) -> String {
    let mut hooks = format!(
        r#"
[[app.webhook]]
name = "audit"
url = "http://{addr}/audit"
events = ["pre_rollout", "step", "post_rollout", "rollback", "event"]

[[app.webhook]]
name = "release-bot"
url = "http://{addr}/confirm"
events = ["confirm_promotion"]
retry_backoff_ms = 50
"#
    );
    if veto {
        hooks.push_str(&format!(
            r#"
[[app.webhook]]
name = "change-board"
url = "http://{addr}/veto"
events = ["step"]
can_veto = true
retries = 0
"#
        ));
    }
    hooks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_hear_every_event_and_confirm_the_promotion() {
    let (receiver, addr) = Receiver::start().await;
    let cluster = Cluster::new(Setup {
        extra: webhooks(addr, false),
        ..Setup::default()
    });
    assert_eq!(cluster.deploy("v1", "").0, 0);
    let load = Load::start(&cluster.public);
    assert_eq!(cluster.deploy_async("v2", None).await, 202);
    cluster.wait_phase("awaiting_confirmation").await;
    wait_until("the release bot is asked", Duration::from_secs(10), || async {
        !receiver.types("confirm").is_empty()
    })
    .await;
    receiver.confirm_answer.store(200, Ordering::SeqCst);
    cluster.wait_phase("promoted").await;
    assert_eq!(cluster.post("promote").await, 200);
    cluster.wait_phase("succeeded").await;
    wait_until("post-rollout notification", Duration::from_secs(10), || async {
        receiver
            .types("audit")
            .iter()
            .filter(|t| *t == "post_rollout")
            .count()
            >= 2
    })
    .await;
    let audit = receiver.types("audit");
    for kind in ["pre_rollout", "step", "event", "post_rollout"] {
        assert!(
            audit.iter().any(|t| t == kind),
            "audit hook got no {kind}: {audit:?}"
        );
    }
    assert!(receiver.types("confirm").iter().all(|t| t == "confirm_promotion"));
    // The outcome's hook hears what users saw before the decision.
    let seen = receiver.seen.lock().unwrap().clone();
    let post = seen
        .iter()
        .rev()
        .find(|(h, j)| h == "audit" && j["type"] == "post_rollout" && j["version"] == "v2")
        .map(|(_, j)| j.clone())
        .expect("post_rollout of v2");
    assert!(
        post["data"]["exposure"]["canary_requests"].as_u64().unwrap() > 0,
        "{post}"
    );
    assert!(
        post["data"]["first_canary_request_to_decision_ms"].is_u64(),
        "{post}"
    );
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vetoing_webhook_fails_the_step_and_a_silent_confirmer_leaves_it_to_a_person() {
    let (receiver, addr) = Receiver::start().await;
    let cluster = Cluster::new(Setup {
        extra: webhooks(addr, true),
        ..Setup::default()
    });
    assert_eq!(cluster.deploy("v1", "").0, 0);
    let load = Load::start(&cluster.public);
    let (code, out) = cluster.deploy("v2", "");
    load.finish().await;
    assert_eq!(code, 10, "{out}");
    assert!(
        out.contains("step gate before step 2: vetoed by webhook \"change-board\": 409"),
        "{out}"
    );
    assert!(receiver.types("audit").iter().any(|t| t == "rollback"));

    // The confirmer never says yes: after its timeout a person decides; nothing is promoted.
    let (receiver, addr) = Receiver::start().await;
    let cluster = Cluster::new(Setup {
        extra: webhooks(addr, false),
        rollout_extra: "confirm_timeout_ms = 500",
        ..Setup::default()
    });
    assert_eq!(cluster.deploy("v1", "").0, 0);
    let load = Load::start(&cluster.public);
    assert_eq!(cluster.deploy_async("v2", None).await, 202);
    wait_until("the confirmation times out", Duration::from_secs(20), || async {
        let events: Value = cluster.get_json("/v1/apps/web/events?rollout=2").await;
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "confirmation_timed_out")
    })
    .await;
    assert_eq!(cluster.phase().await, "awaiting_confirmation");
    assert!(!receiver.types("confirm").is_empty());
    assert_eq!(cluster.post("rollback").await, 200);
    load.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_firing_page_alert_blocks_a_rollout_until_it_is_silenced_and_fails_a_step() {
    let alertmanager = cutover_test_support::monitoring::Alertmanager::start().await;
    let cluster = Cluster::new(Setup {
        // Time for the alert to reach Alertmanager while the first step runs.
        steps: r#"[{ weight_bp = 2500, duration_ms = 4000 }, { weight_bp = 5000, duration_ms = 600 }, { weight_bp = 10000 }]"#,
        extra: format!(
            "[app.alert_gate]\nurl = \"{}\"\nmatchers = ['severity=\"page\"']\n",
            alertmanager.url
        ),
        ..Setup::default()
    });
    alertmanager
        .post_alert(
            &[("alertname", "HighErrorRate"), ("severity", "page")],
            &[("summary", "error rate 7 %")],
        )
        .await;
    alertmanager
        .post_alert(&[("alertname", "DiskAlmostFull"), ("severity", "ticket")], &[])
        .await;
    let (code, out) = cluster.deploy("v1", "");
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("1 firing alert matches severity=\"page\": HighErrorRate"),
        "{out}"
    );
    assert!(!out.contains("DiskAlmostFull"), "{out}");
    alertmanager
        .silence(&[("alertname", "HighErrorRate")], Duration::from_secs(3600))
        .await;
    let (code, out) = cluster.deploy("v1", "");
    assert_eq!(code, 0, "the silence lets it through: {out}");

    // An alert that fires during a canary fails the next step: the gate is asked before each
    // step, not only before the rollout (it was not, until a review of the dashboard's gates).
    let load = Load::start(&cluster.public);
    assert_eq!(cluster.deploy_async("v2", None).await, 202);
    cluster.wait_phase("canary").await;
    alertmanager
        .post_alert(
            &[("alertname", "CheckoutLatency"), ("severity", "page")],
            &[("summary", "p99 2 s")],
        )
        .await;
    cluster.wait_phase("rolled_back").await;
    let status = cluster.status().await;
    let reason = status["rollout"]["phase"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("step gate before step 2") && reason.contains("CheckoutLatency"),
        "{reason}"
    );
    load.finish().await;
}

/// The judge fed by PromQL: a real Prometheus scrapes `cutover serve` and the controller asks it,
/// per slot and window, for requests, errors, p99 and a custom availability metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_are_judged_from_prometheus() {
    // Prometheus must know where to scrape before cutover starts: a port free a moment ago.
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], cutover_test_support::free_port()));
    let prometheus = cutover_test_support::monitoring::Prometheus::start(
        &[("cutover", admin, "/metrics")],
        Duration::from_secs(1),
    )
    .await;
    let availability = r#"sum(increase(cutover_requests_total{app="{app}",slot="{slot}",version="{version}",code_class="2xx"}[{interval}])) / sum(increase(cutover_requests_total{app="{app}",slot="{slot}",version="{version}"}[{interval}]))"#;
    let cluster = Cluster::new(Setup {
        admin_listen: admin.to_string(),
        analysis_interval_ms: 2000,
        steps: r#"[{ weight_bp = 5000, duration_ms = 6000 }, { weight_bp = 10000 }]"#,
        rollout_extra: "",
        extra: format!(
            "[app.prometheus]\nurl = \"{}\"\n\n[[app.prometheus.custom]]\nname = \"availability\"\nquery = '{availability}'\ndirection = \"higher_is_better\"\nmin = 0.9\n",
            prometheus.url
        ),
        ..Setup::default()
    });
    assert_eq!(cluster.deploy("v1", "").0, 0);
    let load = Load::start(&cluster.public);
    let (code, out) = cluster.deploy("v2", "");
    assert_eq!(code, 0, "{out}");
    let events: Value = cluster.get_json("/v1/apps/web/events?rollout=2").await;
    let judged_with_availability = events.as_array().unwrap().iter().any(|e| {
        e["kind"] == "decision"
            && e["data"]["verdict"]["outcome"] == "pass"
            && e["data"]["verdict"]["checks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "availability")
    });
    assert!(
        judged_with_availability,
        "a passing window judged the custom metric from Prometheus: {events}"
    );

    let (code, out) = cluster.deploy("v3", "--error-rate 0.5");
    assert_eq!(code, 10, "{out}");
    load.finish().await;
}

/// Versions answered to `users` sticky users of the public listener (one request each).
async fn versions_seen(public: &str, users: usize) -> Vec<String> {
    let client = http_client();
    let mut seen = Vec::new();
    for user in 0..users {
        let r = client
            .get(format!("{public}/"))
            .header("X-User-ID", format!("user-{user}"))
            .send()
            .await
            .unwrap();
        let version = r
            .headers()
            .get("x-app-version")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        seen.push(format!("{} {version}", r.status().as_u16()));
    }
    seen
}

async fn event_kinds(cluster: &Cluster) -> Vec<String> {
    cluster
        .get_json("/v1/apps/web/events?limit=1000")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// A host crash: the server and every instance die together. On restart the live release is
/// started again, checked and routed with nobody involved; the next deploy then takes only its
/// canary share, not all the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_host_crash_the_live_release_comes_back_by_itself() {
    let mut cluster = Cluster::new(Setup {
        steps: r#"[{ weight_bp = 2500, duration_ms = 60000 }, { weight_bp = 10000 }]"#,
        ..Setup::default()
    });
    assert_eq!(cluster.deploy("v1", "").0, 0);
    cluster.wait_phase("succeeded").await;
    cluster.crash_host();
    cluster.start();
    cluster.wait_served_by("v1").await;
    assert!(event_kinds(&cluster).await.contains(&"restarted".to_string()));
    let status = cluster.status().await;
    assert_eq!(status["rollout"]["id"], 1, "no deploy was needed: {status}");

    // The recovery deploy is a canary at 25 %, not a takeover.
    assert_eq!(cluster.deploy_async("v2", None).await, 202);
    cluster.wait_phase("canary").await;
    let seen = versions_seen(&cluster.public, 60).await;
    let on_v1 = seen.iter().filter(|s| *s == "200 v1").count();
    let on_v2 = seen.iter().filter(|s| *s == "200 v2").count();
    assert_eq!(on_v1 + on_v2, 60, "{seen:?}");
    assert!(
        on_v1 >= 30 && on_v2 >= 3,
        "25 % canary: {on_v1} on v1, {on_v2} on v2"
    );
}

/// The host crashes during a canary: the dead canary is rolled back and the live release is
/// started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_crash_during_a_canary_rolls_it_back_and_restarts_the_live_release() {
    let mut cluster = Cluster::new(Setup {
        steps: r#"[{ weight_bp = 2500, duration_ms = 60000 }, { weight_bp = 10000 }]"#,
        ..Setup::default()
    });
    assert_eq!(cluster.deploy("v1", "").0, 0);
    cluster.wait_phase("succeeded").await;
    assert_eq!(cluster.deploy_async("v2", None).await, 202);
    cluster.wait_phase("canary").await;
    let before = cluster.instance_pids();
    assert_eq!(before.len(), 2);
    cluster.crash_host();
    cluster.start();
    cluster.wait_phase("rolled_back").await;
    wait_until("v1 serves everyone again", Duration::from_secs(30), || async {
        versions_seen(&cluster.public, 20)
            .await
            .iter()
            .all(|s| s == "200 v1")
    })
    .await;
    assert_eq!(cluster.instance_pids().len(), 1, "only v1 runs");
}

/// A state file moved aside (as the error for a damaged one allows) must not take the service
/// down: the fresh server adopts the instances it finds, says so, and serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_state_adopts_running_instances_instead_of_stopping_them() {
    let mut cluster = Cluster::new(Setup::default());
    assert_eq!(cluster.deploy("v1", "").0, 0);
    cluster.wait_phase("succeeded").await;
    let before = cluster.instance_pids();
    assert_eq!(before.len(), 1);
    cluster.kill9();
    let state_dir = cluster.dir.path().join(".cutover");
    let aside = cluster.dir.path().join("state-aside");
    std::fs::create_dir(&aside).unwrap();
    for entry in std::fs::read_dir(&state_dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with("state.db") {
            std::fs::rename(entry.path(), aside.join(&name)).unwrap();
        }
    }
    cluster.start();
    assert_eq!(
        versions_seen(&cluster.public, 5).await,
        vec!["200 v1".to_string(); 5],
        "served at once, by the same instance"
    );
    assert_eq!(
        cluster.instance_pids(),
        before,
        "nothing was stopped or restarted"
    );
    let status = cluster.status().await;
    let live = status["live"].as_str().unwrap();
    let slot = status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == live)
        .unwrap();
    assert_eq!(slot["version"], "v1", "{status}");
    let events = cluster.get_json("/v1/apps/web/events?limit=1000").await;
    let adopted = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "adopted")
        .unwrap_or_else(|| panic!("an adopted event: {events}"));
    assert!(adopted["message"].as_str().unwrap().contains("v1"), "{adopted}");

    // The adopted release is replaced by the next deploy like any other.
    assert_eq!(cluster.deploy_async("v2", None).await, 202);
    cluster.wait_phase("canary").await;
    assert_eq!(cluster.post("promote").await, 200);
    cluster.wait_phase("succeeded").await;
    wait_until("only v2 is left", Duration::from_secs(20), || async {
        let pids = cluster.instance_pids();
        pids.len() == 1 && pids != before
    })
    .await;
}

/// A deploy inside the rollback window closes the promoted rollout: history says it succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_a_rollout_closed_by_the_next_deploy() {
    let cluster = Cluster::new(Setup {
        rollback_window_ms: 60_000,
        ..Setup::default()
    });
    assert_eq!(cluster.deploy("v1", "").0, 0);
    cluster.wait_phase("promoted").await;
    assert_eq!(cluster.deploy_async("v2", None).await, 202);
    cluster.wait_phase("canary").await;
    assert_eq!(cluster.post("promote").await, 200);
    cluster.wait_phase("promoted").await;
    let history = cluster.get_json("/v1/apps/web/history").await;
    let phases: Vec<(u64, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r["phase"]["phase"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        phases,
        vec![(2, "promoted".to_string()), (1, "succeeded".to_string())],
        "{history}"
    );
}

/// A host crash inside the rollback window is no verdict on the promoted release: it is started
/// again and stays promoted, instead of being rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_crash_in_the_rollback_window_keeps_the_promoted_release() {
    let mut cluster = Cluster::new(Setup {
        rollback_window_ms: 60_000,
        ..Setup::default()
    });
    cluster.v2_promoted_with_v1_warm().await;
    let before = cluster.instance_pids();
    assert_eq!(before.len(), 2, "v2 live, v1 warm");
    cluster.crash_host();
    cluster.start();
    cluster.wait_served_by("v2").await;
    assert_eq!(cluster.phase().await, "promoted", "not rolled back");
    assert!(event_kinds(&cluster).await.contains(&"restarted".to_string()));
}

/// Without state, with both slots running (a rollback window), the release started last, the one
/// that served everyone, stays live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_state_keeps_the_newer_of_two_running_releases_live() {
    let mut cluster = Cluster::new(Setup {
        rollback_window_ms: 60_000,
        ..Setup::default()
    });
    cluster.v2_promoted_with_v1_warm().await;
    let before = cluster.instance_pids();
    cluster.kill9();
    let state_dir = cluster.dir.path().join(".cutover");
    for entry in std::fs::read_dir(&state_dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("state.db") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    cluster.start();
    assert_eq!(
        versions_seen(&cluster.public, 5).await,
        vec!["200 v2".to_string(); 5]
    );
    let mut after = cluster.instance_pids();
    after.sort();
    let mut before = before;
    before.sort();
    assert_eq!(after, before, "both kept");
}

/// While cutover runs, a live slot whose every instance died is started again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_slot_whose_instances_all_die_is_started_again() {
    let cluster = Cluster::new(Setup::default());
    assert_eq!(cluster.deploy("v1", "").0, 0);
    cluster.wait_phase("succeeded").await;
    let before = cluster.instance_pids();
    for pid in &before {
        Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
    }
    wait_until(
        "v1 serves again from a new instance",
        Duration::from_secs(30),
        || async {
            let pids = cluster.instance_pids();
            !pids.is_empty()
                && pids.iter().all(|p| !before.contains(p))
                && versions_seen(&cluster.public, 3)
                    .await
                    .iter()
                    .all(|s| s == "200 v1")
        },
    )
    .await;
    assert!(event_kinds(&cluster).await.contains(&"restarted".to_string()));
}

/// A release that prints its secrets as it fails: the log tail in the decision is masked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_release_that_prints_its_secrets_does_not_leak_them() {
    let cluster = Cluster::new(Setup::default());
    let (code, out) = cluster.cli(&[
        "deploy",
        "web",
        "v1",
        "--env",
        "DB_PASSWORD=hunter2-secret",
        "--cmd",
        "echo \"cannot connect with password $DB_PASSWORD\"; exit 1",
    ]);
    assert_eq!(code, 12, "{out}");
    assert!(!out.contains("hunter2-secret"), "{out}");
    assert!(
        out.contains("cannot connect with password"),
        "the log tail is still there: {out}"
    );
    for path in [
        "/v1/apps/web/status",
        "/v1/apps/web/history",
        "/v1/apps/web/events?limit=1000",
    ] {
        let body = cluster.get_json(path).await.to_string();
        assert!(!body.contains("hunter2-secret"), "{path}: {body}");
    }
}
