//! Guarded ramps run by the server: the pure [`Ramp`] state machine fed with analysis windows
//! measured from the built-in proxy's per flag and variant counters, persisted in the store before
//! anything it decides is done, and acted on through the flag service (the split of each step, the
//! kill) and the flag webhooks.
//!
//! Crash safety: a ramp is saved with `unapplied` set before its actions run and saved again once
//! they ran. A server that died in between finds `unapplied` at start and does them again: the
//! split of the current step (idempotent), the kill of a killed ramp. Webhook deliveries of that
//! instant may be lost; the ramp's decisions keep the record.
//!
//! Measurements: the first reading of a window is taken when the window starts and lives in
//! memory; after a restart the first window starts at the first tick, so a restart costs at most
//! one window, never a judgement on counts that do not belong to it.

use std::collections::BTreeMap;
use std::sync::Arc;

use cutover_core::histogram::{bucket_upper_micros, quantile_bucket};
use cutover_core::judge::{JudgeConfig, LatencyPair, SlotWindow, WindowStats};
use cutover_core::{Clock, FieldError, Timestamp, ValidationErrors};
use cutover_flags::ramp::{Ramp, RampAction, RampInput, RampPhase, RampPlan};
use cutover_flags::Flag;
use cutover_notify::{EventKind, Notifier, WebhookEvent};
use cutover_proxy::{FlagForwarding, MetricsSnapshot};
use cutover_store::{Store, StoreError};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::flags::{FlagError, FlagService};

/// Who a ramp's changes of the flag are recorded as, in the flag's audit.
pub const RAMP_WHO: &str = "guarded-ramp";

#[derive(Debug, thiserror::Error)]
pub enum RampError {
    #[error("invalid ramp; nothing was started")]
    Invalid(ValidationErrors),
    #[error("no flag {0:?}; `cutover flag list` shows the flags")]
    NoFlag(String),
    #[error("no ramp of flag {0:?} was ever started; start one with `cutover flag ramp {0} --steps ...`")]
    NoRamp(String),
    /// The ramp's phase does not take the command.
    #[error("{0}")]
    Rejected(String),
    #[error(
        "flag {0:?} is being ramped (ramp #{1}, {2}); abort the ramp first (`cutover flag ramp {0} --abort`), or change only what the ramp does not rest on (everything but the split, the variants, the default variant and the type); a kill always works"
    )]
    Busy(String, u64, String),
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A request to start a ramp, as the admin API takes it. Percentages, as people write them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRamp {
    /// Percentages of users in the new variant, e.g. `[1, 5, 25, 50, 100]`; fractions allowed
    /// down to 0.01.
    pub steps: Vec<f64>,
    /// How long each step is observed.
    pub window_ms: u64,
    /// Analysis window; default a sixth of the step, between 1 s and 10 s.
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// How long a step may wait for evidence past its window; default 5 windows.
    #[serde(default)]
    pub max_extension_ms: Option<u64>,
    /// The variant to ramp up; default `on` for a boolean flag, else required.
    #[serde(default)]
    pub variant: Option<String>,
    /// The variant everyone else gets; default the flag's default variant.
    #[serde(default)]
    pub control: Option<String>,
    /// Fewest flagged requests a step must see to pass (default 50).
    #[serde(default)]
    pub min_requests: Option<u64>,
    /// The judge, as in `[app.rollout.judge]`; default the rollouts' default.
    #[serde(default)]
    pub judge: Option<JudgeConfig>,
    #[serde(default)]
    pub inconclusive_limit: Option<u32>,
    pub reason: String,
}

impl StartRamp {
    fn plan(&self, flag: &Flag) -> Result<RampPlan, ValidationErrors> {
        let mut problems = Vec::new();
        let mut steps_bp = Vec::new();
        for (i, p) in self.steps.iter().enumerate() {
            let bp = p * 100.0;
            if !p.is_finite() || !(1.0..=10_000.0).contains(&bp) || (bp - bp.round()).abs() > 1e-6 {
                problems.push(FieldError::new(
                    format!("steps[{i}]"),
                    format!("{p} is not a percentage from 0.01 to 100 in steps of 0.01"),
                ));
            } else {
                steps_bp.push(bp.round() as u16);
            }
        }
        let variant = match (&self.variant, flag.kind) {
            (Some(v), _) => v.clone(),
            (None, cutover_flags::FlagType::Boolean) => flag
                .variants
                .iter()
                .find(|(name, value)| {
                    **value == serde_json::Value::Bool(true) && **name != flag.default_variant
                })
                .map(|(name, _)| name.clone())
                .unwrap_or_else(|| "on".to_string()),
            (None, _) => {
                problems.push(FieldError::new(
                    "variant",
                    format!(
                        "flag {} is not a boolean: name the variant to ramp up (--variant); its variants: {}",
                        flag.key,
                        flag.variants.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
                String::new()
            }
        };
        let mut judge = self.judge.clone().unwrap_or_default();
        if let Some(min) = self.min_requests {
            judge.min_step_requests = min;
        }
        let interval_ms = self.interval_ms.unwrap_or_else(|| {
            (self.window_ms / 6)
                .clamp(1000, 10_000)
                .min(self.window_ms.max(100))
        });
        let plan = RampPlan {
            steps_bp,
            step_ms: self.window_ms,
            interval_ms,
            max_extension_ms: self.max_extension_ms.unwrap_or(self.window_ms.saturating_mul(5)),
            inconclusive_limit: self.inconclusive_limit.unwrap_or(3),
            variant,
            control: self
                .control
                .clone()
                .unwrap_or_else(|| flag.default_variant.clone()),
            judge,
        };
        if self.reason.trim().is_empty() {
            problems.push(FieldError::new("reason", "missing: say why (--reason)"));
        }
        problems.extend(plan.problems(flag));
        ValidationErrors::check(problems)?;
        Ok(plan)
    }
}

/// The first reading of the current window, per app and variant.
#[derive(Debug)]
struct Reading {
    at: Timestamp,
    counters: Vec<(String, String, u64, MetricsSnapshot)>,
}

#[derive(Debug)]
struct Entry {
    /// Its `unapplied` is set while the last decision is saved but its actions may not have run.
    ramp: Ramp,
    reading: Option<Reading>,
}

#[derive(Debug)]
pub struct RampRunner {
    service: Arc<FlagService>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Every app that forwards flags, with its counters.
    forwarding: Vec<(String, Arc<FlagForwarding>)>,
    /// `[flags.prometheus]`: windows measured by PromQL instead of the proxy's counters.
    prometheus: Option<cutover_monitoring::PrometheusSource>,
    notifier: Option<Notifier>,
    /// The latest ramp of every flag that had one. Held across a ramp's whole transition (save,
    /// act, save), so commands and ticks never interleave inside one.
    ramps: tokio::sync::Mutex<BTreeMap<String, Entry>>,
    /// `[flags] stale_after_days`.
    stale_after_days: u32,
    /// Flags whose expiry was announced to the webhooks by this process, with the date that
    /// expired (a flag given a new date and expiring again is announced again).
    announced: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// A ramp as the admin API shows it.
#[derive(Debug, serde::Serialize)]
pub struct RampView {
    #[serde(flatten)]
    pub ramp: Ramp,
    /// The share of users in the new variant now, in percent (none once killed or aborted).
    pub percent: Option<f64>,
}

impl RampView {
    fn of(ramp: &Ramp) -> Self {
        RampView {
            percent: ramp.weight().map(|w| f64::from(w) / 100.0),
            ramp: ramp.clone(),
        }
    }
}

impl RampRunner {
    /// Loads every stored ramp and finishes what a crash may have left undone.
    pub async fn load(
        service: Arc<FlagService>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        forwarding: Vec<(String, Arc<FlagForwarding>)>,
        prometheus: Option<cutover_monitoring::PrometheusSource>,
        notifier: Option<Notifier>,
        stale_after_days: u32,
    ) -> Result<Arc<Self>, StoreError> {
        let mut ramps = BTreeMap::new();
        for ramp in store.ramps()? {
            ramps.insert(ramp.flag.clone(), Entry { ramp, reading: None });
        }
        let runner = Arc::new(RampRunner {
            service,
            store,
            clock,
            forwarding,
            prometheus,
            notifier,
            ramps: tokio::sync::Mutex::new(ramps),
            stale_after_days,
            announced: std::sync::Mutex::new(std::collections::HashMap::new()),
        });
        let mut ramps = runner.ramps.lock().await;
        for entry in ramps.values_mut() {
            if entry.ramp.unapplied {
                tracing::warn!(flag = %entry.ramp.flag, ramp = entry.ramp.id,
                    "the server stopped before the ramp's last decision was carried out; carrying it out now");
                let actions = redo(&entry.ramp);
                runner.act(entry, actions).await;
            }
        }
        drop(ramps);
        Ok(runner)
    }

    /// The flags that should leave the code (see [`cutover_flags::hygiene`]).
    pub fn stale(&self) -> Vec<crate::flags::StaleFlag> {
        self.service.stale(self.stale_after_days)
    }

    /// Tells the webhooks of every flag that passed its expiry date since the last look (once
    /// per flag and date and server start: a restart announces the expired flags again).
    fn announce_expired(&self) {
        let stale = self.stale();
        let mut announced = self
            .announced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for flag in stale {
            let cutover_flags::hygiene::Staleness::Expired { expires, .. } = &flag.staleness else {
                continue;
            };
            if announced.get(&flag.key) == Some(expires) {
                continue;
            }
            announced.insert(flag.key.clone(), expires.clone());
            let message = format!("flag {} (owner {}) {}", flag.key, flag.owner, flag.message);
            tracing::warn!(flag = %flag.key, owner = %flag.owner, "{message}");
            if let Some(notifier) = &self.notifier {
                let mut payload = WebhookEvent::new(EventKind::Flag, "flags", message, self.clock.now());
                payload.phase = Some("flag_expired".into());
                payload.data = serde_json::json!({
                    "flag": flag.key,
                    "event": "flag_expired",
                    "owner": flag.owner,
                    "expires": expires,
                });
                notifier.notify(payload);
            }
        }
    }

    /// Every flag's latest ramp.
    pub async fn all(&self) -> Vec<RampView> {
        self.ramps
            .lock()
            .await
            .values()
            .map(|e| RampView::of(&e.ramp))
            .collect()
    }

    pub async fn get(&self, key: &str) -> Result<RampView, RampError> {
        self.ramps
            .lock()
            .await
            .get(key)
            .map(|e| RampView::of(&e.ramp))
            .ok_or_else(|| RampError::NoRamp(key.to_string()))
    }

    /// Refuses a person's change of flag `key` that would fight its active ramp: a different
    /// split, or archiving. Kills are always allowed (and end the ramp at the next tick).
    pub async fn check_change(&self, key: &str, after: Option<&Flag>) -> Result<(), RampError> {
        let ramps = self.ramps.lock().await;
        let Some(entry) = ramps.get(key).filter(|e| !e.ramp.phase.is_over()) else {
            return Ok(());
        };
        let ramp = &entry.ramp;
        let current = self.service.index().get(key).cloned();
        let fights = match after {
            None => true,
            // The split is the ramp's; the variants, the default (what a kill gives everyone)
            // and the type are what its judgement and its kill rest on.
            Some(flag) => {
                ramp.weight().is_some_and(|w| flag.split != ramp.plan.split(w))
                    || current.is_some_and(|c| {
                        c.default_variant != flag.default_variant
                            || c.variants != flag.variants
                            || c.kind != flag.kind
                    })
            }
        };
        if fights {
            let step = ramp.step().map_or(0, |s| s + 1);
            return Err(RampError::Busy(
                key.to_string(),
                ramp.id,
                format!(
                    "{} at step {step} of {}",
                    ramp.phase.name(),
                    ramp.plan.steps_bp.len()
                ),
            ));
        }
        Ok(())
    }

    /// Starts a ramp of flag `key`.
    pub async fn start(&self, key: &str, request: &StartRamp, who: &str) -> Result<RampView, RampError> {
        let flag = self
            .service
            .index()
            .get(key)
            .cloned()
            .ok_or_else(|| RampError::NoFlag(key.to_string()))?;
        let mut plan = request.plan(&flag);
        // A ramp only ever adds users: it may not start below the share the variant has now.
        if let Ok(p) = &plan {
            let total: u64 = flag.split.iter().map(|e| u64::from(e.weight)).sum();
            let has: u64 = flag
                .split
                .iter()
                .filter(|e| e.variant == p.variant)
                .map(|e| u64::from(e.weight))
                .sum();
            let now_bp = (has * 10_000).checked_div(total).unwrap_or(0);
            if let Some(first) = p.steps_bp.first().filter(|f| u64::from(**f) < now_bp) {
                plan = Err(ValidationErrors {
                    errors: vec![FieldError::new(
                        "steps",
                        format!(
                            "flag {key} gives {:?} to {:.2} % of users now; a ramp starting at {:.2} % would take it from some of them: start at {:.2} % or more",
                            p.variant,
                            now_bp as f64 / 100.0,
                            f64::from(*first) / 100.0,
                            now_bp as f64 / 100.0
                        ),
                    )],
                });
            }
        }
        let forwarded = self
            .forwarding
            .iter()
            .any(|(_, f)| f.flags().iter().any(|k| k == key));
        if !forwarded && self.prometheus.is_none() {
            let problem = FieldError::new(
                "flag",
                format!(
                    "no app forwards flag {key}, so no traffic can judge its ramp: add it to `[app.flags] forward` of the app whose users get it, or judge ramps from Prometheus with [flags.prometheus]"
                ),
            );
            plan = Err(match plan {
                Ok(_) => ValidationErrors {
                    errors: vec![problem],
                },
                Err(mut v) => {
                    v.errors.push(problem);
                    v
                }
            });
        }
        let plan = plan.map_err(RampError::Invalid)?;
        let mut ramps = self.ramps.lock().await;
        if let Some(e) = ramps.get(key).filter(|e| !e.ramp.phase.is_over()) {
            let step = e.ramp.step().map_or(0, |s| s + 1);
            return Err(RampError::Busy(
                key.to_string(),
                e.ramp.id,
                format!(
                    "{} at step {step} of {}",
                    e.ramp.phase.name(),
                    e.ramp.plan.steps_bp.len()
                ),
            ));
        }
        let id = ramps.get(key).map_or(1, |e| e.ramp.id + 1);
        let (ramp, actions) = Ramp::start(key, id, plan, self.clock.now(), who, &request.reason);
        let entry = ramps.entry(key.to_string()).or_insert(Entry {
            ramp: ramp.clone(),
            reading: None,
        });
        entry.ramp = ramp;
        entry.reading = None;
        self.save(entry, true)?;
        self.act(entry, actions).await;
        entry.reading = Some(self.read(key, self.clock.now()));
        Ok(RampView::of(&entry.ramp))
    }

    /// Resumes a paused ramp, or aborts an active one.
    pub async fn command(&self, key: &str, input: RampInput) -> Result<RampView, RampError> {
        let mut ramps = self.ramps.lock().await;
        let entry = ramps
            .get_mut(key)
            .ok_or_else(|| RampError::NoRamp(key.to_string()))?;
        let now = self.clock.now();
        let mut ramp = entry.ramp.clone();
        let actions = ramp.handle(input, now).map_err(|e| RampError::Rejected(e.0))?;
        entry.ramp = ramp;
        self.save(entry, true)?;
        self.act(entry, actions).await;
        entry.reading = Some(self.read(key, now));
        Ok(RampView::of(&entry.ramp))
    }

    /// Saves the ramp with `unapplied`; in memory the flag changes only once it is saved.
    fn save(&self, entry: &mut Entry, unapplied: bool) -> Result<(), StoreError> {
        let before = std::mem::replace(&mut entry.ramp.unapplied, unapplied);
        self.store.save_ramp(&entry.ramp).inspect_err(|_| {
            entry.ramp.unapplied = before;
        })
    }

    /// Carries out `actions` of `entry`'s ramp, then records that they ran. A failure is logged
    /// and left `unapplied`: the next tick tries again.
    async fn act(&self, entry: &mut Entry, actions: Vec<RampAction>) {
        let mut all_done = true;
        for action in actions {
            let done = match action {
                RampAction::SetWeight(weight) => self.set_weight(&entry.ramp, weight).await,
                RampAction::Kill(reason) => self.kill(&entry.ramp, &reason).await,
                RampAction::Notify { event, message } => {
                    self.notify(&entry.ramp, event, message);
                    Ok(())
                }
            };
            if let Err(e) = done {
                tracing::error!(flag = %entry.ramp.flag, ramp = entry.ramp.id, error = %e,
                    "could not carry out the ramp's decision; trying again at the next tick");
                all_done = false;
            }
        }
        if all_done && entry.ramp.unapplied {
            if let Err(e) = self.save(entry, false) {
                tracing::error!(flag = %entry.ramp.flag, error = %e, "could not save the ramp");
            }
        }
    }

    async fn set_weight(&self, ramp: &Ramp, weight: u16) -> Result<(), FlagError> {
        let Some(mut flag) = self.service.index().get(&ramp.flag).cloned() else {
            return Err(FlagError::NotFound(ramp.flag.clone()));
        };
        let split = ramp.plan.split(weight);
        if flag.split == split {
            return Ok(());
        }
        let revision = flag.revision;
        flag.split = split;
        let why = format!(
            "guarded ramp #{} ({}): {:.2} % of users in {:?}",
            ramp.id,
            ramp.reason,
            f64::from(weight) / 100.0,
            ramp.plan.variant
        );
        self.service
            .change(&ramp.flag, Some(flag), Some(revision), RAMP_WHO, &why)
            .await
            .map(|_| ())
    }

    /// Kills the flag and takes its split back to 0 % in the same change: an unkill later gives
    /// the bad variant to nobody until a person ramps it again.
    async fn kill(&self, ramp: &Ramp, reason: &str) -> Result<(), FlagError> {
        let key = &ramp.flag;
        let Some(mut flag) = self.service.index().get(key).cloned() else {
            return Ok(());
        };
        let split = ramp.plan.split(0);
        if !flag.enabled && flag.split == split {
            return Ok(());
        }
        let revision = flag.revision;
        flag.enabled = false;
        flag.split = split;
        self.service
            .change(key, Some(flag), Some(revision), RAMP_WHO, reason)
            .await
            .map(|_| ())
    }

    fn notify(&self, ramp: &Ramp, event: &str, message: String) {
        tracing::info!(flag = %ramp.flag, ramp = ramp.id, event, "{message}");
        let Some(notifier) = &self.notifier else { return };
        let mut payload = WebhookEvent::new(EventKind::Flag, "flags", message, self.clock.now());
        payload.phase = Some(event.to_string());
        payload.step = ramp.step();
        payload.weight_bp = ramp.weight();
        payload.data = serde_json::json!({
            "flag": ramp.flag,
            "event": event,
            "ramp_id": ramp.id,
            "variant": ramp.plan.variant,
            "flagged_requests": ramp.flagged_requests,
            "flagged_failures": ramp.flagged_failures,
        });
        notifier.notify(payload);
    }

    /// The counters of every variant of `key` in every app that forwards it, now.
    fn read(&self, key: &str, at: Timestamp) -> Reading {
        let mut counters = Vec::new();
        for (app, forwarding) in &self.forwarding {
            for (variant, series, snapshot) in forwarding.traffic.snapshot(key) {
                counters.push((app.clone(), variant, series, snapshot));
            }
        }
        Reading { at, counters }
    }

    /// The window between `start` and `now` for `ramp`: the new variant's requests against the
    /// others'.
    fn window(&self, ramp: &Ramp, start: &Reading, now: &Reading) -> WindowStats {
        let mut flagged: Option<MetricsSnapshot> = None;
        let mut unflagged: Option<MetricsSnapshot> = None;
        let mut flagged_users = 0;
        let mut unflagged_users = 0;
        for (app, variant, series, after) in &now.counters {
            let before = start
                .counters
                .iter()
                .find(|(a, v, _, _)| a == app && v == variant);
            let delta = match before {
                Some((_, _, s, before)) if s == series => after.since(before),
                // Counters that started inside the window (a variant first seen): all of theirs
                // belongs to it.
                None => after.clone(),
                Some(_) => {
                    return WindowStats {
                        unavailable: Some(format!(
                            "the counters of variant {variant:?} in app {app} restarted during the window"
                        )),
                        ..WindowStats::default()
                    }
                }
            };
            let is_flagged = *variant == ramp.plan.variant;
            if is_flagged {
                flagged_users += after.users;
            } else {
                unflagged_users += after.users;
            }
            let sum = if is_flagged { &mut flagged } else { &mut unflagged };
            *sum = Some(match sum.take() {
                None => delta,
                Some(s) => add(&s, &delta),
            });
        }
        let window = |s: &Option<MetricsSnapshot>, users: u64| -> (SlotWindow, Vec<u64>) {
            let Some(s) = s else {
                return (
                    SlotWindow {
                        client_errors: Some(0),
                        codes: Some(BTreeMap::new()),
                        ..SlotWindow::default()
                    },
                    vec![0; cutover_core::histogram::LATENCY_BUCKETS],
                );
            };
            let p99_ms =
                quantile_bucket(&s.latency_buckets, 0.99).map(|i| bucket_upper_micros(i) as f64 / 1000.0);
            let codes = cutover_core::TRACKED_CODES
                .iter()
                .zip(s.codes)
                .filter(|(_, n)| *n > 0)
                .map(|(c, n)| (*c, n))
                .collect();
            (
                SlotWindow {
                    requests: s.total_requests(),
                    errors: s.server_errors(),
                    p99_ms,
                    client_errors: Some(s.client_errors()),
                    codes: Some(codes),
                    users: Some(users),
                    users_with_client_errors: None,
                },
                s.latency_buckets.clone(),
            )
        };
        let (canary, canary_latency) = window(&flagged, flagged_users);
        let (baseline, baseline_latency) = window(&unflagged, unflagged_users);
        WindowStats {
            canary,
            baseline: Some(baseline),
            duration_ms: now.at.millis_since(start.at),
            latency: Some(Arc::new(LatencyPair {
                canary: canary_latency,
                baseline: baseline_latency,
            })),
            unavailable: None,
            external: Vec::new(),
        }
    }

    /// One pass over the active ramps: ends those whose flag a person killed or removed, judges
    /// the windows that are due, and retries decisions not yet carried out.
    pub async fn tick(&self) {
        let now = self.clock.now();
        let index = self.service.index();
        let mut ramps = self.ramps.lock().await;
        for (key, entry) in ramps.iter_mut() {
            if entry.ramp.phase.is_over() && !entry.ramp.unapplied {
                continue;
            }
            if entry.ramp.unapplied {
                let actions = redo(&entry.ramp);
                self.act(entry, actions).await;
                continue;
            }
            let outside = match index.get(key) {
                None => Some("the flag was archived".to_string()),
                Some(flag) if !flag.enabled => Some("the flag was killed by a person".to_string()),
                _ => None,
            };
            let input = if let Some(reason) = outside {
                RampInput::FlagChanged { reason }
            } else {
                let Some(start) = &entry.reading else {
                    entry.reading = Some(self.read(key, now));
                    continue;
                };
                if now.millis_since(start.at) < entry.ramp.plan.interval_ms
                    || !matches!(entry.ramp.phase, RampPhase::Running { .. })
                {
                    if !matches!(entry.ramp.phase, RampPhase::Running { .. }) {
                        // Paused: keep the reading fresh, so a resume starts a clean window.
                        entry.reading = Some(self.read(key, now));
                    }
                    continue;
                }
                let reading = self.read(key, now);
                let stats = match &self.prometheus {
                    Some(source) => prometheus_window(source, &entry.ramp, start.at, now).await,
                    None => self.window(&entry.ramp, start, &reading),
                };
                entry.reading = Some(reading);
                RampInput::Window(stats)
            };
            let mut ramp = entry.ramp.clone();
            let actions = match ramp.handle(input, now) {
                Ok(actions) => actions,
                Err(e) => {
                    tracing::warn!(flag = %key, error = %e, "ramp input refused");
                    continue;
                }
            };
            if ramp == entry.ramp {
                continue;
            }
            entry.ramp = ramp;
            if let Err(e) = self.save(entry, true) {
                tracing::error!(flag = %key, error = %e,
                    "could not save the ramp's decision; it is not carried out");
                continue;
            }
            self.act(entry, actions).await;
        }
    }

    /// Ticks every `tick` until `shutdown`.
    pub async fn run(self: Arc<Self>, tick: std::time::Duration, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Expiry is by the day: a look a minute is plenty.
        let mut hygiene = tokio::time::interval(std::time::Duration::from_secs(60));
        hygiene.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A change may set a date that has passed: announced at once, not within the minute.
        let mut changes = self.service.subscribe();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => self.tick().await,
                _ = hygiene.tick() => self.announce_expired(),
                _ = changes.recv() => self.announce_expired(),
            }
        }
    }
}

/// The window `(from, to]` of `ramp` measured by PromQL: the new variant's users against the
/// others. A query that fails makes the window inconclusive, never a pass.
async fn prometheus_window(
    source: &cutover_monitoring::PrometheusSource,
    ramp: &Ramp,
    from: Timestamp,
    to: Timestamp,
) -> WindowStats {
    let (flagged, unflagged) = tokio::join!(
        source.measure_flag(&ramp.flag, &ramp.plan.variant, true, from, to),
        source.measure_flag(&ramp.flag, &ramp.plan.variant, false, from, to),
    );
    let window = |m: Result<cutover_monitoring::SlotMeasurement, cutover_monitoring::MetricError>| {
        let m = m.map_err(|e| e.to_string())?;
        let count = |v: f64| v.max(0.0).round() as u64;
        Ok::<_, String>(SlotWindow {
            // No series at all: no request of these users in the window.
            requests: m.requests.map_or(0, count),
            errors: m.errors.map_or(0, count),
            p99_ms: m.p99_ms,
            client_errors: Some(m.client_errors.map_or(0, count)),
            codes: Some(
                m.codes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(c, n)| (c, count(n)))
                    .collect(),
            ),
            users: None,
            users_with_client_errors: None,
        })
    };
    match (window(flagged), window(unflagged)) {
        (Ok(canary), Ok(baseline)) => WindowStats {
            canary,
            baseline: Some(baseline),
            duration_ms: to.millis_since(from),
            latency: None,
            unavailable: None,
            external: Vec::new(),
        },
        (Err(e), _) | (_, Err(e)) => WindowStats {
            unavailable: Some(format!("Prometheus: {e}")),
            ..WindowStats::default()
        },
    }
}

/// What a ramp saved as `unapplied` may not have done yet: the split of its step (idempotent),
/// or the kill.
fn redo(ramp: &Ramp) -> Vec<RampAction> {
    match (&ramp.phase, ramp.weight()) {
        (RampPhase::Killed { reason, .. }, _) => vec![RampAction::Kill(reason.clone())],
        (_, Some(weight)) => vec![RampAction::SetWeight(weight)],
        _ => Vec::new(),
    }
}

/// The sum of two windows' counts.
fn add(a: &MetricsSnapshot, b: &MetricsSnapshot) -> MetricsSnapshot {
    MetricsSnapshot {
        requests_by_class: std::array::from_fn(|i| a.requests_by_class[i] + b.requests_by_class[i]),
        codes: std::array::from_fn(|i| a.codes[i] + b.codes[i]),
        client_faults: std::array::from_fn(|i| a.client_faults[i] + b.client_faults[i]),
        users: a.users + b.users,
        users_with_client_errors: a.users_with_client_errors + b.users_with_client_errors,
        latency_buckets: a
            .latency_buckets
            .iter()
            .zip(b.latency_buckets.iter())
            .map(|(x, y)| x + y)
            .collect(),
        latency_sum_micros: a.latency_sum_micros + b.latency_sum_micros,
        in_flight: a.in_flight + b.in_flight,
        bytes_in: a.bytes_in + b.bytes_in,
        bytes_out: a.bytes_out + b.bytes_out,
        connect_failures: a.connect_failures + b.connect_failures,
        retries: a.retries + b.retries,
        failovers: a.failovers + b.failovers,
    }
}
