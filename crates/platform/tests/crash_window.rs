#![allow(clippy::unwrap_used, clippy::expect_used)]
//! cutover may die between starting an instance and recording it. The start token written before
//! the spawn lets the next `reconcile` find and stop such a process: no orphan.

use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use cutover_platform::{LocalProcessPlatform, Platform};

#[tokio::test]
async fn an_instance_started_but_never_recorded_is_stopped_by_reconcile() {
    let dir = tempfile::tempdir().unwrap();
    let platform = LocalProcessPlatform::new(dir.path().to_path_buf()).unwrap();
    // As if cutover had written the token, spawned the instance and died before the record.
    std::fs::create_dir_all(dir.path().join("pending")).unwrap();
    std::fs::write(
        dir.path().join("pending").join("web-green.tokens"),
        "crash-window-test-token",
    )
    .unwrap();
    let mut orphan = std::process::Command::new("sh")
        .args(["-c", "exec sleep 1000"])
        .env("CUTOVER_INSTANCE_TOKEN", "crash-window-test-token")
        .process_group(0)
        .spawn()
        .unwrap();
    let mut bystander = std::process::Command::new("sh")
        .args(["-c", "exec sleep 1000"])
        .process_group(0)
        .spawn()
        .unwrap();

    platform.reconcile("web", &[]).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while orphan.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let proc_dir = format!("/proc/{}", orphan.id());
            let read = |f: &str| {
                String::from_utf8_lossy(&std::fs::read(format!("{proc_dir}/{f}")).unwrap_or_default())
                    .replace('\0', " ")
            };
            panic!(
                "the unrecorded instance is still running: environ {:?}, cmdline {:?}, stat {:?}",
                read("environ"),
                read("cmdline"),
                read("stat")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "a process without the token is left alone"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
    assert!(!dir.path().join("pending").join("web-green.tokens").exists());
}
