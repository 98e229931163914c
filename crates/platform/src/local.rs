//! The local process platform: every instance is a shell command run on this machine.
//!
//! Layout of the state directory:
//!
//! ```text
//! <state_dir>/instances/<app>/<slot>.json          what runs in a slot (pid, pgid, port, start time, ...)
//! <state_dir>/logs/<app>/<slot>-<version>-<index>.log   stdout and stderr of one instance, appended
//! ```
//!
//! The instance records are the durable truth that lets a restarted cutover find the processes
//! its previous incarnation started (see [`Platform::reconcile`]): they are written before
//! [`Platform::start`] returns and replaced atomically, so a crash at any point leaves either the
//! old or the new record, never half of one.
//!
//! Each instance runs in its own process group so that stopping it reaches everything the shell
//! command spawned, not just the shell.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use cutover_core::release::MAX_SECRET_BYTES;
use cutover_core::{ReleaseSpec, SecretLookup, Slot};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::logs::{LogChunk, LogRequest, LogSource};
use crate::{InstanceInfo, Platform, PlatformError, ReconcileReport};

/// How long `start` and `reconcile` give instances they replace or no longer want to exit after
/// SIGTERM, unless changed with [`LocalProcessPlatform::with_stop_grace`].
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);

/// How long a process group may take to disappear after SIGKILL before `stop` reports failure.
/// SIGKILL cannot be caught, so only a process stuck in the kernel (e.g. on a dead NFS mount)
/// outlives this.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How often stopping re-checks whether the signalled process groups are gone.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// `log_tail` reads at most this much from the end of each log file, so a huge log with very
/// long lines cannot make an error message expensive.
const LOG_TAIL_MAX_BYTES: u64 = 1024 * 1024;

/// Runs each instance of a release as a local process group.
///
/// Dropping the platform leaves the instances running: a controller that crashes must not take
/// the service down with it. A new platform over the same state directory finds them again with
/// [`Platform::reconcile`].
pub struct LocalProcessPlatform {
    state_dir: PathBuf,
    stop_grace: Duration,
    /// Serialises start/stop/reconcile per slot: a stop racing a start on the same slot would
    /// otherwise leave processes that no record mentions.
    op_locks: Mutex<HashMap<SlotKey, Arc<tokio::sync::Mutex<()>>>>,
    /// What runs in each slot as far as this process knows. Kept apart from `op_locks` so that
    /// `instances` answers while a long stop holds the slot's operation lock.
    slots: Mutex<HashMap<SlotKey, Vec<Tracked>>>,
    /// The log files of the last instances of each slot. Not cleared by `stop`, because the
    /// logs of a slot that just failed are what an error message wants to quote.
    last_logs: Mutex<HashMap<SlotKey, Vec<LogFile>>>,
}

impl fmt::Debug for LocalProcessPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalProcessPlatform")
            .field("state_dir", &self.state_dir)
            .field("stop_grace", &self.stop_grace)
            .finish_non_exhaustive()
    }
}

type SlotKey = (String, Slot);

/// The log file of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LogFile {
    index: u32,
    version: String,
    path: PathBuf,
}

/// One instance as recorded on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct InstanceRecord {
    index: u32,
    version: String,
    pid: u32,
    pgid: u32,
    port: u16,
    addr: SocketAddr,
    /// Field 22 of `/proc/<pid>/stat` (clock ticks after boot): a PID that the kernel handed to
    /// another process after ours died has a different start time.
    start_time: u64,
    log_path: PathBuf,
}

/// The content of `<state_dir>/instances/<app>/<slot>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SlotRecord {
    app: String,
    slot: Slot,
    /// `/proc/sys/kernel/random/boot_id` when the record was written. Start times count from
    /// boot, so after a reboot they could match a new process by chance; a different boot id
    /// means every recorded process is gone.
    boot_id: Option<String>,
    instances: Vec<InstanceRecord>,
}

/// An instance this platform knows about, and how it can tell whether it still runs.
#[derive(Debug, Clone)]
struct Tracked {
    rec: InstanceRecord,
    origin: Origin,
}

#[derive(Debug, Clone)]
enum Origin {
    /// Started by this process: a reaper task owns the `Child` and fills the cell with how it
    /// ended.
    Child(Arc<OnceLock<String>>),
    /// Found in a record: started by an earlier cutover process, so only `/proc` can tell.
    Adopted,
    /// Found in a record written before the machine last booted: certainly gone, and its PIDs
    /// now belong to unrelated processes that must never be signalled.
    PreviousBoot,
}

impl Tracked {
    /// `None` while running, otherwise how it ended.
    fn exited(&self) -> Option<String> {
        match &self.origin {
            Origin::Child(exit) => exit.get().cloned(),
            Origin::Adopted => {
                if is_running(self.rec.pid, self.rec.start_time) {
                    None
                } else {
                    Some(
                        "no longer running (exit status unknown: it was started by an earlier \
                         cutover process)"
                            .to_string(),
                    )
                }
            }
            Origin::PreviousBoot => {
                Some("no longer running: the machine rebooted since it was started".to_string())
            }
        }
    }

    fn info(&self, exited: Option<String>) -> InstanceInfo {
        InstanceInfo {
            index: self.rec.index,
            addr: self.rec.addr,
            version: self.rec.version.clone(),
            pid: Some(self.rec.pid),
            log_path: Some(self.rec.log_path.clone()),
            exited,
        }
    }

    /// Sends `signal` to the instance's process group. `Ok(false)` when the group no longer
    /// exists.
    fn signal_group(&self, signal: Signal) -> Result<bool, Errno> {
        if !self.group_may_be_ours() {
            return Ok(false);
        }
        match killpg(Pid::from_raw(pgid_to_raw(self.rec.pgid)), signal) {
            Ok(()) => Ok(true),
            Err(Errno::ESRCH) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether any process of the instance's group still runs. Zombies do not count: a
    /// grandchild reparented to an init that does not reap would otherwise keep the group
    /// "alive" forever.
    fn group_alive(&self) -> bool {
        if !self.group_may_be_ours() {
            return false;
        }
        match killpg(Pid::from_raw(pgid_to_raw(self.rec.pgid)), None) {
            Err(Errno::ESRCH) => false,
            Ok(()) => group_has_live_member(self.rec.pgid),
            // EPERM: the group exists but we may not signal it. Say alive, so stopping tries and
            // reports the permission error instead of silently forgetting the instance.
            Err(_) => true,
        }
    }

    /// Linux does not hand out a PID while it is still in use as a process group id, so if the
    /// group leader's PID now belongs to a process with another start time, our group has
    /// emptied and the number is someone else's. Not covered: our whole group died, an unrelated
    /// process got the number, made it a group id, and exited leaving members behind. `/proc`
    /// alone cannot tell that group from ours, and the sequence is too unlikely to matter.
    fn group_may_be_ours(&self) -> bool {
        // 0 would mean our own group and 1 is init's: only a damaged record holds them.
        if self.rec.pgid <= 1 {
            return false;
        }
        match self.origin {
            Origin::PreviousBoot => false,
            Origin::Child(_) | Origin::Adopted => match proc_stat(self.rec.pgid) {
                Some(stat) => self.rec.pgid != self.rec.pid || stat.start_time == self.rec.start_time,
                None => true,
            },
        }
    }
}

impl LocalProcessPlatform {
    /// A platform keeping its records and logs under `state_dir`, created if missing. A
    /// relative `state_dir` is resolved against the current directory now, so a later change
    /// of directory does not move the records.
    pub fn new(state_dir: PathBuf) -> Result<Self, PlatformError> {
        let state_dir = std::path::absolute(&state_dir).map_err(|e| PlatformError::State {
            path: state_dir.display().to_string(),
            reason: format!("cannot resolve it to an absolute path: {e}; pass an absolute path"),
        })?;
        for sub in ["instances", "logs"] {
            create_dir(&state_dir.join(sub))?;
        }
        Ok(LocalProcessPlatform {
            state_dir,
            stop_grace: DEFAULT_STOP_GRACE,
            op_locks: Mutex::new(HashMap::new()),
            slots: Mutex::new(HashMap::new()),
            last_logs: Mutex::new(HashMap::new()),
        })
    }

    /// How long instances replaced by `start` or unwanted by `reconcile` get between SIGTERM
    /// and SIGKILL (default [`DEFAULT_STOP_GRACE`]). `stop` takes its grace as an argument.
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Where the record of `slot`'s instances lives.
    pub fn record_path(&self, app: &str, slot: Slot) -> PathBuf {
        self.state_dir
            .join("instances")
            .join(sanitize(app))
            .join(format!("{}.json", slot.as_str()))
    }

    /// Where instance `index` of `version` in `slot` writes its stdout and stderr.
    pub fn log_path(&self, app: &str, slot: Slot, version: &str, index: u32) -> PathBuf {
        self.log_dir(app)
            .join(format!("{}-{}-{index}.log", slot.as_str(), sanitize(version)))
    }

    fn log_dir(&self, app: &str) -> PathBuf {
        self.state_dir.join("logs").join(sanitize(app))
    }

    fn op_lock(&self, app: &str, slot: Slot) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.op_locks)
            .entry((app.to_string(), slot))
            .or_default()
            .clone()
    }

    /// The slot's instances, read from its record the first time this process looks at it.
    fn tracked(&self, app: &str, slot: Slot) -> Result<Vec<Tracked>, PlatformError> {
        let key = (app.to_string(), slot);
        // Held across the read so two first lookups cannot both load and one overwrite what a
        // start recorded in between.
        let mut slots = lock(&self.slots);
        if let Some(tracked) = slots.get(&key) {
            return Ok(tracked.clone());
        }
        let tracked = self.read_record(app, slot)?;
        if !tracked.is_empty() {
            lock(&self.last_logs).insert(key.clone(), log_list(&tracked));
        }
        slots.insert(key, tracked.clone());
        Ok(tracked)
    }

    fn set_tracked(&self, app: &str, slot: Slot, tracked: Vec<Tracked>) {
        lock(&self.slots).insert((app.to_string(), slot), tracked);
    }

    fn read_record(&self, app: &str, slot: Slot) -> Result<Vec<Tracked>, PlatformError> {
        let path = self.record_path(app, slot);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(state_error(
                    &path,
                    format!("cannot read the instance record: {e}; check its permissions"),
                ))
            }
        };
        let record: SlotRecord = serde_json::from_str(&text).map_err(|e| {
            state_error(
                &path,
                format!(
                    "the instance record is not valid: {e}; stop the processes it lists by hand \
                     and delete the file"
                ),
            )
        })?;
        let origin = match (&record.boot_id, boot_id()) {
            (Some(then), Some(now)) if *then != now => Origin::PreviousBoot,
            _ => Origin::Adopted,
        };
        Ok(record
            .instances
            .into_iter()
            .map(|rec| Tracked {
                rec,
                origin: origin.clone(),
            })
            .collect())
    }

    /// Replaces the slot's record atomically, or removes it when nothing runs there.
    fn write_record(&self, app: &str, slot: Slot, tracked: &[Tracked]) -> Result<(), PlatformError> {
        let path = self.record_path(app, slot);
        if tracked.is_empty() {
            return match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(state_error(
                    &path,
                    format!("cannot remove the instance record: {e}; check the directory's permissions"),
                )),
            };
        }
        let record = SlotRecord {
            app: app.to_string(),
            slot,
            boot_id: boot_id(),
            instances: tracked.iter().map(|t| t.rec.clone()).collect(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(|e| {
            state_error(
                &path,
                format!("cannot encode the instance record: {e} (a bug in cutover)"),
            )
        })?;
        let dir = path.parent().ok_or_else(|| {
            state_error(
                &path,
                "the record path has no parent directory (a bug in cutover)",
            )
        })?;
        create_dir(dir)?;
        let tmp = path.with_extension("json.tmp");
        let io = |what: &str, e: std::io::Error| {
            state_error(
                &tmp,
                format!("cannot {what} the new instance record: {e}; check free space and permissions"),
            )
        };
        let mut file = File::create(&tmp).map_err(|e| io("create", e))?;
        file.write_all(&json).map_err(|e| io("write", e))?;
        // Without the sync a crash right after the rename could leave an empty record on some
        // file systems, losing track of running processes.
        file.sync_all().map_err(|e| io("sync", e))?;
        fs::rename(&tmp, &path).map_err(|e| io("rename into place", e))?;
        // Best effort: makes the rename itself durable; failing here loses nothing but durability.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Stops everything the slot's record lists; the caller holds the slot's operation lock.
    async fn stop_locked(&self, app: &str, slot: Slot, grace: Duration) -> Result<(), PlatformError> {
        let tracked = self.tracked(app, slot)?;
        if !tracked.is_empty() {
            tracing::info!(app, %slot, instances = tracked.len(), ?grace, "stopping slot");
        }
        terminate(&tracked, grace)
            .await
            .map_err(|reason| PlatformError::Stop {
                slot,
                reason: format!("app {app}: {reason}"),
            })?;
        self.write_record(app, slot, &[])?;
        self.set_tracked(app, slot, Vec::new());
        Ok(())
    }

    /// Starts instances `0..release.instances`, recording each as soon as it runs so that a crash
    /// halfway leaves no unrecorded process. The caller holds the slot's operation lock.
    async fn start_locked(
        &self,
        app: &str,
        slot: Slot,
        release: &ReleaseSpec,
        workdir: Option<&Path>,
    ) -> Result<Vec<Tracked>, PlatformError> {
        let start_error = |index: u32, reason: String| PlatformError::Start {
            slot,
            version: release.version.clone(),
            index,
            reason,
        };
        let log_dir = self.log_dir(app);
        crate::create_private_dir_all(&log_dir).map_err(|e| {
            start_error(
                0,
                format!(
                    "cannot create the log directory {}: {e}; check that the state directory is writable",
                    log_dir.display()
                ),
            )
        })?;
        // All ports are reserved before any is released, so the instances of one start never get
        // the same port. Between dropping a listener and the instance binding the port another
        // process could take it; the instance then fails to bind and shows as exited, which the
        // controller's readiness probe reports. Passing the bound socket down would close that
        // race but needs every app to accept an inherited socket.
        let mut listeners = Vec::new();
        for index in 0..release.instances {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| {
                let port = l.local_addr()?.port();
                Ok((l, port))
            });
            listeners.push(
                listener
                    .map_err(|e| start_error(index, format!("cannot find a free port on 127.0.0.1: {e}")))?,
            );
        }
        let tokens: Vec<String> = (0..release.instances).map(instance_token).collect();
        self.write_pending(app, slot, &tokens).map_err(|e| {
            start_error(
                0,
                format!("cannot write {}: {e}", self.pending_path(app, slot).display()),
            )
        })?;
        let mut started: Vec<Tracked> = Vec::new();
        for (index, (listener, port)) in (0..).zip(listeners) {
            drop(listener);
            let log_path = self.log_path(app, slot, &release.version, index);
            let token = &tokens[index as usize];
            let spawned = spawn_instance(app, slot, release, index, port, token, workdir, &log_path);
            let recorded = match spawned {
                Ok(tracked) => {
                    started.push(tracked);
                    self.set_tracked(app, slot, started.clone());
                    lock(&self.last_logs).insert((app.to_string(), slot), log_list(&started));
                    self.write_record(app, slot, &started).err()
                }
                Err(reason) => Some(start_error(index, reason)),
            };
            if let Some(error) = recorded {
                let _ = fs::remove_file(self.pending_path(app, slot));
                // Half a release is not a release: take down what did start, so the slot is
                // empty rather than under-provisioned.
                return Err(match self.stop_locked(app, slot, self.stop_grace).await {
                    Ok(()) => error,
                    Err(stop_error) => PlatformError::Other(format!(
                        "{error}; stopping the instances already started failed too: {stop_error}"
                    )),
                });
            }
        }
        let _ = fs::remove_file(self.pending_path(app, slot));
        Ok(started)
    }

    fn pending_path(&self, app: &str, slot: Slot) -> PathBuf {
        self.state_dir
            .join("pending")
            .join(format!("{}-{slot}.tokens", sanitize(app)))
    }

    /// Tokens of instances about to start, written before any is spawned: a crash between a
    /// spawn and its record leaves the token, and the next `reconcile` finds the process by it.
    fn write_pending(&self, app: &str, slot: Slot, tokens: &[String]) -> std::io::Result<()> {
        let path = self.pending_path(app, slot);
        if let Some(dir) = path.parent() {
            crate::create_private_dir_all(dir)?;
        }
        fs::write(&path, tokens.join("\n"))
    }

    /// Kills the processes started under a pending token but never recorded (cutover died in
    /// between), so nothing runs that no record knows of.
    ///
    /// A process caught inside `execve` (the instance's shell exec-ing the server, say) briefly
    /// shows an empty environment; such processes are read again until their environment is
    /// back, so an orphan is not missed for having been scanned at the wrong microsecond.
    async fn kill_unrecorded_pending(&self, app: &str, slot: Slot, recorded: &[u32]) {
        let path = self.pending_path(app, slot);
        let Ok(text) = fs::read_to_string(&path) else {
            return;
        };
        let tokens: Vec<String> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(|t| format!("{INSTANCE_TOKEN_VAR}={t}"))
            .collect();
        let carries_token = |environ: &[u8]| {
            environ
                .split(|b| *b == 0)
                .any(|var| tokens.iter().any(|t| var == t.as_bytes()))
        };
        // Every process not recorded is checked; those caught mid-`execve` are checked again.
        let mut unsettled: Vec<u32> = fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
            .filter(|pid| !recorded.contains(pid))
            .collect();
        let deadline = Instant::now() + EXEC_SETTLE_WAIT;
        loop {
            unsettled.retain(|&pid| match read_environ(pid) {
                ProcessEnviron::Vars(environ) => {
                    if carries_token(&environ) {
                        tracing::warn!(app, %slot, pid, "stopping an instance started just before a crash and never recorded");
                        kill_unrecorded(pid);
                    }
                    false
                }
                ProcessEnviron::Unsettled => true,
                ProcessEnviron::Gone => false,
            });
            if unsettled.is_empty() || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !unsettled.is_empty() {
            tracing::warn!(app, %slot, pids = ?unsettled, "processes whose environment stayed unreadable were not checked for an unrecorded instance's token");
        }
        let _ = fs::remove_file(&path);
    }
}

/// Reads a `/proc` file with a single `read(2)`. The kernel serves one such call from one memory
/// image, whereas `fs::read` reads in pieces, and a process that `execve`s between two pieces
/// yields the start of its old environment and nothing more.
fn read_in_one_call(path: &str) -> std::io::Result<Vec<u8>> {
    const MAX: usize = 16 << 20;
    let mut capacity = 64 << 10;
    loop {
        let mut buf = vec![0u8; capacity];
        let read = File::open(path)?.read(&mut buf)?;
        if read < capacity || capacity >= MAX {
            buf.truncate(read);
            return Ok(buf);
        }
        capacity *= 4;
    }
}

/// How long `reconcile` re-reads a process caught mid-`execve` before giving up on it.
const EXEC_SETTLE_WAIT: Duration = Duration::from_secs(2);

/// A process's environment as `/proc/<pid>/environ` shows it.
enum ProcessEnviron {
    Vars(Vec<u8>),
    /// Empty for a user process that is alive: it is between `execve` tearing down the old image
    /// and the kernel writing the new one's environment.
    Unsettled,
    /// Gone, a zombie, a kernel thread, or unreadable: it cannot be an instance to stop.
    Gone,
}

fn read_environ(pid: u32) -> ProcessEnviron {
    let Ok(environ) = read_in_one_call(&format!("/proc/{pid}/environ")) else {
        return ProcessEnviron::Gone;
    };
    if !environ.is_empty() {
        return ProcessEnviron::Vars(environ);
    }
    // Empty either because the program runs with no environment, or because `execve` got in
    // the way: the read began on the old image after it was torn down, or the new image's
    // environment is not written yet. The kernel writes the new command line and environment
    // together, so once the command line shows, a fresh read of the environment is the truth.
    // Kernel threads and zombies have neither, for good.
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) if cmdline.is_empty() => {}
        Ok(_) => {
            return match read_in_one_call(&format!("/proc/{pid}/environ")) {
                Ok(environ) => ProcessEnviron::Vars(environ),
                Err(_) => ProcessEnviron::Gone,
            }
        }
        Err(_) => return ProcessEnviron::Gone,
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return ProcessEnviron::Gone;
    };
    // Fields after the parenthesised command name: state, ppid, pgrp, session, tty_nr, tpgid,
    // flags (proc(5)).
    let Some((_, after_name)) = stat.rsplit_once(')') else {
        return ProcessEnviron::Gone;
    };
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    const PF_KTHREAD: u64 = 0x0020_0000;
    let state = fields.first().copied().unwrap_or("Z");
    let flags = fields
        .get(6)
        .and_then(|f| f.parse::<u64>().ok())
        .unwrap_or(PF_KTHREAD);
    if matches!(state, "Z" | "X" | "x") || flags & PF_KTHREAD != 0 {
        ProcessEnviron::Gone
    } else {
        ProcessEnviron::Unsettled
    }
}

/// Environment variable carrying an instance's start token.
const INSTANCE_TOKEN_VAR: &str = "CUTOVER_INSTANCE_TOKEN";

fn instance_token(index: u32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}-{index}", std::process::id())
}

#[async_trait::async_trait]
impl Platform for LocalProcessPlatform {
    /// Checks the release before touching the slot, so a release that cannot start (empty
    /// command, missing working directory) leaves the current instances running.
    async fn start(
        &self,
        app: &str,
        slot: Slot,
        release: &ReleaseSpec,
    ) -> Result<Vec<InstanceInfo>, PlatformError> {
        let start_error = |reason: String| PlatformError::Start {
            slot,
            version: release.version.clone(),
            index: 0,
            reason,
        };
        if release.command.trim().is_empty() {
            return Err(start_error(
                "the release's command is empty; set `command` to the shell command that runs one \
                 instance, with {port} where the port goes"
                    .to_string(),
            ));
        }
        if release.instances == 0 {
            return Err(start_error(
                "the release asks for 0 instances; set `instances` to 1 or more".to_string(),
            ));
        }
        let workdir = release
            .workdir
            .as_deref()
            .map(resolve_workdir)
            .transpose()
            .map_err(start_error)?;

        let op = self.op_lock(app, slot);
        let _guard = op.lock().await;
        self.stop_locked(app, slot, self.stop_grace).await?;
        tracing::info!(app, %slot, version = release.version, instances = release.instances, "starting");
        let started = self.start_locked(app, slot, release, workdir.as_deref()).await?;
        Ok(started.iter().map(|t| t.info(t.exited())).collect())
    }

    async fn stop(&self, app: &str, slot: Slot, grace: Duration) -> Result<(), PlatformError> {
        let op = self.op_lock(app, slot);
        let _guard = op.lock().await;
        self.stop_locked(app, slot, grace).await
    }

    async fn instances(&self, app: &str, slot: Slot) -> Result<Vec<InstanceInfo>, PlatformError> {
        Ok(self
            .tracked(app, slot)?
            .iter()
            .map(|t| t.info(t.exited()))
            .collect())
    }

    async fn running(&self, app: &str) -> Result<Vec<(Slot, Vec<InstanceInfo>)>, PlatformError> {
        let mut found = Vec::new();
        for slot in Slot::ALL {
            let live: Vec<Tracked> = self
                .tracked(app, slot)?
                .into_iter()
                .filter(|t| t.exited().is_none())
                .collect();
            if let Some(first_start) = live.iter().map(|t| t.rec.start_time).min() {
                found.push((
                    first_start,
                    slot,
                    live.iter().map(|t| t.info(None)).collect::<Vec<_>>(),
                ));
            }
        }
        // Start times count clock ticks since boot, and records of an earlier boot never run.
        found.sort_by_key(|(first_start, _, _)| *first_start);
        Ok(found
            .into_iter()
            .map(|(_, slot, instances)| (slot, instances))
            .collect())
    }

    /// Instances whose leader died but whose process group still has live members (a command
    /// that backgrounded something and exited) are reported as gone, and their stragglers are
    /// stopped too, so nothing is left running unrecorded.
    async fn reconcile(&self, app: &str, keep: &[(Slot, String)]) -> Result<ReconcileReport, PlatformError> {
        let mut guards = Vec::new();
        for slot in Slot::ALL {
            guards.push(self.op_lock(app, slot).lock_owned().await);
        }
        for slot in Slot::ALL {
            let recorded: Vec<u32> = self.tracked(app, slot)?.iter().map(|t| t.rec.pid).collect();
            self.kill_unrecorded_pending(app, slot, &recorded).await;
        }
        let mut report = ReconcileReport::default();
        let mut to_stop: Vec<(Slot, Tracked)> = Vec::new();
        let mut stopped: Vec<Tracked> = Vec::new();
        let mut adopted: HashMap<Slot, Vec<Tracked>> = HashMap::new();
        for slot in Slot::ALL {
            for t in self.tracked(app, slot)? {
                let wanted = keep.iter().any(|(s, v)| *s == slot && *v == t.rec.version);
                match t.exited() {
                    None if wanted => {
                        report.adopted.push(t.info(None));
                        adopted.entry(slot).or_default().push(t);
                    }
                    None => {
                        to_stop.push((slot, t.clone()));
                        stopped.push(t);
                    }
                    Some(how) => {
                        report.gone.push(t.info(Some(how)));
                        if t.group_alive() {
                            to_stop.push((slot, t));
                        }
                    }
                }
            }
        }
        if !to_stop.is_empty() {
            tracing::info!(
                app,
                instances = to_stop.len(),
                "reconcile: stopping unwanted instances"
            );
            let targets: Vec<Tracked> = to_stop.iter().map(|(_, t)| t.clone()).collect();
            if let Err(reason) = terminate(&targets, self.stop_grace).await {
                // The records stay as they are, so a retry finds the same processes.
                let slot = to_stop.first().map_or(Slot::Blue, |(s, _)| *s);
                return Err(PlatformError::Stop {
                    slot,
                    reason: format!("app {app}, reconciling after a restart: {reason}"),
                });
            }
        }
        for t in &stopped {
            report.stopped.push(t.info(Some(
                "stopped by reconcile: its slot and version are not among the wanted ones".to_string(),
            )));
        }
        for slot in Slot::ALL {
            let kept = adopted.remove(&slot).unwrap_or_default();
            self.write_record(app, slot, &kept)?;
            self.set_tracked(app, slot, kept);
        }
        drop(guards);
        Ok(report)
    }

    /// The last `lines` lines of each instance's log (not `lines` in total: without timestamps
    /// the instances' lines cannot be interleaved faithfully), each prefixed by `[instance N] `,
    /// instance by instance. Unreadable logs are mentioned in place of their lines.
    fn log_tail(&self, app: &str, slot: Slot, lines: usize) -> String {
        let key = (app.to_string(), slot);
        let logs = lock(&self.last_logs).get(&key).cloned();
        let logs = match logs {
            Some(logs) => logs,
            None => match self.read_record(app, slot) {
                Ok(tracked) => log_list(&tracked),
                Err(e) => return format!("(no logs: {e})\n"),
            },
        };
        let mut out = String::new();
        for LogFile { index, path, .. } in logs {
            match tail_lines(&path, lines) {
                Ok(tail) => {
                    // The file is appended to by every run of this version in this slot: only
                    // the lines of the last run (after its banner) are about the failure at hand.
                    let start = tail.iter().rposition(|l| l.starts_with(RUN_BANNER)).unwrap_or(0);
                    for line in &tail[start..] {
                        out.push_str(&format!("[instance {index}] {line}\n"));
                    }
                }
                Err(e) => out.push_str(&format!(
                    "[instance {index}] (cannot read its log {}: {e})\n",
                    path.display()
                )),
            }
        }
        out
    }

    /// The logs of the slot's instances while it has some (running or exited); once it was
    /// stopped, those of its last instances; after a restart of cutover with the slot stopped,
    /// the files of the version it ran last, found by their names.
    fn read_logs(&self, app: &str, slot: Slot, request: &LogRequest) -> Result<LogChunk, PlatformError> {
        let tracked = self.tracked(app, slot)?;
        let sources: Vec<LogSource> = if tracked.is_empty() {
            let last = lock(&self.last_logs).get(&(app.to_string(), slot)).cloned();
            let files = match last {
                Some(files) => files,
                None => {
                    let dir = self.log_dir(app);
                    latest_logs_on_disk(&dir, slot).map_err(|e| {
                        state_error(
                            &dir,
                            format!("cannot list the log directory: {e}; check its permissions"),
                        )
                    })?
                }
            };
            files
                .into_iter()
                .map(|f| LogSource {
                    instance: f.index,
                    version: f.version,
                    path: f.path,
                    finished: true,
                })
                .collect()
        } else {
            tracked
                .iter()
                .map(|t| LogSource {
                    instance: t.rec.index,
                    version: t.rec.version.clone(),
                    path: t.rec.log_path.clone(),
                    finished: t.exited().is_some(),
                })
                .collect()
        };
        let mut chunk = crate::logs::read_logs(&sources, request);
        if sources.is_empty() {
            chunk.notes.push(format!(
                "slot {slot} of app {app} has no logs: no instance of it ever ran under this state directory"
            ));
        }
        Ok(chunk)
    }
}

/// How the line that starts each run in an instance's log begins.
const RUN_BANNER: &str = "=== cutover:";

/// Runs one instance and starts its reaper. On error, the reason (for `PlatformError::Start`).
#[allow(clippy::too_many_arguments)]
fn spawn_instance(
    app: &str,
    slot: Slot,
    release: &ReleaseSpec,
    index: u32,
    port: u16,
    token: &str,
    workdir: Option<&Path>,
    log_path: &Path,
) -> Result<Tracked, String> {
    // Secret references are read now, at each start, and their values reach this child only.
    // The controller resolves them before it starts a release; this covers any other caller.
    let release = &release
        .resolve_secrets(&ProcessSecrets)
        .map_err(|e| e.to_string())?;
    let command = release.command.replace("{port}", &port.to_string());
    let log_error = |e: std::io::Error| {
        format!(
            "cannot write its log file {}: {e}; check that the state directory is writable",
            log_path.display()
        )
    };
    let mut stdout = OpenOptions::new()
        .create(true)
        .append(true)
        // Instance logs may print secrets: the owner's alone, whatever the umask.
        .mode(0o600)
        .open(log_path)
        .map_err(log_error)?;
    // Logs are appended across runs; the banner shows where this run begins.
    writeln!(
        stdout,
        "{RUN_BANNER} app {app}, slot {slot}, version {}, instance {index}, port {port}: {command}",
        release.version
    )
    .map_err(log_error)?;
    let stderr = stdout.try_clone().map_err(log_error)?;

    let mut cmd = tokio::process::Command::new("/bin/sh");
    crate::inherit_env(&mut cmd, &[]);
    cmd.arg("-c")
        .arg(&command)
        // cutover's variables are set last so a release's env cannot give the app a PORT other
        // than the one the proxy will send traffic to.
        .envs(&release.env)
        .env("CUTOVER_APP", app)
        .env("CUTOVER_SLOT", slot.as_str())
        .env("CUTOVER_VERSION", &release.version)
        .env("PORT", port.to_string())
        // Finds the process again should cutover die between starting it and recording it.
        .env(INSTANCE_TOKEN_VAR, token)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        // Explicit because instances must outlive this process (see the type's doc).
        .kill_on_drop(false);
    if let Some(dir) = workdir {
        cmd.current_dir(dir);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run `/bin/sh -c {command:?}`: {e}"))?;
    let Some(pid) = child.id() else {
        return Err("the process was reaped before its pid could be read (a bug in cutover)".to_string());
    };
    // The child cannot have been reaped yet (nothing waited for it), so its /proc entry exists
    // even if it already exited.
    let Some(stat) = proc_stat(pid) else {
        kill_unrecorded(pid);
        return Err(format!(
            "cannot read /proc/{pid}/stat to record its start time; the local process platform \
             needs Linux with /proc mounted"
        ));
    };
    let exit = Arc::new(OnceLock::new());
    let what = format!(
        "app {app}, slot {slot}, version {}, instance {index} (pid {pid})",
        release.version
    );
    tokio::spawn(reap(child, exit.clone(), what));
    Ok(Tracked {
        rec: InstanceRecord {
            index,
            version: release.version.clone(),
            pid,
            pgid: u32::try_from(stat.pgrp).unwrap_or(pid),
            port,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            start_time: stat.start_time,
            log_path: log_path.to_path_buf(),
        },
        origin: Origin::Child(exit),
    })
}

/// Secret references read from this process: its files and its environment. Reads at most
/// [`MAX_SECRET_BYTES`] + 1 bytes of a regular file (never a FIFO or a device), and logs nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessSecrets;

impl SecretLookup for ProcessSecrets {
    fn read_file(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        // Checked before opening: opening a FIFO would block until someone writes to it.
        if !fs::metadata(path)?.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let mut bytes = Vec::new();
        File::open(path)?
            .take(MAX_SECRET_BYTES as u64 + 1)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn var(&self, name: &str) -> Option<std::ffi::OsString> {
        std::env::var_os(name)
    }
}

/// Kills a just-spawned group that could not be recorded, so it is not left unmanaged; its
/// reaping is left to tokio, which reaps dropped children in the background.
fn kill_unrecorded(pid: u32) {
    let _ = killpg(Pid::from_raw(pgid_to_raw(pid)), Signal::SIGKILL);
}

/// Waits for the child so it does not linger as a zombie, and records how it ended.
async fn reap(mut child: tokio::process::Child, exit: Arc<OnceLock<String>>, what: String) {
    let how = match child.wait().await {
        Ok(status) => describe_exit(status),
        Err(e) => format!("exit status unknown: waiting for it failed: {e}"),
    };
    tracing::info!(instance = what, "instance {how}");
    let _ = exit.set(how);
}

fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    if let Some(signal) = status.signal() {
        let name =
            Signal::try_from(signal).map_or_else(|_| format!("signal {signal}"), |s| s.as_str().to_string());
        let core = if status.core_dumped() {
            " (core dumped)"
        } else {
            ""
        };
        return format!("killed by {name}{core}");
    }
    format!("ended: {status}")
}

/// SIGTERM to every group, up to `grace` for them to go, SIGKILL to the rest. On failure, the
/// reason naming the groups that would not die.
async fn terminate(tracked: &[Tracked], grace: Duration) -> Result<(), String> {
    let mut errors = Vec::new();
    let mut pending: Vec<&Tracked> = Vec::new();
    for t in tracked {
        match t.signal_group(Signal::SIGTERM) {
            Ok(true) => pending.push(t),
            Ok(false) => {}
            Err(e) => errors.push(signal_error(t, Signal::SIGTERM, e)),
        }
    }
    wait_groups_gone(&mut pending, grace).await;
    for t in &pending {
        tracing::warn!(
            pid = t.rec.pid,
            version = t.rec.version,
            ?grace,
            "instance ignored SIGTERM, killing"
        );
        if let Err(e) = t.signal_group(Signal::SIGKILL) {
            errors.push(signal_error(t, Signal::SIGKILL, e));
        }
    }
    wait_groups_gone(&mut pending, KILL_WAIT).await;
    for t in pending {
        errors.push(format!(
            "process group {} (instance {} of {}) still has live processes {KILL_WAIT:?} after \
             SIGKILL; they are probably stuck in the kernel (see `ps -g {}`)",
            t.rec.pgid, t.rec.index, t.rec.version, t.rec.pgid
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn signal_error(t: &Tracked, signal: Signal, e: Errno) -> String {
    format!(
        "cannot send {signal} to process group {} (instance {} of {}): {e}; if another user owns \
         it, stop it as that user",
        t.rec.pgid, t.rec.index, t.rec.version
    )
}

/// Polls until every group in `pending` is gone or `deadline` passes; leaves the survivors.
async fn wait_groups_gone(pending: &mut Vec<&Tracked>, deadline: Duration) {
    let start = Instant::now();
    loop {
        pending.retain(|t| t.group_alive());
        let remaining = deadline.saturating_sub(start.elapsed());
        if pending.is_empty() || remaining.is_zero() {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL.min(remaining)).await;
    }
}

/// What cutover needs from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProcStat {
    state: char,
    pgrp: i32,
    start_time: u64,
}

fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses `pid (comm) state ppid pgrp ... starttime ...`. The command name may contain spaces
/// and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<ProcStat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 of proc(5), so field n is fields[n - 3].
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The process `pid` exists, is the one started at `start_time`, and has not died (a zombie
/// has died; it just has not been reaped).
fn is_running(pid: u32, start_time: u64) -> bool {
    proc_stat(pid).is_some_and(|s| s.start_time == start_time && !is_dead_state(s.state))
}

fn is_dead_state(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

fn group_has_live_member(pgid: u32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        // Cannot tell: report alive, so stopping escalates instead of assuming success.
        return true;
    };
    let pgid = pgid_to_raw(pgid);
    entries.flatten().any(|entry| {
        entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
            .and_then(proc_stat)
            .is_some_and(|s| s.pgrp == pgid && !is_dead_state(s.state))
    })
}

/// PIDs fit in `pid_t` (the kernel caps them at 2^22). A damaged record's larger number must not
/// wrap to 0 or below, which `killpg` would take as our own group; no process has `i32::MAX`.
fn pgid_to_raw(pgid: u32) -> i32 {
    i32::try_from(pgid).unwrap_or(i32::MAX)
}

fn boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// The release's working directory as an absolute path, or why it cannot be used.
fn resolve_workdir(workdir: &str) -> Result<PathBuf, String> {
    let path = std::path::absolute(workdir)
        .map_err(|e| format!("cannot resolve the working directory {workdir:?}: {e}"))?;
    if path.is_dir() {
        return Ok(path);
    }
    let relative = if Path::new(workdir).is_relative() {
        " (relative paths are resolved against the directory cutover was started in)"
    } else {
        ""
    };
    Err(format!(
        "the working directory {} does not exist or is not a directory{relative}; create it or fix \
         the release's `workdir`",
        path.display()
    ))
}

fn log_list(tracked: &[Tracked]) -> Vec<LogFile> {
    tracked
        .iter()
        .map(|t| LogFile {
            index: t.rec.index,
            version: t.rec.version.clone(),
            path: t.rec.log_path.clone(),
        })
        .collect()
}

/// The log files in `dir` of the version of `slot` written to last, by instance: what a slot
/// that neither runs nor ran since cutover started left behind. The version is read from the
/// file names, so it is the sanitised one ([`sanitize`]).
fn latest_logs_on_disk(dir: &Path, slot: Slot) -> std::io::Result<Vec<LogFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let prefix = format!("{}-", slot.as_str());
    let mut found: Vec<(std::time::SystemTime, LogFile)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        // `<slot>-<version>-<index>.log`; the version may hold `-`, the index never does.
        let Some((version, index)) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.rsplit_once('-'))
        else {
            continue;
        };
        let Ok(index) = index.parse::<u32>() else {
            continue;
        };
        let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
            continue;
        };
        found.push((
            modified,
            LogFile {
                index,
                version: version.to_string(),
                path: entry.path(),
            },
        ));
    }
    let Some(latest) = found
        .iter()
        .max_by_key(|(modified, _)| *modified)
        .map(|(_, f)| f.version.clone())
    else {
        return Ok(Vec::new());
    };
    let mut files: Vec<LogFile> = found
        .into_iter()
        .map(|(_, f)| f)
        .filter(|f| f.version == latest)
        .collect();
    files.sort_by_key(|f| f.index);
    Ok(files)
}

/// The last `n` lines of the file, reading only its end.
pub(crate) fn tail_lines(path: &Path, n: usize) -> std::io::Result<Vec<String>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let start = len.saturating_sub(LOG_TAIL_MAX_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if start > 0 && !lines.is_empty() {
        // The first line read is most likely cut in the middle.
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines[skip..].iter().map(|l| (*l).to_string()).collect())
}

/// Makes `name` safe as one path component: anything but ASCII letters, digits, `.`, `-` and
/// `_` becomes `_`, and the names `.` and `..` are defused.
pub(crate) fn sanitize(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() || clean.chars().all(|c| c == '.') {
        format!("_{clean}")
    } else {
        clean
    }
}

fn create_dir(path: &Path) -> Result<(), PlatformError> {
    crate::create_private_dir_all(path).map_err(|e| {
        state_error(
            path,
            format!("cannot create the directory: {e}; check the permissions of the state directory"),
        )
    })
}

fn state_error(path: &Path, reason: impl Into<String>) -> PlatformError {
    PlatformError::State {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Our critical sections never panic halfway through an update, so a poisoned lock holds
/// consistent data.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_with_awkward_command_names() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 12345678 100 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                pgrp: 4242,
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S 0"), None);
    }

    #[test]
    fn reads_our_own_start_time() {
        let stat = proc_stat(std::process::id()).unwrap();
        assert!(is_running(std::process::id(), stat.start_time));
        // The same PID with another start time is a different process: never ours.
        assert!(!is_running(std::process::id(), stat.start_time + 1));
    }

    #[test]
    fn adopted_instance_with_reused_pid_counts_as_exited_and_is_never_signalled() {
        let me = std::process::id();
        let stat = proc_stat(me).unwrap();
        let tracked = Tracked {
            rec: InstanceRecord {
                index: 0,
                version: "v1".into(),
                pid: me,
                pgid: me,
                port: 1,
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
                start_time: stat.start_time + 1,
                log_path: PathBuf::from("/nonexistent"),
            },
            origin: Origin::Adopted,
        };
        assert!(tracked.exited().is_some());
        assert!(!tracked.group_alive());
        // Returns without signalling because the start time does not match; SIGKILL would end
        // this test run if it did.
        assert_eq!(tracked.signal_group(Signal::SIGKILL), Ok(false));
    }

    #[test]
    fn sanitizes_names_for_paths() {
        assert_eq!(sanitize("v1.2.3-rc_1"), "v1.2.3-rc_1");
        assert_eq!(sanitize("a/b c"), "a_b_c");
        assert_eq!(sanitize(".."), "_..");
        assert_eq!(sanitize(""), "_");
    }

    #[test]
    fn describes_exit_statuses() {
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exited with code 3");
        assert_eq!(describe_exit(ExitStatus::from_raw(9)), "killed by SIGKILL");
    }

    #[test]
    fn tails_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.log");
        fs::write(&path, "one\ntwo\nthree\n").unwrap();
        assert_eq!(tail_lines(&path, 2).unwrap(), vec!["two", "three"]);
        assert_eq!(tail_lines(&path, 10).unwrap(), vec!["one", "two", "three"]);
        assert!(tail_lines(&path, 0).unwrap().is_empty());
    }

    #[test]
    fn missing_workdir_is_explained() {
        let err = resolve_workdir("no/such/dir/here").unwrap_err();
        assert!(err.contains("no/such/dir/here"), "{err}");
        assert!(err.contains("relative"), "{err}");
        assert!(resolve_workdir("/").is_ok());
    }
}
