#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A new user's first hour: the README's section "From `git pull && systemctl restart` to
//! cutover" followed literally, and the systemd unit `cutover init` writes.

mod common;

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::CUTOVER;
const SECTION: &str = "## From `git pull && systemctl restart` to cutover";

fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    std::fs::read_to_string(path).unwrap()
}

/// The section's ```sh blocks, in order; the ones that need root (`sudo`) are the host's, not
/// the test's.
fn walkthrough_blocks(readme: &str) -> Vec<String> {
    let start = readme
        .find(SECTION)
        .expect("the README has the walk-through section");
    let rest = &readme[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), line) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks.retain(|b| !b.contains("sudo "));
    blocks
}

/// A directory on PATH in which `cutover` is the binary under test.
fn bin_dir(root: &Path) -> PathBuf {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::os::unix::fs::symlink(CUTOVER, bin.join("cutover")).unwrap();
    bin
}

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

#[test]
fn the_readme_walkthrough_goes_from_nothing_to_a_promoted_canary() {
    // The section uses the ports `cutover init` writes by default, as a new user would.
    for port in [8080, 9180] {
        assert!(
            port_is_free(port),
            "port {port} is taken on this machine; the README walk-through uses it as `cutover init` does by default: free it to run this test"
        );
    }
    let blocks = walkthrough_blocks(&readme());
    assert!(blocks.len() >= 4, "the walk-through has its steps: {blocks:?}");
    assert!(
        blocks[0].contains("cutover init"),
        "it starts with init: {}",
        blocks[0]
    );
    let root = tempfile::tempdir().unwrap();
    let bin = bin_dir(root.path());
    let work = root.path().join("srv-web");
    std::fs::create_dir(&work).unwrap();
    let _cleanup = common::KillProcessesIn(work.clone());
    // Stop what the walk-through started in the background (the server, the load) however the
    // script ends; the instances are killed by `_cleanup`.
    let script = format!(
        "set -euo pipefail\ntrap 'kill $(jobs -p) 2> /dev/null || true' EXIT\n{}",
        blocks.join("\n")
    );
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut child = common::unpointed("bash", &work)
        .arg("-c")
        .arg(&script)
        .env("PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    // A rollout of one 20 s step and its windows: bounded, with room for a slow machine.
    let deadline = Instant::now() + Duration::from_secs(240);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the walk-through did not finish within 240 s\nstdout:\n{}\nstderr:\n{}",
                out.join().unwrap(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let serve_log = std::fs::read_to_string(work.join("serve.log")).unwrap_or_default();
    assert!(
        status.success(),
        "the walk-through failed ({status})\nscript:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}\nserve.log:\n{serve_log}"
    );
    for wanted in [
        "wrote",                    // init
        "cutover.toml: ok (1 app)", // config check
        "rollout #1: promoted",     // v1 live at once
        "\"version\":\"v1\"",       // the example app answering as v1
        "step 1 of 2",              // v2's canary step
        "rollout #2: promoted",     // and v2 promoted after it
    ] {
        assert!(
            stdout.contains(wanted),
            "{wanted:?} missing from the walk-through's output\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    // The history and the apps list agree: v2 is live, v1 before it.
    let history_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("2 ") && l.contains(" v1 ") && l.contains(" v2 "))
        .unwrap_or_else(|| panic!("history shows rollout 2 from v1 to v2\n{stdout}"));
    assert!(
        history_line.contains("promoted") || history_line.contains("succeeded"),
        "{history_line}"
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("web") && l.contains("v2 (")),
        "apps shows v2 live\n{stdout}"
    );
    // Colour is for terminals: the server's log, a file, has none.
    assert!(
        !serve_log.contains('\u{1b}'),
        "ANSI escapes in serve.log:\n{serve_log}"
    );
}

#[test]
fn init_writes_a_unit_that_keeps_instances_across_restarts_and_systemd_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(CUTOVER)
        .args([
            "init",
            "--app",
            "shop",
            "--cmd",
            "./bin/shop --port {port}",
            "--user",
            "daemon",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let unit = std::fs::read_to_string(dir.path().join("cutover.service")).unwrap();
    let settings: Vec<(&str, &str)> = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let value = |key: &str| {
        settings
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .collect::<Vec<_>>()
    };
    // Only the server is stopped on a restart: instances keep serving and are adopted.
    assert_eq!(value("KillMode"), ["process"], "{unit}");
    // `systemctl reload` hands over to a new server (SIGHUP), which tells systemd it is now the
    // main process: that needs notify and NotifyAccess=all.
    assert_eq!(value("Type"), ["notify"], "{unit}");
    assert_eq!(value("NotifyAccess"), ["all"], "{unit}");
    assert_eq!(value("ExecReload"), ["/bin/kill -HUP $MAINPID"], "{unit}");
    assert_eq!(value("User"), ["daemon"], "{unit}");
    let workdir = dir.path().canonicalize().unwrap();
    assert_eq!(
        value("WorkingDirectory"),
        [workdir.display().to_string().as_str()]
    );
    let exec = value("ExecStart");
    assert_eq!(exec.len(), 1, "{unit}");
    assert!(
        exec[0].ends_with(&format!("serve --config \"{}/cutover.toml\"", workdir.display())),
        "{unit}"
    );
    assert!(
        Path::new(exec[0].split('"').nth(1).unwrap()).is_absolute(),
        "{unit}"
    );
    assert_eq!(value("Restart"), ["on-failure"]);
    assert_eq!(value("WantedBy"), ["multi-user.target"]);

    // systemd's own check, where systemd is installed.
    let analyze = Path::new("/usr/bin/systemd-analyze");
    if !analyze.exists() {
        eprintln!(
            "systemd-analyze is not installed: the unit's settings were checked, not systemd's verdict"
        );
        return;
    }
    let verify = Command::new(analyze)
        .arg("verify")
        .arg(dir.path().join("cutover.service"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert!(verify.status.success(), "systemd-analyze verify: {said}");
    // Warnings go to stderr with a zero exit: none is expected about the unit itself.
    assert!(
        !said.contains("cutover.service:"),
        "systemd-analyze verify: {said}"
    );

    // The configuration next to it is one the server accepts.
    let check = Command::new(CUTOVER)
        .args(["config", "check"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // Nothing is overwritten without --force.
    let again = Command::new(CUTOVER)
        .arg("init")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    let said = String::from_utf8_lossy(&again.stderr);
    assert!(
        said.contains("already exist") && said.contains("--force"),
        "{said}"
    );
}

#[test]
fn init_refuses_bad_options_at_once_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(CUTOVER)
        .args([
            "init",
            "--app",
            "my app!",
            "--readiness-path",
            "healthz",
            "--user",
            "bad user;x",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let said = String::from_utf8_lossy(&out.stderr);
    for flag in ["--app", "--readiness-path", "--user"] {
        assert!(said.contains(flag), "{flag} is named: {said}");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written: {said}"
    );
    let out = Command::new(CUTOVER)
        .args(["init", "--steps", "0%:10s,100%"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("above 0%"));
}
