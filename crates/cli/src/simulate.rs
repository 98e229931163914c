//! `cutover simulate`: many seeded rollouts per scenario, judged by the real engine, in seconds.

use std::process::ExitCode;

use anyhow::{bail, Result};
use cutover_core::judge::{JudgeConfig, JudgeMethod};
use cutover_sim::{catalogue, run_many, summarize, Scenario, Summary};

#[derive(Debug, Clone, clap::Args)]
pub struct SimulateOptions {
    /// Scenarios to run (default: all); see --list.
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Seeded runs per scenario and judge.
    #[arg(long, default_value_t = 1000)]
    runs: usize,
    /// Seed of the first run; run i uses seed + i.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Which judge to simulate: threshold, sequential, or both side by side.
    #[arg(long, value_enum, default_value = "both")]
    judge: Judges,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Judges {
    Threshold,
    Sequential,
    Both,
}

fn judges(which: Judges) -> Vec<(&'static str, JudgeConfig)> {
    let sequential = (
        "sequential",
        JudgeConfig {
            method: JudgeMethod::Sequential,
            ..JudgeConfig::default()
        },
    );
    let threshold = ("threshold", JudgeConfig::threshold());
    match which {
        Judges::Threshold => vec![threshold],
        Judges::Sequential => vec![sequential],
        Judges::Both => vec![threshold, sequential],
    }
}

/// Runs the seeds of one scenario on every core.
fn run_parallel(scenario: &Scenario, runs: usize, seed: u64) -> Vec<cutover_sim::RunResult> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8);
    let chunk = runs.div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let start = t * chunk;
                let count = chunk.min(runs.saturating_sub(start));
                scope.spawn(move || run_many(scenario, count, seed.wrapping_add(start as u64)))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

pub fn run(options: SimulateOptions) -> Result<ExitCode> {
    let all = catalogue();
    if options.list {
        for s in &all {
            out!("{:<26} {}", s.name, s.description);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let chosen: Vec<&Scenario> = if options.scenarios.is_empty() {
        all.iter().collect()
    } else {
        let mut chosen = Vec::new();
        for name in &options.scenarios {
            match all.iter().find(|s| &s.name == name) {
                Some(s) => chosen.push(s),
                None => bail!(
                    "--scenario {name:?} is unknown; known: {}",
                    all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            }
        }
        chosen
    };
    let started = std::time::Instant::now();
    let mut summaries: Vec<Summary> = Vec::new();
    for scenario in chosen {
        for (name, judge) in judges(options.judge) {
            let s = scenario.with_judge(judge);
            let results = run_parallel(&s, options.runs, options.seed);
            summaries.push(summarize(&s, name, &results));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    if options.json {
        out!(
            "{}",
            serde_json::json!({ "runs": options.runs, "seed": options.seed, "elapsed_s": elapsed, "results": summaries })
        );
        return Ok(ExitCode::SUCCESS);
    }
    out!(
        "{:<26} {:<10} {:>9} {:>9} {:>8} {:>8} {:>8} {:>9}",
        "scenario",
        "judge",
        "rollback",
        "in 30 s",
        "median",
        "p95",
        "paused",
        "failed"
    );
    for s in &summaries {
        let secs = |v: Option<f64>| v.map(|v| format!("{v:.0} s")).unwrap_or_else(|| "-".into());
        out!(
            "{:<26} {:<10} {:>8.1}% {:>8.1}% {:>8} {:>8} {:>7.1}% {:>9.1}",
            s.scenario,
            s.judge,
            s.rollback_rate * 100.0,
            s.detected_within_30s * 100.0,
            secs(s.median_detect_s),
            secs(s.p95_detect_s),
            s.paused_rate * 100.0,
            s.mean_failed_requests
        );
    }
    out!("{} runs per scenario and judge in {elapsed:.1} s", options.runs);
    Ok(ExitCode::SUCCESS)
}
