//! What the whole-rollout tests share: running `cutover serve` and the `cutover` CLI.

pub mod hosts;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cutover_test_support::ChildProcess;
use serde_json::Value;

pub const CUTOVER: &str = env!("CARGO_BIN_EXE_cutover");

/// `cutover serve --config CONFIG` with the admin token `token`, once it reported ready; returns
/// the process and its ready event (with the bound addresses).
#[allow(dead_code)] // not every test binary that shares this module starts a server this way
pub fn serve(config: &Path, token: &str) -> (ChildProcess, Value) {
    serve_with_env(config, token, &[])
}

/// [`serve`] with more variables in the server's environment.
#[allow(dead_code)]
pub fn serve_with_env(config: &Path, token: &str, env: &[(&str, &str)]) -> (ChildProcess, Value) {
    let mut cmd = Command::new(CUTOVER);
    cmd.args(["serve", "--config"])
        .arg(config)
        .env("CUTOVER_ADMIN_TOKEN", token)
        .envs(env.iter().copied());
    let mut serve = ChildProcess::spawn("cutover-serve", cmd);
    let ready = serve.wait_for_stdout_line(Duration::from_secs(30), |line| {
        serde_json::from_str::<Value>(line)
            .ok()
            .filter(|v| v["event"] == "ready")
    });
    (serve, ready)
}

/// `cutover --admin ADMIN ARGS...`: its exit code and its stdout and stderr together.
#[allow(dead_code)]
pub fn cli(admin: &str, token: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(CUTOVER)
        .arg("--admin")
        .arg(admin)
        .args(args)
        .env("CUTOVER_ADMIN_TOKEN", token)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Writes `text` to `path`, readable by its owner only (as cutover wants key and token files).
#[allow(dead_code)] // not every test binary writes one
pub fn private_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// PIDs of the example-app processes whose command line names `dir` (a test's own directory):
/// instances outlive `cutover serve` by design, so a test kills what it started.
#[allow(dead_code)] // not every test binary that shares this module starts instances
pub fn instance_pids(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if !zombie && cmdline.contains("example-app") && cmdline.contains(&needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills the example-app instances whose command line names `dir` (see [`instance_pids`]).
#[allow(dead_code)]
pub fn kill_instances(dir: &Path) {
    for pid in instance_pids(dir) {
        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    }
}

/// [`kill_instances`] when dropped, passed or failed: for a test whose server may be killed
/// before it could stop its instances.
#[allow(dead_code)]
pub struct KillInstancesOf(pub std::path::PathBuf);

impl Drop for KillInstancesOf {
    fn drop(&mut self) {
        kill_instances(&self.0);
    }
}

/// Processes whose working directory is in `dir`: the instances of a test's releases, run from
/// `dir/releases/...`, which outlive `cutover serve` by design.
#[allow(dead_code)] // not every test binary that shares this module starts instances
pub fn processes_in(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if std::fs::read_link(entry.path().join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir)) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills every process working in its directory when dropped, passed or failed: the instances a
/// test's releases ran there, which outlive `cutover serve` by design. Declare it before the
/// server, so that the server is gone first (alive, it would start the live slot again).
#[allow(dead_code)]
pub struct KillProcessesIn(pub std::path::PathBuf);

impl Drop for KillProcessesIn {
    fn drop(&mut self) {
        for pid in processes_in(&self.0) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

/// A command run in `cwd` with nothing in the environment that points the CLI at a server:
/// what the CLI finds, it finds by itself.
#[allow(dead_code)]
pub fn unpointed(program: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(cwd)
        .env_remove("CUTOVER_ADMIN")
        .env_remove("CUTOVER_ADMIN_TOKEN")
        .env_remove("CUTOVER_CONFIG");
    cmd
}
