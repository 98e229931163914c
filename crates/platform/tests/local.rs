#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The local process platform against real processes: the example app and small shell commands.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cutover_core::{ReleaseSpec, Slot};
use cutover_platform::{InstanceInfo, LocalProcessPlatform, Platform, PlatformError};
use cutover_test_support::{get_json, wait_until, workspace_bin, EXAMPLE_APP_BIN};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

const DEADLINE: Duration = Duration::from_secs(20);
const GRACE: Duration = Duration::from_secs(10);

/// SIGKILLs every process group a test started when the test ends, passed or failed, so a
/// failing assertion never leaks processes. Each instance leads its own group, so its pid is
/// its pgid.
#[derive(Default)]
struct Cleanup {
    pgids: Mutex<Vec<u32>>,
}

impl Cleanup {
    fn track(&self, instances: &[InstanceInfo]) {
        let mut pgids = self.pgids.lock().unwrap();
        pgids.extend(instances.iter().filter_map(|i| i.pid));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let pgids = self
            .pgids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for &pgid in pgids.iter() {
            let _ = killpg(Pid::from_raw(pgid as i32), Signal::SIGKILL);
        }
    }
}

fn platform(dir: &Path) -> LocalProcessPlatform {
    LocalProcessPlatform::new(dir.join("state")).unwrap()
}

fn example_app() -> PathBuf {
    workspace_bin(EXAMPLE_APP_BIN)
}

/// `/proc/<pid>/stat` as (state, pgrp), if the process exists.
fn stat(pid: u32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    Some((fields[0].chars().next()?, fields[2].parse().ok()?))
}

/// Running, as opposed to absent or a zombie waiting to be reaped.
fn running(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _)| state != 'Z' && state != 'X')
}

/// Whether any non-zombie process is in group `pgid`.
fn group_running(pgid: u32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
        e.file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .and_then(stat)
            .is_some_and(|(state, pgrp)| pgrp == pgid as i32 && state != 'Z' && state != 'X')
    })
}

async fn wait_gone(pid: u32) {
    wait_until(
        &format!("process {pid} and its group to be gone"),
        DEADLINE,
        || async move { stat(pid).is_none() && !group_running(pid) },
    )
    .await;
}

async fn wait_listening(addr: SocketAddr) {
    wait_until(
        &format!("{addr} to accept connections"),
        DEADLINE,
        || async move { tokio::net::TcpStream::connect(addr).await.is_ok() },
    )
    .await;
}

async fn wait_log_contains(path: &Path, needle: &str) {
    wait_until(
        &format!("{} to contain {needle:?}", path.display()),
        DEADLINE,
        || async move { std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) },
    )
    .await;
}

async fn get_root(addr: SocketAddr) -> serde_json::Value {
    get_json(&format!("http://{addr}/")).await
}

fn sleeper(version: &str, instances: u32) -> ReleaseSpec {
    let mut release = ReleaseSpec::new(version, "echo started; exec sleep 1000");
    release.instances = instances;
    release
}

#[tokio::test]
async fn starts_instances_with_ports_env_workdir_and_logs_then_stops_them() {
    let dir = tempfile::tempdir().unwrap();
    let workdir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let cleanup = Cleanup::default();

    let mut release = ReleaseSpec::new(
        "v1.0/beta",
        format!(
            "echo \"env: $CUTOVER_APP $CUTOVER_SLOT $CUTOVER_VERSION $PORT $GREETING $(pwd)\"; \
             exec '{}' --port {{port}}",
            example_app().display()
        ),
    );
    release.instances = 2;
    release.env.insert("GREETING".into(), "hello".into());
    release.workdir = Some(workdir.path().display().to_string());

    let started = platform.start("shop", Slot::Green, &release).await.unwrap();
    cleanup.track(&started);

    assert_eq!(started.len(), 2);
    assert_ne!(started[0].addr.port(), started[1].addr.port());
    let real_workdir = workdir.path().canonicalize().unwrap();
    for (i, instance) in started.iter().enumerate() {
        assert_eq!(instance.index, i as u32);
        assert_eq!(instance.version, "v1.0/beta");
        assert!(instance.addr.ip().is_loopback(), "{instance:?}");
        assert_eq!(instance.exited, None);
        let port = instance.addr.port();

        wait_listening(instance.addr).await;
        // The app reads CUTOVER_APP/SLOT/VERSION from its environment.
        let root = get_root(instance.addr).await;
        assert_eq!(root["app"], "shop");
        assert_eq!(root["slot"], "green");
        assert_eq!(root["version"], "v1.0/beta");
        assert_eq!(root["instance"], port);

        let log = instance.log_path.as_ref().unwrap();
        assert_eq!(
            log.file_name().unwrap().to_str().unwrap(),
            format!("green-v1.0_beta-{i}.log"),
            "the version's '/' must not make a subdirectory"
        );
        wait_log_contains(
            log,
            &format!(
                "env: shop green v1.0/beta {port} hello {}",
                real_workdir.display()
            ),
        )
        .await;
        wait_log_contains(log, &format!("listening on http://127.0.0.1:{port}")).await;
    }

    let record = platform.record_path("shop", Slot::Green);
    assert!(
        record.is_file(),
        "{} should record the instances",
        record.display()
    );
    let listed = platform.instances("shop", Slot::Green).await.unwrap();
    assert_eq!(listed, started);

    let tail = platform.log_tail("shop", Slot::Green, 50);
    assert!(tail.contains("[instance 0] env: shop green"), "{tail}");
    assert!(tail.contains("[instance 1] env: shop green"), "{tail}");
    assert_eq!(
        platform.log_tail("shop", Slot::Green, 1).lines().count(),
        2,
        "one line per instance"
    );

    let begun = Instant::now();
    platform.stop("shop", Slot::Green, GRACE).await.unwrap();
    assert!(
        begun.elapsed() < GRACE,
        "the app exits on SIGTERM, so stop should not wait for the grace period ({:?})",
        begun.elapsed()
    );
    for instance in &started {
        wait_gone(instance.pid.unwrap()).await;
    }
    assert!(platform.instances("shop", Slot::Green).await.unwrap().is_empty());
    assert!(!record.exists(), "stop should remove {}", record.display());
    // The logs outlive the instances, for error messages.
    assert!(platform
        .log_tail("shop", Slot::Green, 5)
        .contains("[instance 1] "));

    // Stopping again, or a slot that never ran anything, is fine.
    platform.stop("shop", Slot::Green, GRACE).await.unwrap();
    platform.stop("shop", Slot::Blue, GRACE).await.unwrap();
}

#[tokio::test]
async fn stop_kills_an_instance_that_ignores_sigterm_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let cleanup = Cleanup::default();

    let release = ReleaseSpec::new(
        "stubborn",
        "trap '' TERM; echo trap set; while true; do sleep 0.1; done",
    );
    let started = platform.start("shop", Slot::Blue, &release).await.unwrap();
    cleanup.track(&started);
    let pid = started[0].pid.unwrap();
    // Signalling before the trap is installed would kill it at once and prove nothing.
    wait_log_contains(started[0].log_path.as_ref().unwrap(), "trap set").await;

    let grace = Duration::from_millis(500);
    let begun = Instant::now();
    platform.stop("shop", Slot::Blue, grace).await.unwrap();
    let took = begun.elapsed();
    assert!(
        took >= grace,
        "stop returned after {took:?}, before the grace period ended"
    );
    assert!(
        took < grace + Duration::from_secs(5),
        "SIGKILL should end it at once, took {took:?}"
    );
    // The shell and its `sleep` children alike.
    wait_gone(pid).await;
    assert!(platform.instances("shop", Slot::Blue).await.unwrap().is_empty());
}

#[tokio::test]
async fn exited_instances_report_how_they_ended() {
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let cleanup = Cleanup::default();

    let crashing = ReleaseSpec::new("v1", "echo about to crash; exit 3");
    let started = platform.start("shop", Slot::Blue, &crashing).await.unwrap();
    cleanup.track(&started);
    let p = &platform;
    wait_until("the crashed instance to be reported", DEADLINE, || async move {
        p.instances("shop", Slot::Blue).await.unwrap()[0].exited.is_some()
    })
    .await;
    let exited = platform.instances("shop", Slot::Blue).await.unwrap()[0]
        .exited
        .clone()
        .unwrap();
    assert!(exited.contains("code 3"), "{exited}");
    let tail = platform.log_tail("shop", Slot::Blue, 10);
    assert!(tail.contains("[instance 0] about to crash"), "{tail}");

    // The example app's own simulated crash, and a process killed from outside.
    let mut release = ReleaseSpec::new(
        "v2",
        format!(
            "exec '{}' --port {{port}} --crash-after-secs 1",
            example_app().display()
        ),
    );
    release.instances = 1;
    let app_crash = platform.start("shop", Slot::Green, &release).await.unwrap();
    cleanup.track(&app_crash);
    let killed = platform
        .start("other", Slot::Blue, &sleeper("v1", 1))
        .await
        .unwrap();
    cleanup.track(&killed);
    killpg(Pid::from_raw(killed[0].pid.unwrap() as i32), Signal::SIGKILL).unwrap();

    for (app, slot, expected) in [("shop", Slot::Green, "code 3"), ("other", Slot::Blue, "SIGKILL")] {
        wait_until(
            &format!("{app}/{slot} to report {expected}"),
            DEADLINE,
            || async move {
                p.instances(app, slot).await.unwrap()[0]
                    .exited
                    .as_deref()
                    .is_some_and(|e| e.contains(expected))
            },
        )
        .await;
    }

    // Exited instances stay listed until their slot is stopped.
    platform.stop("shop", Slot::Blue, GRACE).await.unwrap();
    platform.stop("shop", Slot::Green, GRACE).await.unwrap();
    platform.stop("other", Slot::Blue, GRACE).await.unwrap();
    assert!(platform.instances("shop", Slot::Blue).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_release_that_cannot_start_is_rejected_and_leaves_the_slot_running() {
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let cleanup = Cleanup::default();

    let v1 = platform
        .start("shop", Slot::Blue, &sleeper("v1", 1))
        .await
        .unwrap();
    cleanup.track(&v1);

    let mut bad_workdir = sleeper("v2", 1);
    bad_workdir.workdir = Some("/nonexistent/cutover-test-dir".into());
    let err = platform
        .start("shop", Slot::Blue, &bad_workdir)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PlatformError::Start { slot: Slot::Blue, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/cutover-test-dir"), "{msg}");
    assert!(msg.contains("workdir"), "the error should say what to fix: {msg}");

    let empty = ReleaseSpec::new("v2", "   ");
    let err = platform.start("shop", Slot::Blue, &empty).await.unwrap_err();
    assert!(matches!(err, PlatformError::Start { .. }), "{err:?}");
    assert!(err.to_string().contains("command is empty"), "{err}");

    let none = sleeper("v2", 0);
    assert!(platform.start("shop", Slot::Blue, &none).await.is_err());

    let still = platform.instances("shop", Slot::Blue).await.unwrap();
    assert_eq!(still.len(), 1);
    assert_eq!(still[0].version, "v1");
    assert_eq!(
        still[0].exited, None,
        "a rejected release must not stop the running one"
    );
    assert!(running(still[0].pid.unwrap()));

    platform.stop("shop", Slot::Blue, GRACE).await.unwrap();
    wait_gone(still[0].pid.unwrap()).await;
}

#[tokio::test]
async fn start_replaces_whatever_runs_in_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let cleanup = Cleanup::default();

    let v1 = platform
        .start("shop", Slot::Blue, &sleeper("v1", 2))
        .await
        .unwrap();
    cleanup.track(&v1);
    let v2 = platform
        .start("shop", Slot::Blue, &sleeper("v2", 1))
        .await
        .unwrap();
    cleanup.track(&v2);
    for old in &v1 {
        wait_gone(old.pid.unwrap()).await;
    }
    let now = platform.instances("shop", Slot::Blue).await.unwrap();
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].version, "v2");
    assert!(running(now[0].pid.unwrap()));
    platform.stop("shop", Slot::Blue, GRACE).await.unwrap();
    wait_gone(now[0].pid.unwrap()).await;
}

#[tokio::test]
async fn reconcile_after_a_controller_crash_adopts_wanted_and_stops_unwanted_instances() {
    let dir = tempfile::tempdir().unwrap();
    let cleanup = Cleanup::default();
    let command = format!("exec '{}' --port {{port}}", example_app().display());

    let (blue, green) = {
        let a = platform(dir.path());
        let mut v1 = ReleaseSpec::new("v1", command.clone());
        v1.instances = 2;
        let blue = a.start("shop", Slot::Blue, &v1).await.unwrap();
        cleanup.track(&blue);
        let green = a
            .start("shop", Slot::Green, &ReleaseSpec::new("v2", command.clone()))
            .await
            .unwrap();
        cleanup.track(&green);
        for instance in blue.iter().chain(&green) {
            wait_listening(instance.addr).await;
        }
        // The controller "crashes": its platform goes away without stopping anything.
        drop(a);
        (blue, green)
    };
    for instance in blue.iter().chain(&green) {
        assert!(
            running(instance.pid.unwrap()),
            "dropping the platform must not stop {instance:?}"
        );
    }

    let b = platform(dir.path());
    let report = b
        .reconcile("shop", &[(Slot::Blue, "v1".to_string())])
        .await
        .unwrap();
    assert_eq!(report.adopted, blue, "{report:?}");
    assert_eq!(report.stopped.len(), 1, "{report:?}");
    assert_eq!(report.stopped[0].pid, green[0].pid);
    assert!(report.gone.is_empty(), "{report:?}");

    wait_gone(green[0].pid.unwrap()).await;
    for instance in &blue {
        assert_eq!(
            get_root(instance.addr).await["version"],
            "v1",
            "adopted instances keep serving"
        );
    }
    assert_eq!(b.instances("shop", Slot::Blue).await.unwrap(), blue);
    assert!(b.instances("shop", Slot::Green).await.unwrap().is_empty());
    assert!(!b.record_path("shop", Slot::Green).exists());

    b.stop("shop", Slot::Blue, GRACE).await.unwrap();
    for instance in &blue {
        wait_gone(instance.pid.unwrap()).await;
    }
    assert!(!b.record_path("shop", Slot::Blue).exists());
}

#[tokio::test]
async fn reconcile_forgets_recorded_instances_that_died() {
    let dir = tempfile::tempdir().unwrap();
    let cleanup = Cleanup::default();

    let started = {
        let a = platform(dir.path());
        let started = a.start("shop", Slot::Blue, &sleeper("v1", 1)).await.unwrap();
        cleanup.track(&started);
        started
    };
    let pid = started[0].pid.unwrap();
    killpg(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    wait_gone(pid).await;

    let b = platform(dir.path());
    // Before reconciling, the record already tells what is known about the slot.
    let listed = b.instances("shop", Slot::Blue).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].exited.is_some(), "{listed:?}");

    let report = b
        .reconcile("shop", &[(Slot::Blue, "v1".to_string())])
        .await
        .unwrap();
    assert!(report.adopted.is_empty(), "{report:?}");
    assert!(report.stopped.is_empty(), "{report:?}");
    assert_eq!(report.gone.len(), 1, "{report:?}");
    assert_eq!(report.gone[0].pid, Some(pid));
    assert!(report.gone[0].exited.is_some());
    assert!(b.instances("shop", Slot::Blue).await.unwrap().is_empty());
    assert!(!b.record_path("shop", Slot::Blue).exists());

    // Nothing recorded at all: an empty report.
    let report = b.reconcile("empty", &[]).await.unwrap();
    assert_eq!(report, Default::default());
}

/// Records (pids cutover signals) and logs (which may print secrets) are the owner's alone.
#[tokio::test]
async fn records_and_logs_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let state = dir.path().join("state");
    let cleanup = Cleanup::default();
    let release = ReleaseSpec::new("v1", "echo started; exec sleep 30");
    let started = platform.start("shop", Slot::Blue, &release).await.unwrap();
    cleanup.track(&started);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for sub in ["instances", "logs"] {
        assert_eq!(mode(&state.join(sub)), 0o700, "{sub}");
    }
    let log = started[0].log_path.clone().unwrap();
    assert_eq!(mode(&log), 0o600, "{}", log.display());
    assert_eq!(mode(log.parent().unwrap()), 0o700, "{}", log.display());
    platform
        .stop("shop", Slot::Blue, Duration::from_secs(2))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_log_tail_of_a_failure_shows_only_its_own_run() {
    let dir = tempfile::tempdir().unwrap();
    let platform = platform(dir.path());
    let cleanup = Cleanup::default();
    // The same version in the same slot twice: both runs append to one log file.
    for run in ["first", "second"] {
        let release = ReleaseSpec::new("v1", format!("echo {run} run; exit 3"));
        let started = platform.start("shop", Slot::Blue, &release).await.unwrap();
        cleanup.track(&started);
        let p = &platform;
        wait_until("the instance to exit", DEADLINE, || async move {
            p.instances("shop", Slot::Blue).await.unwrap()[0].exited.is_some()
        })
        .await;
        let tail = platform.log_tail("shop", Slot::Blue, 50);
        assert!(tail.contains(&format!("{run} run")), "{tail}");
        if run == "second" {
            assert!(!tail.contains("first run"), "an earlier run's lines: {tail}");
        }
        platform.stop("shop", Slot::Blue, GRACE).await.unwrap();
    }
}
