#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The `cutover` binary as a user runs it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cutover_test_support::{get_json, http_client, ChildProcess, ExampleApp};
use serde_json::Value;

mod common;

use common::CUTOVER;

fn write_config(dir: &Path, v1: &ExampleApp, v2: &ExampleApp) -> std::path::PathBuf {
    let path = dir.join("cutover.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[admin]
listen = "127.0.0.1:0"

[[app]]
name = "web"
listen = "127.0.0.1:0"
preview_listen = "127.0.0.1:0"

[app.proxy]
drain_timeout_ms = 10000

[app.proxy.sticky]
user_key_header = "X-User-ID"

[app.routes]
live = "blue"
blue = {{ version = "v1", backends = ["{}"] }}
green = {{ version = "v2", backends = ["{}"] }}
"#,
            v1.addr, v2.addr
        ),
    )
    .unwrap();
    path
}

fn serve(config: &Path) -> (ChildProcess, Value) {
    let mut cmd = Command::new(CUTOVER);
    cmd.args(["serve", "--config"])
        .arg(config)
        .env_remove("CUTOVER_ADMIN_TOKEN");
    let mut process = ChildProcess::spawn("cutover-serve", cmd);
    let ready = process.wait_for_stdout_line(Duration::from_secs(20), |line| {
        serde_json::from_str::<Value>(line)
            .ok()
            .filter(|v| v["event"] == "ready")
    });
    (process, ready)
}

#[tokio::test]
async fn serve_generates_a_private_token_and_drains_on_sigterm() {
    let (v1, v2) = (ExampleApp::spawn("v1", &[]), ExampleApp::spawn("v2", &[]));
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &v1, &v2);
    let (mut process, ready) = serve(&config);
    let admin = format!("http://{}", ready["bound"]["admin"].as_str().unwrap());
    let public = format!(
        "http://{}",
        ready["bound"]["apps"]["web"]["listen"].as_str().unwrap()
    );

    let token_file = dir.path().join(".cutover/admin.token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the generated token is readable by its owner only"
    );
    let dir_mode = std::fs::metadata(token_file.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        dir_mode & 0o777,
        0o700,
        "the directory cutover made for it is private"
    );
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();
    assert!(
        !process.stderr().contains(&token),
        "the token must never be logged"
    );

    let client = http_client();
    let mut route = get_json(&format!("{admin}/v1/apps/web/routes")).await;
    route["route"]["canary_weight_bp"] = 10_000.into();
    let r = client
        .put(format!("{admin}/v1/apps/web/routes"))
        .bearer_auth(&token)
        .json(&route["route"])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        client.get(format!("{public}/")).send().await.unwrap().headers()["x-app-version"],
        "v2"
    );

    let slow = tokio::spawn({
        let (client, url) = (client.clone(), format!("{public}/slow?ms=1500"));
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    });
    cutover_test_support::wait_until(
        "the slow request reaches the backend",
        Duration::from_secs(10),
        || async {
            let m = get_json(&format!("{admin}/v1/apps/web/metrics")).await;
            m[1]["metrics"]["in_flight"] == 1
        },
    )
    .await;
    process.send_signal("TERM");
    assert_eq!(
        slow.await.unwrap(),
        (200, "slow done".to_string()),
        "in-flight requests finish"
    );
    let status = process.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "cutover serve exits 0 after SIGTERM: {status:?}\n{}",
        process.stderr()
    );
    assert!(
        client.get(format!("{public}/")).send().await.is_err(),
        "nothing listens after exit"
    );
}

#[test]
fn config_check_reports_every_problem_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[app]]\nname = \"web app\"\nlisten = \"127.0.0.1:8080\"\n\n[app.proxy]\nconnect_timeout_ms = 0\n",
    )
    .unwrap();
    let out = Command::new(CUTOVER)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = path.display().to_string();
    assert!(
        stderr.contains(&format!("{shown}:2: app[0].name: \"web app\" must be")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{shown}:6: app[0].proxy.connect_timeout_ms: must be greater than 0"
        )),
        "{stderr}"
    );

    std::fs::write(&path, "[[app]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n").unwrap();
    let out = Command::new(CUTOVER)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The README's main command, with `--keep-running`: the whole story, then the server stays up for
/// a person to look at the dashboard and use the CLI, until SIGTERM.
#[test]
fn demo_promotes_v2_rolls_back_v3_and_fails_v4_then_keeps_its_dashboard_up() {
    let mut cmd = Command::new(CUTOVER);
    cmd.args(["demo", "--keep-running"]);
    let mut demo = cutover_test_support::ChildProcess::spawn("cutover-demo", cmd);
    let state_dir: String = demo.wait_for_stdout_line(Duration::from_secs(60), |line| {
        line.strip_prefix("state and instance logs in ")
            .map(|d| d.trim().to_string())
    });
    // Should the test fail, the demo is killed and cannot stop its instances: this does.
    let _instances = common::KillInstancesOf(state_dir.clone().into());
    demo.wait_for_stdout_line(Duration::from_secs(240), |line| {
        // The last line it prints before it waits.
        line.trim_start().starts_with("CLI:").then_some(())
    });
    let stdout = demo.stdout();
    let row = |version: &str| {
        stdout
            .lines()
            .find(|l| {
                let mut words = l.split_whitespace();
                words.next().is_some_and(|w| w.parse::<u32>().is_ok()) && words.next() == Some(version)
            })
            .unwrap_or_else(|| panic!("no row for {version} in:\n{stdout}"))
            .split_whitespace()
            .take(4)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row("v2"), "2 v2 succeeded succeeded");
    assert_eq!(row("v3"), "3 v3 rolled_back rolled_back");
    // The judge's failed window that rolled v3 back is counted (read back typed from the log).
    let v3_failed_windows: u32 = stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("v3") && l.contains("rolled_back"))
        .and_then(|l| l.split_whitespace().nth(5))
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no fail column for v3 in:\n{stdout}"));
    assert!(v3_failed_windows >= 1, "{stdout}");
    assert_eq!(row("v4"), "4 v4 failed failed");
    assert!(stdout.contains("% of user requests failed"), "{stdout}");

    // The dashboard's address, printed at the start and again at the end, answers.
    let dashboard = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("dashboard:"))
        .and_then(|rest| rest.split_whitespace().find(|w| w.starts_with("http://")))
        .unwrap_or_else(|| panic!("no dashboard address in:\n{stdout}"))
        .trim_end_matches('/')
        .to_string();
    let token_file = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("admin token: in "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no token file in:\n{stdout}"))
        .to_string();
    assert!(
        !stdout.contains(std::fs::read_to_string(&token_file).unwrap().trim()),
        "the token is never printed"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let page = cutover_test_support::http_client()
            .get(format!("{dashboard}/"))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), 200);
        let overview: cutover_server::api::Overview =
            serde_json::from_value(cutover_test_support::get_json(&format!("{dashboard}/v1/status")).await)
                .unwrap();
        assert_eq!(overview.apps[0].app, "demo");
        assert!(overview.apps[0].live_version.is_some());
    });
    let out = Command::new(CUTOVER)
        .args([
            "--admin",
            &dashboard,
            "--token-file",
            &token_file,
            "status",
            "demo",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    demo.send_signal("TERM");
    let status = demo.wait_exit(Duration::from_secs(60));
    assert!(status.success(), "{status}\n{}", demo.stdout());
    assert!(
        !std::path::Path::new(&token_file).exists(),
        "the state directory (and the token in it) is removed at the end"
    );
    let left = common::instance_pids(Path::new(&state_dir));
    assert!(left.is_empty(), "instances left running: {left:?}");
}

/// `cutover ... | head -1`: a reader that goes away ends the command quietly, not with a panic.
#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(CUTOVER)
        .args(["simulate", "--list"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// Output that cannot be written for another reason (a full disk) is an error, not a success.
#[test]
fn output_that_cannot_be_written_is_an_error() {
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let out = Command::new(CUTOVER)
        .args(["simulate", "--list"])
        .stdout(full)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot write the output"), "{stderr}");
}
