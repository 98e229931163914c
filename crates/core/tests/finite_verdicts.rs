#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Every verdict the judge can produce survives a round trip through JSON: the state file keeps
//! them, and a non-finite number (written as `null`) would not read back, failing the save of
//! the decision it belongs to.

use cutover_core::judge::{judge, JudgeConfig, JudgeMethod, SlotWindow, Verdict, WindowStats};
use cutover_core::sequential::SequentialState;

fn window(requests: u64, errors: u64, users: Option<u64>) -> SlotWindow {
    SlotWindow {
        requests,
        errors,
        p99_ms: Some(3.0),
        users,
        ..SlotWindow::default()
    }
}

fn round_trips(v: &Verdict) {
    let text = serde_json::to_string(v).unwrap();
    let back: Result<Verdict, _> = serde_json::from_str(&text);
    assert!(back.is_ok(), "{:?}\n{text}", back.err());
}

#[test]
fn extreme_windows_give_verdicts_that_read_back() {
    let shapes: Vec<(SlotWindow, Option<SlotWindow>)> = vec![
        (window(14, 9, Some(783)), None),
        (window(14, 9, Some(783)), Some(window(0, 0, None))),
        (window(1, 1, Some(1)), Some(window(1, 0, Some(1)))),
        (
            window(100_000, 100_000, Some(10)),
            Some(window(100_000, 0, Some(10))),
        ),
        (window(0, 0, None), Some(window(10, 10, None))),
        (window(500, 250, None), None),
    ];
    for method in [JudgeMethod::Sequential, JudgeMethod::Threshold] {
        let config = JudgeConfig {
            method,
            ..JudgeConfig::default()
        };
        let mut evidence = SequentialState::new(&config.sequential);
        for round in 0..5 {
            for (canary, baseline) in &shapes {
                let stats = WindowStats {
                    canary: canary.clone(),
                    baseline: baseline.clone(),
                    duration_ms: 10_000,
                    latency: None,
                    unavailable: None,
                    external: Vec::new(),
                };
                let v = judge(&config, stats, Some(&mut evidence));
                round_trips(&v);
                let state = serde_json::to_string(&evidence).unwrap();
                assert!(
                    serde_json::from_str::<SequentialState>(&state).is_ok(),
                    "round {round}: {state}"
                );
            }
        }
    }
}
