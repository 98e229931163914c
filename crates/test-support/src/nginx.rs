//! A real nginx for tests: Debian's `/usr/sbin/nginx` run in the foreground as a child process,
//! with its own prefix directory (configuration, pid file, temp paths, logs) under the system
//! temp dir, stopped (master and workers) and the directory removed on drop.
//!
//! The main `nginx.conf` is written by [`Nginx::start`]: `daemon off`, one worker, a
//! `worker_shutdown_timeout`, a readiness server on an ephemeral loopback port, and inside
//! `http {}` an `include` of [`Nginx::include_glob`] (`<dir>/conf.d/*.conf`), where a test puts
//! the file cutover renders ([`Nginx::conf_d`]). A glob that matches nothing is valid, so nginx
//! starts before the first file exists.
//!
//! The test and reload commands ([`Nginx::test_command`], [`Nginx::reload_command`]) name this
//! instance's prefix and configuration, so several instances can run side by side.
//!
//! When nginx is missing the helpers panic naming the binary and the package: a test that needs
//! it fails rather than skips.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{find_bin, free_port, http_client, tail, write_file, ChildProcess, TempDir};

/// How long nginx may take to answer on its readiness port.
const READY_DEADLINE: Duration = Duration::from_secs(20);
/// How long the master may take to exit after SIGTERM (it stops its workers first).
const STOP_DEADLINE: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);
/// Starts retried when the readiness port picked was taken by the time nginx bound it.
const START_ATTEMPTS: usize = 3;

/// Settings of the main configuration.
#[derive(Debug, Clone)]
pub struct NginxOptions {
    /// `worker_shutdown_timeout`: how long old workers may finish in-flight requests after a
    /// reload (the drain timeout).
    pub worker_shutdown_timeout: Duration,
}

impl Default for NginxOptions {
    fn default() -> Self {
        NginxOptions {
            worker_shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// A running nginx master process (and its workers).
#[derive(Debug)]
pub struct Nginx {
    bin: PathBuf,
    /// Where the readiness server listens.
    pub ready_addr: SocketAddr,
    // Declared before `dir`: the process must be stopped before its prefix is removed.
    process: Option<ChildProcess>,
    dir: TempDir,
}

impl Nginx {
    /// Writes the main configuration, starts nginx and waits until it answers.
    pub async fn start(options: NginxOptions) -> Nginx {
        let bin = find_bin("nginx", "nginx-light");
        let dir = TempDir::new("nginx");
        for sub in ["conf.d", "logs", "temp"] {
            let path = dir.path().join(sub);
            std::fs::create_dir_all(&path)
                .unwrap_or_else(|e| panic!("creating {} failed: {e}", path.display()));
        }
        let mut nginx = Nginx {
            bin,
            ready_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            process: None,
            dir,
        };
        for attempt in 1..=START_ATTEMPTS {
            nginx.ready_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            nginx.write_main_conf(&options);
            match nginx.spawn_and_wait().await {
                Ok(()) => return nginx,
                Err(stderr) if stderr.contains("Address already in use") && attempt < START_ATTEMPTS => {}
                Err(stderr) => panic!("nginx did not start\n--- stderr ---\n{}", tail(&stderr)),
            }
        }
        unreachable!("the last start attempt either returns or panics")
    }

    /// Stops nginx (master and workers) and starts it again from the same files, returning once
    /// it answers. What cutover wrote is loaded again as it is on disk.
    pub async fn restart(&mut self) {
        self.stop();
        if let Err(stderr) = self.spawn_and_wait().await {
            panic!("nginx did not start again\n--- stderr ---\n{}", tail(&stderr));
        }
    }

    /// The prefix directory: `nginx.conf`, `nginx.pid`, `conf.d/`, `logs/`, `temp/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Directory whose `*.conf` files are included inside `http {}`.
    pub fn conf_d(&self) -> PathBuf {
        self.dir.path().join("conf.d")
    }

    /// The pattern the main configuration includes inside `http {}`.
    pub fn include_glob(&self) -> PathBuf {
        self.conf_d().join("*.conf")
    }

    /// Directory for access logs.
    pub fn logs_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("nginx.conf")
    }

    pub fn pid_path(&self) -> PathBuf {
        self.dir.path().join("nginx.pid")
    }

    /// `nginx -p DIR -c DIR/nginx.conf -t` as argv.
    pub fn test_command(&self) -> Vec<String> {
        self.command(&["-t"])
    }

    /// `nginx -p DIR -c DIR/nginx.conf -s reload` as argv.
    pub fn reload_command(&self) -> Vec<String> {
        self.command(&["-s", "reload"])
    }

    /// The master's pid.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// Everything nginx wrote to its error log (stderr) since it last started.
    pub fn stderr(&self) -> String {
        self.process
            .as_ref()
            .map(ChildProcess::stderr)
            .unwrap_or_default()
    }

    /// The main configuration as written.
    pub fn main_conf(&self) -> String {
        std::fs::read_to_string(self.conf_path()).unwrap_or_default()
    }

    fn command(&self, extra: &[&str]) -> Vec<String> {
        let mut argv = vec![
            self.bin.display().to_string(),
            "-p".to_owned(),
            format!("{}/", self.dir.path().display()),
            "-c".to_owned(),
            self.conf_path().display().to_string(),
        ];
        argv.extend(extra.iter().map(|s| (*s).to_owned()));
        argv
    }

    fn write_main_conf(&self, options: &NginxOptions) {
        let dir = self.dir.path().display();
        let shutdown_ms = options.worker_shutdown_timeout.as_millis().max(1);
        let conf = format!(
            "# Written by cutover-test-support for one test.\n\
             daemon off;\n\
             master_process on;\n\
             user root;\n\
             worker_processes 1;\n\
             worker_shutdown_timeout {shutdown_ms}ms;\n\
             pid {dir}/nginx.pid;\n\
             error_log stderr notice;\n\
             events {{\n    worker_connections 1024;\n}}\n\
             http {{\n\
             \x20   access_log off;\n\
             \x20   client_body_temp_path {dir}/temp/client_body;\n\
             \x20   proxy_temp_path {dir}/temp/proxy;\n\
             \x20   fastcgi_temp_path {dir}/temp/fastcgi;\n\
             \x20   uwsgi_temp_path {dir}/temp/uwsgi;\n\
             \x20   scgi_temp_path {dir}/temp/scgi;\n\
             \x20   server {{\n\
             \x20       listen {ready};\n\
             \x20       location = /ready {{ return 200 \"ready\\n\"; }}\n\
             \x20   }}\n\
             \x20   include {include};\n\
             }}\n",
            ready = self.ready_addr,
            include = self.include_glob().display(),
        );
        write_file(&self.conf_path(), &conf);
    }

    /// Starts the master and waits for the readiness answer; `Err(stderr)` if it exited first.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.command(&[])[1..]).stdin(Stdio::null());
        let mut process = ChildProcess::spawn("nginx", cmd);
        let client = http_client();
        let url = format!("http://{}/ready", self.ready_addr);
        let start = Instant::now();
        loop {
            if process.try_exit_status().is_some() {
                return Err(process.stderr());
            }
            let ready = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                self.process = Some(process);
                return Ok(());
            }
            if start.elapsed() >= READY_DEADLINE {
                let stderr = process.stderr();
                stop_master(&mut process);
                panic!(
                    "nginx was not ready on {} within {READY_DEADLINE:?}\n--- stderr ---\n{}",
                    self.ready_addr,
                    tail(&stderr)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Stops nginx: SIGTERM to the master (it stops its workers, then exits), leftover workers
    /// killed. [`Nginx::restart`] starts it again.
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            stop_master(&mut process);
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(p) = &self.process {
                eprintln!("nginx stderr (test failed):\n{}", tail(&p.stderr()));
            }
        }
        self.stop();
    }
}

/// Stops a master and every worker it had: the master is asked to exit (SIGTERM, a fast
/// shutdown that stops the workers first); workers still alive afterwards are killed, since a
/// worker orphaned by a killed master would keep the listening sockets open.
fn stop_master(process: &mut ChildProcess) {
    let workers = children_of(process.pid());
    if process.try_exit_status().is_none() {
        process.send_signal("TERM");
        let start = Instant::now();
        while process.try_exit_status().is_none() && start.elapsed() < STOP_DEADLINE {
            std::thread::sleep(POLL);
        }
        process.kill();
    }
    for pid in workers {
        if Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Pids of the processes whose parent is `parent`, from `/proc`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}
