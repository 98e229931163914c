#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `GET /v1/apps/{app}/logs`: the real server in process, the local process platform, the
//! example app as the instance. The logs are read with the admin token only, errors name what was
//! wrong, and a client follows new lines with the cursor.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cutover_server::{Config, Running, StartOptions};
use cutover_test_support::{http_client, workspace_bin};
use serde_json::{json, Value};

const TOKEN: &str = "logs-test-admin-token";
const DEADLINE: Duration = Duration::from_secs(30);
/// How often a condition is polled until its deadline.
const POLL: Duration = Duration::from_millis(20);

struct Rig {
    running: Option<Running>,
    admin: String,
    public: SocketAddr,
    dir: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let bin = workspace_bin("cutover-example-app");
        // Each instance leaves its pid (the shell execs the app, so the pid is the app's) where
        // the test finds it to stop it, and greets first. The session store lets it log logins.
        let text = format!(
            r#"
[server]
state_dir = "{state}"
tick_ms = 50

[admin]
listen = "127.0.0.1:0"

[[app]]
name = "web"
listen = "127.0.0.1:0"
platform = "local"
stop_grace_ms = 1000

[app.release]
command = '''echo $$ > '{dir}/pid-{{version}}-{{port}}'; echo "hello from {{version}}"; exec '{bin}' --port {{port}} --session-store '{dir}/sessions.db''''

[app.readiness]
interval_ms = 50

[app.rollout]
readiness_deadline_ms = 20000
steps = [{{ weight_bp = 1000, duration_ms = 600000 }}, {{ weight_bp = 10000 }}]
"#,
            state = dir.path().join("state").display(),
            dir = dir.path().display(),
            bin = bin.display(),
        );
        let config = Config::parse(&text, "cutover.toml").unwrap();
        let running = cutover_server::start(config, TOKEN.into(), StartOptions::new(dir.path()))
            .await
            .unwrap();
        let admin = format!("http://{}", running.bound.admin);
        let public = running.bound.apps["web"].listen;
        Rig {
            running: Some(running),
            admin,
            public,
            dir,
        }
    }

    /// GET `path` with `token`; the status and the JSON body.
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = http_client().get(format!("{}{path}", self.admin));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// The logs answer of `query` (with the token), which must be a 200.
    async fn logs(&self, query: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/apps/web/logs{query}"), Some(TOKEN)).await;
        assert_eq!(status, 200, "{query}: {body}");
        body
    }

    async fn phase(&self) -> String {
        let (_, status) = self.get("/v1/apps/web/status", None).await;
        status["rollout"]["phase"]["phase"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    }

    /// Makes the instance write a line to its log: the example app logs each login.
    async fn login(&self, user: &str) {
        let r = http_client()
            .post(format!("http://{}/login", self.public))
            .json(&json!({ "user": user }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "login of {user}");
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            tokio::spawn(running.shutdown());
        }
        // Instances outlive the server by design; the test stops what it started.
        for pid in pids(self.dir.path()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn pids(dir: &Path) -> Vec<u32> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pid-"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
        .collect()
}

/// The texts of every line of an answer, slot by slot.
fn texts(answer: &Value) -> Vec<String> {
    answer["slots"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["lines"].as_array().unwrap().iter())
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_read_with_the_token_and_followed_with_the_cursor() {
    let rig = Rig::start().await;
    let (code, body) = {
        let r = http_client()
            .post(format!("{}/v1/apps/web/deploy", rig.admin))
            .bearer_auth(TOKEN)
            .json(&json!({ "version": "v1" }))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    assert_eq!(code, 202, "{body}");
    let deadline = Instant::now() + DEADLINE;
    while rig.phase().await != "promoted" {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for v1 to be promoted"
        );
        tokio::time::sleep(POLL).await;
    }

    // Logs may hold what a program printed of its secrets: no token, no logs.
    let (code, body) = rig.get("/v1/apps/web/logs", None).await;
    assert_eq!(code, 401, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("Authorization: Bearer"),
        "{body}"
    );
    let (code, body) = rig.get("/v1/apps/web/logs", Some("not-the-token")).await;
    assert_eq!(code, 401, "{body}");

    // The tail: the instance's greeting and the app's own start-up line.
    let deadline = Instant::now() + DEADLINE;
    let first = loop {
        let answer = rig.logs("").await;
        let texts = texts(&answer);
        if texts.iter().any(|t| t == "hello from v1") && texts.iter().any(|t| t.contains("listening on")) {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the start-up lines: {answer}"
        );
        tokio::time::sleep(POLL).await;
    };
    assert_eq!(first["app"], "web");
    let slots = first["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 1, "only the live slot runs: {first}");
    let live = &slots[0];
    assert_eq!(live["live"], true, "{first}");
    assert_eq!(live["version"], "v1", "{first}");
    assert_eq!(live["instances"], 1, "{first}");
    assert_eq!(live["lines"][0]["instance"], 0, "{first}");
    assert!(
        live["lines"][0]["text"]
            .as_str()
            .unwrap()
            .starts_with("=== cutover: app web"),
        "the banner cutover writes comes first: {first}"
    );
    assert_eq!(live["truncated"], false);
    assert_eq!(live["restarted"], false);
    let live_slot = live["slot"].as_str().unwrap().to_string();

    // A tail of one line, and of none.
    let one = rig.logs("?lines=1").await;
    assert_eq!(texts(&one).len(), 1, "{one}");
    let none = rig.logs(&format!("?lines=0&slot={live_slot}")).await;
    assert!(texts(&none).is_empty(), "{none}");

    // Following: each answer's cursor gives exactly the lines written since, once each.
    let mut cursor = first["cursor"].as_str().unwrap().to_string();
    let mut seen: Vec<String> = Vec::new();
    for user in ["follower-1", "follower-2"] {
        rig.login(user).await;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let answer = rig.logs(&format!("?after={cursor}")).await;
            assert_eq!(answer["slots"][0]["restarted"], false, "{answer}");
            cursor = answer["cursor"].as_str().unwrap().to_string();
            seen.extend(texts(&answer));
            if seen.iter().any(|t| t.contains(&format!("user={user}"))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the login of {user}: {seen:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
    let logins: Vec<&String> = seen.iter().filter(|t| t.contains("logged in")).collect();
    assert_eq!(logins.len(), 2, "each new line once: {seen:?}");
    assert!(
        logins[0].contains("follower-1") && logins[1].contains("follower-2"),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|t| t == "hello from v1"),
        "nothing before the cursor: {seen:?}"
    );

    // The other slot never ran: an empty answer that says so, not an error.
    let other = if live_slot == "blue" { "green" } else { "blue" };
    let idle = rig.logs(&format!("?slot={other}")).await;
    assert_eq!(idle["slots"][0]["slot"], other);
    assert_eq!(idle["slots"][0]["version"], Value::Null, "{idle}");
    assert!(texts(&idle).is_empty(), "{idle}");
    assert!(
        idle["slots"][0]["notes"][0].as_str().unwrap().contains("no logs"),
        "{idle}"
    );

    // A canary starts: a follower without `slot` gets its lines too, from their start (its
    // slot is not in the cursor), after the live slot's.
    let r = http_client()
        .post(format!("{}/v1/apps/web/deploy", rig.admin))
        .bearer_auth(TOKEN)
        .json(&json!({ "version": "v2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let deadline = Instant::now() + DEADLINE;
    let with_canary = loop {
        let answer = rig.logs(&format!("?after={cursor}")).await;
        let slots = answer["slots"].as_array().unwrap();
        if slots.len() == 2 && texts(&answer).iter().any(|t| t == "hello from v2") {
            break answer;
        }
        // Nothing of the canary yet: go on from this answer.
        cursor = answer["cursor"].as_str().unwrap().to_string();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the canary's lines: {answer}"
        );
        tokio::time::sleep(POLL).await;
    };
    let slots = with_canary["slots"].as_array().unwrap();
    assert_eq!(
        slots[0]["slot"],
        live_slot.as_str(),
        "the live slot first: {with_canary}"
    );
    assert_eq!(slots[1]["slot"], other, "{with_canary}");
    assert_eq!(slots[1]["version"], "v2", "{with_canary}");
    assert_eq!(slots[1]["live"], false, "{with_canary}");
    assert_eq!(slots[1]["restarted"], true, "{with_canary}");
    assert!(
        with_canary["cursor"]
            .as_str()
            .unwrap()
            .contains(&format!("{other}~")),
        "{with_canary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_for_logs_say_what_was_wrong() {
    let rig = Rig::start().await;

    let (code, body) = rig.get("/v1/apps/shop/logs", Some(TOKEN)).await;
    assert_eq!(code, 404, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("\"shop\"") && error.contains("1 app") && error.contains("cutover apps"),
        "{error}"
    );

    for (query, field, hint) in [
        ("slot=purple", "slot", "blue or green"),
        ("lines=10001", "lines", "from 0 to 10000"),
        ("lines=many", "lines", "from 0 to 10000"),
        ("after=not-a-cursor", "after", "previous answer"),
        ("after=blue~2.0", "after", "previous answer"),
    ] {
        let (code, body) = rig.get(&format!("/v1/apps/web/logs?{query}"), Some(TOKEN)).await;
        assert_eq!(code, 400, "{query}: {body}");
        assert_eq!(body["errors"][0]["field"], field, "{query}: {body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(hint), "{query}: {message}");
    }
    // A misspelt parameter is not ignored.
    let (code, body) = rig.get("/v1/apps/web/logs?line=5", Some(TOKEN)).await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["errors"][0]["message"].as_str().unwrap().contains("line"),
        "{body}"
    );

    // The token is checked first: without it, nothing about the app or the query is told.
    let (code, _) = rig.get("/v1/apps/shop/logs?slot=purple", None).await;
    assert_eq!(code, 401);
}
