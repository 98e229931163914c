//! A real HAProxy for tests: a child process on ephemeral loopback ports, with its configuration
//! and stats sockets in a temporary directory, killed (and the directory removed) on drop.
//!
//! It runs Debian's `haproxy` (2.6), which `./scripts/test` installs. When the binary is missing
//! [`Haproxy::start`] panics saying so: a test that needs it fails rather than skips.
//!
//! The configuration is `haproxy.cfg` ([`Haproxy::GLOBAL_AND_DEFAULTS`], with the stats sockets)
//! followed by the fragment the test renders, in one file, so the process can be killed and
//! started again from the same file ([`Haproxy::restart`]) or replaced gracefully
//! ([`Haproxy::reload`], `haproxy -sf`).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{find_bin, free_port, tail, ChildProcess, TempDir};

/// How long HAProxy may take to answer on its stats socket and accept on its port.
const READY_DEADLINE: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);
/// Starts retried when a port picked was taken by the time HAProxy bound it.
const START_ATTEMPTS: usize = 3;
/// How long a process replaced by [`Haproxy::reload`] may take to finish its connections.
const RETIRE_DEADLINE: Duration = Duration::from_secs(30);

/// Where the HAProxy being started listens, for the fragment to name.
#[derive(Debug, Clone)]
pub struct HaproxySetup {
    /// The temporary directory holding the configuration (the fragment may put files here, e.g.
    /// a map file).
    pub dir: PathBuf,
    /// The unix stats socket, `level admin`.
    pub stats_socket: PathBuf,
    /// A TCP stats socket on loopback, `level admin`.
    pub stats_tcp: SocketAddr,
    /// HAProxy's `server-state-file`, loaded on start when it exists.
    pub server_state: PathBuf,
    /// A free loopback port for the fragment's frontend to bind (`127.0.0.1:{port}`); HAProxy is
    /// ready once it accepts there.
    pub port: u16,
}

/// A running HAProxy.
#[derive(Debug)]
pub struct Haproxy {
    pub setup: HaproxySetup,
    config_path: PathBuf,
    bin: PathBuf,
    // Declared before `dir`: processes must be dead before their directory is removed.
    process: ChildProcess,
    /// Processes replaced by `reload`, finishing their connections.
    retired: Vec<ChildProcess>,
    dir: TempDir,
}

impl Haproxy {
    /// The start of every `haproxy.cfg`; `{stats_socket}`, `{stats_tcp}` and `{server_state}` are
    /// filled in. The server state file is only written by [`Haproxy::reload_keeping_server_state`].
    pub const GLOBAL_AND_DEFAULTS: &'static str = "global
    stats socket {stats_socket} mode 600 level admin expose-fd listeners
    stats socket ipv4@{stats_tcp} level admin
    stats timeout 30s
    server-state-file {server_state}
    nbthread 2
    maxconn 4096
    # A port picked for this HAProxy and taken meanwhile must fail the start (which is retried
    # on other ports), not be shared with whoever holds it.
    noreuseport

defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 120s
    timeout queue 10s
    load-server-state-from-file global
";

    /// Starts HAProxy with `fragment(setup)` after the global and defaults sections, and waits
    /// until it answers on its stats socket and accepts on `setup.port`. `fragment` is called
    /// again with new ports if a port turned out to be taken.
    pub async fn start(mut fragment: impl FnMut(&HaproxySetup) -> String) -> Haproxy {
        let bin = find_bin("haproxy", "haproxy");
        let dir = TempDir::new("haproxy");
        let config_path = dir.path().join("haproxy.cfg");
        let stats_socket = dir.path().join("admin.sock");
        for attempt in 1..=START_ATTEMPTS {
            let setup = HaproxySetup {
                dir: dir.path().to_path_buf(),
                stats_socket: stats_socket.clone(),
                stats_tcp: SocketAddr::from(([127, 0, 0, 1], free_port())),
                server_state: dir.path().join("server-state"),
                port: free_port(),
            };
            let text = Self::GLOBAL_AND_DEFAULTS
                .replace("{stats_socket}", &setup.stats_socket.display().to_string())
                .replace("{stats_tcp}", &setup.stats_tcp.to_string())
                .replace("{server_state}", &setup.server_state.display().to_string())
                + "\n"
                + &fragment(&setup);
            std::fs::write(&config_path, text)
                .unwrap_or_else(|e| panic!("writing {} failed: {e}", config_path.display()));
            check_config(&bin, &config_path);
            let mut process = spawn(&bin, &config_path, None);
            match wait_ready(&mut process, &setup).await {
                Ok(()) => {
                    return Haproxy {
                        setup,
                        config_path,
                        bin,
                        process,
                        retired: Vec::new(),
                        dir,
                    }
                }
                Err(e) if attempt < START_ATTEMPTS => {
                    eprintln!("haproxy start attempt {attempt} failed ({e}); trying other ports");
                }
                Err(e) => panic!(
                    "haproxy did not start after {START_ATTEMPTS} attempts: {e}\n--- stderr ---\n{}",
                    process.stderr()
                ),
            }
        }
        unreachable!("the last start attempt either returns or panics")
    }

    /// Kills HAProxy (SIGKILL, everything in flight is cut) and starts it again from the same
    /// files, returning once it is ready. Runtime changes are lost, as on any restart.
    pub async fn restart(&mut self) {
        self.process.kill();
        let mut process = spawn(&self.bin, &self.config_path, None);
        if let Err(e) = wait_ready(&mut process, &self.setup).await {
            panic!(
                "haproxy did not come back after a restart: {e}\n--- stderr ---\n{}",
                process.stderr()
            );
        }
        self.process = process;
    }

    /// Reloads gracefully like `systemctl reload haproxy`: a new process starts from the same
    /// files with `-x <stats socket>` (taking over the listening sockets) and `-sf <old pid>`; the
    /// old one exits once its connections are done. Returns once the new process is ready.
    /// Runtime changes are lost unless [`Haproxy::reload_keeping_server_state`] is used.
    pub async fn reload(&mut self) {
        let old_pid = self.process.pid();
        let mut process = spawn(
            &self.bin,
            &self.config_path,
            Some((old_pid, &self.setup.stats_socket)),
        );
        if let Err(e) = wait_ready(&mut process, &self.setup).await {
            panic!(
                "haproxy did not come back after a reload: {e}\n--- stderr ---\n{}",
                process.stderr()
            );
        }
        let old = std::mem::replace(&mut self.process, process);
        self.retired.push(old);
    }

    /// Like [`Haproxy::reload`], after dumping `show servers state` into the server state file,
    /// as a reload script does to keep servers' addresses and states across reloads.
    pub async fn reload_keeping_server_state(&mut self) {
        let state = self.command("show servers state").await;
        std::fs::write(&self.setup.server_state, state)
            .unwrap_or_else(|e| panic!("writing {} failed: {e}", self.setup.server_state.display()));
        self.reload().await;
    }

    /// Waits (30 s at most) for the processes replaced by [`Haproxy::reload`] to exit.
    pub async fn wait_retired(&mut self) {
        let deadline = Instant::now() + RETIRE_DEADLINE;
        for old in &mut self.retired {
            while old.try_exit_status().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "the haproxy process replaced by a reload ({}) did not exit within {RETIRE_DEADLINE:?}",
                    old.pid()
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `http://127.0.0.1:{port}`, where the fragment's frontend listens.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.setup.port)
    }

    /// The directory holding `haproxy.cfg`, the stats socket and whatever the fragment put there.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The running process (signals, stderr).
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// Sends one command to the unix stats socket and returns the answer.
    pub async fn command(&self, command: &str) -> String {
        stats_command(&self.setup.stats_socket, command)
            .await
            .unwrap_or_else(|e| panic!("runtime API command {command:?} failed: {e}"))
    }
}

/// Whether HAProxy accepts `config` (`haproxy -c`), with its complaints when it does not.
pub fn check_config_text(config: &str) -> Result<(), String> {
    let dir = TempDir::new("haproxy-check");
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, config).unwrap_or_else(|e| panic!("writing {} failed: {e}", path.display()));
    let output = Command::new(find_bin("haproxy", "haproxy"))
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running haproxy -c failed: {e}"));
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `haproxy -c`: a configuration error is reported as such, not as a start that timed out.
fn check_config(bin: &Path, config: &Path) {
    let output = Command::new(bin)
        .arg("-c")
        .arg("-f")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {} -c failed: {e}", bin.display()));
    if !output.status.success() {
        panic!(
            "haproxy rejects {}:\n{}{}\n--- configuration ---\n{}",
            config.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(config).unwrap_or_default()
        );
    }
}

/// Starts haproxy on `config`; `replaces`: the pid of the process to stop softly and the stats
/// socket to take its listening sockets from.
fn spawn(bin: &Path, config: &Path, replaces: Option<(u32, &Path)>) -> ChildProcess {
    let mut cmd = Command::new(bin);
    // -db: stay in the foreground, so the process is the child the handle kills.
    cmd.arg("-db").arg("-f").arg(config).stdin(Stdio::null());
    if let Some((pid, socket)) = replaces {
        cmd.arg("-x").arg(socket).arg("-sf").arg(pid.to_string());
    }
    ChildProcess::spawn("haproxy", cmd)
}

/// Waits until `process` answers `show info` with its own pid on the unix stats socket and
/// accepts TCP connections on `setup.port`; an error if it exits first or the deadline passes.
async fn wait_ready(process: &mut ChildProcess, setup: &HaproxySetup) -> Result<(), String> {
    let deadline = Instant::now() + READY_DEADLINE;
    let pid_line = format!("Pid: {}", process.pid());
    loop {
        if let Some(status) = process.try_exit_status() {
            return Err(format!(
                "haproxy exited with {status}: {}",
                tail(&process.stderr())
            ));
        }
        let answered = tokio::time::timeout(
            Duration::from_secs(2),
            stats_command(&setup.stats_socket, "show info"),
        )
        .await
        .is_ok_and(|r| r.is_ok_and(|info| info.lines().any(|l| l.trim() == pid_line)));
        if answered
            && TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], setup.port)), POLL).is_ok()
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("not ready within {READY_DEADLINE:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn stats_command(socket: &Path, command: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await?;
    Ok(answer)
}
