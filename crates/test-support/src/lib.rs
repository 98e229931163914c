// Test-only crate: failing loudly with a message is the right way to report a broken
// fixture, so panicking helpers are fine here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Helpers for cutover's integration tests: locating (and if needed building) workspace
//! binaries, running the example app, supervising child processes so none outlive the
//! test, and polling for conditions with a deadline instead of sleeping.

pub mod browser;
pub mod etcd;
pub mod fakes;
pub mod haproxy;
pub mod k8s_schema;
pub mod kube_apiserver;
pub mod monitoring;
pub mod nginx;
pub mod postgres;

use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often the `wait_*` helpers re-check their condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long `ExampleApp::spawn` waits for the app to announce its port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `terminate` gives a process to exit after SIGTERM.
/// Longer than the app's default 30 s drain timeout, so a slow drain is not mistaken for a hang.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(40);
/// How much of a child's stderr goes into panic messages.
const STDERR_TAIL_BYTES: usize = 4096;

/// Package name of the example backend, also its binary name.
pub const EXAMPLE_APP_BIN: &str = "cutover-example-app";

/// Held while checking for and building a binary, so concurrent tests in one process
/// trigger at most one `cargo build` per binary.
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Path of the workspace binary `name`, in the same target profile directory as the
/// running test executable (`target/<profile>/deps/test-xxx` -> `target/<profile>/name`).
///
/// Cargo only builds the binaries of the package under test, so when another package's
/// binary is missing it is built here with `cargo build --bin name`. An existing binary
/// is used as is, even if its sources changed since: run `cargo build` (or test the
/// workspace) to refresh it.
pub fn workspace_bin(name: &str) -> PathBuf {
    let profile_dir = profile_dir();
    let path = profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    let _guard = BUILD_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
    if path.is_file() {
        return path;
    }
    build_bin(name, &profile_dir);
    if !path.is_file() {
        panic!(
            "`cargo build --bin {name}` succeeded but {} does not exist",
            path.display()
        );
    }
    path
}

pub(crate) fn profile_dir() -> PathBuf {
    let exe =
        std::env::current_exe().unwrap_or_else(|e| panic!("cannot locate the running test executable: {e}"));
    let dir = exe
        .parent()
        .unwrap_or_else(|| panic!("test executable {} has no parent directory", exe.display()));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent()
            .unwrap_or_else(|| panic!("{} has no parent directory", dir.display()))
            .to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

fn build_bin(name: &str, profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(&workspace_root).args(["build", "--bin", name]);
    if let Some(target_dir) = profile_dir.parent() {
        // The test may have been built with `--target-dir`, which, unlike
        // CARGO_TARGET_DIR, the child cargo would not inherit.
        cmd.arg("--target-dir").arg(target_dir);
    }
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(profile) => {
            cmd.args(["--profile", profile]);
        }
    }
    eprintln!("cutover-test-support: {name} not built yet, running {cmd:?}");
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cargo:?} to build {name}: {e}"));
    if !output.status.success() {
        panic!(
            "building {name} failed ({}): {cmd:?}\n--- cargo stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Polls `f` every 20 ms until it returns true; panics naming `what` if that has not
/// happened within `deadline`. A single call of `f` that hangs past the deadline also
/// counts as a timeout.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        let remaining = deadline.saturating_sub(start.elapsed());
        match tokio::time::timeout(remaining, f()).await {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => break,
        }
        let remaining = deadline.saturating_sub(start.elapsed());
        if remaining.is_zero() {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL.min(remaining)).await;
    }
    panic!("timed out after {deadline:?} waiting for {what}");
}

/// Blocking variant of [`wait_until`].
pub fn wait_until_sync<F>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> bool,
{
    let start = Instant::now();
    loop {
        if f() {
            return;
        }
        let remaining = deadline.saturating_sub(start.elapsed());
        if remaining.is_zero() {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(POLL_INTERVAL.min(remaining));
    }
}

/// A port that was free a moment ago on 127.0.0.1.
///
/// Racy: another process may take it before the caller binds it. Only use it when a port
/// must be known before the process that binds it starts (e.g. a config file written up
/// front); otherwise bind port 0 and read the port back.
///
/// A port is handed out once per process: two picks in a row can otherwise get the same port
/// from the kernel, and servers that bind with `SO_REUSEPORT` (HAProxy) then share it, each
/// answering some of the other's connections.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let listener =
            TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding 127.0.0.1:0 failed: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("reading the address of a bound socket failed: {e}"))
            .port();
        if GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(port)
        {
            return port;
        }
    }
}

/// `GET url` with [`http_client`], its body parsed as JSON; panics on any failure.
pub async fn get_json(url: &str) -> serde_json::Value {
    http_client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: the body is not JSON: {e}"))
}

/// An HTTP client for tests: ignores proxy environment variables (traffic must go to the
/// loopback servers under test) and gives up on connecting after 5 s.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|e| panic!("building the reqwest client failed: {e}"))
}

#[derive(Default)]
struct Captured {
    text: String,
    closed: bool,
}

/// A supervised child process: stdout is captured by a background thread (so the child
/// never blocks on a full pipe) and can be searched while it runs, stderr goes to a log
/// file, and the process is killed when the handle drops.
pub struct ChildProcess {
    name: String,
    child: Child,
    exit: Option<ExitStatus>,
    stdout: Arc<(Mutex<Captured>, Condvar)>,
    stderr_path: PathBuf,
    /// Set once a panic message already carried the stderr tail, so `Drop` does not
    /// print it a second time.
    stderr_reported: bool,
}

impl std::fmt::Debug for ChildProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildProcess")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .field("exit", &self.exit)
            .field("stderr_path", &self.stderr_path)
            .finish_non_exhaustive()
    }
}

impl ChildProcess {
    /// Starts `cmd` with stdout piped and stderr sent to a temporary log file. `name` is
    /// used in messages and the log file name. Stdin is left as `cmd` configured it.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let stderr_path = std::env::temp_dir().join(format!(
            "cutover-test-{}-{}-{}.log",
            name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let stderr = File::create(&stderr_path)
            .unwrap_or_else(|e| panic!("creating the stderr log {} failed: {e}", stderr_path.display()));
        cmd.stdout(Stdio::piped()).stderr(stderr);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}) failed: {e}"));

        let stdout = Arc::new((Mutex::new(Captured::default()), Condvar::new()));
        if let Some(pipe) = child.stdout.take() {
            let stdout = Arc::clone(&stdout);
            std::thread::Builder::new()
                .name(format!("{name}-stdout"))
                .spawn(move || drain_stdout(pipe, &stdout))
                .unwrap_or_else(|e| panic!("starting the stdout reader for {name} failed: {e}"));
        }
        Self {
            name: name.to_owned(),
            child,
            exit: None,
            stdout,
            stderr_path,
            stderr_reported: false,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `parse` returns `Some` for a line of stdout (including lines printed
    /// before the call) and returns that value. Panics, with the stderr tail, if stdout
    /// closes first or `timeout` passes.
    pub fn wait_for_stdout_line<T>(
        &mut self,
        timeout: Duration,
        mut parse: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.stdout;
        let mut captured = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(v) = captured.text.lines().find_map(&mut parse) {
                return v;
            }
            if captured.closed {
                drop(captured);
                let status = self.wait_exit_quietly(Duration::from_secs(5));
                self.stderr_reported = true;
                panic!(
                    "{} closed stdout ({}) before printing the expected line\n{}",
                    self.name,
                    status.map_or("still running".to_owned(), |s| s.to_string()),
                    self.output_report()
                );
            }
            let now = Instant::now();
            if now >= deadline {
                drop(captured);
                self.kill();
                self.stderr_reported = true;
                panic!(
                    "{} did not print the expected line within {timeout:?}\n{}",
                    self.name,
                    self.output_report()
                );
            }
            captured = cond
                .wait_timeout(captured, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Everything the process has printed on stdout so far.
    pub fn stdout(&self) -> String {
        let (lock, _) = &*self.stdout;
        lock.lock().unwrap_or_else(PoisonError::into_inner).text.clone()
    }

    /// Everything the process has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", self.stderr_path.display()))
    }

    /// Path of the file collecting stderr. It is removed on drop unless the thread is
    /// panicking, so failed tests leave it behind for inspection.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Sends `signal` (a `kill(1)` name such as "TERM", "STOP", "CONT") to the process.
    pub fn send_signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("running `kill -{signal} {}` failed: {e}", self.pid()));
        if !status.success() {
            panic!("`kill -{signal} {}` ({}) failed: {status}", self.pid(), self.name);
        }
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self
                .child
                .try_wait()
                .unwrap_or_else(|e| panic!("checking whether {} exited failed: {e}", self.name));
        }
        self.exit
    }

    /// Waits for the process to exit on its own; kills it and panics if it has not
    /// within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_exit_quietly(timeout) {
            Some(status) => status,
            None => {
                self.kill();
                self.stderr_reported = true;
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.output_report()
                );
            }
        }
    }

    fn wait_exit_quietly(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_exit_status() {
                return Some(status);
            }
            if start.elapsed() >= timeout {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGTERM, then waits (40 s at most) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit_status() {
            return status;
        }
        self.send_signal("TERM");
        self.wait_exit(TERMINATE_TIMEOUT)
    }

    /// SIGKILL, then reaps the process. Does nothing if it already exited.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.try_exit_status() {
            return status;
        }
        // Fails only if the process is already gone, which the wait below reports.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for killed {} failed: {e}", self.name));
        self.exit = Some(status);
        status
    }

    fn output_report(&self) -> String {
        let stderr = self.stderr();
        let mut start = stderr.len().saturating_sub(STDERR_TAIL_BYTES);
        while !stderr.is_char_boundary(start) {
            start += 1;
        }
        format!(
            "--- stdout ---\n{}--- stderr (last {} bytes, full log: {}) ---\n{}",
            self.stdout(),
            stderr.len() - start,
            self.stderr_path.display(),
            &stderr[start..]
        )
    }
}

fn drain_stdout(pipe: impl Read, shared: &(Mutex<Captured>, Condvar)) {
    let (lock, cond) = shared;
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let mut captured = lock.lock().unwrap_or_else(PoisonError::into_inner);
                captured.text.push_str(&String::from_utf8_lossy(&line));
                cond.notify_all();
            }
        }
    }
    lock.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
    cond.notify_all();
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            if !self.stderr_reported {
                eprintln!("{} output (test failed):\n{}", self.name, self.output_report());
            }
        } else {
            let _ = std::fs::remove_file(&self.stderr_path);
        }
    }
}

/// A running `cutover-example-app`, killed when dropped.
#[derive(Debug)]
pub struct ExampleApp {
    /// Where it listens (always 127.0.0.1 unless `--host` was passed).
    pub addr: SocketAddr,
    /// The `--version-label` it was started with.
    pub version: String,
    process: ChildProcess,
}

impl ExampleApp {
    /// Runs `cutover-example-app --port 0 --version-label VERSION EXTRA_ARGS...` (building
    /// it first if needed, see [`workspace_bin`]) and waits until it listens.
    pub fn spawn(version: &str, extra_args: &[&str]) -> Self {
        Self::spawn_bin(&workspace_bin(EXAMPLE_APP_BIN), version, extra_args)
    }

    /// Like [`ExampleApp::spawn`] with an explicit binary, e.g.
    /// `env!("CARGO_BIN_EXE_cutover-example-app")` in the example app's own tests.
    pub fn spawn_bin(bin: &Path, version: &str, extra_args: &[&str]) -> Self {
        let mut cmd = Command::new(bin);
        cmd.args(["--port", "0", "--version-label", version])
            // The app exits when this pipe closes, i.e. when the test process dies, even
            // if it was killed too abruptly to run `Drop`.
            .arg("--exit-on-stdin-close")
            .args(extra_args)
            .stdin(Stdio::piped())
            // Settings from the environment running the tests must not leak in.
            .env_remove("CUTOVER_SLOT")
            .env_remove("CUTOVER_APP");
        let mut process = ChildProcess::spawn(&format!("{EXAMPLE_APP_BIN}-{version}"), cmd);
        let addr = process.wait_for_stdout_line(STARTUP_TIMEOUT, parse_listening_line);
        Self {
            addr,
            version: version.to_owned(),
            process,
        }
    }

    /// `http://ADDR{path}`; `path` should start with '/'.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) -> ExitStatus {
        self.process.kill()
    }

    /// SIGTERM, then waits (40 s at most) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        self.process.terminate()
    }

    /// The underlying process, for signals, exit status and captured output.
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

/// Parses the address out of the app's startup line
/// `cutover-example-app listening on http://127.0.0.1:PORT version=VERSION`.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    let rest = line.split_once("listening on http://")?.1;
    rest.split_whitespace().next()?.parse().ok()
}

/// Background traffic for whole-rollout tests: `GET {public}/` about every 2 ms as one of 500
/// users (`X-User-ID: user-N`), counting requests and failures (transport errors or non-2xx),
/// until [`Load::finish`] or for 2 minutes at most.
#[derive(Debug)]
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    failed: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    pub fn start(public: &str) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, f, n, url) = (
            Arc::clone(&stop),
            Arc::clone(&failed),
            Arc::clone(&sent),
            format!("{public}/"),
        );
        let task = tokio::spawn(async move {
            let client = http_client();
            let limit = tokio::time::Instant::now() + Duration::from_secs(120);
            let mut i: u64 = 0;
            while !s.load(Ordering::Relaxed) && tokio::time::Instant::now() < limit {
                let r = client
                    .get(&url)
                    .header("X-User-ID", format!("user-{}", i % 500))
                    .send()
                    .await;
                n.fetch_add(1, Ordering::Relaxed);
                if !r.is_ok_and(|r| r.status().is_success()) {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        Load {
            stop,
            failed,
            sent,
            task,
        }
    }

    /// Stops the load; returns (requests sent, requests failed).
    pub async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.task
            .await
            .unwrap_or_else(|e| panic!("the load task failed: {e}"));
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// The binary `name` of a Debian package the tests need: on PATH, or in the sbin and bin
/// directories a trimmed PATH often lacks. Panics saying how to install it, so a test that needs
/// it fails rather than skips.
pub(crate) fn find_bin(name: &str, debian_package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed (not on PATH, not in /usr/sbin, /usr/local/sbin or /usr/bin); \
                 run ./scripts/test, which installs the Debian package {debian_package}, or \
                 `apt-get install {debian_package}`"
            )
        })
}

/// A directory under the system temp dir, removed on drop unless the thread is panicking (so a
/// failed test leaves the configuration, data and logs behind for inspection).
#[derive(Debug)]
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(what: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "cutover-test-{what}-{}-{}-{nanos}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("creating {} failed: {e}", path.display()));
        TempDir(path)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} for inspection", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The last 4 KiB of `text`, for panic messages.
pub(crate) fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(4096);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

pub(crate) fn write_file(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {} failed: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_listening_line() {
        assert_eq!(
            parse_listening_line("cutover-example-app listening on http://127.0.0.1:4321 version=v1"),
            Some(SocketAddr::from(([127, 0, 0, 1], 4321)))
        );
        assert_eq!(
            parse_listening_line("cutover-example-app listening on http://[::1]:80 version=v1"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(parse_listening_line("something else"), None);
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port(), 0);
    }

    #[test]
    fn wait_until_sync_returns_once_true() {
        let mut n = 0;
        wait_until_sync("counter to reach 3", Duration::from_secs(5), || {
            n += 1;
            n >= 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    #[should_panic(expected = "timed out after")]
    fn wait_until_sync_panics_with_what() {
        wait_until_sync("never", Duration::from_millis(50), || false);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for a hanging check")]
    async fn wait_until_times_out_a_hanging_check() {
        wait_until("a hanging check", Duration::from_millis(100), || {
            std::future::pending::<bool>()
        })
        .await;
    }

    #[test]
    fn child_process_is_killed_on_drop() {
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let process = ChildProcess::spawn("sleep", cmd);
        let pid = process.pid();
        drop(process);
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        // Reaped on drop, so the pid no longer exists (or was reused by something else).
        let gone = !proc_dir.exists()
            || std::fs::read_to_string(proc_dir.join("cmdline")).is_ok_and(|c| !c.starts_with("sleep"));
        assert!(gone, "sleep {pid} survived its handle");
    }
}
