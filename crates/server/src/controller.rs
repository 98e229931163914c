//! The controller of one managed app: it feeds the pure rollout engine its inputs (time, platform
//! results, metric windows, commands), persists every transition *before* carrying out its actions,
//! and carries them out through the platform and the router.
//!
//! Windows are measured through one [`MetricSource`]: the router's own counters
//! ([`CounterSource`], which for the built-in proxy includes latency histograms) or Prometheus
//! when configured. Either way the controller starts a window with
//! [`MetricSource::start_window`] whenever the routes change and after every measurement, so a
//! window never spans two route tables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cutover_core::event::{AdoptedSlot, EventDetail};
use cutover_core::judge::{ExternalCheck, LatencyPair, Outcome, SlotWindow, WindowStats};
use cutover_core::rollout::{self, Action, AppState, Command, Input, Phase};
use cutover_core::{
    Clock, EnvMap, FieldError, Redacted, ReleaseSpec, RolloutPolicy, SecretRef, Slot, Timestamp,
    ValidationErrors,
};
use cutover_monitoring::{CheckOutcome, CustomMetric, MetricSource, SlotMeasurement, WindowQuery};
use cutover_platform::local::ProcessSecrets;
use cutover_platform::{Platform, Readiness};
use cutover_router::{CounterSource, Router};
use cutover_store::{Store, StoreError, StoredEvent};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::checks::{self, ReadinessConfig, VerifyConfig};
use crate::freeze::{self, FreezeWindow};
use crate::gates::{Confirmation, Gates};

/// What a managed app runs and how its rollouts go; the `[app.*]` tables of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagedConfig {
    /// Defaults for every release; `deploy` names the version and may override the rest.
    pub release: ReleaseTemplate,
    pub readiness: ReadinessConfig,
    pub rollout: RolloutPolicy,
    pub verify: VerifyConfig,
    pub freeze: Vec<FreezeWindow>,
    /// Judge from Prometheus instead of the built-in proxy metrics.
    pub prometheus: Option<cutover_monitoring::PrometheusConfig>,
    /// Time an instance gets between SIGTERM and SIGKILL.
    pub stop_grace_ms: u64,
    /// Expand/contract schema migrations: the expand half runs before each release starts.
    pub migrations: Option<crate::migrations::MigrationsConfig>,
    /// The platform runs images (Kubernetes), so a release needs no command.
    pub runs_images: bool,
}

impl Default for ManagedConfig {
    fn default() -> Self {
        ManagedConfig {
            release: ReleaseTemplate::default(),
            readiness: ReadinessConfig::default(),
            rollout: RolloutPolicy::default(),
            verify: VerifyConfig::default(),
            freeze: Vec::new(),
            prometheus: None,
            stop_grace_ms: 10_000,
            migrations: None,
            runs_images: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReleaseTemplate {
    /// Shell command with `{port}`; `{version}` is replaced by the version being deployed.
    pub command: String,
    pub instances: u32,
    pub env: EnvMap,
    /// The directory instances start in; `{version}` is replaced by the version deployed, so
    /// that blue and green, running at once, each run their own checkout (`releases/{version}`).
    /// Relative to the directory `cutover serve` is started in. A deploy of a version whose
    /// directory does not exist is refused.
    pub workdir: Option<String>,
}

impl Default for ReleaseTemplate {
    fn default() -> Self {
        ReleaseTemplate {
            command: String::new(),
            instances: 1,
            env: EnvMap::new(),
            workdir: None,
        }
    }
}

impl ManagedConfig {
    pub fn validate(&self, prefix: &str) -> Vec<FieldError> {
        let mut errors = self.rollout.validate(&format!("{prefix}rollout."));
        errors.extend(self.verify.validate(&format!("{prefix}verify.")));
        for (i, w) in self.freeze.iter().enumerate() {
            errors.extend(w.validate(&format!("{prefix}freeze[{i}].")));
        }
        if let Some(migrations) = &self.migrations {
            errors.extend(migrations.validate(&format!("{prefix}migrations.")));
        }
        if !(1..=64).contains(&self.release.instances) {
            errors.push(FieldError::new(
                format!("{prefix}release.instances"),
                "must be 1 to 64",
            ));
        }
        if !self.readiness.path.starts_with('/') {
            errors.push(FieldError::new(
                format!("{prefix}readiness.path"),
                "must start with '/'",
            ));
        }
        if self.readiness.interval_ms == 0 || self.readiness.timeout_ms == 0 {
            errors.push(FieldError::new(
                format!("{prefix}readiness"),
                "interval_ms and timeout_ms must be greater than 0",
            ));
        }
        errors
    }
}

/// Whether `version` may be deployed: what release names are made of (git SHAs, SemVer with
/// pre-release and build, tags such as `release-2026.12.01`), 1 to 128 ASCII letters, digits and
/// `. _ - + @ :`. The release command runs through `/bin/sh -c` with `{version}` put in as it is,
/// so none of these characters may mean anything to a shell; a leading `-` would read as an option
/// to the commands it is passed to, and a leading `.` makes the `.` and `..` of directory names
/// (`{version}` names workdirs and migration directories) and hidden files.
fn valid_version(version: &str) -> bool {
    (1..=128).contains(&version.len())
        && !version.starts_with(['-', '.'])
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+' | b'@' | b':'))
}

/// A request to deploy a version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    pub version: String,
    #[serde(default)]
    pub command: Option<String>,
    /// Variables by value. Stored, passed to the instances, never shown: outputs show
    /// `<redacted>` for each value.
    #[serde(default)]
    pub env: EnvMap,
    /// Variables by reference, `file:/absolute/path` or `env:VARIABLE` (of the server's
    /// environment), read each time instances start; only the reference is stored and shown.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    #[serde(default)]
    pub instances: Option<u32>,
    /// Deploy even inside a freeze window; recorded in the event log.
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{0}")]
    Rejected(String),
    #[error("deploys of app {app} are frozen now by {window}; deploy later or pass --force (recorded in the event log)")]
    Frozen { app: String, window: String },
    #[error("invalid deploy request: {0}")]
    Invalid(ValidationErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("platform: {0}")]
    Platform(#[from] cutover_platform::PlatformError),
}

#[derive(Debug)]
pub struct Controller {
    name: String,
    config: ManagedConfig,
    clock: Arc<dyn Clock>,
    store: Arc<dyn Store>,
    platform: Arc<dyn Platform>,
    router: Arc<dyn Router>,
    /// Where windows are measured: the router's counters, or Prometheus.
    source: Arc<dyn MetricSource>,
    /// Custom metrics judged besides errors and latency (from the Prometheus configuration).
    custom: Vec<CustomMetric>,
    state: tokio::sync::Mutex<AppState>,
    events: broadcast::Sender<StoredEvent>,
    /// When the current analysis window started.
    window_start: Mutex<Timestamp>,
    /// After a failed reconcile of the router: (failures in a row, earliest next attempt), so a
    /// router that is down is not hammered (and the log not flooded) on every tick.
    reconcile_backoff: Mutex<(u32, Timestamp)>,
    /// The state store's failures in a row (a full disk fails every tick): logged once as an
    /// error, then at most once a minute.
    store_failures: Mutex<FailureLog>,
    /// Set while a restart of the live slot runs, so ticks that find it dead do not start more.
    restarting: std::sync::atomic::AtomicBool,
    /// Bumped by every provision of a slot, so a delayed stop never hits a newer release.
    slot_epochs: [AtomicU64; 2],
    shutdown: CancellationToken,
    tick: Duration,
    gates: Arc<dyn Gates>,
    /// The last rollout whose automatic contract was tried.
    contract_tried: Mutex<u64>,
    /// Held by a contract migration for its whole run, and tried by a deploy: no rollout starts
    /// while a contract removes what older versions used, and status stays answerable.
    schema_gate: tokio::sync::Mutex<()>,
}

/// What a contract run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractDone {
    /// A sentence for people.
    pub summary: String,
    /// Migration halves applied (0: nothing was pending).
    pub applied: usize,
}

pub use crate::api::{SlotView, StatusView};

/// Everything a controller needs from the process around it.
#[derive(Debug, Clone)]
pub struct Deps {
    pub clock: Arc<dyn Clock>,
    pub store: Arc<dyn Store>,
    pub platform: Arc<dyn Platform>,
    pub tick: Duration,
    pub shutdown: CancellationToken,
    pub gates: Arc<dyn Gates>,
}

impl Controller {
    /// Loads the app's persisted state (or starts fresh), re-adopts or cleans up its instances,
    /// probes the slots, and resumes whatever was in progress. Returns with the control loop
    /// running.
    pub async fn start(
        name: &str,
        config: ManagedConfig,
        router: Arc<dyn Router>,
        deps: Deps,
    ) -> Result<Arc<Self>, ControllerError> {
        let stored = deps.store.load(name)?;
        let mut state = stored.clone().unwrap_or_else(|| AppState::new(name));
        let mut adopted_event = None;
        if stored.is_none() {
            // A store that knows nothing of the app (a first start, or a state file that was
            // replaced) must never stop what an earlier run started: that is the live service.
            let found = deps.platform.running(name).await?;
            if !found.is_empty() {
                adopted_event = Some(adopt_unknown(
                    &mut state,
                    &found,
                    &config.release,
                    deps.clock.now(),
                ));
            }
        }
        let keep: Vec<(Slot, String)> = Slot::ALL
            .iter()
            .filter_map(|s| {
                let slot = state.slot(*s);
                slot.is_running()
                    .then(|| (*s, slot.version().unwrap_or_default().to_string()))
            })
            .collect();
        let report = deps.platform.reconcile(name, &keep).await?;
        if !report.stopped.is_empty() || !report.gone.is_empty() || !report.adopted.is_empty() {
            tracing::info!(
                app = name,
                adopted = report.adopted.len(),
                stopped = report.stopped.len(),
                gone = report.gone.len(),
                "reconciled instances left by an earlier run"
            );
        }
        if let Some(event) = adopted_event {
            tracing::warn!(app = name, "{}", event.message);
            deps.store.commit(&state, &[event])?;
        }
        // Built once: a Prometheus source keeps its connections.
        let (source, custom): (Arc<dyn MetricSource>, Vec<CustomMetric>) = match &config.prometheus {
            Some(c) => (
                Arc::new(
                    cutover_monitoring::PrometheusSource::new(c.clone())
                        .map_err(|e| ControllerError::Rejected(format!("app {name}: prometheus: {e}")))?,
                ),
                c.custom.clone(),
            ),
            None => (Arc::new(CounterSource::new(Arc::clone(&router))), Vec::new()),
        };
        // A subscriber that falls behind reads what it missed from the store (see the event
        // stream), so the buffer need not be deep; tokio allocates all of it up front, per app.
        let (events, _) = broadcast::channel(64);
        let controller = Arc::new(Controller {
            name: name.to_string(),
            config,
            clock: deps.clock,
            store: deps.store,
            platform: deps.platform,
            router,
            source,
            custom,
            state: tokio::sync::Mutex::new(state.clone()),
            events,
            window_start: Mutex::new(Timestamp(0)),
            reconcile_backoff: Mutex::new((0, Timestamp(0))),
            store_failures: Mutex::new(FailureLog::default()),
            slot_epochs: [AtomicU64::new(0), AtomicU64::new(0)],
            restarting: std::sync::atomic::AtomicBool::new(false),
            shutdown: deps.shutdown,
            tick: deps.tick,
            gates: deps.gates,
            contract_tried: Mutex::new(0),
            schema_gate: tokio::sync::Mutex::new(()),
        });
        let (target_ready, live_ready) = match state.active_rollout() {
            Some(r) => (
                controller.slot_ready(&state, r.target).await,
                controller.slot_ready(&state, r.target.other()).await,
            ),
            None => (false, controller.slot_ready(&state, state.live).await),
        };
        let target_gone = match state.active_rollout() {
            Some(r) if !target_ready => controller.slot_gone(r.target).await,
            _ => false,
        };
        controller
            .apply(Input::Recovered {
                target_ready,
                live_ready,
                target_gone,
            })
            .await
            .or_else(|e| match e {
                ControllerError::Rejected(_) => Ok(()),
                e => Err(e),
            })?;
        if !live_ready || target_gone {
            controller.restart_live_if_gone().await;
        }
        tokio::spawn(Arc::clone(&controller).run());
        Ok(controller)
    }

    /// After a host crash took cutover and the live instances down together: starts the live
    /// slot's recorded release again, waits for it to be ready, and routes it, with nobody
    /// involved. Retries with a growing pause until it works, the slot is provisioned for
    /// something else, or the server stops. Live instances that still run (but are not ready)
    /// are left alone: restarting cannot be assumed to help them, and they may recover.
    async fn restart_live_if_gone(self: &Arc<Self>) {
        let (live, release) = {
            let state = self.state.lock().await;
            let live = state.live;
            // The target of a rollout is the rollout's to provision, unless it is promoted: then
            // it is the live slot like any other.
            if state
                .active_rollout()
                .is_some_and(|r| r.target == live && !matches!(r.phase, Phase::Promoted { .. }))
            {
                return;
            }
            let Some(release) = state.slot(live).release.clone() else {
                return;
            };
            if self.restarting.swap(true, Ordering::SeqCst) {
                return;
            }
            (live, release)
        };
        if !self.slot_gone(live).await {
            self.restarting.store(false, Ordering::SeqCst);
            return;
        }
        tracing::warn!(app = %self.name, slot = %live, version = %release.version,
            "the live slot's instances are gone (host crash?): starting its release again");
        let epoch = self.slot_epochs[live.index()].fetch_add(1, Ordering::SeqCst) + 1;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // Cleared however the task ends, so a later death of the slot is handled again.
            struct Done(Arc<Controller>);
            impl Drop for Done {
                fn drop(&mut self) {
                    self.0.restarting.store(false, Ordering::SeqCst);
                }
            }
            let _done = Done(Arc::clone(&this));
            let mut pause = Duration::from_secs(1);
            loop {
                let deadline = this
                    .clock
                    .now()
                    .plus_ms(this.config.rollout.readiness_deadline_ms);
                let result = this.start_and_wait(live, &release, deadline).await;
                if this.slot_epochs[live.index()].load(Ordering::SeqCst) != epoch {
                    return;
                }
                let version = release.version.clone();
                match result {
                    Ok(backends) => {
                        if let Err(e) = this
                            .apply(Input::Restarted {
                                slot: live,
                                version,
                                backends,
                            })
                            .await
                        {
                            tracing::info!(app = %this.name, slot = %live, reason = %e, "restarted instances no longer wanted");
                            let grace = Duration::from_millis(this.config.stop_grace_ms);
                            let _ = this.platform.stop(&this.name, live, grace).await;
                        }
                        return;
                    }
                    Err(reason) => {
                        this.feed(Input::RestartFailed {
                            slot: live,
                            version,
                            reason,
                        })
                        .await;
                    }
                }
                tokio::select! {
                    _ = this.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        });
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configured release command (before `{version}` and `{port}` are filled in).
    pub fn release_command(&self) -> &str {
        &self.config.release.command
    }

    /// Stops the instances of `slot` at once, whatever the state says; for shutting a demo or a
    /// test down. Routes are not changed.
    pub async fn stop_slot(&self, slot: Slot) -> Result<(), ControllerError> {
        self.slot_epochs[slot.index()].fetch_add(1, Ordering::SeqCst);
        let grace = Duration::from_millis(self.config.stop_grace_ms);
        Ok(self.platform.stop(&self.name, slot, grace).await?)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StoredEvent> {
        self.events.subscribe()
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Where the app's instances run; the admin API reads their logs through it.
    pub fn platform(&self) -> &Arc<dyn Platform> {
        &self.platform
    }

    /// The router's cumulative counters of both slots, `None` when it could not be read.
    pub async fn counters(&self) -> Option<[cutover_router::SlotCounters; 2]> {
        self.router.counters().await.ok()
    }

    pub async fn state(&self) -> AppState {
        self.state.lock().await.clone()
    }

    pub async fn deploy(self: &Arc<Self>, request: DeployRequest) -> Result<u64, ControllerError> {
        let release = self.release_for(&request)?;
        let _gate = self.schema_gate.try_lock().map_err(|_| {
            ControllerError::Rejected(format!(
                "a contract migration of app {} is running; deploy again once it finished (`cutover migrate status {}`)",
                self.name, self.name
            ))
        })?;
        let now = self.clock.now();
        let frozen = freeze::active_freeze(&self.config.freeze, now);
        if let (Some(window), false) = (&frozen, request.force) {
            return Err(ControllerError::Frozen {
                app: self.name.clone(),
                window: window.clone(),
            });
        }
        self.gates
            .before_rollout(&self.name, &release)
            .await
            .map_err(|reason| {
                ControllerError::Rejected(format!("deploy of app {} refused: {reason}", self.name))
            })?;
        let mut policy = self.config.rollout.clone();
        policy.gate_steps = self.gates.has_step_gates();
        policy.confirm_promotion = self.gates.has_confirmation();
        let input = Input::Deploy {
            release,
            policy,
            forced: frozen.is_some(),
            migrate: self.config.migrations.is_some(),
        };
        let id = self.state.lock().await.next_rollout_id;
        self.apply(input).await?;
        Ok(id)
    }

    fn release_for(&self, request: &DeployRequest) -> Result<ReleaseSpec, ControllerError> {
        let template = &self.config.release;
        let mut errors = Vec::new();
        let version = request.version.trim();
        if !valid_version(version) {
            errors.push(FieldError::new(
                "version",
                format!(
                    "{version:?} is not a version: give 1 to 128 ASCII letters, digits and . _ - + @ : \
                     (a git SHA, 1.4.0-rc.1+build.5, release-2026.12.01), not starting with - or ."
                ),
            ));
        }
        let command = request
            .command
            .clone()
            .unwrap_or_else(|| template.command.clone());
        if command.trim().is_empty() && !self.config.runs_images {
            errors.push(FieldError::new(
                "command",
                format!("app {} has no release command in its configuration ([app.release] command); pass one with --cmd", self.name),
            ));
        }
        let instances = request.instances.unwrap_or(template.instances);
        if !(1..=64).contains(&instances) {
            errors.push(FieldError::new(
                "instances",
                format!("{instances} must be 1 to 64"),
            ));
        }
        let mut release = ReleaseSpec {
            version: version.to_string(),
            command: command.replace("{version}", version),
            env: template.env.clone(),
            secrets: BTreeMap::new(),
            workdir: template.workdir.as_ref().map(|w| w.replace("{version}", version)),
            instances,
        };
        // Blue and green run at once, so each version has its own directory: one that is not
        // there yet is refused now, not found missing by a failed rollout.
        if let (Some(template_dir), Some(dir)) = (&template.workdir, &release.workdir) {
            if template_dir.contains("{version}") && !errors.iter().any(|e| e.field == "version") {
                let path = std::path::absolute(dir).unwrap_or_else(|_| std::path::PathBuf::from(dir));
                if !path.is_dir() {
                    errors.push(FieldError::new(
                        "workdir",
                        format!(
                            "{} (from [app.release] workdir = {template_dir:?}) does not exist: put version {version}'s \
                             code there before deploying it, e.g. `git worktree add {dir} {version}` in the server's \
                             working directory",
                            path.display()
                        ),
                    ));
                }
            }
        }
        errors.extend(release.override_env(&request.env, &request.secrets));
        if self.config.runs_images && !release.secrets.is_empty() {
            errors.push(FieldError::new(
                "secrets",
                format!(
                    "app {} runs on Kubernetes, where cutover would have to write the values of {} into the Deployment for anyone who can read it; reference a Kubernetes Secret from the manifest instead (env valueFrom.secretKeyRef, or envFrom)",
                    self.name,
                    release.secrets.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        // References are checked now so a missing file or variable is a 400, not a failed
        // rollout; they are read again when the instances start.
        errors.extend(release.check_env(&ProcessSecrets));
        ValidationErrors::check(errors).map_err(ControllerError::Invalid)?;
        Ok(release)
    }

    pub async fn command(self: &Arc<Self>, command: Command) -> Result<(), ControllerError> {
        self.command_for(command, None).await
    }

    /// [`Controller::command`], refused unless the current rollout is `expected` (when given):
    /// a person who confirmed "promote v6" must not promote the v7 that replaced it meanwhile.
    /// Checked under the state lock the command runs under, so nothing slips in between.
    pub async fn command_for(
        self: &Arc<Self>,
        command: Command,
        expected: Option<u64>,
    ) -> Result<(), ControllerError> {
        let migrating = self
            .state
            .lock()
            .await
            .active_rollout()
            .filter(|r| matches!(r.phase, Phase::Migrating))
            .map(|r| r.id);
        Box::pin(self.apply_checked(Input::Command(command), expected)).await?;
        if let (Some(rollout_id), Some(config)) = (migrating, self.config.migrations.clone()) {
            // The rollout ended while its expand ran: stop the expand too, rather than let it
            // finish unannounced in the name of a rollout that is over.
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let message = match crate::migrations::cancel_expand(&config, &this.name, rollout_id).await {
                    Ok(sentence) => sentence,
                    Err(e) => {
                        format!("cancelling the running expand failed: {e}; it runs to its end and is kept")
                    }
                };
                this.record_event(Some(rollout_id), message, EventDetail::MigrationCancelled)
                    .await;
            });
        }
        Ok(())
    }

    pub async fn status(&self) -> Result<StatusView, ControllerError> {
        let state = self.state.lock().await.clone();
        let counters = self.router.counters().await;
        let routes = rollout::route_table(&state);
        let slots = Slot::ALL
            .iter()
            .map(|s| SlotView {
                slot: *s,
                version: state.slot(*s).version().map(str::to_string),
                backends: state.slot(*s).backends.clone(),
                metrics: counters.as_ref().ok().map(|c| c[s.index()].summary()),
            })
            .collect();
        let rollout_id = state.rollout.as_ref().map(|r| r.id);
        let recent_decisions = match rollout_id {
            Some(id) => {
                let mut events = self.store.events(&self.name, Some(id), 0, 100_000)?;
                events.retain(|e| matches!(e.event.detail, EventDetail::Decision { .. }));
                let skip = events.len().saturating_sub(10);
                events.split_off(skip)
            }
            None => Vec::new(),
        };
        Ok(StatusView {
            app: self.name.clone(),
            live: state.live,
            weights: Slot::ALL
                .iter()
                .map(|s| (s.to_string(), routes.weight_of(*s)))
                .collect(),
            rollout: state.rollout.clone().map(Redacted::new),
            slots,
            recent_decisions,
            now: self.clock.now(),
            fleet: None,
        })
    }

    /// The app's migrations: `None` when it has no `[app.migrations]`.
    pub fn migrations_config(&self) -> Option<&crate::migrations::MigrationsConfig> {
        self.config.migrations.as_ref()
    }

    /// What `cutover migrate status` shows.
    pub async fn migrations(&self) -> Result<crate::migrations::MigrationsView, ControllerError> {
        let config = self.migrations_or_reject()?;
        let state = self.state.lock().await.clone();
        crate::migrations::view(config, &state)
            .await
            .map_err(ControllerError::Rejected)
    }

    fn migrations_or_reject(&self) -> Result<&crate::migrations::MigrationsConfig, ControllerError> {
        self.config.migrations.as_ref().ok_or_else(|| {
            ControllerError::Rejected(format!(
                "app {} has no migrations: add an [app.migrations] table (dir, engine, ...) to its configuration",
                self.name
            ))
        })
    }

    /// Runs the pending contract migrations, when no running version needs the old schema.
    /// Deploys are refused while it runs (see `schema_gate`).
    pub async fn contract(&self) -> Result<ContractDone, ControllerError> {
        let config = self.migrations_or_reject()?.clone();
        let _gate = self.schema_gate.lock().await;
        // A snapshot: with the gate held no rollout can start, and the state lock stays free
        // for status and the tick loop while the contract runs.
        let state = self.state.lock().await.clone();
        let result = crate::migrations::contract(&config, &state, Arc::clone(&self.clock)).await;
        match result {
            Ok((sentence, applied)) => {
                let count = applied.len();
                if !applied.is_empty() {
                    self.record_event(
                        None,
                        sentence.clone(),
                        EventDetail::Contracted {
                            applied: applied
                                .iter()
                                .map(|a| cutover_core::event::AppliedMigration {
                                    name: a.name.clone(),
                                    phase: a.phase.as_str().to_string(),
                                    checksum: a.checksum.clone(),
                                    applied_at: a.applied_at,
                                    rollout_id: a.rollout_id,
                                    duration_ms: a.duration_ms,
                                })
                                .collect(),
                        },
                    )
                    .await;
                }
                Ok(ContractDone {
                    summary: sentence,
                    applied: count,
                })
            }
            Err(reason) => Err(ControllerError::Rejected(reason)),
        }
    }

    /// Accepts the current checksums of migration `name`'s files, on purpose: those of the live
    /// release's directory, or of `version`'s.
    pub async fn repair_migration(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Vec<String>, ControllerError> {
        let config = self.migrations_or_reject()?.clone();
        let state = self.state.lock().await.clone();
        let release = version.map(|v| {
            let mut release = ReleaseSpec::new(v, "");
            release.workdir = self.config.release.workdir.clone();
            release
        });
        let repaired = crate::migrations::repair(&config, &state, name, release)
            .await
            .map_err(ControllerError::Rejected)?;
        for line in &repaired {
            self.record_event(
                None,
                line.clone(),
                EventDetail::MigrationRepaired {
                    migration: name.to_string(),
                },
            )
            .await;
        }
        Ok(repaired)
    }

    /// Appends an event that changes no state (a contract run by hand, a repair). Holds the
    /// state lock while it commits, so the state written with the event is the
    /// current one, never a snapshot a transition has moved past.
    async fn record_event(&self, rollout_id: Option<u64>, message: String, detail: EventDetail) {
        let state = self.state.lock().await;
        let event = rollout::Event {
            at: self.clock.now(),
            rollout_id,
            message,
            detail,
        };
        match self.store.commit(&state, std::slice::from_ref(&event)) {
            Ok(stored) => {
                for e in stored {
                    tracing::info!(app = %self.name, kind = %e.event.kind(), "{}", e.event.message);
                    let _ = self.events.send(e);
                }
            }
            Err(e) => {
                tracing::error!(app = %self.name, error = %e, "recording the event failed: {}", event.message)
            }
        }
    }

    /// `[app.migrations] contract_after_ms`: once the last rollout ended (whichever way) with
    /// nothing running in the other slot, and the delay passed, runs the pending contracts, once
    /// per rollout (a refusal or failure is recorded and waits for `cutover migrate contract`).
    async fn contract_when_due(self: &Arc<Self>, state: &AppState) {
        let Some(delay) = self.config.migrations.as_ref().and_then(|m| m.contract_after_ms) else {
            return;
        };
        // Once the last rollout ended, whichever way: a rollback of a later release must not
        // keep the retired version's contract waiting forever.
        let Some(r) = &state.rollout else { return };
        let at = match &r.phase {
            Phase::Succeeded { at }
            | Phase::RolledBack { at, .. }
            | Phase::Aborted { at, .. }
            | Phase::Failed { at, .. } => *at,
            _ => return,
        };
        if self.clock.now().millis_since(at) < delay || state.slot(state.live.other()).is_running() {
            return;
        }
        {
            let mut tried = self.contract_tried.lock().unwrap_or_else(PoisonError::into_inner);
            if *tried >= r.id {
                return;
            }
            *tried = r.id;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            match this.contract().await {
                Ok(done) => tracing::info!(app = %this.name, "{}", done.summary),
                Err(e) => {
                    this.record_event(
                        None,
                        format!("automatic contract did not run: {e}; run `cutover migrate contract {}` when it can", this.name),
                        EventDetail::ContractRefused,
                    )
                    .await;
                }
            }
        });
    }

    /// Runs one input through the engine, persists the result, then carries out its actions.
    ///
    /// Boxed because it is recursive through the tasks its actions spawn (provisioning feeds its
    /// result back here), and the compiler cannot prove such a future `Send` otherwise.
    fn apply<'a>(
        self: &'a Arc<Self>,
        input: Input,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ControllerError>> + Send + 'a>> {
        Box::pin(self.apply_now(input))
    }

    async fn apply_now(self: &Arc<Self>, input: Input) -> Result<(), ControllerError> {
        self.apply_checked(input, None).await
    }

    /// [`Controller::apply_now`], refused (and nothing changed) unless the current rollout is
    /// `expected_rollout`, when given.
    async fn apply_checked(
        self: &Arc<Self>,
        input: Input,
        expected_rollout: Option<u64>,
    ) -> Result<(), ControllerError> {
        let mut state = self.state.lock().await;
        if let Some(expected) = expected_rollout {
            let current = state.rollout.as_ref();
            if current.map(|r| r.id) != Some(expected) {
                let now = match current {
                    Some(r) => format!(
                        "rollout #{} ({} → {}, {})",
                        r.id,
                        r.previous_version.as_deref().unwrap_or("nothing"),
                        r.release.version,
                        r.phase.name()
                    ),
                    None => "no rollout".to_string(),
                };
                return Err(ControllerError::Rejected(format!(
                    "rollout #{expected} is no longer the current rollout of app {}: it now has {now}; nothing was done, look again before you act",
                    self.name
                )));
            }
        }
        let now = self.clock.now();
        let transition = rollout::handle(&state, input, now).map_err(|r| ControllerError::Rejected(r.0))?;
        if transition.state == *state && transition.events.is_empty() {
            for action in transition.actions {
                self.execute(action, &state).await;
            }
            return Ok(());
        }
        // Persist first: after a crash the stored state says what may have half-happened.
        let committed = self
            .store
            .commit_ending(&transition.state, &transition.events, &transition.ended);
        let stored = match committed {
            Ok(stored) => {
                let ended_run = self
                    .store_failures
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .succeeded();
                if let Some(count) = ended_run {
                    tracing::info!(app = %self.name, failures = count, "saving the state works again");
                }
                stored
            }
            Err(e) => {
                let log = self
                    .store_failures
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .failed(now);
                if let Some(suppressed) = log {
                    tracing::error!(app = %self.name, error = %e, similar_errors_not_logged = suppressed,
                        "cannot save the state: traffic is still served by the current routes, but the rollout \
                         cannot move on until the state can be saved; logged again at most once a minute");
                }
                return Err(e.into());
            }
        };
        *state = transition.state;
        for e in stored {
            self.gates.notify(&self.name, &e, state.rollout.as_ref());
            tracing::info!(app = %self.name, rollout = e.event.rollout_id, kind = %e.event.kind(), "{}", e.event.message);
            let _ = self.events.send(e);
        }
        for action in transition.actions {
            self.execute(action, &state).await;
        }
        Ok(())
    }

    /// Carries out one action. Routes are applied before this returns (the caller holds the
    /// state lock, so tables reach the router in the order the engine made them); everything
    /// slow runs in its own task and reports back through [`Controller::feed`].
    async fn execute(self: &Arc<Self>, action: Action, state: &AppState) {
        match action {
            Action::ApplyRoutes(table) => {
                if let Err(e) = self.router.apply(&table).await {
                    // The tick loop reconciles the router with the state until it takes the table.
                    tracing::error!(app = %self.name, router = %self.router.describe(), error = %e,
                        "applying the route table failed; retrying on the next tick");
                }
                self.start_window().await;
            }
            Action::Migrate { release } => {
                let Some(config) = self.config.migrations.clone() else {
                    // Configuration changed since the rollout started: nothing to run.
                    let this = Arc::clone(self);
                    tokio::spawn(async move {
                        this.feed(Input::Migrated {
                            detail: "no [app.migrations] configured any more: no migration ran".into(),
                        })
                        .await;
                    });
                    return;
                };
                let Some(rollout_id) = state.rollout.as_ref().map(|r| r.id) else {
                    return;
                };
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    let clock = Arc::clone(&this.clock);
                    // Each retry is an event of the rollout, so `deploy` shows why it waits.
                    let reporter = Arc::clone(&this);
                    let report: crate::migrations::RetryReport = Arc::new(move |line: String| {
                        let this = Arc::clone(&reporter);
                        tokio::spawn(async move {
                            this.record_event(Some(rollout_id), line, EventDetail::MigrationRetry)
                                .await;
                        });
                    });
                    let input = match crate::migrations::expand(
                        &this.name, &config, &release, rollout_id, clock, report,
                    )
                    .await
                    {
                        Ok(detail) => Input::Migrated { detail },
                        Err(reason) => Input::MigrationFailed { reason },
                    };
                    this.feed(input).await;
                });
            }
            Action::Provision {
                slot,
                release,
                deadline,
            } => {
                let epoch = self.slot_epochs[slot.index()].fetch_add(1, Ordering::SeqCst) + 1;
                let this = Arc::clone(self);
                tokio::spawn(async move { this.provision(slot, release, deadline, epoch).await });
            }
            Action::Verify { slot } => {
                let addrs = state.slot(slot).backends.clone();
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    let input = match checks::verify(&addrs, &this.config.verify).await {
                        Ok(detail) => Input::VerifyPassed { detail },
                        Err(reason) => Input::VerifyFailed { reason },
                    };
                    this.feed(input).await;
                });
            }
            Action::CheckGates { step, weight_bp } => {
                let Some(rollout) = state.rollout.clone() else {
                    return;
                };
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    let input = match this
                        .gates
                        .before_step(&this.name, &rollout, step, weight_bp)
                        .await
                    {
                        Ok(()) => Input::GatesPassed { step },
                        Err(reason) => Input::GatesFailed { step, reason },
                    };
                    this.feed(input).await;
                });
            }
            Action::ConfirmPromotion => {
                let Some(rollout) = state.rollout.clone() else {
                    return;
                };
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    let timeout = Duration::from_millis(rollout.policy.confirm_timeout_ms);
                    let input = match this.gates.confirm_promotion(&this.name, &rollout, timeout).await {
                        Confirmation::Confirmed(detail) => Input::PromotionConfirmed { detail },
                        Confirmation::Rejected(reason) => Input::PromotionRejected { reason },
                        Confirmation::TimedOut(reason) => Input::ConfirmationTimedOut { reason },
                    };
                    this.feed(input).await;
                });
            }
            Action::Stop { slot, drain } => {
                let epoch = self.slot_epochs[slot.index()].load(Ordering::SeqCst);
                let drain_for = if drain {
                    self.router.drain_timeout()
                } else {
                    Duration::ZERO
                };
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    tokio::time::sleep(drain_for).await;
                    // Never stop a slot the router still sends traffic to (someone put weight
                    // back behind cutover's back): the reconcile takes it away, then the drain
                    // runs again. Bounded; a router that cannot be read does not block a stop.
                    let mut routed = false;
                    for _ in 0..10 {
                        routed = this.router.still_routes(slot).await;
                        if !routed {
                            break;
                        }
                        tracing::warn!(app = %this.name, %slot, router = %this.router.describe(),
                            "the router still sends traffic to the slot to stop; waiting for the reconcile and the drain before stopping it");
                        tokio::time::sleep(drain_for.max(Duration::from_secs(1))).await;
                    }
                    if routed {
                        tracing::error!(app = %this.name, %slot, router = %this.router.describe(),
                            "not stopping the slot: the router still sends it traffic; it is stopped with the next release");
                        return;
                    }
                    if this.slot_epochs[slot.index()].load(Ordering::SeqCst) != epoch {
                        return;
                    }
                    let grace = Duration::from_millis(this.config.stop_grace_ms);
                    if let Err(e) = this.platform.stop(&this.name, slot, grace).await {
                        tracing::error!(app = %this.name, %slot, error = %e, "stopping the slot failed");
                    }
                });
            }
        }
    }

    /// Whether `slot`'s instances are ready now: the platform's verdict where it judges
    /// readiness itself, else a probe of each recorded backend.
    async fn slot_ready(&self, state: &AppState, slot: Slot) -> bool {
        match self.platform.readiness(&self.name, slot).await {
            Some(verdict) => matches!(verdict, Ok(Readiness::Ready(_))),
            None => checks::all_ready(&state.slot(slot).backends, &self.config.readiness).await,
        }
    }

    /// True when no instance of `slot` runs at all: they exited, or a host crash took them and
    /// the platform forgot them. Instances that run but are not ready are not gone.
    async fn slot_gone(&self, slot: Slot) -> bool {
        match self.platform.instances(&self.name, slot).await {
            Ok(list) => !list.iter().any(|i| i.exited.is_none()),
            Err(e) => {
                tracing::error!(app = %self.name, %slot, error = %e,
                    "cannot tell whether the slot's instances still run; assuming they do");
                false
            }
        }
    }

    /// Starts `release` in `slot` and waits until every instance is ready, an instance exits, or
    /// `deadline` passes; the error says which, with the last lines of the instances' logs.
    async fn start_and_wait(
        &self,
        slot: Slot,
        release: &ReleaseSpec,
        deadline: Timestamp,
    ) -> Result<Vec<SocketAddr>, String> {
        // Never resolved for a platform that would write the values into an object others read
        // (refused at deploy already; a release stored by an older version could still have them).
        if self.config.runs_images && !release.secrets.is_empty() {
            return Err("secrets by reference cannot be passed to a Kubernetes Deployment without writing their values into it; reference a Kubernetes Secret from the manifest".into());
        }
        // Secret references are read now, at every start, and their values are never stored.
        let release = &release
            .resolve_secrets(&ProcessSecrets)
            .map_err(|e| e.to_string())?;
        let result = async {
            let instances = self.platform.start(&self.name, slot, release).await.map_err(|e| e.to_string())?;
            let addrs: Vec<SocketAddr> = instances.iter().map(|i| i.addr).collect();
            let remaining = deadline.since(self.clock.now());
            // A platform that judges readiness itself (Kubernetes) also says when an instance
            // will not come up; the probes and the exit watch are for the others.
            // The first verdict also tells whether there will be any; it is the wait's first look.
            let first_verdict = self.platform.readiness(&self.name, slot).await;
            let judged_by_platform = first_verdict.is_some();
            let exited = async {
                if judged_by_platform {
                    return std::future::pending().await;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(self.config.readiness.interval_ms)).await;
                    if let Ok(list) = self.platform.instances(&self.name, slot).await {
                        if let Some(dead) = list.iter().find_map(|i| i.exited.as_ref().map(|e| (i.index, e.clone()))) {
                            return format!("instance {} {} before becoming ready", dead.0, dead.1);
                        }
                    }
                }
            };
            // A service that never gets ready would otherwise be silent until the deadline: say
            // what its probes answer, after 10 s and every 15 s after that.
            let progress = std::sync::Mutex::new(String::new());
            // Whose release this is: its events carry that rollout's id, and once that rollout is
            // over (aborted while this one starts) the wait ends rather than probe on for nothing
            // and report under the next rollout's name.
            let owner = self.state.lock().await.active_rollout().map(|r| r.id);
            let not_ready_yet = async {
                let started = tokio::time::Instant::now();
                let mut report_at = Duration::from_secs(10);
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let current = self.state.lock().await.active_rollout().map(|r| r.id);
                    if let Some(id) = owner.filter(|id| current != Some(*id)) {
                        return format!("rollout #{id} ended while {} was starting", release.version);
                    }
                    if started.elapsed() < report_at {
                        continue;
                    }
                    let detail = progress.lock().map(|p| p.clone()).unwrap_or_default();
                    if !detail.is_empty() {
                        self.record_event(
                            owner,
                            format!(
                                "{} in slot {slot} not ready after {} s of {} s: {detail}",
                                release.version,
                                report_at.as_secs(),
                                release_deadline_secs(&self.config)
                            ),
                            EventDetail::NotReadyYet {
                                slot,
                                waited_ms: u64::try_from(report_at.as_millis()).unwrap_or(u64::MAX),
                            },
                        )
                        .await;
                    }
                    report_at += Duration::from_secs(15);
                }
            };
            let ready = async {
                if judged_by_platform {
                    self.wait_platform_ready(slot, remaining, &progress, first_verdict).await
                } else {
                    checks::wait_ready(&addrs, &self.config.readiness, remaining, &progress)
                        .await
                        .map(|()| addrs.clone())
                }
            };
            tokio::select! {
                ready = ready => {
                    ready.map_err(|e| format!("not ready within the readiness deadline ({} s): {e}", release_deadline_secs(&self.config)))
                }
                why = exited => Err(why),
                why = not_ready_yet => Err(why),
            }
        }
        .await;
        result.map_err(|reason| {
            let tail = self.platform.log_tail(&self.name, slot, 20);
            let reason = if tail.trim().is_empty() {
                reason
            } else {
                format!("{reason}\n--- last lines of the instance log ---\n{tail}")
            };
            // The reason goes to events, webhooks and logs: never with the release's values.
            release.env.mask_values(&reason)
        })
    }

    /// Polls the platform's own readiness verdict, starting from `verdict`, until the slot is
    /// ready (its instances' addresses), fails, or `deadline` passes. An error reaching the
    /// platform is not a verdict: it is reported as progress and asked again.
    async fn wait_platform_ready(
        &self,
        slot: Slot,
        deadline: Duration,
        progress: &std::sync::Mutex<String>,
        mut verdict: Option<Result<Readiness, cutover_platform::PlatformError>>,
    ) -> Result<Vec<SocketAddr>, String> {
        let started = tokio::time::Instant::now();
        let interval = Duration::from_millis(self.config.readiness.interval_ms.max(50));
        loop {
            let now = match verdict {
                Some(Ok(Readiness::Ready(instances))) => {
                    return Ok(instances.iter().map(|i| i.addr).collect());
                }
                Some(Ok(Readiness::Failed(why))) => return Err(why),
                Some(Ok(Readiness::Pending(what))) => what,
                Some(Err(e)) => e.to_string(),
                None => "the platform stopped judging readiness".to_string(),
            };
            if let Ok(mut p) = progress.lock() {
                p.clone_from(&now);
            }
            if started.elapsed() >= deadline {
                return Err(now);
            }
            tokio::time::sleep(interval).await;
            verdict = self.platform.readiness(&self.name, slot).await;
        }
    }

    async fn provision(self: Arc<Self>, slot: Slot, release: ReleaseSpec, deadline: Timestamp, epoch: u64) {
        let input = match self.start_and_wait(slot, &release, deadline).await {
            Ok(backends) => Input::Provisioned { backends },
            Err(reason) => Input::ProvisionFailed { reason },
        };
        let provisioned = matches!(input, Input::Provisioned { .. });
        if self.slot_epochs[slot.index()].load(Ordering::SeqCst) != epoch {
            // A newer provision of the slot (the next rollout's) owns it now; its platform start
            // replaces what this one left.
            tracing::info!(app = %self.name, %slot, "provisioning result of an earlier rollout ignored");
            return;
        }
        if let Err(e) = self.apply(input).await {
            tracing::info!(app = %self.name, %slot, reason = %e, "provisioning result no longer wanted");
            if provisioned && self.slot_epochs[slot.index()].load(Ordering::SeqCst) == epoch {
                // The rollout moved on (aborted, say) while the release started: no orphans.
                let _ = self
                    .platform
                    .stop(&self.name, slot, Duration::from_millis(self.config.stop_grace_ms))
                    .await;
            }
        }
    }

    /// Feeds an input produced by a background task; a rejection only means the rollout moved on.
    async fn feed(self: &Arc<Self>, input: Input) {
        match self.apply(input).await {
            Ok(()) => {}
            // Logged (rate-limited) where the commit failed.
            Err(ControllerError::Store(_)) => {}
            Err(e) => tracing::info!(app = %self.name, reason = %e, "late result ignored"),
        }
    }

    /// Starts a new analysis window now.
    async fn start_window(&self) {
        let now = self.clock.now();
        *self.window_start.lock().unwrap_or_else(PoisonError::into_inner) = now;
        self.source.start_window(now).await;
    }

    /// Measures the window that ends now, for the canary and (while it has traffic) the baseline,
    /// and starts the next one.
    async fn measured_window(&self, state: &AppState) -> WindowStats {
        let to = self.clock.now();
        let from = *self.window_start.lock().unwrap_or_else(PoisonError::into_inner);
        let duration_ms = to.millis_since(from);
        let Some(r) = state.active_rollout() else {
            return WindowStats::default();
        };
        let query = |slot: Slot| WindowQuery {
            app: self.name.clone(),
            slot,
            version: state.slot(slot).version().unwrap_or_default().to_string(),
            from,
            to,
        };
        let baseline_slot = r.target.other();
        let baseline_serves = rollout::route_table(state).weight_of(baseline_slot) > 0;
        let baseline_query = baseline_serves.then(|| query(baseline_slot));
        let (canary, baseline) = self
            .source
            .measure_window(&query(r.target), baseline_query.as_ref())
            .await;
        self.start_window().await;
        let measured = (|| -> Result<WindowStats, String> {
            let c = canary.as_ref().map_err(|e| e.to_string())?;
            let b = match &baseline {
                Some(b) => Some(b.as_ref().map_err(|e| e.to_string())?),
                None => None,
            };
            let latency = match (&c.latency_buckets, b.map(|b| &b.latency_buckets)) {
                (Some(canary), Some(Some(baseline))) => Some(Arc::new(LatencyPair {
                    canary: canary.clone(),
                    baseline: baseline.clone(),
                })),
                _ => None,
            };
            let external = cutover_monitoring::judge_custom(&self.custom, c, b)
                .into_iter()
                .map(|check| ExternalCheck {
                    name: check.name,
                    outcome: match check.outcome {
                        CheckOutcome::Pass => Outcome::Pass,
                        CheckOutcome::Fail => Outcome::Fail,
                        CheckOutcome::Inconclusive => Outcome::Inconclusive,
                    },
                    reason: check.reason,
                })
                .collect();
            Ok(WindowStats {
                canary: slot_window(c, "canary")?,
                baseline: b.map(|b| slot_window(b, "baseline")).transpose()?,
                duration_ms,
                latency,
                unavailable: None,
                external,
            })
        })();
        measured.unwrap_or_else(|why| WindowStats {
            duration_ms,
            unavailable: Some(why),
            ..WindowStats::default()
        })
    }

    /// Applies the state's route table again if the router lost it (an HAProxy reload, a router
    /// restart) or never took it (it was down when the table changed).
    async fn reconcile_router(&self) {
        let now = self.clock.now();
        let (failures, next_try) = *self
            .reconcile_backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if now < next_try {
            return;
        }
        // Under the state lock, so a table the engine makes meanwhile is not overwritten by this
        // older one.
        let state = self.state.lock().await;
        let wanted = rollout::route_table(&state);
        let outcome = self.router.reconcile(&wanted).await;
        drop(state);
        let set_backoff = |value: (u32, Timestamp)| {
            *self
                .reconcile_backoff
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = value;
        };
        match outcome {
            Ok(reapplied) => {
                set_backoff((0, Timestamp(0)));
                if reapplied {
                    tracing::warn!(app = %self.name, router = %self.router.describe(),
                        "the router was not routing by the current table (restarted or reloaded?); applied it again");
                    self.start_window().await;
                }
            }
            Err(e) => {
                // 1 s, 2 s, 4 s ... up to 30 s between attempts while the router stays broken.
                let delay_ms = (1000u64 << failures.min(5)).min(30_000);
                set_backoff((
                    failures.saturating_add(1),
                    Timestamp(now.as_millis().saturating_add(delay_ms)),
                ));
                tracing::error!(app = %self.name, router = %self.router.describe(), error = %e,
                    retry_in_ms = delay_ms,
                    "the router does not route by the current table and applying it failed; will retry");
            }
        }
    }

    /// Supervises the live slot while cutover runs: when every one of its instances has exited
    /// (killed, crashed, OOM), its release is started again as after a host crash. The target
    /// of a rollout in progress is watched by the rollout itself (`TargetDown`).
    async fn watch_live(self: &Arc<Self>, state: &AppState) {
        let live = state.live;
        let slot = state.slot(live);
        if slot.release.is_none()
            || !slot.is_running()
            || self.restarting.load(Ordering::SeqCst)
            || state.active_rollout().is_some_and(|r| r.target == live)
        {
            return;
        }
        let Ok(list) = self.platform.instances(&self.name, live).await else {
            return;
        };
        if !list.is_empty() && list.iter().all(|i| i.exited.is_some()) {
            self.restart_live_if_gone().await;
        }
    }

    /// The control loop: ticks, judges windows as they fall due, watches the new slot's instances.
    async fn run(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            self.reconcile_router().await;
            let state = self.state.lock().await.clone();
            self.watch_live(&state).await;
            self.contract_when_due(&state).await;
            let Some(r) = state.active_rollout() else { continue };
            if matches!(
                r.phase,
                Phase::Canary { .. } | Phase::Paused { .. } | Phase::Promoted { .. }
            ) {
                if let Ok(list) = self.platform.instances(&self.name, r.target).await {
                    if let Some(why) = list
                        .iter()
                        .find_map(|i| i.exited.as_ref().map(|e| format!("instance {} {e}", i.index)))
                    {
                        self.feed(Input::TargetDown { reason: why }).await;
                        continue;
                    }
                }
            }
            let input = if rollout::window_due(&state, self.clock.now()) {
                Input::Window(self.measured_window(&state).await)
            } else {
                Input::Tick
            };
            self.feed(input).await;
        }
    }
}

/// A slot's counts for the judge; no count means no verdict.
fn slot_window(m: &SlotMeasurement, who: &str) -> Result<SlotWindow, String> {
    match (m.requests, m.errors) {
        (Some(requests), Some(errors)) => {
            let count = |v: f64| v.max(0.0).round() as u64;
            Ok(SlotWindow {
                requests: count(requests),
                errors: count(errors),
                p99_ms: m.p99_ms,
                client_errors: m.client_errors.map(count),
                codes: m
                    .codes
                    .as_ref()
                    .map(|codes| codes.iter().map(|(c, n)| (*c, count(*n))).collect()),
                users: m.users.map(count),
                users_with_client_errors: m.users_with_client_errors.map(count),
            })
        }
        _ => Err(format!(
            "the metric source returned no data for the {who}'s requests or errors"
        )),
    }
}

/// Failures of one kind in a row, for logging them without flooding: the first is logged, then
/// one a minute with the count of those not logged, then the recovery once.
#[derive(Debug, Default)]
struct FailureLog {
    /// Failures since the last success.
    in_row: u64,
    last_logged: Timestamp,
    not_logged: u64,
}

impl FailureLog {
    const EVERY_MS: u64 = 60_000;

    /// Counts a failure at `now`; `Some(n)` when it should be logged, `n` failures not logged
    /// since the last one that was.
    fn failed(&mut self, now: Timestamp) -> Option<u64> {
        self.in_row += 1;
        if self.in_row == 1 || now.millis_since(self.last_logged) >= Self::EVERY_MS {
            self.last_logged = now;
            Some(std::mem::take(&mut self.not_logged))
        } else {
            self.not_logged += 1;
            None
        }
    }

    /// Counts a success; `Some(n)` when it ends a run of `n` failures.
    fn succeeded(&mut self) -> Option<u64> {
        let in_row = std::mem::take(&mut self.in_row);
        self.not_logged = 0;
        (in_row > 0).then_some(in_row)
    }
}

/// Makes `state` (fresh: the store knew nothing of the app) describe the instances the platform
/// still runs, so they are kept and served instead of stopped. With both slots running the one
/// started last becomes live and the other is kept idle (the next deploy replaces it): both
/// slots run in a rollback window, after every promotion, where the newer release served
/// everyone; during a canary the older one served most, and this choice moves all users onto
/// the canary, which the event says. Releases are rebuilt from the configuration's template;
/// variables given to the original deploy are not known.
fn adopt_unknown(
    state: &mut AppState,
    found: &[(Slot, Vec<cutover_platform::InstanceInfo>)],
    template: &ReleaseTemplate,
    now: Timestamp,
) -> rollout::Event {
    let mut adopted = Vec::new();
    for (i, (slot, instances)) in found.iter().enumerate() {
        let Some(version) = instances.first().map(|i| i.version.clone()) else {
            continue;
        };
        let backends: Vec<SocketAddr> = instances
            .iter()
            .filter(|i| i.version == version)
            .map(|i| i.addr)
            .collect();
        let mut release = ReleaseSpec::new(version.clone(), template.command.replace("{version}", &version));
        release.env = template.env.clone();
        release.workdir = template.workdir.clone();
        release.instances = u32::try_from(backends.len()).unwrap_or(u32::MAX);
        adopted.push(AdoptedSlot {
            slot: *slot,
            version: version.clone(),
            backends: backends.clone(),
        });
        *state.slot_mut(*slot) = rollout::SlotState {
            release: Some(release),
            backends,
            deployed_by: None,
        };
        if i + 1 == found.len() {
            state.live = *slot;
        }
    }
    let described: Vec<String> = found
        .iter()
        .filter_map(|(slot, instances)| {
            instances
                .first()
                .map(|i| format!("{} instance(s) of {} in {slot}", instances.len(), i.version))
        })
        .collect();
    rollout::Event {
        at: now,
        rollout_id: None,
        message: format!(
            "the state store knew nothing of app {} but {} still ran: adopted, not stopped; {} is live{}. \
             Their releases are rebuilt from the configuration (variables given to the original deploy \
             are not known); the next deploy replaces them",
            state.app,
            described.join(" and "),
            state.live,
            if found.len() > 1 {
                " (the one started last; if it was a canary, deploy the other version again to go back)"
            } else {
                ""
            }
        ),
        detail: EventDetail::Adopted { adopted },
    }
}

fn release_deadline_secs(config: &ManagedConfig) -> u64 {
    config.rollout.readiness_deadline_ms / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_that_repeats_every_tick_is_logged_once_then_once_a_minute() {
        let mut log = FailureLog::default();
        let logged: Vec<(u64, Option<u64>)> = (0..1300u64)
            .map(|i| (i * 100, log.failed(Timestamp(1_000_000 + i * 100))))
            .filter(|(_, l)| l.is_some())
            .collect();
        // Ten times a second for 130 s: at 0, 60 and 120 s, each saying how many were not logged.
        assert_eq!(
            logged,
            vec![(0, Some(0)), (60_000, Some(599)), (120_000, Some(599))]
        );
        assert_eq!(log.succeeded(), Some(1300));
        assert_eq!(log.succeeded(), None);
        assert_eq!(
            log.failed(Timestamp(2_000_000)),
            Some(0),
            "a new run is logged at once"
        );
    }
}
