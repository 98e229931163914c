#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `cutover logs` against `cutover serve` with the local platform: the tail, JSON lines, the
//! exit codes of a wrong token and an unknown app, and `--follow` picking up a canary's lines
//! until Ctrl-C, which ends it with 0.

use std::process::Command;
use std::time::Duration;

use cutover_test_support::ChildProcess;
use serde_json::Value;

// Only some of the shared helpers are used here.
#[allow(dead_code)]
mod common;

use common::CUTOVER;

const TOKEN: &str = "logs-cli-test-admin-token";

struct Cluster {
    dir: tempfile::TempDir,
    // Dropped (killed) with the cluster.
    serve: Option<ChildProcess>,
    admin: String,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("cutover-logs-test-")
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
command = '''echo $$ > '{dir}/pid-{{version}}-{{port}}'; echo "hello from {{version}}"; exec '{CUTOVER}' example-app --port {{port}} --version-label {{version}}'''

[app.readiness]
interval_ms = 50
"#,
                dir = dir.path().display(),
            ),
        )
        .unwrap();
        let (serve, ready) = common::serve(&config, TOKEN);
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
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The server first: alive, it would start the live slot again once its instances die,
        // and that instance would outlive the test.
        if let Some(mut serve) = self.serve.take() {
            serve.kill();
        }
        // Instances outlive the server by design; the test stops what it started.
        let pids: Vec<u32> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("pid-"))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
            .collect();
        for pid in pids {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

#[test]
fn logs_tail_print_json_lines_follow_a_canary_and_exit_as_documented() {
    let cluster = Cluster::start();
    let (code, out) = cluster.cli(&["deploy", "web", "v1"]);
    assert_eq!(code, 0, "{out}");

    // One instance: its lines as they are, no prefix. The deploy waited for readiness, so the
    // app has said where it listens.
    let (code, out) = cluster.cli(&["logs", "web"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.lines().any(|l| l == "hello from v1"), "{out}");
    assert!(out.contains("listening on"), "{out}");
    assert!(!out.contains(" | "), "{out}");

    let (code, out) = cluster.cli(&["logs", "web", "-n", "2", "--output", "json"]);
    assert_eq!(code, 0, "{out}");
    let objects: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(objects.len(), 2, "{out}");
    for o in &objects {
        assert_eq!(o["version"], "v1", "{o}");
        assert_eq!(o["instance"], 0, "{o}");
        assert!(o["slot"] == "blue" || o["slot"] == "green", "{o}");
        assert!(o["text"].is_string(), "{o}");
    }

    // Exit codes: 4 for the token, 3 for what the server refused, 2 for a bad argument.
    let (code, out) = common::cli(&cluster.admin, "not-the-admin-token", &["logs", "web"]);
    assert_eq!(code, 4, "{out}");
    let (code, out) = cluster.cli(&["logs", "shop"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("cutover apps"), "{out}");
    let (code, out) = cluster.cli(&["logs", "web", "-n", "20000"]);
    assert_eq!(code, 2, "{out}");

    // Following from now: a canary starts in the other slot, its lines show with their slot,
    // version and instance, and Ctrl-C ends the command with 0.
    let mut cmd = Command::new(CUTOVER);
    cmd.args(["--admin", &cluster.admin, "logs", "web", "--follow", "-n", "0"])
        .env("CUTOVER_ADMIN_TOKEN", TOKEN);
    let mut follower = ChildProcess::spawn("cutover-logs-follow", cmd);
    let (code, out) = cluster.cli(&["deploy", "web", "v2", "--no-follow"]);
    assert_eq!(code, 0, "{out}");
    let line = follower.wait_for_stdout_line(Duration::from_secs(30), |line| {
        line.ends_with("hello from v2").then(|| line.to_string())
    });
    assert!(
        line == "blue/v2#0 | hello from v2" || line == "green/v2#0 | hello from v2",
        "{line}"
    );
    follower.send_signal("INT");
    let status = follower.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(
        !follower.stdout().contains("hello from v1"),
        "only lines written since"
    );
}
