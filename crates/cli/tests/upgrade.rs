#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Upgrading and reloading cutover itself with no failed request: `cutover serve --upgrade`
//! takes the running server's listening sockets over a Unix socket, and SIGHUP starts such a
//! successor with the configuration read again (see `crates/server/src/handover.rs`).
//!
//! Behaviour only: how long a hand-over takes is measured by `bench/upgrade.sh`, not here.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{cli, serve, KillInstancesOf, CUTOVER};
use cutover_test_support::{free_port, wait_until, ChildProcess, ExampleApp, Load};
use serde_json::Value;

const TOKEN: &str = "upgrade-test-token-0123456789";

/// Every `cutover serve` of `config` still running (a successor is not the test's child: the
/// server it replaced started it).
fn servers_of(config: &Path) -> Vec<u32> {
    let needle = config.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if !zombie && args.iter().any(|a| a == "serve") && args.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills every server of a configuration when dropped, passed or failed.
struct KillServersOf(PathBuf);

impl Drop for KillServersOf {
    fn drop(&mut self) {
        for pid in servers_of(&self.0) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

fn ready_lines(process: &ChildProcess) -> Vec<Value> {
    process
        .stdout()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|v| v["event"] == "ready")
        .collect()
}

/// The `n`th (from 1) ready line a process and its successors printed on the shared stdout.
async fn nth_ready(process: &ChildProcess, n: usize) -> Value {
    wait_until(&format!("ready line {n}"), Duration::from_secs(30), || {
        std::future::ready(ready_lines(process).len() >= n)
    })
    .await;
    ready_lines(process).swap_remove(n - 1)
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

async fn only_server(config: &Path) -> u32 {
    let mut found = Vec::new();
    wait_until("exactly one server runs", Duration::from_secs(30), || {
        found = servers_of(config);
        std::future::ready(found.len() == 1)
    })
    .await;
    found[0]
}

/// Under steady load, a new `cutover serve --upgrade` takes over from a server in the middle of
/// its life: same addresses, no failed request, the old one drains and exits 0, the instances
/// are adopted (not restarted), and the rollout state carries over, so the next deploy goes
/// through the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_fails_no_request_and_keeps_the_state_and_instances() {
    let dir = tempfile::Builder::new()
        .prefix("cutover-upgrade-")
        .tempdir()
        .unwrap();
    let _instances = KillInstancesOf(dir.path().to_path_buf());
    let config = dir.path().join("cutover.toml");
    let _servers = KillServersOf(config.clone());
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

[app.release]
command = "exec '{CUTOVER}' example-app --port {{port}} --version-label {{version}} --session-store '{sessions}'"

[app.readiness]
interval_ms = 50

[app.proxy.health_check]
interval_ms = 100

[app.rollout]
steps = [{{ weight_bp = 5000, duration_ms = 300 }}, {{ weight_bp = 10000 }}]
analysis_interval_ms = 100
rollback_window_ms = 200
readiness_deadline_ms = 5000

[app.rollout.judge]
min_requests = 1
"#,
            sessions = dir.path().join("sessions.db").display()
        ),
    )
    .unwrap();
    let (mut old, ready) = serve(&config, TOKEN);
    let admin = format!("http://{}", ready["bound"]["admin"].as_str().unwrap());
    let public = format!(
        "http://{}",
        ready["bound"]["apps"]["web"]["listen"].as_str().unwrap()
    );
    let (code, out) = cli(&admin, TOKEN, &["deploy", "web", "v1", "--force"]);
    assert_eq!(code, 0, "{out}");
    let instances = common::instance_pids(dir.path());
    assert!(!instances.is_empty(), "v1 runs");

    let load = Load::start(&public);
    wait_until("the load is served", Duration::from_secs(10), || {
        let public = public.clone();
        async move {
            reqwest::get(format!("{public}/"))
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;

    let mut cmd = Command::new(CUTOVER);
    cmd.args(["serve", "--upgrade", "--config"])
        .arg(&config)
        .env("CUTOVER_ADMIN_TOKEN", TOKEN);
    let mut new = ChildProcess::spawn("cutover-serve-upgrade", cmd);
    let new_ready = nth_ready(&new, 1).await;
    assert_eq!(
        new_ready["bound"], ready["bound"],
        "the same sockets, the same addresses"
    );
    let status = old.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "the old server drains and exits 0: {status}\n{}",
        old.stderr()
    );
    assert!(
        old.stderr().contains("taken over by a new cutover serve"),
        "{}",
        old.stderr()
    );

    // Served by the new process from here on, with the state the old one left.
    let (code, out) = cli(&admin, TOKEN, &["status", "web", "--output", "json"]);
    assert_eq!(code, 0, "{out}");
    let status: Value = serde_json::from_str(&out).unwrap();
    let live_slot = status["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["slot"] == status["live"])
        .unwrap();
    assert_eq!(live_slot["version"], "v1", "{status}");
    assert_eq!(
        common::instance_pids(dir.path()),
        instances,
        "the instances are adopted, not restarted"
    );
    let (code, out) = cli(&admin, TOKEN, &["deploy", "web", "v2"]);
    assert_eq!(code, 0, "the new server carries on with the next rollout: {out}");
    let (sent, failed) = load.finish().await;
    assert!(sent > 100, "the load ran: {sent} requests");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed across the upgrade");
    assert_eq!(servers_of(&config), vec![new.pid()]);
    assert!(new.terminate().success());
}

/// SIGHUP reloads the configuration through a successor: an app added by the file answers on
/// its new listener, a file that does not load changes nothing (the running server goes on and
/// the error is said), and an app removed from the file stops listening; the app that stayed
/// failed no request throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_apps_and_an_invalid_file_changes_nothing() {
    let dir = tempfile::Builder::new()
        .prefix("cutover-reload-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("cutover.toml");
    let _servers = KillServersOf(config.clone());
    let backend = ExampleApp::spawn("v1", &[]);
    let other = ExampleApp::spawn("other", &[]);
    let app = |name: &str, listen: &str, backend: &ExampleApp| {
        format!(
            r#"
[[app]]
name = "{name}"
listen = "{listen}"

[app.routes]
live = "blue"
canary_weight_bp = 0
blue = {{ version = "v1", backends = ["127.0.0.1:{port}"] }}
green = {{ version = "", backends = [] }}
"#,
            port = backend.port()
        )
    };
    let head = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let web = app("web", "127.0.0.1:0", &backend);
    let extra_port = free_port();
    let extra = app("extra", &format!("127.0.0.1:{extra_port}"), &other);
    std::fs::write(&config, format!("{head}{web}")).unwrap();
    let (mut first, ready) = serve(&config, TOKEN);
    let public = format!(
        "http://{}",
        ready["bound"]["apps"]["web"]["listen"].as_str().unwrap()
    );
    let load = Load::start(&public);

    // Added.
    std::fs::write(&config, format!("{head}{web}{extra}")).unwrap();
    signal(first.pid(), "HUP");
    let second = nth_ready(&first, 2).await;
    assert_eq!(second["bound"]["apps"]["web"], ready["bound"]["apps"]["web"]);
    assert_eq!(
        second["bound"]["apps"]["extra"]["listen"],
        format!("127.0.0.1:{extra_port}")
    );
    let answer = reqwest::get(format!("http://127.0.0.1:{extra_port}/"))
        .await
        .unwrap();
    assert!(answer.status().is_success());
    assert!(first.wait_exit(Duration::from_secs(30)).success());
    let server = only_server(&config).await;

    // Invalid: refused by the successor, nothing changes.
    std::fs::write(
        &config,
        format!("{head}{web}{extra}\n[app.proxy]\nclient_idle_timeout_ms = \"soon\"\n"),
    )
    .unwrap();
    signal(server, "HUP");
    wait_until("the failed reload is reported", Duration::from_secs(30), || {
        std::future::ready(first.stderr().contains("the reload failed"))
    })
    .await;
    let log = first.stderr();
    assert!(
        log.contains("client_idle_timeout_ms"),
        "the error says where: {log}"
    );
    assert_eq!(servers_of(&config), vec![server], "the running server goes on");
    let answer = reqwest::get(format!("http://127.0.0.1:{extra_port}/"))
        .await
        .unwrap();
    assert!(answer.status().is_success(), "the apps it serves are unchanged");

    // Removed.
    std::fs::write(&config, format!("{head}{web}")).unwrap();
    signal(server, "HUP");
    let third = nth_ready(&first, 3).await;
    assert!(third["bound"]["apps"].get("extra").is_none(), "{third}");
    wait_until(
        "the removed app's listener is closed",
        Duration::from_secs(30),
        || std::future::ready(std::net::TcpStream::connect(("127.0.0.1", extra_port)).is_err()),
    )
    .await;
    let server = only_server(&config).await;

    let (sent, failed) = load.finish().await;
    assert!(sent > 10, "the load ran: {sent} requests");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests to the app that stayed failed"
    );
    signal(server, "TERM");
    wait_until("the server exits", Duration::from_secs(30), || {
        std::future::ready(servers_of(&config).is_empty())
    })
    .await;
}

/// `--upgrade` with no server to take over from says so and what to do, and serves nothing.
#[test]
fn an_upgrade_with_no_running_server_says_what_to_do() {
    let dir = tempfile::Builder::new()
        .prefix("cutover-upgrade-none-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("cutover.toml");
    std::fs::write(
        &config,
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[app]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let out = Command::new(CUTOVER)
        .args(["serve", "--upgrade", "--config"])
        .arg(&config)
        .env("CUTOVER_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no running cutover serve"), "{stderr}");
    assert!(stderr.contains("start without --upgrade"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no ready line: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Under systemd (`Type=notify`, `NotifyAccess=all`) the server says when it serves, and a
/// successor started by SIGHUP says that it is now the main process, so that systemd follows the
/// hand-over instead of taking the old server's exit for the service's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_and_the_new_main_process() {
    let dir = tempfile::Builder::new()
        .prefix("cutover-notify-")
        .tempdir()
        .unwrap();
    let config = dir.path().join("cutover.toml");
    let _servers = KillServersOf(config.clone());
    std::fs::write(
        &config,
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[app]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let receive = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let (first, _) = common::serve_with_env(
        &config,
        TOKEN,
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let message = receive();
    assert!(message.contains("READY=1"), "{message}");
    assert!(message.contains(&format!("MAINPID={}", first.pid())), "{message}");

    signal(first.pid(), "HUP");
    let message = receive();
    assert!(message.contains("READY=1"), "{message}");
    let successor = only_server(&config).await;
    assert_ne!(successor, first.pid());
    assert!(message.contains(&format!("MAINPID={successor}")), "{message}");
    signal(successor, "TERM");
    wait_until("the server exits", Duration::from_secs(30), || {
        std::future::ready(servers_of(&config).is_empty())
    })
    .await;
}
