//! Seeded simulation of rollouts.
//!
//! A [`Scenario`] describes traffic (a total rate split by the rollout's weights), the baseline's
//! error rate and latency distribution (log-normal body with a heavy tail), and a fault of the
//! canary over time: a step change, a gradual leak, intermittent bursts, limited to a share of
//! users or of endpoints. [`run`] drives the real engine and judge of `cutover-core` through a
//! whole rollout on simulated time and reports what happened: rolled back or not, how long after
//! the canary started, and how many requests failed on the canary before that.
//!
//! Every random draw comes from a ChaCha8 generator seeded per run, so a run is a pure function of
//! (scenario, seed): any result can be replayed.

use std::net::SocketAddr;
use std::sync::Arc;

use cutover_core::histogram::{bucket_index, bucket_upper_micros, quantile_bucket, LATENCY_BUCKETS};
use cutover_core::judge::{JudgeConfig, LatencyPair, SlotWindow, WindowStats};
use cutover_core::rollout::{handle, route_table, window_due, Action, AppState, Input, Phase};
use cutover_core::{ReleaseSpec, RolloutPolicy, Step, Timestamp};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Binomial, Distribution, LogNormal, Poisson};
use serde::Serialize;

/// Latency of one slot: a log-normal body and a slower log-normal tail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LatencyModel {
    pub median_ms: f64,
    pub sigma: f64,
    /// Share of requests drawn from the tail.
    pub tail_share: f64,
    pub tail_median_ms: f64,
}

impl Default for LatencyModel {
    fn default() -> Self {
        // Median 40 ms, p99 around 200 ms: a typical web API.
        LatencyModel {
            median_ms: 40.0,
            sigma: 0.35,
            tail_share: 0.02,
            tail_median_ms: 160.0,
        }
    }
}

/// How a fault develops from the moment the canary takes traffic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Shape {
    /// Fully present from the start.
    Step,
    /// Grows linearly to full strength over `ramp_secs`.
    Leak { ramp_secs: f64 },
    /// On for `on_secs`, off for `off_secs`, repeating.
    Bursts { on_secs: f64, off_secs: f64 },
}

/// What is wrong with the canary.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    pub shape: Shape,
    /// Error probability of an affected request.
    pub error_rate: f64,
    /// Factor on the tail's latency for affected requests (2.0 doubles the p99, leaves the median).
    pub tail_factor: f64,
    /// Factor on every latency of affected requests (2.0 doubles the median and the p99).
    pub latency_factor: f64,
    /// Share of affected requests answered with `client_error_code` (a 4xx regression: 0.4 with
    /// 401 is a release that logs out the users of old sessions).
    pub client_error_rate: f64,
    pub client_error_code: u16,
    /// Share of canary requests affected (a share of users, or of endpoints).
    pub affected_share: f64,
}

impl Fault {
    /// A fault of errors only.
    pub fn errors(error_rate: f64, affected_share: f64, shape: Shape) -> Fault {
        Fault {
            shape,
            error_rate,
            tail_factor: 1.0,
            latency_factor: 1.0,
            client_error_rate: 0.0,
            client_error_code: 401,
            affected_share,
        }
    }

    fn strength(&self, secs: f64) -> f64 {
        match self.shape {
            Shape::Step => 1.0,
            Shape::Leak { ramp_secs } => (secs / ramp_secs).clamp(0.0, 1.0),
            Shape::Bursts { on_secs, off_secs } => {
                if secs % (on_secs + off_secs) < on_secs {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }
}

/// Trouble both slots share (a flaky dependency): in a share of windows, an extra error rate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SharedNoise {
    pub burst_probability: f64,
    pub burst_error_rate: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// Requests per second over both slots.
    pub total_rate: f64,
    pub error_rate: f64,
    /// Share of requests both slots answer 404 (a client background the judge must not mistake
    /// for a regression).
    pub client_error_rate: f64,
    pub latency: LatencyModel,
    pub fault: Option<Fault>,
    pub noise: Option<SharedNoise>,
    pub policy: RolloutPolicy,
    /// Simulated time after which a run that has not ended is cut off.
    pub limit_secs: f64,
}

impl Scenario {
    pub fn is_healthy(&self) -> bool {
        self.fault.is_none()
    }

    /// The same scenario judged by another method.
    pub fn with_judge(&self, judge: JudgeConfig) -> Scenario {
        let mut s = self.clone();
        s.policy.judge = judge;
        s
    }
}

/// The policy of the benchmark scenarios: 5 %, 25 %, 50 % for two minutes each, 5-second windows.
pub fn bench_policy() -> RolloutPolicy {
    RolloutPolicy {
        steps: vec![
            Step::new(500, 120_000),
            Step::new(2_500, 120_000),
            Step::new(5_000, 120_000),
            Step::new(10_000, 0),
        ],
        analysis_interval_ms: 5_000,
        failure_limit: 1,
        inconclusive_limit: 6,
        rollback_window_ms: 60_000,
        ..RolloutPolicy::default()
    }
}

/// The scenarios of `bench/judge.sh`.
pub fn catalogue() -> Vec<Scenario> {
    let base = |name: &str, description: &str, fault: Option<Fault>| Scenario {
        name: name.into(),
        description: description.into(),
        total_rate: 200.0,
        error_rate: 0.001,
        client_error_rate: 0.0,
        latency: LatencyModel::default(),
        fault,
        noise: None,
        policy: bench_policy(),
        limit_secs: 900.0,
    };
    let errors = |rate: f64, share: f64, shape: Shape| Some(Fault::errors(rate, share, shape));
    // A fast service: median 6 ms, p99 about 10 ms.
    let fast = LatencyModel {
        median_ms: 6.0,
        sigma: 0.2,
        tail_share: 0.02,
        tail_median_ms: 9.0,
    };
    // A slow one: median 400 ms, p99 about 900 ms.
    let slow = LatencyModel {
        median_ms: 400.0,
        sigma: 0.25,
        tail_share: 0.02,
        tail_median_ms: 800.0,
    };
    let slower = |factor: f64| {
        Some(Fault {
            latency_factor: factor,
            ..Fault::errors(0.001, 1.0, Shape::Step)
        })
    };
    let client_errors = |rate: f64, code: u16| {
        Some(Fault {
            client_error_rate: rate,
            client_error_code: code,
            ..Fault::errors(0.001, 1.0, Shape::Step)
        })
    };
    vec![
        base(
            "errors-5pct",
            "5 % errors against a 0.1 % baseline, 200 req/s, first step 5 %",
            errors(0.05, 1.0, Shape::Step),
        ),
        base(
            "errors-plus-1pct",
            "1.1 % errors against a 0.1 % baseline",
            errors(0.011, 1.0, Shape::Step),
        ),
        base(
            "p99-doubled",
            "the tail twice as slow (p99 doubled), median unchanged",
            Some(Fault {
                tail_factor: 2.0,
                ..Fault::errors(0.001, 1.0, Shape::Step)
            }),
        ),
        Scenario {
            latency: fast.clone(),
            ..base(
                "latency-doubled-fast",
                "every request twice as slow on a fast service (p99 10 ms to 20 ms)",
                slower(2.0),
            )
        },
        Scenario {
            latency: slow.clone(),
            ..base(
                "latency-doubled-slow",
                "every request twice as slow on a slow service (p99 0.9 s to 1.8 s)",
                slower(2.0),
            )
        },
        Scenario {
            client_error_rate: 0.02,
            ..base(
                "401-sessions-rejected",
                "40 % of requests answered 401 (old sessions rejected), beside 2 % of 404s on both",
                client_errors(0.4, 401),
            )
        },
        Scenario {
            client_error_rate: 0.05,
            ..base(
                "403-plus-1pct",
                "1 % more 403s, beside 5 % of 404s on both",
                client_errors(0.01, 403),
            )
        },
        base(
            "errors-10pct-users",
            "20 % errors for 10 % of users only",
            errors(0.2, 0.1, Shape::Step),
        ),
        base(
            "errors-leak",
            "errors leaking in: 0 to 5 % over 3 minutes",
            errors(0.05, 1.0, Shape::Leak { ramp_secs: 180.0 }),
        ),
        base(
            "errors-bursts",
            "10 % errors in 10-second bursts every minute",
            errors(
                0.1,
                1.0,
                Shape::Bursts {
                    on_secs: 10.0,
                    off_secs: 50.0,
                },
            ),
        ),
        base("healthy", "a healthy canary", None),
        Scenario {
            latency: fast,
            ..base(
                "healthy-fast",
                "a healthy canary of a fast service (p99 10 ms)",
                None,
            )
        },
        Scenario {
            latency: slow,
            ..base(
                "healthy-slow",
                "a healthy canary of a slow service (p99 0.9 s)",
                None,
            )
        },
        Scenario {
            client_error_rate: 0.05,
            ..base(
                "healthy-4xx-background",
                "a healthy canary; both slots answer 5 % of requests 404",
                None,
            )
        },
        Scenario {
            noise: Some(SharedNoise {
                burst_probability: 0.2,
                burst_error_rate: 0.08,
            }),
            ..base(
                "healthy-noisy-baseline",
                "a healthy canary beside a noisy baseline (shared 8 % error bursts)",
                None,
            )
        },
        Scenario {
            total_rate: 5.0,
            ..base("healthy-low-traffic", "a healthy canary at 5 req/s", None)
        },
        Scenario {
            total_rate: 5.0,
            ..base(
                "errors-5pct-low-traffic",
                "5 % errors at 5 req/s",
                errors(0.05, 1.0, Shape::Step),
            )
        },
    ]
}

/// Where a simulated rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    RolledBack,
    Promoted,
    Paused,
    Succeeded,
    Aborted,
    Failed,
    /// Still undecided when the simulated time ran out.
    CutOff,
}

impl RunOutcome {
    fn of(phase: &Phase) -> Option<RunOutcome> {
        Some(match phase {
            Phase::RolledBack { .. } => RunOutcome::RolledBack,
            Phase::Promoted { .. } => RunOutcome::Promoted,
            Phase::Paused { .. } => RunOutcome::Paused,
            Phase::Succeeded { .. } => RunOutcome::Succeeded,
            Phase::Aborted { .. } => RunOutcome::Aborted,
            Phase::Failed { .. } => RunOutcome::Failed,
            _ => return None,
        })
    }
}

/// What one simulated rollout did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    /// Phase the run ended in (`rolled_back`, `promoted`, `paused`, ...), or `cut_off`.
    pub outcome: RunOutcome,
    /// From the canary's first traffic to the rollback.
    pub detect_ms: Option<u64>,
    /// Canary requests that failed while the canary had traffic.
    pub failed_requests: u64,
    pub canary_requests: u64,
    pub windows: u32,
    /// Why it was rolled back.
    pub reason: Option<String>,
}

impl RunResult {
    pub fn rolled_back(&self) -> bool {
        self.outcome == RunOutcome::RolledBack
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn sample_latency(model: &LatencyModel, tail_factor: f64, rng: &mut ChaCha8Rng) -> f64 {
    let (median, sigma) = if rng.random::<f64>() < model.tail_share {
        (model.tail_median_ms * tail_factor, model.sigma)
    } else {
        (model.median_ms, model.sigma)
    };
    LogNormal::new(median.ln(), sigma)
        .map(|d| d.sample(rng))
        .unwrap_or(median)
}

fn poisson(mean: f64, rng: &mut ChaCha8Rng) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    Poisson::new(mean).map(|d| d.sample(rng) as u64).unwrap_or(0)
}

fn binomial(n: u64, p: f64, rng: &mut ChaCha8Rng) -> u64 {
    Binomial::new(n, p.clamp(0.0, 1.0))
        .map(|d| d.sample(rng))
        .unwrap_or(0)
}

/// One window of one slot: requests, errors, the latency histogram.
#[allow(clippy::too_many_arguments)]
fn window(
    n: u64,
    error_rate: f64,
    client_error_rate: f64,
    affected: f64,
    fault: Option<&Fault>,
    model: &LatencyModel,
    rng: &mut ChaCha8Rng,
) -> (SlotWindow, Vec<u64>) {
    let mut histogram = vec![0u64; LATENCY_BUCKETS];
    let n_affected = binomial(n, affected, rng);
    let fault_rate = fault.map(|f| f.error_rate).unwrap_or(error_rate);
    let errors = binomial(n - n_affected, error_rate, rng) + binomial(n_affected, fault_rate, rng);
    let mut codes = std::collections::BTreeMap::new();
    let background = binomial(n, client_error_rate, rng);
    if background > 0 {
        codes.insert(404u16, background);
    }
    if let Some(f) = fault.filter(|f| f.client_error_rate > 0.0) {
        let extra = binomial(n_affected, f.client_error_rate, rng);
        *codes.entry(f.client_error_code).or_default() += extra;
    }
    let client_errors = codes.values().sum::<u64>().min(n);
    let tail_factor = fault.map(|f| f.tail_factor).unwrap_or(1.0);
    let latency_factor = fault.map(|f| f.latency_factor).unwrap_or(1.0);
    for i in 0..n {
        let (tail, all) = if i < n_affected {
            (tail_factor, latency_factor)
        } else {
            (1.0, 1.0)
        };
        let ms = sample_latency(model, tail, rng) * all;
        histogram[bucket_index((ms * 1000.0) as u64)] += 1;
    }
    let p99_ms = quantile_bucket(&histogram, 0.99).map(|i| bucket_upper_micros(i) as f64 / 1000.0);
    (
        SlotWindow {
            requests: n,
            errors,
            p99_ms,
            client_errors: Some(client_errors),
            codes: Some(codes),
            users: None,
            users_with_client_errors: None,
        },
        histogram,
    )
}

/// Simulates one rollout of `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> RunResult {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut state = AppState::new("sim");
    state.blue.release = Some(ReleaseSpec::new("v1", "sim"));
    state.blue.backends = vec![addr(1)];
    let mut now = Timestamp(1_000_000);
    let mut pending = vec![Input::Deploy {
        release: ReleaseSpec::new("v2", "sim"),
        policy: scenario.policy.clone(),
        forced: false,
        migrate: false,
    }];
    let mut canary_start: Option<Timestamp> = None;
    let mut result = RunResult {
        outcome: RunOutcome::CutOff,
        detect_ms: None,
        failed_requests: 0,
        canary_requests: 0,
        windows: 0,
        reason: None,
    };
    let step_ms = scenario.policy.analysis_interval_ms.clamp(100, 10_000);
    let end = now.plus_ms((scenario.limit_secs * 1000.0) as u64);
    loop {
        while let Some(input) = pending.pop() {
            let Ok(t) = handle(&state, input, now) else {
                continue;
            };
            state = t.state;
            for action in t.actions {
                match action {
                    Action::Migrate { .. } => pending.push(Input::Migrated {
                        detail: "simulated".into(),
                    }),
                    Action::Provision { .. } => pending.push(Input::Provisioned {
                        backends: vec![addr(2)],
                    }),
                    Action::Verify { .. } => pending.push(Input::VerifyPassed {
                        detail: "simulated".into(),
                    }),
                    Action::CheckGates { step, .. } => pending.push(Input::GatesPassed { step }),
                    Action::ConfirmPromotion => pending.push(Input::PromotionConfirmed {
                        detail: "simulated".into(),
                    }),
                    Action::ApplyRoutes(_) | Action::Stop { .. } => {}
                }
            }
        }
        let Some(rollout) = state.rollout.clone() else {
            break;
        };
        match &rollout.phase {
            Phase::Canary { .. } => {
                canary_start.get_or_insert(now);
            }
            Phase::RolledBack { reason, .. } => {
                result.reason = Some(reason.clone());
                result.outcome = RunOutcome::RolledBack;
                result.detect_ms = canary_start.map(|t| now.millis_since(t));
                break;
            }
            phase => {
                if let Some(outcome) = RunOutcome::of(phase) {
                    result.outcome = outcome;
                    break;
                }
            }
        }
        if now >= end {
            break;
        }
        now = now.plus_ms(step_ms);
        if !window_due(&state, now) {
            pending.push(Input::Tick);
            continue;
        }
        let table = route_table(&state);
        let target = rollout.target;
        let weight = f64::from(table.weight_of(target)) / 10_000.0;
        let secs = step_ms as f64 / 1000.0;
        let since_start = canary_start
            .map(|t| now.millis_since(t) as f64 / 1000.0)
            .unwrap_or(0.0);
        let noise = scenario
            .noise
            .as_ref()
            .filter(|n| rng.random::<f64>() < n.burst_probability)
            .map(|n| n.burst_error_rate)
            .unwrap_or(0.0);
        let base_rate = scenario.error_rate + noise;
        let (strength, fault) = match &scenario.fault {
            Some(f) => (f.strength(since_start), Some(f)),
            None => (0.0, None),
        };
        let affected = fault.map(|f| f.affected_share * strength).unwrap_or(0.0);
        let n_c = poisson(scenario.total_rate * weight * secs, &mut rng);
        let n_b = poisson(scenario.total_rate * (1.0 - weight) * secs, &mut rng);
        let c4 = scenario.client_error_rate;
        let (canary, canary_hist) = window(n_c, base_rate, c4, affected, fault, &scenario.latency, &mut rng);
        let (baseline, baseline_hist) = window(n_b, base_rate, c4, 0.0, None, &scenario.latency, &mut rng);
        let fault_4xx = fault
            .filter(|f| f.client_error_rate > 0.0)
            .and_then(|f| canary.codes.as_ref()?.get(&f.client_error_code).copied())
            .unwrap_or(0);
        result.failed_requests += canary.errors + fault_4xx;
        result.canary_requests += canary.requests;
        result.windows += 1;
        let stats = WindowStats {
            canary,
            baseline: (weight < 1.0).then_some(baseline),
            duration_ms: step_ms,
            latency: Some(Arc::new(LatencyPair {
                canary: canary_hist,
                baseline: baseline_hist,
            })),
            unavailable: None,
            external: Vec::new(),
        };
        pending.push(Input::Window(stats));
    }
    result
}

/// Figures over many runs of one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub judge: String,
    pub runs: usize,
    /// Share of runs rolled back (detection rate, or false-rollback rate for healthy scenarios).
    pub rollback_rate: f64,
    pub median_detect_s: Option<f64>,
    pub p95_detect_s: Option<f64>,
    /// Share of runs detected within 30 s of the canary's first traffic.
    pub detected_within_30s: f64,
    /// Mean canary requests failed before the rollout ended.
    pub mean_failed_requests: f64,
    pub paused_rate: f64,
}

pub fn summarize(scenario: &Scenario, judge: &str, results: &[RunResult]) -> Summary {
    let n = results.len().max(1) as f64;
    let mut times: Vec<f64> = results
        .iter()
        .filter_map(|r| r.detect_ms)
        .map(|ms| ms as f64 / 1000.0)
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| (!times.is_empty()).then(|| times[((times.len() as f64 - 1.0) * q).round() as usize]);
    Summary {
        scenario: scenario.name.clone(),
        judge: judge.into(),
        runs: results.len(),
        rollback_rate: results.iter().filter(|r| r.rolled_back()).count() as f64 / n,
        median_detect_s: pick(0.5),
        p95_detect_s: pick(0.95),
        detected_within_30s: results
            .iter()
            .filter(|r| r.detect_ms.is_some_and(|ms| ms <= 30_000))
            .count() as f64
            / n,
        mean_failed_requests: results.iter().map(|r| r.failed_requests as f64).sum::<f64>() / n,
        paused_rate: results.iter().filter(|r| r.outcome == RunOutcome::Paused).count() as f64 / n,
    }
}

/// Runs `runs` seeds (`first_seed..`) of `scenario`.
pub fn run_many(scenario: &Scenario, runs: usize, first_seed: u64) -> Vec<RunResult> {
    (0..runs as u64)
        .map(|i| run(scenario, first_seed.wrapping_add(i)))
        .collect()
}
