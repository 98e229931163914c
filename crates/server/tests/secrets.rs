#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Issue #11: a release's environment reaches its instances and nothing else. The real server in
//! process, the local process platform, the example app as the instances: values are passed to
//! the instances, stored, and never shown by the admin API; references are resolved at each start
//! and checked at deploy time.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cutover_server::{Config, Running, StartOptions};
use cutover_test_support::{http_client, wait_until, workspace_bin};
use serde_json::{json, Value};

const TOKEN: &str = "secrets-test-admin-token";
const PASSWORD: &str = "hunter2";
const DEADLINE: Duration = Duration::from_secs(30);

struct Rig {
    running: Option<Running>,
    admin: String,
    dir: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let bin = workspace_bin("cutover-example-app");
        // Each instance leaves its pid (the shell execs the app, so the pid is the app's) where
        // the test finds it.
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
command = '''echo $$ > '{dir}/pid-{{version}}-{{port}}'; exec '{bin}' --port {{port}} --version-label {{version}}'''
env = {{ GREETING = "hello" }}

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
        Rig {
            running: Some(running),
            admin,
            dir,
        }
    }

    async fn get(&self, path: &str) -> Value {
        let r = http_client()
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    /// The raw text of a GET, to search for a value whatever the shape.
    async fn get_text(&self, path: &str) -> String {
        http_client()
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = http_client()
            .post(format!("{}{path}", self.admin))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn deploy(&self, body: Value) -> (u16, Value) {
        self.post("/v1/apps/web/deploy", body).await
    }

    async fn phase(&self) -> String {
        self.get("/v1/apps/web/status").await["rollout"]["phase"]["phase"]
            .as_str()
            .unwrap_or("none")
            .to_string()
    }

    async fn wait_phase(&self, phase: &str) {
        wait_until(&format!("phase {phase}"), DEADLINE, || async {
            self.phase().await == phase
        })
        .await;
    }

    /// The pid of `version`'s (only) instance, once it runs.
    async fn instance_pid(&self, version: &str) -> u32 {
        let prefix = format!("pid-{version}-");
        let mut pid = None;
        wait_until(&format!("an instance of {version}"), DEADLINE, || {
            let found = pid_files(self.dir.path())
                .into_iter()
                .find(|(name, _)| name.starts_with(&prefix))
                .map(|(_, pid)| pid);
            pid = found;
            async move { found.is_some() }
        })
        .await;
        pid.unwrap()
    }

    /// Every text the admin API shows of the app: status, history, events, the event stream.
    async fn everything_shown(&self) -> String {
        let mut shown = String::new();
        for path in [
            "/v1/apps",
            "/v1/apps/web/status",
            "/v1/apps/web/history",
            "/v1/apps/web/events",
            "/v1/apps/web/routes",
            "/v1/apps/web/metrics",
            "/metrics",
        ] {
            shown.push_str(&self.get_text(path).await);
        }
        shown.push_str(&self.event_stream_text().await);
        shown
    }

    /// What the event stream sends of the past events (read until it goes quiet).
    async fn event_stream_text(&self) -> String {
        use futures_util::StreamExt;
        let response = http_client()
            .get(format!("{}/v1/apps/web/events/stream?after=0", self.admin))
            .send()
            .await
            .unwrap();
        let mut stream = response.bytes_stream();
        let mut text = String::new();
        while let Ok(Some(Ok(chunk))) = tokio::time::timeout(Duration::from_millis(500), stream.next()).await
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        assert!(text.contains("event: deploy"), "{text}");
        text
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            tokio::spawn(running.shutdown());
        }
        // Instances outlive the server by design; the test stops what it started.
        for (_, pid) in pid_files(self.dir.path()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

fn pid_files(dir: &Path) -> Vec<(String, u32)> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let pid = std::fs::read_to_string(e.path()).ok()?.trim().parse().ok()?;
            name.starts_with("pid-").then_some((name, pid))
        })
        .collect()
}

/// The environment of a running process, as the kernel gave it at exec.
fn environ(pid: u32) -> Vec<(String, String)> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .filter_map(|v| {
            let v = String::from_utf8_lossy(v);
            v.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

fn var(environ: &[(String, String)], name: &str) -> Option<String> {
    environ.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// A secret file as an operator would make one: readable by its owner only, a trailing newline.
fn secret_file(dir: &Path, content: &str) -> PathBuf {
    let path = dir.join("db-file-secret");
    std::fs::write(&path, format!("{content}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Every file under `dir` (recursively) whose content contains `needle`.
fn files_containing(dir: &Path, needle: &str, skip: &[&str]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if skip.iter().any(|s| name.starts_with(s)) {
            continue;
        }
        if path.is_dir() {
            found.extend(files_containing(&path, needle, skip));
        } else if std::fs::read(&path)
            .map(|b| String::from_utf8_lossy(&b).contains(needle))
            .unwrap_or(false)
        {
            found.push(path);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_values_reach_the_instances_and_no_output_of_the_admin_api() {
    let rig = Rig::start().await;
    let file = secret_file(rig.dir.path(), "file-secret-v1");
    let (code, body) = rig
        .deploy(json!({
            "version": "v1",
            "env": { "DB_PASSWORD": PASSWORD },
            "secrets": { "DB_FILE_SECRET": format!("file:{}", file.display()) },
        }))
        .await;
    assert_eq!(code, 202, "{body}");
    rig.wait_phase("promoted").await;

    // The instance got every value, the configured one included, and the file's without its
    // newline.
    let env = environ(rig.instance_pid("v1").await);
    assert_eq!(var(&env, "DB_PASSWORD").as_deref(), Some(PASSWORD));
    assert_eq!(var(&env, "DB_FILE_SECRET").as_deref(), Some("file-secret-v1"));
    assert_eq!(var(&env, "GREETING").as_deref(), Some("hello"));

    // No output shows a value, to anyone, token or not; the names and the reference show.
    let shown = rig.everything_shown().await;
    for value in [PASSWORD, "file-secret-v1", "hello"] {
        assert!(!shown.contains(value), "{value} shown by the admin API: {shown}");
    }
    let status = rig.get("/v1/apps/web/status").await;
    let release = &status["rollout"]["release"];
    assert_eq!(
        release["env"],
        json!({ "DB_PASSWORD": "<redacted>", "GREETING": "<redacted>" }),
        "{status}"
    );
    assert_eq!(
        release["secrets"]["DB_FILE_SECRET"],
        format!("file:{}", file.display()),
        "{status}"
    );
    let history = rig.get("/v1/apps/web/history").await;
    assert_eq!(
        history[0]["release"]["env"]["DB_PASSWORD"], "<redacted>",
        "{history}"
    );
    // The answer to a command is a status too.
    let (code, promoted) = rig.post("/v1/apps/web/promote", Value::Null).await;
    assert_eq!(code, 200, "{promoted}");
    assert!(!promoted.to_string().contains(PASSWORD), "{promoted}");
    assert_eq!(promoted["rollout"]["release"]["env"]["DB_PASSWORD"], "<redacted>");
    rig.wait_phase("succeeded").await;

    // Nor do the instance records and logs (only the state file keeps values, to start the
    // release again after a crash).
    let leaked = files_containing(&rig.dir.path().join("state"), PASSWORD, &["state.db"]);
    assert!(leaked.is_empty(), "{leaked:?}");

    // A rotated file takes effect at the next start: references are read when instances start.
    secret_file(rig.dir.path(), "file-secret-v2");
    let (code, body) = rig
        .deploy(json!({
            "version": "v2",
            "secrets": { "DB_FILE_SECRET": format!("file:{}", file.display()) },
        }))
        .await;
    assert_eq!(code, 202, "{body}");
    rig.wait_phase("canary").await;
    let env = environ(rig.instance_pid("v2").await);
    assert_eq!(var(&env, "DB_FILE_SECRET").as_deref(), Some("file-secret-v2"));
    assert_eq!(var(&env, "DB_PASSWORD"), None, "a deploy's values are its own");
    let shown = rig.everything_shown().await;
    assert!(!shown.contains("file-secret-v2"), "{shown}");
    assert!(!shown.contains(PASSWORD), "{shown}");
    let (code, _) = rig.post("/v1/apps/web/abort", Value::Null).await;
    assert_eq!(code, 200);
}

/// References that cannot work are refused before anything starts, naming the variable and the
/// reference; cutover's own variables are never handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_references_are_refused_with_400_naming_the_field() {
    let rig = Rig::start().await;
    let missing = rig.dir.path().join("no-such-secret");
    let cases = [
        (
            json!({ "TOKEN": "env:CUTOVER_ADMIN_TOKEN" }),
            "secrets.TOKEN",
            "cutover's own variables",
        ),
        (
            json!({ "TOKEN": "env:CUTOVER_ANYTHING" }),
            "secrets.TOKEN",
            "CUTOVER_",
        ),
        (
            json!({ "DB": format!("file:{}", missing.display()) }),
            "secrets.DB",
            "cannot read the file",
        ),
        (
            json!({ "DB": "env:SECRETS_TEST_VARIABLE_THAT_IS_NOT_SET_5F2C" }),
            "secrets.DB",
            "not set",
        ),
        (
            json!({ "DB": "file:relative/path" }),
            "secrets.DB",
            "absolute path",
        ),
        // A value where a reference belongs is not echoed back.
        (
            json!({ "DB": PASSWORD }),
            "secrets.DB",
            "is not a secret reference",
        ),
        (
            json!({ "DB_PASSWORD": "env:HOME" }),
            "secrets.DB_PASSWORD",
            "either a value or a reference",
        ),
    ];
    for (secrets, field, message) in cases {
        let (code, body) = rig
            .deploy(json!({
                "version": "v1",
                "env": { "DB_PASSWORD": PASSWORD },
                "secrets": secrets,
            }))
            .await;
        assert_eq!(code, 400, "{secrets}: {body}");
        let error = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["field"] == field)
            .unwrap_or_else(|| panic!("{secrets}: no error of {field}: {body}"));
        assert!(
            error["message"].as_str().unwrap().contains(message),
            "{secrets}: {body}"
        );
        assert!(!body.to_string().contains(PASSWORD), "{body}");
    }
    // Nothing was started.
    assert_eq!(rig.phase().await, "none");
    assert!(pid_files(rig.dir.path()).is_empty());
    let history = rig.get("/v1/apps/web/history").await;
    assert_eq!(history, json!([]));
}

/// The release command runs through `/bin/sh -c` with `{version}` put in as it is, so a version
/// is made of what release names are made of (git SHAs, SemVer with pre-release and build, tags)
/// and of nothing a shell acts on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_a_shell_would_act_on_is_refused_with_400_naming_the_field() {
    let rig = Rig::start().await;
    let too_long = "v".repeat(129);
    let refused = [
        "x$(id -u)",
        "x`id -u`",
        "v1;id",
        "v1&&id",
        "v1|id",
        "v1 id",
        "v1'",
        "v1>out",
        "v1<in",
        "$HOME",
        "${IFS}",
        "v*",
        "v?",
        "v[1]",
        "~root",
        "v1#",
        "v1!",
        "v1&",
        "v1\\",
        "v1=2",
        "v1,v2",
        "v1%",
        "v1\u{e9}",
        "v1\t2",
        "-rf",
        "--help",
        ".hidden",
        ".",
        "..",
        "",
        "   ",
        too_long.as_str(),
    ];
    for version in refused {
        let (code, body) = rig.deploy(json!({ "version": version })).await;
        assert_eq!(code, 400, "{version:?}: {body}");
        let errors = body["errors"].as_array().unwrap();
        let error = errors
            .iter()
            .find(|e| e["field"] == "version")
            .unwrap_or_else(|| panic!("{version:?}: no error of version: {body}"));
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains("letters, digits and . _ - + @ :"),
            "{version:?}: {message}"
        );
    }
    // What release names are made of passes the version check: these requests fail on their
    // instance count alone, so nothing starts.
    let longest = "v".repeat(128);
    for version in [
        "v1",
        "1.4.0-rc.1+build.5",
        "release-2026.12.01",
        "3f9c2a1b0d4e5f60718293a4b5c6d7e8f9012345",
        "web@1.2.3",
        "registry:2026-12-01",
        "V_1",
        " v1 ",
        longest.as_str(),
    ] {
        let (code, body) = rig.deploy(json!({ "version": version, "instances": 0 })).await;
        assert_eq!(code, 400, "{version:?}: {body}");
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["instances"], "{version:?}: {body}");
    }
    // Nothing was started.
    assert_eq!(rig.phase().await, "none");
    assert!(pid_files(rig.dir.path()).is_empty());
}
