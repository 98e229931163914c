//! Where releases run. One trait, [`Platform`], with one module per backend.

pub mod local;
pub mod logs;
pub mod static_hosts;

pub use local::LocalProcessPlatform;
pub use logs::{LogChunk, LogCursor, LogLine, LogRequest};

/// Variables of cutover's own environment that a release's processes (instances, deploy hooks)
/// inherit; everything else of cutover's, its admin token and webhook secrets among them, never
/// reaches them. A release gets what it needs through its own `env` and cutover's `CUTOVER_*`
/// and `PORT` facts.
pub const INHERITED_ENV: [&str; 11] = [
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "HOSTNAME",
];

/// Replaces `cmd`'s environment with the inherited part of cutover's ([`INHERITED_ENV`], the
/// `LC_*` locale variables, and `extra`), to which the caller then adds the release's own.
/// Every process cutover starts goes through this: instances, deploy hooks, smoke commands.
pub fn inherit_env(cmd: &mut tokio::process::Command, extra: &[&str]) {
    cmd.env_clear();
    for (name, value) in std::env::vars_os() {
        let Some(text) = name.to_str() else { continue };
        if INHERITED_ENV.contains(&text) || text.starts_with("LC_") || extra.contains(&text) {
            cmd.env(&name, value);
        }
    }
}

pub use static_hosts::{StaticHostsConfig, StaticHostsPlatform};

/// Creates `dir` and its missing parents as 0700 whatever the umask: records (pids that cutover
/// signals) and logs (which may print secrets) are for cutover's user alone.
pub(crate) fn create_private_dir_all(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use cutover_core::{ReleaseSpec, Slot};
use serde::{Deserialize, Serialize};

/// One running (or recently exited) instance of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub index: u32,
    pub addr: SocketAddr,
    pub version: String,
    pub pid: Option<u32>,
    pub log_path: Option<PathBuf>,
    /// `None` while running; otherwise how it ended ("exited with code 3", "killed by SIGKILL").
    pub exited: Option<String>,
}

/// What [`Platform::reconcile`] found and did after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReport {
    /// Instances still running and wanted: adopted.
    pub adopted: Vec<InstanceInfo>,
    /// Instances running but not wanted: stopped.
    pub stopped: Vec<InstanceInfo>,
    /// Instances recorded but no longer running: forgotten.
    pub gone: Vec<InstanceInfo>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("starting instance {index} of {version} in slot {slot}: {reason}")]
    Start {
        slot: Slot,
        version: String,
        index: u32,
        reason: String,
    },
    #[error("stopping slot {slot}: {reason}")]
    Stop { slot: Slot, reason: String },
    #[error("platform state in {path}: {reason}")]
    State { path: String, reason: String },
    /// The caller's cursor is not one this platform gave out (edited, cut, or from another
    /// version of cutover).
    #[error(
        "invalid log cursor: {reason}; pass the cursor of the previous answer unchanged, or none \
         to start again from the last lines"
    )]
    BadCursor { reason: String },
    /// The platform keeps no logs of the instances (they run elsewhere).
    #[error(
        "the platform of app {app} keeps no logs of its instances: read them where they run (the \
         hosts' own logging)"
    )]
    LogsNotKept { app: String },
    #[error("{0}")]
    Other(String),
}

/// Whether a slot's instances are ready, for platforms that know it better than a probe from
/// cutover's host can (see [`Platform::readiness`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Every instance is ready: route to these.
    Ready(Vec<InstanceInfo>),
    /// Not yet; what is still missing, for progress messages.
    Pending(String),
    /// It will not get ready without a change (a crash loop, an image that does not exist, a
    /// deadline of the platform's own passed); why, with the instances' own words.
    Failed(String),
}

/// Starts and stops the instances of a slot. Readiness is by default not the platform's
/// business: the controller probes the addresses it returns, unless the platform answers
/// [`Platform::readiness`].
#[async_trait::async_trait]
pub trait Platform: Send + Sync + std::fmt::Debug {
    /// Starts `release.instances` instances of `release` in `slot` of `app` and returns them once
    /// started (not necessarily ready). Instances of another version still in the slot are stopped
    /// first.
    async fn start(
        &self,
        app: &str,
        slot: Slot,
        release: &ReleaseSpec,
    ) -> Result<Vec<InstanceInfo>, PlatformError>;

    /// Stops every instance of `slot`: SIGTERM (or the platform's equivalent), then a hard kill
    /// after `grace`.
    async fn stop(&self, app: &str, slot: Slot, grace: Duration) -> Result<(), PlatformError>;

    /// The instances of `slot` as they are now, exited ones included until the slot is stopped.
    async fn instances(&self, app: &str, slot: Slot) -> Result<Vec<InstanceInfo>, PlatformError>;

    /// After a restart of cutover: adopts the recorded instances of `app` that still run and are
    /// wanted (`keep` lists the wanted `(slot, version)` pairs), stops the rest, forgets the dead.
    /// Leaves no orphan.
    async fn reconcile(&self, app: &str, keep: &[(Slot, String)]) -> Result<ReconcileReport, PlatformError>;

    /// The recorded instances of `app` that still run, by slot, the slot started first first.
    /// Changes nothing. A server whose store knows nothing of `app` (a new or replaced state file)
    /// adopts these rather than stopping what serves the users.
    async fn running(&self, app: &str) -> Result<Vec<(Slot, Vec<InstanceInfo>)>, PlatformError>;

    /// Whether `slot`'s instances are ready, for platforms where readiness is the platform's
    /// own verdict (Kubernetes: the Deployment's rollout status, the pods' readiness probes) and
    /// the instances' addresses may not be reachable from cutover. `None`, the default: the
    /// controller probes the addresses [`Platform::start`] returned.
    async fn readiness(&self, _app: &str, _slot: Slot) -> Option<Result<Readiness, PlatformError>> {
        None
    }

    /// The last `lines` lines of the logs of `slot`'s instances, for error messages.
    fn log_tail(&self, app: &str, slot: Slot, lines: usize) -> String;

    /// The log lines of `slot`'s instances (of its latest version when none runs): the last
    /// `request.tail_lines` of each, or with `request.after` those written since that cursor,
    /// with the cursor to ask for the next ones. See [`logs`] for the cursor's promises and the
    /// per-call caps. Reads files: call it off the async runtime's worker threads
    /// (`spawn_blocking`).
    ///
    /// The default is for platforms whose instances run elsewhere: [`PlatformError::LogsNotKept`].
    fn read_logs(&self, app: &str, _slot: Slot, _request: &LogRequest) -> Result<LogChunk, PlatformError> {
        Err(PlatformError::LogsNotKept { app: app.to_string() })
    }
}
