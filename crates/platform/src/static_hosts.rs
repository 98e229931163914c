//! Backends cutover does not start: each slot is a fixed list of addresses on hosts the team
//! deploys with its own tooling (an ssh loop, Ansible, a CI job).
//!
//! Deploying a release to a slot runs the release command as a *deploy hook*: `/bin/sh -c
//! COMMAND`, to completion, with the release's environment plus
//!
//! | variable | value |
//! | --- | --- |
//! | `CUTOVER_APP` | the app's name |
//! | `CUTOVER_SLOT` | `blue` or `green` |
//! | `CUTOVER_VERSION` | the version being deployed |
//! | `CUTOVER_BACKENDS` | the slot's addresses, comma-separated (`10.0.0.5:8080,10.0.0.6:8080`) |
//!
//! The hook must exit 0 once the new version is installed (it need not wait for readiness: the
//! controller probes every address for that, then runs the smoke checks, the canary and the
//! judge like for any platform). A non-zero exit, or a hook still running after `hook_timeout_ms`,
//! fails the rollout with the last lines of the hook's output. The optional stop hook runs when a
//! slot is stopped (after a rollback or a promotion), with the same variables; without one,
//! stopping a slot does nothing to its hosts, which keep running whatever they run, out of the
//! traffic.
//!
//! The version each slot last received is kept in `<state>/static/<app>.json`, so a restarted
//! cutover still knows what runs where. Hook output goes to `<state>/static/<app>-<slot>.log`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use cutover_core::{FieldError, ReleaseSpec, Slot};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::local::{sanitize, tail_lines};
use crate::{InstanceInfo, Platform, PlatformError, ReconcileReport};

/// `[app.hosts]`: the addresses of each slot and the hooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticHostsConfig {
    pub blue: Vec<SocketAddr>,
    pub green: Vec<SocketAddr>,
    /// Run (with the same variables as the deploy hook) when a slot is stopped.
    #[serde(default)]
    pub stop_command: Option<String>,
    /// How long a hook may run.
    #[serde(default = "default_hook_timeout_ms")]
    pub hook_timeout_ms: u64,
}

fn default_hook_timeout_ms() -> u64 {
    600_000
}

impl StaticHostsConfig {
    pub fn addrs(&self, slot: Slot) -> &[SocketAddr] {
        match slot {
            Slot::Blue => &self.blue,
            Slot::Green => &self.green,
        }
    }

    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for slot in Slot::ALL {
            let addrs = self.addrs(slot);
            if addrs.is_empty() {
                errors.push(FieldError::new(
                    format!("{prefix}{slot}"),
                    "is empty; list the address (host:port) of every backend of this slot",
                ));
            }
            for (i, addr) in addrs.iter().enumerate() {
                if addrs[..i].contains(addr) {
                    errors.push(FieldError::new(
                        format!("{prefix}{slot}[{i}]"),
                        format!("{addr} is listed twice; list each backend once"),
                    ));
                }
                if self.addrs(slot.other()).contains(addr) {
                    errors.push(FieldError::new(
                        format!("{prefix}{slot}[{i}]"),
                        format!(
                            "{addr} is in both slots; blue and green need separate backends so one \
                             can run the new version while the other serves"
                        ),
                    ));
                }
                if addr.port() == 0 {
                    errors.push(FieldError::new(
                        format!("{prefix}{slot}[{i}]"),
                        format!("{addr} has port 0; give the port the backend listens on"),
                    ));
                }
            }
        }
        if self.hook_timeout_ms == 0 {
            errors.push(FieldError::new(
                format!("{prefix}hook_timeout_ms"),
                "must be greater than 0",
            ));
        }
        if self.stop_command.as_deref().is_some_and(|c| c.trim().is_empty()) {
            errors.push(FieldError::new(
                format!("{prefix}stop_command"),
                "is empty; remove it or give a command",
            ));
        }
        errors
    }
}

/// The static platform of one app.
#[derive(Debug)]
pub struct StaticHostsPlatform {
    app: String,
    config: StaticHostsConfig,
    dir: PathBuf,
    /// Version last deployed to each slot, mirrored in `<dir>/<app>.json`.
    versions: Mutex<BTreeMap<Slot, String>>,
}

impl StaticHostsPlatform {
    /// `state_dir` holds the record of deployed versions and the hooks' logs.
    pub fn new(app: &str, config: StaticHostsConfig, state_dir: &Path) -> Result<Self, PlatformError> {
        let dir = state_dir.join("static");
        crate::create_private_dir_all(&dir).map_err(|e| PlatformError::State {
            path: dir.display().to_string(),
            reason: format!("cannot create it: {e}; check that the state directory is writable"),
        })?;
        let platform = StaticHostsPlatform {
            app: app.to_string(),
            config,
            dir,
            versions: Mutex::new(BTreeMap::new()),
        };
        let versions = platform.read_versions()?;
        *platform.lock() = versions;
        Ok(platform)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Slot, String>> {
        self.versions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join(format!("{}.json", sanitize(&self.app)))
    }

    fn log_path(&self, slot: Slot) -> PathBuf {
        self.dir.join(format!("{}-{slot}.log", sanitize(&self.app)))
    }

    fn read_versions(&self) -> Result<BTreeMap<Slot, String>, PlatformError> {
        let path = self.record_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| PlatformError::State {
                path: path.display().to_string(),
                reason: format!("unreadable ({e}); delete it and deploy again"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(PlatformError::State {
                path: path.display().to_string(),
                reason: e.to_string(),
            }),
        }
    }

    fn write_versions(&self, versions: &BTreeMap<Slot, String>) -> Result<(), PlatformError> {
        let path = self.record_path();
        let state_error = |e: std::io::Error| PlatformError::State {
            path: path.display().to_string(),
            reason: format!("cannot write it: {e}"),
        };
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(versions).map_err(|e| PlatformError::Other(e.to_string()))?;
        std::fs::write(&tmp, bytes).map_err(state_error)?;
        std::fs::rename(&tmp, &path).map_err(state_error)
    }

    /// Records what runs in `slot` without running a hook: for a controller that takes over a
    /// fleet's app and learns from the shared state what another host deployed.
    pub fn remember(&self, slot: Slot, version: Option<&str>) -> Result<(), PlatformError> {
        self.set_version(slot, version)
    }

    fn set_version(&self, slot: Slot, version: Option<&str>) -> Result<(), PlatformError> {
        let mut versions = self.lock();
        match version {
            Some(v) => versions.insert(slot, v.to_string()),
            None => versions.remove(&slot),
        };
        self.write_versions(&versions)
    }

    /// Runs a hook to completion, its output appended to the slot's log.
    async fn run_hook(
        &self,
        what: &str,
        command: &str,
        slot: Slot,
        version: &str,
        env: &BTreeMap<String, String>,
        workdir: Option<&str>,
    ) -> Result<(), String> {
        let log_path = self.log_path(slot);
        let mut log = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&log_path)
            .await
            .map_err(|e| format!("cannot write the hook log {}: {e}", log_path.display()))?;
        let banner = format!(
            "=== cutover: {what} hook for app {}, slot {slot}, version {version}: {command}\n",
            self.app
        );
        let _ = log.write_all(banner.as_bytes()).await;
        let backends = self
            .config
            .addrs(slot)
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = tokio::process::Command::new("/bin/sh");
        // A deploy hook runs the operator's own tools (ssh, Ansible): it keeps their agent.
        crate::inherit_env(&mut cmd, &["SSH_AUTH_SOCK", "SSH_AGENT_PID"]);
        cmd.arg("-c")
            .arg(command)
            .envs(env)
            .env("CUTOVER_APP", &self.app)
            .env("CUTOVER_SLOT", slot.as_str())
            .env("CUTOVER_VERSION", version)
            .env("CUTOVER_BACKENDS", backends)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(dir) = workdir {
            cmd.current_dir(dir);
        }
        let timeout = Duration::from_millis(self.config.hook_timeout_ms);
        let output = match tokio::time::timeout(timeout, cmd.output()).await {
            Err(_) => {
                return Err(format!(
                "the {what} hook `{command}` did not finish within {} ms (hook_timeout_ms); it was killed",
                timeout.as_millis()
            ))
            }
            Ok(Err(e)) => return Err(format!("the {what} hook `{command}` could not start: {e}")),
            Ok(Ok(output)) => output,
        };
        let _ = log.write_all(&output.stdout).await;
        let _ = log.write_all(&output.stderr).await;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "the {what} hook `{command}` failed ({}); its output is in {}",
                output.status,
                log_path.display()
            ))
        }
    }

    fn instances_of(&self, slot: Slot) -> Vec<InstanceInfo> {
        let Some(version) = self.lock().get(&slot).cloned() else {
            return Vec::new();
        };
        self.config
            .addrs(slot)
            .iter()
            .enumerate()
            .map(|(i, addr)| InstanceInfo {
                index: u32::try_from(i).unwrap_or(u32::MAX),
                addr: *addr,
                version: version.clone(),
                pid: None,
                log_path: Some(self.log_path(slot)),
                exited: None,
            })
            .collect()
    }

    fn check_app(&self, app: &str) -> Result<(), PlatformError> {
        if app == self.app {
            Ok(())
        } else {
            Err(PlatformError::Other(format!(
                "the static platform of app {} was asked about app {app} (a bug in cutover)",
                self.app
            )))
        }
    }
}

#[async_trait]
impl Platform for StaticHostsPlatform {
    async fn start(
        &self,
        app: &str,
        slot: Slot,
        release: &ReleaseSpec,
    ) -> Result<Vec<InstanceInfo>, PlatformError> {
        self.check_app(app)?;
        // Whatever ran there before is being replaced: until the hook succeeds the slot runs
        // nothing cutover knows of.
        self.set_version(slot, None)?;
        self.run_hook(
            "deploy",
            &release.command,
            slot,
            &release.version,
            &release.env,
            release.workdir.as_deref(),
        )
        .await
        .map_err(|reason| PlatformError::Start {
            slot,
            version: release.version.clone(),
            index: 0,
            reason,
        })?;
        self.set_version(slot, Some(&release.version))?;
        Ok(self.instances_of(slot))
    }

    async fn stop(&self, app: &str, slot: Slot, _grace: Duration) -> Result<(), PlatformError> {
        self.check_app(app)?;
        let version = self.lock().get(&slot).cloned().unwrap_or_default();
        if let Some(command) = &self.config.stop_command {
            self.run_hook("stop", command, slot, &version, &BTreeMap::new(), None)
                .await
                .map_err(|reason| PlatformError::Stop { slot, reason })?;
        }
        self.set_version(slot, None)
    }

    async fn instances(&self, app: &str, slot: Slot) -> Result<Vec<InstanceInfo>, PlatformError> {
        self.check_app(app)?;
        Ok(self.instances_of(slot))
    }

    async fn reconcile(&self, app: &str, keep: &[(Slot, String)]) -> Result<ReconcileReport, PlatformError> {
        self.check_app(app)?;
        let mut report = ReconcileReport::default();
        for slot in Slot::ALL {
            let instances = self.instances_of(slot);
            let wanted = keep
                .iter()
                .any(|(s, v)| *s == slot && instances.first().is_some_and(|i| &i.version == v));
            if wanted {
                report.adopted.extend(instances);
            } else if !instances.is_empty() {
                // Hosts are not ours to stop unasked: the slot is only forgotten (and its stop
                // hook, if any, told).
                self.stop(app, slot, Duration::ZERO).await?;
                report.stopped.extend(instances);
            }
        }
        Ok(report)
    }

    async fn running(&self, app: &str) -> Result<Vec<(Slot, Vec<InstanceInfo>)>, PlatformError> {
        self.check_app(app)?;
        // Which slot was set up first is not recorded for hosts; blue, then green.
        Ok(Slot::ALL
            .into_iter()
            .map(|slot| (slot, self.instances_of(slot)))
            .filter(|(_, instances)| !instances.is_empty())
            .collect())
    }

    fn log_tail(&self, _app: &str, slot: Slot, lines: usize) -> String {
        match tail_lines(&self.log_path(slot), lines) {
            Ok(tail) => tail.into_iter().map(|l| format!("{l}\n")).collect(),
            Err(e) => format!("(no hook log: {e})\n"),
        }
    }
}
