#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Issue #11 end to end: `cutover deploy --env` and `--secret` against `cutover serve` with the
//! local platform. The instances get the values; `status`, `history` (text and JSON) and the
//! server's log never show them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cutover_test_support::ChildProcess;
use serde_json::Value;

// `serve` of the shared module cannot give the server an extra variable; this file starts its own.
#[allow(dead_code)]
mod common;

use common::CUTOVER;

const TOKEN: &str = "secrets-cli-test-admin-token";
const PASSWORD: &str = "hunter2";
/// A variable of the server's environment that a release references with `env:`.
const SERVER_VAR: (&str, &str) = ("WEB_API_KEY", "env-secret-value-9d1e");
const FILE_SECRET: &str = "file-secret-value-4b7a";

struct Cluster {
    dir: tempfile::TempDir,
    serve: Option<ChildProcess>,
    admin: String,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("cutover-secrets-test-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("cutover.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[server]
tick_ms = 50

[admin]
listen = "127.0.0.1:0"

[[app]]
name = "web"
listen = "127.0.0.1:0"
platform = "local"
stop_grace_ms = 1000

[app.release]
command = '''echo $$ > '{dir}/pid-{{version}}-{{port}}'; exec '{CUTOVER}' example-app --port {{port}} --version-label {{version}}'''

[app.readiness]
interval_ms = 50
"#,
                dir = dir.path().display(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(CUTOVER);
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env("CUTOVER_ADMIN_TOKEN", TOKEN)
            .env("CUTOVER_LOG", "debug")
            .env(SERVER_VAR.0, SERVER_VAR.1);
        let mut serve = ChildProcess::spawn("cutover-serve-secrets", cmd);
        let ready = serve.wait_for_stdout_line(Duration::from_secs(30), |line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(|v| v["event"] == "ready")
        });
        let admin = format!("http://{}", ready["bound"]["admin"].as_str().unwrap());
        Cluster {
            dir,
            serve: Some(serve),
            admin,
        }
    }

    fn cli(&self, args: &[&str]) -> (i32, String) {
        common::cli(&self.admin, TOKEN, args)
    }

    fn pids(&self) -> Vec<u32> {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("pid-"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut serve) = self.serve.take() {
            serve.kill();
        }
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

fn environ(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).to_string())
        .collect()
}

fn secret_file(dir: &Path) -> String {
    let path = dir.join("db-file-secret");
    std::fs::write(&path, format!("{FILE_SECRET}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

#[test]
fn values_reach_the_instances_and_no_output_of_the_cli_or_log_of_the_server() {
    let cluster = Cluster::start();
    let file = secret_file(cluster.dir.path());
    let (code, out) = cluster.cli(&[
        "deploy",
        "web",
        "v1",
        "--env",
        &format!("DB_PASSWORD={PASSWORD}"),
        "--secret",
        &format!("DB_FILE_SECRET=file:{file}"),
        "--secret",
        &format!("API_KEY=env:{}", SERVER_VAR.0),
    ]);
    assert_eq!(code, 0, "{out}");

    // The instance has every value.
    let pids = cluster.pids();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let env = environ(pids[0]);
    for wanted in [
        format!("DB_PASSWORD={PASSWORD}"),
        format!("DB_FILE_SECRET={FILE_SECRET}"),
        format!("API_KEY={}", SERVER_VAR.1),
    ] {
        assert!(env.contains(&wanted), "{wanted} missing: {env:?}");
    }
    // The server's variable reached the app only through the reference.
    assert!(!env.iter().any(|v| v.starts_with(&format!("{}=", SERVER_VAR.0))));

    let mut shown = out;
    for args in [
        &["status", "web"][..],
        &["status", "web", "--output", "json"],
        &["history", "web"],
        &["history", "web", "--output", "json"],
    ] {
        let (code, out) = cluster.cli(args);
        assert_eq!(code, 0, "{args:?}: {out}");
        shown.push_str(&out);
    }
    for value in [PASSWORD, FILE_SECRET, SERVER_VAR.1] {
        assert!(!shown.contains(value), "{value} shown by the CLI: {shown}");
    }
    assert!(
        shown.contains(&format!(
            "environment: DB_PASSWORD (values <redacted>); API_KEY from env:{}, DB_FILE_SECRET from file:{file}",
            SERVER_VAR.0
        )),
        "{shown}"
    );
    assert!(shown.contains(r#""DB_PASSWORD": "<redacted>""#), "{shown}");

    let log = cluster.serve.as_ref().unwrap().stderr();
    assert!(log.contains("rollout #1"), "the log is the server's: {log}");
    for value in [PASSWORD, FILE_SECRET, SERVER_VAR.1] {
        assert!(!log.contains(value), "{value} in the server's log: {log}");
    }
}

#[test]
fn references_are_checked_by_the_cli_and_the_server_before_anything_starts() {
    let cluster = Cluster::start();
    // Refused by the CLI: cutover's own variables, a value in place of a reference or without
    // its name (neither echoed).
    for (flag, arg, message) in [
        (
            "--secret",
            "TOKEN=env:CUTOVER_ADMIN_TOKEN",
            "cutover's own variable",
        ),
        ("--secret", "DB_PASSWORD=hunter2", "is not a secret reference"),
        ("--secret", "hunter2", "--secret: an argument has no '='"),
        ("--env", "hunter2", "--env: an argument has no '='"),
    ] {
        let (code, out) = cluster.cli(&["deploy", "web", "v1", flag, arg]);
        assert_eq!(code, 2, "{arg}: {out}");
        assert!(out.contains(message), "{arg}: {out}");
        assert!(!out.contains(PASSWORD), "{out}");
    }
    // Refused by the server (exit 3), naming the variable and the reference.
    let missing = cluster.dir.path().join("missing-secret").display().to_string();
    for (arg, message) in [
        (
            format!("DB=file:{missing}"),
            format!("secrets.DB: file:{missing}: cannot read the file"),
        ),
        (
            "DB=env:SECRETS_CLI_TEST_UNSET_VARIABLE".to_string(),
            "secrets.DB: env:SECRETS_CLI_TEST_UNSET_VARIABLE: the variable is not set".to_string(),
        ),
    ] {
        let (code, out) = cluster.cli(&["deploy", "web", "v1", "--secret", &arg]);
        assert_eq!(code, 3, "{arg}: {out}");
        assert!(out.contains(&message), "{arg}: {out}");
    }
    assert!(cluster.pids().is_empty(), "nothing was started");
}
