//! A real PostgreSQL server for tests: Debian's `postgresql` package (installed by
//! `./scripts/test`), a fresh cluster made by `initdb` in a temporary directory, listening on a
//! free loopback port, stopped (and the directory removed) on drop.
//!
//! TCP connections need a password (SCRAM), so a test can check that the password in the URL
//! never shows up anywhere. PostgreSQL refuses to run as root: when the tests run as root
//! (CI does), the server runs as the `postgres` user the Debian package created.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{free_port, tail, write_file, ChildProcess, TempDir};

/// How long the server may take to accept connections.
const READY_DEADLINE: Duration = Duration::from_secs(60);
const START_ATTEMPTS: usize = 3;
/// The password of the `postgres` role on TCP connections.
pub const PASSWORD: &str = "s3cret-pg-pass";

/// A running PostgreSQL cluster.
#[derive(Debug)]
pub struct Postgres {
    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`
    pub url: String,
    pub port: u16,
    process: Option<ChildProcess>,
    bin_dir: PathBuf,
    data: PathBuf,
    owner: Option<(u32, u32)>,
    // Last: removed once the server is down.
    dir: TempDir,
}

/// The directory of the newest installed PostgreSQL's server binaries.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/N/bin/postgres); run ./scripts/test, \
             which installs the Debian package postgresql, or `apt-get install postgresql`"
        )
    })
}

/// The uid and gid of the `postgres` user, when running as root.
fn owner() -> Option<(u32, u32)> {
    // Our effective uid, read from /proc (no libc dependency for one number).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:"))?;
    let euid: u32 = uid_line.split_whitespace().nth(2)?.parse().ok()?;
    if euid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let entry = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .unwrap_or_else(|| panic!("running as root, and there is no `postgres` user to run PostgreSQL as; install the Debian package postgresql"));
    let mut fields = entry.split(':').skip(2);
    let uid = fields.next()?.parse().ok()?;
    let gid = fields.next()?.parse().ok()?;
    Some((uid, gid))
}

fn chown_tree(path: &Path, owner: (u32, u32)) {
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1))
        .unwrap_or_else(|e| panic!("chown {} failed: {e}", path.display()));
}

impl Postgres {
    /// Makes a cluster and starts it; returns once it accepts connections.
    pub async fn start() -> Postgres {
        let bin_dir = bin_dir();
        let dir = TempDir::new("postgres");
        let owner = owner();
        if let Some(owner) = owner {
            chown_tree(dir.path(), owner);
        }
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        write_file(&pwfile, PASSWORD);
        if let Some(owner) = owner {
            chown_tree(&pwfile, owner);
        }
        let mut initdb = Command::new(bin_dir.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--no-sync", "-E", "UTF8", "--locale=C"])
            .stdin(Stdio::null());
        if let Some((uid, gid)) = owner {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb
            .output()
            .unwrap_or_else(|e| panic!("running initdb failed: {e}"));
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            url: String::new(),
            port: 0,
            process: None,
            bin_dir,
            data,
            owner,
            dir,
        };
        pg.start_server().await;
        pg
    }

    async fn start_server(&mut self) {
        for attempt in 1..=START_ATTEMPTS {
            let port = if self.port == 0 { free_port() } else { self.port };
            let mut cmd = Command::new(self.bin_dir.join("postgres"));
            cmd.arg("-D")
                .arg(&self.data)
                .arg("-k")
                .arg(self.dir.path())
                .args(["-p", &port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
                .args(["-c", "max_connections=50", "-c", "shared_buffers=32MB"])
                .stdin(Stdio::null());
            if let Some((uid, gid)) = self.owner {
                cmd.uid(uid).gid(gid);
            }
            let mut process = ChildProcess::spawn(&format!("postgres-{port}"), cmd);
            let started = Instant::now();
            loop {
                if let Some(status) = process.try_exit_status() {
                    let stderr = process.stderr();
                    if stderr.contains("Address already in use") && attempt < START_ATTEMPTS && self.port == 0
                    {
                        break;
                    }
                    panic!(
                        "postgres exited ({status}) before it was ready\n--- stderr ---\n{}",
                        tail(&stderr)
                    );
                }
                if process.stderr().contains("ready to accept connections")
                    && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                {
                    self.port = port;
                    self.url = format!("postgres://postgres:{PASSWORD}@127.0.0.1:{port}/postgres");
                    self.process = Some(process);
                    return;
                }
                if started.elapsed() >= READY_DEADLINE {
                    panic!(
                        "postgres on port {port} was not ready within {READY_DEADLINE:?}\n--- stderr ---\n{}",
                        tail(&process.stderr())
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        unreachable!("the last start attempt either returns or panics")
    }

    /// A `psql` command on this server, as the `postgres` user over TCP with the password.
    pub fn psql(&self) -> Command {
        let mut cmd = Command::new(self.bin_dir.join("psql"));
        cmd.arg(&self.url)
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-A", "-t"])
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `sql` with psql and returns its unaligned, tuples-only output; panics on an error.
    pub fn query(&self, sql: &str) -> String {
        let out = self
            .psql()
            .args(["-c", sql])
            .output()
            .unwrap_or_else(|e| panic!("running psql failed: {e}"));
        assert!(
            out.status.success(),
            "psql -c {sql:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.process
            .as_ref()
            .map(ChildProcess::stderr)
            .unwrap_or_default()
    }

    /// Stops the server the fast way (rolls back open transactions) and starts it again on the
    /// same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.start_server().await;
    }

    fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            if process.try_exit_status().is_some() {
                return;
            }
            // SIGINT: PostgreSQL's fast shutdown, which also frees its shared memory.
            process.send_signal("INT");
            let started = Instant::now();
            while process.try_exit_status().is_none() {
                if started.elapsed() > Duration::from_secs(30) {
                    process.kill();
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
