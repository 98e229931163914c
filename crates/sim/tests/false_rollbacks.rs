#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The sequential judge's guarantee, checked by simulation: healthy canaries are rolled back at
//! most at the configured rate, however often the judge looks (window length) and whatever the
//! traffic split. Counts are compared with the bound plus three binomial standard deviations, so
//! a pass is not luck and a failure is a real breach.

use cutover_core::judge::{JudgeConfig, JudgeMethod};
use std::collections::BTreeMap;

use cutover_core::sequential::{observe, ClientErrorCounts, SequentialConfig, SequentialState, WindowCounts};
use cutover_core::Step;
use cutover_sim::{bench_policy, catalogue, run_many, RunOutcome, Scenario};
use rand::{Rng, SeedableRng};
use rand_distr::{Binomial, Distribution};

/// The benchmark's scenario called `name`.
fn scenario(name: &str) -> Scenario {
    catalogue()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name:?} in the catalogue"))
}

fn bound(alpha: f64, runs: usize) -> usize {
    let n = runs as f64;
    (alpha * n + 3.0 * (alpha * (1.0 - alpha) * n).sqrt()).ceil() as usize
}

/// The test martingale alone: null streams of every shape, looked at after every window.
#[test]
fn the_e_process_crosses_its_bar_at_most_alpha_of_the_time_under_any_peeking() {
    let config = SequentialConfig {
        alpha: 0.05,
        latency_quantiles: vec![],
        ..SequentialConfig::default()
    };
    let runs = 2000;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for (peeks, per_window, error_rate) in [(400, 5u64, 0.02), (40, 50, 0.02), (8, 250, 0.05), (200, 20, 0.3)]
    {
        let mut crossed = 0;
        for _ in 0..runs {
            let mut state = SequentialState::new(&config);
            for _ in 0..peeks {
                // Traffic split and volume change from window to window.
                let weight = [0.01, 0.05, 0.25, 0.5][rng.random_range(0..4)];
                let n = per_window + rng.random_range(0..per_window);
                let n_c = Binomial::new(n, weight).unwrap().sample(&mut rng);
                let n_b = n - n_c;
                let x = Binomial::new(n_c, error_rate).unwrap().sample(&mut rng);
                let y = Binomial::new(n_b, error_rate).unwrap().sample(&mut rng);
                // The same rate of 4xx on both slots, spread over two codes.
                let codes = |n: u64, rng: &mut rand_chacha::ChaCha8Rng| -> BTreeMap<u16, u64> {
                    let k = Binomial::new(n, error_rate).unwrap().sample(rng);
                    let k401 = Binomial::new(k, 0.3).unwrap().sample(rng);
                    [(401, k401), (404, k - k401)].into_iter().collect()
                };
                let (c_codes, b_codes) = (codes(n_c, &mut rng), codes(n_b, &mut rng));
                let reports = observe(
                    &config,
                    &mut state,
                    config.bar(true),
                    WindowCounts {
                        canary_requests: n_c,
                        canary_errors: x,
                        canary_latency: &[],
                        baseline_requests: n_b,
                        baseline_errors: y,
                        baseline_latency: &[],
                        client_errors: Some(ClientErrorCounts {
                            canary: c_codes.values().sum(),
                            baseline: b_codes.values().sum(),
                            codes: Some((&c_codes, &b_codes)),
                            ignore: &[],
                        }),
                    },
                );
                if reports.iter().any(|r| r.e_worse >= r.bar) {
                    crossed += 1;
                    break;
                }
            }
        }
        assert!(
            crossed <= bound(config.alpha, runs),
            "{peeks} looks of ~{per_window} requests at {error_rate}: crossed in {crossed} of {runs} runs, bound {}",
            bound(config.alpha, runs)
        );
    }
}

/// Whole rollouts of healthy canaries: false rollbacks stay under alpha for short and long windows.
#[test]
fn healthy_canaries_are_rarely_rolled_back_whatever_the_window() {
    let healthy = scenario("healthy");
    let alpha = 0.05;
    let runs = 300;
    for interval_ms in [1_000u64, 5_000, 30_000] {
        let mut scenario = healthy.clone();
        scenario.policy = bench_policy();
        scenario.policy.analysis_interval_ms = interval_ms;
        scenario.policy.steps = vec![
            Step::new(500, 60_000),
            Step::new(5_000, 60_000),
            Step::new(10_000, 0),
        ];
        scenario.policy.judge = JudgeConfig {
            method: JudgeMethod::Sequential,
            min_requests: 1,
            sequential: SequentialConfig {
                alpha,
                ..SequentialConfig::default()
            },
            ..JudgeConfig::default()
        };
        let results = run_many(&scenario, runs, 1000);
        let rolled_back = results.iter().filter(|r| r.rolled_back()).count();
        let reasons: Vec<&str> = results
            .iter()
            .filter_map(|r| r.reason.as_deref())
            .take(5)
            .collect();
        assert!(
            rolled_back <= bound(alpha, runs),
            "windows of {interval_ms} ms: {rolled_back} of {runs} healthy canaries rolled back, bound {}; for example: {reasons:#?}",
            bound(alpha, runs)
        );
        assert!(
            results
                .iter()
                .filter(|r| r.outcome == RunOutcome::Promoted)
                .count()
                > runs / 2,
            "most are promoted"
        );
    }
}

/// And the judge is not simply blind: it catches what the benchmark's first scenario describes.
#[test]
fn a_five_percent_error_canary_is_caught() {
    let bad = scenario("errors-5pct");
    let results = run_many(&bad, 200, 1);
    let within_30s = results
        .iter()
        .filter(|r| r.detect_ms.is_some_and(|ms| ms <= 30_000))
        .count();
    assert!(
        within_30s >= 190,
        "detected within 30 s in {within_30s} of 200 runs"
    );
}

/// Issue #10's regressions are caught quickly, and their healthy twins (a fast service, a slow
/// one, a 4xx background) stay under alpha: the relative latency floor and the 4xx family keep
/// the guarantee.
#[test]
fn latency_and_4xx_regressions_are_caught_and_their_healthy_twins_are_not() {
    for name in [
        "latency-doubled-fast",
        "latency-doubled-slow",
        "401-sessions-rejected",
    ] {
        let results = run_many(&scenario(name), 200, 1);
        let within_30s = results
            .iter()
            .filter(|r| r.detect_ms.is_some_and(|ms| ms <= 30_000))
            .count();
        assert!(
            within_30s >= 190,
            "{name}: caught within 30 s in {within_30s} of 200 runs"
        );
    }
    let runs = 300;
    for name in ["healthy-fast", "healthy-slow", "healthy-4xx-background"] {
        let results = run_many(&scenario(name), runs, 1);
        let rolled_back: Vec<&str> = results.iter().filter_map(|r| r.reason.as_deref()).collect();
        assert!(
            rolled_back.len() <= bound(0.005, runs),
            "{name}: {} of {runs} healthy canaries rolled back: {rolled_back:#?}",
            rolled_back.len()
        );
    }
}

/// At 5 req/s the evidence accumulates across windows: a healthy canary is promoted (it used to
/// pause for a person every time) and a 5 % error canary is never promoted.
#[test]
fn low_traffic_is_decided_not_paused() {
    let healthy = run_many(&scenario("healthy-low-traffic"), 100, 1);
    let promoted = healthy
        .iter()
        .filter(|r| r.outcome == RunOutcome::Promoted)
        .count();
    assert!(
        promoted >= 95,
        "{promoted} of 100 healthy low-traffic canaries promoted"
    );
    let faulty = run_many(&scenario("errors-5pct-low-traffic"), 100, 1);
    let outcomes: Vec<RunOutcome> = faulty.iter().map(|r| r.outcome).collect();
    assert!(!outcomes.contains(&RunOutcome::Promoted), "{outcomes:?}");
    assert!(
        outcomes.iter().filter(|o| **o == RunOutcome::RolledBack).count() >= 85,
        "{outcomes:?}"
    );
}
